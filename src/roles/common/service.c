/*
 * The role runtime: loop, HTTP server, routes, built-in endpoints, signals
 * and the shutdown sequence every role shares (see include/llorch/service.h).
 */
#include "llorch/service.h"

#include <signal.h>
#include <stdio.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "llorch/auth.h"
#include "llorch/log.h"

typedef struct service_route {
  char *method;                /* NULL = any method */
  char *path;                  /* exact path, or the prefix without its '*' */
  bool prefix;
  unsigned access;             /* llorch_access bits; used when authorize is NULL */
  llorch_service_authorize_fn authorize; /* the route's own check, or NULL */
  llorch_service_route_fn fn;
  void *user;
} service_route;

/* The tokens of one credential class. */
typedef struct service_cred {
  char **tokens;               /* (n) */
  size_t n;
  bool open;                   /* nothing configured: anyone passes */
} service_cred;

typedef struct service_hook {
  llorch_service_hook_fn fn;
  void *user;
} service_hook;

typedef struct service_hooks {
  service_hook *items;         /* (count), called newest first */
  size_t count;
} service_hooks;

struct llorch_service {
  const llorch_config *cfg;    /* owned by the caller; outlives the service */
  const char *component;       /* "worker", "pool", ... for log lines */
  uv_loop_t loop;
  llorch_metrics *metrics;
  llorch_http_server *http;    /* NULL once freed at the end of shutdown */
  uv_signal_t sigterm;
  uv_signal_t sigint;
  service_route *routes;       /* (nroutes) */
  size_t nroutes;
  service_cred creds[LLORCH_ACCESS_N_CLASSES]; /* by bit index of llorch_access */
  service_hooks stop_hooks;
  service_hooks shutdown_hooks;
  bool listening;
  bool stopping;
  bool signals_open;
  int exit_status;
};

/* ---- routing ---- */

static bool route_method_matches(const service_route *r, const char *method) {
  return !r->method || strcmp(r->method, method) == 0;
}

/*
 * Exact routes first, then the longest matching prefix. Sets *path_known
 * when the path matches under other methods only (then allow lists them).
 */
static const service_route *service_find_route(const llorch_service *svc, const char *method,
                                               const char *path, bool *path_known, char *allow,
                                               size_t allow_size) {
  const service_route *best = NULL;
  size_t best_len = 0;
  *path_known = false;
  if (allow_size) allow[0] = '\0';
  for (size_t i = 0; i < svc->nroutes; i++) {
    const service_route *r = &svc->routes[i];
    size_t len = strlen(r->path);
    bool hit = r->prefix ? strncmp(path, r->path, len) == 0 : strcmp(path, r->path) == 0;
    if (!hit) continue;
    *path_known = true;
    if (!route_method_matches(r, method)) {
      size_t w = strlen(allow);
      if (r->method && !strstr(allow, r->method) && w + strlen(r->method) + 3 < allow_size)
        snprintf(allow + w, allow_size - w, "%s%s", w ? ", " : "", r->method);
      continue;
    }
    /* An exact route is longer than any prefix of the same path. */
    size_t score = r->prefix ? len : len + 1;
    if (!best || score > best_len) {
      best = r;
      best_len = score;
    }
  }
  return best;
}

/* A path known under other methods only gets 405 rather than 404, so a client sees its mistake. */
static void service_on_request(llorch_http_request *req, void *user) {
  llorch_service *svc = user;
  bool path_known;
  char allow[128];
  const service_route *best = service_find_route(svc, llorch_http_request_method(req),
                                                 llorch_http_request_path(req), &path_known,
                                                 allow, sizeof allow);
  if (best) {
    best->fn(req, best->user);
    return;
  }
  if (path_known) {
    if (allow[0]) llorch_http_response_header(req, "Allow", allow);
    llorch_http_respond_error(req, 405, "invalid_request_error",
                              "method not allowed for this path", NULL, "method_not_allowed");
    return;
  }
  llorch_http_respond_error(req, 404, "invalid_request_error", "no such endpoint", NULL,
                            "not_found");
}

