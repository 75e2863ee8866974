/*
 * The worker's scheduler against a fake backend: a backend_ops table whose
 * logits are a hash of the sequence's tokens so far (so they depend on the KV
 * "cache" being right and on nothing else), and which rejects any batch that
 * breaks the backend contract (positions not contiguous, unknown slot, too
 * many entries).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "roles/worker/scheduler.h"
#include "testdata.h"

/* ---- fake backend ---- */

#define FAKE_VOCAB 64
#define FAKE_MAX_SEQ 16
#define FAKE_MAX_CTX 512

typedef struct fake_ctx {
  uint32_t n_seq, n_ctx, n_batch_max;
  uint32_t len[FAKE_MAX_SEQ];
  uint64_t h[FAKE_MAX_SEQ][FAKE_MAX_CTX];
  int calls;
  int fail_at_call;            /* forward fails on this call number (1-based), 0 never */
  int max_seqs_in_batch;       /* most distinct sequences seen in one batch */
  int mixed_batches;           /* batches with a decode entry and a prefill chunk together */
  int violations;
  uint32_t n_vocab;            /* logits per row */
  /* Script mode (with a real tokenizer): the greedy choice after position p
   * is script[p + 1 - prompt_len], so the output is a known token list. */
  const int32_t *script;
  uint32_t n_script, prompt_len;
} fake_ctx;

static uint64_t fake_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int fake_forward(void *vctx, const llorch_batch *b, float *logits, llorch_errmsg *em) {
  fake_ctx *c = vctx;
  c->calls++;
  if (c->fail_at_call && c->calls == c->fail_at_call)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "fake device error");
  if (b->n_tokens <= 0 || (uint32_t)b->n_tokens > c->n_batch_max) {
    c->violations++;
    return llorch_errmsg_set(em, LLORCH_EINVAL, "batch of %d", b->n_tokens);
  }
  int seen[FAKE_MAX_SEQ] = {0}, n_seen = 0, n_multi = 0, n_single = 0;
  int per_seq[FAKE_MAX_SEQ] = {0};
  for (int i = 0; i < b->n_tokens; i++) per_seq[b->seq[i]]++;
  for (int i = 0; i < b->n_tokens; i++) {
    int32_t s = b->seq[i], p = b->pos[i];
    if (s < 0 || (uint32_t)s >= c->n_seq || p < 0 || (uint32_t)p >= c->n_ctx ||
        (uint32_t)p != c->len[s]) {
      c->violations++;
      return llorch_errmsg_set(em, LLORCH_EINVAL, "entry %d: seq %d pos %d len %u", i, s, p,
                               s >= 0 && s < FAKE_MAX_SEQ ? c->len[s] : 0);
    }
    if (!seen[s]++) {
      n_seen++;
      if (per_seq[s] > 1) n_multi++;
      else n_single++;
    }
    uint64_t prev = p ? c->h[s][p - 1] : 0x1234;
    c->h[s][p] = fake_mix(prev ^ ((uint64_t)b->token[i] * 0x9E3779B97F4A7C15ull) ^ (uint64_t)p);
    c->len[s] = (uint32_t)p + 1;
    if (b->logits[i]) {
      if (c->script) {
        uint32_t k = (uint32_t)p + 1 - c->prompt_len;
        if (k >= c->n_script) k = c->n_script - 1;
        for (uint32_t v = 0; v < c->n_vocab; v++) logits[v] = 0.0f;
        logits[c->script[k]] = 10.0f;
      } else {
        for (uint32_t v = 0; v < c->n_vocab; v++)
          logits[v] = (float)(fake_mix(c->h[s][p] + (uint64_t)v) >> 40) / 16777216.0f * 8.0f;
      }
      logits += c->n_vocab;
    }
  }
  if (n_seen > c->max_seqs_in_batch) c->max_seqs_in_batch = n_seen;
  if (n_multi && n_single) c->mixed_batches++;
  return 0;
}

static void fake_seq_reset(void *vctx, int32_t seq) {
  fake_ctx *c = vctx;
  c->len[seq] = 0;
}

static void fake_memory(void *vctx, llorch_backend_memory *out) { memset(out, 0, sizeof *out); }

static const llorch_backend_ops fake_ops = {
    .name = "fake", .forward = fake_forward, .seq_reset = fake_seq_reset, .memory = fake_memory};

/* Hidden states of the fake backend: FAKE_EMBD values derived from the
 * sequence's hash at the entry's position (so they too depend on the cache
 * being right). fake_hidden_at gives what an entry must have produced. */
#define FAKE_EMBD 4
static void fake_hidden_of(uint64_t h, float *out) {
  for (int d = 0; d < FAKE_EMBD; d++) out[d] = (float)(fake_mix(h + 77u * (uint64_t)d) >> 40) / 16777216.0f - 0.5f;
}

static int fake_forward_hidden(void *vctx, const llorch_batch *b, float *logits, float *hidden,
                               llorch_errmsg *em) {
  fake_ctx *c = vctx;
  int rc = fake_forward(vctx, b, logits, em);
  if (rc < 0) return rc;
  for (int i = 0; b->hidden && i < b->n_tokens; i++)
    if (b->hidden[i]) {
      fake_hidden_of(c->h[b->seq[i]][b->pos[i]], hidden);
      hidden += FAKE_EMBD;
    }
  return 0;
}

static const llorch_backend_ops fake_ops_hidden = {
    .name = "fake", .forward = fake_forward, .seq_reset = fake_seq_reset, .memory = fake_memory,
    .forward_hidden = fake_forward_hidden};

/* The hidden state the fake backend gives at each position of prompt. */
static void fake_hidden_at(const int32_t *prompt, uint32_t n, float (*out)[FAKE_EMBD]) {
  uint64_t prev = 0x1234;
  for (uint32_t p = 0; p < n; p++) {
    prev = fake_mix(prev ^ ((uint64_t)prompt[p] * 0x9E3779B97F4A7C15ull) ^ (uint64_t)p);
    fake_hidden_of(prev, out[p]);
  }
}

typedef struct fixture {
  llorch_model model;
  llorch_backend be;
  fake_ctx ctx;
  worker_sched *s;
  int notified;
} fixture;

static void fixture_notify(void *arg) { ((fixture *)arg)->notified++; }

static fixture *fixture_new(uint32_t slots, uint32_t ctx, uint32_t batch, uint32_t chunk,
                            uint32_t queue_max, double queue_timeout) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->model.hp.n_vocab = FAKE_VOCAB;
  f->ctx.n_vocab = FAKE_VOCAB;
  f->ctx.n_seq = slots;
  f->ctx.n_ctx = ctx;
  f->ctx.n_batch_max = batch;
  f->be.ops = &fake_ops;
  f->be.ctx = &f->ctx;
  f->be.model = &f->model;
  worker_sched_config cfg = {.n_slots = slots, .n_ctx = ctx, .n_batch_max = batch,
                             .prefill_chunk = chunk, .queue_max = queue_max,
                             .queue_timeout_s = queue_timeout};
  llorch_errmsg em = {{0}};
  assert_int_equal(worker_sched_init(&f->s, &cfg, &f->be, NULL, fixture_notify, f, &em), 0);
  return f;
}

