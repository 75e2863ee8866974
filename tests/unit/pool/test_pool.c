/*
 * Unit tests of the pool manager's pure parts (src/roles/pool/models.c and
 * state.c): model file names from requests, the model directory scan over
 * synthesized GGUF files, device free memory and the preflight arithmetic,
 * the stderr tail, and the state document - which must parse with the
 * orchestrator's own parser (tests/unit/orchestrator has its twin).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/commands.h"
#include "llorch/memory.h"
#include "llorch/model.h"
#include "roles/pool/pool-impl.h"
#ifdef POOL_TEST_WITH_ORCHESTRATOR
#include "roles/orchestrator/orchestrator-impl.h"
#endif

/* ---- fixtures ---- */

static char g_dir[256];

static void synth(const char *name, const char *type, const char *ctx) {
  char out[512];
  snprintf(out, sizeof out, "%s/%s", g_dir, name);
  char *argv[] = {"synth", "--arch", "qwen2", "--layers", "2", "--embd", "64", "--ff", "128",
                  "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--ctx", (char *)ctx,
                  "--type", (char *)type, "-o", out, NULL};
  assert_int_equal(llorch_cmd_synth(21, argv), 0);
}

static void write_file(const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup_dir(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/llorch-test-pool-XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  synth("tiny.gguf", "f32", "512");
  synth("small-q8.gguf", "q8_0", "1024");
  write_file("broken.gguf", "GGUF but not really");
  write_file("notes.txt", "not a model");
  char sub[300];
  snprintf(sub, sizeof sub, "%s/sub.gguf", g_dir); /* a directory named like a model */
  mkdir(sub, 0700);
  return 0;
}

static int teardown_dir(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const pool_model *find_model(const pool_model *ms, int n, const char *file) {
  for (int i = 0; i < n; i++)
    if (strcmp(ms[i].file, file) == 0) return &ms[i];
  return NULL;
}

/* ---- names ---- */

static void test_file_names(void **state) {
  (void)state;
  llorch_errmsg em = {{0}};
  assert_int_equal(pool_file_name_check("file", "tiny.gguf", &em), 0);
  assert_int_equal(pool_file_name_check("file", "Qwen2.5-0.5B-Q8_0.gguf", &em), 0);

  assert_int_equal(pool_file_name_check("file", "../etc/passwd.gguf", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "'file'"));
  assert_non_null(strstr(em.text, "no '/'"));
  assert_int_equal(pool_file_name_check("file", "/abs/tiny.gguf", &em), LLORCH_EINVAL);
  assert_int_equal(pool_file_name_check("file", "sub/tiny.gguf", &em), LLORCH_EINVAL);
  assert_int_equal(pool_file_name_check("file", "..gguf", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, ".."));
  assert_int_equal(pool_file_name_check("model", "a..b.gguf", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "'model'"));
  assert_int_equal(pool_file_name_check("file", "", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "empty"));
  assert_int_equal(pool_file_name_check("file", "tiny.bin", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, ".gguf"));
  assert_int_equal(pool_file_name_check("file", ".gguf", &em), LLORCH_EINVAL);
  assert_int_equal(pool_file_name_check("file", "a\nb.gguf", &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "control"));
  assert_int_equal(pool_file_name_check("file", "back\\slash.gguf", &em), LLORCH_EINVAL);
  char longname[400];
  memset(longname, 'a', sizeof longname);
  strcpy(longname + 300, ".gguf");
  assert_int_equal(pool_file_name_check("file", longname, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "too long"));
}

/* ---- model files between pools (files.c) ---- */

static void test_range_parse(void **state) {
  (void)state;
  llorch_errmsg em = {{0}};
  uint64_t at = 7;
  assert_int_equal(pool_range_parse("bytes=0-", &at, &em), 0);
  assert_int_equal(at, 0);
  assert_int_equal(pool_range_parse("bytes=123456789012-", &at, &em), 0);
  assert_int_equal(at, 123456789012ull);
  const char *bad[] = {"bytes=", "bytes=-5", "bytes=0-10", "bytes=1-,5-", "items=0-", "bytes=abc-", "bytes= 1-",
                       "bytes=99999999999999999999999-", "bytes=1", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(pool_range_parse(bad[i], &at, &em), LLORCH_EINVAL);
    assert_non_null(strstr(em.text, "'Range' must be bytes=N-"));
  }
  /* the value is shown printable */
  assert_int_equal(pool_range_parse("bytes=\n1-", &at, &em), LLORCH_EINVAL);
  assert_null(strchr(em.text, '\n'));
}

/* A copy as the state document writes it, and as the orchestrator parses it. */
static void test_fetch_report(void **state) {
  (void)state;
  pool_fetch f;
  memset(&f, 0, sizeof f);
  snprintf(f.file, sizeof f.file, "m.gguf");
  snprintf(f.id, sizeof f.id, "f3");
  snprintf(f.source, sizeof f.source, "http://127.0.0.1:9001");
  f.state = POOL_FETCH_RUNNING;
  f.size = 1000;
  f.done = 250;
  f.rate = 50;
  pool_fetch g = f;
  g.state = POOL_FETCH_FAILED;
  snprintf(g.file, sizeof g.file, "n.gguf");
  snprintf(g.error, sizeof g.error, "verification failed: \"x\"");
  f.next = &g;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"protocol\":1,\"pool\":\"pool-a\",\"url\":\"http://127.0.0.1:1\",\"boot_id\":\"b\","
                       "\"seq\":1,\"heartbeat_interval_ms\":500,\"devices\":[],\"models\":[],\"workers\":[],"
                       "\"fetches\":");
  pool_fetches_write(&b, &f);
  llorch_jbuf_cstr(&b, "}");
  assert_false(llorch_jbuf_error(&b));
  cJSON *doc = cJSON_Parse(b.data);
  assert_non_null(doc);
  const cJSON *x = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "fetches"), 0);
  assert_string_equal(cJSON_GetObjectItem(x, "state")->valuestring, "running");
  assert_int_equal(cJSON_GetObjectItem(x, "eta_s")->valueint, 15); /* 750 bytes at 50/s */
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(x, "error")));
  const cJSON *y = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "fetches"), 1);
  assert_string_equal(cJSON_GetObjectItem(y, "state")->valuestring, "failed");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(y, "eta_s")));
