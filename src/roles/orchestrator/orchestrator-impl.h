/*
 * Internals of the orchestrator role, shared by its files:
 *   orchestrator.c  entry point, routes, tick timer, metrics, /v2/cluster, load/unload
 *   client_api.c    OpenAI endpoints: validate, admit, execute on a worker, relay
 *   resume.c        resumable streams: numbered, kept events; GET /v2/streams/{id}
 *   pool_api.c      the pool protocol: register/heartbeat/events, start/stop calls
 *   pool_report.c   parsing a pool state document (pure, unit-tested)
 *   scheduler.c     decisions (pure, unit-tested)
 * Everything runs on the service's loop thread.
 */
#ifndef LLORCH_ORCH_IMPL_H
#define LLORCH_ORCH_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "llorch/config.h"
#include "llorch/http.h"
#include "llorch/http_client.h"
#include "llorch/json.h"
#include "llorch/metrics.h"
#include "llorch/openai.h"
#include "llorch/reqid.h"
#include "llorch/service.h"
#include "scheduler.h"

#define ORCH_TICK_MS 100          /* liveness, queue timeouts, gauges */
#define ORCH_JOB_ID_MAX 72

typedef struct llorch_orchestrator orch;
typedef struct orch_resume orch_resume;

/* One choice of a request's answer (n > 1: the worker's events say which). */
typedef struct orch_choice {
  llorch_openai_message msg;    /* non-streaming chat: content, reasoning, tool calls */
  llorch_jbuf text;             /* non-streaming completions: generated text */
  llorch_openai_logprobs lp;    /* non-streaming: logprobs */
  size_t stream_offset;         /* streamed completions: text_offset of the next token */
  int completion_tokens;
  char finish_reason[24];
  bool ended;                   /* its end event arrived */
} orch_choice;

/* One client request (chat or completion) from admission to its last byte. */
typedef struct orch_req {
  sched_req sr;                 /* scheduler links; sr.user == this */
  orch *o;
  llorch_http_request *http;    /* NULL once the client went away (and for a resumable one) */
  orch_resume *resume;          /* X-Llorch-Resumable: the record that owns the client, or NULL */
  char rid[LLORCH_REQID_MAX + 1];
  bool chat;                    /* /v1/chat/completions, else /v1/completions */
  bool embed;                   /* /v1/embeddings: exec_body goes to the worker's /v1/embeddings */
  llorch_openai_dialect dialect; /* chat answered as Anthropic Messages / Responses */
  bool stream;
  bool include_usage;
  int logprobs;                 /* completions: top-n; chat: 1 when requested */
  int top_logprobs;
  char *exec_body;              /* the /v2/execute body without job_id (JSON) */
  size_t held_bytes;            /* counted in orch->held_bytes while the request lives */
  char *model_name;             /* as the client named it */
  uint64_t *prefix;             /* (sr.n_prefix) chunk hashes for prefix routing, or NULL */
  char id[48];                  /* chatcmpl-... / cmpl-... */
  int64_t created;              /* unix seconds */
  /* the current attempt */
  llorch_http_call *call;       /* the /v2/execute stream, NULL when none */
  char job_id[ORCH_JOB_ID_MAX];
  char worker_url[SCHED_URL_MAX];
  char worker_token[128];
  char worker_name[2 * SCHED_NAME_MAX];
  int exec_status;              /* HTTP status of /v2/execute */
  bool got_token;               /* a token event arrived on this attempt */
  bool got_end;                 /* end or error event arrived */
  bool retriable_error;         /* the worker's error event said retriable */
  /* what the client has been sent */
  bool sse_started;
  bool sent_tokens;             /* a content chunk went to the client: no retry now */
  bool finished;                /* the response is complete */
  bool slow_client;             /* stopped reading: its job was cancelled on the worker */
  /* results: n choices, all from one worker's /v2/execute (it runs them as
   * siblings of one prompt), so n > 1 is one queued request */
  int n;
  orch_choice *ch;              /* (n), allocated by the parse */
  int n_ended;                  /* choices whose end event arrived */
  llorch_openai_dout dout;      /* dialect: the answer so far, and its stream's events */
  int prompt_tokens;            /* counted once, whatever n */
  int cached_tokens;            /* of those, served from the worker's prefix cache */
  int completion_tokens;        /* all choices together */
  char *stop_sequence;          /* the stop string that ended the output (worker's end event) */
  char err_code[48];
  char err_msg[512];
  uint64_t t_admit_ns;
  uint64_t t_first_ns;
  uint64_t t_last_ns;
  struct orch_req *next_deferred;
  bool in_deferred;             /* on orch->deferred (its execute could not start) */
} orch_req;

struct llorch_orchestrator {
  const llorch_config *cfg;
  llorch_service *svc;
  uv_loop_t *loop;
  llorch_http_client *client;
  sched s;
  uv_timer_t tick;
  uv_timer_t kick;              /* runs deferred work after a dispatch pass */
  orch_req *deferred;           /* requests whose execute could not even start */
  bool dispatch_pending;        /* orch_dispatch_soon was called */
  char id[LLORCH_REQID_MAX + 1]; /* orchestrator_id, random per process */
  int64_t started_unix;
  bool stopping;
  int n_active;                 /* client requests alive */
  const char *cluster_token;    /* presented to pools: the configured one, or all-mode's internal one; NULL = none */
  uint64_t held_bytes;          /* request bytes of admitted requests (queue.max_bytes) */
  /* metrics */
  llorch_metrics *m;
  llorch_metric *m_queue;       /* gauge {priority} */
  llorch_metric *m_requests;    /* counter {outcome} */
  llorch_metric *m_ttft;        /* histogram seconds */
  llorch_metric *m_itl;         /* histogram seconds between tokens */
  llorch_metric *m_tokens;      /* counter {kind=prompt|generated} */
  llorch_metric *m_workers;     /* gauge {state} */
  llorch_metric *m_pools_up;    /* gauge */
  llorch_metric *m_pools;       /* gauge, known pools */
  llorch_metric *m_evictions;   /* counter */
  llorch_metric *m_retries;     /* counter */
  llorch_metric *m_starts;      /* counter {outcome} */
  uint64_t last_evictions, last_retries, last_starts, last_start_failures;
  struct orch_events *events;   /* timeline and /v2/cluster/events (events.c) */
  orch_resume *resumes;         /* resumable streams, newest first (resume.c) */
  uint64_t resume_bytes;        /* events they keep */
};

