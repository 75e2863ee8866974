/*
 * The orchestrator's timeline: a ring of recent decisions and events, and
 * GET /v2/cluster/events, a server-sent event stream of them and of the
 * cluster state (events.h says where events come from).
 *
 * A stream starts with the ring ("event: timeline", one per entry, oldest
 * first) and the whole state ("event: cluster", the body of GET
 * /v2/cluster); then each new entry as it is recorded, and the state again
 * whenever something in it changed. So a client (the dashboard, a script)
 * never polls, and one that reconnects has the recent past at once.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events.h"
#include "llorch/log.h"

/* ---- state ---- */

typedef struct ev_entry {
  uint64_t seq;
  int64_t unix_ms;
  char kind[16];
  char pool[SCHED_NAME_MAX];
  char worker[SCHED_NAME_MAX];
  char model[SCHED_NAME_MAX];
  char message[2 * SCHED_REASON_MAX];
} ev_entry;

typedef struct ev_stream {
  llorch_http_request *req;     /* NULL once ended */
  struct ev_stream *next;
} ev_stream;

/* What the last tick saw of a pool or a worker, to notice changes. */
typedef struct ev_pool_seen {
  char name[SCHED_NAME_MAX];
  bool up;
  bool mark;
} ev_pool_seen;

typedef struct ev_worker_seen {
  char pool[SCHED_NAME_MAX];
  char id[SCHED_NAME_MAX];
  sched_worker_state state;
  bool broken;
  bool mark;
} ev_worker_seen;

struct orch_events {
  ev_entry ring[ORCH_EVENTS_RING];
  uint64_t next_seq;            /* seq of the next entry; entries 1..next_seq-1 were recorded */
  ev_stream *streams;
  int n_streams;
  ev_pool_seen *pools;          /* (n_pools) */
  int n_pools, cap_pools;
  ev_worker_seen *workers;      /* (n_workers) */
  int n_workers, cap_workers;
  char (*pending)[SCHED_REASON_MAX]; /* (o->s.n_models) each model's pending reason last tick */
  uint64_t last_retries, last_timed_out, last_start_failures;
  uint64_t digest;              /* of the state last sent to the streams */
  int64_t last_push_ms;
  sched_ops inner;              /* pool_api.c's start/stop, called after recording */
};

static int64_t unix_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void copy_str(char *dst, size_t n, const char *src) {
  snprintf(dst, n, "%s", src ? src : "");
}

/* ---- streams ---- */

static void entry_json(llorch_jbuf *b, const ev_entry *e) {
  llorch_jbuf_cstr(b, "{\"seq\":");
  llorch_jbuf_int(b, (int64_t)e->seq);
  llorch_jbuf_cstr(b, ",\"time_ms\":");
  llorch_jbuf_int(b, e->unix_ms);
  llorch_jbuf_cstr(b, ",\"kind\":");
  llorch_jbuf_str(b, e->kind);
  llorch_jbuf_cstr(b, ",\"pool\":");
  llorch_jbuf_str(b, e->pool[0] ? e->pool : NULL);
  llorch_jbuf_cstr(b, ",\"worker\":");
  llorch_jbuf_str(b, e->worker[0] ? e->worker : NULL);
  llorch_jbuf_cstr(b, ",\"model\":");
  llorch_jbuf_str(b, e->model[0] ? e->model : NULL);
  llorch_jbuf_cstr(b, ",\"message\":");
  llorch_jbuf_str(b, e->message);
  llorch_jbuf_cstr(b, "}");
}

static void stream_close(ev_stream *st) {
  if (!st->req) return;
  llorch_http_request *req = st->req;
  st->req = NULL;
  llorch_http_request_set_data(req, NULL, NULL);
  llorch_http_sse_end(req);
}

/*
 * Sends one event to a stream. A reader that lets ORCH_EVENTS_MAX_QUEUED
 * bytes pile up is cut off instead of growing the orchestrator's memory; it
 * can reconnect and gets the ring and the state again.
 */