#ifdef POOL_TEST_WITH_ORCHESTRATOR
  sched_pool_report rep;
  llorch_errmsg em = {{0}};
  assert_int_equal(orch_pool_report_parse(doc, &rep, &em), 0);
  assert_int_equal(rep.n_fetches, 2);
  assert_string_equal(rep.fetches[0].id, "f3");
  assert_string_equal(rep.fetches[0].state, "running");
  assert_int_equal(rep.fetches[0].bytes_done, 250);
  assert_int_equal(rep.fetches[0].eta_s, 15);
  assert_int_equal(rep.fetches[1].eta_s, -1);
  assert_string_equal(rep.fetches[1].error, "verification failed: \"x\"");
  sched_pool_report_free(&rep);
  /* a wrong state is named */
  cJSON_ReplaceItemInObject(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "fetches"), 1), "state",
                            cJSON_CreateString("bogus"));
  assert_int_equal(orch_pool_report_parse(doc, &rep, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "fetches[1].state"));
#endif
  cJSON_Delete(doc);
  llorch_jbuf_free(&b);
}

/* ---- the scan ---- */

static void test_scan(void **state) {
  (void)state;
  char *items[] = {g_dir, "/nonexistent/llorch-models"};
  llorch_strlist dirs = {items, 2};
  pool_model *ms = NULL;
  int n = 0;
  assert_int_equal(pool_models_scan(&dirs, NULL, 0, &ms, &n), 0);
  /* tiny, small-q8 and the broken one (kept as bad); not notes.txt, not the directory */
  assert_int_equal(n, 3);
  const pool_model *tiny = find_model(ms, n, "tiny.gguf");
  const pool_model *q8 = find_model(ms, n, "small-q8.gguf");
  const pool_model *bad = find_model(ms, n, "broken.gguf");
  assert_non_null(tiny);
  assert_non_null(q8);
  assert_non_null(bad);
  assert_true(bad->bad);
  assert_false(tiny->bad);
  assert_string_equal(tiny->name, "tiny");
  assert_string_equal(tiny->arch, "qwen2");
  assert_string_equal(tiny->quant, "F32");
  assert_int_equal(tiny->ctx, 512);
  assert_string_equal(q8->name, "small-q8");
  assert_string_equal(q8->quant, "Q8_0");
  assert_int_equal(q8->ctx, 1024);
  /* Parameters are the same shape in both; bytes follow the type. */
  assert_int_equal(tiny->params, q8->params);
  assert_true(tiny->params > 100000);
  assert_int_equal(tiny->tensor_bytes, tiny->params * 4); /* all F32 */
  assert_true(q8->tensor_bytes < tiny->tensor_bytes);
  struct stat st;
  char path[512];
  snprintf(path, sizeof path, "%s/tiny.gguf", g_dir);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(tiny->file_bytes, (uint64_t)st.st_size);
  assert_true(tiny->tensor_bytes < tiny->file_bytes);

  /* The preflight's need is llorch_mem_need of the coefficients the scan
   * reported (what the orchestrator computes), at every shape. */
  static const uint32_t shapes[][2] = {{1024, 1}, {512, 4}, {4096, 16}, {1, 1}};
  for (int k = 0; k < 2; k++) {
    const llorch_mem_coeffs *e = &tiny->est[k];
    assert_true(e->per_token_bytes > 0);
    assert_true(e->per_slot_bytes > 0);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
      uint64_t need = 0;
      uint32_t ctx_train = 0;
      llorch_errmsg em = {{0}};
      assert_int_equal(pool_model_need(path, shapes[i][0], shapes[i][1], k == 1, &need, &ctx_train, &em), 0);
      assert_int_equal(ctx_train, 512);
      assert_int_equal(llorch_mem_need(e, shapes[i][0], shapes[i][1]), need);
    }
    if (k == 1) assert_true(e->fixed_bytes > tiny->est[0].fixed_bytes); /* CUDA context overhead */
  }

  /* An unchanged file is taken from the last scan, not re-read... */
  pool_model *prev = ms;
  strcpy(prev[0].arch, "cached");
  const char *cached_file = prev[0].file;
  pool_model *ms2 = NULL;
  int n2 = 0;
  assert_int_equal(pool_models_scan(&dirs, prev, n, &ms2, &n2), 0);
  assert_int_equal(n2, 3);
  assert_string_equal(find_model(ms2, n2, cached_file)->arch, "cached");
  /* ...and a changed one is. */
  snprintf(path, sizeof path, "%s/%s", g_dir, cached_file);
  struct timeval tv[2] = {{1000000, 0}, {1000000, 0}};
  assert_int_equal(utimes(path, tv), 0);
  pool_model *ms3 = NULL;
  int n3 = 0;
  assert_int_equal(pool_models_scan(&dirs, ms2, n2, &ms3, &n3), 0);
  const pool_model *again = find_model(ms3, n3, cached_file);
  assert_true(strcmp(again->arch, "cached") != 0);
  free(ms);
  free(ms2);
  free(ms3);

  /* Locating a file for a request. */
  char found[4096];
  assert_int_equal(pool_model_locate(&dirs, "tiny.gguf", found, sizeof found), 0);
  assert_non_null(strstr(found, "/tiny.gguf"));
  assert_int_equal(pool_model_locate(&dirs, "missing.gguf", found, sizeof found), LLORCH_ENOENT);
  assert_int_equal(pool_model_locate(&dirs, "sub.gguf", found, sizeof found), LLORCH_ENOENT);
}

