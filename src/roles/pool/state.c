/*
 * The pool's picture of itself, as the orchestrator sees it: the state
 * document (docs/cluster-protocol.md section 2), the free memory of each
 * device after what the pool's own workers hold, the preflight arithmetic
 * and how a worker's end is described. No I/O here: unit-tested directly.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "pool-impl.h"

/* ---- workers ---- */

const char *pool_worker_state_name(pool_worker_state s) {
  switch (s) {
  case POOL_WORKER_STARTING: return "starting";
  case POOL_WORKER_READY: return "ready";
  case POOL_WORKER_STOPPING: return "stopping";
  case POOL_WORKER_FAILED: return "failed";
  case POOL_WORKER_EXITED: return "exited";
  }
  return "unknown";
}

bool pool_worker_alive(const pool_worker *w) { return !w->proc_exited; }

uint64_t pool_worker_held_bytes(const pool_worker *w) {
  return llorch_mem_held(w->estimate_bytes, w->actual_bytes);
}

uint64_t pool_worker_device_bytes(const pool_worker *w) {
  return llorch_mem_device_share(pool_worker_held_bytes(w), w->n_devices);
}

void pool_workers_measure(pool_worker *workers) {
  for (pool_worker *w = workers; w; w = w->next) {
    if (!pool_worker_alive(w) || w->pid <= 0 || w->n_devices != 1 || strcmp(w->devices[0], "cpu"))
      continue;
    llorch_mem_usage u;
    /* The peak, not the moment: KV pages once touched stay resident, and
     * a figure that only grows keeps the orchestrator's books steady. */
    if (llorch_mem_usage_read(w->pid, &u) == 0 && u.hwm_bytes > w->actual_bytes)
      w->actual_bytes = u.hwm_bytes;
  }
}

static bool pool_worker_uses(const pool_worker *w, const char *dev) {
  for (int i = 0; i < w->n_devices; i++)
    if (strcmp(w->devices[i], dev) == 0) return true;
  return false;
}

const char *pool_signal_name(int sig, char *buf, size_t size) {
  static const struct {
    int sig;
    const char *name;
  } names[] = {{SIGKILL, "SIGKILL"}, {SIGTERM, "SIGTERM"}, {SIGSEGV, "SIGSEGV"},
               {SIGABRT, "SIGABRT"}, {SIGINT, "SIGINT"},   {SIGBUS, "SIGBUS"},
               {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"},   {SIGHUP, "SIGHUP"},
               {SIGPIPE, "SIGPIPE"}, {SIGQUIT, "SIGQUIT"}, {SIGTRAP, "SIGTRAP"}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i].sig == sig) {
      snprintf(buf, size, "%s", names[i].name);
      return buf;
    }
  snprintf(buf, size, "SIG%d", sig);
  return buf;
}

void pool_exit_describe(int code, int signal, char *out, size_t size) {
  char sig[16];
  if (signal) snprintf(out, size, "killed by signal %s", pool_signal_name(signal, sig, sizeof sig));
  else if (code >= 0) snprintf(out, size, "exit code %d", code);
  else snprintf(out, size, "ended");
}

/* ---- stderr tail ---- */

static void tail_push(pool_worker *w, const char *line, size_t len) {
  if (len >= POOL_STDERR_LINE_MAX) len = POOL_STDERR_LINE_MAX - 1;
  int slot = (w->tail_first + w->tail_n) % POOL_STDERR_LINES;
  if (w->tail_n == POOL_STDERR_LINES) w->tail_first = (w->tail_first + 1) % POOL_STDERR_LINES;
  else w->tail_n++;
  memcpy(w->tail[slot], line, len);
  w->tail[slot][len] = '\0';
}

void pool_worker_tail_feed(pool_worker *w, const char *data, size_t len) {
  for (size_t i = 0; i < len; i++) {
    char c = data[i];
    if (c == '\n') {
      size_t n = w->partial_len;
      if (n && w->partial[n - 1] == '\r') n--;
      tail_push(w, w->partial, n);
      w->partial_len = 0;
      w->partial_cut = false;
      continue;
    }
    /* A line longer than we keep is cut; its end is dropped, not turned into
     * lines of its own. */
    if (w->partial_len < POOL_STDERR_LINE_MAX - 1) w->partial[w->partial_len++] = c;
    else w->partial_cut = true;
  }
}

