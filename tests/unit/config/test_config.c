/*
 * Unit tests for src/config: defaults, YAML reading, every kind of error with
 * its exact file:line:column line, flags and their precedence, lists, model
 * entries, derived defaults, dump -> parse round trip, --help.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/config.h"

/* ---- helpers ---- */

/* Loads text as file "t.yaml" over the defaults of role; returns the error. */
static int load_text(llorch_config *cfg, llorch_role role, const char *text, llorch_errmsg *em) {
  assert_int_equal(llorch_config_init(cfg, role), 0);
  memset(em, 0, sizeof *em);
  return llorch_config_load_string(cfg, "t.yaml", text, strlen(text), em);
}

/* Asserts that text fails with exactly the line want. */
static void expect_error(const char *text, int err, const char *want) {
  llorch_config cfg;
  llorch_errmsg em;
  int got = load_text(&cfg, LLORCH_ROLE_NONE, text, &em);
  if (strcmp(em.text, want) != 0) fprintf(stderr, "want: %s\ngot:  %s\n", want, em.text);
  assert_int_equal(got, err);
  assert_string_equal(em.text, want);
  llorch_config_free(&cfg);
}

/* Applies flags (NULL-terminated) over the defaults of role. */
static int apply(llorch_config *cfg, llorch_role role, llorch_errmsg *em, ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  va_start(ap, em);
  for (char *a; (a = va_arg(ap, char *)) != NULL;) argv[argc++] = a;
  va_end(ap);
  memset(em, 0, sizeof *em);
  return llorch_config_apply_args(cfg, argc, argv, em);
}

static char *dump_to_string(const llorch_config *cfg, unsigned flags) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  assert_int_equal(llorch_config_dump(cfg, f, flags), 0);
  fclose(f);
  return buf;
}

/* ---- defaults ---- */

static void test_defaults(void **state) {
  llorch_config cfg;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_WORKER), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:8090");
  assert_int_equal(cfg.log.level, LLORCH_LOG_INFO);
  assert_int_equal(cfg.log.format, LLORCH_LOG_FORMAT_AUTO);
  assert_int_equal(cfg.http.max_header_bytes, 16 * 1024);
  assert_int_equal(cfg.http.max_headers, 100);
  assert_int_equal(cfg.http.max_body_bytes, 8 * 1024 * 1024);
  assert_int_equal(cfg.http.header_timeout_ms, 10000);
  assert_int_equal(cfg.http.idle_timeout_ms, 60000);
  assert_int_equal(cfg.http.sse_keepalive_ms, 15000);
  assert_int_equal(cfg.shutdown_grace_ms, 30000);
  assert_null(cfg.worker.model);
  assert_string_equal(cfg.worker.device, "cpu");
  assert_int_equal(cfg.worker.ctx, 0);
  assert_int_equal(cfg.worker.slots, 4);
  assert_int_equal(cfg.worker.threads, 0);
  assert_null(cfg.worker.token);
  assert_int_equal(cfg.worker.queue_max, 16);
  assert_int_equal(cfg.pool.heartbeat_interval_ms, 2000);
  assert_int_equal(cfg.pool.gpus.count, 0);
  assert_int_equal(cfg.orchestrator.queue.max_total, 256);
  assert_int_equal(cfg.orchestrator.queue.timeout_ms, 60000);
  assert_int_equal(cfg.orchestrator.heartbeat_miss_limit, 3);
  assert_int_equal(cfg.orchestrator.retry_max, 2);
  assert_int_equal(cfg.orchestrator.models.count, 0);
  llorch_config_free(&cfg);

  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_POOL), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:8081");
  llorch_config_free(&cfg);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:8080");
  llorch_config_free(&cfg);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ALL), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:8080");
  llorch_config_free(&cfg);
}

static void test_roles(void **state) {
  llorch_role r;
  assert_int_equal(llorch_role_parse("pool", &r), 0);
  assert_int_equal(r, LLORCH_ROLE_POOL);
  assert_int_equal(llorch_role_parse("all", &r), 0);
  assert_int_equal(r, LLORCH_ROLE_ALL);
  assert_int_equal(llorch_role_parse("Pool", &r), LLORCH_EINVAL);
  assert_int_equal(llorch_role_parse("", &r), LLORCH_EINVAL);
  assert_string_equal(llorch_role_name(LLORCH_ROLE_ORCHESTRATOR), "orchestrator");
}

