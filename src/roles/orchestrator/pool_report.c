/*
 * Parsing a pool's state document (docs/cluster-protocol.md section 2) into
 * the scheduler's sched_pool_report. A pool is a peer, not trusted code:
 * every field is checked for type, range and length, and the first wrong one
 * is named in the 400 the pool gets back.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchestrator-impl.h"

/* ---- field helpers ---- */

/* A peer's value for an error line: printable ASCII only (so the line stays
 * one line), at most 64 characters. */
static const char *show(const char *v, char *buf, size_t n) { return llorch_str_show(buf, n, v, strlen(v), 64); }

/* A string copied into buf[size]; NULL/absent leaves "" when not required. */
static int get_str(const cJSON *obj, const char *where, const char *key, bool required, char *buf,
                   size_t size, llorch_errmsg *em) {
  const char *s = NULL;
  buf[0] = '\0';
  int rc = llorch_json_get_string(obj, where, key, required, &s, em);
  if (rc < 0) return rc;
  if (!s) return 0;
  size_t n = strlen(s);
  if (n >= size)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s%s%s' is too long: %zu bytes, at most %zu",
                             where && *where ? where : "", where && *where ? "." : "", key, n,
                             size - 1);
  memcpy(buf, s, n + 1);
  return 0;
}

/* Names that end up in URLs and log lines: [A-Za-z0-9._-]{1,63}. */
static int check_name(const char *where, const char *key, const char *v, llorch_errmsg *em) {
  size_t n = strlen(v);
  bool ok = n >= 1 && n <= 63;
  for (size_t i = 0; ok && i < n; i++)
    ok = isalnum((unsigned char)v[i]) || v[i] == '.' || v[i] == '_' || v[i] == '-';
  if (ok) return 0;
  char buf[80];
  return llorch_errmsg_set(em, LLORCH_EINVAL,
                           "'%s%s%s' must match [A-Za-z0-9._-]{1,63}, got \"%s\"",
                           where && *where ? where : "", where && *where ? "." : "", key,
                           show(v, buf, sizeof buf));
}

static int get_u64(const cJSON *obj, const char *where, const char *key, bool required,
                   uint64_t *out, llorch_errmsg *em) {
  int64_t v = 0;
  int rc = llorch_json_get_int(obj, where, key, required, 0, INT64_MAX, &v, em);
  if (rc < 0) return rc;
  if (cJSON_GetObjectItemCaseSensitive(obj, key) && !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(obj, key)))
    *out = (uint64_t)v;
  return 0;
}

static int get_i32(const cJSON *obj, const char *where, const char *key, bool required, int min,
                   int max, int *out, llorch_errmsg *em) {
  int64_t v = *out;
  int rc = llorch_json_get_int(obj, where, key, required, min, max, &v, em);
  if (rc < 0) return rc;
  *out = (int)v;
  return 0;
}

/* ---- parts ---- */

static int parse_device(const cJSON *d, const char *where, sched_device *out, llorch_errmsg *em) {
  static const char *const kinds[] = {"cpu", "cuda", NULL};
  int rc, kind = 0;
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(d)) return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be an object", where);
  if ((rc = get_str(d, where, "id", true, out->id, sizeof out->id, em)) < 0) return rc;
  if ((rc = check_name(where, "id", out->id, em)) < 0) return rc;
  if ((rc = llorch_json_get_enum(d, where, "kind", true, kinds, &kind, em)) < 0) return rc;
  out->kind = kind == 1 ? SCHED_DEV_CUDA : SCHED_DEV_CPU;
  if ((rc = get_i32(d, where, "index", false, 0, 1024, &out->index, em)) < 0) return rc;
  if ((rc = get_str(d, where, "uuid", false, out->uuid, sizeof out->uuid, em)) < 0) return rc;
  if ((rc = get_str(d, where, "name", false, out->name, sizeof out->name, em)) < 0) return rc;
  if ((rc = get_u64(d, where, "memory_total", true, &out->memory_total, em)) < 0) return rc;
  if ((rc = get_u64(d, where, "memory_used", false, &out->memory_used, em)) < 0) return rc;
  if ((rc = get_u64(d, where, "memory_free", true, &out->memory_free, em)) < 0) return rc;
  out->utilization = -1;
  out->temperature = -1;
  if ((rc = get_i32(d, where, "utilization", false, 0, 100, &out->utilization, em)) < 0) return rc;
  if ((rc = get_i32(d, where, "temperature", false, -100, 300, &out->temperature, em)) < 0) return rc;
  return 0;
}