static void fixture_free(fixture *f) {
  worker_sched_free(f->s);
  free(f);
}

/* ---- collecting results ---- */

typedef struct result {
  int32_t tokens[FAKE_MAX_CTX];
  int n_tokens;
  bool started, ended, errored;
  worker_finish finish;
  const char *err_code;
  int events_after_end;
  int32_t slot;
  uint32_t max_tokens;
  uint32_t cached_tokens;
  float first_logprob;
  int first_n_top;
  float first_top0;
  char text[1024];
  size_t text_len;
  /* PROMPT (echo): the entries (owned), and whether a token came before it */
  worker_token_logprob *plp;
  uint32_t n_plp;
  bool prompt_after_token;
} result;

/* Drains the scheduler's events into results[] (indexed by job->owner). */
static void drain_sched(worker_sched *s, result *results) {
  for (worker_event *e = worker_sched_events_take(s), *n; e; e = n) {
    n = e->next;
    result *r = &results[(intptr_t)e->job->owner];
    if (r->ended || r->errored) r->events_after_end++;
    switch (e->kind) {
    case WORKER_EV_STARTED:
      r->started = true;
      r->slot = e->slot;
      r->max_tokens = e->max_tokens;
      break;
    case WORKER_EV_TOKEN:
      if (r->n_tokens == 0 && e->has_logprob) {
        r->first_logprob = e->lp.logprob;
        r->first_n_top = e->lp.n_top;
        r->first_top0 = e->lp.n_top ? e->lp.top_logprob[0] : 0;
      }
      r->tokens[r->n_tokens++] = e->token_id;
      if (e->text_len && r->text_len + e->text_len < sizeof r->text) {
        memcpy(r->text + r->text_len, e->text, e->text_len);
        r->text_len += e->text_len;
        r->text[r->text_len] = 0;
      }
      break;
    case WORKER_EV_END:
      r->ended = true;
      r->finish = e->finish;
      r->cached_tokens = e->cached_tokens;
      break;
    case WORKER_EV_ERROR:
      r->errored = true;
      r->err_code = e->code;
      break;
    case WORKER_EV_PROMPT:
      free(r->plp);
      r->plp = e->plp;
      r->n_plp = e->n_plp;
      e->plp = NULL;
      r->prompt_after_token = r->n_tokens > 0;
      break;
    }
    worker_event_free(e);
  }
}

static void drain_events(fixture *f, result *results) { drain_sched(f->s, results); }

static worker_job *make_job(int idx, uint32_t n_prompt, uint32_t max_tokens) {
  int32_t prompt[FAKE_MAX_CTX];
  for (uint32_t i = 0; i < n_prompt; i++) prompt[i] = (int32_t)((idx * 7 + i * 3 + 1) % FAKE_VOCAB);
  char id[32];
  snprintf(id, sizeof id, "job-%d", idx);
  worker_job *j = worker_job_new(id, prompt, n_prompt);
  assert_non_null(j);
  j->max_tokens = max_tokens;
  j->owner = (void *)(intptr_t)idx;
  return j;
}

/* True when results[lo..lo+n) all ended. */
static bool all_done(result *r, int lo, int n) {
  for (int i = lo; i < lo + n; i++)
    if (!r[i].ended && !r[i].errored) return false;
  return true;
}

static void run_until_done(fixture *f, result *r, int lo, int n) {
  for (int step = 0; step < 10000 && !all_done(r, lo, n); step++) {
    worker_sched_step(f->s);
    drain_events(f, r);
  }
  assert_true(all_done(r, lo, n));
}

/* ---- tests ---- */

/* Greedy outputs of 8 jobs sharing 4 slots (queue, prefill chunks, decode
 * batched together) are token-identical to each job run alone. */
static void test_batched_equals_alone(void **state) {
  enum { N = 8 };
  uint32_t plen[N] = {5, 40, 3, 17, 64, 9, 1, 30};
  result alone[N], batched[N];
  memset(alone, 0, sizeof alone);
  memset(batched, 0, sizeof batched);
  worker_job *jobs[N];

  for (int i = 0; i < N; i++) {
    fixture *f = fixture_new(1, 256, 64, 64, 8, 0);
    jobs[i] = make_job(i, plen[i], 12);
    llorch_errmsg em = {{0}};
    assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
    run_until_done(f, alone, i, 1);
    assert_int_equal(f->ctx.violations, 0);
    worker_job_free(jobs[i]);
    fixture_free(f);
  }

  fixture *f = fixture_new(4, 256, 24, 8, 8, 0);
  for (int i = 0; i < N; i++) {
    jobs[i] = make_job(i, plen[i], 12);
    llorch_errmsg em = {{0}};
    assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
  }
  run_until_done(f, batched, 0, N);
  assert_int_equal(f->ctx.violations, 0);
  assert_true(f->ctx.max_seqs_in_batch >= 3);
  assert_true(f->ctx.mixed_batches > 0); /* decode and prefill in one forward */
  for (int i = 0; i < N; i++) {
    assert_true(batched[i].ended);
    assert_int_equal(batched[i].finish, WORKER_FINISH_LENGTH);
    assert_int_equal(batched[i].n_tokens, 12);
    assert_int_equal(alone[i].n_tokens, 12);
    assert_memory_equal(batched[i].tokens, alone[i].tokens, 12 * sizeof(int32_t));
    assert_int_equal(batched[i].events_after_end, 0);
    worker_job_free(jobs[i]);
  }
  assert_true(f->notified > 0);
  fixture_free(f);
}

/* Embedding jobs (pooling mean, cls, last) next to generation: pooled from
 * the right positions, ended after their prompt with nothing generated,
 * and the generation's tokens are those it gets alone. Without
 * forward_hidden the backend refuses them. */