/* ---- reading YAML ---- */

static const char *const full_yaml =
    "listen: 127.0.0.1:9000\n"
    "log:\n"
    "  level: debug\n"
    "  format: json\n"
    "http:\n"
    "  max_header_bytes: 32KiB\n"
    "  max_body_bytes: 1048576\n"
    "  header_timeout: 500ms\n"
    "  idle_timeout: 5m\n"
    "shutdown_grace: 2\n"
    "worker:\n"
    "  model: /models/tiny.gguf\n"
    "  device: cuda:0,1\n"
    "  slots: 8\n"
    "  token: \"s3cret\"\n"
    "  queue_timeout: 1h\n"
    "pool:\n"
    "  name: pool-a\n"
    "  gpus: [0, 1]\n"
    "  model_dirs:\n"
    "    - /srv/models\n"
    "    - ./models\n"
    "  cpu_memory: 8GiB\n"
    "  orchestrator: http://orch:8080\n"
    "orchestrator:\n"
    "  api_keys: [k1, k2]\n"
    "  queue:\n"
    "    max_total: 10\n"
    "    timeout: 30s\n"
    "  models:\n"
    "    - name: tiny\n"
    "      file: tiny.gguf\n"
    "    - name: big\n"
    "      file: sub/big-q4.gguf\n"
    "      ctx: 8192\n"
    "      slots: 2\n"
    "      pins: [pool-a, pool-b/gpu1]\n"
    "      min_replicas: 1\n"
    "      max_replicas: 3\n"
    "      keep_alive: -1\n"
    "      priority: batch\n";

static void test_full_file(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_NONE, full_yaml, &em), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:9000");
  assert_int_equal(cfg.log.level, LLORCH_LOG_DEBUG);
  assert_int_equal(cfg.log.format, LLORCH_LOG_FORMAT_JSON);
  assert_int_equal(cfg.http.max_header_bytes, 32 * 1024);
  assert_int_equal(cfg.http.max_body_bytes, 1048576);
  assert_int_equal(cfg.http.header_timeout_ms, 500);
  assert_int_equal(cfg.http.idle_timeout_ms, 300000);
  assert_int_equal(cfg.http.sse_keepalive_ms, 15000); /* untouched default */
  assert_int_equal(cfg.shutdown_grace_ms, 2000);       /* plain number = seconds */
  assert_string_equal(cfg.worker.model, "/models/tiny.gguf");
  assert_string_equal(cfg.worker.device, "cuda:0,1");
  assert_int_equal(cfg.worker.slots, 8);
  assert_string_equal(cfg.worker.token, "s3cret");
  assert_int_equal(cfg.worker.queue_timeout_ms, 3600000);
  assert_string_equal(cfg.pool.name, "pool-a");
  assert_int_equal(cfg.pool.gpus.count, 2);
  assert_string_equal(cfg.pool.gpus.items[0], "0");
  assert_string_equal(cfg.pool.gpus.items[1], "1");
  assert_int_equal(cfg.pool.model_dirs.count, 2);
  assert_string_equal(cfg.pool.model_dirs.items[1], "./models");
  assert_int_equal(cfg.pool.cpu_memory, UINT64_C(8) << 30);
  assert_string_equal(cfg.pool.orchestrator, "http://orch:8080");
  assert_int_equal(cfg.orchestrator.api_keys.count, 2);
  assert_string_equal(cfg.orchestrator.api_keys.items[1], "k2");
  assert_int_equal(cfg.orchestrator.queue.max_total, 10);
  assert_int_equal(cfg.orchestrator.queue.timeout_ms, 30000);

  assert_int_equal(cfg.orchestrator.models.count, 2);
  const llorch_model_entry *a = &cfg.orchestrator.models.items[0];
  assert_string_equal(a->name, "tiny");
  assert_string_equal(a->file, "tiny.gguf");
  assert_int_equal(a->ctx, 0);
  assert_int_equal(a->slots, 4);
  assert_int_equal(a->pins.count, 0);
  assert_int_equal(a->min_replicas, 0);
  assert_int_equal(a->max_replicas, 1);
  assert_int_equal(a->keep_alive_ms, 300000);
  assert_int_equal(a->priority, LLORCH_PRIORITY_INTERACTIVE);
  const llorch_model_entry *b = &cfg.orchestrator.models.items[1];
  assert_string_equal(b->name, "big");
  assert_string_equal(b->file, "sub/big-q4.gguf");
  assert_int_equal(b->ctx, 8192);
  assert_int_equal(b->slots, 2);
  assert_int_equal(b->pins.count, 2);
  assert_string_equal(b->pins.items[1], "pool-b/gpu1");
  assert_int_equal(b->min_replicas, 1);
  assert_int_equal(b->max_replicas, 3);
  assert_int_equal(b->keep_alive_ms, -1);
  assert_int_equal(b->priority, LLORCH_PRIORITY_BATCH);
  llorch_config_free(&cfg);
}

