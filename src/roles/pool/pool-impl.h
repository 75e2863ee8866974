/*
 * Pool manager internals (src/roles/pool), shared by its files and its unit
 * tests. The protocol is docs/cluster-protocol.md; the worker's callback is
 * docs/worker-api.md.
 *
 *   models.c   model directory scan (GGUF headers only), file name checks,
 *              memory estimates
 *   state.c    the state document, device free memory, preflight arithmetic,
 *              exit descriptions (pure: no I/O, unit-tested)
 *   workers.c  spawning, stderr capture, ready/failed callback, stop, reaping
 *   pool.c     the role: routes, registration and heartbeats, main
 */
#ifndef LLORCH_POOL_IMPL_H
#define LLORCH_POOL_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "llorch/gguf.h"
#include "llorch/gpu.h"
#include "llorch/http.h"
#include "llorch/http_client.h"
#include "llorch/json.h"
#include "llorch/pool.h"
#include "llorch/service.h"

#define POOL_NAME_MAX 64           /* ids: [A-Za-z0-9._-]{1,63} */
#define POOL_FILE_MAX 256          /* a model file name relative to its directory */
#define POOL_MODEL_NAME_MAX 128    /* the catalog name a worker serves under */
#define POOL_MAX_WORKER_DEVICES 8
#define POOL_DEV_ID_MAX 16
#define POOL_TOKEN_HEX 32          /* random bytes of a token, written as 2x hex digits */
#define POOL_STDERR_LINES 20       /* last lines of a worker's stderr kept for its exit report */
#define POOL_STDERR_LINE_MAX 240   /* bytes kept of one stderr line */

/* The environment variable that tells a spawned worker its pool's pid, so it
 * can ask the kernel for SIGTERM when the pool dies (pool.c). */
#define LLORCH_POOL_PARENT_ENV "LLORCH_POOL_PARENT_PID"

/* The batch a worker is opened with (worker.c: one decode token per slot plus
 * one prefill chunk of 128): the estimate's scratch depends on it. */
#define POOL_PREFILL_CHUNK 128u

/* ---- models ---- */

/* need(ctx, slots) ~= fixed_bytes + per_token_bytes * ctx * slots, per device kind. */
typedef struct pool_estimate {
  uint64_t fixed_bytes;     /* bytes: weights + scratch + per-process overhead */
  uint64_t per_token_bytes; /* bytes of KV (and ctx-sized scratch) per token of context */
} pool_estimate;

typedef struct pool_model {
  char name[POOL_FILE_MAX];   /* the file's stem ("tiny" for tiny.gguf) */
  char file[POOL_FILE_MAX];   /* relative to its directory ("tiny.gguf") */
  char arch[16];              /* "llama", "qwen2", "qwen3" */
  char quant[16];             /* type of most weight bytes: "Q8_0", "F16" */
  uint64_t params;            /* elements over all tensors */
  uint32_t ctx;               /* training context, tokens */
  uint64_t file_bytes;        /* bytes on disk */
  uint64_t tensor_bytes;      /* bytes of tensor data */
  pool_estimate est[2];       /* [LLORCH_DEVICE_CPU], [LLORCH_DEVICE_CUDA] */
  int64_t mtime_ns;           /* to skip re-reading an unchanged file on the next scan */
  bool bad;                   /* the header did not parse: not reported, kept to warn once */
} pool_model;

/*
 * Checks a model file name from a request: non-empty, at most 255 bytes, no
 * '/', no "..", no control characters, ends in ".gguf". field names it in the
 * message ("'file' must ..."). Returns 0 or LLORCH_EINVAL.
 */
int pool_file_name_check(const char *field, const char *name, llorch_errmsg *em);

/*
 * Reads dir/file's header (LLORCH_GGUF_OPEN_HEADER_ONLY: the data section is
 * never touched) into out. Returns 0, LLORCH_ENOENT, or the reader's code with
 * em naming the file.
 */
int pool_model_read(const char *dir, const char *file, pool_model *out, llorch_errmsg *em);

/*
 * Scans the directories (top level only: request names cannot hold '/') for
 * *.gguf. A file whose header does not parse gets an entry with bad = true
 * (not reported) and one warning in the log per change of the file. prev/n_prev is the last scan: unchanged
 * files (same size and mtime) are copied from it instead of re-read. A model
 * name found in two directories is reported once, from the first. Returns 0
 * with a malloc'd *out (free()), or LLORCH_ENOMEM.
 */
int pool_models_scan(const llorch_strlist *dirs, const pool_model *prev, int n_prev,
                     pool_model **out, int *n_out);

/*
 * Finds file in the directories (the first that has it as a regular file)
 * and writes the full path. Returns 0, or LLORCH_ENOENT.
 */
