/*
 * The worker's continuous-batching scheduler (internal to src/roles/worker).
 *
 * N slots, each one backend sequence id: a cap on concurrency, not a memory
 * reservation. With a paged backend (seq_set_blocks) the KV cache is a pool
 * of blocks (kvcache.h): a job is admitted when a slot is free AND the blocks
 * for its prompt are, after reusing the longest cached prefix (prefix
 * caching); a decoding job that needs a block when none is free preempts the
 * most recently admitted job, which goes back to the head of the queue and
 * later recomputes what it had (mostly from the cache), so nothing is
 * corrupted and no tokens are repeated. Without a paged backend every slot
 * owns ctx positions, as before.
 *
 * Jobs wait in a bounded FIFO. Every engine step builds ONE batch: the
 * decode token of every running slot first, then chunks of prompts still
 * being prefilled within the step's token budget (step_tokens, shared with
 * the decode tokens: running streams keep their pace while prompts are
 * admitted); runs one forward; samples per slot; turns tokens into text
 * (complete UTF-8 only, stop strings held back) and queues events.
 *
 * Threads: the HTTP loop calls submit/cancel/events_take; the engine step runs
 * on a dedicated inference thread (worker_sched_start) or, in unit tests,
 * synchronously through worker_sched_step. Everything shared between the two
 * lives under one mutex; the notify callback (uv_async_send in the worker) is
 * called from the inference thread after events were queued.
 *
 * Job ownership: the caller allocates a job and fills its input; after a
 * successful submit the scheduler reads it until it has queued the job's final
 * event (END or ERROR). After taking that event the caller frees the job. The
 * caller never frees a job whose final event it has not taken.
 */
#ifndef LLORCH_WORKER_SCHEDULER_H
#define LLORCH_WORKER_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "llorch/backend.h"
#include "llorch/error.h"
#include "llorch/grammar.h"
#include "llorch/memory.h"
#include "llorch/sampler.h"
#include "llorch/textstream.h"
#include "llorch/tokenizer.h"

#define WORKER_MAX_STOP 16  /* request.max_stop may not exceed it */
#define WORKER_MAX_TOP_LOGPROBS LLORCH_SAMPLER_MAX_LOGPROBS

/* ---- jobs ---- */

typedef enum worker_finish {
  WORKER_FINISH_NONE = 0,
  WORKER_FINISH_STOP = 1,      /* EOS/EOT or a stop string */
  WORKER_FINISH_LENGTH = 2,    /* max_tokens or the context */
  WORKER_FINISH_CANCELLED = 3, /* cancel call or client gone */
} worker_finish;

typedef enum worker_job_state {
  WORKER_JOB_NEW = 0,
  WORKER_JOB_QUEUED = 1,
  WORKER_JOB_PREFILL = 2,
  WORKER_JOB_DECODE = 3,
  WORKER_JOB_DONE = 4,
} worker_job_state;

