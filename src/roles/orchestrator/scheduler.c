/*
 * The orchestrator's scheduler (see scheduler.h): pure decisions over an
 * in-memory view of the cluster.
 *
 * Dispatch walks the queues in priority order (interactive before batch),
 * FIFO within a class. A request whose model has no free slot marks the model
 * "blocked" for the rest of the pass, so one pass over 1000 queued requests
 * of a busy model costs 1000 cheap skips, not 1000 placement searches; and a
 * blocked model never holds up requests of other models behind it.
 */
#include "scheduler.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "llorch/memory.h"
#include "prefix_route.h"

/* Prefix routing: remembered (worker, chunk) pairs, and how much busier (in
 * fraction of slots) the prefix holder may be than the least loaded worker. */
#define SCHED_PREFIX_ENTRIES (1u << 16)
#define SCHED_PREFIX_MAX_LOAD_GAP 0.5

/* ---- small helpers ---- */

static void copy_str(char *dst, size_t n, const char *src) {
  if (n == 0) return;
  if (!src) src = "";
  size_t l = strlen(src);
  if (l >= n) l = n - 1;
  memcpy(dst, src, l);
  dst[l] = '\0';
}

static const char *const worker_state_names[SCHED_WORKER_N_STATES] = {
    "starting", "ready", "stopping", "failed", "exited"};

const char *sched_worker_state_name(sched_worker_state st) {
  if ((int)st < 0 || st >= SCHED_WORKER_N_STATES) return "unknown";
  return worker_state_names[st];
}

int sched_worker_state_parse(const char *s, sched_worker_state *out) {
  for (int i = 0; i < SCHED_WORKER_N_STATES; i++) {
    if (strcmp(s, worker_state_names[i]) == 0) {
      *out = (sched_worker_state)i;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

void sched_format_bytes(char *out, size_t n, uint64_t bytes) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    u++;
  }
  if (u == 0) snprintf(out, n, "%" PRIu64 " B", bytes);
  else snprintf(out, n, "%.1f %s", v, units[u]);
}

/* Writes a pending reason; truncation of a long file name is acceptable here. */
static void reason_set(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reason_set(char *dst, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(dst, n, fmt, ap);
  va_end(ap);
}

/* After a failed start, the next one for this model waits 0.5 s, 1 s, ... 30 s. */
static void model_start_backoff(sched_model *m, int64_t now) {
  m->start_backoff_ms = m->start_backoff_ms ? m->start_backoff_ms * 2 : 500;
  if (m->start_backoff_ms > 30000) m->start_backoff_ms = 30000;
  m->no_start_before_ms = now + m->start_backoff_ms;
}

static bool worker_terminal(const sched_worker *w) {
  return w->state == SCHED_WORKER_FAILED || w->state == SCHED_WORKER_EXITED;
}

bool sched_worker_routable(const sched_worker *w) {
  /* An adopted worker is routed to once its token came (pool_api.c asks its pool). */
  return w->state == SCHED_WORKER_READY && !w->broken && !w->stop_sent && !w->draining && w->pool &&
         w->pool->up && w->model >= 0 && !(w->adopted && !w->token[0]);
}

/* Alive and counted as a replica: ready or starting, on an up pool. */
static bool worker_counts(const sched_worker *w) {
  return (w->state == SCHED_WORKER_READY || w->state == SCHED_WORKER_STARTING) && !w->broken &&
         !w->stop_sent && !w->draining && w->pool && w->pool->up;
}

static bool worker_on_device(const sched_worker *w, const sched_pool *p, const char *dev) {
  if (w->pool != p) return false;
  for (int i = 0; i < w->n_devices; i++)
    if (strcmp(w->devices[i], dev) == 0) return true;
  return false;
}

/* ---- queues: circular doubly-linked lists with a sentinel ---- */

static void queue_init(sched_req *q) { q->prev = q->next = q; }

static void queue_push_back(sched_req *q, sched_req *r) {
  r->prev = q->prev;
  r->next = q;
  q->prev->next = r;
  q->prev = r;
}

static void queue_push_front(sched_req *q, sched_req *r) {
  r->next = q->next;
  r->prev = q;
  q->next->prev = r;
  q->next = r;
}

static void queue_remove(sched_req *r) {
  r->prev->next = r->next;
  r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void sched_unqueue(sched *s, sched_req *r) {
  queue_remove(r);
  s->queued[r->priority]--;
  s->total_queued--;
  s->models[r->model].queued--;
}

/* ---- lifecycle ---- */

int sched_init(sched *s, const sched_limits *lim, const sched_ops *ops) {
  memset(s, 0, sizeof *s);
  s->lim = *lim;
  if (s->lim.max_total <= 0) s->lim.max_total = 1;
  if (s->lim.heartbeat_miss_limit <= 0) s->lim.heartbeat_miss_limit = 3;
  if (s->lim.start_timeout_ms <= 0) s->lim.start_timeout_ms = 30000;
  s->ops = *ops;
  for (int p = 0; p < SCHED_N_PRIO; p++) queue_init(&s->queues[p]);
  if (s->lim.prefix_routing) {
    if (s->lim.prefix_ttl_ms <= 0) s->lim.prefix_ttl_ms = 600000;
    int rc = prefix_route_init(&s->prefix, SCHED_PREFIX_ENTRIES, s->lim.prefix_ttl_ms);
    if (rc < 0) return rc;
  }
  return 0;
}

static void pool_free(sched_pool *p) {
  if (!p) return;
  free(p->models);
  free(p);
}

void sched_free(sched *s) {
  for (int i = 0; i < s->n_models; i++) free(s->models[i].pins);
  free(s->models);
  for (int i = 0; i < s->n_pools; i++) pool_free(s->pools[i]);
  free(s->pools);
  for (int i = 0; i < s->n_workers; i++) free(s->workers[i]);
  free(s->workers);
  free(s->whash);
  for (int i = 0; i < s->n_starts; i++) free(s->starts[i]);
  free(s->starts);
  for (int i = 0; i < s->n_fetches; i++) free(s->fetches[i]);
  free(s->fetches);
  prefix_route_free(s->prefix);
  memset(s, 0, sizeof *s);
}

void sched_limits_from_config(sched_limits *lim, const llorch_config *cfg) {
  memset(lim, 0, sizeof *lim);
  lim->max_total = cfg->orchestrator.queue.max_total;
  lim->max_per_prio[LLORCH_PRIORITY_INTERACTIVE] = cfg->orchestrator.queue.max_interactive;
  lim->max_per_prio[LLORCH_PRIORITY_BATCH] = cfg->orchestrator.queue.max_batch;
  lim->queue_timeout_ms = cfg->orchestrator.queue.timeout_ms;
  lim->heartbeat_miss_limit = cfg->orchestrator.heartbeat_miss_limit;
  lim->retry_max = cfg->orchestrator.retry_max;
  lim->start_timeout_ms = 30000;
  lim->max_pools = cfg->orchestrator.pools.max;
  lim->forget_after_ms = cfg->orchestrator.pools.forget_after_ms;
  lim->prefix_routing = cfg->orchestrator.prefix_routing;
  lim->prefix_ttl_ms = 600000;
}

int sched_model_add(sched *s, const llorch_model_entry *e, llorch_errmsg *em) {
  if (!e->name || !e->name[0] || strlen(e->name) >= SCHED_NAME_MAX)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "catalog: model name must be 1..%d characters",
                             SCHED_NAME_MAX - 1);
  if (!e->file || !e->file[0] || strlen(e->file) >= SCHED_FILE_MAX)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "catalog: model '%s': file must be 1..%d characters",
                             e->name, SCHED_FILE_MAX - 1);
  if (sched_model_find(s, e->name) >= 0)
    return llorch_errmsg_set(em, LLORCH_EEXIST, "catalog: model '%s' listed twice", e->name);
  sched_model *nm = realloc(s->models, (size_t)(s->n_models + 1) * sizeof *nm);
  if (!nm) return LLORCH_ENOMEM;
  s->models = nm;
  sched_model *m = &s->models[s->n_models];
  memset(m, 0, sizeof *m);
  copy_str(m->name, sizeof m->name, e->name);
  copy_str(m->file, sizeof m->file, e->file);
  m->ctx = e->ctx;
  m->slots = e->slots > 0 ? e->slots : 1;
  m->min_replicas = e->min_replicas;
  m->max_replicas = e->max_replicas;
  m->keep_alive_ms = e->keep_alive_ms;
  m->priority = (e->priority == LLORCH_PRIORITY_BATCH) ? LLORCH_PRIORITY_BATCH
                                                        : LLORCH_PRIORITY_INTERACTIVE;
  if (e->pins.count > 0) {
    m->pins = calloc(e->pins.count, sizeof *m->pins);
    if (!m->pins) return LLORCH_ENOMEM;
    for (size_t i = 0; i < e->pins.count; i++) copy_str(m->pins[i], sizeof m->pins[i], e->pins.items[i]);
    m->n_pins = (int)e->pins.count;
  }
  return s->n_models++;
}

int sched_model_find(const sched *s, const char *name) {
  for (int i = 0; i < s->n_models; i++)
    if (strcmp(s->models[i].name, name) == 0) return i;
  return -1;
}

/* ---- workers and starts bookkeeping ---- */

/* FNV-1a over the pool's address and the worker id. */
static size_t worker_hash(const sched *s, const sched_pool *p, const char *id) {
  uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)p;
  for (const unsigned char *c = (const unsigned char *)id; *c; c++) h = (h ^ *c) * 1099511628211ull;
  return (size_t)(h ^ (h >> 29)) & (size_t)(s->whash_cap - 1);
}