void pool_worker_tail_flush(pool_worker *w) {
  if (w->partial_len) tail_push(w, w->partial, w->partial_len);
  w->partial_len = 0;
  w->partial_cut = false;
}

int pool_worker_url(const char *reported, const char *public_host, char *out, size_t size) {
  if (strncmp(reported, "http://", 7) != 0) return LLORCH_EINVAL;
  const char *hp = reported + 7;
  const char *colon = hp[0] == '[' ? strchr(hp, ']') : strrchr(hp, ':');
  if (colon && *colon == ']') colon = colon[1] == ':' ? colon + 1 : NULL;
  if (!colon || colon == hp || !colon[1]) return LLORCH_EINVAL;
  for (const char *c = colon + 1; *c; c++)
    if (*c < '0' || *c > '9') return LLORCH_EINVAL;
  int n;
  if (!public_host || !public_host[0]) {
    n = snprintf(out, size, "%s", reported);
  } else {
    bool v6 = strchr(public_host, ':') != NULL;
    n = snprintf(out, size, "http://%s%s%s%s", v6 ? "[" : "", public_host, v6 ? "]" : "", colon);
  }
  return n < 0 || (size_t)n >= size ? LLORCH_EINVAL : 0;
}

/* ---- devices ---- */

uint64_t pool_device_free(const llorch_device_info *d, const pool_worker *workers) {
  uint64_t held = 0;
  for (const pool_worker *w = workers; w; w = w->next) {
    if (!pool_worker_alive(w) || !pool_worker_uses(w, d->id)) continue;
    if (d->kind == LLORCH_DEVICE_CPU) held += pool_worker_device_bytes(w);
    else if (w->state == POOL_WORKER_STARTING) held += pool_worker_device_bytes(w);
  }
  if (d->kind == LLORCH_DEVICE_CPU) {
    uint64_t budget = d->memory_total > held ? d->memory_total - held : 0;
    return budget < d->memory_free ? budget : d->memory_free;
  }
  return d->memory_free > held ? d->memory_free - held : 0;
}

int pool_preflight_check(const char *model, int ctx, int slots, const char *device, uint64_t need,
                         uint64_t free_bytes, llorch_errmsg *em) {
  if (need <= free_bytes) return 0;
  return llorch_errmsg_set(em, LLORCH_EINSUFFICIENT_MEMORY,
                           "%s ctx %d x %d slots needs %llu bytes; %s has %llu free", model, ctx,
                           slots, (unsigned long long)need, device,
                           (unsigned long long)free_bytes);
}

/* ---- the state document ---- */

static void key_u64(llorch_jbuf *b, const char *key, uint64_t v) { llorch_jbuf_kint(b, key, (int64_t)v); }

/* An integer that is unknown when negative (NVML gave nothing). */
static void key_int_or_null(llorch_jbuf *b, const char *key, int v) {
  llorch_jbuf_key(b, key);
  if (v >= 0) llorch_jbuf_int(b, v);
  else llorch_jbuf_null(b);
}

void pool_worker_write(llorch_jbuf *b, const pool_worker *w, bool with_token) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "id", w->id);
  llorch_jbuf_kstr(b, "model", w->model);
  llorch_jbuf_kstr(b, "file", w->file);
  llorch_jbuf_karr(b, "devices");
  for (int i = 0; i < w->n_devices; i++) llorch_jbuf_str(b, w->devices[i]);
  llorch_jbuf_end(b);
  llorch_jbuf_kint(b, "ctx", w->ctx);
  llorch_jbuf_kint(b, "slots", w->slots);
  llorch_jbuf_kstr(b, "state", pool_worker_state_name(w->state));
  /* url only means something to a router while the worker serves. */
  bool serving = w->url[0] && (w->state == POOL_WORKER_READY || w->state == POOL_WORKER_STOPPING);
  llorch_jbuf_kstr(b, "url", serving ? w->url : NULL);
  /* The token goes only into the cluster-authenticated answers about this
   * one worker (its start, GET /v2/workers/{id}), never into the state
   * documents that are sent every heartbeat and read by operators. */
  llorch_jbuf_kstr(b, "token", with_token ? w->token : NULL);
  if (w->pid > 0) llorch_jbuf_kint(b, "pid", w->pid);
  /* What the pool counts for it: the orchestrator credits an evicted worker
   * with exactly this (split over its devices), so the books agree. */
  key_u64(b, "memory_bytes", pool_worker_held_bytes(w));
  key_u64(b, "estimate_bytes", w->estimate_bytes);
  key_u64(b, "actual_bytes", w->actual_bytes);
  llorch_jbuf_kint(b, "started_at_ms", w->started_at_ms);
  llorch_jbuf_key(b, "exit");
  if (!w->has_exit) {
    llorch_jbuf_null(b);
  } else {
    char sig[16];
    llorch_jbuf_obj(b);
    key_int_or_null(b, "code", w->exit_code >= 0 && !w->exit_signal ? w->exit_code : -1);
    llorch_jbuf_kstr(b, "signal", w->exit_signal ? pool_signal_name(w->exit_signal, sig, sizeof sig) : NULL);
    llorch_jbuf_kstr(b, "reason", w->reason);
    llorch_jbuf_karr(b, "stderr_tail");
    for (int i = 0; i < w->tail_n; i++) llorch_jbuf_str(b, w->tail[(w->tail_first + i) % POOL_STDERR_LINES]);
    llorch_jbuf_end(b);
    llorch_jbuf_end(b);
  }
  llorch_jbuf_end(b);
}