typedef struct worker_job {
  /* ---- input: set before submit, read-only afterwards ---- */
  char id[72];                   /* job id (NUL-terminated) */
  char request_id[72];           /* for log lines, may be "" */
  int32_t *prompt;               /* (n_prompt) token ids, owned by the job */
  uint32_t n_prompt;
  uint32_t max_tokens;           /* 0: all that fits; clamped at submit */
  llorch_sampler_params sp;      /* sampling (sp.n_logprobs: alternatives per token) */
  llorch_logit_bias *logit_bias; /* what sp.logit_bias points to, owned by the job */
  bool want_logprobs;            /* report the chosen token's logprob (+ sp.n_logprobs top) */
  /* echo: report every prompt token's logprob (+ sp.n_logprobs top) in one
   * PROMPT event once the prompt is computed. Such a prompt is computed in
   * full (never taken from the prefix cache, and not put into it), at most
   * WORKER_PROMPT_LP_ROWS positions per step. */
  bool prompt_logprobs;
  bool prompt_only;              /* with prompt_logprobs: end (length) after the prompt, nothing
                                    sampled (echo with max_tokens 0) */
  char *stop[WORKER_MAX_STOP];   /* stop strings, owned by the job */
  int n_stop;
  bool ignore_eos;
  unsigned detok_flags;          /* llorch_detok_flags of the streamed text (RENDER_SPECIAL
                                    when a tool-call parser must see special-token markers) */
  /* Test hook (worker --test-script, refused unless LLORCH_TEST_HOOKS=1):
   * these tokens replace the sampled ones, then EOS ends the job. NULL in
   * normal operation. */
  int32_t *script;               /* (n_script) token ids, owned by the job */
  uint32_t n_script;
  void *owner;                   /* the caller's (the HTTP side's) pointer */
  /* Structured output (response_format / grammar), owned by the job, or
   * NULL. Used only on the inference thread after submit: each step masks
   * the logits with it and feeds it the sampled token; the job ends (stop)
   * when the grammar's output is complete and nothing may follow. */
  llorch_grammar_state *grammar;
  /* n > 1: the first choice of the same prompt (set by worker_sched_submit_group
   * on the other choices, else NULL). With the prefix cache on, a sibling is
   * not admitted while its leader is queued or still computing the prompt:
   * it is admitted right after, when the prompt's full blocks are committed,
   * and takes them from the cache instead of computing the prompt again.
   * The caller keeps the leader alive until every sibling's final event. */
  struct worker_job *leader;
  /* Embeddings: pooling LLORCH_POOLING_MEAN/CLS/LAST (llorch/model.h) makes
   * this an embedding job: its prompt is computed (never taken from the
   * prefix cache, which holds no hidden states) and the final hidden states
   * are pooled into embd; nothing is generated. The END event (finish stop)
   * means embd holds the pooled vector (n_embd floats, not normalised).
   * 0 for generation. Needs a backend with forward_hidden (submit says
   * LLORCH_EUNSUPPORTED otherwise). */
  int pooling;
  float *embd;                   /* (n_embd) allocated by submit, owned by the job */
  /* Another job of the same request already passed the queue bound (an
   * embeddings request submits its inputs a few at a time): this one is not
   * refused by queue_max and does not time out while queued. */
  bool queue_exempt;

  /* ---- inference-thread state ---- */
  struct worker_token_logprob *plp; /* (n_prompt) prompt logprobs (prompt_logprobs); [0] has none;
                                       moves into the PROMPT event */
  int32_t slot;                  /* backend sequence, -1 while queued */
  uint32_t n_target;             /* positions to compute before decoding: the prompt, or after a
                                    preemption the prompt and all generated tokens but the last */
  uint32_t n_fed;                /* of those, already in the KV cache */
  uint32_t n_cached;             /* prompt tokens taken from the prefix cache (first admission) */
  uint32_t n_exact;              /* leading positions computed as a recomputation would (prompt
                                    chunks; see sched_build_batch): only these are cached */
  int32_t *blocks;               /* (ceil(n_ctx / block tokens)) the sequence's block table */
  uint64_t *hashes;              /* chain hash of each committed leading block */
  uint32_t n_blocks, n_hashed;
  uint64_t admit_seq;            /* admission order: the newest is preempted first */
  bool started;                  /* STARTED was sent (not again after a preemption) */
  uint32_t n_preempted;
  int stop_hit;                  /* index into stop of the string that ended the job, -1 none
                                    (written before the END event, read after it) */
  uint32_t n_gen;                /* tokens generated */
  int32_t next_token;            /* sampled token to feed next step */
  llorch_sampler *sampler;
  int32_t *history;              /* (n_prompt + max_tokens) prompt then generated ids: penalties */
  llorch_textstream *text;       /* detokenizer + stop strings; NULL without a tokenizer */
  uint64_t t_submit_ns, t_start_ns, t_first_ns, t_prefill_done_ns, t_last_tok_ns;

  /* ---- shared under the scheduler mutex ---- */
  worker_job_state state;
  bool cancel_requested;
  struct worker_job *next;       /* wait-queue link */
} worker_job;

/* Creates a job with its own copy of the prompt; NULL when out of memory. */
worker_job *worker_job_new(const char *id, const int32_t *prompt, uint32_t n_prompt);
/* Replaces the prompt with a copy of ids[0..n); LLORCH_ENOMEM. Before submit only. */
int worker_job_set_prompt(worker_job *j, const int32_t *ids, uint32_t n);
/* Frees the job (prompt, stop strings, sampler, text state). */
void worker_job_free(worker_job *j);
/* Adds a stop string (copied); LLORCH_ELIMIT after WORKER_MAX_STOP. */
int worker_job_add_stop(worker_job *j, const char *s, size_t len);

/* ---- events (inference thread -> loop) ---- */

typedef enum worker_event_kind {
  WORKER_EV_STARTED = 0,
  WORKER_EV_TOKEN = 1,
  WORKER_EV_END = 2,
  WORKER_EV_ERROR = 3,
  WORKER_EV_PROMPT = 4,          /* prompt_logprobs: before the first TOKEN */
} worker_event_kind;

/* Prompt positions whose logprobs one engine step computes at most, all jobs
 * together: each is a logits row of n_vocab floats held for the step. */
#define WORKER_PROMPT_LP_ROWS LLORCH_MEM_PROMPT_LP_ROWS

typedef struct worker_token_logprob {
  int32_t id;
  float logprob;                      /* natural log of the probability */
  int n_top;
  int32_t top_id[WORKER_MAX_TOP_LOGPROBS];
  float top_logprob[WORKER_MAX_TOP_LOGPROBS];
} worker_token_logprob;

