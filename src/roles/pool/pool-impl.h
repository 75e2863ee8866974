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
 *   files.c    model files between pools: digests, sending, copying (fetch)
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
#include "llorch/memory.h"
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

/* ---- models ---- */


typedef struct pool_model {
  char name[POOL_FILE_MAX];   /* the file's stem ("tiny" for tiny.gguf) */
  char file[POOL_FILE_MAX];   /* relative to its directory ("tiny.gguf") */
  char arch[16];              /* "llama", "qwen2", "qwen3" */
  char quant[16];             /* type of most weight bytes: "Q8_0", "F16" */
  uint64_t params;            /* elements over all tensors */
  uint32_t ctx;               /* training context, tokens */
  uint64_t file_bytes;        /* bytes on disk */
  uint64_t tensor_bytes;      /* bytes of tensor data */
  llorch_mem_coeffs est[2];   /* [LLORCH_DEVICE_CPU], [LLORCH_DEVICE_CUDA]: llorch_mem_need's */
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

/*
 * The memory need of one worker of the file at path: llorch_mem_need of the
 * file's coefficients (the same figure the orchestrator computes from the
 * state document), and the file's training context.
 */
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
  char chat_template[4096];                   /* --chat-template for the worker ("chatml", a path) or "" */
  char devices[POOL_MAX_WORKER_DEVICES][POOL_DEV_ID_MAX]; /* (n_devices) "cpu" / "gpu<N>" */
  int n_devices;
  int ctx, slots;
  pool_worker_state state;
  char url[192];                              /* from the ready callback; "" before */
  char token[2 * POOL_TOKEN_HEX + 1];         /* the worker's bearer token (LLORCH_WORKER_TOKEN in its environment) */
  char spawn_token[2 * POOL_TOKEN_HEX + 1];   /* its callback must present this */
  int pid;
  int port;                                   /* the port given with --listen; 0 = the worker's pick */
  uint64_t estimate_bytes;                    /* preflight need (llorch_mem_need), bytes */
  uint64_t actual_bytes;                      /* measured: the ready callback's figure, then the
                                               * process's peak resident memory (CPU), bytes; 0 before */
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

/* Bytes a worker holds (llorch_mem_held of its estimate and its measured
 * use): what the pool counts and what it reports as its memory_bytes. */
uint64_t pool_worker_held_bytes(const pool_worker *w);
/* ... on each of its devices (llorch_mem_device_share). */
uint64_t pool_worker_device_bytes(const pool_worker *w);
/* Reads the resident memory of each live CPU worker's process (its peak) into
 * actual_bytes; CUDA workers keep the device figure of their ready report. */
void pool_workers_measure(pool_worker *workers);

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

/* ---- model files between pools (files.c) ---- */

/* A SHA-256 of a whole file, computed on the libuv threadpool. */
typedef struct pool_hash_job {
  uv_work_t work;
  char path[4400];
  int err;                    /* 0 or -errno */
  uint64_t bytes;             /* bytes hashed */
  char hex[65];               /* the digest, lower-case hex */
  bool sync_first;            /* fsync before hashing (a fresh copy) */
} pool_hash_job;

typedef enum pool_fetch_state {
  POOL_FETCH_RUNNING = 0,     /* bytes are moving */
  POOL_FETCH_VERIFYING = 1,   /* every byte is in; hashing the part */
  POOL_FETCH_INTERRUPTED = 2, /* the source went away: the part is kept for a resume */
  POOL_FETCH_FAILED = 3,      /* verification, disk or protocol failure: the part is deleted */
  POOL_FETCH_DONE = 4,        /* verified and renamed into place */
  POOL_FETCH_CANCELLED = 5,   /* DELETE /v2/files/fetch/{file} or shutdown: the part is deleted */
} pool_fetch_state;

/* "running", "verifying", ... as the state document writes them. */
const char *pool_fetch_state_name(pool_fetch_state s);

struct llorch_pool;

/* One copy of a model file from another pool (POST /v2/files/fetch). */
typedef struct pool_fetch {
  struct llorch_pool *p;
  struct pool_fetch *next;
  char file[POOL_FILE_MAX];
  char id[64];                /* the orchestrator's name for this attempt, echoed in reports */
  char sha256[65];            /* what the copy must hash to */
  char source[256];           /* the source pool's URL */
  char tmp[4400];             /* "<dir>/.llorch-fetch-<file>.part" */
  char final[4400];           /* "<dir>/<file>" */
  uint64_t size;              /* bytes the file has */
  uint64_t done;              /* bytes received (in the part or waiting to be written) */
  uint64_t written;           /* bytes in the part */
  uint64_t resumed_from;      /* bytes the part had when this attempt started */
  pool_fetch_state state;
  char error[400];
  char answer[240];           /* the start of a non-2xx answer from the source, for the error */
  size_t answer_len;
  int fd;                     /* the part, -1 when closed */
  llorch_http_call *call;     /* the GET to the source; NULL when none */
  /* two buffers: one being written, one filling from the network */
  char *pending, *inflight;
  size_t pending_len, pending_cap, inflight_len, inflight_cap;
  uv_fs_t wfs;
  bool writing;               /* wfs in flight */
  bool hashing;               /* job in flight */
  bool body_complete;         /* the response ended with every byte */
  bool throttled;             /* paused by pool.fetch_bandwidth until the throttle timer */
  bool settled;               /* the end was carried out (fd closed, part deleted or kept) */
  uv_timer_t throttle;
  pool_hash_job job;
  int64_t started_ms, finished_ms, window_start_ms;
  uint64_t window_bytes;      /* bytes in the current rate window */
  double rate;                /* bytes/s over the last window */
} pool_fetch;

/*
 * Parses a Range header of a file request: only "bytes=N-" (one open range:
 * what a resumed copy asks for). Returns 0 with *start, or LLORCH_EINVAL with
 * em naming the header and showing the value.
 */
int pool_range_parse(const char *value, uint64_t *start, llorch_errmsg *em);

/* Writes one copy / the list (the state document's "fetches"). */
void pool_fetch_write(llorch_jbuf *b, const pool_fetch *f);
void pool_fetches_write(llorch_jbuf *b, const pool_fetch *list);

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
  const pool_fetch *fetches;         /* list; NULL = none */
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

  struct files_sha *shas;       /* digest cache of model files (files.c) */
  pool_fetch *fetches;          /* copies from other pools, newest first */
  int corrupt_sends;            /* test hook: bodies still to corrupt (files.c) */

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

/* ---- files.c ---- */

/* GET /v2/files/{file}[/sha256], POST /v2/files/fetch, DELETE /v2/files/fetch/{file}. */
int pool_files_attach(pool *p);
/* Cancels running copies and deletes every part (the pool is stopping). */
void pool_files_shutdown(pool *p);
/* True when no copy has I/O in flight. */
bool pool_files_idle(const pool *p);
/* Closes the copies' handles (their memory goes in the close callbacks). */
void pool_files_close(pool *p);
/* Frees the digest cache. */
void pool_files_free(pool *p);
/* Sends the state document soon (a copy changed state). */
void pool_fetch_report_soon(pool *p);

#endif /* LLORCH_POOL_IMPL_H */