static void test_embedding_jobs(void **state) {
  (void)state;
  enum { N = 4 };
  const uint32_t plen[N] = {20, 13, 9, 30};
  const int pooling[N] = {0, LLORCH_POOLING_MEAN, LLORCH_POOLING_CLS, LLORCH_POOLING_LAST};
  result alone = {0}, r[N];
  memset(r, 0, sizeof r);
  llorch_errmsg em = {{0}};

  fixture *f = fixture_new(1, 128, 16, 16, 8, 0);
  worker_job *g = make_job(0, plen[0], 10);
  assert_int_equal(worker_sched_submit(f->s, g, &em), 0);
  run_until_done(f, &alone, 0, 1);
  worker_job_free(g);
  /* no hidden states on this backend */
  worker_job *e = make_job(1, 5, 0);
  e->pooling = LLORCH_POOLING_MEAN;
  assert_int_equal(worker_sched_submit(f->s, e, &em), LLORCH_EUNSUPPORTED);
  assert_non_null(strstr(em.text, "not supported on this device"));
  worker_job_free(e);
  fixture_free(f);

  f = fixture_new(4, 128, 16, 8, 8, 0);
  f->model.hp.n_embd = FAKE_EMBD;
  worker_sched_free(f->s);
  f->be.ops = &fake_ops_hidden;
  worker_sched_config cfg = {.n_slots = 4, .n_ctx = 128, .n_batch_max = 16, .prefill_chunk = 8, .queue_max = 8};
  assert_int_equal(worker_sched_init(&f->s, &cfg, &f->be, NULL, fixture_notify, f, &em), 0);
  worker_job *jobs[N];
  for (int i = 0; i < N; i++) {
    jobs[i] = make_job(i, plen[i], i ? 0 : 10);
    jobs[i]->pooling = pooling[i];
    assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
  }
  run_until_done(f, r, 0, N);
  assert_int_equal(f->ctx.violations, 0);
  assert_true(f->ctx.max_seqs_in_batch >= 3); /* embeddings batched with the generation */
  assert_int_equal(r[0].n_tokens, 10);
  assert_memory_equal(r[0].tokens, alone.tokens, 10 * sizeof(int32_t));
  for (int i = 1; i < N; i++) {
    assert_true(r[i].ended);
    assert_int_equal(r[i].finish, WORKER_FINISH_STOP);
    assert_int_equal(r[i].n_tokens, 0);
    float want[64][FAKE_EMBD], pooled[FAKE_EMBD] = {0};
    fake_hidden_at(jobs[i]->prompt, plen[i], want);
    for (int d = 0; d < FAKE_EMBD; d++) {
      if (pooling[i] == LLORCH_POOLING_MEAN) {
        for (uint32_t p = 0; p < plen[i]; p++) pooled[d] += want[p][d];
        pooled[d] /= (float)plen[i];
      } else {
        pooled[d] = want[pooling[i] == LLORCH_POOLING_CLS ? 0 : plen[i] - 1][d];
      }
      assert_float_equal(jobs[i]->embd[d], pooled[d], 1e-6);
    }
  }
  for (int i = 0; i < N; i++) worker_job_free(jobs[i]);
  fixture_free(f);
}

static void test_prompt_too_long_and_clamp(void **state) {
  fixture *f = fixture_new(1, 32, 32, 32, 4, 0);
  llorch_errmsg em = {{0}};
  worker_job *j = make_job(0, 32, 0);
  assert_int_equal(worker_sched_submit(f->s, j, &em), LLORCH_ERANGE);
  assert_non_null(strstr(em.text, "32 tokens"));
  assert_non_null(strstr(em.text, "context is 32"));
  worker_job_free(j);

  result r[1];
  memset(r, 0, sizeof r);
  j = make_job(0, 20, 1000);
  assert_int_equal(worker_sched_submit(f->s, j, &em), 0);
  assert_int_equal(j->max_tokens, 12);
  run_until_done(f, r, 0, 1);
  assert_int_equal(r[0].max_tokens, 12);
  assert_int_equal(r[0].n_tokens, 12);
  assert_int_equal(r[0].finish, WORKER_FINISH_LENGTH);
  assert_int_equal(f->ctx.violations, 0);
  worker_job_free(j);

  j = make_job(0, 0, 1);
  assert_int_equal(worker_sched_submit(f->s, j, &em), LLORCH_EINVAL);
  worker_job_free(j);
  fixture_free(f);
}

static void test_queue_full(void **state) {
  fixture *f = fixture_new(2, 64, 16, 16, 1, 0);
  llorch_errmsg em = {{0}};
  worker_job *j[4];
  for (int i = 0; i < 4; i++) j[i] = make_job(i, 4, 3);
  /* 2 free slots + queue_max 1: three are taken, the fourth refused. */
  for (int i = 0; i < 3; i++) assert_int_equal(worker_sched_submit(f->s, j[i], &em), 0);
  assert_int_equal(worker_sched_submit(f->s, j[3], &em), LLORCH_EBUSY);
  assert_non_null(strstr(em.text, "queue_max 1"));
  result r[4];
  memset(r, 0, sizeof r);
  run_until_done(f, r, 0, 3);
  for (int i = 0; i < 3; i++) assert_int_equal(r[i].n_tokens, 3);
  worker_sched_stats st;
  worker_sched_stats_get(f->s, &st);
  assert_int_equal(st.slots_busy, 0);
  assert_int_equal(st.queued, 0);
  assert_int_equal(st.generated_tokens, 9);
  for (int i = 0; i < 4; i++) worker_job_free(j[i]);
  fixture_free(f);
}

static void test_cancel_running_frees_slot(void **state) {
  fixture *f = fixture_new(2, 128, 32, 32, 4, 0);
  llorch_errmsg em = {{0}};
  worker_job *a = make_job(0, 4, 100), *b = make_job(1, 4, 5);
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  result r[3];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 4; i++) {
    worker_sched_step(f->s);
    drain_events(f, r);
  }
  assert_int_equal(r[0].n_tokens, 4);
  worker_sched_cancel(f->s, a);
  worker_sched_cancel(f->s, a); /* idempotent */
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[0].ended);
  assert_int_equal(r[0].finish, WORKER_FINISH_CANCELLED);
  assert_int_equal(r[0].n_tokens, 4); /* nothing after the cancel */
  worker_sched_stats st;
  worker_sched_stats_get(f->s, &st);
  assert_int_equal(st.slots_busy, 0);
  worker_sched_cancel(f->s, a); /* after the end: no-op */
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_int_equal(r[0].events_after_end, 0);

  /* The freed slot serves the next job from position 0. */
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  run_until_done(f, r, 1, 1);
  assert_int_equal(r[1].n_tokens, 5);
  assert_int_equal(f->ctx.violations, 0);
  worker_job_free(a);
  worker_job_free(b);
  fixture_free(f);
}