static void stream_send(ev_stream *st, const char *event, const char *data, size_t len) {
  if (!st->req) return;
  if (llorch_http_request_queued_bytes(st->req) > ORCH_EVENTS_MAX_QUEUED) {
    LOG_WARN("orch", llorch_http_request_id(st->req), "event stream to %s is not read (%zu bytes "
             "queued): ended", llorch_http_request_peer(st->req), llorch_http_request_queued_bytes(st->req));
    stream_close(st);
    return;
  }
  if (llorch_http_sse_send(st->req, event, data, len) == LLORCH_ECLOSED) stream_close(st);
}

/* Frees the streams that ended (closed by the client or by us). */
static void streams_reap(orch_events *ev) {
  for (ev_stream **pp = &ev->streams; *pp;) {
    ev_stream *st = *pp;
    if (st->req) {
      pp = &st->next;
      continue;
    }
    *pp = st->next;
    free(st);
    ev->n_streams--;
  }
}

static void send_to_all(orch *o, const char *event, const char *data, size_t len) {
  for (ev_stream *st = o->events->streams; st; st = st->next) stream_send(st, event, data, len);
  streams_reap(o->events);
}

static void send_state(orch *o, ev_stream *only) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  orch_cluster_json(o, &b);
  if (llorch_jbuf_error(&b)) {
    LOG_WARN("orch", NULL, "out of memory building the cluster state for the event streams");
  } else if (only) {
    stream_send(only, "cluster", b.data, b.len);
  } else {
    send_to_all(o, "cluster", b.data, b.len);
  }
  llorch_jbuf_free(&b);
}

static void on_stream_close(llorch_http_request *req, void *data) {
  (void)req;
  ev_stream *st = data;
  st->req = NULL; /* freed by the next streams_reap */
}

/* GET /v2/cluster/events */
static void on_events(llorch_http_request *req, void *user) {
  orch *o = user;
  orch_events *ev = o->events;
  streams_reap(ev);
  if (o->stopping) {
    llorch_http_respond_error(req, 503, "server_error", "the orchestrator is shutting down", NULL,
                              "shutting_down");
    return;
  }
  if (ev->n_streams >= ORCH_EVENTS_MAX_STREAMS) {
    char msg[120];
    snprintf(msg, sizeof msg, "too many open event streams (limit %d)", ORCH_EVENTS_MAX_STREAMS);
    llorch_http_response_header(req, "Retry-After", "5");
    llorch_http_respond_error(req, 429, "rate_limit_error", msg, NULL, "too_many_streams");
    return;
  }
  ev_stream *st = calloc(1, sizeof *st);
  if (!st) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  if (llorch_http_sse_start(req) < 0) {
    free(st);
    return;
  }
  st->req = req;
  st->next = ev->streams;
  ev->streams = st;
  ev->n_streams++;
  llorch_http_request_set_data(req, st, on_stream_close);
  LOG_DEBUG("orch", llorch_http_request_id(req), "event stream opened by %s (%d open)",
            llorch_http_request_peer(req), ev->n_streams);
  /* The ring, oldest first, then the state (a send may end the stream: req
   * is not touched after this point). */
  uint64_t first = ev->next_seq > ORCH_EVENTS_RING ? ev->next_seq - ORCH_EVENTS_RING : 1;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  for (uint64_t seq = first; seq < ev->next_seq && st->req; seq++) {
    llorch_jbuf_reset(&b);
    entry_json(&b, &ev->ring[seq % ORCH_EVENTS_RING]);
    if (!llorch_jbuf_error(&b)) stream_send(st, "timeline", b.data, b.len);
  }
  llorch_jbuf_free(&b);
  send_state(o, st);
}

/* ---- recording ---- */

