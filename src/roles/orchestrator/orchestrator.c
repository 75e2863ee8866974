/*
 * The orchestrator role: wiring the scheduler (scheduler.c) to the service
 * runtime: routes, the tick timer (pool liveness, queue timeouts,
 * min_replicas, gauges), metrics, GET /v2/cluster, model load/unload and
 * readiness. The client and pool protocols live in client_api.c and
 * pool_api.c.
 */
#include <sys/resource.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/log.h"
#include "llorch/orchestrator.h"
#include "llorch/roles.h"
#include "events.h"
#include "orchestrator-impl.h"

/* ---- shared helpers ---- */

uint64_t orch_now_ns(void) { return uv_hrtime(); }

void orch_thread_yield_to_loop(void) {
#ifdef __linux__
  /*
   * Parsing large bodies runs on libuv's pool threads; with the CPUs busy
   * they would share them equally with the event loop, and every request
   * waiting on the loop (health checks included) would wait longer. A nicer
   * pool thread lets the loop run first. Linux nice values are per thread.
   */
  static _Thread_local bool done;
  if (!done) {
    done = true;
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  }
#endif
}

int64_t orch_now_ms(orch *o) {
  (void)o;
  return (int64_t)(uv_hrtime() / 1000000u);
}

void orch_count(orch *o, const char *outcome) {
  llorch_metric_inc(o->m_requests, (const char *[]){outcome}, 1);
}

static void on_kick(uv_timer_t *t) {
  orch *o = t->data;
  orch_run_deferred(o);
  if (o->dispatch_pending) {
    o->dispatch_pending = false;
    sched_dispatch(&o->s, orch_now_ms(o));
  }
}

void orch_kick(orch *o) {
  if (!uv_is_closing((uv_handle_t *)&o->kick)) uv_timer_start(&o->kick, on_kick, 0, 0);
}

void orch_dispatch_soon(orch *o) {
  o->dispatch_pending = true;
  orch_kick(o);
}

/* ---- metrics ---- */

static int metrics_register(orch *o) {
  static const char *const prio[] = {"priority", NULL};
  static const char *const outcome[] = {"outcome", NULL};
  static const char *const state[] = {"state", NULL};
  static const char *const kind[] = {"kind", NULL};
  static const double ttft_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
  static const double itl_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  llorch_metrics *m = o->m;
  o->m_queue = llorch_metrics_gauge(m, "llorch_orch_queue_depth", "Requests waiting in the queue.", prio);
  o->m_requests = llorch_metrics_counter(m, "llorch_orch_requests_total",
                                         "Client requests by outcome (admitted, rejected, completed, "
                                         "cancelled, failed, timed_out).", outcome);
  o->m_ttft = llorch_metrics_histogram(m, "llorch_orch_time_to_first_token_seconds",
                                       "From admission to the first token relayed.", NULL,
                                       ttft_buckets, sizeof ttft_buckets / sizeof ttft_buckets[0]);
  o->m_itl = llorch_metrics_histogram(m, "llorch_orch_inter_token_seconds",
                                      "Time between relayed tokens.", NULL, itl_buckets,
                                      sizeof itl_buckets / sizeof itl_buckets[0]);
  o->m_tokens = llorch_metrics_counter(m, "llorch_orch_tokens_total",
                                       "Tokens of completed requests.", kind);
  o->m_workers = llorch_metrics_gauge(m, "llorch_orch_workers", "Workers known, by state.", state);
  o->m_pools_up = llorch_metrics_gauge(m, "llorch_orch_pools_up", "Pools up (heartbeating).", NULL);
  o->m_pools = llorch_metrics_gauge(m, "llorch_orch_pools", "Pools known.", NULL);
  o->m_evictions = llorch_metrics_counter(m, "llorch_orch_evictions_total",
                                          "Idle workers stopped to make room.", NULL);
  o->m_retries = llorch_metrics_counter(m, "llorch_orch_retries_total",
                                        "Requests retried after their worker failed before "
                                        "the first token.", NULL);
  o->m_starts = llorch_metrics_counter(m, "llorch_orch_worker_starts_total",
                                       "Worker starts asked of pools, by outcome.", outcome);
  if (!o->m_queue || !o->m_requests || !o->m_ttft || !o->m_itl || !o->m_tokens || !o->m_workers ||
      !o->m_pools_up || !o->m_pools || !o->m_evictions || !o->m_retries || !o->m_starts)
    return LLORCH_ENOMEM;
  /* Series that exist from the start, so dashboards see zeros, not gaps. */
  static const char *const outcomes[] = {"admitted", "rejected", "completed", "cancelled", "failed", "timed_out"};
  for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++)
    llorch_metric_inc(o->m_requests, (const char *[]){outcomes[i]}, 0);
  return 0;
}

