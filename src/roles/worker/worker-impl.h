/*
 * The worker role's internals, shared by its files:
 *   worker.c     life cycle: load, serve, pool callback, shutdown
 *   request.c    request bodies -> jobs (validation, tokenization)
 *   stream.c     scheduler events -> SSE / JSON responses (native and OpenAI)
 *   routes.c     the endpoints
 *   callback.c   ready/failed POSTs to the pool
 * Everything here runs on the loop thread, except what scheduler.h says.
 */
#ifndef LLORCH_WORKER_IMPL_H
#define LLORCH_WORKER_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "llorch/backend.h"
#include "llorch/chat.h"
#include "llorch/config.h"
#include "llorch/grammar.h"
#include "llorch/http.h"
#include "llorch/http_client.h"
#include "llorch/json.h"
#include "llorch/memory.h"
#include "llorch/metrics.h"
#include "llorch/model.h"
#include "llorch/openai.h"
#include "llorch/tokenizer.h"

#include "scheduler.h"

typedef enum worker_state {
  WORKER_STATE_LOADING = 0,
  WORKER_STATE_READY = 1,
  WORKER_STATE_DRAINING = 2,
  WORKER_STATE_FAILED = 3,
} worker_state;

/* The worker's APIs are the OpenAI layer's: LLORCH_OPENAI_NATIVE is
 * POST /v2/execute, CHAT and COMPLETION the /v1 endpoints. Errors before a
 * stream starts are llorch_openai_error (status + envelope fields). */

/* The finished-id memory of /v2/jobs/{id}/cancel. */
#define WORKER_FINISHED_IDS 1024

typedef struct worker_metrics {
  llorch_metric *requests;        /* {outcome} */
  llorch_metric *prompt_tokens;
  llorch_metric *generated_tokens;
  llorch_metric *ttft;            /* seconds */
  llorch_metric *inter_token;     /* seconds */
  llorch_metric *queue_wait;      /* seconds */
  llorch_metric *slots_busy;
  llorch_metric *slots_total;
  llorch_metric *queue_depth;
  llorch_metric *batch_tokens;    /* entries per step */
  llorch_metric *memory;          /* {kind} bytes */
  llorch_metric *residency;       /* {state}: allocations checked device / not_device */
  llorch_metric *prefix_queries;  /* prompt tokens looked up in the prefix cache */
  llorch_metric *prefix_hits;     /* of those, served from it */
  llorch_metric *kv_blocks_used;
  llorch_metric *kv_blocks_cached;
  llorch_metric *kv_blocks_total;
  llorch_metric *preemptions;
} worker_metrics;

typedef struct worker_stream worker_stream;

typedef struct worker {
  const llorch_config *cfg;
  struct llorch_service *svc;     /* the role runtime: loop, HTTP server, signals */
  uv_loop_t *loop;
  llorch_http_client *client;     /* pool callback, or NULL */
  llorch_metrics *metrics;        /* the runtime's registry */
  worker_metrics m;
  char listen_host[256];
  int port;                       /* bound port */

  /* ---- model (written by the load thread before state turns READY) ---- */
  worker_state state;
  llorch_model *model;
  llorch_backend backend;
  bool backend_open;
  llorch_tokenizer *tok;
  llorch_grammar_vocab *gvocab;   /* token texts as a trie: structured output masks */
  llorch_chat *chat;              /* the model's chat template, or NULL (chat_error says why) */
  char chat_error[600];           /* why chat requests are refused, when chat is NULL */
  llorch_tool_format tool_format; /* how the model writes tool calls (its template, or the option) */
  llorch_reasoning_format reasoning_default; /* worker.reasoning_format */
  cJSON *script;                  /* test hook (--test-script): [{match, reply}], else NULL */
  worker_sched *sched;
  uint32_t n_ctx, n_slots;
  int n_threads;                  /* CPU threads the backend uses */
  char model_name[128];           /* general.name or the file base name */
  char file_base[256];            /* file name without directories */
  /* What the backend holds and where; re-read (and, on backends that hold
   * memory elsewhere, re-verified) by the inference thread every
   * WORKER_RESIDENCY_INTERVAL_S, read by the loop under mem_lock. */
  llorch_backend_memory mem;
  uv_mutex_t mem_lock;
  uint64_t mem_checked_ns;        /* inference thread only: last verification */
  uint64_t baseline_bytes;        /* resident memory before loading (the process itself) */
  llorch_mem_estimate estimate;   /* what llorch/memory.h says this worker needs */
  char load_error[1024];         /* why loading failed (reported to the pool) */

  uv_thread_t load_thread;
  bool load_thread_started;
  uv_async_t load_done;           /* load thread -> loop */
  uv_async_t events;              /* inference thread -> loop */
  uv_timer_t grace_timer;         /* ends running streams just before the grace period */

  /* ---- requests ---- */
  worker_stream *streams;         /* live streams (doubly linked) */
  uint64_t next_id;               /* for generated job and completion ids */
  char finished_ids[WORKER_FINISHED_IDS][72];
  unsigned finished_next;
  uint64_t n_completed, n_cancelled, n_failed, n_rejected;
  uint64_t held_bytes;            /* request bytes of live streams (worker.queue_max_bytes) */

  /* ---- pool callback ---- */
  int cb_attempt;
  bool cb_failed_event;           /* reporting a load failure (exit afterwards) */
  uv_timer_t cb_timer;
  uint64_t cb_deadline_ns;        /* give up after this (failed only) */
  char *cb_body;

  int exit_code;
  bool stopping;
} worker;

