/*
 * Continuous batching over the backend's sequence slots. See scheduler.h.
 */
#include "scheduler.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"
#include "llorch/json.h"
#include "llorch/log.h"

struct worker_sched {
  worker_sched_config cfg;
  llorch_backend *be;
  const llorch_tokenizer *tok;
  uint32_t n_vocab;
  void (*notify)(void *);
  void *notify_arg;
  /* paged KV (NULL kv: every slot owns ctx positions in the backend) */
  worker_kv *kv;
  uint32_t bt;                /* positions per block */
  uint32_t bps;               /* most blocks of one sequence: ceil(n_ctx / bt) */
  uint64_t admit_counter;

  /* ---- shared under mu ---- */
  uv_mutex_t mu;
  uv_cond_t cv;               /* signalled on submit, cancel, drain, stop */
  worker_job *queue_head, *queue_tail;
  uint32_t n_queued;
  worker_job **slots;         /* (n_slots) running job or NULL */
  uint32_t n_busy;
  worker_event *ev_head, *ev_tail;
  bool draining, aborting, stopping;
  worker_sched_stats stats;

  /* ---- inference thread only ---- */
  uv_thread_t thread;
  bool thread_running;
  int32_t *b_token, *b_pos, *b_seq; /* (n_batch_max) the batch being built */
  int8_t *b_logits;
  worker_job **b_job;         /* (n_batch_max) job of each logits row */
  int32_t *b_ppos;            /* (n_batch_max) a row's prompt position (prompt logprobs), -1 for
                                 a row to sample from */
  int8_t *b_hidden;           /* (n_batch_max) entries whose hidden state an embedding job pools */
  worker_job **b_hjob;        /* (n_batch_max) job of each hidden row */
  float *hidden;              /* (n_batch_max, n_embd) hidden rows, when the backend has them */
  uint32_t n_embd;
  float *logits;              /* (n_slots + WORKER_PROMPT_LP_ROWS, n_vocab) */
  uint32_t *mask;             /* (ceil(n_vocab / 32)) a grammar's allowed tokens, one row at a time */
  worker_event **tok_ev, **fin_ev; /* (n_slots + WORKER_PROMPT_LP_ROWS) events of each row */
};

static double ns_to_ms(uint64_t ns) { return (double)ns / 1e6; }

/* ---- jobs and events ---- */

worker_job *worker_job_new(const char *id, const int32_t *prompt, uint32_t n_prompt) {
  worker_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  snprintf(j->id, sizeof j->id, "%s", id ? id : "");
  j->prompt = malloc((n_prompt ? n_prompt : 1) * sizeof *j->prompt);
  if (!j->prompt) {
    free(j);
    return NULL;
  }
  if (n_prompt) memcpy(j->prompt, prompt, n_prompt * sizeof *prompt);
  j->n_prompt = n_prompt;
  j->slot = -1;
  j->stop_hit = -1;
  llorch_sampler_params_default(&j->sp);
  return j;
}

int worker_job_set_prompt(worker_job *j, const int32_t *ids, uint32_t n) {
  int32_t *p = malloc((n ? n : 1) * sizeof *p);
  if (!p) return LLORCH_ENOMEM;
  if (n) memcpy(p, ids, n * sizeof *ids);
  free(j->prompt);
  j->prompt = p;
  j->n_prompt = n;
  return 0;
}

void worker_job_free(worker_job *j) {
  if (!j) return;
  free(j->prompt);
  free(j->script);
  free(j->blocks);
  free(j->hashes);
  free(j->logit_bias);
  free(j->plp);
  for (int k = 0; k < j->n_stop; k++) free(j->stop[k]);
  llorch_sampler_free(j->sampler);
  free(j->history);
  free(j->embd);
  llorch_textstream_free(j->text);
  llorch_grammar_state_free(j->grammar);
  free(j);
}

int worker_job_add_stop(worker_job *j, const char *s, size_t len) {
  if (j->n_stop >= WORKER_MAX_STOP) return LLORCH_ELIMIT;
  char *c = malloc(len + 1);
  if (!c) return LLORCH_ENOMEM;
  memcpy(c, s, len);
  c[len] = 0;
  j->stop[j->n_stop++] = c;
  return 0;
}

void worker_event_free(worker_event *e) {
  if (!e) return;
  free(e->text);
  free(e->plp);
  free(e);
}

static worker_event *sched_event_new(worker_event_kind kind, worker_job *j) {
  worker_event *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->kind = kind;
  e->job = j;
  return e;
}

/* Caller holds mu. */
static void sched_event_push(worker_sched *s, worker_event *e) {
  e->next = NULL;
  if (s->ev_tail) s->ev_tail->next = e;
  else s->ev_head = e;
  s->ev_tail = e;
}

/*
 * The final event of a job. Allocation failure here would leave the HTTP side
 * waiting forever, so the event is preallocated where possible; when even that
 * fails we log and retry on the next step (the job stays DONE-pending).
 * Caller holds mu.
 */
/* ---- KV blocks of a job (inference thread) ---- */

/* Gives every block back, the tail first: when they are cached, the end of
 * a chain is evicted before its beginning, which more requests share. */
static void sched_release_blocks(worker_sched *s, worker_job *j) {
  for (uint32_t k = j->n_blocks; k-- > 0;) worker_kv_release(s->kv, j->blocks[k]);
  j->n_blocks = j->n_hashed = 0;
}

/* Registers the job's partly filled last block (its exact positions are
 * final: the job is finishing or being preempted), then releases all. */
static void sched_retire_blocks(worker_sched *s, worker_job *j) {
  const uint32_t k = j->n_hashed;
  if (k < j->n_blocks && j->n_exact > k * s->bt && j->n_exact < (k + 1) * s->bt)
    worker_kv_commit_partial(s->kv, j->blocks[k], k ? j->hashes[k - 1] : 0,
                             j->history + (size_t)k * s->bt, j->n_exact - k * s->bt);
  sched_release_blocks(s, j);
}

/* Commits the job's full blocks whose positions are all exact (n_exact). */
static void sched_commit_blocks(worker_sched *s, worker_job *j) {
  while (j->n_hashed < j->n_blocks && (j->n_hashed + 1) * s->bt <= j->n_exact) {
    const uint32_t k = j->n_hashed;
    const uint64_t parent = k ? j->hashes[k - 1] : 0;
    j->hashes[k] = worker_kv_commit(s->kv, j->blocks[k], parent, j->history + (size_t)k * s->bt);
    j->n_hashed++;
  }
}

