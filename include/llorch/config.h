/*
 * llorch configuration: defaults < YAML file < command-line flags.
 *
 * One table of options (src/config/options.c) drives YAML parsing, defaults,
 * validation, command-line overrides, `llorch --help` and
 * `llorch config --check/--dump`, as redis's static_configs[] does. Every
 * option has a dotted YAML path ("worker.slots"), a type, a default, a
 * validation rule, the roles it applies to and the field of llorch_config
 * where its value lands; the roles read the struct below and nothing else.
 *
 * Value syntax (file and flags alike):
 *   durations  "500ms", "10s", "5m", "1h", a plain number of seconds, or -1
 *              where the option allows "never"; stored as int64_t milliseconds.
 *   byte sizes "512MiB", "8GiB", "16KiB", "4KB" (decimal units), or a plain
 *              number of bytes; stored as uint64_t bytes.
 *   lists      a YAML sequence, or on the command line a comma-separated
 *              value ("--gpus=0,1"); repeating a list flag appends.
 *
 * A wrong file or flag stops start-up with ONE line naming where (file:line:
 * column, or the flag), the key, the value seen and what was expected:
 *   config/x.yaml:7:12: 'worker.slots': expected an integer in 1..256, got "many"
 */
#ifndef LLORCH_CONFIG_H
#define LLORCH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "llorch/error.h"
#include "llorch/log.h"

/* ---- roles ---- */

/* Which process this is. Also used as a bit set: an option applies to the
 * roles whose bits are set in its mask. */
typedef enum llorch_role {
  LLORCH_ROLE_NONE = 0,         /* not chosen: `llorch config --dump` without --role */
  LLORCH_ROLE_ORCHESTRATOR = 1,
  LLORCH_ROLE_POOL = 2,
  LLORCH_ROLE_WORKER = 4,
  LLORCH_ROLE_ALL = 8,          /* orchestrator + local pool in one process */
} llorch_role;

/* "orchestrator" | "pool" | "worker" | "all" -> role; LLORCH_EINVAL otherwise. */
int llorch_role_parse(const char *s, llorch_role *out);
/* "orchestrator" ... ; "none" for LLORCH_ROLE_NONE. */
const char *llorch_role_name(llorch_role role);

/* ---- value types stored in llorch_config ---- */

/* A list of strings; items are owned by the config (freed by llorch_config_free). */
typedef struct llorch_strlist {
  char **items;  /* (count) NUL-terminated strings */
  size_t count;
} llorch_strlist;

typedef enum llorch_priority {
  LLORCH_PRIORITY_INTERACTIVE = 0,
  LLORCH_PRIORITY_BATCH = 1,
} llorch_priority;

/* One entry of orchestrator.models: the catalog. */
typedef struct llorch_model_entry {
  char *name;              /* client-visible model name (unique in the catalog) */
  char *file;              /* GGUF path relative to a pool's model_dirs entry (no "..") */
  int ctx;                 /* tokens per slot; 0 = the model's context length */
  int slots;               /* concurrent sequences per worker */
  llorch_strlist pins;     /* "pool" or "pool/device" where it may run; empty = anywhere */
  int min_replicas;        /* workers kept running even when idle */
  int max_replicas;        /* upper bound on workers; >= min_replicas */
  int64_t keep_alive_ms;   /* idle time before it may be evicted; -1 = never */
  llorch_priority priority; /* queue class of its requests */
  char *chat_template;     /* "chatml", a .jinja file name in the pools' model_dirs, or NULL: the GGUF's */
  int reasoning_format;    /* 0 = reasoning_content, 1 = none (sent with each request) */
} llorch_model_entry;

typedef struct llorch_model_list {
  llorch_model_entry *items; /* (count) */
  size_t count;
} llorch_model_list;

/* ---- the configuration ---- */

/* Every field is filled (defaults included) once llorch_config_load()
 * returns 0. Strings are owned by the config; an unset optional string is
 * NULL, never "". */
