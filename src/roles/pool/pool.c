/*
 * The pool manager role: wiring devices, models and workers to the service
 * runtime, and the pool's half of docs/cluster-protocol.md: registration,
 * heartbeats carrying the full state, worker events, GET /v2/state.
 *
 * One timer drives the conversation with the orchestrator. Each tick
 * refreshes devices and models and sends one document: a registration until
 * one was accepted (and again after 404 POOL_UNKNOWN: the orchestrator
 * restarted), a heartbeat after. Only one is in flight at a time; the next
 * tick is armed when it ends, after heartbeat_interval on success or after a
 * backoff (0.2 s doubling to 5 s) while the orchestrator is unreachable.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

#include "llorch/log.h"
#include "llorch/reqid.h"
#include "llorch/roles.h"
#include "pool-impl.h"

#define POOL_BACKOFF_FIRST_MS 200
#define POOL_BACKOFF_MAX_MS 5000

/* ---- orphans ----
 *
 * A worker must not outlive its pool unaccounted for. On a clean exit the
 * pool stops its workers (shutdown hook). If the pool dies without cleaning
 * up (SIGKILL, a crash, a second SIGTERM), the kernel sends its workers
 * SIGTERM: uv_spawn offers no hook between fork and exec, so the child (the
 * same llorch binary) asks for it itself before main() runs, when it finds
 * LLORCH_POOL_PARENT_PID in its environment. The parent-death signal is
 * tied to the thread that forked, which is the pool's loop thread, alive
 * for the whole life of the pool. If the pool died before the child got
 * here, getppid() no longer matches and the child stops at once.
 */
__attribute__((constructor)) static void pool_child_pdeathsig(void) {
  const char *v = getenv(LLORCH_POOL_PARENT_ENV);
  if (!v) return;
  long parent = strtol(v, NULL, 10);
  unsetenv(LLORCH_POOL_PARENT_ENV); /* not inherited by anything this worker starts */
  if (parent <= 1) return;
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) return;
  if ((long)getppid() != parent) raise(SIGTERM);
}

/* ---- small helpers ---- */

int64_t pool_now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int pool_random_hex(char *out, size_t bytes) { return llorch_random_hex(out, bytes); }

static void pool_update_gauges(pool *p) {
  int n[5] = {0};
  for (pool_worker *w = p->workers; w; w = w->next) n[w->state]++;
  for (int s = 0; s < 5; s++)
    llorch_metric_set(p->m_workers, (const char *[]){pool_worker_state_name((pool_worker_state)s)}, n[s]);
}

void pool_refresh(pool *p) {
  llorch_errmsg em = {{0}};
  if (llorch_gpu_inventory_refresh(p->inv, &em) < 0)
    LOG_WARN("pool", NULL, "device refresh: %s", em.text);
  pool_workers_measure(p->workers);
  pool_model *ms = NULL;
  int n = 0;
  if (pool_models_scan(&p->cfg->pool.model_dirs, p->models, p->n_models, &ms, &n) == 0) {
    free(p->models);
    p->models = ms;
    p->n_models = n;
  }
  pool_update_gauges(p);
}

void pool_state_build(pool *p, llorch_jbuf *b, uint64_t seq) {
  int nd = llorch_gpu_inventory_count(p->inv);
  llorch_device_info devs[LLORCH_MAX_DEVICES];
  for (int i = 0; i < nd && i < LLORCH_MAX_DEVICES; i++) devs[i] = *llorch_gpu_inventory_get(p->inv, i);
  pool_state_view v = {
      .pool = p->cfg->pool.name,
      .url = p->url,
      .boot_id = p->boot_id,
      .seq = seq,
      .heartbeat_interval_ms = p->cfg->pool.heartbeat_interval_ms,
      .devices = devs,
      .n_devices = nd < LLORCH_MAX_DEVICES ? nd : LLORCH_MAX_DEVICES,
      .models = p->models,
      .n_models = p->n_models,
      .workers = p->workers,
      .fetches = p->fetches,
  };
  pool_state_write(b, &v);
  /* Workers whose end this document carries: once it is acknowledged they
   * may be forgotten. */
  for (pool_worker *w = p->workers; w; w = w->next)
    if (w->has_exit && !w->final_seq && (w->state == POOL_WORKER_FAILED || w->state == POOL_WORKER_EXITED))
      w->final_seq = seq;
}