static void test_read_errors(void **state) {
  (void)state;
  pool_model m;
  llorch_errmsg em = {{0}};
  assert_int_equal(pool_model_read(g_dir, "missing.gguf", &m, &em), LLORCH_ENOENT);
  assert_non_null(strstr(em.text, "missing.gguf"));
  assert_true(pool_model_read(g_dir, "broken.gguf", &m, &em) < 0);
  assert_non_null(strstr(em.text, "broken.gguf"));
}

/* ---- devices and preflight ---- */

static pool_worker *mk_worker(const char *id, const char *dev, pool_worker_state st, uint64_t est,
                              uint64_t mem, bool exited) {
  pool_worker *w = calloc(1, sizeof *w);
  snprintf(w->id, sizeof w->id, "%s", id);
  snprintf(w->model, sizeof w->model, "tiny");
  snprintf(w->file, sizeof w->file, "tiny.gguf");
  snprintf(w->devices[0], sizeof w->devices[0], "%s", dev);
  w->n_devices = 1;
  w->ctx = 256;
  w->slots = 2;
  w->state = st;
  w->estimate_bytes = est;
  w->actual_bytes = mem;
  w->proc_exited = exited;
  w->exit_code = -1;
  w->started_at_ms = 1795460000000;
  return w;
}

static void free_workers(pool_worker *w) {
  while (w) {
    pool_worker *n = w->next;
    free(w);
    w = n;
  }
}