static void test_value_syntax(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_NONE,
                             "http:\n  max_body_bytes: 4KB\n  sse_keepalive: 1500ms\n"
                             "pool:\n  gpus: \"0, 2,3\"\n  cpu_memory: 512MiB\n"
                             "orchestrator.retry_max: 0\n" /* a dotted key at the top */
                             "worker:\n", &em), 0);
  assert_int_equal(cfg.http.max_body_bytes, 4000);
  assert_int_equal(cfg.http.sse_keepalive_ms, 1500);
  assert_int_equal(cfg.pool.gpus.count, 3);
  assert_string_equal(cfg.pool.gpus.items[1], "2");
  assert_int_equal(cfg.pool.cpu_memory, UINT64_C(512) << 20);
  assert_int_equal(cfg.orchestrator.retry_max, 0);
  llorch_config_free(&cfg);

  /* An empty file and a null string leave defaults / unset the string. */
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_WORKER, "", &em), 0);
  assert_int_equal(cfg.worker.slots, 4);
  llorch_config_free(&cfg);
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_WORKER, "worker:\n  device: ~\n  model: ''\n", &em), 0);
  assert_null(cfg.worker.device);
  assert_null(cfg.worker.model);
  llorch_config_free(&cfg);
}

/* ---- every kind of error, with its exact line ---- */

static void test_error_syntax(void **state) {
  expect_error("worker:\n  slots: [1, 2\n", LLORCH_EFORMAT,
               "t.yaml:3:1: YAML syntax error: did not find expected ',' or ']' while parsing a flow sequence");
  expect_error("a: b\n c: d\n", LLORCH_EFORMAT,
               "t.yaml:2:3: YAML syntax error: mapping values are not allowed in this context");
  expect_error("listen: 127.0.0.1:1\n---\nlisten: x\n", LLORCH_EFORMAT,
               "t.yaml:3:1: expected one YAML document, got a second one");
  expect_error("- a\n- b\n", LLORCH_EFORMAT, "t.yaml:1:1: expected a mapping of options, got a list");
}

static void test_error_unknown_key(void **state) {
  expect_error("listen: 127.0.0.1:1\nworkr:\n  slots: 2\n", LLORCH_EFORMAT,
               "t.yaml:2:1: 'workr': unknown key, expected one of: listen, log, http, "
               "request, shutdown_grace, worker, pool, orchestrator");
  expect_error("log:\n  levl: debug\n", LLORCH_EFORMAT,
               "t.yaml:2:3: 'log.levl': unknown key, expected one of: level, format");
  expect_error("orchestrator:\n  queue:\n    max: 3\n", LLORCH_EFORMAT,
               "t.yaml:3:5: 'orchestrator.queue.max': unknown key, expected one of: max_total, "
               "timeout, max_interactive, max_batch, max_bytes");
}

static void test_error_wrong_type(void **state) {
  expect_error("worker:\n  model: x.gguf\n  slots: many\n", LLORCH_EFORMAT,
               "t.yaml:3:10: 'worker.slots': expected an integer in 1..256, got \"many\"");
  expect_error("worker:\n  slots: [1]\n", LLORCH_EFORMAT,
               "t.yaml:2:10: 'worker.slots': expected an integer in 1..256, got a list");
  expect_error("worker:\n  slots:\n", LLORCH_EFORMAT,
               "t.yaml:2:9: 'worker.slots': expected an integer in 1..256, got nothing");
  expect_error("worker: 4\n", LLORCH_EFORMAT,
               "t.yaml:1:9: 'worker': expected a mapping of options, got \"4\"");
  expect_error("http:\n  header_timeout: soon\n", LLORCH_EFORMAT,
               "t.yaml:2:19: 'http.header_timeout': expected a duration (500ms, 10s, 5m) in "
               "100ms..1h, got \"soon\"");
  expect_error("http:\n  max_body_bytes: 3 apples\n", LLORCH_EFORMAT,
               "t.yaml:2:19: 'http.max_body_bytes': expected a byte size (4096, 512MiB, 8GiB) in "
               "1KiB..1GiB, got \"3 apples\"");
  expect_error("pool:\n  gpus: {a: 1}\n", LLORCH_EFORMAT,
               "t.yaml:2:9: 'pool.gpus': expected a list of items each a GPU index (0, 1, ...), "
               "got a mapping");
  expect_error("pool:\n  model_dirs: [a, [b]]\n", LLORCH_EFORMAT,
               "t.yaml:2:19: 'pool.model_dirs[1]': expected a non-empty string, got a list");
}