static int sched_set_table(worker_sched *s, worker_job *j, uint32_t n_past) {
  llorch_errmsg em = {{0}};
  int rc = s->be->ops->seq_set_blocks(s->be->ctx, j->slot, j->blocks, j->n_blocks, n_past, &em);
  if (rc < 0)
    LOG_ERROR("worker", j->request_id, "job %s: block table rejected: %s", j->id, em.text);
  return rc;
}

static void sched_job_finish(worker_sched *s, worker_job *j, worker_event *final) {
  uint64_t now = uv_hrtime();
  if (final->kind == WORKER_EV_END || final->kind == WORKER_EV_ERROR) {
    final->prompt_tokens = j->n_prompt;
    final->cached_tokens = j->n_cached;
    final->completion_tokens = j->n_gen;
    uint64_t start = j->t_start_ns ? j->t_start_ns : now;
    final->queue_ms = ns_to_ms(start - j->t_submit_ns);
    final->ttft_ms = j->t_first_ns ? ns_to_ms(j->t_first_ns - j->t_submit_ns) : 0;
    final->prefill_ms = j->t_prefill_done_ns ? ns_to_ms(j->t_prefill_done_ns - start) : 0;
    final->decode_ms = j->t_prefill_done_ns ? ns_to_ms(now - j->t_prefill_done_ns) : 0;
    final->total_ms = ns_to_ms(now - j->t_submit_ns);
  }
  if (j->slot >= 0) {
    s->slots[j->slot] = NULL;
    s->n_busy--;
    /* The slot's cache is forgotten now, not at the next assignment, so a
     * backend that tracks lengths never sees a stale sequence. */
    s->be->ops->seq_reset(s->be->ctx, j->slot);
    j->slot = -1;
  }
  if (s->kv) {
    /* after a failed forward the job's cache is in an unknown state */
    if (final->kind == WORKER_EV_END) sched_retire_blocks(s, j);
    else sched_release_blocks(s, j);
  }
  j->state = WORKER_JOB_DONE;
  sched_event_push(s, final);
}

static worker_event *sched_end_event(worker_job *j, worker_finish f) {
  worker_event *e = sched_event_new(WORKER_EV_END, j);
  if (e) e->finish = f;
  return e;
}

static worker_event *sched_error_event(worker_job *j, const char *code, bool retriable,
                                       const char *msg) {
  worker_event *e = sched_event_new(WORKER_EV_ERROR, j);
  if (!e) return NULL;
  e->code = code;
  e->retriable = retriable;
  snprintf(e->message, sizeof e->message, "%s", msg);
  return e;
}

/* ---- init / free ---- */

int worker_sched_init(worker_sched **out, const worker_sched_config *cfg, llorch_backend *be,
                      const llorch_tokenizer *tok, void (*notify)(void *), void *notify_arg,
                      llorch_errmsg *em) {
  *out = NULL;
  if (!cfg->n_slots || !cfg->n_ctx || cfg->n_batch_max < cfg->n_slots)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "scheduler: slots %u, ctx %u, batch %u: need slots >= 1, ctx >= 1, "
                             "batch >= slots", cfg->n_slots, cfg->n_ctx, cfg->n_batch_max);
  worker_sched *s = calloc(1, sizeof *s);
  if (!s) return llorch_errmsg_set(em, LLORCH_ENOMEM, "scheduler: out of memory");
  s->cfg = *cfg;
  if (!s->cfg.prefill_chunk) s->cfg.prefill_chunk = cfg->n_batch_max;
  s->be = be;
  s->tok = tok;
  s->n_vocab = be->model->hp.n_vocab;
  s->notify = notify;
  s->notify_arg = notify_arg;
  llorch_backend_memory mem;
  be->ops->memory(be->ctx, &mem);
  if (be->ops->seq_set_blocks && be->ops->kv_copy_block && mem.kv_blocks && mem.kv_block_tokens) {
    const uint32_t bt = mem.kv_block_tokens, bps = (cfg->n_ctx + bt - 1) / bt;
    if (mem.kv_blocks < bps) {
      free(s);
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "scheduler: the KV cache holds %u blocks of %u tokens, fewer than "
                               "one request of ctx %u tokens needs (%u)", mem.kv_blocks, bt,
                               cfg->n_ctx, bps);
    }
    s->bt = bt;
    s->bps = bps;
    int rc = worker_kv_init(&s->kv, mem.kv_blocks, s->bt, cfg->prefix_cache, em);
    if (rc < 0) {
      free(s);
      return rc;
    }
  }
  uint32_t nb = cfg->n_batch_max;
  s->slots = calloc(cfg->n_slots, sizeof *s->slots);
  s->b_token = malloc(nb * sizeof *s->b_token);
  s->b_pos = malloc(nb * sizeof *s->b_pos);
  s->b_seq = malloc(nb * sizeof *s->b_seq);
  s->b_logits = malloc(nb * sizeof *s->b_logits);
  s->b_job = malloc(nb * sizeof *s->b_job);
  s->b_ppos = malloc(nb * sizeof *s->b_ppos);
  s->n_embd = be->model->hp.n_embd;
  if (be->ops->forward_hidden) {
    /* embeddings: a whole batch of prompt entries may pool (mean) */
    s->b_hidden = malloc(nb * sizeof *s->b_hidden);
    s->b_hjob = malloc(nb * sizeof *s->b_hjob);
    s->hidden = malloc((size_t)nb * s->n_embd * sizeof *s->hidden);
    if (!s->b_hidden || !s->b_hjob || !s->hidden) goto fail_alloc;
  }
  /* At most one row to sample per slot per step (prefill asks only for the
   * last prompt token, decode for its one token), plus the prompt positions
   * of echo requests, at most WORKER_PROMPT_LP_ROWS per step. */
  const size_t n_rows = (size_t)cfg->n_slots + WORKER_PROMPT_LP_ROWS;
  s->logits = malloc(n_rows * s->n_vocab * sizeof *s->logits);
  s->tok_ev = calloc(n_rows, sizeof *s->tok_ev);
  s->fin_ev = calloc(n_rows, sizeof *s->fin_ev);
  s->mask = malloc(((size_t)s->n_vocab + 31) / 32 * sizeof *s->mask);
  if (!s->slots || !s->b_token || !s->b_pos || !s->b_seq || !s->b_logits || !s->b_job ||
      !s->b_ppos || !s->logits || !s->tok_ev || !s->fin_ev || !s->mask)
    goto fail_alloc;
  if (uv_mutex_init(&s->mu)) goto fail_alloc;
  if (uv_cond_init(&s->cv)) goto fail_mutex;
  *out = s;
  return 0;