static void test_device_free(void **state) {
  (void)state;
  llorch_device_info cpu = {.kind = LLORCH_DEVICE_CPU, .id = "cpu", .memory_total = 1000,
                            .memory_free = 900, .utilization_pct = -1, .temperature_c = -1};
  llorch_device_info gpu = {.kind = LLORCH_DEVICE_CUDA, .index = 1, .id = "gpu1",
                            .memory_total = 10000, .memory_free = 6000, .utilization_pct = 5,
                            .temperature_c = 40};
  /* No workers: the measured free memory caps the CPU budget. */
  assert_int_equal(pool_device_free(&cpu, NULL), 900);
  assert_int_equal(pool_device_free(&gpu, NULL), 6000);

  pool_worker *a = mk_worker("w-1", "cpu", POOL_WORKER_READY, 300, 200, false);   /* holds 300 */
  pool_worker *b = mk_worker("w-2", "cpu", POOL_WORKER_STARTING, 100, 0, false);  /* holds 100 */
  pool_worker *c = mk_worker("w-3", "cpu", POOL_WORKER_EXITED, 400, 400, true);   /* gone */
  pool_worker *g1 = mk_worker("w-4", "gpu1", POOL_WORKER_READY, 2000, 2500, false);
  pool_worker *g2 = mk_worker("w-5", "gpu1", POOL_WORKER_STARTING, 1500, 0, false);
  a->next = b;
  b->next = c;
  c->next = g1;
  g1->next = g2;
  /* CPU: budget 1000 - 400 held = 600, below the measured 900. */
  assert_int_equal(pool_device_free(&cpu, a), 600);
  /* GPU: NVML already counts the ready worker; only the starting one is subtracted. */
  assert_int_equal(pool_device_free(&gpu, a), 4500);
  /* A worker on two GPUs holds half on each. */
  g2->n_devices = 2;
  snprintf(g2->devices[1], sizeof g2->devices[1], "gpu0");
  assert_int_equal(pool_worker_device_bytes(g2), 750);
  assert_int_equal(pool_device_free(&gpu, a), 5250);

  llorch_errmsg em = {{0}};
  assert_int_equal(pool_preflight_check("tiny", 2048, 4, "cpu", 600, 600, &em), 0);
  assert_int_equal(pool_preflight_check("tiny", 2048, 4, "cpu", 601, 600, &em),
                   LLORCH_EINSUFFICIENT_MEMORY);
  assert_string_equal(em.text, "tiny ctx 2048 x 4 slots needs 601 bytes; cpu has 600 free");
  free_workers(a);
}

/* ---- stderr tail ---- */

static void test_tail(void **state) {
  (void)state;
  pool_worker *w = mk_worker("w-1", "cpu", POOL_WORKER_STARTING, 1, 0, false);
  /* Lines arrive in arbitrary pieces. */
  pool_worker_tail_feed(w, "first li", 8);
  pool_worker_tail_feed(w, "ne\r\nsecond\nthi", 14);
  assert_int_equal(w->tail_n, 2);
  assert_string_equal(w->tail[0], "first line");
  assert_string_equal(w->tail[1], "second");
  pool_worker_tail_flush(w); /* the unterminated last line counts at the end */
  assert_int_equal(w->tail_n, 3);
  assert_string_equal(w->tail[2], "thi");
  /* Only the last POOL_STDERR_LINES stay, oldest first. */
  char line[32];
  for (int i = 0; i < 30; i++) {
    int n = snprintf(line, sizeof line, "line %d\n", i);
    pool_worker_tail_feed(w, line, (size_t)n);
  }
  assert_int_equal(w->tail_n, POOL_STDERR_LINES);
  assert_string_equal(w->tail[w->tail_first], "line 10");
  assert_string_equal(w->tail[(w->tail_first + POOL_STDERR_LINES - 1) % POOL_STDERR_LINES], "line 29");
  /* A very long line is cut, not split into many. */
  char big[1000];
  memset(big, 'x', sizeof big);
  pool_worker_tail_feed(w, big, sizeof big);
  pool_worker_tail_feed(w, "\n", 1);
  const char *last = w->tail[(w->tail_first + POOL_STDERR_LINES - 1) % POOL_STDERR_LINES];
  assert_int_equal(strlen(last), POOL_STDERR_LINE_MAX - 1);
  assert_string_equal(w->tail[w->tail_first], "line 11");
  free(w);
}

static void test_exit_describe(void **state) {
  (void)state;
  char buf[64];
  pool_exit_describe(1, 0, buf, sizeof buf);
  assert_string_equal(buf, "exit code 1");
  pool_exit_describe(-1, 9, buf, sizeof buf);
  assert_string_equal(buf, "killed by signal SIGKILL");
  assert_string_equal(pool_signal_name(15, buf, sizeof buf), "SIGTERM");
  assert_string_equal(pool_signal_name(63, buf, sizeof buf), "SIG63");
}