/* ---- credentials ---- */

static int access_index(llorch_access cls) {
  for (int i = 0; i < LLORCH_ACCESS_N_CLASSES; i++)
    if ((unsigned)cls == 1u << i) return i;
  return -1;
}

int llorch_service_add_credentials(llorch_service *svc, llorch_access cls,
                                   const char *const *tokens, size_t n) {
  int ix = access_index(cls);
  if (ix < 0) return LLORCH_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!tokens[i] || !tokens[i][0]) return LLORCH_EINVAL; /* "" must never mean "no auth" */
  service_cred *c = &svc->creds[ix];
  char **grown = realloc(c->tokens, (c->n + n + 1) * sizeof *grown);
  if (!grown) return LLORCH_ENOMEM;
  c->tokens = grown;
  for (size_t i = 0; i < n; i++) {
    if (!(c->tokens[c->n] = strdup(tokens[i]))) return LLORCH_ENOMEM;
    c->n++;
  }
  return 0;
}

void llorch_service_open_access(llorch_service *svc, llorch_access cls) {
  int ix = access_index(cls);
  if (ix >= 0) svc->creds[ix].open = true;
}

/* Whether tok[0..len) is one of the class's tokens; compares every one (no early exit). */
static bool cred_matches(const service_cred *c, const char *tok, size_t len) {
  bool ok = false;
  for (size_t i = 0; i < c->n; i++)
    ok |= llorch_auth_token_equal(tok, len, c->tokens[i], strlen(c->tokens[i]));
  return ok;
}

int llorch_service_authorize(const llorch_service *svc, const llorch_http_request *req,
                             unsigned access, const char **why) {
  if (access == LLORCH_ACCESS_PUBLIC) return 0;
  for (int i = 0; i < LLORCH_ACCESS_N_CLASSES; i++)
    if ((access & (1u << i)) && svc->creds[i].open) return 0;
  const char *tok;
  size_t len;
  if (llorch_http_request_api_key(req, &tok, &len) < 0) {
    *why = "missing bearer token (Authorization: Bearer <token>, or x-api-key: <token>)";
    return 401;
  }
  bool allowed = false, other = false;
  for (int i = 0; i < LLORCH_ACCESS_N_CLASSES; i++) {
    bool hit = cred_matches(&svc->creds[i], tok, len);
    if (access & (1u << i)) allowed |= hit;
    else other |= hit;
  }
  if (allowed) return 0;
  if (other) {
    *why = (access & LLORCH_ACCESS_ADMIN)
               ? "this key may not call this endpoint: it needs an operator key (orchestrator.admin_keys)"
               : (access & LLORCH_ACCESS_CLUSTER) ? "this key may not call this endpoint: it needs the cluster token"
                                                  : "this key may not call this endpoint";
    return 403;
  }
  *why = "invalid bearer token (Authorization: Bearer <token>)";
  return 401;
}

/*
 * Headers-time check (llorch_http_server_set_authorize): the route's classes
 * or its own check. A request for no route gets its 404/405 after the body
 * like any other answer, except that a body is never read for nothing: one
 * that comes with a body is refused here, the connection closed.
 */
static int service_on_headers(llorch_http_request *req, void *user, const char **why) {
  llorch_service *svc = user;
  /* Anthropic's clients read errors in Anthropic's envelope, 401s included:
   * set before anything can be refused. */
  if (strcmp(llorch_http_request_path(req), "/v1/messages") == 0)
    llorch_http_request_set_error_format(req, LLORCH_HTTP_ERRORS_ANTHROPIC);
  bool path_known;
  char allow[128];
  const service_route *r = service_find_route(svc, llorch_http_request_method(req),
                                              llorch_http_request_path(req), &path_known, allow,
                                              sizeof allow);
  if (!r) {
    const char *cl = llorch_http_request_header(req, "Content-Length");
    bool body = llorch_http_request_header(req, "Transfer-Encoding") != NULL ||
                (cl != NULL && strspn(cl, "0") != strlen(cl));
    if (!body) return 0;
    *why = path_known ? "method not allowed for this path" : "no such endpoint";
    return path_known ? 405 : 404;
  }
  if (r->authorize) return r->authorize(req, r->user, why);
  return llorch_service_authorize(svc, req, r->access, why);
}