/* One request being answered from scheduler events. */
struct worker_stream {
  worker *w;
  size_t held_bytes;              /* counted in w->held_bytes until the stream is freed */
  llorch_openai_api api;
  llorch_openai_dialect dialect;  /* chat answered as Anthropic Messages / Responses */
  llorch_http_request *req;       /* NULL once the client went away */
  worker_job *job;
  bool stream;                    /* SSE (always for native) */
  bool chat;                      /* a messages request: output goes through the parser */
  bool include_usage;
  bool headers_sent;              /* SSE started */
  bool started;                   /* STARTED event seen */
  bool cancelled;                 /* cancel call answered: no token goes out any more */
  char resp_id[48];               /* chatcmpl-N / cmpl-N */
  int64_t created;                /* unix seconds */
  char model_echo[128];
  char request_id[72];
  uint64_t t_last_token_ns;
  uint32_t n_tokens;              /* token events seen */
  /* ---- output ---- */
  llorch_openai_output *out;      /* chat: generated text -> content, reasoning, tool calls */
  cJSON *tools;                   /* chat: the request's tools (the parser reads them) */
  llorch_openai_message msg;      /* non-streaming chat: the answer so far */
  llorch_openai_dout dout;        /* dialect: the answer so far, and its stream's events */
  llorch_jbuf text;               /* non-streaming completions: the text so far */
  llorch_openai_logprobs lp;      /* non-streaming: logprobs so far */
  size_t text_offset;             /* completions logprobs text_offset */
  const worker_event *cur;        /* the token event being parsed */
  bool cur_lp_sent;               /* its logprobs went out with a chunk */
  llorch_jbuf deltas;             /* native: this event's deltas, as JSON array items */
  /* test hook: the scripted reply chosen for this prompt, and its tokens */
  const char *script_reply;       /* points into w->script */
  llorch_tokens script_toks;
  /* ---- before submit: the prompt is tokenized on the libuv threadpool
   * (a 4 MiB body takes over a second) so the loop never waits for it ---- */
  llorch_jbuf prompt_text;        /* raw prompt (completions) */
  llorch_jbuf suffix_text;        /* fill-in-the-middle: the text after the gap */
  bool fim;                       /* prompt_text and suffix_text go into the model's FIM tokens */
  char *echo_text;                /* echo: the prompt as sent (lead only), else NULL */
  size_t echo_len;
  llorch_jinja_output chat_prompt; /* rendered chat, with which bytes came from the request */
  unsigned tok_flags;             /* llorch_tokenize_flags */
  const char *prompt_param;       /* "messages" or "prompt", for errors */
  uv_work_t work;
  llorch_tokens toks;             /* result of the work */
  int tok_rc;
  llorch_errmsg tok_em;
  /* ---- n > 1: one stream (job, parser, answer) per choice. The first,
   * the lead, holds the client's request (req, headers_sent) and is the
   * one linked in w->streams; the others (req always NULL) write through
   * it and are freed with it once every choice has ended. ---- */
  int choice;                     /* this stream's choice index */
  int n_choices;                  /* lead: the request's n */
  worker_stream *lead;            /* the lead (itself for the lead) */
  worker_stream **sibs;           /* lead, n > 1: (n_choices) every choice, [0] = the lead */
  int n_open;                     /* lead: choices whose final event has not been taken */
  uint32_t completion_sum;        /* lead: completion tokens of the choices that ended */
  uint32_t end_prompt_tokens, end_cached_tokens; /* this choice's END figures */
  uint32_t end_completion_tokens;
  const char *end_finish;         /* this choice's finish_reason (static), NULL before END */
  worker_stream *prev, *next;
};

