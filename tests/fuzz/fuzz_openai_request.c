/*
 * libFuzzer target for OpenAI request bodies, as both sides check them:
 *   - the orchestrator: the bounded parse (request.max_json_values) and
 *     orch_req_build_exec_body (src/roles/orchestrator/client_api.c), whose
 *     execute body must itself be a JSON object the worker can read;
 *   - the worker: worker_request_build (src/roles/worker/request.c) for the
 *     chat, completions and native APIs, with a chatml template.
 * The first input byte picks the API, the rest is the body. Whatever the
 * input, each side answers 0 or an error with a one-line message and an
 * HTTP status; nothing may crash, leak or read out of bounds.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/chat.h"
#include "llorch/log.h"
#include "roles/orchestrator/orchestrator-impl.h"
#include "roles/worker/worker-impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static llorch_config cfg;
static llorch_chat *chat;

static void setup(void) {
  llorch_log_init(LLORCH_LOG_ERROR, LLORCH_LOG_FORMAT_JSON, stderr);
  /* The option table's defaults for these limits, smaller where that reaches them sooner. */
  cfg.request.max_messages = 64;
  cfg.request.max_content_parts = 64;
  cfg.request.max_stop = 4;
  cfg.request.max_tools = 8;
  cfg.request.max_json_values = 4096;
  llorch_errmsg em = {{0}};
  if (llorch_chat_init(&chat, NULL, "chatml", NULL, &em) < 0) abort();
}

static void check_message(const char *msg) {
  if (msg[0] == '\0' || strchr(msg, '\n')) abort();
}

static void fuzz_orchestrator(const char *text, size_t len, bool is_chat) {
  cJSON *body = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse_bounded(text, len, (size_t)cfg.request.max_json_values, "request.max_json_values",
                                &body, &em) < 0) {
    check_message(em.text);
    return;
  }
  orch_req r;
  memset(&r, 0, sizeof r);
  r.chat = is_chat;
  int rc = orch_req_build_exec_body(&r, body, &cfg, &em);
  cJSON_Delete(body);
  if (rc < 0) {
    if (rc != LLORCH_ENOMEM) check_message(em.text);
    free(r.exec_body);
    return;
  }
  /* What the worker gets must parse, with messages (chat) or prompt. */
  cJSON *ex = NULL;
  if (llorch_json_parse(r.exec_body, strlen(r.exec_body), true, &ex, &em) < 0) abort();
  if (!cJSON_GetObjectItemCaseSensitive(ex, is_chat ? "messages" : "prompt")) abort();
  cJSON_Delete(ex);
  free(r.exec_body);
}

static void fuzz_worker(const char *text, size_t len, worker_api api) {
  cJSON *body = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse_bounded(text, len, (size_t)cfg.request.max_json_values, "request.max_json_values",
                                &body, &em) < 0)
    return;
  worker w;
  memset(&w, 0, sizeof w);
  w.cfg = &cfg;
  w.chat = chat;
  snprintf(w.model_name, sizeof w.model_name, "tiny");
  snprintf(w.file_base, sizeof w.file_base, "tiny.gguf");
  worker_stream st;
  memset(&st, 0, sizeof st);
  st.w = &w;
  st.api = api;
  llorch_jbuf_init(&st.text);
  llorch_jbuf_init(&st.prompt_text);
  worker_job *job = NULL;
  worker_error err;
  memset(&err, 0, sizeof err);
  int rc = worker_request_build(&w, api, body, &st, &job, &err);
  cJSON_Delete(body);
  if (rc < 0) {
    if (job != NULL) abort();
    if (err.status < 400 || err.status > 599) abort();
    check_message(err.message);
  } else {
    if (job == NULL) abort();
    worker_job_free(job);
  }
  llorch_jbuf_free(&st.prompt_text);
  llorch_jbuf_free(&st.text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    setup();
    ready = 1;
  }
  if (size < 1) return 0;
  int sel = data[0] % 3;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  if (sel != 0) fuzz_orchestrator(text, len, sel == 1);
  fuzz_worker(text, len, sel == 1 ? WORKER_API_CHAT : sel == 2 ? WORKER_API_COMPLETION : WORKER_API_NATIVE);
  return 0;
}