static void test_cancel_queued_and_timeout(void **state) {
  fixture *f = fixture_new(1, 64, 16, 16, 4, 0.05);
  llorch_errmsg em = {{0}};
  worker_job *a = make_job(0, 4, 60), *b = make_job(1, 4, 3), *c = make_job(2, 4, 3);
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, c, &em), 0);
  result r[3];
  memset(r, 0, sizeof r);
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[0].started);
  assert_false(r[1].started);
  worker_sched_cancel(f->s, b);
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[1].ended);
  assert_false(r[1].started);
  assert_int_equal(r[1].finish, WORKER_FINISH_CANCELLED);
  /* c waits behind a (60 tokens) longer than 50 ms. */
  struct timespec ts = {0, 80 * 1000 * 1000};
  nanosleep(&ts, NULL);
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[2].errored);
  assert_string_equal(r[2].err_code, "queue_timeout");
  worker_sched_cancel(f->s, a);
  run_until_done(f, r, 0, 3);
  worker_job_free(a);
  worker_job_free(b);
  worker_job_free(c);
  fixture_free(f);
}

static void test_drain_and_abort(void **state) {
  fixture *f = fixture_new(1, 64, 16, 16, 4, 0);
  llorch_errmsg em = {{0}};
  worker_job *a = make_job(0, 4, 50), *b = make_job(1, 4, 3), *c = make_job(2, 4, 3);
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  result r[2];
  memset(r, 0, sizeof r);
  worker_sched_step(f->s);
  worker_sched_drain(f->s);
  assert_int_equal(worker_sched_submit(f->s, c, &em), LLORCH_ESTATE);
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[1].errored);
  assert_string_equal(r[1].err_code, "shutting_down");
  assert_false(r[0].ended || r[0].errored); /* running one goes on */
  worker_sched_abort_running(f->s);
  worker_sched_step(f->s);
  drain_events(f, r);
  assert_true(r[0].errored);
  assert_string_equal(r[0].err_code, "shutting_down");
  worker_job_free(a);
  worker_job_free(b);
  worker_job_free(c);
  fixture_free(f);
}

static void test_backend_failure(void **state) {
  fixture *f = fixture_new(2, 64, 16, 16, 4, 0);
  f->ctx.fail_at_call = 3;
  llorch_errmsg em = {{0}};
  worker_job *a = make_job(0, 4, 10), *b = make_job(1, 4, 10);
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  result r[2];
  memset(r, 0, sizeof r);
  run_until_done(f, r, 0, 2);
  assert_true(r[0].errored && r[1].errored);
  assert_string_equal(r[0].err_code, "internal_error");
  worker_sched_stats st;
  worker_sched_stats_get(f->s, &st);
  assert_int_equal(st.slots_busy, 0);
  worker_job_free(a);
  worker_job_free(b);
  fixture_free(f);
}

static void test_logprobs_and_seeded_sampling(void **state) {
  result r[3];
  memset(r, 0, sizeof r);
  fixture *f = fixture_new(3, 64, 16, 16, 4, 0);
  llorch_errmsg em = {{0}};
  worker_job *j[3];
  for (int i = 0; i < 3; i++) {
    j[i] = make_job(i, 4, 8);
    /* same prompt for all three */
    for (int k = 0; k < 4; k++) j[i]->prompt[k] = k + 1;
  }
  j[0]->want_logprobs = true;
  j[0]->sp.n_logprobs = 3;
  for (int i = 1; i < 3; i++) {
    j[i]->sp.temperature = 1.0f;
    j[i]->sp.seed = 42;
  }
  for (int i = 0; i < 3; i++) assert_int_equal(worker_sched_submit(f->s, j[i], &em), 0);
  run_until_done(f, r, 0, 3);
  assert_int_equal(r[0].first_n_top, 3);
  assert_true(r[0].first_logprob < 0.0f);
  /* greedy: the chosen token is the most likely one */
  assert_float_equal(r[0].first_logprob, r[0].first_top0, 1e-6);
  /* same seed, same prompt: same tokens */
  assert_memory_equal(r[1].tokens, r[2].tokens, 8 * sizeof(int32_t));
  for (int i = 0; i < 3; i++) worker_job_free(j[i]);
  fixture_free(f);
}

/* echo: the prompt's logprobs (more positions than one step computes, from
 * the logits every prompt position gets) equal what decoding reports after
 * the same prefix; a prompt-only job ends after its PROMPT event with
 * nothing generated; a job that also generates gets PROMPT before its first
 * token. The fake backend's logits depend only on the tokens so far. */
static void test_prompt_logprobs(void **state) {
  (void)state;
  enum { NP = 40 };
  result r[3];
  memset(r, 0, sizeof r);
  fixture *f = fixture_new(2, 128, 64, 32, 4, 0);
  llorch_errmsg em = {{0}};
  worker_job *a = make_job(0, NP, 1);
  a->want_logprobs = true;
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  run_until_done(f, r, 0, 1);
  assert_int_equal(r[0].n_tokens, 1);
  assert_null(r[0].plp);
  /* the prompt plus the token greedy decoding chose */
  int32_t ids[NP + 1];
  memcpy(ids, a->prompt, NP * sizeof *ids);
  ids[NP] = r[0].tokens[0];
  worker_job *b = worker_job_new("job-1", ids, NP + 1);
  assert_non_null(b);
  b->owner = (void *)(intptr_t)1;
  b->prompt_logprobs = b->prompt_only = b->want_logprobs = true;
  b->sp.n_logprobs = 3;
  worker_job *c = make_job(2, 20, 3);
  c->prompt_logprobs = true;
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, c, &em), 0);
  run_until_done(f, r, 1, 2);
  /* b: every position, the first without a logprob */
  assert_true(r[1].ended);
  assert_int_equal(r[1].finish, WORKER_FINISH_LENGTH);
  assert_int_equal(r[1].n_tokens, 0);
  assert_int_equal(r[1].n_plp, NP + 1);
  assert_non_null(r[1].plp);
  assert_true(isnan(r[1].plp[0].logprob));
  assert_int_equal(r[1].plp[0].n_top, 0);
  for (uint32_t i = 1; i <= NP; i++) {
    const worker_token_logprob *t = &r[1].plp[i];
    assert_int_equal(t->id, ids[i]);
    assert_int_equal(t->n_top, 3);
    assert_true(t->logprob <= 0.0f);
    assert_true(t->top_logprob[0] >= t->logprob - 1e-6f);
    assert_true(t->top_logprob[0] >= t->top_logprob[1] && t->top_logprob[1] >= t->top_logprob[2]);
  }
  /* the chosen token's logprob as a prompt token: the same number */
  assert_float_equal(r[1].plp[NP].logprob, r[0].first_logprob, 1e-6);
  assert_int_equal(r[1].plp[NP].top_id[0], ids[NP]); /* greedy chose the best */
  /* c: PROMPT first, then its tokens */
  assert_true(r[2].ended);
  assert_int_equal(r[2].n_plp, 20);
  assert_false(r[2].prompt_after_token);
  assert_int_equal(r[2].n_tokens, 3);
  assert_int_equal(f->ctx.violations, 0);
  /* a prompt-only job must ask for the prompt's logprobs */
  worker_job *d = make_job(3, 4, 1);
  d->prompt_only = true;
  assert_int_equal(worker_sched_submit(f->s, d, &em), LLORCH_EINVAL);
  worker_job_free(d);
  for (int i = 0; i < 3; i++) free(r[i].plp);
  worker_job_free(a);
  worker_job_free(b);
  worker_job_free(c);
  fixture_free(f);
}

