/*
 * libFuzzer target for what a pool sends the orchestrator
 * (src/roles/orchestrator/pool_report.c, then the scheduler): arbitrary
 * bytes as a pool state document. Whatever the input, the parser returns 0
 * or an error naming a field; a document it accepts is applied to a
 * scheduler with a small catalog, as a registration and then as a
 * heartbeat, and a request is admitted and dispatched against the resulting
 * cluster view. Nothing may crash, leak or read out of bounds.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "roles/orchestrator/orchestrator-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_assign(void *ud, sched_req *r, sched_worker *w) { (void)ud; (void)r; (void)w; }
static void on_start(void *ud, const sched_start *st) { (void)ud; (void)st; }
static void on_stop(void *ud, sched_worker *w, const char *why) { (void)ud; (void)w; (void)why; }
static void on_fail(void *ud, sched_req *r, int status, const char *code, const char *msg) {
  (void)ud; (void)r; (void)status; (void)code; (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int quiet;
  if (!quiet) {
    llorch_log_init(LLORCH_LOG_ERROR, LLORCH_LOG_FORMAT_JSON, stderr);
    quiet = 1;
  }
  cJSON *doc = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse((const char *)data, size, true, &doc, &em) < 0) return 0;
  sched_pool_report rep;
  int rc = orch_pool_report_parse(doc, &rep, &em);
  cJSON_Delete(doc);
  if (rc < 0) {
    if (em.text[0] == '\0' || strchr(em.text, '\n')) abort();
    return 0;
  }
  sched s;
  sched_limits lim = {.max_total = 4, .queue_timeout_ms = 1000, .heartbeat_miss_limit = 3, .retry_max = 1};
  sched_ops ops = {NULL, on_assign, on_start, on_stop, on_fail, NULL, NULL};
  sched_init(&s, &lim, &ops);
  char *pins[] = {"p/gpu0"};
  llorch_model_entry e = {.name = "tiny", .file = "tiny.gguf", .slots = 2, .max_replicas = 2,
                          .keep_alive_ms = 1000};
  sched_model_add(&s, &e, NULL);
  llorch_model_entry e2 = {.name = "pinned", .file = "m.gguf", .slots = 1, .keep_alive_ms = -1,
                           .pins = {pins, 1}};
  sched_model_add(&s, &e2, NULL);
  int adopted = 0;
  sched_pool_apply(&s, &rep, true, 1000, &adopted);
  rep.seq++;
  sched_pool_apply(&s, &rep, false, 1100, NULL);
  sched_req r1 = {.model = 0}, r2 = {.model = 1};
  sched_submit(&s, &r1, 1200, NULL);
  sched_submit(&s, &r2, 1200, NULL);
  sched_dispatch(&s, 1200);
  sched_tick(&s, 5000);
  sched_request_cancel(&s, &r1, 5000);
  sched_request_cancel(&s, &r2, 5000);
  sched_pool_report_free(&rep);
  sched_free(&s);
  return 0;
}
