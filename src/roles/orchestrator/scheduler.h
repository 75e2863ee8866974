/*
 * The orchestrator's scheduler: catalog, cluster view, admission, placement,
 * eviction, retries and pool liveness, as pure data structures with no
 * sockets and no clock of their own (every entry point takes `now_ms`), so
 * every decision is unit-tested with made-up clusters.
 *
 * Decisions leave through the sched_ops callbacks (assign a request to a
 * worker, ask a pool to start or stop a worker, fail a request); the I/O
 * layer (orchestrator.c) carries them out and reports back
 * (sched_start_done/failed, sched_request_done/retry, sched_pool_apply).
 *
 * Ownership: the scheduler owns pools, workers, pending starts and the
 * catalog copy. Requests (sched_req) are owned by the caller, usually
 * embedded in its own request struct; the scheduler only links them into its
 * queues, so a request must be removed (done / cancel / fail) before the
 * caller frees it.
 */
#ifndef LLORCH_ORCH_SCHED_H
#define LLORCH_ORCH_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/config.h"
#include "llorch/error.h"

#define SCHED_NAME_MAX 132  /* pool names, worker ids, model names (config allows 128) */
#define SCHED_URL_MAX 256
#define SCHED_FILE_MAX 256
#define SCHED_DEV_ID_MAX 16
#define SCHED_MAX_DEVICES 16         /* per pool */
#define SCHED_MAX_WORKER_DEVICES 8
#define SCHED_REASON_MAX 256
#define SCHED_N_PRIO 2               /* interactive, batch (llorch_priority) */

typedef enum sched_dev_kind {
  SCHED_DEV_CPU = 0,
  SCHED_DEV_CUDA = 1,
} sched_dev_kind;

typedef enum sched_worker_state {
  SCHED_WORKER_STARTING = 0,
  SCHED_WORKER_READY = 1,
  SCHED_WORKER_STOPPING = 2,
  SCHED_WORKER_FAILED = 3,
  SCHED_WORKER_EXITED = 4,
} sched_worker_state;
#define SCHED_WORKER_N_STATES 5

/* "starting" ... ; parse returns 0 or LLORCH_EINVAL. */
const char *sched_worker_state_name(sched_worker_state st);
int sched_worker_state_parse(const char *s, sched_worker_state *out);

/* ---- the catalog ---- */

typedef struct sched_model {
  char name[SCHED_NAME_MAX];
  char file[SCHED_FILE_MAX];
  int ctx;                     /* tokens per slot; 0 = the file's training context */
  int slots;
  char (*pins)[2 * SCHED_NAME_MAX]; /* (n_pins) "pool" or "pool/device" */
  int n_pins;
  int min_replicas;
  int max_replicas;            /* 0 = no bound */
  int64_t keep_alive_ms;       /* -1 = never evicted */
  int priority;                /* llorch_priority */
  /* runtime */
  int queued;                  /* requests of this model in the queues */
  int running;                 /* requests of this model on workers */
  bool unloaded;               /* operator unloaded it: min_replicas not kept up */
  bool pass_blocked;           /* dispatch: no slot this pass, skip its other requests */
  int64_t last_used_ms;
  int64_t start_backoff_ms;    /* doubles with each failed start, reset when one is ready */
  int64_t no_start_before_ms;
  char pending[SCHED_REASON_MAX]; /* why requests wait, "" when they do not */
} sched_model;

/* ---- the cluster view (from the pools' state documents) ---- */

/* The coefficients of llorch_mem_need (llorch/memory.h) as the pool reported
 * them: need = fixed + per_token * ctx * slots + per_slot * slots + per_ctx * ctx. */
typedef struct sched_estimate {
  bool valid;
  uint64_t fixed_bytes;        /* weights + scratch of a prefill chunk + per-process allowance */
  uint64_t per_token_bytes;    /* KV bytes per position of one slot */
  uint64_t per_slot_bytes;     /* scratch, logits and sampler rows per slot */
  uint64_t per_ctx_bytes;      /* attention rows per position of the context */
} sched_estimate;

typedef struct sched_pool_model {
  char name[SCHED_NAME_MAX];
  char file[SCHED_FILE_MAX];
  char arch[16];
  char quant[16];
  uint64_t params;
  int ctx;                     /* training context, tokens */
  uint64_t file_bytes;
  uint64_t tensor_bytes;
  sched_estimate est[2];       /* by sched_dev_kind */
} sched_pool_model;

