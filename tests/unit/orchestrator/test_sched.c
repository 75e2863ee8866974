/*
 * Unit tests of the orchestrator's scheduler (src/roles/orchestrator/scheduler.c):
 * made-up clusters, a fake clock, and the decisions recorded from the ops.
 *
 * `test_sched --bench` instead measures scheduling decisions per second with
 * 1000 queued requests (a benchmark, not a test: it prints figures).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "llorch/log.h"
#include "roles/orchestrator/prefix_route.h"
#include "roles/orchestrator/scheduler.h"

#define GiB (1024ull * 1024 * 1024)
#define MiB (1024ull * 1024)

/* ---- recorded decisions ---- */

typedef struct action {
  char kind;            /* 'a' assign, 's' start, 'x' stop, 'f' fail */
  sched_req *req;
  sched_worker *worker;
  char pool[SCHED_NAME_MAX];
  char device[SCHED_DEV_ID_MAX];
  char model[SCHED_NAME_MAX];
  uint64_t start_id;
  int status;
  char text[400];
} action;

typedef struct recorder {
  action *a;            /* (n) */
  int n, cap;
} recorder;

static action *rec_add(recorder *r) {
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 64;
    r->a = realloc(r->a, (size_t)r->cap * sizeof *r->a);
  }
  action *a = &r->a[r->n++];
  memset(a, 0, sizeof *a);
  return a;
}

static void on_assign(void *ud, sched_req *r, sched_worker *w) {
  action *a = rec_add(ud);
  a->kind = 'a';
  a->req = r;
  a->worker = w;
  snprintf(a->pool, sizeof a->pool, "%s", w->pool->name);
}

static void on_start(void *ud, const sched_start *st) {
  action *a = rec_add(ud);
  a->kind = 's';
  snprintf(a->pool, sizeof a->pool, "%s", st->pool->name);
  snprintf(a->device, sizeof a->device, "%s", st->device);
  snprintf(a->model, sizeof a->model, "%s", st->model->name);
  a->start_id = st->start_id;
}

static void on_stop(void *ud, sched_worker *w, const char *why) {
  action *a = rec_add(ud);
  a->kind = 'x';
  a->worker = w;
  snprintf(a->pool, sizeof a->pool, "%s", w->pool->name);
  snprintf(a->text, sizeof a->text, "%s/%s %s", w->pool->name, w->id, why);
}

static void on_fail(void *ud, sched_req *r, int status, const char *code, const char *msg) {
  action *a = rec_add(ud);
  a->kind = 'f';
  a->req = r;
  a->status = status;
  snprintf(a->text, sizeof a->text, "%s: %s", code, msg);
}

static int count_kind(const recorder *r, char kind) {
  int n = 0;
  for (int i = 0; i < r->n; i++) n += r->a[i].kind == kind;
  return n;
}

static const action *last_kind(const recorder *r, char kind) {
  for (int i = r->n - 1; i >= 0; i--)
    if (r->a[i].kind == kind) return &r->a[i];
  return NULL;
}

/* ---- fixture ---- */

typedef struct fx {
  sched s;
  recorder rec;
  int64_t now;
  uint64_t seq;
} fx;

static fx *fx_new(int max_total, int retry_max) {
  fx *f = calloc(1, sizeof *f);
  sched_limits lim = {0};
  lim.max_total = max_total;
  lim.queue_timeout_ms = 10000;
  lim.heartbeat_miss_limit = 3;
  lim.retry_max = retry_max;
  sched_ops ops = {&f->rec, on_assign, on_start, on_stop, on_fail, NULL, NULL};
  sched_init(&f->s, &lim, &ops);
  f->now = 1000000;
  return f;
}

static void fx_free(fx *f) {
  sched_free(&f->s);
  free(f->rec.a);
  free(f);
}

static int add_model(fx *f, const char *name, const char *file, int slots, int64_t keep_alive,
                     const char *pin) {
  llorch_model_entry e;
  memset(&e, 0, sizeof e);
  e.name = (char *)name;
  e.file = (char *)file;
  e.ctx = 1024;
  e.slots = slots;
  e.max_replicas = 4;
  e.keep_alive_ms = keep_alive;
  char *pins[1] = {(char *)pin};
  if (pin) {
    e.pins.items = pins;
    e.pins.count = 1;
  }
  int i = sched_model_add(&f->s, &e, NULL);
  assert_true(i >= 0);
  return i;
}

/* A pool report with n_dev CPU/GPU devices each with `free` bytes free. */
typedef struct pool_spec {
  const char *name;
  const char *boot;
  int n_dev;
  uint64_t free[4];
  const char *files[4]; /* model files it holds */
  uint64_t fixed;       /* estimate for every file */
  uint64_t per_token;
} pool_spec;

static void report_init(sched_pool_report *r, const pool_spec *ps, uint64_t seq) {
  memset(r, 0, sizeof *r);
  snprintf(r->pool, sizeof r->pool, "%s", ps->name);
  snprintf(r->url, sizeof r->url, "http://%s:1", ps->name);
  snprintf(r->boot_id, sizeof r->boot_id, "%s", ps->boot ? ps->boot : "b1");
  r->seq = seq;
  r->interval_ms = 500;
  r->n_devices = ps->n_dev;
  for (int d = 0; d < ps->n_dev; d++) {
    sched_device *dv = &r->devices[d];
    snprintf(dv->id, sizeof dv->id, "gpu%d", d);
    dv->kind = SCHED_DEV_CUDA;
    dv->index = d;
    dv->memory_total = 80 * GiB;
    dv->memory_free = ps->free[d];
  }
  int nf = 0;
  while (nf < 4 && ps->files[nf]) nf++;
  r->models = calloc((size_t)nf + 1, sizeof *r->models);
  r->n_models = nf;
  for (int i = 0; i < nf; i++) {
    snprintf(r->models[i].file, sizeof r->models[i].file, "%s", ps->files[i]);
    snprintf(r->models[i].name, sizeof r->models[i].name, "%s", ps->files[i]);
    r->models[i].ctx = 2048;
    for (int k = 0; k < 2; k++) {
      r->models[i].est[k].valid = true;
      r->models[i].est[k].fixed_bytes = ps->fixed;
      r->models[i].est[k].per_token_bytes = ps->per_token;
    }
  }
}

static void report_add_worker(sched_pool_report *r, const char *id, const char *model,
                              const char *file, const char *dev, sched_worker_state st, int slots,
                              uint64_t mem) {
  r->workers = realloc(r->workers, (size_t)(r->n_workers + 1) * sizeof *r->workers);
  sched_worker_report *w = &r->workers[r->n_workers++];
  memset(w, 0, sizeof *w);
  snprintf(w->id, sizeof w->id, "%s", id);
  snprintf(w->model, sizeof w->model, "%s", model);
  snprintf(w->file, sizeof w->file, "%s", file);
  snprintf(w->devices[0], sizeof w->devices[0], "%s", dev);
  w->n_devices = 1;
  w->state = st;
  w->slots = slots;
  w->ctx = 1024;
  w->memory_bytes = mem;
  w->exit_code = -1;
  snprintf(w->url, sizeof w->url, "http://w/%s", id);
  /* A token in the report stands for the one the orchestrator got from the
   * pool (start answer or GET /v2/workers/{id}); state documents carry none. */
  snprintf(w->token, sizeof w->token, "tok-%s", id);
}

static void apply(fx *f, sched_pool_report *r, bool reg) {
  int rc = sched_pool_apply(&f->s, r, reg, f->now, NULL);
  assert_int_equal(rc, 0);
  sched_pool_report_free(r);
}

static sched_req *req_new(int model, int prio) {
  sched_req *r = calloc(1, sizeof *r);
  r->model = model;
  r->priority = prio;
  return r;
}

static int submit(fx *f, sched_req *r) {
  int ra = 0;
  int rc = sched_submit(&f->s, r, f->now, &ra);
  if (rc == 0) sched_dispatch(&f->s, f->now);
  return rc;
}

/* ---- admission ---- */

static void test_admission_bounds(void **state) {
  (void)state;
  fx *f = fx_new(3, 1);
  f->s.lim.max_per_prio[LLORCH_PRIORITY_BATCH] = 1;
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  /* No pool: everything queues. */
  sched_req *r[5];
  for (int i = 0; i < 5; i++) r[i] = req_new(m, LLORCH_PRIORITY_INTERACTIVE);
  r[3]->priority = LLORCH_PRIORITY_BATCH;
  r[4]->priority = LLORCH_PRIORITY_BATCH;
  int ra = -1;
  assert_int_equal(sched_submit(&f->s, r[3], f->now, &ra), 0);
  /* Batch class is full at 1 even though the total has room. */
  assert_int_equal(sched_submit(&f->s, r[4], f->now, &ra), LLORCH_ELIMIT);
  assert_true(ra >= 1);
  assert_int_equal(sched_submit(&f->s, r[0], f->now, &ra), 0);
  assert_int_equal(sched_submit(&f->s, r[1], f->now, &ra), 0);
  ra = -1;
  assert_int_equal(sched_submit(&f->s, r[2], f->now, &ra), LLORCH_ELIMIT);
  assert_true(ra >= 1 && ra <= 60);
  assert_int_equal(f->s.total_queued, 3);
  assert_int_equal(f->s.stats.rejected, 2);
  /* A refused request is untouched: not linked, no decision made for it. */
  assert_null(r[2]->next);
  assert_int_equal(r[2]->state, SCHED_REQ_NEW);
  /* Cancel while queued frees the place. */
  sched_request_cancel(&f->s, r[0], f->now);
  assert_int_equal(f->s.total_queued, 2);
  assert_int_equal(sched_submit(&f->s, r[2], f->now, &ra), 0);
  for (int i = 0; i < 5; i++) {
    sched_request_cancel(&f->s, r[i], f->now);
    free(r[i]);
  }
  assert_int_equal(f->s.total_queued, 0);
  fx_free(f);
}