static void test_error_range(void **state) {
  expect_error("worker:\n  slots: 1000\n", LLORCH_ERANGE,
               "t.yaml:2:10: 'worker.slots': expected an integer in 1..256, got \"1000\"");
  expect_error("log:\n  level: loud\n", LLORCH_ERANGE,
               "t.yaml:2:10: 'log.level': expected one of debug|info|warn|error, got \"loud\"");
  expect_error("worker:\n  device: gpu0\n", LLORCH_ERANGE,
               "t.yaml:2:11: 'worker.device': expected cpu or cuda:N[,M...], got \"gpu0\"");
  expect_error("listen: localhost\n", LLORCH_ERANGE,
               "t.yaml:1:9: 'listen': expected HOST:PORT (port 0..65535), got \"localhost\"");
  expect_error("listen: \"[::1]:70000\"\n", LLORCH_ERANGE,
               "t.yaml:1:9: 'listen': expected HOST:PORT (port 0..65535), got \"[::1]:70000\"");
  expect_error("shutdown_grace: -1\n", LLORCH_ERANGE,
               "t.yaml:1:17: 'shutdown_grace': expected a duration (500ms, 10s, 5m) in 0s..1h, "
               "got \"-1\"");
  expect_error("pool:\n  gpus: [0, x]\n", LLORCH_ERANGE,
               "t.yaml:2:13: 'pool.gpus[1]': expected a GPU index (0, 1, ...), got \"x\"");
  expect_error("pool:\n  gpus: 0,,1\n", LLORCH_ERANGE,
               "t.yaml:2:9: 'pool.gpus': expected a list of items each a GPU index (0, 1, ...), "
               "got \"0,,1\"");
  expect_error("pool:\n  orchestrator: orch:8080\n", LLORCH_ERANGE,
               "t.yaml:2:17: 'pool.orchestrator': expected an http:// or https:// URL, got "
               "\"orch:8080\"");
  expect_error("pool:\n  name: my pool\n", LLORCH_ERANGE,
               "t.yaml:2:9: 'pool.name': expected a name of [A-Za-z0-9._-]{1,63}, got \"my pool\"");
}

static void test_error_duplicate(void **state) {
  expect_error("worker:\n  slots: 2\n  slots: 3\n", LLORCH_EFORMAT,
               "t.yaml:3:3: 'worker.slots': duplicate key (first at line 2)");
}