static sched_worker *worker_find(const sched *s, const sched_pool *p, const char *id) {
  if (s->whash_cap == 0) return NULL;
  for (sched_worker *w = s->whash[worker_hash(s, p, id)]; w; w = w->hnext)
    if (w->pool == p && strcmp(w->id, id) == 0) return w;
  return NULL;
}

/* Links w (pool and id set) into the hash; the table grows with cap_workers. */
static void worker_hash_insert(sched *s, sched_worker *w) {
  size_t b = worker_hash(s, w->pool, w->id);
  w->hnext = s->whash[b];
  s->whash[b] = w;
}

static void worker_hash_remove(sched *s, sched_worker *w) {
  sched_worker **pp = &s->whash[worker_hash(s, w->pool, w->id)];
  while (*pp && *pp != w) pp = &(*pp)->hnext;
  if (*pp) *pp = w->hnext;
}

static int worker_hash_grow(sched *s, int want) {
  if (want <= s->whash_cap) return 0;
  int cap = s->whash_cap ? s->whash_cap : 16;
  while (cap < want) cap *= 2;
  sched_worker **nh = calloc((size_t)cap, sizeof *nh);
  if (!nh) return LLORCH_ENOMEM;
  free(s->whash);
  s->whash = nh;
  s->whash_cap = cap;
  /* Workers not yet named (worker_new before worker_apply copies the id) are linked later. */
  for (int i = 0; i < s->n_workers; i++)
    if (s->workers[i]->pool) worker_hash_insert(s, s->workers[i]);
  return 0;
}

static void worker_remove_at(sched *s, int i) {
  if (s->workers[i]->pool) worker_hash_remove(s, s->workers[i]);
  free(s->workers[i]);
  s->workers[i] = s->workers[--s->n_workers];
}

/* Frees terminal workers nobody runs on any more. */
static void workers_reap(sched *s) {
  for (int i = 0; i < s->n_workers;) {
    sched_worker *w = s->workers[i];
    if (worker_terminal(w) && w->busy == 0) worker_remove_at(s, i);
    else i++;
  }
}

static sched_worker *worker_new(sched *s) {
  if (s->n_workers == s->cap_workers) {
    int cap = s->cap_workers ? s->cap_workers * 2 : 16;
    sched_worker **nw = realloc(s->workers, (size_t)cap * sizeof *nw);
    if (!nw) return NULL;
    s->workers = nw;
    s->cap_workers = cap;
  }
  if (worker_hash_grow(s, s->cap_workers) < 0) return NULL;
  sched_worker *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->exit_code = -1;
  s->workers[s->n_workers++] = w;
  return w;
}

static void start_remove(sched *s, sched_pending_start *ps) {
  for (int i = 0; i < s->n_starts; i++) {
    if (s->starts[i] == ps) {
      free(ps);
      s->starts[i] = s->starts[--s->n_starts];
      return;
    }
  }
}

static sched_pending_start *start_new(sched *s) {
  if (s->n_starts == s->cap_starts) {
    int cap = s->cap_starts ? s->cap_starts * 2 : 8;
    sched_pending_start **ns = realloc(s->starts, (size_t)cap * sizeof *ns);
    if (!ns) return NULL;
    s->starts = ns;
    s->cap_starts = cap;
  }
  sched_pending_start *ps = calloc(1, sizeof *ps);
  if (!ps) return NULL;
  s->starts[s->n_starts++] = ps;
  return ps;
}

/* Bytes promised to starts on (p, dev) that p has not reported yet. */
static uint64_t device_reserved(const sched *s, const sched_pool *p, const char *dev) {
  uint64_t r = 0;
  for (int i = 0; i < s->n_starts; i++) {
    const sched_pending_start *ps = s->starts[i];
    if (ps->pool == p && strcmp(ps->device, dev) == 0) r += ps->need_bytes;
  }
  return r;
}

static uint64_t device_free(const sched *s, const sched_pool *p, const sched_device *d) {
  uint64_t res = device_reserved(s, p, d->id);
  return d->memory_free > res ? d->memory_free - res : 0;
}

int sched_model_replicas(const sched *s, int model) {
  int n = 0;
  for (int i = 0; i < s->n_workers; i++)
    if (s->workers[i]->model == model && worker_counts(s->workers[i])) n++;
  for (int i = 0; i < s->n_starts; i++)
    if (s->starts[i]->model == model && s->starts[i]->pool->up && !s->starts[i]->seen) n++;
  return n;
}

/* Slots that will exist for model once its starting workers are ready. */
static int model_pending_slots(const sched *s, int model) {
  int n = 0;
  for (int i = 0; i < s->n_workers; i++) {
    const sched_worker *w = s->workers[i];
    if (w->model == model && w->state == SCHED_WORKER_STARTING && worker_counts(w)) n += w->slots;
  }
  for (int i = 0; i < s->n_starts; i++)
    if (s->starts[i]->model == model && s->starts[i]->pool->up && !s->starts[i]->seen)
      n += s->starts[i]->slots;
  return n;
}

const char *sched_model_state(const sched *s, int model) {
  bool starting = false;
  for (int i = 0; i < s->n_workers; i++) {
    const sched_worker *w = s->workers[i];
    if (w->model != model) continue;
    if (sched_worker_routable(w)) return "ready";
    if (worker_counts(w)) starting = true;
  }
  for (int i = 0; i < s->n_starts; i++)
    if (s->starts[i]->model == model) starting = true;
  if (starting) return "starting";
  if (s->models[model].queued > 0) return "pending";
  return "unloaded";
}

int sched_pools_up(const sched *s) {
  int n = 0;
  for (int i = 0; i < s->n_pools; i++) n += s->pools[i]->up;
  return n;
}

/* ---- placement ---- */

static bool model_pinned_to(const sched_model *m, const sched_pool *p, const char *dev) {
  if (m->n_pins == 0) return true;
  size_t pl = strlen(p->name);
  for (int i = 0; i < m->n_pins; i++) {
    const char *pin = m->pins[i];
    if (strncmp(pin, p->name, pl) != 0) continue;
    if (pin[pl] == '\0') return true;
    if (pin[pl] == '/' && strcmp(pin + pl + 1, dev) == 0) return true;
  }
  return false;
}

static const sched_pool_model *pool_model_by_file(const sched_pool *p, const char *file) {
  for (int i = 0; i < p->n_models; i++)
    if (strcmp(p->models[i].file, file) == 0) return &p->models[i];
  return NULL;
}

typedef struct placement {
  sched_pool *pool;
  const sched_device *dev;
  const sched_pool_model *pm;
  int ctx;
  uint64_t need;
  uint64_t free;
} placement;