void orch_event(orch *o, const char *kind, const char *pool, const char *worker, const char *model,
                const char *fmt, ...) {
  orch_events *ev = o->events;
  if (!ev) return;
  uint64_t seq = ev->next_seq++;
  ev_entry *e = &ev->ring[seq % ORCH_EVENTS_RING];
  memset(e, 0, sizeof *e);
  e->seq = seq;
  e->unix_ms = unix_now_ms();
  copy_str(e->kind, sizeof e->kind, kind);
  copy_str(e->pool, sizeof e->pool, pool);
  copy_str(e->worker, sizeof e->worker, worker);
  copy_str(e->model, sizeof e->model, model);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  if (!ev->streams) return;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  entry_json(&b, e);
  if (!llorch_jbuf_error(&b)) send_to_all(o, "timeline", b.data, b.len);
  llorch_jbuf_free(&b);
}

/* ---- decisions as they leave the scheduler ---- */

static void diff_pools(orch *o, int64_t now);

static void ev_on_start(void *ud, const sched_start *st) {
  orch *o = ud;
  /* A registration places models at once: its pool_up goes first. */
  diff_pools(o, orch_now_ms(o));
  char need[32];
  sched_format_bytes(need, sizeof need, st->need_bytes);
  orch_event(o, "placed", st->pool->name, NULL, st->model->name,
             "placed %s on %s %s (needs %s for ctx %d x %d slots)", st->model->name, st->pool->name,
             st->device, need, st->ctx, st->slots);
  o->events->inner.start(o->events->inner.ud, st);
}

static void ev_on_stop(void *ud, sched_worker *w, const char *why) {
  orch *o = ud;
  const char *kind = strcmp(why, "evicted") == 0 ? "evicted"
                     : strcmp(why, "unloaded") == 0 ? "unloaded"
                     : strcmp(why, "drained") == 0 ? "drained"
                     : "stopping";
  char mem[32];
  sched_format_bytes(mem, sizeof mem, w->memory_bytes);
  orch_event(o, kind, w->pool ? w->pool->name : NULL, w->id, w->model_name,
             "stopping worker %s of %s on %s (%s; it holds %s)", w->id, w->model_name,
             w->pool ? w->pool->name : "?", why, mem);
  o->events->inner.stop(o->events->inner.ud, w, why);
}

void orch_events_ops(orch *o, sched_ops *ops) {
  o->events->inner = *ops;
  ops->ud = o;
  ops->start = ev_on_start;
  ops->stop = ev_on_stop;
}

/* ---- changes seen at the tick ---- */

static ev_pool_seen *pool_seen(orch_events *ev, const char *name) {
  for (int i = 0; i < ev->n_pools; i++)
    if (strcmp(ev->pools[i].name, name) == 0) return &ev->pools[i];
  if (ev->n_pools == ev->cap_pools) {
    int cap = ev->cap_pools ? 2 * ev->cap_pools : 8;
    ev_pool_seen *p = realloc(ev->pools, (size_t)cap * sizeof *p);
    if (!p) return NULL;
    ev->pools = p;
    ev->cap_pools = cap;
  }
  ev_pool_seen *ps = &ev->pools[ev->n_pools++];
  memset(ps, 0, sizeof *ps);
  copy_str(ps->name, sizeof ps->name, name);
  return ps;
}

/* NULL when it could not be added (out of memory); *is_new when it was. */
static ev_worker_seen *worker_seen(orch_events *ev, const char *pool, const char *id, bool *is_new) {
  *is_new = false;
  for (int i = 0; i < ev->n_workers; i++)
    if (strcmp(ev->workers[i].id, id) == 0 && strcmp(ev->workers[i].pool, pool) == 0)
      return &ev->workers[i];
  if (ev->n_workers == ev->cap_workers) {
    int cap = ev->cap_workers ? 2 * ev->cap_workers : 16;
    ev_worker_seen *p = realloc(ev->workers, (size_t)cap * sizeof *p);
    if (!p) return NULL;
    ev->workers = p;
    ev->cap_workers = cap;
  }
  ev_worker_seen *ws = &ev->workers[ev->n_workers++];
  memset(ws, 0, sizeof *ws);
  copy_str(ws->pool, sizeof ws->pool, pool);
  copy_str(ws->id, sizeof ws->id, id);
  ws->mark = true;
  *is_new = true;
  return ws;
}