void pool_reap(pool *p) {
  pool_worker **pp = &p->workers;
  while (*pp) {
    pool_worker *w = *pp;
    if (w->reaped && w->final_acked) {
      *pp = w->next;
      free(w);
    } else {
      pp = &w->next;
    }
  }
  pool_update_gauges(p);
}

void pool_ack_seq(pool *p, uint64_t seq) {
  for (pool_worker *w = p->workers; w; w = w->next)
    if (w->final_seq && w->final_seq <= seq) w->final_acked = true;
  pool_reap(p);
}

static bool pool_can_finish(const pool *p) {
  if (!p->stopping || !p->heartbeat_closed || p->inflight > 0 || p->finished) return false;
  if (!pool_files_idle(p)) return false;
  for (const pool_worker *w = p->workers; w; w = w->next)
    if (!w->reaped) return false;
  return true;
}

static void pool_on_finish(uv_timer_t *t) {
  pool *p = t->data;
  if (!pool_can_finish(p)) return;
  p->finished = true;
  pool_files_close(p);
  llorch_http_client_free(p->client);
  p->client = NULL;
  uv_close((uv_handle_t *)&p->finish, NULL);
}

/* Once stopping, every worker's handles closed and every report answered,
 * the last handles of the pool itself go, so the loop can end. The client
 * is freed from a timer, never from inside one of its own callbacks. */
void pool_maybe_finish(pool *p) {
  if (pool_can_finish(p)) uv_timer_start(&p->finish, pool_on_finish, 0, 0);
}

/* ---- talking to the orchestrator ---- */

typedef struct pool_send {
  pool *p;
  uint64_t seq;
  int kind; /* 0 register, 1 heartbeat, 2 event */
} pool_send;

static void pool_schedule(pool *p, int64_t delay_ms);

static int pool_post(pool *p, const char *path, llorch_jbuf *body, pool_send *ps,
                     void (*on_done)(llorch_http_call *, int, const char *, void *)) {
  char url[800], auth[300];
  snprintf(url, sizeof url, "%s%s", p->orchestrator_url, path);
  const char *hdr[6] = {"Content-Type", "application/json", NULL, NULL, NULL, NULL};
  if (p->cluster_token[0]) {
    snprintf(auth, sizeof auth, "Bearer %s", p->cluster_token);
    hdr[2] = "Authorization";
    hdr[3] = auth;
  }
  llorch_http_call_opts opts = {0};
  opts.method = "POST";
  opts.url = url;
  opts.headers = hdr;
  opts.body = body->data;
  opts.body_len = body->len;
  /* While shutting down, exit reports get a short chance: the pool's exit
   * must not wait long for an orchestrator that is gone. */
  opts.connect_timeout_ms = p->stopping ? 500 : 2000;
  opts.read_timeout_ms = p->stopping ? 1000 : 10000;
  opts.on_done = on_done;
  opts.user = ps;
  llorch_errmsg em = {{0}};
  int rc = llorch_jbuf_error(body) ? LLORCH_ENOMEM : llorch_http_call_start(p->client, &opts, NULL, &em);
  if (rc < 0) LOG_WARN("pool", NULL, "POST %s: %s", url, em.text[0] ? em.text : llorch_strerror(rc));
  else p->inflight++;
  return rc;
}

/* The "code" of an error envelope, or "". */
static void call_error_code(llorch_http_call *call, char *out, size_t n) {
  size_t len = 0;
  const char *body = llorch_http_call_body(call, &len);
  cJSON *doc = cJSON_ParseWithLength(body, len);
  const cJSON *code = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "error"), "code");
  snprintf(out, n, "%s", cJSON_IsString(code) ? code->valuestring : "");
  cJSON_Delete(doc);
}

