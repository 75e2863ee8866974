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

static void key_u64(llorch_jbuf *b, const char *key, uint64_t v) {
  llorch_jbuf_cstr(b, ",");
  llorch_jbuf_key(b, key);
  llorch_jbuf_int(b, (int64_t)v);
}

void pool_worker_write(llorch_jbuf *b, const pool_worker *w, bool with_token) {
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, w->id);
  llorch_jbuf_cstr(b, ",\"model\":");
  llorch_jbuf_str(b, w->model);
  llorch_jbuf_cstr(b, ",\"file\":");
  llorch_jbuf_str(b, w->file);
  llorch_jbuf_cstr(b, ",\"devices\":[");
  for (int i = 0; i < w->n_devices; i++) {
    if (i) llorch_jbuf_cstr(b, ",");
    llorch_jbuf_str(b, w->devices[i]);
  }
  llorch_jbuf_cstr(b, "],\"ctx\":");
  llorch_jbuf_int(b, w->ctx);
  llorch_jbuf_cstr(b, ",\"slots\":");
  llorch_jbuf_int(b, w->slots);
  llorch_jbuf_cstr(b, ",\"state\":");
  llorch_jbuf_str(b, pool_worker_state_name(w->state));
  /* url only means something to a router while the worker serves. */
  bool serving = w->url[0] && (w->state == POOL_WORKER_READY || w->state == POOL_WORKER_STOPPING);
  llorch_jbuf_cstr(b, ",\"url\":");
  llorch_jbuf_str(b, serving ? w->url : NULL);
  /* The token goes only into the cluster-authenticated answers about this
   * one worker (its start, GET /v2/workers/{id}), never into the state
   * documents that are sent every heartbeat and read by operators. */
  llorch_jbuf_cstr(b, ",\"token\":");
  llorch_jbuf_str(b, with_token ? w->token : NULL);
  if (w->pid > 0) {
    llorch_jbuf_cstr(b, ",\"pid\":");
    llorch_jbuf_int(b, w->pid);
  }
  /* What the pool counts for it: the orchestrator credits an evicted worker
   * with exactly this (split over its devices), so the books agree. */
  key_u64(b, "memory_bytes", pool_worker_held_bytes(w));
  key_u64(b, "estimate_bytes", w->estimate_bytes);
  key_u64(b, "actual_bytes", w->actual_bytes);
  llorch_jbuf_cstr(b, ",\"started_at_ms\":");
  llorch_jbuf_int(b, w->started_at_ms);
  llorch_jbuf_cstr(b, ",\"exit\":");
  if (!w->has_exit) {
    llorch_jbuf_cstr(b, "null}");
    return;
  }
  char sig[16];
  llorch_jbuf_cstr(b, "{\"code\":");
  if (w->exit_code >= 0 && !w->exit_signal) llorch_jbuf_int(b, w->exit_code);
  else llorch_jbuf_cstr(b, "null");
  llorch_jbuf_cstr(b, ",\"signal\":");
  llorch_jbuf_str(b, w->exit_signal ? pool_signal_name(w->exit_signal, sig, sizeof sig) : NULL);
  llorch_jbuf_cstr(b, ",\"reason\":");
  llorch_jbuf_str(b, w->reason);
  llorch_jbuf_cstr(b, ",\"stderr_tail\":[");
  for (int i = 0; i < w->tail_n; i++) {
    if (i) llorch_jbuf_cstr(b, ",");
    llorch_jbuf_str(b, w->tail[(w->tail_first + i) % POOL_STDERR_LINES]);
  }
  llorch_jbuf_cstr(b, "]}}");
}