/* The inference thread: jobs submitted from this thread complete and the
 * notify callback fires. */
static void test_thread(void **state) {
  fixture *f = fixture_new(2, 64, 16, 16, 4, 0);
  llorch_errmsg em = {{0}};
  assert_int_equal(worker_sched_start(f->s, &em), 0);
  worker_job *a = make_job(0, 4, 10), *b = make_job(1, 6, 10);
  assert_int_equal(worker_sched_submit(f->s, a, &em), 0);
  assert_int_equal(worker_sched_submit(f->s, b, &em), 0);
  result r[2];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 2000 && !all_done(r, 0, 2); i++) {
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
    drain_events(f, r);
  }
  assert_true(all_done(r, 0, 2));
  assert_int_equal(r[0].n_tokens, 10);
  assert_int_equal(r[1].n_tokens, 10);
  worker_sched_stop(f->s);
  worker_job_free(a);
  worker_job_free(b);
  fixture_free(f);
}

/* ---- with a real tokenizer: text, stop strings, end of generation ---- */

typedef struct tok_fixture {
  fixture f;
  llorch_tokenizer *tok;
  int32_t script[32];
} tok_fixture;

/* The scripted output is "Hello world, and more" then <|im_end|> (EOS/EOT of
 * the qwen2 vocabulary), then "!!!" forever. */
static tok_fixture *tok_fixture_new(uint32_t prompt_len) {
  char path[1024];
  testdata_path(path, sizeof path, "tokenizer/ggml-vocab-qwen2.gguf");
  tok_fixture *t = calloc(1, sizeof *t);
  assert_non_null(t);
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_tokenizer_load_file(&t->tok, path, &em), 0);
  llorch_tokens ids = {0};
  const char *text = "Hello world, and more";
  assert_int_equal(llorch_tokenize(t->tok, text, strlen(text), 0, &ids, &em), 0);
  assert_true(ids.n >= 3 && ids.n < 24);
  memcpy(t->script, ids.ids, ids.n * sizeof *ids.ids);
  uint32_t n = (uint32_t)ids.n;
  int32_t eot = llorch_tokenizer_find(t->tok, "<|im_end|>", 10);
  assert_true(eot >= 0 && llorch_tokenizer_is_eog(t->tok, eot));
  t->script[n++] = eot;
  llorch_tokens_free(&ids);
  assert_int_equal(llorch_tokenize(t->tok, "!!!", 3, 0, &ids, &em), 0);
  t->script[n++] = ids.ids[0];
  llorch_tokens_free(&ids);

  fixture *f = &t->f;
  f->model.hp.n_vocab = (uint32_t)llorch_tokenizer_n_vocab(t->tok);
  f->ctx.n_vocab = f->model.hp.n_vocab;
  f->ctx.n_seq = 1;
  f->ctx.n_ctx = 128;
  f->ctx.n_batch_max = 32;
  f->ctx.script = t->script;
  f->ctx.n_script = n;
  f->ctx.prompt_len = prompt_len;
  f->be.ops = &fake_ops;
  f->be.ctx = &f->ctx;
  f->be.model = &f->model;
  worker_sched_config cfg = {.n_slots = 1, .n_ctx = 128, .n_batch_max = 32, .prefill_chunk = 32,
                             .queue_max = 4};
  assert_int_equal(worker_sched_init(&f->s, &cfg, &f->be, t->tok, fixture_notify, f, &em), 0);
  return t;
}

static void tok_fixture_free(tok_fixture *t) {
  worker_sched_free(t->f.s);
  llorch_tokenizer_free(t->tok);
  free(t);
}

static worker_job *tok_job(uint32_t prompt_len, uint32_t max_tokens) {
  worker_job *j = make_job(0, prompt_len, max_tokens);
  return j;
}

static void test_text_until_eog(void **state) {
  tok_fixture *t = tok_fixture_new(5);
  llorch_errmsg em = {{0}};
  worker_job *j = tok_job(5, 50);
  assert_int_equal(worker_sched_submit(t->f.s, j, &em), 0);
  result r[1];
  memset(r, 0, sizeof r);
  run_until_done(&t->f, r, 0, 1);
  assert_true(r[0].ended);
  assert_int_equal(r[0].finish, WORKER_FINISH_STOP);
  assert_string_equal(r[0].text, "Hello world, and more");
  /* the end-of-generation token is counted, its text is not sent */
  assert_int_equal(r[0].n_tokens, (int)t->f.ctx.n_script - 1);
  worker_job_free(j);
  tok_fixture_free(t);
}

static void test_stop_string_across_tokens(void **state) {
  tok_fixture *t = tok_fixture_new(5);
  llorch_errmsg em = {{0}};
  worker_job *j = tok_job(5, 50);
  assert_int_equal(worker_job_add_stop(j, "lo wor", 6), 0);
  assert_int_equal(worker_sched_submit(t->f.s, j, &em), 0);
  result r[1];
  memset(r, 0, sizeof r);
  run_until_done(&t->f, r, 0, 1);
  assert_int_equal(r[0].finish, WORKER_FINISH_STOP);
  assert_string_equal(r[0].text, "Hel");
  worker_job_free(j);
  tok_fixture_free(t);
}

static void test_ignore_eos_runs_to_length(void **state) {
  tok_fixture *t = tok_fixture_new(5);
  llorch_errmsg em = {{0}};
  worker_job *j = tok_job(5, 20);
  j->ignore_eos = true;
  assert_int_equal(worker_sched_submit(t->f.s, j, &em), 0);
  result r[1];
  memset(r, 0, sizeof r);
  run_until_done(&t->f, r, 0, 1);
  assert_int_equal(r[0].finish, WORKER_FINISH_LENGTH);
  assert_int_equal(r[0].n_tokens, 20);
  assert_non_null(strstr(r[0].text, "Hello world, and more"));
  assert_non_null(strstr(r[0].text, "!!!"));
  worker_job_free(j);
  tok_fixture_free(t);
}

/* ---- a paged fake backend: the prefix cache and preemption ---- */

/*
 * Cells hold the running hash of a sequence's tokens, stored in blocks
 * through per-sequence tables, so logits depend on every earlier position
 * being in the right block. A write into a position that another sequence
 * has computed in the same block (a shared block) is a violation.
 */
#define PAGED_MAX_BLOCKS 256
#define PAGED_BT 8