static void on_doc_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pool_send *ps = user;
  pool *p = ps->p;
  bool is_register = ps->kind == 0;
  uint64_t seq = ps->seq;
  free(ps);
  p->sending = false;
  p->inflight--;
  if (p->stopping) pool_maybe_finish(p);
  if (err == LLORCH_ECANCELED) return; /* the client is going away */
  const char *what = is_register ? "registration" : "heartbeat";
  if (err) {
    if (p->backoff_ms == 0)
      LOG_WARN("pool", NULL, "%s to %s failed: %s; retrying", what, p->orchestrator_url,
               errmsg ? errmsg : llorch_strerror(err));
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : POOL_BACKOFF_FIRST_MS;
    if (p->backoff_ms > POOL_BACKOFF_MAX_MS) p->backoff_ms = POOL_BACKOFF_MAX_MS;
    pool_schedule(p, p->backoff_ms);
    return;
  }
  int status = llorch_http_call_status(call);
  char code[64];
  if (status == 200) {
    if (p->backoff_ms) LOG_INFO("pool", NULL, "orchestrator %s answers again", p->orchestrator_url);
    p->backoff_ms = 0;
    size_t len = 0;
    const char *body = llorch_http_call_body(call, &len);
    cJSON *doc = cJSON_ParseWithLength(body, len);
    const cJSON *oid = cJSON_GetObjectItemCaseSensitive(doc, "orchestrator_id");
    if (cJSON_IsString(oid) && strcmp(oid->valuestring, p->orchestrator_id) != 0) {
      if (p->orchestrator_id[0])
        LOG_INFO("pool", NULL, "orchestrator id changed from %s to %s (it restarted)", p->orchestrator_id,
                 oid->valuestring);
      snprintf(p->orchestrator_id, sizeof p->orchestrator_id, "%s", oid->valuestring);
    }
    if (is_register) {
      const cJSON *adopted = cJSON_GetObjectItemCaseSensitive(doc, "adopted");
      LOG_INFO("pool", NULL, "registered as %s with %s (orchestrator %s); %d worker%s adopted",
               p->cfg->pool.name, p->orchestrator_url, p->orchestrator_id,
               cJSON_GetArraySize(adopted), cJSON_GetArraySize(adopted) == 1 ? "" : "s");
      p->registered = true;
    }
    cJSON_Delete(doc);
    pool_ack_seq(p, seq);
    pool_schedule(p, p->cfg->pool.heartbeat_interval_ms);
    return;
  }
  call_error_code(call, code, sizeof code);
  if (status == 404 && strcmp(code, "POOL_UNKNOWN") == 0) {
    LOG_INFO("pool", NULL, "orchestrator %s does not know pool %s: registering", p->orchestrator_url,
             p->cfg->pool.name);
    p->registered = false;
    pool_schedule(p, 0);
    return;
  }
  LOG_WARN("pool", NULL, "%s answered %d %s by %s", what, status, code, p->orchestrator_url);
  p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : POOL_BACKOFF_FIRST_MS;
  if (p->backoff_ms > POOL_BACKOFF_MAX_MS) p->backoff_ms = POOL_BACKOFF_MAX_MS;
  pool_schedule(p, p->backoff_ms);
}

/* Fills in what is only known once the service listens: the bound port in
 * our own URL (a listen port of 0), and the orchestrator's URL when it is
 * this very process (--role=all). */