fail_mutex:
  uv_mutex_destroy(&s->mu);
fail_alloc:
  worker_kv_free(s->kv);
  free(s->slots);
  free(s->b_token);
  free(s->b_pos);
  free(s->b_seq);
  free(s->b_logits);
  free(s->b_job);
  free(s->b_ppos);
  free(s->b_hidden);
  free(s->b_hjob);
  free(s->hidden);
  free(s->logits);
  free(s->tok_ev);
  free(s->fin_ev);
  free(s->mask);
  free(s);
  return llorch_errmsg_set(em, LLORCH_ENOMEM, "scheduler: out of memory (%u slots x %u vocab)",
                           cfg->n_slots, be->model->hp.n_vocab);
}

void worker_sched_free(worker_sched *s) {
  if (!s) return;
  worker_sched_stop(s);
  for (worker_event *e = s->ev_head, *n; e; e = n) {
    n = e->next;
    worker_event_free(e);
  }
  uv_cond_destroy(&s->cv);
  uv_mutex_destroy(&s->mu);
  worker_kv_free(s->kv);
  free(s->slots);
  free(s->b_token);
  free(s->b_pos);
  free(s->b_seq);
  free(s->b_logits);
  free(s->b_job);
  free(s->b_ppos);
  free(s->b_hidden);
  free(s->b_hjob);
  free(s->hidden);
  free(s->logits);
  free(s->tok_ev);
  free(s->fin_ev);
  free(s->mask);
  free(s);
}

/* ---- loop side ---- */

/* A job's own preparation before it is queued (limits, block table,
 * sampler, history, text stream). Touches no shared state. */
static int sched_prepare(worker_sched *s, worker_job *j, llorch_errmsg *em) {
  if (j->state != WORKER_JOB_NEW)
    return llorch_errmsg_set(em, LLORCH_ESTATE, "job %s was submitted already", j->id);
  if (!j->n_prompt) return llorch_errmsg_set(em, LLORCH_EINVAL, "the prompt is empty (0 tokens)");
  if (j->pooling) {
    if (!s->hidden)
      return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                               "embeddings are not supported on this device (the %s backend "
                               "returns no hidden states)", s->be->ops->name);
    if (j->pooling != LLORCH_POOLING_MEAN && j->pooling != LLORCH_POOLING_CLS &&
        j->pooling != LLORCH_POOLING_LAST)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "pooling %d: expected mean, cls or last", j->pooling);
    free(j->embd);
    j->embd = calloc(s->n_embd, sizeof *j->embd);
    if (!j->embd) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for the embedding");
    j->max_tokens = 1; /* nothing is generated; the history needs no room */
  }
  /* Generating k tokens feeds k-1 of them back, so a prompt of n tokens can
   * produce ctx - n + 1; we keep one position spare and allow ctx - n. */
  if (j->n_prompt >= s->cfg.n_ctx)
    return llorch_errmsg_set(em, LLORCH_ERANGE,
                             "the prompt has %u tokens but the context is %u tokens per request "
                             "(at least 1 must remain for the completion)",
                             j->n_prompt, s->cfg.n_ctx);
  uint32_t room = s->cfg.n_ctx - j->n_prompt;
  if (!j->max_tokens || j->max_tokens > room) j->max_tokens = room;
  j->n_target = j->n_prompt;
  if (j->prompt_only && !j->prompt_logprobs)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "a prompt-only job must ask for prompt logprobs");
  if (j->prompt_logprobs && !j->plp) {
    j->plp = calloc(j->n_prompt, sizeof *j->plp);
    if (!j->plp) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for prompt logprobs");
    j->plp[0].logprob = NAN;
  }
  if (s->kv && !j->blocks) {
    j->blocks = malloc(s->bps * sizeof *j->blocks);
    j->hashes = malloc(s->bps * sizeof *j->hashes);
    if (!j->blocks || !j->hashes)
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for the block table");
  }
  llorch_sampler_free(j->sampler);
  j->sampler = NULL;
  int rc = llorch_sampler_init(&j->sampler, &j->sp, s->n_vocab, em);
  if (rc < 0) return rc;
  free(j->history);
  j->history = malloc(((size_t)j->n_prompt + j->max_tokens) * sizeof *j->history);
  if (!j->history) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for the history");
  memcpy(j->history, j->prompt, j->n_prompt * sizeof *j->history);
  if (s->tok) {
    llorch_textstream_free(j->text);
    j->text = NULL;
    rc = llorch_textstream_init(&j->text, s->tok, j->detok_flags, (const char *const *)j->stop,
                                (size_t)j->n_stop, em);
    if (rc < 0) return rc;
  }
  return 0;
}

int worker_sched_submit_group(worker_sched *s, worker_job *const *jobs, int n, llorch_errmsg *em) {
  if (n < 1) return llorch_errmsg_set(em, LLORCH_EINVAL, "no job to submit");
  for (int i = 0; i < n; i++) {
    int rc = sched_prepare(s, jobs[i], em);
    if (rc < 0) return rc;
    jobs[i]->leader = i ? jobs[0] : NULL;
  }
  uv_mutex_lock(&s->mu);
  if (s->draining || s->stopping) {
    uv_mutex_unlock(&s->mu);
    return llorch_errmsg_set(em, LLORCH_ESTATE, "the worker is shutting down");
  }
  /* Free slots take jobs at the next step, so only jobs beyond them count
   * against the queue bound. */
  uint32_t free_slots = s->cfg.n_slots - s->n_busy;
  if (!jobs[0]->queue_exempt && s->n_queued + (uint32_t)n - 1 >= free_slots + s->cfg.queue_max) {
    uv_mutex_unlock(&s->mu);
    if (n > 1)
      return llorch_errmsg_set(em, LLORCH_EBUSY,
                               "%d choices do not fit: %u of %u slots are busy and %u requests are "
                               "waiting (queue_max %u)",
                               n, s->n_busy, s->cfg.n_slots, s->n_queued, s->cfg.queue_max);
    return llorch_errmsg_set(em, LLORCH_EBUSY,
                             "all %u slots are busy and %u requests are waiting (queue_max %u)",
                             s->cfg.n_slots, s->n_queued, s->cfg.queue_max);
  }
  uint64_t now = uv_hrtime();
  for (int i = 0; i < n; i++) {
    worker_job *j = jobs[i];
    j->t_submit_ns = now;
    j->state = WORKER_JOB_QUEUED;
    j->next = NULL;
    if (s->queue_tail) s->queue_tail->next = j;
    else s->queue_head = j;
    s->queue_tail = j;
    s->n_queued++;
  }
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
  return 0;
}