static void device_write(llorch_jbuf *b, const llorch_device_info *d, const pool_worker *workers) {
  uint64_t free_bytes = pool_device_free(d, workers);
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, d->id);
  llorch_jbuf_cstr(b, ",\"kind\":");
  llorch_jbuf_str(b, d->kind == LLORCH_DEVICE_CUDA ? "cuda" : "cpu");
  llorch_jbuf_cstr(b, ",\"index\":");
  llorch_jbuf_int(b, d->index);
  llorch_jbuf_cstr(b, ",\"uuid\":");
  llorch_jbuf_str(b, d->uuid);
  llorch_jbuf_cstr(b, ",\"name\":");
  llorch_jbuf_str(b, d->name);
  key_u64(b, "memory_total", d->memory_total);
  key_u64(b, "memory_used", d->memory_total > free_bytes ? d->memory_total - free_bytes : 0);
  key_u64(b, "memory_free", free_bytes);
  llorch_jbuf_cstr(b, ",\"utilization\":");
  if (d->utilization_pct >= 0) llorch_jbuf_int(b, d->utilization_pct);
  else llorch_jbuf_cstr(b, "null");
  llorch_jbuf_cstr(b, ",\"temperature\":");
  if (d->temperature_c >= 0) llorch_jbuf_int(b, d->temperature_c);
  else llorch_jbuf_cstr(b, "null");
  llorch_jbuf_cstr(b, "}");
}

static void model_write(llorch_jbuf *b, const pool_model *m) {
  llorch_jbuf_cstr(b, "{\"name\":");
  llorch_jbuf_str(b, m->name);
  llorch_jbuf_cstr(b, ",\"file\":");
  llorch_jbuf_str(b, m->file);
  llorch_jbuf_cstr(b, ",\"arch\":");
  llorch_jbuf_str(b, m->arch);
  key_u64(b, "params", m->params);
  llorch_jbuf_cstr(b, ",\"quant\":");
  llorch_jbuf_str(b, m->quant);
  key_u64(b, "ctx", m->ctx);
  key_u64(b, "file_bytes", m->file_bytes);
  key_u64(b, "tensor_bytes", m->tensor_bytes);
  llorch_jbuf_cstr(b, ",\"estimate\":{");
  static const char *const kinds[2] = {"cpu", "cuda"};
  for (int k = 0; k < 2; k++) {
    const llorch_mem_coeffs *c = &m->est[k];
    llorch_jbuf_cstr(b, k ? ",\"" : "\"");
    llorch_jbuf_cstr(b, kinds[k]);
    llorch_jbuf_cstr(b, "\":{\"fixed_bytes\":");
    llorch_jbuf_int(b, (int64_t)c->fixed_bytes);
    key_u64(b, "per_token_bytes", c->per_token_bytes);
    key_u64(b, "per_slot_bytes", c->per_slot_bytes);
    key_u64(b, "per_ctx_bytes", c->per_ctx_bytes);
    llorch_jbuf_cstr(b, "}");
  }
  llorch_jbuf_cstr(b, "}}");
}

void pool_state_write(llorch_jbuf *b, const pool_state_view *v) {
  llorch_jbuf_cstr(b, "{\"protocol\":1,\"pool\":");
  llorch_jbuf_str(b, v->pool);
  llorch_jbuf_cstr(b, ",\"url\":");
  llorch_jbuf_str(b, v->url);
  llorch_jbuf_cstr(b, ",\"boot_id\":");
  llorch_jbuf_str(b, v->boot_id);
  key_u64(b, "seq", v->seq);
  llorch_jbuf_cstr(b, ",\"heartbeat_interval_ms\":");
  llorch_jbuf_int(b, v->heartbeat_interval_ms);
  llorch_jbuf_cstr(b, ",\"version\":");
  llorch_jbuf_str(b, LLORCH_VERSION);
  llorch_jbuf_cstr(b, ",\"devices\":[");
  for (int i = 0; i < v->n_devices; i++) {
    if (i) llorch_jbuf_cstr(b, ",");
    device_write(b, &v->devices[i], v->workers);
  }
  llorch_jbuf_cstr(b, "],\"models\":[");
  int n = 0;
  for (int i = 0; i < v->n_models; i++) {
    if (v->models[i].bad) continue;
    if (n++) llorch_jbuf_cstr(b, ",");
    model_write(b, &v->models[i]);
  }
  llorch_jbuf_cstr(b, "],\"workers\":[");
  n = 0;
  for (const pool_worker *w = v->workers; w; w = w->next) {
    if (n++) llorch_jbuf_cstr(b, ",");
    pool_worker_write(b, w, false);
  }
  llorch_jbuf_cstr(b, "],\"fetches\":");
  pool_fetches_write(b, v->fetches);
  llorch_jbuf_cstr(b, "}");
}