int pool_model_locate(const llorch_strlist *dirs, const char *file, char *path, size_t size);

/* Exact memory need of one worker (llorch_mem_estimate_compute with the worker's batch). */
int pool_model_need(const char *path, uint32_t ctx, uint32_t slots, bool for_gpu, uint64_t *need,
                    uint32_t *ctx_train, llorch_errmsg *em);

/* ---- workers ---- */

typedef enum pool_worker_state {
  POOL_WORKER_STARTING = 0, /* spawned, no ready callback yet */
  POOL_WORKER_READY = 1,    /* ready callback received: url and token known */
  POOL_WORKER_STOPPING = 2, /* SIGTERM sent */
  POOL_WORKER_FAILED = 3,   /* reported failed, or exited before ready */
  POOL_WORKER_EXITED = 4,   /* the process ended after ready (or after a stop) */
} pool_worker_state;

/* "starting", "ready", ... as the protocol writes them. */
const char *pool_worker_state_name(pool_worker_state s);

struct llorch_pool;

typedef struct pool_worker {
  struct llorch_pool *pool;
  struct pool_worker *next;
  char id[POOL_NAME_MAX];
  char model[POOL_MODEL_NAME_MAX];
  char file[POOL_FILE_MAX];                   /* relative to its model directory */
  char path[4096];                            /* the file as the worker opens it */
  char devices[POOL_MAX_WORKER_DEVICES][POOL_DEV_ID_MAX]; /* (n_devices) "cpu" / "gpu<N>" */
  int n_devices;
  int ctx, slots;
  pool_worker_state state;
  char url[192];                              /* from the ready callback; "" before */
  char token[2 * POOL_TOKEN_HEX + 1];         /* the worker's bearer token (LLORCH_WORKER_TOKEN in its environment) */
  char spawn_token[2 * POOL_TOKEN_HEX + 1];   /* its callback must present this */
  int pid;
  int port;                                   /* the port given with --listen; 0 = the worker's pick */
  uint64_t estimate_bytes;                    /* preflight need, bytes */
  uint64_t memory_bytes;                      /* reported by the ready callback; 0 before */
  int64_t started_at_ms;                      /* Unix epoch ms */

  /* exit (state failed/exited) */
  bool has_exit;
  int exit_code;                              /* -1 = none (signal, or not ended yet) */
  int exit_signal;                            /* 0 = none */
  char reason[320];
  char tail[POOL_STDERR_LINES][POOL_STDERR_LINE_MAX]; /* ring of the last stderr lines */
  int tail_first, tail_n;
  char partial[POOL_STDERR_LINE_MAX];         /* a stderr line still being read */
  size_t partial_len;                         /* bytes in partial (longer lines are cut) */
  bool partial_cut;

  /* reporting: a failed/exited worker stays listed until the orchestrator
   * answered 200 to a document that carried it in that state */
  uint64_t final_seq;                         /* seq of the first such document; 0 = none yet */
  bool final_acked;

  /* process (workers.c) */
  uv_process_t proc;
  uv_pipe_t err;
  uv_timer_t timer;                           /* stop grace, then the stderr drain wait */
  int open_handles;
  bool proc_exited, err_closed, term_sent, kill_sent, reaped;
} pool_worker;

/* Bytes a worker holds on one of its devices: the larger of its reported
 * figure and its estimate, split evenly over its devices. */
uint64_t pool_worker_device_bytes(const pool_worker *w);

/* True while the worker's process may still run (its memory still counts). */
bool pool_worker_alive(const pool_worker *w);

/* Writes "exit code 1", "signal SIGKILL", ... */
void pool_exit_describe(int code, int signal, char *out, size_t size);
/* "SIGKILL" for 9 ...; "SIG<n>" for others. Writes into buf. */
const char *pool_signal_name(int sig, char *buf, size_t size);

/* Appends a chunk of stderr to w's tail ring (complete lines; a partial line
 * waits for its end or pool_worker_tail_flush). */
void pool_worker_tail_feed(pool_worker *w, const char *data, size_t len);
void pool_worker_tail_flush(pool_worker *w);

/* ---- devices and the state document ---- */

/*
 * What a device has free for a new worker, and what the state document
 * reports, in bytes:
 *   CPU:  min(memory_total - what live workers on it hold, memory_free as
 *         measured) - the configured/total size is the budget, the machine's
 *         available memory a cap.
 *   CUDA: memory_free as NVML measures it - the estimates of workers still
 *         starting there (NVML already counts what ready workers allocated).
 */
uint64_t pool_device_free(const llorch_device_info *d, const pool_worker *workers);