typedef struct sched_device {
  char id[SCHED_DEV_ID_MAX];   /* "cpu", "gpu1" */
  sched_dev_kind kind;
  int index;
  char uuid[96];
  char name[96];
  uint64_t memory_total;       /* bytes */
  uint64_t memory_used;        /* bytes */
  uint64_t memory_free;        /* bytes, as the pool last reported */
  int utilization;             /* percent, -1 unknown */
  int temperature;             /* deg C, -1 unknown */
} sched_device;

typedef struct sched_pool {
  char name[SCHED_NAME_MAX];
  char url[SCHED_URL_MAX];
  char boot_id[SCHED_NAME_MAX];
  uint64_t seq;                /* last applied document's seq */
  int64_t interval_ms;         /* its heartbeat interval */
  int64_t last_seen_ms;        /* last accepted register/heartbeat */
  int64_t registered_ms;
  bool up;
  sched_device devices[SCHED_MAX_DEVICES];
  int n_devices;
  /* bytes per device of workers an event reported ended since the last full
   * document: free on the pool already, not yet in its memory_free */
  uint64_t freed_unreported[SCHED_MAX_DEVICES];
  sched_pool_model *models;    /* (n_models) */
  int n_models;
} sched_pool;

typedef struct sched_worker {
  sched_pool *pool;
  char id[SCHED_NAME_MAX];
  int model;                   /* catalog index, -1 when the catalog has no such model */
  char model_name[SCHED_NAME_MAX];
  char file[SCHED_FILE_MAX];
  char devices[SCHED_MAX_WORKER_DEVICES][SCHED_DEV_ID_MAX];
  int n_devices;
  sched_worker_state state;
  char url[SCHED_URL_MAX];
  char token[128];
  int ctx;
  int slots;                   /* total */
  int busy;                    /* requests the orchestrator has running on it */
  uint64_t memory_bytes;       /* what its pool counts for it (llorch_mem_held), all devices */
  int pid;
  int64_t started_at_ms;
  int64_t last_used_ms;        /* last request finished (or adoption time) */
  bool broken;                 /* a stream to it failed: not routed to again */
  bool stop_sent;              /* we asked its pool to stop it */
  bool adopted;                /* came from a registration, not from our start */
  bool draining;               /* an operator drained it: no new requests, stopped once idle */
  bool token_asked;            /* adopted without a token: GET {pool}/v2/workers/{id} in flight */
  int exit_code;               /* -1 unknown */
  char exit_signal[16];
  char exit_reason[SCHED_REASON_MAX];
  struct sched_worker *hnext;  /* chain in sched.whash */
  uint64_t listed_gen;         /* sched_pool_apply: the document that listed it last */
} sched_worker;

/* A start we asked a pool for and have not yet seen in its state. */
typedef struct sched_pending_start {
  uint64_t id;                 /* the I/O layer names it by id: it may be dropped meanwhile */
  int model;
  sched_pool *pool;
  char device[SCHED_DEV_ID_MAX];
  int ctx, slots;
  uint64_t need_bytes;
  int64_t asked_ms;
  char worker_id[SCHED_NAME_MAX]; /* "" until the pool answered 201 */
  char token[128];             /* the worker's bearer token from that 201 answer */
  bool answered;
  bool seen;                   /* an event reported the worker: it is a replica now, but
                                * the reservation holds until a full state document */
} sched_pending_start;

/* ---- model file copies between pools ----
 *
 * When placement wants a pool that lacks a model's file (the model is pinned
 * to it, or no pool holding the file can take the model), the scheduler
 * asks that pool to copy the file from a pool that holds it (ops.fetch),
 * follows the copy through the target's state documents ("fetches"), and
 * after a failed verification or a lost source asks again from another
 * source (or the same), at most SCHED_FETCH_ATTEMPTS times. The model's
 * requests wait meanwhile; the pending reason shows the copy's progress. */

#define SCHED_FETCH_ATTEMPTS 4
#define SCHED_FETCH_FORGET_MS 60000  /* a copy given up on is retried after this */

/* A pool's report of one copy (its state document's "fetches"). */
typedef struct sched_fetch_report {
  char file[SCHED_FILE_MAX];
  char id[64];
  char state[16];              /* running, verifying, interrupted, failed, done, cancelled */
  uint64_t bytes_done, bytes_total;
  uint64_t rate;               /* bytes/s */
  int64_t eta_s;               /* -1 unknown */
  char error[SCHED_REASON_MAX];
} sched_fetch_report;