static void test_error_models(void **state) {
  expect_error("orchestrator:\n  models:\n    - name: a\n      file: a.gguf\n"
               "    - name: b\n      file: b.gguf\n      slots: x\n",
               LLORCH_EFORMAT,
               "t.yaml:7:14: 'orchestrator.models[1].slots': expected an integer in 1..256, got \"x\"");
  expect_error("orchestrator:\n  models:\n    - name: a\n", LLORCH_EFORMAT,
               "t.yaml:3:7: 'orchestrator.models[0]': missing required key 'file'");
  /* found by fuzz_config: a key with a line break (folded flow scalar) stays one line */
  expect_error("orchestrator:\n  models:\n    - {name: a, file: a.gguf, x:.\n\n -1}\n",
               LLORCH_EFORMAT,
               "t.yaml:3:31: 'orchestrator.models[0].x:.?-1': unknown key, expected one of: name, "
               "file, ctx, slots, pins, min_replicas, max_replicas, keep_alive, priority, chat_template, reasoning_format");
  /* found by fuzz_config: a null name later reached strcmp in the duplicate check */
  expect_error("orchestrator:\n  models:\n    - name: a\n      file: a.gguf\n"
               "    - name: ~\n      file: b.gguf\n", LLORCH_EFORMAT,
               "t.yaml:5:7: 'orchestrator.models[1].name': required, got null");
  expect_error("orchestrator:\n  models:\n    - name: a\n      file: a.gguf\n      slot: 2\n",
               LLORCH_EFORMAT,
               "t.yaml:5:7: 'orchestrator.models[0].slot': unknown key, expected one of: name, "
               "file, ctx, slots, pins, min_replicas, max_replicas, keep_alive, priority, chat_template, reasoning_format");
  expect_error("orchestrator:\n  models:\n    - name: a\n      file: ../a.gguf\n", LLORCH_ERANGE,
               "t.yaml:4:13: 'orchestrator.models[0].file': expected a path relative to the model "
               "directory, without '..', got \"../a.gguf\"");
  expect_error("orchestrator:\n  models:\n    - name: a\n      file: a.gguf\n"
               "      min_replicas: 3\n      max_replicas: 2\n",
               LLORCH_ERANGE,
               "t.yaml:3:7: 'orchestrator.models[0].min_replicas': expected at most max_replicas "
               "(2), got 3");
  expect_error("orchestrator:\n  models:\n    - {name: a, file: a.gguf}\n"
               "    - {name: a, file: b.gguf}\n",
               LLORCH_EFORMAT,
               "t.yaml:4:7: 'orchestrator.models[1].name': expected a unique model name, got \"a\" "
               "again (also orchestrator.models[0])");
  expect_error("orchestrator:\n  models:\n    - tiny\n", LLORCH_EFORMAT,
               "t.yaml:3:7: 'orchestrator.models[0]': expected a model entry {name, file, ...}, "
               "got \"tiny\"");
  expect_error("orchestrator:\n  models:\n    - {name: a, file: a.gguf, pins: [p/]}\n",
               LLORCH_ERANGE,
               "t.yaml:3:38: 'orchestrator.models[0].pins[0]': expected \"pool\" or "
               "\"pool/device\", got \"p/\"");
  expect_error("orchestrator:\n  models:\n    - {name: a, file: a.gguf, keep_alive: forever}\n",
               LLORCH_EFORMAT,
               "t.yaml:3:43: 'orchestrator.models[0].keep_alive': expected a duration (500ms, 10s, "
               "5m) in 0s..30d or -1 (never), got \"forever\"");
}

static void test_file_errors(void **state) {
  llorch_config cfg;
  llorch_errmsg em = {{0}};
  char *argv[] = {NULL};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_POOL, "/nonexistent/x.yaml", 0, argv, &em),
                   LLORCH_ENOENT);
  assert_string_equal(em.text,
                      "/nonexistent/x.yaml: cannot open config file: No such file or directory");

  char path[] = "/tmp/llorch-test-config-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  const char *text = "pool:\n  heartbeat_interval: 10ms\n";
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  char want[512];
  snprintf(want, sizeof want,
           "%s:2:23: 'pool.heartbeat_interval': expected a duration (500ms, 10s, 5m) in 100ms..1m, "
           "got \"10ms\"", path);
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_POOL, path, 0, argv, &em), LLORCH_ERANGE);
  assert_string_equal(em.text, want);
  unlink(path);
}

/* ---- flags ---- */

static void test_flags_forms(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_WORKER), 0);
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--slots", "8", "--ctx=2048",
                         "--listen=127.0.0.1:0", "--model", "m.gguf", "--device=cuda:1",
                         "--log-level", "warn", "--shutdown-grace=250ms", NULL), 0);
  assert_int_equal(cfg.worker.slots, 8);
  assert_int_equal(cfg.worker.ctx, 2048);
  assert_string_equal(cfg.listen, "127.0.0.1:0");
  assert_string_equal(cfg.worker.model, "m.gguf");
  assert_string_equal(cfg.worker.device, "cuda:1");
  assert_int_equal(cfg.log.level, LLORCH_LOG_WARN);
  assert_int_equal(cfg.shutdown_grace_ms, 250);
  llorch_config_free(&cfg);
}

static void test_flags_errors(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_WORKER), 0);
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--slotz=3", NULL), LLORCH_EINVAL);
  assert_string_equal(em.text, "unknown flag '--slotz'");
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--gpus=0,1", NULL), LLORCH_EINVAL);
  assert_string_equal(em.text, "flag '--gpus' is not valid for --role=worker");
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--slots", NULL), LLORCH_EINVAL);
  assert_string_equal(em.text, "flag '--slots' needs a value");
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--slots", "many", NULL), LLORCH_EINVAL);
  assert_string_equal(em.text,
                      "--slots ('worker.slots'): expected an integer in 1..256, got \"many\"");
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "slots=3", NULL), LLORCH_EINVAL);
  assert_string_equal(em.text, "unexpected argument 'slots=3'");
  llorch_config_free(&cfg);
}