/* What an event says about a worker: from the scheduler's view or from a
 * pool's worker event (which may end a worker between two ticks). */
typedef struct ev_worker_view {
  const char *pool, *id, *model;
  sched_worker_state state;
  int pid;
  bool adopted;
  int exit_code;
  const char *exit_signal, *exit_reason;
} ev_worker_view;

static void worker_changed(orch *o, const ev_worker_view *w, bool is_new, sched_worker_state before) {
  const char *pool = w->pool;
  if (w->state == SCHED_WORKER_STARTING && is_new) {
    orch_event(o, "started", pool, w->id, w->model, "worker %s of %s is starting on %s (pid %d)", w->id,
               w->model, pool, w->pid);
  } else if (w->state == SCHED_WORKER_READY && (is_new || before != SCHED_WORKER_READY)) {
    orch_event(o, "ready", pool, w->id, w->model, "worker %s of %s is ready on %s%s", w->id, w->model,
               pool, w->adopted ? " (adopted from the pool's registration)" : "");
  } else if (w->state == SCHED_WORKER_FAILED) {
    orch_event(o, "failed", pool, w->id, w->model, "worker %s of %s failed on %s: %s", w->id, w->model,
               pool, w->exit_reason[0] ? w->exit_reason : "no reason given");
  } else if (w->state == SCHED_WORKER_EXITED) {
    char how[64] = "";
    if (w->exit_signal[0]) snprintf(how, sizeof how, " (signal %s)", w->exit_signal);
    else if (w->exit_code >= 0) snprintf(how, sizeof how, " (exit code %d)", w->exit_code);
    orch_event(o, "exited", pool, w->id, w->model, "worker %s of %s exited on %s%s%s%s", w->id, w->model,
               pool, how, w->exit_reason[0] ? ": " : "", w->exit_reason);
  } else if (w->state == SCHED_WORKER_STOPPING && !is_new) {
    orch_event(o, "stopping", pool, w->id, w->model, "worker %s of %s is stopping on %s", w->id, w->model,
               pool);
  }
}

void orch_events_worker(orch *o, const char *pool, const sched_worker_report *r) {
  orch_events *ev = o->events;
  if (!ev) return;
  bool is_new;
  ev_worker_seen *ws = worker_seen(ev, pool, r->id, &is_new);
  if (!ws || (!is_new && ws->state == r->state)) return;
  ev_worker_view v = {pool, r->id, r->model, r->state, r->pid, false, r->exit_code, r->exit_signal,
                      r->exit_reason};
  worker_changed(o, &v, is_new, ws->state);
  ws->state = r->state;
}

static void diff_pools(orch *o, int64_t now) {
  orch_events *ev = o->events;
  for (int i = 0; i < o->s.n_pools; i++) {
    const sched_pool *p = o->s.pools[i];
    bool is_new = true;
    for (int k = 0; k < ev->n_pools; k++) is_new = is_new && strcmp(ev->pools[k].name, p->name) != 0;
    ev_pool_seen *ps = pool_seen(ev, p->name);
    if (!ps) continue;
    ps->mark = true;
    if (is_new && p->up) {
      orch_event(o, "pool_up", p->name, NULL, NULL, "pool %s registered from %s: %d devices, %d models",
                 p->name, p->url, p->n_devices, p->n_models);
    } else if (!is_new && ps->up && !p->up) {
      orch_event(o, "pool_down", p->name, NULL, NULL, "pool %s is down: no heartbeat for %lld ms",
                 p->name, (long long)(now - p->last_seen_ms));
    } else if (!is_new && !ps->up && p->up) {
      orch_event(o, "pool_up", p->name, NULL, NULL, "pool %s is up again", p->name);
    }
    ps->up = p->up;
  }
}