/* The pool's preflight computes the same figure (llorch_mem_need of the
 * same coefficients), so a start placed here is not refused there. */
static uint64_t model_need(const sched_model *m, const sched_pool_model *pm, sched_dev_kind kind,
                           int *ctx_out) {
  const sched_estimate *e = &pm->est[kind];
  int ctx = m->ctx > 0 ? m->ctx : (pm->ctx > 0 ? pm->ctx : 2048);
  *ctx_out = ctx;
  const llorch_mem_coeffs c = {e->fixed_bytes, e->per_token_bytes, e->per_slot_bytes,
                               e->per_ctx_bytes};
  return llorch_mem_need(&c, (uint64_t)ctx, (uint64_t)m->slots);
}

/*
 * Every (pool, device) where model m may run, through fn. Returns how many
 * candidates there were (pinned, up, holding the file, with an estimate).
 */
typedef void (*candidate_fn)(sched *s, const placement *c, void *arg);

static int candidates_each(sched *s, const sched_model *m, candidate_fn fn, void *arg) {
  int n = 0;
  for (int i = 0; i < s->n_pools; i++) {
    sched_pool *p = s->pools[i];
    if (!p->up) continue;
    const sched_pool_model *pm = pool_model_by_file(p, m->file);
    if (!pm) continue;
    for (int d = 0; d < p->n_devices; d++) {
      const sched_device *dev = &p->devices[d];
      if (!model_pinned_to(m, p, dev->id)) continue;
      if (!pm->est[dev->kind].valid) continue;
      placement c = {p, dev, pm, 0, 0, 0};
      c.need = model_need(m, pm, dev->kind, &c.ctx);
      c.free = device_free(s, p, dev);
      fn(s, &c, arg);
      n++;
    }
  }
  return n;
}

typedef struct best_fit {
  placement best;
  bool found;
  placement largest; /* the candidate with the most free memory, for the reason */
  bool any;
} best_fit;

static void collect_best(sched *s, const placement *c, void *arg) {
  best_fit *b = arg;
  if (!b->any || c->free > b->largest.free) b->largest = *c;
  b->any = true;
  if (c->need > c->free) return;
  /* Most free memory first: spreads load and leaves the biggest holes. */
  if (!b->found || c->free > b->best.free) b->best = *c;
  b->found = true;
}

static const sched_device *pool_device_by_id(const sched_pool *p, const char *id) {
  for (int i = 0; i < p->n_devices; i++)
    if (strcmp(p->devices[i].id, id) == 0) return &p->devices[i];
  return NULL;
}

uint64_t sched_worker_device_bytes(const sched *s, const sched_worker *w) {
  if (w->memory_bytes) return llorch_mem_device_share(w->memory_bytes, w->n_devices);
  if (w->model < 0 || w->n_devices < 1) return 0;
  const sched_pool_model *pm = pool_model_by_file(w->pool, w->file);
  const sched_device *d = pool_device_by_id(w->pool, w->devices[0]);
  if (!pm || !d || !pm->est[d->kind].valid) return 0;
  int ctx;
  return llorch_mem_device_share(model_need(&s->models[w->model], pm, d->kind, &ctx), w->n_devices);
}

/* Memory a worker gives back on one of its devices, for eviction arithmetic. */
static uint64_t worker_memory(const sched *s, const sched_worker *w) {
  return sched_worker_device_bytes(s, w);
}

static bool worker_evictable(const sched *s, const sched_worker *w, int for_model, int64_t now) {
  if (w->model == for_model) return false;
  if (w->busy > 0 || w->stop_sent || worker_terminal(w)) return false;
  if (w->state != SCHED_WORKER_READY) return false;
  if (w->broken) return true; /* unusable anyway */
  if (w->model < 0) return false; /* not ours to judge: not in the catalog */
  const sched_model *wm = &s->models[w->model];
  if (wm->keep_alive_ms < 0) return false;
  if (wm->queued > 0) return false; /* it has queued work it will take */
  if (!wm->unloaded && wm->min_replicas > 0 && sched_model_replicas(s, w->model) <= wm->min_replicas)
    return false;
  (void)now;
  return true;
}

/* Eviction rank: keep_alive expired first, then least recently used. */
static int evict_cmp(const sched *s, const sched_worker *a, const sched_worker *b, int64_t now) {
  const sched_model *ma = a->model >= 0 ? &s->models[a->model] : NULL;
  const sched_model *mb = b->model >= 0 ? &s->models[b->model] : NULL;
  bool ea = a->broken || (ma && now - a->last_used_ms >= ma->keep_alive_ms);
  bool eb = b->broken || (mb && now - b->last_used_ms >= mb->keep_alive_ms);
  if (ea != eb) return ea ? -1 : 1;
  if (a->last_used_ms != b->last_used_ms) return a->last_used_ms < b->last_used_ms ? -1 : 1;
  return 0;
}

typedef struct evict_plan {
  int for_model;
  int64_t now;
  placement at;
  sched_worker *victims[32];
  int n_victims;
  bool found;
  bool waiting;      /* a device will fit once workers already stopping exit */
  placement wait_at;
} evict_plan;

static void collect_evictions(sched *s, const placement *c, void *arg) {
  evict_plan *ep = arg;
  if (c->need <= c->free) return; /* fits already; not an eviction case */
  /* Memory already on its way back: workers we asked to stop, and workers an
   * event reported ended that the pool's next document will count as free. */
  uint64_t stopping = c->pool->freed_unreported[c->dev - c->pool->devices];
  sched_worker *cand[32];
  int n = 0;
  for (int i = 0; i < s->n_workers; i++) {
    sched_worker *w = s->workers[i];
    if (!worker_on_device(w, c->pool, c->dev->id)) continue;
    if (w->stop_sent && !worker_terminal(w)) stopping += worker_memory(s, w);
    else if (n < 32 && worker_evictable(s, w, ep->for_model, ep->now)) cand[n++] = w;
  }
  if (c->free + stopping >= c->need) {
    ep->waiting = true;
    ep->wait_at = *c;
    return;
  }
  /* Insertion sort by eviction rank (n <= 32). */
  for (int i = 1; i < n; i++) {
    sched_worker *w = cand[i];
    int j = i - 1;
    while (j >= 0 && evict_cmp(s, cand[j], w, ep->now) > 0) {
      cand[j + 1] = cand[j];
      j--;
    }
    cand[j + 1] = w;
  }
  uint64_t freed = stopping;
  int k = 0;
  while (k < n && c->free + freed < c->need) freed += worker_memory(s, cand[k++]);
  if (c->free + freed < c->need) return;
  /* Fewest victims wins. */
  if (!ep->found || k < ep->n_victims) {
    ep->found = true;
    ep->at = *c;
    ep->n_victims = k;
    memcpy(ep->victims, cand, (size_t)k * sizeof cand[0]);
  }
}

static void stop_worker(sched *s, sched_worker *w, const char *why) {
  w->stop_sent = true;
  s->stats.decisions++;
  s->ops.stop(s->ops.ud, w, why);
}

static void start_worker(sched *s, int model, const placement *c, int64_t now) {
  sched_model *m = &s->models[model];
  sched_pending_start *ps = start_new(s);
  if (!ps) {
    snprintf(m->pending, sizeof m->pending, "out of memory in the orchestrator");
    return;
  }
  ps->model = model;
  ps->pool = c->pool;
  copy_str(ps->device, sizeof ps->device, c->dev->id);
  ps->ctx = c->ctx;
  ps->slots = m->slots;
  ps->need_bytes = c->need;
  ps->asked_ms = now;
  ps->id = ++s->next_start_id;
  char need[32];
  sched_format_bytes(need, sizeof need, c->need);
  snprintf(m->pending, sizeof m->pending, "starting a worker on %s %s (needs %s)", c->pool->name,
           c->dev->id, need);
  s->stats.starts++;
  s->stats.decisions++;
  sched_start st = {m, c->pool, ps->device, c->pm->file, c->ctx, m->slots, c->need, ps->id};
  s->ops.start(s->ops.ud, &st);
}

/* ---- model file copies between pools ---- */