typedef struct paged_ctx {
  uint32_t n_seq, n_ctx, n_batch_max, n_blocks;
  uint64_t cell[PAGED_MAX_BLOCKS][PAGED_BT];
  int32_t table[FAKE_MAX_SEQ][FAKE_MAX_CTX / PAGED_BT];
  uint32_t n_table[FAKE_MAX_SEQ], len[FAKE_MAX_SEQ];
  int violations, max_seqs_in_batch, copies;
  int max_mixed_tokens;        /* largest batch that had a one-entry (decode) sequence */
} paged_ctx;

static bool paged_shared_write(const paged_ctx *c, int32_t s, int32_t blk, uint32_t off) {
  for (uint32_t t = 0; t < c->n_seq; t++) {
    if ((int32_t)t == s) continue;
    for (uint32_t k = 0; k < c->n_table[t]; k++)
      if (c->table[t][k] == blk && k * PAGED_BT + off < c->len[t]) return true;
  }
  return false;
}

static int paged_forward(void *vctx, const llorch_batch *b, float *logits, llorch_errmsg *em) {
  paged_ctx *c = vctx;
  int seen[FAKE_MAX_SEQ] = {0}, n_seen = 0;
  if (b->n_tokens <= 0 || (uint32_t)b->n_tokens > c->n_batch_max) {
    c->violations++;
    return llorch_errmsg_set(em, LLORCH_EINVAL, "batch of %d", b->n_tokens);
  }
  for (int i = 0; i < b->n_tokens; i++) {
    const int32_t s = b->seq[i], p = b->pos[i];
    if (s < 0 || (uint32_t)s >= c->n_seq || (uint32_t)p != c->len[s] ||
        (uint32_t)p / PAGED_BT >= c->n_table[s]) {
      c->violations++;
      return llorch_errmsg_set(em, LLORCH_EINVAL, "entry %d: seq %d pos %d", i, s, p);
    }
    if (!seen[s]++) n_seen++;
    const int32_t blk = c->table[s][p / PAGED_BT];
    if (paged_shared_write(c, s, blk, (uint32_t)p % PAGED_BT)) c->violations++;
    const uint64_t prev = p ? c->cell[c->table[s][(p - 1) / PAGED_BT]][(p - 1) % PAGED_BT] : 0x1234;
    const uint64_t h = fake_mix(prev ^ ((uint64_t)b->token[i] * 0x9E3779B97F4A7C15ull) ^ (uint64_t)p);
    c->cell[blk][p % PAGED_BT] = h;
    c->len[s] = (uint32_t)p + 1;
    if (b->logits[i]) {
      for (uint32_t v = 0; v < FAKE_VOCAB; v++)
        logits[v] = (float)(fake_mix(h + (uint64_t)v) >> 40) / 16777216.0f * 8.0f;
      logits += FAKE_VOCAB;
    }
  }
  if (n_seen > c->max_seqs_in_batch) c->max_seqs_in_batch = n_seen;
  for (uint32_t t = 0; t < c->n_seq; t++)
    if (seen[t] == 1 && b->n_tokens > c->max_mixed_tokens) c->max_mixed_tokens = b->n_tokens;
  return 0;
}

static void paged_seq_reset(void *vctx, int32_t seq) {
  paged_ctx *c = vctx;
  c->len[seq] = 0;
  c->n_table[seq] = 0;
}

static int paged_set_blocks(void *vctx, int32_t seq, const int32_t *blocks, uint32_t n,
                            uint32_t n_past, llorch_errmsg *em) {
  paged_ctx *c = vctx;
  if (seq < 0 || (uint32_t)seq >= c->n_seq || n > c->n_ctx / PAGED_BT || n_past > n * PAGED_BT) {
    c->violations++;
    return llorch_errmsg_set(em, LLORCH_EINVAL, "bad table");
  }
  for (uint32_t k = 0; k < n; k++) {
    if (blocks[k] < 0 || (uint32_t)blocks[k] >= c->n_blocks) {
      c->violations++;
      return llorch_errmsg_set(em, LLORCH_EINVAL, "bad block");
    }
    /* a block is in two tables only while both have computed it whole */
    for (uint32_t t = 0; t < c->n_seq; t++)
      for (uint32_t q = 0; t != (uint32_t)seq && q < c->n_table[t]; q++)
        if (c->table[t][q] == blocks[k] && ((k + 1) * PAGED_BT > n_past || (q + 1) * PAGED_BT > c->len[t]))
          c->violations++;
  }
  memcpy(c->table[seq], blocks, n * sizeof *blocks);
  c->n_table[seq] = n;
  c->len[seq] = n_past;
  return 0;
}

static int paged_copy(void *vctx, int32_t dst, int32_t src, uint32_t n_pos, llorch_errmsg *em) {
  paged_ctx *c = vctx;
  (void)em;
  memcpy(c->cell[dst], c->cell[src], n_pos * sizeof(uint64_t));
  c->copies++;
  return 0;
}

static void paged_memory(void *vctx, llorch_backend_memory *out) {
  paged_ctx *c = vctx;
  memset(out, 0, sizeof *out);
  out->kv_block_tokens = PAGED_BT;
  out->kv_blocks = c->n_blocks;
}

static const llorch_backend_ops paged_ops = {
    .name = "paged", .forward = paged_forward, .seq_reset = paged_seq_reset,
    .memory = paged_memory, .seq_set_blocks = paged_set_blocks, .kv_copy_block = paged_copy};

typedef struct pfixture {
  llorch_model model;
  llorch_backend be;
  paged_ctx ctx;
  worker_sched *s;
  int notified;
} pfixture;

static void pfixture_notify(void *arg) { ((pfixture *)arg)->notified++; }

static pfixture *pfixture_new(uint32_t slots, uint32_t ctx, uint32_t n_blocks, bool prefix_cache,
                              uint32_t step_tokens) {
  pfixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->model.hp.n_vocab = FAKE_VOCAB;
  f->ctx.n_seq = slots;
  f->ctx.n_ctx = ctx;
  f->ctx.n_batch_max = slots + 16;
  f->ctx.n_blocks = n_blocks;
  f->be.ops = &paged_ops;
  f->be.ctx = &f->ctx;
  f->be.model = &f->model;
  worker_sched_config cfg = {.n_slots = slots, .n_ctx = ctx, .n_batch_max = slots + 16,
                             .prefill_chunk = 16, .queue_max = 64, .step_tokens = step_tokens,
                             .prefix_cache = prefix_cache};
  llorch_errmsg em = {{0}};
  assert_int_equal(worker_sched_init(&f->s, &cfg, &f->be, NULL, pfixture_notify, f, &em), 0);
  return f;
}

static void prun(pfixture *f, result *r, int lo, int n) {
  for (int step = 0; step < 20000 && !all_done(r, lo, n); step++) {
    worker_sched_step(f->s);
    drain_sched(f->s, r);
  }
  assert_true(all_done(r, lo, n));
}