static void diff_workers(orch *o) {
  orch_events *ev = o->events;
  for (int i = 0; i < ev->n_workers; i++) ev->workers[i].mark = false;
  for (int i = 0; i < o->s.n_workers; i++) {
    const sched_worker *w = o->s.workers[i];
    if (!w->pool) continue;
    bool is_new;
    ev_worker_seen *ws = worker_seen(ev, w->pool->name, w->id, &is_new);
    if (!ws) continue;
    ws->mark = true;
    ev_worker_view v = {w->pool->name, w->id, w->model_name, w->state, w->pid, w->adopted, w->exit_code,
                        w->exit_signal, w->exit_reason};
    if (is_new || ws->state != w->state) worker_changed(o, &v, is_new, ws->state);
    if (w->broken && !ws->broken)
      orch_event(o, "broken", w->pool->name, w->id, w->model_name,
                 "worker %s of %s failed a request before its first token: out of routing", w->id,
                 w->model_name);
    ws->state = w->state;
    ws->broken = w->broken;
  }
  /* Workers the scheduler forgot (reaped after they ended) are forgotten
   * here too; one that was last seen alive left without an event saying so
   * (its pool's full state no longer lists it). */
  for (int i = 0; i < ev->n_workers;) {
    ev_worker_seen *ws = &ev->workers[i];
    if (ws->mark) {
      i++;
      continue;
    }
    if (ws->state != SCHED_WORKER_EXITED && ws->state != SCHED_WORKER_FAILED)
      orch_event(o, "gone", ws->pool, ws->id, NULL, "worker %s is gone from %s's state", ws->id, ws->pool);
    *ws = ev->workers[--ev->n_workers];
  }
}

/* The part of a pending reason that says what happens: a model file copy's
 * progress ("copying f to p from q: 12.0 MiB of 40.0 MiB (30%), ...") changes
 * with every report, and one timeline entry per report would push everything
 * else out of the ring during a long copy; its start, retries and end are
 * entries of their own. */
static size_t pending_key_len(const char *reason) {
  const char *colon = strstr(reason, ": ");
  if (strncmp(reason, "copying ", 8) == 0 && colon && strstr(colon, "%)")) return (size_t)(colon - reason);
  return strlen(reason) + 1;
}

static void diff_models(orch *o) {
  orch_events *ev = o->events;
  for (int i = 0; i < o->s.n_models; i++) {
    const sched_model *m = &o->s.models[i];
    size_t kl = pending_key_len(m->pending);
    if (kl == pending_key_len(ev->pending[i]) && memcmp(ev->pending[i], m->pending, kl) == 0) continue;
    copy_str(ev->pending[i], sizeof ev->pending[i], m->pending);
    if (m->pending[0]) orch_event(o, "pending", NULL, NULL, m->name, "%s: %s", m->name, m->pending);
  }
  const sched_stats *st = &o->s.stats;
  if (st->retries > ev->last_retries)
    orch_event(o, "retried", NULL, NULL, NULL, "%llu request(s) retried on another worker (their "
               "worker failed before the first token)", (unsigned long long)(st->retries - ev->last_retries));
  if (st->timed_out > ev->last_timed_out)
    orch_event(o, "timed_out", NULL, NULL, NULL, "%llu request(s) waited longer than the queue timeout",
               (unsigned long long)(st->timed_out - ev->last_timed_out));
  if (st->start_failures > ev->last_start_failures)
    orch_event(o, "start_failed", NULL, NULL, NULL, "%llu worker start(s) failed (see the models' "
               "pending reasons)", (unsigned long long)(st->start_failures - ev->last_start_failures));
  ev->last_retries = st->retries;
  ev->last_timed_out = st->timed_out;
  ev->last_start_failures = st->start_failures;
}