typedef struct sched_fetch {
  uint64_t id;                 /* this attempt's id ("f<id>" on the wire) */
  char file[SCHED_FILE_MAX];
  char target[SCHED_NAME_MAX]; /* the pool that copies */
  char source[SCHED_NAME_MAX]; /* the pool it copies from */
  uint64_t size;               /* bytes, from the source's report */
  int attempts;
  char state[16];              /* "asking" until the target answered, then as the pool reports */
  bool ended;                  /* the attempt failed (interrupted, failed, cancelled, refused) */
  bool given_up;               /* SCHED_FETCH_ATTEMPTS ended */
  bool adopted;                /* the target was already copying (an earlier orchestrator
                                * asked): its reports are followed whatever their id */
  uint64_t bytes_done, rate;
  int64_t eta_s;
  char error[SCHED_REASON_MAX]; /* the last attempt's error */
  int64_t asked_ms, ended_ms, next_try_ms;
} sched_fetch;

/* What ops.fetch is asked to carry out. */
typedef struct sched_fetch_order {
  uint64_t fetch_id;           /* pass back to sched_fetch_answered / _failed */
  const char *file;
  const struct sched_pool *target;
  const struct sched_pool *source;
  uint64_t size;
} sched_fetch_order;

/* ---- requests (caller-owned) ---- */

typedef enum sched_req_state {
  SCHED_REQ_NEW = 0,
  SCHED_REQ_QUEUED = 1,
  SCHED_REQ_RUNNING = 2,
  SCHED_REQ_DONE = 3,
} sched_req_state;

typedef struct sched_req {
  struct sched_req *prev, *next; /* queue links while QUEUED */
  int model;                   /* catalog index */
  int priority;                /* llorch_priority */
  sched_req_state state;
  int64_t enqueued_ms;         /* first admission; kept across retries */
  int attempts;                /* assignments so far */
  sched_worker *worker;        /* while RUNNING */
  void *user;                  /* the caller's request */
  const uint64_t *prefix;      /* (n_prefix) chunk chain hashes of its text (prefix_route.h), caller-owned */
  uint32_t n_prefix;
} sched_req;

/* ---- decisions out ---- */

typedef struct sched_start {
  const sched_model *model;
  const sched_pool *pool;
  const char *device;
  const char *file;            /* as the pool names it */
  int ctx, slots;
  uint64_t need_bytes;
  uint64_t start_id;           /* pass back to sched_start_done / _failed */
} sched_start;

typedef struct sched_ops {
  void *ud;
  /* r is RUNNING on w (slot taken); the caller executes it. */
  void (*assign)(void *ud, sched_req *r, sched_worker *w);
  /* Ask st->pool for a worker; later sched_start_done/_failed (not from inside). */
  void (*start)(void *ud, const sched_start *st);
  /* Ask w's pool to stop it; why is "evicted", "unloaded", ... */
  void (*stop)(void *ud, sched_worker *w, const char *why);
  /* r is DONE without a worker: answer status (503, ...) with code and message. */
  void (*fail)(void *ud, sched_req *r, int status, const char *code, const char *msg);
  /* Ask o->target to copy o->file from o->source; later sched_fetch_answered/_failed
   * (not from inside). NULL: files are never copied between pools. */
  void (*fetch)(void *ud, const sched_fetch_order *o);
  /* Ask target to drop what is left of a copy of file (a part kept for a
   * resume that will not come: the copy was given up on). May be NULL. */
  void (*fetch_cancel)(void *ud, const struct sched_pool *target, const char *file);
} sched_ops;

typedef struct sched_limits {
  int max_total;               /* queued requests over all classes */
  int max_per_prio[SCHED_N_PRIO]; /* 0 = only max_total */
  int64_t queue_timeout_ms;
  int heartbeat_miss_limit;
  int retry_max;
  int64_t start_timeout_ms;    /* a start not seen in the pool's state after this is dropped */
  int max_pools;               /* registered pools; 0 = no bound */
  int64_t forget_after_ms;     /* a pool down this long is forgotten; 0 = never */
  bool prefix_routing;         /* prefer the replica that likely holds the request's prefix */
  int64_t prefix_ttl_ms;       /* how long a routed prefix is remembered */
} sched_limits;

typedef struct sched_stats {
  uint64_t admitted, rejected, timed_out, retries, evictions, starts, start_failures;
  uint64_t decisions;          /* assignments + starts + stops + fails */
  uint64_t prefix_routed;      /* assignments that went where a prefix matched */
} sched_stats;