static void test_queue_timeout(void **state) {
  (void)state;
  fx *f = fx_new(10, 1);
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  f->now += 9999;
  sched_tick(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'f'), 0);
  f->now += 2;
  sched_tick(&f->s, f->now);
  const action *a = last_kind(&f->rec, 'f');
  assert_non_null(a);
  assert_ptr_equal(a->req, r);
  assert_int_equal(a->status, 503);
  assert_non_null(strstr(a->text, "queue_timeout"));
  assert_non_null(strstr(a->text, "no pool is up"));
  assert_int_equal(r->state, SCHED_REQ_DONE);
  assert_int_equal(f->s.total_queued, 0);
  free(r);
  fx_free(f);
}

/* ---- placement ---- */

static void test_route_least_loaded(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 2, 60000, NULL);
  sched_pool_report rep;
  pool_spec ps = {"pa", NULL, 2, {10 * GiB, 10 * GiB}, {"m.gguf"}, GiB, 1024};
  report_init(&rep, &ps, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 2, GiB);
  report_add_worker(&rep, "w2", "m", "m.gguf", "gpu1", SCHED_WORKER_READY, 2, GiB);
  apply(f, &rep, true);
  sched_req *r[5];
  for (int i = 0; i < 5; i++) {
    r[i] = req_new(m, 0);
    assert_int_equal(submit(f, r[i]), 0);
  }
  /* 4 slots: assignments alternate (least loaded), the 5th waits. */
  assert_int_equal(count_kind(&f->rec, 'a'), 4);
  assert_ptr_not_equal(r[0]->worker, r[1]->worker);
  assert_int_equal(r[0]->worker->busy, 2);
  assert_int_equal(r[1]->worker->busy, 2);
  assert_int_equal(r[4]->state, SCHED_REQ_QUEUED);
  /* max_replicas 4 allows growth: a start was asked, but both GPUs hold workers
   * and still have room, so the start goes to the one with most free memory. */
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  /* Finishing frees a slot and the queued one runs there. */
  sched_worker *w0 = r[0]->worker;
  sched_request_done(&f->s, r[0], f->now);
  sched_dispatch(&f->s, f->now);
  assert_int_equal(r[4]->state, SCHED_REQ_RUNNING);
  assert_ptr_equal(r[4]->worker, w0);
  for (int i = 0; i < 5; i++) {
    sched_request_done(&f->s, r[i], f->now);
    free(r[i]);
  }
  fx_free(f);
}

/* ---- prefix routing ---- */

static void route_two_workers(fx *f) {
  sched_pool_report rep;
  pool_spec ps = {"pa", NULL, 2, {10 * GiB, 10 * GiB}, {"m.gguf"}, GiB, 1024};
  report_init(&rep, &ps, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 4, GiB);
  report_add_worker(&rep, "w2", "m", "m.gguf", "gpu1", SCHED_WORKER_READY, 4, GiB);
  apply(f, &rep, true);
}

/* Submits a request for the first len bytes of text; it stays running. */
static sched_req *route_start(fx *f, int m, const char *text, size_t len) {
  sched_req *r = req_new(m, 0);
  uint64_t *h = calloc(64, sizeof *h);
  r->n_prefix = prefix_route_hash(text, len, h, 64);
  r->prefix = h;
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(r->state, SCHED_REQ_RUNNING);
  return r;
}

static void route_end(fx *f, sched_req *r) {
  sched_request_done(&f->s, r, f->now);
  free((void *)r->prefix);
  free(r);
}

/* One request run to completion; returns the worker it ran on. */
static sched_worker *route_once(fx *f, int m, const char *text, size_t len) {
  sched_req *r = route_start(f, m, text, len);
  sched_worker *w = r->worker;
  route_end(f, r);
  return w;
}

/*
 * Two conversations whose turns grow (A1 B1 A2 A3 B2 B3 ...): with prefix
 * routing every turn goes back to its conversation's first replica; without
 * it equally loaded replicas take turns, so the turns scatter. A replica
 * clearly busier than the other loses the request anyway; the memory
 * expires.
 */
static void test_route_prefix(void **state) {
  (void)state;
  char a[1024], b[1024];
  for (size_t i = 0; i < sizeof a; i++) {
    a[i] = (char)('a' + i % 23);
    b[i] = (char)('A' + i % 19);
  }
  for (int on = 0; on < 2; on++) {
    fx *f = calloc(1, sizeof *f);
    sched_limits lim = {.max_total = 100, .queue_timeout_ms = 10000, .heartbeat_miss_limit = 3,
                        .retry_max = 1, .prefix_routing = on == 1, .prefix_ttl_ms = 60000};
    sched_ops ops = {&f->rec, on_assign, on_start, on_stop, on_fail, NULL, NULL};
    assert_int_equal(sched_init(&f->s, &lim, &ops), 0);
    f->now = 1000000;
    int m = add_model(f, "m", "m.gguf", 4, 60000, NULL);
    route_two_workers(f);
    sched_worker *wa = route_once(f, m, a, 256);
    sched_worker *wb = route_once(f, m, b, 256);
    assert_ptr_not_equal(wa, wb);
    int a_home = 0, b_home = 0;
    for (size_t turn = 1; turn <= 6; turn++) {
      a_home += route_once(f, m, a, 256 + 64 * (2 * turn - 1)) == wa;
      a_home += route_once(f, m, a, 256 + 64 * (2 * turn)) == wa;
      b_home += route_once(f, m, b, 256 + 64 * (2 * turn - 1)) == wb;
      b_home += route_once(f, m, b, 256 + 64 * (2 * turn)) == wb;
    }
    if (on) {
      assert_int_equal(a_home, 12);
      assert_int_equal(b_home, 12);
      assert_int_equal(f->s.stats.prefix_routed, 24);
      /* 2 of 4 slots busy on A's replica: not clearly busier, A stays */
      sched_req *busy[3];
      busy[0] = route_start(f, m, b, 64);
      busy[1] = route_start(f, m, b, 64);
      assert_ptr_equal(busy[0]->worker, wb); /* b's chunk 0 is remembered there */
      assert_ptr_equal(busy[1]->worker, wb);
      assert_ptr_equal(route_once(f, m, b, 900), wb);
      /* 3 of 4: 0.75 more than the idle replica, the request goes there */
      busy[2] = route_start(f, m, b, 64);
      assert_ptr_equal(busy[2]->worker, wb);
      assert_ptr_equal(route_once(f, m, b, 900), wa);
      for (int i = 0; i < 3; i++) route_end(f, busy[i]);
      /* forgotten after the ttl */
      uint64_t h[14];
      const uint32_t n = prefix_route_hash(a, 900, h, 14);
      assert_int_equal(prefix_route_match(f->s.prefix, wa->id, h, n, f->now), 14);
      f->now += 60001;
      assert_int_equal(prefix_route_match(f->s.prefix, wa->id, h, n, f->now), 0);
    } else {
      assert_true(a_home < 12 || b_home < 12);
      assert_int_equal(f->s.stats.prefix_routed, 0);
    }
    fx_free(f);
  }
}

/* The chunk hashes chain: equal text gives equal hashes up to the first
 * differing chunk, and nothing after; the table is bounded. */
static void test_prefix_route_memory(void **state) {
  (void)state;
  char t1[640], t2[640];
  for (size_t i = 0; i < sizeof t1; i++) t1[i] = t2[i] = (char)('a' + i % 26);
  t2[300] = '#'; /* chunk 4 differs */
  uint64_t h1[10], h2[10];
  assert_int_equal(prefix_route_hash(t1, sizeof t1, h1, 10), 10);
  assert_int_equal(prefix_route_hash(t2, sizeof t2, h2, 10), 10);
  assert_int_equal(prefix_route_hash(t1, 63, h1, 10), 0); /* no whole chunk */
  prefix_route_hash(t1, sizeof t1, h1, 10);
  for (int i = 0; i < 4; i++) assert_true(h1[i] == h2[i]);
  for (int i = 4; i < 10; i++) assert_true(h1[i] != h2[i]);
  struct prefix_route *pr;
  assert_int_equal(prefix_route_init(&pr, 1024, 1000), 0);
  prefix_route_record(pr, "w1", h1, 10, 0);
  assert_int_equal(prefix_route_match(pr, "w1", h2, 10, 10), 4);
  assert_int_equal(prefix_route_match(pr, "w1", h1, 10, 10), 10);
  assert_int_equal(prefix_route_match(pr, "w2", h1, 10, 10), 0);
  assert_int_equal(prefix_route_match(pr, "w1", h1, 10, 2000), 0); /* expired */
  prefix_route_free(pr);
  /* 16 entries: recording 1000 chunks leaves at most 16 */
  assert_int_equal(prefix_route_init(&pr, 16, 1000), 0);
  uint64_t many[1000];
  for (int i = 0; i < 1000; i++) many[i] = (uint64_t)i * 0x9e3779b97f4a7c15ull + 1;
  prefix_route_record(pr, "w3", many, 1000, 500);
  int kept = 0;
  for (int i = 0; i < 1000; i++) kept += prefix_route_match(pr, "w3", &many[i], 1, 500) == 1;
  assert_true(kept <= 16);
  prefix_route_free(pr);
}