/* ---- orchestrator.c ---- */
int64_t orch_now_ms(orch *o);
uint64_t orch_now_ns(void);
/* On a thread-pool thread: lowers its CPU priority below the loop's (once per thread). */
void orch_thread_yield_to_loop(void);
/* Counts an outcome: admitted, rejected, completed, cancelled, failed, timed_out. */
void orch_count(orch *o, const char *outcome);
/* Schedules the deferred-work timer. */
void orch_kick(orch *o);
/*
 * A dispatch pass on the next loop iteration. HTTP-client callbacks (a
 * call's on_done) use this instead of sched_dispatch: a pass started inside
 * one may reuse the keep-alive connection that call just gave back while
 * libuv still has that connection's write request queued.
 */
void orch_dispatch_soon(orch *o);

/* ---- client_api.c ---- */
/*
 * Checks a client's chat (r->chat) or completions body against the OpenAI
 * schema and cfg's request limits, and builds r->exec_body (the worker's
 * /v2/execute body without job_id) plus r's stream/logprobs flags. Linear in
 * the body. Returns 0, LLORCH_EINVAL with em (llorch_json_errparam() names
 * the field when a json.h getter failed) or LLORCH_ENOMEM.
 */
int orch_req_build_exec_body(orch_req *r, const cJSON *body, const llorch_config *cfg,
                             llorch_errmsg *em);
void orch_on_chat(llorch_http_request *req, void *user);
void orch_on_completions(llorch_http_request *req, void *user);
void orch_on_messages(llorch_http_request *req, void *user);  /* Anthropic Messages */
void orch_on_responses(llorch_http_request *req, void *user); /* OpenAI Responses */
void orch_on_embeddings(llorch_http_request *req, void *user); /* POST /v1/embeddings */
void orch_on_models(llorch_http_request *req, void *user);
/* sched_ops.assign / .fail */
void orch_req_assign(void *ud, sched_req *r, sched_worker *w);
void orch_req_fail(void *ud, sched_req *r, int status, const char *code, const char *msg);
/* Handles requests whose execute call could not start (see orch_kick). */
void orch_run_deferred(orch *o);
/* Shutdown: ends every request still queued or running. */
void orch_req_abort_all(orch *o);

/* A resumable request's client is gone for good (its window passed, or its
 * buffer filled while nobody read): cancelled as a disconnect cancels an
 * ordinary one. May free r. */
void orch_req_abandon(orch_req *r);

/* ---- resume.c: resumable streams ---- */
/* The record of resumable request r (id r->id) with req as its client:
 * starts req's SSE answer with X-Llorch-Stream-Id. NULL when out of memory
 * or req is gone (nothing started). */
orch_resume *orch_resume_open(orch *o, orch_req *r, llorch_http_request *req);
/* One event of the answer: numbered, sent to the attached client, kept. */
void orch_resume_event(orch_resume *s, const char *event, const char *data, size_t len);
/* The answer's last event is in: the client's response ends; kept for the window. */
void orch_resume_end(orch_resume *s);
/* Its request is freed (the record stays for the window). */
void orch_resume_release(orch_resume *s);
/* Expiry (window passed) and full buffers: cancels generations, frees records. */
void orch_resume_tick(orch *o, int64_t now_ms);
/* Shutdown: ends attached clients' responses; then frees everything. */
void orch_resume_stop(orch *o);
void orch_resume_free_all(orch *o);
/* GET /v2/streams/{id} (Last-Event-ID) */
void orch_on_stream(llorch_http_request *req, void *user);

/* ---- pool_api.c ---- */
/* POST /v2/pools/{register, POOL/heartbeat, POOL/events} */
void orch_on_pools(llorch_http_request *req, void *user);
/* sched_ops.start / .stop */
void orch_pool_start(void *ud, const sched_start *st);
void orch_pool_stop(void *ud, sched_worker *w, const char *why);
/* sched_ops.fetch: the source's digest (GET {source}/v2/files/{file}/sha256),
 * then POST {target}/v2/files/fetch; the outcome goes to sched_fetch_answered/_failed. */
void orch_pool_fetch(void *ud, const sched_fetch_order *fo);
/* sched_ops.fetch_cancel: DELETE {target}/v2/files/fetch/{file}. */
void orch_pool_fetch_cancel(void *ud, const sched_pool *target, const char *file);

/* ---- pool_report.c ---- */
/*
 * Parses a pool state document (cluster-protocol.md section 2) into out.
 * Returns 0, or LLORCH_EINVAL with em naming the field, the value and what
 * was expected (and out freed). require_full: register/heartbeat documents
 * need every field; an events body only needs boot_id and seq.
 */
int orch_pool_report_parse(const cJSON *doc, sched_pool_report *out, llorch_errmsg *em);
/* One worker object (section 2) at path where. */
int orch_worker_report_parse(const cJSON *w, const char *where, sched_worker_report *out,
                             llorch_errmsg *em);

#endif /* LLORCH_ORCH_IMPL_H */