typedef struct worker_event {
  worker_event_kind kind;
  worker_job *job;
  /* STARTED */
  int32_t slot;
  uint32_t max_tokens;            /* effective */
  /* TOKEN */
  uint32_t index;                 /* token events of this job, from 0 */
  int32_t token_id;
  char *text;                     /* malloc'ed, text_len bytes (may be 0), complete UTF-8 */
  size_t text_len;
  bool has_logprob;
  worker_token_logprob lp;
  /* PROMPT: (n_plp = the job's n_prompt) entries, [0] without a logprob
   * (n_top 0, logprob NAN); owned by the event */
  worker_token_logprob *plp;
  uint32_t n_plp;
  /* END */
  worker_finish finish;
  uint32_t prompt_tokens, completion_tokens;
  uint32_t cached_tokens;         /* prompt tokens served from the prefix cache */
  double queue_ms, ttft_ms, prefill_ms, decode_ms, total_ms;
  /* ERROR */
  const char *code;               /* static: "internal_error", "queue_timeout", "shutting_down" */
  char message[512];
  bool retriable;
  struct worker_event *next;
} worker_event;

void worker_event_free(worker_event *e);

/* ---- the scheduler ---- */

typedef struct worker_sched_config {
  uint32_t n_slots;
  uint32_t n_ctx;          /* positions per slot */
  uint32_t n_batch_max;    /* entries per forward (backend's n_batch_max) */
  uint32_t prefill_chunk;  /* most prompt tokens of ONE job per step */
  uint32_t step_tokens;    /* tokens per step while some job decodes, decode and prompt chunks
                              together; prompt tokens at most as many as decode tokens, at
                              least WORKER_MIN_PREFILL; 0 = n_batch_max */
  bool prefix_cache;       /* reuse cached KV blocks of equal prefixes (paged backends) */
  uint32_t queue_max;      /* waiting jobs beyond the slots */
  double queue_timeout_s;  /* longest wait for a slot; 0 = forever */
  /* Called on the inference thread after each forward (metrics); may be NULL. */
  void (*on_step)(void *arg, uint32_t n_entries);
  void *on_step_arg;
} worker_sched_config;

typedef struct worker_sched_stats {
  uint32_t slots_busy;
  uint32_t queued;
  uint64_t steps;
  uint64_t prompt_tokens;      /* fed to the backend */
  uint64_t generated_tokens;
  /* paged backends (0 otherwise) */
  uint32_t kv_block_tokens;
  uint32_t kv_blocks_total;
  uint32_t kv_blocks_used;     /* held by running sequences */
  uint32_t kv_blocks_cached;   /* unreferenced, holding a reusable prefix */
  uint64_t prefix_query_tokens; /* prompt tokens looked up in the prefix cache */
  uint64_t prefix_hit_tokens;  /* of those, served from it */
  uint64_t preemptions;
} worker_sched_stats;

/* Prompt tokens a step feeds at least, whatever the decode tokens took of
 * step_tokens, so prompts keep moving when many streams decode. */
#define WORKER_MIN_PREFILL 8u

typedef struct worker_sched worker_sched;

/*
 * be must stay open while the scheduler lives; tok may be NULL (then no text
 * and no stop strings: tests). notify(arg) is called after events are queued.
 */
int worker_sched_init(worker_sched **out, const worker_sched_config *cfg, llorch_backend *be,
                      const llorch_tokenizer *tok, void (*notify)(void *), void *notify_arg,
                      llorch_errmsg *em);
/* Stops the thread if running; frees queued events. Jobs still inside are
 * the caller's to free (none are after a drained shutdown). */
void worker_sched_free(worker_sched *s);

/*
 * Queues a job. Clamps max_tokens to what fits. Errors (job not taken, em set):
 *   LLORCH_ERANGE  prompt does not fit the context (em has both numbers)
 *   LLORCH_EINVAL  empty prompt, sampling parameters out of range, empty stop string
 *   LLORCH_EBUSY   queue full (never for a queue_exempt job)
 *   LLORCH_ESTATE  shutting down
 */
int worker_sched_submit(worker_sched *s, worker_job *j, llorch_errmsg *em);
/* The same for the n choices of one request, all or none (the queue bound
 * counts all of them); jobs[1..n) get jobs[0] as their leader. */
int worker_sched_submit_group(worker_sched *s, worker_job *const *jobs, int n, llorch_errmsg *em);
/* Asks to cancel (idempotent); the final END(cancelled) comes as an event. */
void worker_sched_cancel(worker_sched *s, worker_job *j);
/* Takes every queued event (a list, oldest first, caller frees each). */
worker_event *worker_sched_events_take(worker_sched *s);

/* Runs one engine step now (unit tests). Returns entries forwarded (0 idle) or
 * a negative code when the backend failed (jobs in the batch got ERROR). */
int worker_sched_step(worker_sched *s);

/* Starts the inference thread. */
int worker_sched_start(worker_sched *s, llorch_errmsg *em);
/* Stops taking jobs; queued jobs end with ERROR shutting_down. */
void worker_sched_drain(worker_sched *s);
/* Ends running jobs with ERROR shutting_down (grace period over). */
void worker_sched_abort_running(worker_sched *s);
/* Stops and joins the inference thread. */
void worker_sched_stop(worker_sched *s);

void worker_sched_stats_get(worker_sched *s, worker_sched_stats *out);

#endif /* LLORCH_WORKER_SCHEDULER_H */