/* A prompt from a shared prefix of n_shared tokens and a tail of its own. */
static worker_job *prefix_job(int idx, uint32_t n_shared, uint32_t n_own, uint32_t max_tokens) {
  int32_t prompt[FAKE_MAX_CTX];
  for (uint32_t i = 0; i < n_shared; i++) prompt[i] = (int32_t)((i * 5 + 2) % FAKE_VOCAB);
  for (uint32_t i = 0; i < n_own; i++) prompt[n_shared + i] = (int32_t)((idx * 11 + i * 3 + 1) % FAKE_VOCAB);
  char id[32];
  snprintf(id, sizeof id, "job-%d", idx);
  worker_job *j = worker_job_new(id, prompt, n_shared + n_own);
  assert_non_null(j);
  j->max_tokens = max_tokens;
  j->owner = (void *)(intptr_t)idx;
  return j;
}

/*
 * Greedy tokens with the prefix cache equal those without it: prompts that
 * share prefixes ending inside a block and on a block boundary, an exact
 * repeat (fully cached), and concurrent sharers; cached_tokens as expected.
 */
static void test_prefix_cache_equal(void **state) {
  (void)state;
  enum { N = 11 };
  /* (shared, own) in blocks of 8: 13 ends inside block 1, 16 on a boundary;
   * jobs 2 and 3 repeat job 0's prompt, job 9 repeats job 4's; job 10 is
   * job 5's prompt continued (built in the loop) */
  const uint32_t shared[N] = {13, 13, 13, 13, 16, 16, 16, 16, 1, 16, 13};
  const uint32_t own[N] = {6, 9, 6, 6, 0, 5, 5, 5, 2, 0, 6};
  const int same_as[N] = {0, 1, 0, 0, 4, 5, 6, 7, 8, 4, 0};
  result off[N], on[N];
  memset(off, 0, sizeof off);
  memset(on, 0, sizeof on);
  for (int pass = 0; pass < 2; pass++) {
    result *r = pass ? on : off;
    pfixture *f = pfixture_new(4, 128, 128, pass == 1, 0);
    worker_job *jobs[N];
    for (int i = 0; i < N; i++) jobs[i] = prefix_job(same_as[i], shared[i], own[i], 10);
    for (int i = 0; i < N; i++) jobs[i]->owner = (void *)(intptr_t)i;
    llorch_errmsg em = {{0}};
    /* jobs 0, 1 alone first (they fill the cache), then 2..8 at once
     * (2 and 3 share job 0's cached blocks), then 9 and 10 alone */
    for (int i = 0; i < 2; i++) {
      assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
      prun(f, r, i, 1);
    }
    for (int i = 2; i < N - 2; i++) assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
    prun(f, r, 2, N - 4);
    assert_int_equal(worker_sched_submit(f->s, jobs[N - 2], &em), 0);
    prun(f, r, N - 2, 1);
    /* job 5's first 20 prompt tokens and 6 more: positions 16..19 come
     * from job 5's registered last, partly filled block (its exact
     * positions end at 20: the chunk 16..20 has one token off the groups
     * of 4, and generated tokens are never exact) */
    int32_t cont[26];
    memcpy(cont, jobs[5]->prompt, 20 * sizeof *cont);
    for (int i = 20; i < 26; i++) cont[i] = 30 + i;
    assert_int_equal(worker_job_set_prompt(jobs[N - 1], cont, 26), 0);
    assert_int_equal(worker_sched_submit(f->s, jobs[N - 1], &em), 0);
    prun(f, r, N - 1, 1);
    assert_int_equal(f->ctx.violations, 0);
    worker_sched_stats st;
    worker_sched_stats_get(f->s, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.kv_blocks_total, 128);
    if (pass) {
      assert_true(st.prefix_hit_tokens > 0);
      assert_true(st.kv_blocks_cached > 0);
      assert_true(f->ctx.copies > 0); /* job 9 continues job 4's block 1 in the middle */
    } else {
      assert_int_equal(st.prefix_hit_tokens, 0);
    }
    for (int i = 0; i < N; i++) worker_job_free(jobs[i]);
    worker_sched_free(f->s);
    free(f);
  }
  for (int i = 0; i < N; i++) {
    if (!on[i].ended || !off[i].ended)
      fail_msg("job %d: %s / %s", i, on[i].err_code ? on[i].err_code : "-", off[i].err_code ? off[i].err_code : "-");
    assert_int_equal(on[i].n_tokens, 10);
    assert_memory_equal(on[i].tokens, off[i].tokens, 10 * sizeof(int32_t));
    assert_int_equal(off[i].cached_tokens, 0);
  }
  assert_int_equal(on[0].cached_tokens, 0);
  /* block 0 and the start of block 1 that job 0 shares (copied), down to 12 */
  assert_int_equal(on[1].cached_tokens, 12);
  /* job 0's 19 tokens: its exact positions are 0..15 (16..18 were one
   * chunk of 3, generated ones single steps) */
  assert_int_equal(on[2].cached_tokens, 16);
  assert_int_equal(on[3].cached_tokens, 16);
  /* job 4's 16 tokens again: at least 2 computed, from a multiple of 4 */
  assert_int_equal(on[9].cached_tokens, 12);
  assert_int_equal(on[10].cached_tokens, 20);
}

/*
 * n > 1: the choices of one prompt submitted as a group. With the prefix
 * cache, the siblings wait for the leader's prefill and take its blocks
 * (cached_tokens), and generate exactly what the leader generates (same
 * greedy parameters); without it, everyone computes the prompt. The queue
 * bound counts the whole group: all or none.
 */
