/*
 * The role runtime (src/roles/common): what every role process has in
 * common. One libuv loop, one HTTP server on cfg->listen, a metrics registry
 * rendered at GET /metrics, GET /health/live, logging set up from the
 * config, and SIGTERM/SIGINT handling:
 *
 *   signal -> stop hooks (newest first: stop taking work, cancel streams)
 *          -> HTTP server stops accepting; requests in flight get
 *             cfg->shutdown_grace_ms to finish, then are closed
 *          -> shutdown hooks (newest first: close the role's handles,
 *             start asynchronous cleanup such as stopping child processes)
 *          -> the runtime closes its own handles; the loop runs until every
 *             handle is closed; llorch_service_run() returns the exit status.
 *   A second signal while shutting down exits at once with status 1.
 *
 * A role's main looks like:
 *   llorch_service *svc;
 *   if (llorch_service_init(&svc, cfg, "worker", &em) < 0) { log em; return 1; }
 *   llorch_service_route(svc, "POST", "/v1/chat/completions", LLORCH_ACCESS_CLUSTER, on_chat, w);
 *   llorch_service_route(svc, NULL, "/v2/jobs/" "*", LLORCH_ACCESS_CLUSTER, on_jobs, w);  (a prefix)
 *   llorch_service_on_stop(svc, worker_stop, w);
 *   llorch_service_on_shutdown(svc, worker_shutdown, w);
 *   int status = llorch_service_run(svc, &em);  (listens, runs the loop)
 *   llorch_service_free(svc);
 *   return status;
 *
 * Everything here runs on the loop thread and is not thread-safe, except the
 * metrics registry (its own lock).
 */
#ifndef LLORCH_SERVICE_H
#define LLORCH_SERVICE_H

#include <stdbool.h>

#include <uv.h>

#include "llorch/config.h"
#include "llorch/error.h"
#include "llorch/http.h"
#include "llorch/metrics.h"

typedef struct llorch_service llorch_service;

/* A role's request handler: the same contract as llorch_http_handler_fn
 * (answer now or later; the request stays valid until answered). */
typedef void (*llorch_service_route_fn)(llorch_http_request *req, void *user);

/* A stop or shutdown hook (see the sequence above). */
typedef void (*llorch_service_hook_fn)(llorch_service *svc, void *user);

/*
 * Creates the loop, the metrics registry (with llorch_build_info{version,role}
 * and process_start_time_seconds), the HTTP server (not listening yet) with
 * the limits and timeouts of cfg->http, the routes GET /health/live (public)
 * and GET /metrics (LLORCH_ACCESS_ADMIN | LLORCH_ACCESS_CLUSTER), the
 * headers-time credential check, and the signal watchers; sets the log level and format from
 * cfg. component names the role in log lines ("worker", "pool", ...). cfg
 * must outlive the service. Returns 0 or a negative LLORCH_E* code with em.
 */
int llorch_service_init(llorch_service **out, const llorch_config *cfg, const char *component,
                        llorch_errmsg *em);

/* ---- who may call a route ---- */

/*
 * Credential classes. Every route names the classes it accepts (bits of
 * llorch_access; LLORCH_ACCESS_PUBLIC = anyone). A request passes when one
 * of those classes is open (the role configured no credential for it, which
 * the config allows on loopback only) or its Authorization: Bearer token is
 * one of that class's tokens. A class starts closed with no tokens: nothing
 * passes until the role adds tokens or opens it.
 *
 * The check runs when a request's headers arrive, before any body byte is
 * read (llorch_http_server_set_authorize): 401 without a valid token, 403
 * for a valid token of another class (a client key on an admin route), the
 * connection closed either way.
 */
typedef enum llorch_access {
  LLORCH_ACCESS_PUBLIC = 0,        /* anyone: /health/... */
  LLORCH_ACCESS_CLIENT = 1u << 0,  /* client API keys: the orchestrator's /v1/... */
  LLORCH_ACCESS_ADMIN = 1u << 1,   /* operator keys: /v2/... control and state, /metrics */
  LLORCH_ACCESS_CLUSTER = 1u << 2, /* the machines' secret: the cluster token between
                                    * orchestrator and pools; a worker's own token */
} llorch_access;
#define LLORCH_ACCESS_N_CLASSES 3

/*
 * A route's own check (llorch_service_route_custom), called at headers
 * time like the class check: returns 0, or 401/403 with *why (a static
 * string). It may call llorch_service_authorize.
 */