sched_fetch *sched_fetch_find(const sched *s, uint64_t id) {
  for (int i = 0; i < s->n_fetches; i++)
    if (s->fetches[i]->id == id) return s->fetches[i];
  return NULL;
}

static sched_fetch *fetch_find_for(const sched *s, const char *file, const char *target) {
  for (int i = 0; i < s->n_fetches; i++)
    if (strcmp(s->fetches[i]->file, file) == 0 && strcmp(s->fetches[i]->target, target) == 0)
      return s->fetches[i];
  return NULL;
}

static void fetch_remove_at(sched *s, int i) {
  free(s->fetches[i]);
  s->fetches[i] = s->fetches[--s->n_fetches];
}

/* An attempt ended (reported by the target, or refused before it began). */
static void fetch_attempt_ended(sched *s, sched_fetch *f, const char *state, const char *error, int64_t now) {
  copy_str(f->state, sizeof f->state, state);
  reason_set(f->error, sizeof f->error, "%s", error && *error ? error : state);
  f->ended = true;
  f->ended_ms = now;
  f->rate = 0;
  f->eta_s = -1;
  /* 0.5 s, 1 s, 2 s between attempts: a source that died is noticed as down meanwhile */
  f->next_try_ms = now + (500LL << (f->attempts > 3 ? 3 : f->attempts - 1));
  LOG_WARN("sched", NULL, "copy of %s to %s from %s (attempt %d of %d) %s: %s", f->file, f->target, f->source,
           f->attempts, SCHED_FETCH_ATTEMPTS, state, f->error);
  if (f->attempts < SCHED_FETCH_ATTEMPTS) return;
  f->given_up = true;
  /* An interrupted copy keeps its part on the target for a resume; none
   * will come now, so the part goes (a failed one is already deleted). */
  const sched_pool *t = sched_pool_find(s, f->target);
  if (strcmp(state, "interrupted") == 0 && t && t->up && s->ops.fetch_cancel) s->ops.fetch_cancel(s->ops.ud, t, f->file);
}

void sched_fetch_answered(sched *s, uint64_t id, bool already_running, int64_t now) {
  (void)now;
  sched_fetch *f = sched_fetch_find(s, id);
  if (!f || f->ended || strcmp(f->state, "asking") != 0) return;
  copy_str(f->state, sizeof f->state, "running");
  f->adopted = already_running;
}

void sched_fetch_failed(sched *s, uint64_t id, const char *reason, int64_t now) {
  sched_fetch *f = sched_fetch_find(s, id);
  if (f && !f->ended) fetch_attempt_ended(s, f, "failed", reason, now);
}

/* The target's report of its copies: the current attempt's state (older
 * attempts' entries, by id, are ignored). */
static void fetches_apply(sched *s, const sched_pool *p, const sched_pool_report *rep, int64_t now) {
  for (int i = 0; i < rep->n_fetches; i++) {
    const sched_fetch_report *r = &rep->fetches[i];
    sched_fetch *f = fetch_find_for(s, r->file, p->name);
    char id[32];
    if (!f) continue;
    snprintf(id, sizeof id, "f%" PRIu64, f->id);
    if ((!f->adopted && strcmp(id, r->id) != 0) || f->ended) continue;
    f->bytes_done = r->bytes_done;
    f->rate = r->rate;
    f->eta_s = r->eta_s;
    if (strcmp(r->state, "interrupted") == 0 || strcmp(r->state, "failed") == 0 ||
        strcmp(r->state, "cancelled") == 0)
      fetch_attempt_ended(s, f, r->state, r->error, now);
    else
      copy_str(f->state, sizeof f->state, r->state);
  }
  /* A copy whose file the target now lists is finished. */
  for (int i = 0; i < s->n_fetches;) {
    sched_fetch *f = s->fetches[i];
    if (strcmp(f->target, p->name) == 0 && pool_model_by_file(p, f->file)) {
      LOG_INFO("sched", NULL, "%s now holds %s (copied from %s)", p->name, f->file, f->source);
      fetch_remove_at(s, i);
    } else {
      i++;
    }
  }
}

/* Copies whose target is gone, and copies given up on long enough ago (so a
 * later request tries again), are forgotten. */
static void fetches_tick(sched *s, int64_t now) {
  for (int i = 0; i < s->n_fetches;) {
    sched_fetch *f = s->fetches[i];
    sched_pool *t = sched_pool_find(s, f->target);
    if (!t || (f->given_up && now - f->ended_ms > SCHED_FETCH_FORGET_MS)) {
      fetch_remove_at(s, i);
      continue;
    }
    if (!t->up && !f->ended) fetch_attempt_ended(s, f, "interrupted", "the target pool is down", now);
    i++;
  }
}

/* A pool holding file to copy from: up, not the target, and preferably not
 * avoid (the source of an attempt that failed). */
static const sched_pool *fetch_pick_source(const sched *s, const char *file, const char *target,
                                           const char *avoid, const sched_pool_model **pm_out) {
  const sched_pool *fallback = NULL;
  const sched_pool_model *fallback_pm = NULL;
  for (int i = 0; i < s->n_pools; i++) {
    const sched_pool *p = s->pools[i];
    if (!p->up || strcmp(p->name, target) == 0) continue;
    const sched_pool_model *pm = pool_model_by_file(p, file);
    if (!pm) continue;
    if (avoid && strcmp(p->name, avoid) == 0) {
      fallback = p;
      fallback_pm = pm;
      continue;
    }
    *pm_out = pm;
    return p;
  }
  *pm_out = fallback_pm;
  return fallback;
}

/* The pending reason while a copy is the model's way forward. */
static void fetch_reason(const sched_fetch *f, char *out, size_t n, int64_t now) {
  char done[32], total[32], rate[32];
  if (f->given_up) {
    reason_set(out, n, "copying %s to %s failed %d times (last from %s: %s)", f->file, f->target, f->attempts,
               f->source, f->error);
  } else if (f->ended) {
    reason_set(out, n, "copying %s to %s: attempt %d of %d from %s %s (%s); trying again in %" PRId64 " ms",
               f->file, f->target, f->attempts, SCHED_FETCH_ATTEMPTS, f->source, f->state, f->error,
               f->next_try_ms > now ? f->next_try_ms - now : 0);
  } else if (strcmp(f->state, "done") == 0) {
    /* A file the pool's scan cannot read (a bad GGUF header) is never listed. */
    reason_set(out, n, "copied %s to %s from %s; waiting for the pool to list it", f->file, f->target, f->source);
  } else if (strcmp(f->state, "verifying") == 0) {
    reason_set(out, n, "copying %s to %s from %s: verifying its sha256", f->file, f->target, f->source);
  } else {
    sched_format_bytes(done, sizeof done, f->bytes_done);
    sched_format_bytes(total, sizeof total, f->size);
    sched_format_bytes(rate, sizeof rate, f->rate);
    int pct = f->size ? (int)(f->bytes_done * 100 / f->size) : 0;
    if (f->eta_s >= 0)
      reason_set(out, n, "copying %s to %s from %s: %s of %s (%d%%), %s/s, ETA %" PRId64 " s%s", f->file,
                 f->target, f->source, done, total, pct, rate, f->eta_s,
                 f->attempts > 1 ? " (retry)" : "");
    else
      reason_set(out, n, "copying %s to %s from %s: %s of %s (%d%%)%s", f->file, f->target, f->source, done,
                 total, pct, f->attempts > 1 ? " (retry)" : "");
  }
}

/*
 * A pool that should get model m's file: up, lacking the file, allowed by
 * m's pins on some device. With need_fit, also one of its devices must have
 * room for m by the estimate a holder of the file reported for that device
 * kind (the copy would be pointless otherwise).
 */