void pool_resolve_urls(pool *p) {
  int port = llorch_service_port(p->svc);
  if (port <= 0) return;
  /* Workers run on this machine and call back to an address we listen on:
   * loopback when we listen on every address, else the one we bound. */
  char host[256] = "";
  int listen_port;
  const llorch_config *cfg = llorch_service_config(p->svc);
  if (llorch_service_parse_listen(cfg->listen, host, sizeof host, &listen_port) < 0 || !host[0] ||
      strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
    snprintf(host, sizeof host, "127.0.0.1");
  bool v6 = strchr(host, ':') != NULL;
  snprintf(p->callback_base, sizeof p->callback_base, "http://%s%s%s:%d", v6 ? "[" : "", host,
           v6 ? "]" : "", port);
  size_t n = strlen(p->url);
  if (p->local_orchestrator) {
    snprintf(p->url, sizeof p->url, "http://127.0.0.1:%d", port);
    snprintf(p->orchestrator_url, sizeof p->orchestrator_url, "http://127.0.0.1:%d", port);
  } else if (n > 2 && strcmp(p->url + n - 2, ":0") == 0) {
    snprintf(p->url + n - 1, sizeof p->url - (n - 1), "%d", port);
  }
}

static void pool_on_tick(uv_timer_t *t) {
  pool *p = t->data;
  if (p->stopping) return;
  pool_resolve_urls(p);
  pool_refresh(p);
  if (!p->orchestrator_url[0] || p->sending) return;
  pool_send *ps = calloc(1, sizeof *ps);
  if (!ps) {
    pool_schedule(p, p->cfg->pool.heartbeat_interval_ms);
    return;
  }
  ps->p = p;
  ps->seq = ++p->seq;
  ps->kind = p->registered ? 1 : 0;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  pool_state_build(p, &b, ps->seq);
  char path[160];
  if (p->registered) snprintf(path, sizeof path, "/v2/pools/%s/heartbeat", p->cfg->pool.name);
  else snprintf(path, sizeof path, "/v2/pools/register");
  p->sending = true;
  if (pool_post(p, path, &b, ps, on_doc_done) < 0) {
    p->sending = false;
    free(ps);
    pool_schedule(p, POOL_BACKOFF_MAX_MS);
  }
  llorch_jbuf_free(&b);
}

static void pool_schedule(pool *p, int64_t delay_ms) {
  if (p->stopping || p->heartbeat_closed) return;
  uv_timer_start(&p->heartbeat, pool_on_tick, (uint64_t)(delay_ms < 0 ? 0 : delay_ms), 0);
}

void pool_fetch_report_soon(pool *p) {
  if (!p->orchestrator_url[0] || p->sending) return;
  pool_schedule(p, 0);
}

static void on_event_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pool_send *ps = user;
  pool *p = ps->p;
  uint64_t seq = ps->seq;
  free(ps);
  p->inflight--;
  if (p->stopping) pool_maybe_finish(p);
  if (err) {
    if (err != LLORCH_ECANCELED)
      LOG_DEBUG("pool", NULL, "event to %s: %s (the next heartbeat carries it)", p->orchestrator_url,
                errmsg ? errmsg : llorch_strerror(err));
    return;
  }
  int status = llorch_http_call_status(call);
  if (status == 200) {
    pool_ack_seq(p, seq);
    return;
  }
  char code[64];
  call_error_code(call, code, sizeof code);
  if (status == 404 && strcmp(code, "POOL_UNKNOWN") == 0 && p->registered) {
    p->registered = false;
    if (!p->sending) pool_schedule(p, 0);
  } else if (status != 404) {
    LOG_WARN("pool", NULL, "event answered %d %s by %s", status, code, p->orchestrator_url);
  }
}

void pool_send_event(pool *p, pool_worker *w, const char *type) {
  pool_update_gauges(p);
  if (!p->orchestrator_url[0] || !p->client) return;
  pool_send *ps = calloc(1, sizeof *ps);
  if (!ps) return;
  ps->p = p;
  ps->seq = ++p->seq;
  ps->kind = 2;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"boot_id\":");
  llorch_jbuf_str(&b, p->boot_id);
  llorch_jbuf_cstr(&b, ",\"seq\":");
  llorch_jbuf_int(&b, (int64_t)ps->seq);
  llorch_jbuf_cstr(&b, ",\"events\":[{\"type\":");
  llorch_jbuf_str(&b, type);
  llorch_jbuf_cstr(&b, ",\"at_ms\":");
  llorch_jbuf_int(&b, pool_now_ms());
  llorch_jbuf_cstr(&b, ",\"worker\":");
  pool_worker_write(&b, w, false);
  llorch_jbuf_cstr(&b, "}]}");
  if (w->has_exit && !w->final_seq) w->final_seq = ps->seq;
  char path[160];
  snprintf(path, sizeof path, "/v2/pools/%s/events", p->cfg->pool.name);
  if (pool_post(p, path, &b, ps, on_event_done) < 0) free(ps);
  llorch_jbuf_free(&b);
}