typedef int (*llorch_service_authorize_fn)(llorch_http_request *req, void *user, const char **why);

/*
 * Adds a route. method: "GET", "POST", ... or NULL for any. path: an exact
 * path ("/v1/models"), or a prefix ending in '*' ("/v2/jobs/" followed by
 * '*' matches "/v2/jobs/abc/cancel"). Exact routes win over prefix routes; among prefix
 * routes the longest prefix wins. A path that matches with another method
 * gets 405 with Allow; no match gets 404 (both in the OpenAI error
 * envelope). access: the llorch_access bits allowed to call it. Returns 0,
 * LLORCH_EEXIST (same method and path twice) or LLORCH_ENOMEM.
 */
int llorch_service_route(llorch_service *svc, const char *method, const char *path,
                         unsigned access, llorch_service_route_fn fn, void *user);

/* Like llorch_service_route, with authorize(req, user, why) deciding instead of a class set. */
int llorch_service_route_custom(llorch_service *svc, const char *method, const char *path,
                                llorch_service_authorize_fn authorize,
                                llorch_service_route_fn fn, void *user);

/*
 * Adds n accepted tokens (copied; empty strings are refused with
 * LLORCH_EINVAL) to the class cls (one LLORCH_ACCESS_* bit). Returns 0,
 * LLORCH_EINVAL or LLORCH_ENOMEM.
 */
int llorch_service_add_credentials(llorch_service *svc, llorch_access cls,
                                   const char *const *tokens, size_t n);

/* Opens the class cls: its routes need no token (nothing is configured). */
void llorch_service_open_access(llorch_service *svc, llorch_access cls);

/*
 * The class check itself: 0 when req may call a route accepting the access
 * bits, else 401 or 403 with *why. Constant-time over every token.
 */
int llorch_service_authorize(const llorch_service *svc, const llorch_http_request *req,
                             unsigned access, const char **why);

/* Adds a hook called when shutdown begins, before the HTTP server drains
 * (newest first). Returns 0 or LLORCH_ENOMEM. */
int llorch_service_on_stop(llorch_service *svc, llorch_service_hook_fn fn, void *user);

/* Adds a hook called after the HTTP server has drained (newest first): close
 * the role's handles here so the loop can end. Returns 0 or LLORCH_ENOMEM. */
int llorch_service_on_shutdown(llorch_service *svc, llorch_service_hook_fn fn, void *user);

/*
 * Binds cfg->listen. Optional: llorch_service_run() listens when this was not
 * called; a role calls it first when it needs the port before the loop runs
 * (a worker reports its URL to the pool). Returns 0 or LLORCH_EINVAL /
 * LLORCH_EBUSY / LLORCH_EIO with em naming the address.
 */
int llorch_service_listen(llorch_service *svc, llorch_errmsg *em);

/* Listens (if not yet) and runs the loop until shutdown is complete. Returns
 * the exit status: 0 after a signal, or what llorch_service_stop() asked for.
 * When listening fails, em says why (the caller logs it) and the whole
 * shutdown sequence runs at once (hooks included), returning 1. */
int llorch_service_run(llorch_service *svc, llorch_errmsg *em);

/* Starts the shutdown sequence from code (e.g. a worker whose model failed to
 * load) with the given exit status. Calling it again does nothing. */
void llorch_service_stop(llorch_service *svc, int exit_status);

/* True once shutdown has begun: roles refuse new work from then on. */
bool llorch_service_stopping(const llorch_service *svc);

/* Frees the service after llorch_service_run() returned, or instead of it
 * (a role whose set-up failed): then every handle still open on the loop,
 * the role's included, is closed without its close callback, so the role
 * must not touch its handles afterwards. Closes the loop. */
void llorch_service_free(llorch_service *svc);

/* ---- accessors ---- */

uv_loop_t *llorch_service_loop(llorch_service *svc);
llorch_metrics *llorch_service_metrics(llorch_service *svc);
llorch_http_server *llorch_service_http(llorch_service *svc);
const llorch_config *llorch_service_config(const llorch_service *svc);
/* The bound port (after listening; useful with port 0), or -1. */
int llorch_service_port(const llorch_service *svc);

/*
 * Splits "HOST:PORT" / "[v6]:PORT" / ":PORT" into host (without brackets;
 * "0.0.0.0" for an empty host) and port. Returns 0 or LLORCH_EINVAL.
 */
int llorch_service_parse_listen(const char *listen, char *host, size_t host_size, int *port);

#endif /* LLORCH_SERVICE_H */