static sched_pool *fetch_pick_target(sched *s, const sched_model *m, bool need_fit) {
  for (int i = 0; i < s->n_pools; i++) {
    sched_pool *p = s->pools[i];
    if (!p->up || pool_model_by_file(p, m->file)) continue;
    /* one already copying here is the target */
    if (fetch_find_for(s, m->file, p->name)) return p;
  }
  for (int i = 0; i < s->n_pools; i++) {
    sched_pool *p = s->pools[i];
    if (!p->up || pool_model_by_file(p, m->file)) continue;
    for (int d = 0; d < p->n_devices; d++) {
      const sched_device *dev = &p->devices[d];
      if (!model_pinned_to(m, p, dev->id)) continue;
      if (!need_fit) return p;
      const sched_pool_model *pm = NULL;
      if (!fetch_pick_source(s, m->file, p->name, NULL, &pm) || !pm->est[dev->kind].valid) continue;
      int ctx;
      if (model_need(m, pm, dev->kind, &ctx) <= device_free(s, p, dev)) return p;
    }
  }
  return NULL;
}

/*
 * Moves model m's file towards a pool that may run it: starts a copy, asks
 * again after a failed attempt, or reports progress. Returns 1 when a copy
 * is under way (the model's requests keep waiting for it; m->pending shows
 * its progress), -1 when it was given up on (m->pending says why), 0 when
 * no copy applies.
 */
static int model_fetch(sched *s, int model, int64_t now, bool need_fit) {
  sched_model *m = &s->models[model];
  if (!s->ops.fetch) return 0;
  sched_pool *target = fetch_pick_target(s, m, need_fit);
  if (!target) return 0;
  sched_fetch *f = fetch_find_for(s, m->file, target->name);
  if (f && (!f->ended || f->given_up || now < f->next_try_ms)) {
    fetch_reason(f, m->pending, sizeof m->pending, now);
    return f->given_up ? -1 : 1;
  }
  const sched_pool_model *pm = NULL;
  const sched_pool *source = fetch_pick_source(s, m->file, target->name, f ? f->source : NULL, &pm);
  if (!source) return 0;
  if (!f) {
    sched_fetch **nf = realloc(s->fetches, (size_t)(s->n_fetches + 1) * sizeof *nf);
    if (!nf) return 0;
    s->fetches = nf;
    f = calloc(1, sizeof *f);
    if (!f) return 0;
    s->fetches[s->n_fetches++] = f;
    copy_str(f->file, sizeof f->file, m->file);
    copy_str(f->target, sizeof f->target, target->name);
  }
  f->id = ++s->next_fetch_id;
  f->attempts++;
  copy_str(f->source, sizeof f->source, source->name);
  copy_str(f->state, sizeof f->state, "asking");
  f->ended = false;
  f->adopted = false;
  f->size = pm->file_bytes;
  f->bytes_done = 0;
  f->rate = 0;
  f->eta_s = -1;
  f->asked_ms = now;
  s->stats.decisions++;
  LOG_INFO("sched", NULL, "copying %s (%" PRIu64 " bytes) to %s from %s for model %s (attempt %d of %d)", f->file,
           f->size, target->name, source->name, m->name, f->attempts, SCHED_FETCH_ATTEMPTS);
  fetch_reason(f, m->pending, sizeof m->pending, now);
  sched_fetch_order o = {f->id, f->file, target, source, f->size};
  s->ops.fetch(s->ops.ud, &o);
  return 1;
}

/*
 * Tries to add a worker of model: a device where it fits, else evictions,
 * else a reason in m->pending. Returns true when a start or an eviction is
 * under way.
 */
static bool place_model(sched *s, int model, int64_t now, bool may_evict) {
  sched_model *m = &s->models[model];
  /* After a failed start, wait before spawning again (the pending reason stays). */
  if (now < m->no_start_before_ms) return false;
  best_fit b;
  memset(&b, 0, sizeof b);
  int n = candidates_each(s, m, collect_best, &b);
  if (n == 0) {
    bool any_file = false;
    for (int i = 0; i < s->n_pools; i++)
      if (s->pools[i]->up && pool_model_by_file(s->pools[i], m->file)) any_file = true;
    if (s->n_pools == 0 || sched_pools_up(s) == 0)
      snprintf(m->pending, sizeof m->pending, "no pool is up");
    else if (!any_file)
      reason_set(m->pending, sizeof m->pending, "no up pool has the file %s", m->file);
    else if (model_fetch(s, model, now, m->n_pins == 0) != 0)
      return false; /* a copy is under way or was given up on: m->pending says which */
    else if (m->n_pins > 0)
      reason_set(m->pending, sizeof m->pending, "pinned to %s%s, which is down or lacks the file",
               m->pins[0], m->n_pins > 1 ? " (and others)" : "");
    else
      reason_set(m->pending, sizeof m->pending, "no device with a memory estimate for %s", m->file);
    return false;
  }
  if (b.found) {
    start_worker(s, model, &b.best, now);
    return true;
  }
  if (may_evict) {
    evict_plan ep;
    memset(&ep, 0, sizeof ep);
    ep.for_model = model;
    ep.now = now;
    candidates_each(s, m, collect_evictions, &ep);
    if (ep.waiting) {
      snprintf(m->pending, sizeof m->pending, "waiting for evicted workers to exit on %s %s",
               ep.wait_at.pool->name, ep.wait_at.dev->id);
      return true;
    }
    if (ep.found) {
      char need[32];
      sched_format_bytes(need, sizeof need, ep.at.need);
      snprintf(m->pending, sizeof m->pending, "evicting %d idle worker%s on %s %s to fit %s",
               ep.n_victims, ep.n_victims == 1 ? "" : "s", ep.at.pool->name, ep.at.dev->id, need);
      for (int i = 0; i < ep.n_victims; i++) {
        s->stats.evictions++;
        LOG_INFO("sched", NULL, "evicting %s/%s (model %s, idle) to fit %s on %s %s",
                 ep.victims[i]->pool->name, ep.victims[i]->id, ep.victims[i]->model_name, m->name,
                 ep.at.pool->name, ep.at.dev->id);
        stop_worker(s, ep.victims[i], "evicted");
      }
      return true;
    }
  }
  /* No holder of the file can take the model: copy it where it fits. */
  if (model_fetch(s, model, now, true) > 0) return false;
  char need[32], fr[32];
  sched_format_bytes(need, sizeof need, b.largest.need);
  sched_format_bytes(fr, sizeof fr, b.largest.free);
  snprintf(m->pending, sizeof m->pending, "needs %s; largest free is %s on %s %s", need, fr,
           b.largest.pool->name, b.largest.dev->id);
  return false;
}

/* ---- dispatch ---- */

/* Load as the fraction of slots busy, compared cross-multiplied. */
static bool less_loaded(const sched_worker *a, const sched_worker *b) {
  return (int64_t)a->busy * b->slots < (int64_t)b->busy * a->slots;
}

/*
 * The least loaded routable worker of the model with a free slot; equally
 * loaded ones take turns (the scan starts one further each time). With
 * prefix routing, the worker that was sent the longest prefix of this
 * request's text (prefix_route.h) wins instead - ties to the less loaded -
 * unless its load is clearly higher: its busy fraction exceeds the least
 * loaded one's by more than SCHED_PREFIX_MAX_LOAD_GAP. A cache hit saves a
 * prefill; a much busier worker costs every token of the request.
 */
static sched_worker *pick_worker(sched *s, const sched_req *r, int64_t now) {
  sched_worker *least = NULL, *best = NULL;
  uint32_t best_match = 0;
  const int n = s->n_workers;
  for (int k = 0; k < n; k++) {
    sched_worker *w = s->workers[(s->rr + (uint32_t)k) % (uint32_t)n];
    if (w->model != r->model || !sched_worker_routable(w) || w->busy >= w->slots) continue;
    if (!least || less_loaded(w, least)) least = w;
    if (!s->prefix || !r->n_prefix) continue;
    const uint32_t m = prefix_route_match(s->prefix, w->id, r->prefix, r->n_prefix, now);
    if (m > best_match || (m && m == best_match && less_loaded(w, best))) {
      best = w;
      best_match = m;
    }
  }
  if (!least) return NULL;
  s->rr++;
  if (best && (double)best->busy / best->slots - (double)least->busy / least->slots <=
                  SCHED_PREFIX_MAX_LOAD_GAP) {
    s->stats.prefix_routed++;
    return best;
  }
  return least;
}