typedef struct sched {
  sched_limits lim;
  sched_ops ops;
  sched_model *models;         /* (n_models) the catalog */
  int n_models;
  sched_pool **pools;          /* (n_pools) */
  int n_pools;
  sched_worker **workers;      /* (n_workers) */
  int n_workers, cap_workers;
  sched_worker **whash;        /* (whash_cap) chains by (pool, id): lookups stay O(1) with
                                * thousands of workers */
  int whash_cap;               /* power of two, >= cap_workers */
  uint64_t apply_gen;          /* counts sched_pool_apply calls (sched_worker.listed_gen) */
  sched_pending_start **starts; /* (n_starts) */
  int n_starts, cap_starts;
  uint64_t next_start_id;
  sched_req queues[SCHED_N_PRIO]; /* sentinels of circular lists */
  int queued[SCHED_N_PRIO];
  int total_queued;
  double done_rate;            /* completions per second, EWMA, for Retry-After */
  int64_t rate_window_ms;
  int rate_count;
  sched_stats stats;
  bool in_dispatch;
  sched_fetch **fetches;       /* (n_fetches) copies under way or recently ended */
  int n_fetches;
  uint64_t next_fetch_id;
  struct prefix_route *prefix; /* NULL: prefix routing off */
  uint32_t rr;                 /* rotates the scan start: equally loaded workers take turns */
} sched;

/* ---- lifecycle ---- */

int sched_init(sched *s, const sched_limits *lim, const sched_ops *ops);
void sched_free(sched *s);
/* Limits from the orchestrator config (queue, heartbeat_miss_limit, retry_max). */
void sched_limits_from_config(sched_limits *lim, const llorch_config *cfg);

/* Copies one catalog entry; returns its index or a negative error. */
int sched_model_add(sched *s, const llorch_model_entry *e, llorch_errmsg *em);
/* Catalog index of name, or -1. */
int sched_model_find(const sched *s, const char *name);

/* ---- pools ---- */

typedef struct sched_worker_report {
  char id[SCHED_NAME_MAX];
  char model[SCHED_NAME_MAX];
  char file[SCHED_FILE_MAX];
  char devices[SCHED_MAX_WORKER_DEVICES][SCHED_DEV_ID_MAX];
  int n_devices;
  int ctx, slots;
  sched_worker_state state;
  char url[SCHED_URL_MAX];
  char token[128];
  int pid;
  uint64_t memory_bytes;
  int64_t started_at_ms;
  int exit_code;               /* -1 unknown */
  char exit_signal[16];
  char exit_reason[SCHED_REASON_MAX];
} sched_worker_report;

/* One pool state document (cluster-protocol.md section 2), parsed. */
typedef struct sched_pool_report {
  char pool[SCHED_NAME_MAX];
  char url[SCHED_URL_MAX];
  char boot_id[SCHED_NAME_MAX];
  uint64_t seq;
  int64_t interval_ms;
  sched_device devices[SCHED_MAX_DEVICES];
  int n_devices;
  /* bytes per device of workers an event reported ended since the last full
   * document: free on the pool already, not yet in its memory_free */
  uint64_t freed_unreported[SCHED_MAX_DEVICES];
  sched_pool_model *models;    /* (n_models) */
  int n_models;
  sched_worker_report *workers; /* (n_workers) */
  int n_workers;
  sched_fetch_report *fetches; /* (n_fetches) */
  int n_fetches;
} sched_pool_report;

void sched_pool_report_free(sched_pool_report *r);

/*
 * Applies a register (is_register) or heartbeat document. A heartbeat of a
 * pool the scheduler does not know returns LLORCH_ENOTFOUND (-> 404
 * POOL_UNKNOWN); a registration past lim.max_pools returns LLORCH_ELIMIT.
 * Linear in the document plus the workers known. A document older than the last applied one is ignored and
 * returns 0. adopted (may be NULL) receives the number of workers taken
 * over from a registration. Runs a dispatch pass.
 */
int sched_pool_apply(sched *s, const sched_pool_report *rep, bool is_register, int64_t now_ms,
                     int *adopted);
/* Applies one worker event of pool (cluster-protocol.md 3.3). */
int sched_pool_event(sched *s, const char *pool, const char *boot_id, uint64_t seq,
                     const sched_worker_report *w, int64_t now_ms);
sched_pool *sched_pool_find(const sched *s, const char *name);

/* ---- starts ---- */