static void test_group_shares_prompt(void **state) {
  (void)state;
  enum { N = 3 };
  for (int pass = 0; pass < 2; pass++) {
    pfixture *f = pfixture_new(4, 128, 128, pass == 1, 0);
    result r[N];
    memset(r, 0, sizeof r);
    worker_job *jobs[N];
    for (int i = 0; i < N; i++) {
      jobs[i] = prefix_job(0, 37, 0, 6); /* 37 tokens: 4 whole blocks of 8 and 5 more */
      jobs[i]->owner = (void *)(intptr_t)i;
    }
    llorch_errmsg em = {{0}};
    assert_int_equal(worker_sched_submit_group(f->s, jobs, N, &em), 0);
    assert_null(jobs[0]->leader);
    assert_ptr_equal(jobs[1]->leader, jobs[0]);
    assert_ptr_equal(jobs[2]->leader, jobs[0]);
    prun(f, r, 0, N);
    assert_int_equal(f->ctx.violations, 0);
    for (int i = 0; i < N; i++) {
      assert_true(r[i].ended);
      assert_int_equal(r[i].n_tokens, 6);
      assert_memory_equal(r[i].tokens, r[0].tokens, 6 * sizeof(int32_t));
    }
    assert_int_equal(r[0].cached_tokens, 0);
    for (int i = 1; i < N; i++) {
      /* with the cache: the leader's exact prompt blocks (32 positions);
       * without: nothing */
      if (pass) assert_int_equal(r[i].cached_tokens, 32);
      else assert_int_equal(r[i].cached_tokens, 0);
    }
    for (int i = 0; i < N; i++) worker_job_free(jobs[i]);
    worker_sched_free(f->s);
    free(f);
  }
  /* all or none: 2 slots and queue_max 1 take 3 jobs, not a group of 4 */
  fixture *f = fixture_new(2, 64, 16, 16, 1, 0);
  worker_job *g[4];
  int32_t prompt[3] = {1, 2, 3};
  for (int i = 0; i < 4; i++) {
    g[i] = worker_job_new("g", prompt, 3);
    assert_non_null(g[i]);
  }
  llorch_errmsg em = {{0}};
  assert_int_equal(worker_sched_submit_group(f->s, g, 4, &em), LLORCH_EBUSY);
  assert_non_null(strstr(em.text, "4 choices do not fit"));
  worker_sched_stats st;
  worker_sched_stats_get(f->s, &st);
  assert_int_equal(st.queued, 0);
  for (int i = 0; i < 4; i++) worker_job_free(g[i]);
  fixture_free(f);
}

/* A pool too small for everyone: jobs are preempted and resumed, and every
 * job's tokens equal its tokens alone. */
static void test_preemption(void **state) {
  (void)state;
  enum { N = 6 };
  result alone[N], tight[N];
  memset(alone, 0, sizeof alone);
  memset(tight, 0, sizeof tight);
  for (int i = 0; i < N; i++) {
    pfixture *f = pfixture_new(1, 64, 16, false, 0);
    worker_job *j = make_job(i, 9 + (uint32_t)i, 30);
    llorch_errmsg em = {{0}};
    assert_int_equal(worker_sched_submit(f->s, j, &em), 0);
    prun(f, alone, i, 1);
    worker_job_free(j);
    worker_sched_free(f->s);
    free(f);
  }
  for (int cache = 0; cache < 2; cache++) {
    memset(tight, 0, sizeof tight);
    /* 6 jobs of ~40 positions (10 blocks) each in 24 blocks */
    pfixture *f = pfixture_new(6, 64, 24, cache == 1, 0);
    worker_job *jobs[N];
    llorch_errmsg em = {{0}};
    for (int i = 0; i < N; i++) {
      jobs[i] = make_job(i, 9 + (uint32_t)i, 30);
      assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
    }
    prun(f, tight, 0, N);
    assert_int_equal(f->ctx.violations, 0);
    worker_sched_stats st;
    worker_sched_stats_get(f->s, &st);
    assert_true(st.preemptions > 0);
    assert_int_equal(st.kv_blocks_used, 0);
    for (int i = 0; i < N; i++) {
      assert_true(tight[i].ended);
      assert_int_equal(tight[i].n_tokens, 30);
      assert_memory_equal(tight[i].tokens, alone[i].tokens, 30 * sizeof(int32_t));
      assert_int_equal(tight[i].events_after_end, 0);
      worker_job_free(jobs[i]);
    }
    worker_sched_free(f->s);
    free(f);
  }
}

/* Slots are a concurrency cap: the memory of 4 full-context slots runs 16
 * short requests at once. A step's budget bounds prompt tokens next to the
 * decode tokens. */
static void test_short_requests_share_memory(void **state) {
  (void)state;
  enum { N = 16 };
  result r[N];
  memset(r, 0, sizeof r);
  pfixture *f = pfixture_new(16, 64, 4 * 64 / PAGED_BT, true, 20);
  worker_job *jobs[N];
  llorch_errmsg em = {{0}};
  for (int i = 0; i < N; i++) {
    jobs[i] = make_job(i, 5, 8);
    assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
  }
  prun(f, r, 0, N);
  assert_int_equal(f->ctx.violations, 0);
  assert_int_equal(f->ctx.max_seqs_in_batch, N);
  for (int i = 0; i < N; i++) worker_job_free(jobs[i]);
  worker_sched_free(f->s);
  free(f);
}

/* While streams decode, a step carries no more prompt tokens than decode
 * tokens (at least WORKER_MIN_PREFILL): a long prompt arriving does not
 * make the running streams' steps much longer. */
static void test_step_budget(void **state) {
  (void)state;
  enum { N = 5 };
  result r[N];
  memset(r, 0, sizeof r);
  pfixture *f = pfixture_new(8, 256, 256, false, 64);
  worker_job *jobs[N];
  llorch_errmsg em = {{0}};
  for (int i = 0; i < N - 1; i++) {
    jobs[i] = make_job(i, 5, 40);
    assert_int_equal(worker_sched_submit(f->s, jobs[i], &em), 0);
  }
  for (int k = 0; k < 3; k++) {
    worker_sched_step(f->s);
    drain_sched(f->s, r);
  }
  jobs[N - 1] = make_job(N - 1, 100, 4);
  assert_int_equal(worker_sched_submit(f->s, jobs[N - 1], &em), 0);
  prun(f, r, 0, N);
  assert_int_equal(f->ctx.violations, 0);
  /* 4 decode tokens + at most 8 prompt tokens */
  assert_true(f->ctx.max_mixed_tokens <= 4 + (int)WORKER_MIN_PREFILL);
  assert_true(f->ctx.max_mixed_tokens > 4);
  for (int i = 0; i < N; i++) {
    assert_true(r[i].ended);
    worker_job_free(jobs[i]);
  }
  worker_sched_free(f->s);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batched_equals_alone),
      cmocka_unit_test(test_embedding_jobs),
      cmocka_unit_test(test_prompt_too_long_and_clamp),
      cmocka_unit_test(test_queue_full),
      cmocka_unit_test(test_cancel_running_frees_slot),
      cmocka_unit_test(test_cancel_queued_and_timeout),
      cmocka_unit_test(test_drain_and_abort),
      cmocka_unit_test(test_backend_failure),
      cmocka_unit_test(test_logprobs_and_seeded_sampling),
      cmocka_unit_test(test_thread),
      cmocka_unit_test(test_text_until_eog),
      cmocka_unit_test(test_stop_string_across_tokens),
      cmocka_unit_test(test_ignore_eos_runs_to_length),
      cmocka_unit_test(test_prefix_cache_equal),
      cmocka_unit_test(test_group_shares_prompt),
      cmocka_unit_test(test_preemption),
      cmocka_unit_test(test_short_requests_share_memory),
      cmocka_unit_test(test_step_budget),
      cmocka_unit_test(test_prompt_logprobs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