static void assign(sched *s, sched_req *r, sched_worker *w, int64_t now) {
  sched_unqueue(s, r);
  r->state = SCHED_REQ_RUNNING;
  r->worker = w;
  r->attempts++;
  w->busy++;
  w->last_used_ms = now;
  if (s->prefix && r->n_prefix) prefix_route_record(s->prefix, w->id, r->prefix, r->n_prefix, now);
  s->models[r->model].running++;
  s->models[r->model].last_used_ms = now;
  s->stats.decisions++;
  s->ops.assign(s->ops.ud, r, w);
}

/* The model has no free slot: start (or evict for) another worker if useful. */
static void model_grow(sched *s, int model, int64_t now) {
  sched_model *m = &s->models[model];
  int pending_slots = model_pending_slots(s, model);
  if (pending_slots >= m->queued && pending_slots > 0) {
    snprintf(m->pending, sizeof m->pending, "waiting for a starting worker (%d slots coming)",
             pending_slots);
    return;
  }
  int replicas = sched_model_replicas(s, model);
  if (m->max_replicas > 0 && replicas >= m->max_replicas) {
    if (pending_slots == 0)
      snprintf(m->pending, sizeof m->pending, "all slots busy on %d worker%s (max_replicas %d)",
               replicas, replicas == 1 ? "" : "s", m->max_replicas);
    return;
  }
  place_model(s, model, now, true);
}

void sched_dispatch(sched *s, int64_t now) {
  if (s->in_dispatch) return; /* a callback re-entered: the running pass covers it */
  s->in_dispatch = true;
  for (int i = 0; i < s->n_models; i++) {
    s->models[i].pass_blocked = false;
    if (s->models[i].queued == 0) s->models[i].pending[0] = '\0';
  }
  for (int p = 0; p < SCHED_N_PRIO; p++) {
    sched_req *q = &s->queues[p];
    for (sched_req *r = q->next, *next; r != q; r = next) {
      next = r->next;
      sched_model *m = &s->models[r->model];
      if (m->pass_blocked) continue;
      sched_worker *w = pick_worker(s, r, now);
      if (w) {
        assign(s, r, w, now);
        continue;
      }
      m->pass_blocked = true;
      model_grow(s, r->model, now);
    }
  }
  for (int i = 0; i < s->n_models; i++)
    if (s->models[i].queued == 0) s->models[i].pending[0] = '\0';
  workers_reap(s);
  s->in_dispatch = false;
}

/* ---- admission and request lifecycle ---- */

int sched_retry_after_s(const sched *s) {
  /* Time for the queue ahead to drain at the recent completion rate. */
  double rate = s->done_rate > 0.1 ? s->done_rate : 1.0;
  int ra = (int)((double)s->total_queued / rate + 0.999);
  return ra < 1 ? 1 : (ra > 60 ? 60 : ra);
}

bool sched_queue_full(sched *s, int priority, int *retry_after_s) {
  int p = priority == LLORCH_PRIORITY_BATCH ? LLORCH_PRIORITY_BATCH : LLORCH_PRIORITY_INTERACTIVE;
  int cls_max = s->lim.max_per_prio[p];
  if (s->total_queued < s->lim.max_total && (cls_max <= 0 || s->queued[p] < cls_max)) return false;
  s->stats.rejected++;
  if (retry_after_s) *retry_after_s = sched_retry_after_s(s);
  return true;
}

int sched_submit(sched *s, sched_req *r, int64_t now, int *retry_after_s) {
  int p = r->priority == LLORCH_PRIORITY_BATCH ? LLORCH_PRIORITY_BATCH : LLORCH_PRIORITY_INTERACTIVE;
  r->priority = p;
  if (sched_queue_full(s, p, retry_after_s)) return LLORCH_ELIMIT;
  r->state = SCHED_REQ_QUEUED;
  r->enqueued_ms = now;
  r->attempts = 0;
  r->worker = NULL;
  queue_push_back(&s->queues[p], r);
  s->queued[p]++;
  s->total_queued++;
  s->models[r->model].queued++;
  s->stats.admitted++;
  return 0;
}

static void rate_note_done(sched *s, int64_t now) {
  if (s->rate_window_ms == 0) s->rate_window_ms = now;
  s->rate_count++;
  int64_t dt = now - s->rate_window_ms;
  if (dt >= 1000) {
    double r = (double)s->rate_count * 1000.0 / (double)dt;
    s->done_rate = s->done_rate > 0 ? 0.7 * s->done_rate + 0.3 * r : r;
    s->rate_window_ms = now;
    s->rate_count = 0;
  }
}

static void release_slot(sched *s, sched_req *r, int64_t now) {
  sched_worker *w = r->worker;
  if (w) {
    w->busy--;
    w->last_used_ms = now;
  }
  s->models[r->model].running--;
  s->models[r->model].last_used_ms = now;
  r->worker = NULL;
}

void sched_request_done(sched *s, sched_req *r, int64_t now) {
  if (r->state == SCHED_REQ_QUEUED) {
    sched_unqueue(s, r);
  } else if (r->state == SCHED_REQ_RUNNING) {
    release_slot(s, r, now);
    rate_note_done(s, now);
  }
  r->state = SCHED_REQ_DONE;
}

int sched_request_retry(sched *s, sched_req *r, bool worker_broken, int64_t now) {
  if (r->state != SCHED_REQ_RUNNING) return 0;
  if (r->worker && worker_broken) {
    r->worker->broken = true;
    LOG_WARN("sched", NULL, "worker %s/%s failed a request before its first token; out of routing",
             r->worker->pool ? r->worker->pool->name : "?", r->worker->id);
  }
  release_slot(s, r, now);
  if (r->attempts > s->lim.retry_max) {
    r->state = SCHED_REQ_DONE;
    return 0;
  }
  s->stats.retries++;
  r->state = SCHED_REQ_QUEUED;
  /* Head of its class: it already waited its turn once. */
  queue_push_front(&s->queues[r->priority], r);
  s->queued[r->priority]++;
  s->total_queued++;
  s->models[r->model].queued++;
  return 1;
}

void sched_request_cancel(sched *s, sched_req *r, int64_t now) { sched_request_done(s, r, now); }

/* ---- pools ---- */

sched_pool *sched_pool_find(const sched *s, const char *name) {
  for (int i = 0; i < s->n_pools; i++)
    if (strcmp(s->pools[i]->name, name) == 0) return s->pools[i];
  return NULL;
}

void sched_pool_report_free(sched_pool_report *r) {
  free(r->models);
  free(r->workers);
  free(r->fetches);
  r->models = NULL;
  r->workers = NULL;
  r->fetches = NULL;
  r->n_models = r->n_workers = r->n_fetches = 0;
}

/* A worker is gone from its pool (pool restarted, or no longer listed). */
static void worker_gone(sched_worker *w, const char *why) {
  if (!worker_terminal(w)) {
    w->state = SCHED_WORKER_EXITED;
    copy_str(w->exit_reason, sizeof w->exit_reason, why);
  }
}

static void worker_update(sched *s, sched_worker *w, const sched_worker_report *r) {
  copy_str(w->model_name, sizeof w->model_name, r->model);
  copy_str(w->file, sizeof w->file, r->file);
  w->model = sched_model_find(s, r->model);
  if (w->model < 0) {
    /* Started under another name: match the catalog by file. */
    for (int i = 0; i < s->n_models; i++)
      if (strcmp(s->models[i].file, r->file) == 0) w->model = i;
  }
  w->n_devices = r->n_devices;
  memcpy(w->devices, r->devices, sizeof w->devices);
  w->ctx = r->ctx;
  w->slots = r->slots > 0 ? r->slots : 1;
  /* Terminal states are final: a late heartbeat must not revive a worker. */
  if (!worker_terminal(w)) {
    if (w->stop_sent && r->state == SCHED_WORKER_READY) w->state = SCHED_WORKER_STOPPING;
    else w->state = r->state;
  }
  copy_str(w->url, sizeof w->url, r->url);
  /* Tokens travel in the pool's answer to our start (sched_start_done), not in
   * state documents; one a document does carry (an older pool) still counts. */
  if (r->token[0]) copy_str(w->token, sizeof w->token, r->token);
  w->pid = r->pid;
  w->memory_bytes = r->memory_bytes;
  w->started_at_ms = r->started_at_ms;
  if (worker_terminal(w)) {
    w->exit_code = r->exit_code;
    copy_str(w->exit_signal, sizeof w->exit_signal, r->exit_signal);
    copy_str(w->exit_reason, sizeof w->exit_reason, r->exit_reason);
  }
}