static void metrics_update(orch *o) {
  sched *s = &o->s;
  llorch_metric_set(o->m_queue, (const char *[]){"interactive"}, s->queued[LLORCH_PRIORITY_INTERACTIVE]);
  llorch_metric_set(o->m_queue, (const char *[]){"batch"}, s->queued[LLORCH_PRIORITY_BATCH]);
  int per_state[SCHED_WORKER_N_STATES] = {0};
  for (int i = 0; i < s->n_workers; i++) per_state[s->workers[i]->state]++;
  for (int i = 0; i < SCHED_WORKER_N_STATES; i++)
    llorch_metric_set(o->m_workers, (const char *[]){sched_worker_state_name((sched_worker_state)i)},
                      per_state[i]);
  llorch_metric_set(o->m_pools_up, NULL, sched_pools_up(s));
  llorch_metric_set(o->m_pools, NULL, s->n_pools);
  llorch_metric_inc(o->m_evictions, NULL, (double)(s->stats.evictions - o->last_evictions));
  llorch_metric_inc(o->m_retries, NULL, (double)(s->stats.retries - o->last_retries));
  uint64_t ok = s->stats.starts - s->stats.start_failures;
  (void)ok;
  llorch_metric_inc(o->m_starts, (const char *[]){"asked"}, (double)(s->stats.starts - o->last_starts));
  llorch_metric_inc(o->m_starts, (const char *[]){"failed"},
                    (double)(s->stats.start_failures - o->last_start_failures));
  o->last_evictions = s->stats.evictions;
  o->last_retries = s->stats.retries;
  o->last_starts = s->stats.starts;
  o->last_start_failures = s->stats.start_failures;
}

static void on_tick(uv_timer_t *t) {
  orch *o = t->data;
  sched_tick(&o->s, orch_now_ms(o));
  metrics_update(o);
  orch_events_tick(o, orch_now_ms(o));
  orch_resume_tick(o, orch_now_ms(o));
}

/* ---- GET /v2/cluster ---- */

/* An integer that is unknown when negative (NVML gave nothing, no exit code). */
static void json_kint_or_null(llorch_jbuf *b, const char *key, int64_t v) {
  llorch_jbuf_key(b, key);
  if (v >= 0) llorch_jbuf_int(b, v);
  else llorch_jbuf_null(b);
}

static void json_device(llorch_jbuf *b, const sched_device *d) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "id", d->id);
  llorch_jbuf_kstr(b, "kind", d->kind == SCHED_DEV_CUDA ? "cuda" : "cpu");
  llorch_jbuf_kint(b, "index", d->index);
  llorch_jbuf_kstr(b, "name", d->name);
  llorch_jbuf_kstr(b, "uuid", d->uuid);
  llorch_jbuf_kint(b, "memory_total", (int64_t)d->memory_total);
  llorch_jbuf_kint(b, "memory_used", (int64_t)d->memory_used);
  llorch_jbuf_kint(b, "memory_free", (int64_t)d->memory_free);
  json_kint_or_null(b, "utilization", d->utilization);
  json_kint_or_null(b, "temperature", d->temperature);
  llorch_jbuf_end(b);
}