static void test_worker_url(void **state) {
  (void)state;
  char out[128];
  assert_int_equal(pool_worker_url("http://127.0.0.1:40123", "", out, sizeof out), 0);
  assert_string_equal(out, "http://127.0.0.1:40123");
  /* A pool on a wildcard address hands out its advertise host. */
  assert_int_equal(pool_worker_url("http://127.0.0.1:40123", "gpu-box-1.local", out, sizeof out), 0);
  assert_string_equal(out, "http://gpu-box-1.local:40123");
  assert_int_equal(pool_worker_url("http://[::1]:40123", "fd00::2", out, sizeof out), 0);
  assert_string_equal(out, "http://[fd00::2]:40123");
  assert_int_equal(pool_worker_url("http://127.0.0.1:40123", "10.0.0.2", out, sizeof out), 0);
  assert_string_equal(out, "http://10.0.0.2:40123");
  /* What a worker must not get away with. */
  assert_int_equal(pool_worker_url("https://127.0.0.1:1", "", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://127.0.0.1", "", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://127.0.0.1:", "", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://:80", "", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://h:80/x", "", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://[::1]", "x", out, sizeof out), LLORCH_EINVAL);
  assert_int_equal(pool_worker_url("http://127.0.0.1:40123", "", out, 10), LLORCH_EINVAL);
}

/* ---- the state document ---- */

static char *state_doc(pool_worker *workers, const pool_model *ms, int n_models) {
  llorch_device_info devs[2] = {
      {.kind = LLORCH_DEVICE_CPU, .id = "cpu", .uuid = "cpu-host", .name = "CPU",
       .memory_total = 1 << 30, .memory_free = 1 << 30, .utilization_pct = -1, .temperature_c = -1},
      {.kind = LLORCH_DEVICE_CUDA, .index = 0, .id = "gpu0", .uuid = "GPU-1234", .name = "NVIDIA X",
       .memory_total = 8000000000ull, .memory_free = 7000000000ull, .utilization_pct = 12,
       .temperature_c = 41}};
  pool_state_view v = {.pool = "pool-a", .url = "http://127.0.0.1:8101", .boot_id = "b00t",
                       .seq = 7, .heartbeat_interval_ms = 500, .devices = devs, .n_devices = 2,
                       .models = ms, .n_models = n_models, .workers = workers};
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  pool_state_write(&b, &v);
  assert_int_equal(llorch_jbuf_error(&b), 0);
  return b.data;
}

static void test_state_document(void **state) {
  (void)state;
  pool_model ms[2];
  memset(ms, 0, sizeof ms);
  snprintf(ms[0].name, sizeof ms[0].name, "tiny");
  snprintf(ms[0].file, sizeof ms[0].file, "tiny.gguf");
  snprintf(ms[0].arch, sizeof ms[0].arch, "qwen2");
  snprintf(ms[0].quant, sizeof ms[0].quant, "F32");
  ms[0].params = 139840;
  ms[0].ctx = 512;
  ms[0].file_bytes = 572960;
  ms[0].tensor_bytes = 559360;
  ms[0].est[0].fixed_bytes = 18000000;
  ms[0].est[0].per_token_bytes = 2320;
  ms[0].est[1].fixed_bytes = 538000000;
  ms[0].est[1].per_token_bytes = 2320;
  snprintf(ms[1].file, sizeof ms[1].file, "broken.gguf");
  ms[1].bad = true;

  pool_worker *ready = mk_worker("w-1", "cpu", POOL_WORKER_READY, 300000, 200000, false);
  snprintf(ready->url, sizeof ready->url, "http://127.0.0.1:40211");
  snprintf(ready->token, sizeof ready->token, "tok");
  ready->pid = 31337;
  pool_worker *starting = mk_worker("w-2", "gpu0", POOL_WORKER_STARTING, 1000000000, 0, false);
  snprintf(starting->token, sizeof starting->token, "secret-before-ready");
  pool_worker *dead = mk_worker("w-3", "cpu", POOL_WORKER_EXITED, 1, 1, true);
  dead->has_exit = true;
  dead->exit_signal = 9;
  snprintf(dead->reason, sizeof dead->reason, "killed by signal SIGKILL");
  pool_worker_tail_feed(dead, "loading\nlast \"words\"\n", 21);
  pool_worker *failed = mk_worker("w-4", "cpu", POOL_WORKER_FAILED, 1, 0, true);
  failed->has_exit = true;
  failed->exit_code = 1;
  snprintf(failed->reason, sizeof failed->reason, "exited before ready: exit code 1");
  ready->next = starting;
  starting->next = dead;
  dead->next = failed;

  char *text = state_doc(ready, ms, 2);
  cJSON *doc = cJSON_Parse(text);
  assert_non_null(doc);
  assert_int_equal(cJSON_GetObjectItem(doc, "protocol")->valueint, 1);
  assert_string_equal(cJSON_GetObjectItem(doc, "pool")->valuestring, "pool-a");
  assert_int_equal(cJSON_GetObjectItem(doc, "seq")->valueint, 7);
  assert_int_equal(cJSON_GetObjectItem(doc, "heartbeat_interval_ms")->valueint, 500);
  const cJSON *devs = cJSON_GetObjectItem(doc, "devices");
  assert_int_equal(cJSON_GetArraySize(devs), 2);
  const cJSON *cpu = cJSON_GetArrayItem(devs, 0);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(cpu, "utilization")));
  /* The CPU device reports what its live workers hold as used. */
  assert_int_equal((int64_t)cJSON_GetObjectItem(cpu, "memory_free")->valuedouble, (1 << 30) - 300000);
  assert_int_equal((int64_t)cJSON_GetObjectItem(cpu, "memory_used")->valuedouble, 300000);
  const cJSON *gpu = cJSON_GetArrayItem(devs, 1);
  assert_string_equal(cJSON_GetObjectItem(gpu, "kind")->valuestring, "cuda");
  assert_int_equal(cJSON_GetObjectItem(gpu, "temperature")->valueint, 41);
  assert_int_equal((int64_t)cJSON_GetObjectItem(gpu, "memory_free")->valuedouble, 6000000000ll);

  const cJSON *models = cJSON_GetObjectItem(doc, "models");
  assert_int_equal(cJSON_GetArraySize(models), 1); /* the bad file is not reported */
  const cJSON *m = cJSON_GetArrayItem(models, 0);
  assert_string_equal(cJSON_GetObjectItem(m, "file")->valuestring, "tiny.gguf");
  assert_int_equal(cJSON_GetObjectItem(m, "tensor_bytes")->valueint, 559360);
  const cJSON *est = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "estimate"), "cuda");
  assert_int_equal(cJSON_GetObjectItem(est, "fixed_bytes")->valuedouble, 538000000);

  const cJSON *ws = cJSON_GetObjectItem(doc, "workers");
  assert_int_equal(cJSON_GetArraySize(ws), 4);
  const cJSON *w1 = cJSON_GetArrayItem(ws, 0);
  assert_string_equal(cJSON_GetObjectItem(w1, "state")->valuestring, "ready");
  assert_string_equal(cJSON_GetObjectItem(w1, "url")->valuestring, "http://127.0.0.1:40211");
  /* Worker tokens never appear in state documents (only in the start answer). */
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(w1, "token")));
  /* What the pool counts for it (the CPU's memory_used above): the larger of
   * its estimate and its measured 200000, with both beside it. */
  assert_int_equal(cJSON_GetObjectItem(w1, "memory_bytes")->valueint, 300000);
  assert_int_equal(cJSON_GetObjectItem(w1, "estimate_bytes")->valueint, 300000);
  assert_int_equal(cJSON_GetObjectItem(w1, "actual_bytes")->valueint, 200000);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(w1, "exit")));
  const cJSON *w2 = cJSON_GetArrayItem(ws, 1);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(w2, "token")));
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(w2, "url")));
  assert_int_equal(cJSON_GetObjectItem(w2, "memory_bytes")->valueint, 1000000000);
  const cJSON *x3 = cJSON_GetObjectItem(cJSON_GetArrayItem(ws, 2), "exit");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(x3, "code")));
  assert_string_equal(cJSON_GetObjectItem(x3, "signal")->valuestring, "SIGKILL");
  const cJSON *tail = cJSON_GetObjectItem(x3, "stderr_tail");
  assert_int_equal(cJSON_GetArraySize(tail), 2);
  assert_string_equal(cJSON_GetArrayItem(tail, 1)->valuestring, "last \"words\"");
  const cJSON *x4 = cJSON_GetObjectItem(cJSON_GetArrayItem(ws, 3), "exit");
  assert_int_equal(cJSON_GetObjectItem(x4, "code")->valueint, 1);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(x4, "signal")));

