/*
 * The option table: every setting llorch reads, in one place. Parsing,
 * defaults, validation, flags, --help and the dump all walk this table, so
 * adding an option is one entry here plus one field in llorch_config.
 *
 * Options of one YAML section must stay next to each other: the dump writes
 * nested mappings by walking the table in order.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "config-impl.h"

/* ---- syntax checks for string values ---- */

static int check_port(const char *s) {
  if (*s == '\0' || strlen(s) > 5) return -1;
  for (const char *p = s; *p; p++)
    if (!isdigit((unsigned char)*p)) return -1;
  return atoi(s) <= 65535 ? 0 : -1;
}

/* "HOST:PORT", "[v6]:PORT" or ":PORT"; port 0 asks the kernel for a free port. */
static int check_listen(const char *s) {
  const char *colon;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close || close == s + 1 || close[1] != ':') return -1;
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (!colon || memchr(s, ':', (size_t)(colon - s))) return -1;
    for (const char *p = s; p < colon; p++)
      if (isspace((unsigned char)*p) || *p == '/') return -1;
  }
  return check_port(colon + 1);
}

/* "cpu" or "cuda:N[,M...]" */
static int check_device(const char *s) {
  if (strcmp(s, "cpu") == 0) return 0;
  if (strncmp(s, "cuda:", 5) != 0) return -1;
  const char *p = s + 5;
  for (;;) {
    if (!isdigit((unsigned char)*p)) return -1;
    while (isdigit((unsigned char)*p)) p++;
    if (*p == '\0') return 0;
    if (*p++ != ',') return -1;
  }
}

static int check_url(const char *s) {
  const char *rest;
  if (strncmp(s, "http://", 7) == 0) rest = s + 7;
  else if (strncmp(s, "https://", 8) == 0) rest = s + 8;
  else return -1;
  if (*rest == '\0' || *rest == '/' || *rest == ':') return -1;
  for (const char *p = rest; *p; p++)
    if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p)) return -1;
  return 0;
}

static int check_gpu_index(const char *s) {
  if (*s == '\0' || strlen(s) > 4) return -1;
  for (const char *p = s; *p; p++)
    if (!isdigit((unsigned char)*p)) return -1;
  return 0;
}

/* Model names appear in URLs and JSON: keep them printable and slash-free. */
static int check_model_name(const char *s) {
  if (*s == '\0' || strlen(s) > 128) return -1;
  for (const char *p = s; *p; p++)
    if (!isgraph((unsigned char)*p) || *p == '/') return -1;
  return 0;
}

/* "pool" or "pool/device" */
static int check_pin(const char *s) {
  const char *slash = strchr(s, '/');
  if (*s == '\0' || s[0] == '/') return -1;
  if (slash && (slash[1] == '\0' || strchr(slash + 1, '/'))) return -1;
  for (const char *p = s; *p; p++)
    if (!isgraph((unsigned char)*p)) return -1;
  return 0;
}

/* A path relative to a pool's model directory: never absolute, never "..",
 * so a catalog entry cannot escape the pools' model_dirs. */
static int check_model_file(const char *s) {
  if (*s == '\0' || s[0] == '/') return -1;
  for (const char *p = s; *p;) {
    size_t len = strcspn(p, "/");
    if (len == 0 || (len == 2 && p[0] == '.' && p[1] == '.')) return -1;
    p += len;
    if (*p == '/') p++;
  }
  return 0;
}

/* A catalog chat_template: "chatml", or a relative .jinja path like a model file. */
static int check_chat_template(const char *s) {
  if (strcmp(s, "chatml") == 0) return 0;
  size_t n = strlen(s);
  return n > 6 && strcmp(s + n - 6, ".jinja") == 0 && !strchr(s, '/') ? check_model_file(s) : -1;
}

/* Pool names go into URLs, metrics labels and device ids: [A-Za-z0-9._-]{1,63}. */
static int check_pool_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 63) return -1;
  for (const char *p = s; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') return -1;
  return 0;
}

/* Tokens and keys: printable ASCII without spaces (they travel as
 * "Authorization: Bearer <token>"), at most 200 bytes. Empty is refused
 * elsewhere: an empty secret must never read as "no authentication". */