static void json_worker(llorch_jbuf *b, const sched_worker *w, int64_t now) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "pool", w->pool->name);
  llorch_jbuf_kstr(b, "id", w->id);
  llorch_jbuf_kstr(b, "model", w->model_name);
  llorch_jbuf_kstr(b, "file", w->file);
  llorch_jbuf_karr(b, "devices");
  for (int i = 0; i < w->n_devices; i++) llorch_jbuf_str(b, w->devices[i]);
  llorch_jbuf_end(b);
  llorch_jbuf_kstr(b, "state", sched_worker_state_name(w->state));
  llorch_jbuf_kbool(b, "routable", sched_worker_routable(w));
  llorch_jbuf_kbool(b, "broken", w->broken);
  llorch_jbuf_kbool(b, "stopping", w->stop_sent);
  llorch_jbuf_kbool(b, "adopted", w->adopted);
  llorch_jbuf_kbool(b, "draining", w->draining);
  llorch_jbuf_kstr(b, "url", w->url[0] ? w->url : NULL);
  llorch_jbuf_kint(b, "pid", w->pid);
  llorch_jbuf_kint(b, "ctx", w->ctx);
  llorch_jbuf_kint(b, "slots", w->slots);
  llorch_jbuf_kint(b, "busy", w->busy);
  llorch_jbuf_kint(b, "memory_bytes", (int64_t)w->memory_bytes);
  llorch_jbuf_kint(b, "idle_ms", w->busy ? 0 : now - w->last_used_ms);
  llorch_jbuf_key(b, "exit");
  if (w->state == SCHED_WORKER_FAILED || w->state == SCHED_WORKER_EXITED) {
    llorch_jbuf_obj(b);
    json_kint_or_null(b, "code", w->exit_code);
    llorch_jbuf_kstr(b, "signal", w->exit_signal[0] ? w->exit_signal : NULL);
    llorch_jbuf_kstr(b, "reason", w->exit_reason);
    llorch_jbuf_end(b);
  } else {
    llorch_jbuf_null(b);
  }
  llorch_jbuf_end(b);
}

static void json_pool(llorch_jbuf *b, const sched_pool *p, int64_t now) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "name", p->name);
  llorch_jbuf_kstr(b, "url", p->url);
  llorch_jbuf_kbool(b, "up", p->up);
  llorch_jbuf_kstr(b, "boot_id", p->boot_id);
  llorch_jbuf_kint(b, "heartbeat_interval_ms", p->interval_ms);
  llorch_jbuf_kint(b, "last_heartbeat_ms_ago", now - p->last_seen_ms);
  llorch_jbuf_karr(b, "devices");
  for (int d = 0; d < p->n_devices; d++) json_device(b, &p->devices[d]);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "models");
  for (int k = 0; k < p->n_models; k++) {
    const sched_pool_model *pm = &p->models[k];
    llorch_jbuf_obj(b);
    llorch_jbuf_kstr(b, "name", pm->name);
    llorch_jbuf_kstr(b, "file", pm->file);
    llorch_jbuf_kstr(b, "arch", pm->arch);
    llorch_jbuf_kstr(b, "quant", pm->quant);
    llorch_jbuf_kint(b, "params", (int64_t)pm->params);
    llorch_jbuf_kint(b, "ctx", pm->ctx);
    llorch_jbuf_kint(b, "file_bytes", (int64_t)pm->file_bytes);
    llorch_jbuf_end(b);
  }
  llorch_jbuf_end(b);
  llorch_jbuf_end(b);
}

static void json_model(llorch_jbuf *b, const sched *s, int i) {
  const sched_model *m = &s->models[i];
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "name", m->name);
  llorch_jbuf_kstr(b, "file", m->file);
  llorch_jbuf_kstr(b, "state", sched_model_state(s, i));
  llorch_jbuf_kint(b, "replicas", sched_model_replicas(s, i));
  llorch_jbuf_kint(b, "min_replicas", m->min_replicas);
  llorch_jbuf_kint(b, "max_replicas", m->max_replicas);
  llorch_jbuf_kint(b, "ctx", m->ctx);
  llorch_jbuf_kint(b, "slots", m->slots);
  llorch_jbuf_kint(b, "keep_alive_ms", m->keep_alive_ms);
  llorch_jbuf_kstr(b, "priority", m->priority == LLORCH_PRIORITY_BATCH ? "batch" : "interactive");
  llorch_jbuf_karr(b, "pins");
  for (int k = 0; k < m->n_pins; k++) llorch_jbuf_str(b, m->pins[k]);
  llorch_jbuf_end(b);
  llorch_jbuf_kint(b, "queued", m->queued);
  llorch_jbuf_kint(b, "running", m->running);
  llorch_jbuf_kbool(b, "unloaded", m->unloaded);
  llorch_jbuf_kstr(b, "pending_reason", m->pending[0] ? m->pending : NULL);
  llorch_jbuf_end(b);
}