static void test_start_most_free_and_pending_reason(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 4, 60000, NULL);
  sched_pool_report rep;
  /* need = 4 GiB + 1 MiB/token * 1024 * 4 = 8 GiB */
  pool_spec pa = {"pool-a", NULL, 2, {6 * GiB, 9 * GiB}, {"m.gguf"}, 4 * GiB, MiB};
  pool_spec pb = {"pool-b", NULL, 2, {12 * GiB, 20 * GiB}, {"other.gguf"}, 4 * GiB, MiB};
  pool_spec pc = {"pool-c", NULL, 1, {10 * GiB}, {"m.gguf"}, 4 * GiB, MiB};
  report_init(&rep, &pa, 1);
  apply(f, &rep, true);
  report_init(&rep, &pb, 1);
  apply(f, &rep, true);
  report_init(&rep, &pc, 1);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  /* pool-b has most memory but not the file; pool-c gpu0 (10 GiB) beats pool-a gpu1 (9). */
  const action *a = last_kind(&f->rec, 's');
  assert_non_null(a);
  assert_string_equal(a->pool, "pool-c");
  assert_string_equal(a->device, "gpu0");
  assert_string_equal(sched_model_state(&f->s, m), "starting");
  /* While the start is pending, another request does not start another worker. */
  sched_req *r2 = req_new(m, 0);
  assert_int_equal(submit(f, r2), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  /* The pool refuses (stale view): the reason says so; it is not retried at once. */
  sched_start_failed(&f->s, a->start_id, "507 INSUFFICIENT_MEMORY", f->now);
  assert_non_null(strstr(f->s.models[m].pending, "507"));
  sched_request_cancel(&f->s, r, f->now);
  sched_request_cancel(&f->s, r2, f->now);

  /* A model needing 30 GiB fits nowhere: the reason names the largest hole. */
  int big = add_model(f, "big", "m.gguf", 26, 60000, NULL); /* 4 + 26 = 30 GiB */
  sched_req *r3 = req_new(big, 0);
  int before = count_kind(&f->rec, 's');
  assert_int_equal(submit(f, r3), 0);
  assert_int_equal(count_kind(&f->rec, 's'), before);
  assert_string_equal(f->s.models[big].pending, "needs 30.0 GiB; largest free is 10.0 GiB on pool-c gpu0");
  assert_string_equal(sched_model_state(&f->s, big), "pending");
  sched_request_cancel(&f->s, r3, f->now);
  free(r);
  free(r2);
  free(r3);
  fx_free(f);
}

static void test_pinned(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 1, 60000, "pool-a/gpu1");
  int n = add_model(f, "n", "m.gguf", 1, 60000, "pool-b");
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 2, {40 * GiB, 2 * GiB}, {"m.gguf"}, GiB, 16};
  pool_spec pb = {"pool-b", NULL, 2, {3 * GiB, 5 * GiB}, {"m.gguf"}, GiB, 16};
  report_init(&rep, &pa, 1);
  apply(f, &rep, true);
  report_init(&rep, &pb, 1);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0), *r2 = req_new(n, 0);
  assert_int_equal(submit(f, r), 0);
  const action *a = last_kind(&f->rec, 's');
  assert_string_equal(a->pool, "pool-a");
  assert_string_equal(a->device, "gpu1");
  assert_int_equal(submit(f, r2), 0);
  a = last_kind(&f->rec, 's');
  assert_string_equal(a->pool, "pool-b");
  assert_string_equal(a->device, "gpu1");
  sched_request_cancel(&f->s, r, f->now);
  sched_request_cancel(&f->s, r2, f->now);
  free(r);
  free(r2);
  fx_free(f);
}

/* ---- model file copies between pools ---- */

static void on_fetch(void *ud, const sched_fetch_order *o) {
  action *a = rec_add(ud);
  a->kind = 'F';
  snprintf(a->pool, sizeof a->pool, "%s", o->target->name);
  snprintf(a->model, sizeof a->model, "%s", o->source->name); /* the source, in this field */
  a->start_id = o->fetch_id;
  snprintf(a->text, sizeof a->text, "%s %llu", o->file, (unsigned long long)o->size);
}

static void on_fetch_cancel(void *ud, const sched_pool *target, const char *file) {
  action *a = rec_add(ud);
  a->kind = 'C';
  snprintf(a->pool, sizeof a->pool, "%s", target->name);
  snprintf(a->text, sizeof a->text, "%s", file);
}

static fx *fx_new_fetching(void) {
  fx *f = fx_new(100, 1);
  f->s.ops.fetch = on_fetch;
  f->s.ops.fetch_cancel = on_fetch_cancel;
  return f;
}

/* pool's report with one copy in it */
static void report_add_fetch(sched_pool_report *r, const char *file, uint64_t id, const char *state,
                             uint64_t done, uint64_t total, uint64_t rate, int64_t eta, const char *error) {
  r->fetches = realloc(r->fetches, (size_t)(r->n_fetches + 1) * sizeof *r->fetches);
  sched_fetch_report *x = &r->fetches[r->n_fetches++];
  memset(x, 0, sizeof *x);
  snprintf(x->file, sizeof x->file, "%s", file);
  snprintf(x->id, sizeof x->id, "f%llu", (unsigned long long)id);
  snprintf(x->state, sizeof x->state, "%s", state);
  x->bytes_done = done;
  x->bytes_total = total;
  x->rate = rate;
  x->eta_s = eta;
  snprintf(x->error, sizeof x->error, "%s", error ? error : "");
}

static void report_file_bytes(sched_pool_report *r, uint64_t bytes) {
  for (int i = 0; i < r->n_models; i++) r->models[i].file_bytes = bytes;
}

/* Pinned to a pool without the file: copied there from a holder, progress in
 * the pending reason, a failed verification retried (the same source when it
 * is the only one), a lost source replaced by another, stale reports of older
 * attempts ignored, and the start placed once the file is reported. */