#ifdef POOL_TEST_WITH_ORCHESTRATOR
  /* The orchestrator's parser takes it as it is. */
  sched_pool_report rep;
  llorch_errmsg em = {{0}};
  assert_int_equal(orch_pool_report_parse(doc, &rep, &em), 0);
  assert_int_equal(rep.n_devices, 2);
  assert_int_equal(rep.n_models, 1);
  assert_int_equal(rep.n_workers, 4);
  assert_string_equal(rep.workers[2].exit_signal, "SIGKILL");
  assert_int_equal(rep.workers[3].exit_code, 1);
  sched_pool_report_free(&rep);

  /* And a worker event as pool_send_event writes it. */
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  pool_worker_write(&b, dead, false);
  cJSON *wj = cJSON_Parse(b.data);
  sched_worker_report wr;
  assert_int_equal(orch_worker_report_parse(wj, "events[0].worker", &wr, &em), 0);
  assert_string_equal(wr.id, "w-3");
  cJSON_Delete(wj);
  llorch_jbuf_free(&b);
#endif
  cJSON_Delete(doc);
  free(text);
  free_workers(ready);
}

#ifdef POOL_TEST_WITH_ORCHESTRATOR
/* ---- the books: pool and orchestrator agree on what a victim frees ---- */

static void books_op_assign(void *ud, sched_req *r, sched_worker *w) { (void)ud, (void)r, (void)w; }
static void books_op_start(void *ud, const sched_start *st) { *(uint64_t *)ud = st->need_bytes; }
static void books_op_stop(void *ud, sched_worker *w, const char *why) {
  (void)ud;
  (void)why;
  w->stop_sent = true; /* the scheduler sets it too; the test only reads it */
}
static void books_op_fail(void *ud, sched_req *r, int status, const char *code, const char *msg) {
  (void)ud, (void)r, (void)status, (void)code, (void)msg;
}