/*
 * The pool now reports worker id. From a full state document, the start is
 * settled: the document's memory figures count the worker. From an event,
 * the worker exists (it counts as a replica, so the start must not count
 * twice) but the device memory we hold is still the last document's, so the
 * start keeps its reservation until the next document.
 */
static void starts_settle(sched *s, const sched_pool *p, const char *id, bool full_doc, bool gone) {
  for (int i = 0; i < s->n_starts; i++) {
    sched_pending_start *ps = s->starts[i];
    if (ps->pool == p && ps->answered && strcmp(ps->worker_id, id) == 0) {
      /* Gone already: its memory is free again, which the last document said. */
      if (full_doc || gone) start_remove(s, ps);
      else ps->seen = true;
      return;
    }
  }
}

/*
 * An event says w ended: its memory is free on the pool, but the memory_free
 * we hold is the last full document's until the next one. Kept per device so
 * eviction waits for it instead of taking another victim meanwhile (w itself
 * is reaped before that document comes).
 */
static void pool_freed_add(const sched *s, sched_pool *p, const sched_worker *w) {
  const uint64_t share = sched_worker_device_bytes(s, w);
  for (int i = 0; i < w->n_devices; i++)
    for (int d = 0; d < p->n_devices; d++)
      if (strcmp(p->devices[d].id, w->devices[i]) == 0) p->freed_unreported[d] += share;
}

static sched_worker *worker_apply(sched *s, sched_pool *p, const sched_worker_report *r, int64_t now,
                                  bool full_doc, bool *created) {
  sched_worker *w = worker_find(s, p, r->id);
  *created = false;
  if (!w) {
    w = worker_new(s);
    if (!w) return NULL;
    w->pool = p;
    copy_str(w->id, sizeof w->id, r->id);
    worker_hash_insert(s, w);
    w->last_used_ms = now;
    *created = true;
    /* Ours: the pool's 201 answer may have come before this report. */
    for (int i = 0; i < s->n_starts; i++) {
      const sched_pending_start *ps = s->starts[i];
      if (ps->pool == p && ps->answered && strcmp(ps->worker_id, r->id) == 0)
        copy_str(w->token, sizeof w->token, ps->token);
    }
  }
  sched_worker_state before = w->state;
  bool was_terminal = !*created && worker_terminal(w);
  worker_update(s, w, r);
  if (!full_doc && !was_terminal && !*created && worker_terminal(w)) pool_freed_add(s, p, w);
  starts_settle(s, p, r->id, full_doc, worker_terminal(w));
  if (w->model >= 0) {
    sched_model *m = &s->models[w->model];
    if (w->state == SCHED_WORKER_FAILED && (*created || before != SCHED_WORKER_FAILED)) {
      /* A worker that could not load: say why, and do not respawn at once. */
      s->stats.start_failures++;
      model_start_backoff(m, now);
      reason_set(m->pending, sizeof m->pending, "worker %s/%s failed: %s", p->name, w->id,
                 w->exit_reason[0] ? w->exit_reason : "no reason given");
    } else if (w->state == SCHED_WORKER_READY) {
      m->start_backoff_ms = 0;
      m->no_start_before_ms = 0;
    }
  }
  return w;
}

int sched_pool_apply(sched *s, const sched_pool_report *rep, bool is_register, int64_t now,
                     int *adopted) {
  if (adopted) *adopted = 0;
  sched_pool *p = sched_pool_find(s, rep->pool);
  if (!p && !is_register) return LLORCH_ENOTFOUND;
  if (!p && s->lim.max_pools > 0 && s->n_pools >= s->lim.max_pools) return LLORCH_ELIMIT;
  if (!p) {
    sched_pool **np = realloc(s->pools, (size_t)(s->n_pools + 1) * sizeof *np);
    if (!np) return LLORCH_ENOMEM;
    s->pools = np;
    p = calloc(1, sizeof *p);
    if (!p) return LLORCH_ENOMEM;
    s->pools[s->n_pools++] = p;
    copy_str(p->name, sizeof p->name, rep->pool);
    p->registered_ms = now;
  }
  bool new_boot = strcmp(p->boot_id, rep->boot_id) != 0;
  if (!new_boot && rep->seq <= p->seq && p->seq != 0) {
    /* Overtaken by a newer document; still proof of life. */
    p->last_seen_ms = now;
    return 0;
  }
  if (new_boot && p->boot_id[0]) {
    LOG_INFO("sched", NULL, "pool %s restarted (boot %s -> %s); its old workers are gone", p->name,
             p->boot_id, rep->boot_id);
    for (int i = 0; i < s->n_workers; i++)
      if (s->workers[i]->pool == p) worker_gone(s->workers[i], "pool restarted");
    for (int i = 0; i < s->n_starts;)
      if (s->starts[i]->pool == p) start_remove(s, s->starts[i]);
      else i++;
  }
  if (!p->up && p->last_seen_ms)
    LOG_INFO("sched", NULL, "pool %s is up again", p->name);
  copy_str(p->boot_id, sizeof p->boot_id, rep->boot_id);
  copy_str(p->url, sizeof p->url, rep->url);
  p->seq = rep->seq;
  p->interval_ms = rep->interval_ms > 0 ? rep->interval_ms : 2000;
  p->last_seen_ms = now;
  p->up = true;
  p->n_devices = rep->n_devices < SCHED_MAX_DEVICES ? rep->n_devices : SCHED_MAX_DEVICES;
  memcpy(p->devices, rep->devices, (size_t)p->n_devices * sizeof p->devices[0]);
  memset(p->freed_unreported, 0, sizeof p->freed_unreported); /* the document counts them */
  if (rep->n_models != p->n_models) {
    sched_pool_model *nm = rep->n_models ? malloc((size_t)rep->n_models * sizeof *nm) : NULL;
    if (rep->n_models && !nm) return LLORCH_ENOMEM;
    free(p->models);
    p->models = nm;
    p->n_models = rep->n_models;
  }
  if (rep->n_models) memcpy(p->models, rep->models, (size_t)rep->n_models * sizeof *p->models);

  /*
   * A start an event already reported is settled by any newer full document,
   * listed or not: the pool made it knowing the worker, so its memory
   * figures count it (or its memory is back, if it already exited).
   */
  for (int i = 0; i < s->n_starts;)
    if (s->starts[i]->pool == p && s->starts[i]->seen) start_remove(s, s->starts[i]);
    else i++;
  /*
   * Workers: listed ones are updated or adopted; unlisted ones are gone.
   * Each listed worker is stamped with this document's generation, so the
   * unlisted ones are found in one pass instead of a search per worker.
   */
  uint64_t gen = ++s->apply_gen;
  for (int i = 0; i < rep->n_workers; i++) {
    bool created;
    sched_worker *w = worker_apply(s, p, &rep->workers[i], now, true, &created);
    if (!w) return LLORCH_ENOMEM;
    w->listed_gen = gen;
    if (created && (w->state == SCHED_WORKER_READY || w->state == SCHED_WORKER_STARTING)) {
      w->adopted = true;
      if (adopted) (*adopted)++;
      LOG_INFO("sched", NULL, "adopted worker %s/%s (model %s, %s)", p->name, w->id, w->model_name,
               sched_worker_state_name(w->state));
    }
  }
  for (int i = 0; i < s->n_workers; i++) {
    sched_worker *w = s->workers[i];
    if (w->pool != p) continue;
    if (w->listed_gen != gen) worker_gone(w, "no longer listed by its pool");
  }
  fetches_apply(s, p, rep, now);
  sched_dispatch(s, now);
  return 0;
}