static int service_add_route(llorch_service *svc, const char *method, const char *path,
                             unsigned access, llorch_service_authorize_fn authorize,
                             llorch_service_route_fn fn, void *user) {
  size_t len = strlen(path);
  bool prefix = len > 0 && path[len - 1] == '*';
  if (prefix) len--;
  for (size_t i = 0; i < svc->nroutes; i++) {
    const service_route *r = &svc->routes[i];
    bool same_method = (!r->method && !method) || (r->method && method && strcmp(r->method, method) == 0);
    if (same_method && r->prefix == prefix && strlen(r->path) == len &&
        strncmp(r->path, path, len) == 0)
      return LLORCH_EEXIST;
  }
  service_route *routes = realloc(svc->routes, (svc->nroutes + 1) * sizeof *routes);
  if (!routes) return LLORCH_ENOMEM;
  svc->routes = routes;
  service_route *r = &routes[svc->nroutes];
  r->method = method ? strdup(method) : NULL;
  r->path = strndup(path, len);
  if ((method && !r->method) || !r->path) {
    free(r->method);
    free(r->path);
    return LLORCH_ENOMEM;
  }
  r->prefix = prefix;
  r->access = access;
  r->authorize = authorize;
  r->fn = fn;
  r->user = user;
  svc->nroutes++;
  return 0;
}

int llorch_service_route(llorch_service *svc, const char *method, const char *path,
                         unsigned access, llorch_service_route_fn fn, void *user) {
  return service_add_route(svc, method, path, access, NULL, fn, user);
}

int llorch_service_route_custom(llorch_service *svc, const char *method, const char *path,
                                llorch_service_authorize_fn authorize,
                                llorch_service_route_fn fn, void *user) {
  return service_add_route(svc, method, path, 0, authorize, fn, user);
}

/* ---- built-in endpoints ---- */

static void service_free_creds(llorch_service *svc) {
  for (int i = 0; i < LLORCH_ACCESS_N_CLASSES; i++) {
    service_cred *c = &svc->creds[i];
    for (size_t k = 0; k < c->n; k++) free(c->tokens[k]);
    free(c->tokens);
    c->tokens = NULL;
    c->n = 0;
  }
}

static void service_health_live(llorch_http_request *req, void *user) {
  llorch_http_respond_json(req, 200, "{\"status\":\"ok\"}");
}

static void service_metrics(llorch_http_request *req, void *user) {
  llorch_service *svc = user;
  size_t len;
  char *text = llorch_metrics_render(svc->metrics, &len);
  if (!text) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory rendering metrics", NULL,
                              NULL);
    return;
  }
  llorch_http_respond(req, 200, LLORCH_METRICS_CONTENT_TYPE, text, len);
  free(text);
}

/* ---- hooks and shutdown ---- */

static int service_hooks_add(service_hooks *h, llorch_service_hook_fn fn, void *user) {
  service_hook *items = realloc(h->items, (h->count + 1) * sizeof *items);
  if (!items) return LLORCH_ENOMEM;
  items[h->count].fn = fn;
  items[h->count].user = user;
  h->items = items;
  h->count++;
  return 0;
}

/* Newest first, like atexit: a role that registers on top of another's
 * hooks undoes its own part before the part it built on. */
static void service_hooks_run(llorch_service *svc, const service_hooks *h) {
  for (size_t i = h->count; i-- > 0;) h->items[i].fn(svc, h->items[i].user);
}

int llorch_service_on_stop(llorch_service *svc, llorch_service_hook_fn fn, void *user) {
  return service_hooks_add(&svc->stop_hooks, fn, user);
}

int llorch_service_on_shutdown(llorch_service *svc, llorch_service_hook_fn fn, void *user) {
  return service_hooks_add(&svc->shutdown_hooks, fn, user);
}