static int parse_estimate(const cJSON *m, const char *where, sched_pool_model *out,
                          llorch_errmsg *em) {
  const cJSON *est = NULL;
  int rc = llorch_json_get_object(m, where, "estimate", false, &est, em);
  if (rc < 0 || !est) return rc;
  static const char *const kinds[2] = {"cpu", "cuda"};
  char path[192];
  snprintf(path, sizeof path, "%s.estimate", where);
  for (int k = 0; k < 2; k++) {
    const cJSON *e = NULL;
    if ((rc = llorch_json_get_object(est, path, kinds[k], false, &e, em)) < 0) return rc;
    if (!e) continue;
    char p2[224];
    snprintf(p2, sizeof p2, "%s.%s", path, kinds[k]);
    if ((rc = get_u64(e, p2, "fixed_bytes", true, &out->est[k].fixed_bytes, em)) < 0) return rc;
    if ((rc = get_u64(e, p2, "per_token_bytes", true, &out->est[k].per_token_bytes, em)) < 0)
      return rc;
    /* llorch_mem_need's other two terms; absent from older pools (0) */
    if ((rc = get_u64(e, p2, "per_slot_bytes", false, &out->est[k].per_slot_bytes, em)) < 0 ||
        (rc = get_u64(e, p2, "per_ctx_bytes", false, &out->est[k].per_ctx_bytes, em)) < 0)
      return rc;
    out->est[k].valid = true;
  }
  return 0;
}

static int parse_model(const cJSON *m, const char *where, sched_pool_model *out, llorch_errmsg *em) {
  int rc;
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(m)) return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be an object", where);
  if ((rc = get_str(m, where, "name", true, out->name, sizeof out->name, em)) < 0) return rc;
  if ((rc = get_str(m, where, "file", true, out->file, sizeof out->file, em)) < 0) return rc;
  char buf[80];
  if (out->file[0] == '/' || strstr(out->file, ".."))
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "'%s.file' must be relative to a model directory, got \"%s\"", where,
                             show(out->file, buf, sizeof buf));
  if ((rc = get_str(m, where, "arch", false, out->arch, sizeof out->arch, em)) < 0) return rc;
  if ((rc = get_str(m, where, "quant", false, out->quant, sizeof out->quant, em)) < 0) return rc;
  if ((rc = get_u64(m, where, "params", false, &out->params, em)) < 0) return rc;
  if ((rc = get_i32(m, where, "ctx", false, 0, 1 << 24, &out->ctx, em)) < 0) return rc;
  if ((rc = get_u64(m, where, "file_bytes", false, &out->file_bytes, em)) < 0) return rc;
  if ((rc = get_u64(m, where, "tensor_bytes", false, &out->tensor_bytes, em)) < 0) return rc;
  return parse_estimate(m, where, out, em);
}