static void test_fetch_pinned_retry_and_place(void **state) {
  (void)state;
  fx *f = fx_new_fetching();
  int m = add_model(f, "m", "m.gguf", 1, 60000, "pool-b");
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  pool_spec pb = {"pool-b", NULL, 1, {40 * GiB}, {NULL}, GiB, 16};
  report_init(&rep, &pa, ++f->seq);
  report_file_bytes(&rep, 100 * MiB);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 0);
  const action *a = last_kind(&f->rec, 'F');
  assert_non_null(a);
  assert_string_equal(a->pool, "pool-b");
  assert_string_equal(a->model, "pool-a");
  assert_string_equal(a->text, "m.gguf 104857600");
  uint64_t id1 = a->start_id;
  assert_true(strncmp(f->s.models[m].pending, "copying m.gguf to pool-b from pool-a", 36) == 0);
  /* Further passes do not ask again while it runs. */
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'F'), 1);
  sched_fetch_answered(&f->s, id1, false, f->now);

  /* progress from the target's report */
  f->now += 500;
  report_init(&rep, &pb, ++f->seq);
  report_add_fetch(&rep, "m.gguf", id1, "running", 50 * MiB, 100 * MiB, 10 * MiB, 5, NULL);
  apply(f, &rep, false);
  assert_string_equal(f->s.models[m].pending,
                      "copying m.gguf to pool-b from pool-a: 50.0 MiB of 100.0 MiB (50%), 10.0 MiB/s, ETA 5 s");
  assert_int_equal(f->s.n_fetches, 1);
  assert_int_equal(f->s.fetches[0]->bytes_done, 50 * MiB);

  /* verification failed: asked again after a pause, from the only source */
  f->now += 500;
  report_init(&rep, &pb, ++f->seq);
  report_add_fetch(&rep, "m.gguf", id1, "failed", 100 * MiB, 100 * MiB, 0, -1, "verification failed: x");
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 'F'), 1);
  assert_non_null(strstr(f->s.models[m].pending, "attempt 1 of 4 from pool-a failed (verification failed: x)"));
  f->now += 1000;
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'F'), 2);
  a = last_kind(&f->rec, 'F');
  assert_string_equal(a->model, "pool-a");
  uint64_t id2 = a->start_id;
  assert_true(id2 != id1);

  /* a late report of the first attempt changes nothing */
  report_init(&rep, &pb, ++f->seq);
  report_add_fetch(&rep, "m.gguf", id1, "failed", 0, 100 * MiB, 0, -1, "old");
  apply(f, &rep, false);
  assert_false(f->s.fetches[0]->ended);

  /* a second holder appears; the source is lost: the retry goes there */
  pool_spec pc = {"pool-c", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  report_init(&rep, &pc, ++f->seq);
  report_file_bytes(&rep, 100 * MiB);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  report_add_fetch(&rep, "m.gguf", id2, "interrupted", 30 * MiB, 100 * MiB, 0, -1, "lost pool-a");
  apply(f, &rep, false);
  f->now += 2000;
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'F'), 3);
  a = last_kind(&f->rec, 'F');
  assert_string_equal(a->model, "pool-c");
  assert_int_equal(f->s.fetches[0]->attempts, 3);

  /* the file is reported: the copy is forgotten and a worker placed there */
  pool_spec pb2 = {"pool-b", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  report_init(&rep, &pb2, ++f->seq);
  apply(f, &rep, false);
  assert_int_equal(f->s.n_fetches, 0);
  a = last_kind(&f->rec, 's');
  assert_non_null(a);
  assert_string_equal(a->pool, "pool-b");
  assert_int_equal(count_kind(&f->rec, 'f'), 0);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* Failed copies (refused for disk space, then one interrupted) are asked
 * for at most SCHED_FETCH_ATTEMPTS times; then the reason names the last
 * error, the interrupted part is cancelled on the target, requests time out
 * with the reason, and the copy is forgotten after SCHED_FETCH_FORGET_MS. */
static void test_fetch_gives_up(void **state) {
  (void)state;
  fx *f = fx_new_fetching();
  int m = add_model(f, "m", "m.gguf", 1, 60000, "pool-b");
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  pool_spec pb = {"pool-b", NULL, 1, {40 * GiB}, {NULL}, GiB, 16};
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  for (int i = 0; i < 10; i++) {
    const action *a = last_kind(&f->rec, 'F');
    bool last = count_kind(&f->rec, 'F') == SCHED_FETCH_ATTEMPTS;
    if (a && f->s.n_fetches && !f->s.fetches[0]->ended && !last)
      sched_fetch_failed(&f->s, a->start_id, "pool-b refused the copy: 507 not enough disk space", f->now);
    f->now += 5000;
    /* pools stay up; the last attempt is reported interrupted (its part kept) */
    report_init(&rep, &pa, ++f->seq);
    apply(f, &rep, false);
    report_init(&rep, &pb, ++f->seq);
    if (a && last && !f->s.fetches[0]->ended)
      report_add_fetch(&rep, "m.gguf", a->start_id, "interrupted", MiB, 2 * MiB, 0, -1, "lost pool-a");
    apply(f, &rep, false);
  }
  assert_int_equal(count_kind(&f->rec, 'F'), SCHED_FETCH_ATTEMPTS);
  assert_string_equal(f->s.models[m].pending, "copying m.gguf to pool-b failed 4 times (last from pool-a: lost pool-a)");
  /* the kept part is dropped on the target: no resume will come */
  assert_int_equal(count_kind(&f->rec, 'C'), 1);
  assert_string_equal(last_kind(&f->rec, 'C')->pool, "pool-b");
  assert_string_equal(last_kind(&f->rec, 'C')->text, "m.gguf");
  /* the queue timeout (10 s here) answers with that reason */
  sched_tick(&f->s, f->now);
  const action *fa = last_kind(&f->rec, 'f');
  assert_non_null(fa);
  assert_non_null(strstr(fa->text, "failed 4 times"));
  f->now += SCHED_FETCH_FORGET_MS + 1;
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, false);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, false);
  sched_tick(&f->s, f->now);
  assert_int_equal(f->s.n_fetches, 0);
  free(r);
  fx_free(f);
}

/* Unpinned, and the only holder has no room: the file goes to a pool where
 * the model fits by the holder's estimate, not to one where it would not. */
static void test_fetch_where_it_fits(void **state) {
  (void)state;
  fx *f = fx_new_fetching();
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 1, {1 * GiB}, {"m.gguf"}, 4 * GiB, 16};
  pool_spec ps = {"pool-small", NULL, 1, {2 * GiB}, {NULL}, GiB, 16};
  pool_spec pb = {"pool-big", NULL, 1, {40 * GiB}, {NULL}, GiB, 16};
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, true);
  report_init(&rep, &ps, ++f->seq);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  const action *a = last_kind(&f->rec, 'F');
  assert_non_null(a);
  assert_string_equal(a->pool, "pool-big");
  assert_string_equal(a->model, "pool-a");
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* After an orchestrator restart the target may already be copying (409
 * FETCH_RUNNING to the new ask): that copy is followed whatever its id. */