/* ---- routes ---- */

static void on_state(llorch_http_request *req, void *user) {
  pool *p = user;
  pool_resolve_urls(p);
  pool_refresh(p);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  /* The same seq as the last document sent (protocol 4.3): this one is not
   * sent, so it does not count, nor does it mark exits as reported. */
  int nd = llorch_gpu_inventory_count(p->inv);
  llorch_device_info devs[LLORCH_MAX_DEVICES];
  for (int i = 0; i < nd && i < LLORCH_MAX_DEVICES; i++) devs[i] = *llorch_gpu_inventory_get(p->inv, i);
  pool_state_view v = {.pool = p->cfg->pool.name, .url = p->url, .boot_id = p->boot_id, .seq = p->seq,
                       .heartbeat_interval_ms = p->cfg->pool.heartbeat_interval_ms, .devices = devs,
                       .n_devices = nd < LLORCH_MAX_DEVICES ? nd : LLORCH_MAX_DEVICES,
                       .models = p->models, .n_models = p->n_models, .workers = p->workers,
                       .fetches = p->fetches};
  pool_state_write(&b, &v);
  /* Without an orchestrator the operator reading this is the only one the
   * ends can be reported to: once shown, they are forgotten. */
  if (!p->orchestrator_url[0] && !p->local_orchestrator) {
    for (pool_worker *w = p->workers; w; w = w->next)
      if (w->has_exit && (w->state == POOL_WORKER_FAILED || w->state == POOL_WORKER_EXITED))
        w->final_acked = true;
  }
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
  if (!p->orchestrator_url[0] && !p->local_orchestrator) pool_reap(p);
}

/* ---- lifecycle ---- */

static void pool_on_stop(llorch_service *svc, void *user) {
  (void)svc;
  pool *p = user;
  p->stopping = true; /* new starts get 503 while the HTTP server drains */
  uv_timer_stop(&p->heartbeat);
}

static void pool_on_heartbeat_closed(uv_handle_t *h) {
  pool *p = h->data;
  p->heartbeat_closed = true;
  pool_maybe_finish(p);
}

static void pool_on_shutdown(llorch_service *svc, void *user) {
  (void)svc;
  pool *p = user;
  p->stopping = true;
  int n = 0;
  for (pool_worker *w = p->workers; w; w = w->next)
    if (pool_worker_alive(w)) {
      pool_worker_stop(w, "the pool is shutting down");
      n++;
    }
  if (n) LOG_INFO("pool", NULL, "stopping %d worker%s before exiting", n, n == 1 ? "" : "s");
  pool_files_shutdown(p);
  /* The loop keeps running while worker handles are open; the HTTP client
   * goes last (pool_maybe_finish), so exits can still be reported. */
  uv_close((uv_handle_t *)&p->heartbeat, pool_on_heartbeat_closed);
}