static void device_write(llorch_jbuf *b, const llorch_device_info *d, const pool_worker *workers) {
  uint64_t free_bytes = pool_device_free(d, workers);
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "id", d->id);
  llorch_jbuf_kstr(b, "kind", d->kind == LLORCH_DEVICE_CUDA ? "cuda" : "cpu");
  llorch_jbuf_kint(b, "index", d->index);
  llorch_jbuf_kstr(b, "uuid", d->uuid);
  llorch_jbuf_kstr(b, "name", d->name);
  key_u64(b, "memory_total", d->memory_total);
  key_u64(b, "memory_used", d->memory_total > free_bytes ? d->memory_total - free_bytes : 0);
  key_u64(b, "memory_free", free_bytes);
  key_int_or_null(b, "utilization", d->utilization_pct);
  key_int_or_null(b, "temperature", d->temperature_c);
  llorch_jbuf_end(b);
}

static void model_write(llorch_jbuf *b, const pool_model *m) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kstr(b, "name", m->name);
  llorch_jbuf_kstr(b, "file", m->file);
  llorch_jbuf_kstr(b, "arch", m->arch);
  key_u64(b, "params", m->params);
  llorch_jbuf_kstr(b, "quant", m->quant);
  key_u64(b, "ctx", m->ctx);
  key_u64(b, "file_bytes", m->file_bytes);
  key_u64(b, "tensor_bytes", m->tensor_bytes);
  llorch_jbuf_kobj(b, "estimate");
  static const char *const kinds[2] = {"cpu", "cuda"};
  for (int k = 0; k < 2; k++) {
    const llorch_mem_coeffs *c = &m->est[k];
    llorch_jbuf_kobj(b, kinds[k]);
    key_u64(b, "fixed_bytes", c->fixed_bytes);
    key_u64(b, "per_token_bytes", c->per_token_bytes);
    key_u64(b, "per_slot_bytes", c->per_slot_bytes);
    key_u64(b, "per_ctx_bytes", c->per_ctx_bytes);
    llorch_jbuf_end(b);
  }
  llorch_jbuf_end(b);
  llorch_jbuf_end(b);
}

void pool_state_write(llorch_jbuf *b, const pool_state_view *v) {
  llorch_jbuf_obj(b);
  llorch_jbuf_kint(b, "protocol", 1);
  llorch_jbuf_kstr(b, "pool", v->pool);
  llorch_jbuf_kstr(b, "url", v->url);
  llorch_jbuf_kstr(b, "boot_id", v->boot_id);
  key_u64(b, "seq", v->seq);
  llorch_jbuf_kint(b, "heartbeat_interval_ms", v->heartbeat_interval_ms);
  llorch_jbuf_kstr(b, "version", LLORCH_VERSION);
  llorch_jbuf_karr(b, "devices");
  for (int i = 0; i < v->n_devices; i++) device_write(b, &v->devices[i], v->workers);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "models");
  for (int i = 0; i < v->n_models; i++)
    if (!v->models[i].bad) model_write(b, &v->models[i]);
  llorch_jbuf_end(b);
  llorch_jbuf_karr(b, "workers");
  for (const pool_worker *w = v->workers; w; w = w->next) pool_worker_write(b, w, false);
  llorch_jbuf_end(b);
  llorch_jbuf_key(b, "fetches");
  pool_fetches_write(b, v->fetches);
  llorch_jbuf_end(b);
}