static int check_secret(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 200) return -1;
  for (const char *p = s; *p; p++)
    if (!isgraph((unsigned char)*p)) return -1;
  return 0;
}
#define SECRET_EXPECT "a non-empty token of printable characters without spaces (at most 200)"

/* ---- the table ---- */

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"auto", "text", "json", NULL};
static const char *const priorities[] = {"interactive", "batch", NULL};
/* "auto" then the names of llorch_tool_format (include/llorch/openai.h), in its order. */
static const char *const tool_call_formats[] = {"auto",    "none",        "json",     "hermes",
                                                "llama3",  "mistral",     "qwen3_coder", "deepseek",
                                                "functionary", NULL};
static const char *const reasoning_formats[] = {"reasoning_content", "none", NULL};

#define OFF(field) offsetof(llorch_config, field)
#define POOL (LLORCH_ROLE_POOL | LLORCH_ROLE_ALL)
#define ORCH (LLORCH_ROLE_ORCHESTRATOR | LLORCH_ROLE_ALL)
#define WORKER LLORCH_ROLE_WORKER
#define KiB (INT64_C(1) << 10)
#define MiB (INT64_C(1) << 20)
#define GiB (INT64_C(1) << 30)
#define SEC INT64_C(1000)
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

const config_option config_options[] = {
    /* ---- common ---- */
    {.name = "listen", .flag = "listen", .type = CONFIG_TYPE_STRING, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(listen), .def = "127.0.0.1:8080",
     .def_role = {[CONFIG_ROLE_IX_POOL] = "127.0.0.1:8081", [CONFIG_ROLE_IX_WORKER] = "127.0.0.1:8090"},
     .check = check_listen, .expect = "HOST:PORT (port 0..65535)", .meta = "HOST:PORT",
     .help = "address the HTTP server listens on (orchestrator/all 127.0.0.1:8080, pool 127.0.0.1:8081, "
             "worker 127.0.0.1:8090); beyond loopback needs the role's token (see Security)"},
    {.name = "log.level", .flag = "log-level", .type = CONFIG_TYPE_ENUM, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(log.level), .def = "info", .enum_names = log_levels, .meta = "LEVEL",
     .help = "lowest level logged"},
    {.name = "log.format", .flag = "log-format", .type = CONFIG_TYPE_ENUM, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(log.format), .def = "auto", .enum_names = log_formats, .meta = "FORMAT",
     .help = "text on a terminal and JSON lines otherwise (auto), or forced"},
    {.name = "http.max_header_bytes", .type = CONFIG_TYPE_BYTES, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.max_header_bytes), .def = "16KiB", .min = 1 * KiB, .max = 1 * MiB,
     .help = "request line + headers larger than this get 431"},
    {.name = "http.max_headers", .type = CONFIG_TYPE_INT, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.max_headers), .def = "100", .min = 1, .max = 10000,
     .help = "requests with more headers get 431"},
    {.name = "http.max_body_bytes", .type = CONFIG_TYPE_BYTES, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.max_body_bytes), .def = "8MiB", .min = 1 * KiB, .max = 1 * GiB,
     .help = "request bodies larger than this get 413"},
    {.name = "http.header_timeout", .type = CONFIG_TYPE_DURATION, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.header_timeout_ms), .def = "10s", .min = 100, .max = HOUR,
     .help = "a request's headers must arrive within this"},
    {.name = "http.body_timeout", .type = CONFIG_TYPE_DURATION, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.body_timeout_ms), .def = "30s", .min = 100, .max = HOUR,
     .help = "longest gap between body bytes of a request"},
    {.name = "http.idle_timeout", .type = CONFIG_TYPE_DURATION, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.idle_timeout_ms), .def = "60s", .min = 100, .max = DAY,
     .help = "idle keep-alive connections are closed after this"},
    {.name = "http.sse_keepalive", .type = CONFIG_TYPE_DURATION, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.sse_keepalive_ms), .def = "15s", .min = 100, .max = HOUR,
     .help = "interval of ': keep-alive' lines on event streams"},
    {.name = "http.max_connections", .type = CONFIG_TYPE_INT, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.max_connections), .def = "1024", .min = 0, .max = 1000000,
     .help = "open connections accepted at once (lowered to fit RLIMIT_NOFILE); at the cap the "
             "oldest idle or unfinished connection is closed for a new one; 0 = only the descriptor "
             "limit"},
    {.name = "http.max_connections_per_peer", .type = CONFIG_TYPE_INT, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.max_connections_per_peer), .def = "512", .min = 0, .max = 1000000,
     .help = "open connections from one IP address; 0 = unlimited"},
    {.name = "http.body_deadline", .type = CONFIG_TYPE_DURATION, .roles = CONFIG_ROLES_ANY,
     .offset = OFF(http.body_deadline_ms), .def = "60s", .min = 0, .max = DAY,
     .help = "a whole request body must arrive within this (408 after); 0 = no bound"},

    /* ---- request limits (OpenAI bodies: orchestrator and worker) ---- */
    {.name = "request.max_messages", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_messages), .def = "1024", .min = 1, .max = 1000000,
     .help = "chat messages in one request (400 past it)"},
    {.name = "request.max_content_parts", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_content_parts), .def = "1024", .min = 1, .max = 1000000,
     .help = "content parts over all messages of one request (400 past it)"},
    {.name = "request.max_stop", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_stop), .def = "4", .min = 1, .max = 16,
     .help = "stop strings in one request (400 past it)"},
    {.name = "request.max_n", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_n), .def = "8", .min = 1, .max = 128,
     .help = "choices (n) in one chat or completions request (400 past it)"},
    {.name = "request.max_tools", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_tools), .def = "128", .min = 0, .max = 100000,
     .help = "tool definitions in one request (400 past it)"},
    {.name = "request.max_json_values", .type = CONFIG_TYPE_INT, .roles = ORCH | WORKER,
     .offset = OFF(request.max_json_values), .def = "65536", .min = 16, .max = 100000000,
     .help = "JSON values in one request or pool document, counted before parsing (each costs "
             "~64 bytes parsed); 413 past it"},
    {.name = "shutdown_grace", .flag = "shutdown-grace", .type = CONFIG_TYPE_DURATION,
     .roles = CONFIG_ROLES_ANY, .offset = OFF(shutdown_grace_ms), .def = "30s", .min = 0,
     .max = HOUR, .meta = "DURATION",
     .help = "on SIGTERM/SIGINT, in-flight requests get this long to finish"},

    /* ---- worker ---- */
    {.name = "worker.model", .flag = "model", .type = CONFIG_TYPE_STRING, .roles = WORKER,
     .offset = OFF(worker.model), .meta = "FILE", .help = "GGUF model file to serve (required)"},
    {.name = "worker.device", .flag = "device", .type = CONFIG_TYPE_STRING, .roles = WORKER,
     .offset = OFF(worker.device), .def = "cpu", .check = check_device,
     .expect = "cpu or cuda:N[,M...]", .meta = "DEV", .help = "cpu or cuda:N[,M] (layers split over GPUs)"},
    {.name = "worker.ctx", .flag = "ctx", .type = CONFIG_TYPE_INT, .roles = WORKER,
     .offset = OFF(worker.ctx), .def = "0", .min = 0, .max = 1 << 20, .meta = "N",
     .help = "context tokens per slot; 0 = the model's context length"},
    {.name = "worker.chat_template", .flag = "chat-template", .type = CONFIG_TYPE_STRING,
     .roles = WORKER, .offset = OFF(worker.chat_template), .meta = "chatml|FILE",
     .help = "chat template when the model has none or another is wanted: chatml or a .jinja file; "
             "default: the GGUF's tokenizer.chat_template"},
    {.name = "worker.slots", .flag = "slots", .type = CONFIG_TYPE_INT, .roles = WORKER,
     .offset = OFF(worker.slots), .def = "4", .min = 1, .max = 256, .meta = "N",
     .help = "requests decoded together (continuous batching): a cap, the KV memory is "
             "worker.kv_cache_tokens"},
    {.name = "worker.kv_cache_tokens", .flag = "kv-cache-tokens", .type = CONFIG_TYPE_INT,
     .roles = WORKER, .offset = OFF(worker.kv_cache_tokens), .def = "0", .min = 0,
     .max = 1 << 30, .meta = "N",
     .help = "KV cache pool in tokens, shared by all slots in blocks of 16; 0 = slots x ctx"},
    {.name = "worker.prefix_cache", .flag = "prefix-cache", .type = CONFIG_TYPE_BOOL,
     .roles = WORKER, .offset = OFF(worker.prefix_cache), .def = "true",
     .help = "reuse the KV cache of a prompt's longest cached prefix (automatic prefix caching)"},
    {.name = "worker.step_tokens", .flag = "step-tokens", .type = CONFIG_TYPE_INT, .roles = WORKER,
     .offset = OFF(worker.step_tokens), .def = "64", .min = 0, .max = 65536, .meta = "N",
     .help = "tokens per engine step while streams decode, their tokens and prompt chunks (no more "
             "than decode tokens) together: running streams keep their pace; 0 = no limit"},
    {.name = "worker.threads", .flag = "threads", .type = CONFIG_TYPE_INT, .roles = WORKER,
     .offset = OFF(worker.threads), .def = "0", .min = 0, .max = 1024, .meta = "N",
     .help = "CPU threads; 0 = online CPUs"},
    {.name = "worker.token", .flag = "token", .type = CONFIG_TYPE_STRING, .roles = WORKER,
     .offset = OFF(worker.token), .flags = CONFIG_OPT_SECRET, .meta = "TOKEN",
     .check = check_secret, .expect = SECRET_EXPECT,
     .help = "bearer token required on every endpoint but /health/*; required beyond loopback"},
    {.name = "worker.queue_max", .flag = "queue-max", .type = CONFIG_TYPE_INT, .roles = WORKER,
     .offset = OFF(worker.queue_max), .def = "16", .min = 0, .max = 100000, .meta = "N",
     .help = "requests waiting for a free slot before 503"},
    {.name = "worker.queue_timeout", .flag = "queue-timeout", .type = CONFIG_TYPE_DURATION,
     .roles = WORKER, .offset = OFF(worker.queue_timeout_ms), .def = "30s", .min = 0, .max = HOUR,
     .meta = "DURATION", .help = "longest wait for a free slot before 503"},
    {.name = "worker.queue_max_bytes", .type = CONFIG_TYPE_BYTES, .roles = WORKER,
     .offset = OFF(worker.queue_max_bytes), .def = "256MiB", .min = 0, .max = INT64_MAX,
     .help = "request body bytes of queued and running jobs before 429; 0 = unbounded"},
    {.name = "worker.id", .flag = "worker-id", .type = CONFIG_TYPE_STRING, .roles = WORKER,
     .offset = OFF(worker.id), .meta = "ID", .help = "id given by the pool that started it"},
    {.name = "worker.pool_callback", .flag = "pool-callback", .type = CONFIG_TYPE_STRING,
     .roles = WORKER, .offset = OFF(worker.pool_callback), .check = check_url,
     .expect = "an http:// or https:// URL", .meta = "URL",
     .help = "where to POST ready/failed after loading"},
    {.name = "worker.spawn_token", .flag = "spawn-token", .type = CONFIG_TYPE_STRING,
     .roles = WORKER, .offset = OFF(worker.spawn_token), .flags = CONFIG_OPT_SECRET,
     .check = check_secret, .expect = SECRET_EXPECT, .meta = "TOKEN", .help = "token sent back to the pool with the ready/failed report"},
    {.name = "worker.tool_call_format", .flag = "tool-call-format", .type = CONFIG_TYPE_ENUM,
     .roles = WORKER, .offset = OFF(worker.tool_call_format), .def = "auto",
     .enum_names = tool_call_formats,
     .help = "how the model writes tool calls; auto = recognised from its chat template"},
    {.name = "worker.reasoning_format", .flag = "reasoning-format", .type = CONFIG_TYPE_ENUM,
     .roles = WORKER, .offset = OFF(worker.reasoning_format), .def = "reasoning_content",
     .enum_names = reasoning_formats,
     .help = "thinking blocks -> reasoning_content, or none (left in content); a request's "
             "reasoning_format wins"},
    {.name = "worker.test_script", .flag = "test-script", .type = CONFIG_TYPE_STRING,
     .roles = WORKER, .offset = OFF(worker.test_script), .meta = "FILE",
     .help = "TESTS ONLY: replay scripted replies instead of sampling; refused unless "
             "LLORCH_TEST_HOOKS=1"},

    /* ---- pool manager ---- */
    {.name = "pool.name", .flag = "name", .type = CONFIG_TYPE_STRING, .roles = POOL,
     .offset = OFF(pool.name), .check = check_pool_name, .expect = "a name of [A-Za-z0-9._-]{1,63}",
     .meta = "NAME", .help = "pool name in the cluster (default: host name)"},
    {.name = "pool.gpus", .flag = "gpus", .type = CONFIG_TYPE_STRLIST, .roles = POOL,
     .offset = OFF(pool.gpus), .check = check_gpu_index, .expect = "a GPU index (0, 1, ...)",
     .meta = "0,1", .help = "GPUs offered to the cluster; empty = all"},
    {.name = "pool.orchestrator", .flag = "orchestrator", .type = CONFIG_TYPE_STRING,
     .roles = LLORCH_ROLE_POOL, .offset = OFF(pool.orchestrator), .check = check_url,
     .expect = "an http:// or https:// URL", .meta = "URL",
     .help = "orchestrator to register with"},
    {.name = "pool.cluster_token", .flag = "cluster-token", .type = CONFIG_TYPE_STRING,
     .roles = LLORCH_ROLE_POOL, .offset = OFF(pool.cluster_token), .flags = CONFIG_OPT_SECRET,
     .check = check_secret, .expect = SECRET_EXPECT, .meta = "TOKEN",
     .help = "shared secret presented to the orchestrator and required on /v2/*; required beyond loopback"},
    {.name = "pool.model_dirs", .flag = "model-dir", .type = CONFIG_TYPE_STRLIST, .roles = POOL,
     .offset = OFF(pool.model_dirs), .meta = "DIR",
     .help = "directories scanned for .gguf files (repeatable)"},
    {.name = "pool.advertise_url", .flag = "advertise-url", .type = CONFIG_TYPE_STRING,
     .roles = POOL, .offset = OFF(pool.advertise_url), .check = check_url,
     .expect = "an http:// or https:// URL", .meta = "URL",
     .help = "how others reach this pool (default: from listen)"},
    {.name = "pool.heartbeat_interval", .flag = "heartbeat-interval", .type = CONFIG_TYPE_DURATION,
     .roles = POOL, .offset = OFF(pool.heartbeat_interval_ms), .def = "2s", .min = 100,
     .max = MIN, .meta = "DURATION", .help = "interval between state reports to the orchestrator"},
    {.name = "pool.stop_grace", .type = CONFIG_TYPE_DURATION, .roles = POOL,
     .offset = OFF(pool.stop_grace_ms), .def = "10s", .min = 0, .max = HOUR,
     .help = "a worker told to stop gets SIGTERM, then SIGKILL after this"},
    {.name = "pool.cpu_memory", .flag = "cpu-memory", .type = CONFIG_TYPE_BYTES, .roles = POOL,
     .offset = OFF(pool.cpu_memory), .def = "0", .min = 0, .max = INT64_MAX, .meta = "BYTES",
     .help = "memory the CPU device offers when there is no GPU; 0 = from RAM"},
    {.name = "pool.worker_port_base", .flag = "worker-port-base", .type = CONFIG_TYPE_INT,
     .roles = POOL, .offset = OFF(pool.worker_port_base), .def = "0", .min = 0, .max = 65535,
     .meta = "PORT", .help = "first port for spawned workers; 0 = any free port"},
    {.name = "pool.fetch_bandwidth", .flag = "fetch-bandwidth", .type = CONFIG_TYPE_BYTES, .roles = POOL,
     .offset = OFF(pool.fetch_bandwidth), .def = "0", .min = 0, .max = INT64_MAX, .meta = "BYTES",
     .help = "bytes per second a model file copied from another pool may take; 0 = unlimited"},

    /* ---- orchestrator ---- */
    {.name = "orchestrator.api_keys", .flag = "api-key", .type = CONFIG_TYPE_STRLIST, .roles = ORCH,
     .offset = OFF(orchestrator.api_keys), .flags = CONFIG_OPT_SECRET, .meta = "KEY",
     .check = check_secret, .expect = SECRET_EXPECT,
     .help = "client API keys for /v1/* (repeatable); none = /v1/* open (a warning beyond loopback)"},
    {.name = "orchestrator.admin_keys", .flag = "admin-key", .type = CONFIG_TYPE_STRLIST,
     .roles = ORCH, .offset = OFF(orchestrator.admin_keys), .flags = CONFIG_OPT_SECRET,
     .meta = "KEY", .check = check_secret, .expect = SECRET_EXPECT,
     .help = "operator keys for /v2/* (load/unload, cluster state) and /metrics (repeatable); "
             "none = those open only while no key or token at all is configured"},
    {.name = "orchestrator.cluster_token", .flag = "cluster-token", .type = CONFIG_TYPE_STRING,
     .roles = ORCH, .offset = OFF(orchestrator.cluster_token), .flags = CONFIG_OPT_SECRET,
     .check = check_secret, .expect = SECRET_EXPECT, .meta = "TOKEN",
     .help = "shared secret pools must present; required beyond loopback"},
    {.name = "orchestrator.queue.max_total", .flag = "queue-max-total", .type = CONFIG_TYPE_INT,
     .roles = ORCH, .offset = OFF(orchestrator.queue.max_total), .def = "256", .min = 1,
     .max = 1000000, .meta = "N", .help = "queued requests over all classes before 429"},
    {.name = "orchestrator.queue.timeout", .type = CONFIG_TYPE_DURATION, .roles = ORCH,
     .offset = OFF(orchestrator.queue.timeout_ms), .def = "60s", .min = 100, .max = DAY,
     .help = "a request queued longer than this gets 503"},
    {.name = "orchestrator.queue.max_interactive", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.queue.max_interactive), .def = "0", .min = 0, .max = 1000000,
     .help = "bound on queued interactive requests; 0 = only max_total"},
    {.name = "orchestrator.queue.max_batch", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.queue.max_batch), .def = "0", .min = 0, .max = 1000000,
     .help = "bound on queued batch requests; 0 = only max_total"},
    {.name = "orchestrator.queue.max_bytes", .type = CONFIG_TYPE_BYTES, .roles = ORCH,
     .offset = OFF(orchestrator.queue.max_bytes), .def = "256MiB", .min = 0, .max = INT64_MAX,
     .help = "request bytes held by queued and running requests before 429; 0 = unbounded"},
    {.name = "orchestrator.pools.max", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.pools.max), .def = "64", .min = 1, .max = 100000,
     .help = "registered pools; a new pool past it gets 429 (see forget_after)"},
    {.name = "orchestrator.pools.forget_after", .type = CONFIG_TYPE_DURATION, .roles = ORCH,
     .offset = OFF(orchestrator.pools.forget_after_ms), .def = "10m", .min = 0, .max = 30 * DAY,
     .help = "a pool down this long is forgotten with its workers; 0 = never"},
    {.name = "orchestrator.pools.max_events", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.pools.max_events), .def = "1024", .min = 1, .max = 1000000,
     .help = "worker events in one POST /v2/pools/{pool}/events (413 past it)"},
    {.name = "orchestrator.pools.max_devices", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.pools.max_devices), .def = "16", .min = 1, .max = 16,
     .help = "devices in one pool state document (413 past it)"},
    {.name = "orchestrator.pools.max_models", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.pools.max_models), .def = "1024", .min = 1, .max = 4096,
     .help = "models in one pool state document (413 past it)"},
    {.name = "orchestrator.pools.max_workers", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.pools.max_workers), .def = "256", .min = 1, .max = 4096,
     .help = "workers in one pool state document (413 past it)"},
    {.name = "orchestrator.heartbeat_miss_limit", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.heartbeat_miss_limit), .def = "3", .min = 1, .max = 100,
     .help = "missed heartbeats before a pool is marked down"},
    {.name = "orchestrator.prefix_routing", .flag = "prefix-routing", .type = CONFIG_TYPE_BOOL,
     .roles = ORCH, .offset = OFF(orchestrator.prefix_routing), .def = "true",
     .help = "send a request to the replica that was sent the longest prefix of its text (its "
             "prefix cache likely holds it) unless that one is clearly busier; false: least "
             "loaded, equal ones in turn"},
    {.name = "orchestrator.retry_max", .type = CONFIG_TYPE_INT, .roles = ORCH,
     .offset = OFF(orchestrator.retry_max), .def = "2", .min = 0, .max = 10,
     .help = "retries of a request whose worker died before its first token"},
    {.name = "orchestrator.resume.window", .type = CONFIG_TYPE_DURATION, .roles = ORCH,
     .offset = OFF(orchestrator.resume.window_ms), .def = "60s", .min = 100, .max = HOUR,
     .help = "a resumable stream (X-Llorch-Resumable: true) keeps generating this long after its "
             "client went away (and is kept this long after its end) for GET /v2/streams/{id}"},
    {.name = "orchestrator.resume.max_stream_bytes", .type = CONFIG_TYPE_BYTES, .roles = ORCH,
     .offset = OFF(orchestrator.resume.max_stream_bytes), .def = "4MiB", .min = 1024,
     .max = INT64_MAX,
     .help = "events kept per resumable stream; past it with the client away, its generation "
             "stops (the reconnect gets an error event)"},
    {.name = "orchestrator.resume.max_bytes", .type = CONFIG_TYPE_BYTES, .roles = ORCH,
     .offset = OFF(orchestrator.resume.max_bytes), .def = "256MiB", .min = 1024, .max = INT64_MAX,
     .help = "events kept over all resumable streams (ended streams are dropped first)"},
    {.name = "orchestrator.models", .type = CONFIG_TYPE_MODELS, .roles = ORCH,
     .offset = OFF(orchestrator.models),
     .help = "model catalog: list of {name, file, ctx, slots, pins, min_replicas, max_replicas, "
             "keep_alive, priority, reasoning_format}"},
};
const size_t config_options_count = sizeof config_options / sizeof config_options[0];