static void service_close_signals(llorch_service *svc) {
  if (!svc->signals_open) return;
  svc->signals_open = false;
  uv_close((uv_handle_t *)&svc->sigterm, NULL);
  uv_close((uv_handle_t *)&svc->sigint, NULL);
}

static void service_on_drained(llorch_http_server *srv, unsigned forced, void *user) {
  llorch_service *svc = user;
  if (forced)
    LOG_WARN(svc->component, NULL, "grace period over: closed %u connection(s) still open", forced);
  else
    LOG_INFO(svc->component, NULL, "every request finished");
  service_hooks_run(svc, &svc->shutdown_hooks);
  /* Last: the signal watchers and the server's handles. Once the role's
   * hooks have closed its handles too, nothing keeps the loop alive. */
  service_close_signals(svc);
  llorch_http_server_free(svc->http);
  svc->http = NULL;
}

void llorch_service_stop(llorch_service *svc, int exit_status) {
  if (svc->stopping) return;
  svc->stopping = true;
  svc->exit_status = exit_status;
  service_hooks_run(svc, &svc->stop_hooks);
  LOG_INFO(svc->component, NULL, "shutting down: draining requests for up to %lld ms",
           (long long)svc->cfg->shutdown_grace_ms);
  llorch_http_server_shutdown(svc->http, (unsigned)svc->cfg->shutdown_grace_ms,
                              service_on_drained, svc);
}

bool llorch_service_stopping(const llorch_service *svc) { return svc->stopping; }

static void service_on_signal(uv_signal_t *handle, int signum) {
  llorch_service *svc = handle->data;
  if (svc->stopping) {
    /* An operator who asks twice wants out now; nothing is left that a
     * half-finished drain could protect. */
    LOG_WARN(svc->component, NULL, "%s again during shutdown: exiting now", strsignal(signum));
    _exit(1);
  }
  LOG_INFO(svc->component, NULL, "%s received", strsignal(signum));
  llorch_service_stop(svc, 0);
}

/* ---- listen address ---- */

int llorch_service_parse_listen(const char *listen, char *host, size_t host_size, int *port) {
  const char *colon, *h = listen;
  size_t hlen;
  if (listen[0] == '[') {
    const char *close = strchr(listen, ']');
    if (!close || close[1] != ':') return LLORCH_EINVAL;
    h = listen + 1;
    hlen = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(listen, ':');
    if (!colon) return LLORCH_EINVAL;
    hlen = (size_t)(colon - listen);
  }
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (colon[1] == '\0' || *end || p < 0 || p > 65535) return LLORCH_EINVAL;
  if (hlen == 0) h = "0.0.0.0", hlen = 7;
  if (hlen >= host_size) return LLORCH_EINVAL;
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = (int)p;
  return 0;
}

int llorch_service_listen(llorch_service *svc, llorch_errmsg *em) {
  char host[256];
  int port;
  if (svc->listening) return 0;
  if (llorch_service_parse_listen(svc->cfg->listen, host, sizeof host, &port) != 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "listen: expected HOST:PORT, got \"%s\"",
                             svc->cfg->listen);
  int err = llorch_http_server_listen(svc->http, host, port, em);
  if (err) return err;
  svc->listening = true;
  bool v6 = strchr(host, ':') != NULL;
  LOG_INFO(svc->component, NULL, "listening on http://%s%s%s:%d", v6 ? "[" : "", host,
           v6 ? "]" : "", llorch_http_server_port(svc->http));
  return 0;
}

/* ---- life cycle ---- */

static int service_add_builtin_metrics(llorch_service *svc) {
  static const char *const info_labels[] = {"version", "role", NULL};
  llorch_metric *info = llorch_metrics_gauge(svc->metrics, "llorch_build_info",
                                             "llorch version and role (always 1).", info_labels);
  llorch_metric *start = llorch_metrics_gauge(svc->metrics, "process_start_time_seconds",
                                              "Start time of the process since the Unix epoch.",
                                              NULL);
  if (!info || !start) return LLORCH_ENOMEM;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  llorch_metric_set(info, (const char *const[]){LLORCH_VERSION, llorch_role_name(svc->cfg->role)},
                    1);
  llorch_metric_set(start, NULL, (double)tv.tv_sec + tv.tv_usec / 1e6);
  return 0;
}