int worker_sched_submit(worker_sched *s, worker_job *j, llorch_errmsg *em) {
  return worker_sched_submit_group(s, &j, 1, em);
}

void worker_sched_cancel(worker_sched *s, worker_job *j) {
  uv_mutex_lock(&s->mu);
  if (j->state != WORKER_JOB_DONE) {
    j->cancel_requested = true;
    uv_cond_signal(&s->cv);
  }
  uv_mutex_unlock(&s->mu);
}

worker_event *worker_sched_events_take(worker_sched *s) {
  uv_mutex_lock(&s->mu);
  worker_event *e = s->ev_head;
  s->ev_head = s->ev_tail = NULL;
  uv_mutex_unlock(&s->mu);
  return e;
}

void worker_sched_stats_get(worker_sched *s, worker_sched_stats *out) {
  uv_mutex_lock(&s->mu);
  *out = s->stats;
  out->slots_busy = s->n_busy;
  out->queued = s->n_queued;
  if (s->kv) {
    worker_kv_stats ks;
    worker_kv_stats_get(s->kv, &ks);
    out->kv_block_tokens = s->bt;
    out->kv_blocks_total = ks.blocks_total;
    out->kv_blocks_used = ks.blocks_used;
    out->kv_blocks_cached = ks.blocks_cached;
  }
  uv_mutex_unlock(&s->mu);
}