/* The pool's document for one CPU device of `budget` bytes, parsed by the
 * orchestrator's parser and applied to its scheduler; returns the device's
 * reported memory_free. */
static uint64_t books_apply(sched *s, pool_worker *workers, const pool_model *ms, int n_models,
                            uint64_t budget, uint64_t seq, int64_t now) {
  llorch_device_info dev = {.kind = LLORCH_DEVICE_CPU, .id = "cpu", .uuid = "cpu-host",
                            .name = "CPU", .memory_total = budget,
                            .memory_free = 64ull << 30, /* the machine has plenty: the budget rules */
                            .utilization_pct = -1, .temperature_c = -1};
  pool_state_view v = {.pool = "pool-b", .url = "http://127.0.0.1:8101", .boot_id = "b00t",
                       .seq = seq, .heartbeat_interval_ms = 500, .devices = &dev, .n_devices = 1,
                       .models = ms, .n_models = n_models, .workers = workers};
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  pool_state_write(&b, &v);
  cJSON *doc = cJSON_Parse(b.data);
  assert_non_null(doc);
  sched_pool_report rep;
  llorch_errmsg em = {{0}};
  assert_int_equal(orch_pool_report_parse(doc, &rep, &em), 0);
  assert_int_equal(sched_pool_apply(s, &rep, seq == 1, now, NULL), 0);
  uint64_t free_bytes = rep.devices[0].memory_free;
  sched_pool_report_free(&rep);
  cJSON_Delete(doc);
  llorch_jbuf_free(&b);
  return free_bytes;
}

/*
 * Three same-shape models on a pool whose CPU budget fits one worker and a
 * half: the idle worker of one model, counted by the pool at its estimate
 * (its measured use is smaller) or at its measured use (larger), is credited
 * by the orchestrator with exactly what the pool reports free once it is gone,
 * so the third model's request evicts it and then fits, in the orchestrator's
 * books and in the pool's preflight alike.
 */
static void test_books_agree(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/small-q8.gguf", g_dir);
  pool_model base;
  llorch_errmsg em = {{0}};
  assert_int_equal(pool_model_read(g_dir, "small-q8.gguf", &base, &em), 0);
  pool_model ms[3];
  const char *names[3] = {"m1", "m2", "m3"};
  for (int i = 0; i < 3; i++) {
    ms[i] = base;
    snprintf(ms[i].name, sizeof ms[i].name, "%s", names[i]);
    snprintf(ms[i].file, sizeof ms[i].file, "%s.gguf", names[i]);
  }
  const uint32_t ctx = 256, slots = 2;
  uint64_t need = 0;
  uint32_t ctx_train = 0;
  assert_int_equal(pool_model_need(path, ctx, slots, false, &need, &ctx_train, &em), 0);
  assert_int_equal(need, llorch_mem_need(&base.est[LLORCH_DEVICE_CPU], ctx, slots));
  const uint64_t budget = need + need / 2;

  for (int variant = 0; variant < 2; variant++) {
    /* variant 0: measured below the estimate (the bug's case); 1: above */
    const uint64_t actual = variant == 0 ? need / 5 : need + need / 10;
    uint64_t started_need = 0;
    sched s;
    sched_limits lim = {.max_total = 10, .queue_timeout_ms = 10000, .heartbeat_miss_limit = 3,
                        .retry_max = 1};
    sched_ops ops = {&started_need, books_op_assign, books_op_start, books_op_stop, books_op_fail, NULL, NULL};
    assert_int_equal(sched_init(&s, &lim, &ops), 0);
    for (int i = 0; i < 3; i++) {
      llorch_model_entry e;
      memset(&e, 0, sizeof e);
      e.name = (char *)names[i];
      e.file = ms[i].file;
      e.ctx = (int)ctx;
      e.slots = (int)slots;
      e.max_replicas = 2;
      e.keep_alive_ms = 60000;
      assert_true(sched_model_add(&s, &e, NULL) >= 0);
    }
    pool_worker *w = mk_worker("w-1", "cpu", POOL_WORKER_READY, need, actual, false);
    snprintf(w->model, sizeof w->model, "m1");
    snprintf(w->file, sizeof w->file, "m1.gguf");
    snprintf(w->url, sizeof w->url, "http://127.0.0.1:40211");
    snprintf(w->token, sizeof w->token, "tok");
    w->ctx = (int)ctx;
    w->slots = (int)slots;
    int64_t now = 1000000;
    uint64_t free_before = books_apply(&s, w, ms, 3, budget, 1, now);
    assert_int_equal(free_before, budget - pool_worker_device_bytes(w));
    assert_true(free_before < need);
    sched_worker *sw = s.workers[0];
    const uint64_t credit = sched_worker_device_bytes(&s, sw);
    assert_int_equal(credit, pool_worker_held_bytes(w));

    /* m3's request: no room, so the idle m1 worker is evicted */
    sched_req r;
    memset(&r, 0, sizeof r);
    r.model = sched_model_find(&s, "m3");
    int ra = 0;
    assert_int_equal(sched_submit(&s, &r, now, &ra), 0);
    sched_dispatch(&s, now);
    assert_int_equal(s.stats.evictions, 1);
    assert_true(sw->stop_sent);
    assert_int_equal(started_need, 0);

    /* it exits; the pool's next document reports exactly the credit more free */
    w->proc_exited = true;
    w->state = POOL_WORKER_EXITED;
    w->has_exit = true;
    now += 100;
    uint64_t free_after = books_apply(&s, w, ms, 3, budget, 2, now);
    assert_int_equal(free_after - free_before, credit);
    /* and the start placed there passes the pool's own preflight */
    assert_int_equal(started_need, need);
    assert_int_equal(pool_preflight_check("m3", (int)ctx, (int)slots, "cpu", started_need,
                                          pool_device_free(&(llorch_device_info){
                                              .kind = LLORCH_DEVICE_CPU, .id = "cpu",
                                              .memory_total = budget, .memory_free = 64ull << 30},
                                                           w),
                                          &em),
                     0);
    sched_request_cancel(&s, &r, now);
    sched_free(&s);
    free_workers(w);
  }
}
#endif

