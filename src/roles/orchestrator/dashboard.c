/*
 * The web dashboard: the page at / and its files, compiled into the binary
 * from src/roles/orchestrator/dashboard/ at build time (dashboard_assets.c,
 * made by cmake/EmbedFiles.cmake), so nothing is fetched at run time and no
 * Node is needed to build. The page itself is public and holds no data:
 * everything it shows comes from the operator routes with the key the user
 * types in (GET /v2/cluster/events, POST /v2/models/..., the drain below).
 */
#include <stdio.h>
#include <string.h>

#include "dashboard_assets.h"
#include "events.h"
#include "llorch/log.h"

/* The page runs only its own files and talks only to this origin. */
#define DASH_CSP                                                                           \
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "        \
  "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"

static const orch_asset *asset_find(const char *name) {
  for (size_t i = 0; i < orch_n_assets; i++)
    if (strcmp(orch_assets[i].name, name) == 0) return &orch_assets[i];
  return NULL;
}

static void respond_asset(llorch_http_request *req, const orch_asset *a) {
  llorch_http_response_header(req, "Cache-Control", "no-cache");
  llorch_http_response_header(req, "X-Content-Type-Options", "nosniff");
  llorch_http_response_header(req, "Referrer-Policy", "no-referrer");
  llorch_http_response_header(req, "Content-Security-Policy", DASH_CSP);
  llorch_http_respond(req, 200, a->content_type, a->data, a->len);
}

/* GET / */
static void on_index(llorch_http_request *req, void *user) {
  (void)user;
  const orch_asset *a = asset_find("index.html");
  if (!a) {
    llorch_http_respond_error(req, 404, "invalid_request_error", "this build has no dashboard", NULL,
                              "not_found");
    return;
  }
  respond_asset(req, a);
}

/* GET /dashboard/{file} */
static void on_asset(llorch_http_request *req, void *user) {
  (void)user;
  const char *name = llorch_http_request_path(req) + strlen("/dashboard/");
  const orch_asset *a = asset_find(name);
  if (!a) {
    char msg[200];
    snprintf(msg, sizeof msg, "no dashboard file '%.100s'", name);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "not_found");
    return;
  }
  respond_asset(req, a);
}

/* POST /v2/cluster/workers/{pool}/{id}/drain */
static void on_worker_op(llorch_http_request *req, void *user) {
  orch *o = user;
  const char *path = llorch_http_request_path(req) + strlen("/v2/cluster/workers/");
  const char *op = strrchr(path, '/');
  const char *id = NULL;
  char pool[SCHED_NAME_MAX], wid[SCHED_NAME_MAX];
  if (op && op > path) {
    id = op - 1;
    while (id > path && id[-1] != '/') id--;
  }
  size_t pool_n = id && id > path ? (size_t)(id - 1 - path) : 0;
  size_t id_n = id ? (size_t)(op - id) : 0;
  if (!op || strcmp(op, "/drain") != 0 || pool_n == 0 || pool_n >= sizeof pool || id_n == 0 ||
      id_n >= sizeof wid) {
    llorch_http_respond_error(req, 404, "invalid_request_error",
                              "expected POST /v2/cluster/workers/{pool}/{worker_id}/drain", NULL,
                              "not_found");
    return;
  }
  memcpy(pool, path, pool_n);
  pool[pool_n] = '\0';
  memcpy(wid, id, id_n);
  wid[id_n] = '\0';
  sched_worker *w = sched_worker_find(&o->s, pool, wid);
  char msg[400];
  if (!w) {
    snprintf(msg, sizeof msg, "no worker '%.130s' on pool '%.130s' (GET /v2/cluster lists them)", wid, pool);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, "worker", "worker_not_found");
    return;
  }
  int rc = sched_worker_drain(&o->s, w, orch_now_ms(o));
  if (rc < 0) {
    snprintf(msg, sizeof msg, "worker '%.130s' on pool '%.130s' is already %s", wid, pool,
             w->stop_sent ? "stopping" : sched_worker_state_name(w->state));
    llorch_http_respond_error(req, 409, "invalid_request_error", msg, "worker", "worker_not_running");
    return;
  }
  LOG_INFO("orch", llorch_http_request_id(req), "operator at %s: drain %s/%s (%s)",
           llorch_http_request_peer(req), pool, wid, rc == 1 ? "idle: stopping now" : "stops once idle");
  if (rc == 0)
    orch_event(o, "draining", pool, wid, w->model_name, "worker %s of %s drains: no new requests, "
               "stopped once its %d running finish", wid, w->model_name, w->busy);
  /* The drained worker no longer counts as a replica: waiting requests or
   * min_replicas may place another one now. */
  orch_dispatch_soon(o);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"pool\":");
  llorch_jbuf_str(&b, pool);
  llorch_jbuf_cstr(&b, ",\"worker\":");
  llorch_jbuf_str(&b, wid);
  llorch_jbuf_cstr(&b, ",\"stopping_now\":");
  llorch_jbuf_bool(&b, rc == 1);
  llorch_jbuf_cstr(&b, ",\"busy\":");
  llorch_jbuf_int(&b, w->busy);
  llorch_jbuf_cstr(&b, "}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 202, b.data);
  llorch_jbuf_free(&b);
}

int orch_dashboard_init(orch *o, llorch_errmsg *em) {
  if (llorch_service_route(o->svc, "GET", "/", LLORCH_ACCESS_PUBLIC, on_index, o) < 0 ||
      llorch_service_route(o->svc, "GET", "/dashboard/*", LLORCH_ACCESS_PUBLIC, on_asset, o) < 0 ||
      llorch_service_route(o->svc, "POST", "/v2/cluster/workers/*", LLORCH_ACCESS_ADMIN, on_worker_op, o) < 0)
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "cannot add the dashboard's routes");
  return 0;
}