int sched_pool_event(sched *s, const char *pool, const char *boot_id, uint64_t seq,
                     const sched_worker_report *r, int64_t now) {
  sched_pool *p = sched_pool_find(s, pool);
  if (!p) return LLORCH_ENOTFOUND;
  if (strcmp(p->boot_id, boot_id) != 0) return LLORCH_ENOTFOUND; /* re-register first */
  if (seq != 0 && seq <= p->seq) return 0;
  if (seq) p->seq = seq;
  bool created;
  sched_worker *w = worker_apply(s, p, r, now, false, &created);
  if (!w) return LLORCH_ENOMEM;
  sched_dispatch(s, now);
  return 0;
}

/* ---- starts ---- */

static sched_pending_start *start_find(const sched *s, uint64_t id) {
  for (int i = 0; i < s->n_starts; i++)
    if (s->starts[i]->id == id) return s->starts[i];
  return NULL;
}

void sched_start_done(sched *s, uint64_t start_id, const char *worker_id, const char *token,
                      int64_t now) {
  sched_pending_start *ps = start_find(s, start_id);
  if (!ps) return; /* dropped meanwhile; the pool's state will list the worker */
  copy_str(ps->worker_id, sizeof ps->worker_id, worker_id);
  copy_str(ps->token, sizeof ps->token, token);
  ps->answered = true;
  /* An event may already have reported it (it raced the 201 answer). */
  sched_worker *w = worker_find(s, ps->pool, worker_id);
  if (w) {
    ps->seen = true;
    if (token && token[0]) copy_str(w->token, sizeof w->token, token);
  }
  (void)now; /* no dispatch: the caller runs one (outside its HTTP callback) */
}

void sched_start_failed(sched *s, uint64_t start_id, const char *reason, int64_t now) {
  sched_pending_start *ps = start_find(s, start_id);
  if (!ps) return;
  sched_model *m = &s->models[ps->model];
  s->stats.start_failures++;
  model_start_backoff(m, now);
  snprintf(m->pending, sizeof m->pending, "start on %s %s failed: %s", ps->pool->name, ps->device,
           reason);
  start_remove(s, ps);
  /*
   * No dispatch here: it would ask again at once with the same stale view.
   * The pool's next heartbeat (fresh memory figures) or the next request
   * triggers the next attempt.
   */
  (void)now;
}

/* ---- the periodic tick ---- */

/*
 * A pool down for lim.forget_after_ms leaves the cluster view with its
 * workers, so registrations under ever new names cannot grow the state (and
 * every pass over it) without bound. Workers still running a request keep
 * the pool until they finish.
 */
static void pools_forget(sched *s, int64_t now) {
  if (s->lim.forget_after_ms <= 0) return;
  for (int i = 0; i < s->n_pools;) {
    sched_pool *p = s->pools[i];
    if (p->up || now - p->last_seen_ms < s->lim.forget_after_ms) {
      i++;
      continue;
    }
    bool busy = false;
    for (int k = 0; k < s->n_workers; k++)
      if (s->workers[k]->pool == p) {
        worker_gone(s->workers[k], "pool forgotten");
        busy = busy || s->workers[k]->busy > 0;
      }
    if (busy) {
      i++;
      continue;
    }
    for (int k = 0; k < s->n_workers;)
      if (s->workers[k]->pool == p) worker_remove_at(s, k);
      else k++;
    for (int k = 0; k < s->n_starts;)
      if (s->starts[k]->pool == p) start_remove(s, s->starts[k]);
      else k++;
    LOG_INFO("sched", NULL, "pool %s forgotten: down for %" PRId64 " ms (orchestrator.pools.forget_after %"
             PRId64 " ms)", p->name, now - p->last_seen_ms, s->lim.forget_after_ms);
    pool_free(p);
    s->pools[i] = s->pools[--s->n_pools];
  }
}

void sched_tick(sched *s, int64_t now) {
  pools_forget(s, now);
  fetches_tick(s, now);
  for (int i = 0; i < s->n_pools; i++) {
    sched_pool *p = s->pools[i];
    if (!p->up) continue;
    int64_t limit = (int64_t)s->lim.heartbeat_miss_limit * p->interval_ms;
    if (now - p->last_seen_ms > limit) {
      p->up = false;
      LOG_WARN("sched", NULL, "pool %s is down: no heartbeat for %" PRId64 " ms (limit %d x %" PRId64
               " ms); its workers leave routing", p->name, now - p->last_seen_ms,
               s->lim.heartbeat_miss_limit, p->interval_ms);
    }
  }
  for (int i = 0; i < s->n_starts;) {
    sched_pending_start *ps = s->starts[i];
    if (now - ps->asked_ms > s->lim.start_timeout_ms || !ps->pool->up) {
      snprintf(s->models[ps->model].pending, SCHED_REASON_MAX,
               "start on %s %s did not show up in the pool's state", ps->pool->name, ps->device);
      start_remove(s, ps);
    } else {
      i++;
    }
  }
  if (s->lim.queue_timeout_ms > 0) {
    for (int p = 0; p < SCHED_N_PRIO; p++) {
      sched_req *q = &s->queues[p];
      for (sched_req *r = q->next, *next; r != q; r = next) {
        next = r->next;
        if (now - r->enqueued_ms < s->lim.queue_timeout_ms) continue;
        sched_model *m = &s->models[r->model];
        char msg[SCHED_REASON_MAX + 96];
        reason_set(msg, sizeof msg, "waited %" PRId64 " ms in the queue for model '%s' (limit %" PRId64
                 " ms): %s", now - r->enqueued_ms, m->name, s->lim.queue_timeout_ms,
                 m->pending[0] ? m->pending : "no free slot");
        sched_unqueue(s, r);
        r->state = SCHED_REQ_DONE;
        s->stats.timed_out++;
        s->stats.decisions++;
        s->ops.fail(s->ops.ud, r, 503, "queue_timeout", msg);
      }
    }
  }
  /* Drained workers whose last request finished (release_slot runs inside
   * HTTP-client callbacks, so the stop call is made here, not there). */
  for (int i = 0; i < s->n_workers; i++) {
    sched_worker *w = s->workers[i];
    if (w->draining && w->busy == 0 && !w->stop_sent && !worker_terminal(w)) stop_worker(s, w, "drained");
  }
  for (int i = 0; i < s->n_models; i++) {
    sched_model *m = &s->models[i];
    if (m->unloaded || m->min_replicas <= 0) continue;
    /* No eviction for min_replicas: it keeps capacity up, it does not take it from others. */
    for (int k = sched_model_replicas(s, i); k < m->min_replicas; k++)
      if (!place_model(s, i, now, false)) break;
  }
  sched_dispatch(s, now);
}

/* ---- operators ---- */

int sched_model_load(sched *s, int model, int64_t now, llorch_errmsg *em) {
  sched_model *m = &s->models[model];
  m->unloaded = false;
  if (sched_model_replicas(s, model) > 0) return 0;
  if (place_model(s, model, now, true)) return 0;
  return llorch_errmsg_set(em, LLORCH_EINSUFFICIENT_MEMORY, "model '%s' cannot be placed: %s",
                           m->name, m->pending);
}

int sched_model_unload(sched *s, int model, int64_t now) {
  sched_model *m = &s->models[model];
  m->unloaded = true;
  int n = 0;
  for (int i = 0; i < s->n_workers; i++) {
    sched_worker *w = s->workers[i];
    if (w->model != model || w->stop_sent || worker_terminal(w)) continue;
    if (w->busy > 0) continue; /* stopped by a later unload or eviction once idle */
    stop_worker(s, w, "unloaded");
    n++;
  }
  for (int i = 0; i < s->n_starts;)
    if (s->starts[i]->model == model && !s->starts[i]->answered) start_remove(s, s->starts[i]);
    else i++;
  (void)now;
  return n;
}

int sched_worker_drain(sched *s, sched_worker *w, int64_t now) {
  (void)now;
  if (w->stop_sent || worker_terminal(w)) return LLORCH_ESTATE;
  w->draining = true;
  if (w->busy > 0) return 0;
  stop_worker(s, w, "drained");
  return 1;
}

sched_worker *sched_worker_find(const sched *s, const char *pool, const char *id) {
  const sched_pool *p = sched_pool_find(s, pool);
  return p ? worker_find(s, p, id) : NULL;
}