typedef struct llorch_config {
  llorch_role role;            /* the role it was loaded for */
  char *path;                  /* the YAML file it came from, or NULL */

  /* common */
  char *listen;                /* "HOST:PORT"; default depends on the role */
  struct {
    llorch_log_level level;
    llorch_log_format format;
  } log;
  struct {
    uint64_t max_header_bytes; /* bytes of request line + headers (-> 431) */
    int max_headers;           /* header count (-> 431) */
    uint64_t max_body_bytes;   /* bytes of request body (-> 413) */
    int64_t header_timeout_ms; /* all headers must arrive within this */
    int64_t body_timeout_ms;   /* longest gap between body bytes */
    int64_t body_deadline_ms;  /* a whole body must arrive within this; 0 = no bound */
    int64_t idle_timeout_ms;   /* idle keep-alive connections are closed after this */
    int64_t sse_keepalive_ms;  /* ": keep-alive" comment interval on SSE streams */
    int max_connections;       /* open connections; 0 = unlimited */
    int max_connections_per_peer; /* open connections from one IP address; 0 = unlimited */
  } http;
  struct {
    int max_messages;          /* chat messages per request (-> 400) */
    int max_content_parts;     /* content parts over all messages (-> 400) */
    int max_stop;              /* stop strings (-> 400) */
    int max_tools;             /* tool definitions (-> 400) */
    int max_n;                 /* choices (n) per chat/completions request (-> 400) */
    int max_json_values;       /* JSON values in one body, checked before parsing (-> 400/413) */
  } request;
  int64_t shutdown_grace_ms;   /* SIGTERM: in-flight work gets this long */

  /* worker */
  struct {
    char *model;               /* GGUF path (required to serve) */
    char *device;              /* "cpu" | "cuda:N[,M...]" */
    int ctx;                   /* tokens per slot; 0 = the model's context length */
    int slots;                 /* concurrent sequences (a cap, not a memory reservation) */
    int threads;               /* CPU threads; 0 = online CPUs */
    int kv_cache_tokens;       /* KV pool size in tokens; 0 = slots * ctx */
    bool prefix_cache;         /* reuse the KV of equal prompt prefixes */
    int step_tokens;           /* tokens per engine step, decode + prompt chunks; 0 = no limit */
    char *token;               /* bearer token for every non-/health endpoint, or NULL */
    int queue_max;             /* requests waiting for a slot before 503 */
    int64_t queue_timeout_ms;  /* longest wait for a slot before 503 */
    uint64_t queue_max_bytes;  /* request bytes of queued jobs before 429; 0 = unbounded */
    char *id;                  /* worker id given by the pool, or NULL */
    char *pool_callback;       /* URL the ready/failed report goes to, or NULL */
    char *spawn_token;         /* token echoed to the pool in that report, or NULL */
    char *chat_template;       /* "chatml", a .jinja path, or NULL: the model's own template */
    int tool_call_format;      /* index in "auto", then llorch_tool_format's names */
    int reasoning_format;      /* 0 = reasoning_content, 1 = none */
    char *test_script;         /* test hook: scripted replies (needs LLORCH_TEST_HOOKS=1), or NULL */
  } worker;

  /* pool manager */
  struct {
    char *name;                /* default: the host name */
    llorch_strlist gpus;       /* GPU indices offered; empty = all */
    char *orchestrator;        /* orchestrator base URL, or NULL */
    char *cluster_token;       /* shared secret with the orchestrator, or NULL */
    llorch_strlist model_dirs; /* directories scanned for .gguf files */
    char *advertise_url;       /* how others reach this pool; default derived from listen */
    int64_t heartbeat_interval_ms;
    int64_t stop_grace_ms;     /* SIGTERM to SIGKILL when stopping a worker */
    uint64_t cpu_memory;       /* bytes the CPU device offers; 0 = from RAM */
    int worker_port_base;      /* first port for spawned workers; 0 = any free port */
    uint64_t fetch_bandwidth;  /* bytes/s a copy from another pool may take; 0 = unlimited */
  } pool;

  /* orchestrator */
  struct {
    llorch_strlist api_keys;   /* client bearer keys for /v1/...; empty = no auth */
    llorch_strlist admin_keys; /* operator bearer keys for /v2/... and /metrics */
    char *cluster_token;       /* pools must present this, or NULL */
    struct {
      int max_total;           /* queued requests over all classes (-> 429) */
      int64_t timeout_ms;      /* longest wait in the queue (-> 503) */
      int max_interactive;     /* per-class bound; 0 = only max_total */
      int max_batch;           /* per-class bound; 0 = only max_total */
      uint64_t max_bytes;      /* bytes held by admitted requests (-> 429); 0 = unbounded */
    } queue;
    struct {
      int max;                 /* registered pools (-> 429 on register) */
      int64_t forget_after_ms; /* a pool down this long is forgotten; 0 = never */
      int max_events;          /* events per POST .../events (-> 413) */
      int max_devices;         /* devices per state document (-> 413) */
      int max_models;          /* models per state document (-> 413) */
      int max_workers;         /* workers per state document (-> 413) */
    } pools;
    int heartbeat_miss_limit;  /* missed heartbeats before a pool is down */
    int retry_max;             /* retries of a request whose worker died before its first token */
    bool prefix_routing;       /* prefer the replica likely to hold a request's prefix */
    struct {
      int64_t window_ms;       /* a resumable stream's client may be away this long */
      uint64_t max_stream_bytes; /* events kept per resumable stream */
      uint64_t max_bytes;      /* events kept over all resumable streams */
    } resume;
    llorch_model_list models;  /* the catalog */
  } orchestrator;
} llorch_config;