static unsigned ms_to_unsigned(int64_t ms) {
  return ms < 0 ? 0 : ms > (int64_t)UINT32_MAX ? UINT32_MAX : (unsigned)ms;
}

/*
 * The connection cap must end a flood before descriptors run out: each
 * client connection may need one outgoing connection (orchestrator -> worker)
 * and the process keeps some for files, pipes and listeners. The soft
 * RLIMIT_NOFILE is raised to the hard one first.
 */
/*
 * Request bodies of megabytes are allocated and freed all the time. glibc
 * raises its mmap threshold to the size of each freed mmapped block (up to
 * 32 MiB), after which such buffers come from the heap and per-thread arenas
 * and stay in the process when freed: a few queued 7 MB requests then cost
 * twice their size for good. A fixed threshold keeps large buffers mmapped,
 * so freeing one gives its memory back.
 */
static void service_tune_malloc(void) {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

static void service_fit_connections(llorch_http_config *hc) {
  unsigned long nofile = llorch_net_raise_nofile();
  if (nofile == 0 || nofile == (unsigned long)-1) return;
  unsigned long fit = nofile > 128 ? (nofile - 64) / 2 : nofile / 4;
  if (fit < 1) fit = 1;
  if (hc->max_connections == 0) {
    hc->max_connections = (unsigned)fit;
  } else if (hc->max_connections > fit) {
    LOG_WARN("http", NULL, "http.max_connections %u lowered to %lu to fit the descriptor limit "
             "(RLIMIT_NOFILE %lu: half for client connections, half for their calls onwards)",
             hc->max_connections, fit, nofile);
    hc->max_connections = (unsigned)fit;
  }
  if (hc->max_connections_per_peer > hc->max_connections)
    hc->max_connections_per_peer = hc->max_connections;
}

int llorch_service_init(llorch_service **out, const llorch_config *cfg, const char *component,
                        llorch_errmsg *em) {
  int err;
  llorch_log_init(cfg->log.level, cfg->log.format, stderr);
  /* A peer that goes away mid-write must be an EPIPE on that connection,
   * not the death of the process. */
  signal(SIGPIPE, SIG_IGN);

  llorch_service *svc = calloc(1, sizeof *svc);
  if (!svc) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  svc->cfg = cfg;
  svc->component = component;

  if ((err = uv_loop_init(&svc->loop)) != 0) {
    err = llorch_errmsg_set(em, LLORCH_EIO, "uv_loop_init: %s", uv_strerror(err));
    goto fail_loop;
  }
  if ((err = llorch_metrics_init(&svc->metrics)) != 0) {
    llorch_errmsg_set(em, err, "out of memory");
    goto fail_metrics;
  }
  if ((err = service_add_builtin_metrics(svc)) != 0) {
    llorch_errmsg_set(em, err, "out of memory");
    goto fail_http;
  }

  llorch_http_config hc;
  llorch_http_config_default(&hc);
  hc.max_header_bytes = (size_t)cfg->http.max_header_bytes;
  hc.max_header_count = (size_t)cfg->http.max_headers;
  hc.max_body_bytes = (size_t)cfg->http.max_body_bytes;
  hc.header_timeout_ms = ms_to_unsigned(cfg->http.header_timeout_ms);
  hc.body_timeout_ms = ms_to_unsigned(cfg->http.body_timeout_ms);
  hc.idle_timeout_ms = ms_to_unsigned(cfg->http.idle_timeout_ms);
  hc.sse_keepalive_ms = ms_to_unsigned(cfg->http.sse_keepalive_ms);
  hc.body_deadline_ms = ms_to_unsigned(cfg->http.body_deadline_ms);
  hc.max_connections = (unsigned)cfg->http.max_connections;
  hc.max_connections_per_peer = (unsigned)cfg->http.max_connections_per_peer;
  service_fit_connections(&hc);
  service_tune_malloc();
  if ((err = llorch_http_server_init(&svc->http, &svc->loop, &hc, service_on_request, svc, em)) != 0)
    goto fail_http;
  llorch_http_server_set_authorize(svc->http, service_on_headers, svc);
  if ((err = llorch_http_server_set_metrics(svc->http, svc->metrics)) != 0 ||
      (err = llorch_service_route(svc, "GET", "/health/live", LLORCH_ACCESS_PUBLIC,
                                  service_health_live, svc)) != 0 ||
      (err = llorch_service_route(svc, "GET", "/metrics", LLORCH_ACCESS_ADMIN | LLORCH_ACCESS_CLUSTER,
                                  service_metrics, svc)) != 0) {
    llorch_errmsg_set(em, err, "out of memory");
    goto fail_routes;
  }

  uv_signal_init(&svc->loop, &svc->sigterm);
  uv_signal_init(&svc->loop, &svc->sigint);
  svc->sigterm.data = svc->sigint.data = svc;
  svc->signals_open = true;
  if ((err = uv_signal_start(&svc->sigterm, service_on_signal, SIGTERM)) != 0 ||
      (err = uv_signal_start(&svc->sigint, service_on_signal, SIGINT)) != 0) {
    err = llorch_errmsg_set(em, LLORCH_EIO, "uv_signal_start: %s", uv_strerror(err));
    goto fail_routes;
  }
  *out = svc;
  return 0;

fail_routes:
  /* Everything created so far lives on the loop: free() closes it all. */
  llorch_service_free(svc);
  return err;
fail_http:
  llorch_metrics_free(svc->metrics);
fail_metrics:
  uv_loop_close(&svc->loop);
fail_loop:
  free(svc);
  return err;
}

int llorch_service_run(llorch_service *svc, llorch_errmsg *em) {
  if (!svc->listening && !svc->stopping && llorch_service_listen(svc, em) != 0) {
    /* Nothing can reach us, but the role is set up: take it down through
     * its own hooks so its handles close the way it expects. The caller
     * logs em. */
    llorch_service_stop(svc, 1);
  }
  uv_run(&svc->loop, UV_RUN_DEFAULT);
  LOG_INFO(svc->component, NULL, "stopped (exit status %d)", svc->exit_status);
  return svc->exit_status;
}

static void service_close_walk(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void llorch_service_free(llorch_service *svc) {
  if (!svc) return;
  service_close_signals(svc);
  if (svc->http) {
    llorch_http_server_free(svc->http);
    svc->http = NULL;
  }
  /* After llorch_service_run() nothing is left open. Freed without running
   * (a role's set-up failed), the role's handles may still be open: close
   * them here rather than run a loop they would keep alive forever. The
   * server's handles are all closing by now, so they are skipped. */
  uv_walk(&svc->loop, service_close_walk, NULL);
  uv_run(&svc->loop, UV_RUN_DEFAULT);
  uv_loop_close(&svc->loop);
  llorch_metrics_free(svc->metrics);
  for (size_t i = 0; i < svc->nroutes; i++) {
    free(svc->routes[i].method);
    free(svc->routes[i].path);
  }
  free(svc->routes);
  free(svc->stop_hooks.items);
  free(svc->shutdown_hooks.items);
  service_free_creds(svc);
  free(svc);
}

/* ---- accessors ---- */

uv_loop_t *llorch_service_loop(llorch_service *svc) { return &svc->loop; }
llorch_metrics *llorch_service_metrics(llorch_service *svc) { return svc->metrics; }
llorch_http_server *llorch_service_http(llorch_service *svc) { return svc->http; }
const llorch_config *llorch_service_config(const llorch_service *svc) { return svc->cfg; }
int llorch_service_port(const llorch_service *svc) {
  return svc->http && svc->listening ? llorch_http_server_port(svc->http) : -1;
}