static int pool_setup_urls(pool *p, const llorch_pool_options *opts, llorch_errmsg *em) {
  const llorch_config *cfg = p->cfg;
  const char *tok = opts && opts->cluster_token ? opts->cluster_token : cfg->pool.cluster_token;
  if (tok && strlen(tok) >= sizeof p->cluster_token)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'pool.cluster_token' is too long (at most %zu bytes)",
                             sizeof p->cluster_token - 1);
  snprintf(p->cluster_token, sizeof p->cluster_token, "%s", tok ? tok : "");
  p->local_orchestrator = opts && opts->local_orchestrator;
  if (!p->local_orchestrator && cfg->pool.orchestrator) {
    snprintf(p->orchestrator_url, sizeof p->orchestrator_url, "%s", cfg->pool.orchestrator);
    size_t n = strlen(p->orchestrator_url);
    while (n > 0 && p->orchestrator_url[n - 1] == '/') p->orchestrator_url[--n] = '\0';
  }
  snprintf(p->url, sizeof p->url, "%s", cfg->pool.advertise_url ? cfg->pool.advertise_url : "");
  /* Workers listen on the pool's own listen address, so whoever reaches the
   * pool reaches its workers. On a wildcard address a worker reports
   * 127.0.0.1 (docs/worker-api.md), so the pool hands out its URL with the
   * advertise URL's host instead. Loopback when the orchestrator is this
   * process. */
  char host[256] = "127.0.0.1";
  int port = 0;
  p->worker_public_host[0] = '\0';
  if (!p->local_orchestrator && cfg->listen &&
      llorch_service_parse_listen(cfg->listen, host, sizeof host, &port) == 0 &&
      (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || host[0] == '\0')) {
    const char *h = strncmp(p->url, "http://", 7) == 0 ? p->url + 7 : "";
    size_t hl;
    if (h[0] == '[') {
      const char *e = strchr(h, ']');
      hl = e ? (size_t)(e - h - 1) : 0;
      h++;
    } else {
      hl = strcspn(h, ":/");
    }
    if (hl > 0 && hl < sizeof p->worker_public_host)
      snprintf(p->worker_public_host, sizeof p->worker_public_host, "%.*s", (int)hl, h);
  } else if (p->local_orchestrator) {
    snprintf(host, sizeof host, "127.0.0.1");
  }
  snprintf(p->worker_host, sizeof p->worker_host, "%s", host);
  return 0;
}