static void test_fetch_adopted(void **state) {
  (void)state;
  fx *f = fx_new_fetching();
  int m = add_model(f, "m", "m.gguf", 1, 60000, "pool-b");
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  pool_spec pb = {"pool-b", NULL, 1, {40 * GiB}, {NULL}, GiB, 16};
  report_init(&rep, &pa, ++f->seq);
  report_file_bytes(&rep, 100 * MiB);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  const action *a = last_kind(&f->rec, 'F');
  sched_fetch_answered(&f->s, a->start_id, true, f->now);
  report_init(&rep, &pb, ++f->seq);
  report_add_fetch(&rep, "m.gguf", 977, "running", 80 * MiB, 100 * MiB, 10 * MiB, 2, NULL);
  apply(f, &rep, false);
  assert_non_null(strstr(f->s.models[m].pending, "80.0 MiB of 100.0 MiB (80%)"));
  assert_int_equal(count_kind(&f->rec, 'F'), 1);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* Without the fetch op (a scheduler that never copies) the old reason stays. */
static void test_fetch_off(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 1, 60000, "pool-b");
  sched_pool_report rep;
  pool_spec pa = {"pool-a", NULL, 1, {40 * GiB}, {"m.gguf"}, GiB, 16};
  pool_spec pb = {"pool-b", NULL, 1, {40 * GiB}, {NULL}, GiB, 16};
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(f->s.n_fetches, 0);
  assert_string_equal(f->s.models[m].pending, "pinned to pool-b, which is down or lacks the file");
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* ---- eviction ---- */

static void test_evict_idle_lru(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
  int b = add_model(f, "b", "b.gguf", 1, 60000, NULL);
  int c = add_model(f, "c", "c.gguf", 1, -1, NULL);   /* never evicted */
  int big = add_model(f, "big", "big.gguf", 1, 60000, NULL);
  (void)a;
  (void)b;
  (void)c;
  sched_pool_report rep;
  /* need 3 GiB (per_token 0); 1 GiB free; workers a, b, c hold 2 GiB each. */
  pool_spec pa = {"pa", NULL, 1, {GiB}, {"a.gguf", "b.gguf", "c.gguf", "big.gguf"}, 3 * GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  report_add_worker(&rep, "wb", "b", "b.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  report_add_worker(&rep, "wc", "c", "c.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  apply(f, &rep, true);
  /* b was used longest ago; a recently. c is keep_alive -1. */
  sched_worker *wa = NULL, *wb = NULL, *wc = NULL;
  for (int i = 0; i < f->s.n_workers; i++) {
    if (!strcmp(f->s.workers[i]->id, "wa")) wa = f->s.workers[i];
    if (!strcmp(f->s.workers[i]->id, "wb")) wb = f->s.workers[i];
    if (!strcmp(f->s.workers[i]->id, "wc")) wc = f->s.workers[i];
  }
  wa->last_used_ms = f->now - 1000;
  wb->last_used_ms = f->now - 5000;
  wc->last_used_ms = f->now - 900000;
  /* a has a running request: never evicted then. */
  sched_req *ra = req_new(a, 0);
  assert_int_equal(submit(f, ra), 0);
  assert_ptr_equal(ra->worker, wa);
  sched_req *r = req_new(big, 0);
  assert_int_equal(submit(f, r), 0);
  /* 1 GiB free + wb's 2 GiB = 3 GiB: only wb is stopped. */
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_ptr_equal(last_kind(&f->rec, 'x')->worker, wb);
  assert_int_equal(f->s.stats.evictions, 1);
  assert_non_null(strstr(f->s.models[big].pending, "evicting 1 idle worker"));
  /* Until wb exits, no second eviction and no start. */
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_int_equal(count_kind(&f->rec, 's'), 0);
  assert_non_null(strstr(f->s.models[big].pending, "waiting for evicted"));
  /* The pool reports wb exited and the memory back: the start follows. */
  f->now += 100;
  report_init(&rep, &pa, ++f->seq);
  rep.devices[0].memory_free = 3 * GiB;
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  report_add_worker(&rep, "wb", "b", "b.gguf", "gpu0", SCHED_WORKER_EXITED, 1, 2 * GiB);
  report_add_worker(&rep, "wc", "c", "c.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  assert_string_equal(last_kind(&f->rec, 's')->model, "big");
  sched_request_done(&f->s, ra, f->now);
  sched_request_cancel(&f->s, r, f->now);
  free(ra);
  free(r);
  fx_free(f);
}

static sched_worker *worker_by_id(fx *f, const char *id) {
  for (int i = 0; i < f->s.n_workers; i++)
    if (!strcmp(f->s.workers[i]->id, id)) return f->s.workers[i];
  return NULL;
}

/*
 * Three models of the same shape, two pools that fit one worker each with
 * half a worker to spare (the cluster check that found eviction never
 * happened): the third model's request evicts the least recently used idle
 * worker and is served on its pool. The pools report each worker at what
 * they count for it (memory_bytes = llorch_mem_held), which is exactly what
 * a victim gives back.
 */
static void test_evict_equal_size(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  const uint64_t need = 20 * MiB + 512 * 1024; /* "needs 20.5 MiB" */
  int m1 = add_model(f, "m1", "m1.gguf", 1, 60000, NULL);
  int m2 = add_model(f, "m2", "m2.gguf", 1, 60000, NULL);
  int m3 = add_model(f, "m3", "m3.gguf", 1, 60000, NULL);
  (void)m1;
  (void)m2;
  const uint64_t spare = need / 2; /* budget 1.5 x need, one worker held */
  pool_spec pa = {"pool-a", NULL, 1, {spare}, {"m1.gguf", "m2.gguf", "m3.gguf"}, need, 0};
  pool_spec pb = {"pool-b", NULL, 1, {spare + 1}, {"m1.gguf", "m2.gguf", "m3.gguf"}, need, 0};
  sched_pool_report rep;
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "w1", "m1", "m1.gguf", "gpu0", SCHED_WORKER_READY, 1, need);
  apply(f, &rep, true);
  report_init(&rep, &pb, ++f->seq);
  report_add_worker(&rep, "w2", "m2", "m2.gguf", "gpu0", SCHED_WORKER_READY, 1, need);
  apply(f, &rep, true);
  worker_by_id(f, "w1")->last_used_ms = f->now - 9000;
  worker_by_id(f, "w2")->last_used_ms = f->now - 1000;
  assert_int_equal(sched_worker_device_bytes(&f->s, worker_by_id(f, "w1")), need);

  sched_req *r = req_new(m3, 0);
  assert_int_equal(submit(f, r), 0);
  /* Neither pool has room; pool-a's w1 is the least recently used: evicted. */
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_ptr_equal(last_kind(&f->rec, 'x')->worker, worker_by_id(f, "w1"));
  assert_int_equal(f->s.stats.evictions, 1);
  /* An event reports w1 exited before the next full document: the memory
   * it held is on its way back, so no second victim (w2 on pool-b) is taken
   * while the orchestrator still holds the old memory_free. */
  f->now += 50;
  sched_worker_report ev;
  memset(&ev, 0, sizeof ev);
  snprintf(ev.id, sizeof ev.id, "w1");
  snprintf(ev.model, sizeof ev.model, "m1");
  snprintf(ev.file, sizeof ev.file, "m1.gguf");
  snprintf(ev.devices[0], sizeof ev.devices[0], "gpu0");
  ev.n_devices = 1;
  ev.state = SCHED_WORKER_EXITED;
  ev.slots = 1;
  ev.memory_bytes = need;
  ev.exit_code = 0;
  assert_int_equal(sched_pool_event(&f->s, "pool-a", "b1", ++f->seq, &ev, f->now), 0);
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_int_equal(count_kind(&f->rec, 's'), 0);
  assert_non_null(strstr(f->s.models[m3].pending, "waiting for evicted"));
  /* pool-a's document reports w1 gone and its memory back: the start follows there. */
  f->now += 100;
  report_init(&rep, &pa, ++f->seq);
  rep.devices[0].memory_free = spare + need;
  report_add_worker(&rep, "w1", "m1", "m1.gguf", "gpu0", SCHED_WORKER_EXITED, 1, need);
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  assert_string_equal(last_kind(&f->rec, 's')->model, "m3");
  assert_string_equal(last_kind(&f->rec, 's')->pool, "pool-a");
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* A model that exactly fills a device: placed when free == need, and when one
 * victim gives back exactly what is missing. */
static void test_evict_exact_fill(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  const uint64_t need = 3 * GiB + 12345;
  int a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
  int b = add_model(f, "b", "b.gguf", 1, 60000, NULL);
  (void)a;
  /* exactly need free: a start, no eviction */
  pool_spec p0 = {"p0", NULL, 1, {need}, {"a.gguf", "b.gguf"}, need, 0};
  sched_pool_report rep;
  report_init(&rep, &p0, ++f->seq);
  apply(f, &rep, true);
  sched_req *r = req_new(b, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  assert_int_equal(count_kind(&f->rec, 'x'), 0);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);

  /* one byte short of need free, an idle worker holding need - 1 on the
   * device: free + its share == need exactly, so one victim suffices */
  f = fx_new(100, 1);
  a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
  b = add_model(f, "b", "b.gguf", 1, 60000, NULL);
  pool_spec p1 = {"p1", NULL, 1, {1}, {"a.gguf", "b.gguf"}, need, 0};
  report_init(&rep, &p1, ++f->seq);
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, need - 1);
  apply(f, &rep, true);
  r = req_new(b, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  f->now += 100;
  report_init(&rep, &p1, ++f->seq);
  rep.devices[0].memory_free = need; /* what the pool reports once wa is gone */
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_EXITED, 1, need - 1);
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* Several victims: the fewest that cover the need, least recently used first;
 * a worker over two devices gives back half of its memory on each. */
static void test_evict_several_victims(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m[5];
  const char *names[5] = {"v1", "v2", "v3", "v4", "big"};
  const char *files[5] = {"v1.gguf", "v2.gguf", "v3.gguf", "v4.gguf", "big.gguf"};
  for (int i = 0; i < 5; i++) m[i] = add_model(f, names[i], files[i], 1, 60000, NULL);
  /* big needs 3 GiB; 0.5 GiB free; four idle 1 GiB workers */
  pool_spec pa = {"pa", NULL, 2, {GiB / 2, 0}, {"v1.gguf", "v2.gguf", "v3.gguf", "big.gguf"},
                  3 * GiB, 0};
  sched_pool_report rep;
  report_init(&rep, &pa, ++f->seq);
  for (int i = 0; i < 4; i++) {
    char id[8];
    snprintf(id, sizeof id, "w%d", i + 1);
    report_add_worker(&rep, id, names[i], files[i], "gpu0", SCHED_WORKER_READY, 1, GiB);
  }
  /* w4 spans gpu0 and gpu1: 1 GiB in all, half on each */
  rep.workers[3].n_devices = 2;
  snprintf(rep.workers[3].devices[1], sizeof rep.workers[3].devices[1], "gpu1");
  apply(f, &rep, true);
  assert_int_equal(sched_worker_device_bytes(&f->s, worker_by_id(f, "w4")), GiB / 2);
  worker_by_id(f, "w1")->last_used_ms = f->now - 4000;
  worker_by_id(f, "w2")->last_used_ms = f->now - 3000;
  worker_by_id(f, "w3")->last_used_ms = f->now - 2000;
  worker_by_id(f, "w4")->last_used_ms = f->now - 9000; /* oldest, but gives only 0.5 GiB here */
  sched_req *r = req_new(m[4], 0);
  assert_int_equal(submit(f, r), 0);
  /* 0.5 free + w4 0.5 + w1 1 + w2 1 = 3 GiB: three victims in LRU order, w3 kept */
  assert_int_equal(count_kind(&f->rec, 'x'), 3);
  assert_int_equal(f->s.stats.evictions, 3);
  assert_false(worker_by_id(f, "w3")->stop_sent);
  assert_true(worker_by_id(f, "w4")->stop_sent && worker_by_id(f, "w1")->stop_sent &&
              worker_by_id(f, "w2")->stop_sent);
  assert_non_null(strstr(f->s.models[m[4]].pending, "evicting 3 idle workers"));
  /* No second round while they exit. */
  sched_dispatch(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'x'), 3);
  /* The pool reports them gone and 3 GiB free: big starts. */
  f->now += 100;
  report_init(&rep, &pa, ++f->seq);
  rep.devices[0].memory_free = 3 * GiB;
  for (int i = 0; i < 4; i++) {
    char id[8];
    snprintf(id, sizeof id, "w%d", i + 1);
    report_add_worker(&rep, id, names[i], files[i], "gpu0",
                      i == 2 ? SCHED_WORKER_READY : SCHED_WORKER_EXITED, 1, GiB);
  }
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  assert_string_equal(last_kind(&f->rec, 's')->model, "big");
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

/* The need is llorch_mem_need of all four reported coefficients, the same
 * figure the pool's preflight computes. */
static void test_need_formula(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int a = add_model(f, "a", "a.gguf", 2, 60000, NULL); /* ctx 1024 x 2 slots */
  pool_spec p = {"p", NULL, 1, {0}, {"a.gguf"}, 1000, 10};
  sched_pool_report rep;
  report_init(&rep, &p, ++f->seq);
  rep.models[0].est[SCHED_DEV_CUDA].per_slot_bytes = 300;
  rep.models[0].est[SCHED_DEV_CUDA].per_ctx_bytes = 7;
  const uint64_t need = 1000 + 10 * 1024 * 2 + 300 * 2 + 7 * 1024;
  rep.devices[0].memory_free = need - 1;
  apply(f, &rep, true);
  sched_req *r = req_new(a, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 0);
  char want[32];
  sched_format_bytes(want, sizeof want, need);
  assert_non_null(strstr(f->s.models[a].pending, want));
  f->now += 10;
  report_init(&rep, &p, ++f->seq);
  rep.models[0].est[SCHED_DEV_CUDA].per_slot_bytes = 300;
  rep.models[0].est[SCHED_DEV_CUDA].per_ctx_bytes = 7;
  rep.devices[0].memory_free = need;
  apply(f, &rep, false);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

static void test_evict_expired_first_and_queued_protected(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int a = add_model(f, "a", "a.gguf", 1, 10000, NULL);    /* short keep_alive */
  int b = add_model(f, "b", "b.gguf", 1, 3600000, NULL);  /* long keep_alive */
  int big = add_model(f, "big", "big.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {0}, {"a.gguf", "b.gguf", "big.gguf"}, 2 * GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  report_add_worker(&rep, "wb", "b", "b.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  apply(f, &rep, true);
  /* a used more recently than b, but a's keep_alive has expired and b's has not. */
  for (int i = 0; i < f->s.n_workers; i++) {
    sched_worker *w = f->s.workers[i];
    w->last_used_ms = !strcmp(w->id, "wa") ? f->now - 20000 : f->now - 30000;
  }
  sched_req *r = req_new(big, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_string_equal(last_kind(&f->rec, 'x')->worker->id, "wa");
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);

  /* A worker whose model has queued requests is never evicted. */
  f = fx_new(100, 1);
  a = add_model(f, "a", "a.gguf", 1, 0, NULL);
  big = add_model(f, "big", "big.gguf", 1, 60000, NULL);
  (void)b;
  pool_spec pb = {"pa", NULL, 1, {0}, {"a.gguf", "big.gguf"}, 2 * GiB, 0};
  report_init(&rep, &pb, ++f->seq);
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, 2 * GiB);
  apply(f, &rep, true);
  sched_req *ra1 = req_new(a, 0), *ra2 = req_new(a, 0);
  assert_int_equal(submit(f, ra1), 0); /* running on wa */
  assert_int_equal(submit(f, ra2), 0); /* queued for a */
  sched_request_done(&f->s, ra1, f->now); /* wa idle, but a has queued work */
  sched_req *rb = req_new(big, 0);
  assert_int_equal(sched_submit(&f->s, rb, f->now, NULL), 0);
  sched_dispatch(&f->s, f->now);
  /* ra2 got wa in that pass (FIFO), so wa is busy: nothing to evict. */
  assert_int_equal(ra2->state, SCHED_REQ_RUNNING);
  assert_int_equal(count_kind(&f->rec, 'x'), 0);
  assert_non_null(strstr(f->s.models[big].pending, "needs 2.0 GiB; largest free is 0 B on pa gpu0"));
  sched_request_done(&f->s, ra2, f->now);
  sched_request_cancel(&f->s, rb, f->now);
  free(ra1);
  free(ra2);
  free(rb);
  fx_free(f);
}

/* ---- faults ---- */

static void test_retry_bounded(void **state) {
  (void)state;
  fx *f = fx_new(100, 1); /* one retry */
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  pool_spec pb = {"pb", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &pa, 1);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, true);
  report_init(&rep, &pb, 1);
  report_add_worker(&rep, "w2", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, true);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  sched_worker *first = r->worker;
  assert_non_null(first);
  /* Dies before the first token: requeued at the head, runs on the other worker. */
  assert_int_equal(sched_request_retry(&f->s, r, true, f->now), 1);
  assert_true(first->broken);
  assert_false(sched_worker_routable(first));
  sched_dispatch(&f->s, f->now);
  assert_int_equal(r->state, SCHED_REQ_RUNNING);
  assert_ptr_not_equal(r->worker, first);
  assert_int_equal(f->s.stats.retries, 1);
  /* Second failure: retry_max (1) exhausted. */
  assert_int_equal(sched_request_retry(&f->s, r, true, f->now), 0);
  assert_int_equal(r->state, SCHED_REQ_DONE);
  assert_int_equal(f->s.total_queued, 0);
  free(r);
  fx_free(f);
}

static void test_pool_down_and_back(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, true);
  assert_int_equal(sched_pools_up(&f->s), 1);
  /* interval 500 ms, limit 3: down after 1500 ms without a heartbeat. */
  f->now += 1500;
  sched_tick(&f->s, f->now);
  assert_int_equal(sched_pools_up(&f->s), 1);
  f->now += 1;
  sched_tick(&f->s, f->now);
  assert_int_equal(sched_pools_up(&f->s), 0);
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(r->state, SCHED_REQ_QUEUED); /* its worker left routing */
  assert_string_equal(f->s.models[m].pending, "no pool is up");
  /* A heartbeat brings it back with the same worker: routed without a restart. */
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, false);
  assert_int_equal(r->state, SCHED_REQ_RUNNING);
  assert_int_equal(count_kind(&f->rec, 's'), 0);
  sched_request_done(&f->s, r, f->now);
  /* A heartbeat from an unknown pool asks it to register. */
  pool_spec px = {"px", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &px, 1);
  assert_int_equal(sched_pool_apply(&f->s, &rep, false, f->now, NULL), LLORCH_ENOTFOUND);
  sched_pool_report_free(&rep);
  free(r);
  fx_free(f);
}

/*
 * Many workers: lookups go through the hash (a pool's own document and
 * events find their workers among thousands), unlisted ones are gone, the
 * pool cap refuses a new pool, and a pool down for forget_after leaves with
 * its workers once none is busy.
 */
/* Adds ready workers w-<first>, w-<first+step>, ... below end, with one allocation. */
static void report_add_workers(sched_pool_report *r, int first, int end, int step) {
  int n = (end - first + step - 1) / step;
  r->workers = realloc(r->workers, (size_t)(r->n_workers + n) * sizeof *r->workers);
  for (int i = first; i < end; i += step) {
    sched_worker_report *w = &r->workers[r->n_workers++];
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "w-%d", i);
    snprintf(w->model, sizeof w->model, "m");
    snprintf(w->file, sizeof w->file, "m.gguf");
    snprintf(w->devices[0], sizeof w->devices[0], "gpu0");
    w->n_devices = 1;
    w->state = SCHED_WORKER_READY;
    w->slots = 1;
    w->ctx = 1024;
    w->memory_bytes = 1;
    w->exit_code = -1;
    snprintf(w->url, sizeof w->url, "http://w/w-%d", i);
    snprintf(w->token, sizeof w->token, "tok-w-%d", i); /* as report_worker: the token came */
  }
}

static void test_many_workers_cap_and_forget(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  f->s.lim.max_pools = 3;
  f->s.lim.forget_after_ms = 10000;
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  pool_spec pb = {"pb", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  for (int k = 0; k < 2; k++) {
    report_init(&rep, k ? &pb : &pa, ++f->seq);
    report_add_workers(&rep, 0, 3000, 1);
    apply(f, &rep, true);
  }
  assert_int_equal(f->s.n_workers, 6000);
  /* pa lists only its even workers now: the odd ones are gone, pb's untouched. */
  report_init(&rep, &pa, ++f->seq);
  report_add_workers(&rep, 0, 3000, 2);
  apply(f, &rep, false);
  sched_dispatch(&f->s, f->now); /* reaps the exited */
  assert_int_equal(f->s.n_workers, 4500);
  /* An event for one of pb's workers finds it (not a new one). */
  sched_worker_report ev;
  memset(&ev, 0, sizeof ev);
  snprintf(ev.id, sizeof ev.id, "w-7");
  snprintf(ev.model, sizeof ev.model, "m");
  ev.state = SCHED_WORKER_EXITED;
  ev.exit_code = -1;
  assert_int_equal(sched_pool_event(&f->s, "pb", "b1", 0, &ev, f->now), 0);
  sched_dispatch(&f->s, f->now);
  assert_int_equal(f->s.n_workers, 4499);
  /* The cap: a third pool fits, a fourth does not. */
  pool_spec pc = {"pc", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  pool_spec pd = {"pd", NULL, 1, {0}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &pc, ++f->seq);
  apply(f, &rep, true);
  report_init(&rep, &pd, ++f->seq);
  assert_int_equal(sched_pool_apply(&f->s, &rep, true, f->now, NULL), LLORCH_ELIMIT);
  sched_pool_report_free(&rep);
  assert_int_equal(f->s.n_pools, 3);
  /* A request runs on one of pa's workers, then every pool goes quiet. */
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(r->state, SCHED_REQ_RUNNING);
  sched_pool *busy_pool = r->worker->pool;
  f->now += 1600; /* down: 3 x 500 ms */
  sched_tick(&f->s, f->now);
  assert_int_equal(sched_pools_up(&f->s), 0);
  f->now += 10000;
  sched_tick(&f->s, f->now);
  /* The busy worker keeps its pool; the others are forgotten with their workers. */
  assert_int_equal(f->s.n_pools, 1);
  assert_ptr_equal(f->s.pools[0], busy_pool);
  sched_request_done(&f->s, r, f->now);
  f->now += 100;
  sched_tick(&f->s, f->now);
  assert_int_equal(f->s.n_pools, 0);
  assert_int_equal(f->s.n_workers, 0);
  /* Room again: a new pool registers. */
  report_init(&rep, &pd, ++f->seq);
  apply(f, &rep, true);
  assert_int_equal(f->s.n_pools, 1);
  free(r);
  fx_free(f);
}

static void test_adopt_and_seq(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 2, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", "boot1", 1, {8 * GiB}, {"m.gguf"}, GiB, 0};
  /* A fresh orchestrator: the pool registers with two running workers. */
  report_init(&rep, &pa, 50);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 2, GiB);
  report_add_worker(&rep, "w2", "m", "m.gguf", "gpu0", SCHED_WORKER_STARTING, 2, GiB);
  /* State documents carry no tokens: adopted, but not routable until the token came. */
  rep.workers[0].token[0] = '\0';
  int adopted = 0;
  assert_int_equal(sched_pool_apply(&f->s, &rep, true, f->now, &adopted), 0);
  sched_pool_report_free(&rep);
  assert_int_equal(adopted, 2);
  assert_false(sched_worker_routable(f->s.workers[0]));
  snprintf(f->s.workers[0]->token, sizeof f->s.workers[0]->token, "from-GET");
  assert_true(sched_worker_routable(f->s.workers[0]));
  sched_req *r = req_new(m, 0);
  assert_int_equal(submit(f, r), 0);
  assert_int_equal(r->state, SCHED_REQ_RUNNING);
  assert_string_equal(r->worker->id, "w1");
  assert_int_equal(count_kind(&f->rec, 's'), 0); /* nothing restarted or started */
  /* An older document (seq 49) is ignored: w1 stays ready. */
  report_init(&rep, &pa, 49);
  apply(f, &rep, false);
  assert_int_equal(f->s.n_workers, 2);
  assert_true(sched_worker_routable(r->worker));
  /* An event: w1 exited (kill -9). It leaves routing; freed once its request ends. */
  sched_worker_report ev;
  memset(&ev, 0, sizeof ev);
  snprintf(ev.id, sizeof ev.id, "w1");
  snprintf(ev.model, sizeof ev.model, "m");
  snprintf(ev.file, sizeof ev.file, "m.gguf");
  ev.state = SCHED_WORKER_EXITED;
  ev.slots = 2;
  ev.exit_code = -1;
  snprintf(ev.exit_signal, sizeof ev.exit_signal, "SIGKILL");
  assert_int_equal(sched_pool_event(&f->s, "pa", "boot1", 51, &ev, f->now), 0);
  sched_worker *w1 = r->worker;
  assert_int_equal(w1->state, SCHED_WORKER_EXITED);
  assert_string_equal(w1->exit_signal, "SIGKILL");
  assert_false(sched_worker_routable(w1));
  assert_int_equal(sched_request_retry(&f->s, r, true, f->now), 1);
  sched_dispatch(&f->s, f->now);
  assert_int_equal(f->s.n_workers, 1); /* w1 reaped */
  /* A new boot under the same name: w2 from the old boot is gone. */
  pa.boot = "boot2";
  report_init(&rep, &pa, 1);
  apply(f, &rep, true);
  assert_int_equal(f->s.n_workers, 0);
  sched_request_cancel(&f->s, r, f->now);
  free(r);
  fx_free(f);
}

static void test_min_replicas_and_unload(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  llorch_model_entry e;
  memset(&e, 0, sizeof e);
  e.name = "m";
  e.file = "m.gguf";
  e.slots = 1;
  e.min_replicas = 2;
  e.max_replicas = 2;
  e.keep_alive_ms = 1000;
  int m = sched_model_add(&f->s, &e, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 2, {8 * GiB, 8 * GiB}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, true);
  sched_tick(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 's'), 2);
  assert_int_equal(sched_model_replicas(&f->s, m), 2);
  sched_tick(&f->s, f->now); /* pending starts count: no more */
  assert_int_equal(count_kind(&f->rec, 's'), 2);
  sched_start_done(&f->s, f->rec.a[0].start_id, "w1", "tok-w1", f->now);
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, false);
  assert_int_equal(f->s.n_starts, 1); /* w1 settled its start; the other is still pending */
  assert_int_equal(sched_model_unload(&f->s, m, f->now), 1);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  sched_tick(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 's'), 2); /* unloaded: not kept up */
  fx_free(f);
}