/* A copy of a model file between pools (scheduler.h, sched_fetch). */
static void json_fetch(llorch_jbuf *b, const sched_fetch *f) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "file", f->file);
  llorch_jbuf_kstr(b, "pool", f->target);
  llorch_jbuf_kstr(b, "source", f->source);
  llorch_jbuf_kint(b, "attempt", f->attempts);
  llorch_jbuf_kstr(b, "state", f->given_up ? "given_up" : f->state);
  llorch_jbuf_kint(b, "bytes_done", (int64_t)f->bytes_done);
  llorch_jbuf_kint(b, "bytes_total", (int64_t)f->size);
  llorch_jbuf_kint(b, "rate_bytes_per_s", (int64_t)f->rate);
  llorch_jbuf_key(b, "eta_s");
  if (f->eta_s >= 0 && !f->ended) llorch_jbuf_int(b, f->eta_s);
  else llorch_jbuf_null(b);
  llorch_jbuf_kstr(b, "error", f->error[0] ? f->error : NULL);
  llorch_jbuf_end(b);
}

void orch_cluster_json(orch *o, llorch_jbuf *b) {
  sched *s = &o->s;
  int64_t now = orch_now_ms(o);
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "orchestrator_id", o->id);
  llorch_jbuf_karr(b, "pools");
  for (int i = 0; i < s->n_pools; i++) json_pool(b, s->pools[i], now);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "workers");
  for (int i = 0; i < s->n_workers; i++) json_worker(b, s->workers[i], now);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "fetches");
  for (int i = 0; i < s->n_fetches; i++) json_fetch(b, s->fetches[i]);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "pending_starts");
  for (int i = 0; i < s->n_starts; i++) {
    const sched_pending_start *ps = s->starts[i];
    llorch_jbuf_obj(b);
    llorch_jbuf_kstr(b, "model", s->models[ps->model].name);
    llorch_jbuf_kstr(b, "pool", ps->pool->name);
    llorch_jbuf_kstr(b, "device", ps->device);
    llorch_jbuf_kint(b, "need_bytes", (int64_t)ps->need_bytes);
    llorch_jbuf_kstr(b, "worker_id", ps->answered ? ps->worker_id : NULL);
    llorch_jbuf_kint(b, "age_ms", now - ps->asked_ms);
    llorch_jbuf_end(b);
  }
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "models");
  for (int i = 0; i < s->n_models; i++) json_model(b, s, i);
  llorch_jbuf_end(b);
  llorch_jbuf_kobj(b, "queue");
  llorch_jbuf_kint(b, "interactive", s->queued[LLORCH_PRIORITY_INTERACTIVE]);
  llorch_jbuf_kint(b, "batch", s->queued[LLORCH_PRIORITY_BATCH]);
  llorch_jbuf_kint(b, "total", s->total_queued);
  llorch_jbuf_kint(b, "max_total", s->lim.max_total);
  llorch_jbuf_kint(b, "timeout_ms", s->lim.queue_timeout_ms);
  llorch_jbuf_end(b);
  llorch_jbuf_kobj(b, "stats");
  llorch_jbuf_kint(b, "admitted", (int64_t)s->stats.admitted);
  llorch_jbuf_kint(b, "rejected", (int64_t)s->stats.rejected);
  llorch_jbuf_kint(b, "timed_out", (int64_t)s->stats.timed_out);
  llorch_jbuf_kint(b, "retries", (int64_t)s->stats.retries);
  llorch_jbuf_kint(b, "evictions", (int64_t)s->stats.evictions);
  llorch_jbuf_kint(b, "starts", (int64_t)s->stats.starts);
  llorch_jbuf_kint(b, "start_failures", (int64_t)s->stats.start_failures);
  llorch_jbuf_kint(b, "active_requests", o->n_active);
  llorch_jbuf_end(b);
  llorch_jbuf_end(b);
}