/* ---- request.c ---- */

/*
 * Validates body for api and builds a job (sampling, stop, limits; the prompt
 * still empty) and the stream options; the prompt text goes to
 * st->prompt_text. On failure fills err and returns a negative code.
 */
int worker_request_build(worker *w, llorch_openai_api api, const cJSON *body, worker_stream *st,
                         worker_job **out, llorch_openai_error *err);
/* n > 1: the stream of choice `choice` of lead's request (body as for
 * lead): the same checks and job settings, without rendering the prompt
 * again (the tokens are copied from the lead's after tokenization by
 * worker_request_finish); a seed becomes seed + choice. */
int worker_request_build_sibling(worker *w, const cJSON *body, worker_stream *lead, int choice,
                                 worker_stream *st, llorch_openai_error *err);
/* Tokenizes st->prompt_text into st->toks (threadpool: touches nothing else). */
void worker_request_tokenize(const worker *w, worker_stream *st);
/* Back on the loop: checks the tokens against the context and moves them
 * into st->job. On failure fills err and returns a negative code. */
int worker_request_finish(worker *w, worker_stream *st, llorch_openai_error *err);
/* True when name is the model's name or its file name (with or without .gguf). */
bool worker_model_name_matches(const worker *w, const char *name);

/* ---- stream.c ---- */

/* The output parser's delta callback (user = the stream). */
void worker_stream_on_delta(void *user, const llorch_openai_delta *d);
/* Frees what a stream owns (not linked, or already unlinked) and the stream. */
void worker_stream_destroy(worker_stream *st);
/* Takes and dispatches every scheduler event (the events async callback). */
void worker_events_dispatch(worker *w);
/* Cancels every choice of lead's request (idempotent); their final events
 * still come. Returns the token events sent so far, all choices together. */
int64_t worker_stream_cancel(worker *w, worker_stream *lead);
/* Registers the client-gone callback and links st (a lead) into w->streams. */
void worker_stream_attach(worker *w, worker_stream *st);

/* ---- embed.c ---- */

typedef struct worker_embed worker_embed;
/* POST /v1/embeddings with its parsed body (taken over) of len bytes:
 * answers it, now (an error) or once its jobs have ended. */
void worker_embed_route(worker *w, llorch_http_request *req, cJSON *json, size_t len);
/* One scheduler event of an embedding job (job->pooling != 0). */
void worker_embed_event(worker *w, const worker_event *ev);

/* ---- routes.c ---- */

void worker_route(llorch_http_request *req, void *user);
/* Remembers a finished job id (for idempotent cancel). */
void worker_remember_finished(worker *w, const char *id);

/* ---- callback.c ---- */

/* Starts the ready (failed == false) or failed report to cfg->worker.pool_callback. */
void worker_callback_start(worker *w, bool failed);

/* ---- worker.c ---- */

/* Called when the failed report finished (or gave up): stops the loop. */
void worker_exit_after_callback(worker *w);
/* Updates the slots/queue gauges from the scheduler. */
void worker_metrics_refresh(worker *w);
/* The backend's memory figures as last published by the inference thread. */
void worker_memory_get(worker *w, llorch_backend_memory *out);
/*
 * What this worker holds on its device, as it reports it to its pool (the
 * ready callback) and in /v2/info: CPU, the process's peak resident memory;
 * CUDA, the backend's device memory plus the runtime and context allowances
 * of llorch/memory.h. usage (may be NULL) receives the process's reading.
 */
uint64_t worker_memory_held(worker *w, llorch_mem_usage *usage);

#endif /* LLORCH_WORKER_IMPL_H */