/* Drain: a busy worker takes no new request, is stopped by the tick once its
 * request finished, and no longer counts as a replica (another is placed). */
static void test_drain_worker(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int m = add_model(f, "m", "m.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 2, {8 * GiB, 8 * GiB}, {"m.gguf"}, GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "w1", "m", "m.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, true);
  sched_worker *w = sched_worker_find(&f->s, "pa", "w1");
  assert_non_null(w);
  assert_null(sched_worker_find(&f->s, "pa", "nope"));
  assert_null(sched_worker_find(&f->s, "nope", "w1"));
  w->token[0] = 't'; /* adopted: routable once it has a token */
  sched_req *r1 = req_new(m, 0);
  assert_int_equal(submit(f, r1), 0);
  assert_int_equal(r1->state, SCHED_REQ_RUNNING);
  assert_int_equal(sched_worker_drain(&f->s, w, f->now), 0); /* busy: stops later */
  assert_false(sched_worker_routable(w));
  assert_int_equal(count_kind(&f->rec, 'x'), 0);
  sched_req *r2 = req_new(m, 0);
  assert_int_equal(submit(f, r2), 0);
  assert_int_equal(r2->state, SCHED_REQ_QUEUED); /* not on the draining worker */
  assert_int_equal(count_kind(&f->rec, 's'), 1);  /* a replacement is placed */
  sched_tick(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'x'), 0);  /* still busy */
  sched_request_done(&f->s, r1, f->now);
  sched_tick(&f->s, f->now);
  assert_int_equal(count_kind(&f->rec, 'x'), 1);
  assert_string_equal(last_kind(&f->rec, 'x')->text, "pa/w1 drained");
  assert_int_equal(sched_worker_drain(&f->s, w, f->now), LLORCH_ESTATE);
  sched_request_cancel(&f->s, r2, f->now);
  free(r1);
  free(r2);
  fx_free(f);
}