/* FNV-1a over what a viewer of the state would see change (not the ages,
 * which change at every tick and go out with the periodic snapshot). */
static uint64_t mix(uint64_t h, const void *p, size_t n) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
  return h;
}
#define MIX(h, v) ((h) = mix((h), &(v), sizeof(v)))

static uint64_t state_digest(const orch *o) {
  const sched *s = &o->s;
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < s->n_pools; i++) {
    const sched_pool *p = s->pools[i];
    h = mix(h, p->name, strlen(p->name) + 1);
    MIX(h, p->up);
    for (int d = 0; d < p->n_devices; d++) {
      MIX(h, p->devices[d].memory_free);
      MIX(h, p->devices[d].utilization);
      MIX(h, p->devices[d].temperature);
    }
  }
  for (int i = 0; i < s->n_workers; i++) {
    const sched_worker *w = s->workers[i];
    h = mix(h, w->id, strlen(w->id) + 1);
    MIX(h, w->state);
    MIX(h, w->busy);
    MIX(h, w->broken);
    MIX(h, w->stop_sent);
    MIX(h, w->draining);
    MIX(h, w->memory_bytes);
  }
  for (int i = 0; i < s->n_starts; i++) {
    MIX(h, s->starts[i]->id);
    MIX(h, s->starts[i]->answered);
  }
  for (int i = 0; i < s->n_models; i++) {
    const sched_model *m = &s->models[i];
    MIX(h, m->queued);
    MIX(h, m->running);
    MIX(h, m->unloaded);
    h = mix(h, m->pending, strlen(m->pending) + 1);
  }
  MIX(h, s->total_queued);
  MIX(h, o->n_active);
  return h;
}

void orch_events_tick(orch *o, int64_t now) {
  orch_events *ev = o->events;
  if (!ev) return;
  diff_pools(o, now);
  diff_workers(o);
  diff_models(o);
  streams_reap(ev);
  if (!ev->streams) return;
  uint64_t d = state_digest(o);
  int64_t since = now - ev->last_push_ms;
  if ((d != ev->digest && since >= ORCH_EVENTS_PUSH_MIN_MS) || since >= ORCH_EVENTS_PUSH_MAX_MS) {
    ev->digest = d;
    ev->last_push_ms = now;
    send_state(o, NULL);
  }
}

/* ---- lifecycle ---- */

int orch_events_init(orch *o, llorch_errmsg *em) {
  orch_events *ev = calloc(1, sizeof *ev);
  if (!ev) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for the event ring");
  ev->next_seq = 1;
  ev->pending = calloc((size_t)(o->s.n_models > 0 ? o->s.n_models : 1), sizeof *ev->pending);
  if (!ev->pending) {
    free(ev);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for the event ring");
  }
  o->events = ev;
  if (llorch_service_route(o->svc, "GET", "/v2/cluster/events", LLORCH_ACCESS_ADMIN, on_events, o) < 0) {
    orch_events_free(o);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "cannot add GET /v2/cluster/events");
  }
  return 0;
}

void orch_events_stop(orch *o) {
  orch_events *ev = o->events;
  if (!ev) return;
  for (ev_stream *st = ev->streams; st; st = st->next) stream_close(st);
  streams_reap(ev);
}

void orch_events_free(orch *o) {
  orch_events *ev = o->events;
  if (!ev) return;
  /* By now every stream was ended (orch_events_stop) or closed by the
   * server (on_stream_close): no request is left to touch. */
  for (ev_stream *st = ev->streams; st;) {
    ev_stream *next = st->next;
    free(st);
    st = next;
  }
  free(ev->pools);
  free(ev->workers);
  free(ev->pending);
  free(ev);
  o->events = NULL;
}