static void on_cluster(llorch_http_request *req, void *user) {
  orch *o = user;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  orch_cluster_json(o, &b);
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
}

/* ---- POST /v2/models/{name}/load | /unload ---- */

static void on_model_op(llorch_http_request *req, void *user) {
  orch *o = user;
  const char *path = llorch_http_request_path(req) + strlen("/v2/models/");
  const char *slash = strrchr(path, '/');
  char name[SCHED_NAME_MAX];
  size_t n = slash ? (size_t)(slash - path) : 0;
  if (!slash || n == 0 || n >= sizeof name || (strcmp(slash, "/load") && strcmp(slash, "/unload"))) {
    llorch_http_respond_error(req, 404, "invalid_request_error",
                              "expected POST /v2/models/{name}/load or /unload", NULL, "not_found");
    return;
  }
  memcpy(name, path, n);
  name[n] = '\0';
  int mi = sched_model_find(&o->s, name);
  if (mi < 0) {
    char msg[200];
    snprintf(msg, sizeof msg, "The model '%.100s' does not exist", name);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, "model", "model_not_found");
    return;
  }
  int64_t now = orch_now_ms(o);
  char body[600];
  if (strcmp(slash, "/load") == 0) {
    llorch_errmsg em = {{0}};
    if (sched_model_load(&o->s, mi, now, &em) < 0) {
      llorch_http_respond_error(req, 507, "server_error", em.text, NULL, "INSUFFICIENT_MEMORY");
      return;
    }
    LOG_INFO("orch", llorch_http_request_id(req), "operator at %s: load %s", llorch_http_request_peer(req),
             name);
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"state\":\"%s\",\"replicas\":%d}", name,
             sched_model_state(&o->s, mi), sched_model_replicas(&o->s, mi));
  } else {
    int stopped = sched_model_unload(&o->s, mi, now);
    LOG_INFO("orch", llorch_http_request_id(req), "operator at %s: unload %s (%d workers stopping)",
             llorch_http_request_peer(req), name, stopped);
    snprintf(body, sizeof body, "{\"model\":\"%s\",\"stopping\":%d,\"busy_workers_left\":%d}", name,
             stopped, o->s.models[mi].running > 0 ? 1 : 0);
  }
  llorch_http_respond_json(req, 202, body);
}

static void on_ready(llorch_http_request *req, void *user) {
  orch *o = user;
  int up = sched_pools_up(&o->s);
  char body[160];
  if (o->stopping) {
    llorch_http_respond_json(req, 503, "{\"status\":\"stopping\"}");
  } else if (up == 0) {
    snprintf(body, sizeof body, "{\"status\":\"no pool is up\",\"pools\":%d,\"pools_up\":0}", o->s.n_pools);
    llorch_http_respond_json(req, 503, body);
  } else {
    snprintf(body, sizeof body, "{\"status\":\"ready\",\"pools\":%d,\"pools_up\":%d}", o->s.n_pools, up);
    llorch_http_respond_json(req, 200, body);
  }
}

/* ---- lifecycle ---- */

static void orch_on_stop(llorch_service *svc, void *user) {
  (void)svc;
  orch *o = user;
  o->stopping = true;
  uv_timer_stop(&o->tick);
  orch_req_abort_all(o);
  orch_events_stop(o);
  orch_resume_stop(o);
}

static void orch_on_shutdown(llorch_service *svc, void *user) {
  (void)svc;
  orch *o = user;
  uv_close((uv_handle_t *)&o->tick, NULL);
  uv_close((uv_handle_t *)&o->kick, NULL);
  orch_resume_free_all(o);
  if (o->client) {
    llorch_http_client_free(o->client);
    o->client = NULL;
  }
}

/*
 * Who may call what (README "Security"): client keys reach /v1/...; operator
 * keys reach /v2/... control and state and /metrics; the cluster token reaches
 * the pool protocol (and /metrics). A class with nothing configured is open
 * only where the config allows it: clients when there are no client keys;
 * operators only while nothing at all is configured (a loopback-only dev
 * setup); pools only for a standalone orchestrator without a cluster token,
 * which the config confines to loopback. In --role=all the cluster class
 * always has a token (all.c makes an internal one), so the process's own
 * pool is the only one that can register unless a token is configured.
 */