static void test_flags_override_file(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_POOL,
                             "listen: 127.0.0.1:7000\npool:\n  gpus: [0, 1, 2]\n"
                             "  model_dirs: [/a]\n  name: from-file\n", &em), 0);
  assert_int_equal(apply(&cfg, LLORCH_ROLE_POOL, &em, "--gpus=3", "--model-dir", "/b",
                         "--model-dir=/c,/d", "--listen", "127.0.0.1:7001", NULL), 0);
  assert_string_equal(cfg.listen, "127.0.0.1:7001");
  assert_string_equal(cfg.pool.name, "from-file"); /* not overridden: the file's */
  assert_int_equal(cfg.pool.gpus.count, 1);        /* replaced, not appended */
  assert_string_equal(cfg.pool.gpus.items[0], "3");
  assert_int_equal(cfg.pool.model_dirs.count, 3);  /* replaced once, then appended */
  assert_string_equal(cfg.pool.model_dirs.items[0], "/b");
  assert_string_equal(cfg.pool.model_dirs.items[2], "/d");
  llorch_config_free(&cfg);

  /* One flag, two options: --cluster-token in --role=all sets the
   * orchestrator's; in --role=pool the pool's. */
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ALL), 0);
  assert_int_equal(apply(&cfg, LLORCH_ROLE_ALL, &em, "--cluster-token=t1", NULL), 0);
  assert_string_equal(cfg.orchestrator.cluster_token, "t1");
  assert_null(cfg.pool.cluster_token);
  llorch_config_free(&cfg);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_POOL), 0);
  assert_int_equal(apply(&cfg, LLORCH_ROLE_POOL, &em, "--cluster-token", "t2", NULL), 0);
  assert_string_equal(cfg.pool.cluster_token, "t2");
  assert_null(cfg.orchestrator.cluster_token);
  llorch_config_free(&cfg);
}

/* ---- the whole sequence ---- */

static void test_load_finish(void **state) {
  llorch_config cfg;
  llorch_errmsg em = {{0}};
  char *none[] = {NULL};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_WORKER, NULL, 0, none, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'worker.model' is required for --role=worker (--model FILE)");

  /* Beyond loopback without the role's token: refused, naming flag and variable. */
  char *exposed[] = {"--listen=10.1.2.3:9001", "--name", "p1"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_POOL, NULL, 3, exposed, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "--cluster-token"));
  assert_non_null(strstr(em.text, "LLORCH_POOL_CLUSTER_TOKEN"));
  char *wexposed[] = {"--model=m.gguf", "--listen=0.0.0.0:8090"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_WORKER, NULL, 2, wexposed, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "LLORCH_WORKER_TOKEN"));
  char *oexposed[] = {"--listen=:8080"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_ALL, NULL, 1, oexposed, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "LLORCH_ORCHESTRATOR_CLUSTER_TOKEN"));
  /* An empty token is an error, not "no authentication". */
  char *empty[] = {"--cluster-token="};
  assert_true(llorch_config_load(&cfg, LLORCH_ROLE_ORCHESTRATOR, NULL, 1, empty, &em) < 0);
  assert_non_null(strstr(em.text, "non-empty"));
  char *loop6[] = {"--listen=[::1]:0"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_ORCHESTRATOR, NULL, 1, loop6, &em), 0);
  assert_true(llorch_config_listen_is_loopback(&cfg));
  llorch_config_free(&cfg);

  char *args[] = {"--listen=10.1.2.3:9001", "--name", "p1", "--cluster-token", "t0k"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_POOL, NULL, 5, args, &em), 0);
  assert_false(llorch_config_listen_is_loopback(&cfg));
  assert_string_equal(cfg.pool.name, "p1");
  assert_string_equal(cfg.pool.advertise_url, "http://10.1.2.3:9001");
  llorch_config_free(&cfg);

  /* Wildcard address: the host name stands in; the default name is the host's. */
  char host[256] = "";
  gethostname(host, sizeof host);
  char want[400];
  char *wild[] = {"--listen=0.0.0.0:8081", "--cluster-token=t0k"};
  assert_int_equal(llorch_config_load(&cfg, LLORCH_ROLE_POOL, NULL, 2, wild, &em), 0);
  snprintf(want, sizeof want, "http://%s:8081", host);
  assert_string_equal(cfg.pool.advertise_url, want);
  assert_true(strlen(cfg.pool.name) > 0);
  llorch_config_free(&cfg);
}