void worker_sched_drain(worker_sched *s) {
  uv_mutex_lock(&s->mu);
  s->draining = true;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

void worker_sched_abort_running(worker_sched *s) {
  uv_mutex_lock(&s->mu);
  s->aborting = true;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

/* ---- the engine step ---- */

/* Unlinks j from the wait queue. Caller holds mu. */
static void sched_queue_remove(worker_sched *s, worker_job *j) {
  worker_job **pp = &s->queue_head, *prev = NULL;
  while (*pp && *pp != j) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (!*pp) return;
  *pp = j->next;
  if (s->queue_tail == j) s->queue_tail = prev;
  j->next = NULL;
  s->n_queued--;
}

/* Puts a running job back at the head of the queue, its blocks released
 * (their full ones stay cached, so the recompute is mostly a cache hit).
 * It resumes by recomputing its prompt and all generated tokens but the
 * last one, which is then fed as the next decode token. Caller holds mu. */
static void sched_preempt(worker_sched *s, worker_job *j) {
  LOG_INFO("worker", j->request_id,
           "job %s preempted: no free KV block (%u tokens generated; it resumes when blocks "
           "free up)", j->id, j->n_gen);
  sched_retire_blocks(s, j);
  s->be->ops->seq_reset(s->be->ctx, j->slot);
  s->slots[j->slot] = NULL;
  s->n_busy--;
  j->slot = -1;
  if (j->n_gen) j->n_target = j->n_prompt + j->n_gen - 1;
  j->n_fed = j->n_exact = 0;
  j->state = WORKER_JOB_QUEUED;
  j->n_preempted++;
  j->next = s->queue_head;
  s->queue_head = j;
  if (!s->queue_tail) s->queue_tail = j;
  s->n_queued++;
  s->stats.preemptions++;
}

/* Every decoding job gets a block for the position it feeds next; when none
 * is free, the most recently admitted job (maybe that one) is preempted.
 * Caller holds mu. Returns true when a job ended (events queued). */
static bool sched_grow_locked(worker_sched *s) {
  bool emitted = false;
  for (uint32_t k = 0; k < s->cfg.n_slots; k++) {
    worker_job *j = s->slots[k];
    if (!j || j->state != WORKER_JOB_DECODE) continue;
    const uint32_t p = j->n_prompt + j->n_gen - 1;
    while (j->slot >= 0 && p / s->bt >= j->n_blocks) {
      int32_t b = worker_kv_alloc(s->kv);
      if (b < 0) {
        worker_job *victim = j;
        for (uint32_t v = 0; v < s->cfg.n_slots; v++)
          if (s->slots[v] && s->slots[v]->admit_seq > victim->admit_seq) victim = s->slots[v];
        sched_preempt(s, victim);
        continue;
      }
      j->blocks[j->n_blocks++] = b;
      if (sched_set_table(s, j, p) < 0) {
        worker_event *e = sched_error_event(j, "internal_error", false,
                                            "the backend rejected the KV block table");
        if (e) {
          sched_job_finish(s, j, e);
          emitted = true;
        }
        break;
      }
    }
  }
  return emitted;
}

/*
 * Gives queued job j the free slot k and its blocks: the longest cached
 * prefix of what it must compute, then fresh blocks for the rest and the
 * first generated token. A fresh prompt always computes at least its last
 * 2 tokens, starting at a multiple of 4 (a lone token, or one off the
 * groups of 4, is computed in another reduction order than inside a prompt;
 * see docs/worker-api.md), so its logits are the ones a recomputation
 * gives. Returns 1 admitted, 0 not enough free blocks (nothing changed), or
 * a negative code when the backend rejected the table. Caller holds mu.
 */
static int sched_admit_paged(worker_sched *s, worker_job *j, uint32_t k) {
  const uint32_t bt = s->bt, target = j->n_target;
  const uint32_t m = worker_kv_match(s->kv, j->history, target, j->blocks, j->hashes, s->bps);
  uint32_t reuse = m * bt, have = m;
  if (m < s->bps && target > m * bt) {
    /* the start of a block that continues the chain, to copy from */
    const uint32_t left = target - m * bt < bt ? target - m * bt : bt;
    const uint32_t r = worker_kv_match_partial(s->kv, m ? j->hashes[m - 1] : 0,
                                               j->history + (size_t)m * bt, left, &j->blocks[m]);
    if (r) {
      reuse += r;
      have++;
    }
  }
  if (!j->n_gen && reuse + 2 > target) reuse = target >= 2 ? target - 2 : 0;
  /* prompt logprobs need the logits of every prompt position: computed */
  if (j->prompt_logprobs && !j->n_gen) reuse = 0;
  if (j->pooling) reuse = 0; /* the cache holds no hidden states to pool */
  if (reuse > target) reuse = target;
  reuse = reuse / 4 * 4; /* chunks start on multiples of 4 (see sched_build_batch) */
  const uint32_t keep = (reuse + bt - 1) / bt;
  const bool cow = reuse % bt != 0;
  uint32_t need_total = (target + 1 + bt - 1) / bt; /* positions 0..target */
  if (need_total > s->bps) need_total = s->bps;
  for (uint32_t i = have; i-- > keep;) worker_kv_release(s->kv, j->blocks[i]);
  if (worker_kv_available(s->kv) < need_total - keep + (cow ? 1u : 0u)) {
    for (uint32_t i = keep; i-- > 0;) worker_kv_release(s->kv, j->blocks[i]);
    return 0;
  }
  j->slot = (int32_t)k;
  j->n_blocks = keep;
  j->n_hashed = reuse / bt;
  int rc = 0;
  if (cow) {
    /* the shared block is full but this job continues it in the middle:
     * a private copy of the positions it reuses */
    llorch_errmsg em = {{0}};
    const int32_t src = j->blocks[keep - 1], dst = worker_kv_alloc(s->kv);
    rc = s->be->ops->kv_copy_block(s->be->ctx, dst, src, reuse % bt, &em);
    worker_kv_release(s->kv, src);
    j->blocks[keep - 1] = dst;
    if (rc < 0) LOG_ERROR("worker", j->request_id, "job %s: KV block copy failed: %s", j->id, em.text);
  }
  while (j->n_blocks < need_total) j->blocks[j->n_blocks++] = worker_kv_alloc(s->kv);
  if (rc == 0) rc = sched_set_table(s, j, reuse);
  if (rc < 0) {
    sched_release_blocks(s, j);
    j->slot = -1;
    return rc;
  }
  if (!j->started) {
    j->n_cached = reuse;
    s->stats.prefix_query_tokens += target;
    s->stats.prefix_hit_tokens += reuse;
  }
  j->n_fed = j->n_exact = reuse;
  j->state = j->n_gen && reuse == target ? WORKER_JOB_DECODE : WORKER_JOB_PREFILL;
  return 1;
}

/*
 * Housekeeping before a batch is built, under mu: cancels, shutdown, queue
 * timeouts, block growth (and preemption), and moving waiting jobs into free
 * slots. Returns true when events were queued (so the loop must be notified).
 */
static bool sched_admit_locked(worker_sched *s) {
  bool emitted = false;
  uint64_t now = uv_hrtime();
  for (uint32_t k = 0; k < s->cfg.n_slots; k++) {
    worker_job *j = s->slots[k];
    if (!j) continue;
    worker_event *e = NULL;
    if (j->cancel_requested) e = sched_end_event(j, WORKER_FINISH_CANCELLED);
    else if (s->aborting)
      e = sched_error_event(j, "shutting_down", true,
                            "the worker is shutting down and the grace period ended");
    else continue;
    if (!e) continue; /* out of memory: try again next step */
    sched_job_finish(s, j, e);
    emitted = true;
  }
  for (worker_job *j = s->queue_head, *n; j; j = n) {
    n = j->next;
    worker_event *e = NULL;
    if (j->cancel_requested) e = sched_end_event(j, WORKER_FINISH_CANCELLED);
    else if (s->draining || s->aborting)
      e = sched_error_event(j, "shutting_down", true, "the worker is shutting down");
    else if (s->cfg.queue_timeout_s > 0 && !j->started && !j->queue_exempt &&
             (double)(now - j->t_submit_ns) / 1e9 > s->cfg.queue_timeout_s) {
      char msg[128];
      snprintf(msg, sizeof msg, "waited %.1f s for a free slot (queue_timeout %.1f s)",
               (double)(now - j->t_submit_ns) / 1e9, s->cfg.queue_timeout_s);
      e = sched_error_event(j, "queue_timeout", true, msg);
    } else continue;
    if (!e) continue;
    sched_queue_remove(s, j);
    sched_job_finish(s, j, e);
    emitted = true;
  }
  const uint64_t preemptions = s->stats.preemptions;
  if (s->kv && sched_grow_locked(s)) emitted = true;
  /* After a preemption nobody is admitted this step: the blocks just freed
   * are for the running jobs, not for the job that gave them up. */
  for (uint32_t k = 0; k < s->cfg.n_slots && s->queue_head && s->stats.preemptions == preemptions;
       k++) {
    if (s->slots[k]) continue;
    worker_job *j = s->queue_head;
    /* A sibling of n > 1 waits until its leader's prompt is computed and
     * committed, then reuses those blocks (FIFO: the queue waits with it;
     * for a prompt's prefill, once per request). */
    if (s->kv && s->cfg.prefix_cache && j->leader && !j->started &&
        (j->leader->state == WORKER_JOB_QUEUED || j->leader->state == WORKER_JOB_PREFILL))
      break;
    worker_event *e = NULL;
    if (!j->started && !(e = sched_event_new(WORKER_EV_STARTED, j))) break;
    if (s->kv) {
      int rc = sched_admit_paged(s, j, k);
      if (rc == 0) { /* FIFO: nobody passes the head while it waits for blocks */
        worker_event_free(e);
        break;
      }
      if (rc < 0) {
        worker_event_free(e);
        worker_event *err = sched_error_event(j, "internal_error", false,
                                              "the backend rejected the KV block table");
        if (!err) break;
        sched_queue_remove(s, j);
        sched_job_finish(s, j, err);
        emitted = true;
        k--; /* the slot is still free */
        continue;
      }
    } else {
      j->slot = (int32_t)k;
      j->state = WORKER_JOB_PREFILL;
    }
    sched_queue_remove(s, j);
    j->admit_seq = ++s->admit_counter;
    s->slots[k] = j;
    s->n_busy++;
    if (!e) continue; /* resumed after a preemption: STARTED went out already */
    j->started = true;
    j->t_start_ns = now;
    e->slot = j->slot;
    e->max_tokens = j->max_tokens;
    e->queue_ms = ns_to_ms(now - j->t_submit_ns);
    sched_event_push(s, e);
    emitted = true;
  }
  return emitted;
}

/*
 * Builds the batch: decode tokens of every running slot, then prompt chunks
 * in slot order. Only reads job fields the inference thread owns, plus the
 * slot table (which changes only in sched_admit_locked, on this thread).
 * Returns the number of entries; *n_rows gets the logits rows asked for.
 */
static uint32_t sched_build_batch(worker_sched *s, uint32_t *n_rows, uint32_t *n_hrows) {
  uint32_t n = 0, rows = 0, hrows = 0, budget = s->cfg.n_batch_max, lp_rows = 0;
  for (uint32_t k = 0; k < s->cfg.n_slots; k++) {
    worker_job *j = s->slots[k];
    if (!j || j->state != WORKER_JOB_DECODE) continue;
    s->b_token[n] = j->next_token;
    s->b_pos[n] = (int32_t)(j->n_prompt + j->n_gen - 1);
    s->b_seq[n] = (int32_t)k;
    s->b_logits[n] = 1;
    s->b_ppos[rows] = -1;
    if (s->b_hidden) s->b_hidden[n] = 0;
    s->b_job[rows++] = j;
    n++;
  }
  /* The step's token budget while streams decode: what their tokens leave
   * of step_tokens, and no more prompt tokens than decode tokens - on the
   * CPU a step's time grows with its tokens, so a step then takes at most
   * about twice a decode-only step - but never fewer than
   * WORKER_MIN_PREFILL, so prompts keep moving. With no stream decoding
   * there is nobody to protect, and prompts get the whole batch. */
  if (s->cfg.step_tokens && n) {
    uint32_t room = s->cfg.step_tokens > n ? s->cfg.step_tokens - n : 0;
    if (room > n) room = n;
    if (room < WORKER_MIN_PREFILL) room = WORKER_MIN_PREFILL;
    if (n + room < budget) budget = n + room;
  }
  /* Prompts in admission order (oldest first), not slot order: with slot
   * order a busy low slot's new prompts took every step's budget and a
   * prompt in a higher slot starved. */
  uint64_t after = 0;
  while (n < budget) {
    worker_job *j = NULL;
    uint32_t k = 0;
    for (uint32_t q = 0; q < s->cfg.n_slots; q++) {
      worker_job *c = s->slots[q];
      if (c && c->state == WORKER_JOB_PREFILL && c->admit_seq > after &&
          (!j || c->admit_seq < j->admit_seq)) {
        j = c;
        k = q;
      }
    }
    if (!j) break;
    after = j->admit_seq;
    const uint32_t left = j->n_target - j->n_fed;
    /* chunks end on multiples of prefill_chunk, wherever the prompt's
     * computation started (after a cached prefix too): the same chunks as
     * computing the prompt from position 0, so the same rounding */
    uint32_t chunk = s->cfg.prefill_chunk - j->n_fed % s->cfg.prefill_chunk;
    if (chunk > left) chunk = left;
    if (chunk > budget - n) {
      /* cut by the budget: whole groups of 4 (the order of repacked
       * weights counts groups from a chunk's start), and never a lone last
       * token (it would be computed in the single-token order) */
      chunk = budget - n >= 4 ? (budget - n) / 4 * 4 : budget - n;
      if (left - chunk == 1 && n + chunk + 1 <= s->cfg.n_batch_max) chunk++;
    }
    /* prompt logprobs: a logits row per position, within the step's rows
     * (such a prompt is not cached, so its chunks need not be exact) */
    const bool plp = j->plp && j->n_gen == 0;
    if (plp) {
      if (lp_rows >= WORKER_PROMPT_LP_ROWS) continue;
      if (chunk > WORKER_PROMPT_LP_ROWS - lp_rows) chunk = WORKER_PROMPT_LP_ROWS - lp_rows;
    }
    /* an embedding job pools from scratch whenever it (re)starts its prompt */
    if (j->pooling && j->n_fed == 0) memset(j->embd, 0, s->n_embd * sizeof *j->embd);
    for (uint32_t i = 0; i < chunk; i++) {
      uint32_t p = j->n_fed + i;
      s->b_token[n] = j->history[p];
      s->b_pos[n] = (int32_t)p;
      s->b_seq[n] = (int32_t)k;
      s->b_ppos[rows] = -1;
      if (plp && p + 1 < j->n_target) {
        s->b_logits[n] = 1;
        s->b_ppos[rows] = (int32_t)p;
        lp_rows++;
      } else {
        /* a job resumed after a preemption already has its next token; a
         * prompt-only job samples nothing */
        s->b_logits[n] = (p + 1 == j->n_target && j->n_gen == 0 && !j->prompt_only &&
                        !j->pooling);
      }
      if (s->b_logits[n]) s->b_job[rows++] = j;
      if (s->b_hidden) {
        s->b_hidden[n] = j->pooling == LLORCH_POOLING_MEAN ||
                         (j->pooling == LLORCH_POOLING_CLS && p == 0) ||
                         (j->pooling == LLORCH_POOLING_LAST && p + 1 == j->n_target);
        if (s->b_hidden[n]) s->b_hjob[hrows++] = j;
      }
      n++;
    }
    /* Exact positions: computed in a chunk of 2 or more entries (the
     * multi-token reduction order) and within its whole groups of 4
     * (repacked weights); every chunk starts at a multiple of 4. Only these
     * are cached, so a reused prefix is what recomputing it would give;
     * decode steps (one token) are never exact. */
    if (j->n_exact == j->n_fed && chunk >= 2 && !j->prompt_logprobs) j->n_exact += chunk / 4 * 4;
    j->n_fed += chunk;
  }
  *n_rows = rows;
  *n_hrows = hrows;
  return n;
}

/* Turns a sampled token into a TOKEN event (and maybe the final event).
 * Called without mu; the events are pushed by the caller under mu. */
static void sched_emit_token(worker_sched *s, worker_job *j, const llorch_sample_result *res,
                             worker_event **tok_ev, worker_event **final_ev) {
  int32_t tok = res->token;
  *tok_ev = *final_ev = NULL;
  uint64_t now = uv_hrtime();
  if (!j->t_first_ns) j->t_first_ns = now;
  j->t_last_tok_ns = now;
  j->history[j->n_prompt + j->n_gen] = tok;
  j->n_gen++;
  /* with a grammar, end-of-generation (allowed only once the output is
   * complete) always ends the job, ignore_eos or not */
  bool eog = (!j->ignore_eos || j->grammar) && s->tok && llorch_tokenizer_is_eog(s->tok, tok);
  /* The released text of this token (and, at the end, of whatever was
   * still held back), copied out of the textstream's buffer. */
  llorch_jbuf text;
  llorch_jbuf_init(&text);
  int rc = 0;
  llorch_textstream_out out = {0};
  if (j->text && !eog) {
    rc = llorch_textstream_feed(j->text, tok, &out);
    if (rc == 0 && out.len) llorch_jbuf_raw(&text, out.text, out.len);
    if (rc == 0 && out.stop >= 0) j->stop_hit = out.stop;
  }
  bool stopped = j->text && llorch_textstream_stopped(j->text);
  /* a grammar whose output is complete with nothing allowed after it */
  if (j->grammar && llorch_grammar_state_finished(j->grammar)) stopped = true;
  worker_finish fin = WORKER_FINISH_NONE;
  if (eog || stopped) fin = WORKER_FINISH_STOP;
  else if (j->n_gen >= j->max_tokens) fin = WORKER_FINISH_LENGTH;
  if (fin != WORKER_FINISH_NONE && j->text && !stopped && rc == 0) {
    /* Release the held tail (a partial stop-string prefix that never
     * completed, an incomplete UTF-8 sequence) with this last token. */
    rc = llorch_textstream_flush(j->text, &out);
    if (rc == 0 && out.len) llorch_jbuf_raw(&text, out.text, out.len);
  }
  if (rc == 0) rc = llorch_jbuf_error(&text);
  if (rc < 0) {
    llorch_jbuf_free(&text);
    *final_ev = sched_error_event(j, "internal_error", false, llorch_strerror(rc));
    return;
  }
  /* An end-of-generation token is not part of the completion's text, but it
   * is a generated token: it counts in usage and gets a token event so that
   * logprobs callers see it. */
  worker_event *e = sched_event_new(WORKER_EV_TOKEN, j);
  if (e) {
    e->index = j->n_gen - 1;
    e->token_id = tok;
    e->text = text.data; /* ownership moves to the event */
    e->text_len = text.len;
    if (j->want_logprobs) {
      e->has_logprob = true;
      e->lp.id = tok;
      e->lp.logprob = res->logprob;
      e->lp.n_top = res->n_top;
      for (int q = 0; q < res->n_top; q++) {
        e->lp.top_id[q] = res->top[q].id;
        e->lp.top_logprob[q] = res->top[q].logprob;
      }
    }
    *tok_ev = e;
  } else {
    llorch_jbuf_free(&text);
  }
  if (fin != WORKER_FINISH_NONE) *final_ev = sched_end_event(j, fin);
}

/* The prompt is computed: its logprobs go out (PROMPT, before any TOKEN);
 * a prompt-only job ends here. Caller holds mu. */
static void sched_emit_prompt(worker_sched *s, worker_job *j) {
  worker_event *e = sched_event_new(WORKER_EV_PROMPT, j);
  if (!e) {
    e = sched_error_event(j, "internal_error", false, "out of memory for prompt logprobs");
    if (e) sched_job_finish(s, j, e);
    return;
  }
  e->plp = j->plp;
  e->n_plp = j->n_prompt;
  j->plp = NULL;
  sched_event_push(s, e);
  if (!j->prompt_only) return;
  j->t_prefill_done_ns = uv_hrtime();
  worker_event *end = sched_end_event(j, WORKER_FINISH_LENGTH);
  if (end) sched_job_finish(s, j, end);
  else j->cancel_requested = true; /* ends as cancelled at the next admit */
}

int worker_sched_step(worker_sched *s) {
  uv_mutex_lock(&s->mu);
  bool emitted = sched_admit_locked(s);
  uv_mutex_unlock(&s->mu);

  uint32_t n_rows = 0, n_hrows = 0;
  uint32_t n = sched_build_batch(s, &n_rows, &n_hrows);
  if (!n) {
    if (emitted && s->notify) s->notify(s->notify_arg);
    return 0;
  }
  llorch_batch b = {.n_tokens = (int32_t)n, .token = s->b_token, .pos = s->b_pos,
                    .seq = s->b_seq, .logits = s->b_logits, .hidden = s->b_hidden};
  llorch_errmsg em = {{0}};
  int rc = n_hrows ? s->be->ops->forward_hidden(s->be->ctx, &b, s->logits, s->hidden, &em)
                   : s->be->ops->forward(s->be->ctx, &b, s->logits, &em);
  if (s->cfg.on_step) s->cfg.on_step(s->cfg.on_step_arg, n);

  uint32_t n_prompt_fed = 0;
  for (uint32_t i = 0; i < n; i++) {
    worker_job *j = s->slots[s->b_seq[i]];
    if (j && j->state == WORKER_JOB_PREFILL) n_prompt_fed++;
  }

  if (rc < 0) {
    LOG_ERROR("worker", NULL, "forward of %u entries failed: %s: %s", n, llorch_strerror(rc),
              em.text);
    uv_mutex_lock(&s->mu);
    /* Every job that was in the batch has a cache in an unknown state. */
    for (uint32_t i = 0; i < n; i++) {
      worker_job *j = s->slots[s->b_seq[i]];
      if (!j) continue;
      worker_event *e = sched_error_event(j, "internal_error", false,
                                          em.text[0] ? em.text : llorch_strerror(rc));
      if (e) sched_job_finish(s, j, e);
    }
    uv_mutex_unlock(&s->mu);
    if (s->notify) s->notify(s->notify_arg);
    return rc;
  }

  /* Embedding jobs pool their rows (outside the lock, like sampling). */
  for (uint32_t r = 0; r < n_hrows; r++) {
    worker_job *j = s->b_hjob[r];
    const float *h = s->hidden + (size_t)r * s->n_embd;
    if (j->pooling == LLORCH_POOLING_MEAN)
      for (uint32_t d = 0; d < s->n_embd; d++) j->embd[d] += h[d];
    else memcpy(j->embd, h, s->n_embd * sizeof *h);
  }

  /* Sample outside the lock: the loop must not wait for vocabulary scans. */
  worker_event **tok_ev = s->tok_ev, **fin_ev = s->fin_ev;
  for (uint32_t r = 0; r < n_rows; r++) {
    worker_job *j = s->b_job[r];
    float *row = s->logits + (size_t)r * s->n_vocab;
    llorch_sample_result res;
    llorch_errmsg sem = {{0}};
    tok_ev[r] = fin_ev[r] = NULL;
    if (s->b_ppos[r] >= 0) {
      /* a prompt position: the logprob of the prompt's next token */
      const uint32_t p = (uint32_t)s->b_ppos[r];
      if (llorch_sampler_logprob_of(row, s->n_vocab, j->prompt[p + 1], j->sp.n_logprobs, &res,
                                    &sem) < 0) {
        fin_ev[r] = sched_error_event(j, "internal_error", false, sem.text);
        continue;
      }
      worker_token_logprob *t = &j->plp[p + 1];
      t->id = res.token;
      t->logprob = res.logprob;
      t->n_top = res.n_top;
      for (int q = 0; q < res.n_top; q++) {
        t->top_id[q] = res.top[q].id;
        t->top_logprob[q] = res.top[q].logprob;
      }
      continue;
    }
    const uint32_t *mask = NULL;
    if (j->grammar) {
      int allowed = llorch_grammar_state_mask(j->grammar, s->mask, &sem);
      if (allowed <= 0) {
        fin_ev[r] = sched_error_event(j, "grammar_error", false,
                                      allowed == 0 ? "the grammar allows no token of this "
                                                     "vocabulary here" : sem.text);
        continue;
      }
      mask = s->mask;
    }
    int src = llorch_sampler_sample_masked(j->sampler, row, mask, j->history,
                                           j->n_prompt + j->n_gen, &res, &sem);
    if (src == 0 && j->grammar) src = llorch_grammar_state_accept(j->grammar, res.token, &sem);
    if (src < 0) {
      /* NaN/inf logits: the model or backend misbehaved for this sequence. */
      fin_ev[r] = sched_error_event(j, "internal_error", false, sem.text);
      continue;
    }
    if (j->state == WORKER_JOB_PREFILL) {
      j->state = WORKER_JOB_DECODE;
      j->t_prefill_done_ns = uv_hrtime();
    }
    if (j->script && s->tok) {
      /* Test hook: the scripted text goes out through the real detokenizer
       * and event path; its logprobs are those of the sampled token. */
      res.token = j->n_gen < j->n_script ? j->script[j->n_gen] : llorch_tokenizer_eos(s->tok);
    }
    j->next_token = res.token;
    sched_emit_token(s, j, &res, &tok_ev[r], &fin_ev[r]);
  }

  uv_mutex_lock(&s->mu);
  s->stats.steps++;
  s->stats.prompt_tokens += n_prompt_fed;
  for (uint32_t k = 0; k < s->cfg.n_slots; k++) {
    worker_job *j = s->slots[k];
    if (!j) continue;
    if (s->kv) sched_commit_blocks(s, j);
    if (j->state == WORKER_JOB_PREFILL && j->n_gen && j->n_fed == j->n_target)
      j->state = WORKER_JOB_DECODE;
    /* plp is still the job's until the prompt is complete (the first token
     * may have been sampled in this step: its event is pushed below) */
    if (j->plp && j->n_fed >= j->n_prompt && !j->cancel_requested) sched_emit_prompt(s, j);
    if (j->pooling && j->state == WORKER_JOB_PREFILL && j->n_fed == j->n_target &&
        !j->cancel_requested) {
      /* the whole prompt was computed: the embedding is done */
      worker_event *e = sched_end_event(j, WORKER_FINISH_STOP);
      if (!e) continue; /* out of memory: the next step tries again */
      if (j->pooling == LLORCH_POOLING_MEAN)
        for (uint32_t d = 0; d < s->n_embd; d++) j->embd[d] /= (float)j->n_prompt;
      j->t_prefill_done_ns = uv_hrtime();
      sched_job_finish(s, j, e);
    }
  }
  for (uint32_t r = 0; r < n_rows; r++) {
    worker_job *j = s->b_job[r];
    /* A cancel that arrived during the forward wins: no token goes out after
     * it, and the job ends as cancelled at the next admit (this step). */
    if (j->cancel_requested) {
      worker_event_free(tok_ev[r]);
      worker_event_free(fin_ev[r]);
      continue;
    }
    if (tok_ev[r]) {
      s->stats.generated_tokens++;
      sched_event_push(s, tok_ev[r]);
    }
    /* a job whose prompt rows failed twice, or that ended with its prompt,
     * is finished once */
    if (fin_ev[r] && j->state == WORKER_JOB_DONE) worker_event_free(fin_ev[r]);
    else if (fin_ev[r]) sched_job_finish(s, j, fin_ev[r]);
  }
  /* Cancelled jobs end now rather than a step later. */
  sched_admit_locked(s);
  uv_mutex_unlock(&s->mu);
  if (s->notify) s->notify(s->notify_arg);
  return (int)n;
}

/* ---- the inference thread ---- */

static bool sched_has_work_locked(worker_sched *s) {
  if (s->n_queued || s->n_busy) return true;
  return false;
}

static void sched_thread_main(void *arg) {
  worker_sched *s = arg;
  for (;;) {
    uv_mutex_lock(&s->mu);
    while (!s->stopping && !sched_has_work_locked(s))
      uv_cond_wait(&s->cv, &s->mu);
    bool stop = s->stopping;
    uv_mutex_unlock(&s->mu);
    if (stop) break;
    int n = worker_sched_step(s);
    if (n == 0) {
      /* Nothing to forward (e.g. every event of a finishing job was just
       * queued): wait briefly instead of spinning; queue timeouts are still
       * checked on the next pass. */
      uv_mutex_lock(&s->mu);
      if (!s->stopping) uv_cond_timedwait(&s->cv, &s->mu, 50 * 1000 * 1000ull);
      uv_mutex_unlock(&s->mu);
    }
  }
}

int worker_sched_start(worker_sched *s, llorch_errmsg *em) {
  int rc = uv_thread_create(&s->thread, sched_thread_main, s);
  if (rc) return llorch_errmsg_set(em, LLORCH_ENOMEM, "inference thread: %s", uv_strerror(rc));
  s->thread_running = true;
  return 0;
}

void worker_sched_stop(worker_sched *s) {
  if (!s->thread_running) return;
  uv_mutex_lock(&s->mu);
  s->stopping = true;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
  uv_thread_join(&s->thread);
  s->thread_running = false;
}