static int orch_setup_access(orch *o, const llorch_orchestrator_options *opts, llorch_errmsg *em) {
  const llorch_config *cfg = o->cfg;
  llorch_service *svc = o->svc;
  const llorch_strlist *api = &cfg->orchestrator.api_keys, *admin = &cfg->orchestrator.admin_keys;
  o->cluster_token = opts && opts->cluster_token ? opts->cluster_token : cfg->orchestrator.cluster_token;
  int rc;
  if ((rc = llorch_service_add_credentials(svc, LLORCH_ACCESS_CLIENT, (const char *const *)api->items,
                                           api->count)) < 0 ||
      (rc = llorch_service_add_credentials(svc, LLORCH_ACCESS_ADMIN, (const char *const *)admin->items,
                                           admin->count)) < 0 ||
      (o->cluster_token &&
       (rc = llorch_service_add_credentials(svc, LLORCH_ACCESS_CLUSTER, &o->cluster_token, 1)) < 0))
    return llorch_errmsg_set(em, rc, "cannot set up the orchestrator's credentials: %s", llorch_strerror(rc));
  if (api->count == 0) llorch_service_open_access(svc, LLORCH_ACCESS_CLIENT);
  if (admin->count == 0 && api->count == 0 && !cfg->orchestrator.cluster_token)
    llorch_service_open_access(svc, LLORCH_ACCESS_ADMIN);
  if (!o->cluster_token) llorch_service_open_access(svc, LLORCH_ACCESS_CLUSTER);

  bool loopback = llorch_config_listen_is_loopback(cfg);
  if (api->count == 0 && !loopback)
    LOG_WARN("orch", NULL, "!!! no orchestrator.api_keys while listening on %s: anyone who reaches "
             "this port can use /v1/* (set --api-key or LLORCH_ORCHESTRATOR_API_KEYS) !!!", cfg->listen);
  if (!o->cluster_token)
    LOG_WARN("orch", NULL, "no orchestrator.cluster_token: any local process can register as a pool "
             "(loopback only)");
  if (admin->count == 0 && (api->count > 0 || cfg->orchestrator.cluster_token))
    LOG_INFO("orch", NULL, "no orchestrator.admin_keys: /v2/cluster, /v2/models/* and /metrics "
             "answer 401/403 (set --admin-key or LLORCH_ORCHESTRATOR_ADMIN_KEYS)");
  return 0;
}