/* ---- output ---- */

static void test_dump_round_trip(void **state) {
  llorch_config a, b;
  llorch_errmsg em;
  assert_int_equal(load_text(&a, LLORCH_ROLE_NONE, full_yaml, &em), 0);
  /* A string that needs escaping survives too. */
  free(a.worker.id);
  a.worker.id = strdup("id \"quoted\" \\ back\tslash");
  char *one = dump_to_string(&a, LLORCH_CONFIG_DUMP_SECRETS);

  assert_int_equal(llorch_config_init(&b, LLORCH_ROLE_NONE), 0);
  int err = llorch_config_load_string(&b, "dump.yaml", one, strlen(one), &em);
  if (err) fprintf(stderr, "%s\n---\n%s", em.text, one);
  assert_int_equal(err, 0);
  char *two = dump_to_string(&b, LLORCH_CONFIG_DUMP_SECRETS);
  assert_string_equal(one, two);
  assert_string_equal(b.worker.id, "id \"quoted\" \\ back\tslash");
  assert_string_equal(b.worker.token, "s3cret");
  assert_int_equal(b.orchestrator.models.count, 2);
  assert_int_equal(b.orchestrator.models.items[1].keep_alive_ms, -1);
  assert_string_equal(b.orchestrator.models.items[1].pins.items[0], "pool-a");
  assert_int_equal(b.http.header_timeout_ms, 500);
  assert_int_equal(b.pool.cpu_memory, UINT64_C(8) << 30);
  free(one);
  free(two);
  llorch_config_free(&b);

  /* Without the flag, secrets are redacted. */
  char *red = dump_to_string(&a, 0);
  assert_null(strstr(red, "s3cret"));
  assert_null(strstr(red, "k1"));
  assert_non_null(strstr(red, "token: \"<redacted>\""));
  free(red);
  llorch_config_free(&a);

  /* A role's dump holds that role's options only, and reads back. */
  assert_int_equal(llorch_config_init(&a, LLORCH_ROLE_WORKER), 0);
  char *w = dump_to_string(&a, 0);
  assert_non_null(strstr(w, "worker:\n  model: ~\n"));
  assert_null(strstr(w, "pool:"));
  assert_null(strstr(w, "orchestrator:"));
  assert_int_equal(llorch_config_init(&b, LLORCH_ROLE_WORKER), 0);
  assert_int_equal(llorch_config_load_string(&b, "w.yaml", w, strlen(w), &em), 0);
  free(w);
  llorch_config_free(&a);
  llorch_config_free(&b);
}

static void test_usage(void **state) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  llorch_config_usage(f, LLORCH_ROLE_WORKER);
  fclose(f);
  assert_non_null(strstr(buf, "--slots N"));
  assert_non_null(strstr(buf, "(default 4) [worker.slots]"));
  assert_non_null(strstr(buf, "--listen HOST:PORT"));
  assert_null(strstr(buf, "--gpus 0,1"));
  free(buf);

  f = open_memstream(&buf, &len);
  llorch_config_usage(f, LLORCH_ROLE_NONE);
  fclose(f);
  assert_non_null(strstr(buf, "--gpus 0,1"));
  assert_non_null(strstr(buf, "--api-key KEY"));
  free(buf);
}

/* Secrets from the environment: over the file, under the flags, only for the
 * role's own options, and a bad value named without echoing it. */