#undef OFF
#define OFF(field) offsetof(llorch_model_entry, field)

const config_option config_model_fields[] = {
    {.name = "name", .type = CONFIG_TYPE_STRING, .offset = OFF(name), .flags = CONFIG_OPT_REQUIRED,
     .check = check_model_name, .expect = "a model name without spaces or '/'",
     .help = "name clients ask for"},
    {.name = "file", .type = CONFIG_TYPE_STRING, .offset = OFF(file), .flags = CONFIG_OPT_REQUIRED,
     .check = check_model_file, .expect = "a path relative to the model directory, without '..'",
     .help = "GGUF file name in the pools' model_dirs"},
    {.name = "ctx", .type = CONFIG_TYPE_INT, .offset = OFF(ctx), .def = "0", .min = 0,
     .max = 1 << 20, .help = "context tokens per slot; 0 = the model's"},
    {.name = "slots", .type = CONFIG_TYPE_INT, .offset = OFF(slots), .def = "4", .min = 1,
     .max = 256, .help = "slots per worker"},
    {.name = "pins", .type = CONFIG_TYPE_STRLIST, .offset = OFF(pins), .check = check_pin,
     .expect = "\"pool\" or \"pool/device\"", .help = "where it may run; empty = anywhere"},
    {.name = "min_replicas", .type = CONFIG_TYPE_INT, .offset = OFF(min_replicas), .def = "0",
     .min = 0, .max = 1024, .help = "workers kept even when idle"},
    {.name = "max_replicas", .type = CONFIG_TYPE_INT, .offset = OFF(max_replicas), .def = "1",
     .min = 1, .max = 1024, .help = "most workers"},
    {.name = "keep_alive", .type = CONFIG_TYPE_DURATION, .offset = OFF(keep_alive_ms), .def = "5m",
     .min = 0, .max = 30 * DAY, .flags = CONFIG_OPT_NEVER,
     .help = "idle time before it may be evicted; -1 = never"},
    {.name = "priority", .type = CONFIG_TYPE_ENUM, .offset = OFF(priority), .def = "interactive",
     .enum_names = priorities, .help = "queue class"},
    {.name = "chat_template", .type = CONFIG_TYPE_STRING, .offset = OFF(chat_template),
     .check = check_chat_template, .expect = "chatml or the name of a .jinja file in the pools' model_dirs",
     .help = "chat template instead of the GGUF's tokenizer.chat_template (needed when it has none)"},
    {.name = "reasoning_format", .type = CONFIG_TYPE_ENUM, .offset = OFF(reasoning_format),
     .def = "reasoning_content", .enum_names = reasoning_formats,
     .help = "thinking blocks -> reasoning_content, or none (left in content)"},
};
const size_t config_model_fields_count = sizeof config_model_fields / sizeof config_model_fields[0];

_Static_assert(sizeof(llorch_log_level) == sizeof(int), "enums are stored through int");
_Static_assert(sizeof(llorch_log_format) == sizeof(int), "enums are stored through int");
_Static_assert(sizeof(llorch_priority) == sizeof(int), "enums are stored through int");