int llorch_orchestrator_attach(llorch_orchestrator **out, llorch_service *svc,
                               const llorch_orchestrator_options *opts, llorch_errmsg *em) {
  const llorch_config *cfg = llorch_service_config(svc);
  orch *o = calloc(1, sizeof *o);
  if (!o) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  o->cfg = cfg;
  o->svc = svc;
  o->loop = llorch_service_loop(svc);
  o->m = llorch_service_metrics(svc);
  o->started_unix = (int64_t)time(NULL);
  llorch_reqid_generate(o->id);
  int rc;
  sched_limits lim;
  sched_limits_from_config(&lim, cfg);
  sched_ops ops = {o, orch_req_assign, orch_pool_start, orch_pool_stop, orch_req_fail, orch_pool_fetch,
                   orch_pool_fetch_cancel};
  if ((rc = sched_init(&o->s, &lim, &ops)) < 0) {
    llorch_errmsg_set(em, rc, "out of memory for the scheduler");
    goto fail_sched;
  }
  for (size_t i = 0; i < cfg->orchestrator.models.count; i++) {
    if ((rc = sched_model_add(&o->s, &cfg->orchestrator.models.items[i], em)) < 0) goto fail_sched;
  }
  /* The timeline sees the start/stop decisions on their way to the pools. */
  if ((rc = orch_events_init(o, em)) < 0 || (rc = orch_dashboard_init(o, em)) < 0) goto fail_sched;
  orch_events_ops(o, &o->s.ops);
  if ((rc = orch_setup_access(o, opts, em)) < 0) goto fail_sched;
  if ((rc = metrics_register(o)) < 0) {
    llorch_errmsg_set(em, rc, "out of memory registering metrics");
    goto fail_sched;
  }
  /*
   * Default client: keep-alive connections to workers and pools are pooled
   * and reused. (Reuse was off for a while: the client handed a connection to
   * the next call while its previous write was still queued in libuv, which
   * crashed the orchestrator at thousands of streams; fixed in
   * src/net/http_client.c.)
   */
  if ((rc = llorch_http_client_init(&o->client, o->loop, NULL)) < 0) {
    llorch_errmsg_set(em, rc, "out of memory for the HTTP client");
    goto fail_sched;
  }
  /* Operator keys also reach the client API: an operator can try what clients see. */
  const unsigned client = LLORCH_ACCESS_CLIENT | LLORCH_ACCESS_ADMIN;
  if (llorch_service_route(svc, "POST", "/v1/chat/completions", client, orch_on_chat, o) < 0 ||
      llorch_service_route(svc, "POST", "/v1/completions", client, orch_on_completions, o) < 0 ||
      llorch_service_route(svc, "POST", "/v1/messages", client, orch_on_messages, o) < 0 ||
      llorch_service_route(svc, "POST", "/v1/responses", client, orch_on_responses, o) < 0 ||
      llorch_service_route(svc, "POST", "/v1/embeddings", client, orch_on_embeddings, o) < 0 ||
      llorch_service_route(svc, "GET", "/v1/models", client, orch_on_models, o) < 0 ||
      llorch_service_route(svc, "GET", "/v2/streams/*", client, orch_on_stream, o) < 0 ||
      llorch_service_route(svc, "POST", "/v2/pools/*", LLORCH_ACCESS_CLUSTER, orch_on_pools, o) < 0 ||
      llorch_service_route(svc, "GET", "/v2/cluster", LLORCH_ACCESS_ADMIN, on_cluster, o) < 0 ||
      llorch_service_route(svc, "POST", "/v2/models/*", LLORCH_ACCESS_ADMIN, on_model_op, o) < 0 ||
      llorch_service_route(svc, "GET", "/health/ready", LLORCH_ACCESS_PUBLIC, on_ready, o) < 0 ||
      llorch_service_on_stop(svc, orch_on_stop, o) < 0 ||
      llorch_service_on_shutdown(svc, orch_on_shutdown, o) < 0) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "cannot add the orchestrator's routes (out of memory or a route clash)");
    goto fail_client;
  }
  uv_timer_init(o->loop, &o->tick);
  o->tick.data = o;
  uv_timer_init(o->loop, &o->kick);
  o->kick.data = o;
  uv_timer_start(&o->tick, on_tick, ORCH_TICK_MS, ORCH_TICK_MS);
  LOG_INFO("orch", NULL, "orchestrator %s: %d models in the catalog, queue max %d, timeout %" PRId64
           " ms, retry_max %d, heartbeat_miss_limit %d", o->id, o->s.n_models, lim.max_total,
           lim.queue_timeout_ms, lim.retry_max, lim.heartbeat_miss_limit);
  *out = o;
  return 0;

fail_client:
  llorch_http_client_free(o->client);
fail_sched:
  orch_events_free(o);
  sched_free(&o->s);
  free(o);
  return rc;
}

void llorch_orchestrator_free(llorch_orchestrator *o) {
  if (!o) return;
  orch_events_free(o);
  sched_free(&o->s);
  free(o);
}

int llorch_orchestrator_main(const llorch_config *cfg) {
  llorch_errmsg em = {{0}};
  llorch_service *svc = NULL;
  llorch_orchestrator *o = NULL;
  if (llorch_service_init(&svc, cfg, "orchestrator", &em) < 0) {
    LOG_ERROR("orch", NULL, "%s", em.text);
    return 1;
  }
  if (llorch_orchestrator_attach(&o, svc, NULL, &em) < 0) {
    LOG_ERROR("orch", NULL, "%s", em.text);
    llorch_service_free(svc);
    return 1;
  }
  int status = llorch_service_run(svc, &em);
  if (status != 0 && em.text[0]) LOG_ERROR("orch", NULL, "%s", em.text);
  llorch_service_free(svc);
  llorch_orchestrator_free(o);
  return status;
}