static void test_env_secrets(void **state) {
  llorch_config cfg;
  llorch_errmsg em;
  char name[96];
  llorch_config_env_name("orchestrator.api_keys", name, sizeof name);
  assert_string_equal(name, "LLORCH_ORCHESTRATOR_API_KEYS");

  setenv("LLORCH_WORKER_TOKEN", "from-env", 1);
  setenv("LLORCH_POOL_CLUSTER_TOKEN", "pool-secret", 1);
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_WORKER, "worker:\n  token: from-file\n", &em), 0);
  assert_int_equal(llorch_config_apply_env(&cfg, &em), 0);
  assert_string_equal(cfg.worker.token, "from-env");
  assert_null(cfg.pool.cluster_token); /* not a worker option: ignored */
  assert_int_equal(apply(&cfg, LLORCH_ROLE_WORKER, &em, "--token", "from-flag", NULL), 0);
  assert_string_equal(cfg.worker.token, "from-flag");
  llorch_config_free(&cfg);

  setenv("LLORCH_ORCHESTRATOR_API_KEYS", "k1,k2", 1);
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_ORCHESTRATOR,
                             "orchestrator:\n  api_keys: [file-key]\n", &em), 0);
  assert_int_equal(llorch_config_apply_env(&cfg, &em), 0);
  assert_int_equal(cfg.orchestrator.api_keys.count, 2); /* replaces, like a flag */
  assert_string_equal(cfg.orchestrator.api_keys.items[1], "k2");
  llorch_config_free(&cfg);

  setenv("LLORCH_ORCHESTRATOR_API_KEYS", "k1,", 1);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  int err = llorch_config_apply_env(&cfg, &em);
  assert_true(err < 0);
  assert_non_null(strstr(em.text, "environment LLORCH_ORCHESTRATOR_API_KEYS"));
  assert_null(strstr(em.text, "k1"));
  llorch_config_free(&cfg);

  /* Set but empty: an error naming the variable, never "no authentication". */
  setenv("LLORCH_ORCHESTRATOR_API_KEYS", "k1", 1);
  setenv("LLORCH_ORCHESTRATOR_CLUSTER_TOKEN", "", 1);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  assert_true(llorch_config_apply_env(&cfg, &em) < 0);
  assert_non_null(strstr(em.text, "environment LLORCH_ORCHESTRATOR_CLUSTER_TOKEN"));
  llorch_config_free(&cfg);
  unsetenv("LLORCH_ORCHESTRATOR_CLUSTER_TOKEN");

  unsetenv("LLORCH_WORKER_TOKEN");
  unsetenv("LLORCH_POOL_CLUSTER_TOKEN");
  unsetenv("LLORCH_ORCHESTRATOR_API_KEYS");
}

/* Every other option can come from the environment too (containers are
 * configured that way); a bad value is named with the value shown. */
static void test_env_options(void **state) {
  (void)state;
  llorch_config cfg;
  llorch_errmsg em;
  setenv("LLORCH_SHUTDOWN_GRACE", "5s", 1);
  setenv("LLORCH_POOL_MODEL_DIRS", "/models,/more", 1);
  assert_int_equal(load_text(&cfg, LLORCH_ROLE_POOL, "shutdown_grace: 10s\n", &em), 0);
  assert_int_equal(llorch_config_apply_env(&cfg, &em), 0);
  assert_int_equal(cfg.shutdown_grace_ms, 5000);
  assert_int_equal(cfg.pool.model_dirs.count, 2);
  assert_string_equal(cfg.pool.model_dirs.items[1], "/more");
  llorch_config_free(&cfg);

  setenv("LLORCH_SHUTDOWN_GRACE", "soon", 1);
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_POOL), 0);
  assert_true(llorch_config_apply_env(&cfg, &em) < 0);
  assert_non_null(strstr(em.text, "environment LLORCH_SHUTDOWN_GRACE ('shutdown_grace')"));
  assert_non_null(strstr(em.text, "\"soon\""));
  llorch_config_free(&cfg);
  unsetenv("LLORCH_SHUTDOWN_GRACE");
  unsetenv("LLORCH_POOL_MODEL_DIRS");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_env_options),
      cmocka_unit_test(test_roles),
      cmocka_unit_test(test_full_file),
      cmocka_unit_test(test_value_syntax),
      cmocka_unit_test(test_error_syntax),
      cmocka_unit_test(test_error_unknown_key),
      cmocka_unit_test(test_error_wrong_type),
      cmocka_unit_test(test_error_range),
      cmocka_unit_test(test_error_duplicate),
      cmocka_unit_test(test_error_models),
      cmocka_unit_test(test_file_errors),
      cmocka_unit_test(test_flags_forms),
      cmocka_unit_test(test_flags_errors),
      cmocka_unit_test(test_flags_override_file),
      cmocka_unit_test(test_env_secrets),
      cmocka_unit_test(test_load_finish),
      cmocka_unit_test(test_dump_round_trip),
      cmocka_unit_test(test_usage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