int orch_worker_report_parse(const cJSON *w, const char *where, sched_worker_report *out,
                             llorch_errmsg *em) {
  static const char *const states[] = {"starting", "ready", "stopping", "failed", "exited", NULL};
  int rc, st = 0;
  memset(out, 0, sizeof *out);
  out->exit_code = -1;
  if (!cJSON_IsObject(w)) return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be an object", where);
  if ((rc = get_str(w, where, "id", true, out->id, sizeof out->id, em)) < 0) return rc;
  if ((rc = check_name(where, "id", out->id, em)) < 0) return rc;
  if ((rc = get_str(w, where, "model", true, out->model, sizeof out->model, em)) < 0) return rc;
  if ((rc = get_str(w, where, "file", false, out->file, sizeof out->file, em)) < 0) return rc;
  const cJSON *devs = NULL;
  if ((rc = llorch_json_get_array(w, where, "devices", false, 0, &devs, em)) < 0) return rc;
  if (devs) {
    int n = cJSON_GetArraySize(devs);
    if (n > SCHED_MAX_WORKER_DEVICES)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s.devices' has %d items, at most %d", where, n,
                               SCHED_MAX_WORKER_DEVICES);
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs) {
      if (!cJSON_IsString(d) || strlen(d->valuestring) >= SCHED_DEV_ID_MAX)
        return llorch_errmsg_set(em, LLORCH_EINVAL,
                                 "'%s.devices[%d]' must be a device id string (< %d bytes)", where,
                                 i, SCHED_DEV_ID_MAX);
      snprintf(out->devices[i], sizeof out->devices[i], "%s", d->valuestring);
      i++;
    }
    out->n_devices = n;
  }
  if ((rc = get_i32(w, where, "ctx", false, 0, 1 << 24, &out->ctx, em)) < 0) return rc;
  out->slots = 1;
  if ((rc = get_i32(w, where, "slots", false, 1, 4096, &out->slots, em)) < 0) return rc;
  if ((rc = llorch_json_get_enum(w, where, "state", true, states, &st, em)) < 0) return rc;
  out->state = (sched_worker_state)st;
  if ((rc = get_str(w, where, "url", false, out->url, sizeof out->url, em)) < 0) return rc;
  char buf[80];
  if (out->url[0] && strncmp(out->url, "http://", 7) != 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s.url' must start with http://, got \"%s\"",
                             where, show(out->url, buf, sizeof buf));
  if ((rc = get_str(w, where, "token", false, out->token, sizeof out->token, em)) < 0) return rc;
  if (out->state == SCHED_WORKER_READY && !out->url[0])
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s.url' is required when state is ready", where);
  if ((rc = get_i32(w, where, "pid", false, 0, 1 << 30, &out->pid, em)) < 0) return rc;
  if ((rc = get_u64(w, where, "memory_bytes", false, &out->memory_bytes, em)) < 0) return rc;
  int64_t started = 0;
  if ((rc = llorch_json_get_int(w, where, "started_at_ms", false, 0, INT64_MAX, &started, em)) < 0)
    return rc;
  out->started_at_ms = started;
  const cJSON *ex = NULL;
  if ((rc = llorch_json_get_object(w, where, "exit", false, &ex, em)) < 0) return rc;
  if (ex) {
    char path[192];
    snprintf(path, sizeof path, "%s.exit", where);
    if ((rc = get_i32(ex, path, "code", false, -1, 255, &out->exit_code, em)) < 0) return rc;
    if ((rc = get_str(ex, path, "signal", false, out->exit_signal, sizeof out->exit_signal, em)) < 0)
      return rc;
    /* A long reason is cut, not refused: it is for people to read. */
    const char *reason = NULL;
    if ((rc = llorch_json_get_string(ex, path, "reason", false, &reason, em)) < 0) return rc;
    if (reason) snprintf(out->exit_reason, sizeof out->exit_reason, "%s", reason);
    const cJSON *tail = cJSON_GetObjectItemCaseSensitive(ex, "stderr_tail");
    if (!out->exit_reason[0] && cJSON_IsArray(tail) && tail->child) {
      const cJSON *last = tail->child;
      while (last->next) last = last->next;
      if (cJSON_IsString(last)) snprintf(out->exit_reason, sizeof out->exit_reason, "%s", last->valuestring);
    }
  }
  return 0;
}

/* One entry of "fetches": a copy the pool is making (files.c on the pool). */
static int parse_fetch(const cJSON *f, const char *where, sched_fetch_report *out, llorch_errmsg *em) {
  int rc;
  static const char *const states[] = {"running", "verifying", "interrupted", "failed", "done", "cancelled", NULL};
  if ((rc = get_str(f, where, "file", true, out->file, sizeof out->file, em)) < 0) return rc;
  if ((rc = get_str(f, where, "id", true, out->id, sizeof out->id, em)) < 0) return rc;
  int idx = 0;
  if ((rc = llorch_json_get_enum(f, where, "state", true, states, &idx, em)) < 0) return rc;
  snprintf(out->state, sizeof out->state, "%s", states[idx]);
  if ((rc = get_u64(f, where, "bytes_done", true, &out->bytes_done, em)) < 0) return rc;
  if ((rc = get_u64(f, where, "bytes_total", true, &out->bytes_total, em)) < 0) return rc;
  if ((rc = get_u64(f, where, "rate_bytes_per_s", false, &out->rate, em)) < 0) return rc;
  int64_t eta = -1;
  if ((rc = llorch_json_get_int(f, where, "eta_s", false, 0, INT64_MAX, &eta, em)) < 0) return rc;
  out->eta_s = eta;
  const char *err = NULL;
  if ((rc = llorch_json_get_string(f, where, "error", false, &err, em)) < 0) return rc;
  /* the pool's own sentence, cut to fit and made printable for the pending reason */
  if (err) llorch_str_show(out->error, sizeof out->error, err, strlen(err), sizeof out->error - 4);
  return 0;
}