int llorch_pool_attach(llorch_pool **out, llorch_service *svc, const llorch_pool_options *opts,
                       llorch_errmsg *em) {
  const llorch_config *cfg = llorch_service_config(svc);
  pool *p = calloc(1, sizeof *p);
  if (!p) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  p->svc = svc;
  p->cfg = cfg;
  p->loop = llorch_service_loop(svc);
  int rc;
  if ((rc = pool_setup_urls(p, opts, em)) < 0) goto fail_pool;
  if ((rc = pool_random_hex(p->boot_id, 8)) < 0) {
    llorch_errmsg_set(em, rc, "no randomness for the boot id");
    goto fail_pool;
  }

  int gpus[LLORCH_MAX_DEVICES];
  int n_gpus = 0;
  for (size_t i = 0; i < cfg->pool.gpus.count; i++) {
    if (n_gpus == LLORCH_MAX_DEVICES) {
      rc = llorch_errmsg_set(em, LLORCH_EINVAL, "'pool.gpus' lists more than %d GPUs", LLORCH_MAX_DEVICES);
      goto fail_pool;
    }
    gpus[n_gpus++] = atoi(cfg->pool.gpus.items[i]);
  }
  llorch_gpu_inventory_options io = {.gpus = n_gpus ? gpus : NULL, .n_gpus = n_gpus,
                                     .cpu_memory = cfg->pool.cpu_memory};
  if ((rc = llorch_gpu_inventory_open(&p->inv, &io, em)) < 0) goto fail_pool;

  if ((rc = llorch_http_client_init(&p->client, p->loop, NULL)) < 0) {
    llorch_errmsg_set(em, rc, "out of memory for the HTTP client");
    goto fail_inv;
  }
  llorch_metrics *m = llorch_service_metrics(svc);
  static const char *const state[] = {"state", NULL};
  static const char *const outcome[] = {"outcome", NULL};
  p->m_workers = llorch_metrics_gauge(m, "llorch_pool_workers", "Worker processes by state.", state);
  p->m_spawns = llorch_metrics_counter(m, "llorch_pool_worker_events_total",
                                       "Worker starts and ends (started, ready... insufficient_memory, "
                                       "spawn_failed).", outcome);
  if (!p->m_workers || !p->m_spawns ||
      llorch_service_route(svc, "POST", "/v2/workers", LLORCH_ACCESS_CLUSTER, pool_on_workers, p) < 0 ||
      llorch_service_route_custom(svc, NULL, "/v2/workers/*", pool_authorize_workers, pool_on_workers, p) < 0 ||
      llorch_service_route(svc, "GET", "/v2/state", LLORCH_ACCESS_CLUSTER, on_state, p) < 0 ||
      pool_files_attach(p) < 0 ||
      llorch_service_on_stop(svc, pool_on_stop, p) < 0 ||
      llorch_service_on_shutdown(svc, pool_on_shutdown, p) < 0 ||
      /* The cluster token guards /v2/... and /metrics (only /health/ stays
       * open). Without one (a standalone pool on loopback: the config
       * refuses it elsewhere) they are open; --role=all always passes one. */
      (p->cluster_token[0] &&
       llorch_service_add_credentials(svc, LLORCH_ACCESS_CLUSTER,
                                      (const char *const[]){p->cluster_token}, 1) < 0)) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "cannot add the pool's routes (out of memory or a route clash)");
    goto fail_client;
  }
  uv_timer_init(p->loop, &p->heartbeat);
  p->heartbeat.data = p;
  uv_timer_init(p->loop, &p->finish);
  p->finish.data = p;
  uv_timer_start(&p->heartbeat, pool_on_tick, 0, 0);
  pool_refresh(p);

  int nd = llorch_gpu_inventory_count(p->inv);
  for (int i = 0; i < nd; i++) {
    const llorch_device_info *d = llorch_gpu_inventory_get(p->inv, i);
    LOG_INFO("pool", NULL, "device %s: %s, %.1f GiB total, %.1f GiB free", d->id, d->name,
             (double)d->memory_total / (1 << 30), (double)d->memory_free / (1 << 30));
  }
  int nm = 0;
  for (int i = 0; i < p->n_models; i++) nm += !p->models[i].bad;
  LOG_INFO("pool", NULL, "pool %s (boot %s): %d device%s%s, %d model%s in %zu director%s, orchestrator %s",
           cfg->pool.name, p->boot_id, nd, nd == 1 ? "" : "s",
           llorch_gpu_inventory_has_nvml(p->inv) ? " (NVML)" : "", nm, nm == 1 ? "" : "s",
           cfg->pool.model_dirs.count, cfg->pool.model_dirs.count == 1 ? "y" : "ies",
           p->local_orchestrator ? "(this process)" : p->orchestrator_url[0] ? p->orchestrator_url : "(none)");
  if (!p->cluster_token[0]) {
    llorch_service_open_access(svc, LLORCH_ACCESS_CLUSTER);
    LOG_WARN("pool", NULL, "no cluster token: any local process can start workers (loopback only)");
  }
  *out = p;
  return 0;

fail_client:
  llorch_http_client_free(p->client);
fail_inv:
  llorch_gpu_inventory_close(p->inv);
fail_pool:
  free(p);
  return rc;
}

void llorch_pool_free(llorch_pool *p) {
  if (!p) return;
  /* After llorch_service_run() every handle is closed and the client freed
   * (pool_maybe_finish); after llorch_service_free() of a service that never
   * ran, the handles were closed without callbacks and nothing was sent. */
  while (p->workers) {
    pool_worker *w = p->workers;
    p->workers = w->next;
    free(w);
  }
  free(p->models);
  pool_files_free(p);
  llorch_gpu_inventory_close(p->inv);
  free(p);
}

int llorch_pool_main(const llorch_config *cfg) {
  llorch_errmsg em = {{0}};
  llorch_service *svc = NULL;
  llorch_pool *p = NULL;
  if (llorch_service_init(&svc, cfg, "pool", &em) < 0) {
    LOG_ERROR("pool", NULL, "%s", em.text);
    return 1;
  }
  if (llorch_pool_attach(&p, svc, NULL, &em) < 0) {
    LOG_ERROR("pool", NULL, "%s", em.text);
    llorch_service_free(svc);
    return 1;
  }
  int status = llorch_service_run(svc, &em);
  if (status != 0 && em.text[0]) LOG_ERROR("pool", NULL, "%s", em.text);
  llorch_service_free(svc);
  llorch_pool_free(p);
  return status;
}