/* A worker reported by an event counts as a replica at once, but its memory
 * stays reserved until a full state document shows the pool's new figures. */
static void test_event_keeps_reservation(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
  int b = add_model(f, "b", "b.gguf", 1, 60000, NULL);
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {3 * GiB / 2}, {"a.gguf", "b.gguf"}, GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  apply(f, &rep, true);
  sched_req *ra = req_new(a, 0);
  assert_int_equal(submit(f, ra), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  sched_start_done(&f->s, f->rec.a[0].start_id, "w1", "tok-w1", f->now);
  sched_worker_report ev;
  memset(&ev, 0, sizeof ev);
  snprintf(ev.id, sizeof ev.id, "w1");
  snprintf(ev.model, sizeof ev.model, "a");
  snprintf(ev.file, sizeof ev.file, "a.gguf");
  snprintf(ev.devices[0], sizeof ev.devices[0], "gpu0");
  ev.n_devices = 1;
  ev.state = SCHED_WORKER_READY;
  ev.slots = 1;
  snprintf(ev.url, sizeof ev.url, "http://w1");
  assert_int_equal(sched_pool_event(&f->s, "pa", "b1", ++f->seq, &ev, f->now), 0);
  assert_int_equal(sched_model_replicas(&f->s, a), 1); /* not 2 */
  assert_int_equal(ra->state, SCHED_REQ_RUNNING);
  /* b needs 1 GiB; the last document said 1.5 GiB free, but 1 GiB is a's. */
  sched_req *rb = req_new(b, 0);
  assert_int_equal(submit(f, rb), 0);
  assert_int_equal(count_kind(&f->rec, 's'), 1);
  assert_non_null(strstr(f->s.models[b].pending, "largest free is 512.0 MiB"));
  /* The next document carries the pool's own figures; the reservation ends. */
  report_init(&rep, &pa, ++f->seq);
  rep.devices[0].memory_free = GiB / 2;
  report_add_worker(&rep, "w1", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, false);
  assert_int_equal(f->s.n_starts, 0);
  sched_request_done(&f->s, ra, f->now);
  sched_request_cancel(&f->s, rb, f->now);
  free(ra);
  free(rb);
  fx_free(f);
}

/* A worker that starts, is reported by events and exits between two heartbeats
 * never appears in a state document: the next document still settles its
 * start, and an exit event frees the reservation at once. */
static void test_short_lived_worker_settles(void **state) {
  (void)state;
  for (int via_exit_event = 0; via_exit_event < 2; via_exit_event++) {
    fx *f = fx_new(100, 1);
    int a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
    sched_pool_report rep;
    pool_spec pa = {"pa", NULL, 1, {3 * GiB / 2}, {"a.gguf"}, GiB, 0};
    report_init(&rep, &pa, ++f->seq);
    apply(f, &rep, true);
    sched_req *ra = req_new(a, 0);
    assert_int_equal(submit(f, ra), 0);
    sched_start_done(&f->s, f->rec.a[0].start_id, "w1", "tok-w1", f->now);
    sched_worker_report ev;
    memset(&ev, 0, sizeof ev);
    snprintf(ev.id, sizeof ev.id, "w1");
    snprintf(ev.model, sizeof ev.model, "a");
    snprintf(ev.file, sizeof ev.file, "a.gguf");
    snprintf(ev.devices[0], sizeof ev.devices[0], "gpu0");
    ev.n_devices = 1;
    ev.state = SCHED_WORKER_READY;
    ev.slots = 1;
    snprintf(ev.url, sizeof ev.url, "http://w1");
    assert_int_equal(sched_pool_event(&f->s, "pa", "b1", ++f->seq, &ev, f->now), 0);
    assert_int_equal(f->s.n_starts, 1);
    sched_request_done(&f->s, ra, f->now);
    if (via_exit_event) {
      ev.state = SCHED_WORKER_EXITED;
      assert_int_equal(sched_pool_event(&f->s, "pa", "b1", ++f->seq, &ev, f->now), 0);
    } else {
      report_init(&rep, &pa, ++f->seq); /* w1 already gone: not listed */
      apply(f, &rep, false);
    }
    assert_int_equal(f->s.n_starts, 0);
    free(ra);
    fx_free(f);
  }
}

static void test_priority_and_blocking(void **state) {
  (void)state;
  fx *f = fx_new(100, 1);
  int a = add_model(f, "a", "a.gguf", 1, 60000, NULL);
  int b = add_model(f, "b", "b.gguf", 1, 60000, NULL);
  f->s.models[a].max_replicas = 1;
  sched_pool_report rep;
  pool_spec pa = {"pa", NULL, 1, {0}, {"a.gguf", "b.gguf"}, GiB, 0};
  report_init(&rep, &pa, ++f->seq);
  report_add_worker(&rep, "wa", "a", "a.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  report_add_worker(&rep, "wb", "b", "b.gguf", "gpu0", SCHED_WORKER_READY, 1, GiB);
  apply(f, &rep, true);
  sched_req *r1 = req_new(a, LLORCH_PRIORITY_INTERACTIVE); /* takes wa */
  sched_req *r2 = req_new(a, LLORCH_PRIORITY_BATCH);       /* waits */
  sched_req *r3 = req_new(a, LLORCH_PRIORITY_INTERACTIVE); /* waits, but before r2 */
  sched_req *r4 = req_new(b, LLORCH_PRIORITY_BATCH);       /* not blocked by a */
  assert_int_equal(submit(f, r1), 0);
  assert_int_equal(submit(f, r2), 0);
  assert_int_equal(submit(f, r3), 0);
  assert_int_equal(submit(f, r4), 0);
  assert_int_equal(r4->state, SCHED_REQ_RUNNING);
  assert_non_null(strstr(f->s.models[a].pending, "max_replicas 1"));
  sched_request_done(&f->s, r1, f->now);
  sched_dispatch(&f->s, f->now);
  assert_int_equal(r3->state, SCHED_REQ_RUNNING);
  assert_int_equal(r2->state, SCHED_REQ_QUEUED);
  sched_request_done(&f->s, r2, f->now);
  sched_request_done(&f->s, r3, f->now);
  sched_request_done(&f->s, r4, f->now);
  free(r1);
  free(r2);
  free(r3);
  free(r4);
  fx_free(f);
}

/* ---- benchmark ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * 8 pools x 8 GPUs, 32 models, one ready worker of 4 slots per model; 1000
 * requests queued over the models. Each step completes one running request
 * and dispatches: the freed slot is assigned from the 1000-deep queue, and a
 * new request is queued to keep the depth at 1000.
 */
static int run_bench(void) {
  llorch_log_init(LLORCH_LOG_WARN, LLORCH_LOG_FORMAT_TEXT, stderr);
  fx *f = fx_new(2000, 1);
  enum { N_POOLS = 8, N_MODELS = 32, DEPTH = 1000 };
  char names[N_MODELS][16], files[N_MODELS][16];
  for (int i = 0; i < N_MODELS; i++) {
    snprintf(names[i], sizeof names[i], "m%d", i);
    snprintf(files[i], sizeof files[i], "m%d.gguf", i);
    add_model(f, names[i], files[i], 4, 60000, NULL);
    f->s.models[i].max_replicas = 1;
  }
  for (int p = 0; p < N_POOLS; p++) {
    char pn[16];
    snprintf(pn, sizeof pn, "p%d", p);
    pool_spec ps = {pn, NULL, 4, {GiB, GiB, GiB, GiB}, {NULL}, GiB, 0};
    sched_pool_report rep;
    report_init(&rep, &ps, 1);
    rep.models = calloc(N_MODELS, sizeof *rep.models);
    rep.n_models = N_MODELS;
    for (int i = 0; i < N_MODELS; i++) {
      strcpy(rep.models[i].file, files[i]);
      rep.models[i].est[1].valid = true;
      rep.models[i].est[1].fixed_bytes = GiB;
    }
    for (int i = p; i < N_MODELS; i += N_POOLS) {
      char id[16];
      snprintf(id, sizeof id, "w%d", i);
      report_add_worker(&rep, id, names[i], files[i], "gpu0", SCHED_WORKER_READY, 4, GiB);
    }
    apply(f, &rep, true);
  }
  int cap = DEPTH + N_MODELS * 4 + 16;
  sched_req *reqs = calloc((size_t)cap, sizeof *reqs);
  sched_req **running = calloc((size_t)cap, sizeof *running);
  int n_running = 0, next = 0;
  unsigned seed = 12345;
  for (; next < DEPTH + N_MODELS * 4; next++) {
    reqs[next].model = (int)((seed = seed * 1103515245u + 12345u) >> 16) % N_MODELS;
    sched_submit(&f->s, &reqs[next], f->now, NULL);
  }
  sched_dispatch(&f->s, f->now);
  for (int i = 0; i < next; i++)
    if (reqs[i].state == SCHED_REQ_RUNNING) running[n_running++] = &reqs[i];
  printf("bench: %d pools, %d models, %d requests running, %d queued\n", N_POOLS, N_MODELS, n_running,
         f->s.total_queued);
  const int STEPS = 200000;
  uint64_t d0 = f->s.stats.decisions;
  int assigned = 0;
  double t0 = now_s();
  for (int step = 0; step < STEPS; step++) {
    int k = (int)((seed = seed * 1103515245u + 12345u) >> 16) % n_running;
    sched_req *done = running[k];
    sched_request_done(&f->s, done, f->now);
    /* Reuse the finished request as a new arrival of the same model, so the
     * queue stays 1000 deep and every model keeps requests queued. */
    sched_submit(&f->s, done, f->now, NULL);
    f->rec.n = 0;
    sched_dispatch(&f->s, f->now);
    /* The dispatch assigned one queued request into the freed slot. */
    running[k] = f->rec.n > 0 && f->rec.a[0].kind == 'a' ? f->rec.a[0].req : NULL;
    if (!running[k]) {
      fprintf(stderr, "bench: no assignment at step %d\n", step);
      return 1;
    }
    assigned++;
    f->now++;
  }
  double dt = now_s() - t0;
  uint64_t decisions = f->s.stats.decisions - d0;
  printf("bench: %d dispatch passes over a %d-deep queue in %.3f s\n", STEPS, f->s.total_queued, dt);
  printf("bench: %.0f scheduling decisions/s (%.2f us per complete+admit+dispatch)\n",
         (double)decisions / dt, dt / STEPS * 1e6);
  for (int i = 0; i < cap; i++)
    if (reqs[i].state == SCHED_REQ_QUEUED || reqs[i].state == SCHED_REQ_RUNNING)
      sched_request_done(&f->s, &reqs[i], f->now);
  free(reqs);
  free(running);
  fx_free(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--bench") == 0) return run_bench();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_admission_bounds),
      cmocka_unit_test(test_queue_timeout),
      cmocka_unit_test(test_route_least_loaded),
      cmocka_unit_test(test_route_prefix),
      cmocka_unit_test(test_prefix_route_memory),
      cmocka_unit_test(test_start_most_free_and_pending_reason),
      cmocka_unit_test(test_pinned),
      cmocka_unit_test(test_fetch_pinned_retry_and_place),
      cmocka_unit_test(test_fetch_gives_up),
      cmocka_unit_test(test_fetch_where_it_fits),
      cmocka_unit_test(test_fetch_adopted),
      cmocka_unit_test(test_fetch_off),
      cmocka_unit_test(test_evict_idle_lru),
      cmocka_unit_test(test_evict_expired_first_and_queued_protected),
      cmocka_unit_test(test_evict_equal_size),
      cmocka_unit_test(test_evict_exact_fill),
      cmocka_unit_test(test_evict_several_victims),
      cmocka_unit_test(test_need_formula),
      cmocka_unit_test(test_retry_bounded),
      cmocka_unit_test(test_pool_down_and_back),
      cmocka_unit_test(test_adopt_and_seq),
      cmocka_unit_test(test_many_workers_cap_and_forget),
      cmocka_unit_test(test_min_replicas_and_unload),
      cmocka_unit_test(test_event_keeps_reservation),
      cmocka_unit_test(test_drain_worker),
      cmocka_unit_test(test_short_lived_worker_settles),
      cmocka_unit_test(test_priority_and_blocking),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
