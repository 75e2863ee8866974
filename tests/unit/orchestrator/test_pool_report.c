/*
 * Unit tests of src/roles/orchestrator/pool_report.c: a pool's state
 * document (docs/cluster-protocol.md section 2) parsed into the scheduler's
 * report, and wrong documents refused with the field named.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "roles/orchestrator/orchestrator-impl.h"

static const char *const good_doc =
    "{\"protocol\":1,\"pool\":\"pool-a\",\"url\":\"http://10.0.0.2:8101\",\"boot_id\":\"4f1c\","
    "\"seq\":42,\"heartbeat_interval_ms\":1000,\"version\":\"0.1.0\","
    "\"devices\":[{\"id\":\"gpu0\",\"kind\":\"cuda\",\"index\":0,\"uuid\":\"GPU-8a1f\","
    "\"name\":\"NVIDIA H100\",\"memory_total\":85520809984,\"memory_used\":1048576000,"
    "\"memory_free\":84472233984,\"utilization\":12,\"temperature\":41},"
    "{\"id\":\"cpu\",\"kind\":\"cpu\",\"index\":0,\"uuid\":\"cpu-host\",\"name\":\"CPU\","
    "\"memory_total\":8589934592,\"memory_used\":0,\"memory_free\":8589934592,"
    "\"utilization\":null,\"temperature\":null}],"
    "\"models\":[{\"name\":\"tiny\",\"file\":\"tiny.gguf\",\"arch\":\"llama\",\"params\":4718592,"
    "\"quant\":\"Q8_0\",\"ctx\":2048,\"file_bytes\":5242880,\"tensor_bytes\":5111808,"
    "\"estimate\":{\"cpu\":{\"fixed_bytes\":5636096,\"per_token_bytes\":32768},"
    "\"cuda\":{\"fixed_bytes\":545259520,\"per_token_bytes\":16384}}}],"
    "\"workers\":[{\"id\":\"w-3\",\"model\":\"tiny\",\"file\":\"tiny.gguf\",\"devices\":[\"cpu\"],"
    "\"ctx\":2048,\"slots\":4,\"state\":\"ready\",\"url\":\"http://10.0.0.2:40211\","
    "\"token\":\"d1e2\",\"pid\":31337,\"memory_bytes\":72351744,\"started_at_ms\":1795460000000,"
    "\"exit\":null},"
    "{\"id\":\"w-4\",\"model\":\"tiny\",\"devices\":[\"gpu0\"],\"state\":\"exited\",\"url\":null,"
    "\"token\":null,\"exit\":{\"code\":null,\"signal\":\"SIGKILL\",\"reason\":null,"
    "\"stderr_tail\":[\"loading\",\"last words\"]}}]}";

static int parse(const char *text, sched_pool_report *rep, llorch_errmsg *em) {
  cJSON *doc = cJSON_Parse(text);
  assert_non_null(doc);
  int rc = orch_pool_report_parse(doc, rep, em);
  cJSON_Delete(doc);
  return rc;
}

static void test_good_document(void **state) {
  (void)state;
  sched_pool_report rep;
  llorch_errmsg em = {{0}};
  assert_int_equal(parse(good_doc, &rep, &em), 0);
  assert_string_equal(rep.pool, "pool-a");
  assert_string_equal(rep.url, "http://10.0.0.2:8101");
  assert_int_equal(rep.seq, 42);
  assert_int_equal(rep.interval_ms, 1000);
  assert_int_equal(rep.n_devices, 2);
  assert_int_equal(rep.devices[0].kind, SCHED_DEV_CUDA);
  assert_true(rep.devices[0].memory_free == 84472233984ull);
  assert_int_equal(rep.devices[0].utilization, 12);
  assert_int_equal(rep.devices[1].kind, SCHED_DEV_CPU);
  assert_int_equal(rep.devices[1].utilization, -1);
  assert_int_equal(rep.n_models, 1);
  assert_true(rep.models[0].est[SCHED_DEV_CPU].valid);
  assert_int_equal(rep.models[0].est[SCHED_DEV_CUDA].per_token_bytes, 16384);
  assert_int_equal(rep.n_workers, 2);
  assert_int_equal(rep.workers[0].state, SCHED_WORKER_READY);
  assert_int_equal(rep.workers[0].slots, 4);
  assert_string_equal(rep.workers[0].token, "d1e2");
  assert_string_equal(rep.workers[0].devices[0], "cpu");
  assert_int_equal(rep.workers[1].state, SCHED_WORKER_EXITED);
  assert_string_equal(rep.workers[1].exit_signal, "SIGKILL");
  assert_int_equal(rep.workers[1].exit_code, -1);
  assert_string_equal(rep.workers[1].exit_reason, "last words");
  sched_pool_report_free(&rep);
}

/* Replaces the first occurrence of from with to in good_doc and expects an
 * error whose message contains want. */
static void expect_error(const char *from, const char *to, const char *want) {
  const char *at = strstr(good_doc, from);
  assert_non_null(at);
  size_t n = strlen(good_doc) - strlen(from) + strlen(to) + 1;
  char *text = malloc(n);
  snprintf(text, n, "%.*s%s%s", (int)(at - good_doc), good_doc, to, at + strlen(from));
  sched_pool_report rep;
  llorch_errmsg em = {{0}};
  int rc = parse(text, &rep, &em);
  if (rc == 0 || !strstr(em.text, want)) {
    fprintf(stderr, "replacing %s with %s: rc %d, message \"%s\", wanted \"%s\"\n", from, to, rc, em.text,
            want);
    fail();
  }
  assert_null(rep.models);
  assert_null(rep.workers);
  free(text);
}

static void test_bad_documents(void **state) {
  (void)state;
  expect_error("\"pool\":\"pool-a\"", "\"pool\":\"../etc\"", "pool");
  expect_error("\"pool\":\"pool-a\",", "", "'pool' is required");
  expect_error("\"url\":\"http://10.0.0.2:8101\"", "\"url\":\"ftp://x\"", "'url'");
  expect_error("\"seq\":42", "\"seq\":-1", "seq");
  expect_error("\"heartbeat_interval_ms\":1000", "\"heartbeat_interval_ms\":\"1s\"", "heartbeat_interval_ms");
  expect_error("\"kind\":\"cuda\"", "\"kind\":\"tpu\"", "devices[0].kind");
  expect_error("\"memory_free\":84472233984", "\"memory_free\":-5", "devices[0].memory_free");
  expect_error("\"file\":\"tiny.gguf\",\"arch\"", "\"file\":\"../../etc/passwd\",\"arch\"", "models[0].file");
  expect_error("\"fixed_bytes\":5636096", "\"fixed_bytes\":\"big\"", "models[0].estimate.cpu.fixed_bytes");
  expect_error("\"state\":\"ready\"", "\"state\":\"happy\"", "workers[0].state");
  expect_error("\"url\":\"http://10.0.0.2:40211\"", "\"url\":null", "workers[0].url");
  expect_error("\"slots\":4", "\"slots\":0", "workers[0].slots");
  expect_error("\"devices\":[\"cpu\"]", "\"devices\":[7]", "workers[0].devices[0]");
  expect_error("\"workers\":[", "\"workers\":\"none\",\"w2\":[", "workers");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_document),
      cmocka_unit_test(test_bad_documents),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