/* The pool answered 201 with worker_id. Does not dispatch (call sched_dispatch). */
void sched_start_done(sched *s, uint64_t start_id, const char *worker_id, const char *token,
                      int64_t now_ms);
/* The pool refused (507, 404, unreachable): reason goes into the pending reason. */
void sched_start_failed(sched *s, uint64_t start_id, const char *reason, int64_t now_ms);

/* ---- copies ---- */

/* The target accepted the copy (202), or (already_running: 409 FETCH_RUNNING,
 * asked by an orchestrator before a restart) is copying the file already. */
void sched_fetch_answered(sched *s, uint64_t fetch_id, bool already_running, int64_t now_ms);
/* The copy could not be asked for (the source's digest, the target's refusal:
 * 507 disk space, ...): reason goes into the model's pending reason. */
void sched_fetch_failed(sched *s, uint64_t fetch_id, const char *reason, int64_t now_ms);
/* The copy with id, or NULL. */
sched_fetch *sched_fetch_find(const sched *s, uint64_t fetch_id);

/* ---- requests ---- */

/*
 * Admission: queues r (r->model and r->priority set by the caller) or
 * returns LLORCH_ELIMIT with *retry_after_s when the queue is full; nothing
 * else is done for a refused request. Does not dispatch: call
 * sched_dispatch() after.
 */
int sched_submit(sched *s, sched_req *r, int64_t now_ms, int *retry_after_s);
/* True (and counted as rejected) when a request of priority would not be
 * admitted now; cheap, for refusing before any parsing. */
bool sched_queue_full(sched *s, int priority, int *retry_after_s);
/* Seconds a refused client should wait, from the recent completion rate. */
int sched_retry_after_s(const sched *s);
/* r finished on its worker (any outcome that is not a retry). */
void sched_request_done(sched *s, sched_req *r, int64_t now_ms);
/*
 * r's worker failed before the first token: r goes back to the head of its
 * queue, and with worker_broken (it died, or answered garbage) the worker
 * leaves routing; without (it said "overloaded") it stays. Returns 1 when
 * requeued, 0 when retry_max is exhausted (r is then DONE and the caller
 * answers the error).
 */
int sched_request_retry(sched *s, sched_req *r, bool worker_broken, int64_t now_ms);
/* The client went away: r leaves its queue or frees its slot. */
void sched_request_cancel(sched *s, sched_req *r, int64_t now_ms);

/* ---- the loop ---- */

/* Assigns queued requests to free slots, starts / evicts workers. */
void sched_dispatch(sched *s, int64_t now_ms);
/* Periodic: pools down, queue timeouts, stale starts, min_replicas, dispatch. */
void sched_tick(sched *s, int64_t now_ms);

/* ---- operators ---- */

/* Starts a worker of model if it has none (returns 0), or explains why not. */
int sched_model_load(sched *s, int model, int64_t now_ms, llorch_errmsg *em);
/* Stops every worker of model once idle; min_replicas is not kept up. */
int sched_model_unload(sched *s, int model, int64_t now_ms);
/*
 * Drains w: it takes no new requests and stops ("drained") once its running
 * ones finish (at once when idle, else from sched_tick). It no longer counts
 * as a replica, so min_replicas or waiting requests place another worker.
 * Returns 1 when it was stopped now, 0 when it stops later, LLORCH_ESTATE when
 * it is already stopping or gone.
 */
int sched_worker_drain(sched *s, sched_worker *w, int64_t now_ms);
/* The worker id of pool, or NULL. */
sched_worker *sched_worker_find(const sched *s, const char *pool, const char *id);

/* ---- queries ---- */

/* Workers of model that are ready/starting on up pools, plus pending starts. */
int sched_model_replicas(const sched *s, int model);
/* "ready" if it has a routable worker, "starting", "pending" (requests wait) or "unloaded". */
const char *sched_model_state(const sched *s, int model);
bool sched_worker_routable(const sched_worker *w);
int sched_pools_up(const sched *s);
/*
 * Bytes an evicted w gives back on each of its devices, in the eviction
 * arithmetic: its pool's figure for it (memory_bytes, what the pool counts)
 * split over its devices exactly as the pool splits it, so the pool's next
 * report shows that much more free; before the pool reported one, the
 * estimate for its device kind.
 */
uint64_t sched_worker_device_bytes(const sched *s, const sched_worker *w);

/* "5.1 GiB", "512 MiB", "12 KiB", "17 B" */
void sched_format_bytes(char *out, size_t n, uint64_t bytes);

#endif /* LLORCH_ORCH_SCHED_H */