int orch_pool_report_parse(const cJSON *doc, sched_pool_report *out, llorch_errmsg *em) {
  int rc;
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(doc))
    return llorch_errmsg_set(em, LLORCH_EINVAL, "the pool state must be a JSON object");
  int protocol = 1;
  if ((rc = get_i32(doc, "", "protocol", false, 1, 1, &protocol, em)) < 0) return rc;
  if ((rc = get_str(doc, "", "pool", true, out->pool, sizeof out->pool, em)) < 0) return rc;
  if ((rc = check_name("", "pool", out->pool, em)) < 0) return rc;
  if ((rc = get_str(doc, "", "url", true, out->url, sizeof out->url, em)) < 0) return rc;
  char buf[80];
  if (strncmp(out->url, "http://", 7) != 0 || !out->url[7])
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'url' must be http://HOST:PORT, got \"%s\"",
                             show(out->url, buf, sizeof buf));
  if ((rc = get_str(doc, "", "boot_id", true, out->boot_id, sizeof out->boot_id, em)) < 0) return rc;
  if ((rc = get_u64(doc, "", "seq", true, &out->seq, em)) < 0) return rc;
  int64_t iv = 0;
  if ((rc = llorch_json_get_int(doc, "", "heartbeat_interval_ms", true, 10, 3600000, &iv, em)) < 0)
    return rc;
  out->interval_ms = iv;

  const cJSON *arr = NULL;
  char where[64];
  if ((rc = llorch_json_get_array(doc, "", "devices", true, 0, &arr, em)) < 0) goto fail;
  if (cJSON_GetArraySize(arr) > SCHED_MAX_DEVICES) {
    rc = llorch_errmsg_set(em, LLORCH_EINVAL, "'devices' has %d items, at most %d",
                           cJSON_GetArraySize(arr), SCHED_MAX_DEVICES);
    goto fail;
  }
  const cJSON *item;
  int i = 0;
  cJSON_ArrayForEach(item, arr) {
    snprintf(where, sizeof where, "devices[%d]", i);
    if ((rc = parse_device(item, where, &out->devices[i], em)) < 0) goto fail;
    out->n_devices = ++i;
  }

  if ((rc = llorch_json_get_array(doc, "", "models", true, 0, &arr, em)) < 0) goto fail;
  int nm = cJSON_GetArraySize(arr);
  if (nm > 4096) {
    rc = llorch_errmsg_set(em, LLORCH_EINVAL, "'models' has %d items, at most 4096", nm);
    goto fail;
  }
  if (nm > 0) {
    out->models = calloc((size_t)nm, sizeof *out->models);
    if (!out->models) {
      rc = LLORCH_ENOMEM;
      goto fail;
    }
  }
  i = 0;
  cJSON_ArrayForEach(item, arr) {
    snprintf(where, sizeof where, "models[%d]", i);
    if ((rc = parse_model(item, where, &out->models[i], em)) < 0) goto fail;
    out->n_models = ++i;
  }

  if ((rc = llorch_json_get_array(doc, "", "workers", true, 0, &arr, em)) < 0) goto fail;
  int nw = cJSON_GetArraySize(arr);
  if (nw > 4096) {
    rc = llorch_errmsg_set(em, LLORCH_EINVAL, "'workers' has %d items, at most 4096", nw);
    goto fail;
  }
  if (nw > 0) {
    out->workers = calloc((size_t)nw, sizeof *out->workers);
    if (!out->workers) {
      rc = LLORCH_ENOMEM;
      goto fail;
    }
  }
  i = 0;
  cJSON_ArrayForEach(item, arr) {
    snprintf(where, sizeof where, "workers[%d]", i);
    if ((rc = orch_worker_report_parse(item, where, &out->workers[i], em)) < 0) goto fail;
    out->n_workers = ++i;
  }

  /* "fetches" is optional: pools before model file copies do not send it. */
  arr = NULL;
  if ((rc = llorch_json_get_array(doc, "", "fetches", false, 0, &arr, em)) < 0) goto fail;
  int nf = arr ? cJSON_GetArraySize(arr) : 0;
  if (nf > 64) {
    rc = llorch_errmsg_set(em, LLORCH_EINVAL, "'fetches' has %d items, at most 64", nf);
    goto fail;
  }
  if (nf > 0) {
    out->fetches = calloc((size_t)nf, sizeof *out->fetches);
    if (!out->fetches) {
      rc = LLORCH_ENOMEM;
      goto fail;
    }
    i = 0;
    cJSON_ArrayForEach(item, arr) {
      snprintf(where, sizeof where, "fetches[%d]", i);
      if ((rc = parse_fetch(item, where, &out->fetches[i], em)) < 0) goto fail;
      out->n_fetches = ++i;
    }
  }
  return 0;

fail:
  sched_pool_report_free(out);
  return rc;
}