/* ---- loading ---- */

/*
 * The whole start-up sequence: defaults for role, then the YAML file at path
 * (NULL = none), then the flags in argv[0..argc) (no program name, no --role
 * or --config: main.c takes those out), then the checks across options and
 * the derived defaults (pool.name, pool.advertise_url).
 *
 * Returns 0, or a negative LLORCH_E* code with em holding one line:
 *   LLORCH_EINVAL   unknown flag, flag not valid for the role, missing value
 *   LLORCH_EFORMAT  YAML syntax error, unknown key, wrong type
 *   LLORCH_ERANGE   value out of range
 *   LLORCH_EIO / LLORCH_ENOENT  file not readable
 * On failure cfg is freed; on success the caller calls llorch_config_free().
 */
int llorch_config_load(llorch_config *cfg, llorch_role role, const char *path,
                       int argc, char **argv, llorch_errmsg *em);

/* The steps of llorch_config_load(), for tests and tools. */

/* Fills every option with its default for role (LLORCH_ROLE_NONE: the generic
 * default). Returns 0 or LLORCH_ENOMEM. */
int llorch_config_init(llorch_config *cfg, llorch_role role);
/* Reads a YAML file over the current values. */
int llorch_config_load_file(llorch_config *cfg, const char *path, llorch_errmsg *em);
/* Same for YAML text in memory; name is what error lines call the file. */
int llorch_config_load_string(llorch_config *cfg, const char *name, const char *text,
                              size_t len, llorch_errmsg *em);
/*
 * Applies the environment over the current values: every option but the model
 * catalog can be given as LLORCH_<KEY> with dots as underscores, upper case
 * (LLORCH_LISTEN, LLORCH_WORKER_TOKEN, LLORCH_POOL_CLUSTER_TOKEN,
 * LLORCH_ORCHESTRATOR_API_KEYS as a comma-separated list). Secrets need not
 * appear in a file or on a command line that `ps` shows, and a container is
 * configured without a file. Only options that apply to cfg->role are read.
 * llorch_config_load() applies them after the file and before the flags. A
 * bad value is an error naming the variable (and, unless a secret, the value).
 */
int llorch_config_apply_env(llorch_config *cfg, llorch_errmsg *em);
/* Writes "LLORCH_WORKER_TOKEN" for "worker.token" into buf. */
void llorch_config_env_name(const char *key, char *buf, size_t n);
/* Applies command-line flags (see llorch_config_load) over the current values. */
int llorch_config_apply_args(llorch_config *cfg, int argc, char **argv, llorch_errmsg *em);
/* Checks across options (min_replicas <= max_replicas, unique model names) and
 * fills derived defaults. */
int llorch_config_finish(llorch_config *cfg, llorch_errmsg *em);

/*
 * True when cfg->listen binds loopback only (127.0.0.0/8, ::1, localhost):
 * no other machine can connect. A role listening beyond loopback must have
 * its machine credential (cluster token, worker token); llorch_config_finish
 * refuses the config otherwise.
 */
bool llorch_config_listen_is_loopback(const llorch_config *cfg);

/* Frees every string and list and zeroes cfg. Safe on a zeroed config. */
void llorch_config_free(llorch_config *cfg);

/* ---- output ---- */

#define LLORCH_CONFIG_DUMP_SECRETS 1u /* print tokens and keys instead of "<redacted>" */

/* Writes cfg as YAML that llorch_config_load_file() reads back to the same
 * values: the options that apply to cfg->role (every option for
 * LLORCH_ROLE_NONE). Returns 0 or LLORCH_EIO. */
int llorch_config_dump(const llorch_config *cfg, FILE *out, unsigned flags);

/* Writes the flags valid for role (all of them for LLORCH_ROLE_NONE) with their
 * types, defaults and help text, generated from the option table. */
void llorch_config_usage(FILE *out, llorch_role role);

/* Writes the whole option table as Markdown tables (key, flag, roles,
 * default, meaning; then the fields of an orchestrator.models entry): the
 * README's configuration reference is this output, checked by a test. */
void llorch_config_reference(FILE *out);

#endif /* LLORCH_CONFIG_H */