/* ---- reporting ends: a failed/exited worker is dropped once a document
 * carrying its end was acknowledged and its handles are closed ---- */

static void test_ack_and_reap(void **state) {
  (void)state;
  llorch_config cfg;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_POOL), 0);
  cfg.pool.name = strdup("pool-a");
  pool p;
  memset(&p, 0, sizeof p);
  p.cfg = &cfg;
  snprintf(p.url, sizeof p.url, "http://127.0.0.1:8101");
  snprintf(p.boot_id, sizeof p.boot_id, "b00t");
  llorch_gpu_inventory_options io = {.force_cpu = true, .cpu_memory = 1 << 30};
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gpu_inventory_open(&p.inv, &io, &em), 0);

  pool_worker *ready = mk_worker("w-1", "cpu", POOL_WORKER_READY, 10, 0, false);
  pool_worker *gone = mk_worker("w-2", "cpu", POOL_WORKER_EXITED, 10, 0, true);
  gone->has_exit = true;
  gone->reaped = true;
  pool_worker *dying = mk_worker("w-3", "cpu", POOL_WORKER_FAILED, 10, 0, false);
  dying->has_exit = true; /* reported failed; its process has not ended yet */
  ready->next = gone;
  gone->next = dying;
  p.workers = ready;

  /* A document built at seq 5 carries both ends. */
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  pool_state_build(&p, &b, 5);
  assert_non_null(strstr(b.data, "\"w-2\""));
  llorch_jbuf_free(&b);
  assert_int_equal(gone->final_seq, 5);
  assert_int_equal(dying->final_seq, 5);
  assert_int_equal(ready->final_seq, 0);

  /* An older answer does not count; the answer to 5 does. */
  pool_ack_seq(&p, 4);
  assert_non_null(pool_worker_find(&p, "w-2"));
  pool_ack_seq(&p, 5);
  assert_null(pool_worker_find(&p, "w-2"));
  /* Acknowledged but its handles still open: kept until they close. */
  assert_non_null(pool_worker_find(&p, "w-3"));
  assert_true(dying->final_acked);
  dying->reaped = true;
  pool_reap(&p);
  assert_null(pool_worker_find(&p, "w-3"));
  assert_non_null(pool_worker_find(&p, "w-1"));

  /* The next document no longer lists them. */
  llorch_jbuf_init(&b);
  pool_state_build(&p, &b, 6);
  assert_null(strstr(b.data, "\"w-2\""));
  assert_null(strstr(b.data, "\"w-3\""));
  llorch_jbuf_free(&b);

  free_workers(p.workers);
  llorch_gpu_inventory_close(p.inv);
  llorch_config_free(&cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_file_names),
      cmocka_unit_test(test_range_parse),
      cmocka_unit_test(test_fetch_report),
      cmocka_unit_test(test_scan),
      cmocka_unit_test(test_read_errors),
      cmocka_unit_test(test_device_free),
      cmocka_unit_test(test_tail),
      cmocka_unit_test(test_exit_describe),
      cmocka_unit_test(test_worker_url),
      cmocka_unit_test(test_state_document),
      cmocka_unit_test(test_ack_and_reap),
#ifdef POOL_TEST_WITH_ORCHESTRATOR
      cmocka_unit_test(test_books_agree),
#endif
  };
  return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