/*
 * Preflight arithmetic: 0 when need fits free, else LLORCH_EINSUFFICIENT_MEMORY
 * with em: "<model> ctx C x S slots needs N bytes; <dev> has F free".
 */
int pool_preflight_check(const char *model, int ctx, int slots, const char *device, uint64_t need,
                         uint64_t free_bytes, llorch_errmsg *em);

/* Everything the state document is built from. */
typedef struct pool_state_view {
  const char *pool;
  const char *url;
  const char *boot_id;
  uint64_t seq;
  int64_t heartbeat_interval_ms;
  const llorch_device_info *devices; /* (n_devices) */
  int n_devices;
  const pool_model *models;          /* (n_models) */
  int n_models;
  const pool_worker *workers;        /* list */
} pool_state_view;

/*
 * The URL a worker is reached at: reported ("http://127.0.0.1:40123") as is
 * when public_host is "", else with its host replaced by public_host (an
 * IPv6 literal gets brackets). Returns 0, or LLORCH_EINVAL when reported is
 * not http://HOST:PORT or the result does not fit.
 */
int pool_worker_url(const char *reported, const char *public_host, char *out, size_t size);

/* Writes the state document (protocol section 2). */
void pool_state_write(llorch_jbuf *b, const pool_state_view *v);
/* Writes one worker object. */
void pool_worker_write(llorch_jbuf *b, const pool_worker *w, bool with_token);

/* ---- the pool (pool.c) ---- */

typedef struct llorch_pool {
  llorch_service *svc;
  const llorch_config *cfg;
  uv_loop_t *loop;
  llorch_http_client *client;
  llorch_gpu_inventory *inv;
  char orchestrator_url[512];   /* "" = no orchestrator: serve commands only */
  char cluster_token[256];      /* "" = no auth */
  bool local_orchestrator;      /* --role=all: the orchestrator is this service */
  char url[512];                /* advertise URL (a port 0 is replaced with the bound port) */
  char worker_host[256];        /* the host workers listen on (the pool's listen host) */
  char worker_public_host[256]; /* "" or the host put in workers' URLs (wildcard listen) */
  char callback_base[300];      /* "http://127.0.0.1:<port>": how a worker on this host reaches us */
  char boot_id[17];
  uint64_t seq;                 /* of the last document sent */
  uint64_t next_worker;         /* w-<n> ids */

  pool_model *models;           /* (n_models) the last scan */
  int n_models;
  pool_worker *workers;         /* every worker not yet reaped-and-acked */

  uv_timer_t heartbeat;         /* refresh + register/heartbeat */
  bool registered;
  bool sending;                 /* a register/heartbeat is in flight */
  int64_t backoff_ms;           /* while the orchestrator is unreachable */
  char orchestrator_id[128];
  bool heartbeat_closed;        /* the timer's close callback ran (shutdown) */
  uv_timer_t finish;            /* frees the client once everything else is done */
  bool finished;
  int inflight;                 /* calls to the orchestrator not yet done */
  bool stopping;

  llorch_metric *m_workers;     /* gauge by state */
  llorch_metric *m_spawns;      /* counter by outcome */
} pool;

int64_t pool_now_ms(void);
/* Fills out (2 * POOL_TOKEN_HEX + 1 bytes) with fresh random hex. */
int pool_random_hex(char *out, size_t bytes);

/* Fills in what is only known once the service listens (bound port). */
void pool_resolve_urls(pool *p);
/* Re-reads devices and models (heartbeat tick, GET /v2/state, preflight). */
void pool_refresh(pool *p);
/* Sends a worker_* event now (the state document follows in the next heartbeat anyway). */
void pool_send_event(pool *p, pool_worker *w, const char *type);
/* Writes the state document at the current seq. */
void pool_state_build(pool *p, llorch_jbuf *b, uint64_t seq);
/* Marks failed/exited workers carried by a document with seq as seen, and reaps the done ones. */
void pool_ack_seq(pool *p, uint64_t seq);
/* Drops workers that are reported and whose handles are closed. */
void pool_reap(pool *p);
/* Called by workers.c when the last worker handle closed while stopping. */
void pool_maybe_finish(pool *p);

/* ---- workers.c ---- */

/* POST /v2/workers, DELETE /v2/workers/{id}, POST /v2/workers/{id}/ready. */
void pool_on_workers(llorch_http_request *req, void *user);
/* SIGTERM, then SIGKILL after the grace period. Idempotent. */
void pool_worker_stop(pool_worker *w, const char *why);
/* Headers-time credential check of /v2/workers/{id}[/ready] (llorch_service_route_custom). */
int pool_authorize_workers(llorch_http_request *req, void *user, const char **why);
pool_worker *pool_worker_find(pool *p, const char *id);

#endif /* LLORCH_POOL_IMPL_H */
