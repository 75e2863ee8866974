/*
 * The pool protocol, orchestrator side (docs/cluster-protocol.md):
 *   server: POST /v2/pools/register, /v2/pools/{pool}/heartbeat,
 *           /v2/pools/{pool}/events (cluster token)
 *   client: POST {pool}/v2/workers (start), DELETE {pool}/v2/workers/{id} (stop)
 * Documents go through orch_pool_report_parse and then the scheduler, which
 * decides; this file only moves bytes.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "llorch/sha256.h"
#include "events.h"
#include "orchestrator-impl.h"

/* ---- server side ---- */

static void respond_pool_unknown(llorch_http_request *req, const char *pool) {
  char msg[200];
  snprintf(msg, sizeof msg, "pool '%.100s' is not registered here; POST /v2/pools/register first", pool);
  llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "POOL_UNKNOWN");
}

static void respond_ack(orch *o, llorch_http_request *req, const sched_pool *p, bool list_workers) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"orchestrator_id\":");
  llorch_jbuf_str(&b, o->id);
  if (p) {
    llorch_jbuf_cstr(&b, ",\"pool\":");
    llorch_jbuf_str(&b, p->name);
  }
  if (list_workers && p) {
    /* The workers the orchestrator now routes to or waits for: adopted, not restarted. */
    llorch_jbuf_cstr(&b, ",\"adopted\":[");
    int n = 0;
    for (int i = 0; i < o->s.n_workers; i++) {
      const sched_worker *w = o->s.workers[i];
      if (w->pool != p) continue;
      if (w->state != SCHED_WORKER_READY && w->state != SCHED_WORKER_STARTING) continue;
      if (n++) llorch_jbuf_cstr(&b, ",");
      llorch_jbuf_str(&b, w->id);
    }
    llorch_jbuf_cstr(&b, "]");
  }
  llorch_jbuf_cstr(&b, "}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
}

static void pool_fetch_tokens(orch *o, sched_pool *p);

/*
 * A pool document is parsed and checked off the loop when it is large (see
 * client_api.c: an 8 MiB document costs the loop tens of milliseconds), then
 * applied to the scheduler on the loop. While the thread reads the body no
 * on_close is set, so a pool that hangs up only detaches the request, which
 * keeps its body until pool_doc_finish answers it.
 */
#define POOL_PARSE_OFFLOAD_BYTES (64u << 10)

typedef struct pool_doc {
  uv_work_t work;
  orch *o;
  llorch_http_request *req;
  bool events;                  /* POST .../events, else a state document */
  bool is_register;
  char path_pool[SCHED_NAME_MAX]; /* "" for /register */
  const char *text;
  size_t len;
  /* parse results */
  int status;                   /* 0 = parsed; else the answer (400, 413, 500) */
  char msg[512];                /* as llorch_errmsg.text */
  char param[128];
  sched_pool_report rep;        /* state documents */
  char boot[SCHED_NAME_MAX];    /* events */
  uint64_t seq;
  sched_worker_report *ws;      /* (n_ws) events */
  int n_ws;
} pool_doc;

static void pool_doc_fail(pool_doc *d, int status, const char *param, const char *msg) {
  d->status = status;
  snprintf(d->param, sizeof d->param, "%s", param ? param : "");
  snprintf(d->msg, sizeof d->msg, "%s", msg);
}

/*
 * The configured bounds on a state document (orchestrator.pools.max_*),
 * checked before its contents are: 413 naming the list and the bound.
 */
static bool check_report_size(pool_doc *d, const cJSON *doc) {
  static const char *const lists[] = {"devices", "models", "workers"};
  const llorch_config *cfg = d->o->cfg;
  const int bounds[] = {cfg->orchestrator.pools.max_devices, cfg->orchestrator.pools.max_models,
                        cfg->orchestrator.pools.max_workers};
  for (int k = 0; k < 3; k++) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(doc, lists[k]);
    int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    if (n <= bounds[k]) continue;
    char msg[200];
    snprintf(msg, sizeof msg, "'%s' has %d items, at most %d (orchestrator.pools.max_%s)", lists[k], n,
             bounds[k], lists[k]);
    pool_doc_fail(d, 413, lists[k], msg);
    return false;
  }
  return true;
}

static void parse_state_doc(pool_doc *d, const cJSON *doc) {
  llorch_errmsg em = {{0}};
  if (!check_report_size(d, doc)) return;
  if (orch_pool_report_parse(doc, &d->rep, &em) < 0) pool_doc_fail(d, 400, llorch_json_errparam(), em.text);
}

static void parse_events(pool_doc *d, const cJSON *doc) {
  static const char *const types[] = {"worker_started", "worker_ready", "worker_failed",
                                      "worker_exited", NULL};
  llorch_errmsg em = {{0}};
  const char *boot = NULL;
  int64_t seq = 0;
  const cJSON *events = NULL;
  if (llorch_json_get_string(doc, "", "boot_id", true, &boot, &em) < 0 ||
      llorch_json_get_int(doc, "", "seq", true, 0, INT64_MAX, &seq, &em) < 0 ||
      llorch_json_get_array(doc, "", "events", true, 0, &events, &em) < 0) {
    pool_doc_fail(d, 400, llorch_json_errparam(), em.text);
    return;
  }
  snprintf(d->boot, sizeof d->boot, "%s", boot);
  d->seq = (uint64_t)seq;
  /* Validate everything first: a bad event must not leave half the batch applied. */
  int n = cJSON_GetArraySize(events);
  int max = d->o->cfg->orchestrator.pools.max_events;
  if (n > max) {
    char msg[160];
    snprintf(msg, sizeof msg, "'events' has %d items, at most %d (orchestrator.pools.max_events)", n, max);
    pool_doc_fail(d, 413, "events", msg);
    return;
  }
  d->ws = n ? calloc((size_t)n, sizeof *d->ws) : NULL;
  if (n && !d->ws) {
    pool_doc_fail(d, 500, NULL, "out of memory");
    return;
  }
  char where[48], wwhere[64];
  int i = 0, rc = 0;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, events) {
    const cJSON *w = NULL;
    int type;
    snprintf(where, sizeof where, "events[%d]", i);
    snprintf(wwhere, sizeof wwhere, "events[%d].worker", i);
    if (!cJSON_IsObject(ev)) rc = llorch_errmsg_set(&em, LLORCH_EINVAL, "'%s' must be an object", where);
    else if ((rc = llorch_json_get_enum(ev, where, "type", true, types, &type, &em)) >= 0 &&
             (rc = llorch_json_get_object(ev, where, "worker", true, &w, &em)) >= 0)
      rc = orch_worker_report_parse(w, wwhere, &d->ws[i], &em);
    if (rc < 0) {
      pool_doc_fail(d, 400, NULL, em.text);
      return;
    }
    i++;
  }
  d->n_ws = n;
}

/* Parses and checks; touches nothing but d (thread-safe). */
static void pool_doc_parse(pool_doc *d) {
  cJSON *doc = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_json_parse_bounded(d->text, d->len, (size_t)d->o->cfg->request.max_json_values,
                                     "request.max_json_values", &doc, &em);
  if (rc < 0) {
    pool_doc_fail(d, rc == LLORCH_ELIMIT ? 413 : 400, NULL, em.text);
    return;
  }
  if (d->events) parse_events(d, doc);
  else parse_state_doc(d, doc);
  cJSON_Delete(doc);
}

static void apply_state_doc(pool_doc *d) {
  orch *o = d->o;
  llorch_http_request *req = d->req;
  sched_pool_report *rep = &d->rep;
  if (d->path_pool[0] && strcmp(d->path_pool, rep->pool) != 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "'pool' is \"%s\" but the path names pool \"%.100s\"", rep->pool, d->path_pool);
    llorch_http_respond_error(req, 400, "invalid_request_error", msg, "pool", "INVALID_REQUEST");
    return;
  }
  bool known = sched_pool_find(&o->s, rep->pool) != NULL;
  int adopted = 0;
  int rc = sched_pool_apply(&o->s, rep, d->is_register, orch_now_ms(o), &adopted);
  if (rc == LLORCH_ENOTFOUND) {
    respond_pool_unknown(req, rep->pool);
  } else if (rc == LLORCH_ELIMIT) {
    char msg[300];
    snprintf(msg, sizeof msg, "pool '%s' cannot register: %d pools are registered, at most %d "
             "(orchestrator.pools.max; pools down for orchestrator.pools.forget_after are forgotten)",
             rep->pool, o->s.n_pools, o->s.lim.max_pools);
    LOG_WARN("pools", NULL, "%s", msg);
    llorch_http_response_header(req, "Retry-After", "60");
    llorch_http_respond_error(req, 429, "rate_limit_error", msg, NULL, "TOO_MANY_POOLS");
  } else if (rc < 0) {
    llorch_http_respond_error(req, 500, "server_error", llorch_strerror(rc), NULL, "internal_error");
  } else {
    if (d->is_register)
      LOG_INFO("pools", NULL, "pool %s %sregistered from %s (%s): %d devices, %d models, %d workers, %d adopted",
               rep->pool, known ? "re-" : "", llorch_http_request_peer(req), rep->url, rep->n_devices,
               rep->n_models, rep->n_workers, adopted);
    respond_ack(o, req, sched_pool_find(&o->s, rep->pool), d->is_register);
    sched_pool *sp = sched_pool_find(&o->s, rep->pool);
    if (sp) pool_fetch_tokens(o, sp);
  }
}

static void apply_events(pool_doc *d) {
  orch *o = d->o;
  int64_t now = orch_now_ms(o);
  int rc = 0;
  for (int i = 0; i < d->n_ws && rc == 0; i++) {
    const sched_worker_report *w = &d->ws[i];
    LOG_INFO("pools", NULL, "pool %s: worker %s (%s) is %s%s%s", d->path_pool, w->id, w->model,
             sched_worker_state_name(w->state), w->exit_reason[0] ? ": " : "", w->exit_reason);
    /* One seq for the batch: only its first event is checked against it. */
    rc = sched_pool_event(&o->s, d->path_pool, d->boot, i == 0 ? d->seq : 0, w, now);
    if (rc == 0) orch_events_worker(o, d->path_pool, w);
  }
  if (rc == LLORCH_ENOTFOUND) respond_pool_unknown(d->req, d->path_pool);
  else respond_ack(o, d->req, NULL, false);
}

/* Back on the loop: answer a refused document, or apply a parsed one. */
static void pool_doc_finish(pool_doc *d) {
  llorch_http_request *req = d->req;
  if (llorch_http_request_closed(req)) {
    llorch_http_respond(req, 499, NULL, NULL, 0); /* frees the detached request */
  } else if (d->status != 0) {
    if (d->status == 400 && !d->events)
      LOG_WARN("pools", llorch_http_request_id(req), "bad pool state from %s: %s",
               llorch_http_request_peer(req), d->msg);
    llorch_http_respond_error(req, d->status, d->status == 500 ? "server_error" : "invalid_request_error",
                              d->msg, d->param[0] ? d->param : NULL,
                              d->status == 500 ? "internal_error" : "INVALID_REQUEST");
  } else {
    llorch_http_request_release_body(req);
    if (d->events) apply_events(d);
    else apply_state_doc(d);
  }
  sched_pool_report_free(&d->rep);
  free(d->ws);
  free(d);
}

static void pool_doc_work(uv_work_t *w) {
  orch_thread_yield_to_loop();
  pool_doc_parse(w->data);
}

static void pool_doc_after(uv_work_t *w, int status) {
  pool_doc *d = w->data;
  if (status < 0 && d->status == 0) pool_doc_fail(d, 503, NULL, "the orchestrator is shutting down");
  pool_doc_finish(d);
}

static void on_pool_doc(orch *o, llorch_http_request *req, const char *path_pool, bool is_register,
                        bool events) {
  pool_doc *d = calloc(1, sizeof *d);
  if (!d) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  d->o = o;
  d->req = req;
  d->events = events;
  d->is_register = is_register;
  snprintf(d->path_pool, sizeof d->path_pool, "%s", path_pool ? path_pool : "");
  d->text = llorch_http_request_body(req, &d->len);
  d->work.data = d;
  if (d->len > POOL_PARSE_OFFLOAD_BYTES &&
      uv_queue_work(o->loop, &d->work, pool_doc_work, pool_doc_after) == 0)
    return;
  pool_doc_parse(d);
  pool_doc_finish(d);
}

void orch_on_pools(llorch_http_request *req, void *user) {
  orch *o = user;
  const char *path = llorch_http_request_path(req) + strlen("/v2/pools/");
  if (strcmp(path, "register") == 0) {
    on_pool_doc(o, req, NULL, true, false);
    return;
  }
  const char *slash = strchr(path, '/');
  char pool[SCHED_NAME_MAX];
  size_t plen = slash ? (size_t)(slash - path) : 0;
  if (!slash || plen == 0 || plen >= sizeof pool) {
    llorch_http_respond_error(req, 404, "invalid_request_error", "no such route", NULL, "not_found");
    return;
  }
  memcpy(pool, path, plen);
  pool[plen] = '\0';
  if (strcmp(slash, "/heartbeat") == 0) on_pool_doc(o, req, pool, false, false);
  else if (strcmp(slash, "/events") == 0) on_pool_doc(o, req, pool, false, true);
  else llorch_http_respond_error(req, 404, "invalid_request_error", "no such route", NULL, "not_found");
}

/* ---- client side: start and stop workers ---- */

typedef struct pool_call {
  orch *o;
  uint64_t start_id;
  char what[2 * SCHED_NAME_MAX + 64];
} pool_call;

static void pool_headers(orch *o, const char **hdr, char *auth, size_t n) {
  const char *tok = o->cluster_token;
  int k = 0;
  hdr[k++] = "Content-Type";
  hdr[k++] = "application/json";
  if (tok) {
    snprintf(auth, n, "Bearer %s", tok);
    hdr[k++] = "Authorization";
    hdr[k++] = auth;
  }
  hdr[k] = NULL;
}

/*
 * One call to a pool with the cluster token: a JSON body when body is not
 * NULL (else no body and no Content-Type). Returns 0 (on_done follows) or a
 * negative code with em (on_done never runs).
 */
static int pool_request(orch *o, const char *method, const char *url, const llorch_jbuf *body,
                     unsigned read_timeout_ms, void (*on_done)(llorch_http_call *, int, const char *, void *),
                     void *user, llorch_errmsg *em) {
  if (body && llorch_jbuf_error(body)) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  char auth[300];
  const char *hdr[8];
  pool_headers(o, hdr, auth, sizeof auth);
  llorch_http_call_opts opts = {0};
  opts.method = method;
  opts.url = url;
  opts.headers = body ? hdr : hdr + 2;
  opts.body = body ? body->data : NULL;
  opts.body_len = body ? body->len : 0;
  opts.connect_timeout_ms = 2000;
  opts.read_timeout_ms = read_timeout_ms;
  opts.on_done = on_done;
  opts.user = user;
  return llorch_http_call_start(o->client, &opts, NULL, em);
}

/* The pool's error message from its envelope, else the raw body. */
static void pool_error_text(llorch_http_call *call, char *out, size_t n) {
  size_t len = 0;
  const char *body = llorch_http_call_body(call, &len);
  cJSON *doc = cJSON_ParseWithLength(body, len);
  const cJSON *err = cJSON_GetObjectItemCaseSensitive(doc, "error");
  const cJSON *msg = cJSON_GetObjectItemCaseSensitive(err, "message");
  const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
  if (cJSON_IsString(msg))
    snprintf(out, n, "%d %s: %s", llorch_http_call_status(call), cJSON_IsString(code) ? code->valuestring : "",
             msg->valuestring);
  else
    snprintf(out, n, "HTTP %d: %.200s", llorch_http_call_status(call), body);
  cJSON_Delete(doc);
}

static void start_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pool_call *pc = user;
  orch *o = pc->o;
  int64_t now = orch_now_ms(o);
  char reason[400];
  if (err) {
    snprintf(reason, sizeof reason, "%s", errmsg ? errmsg : llorch_strerror(err));
  } else {
    int status = llorch_http_call_status(call);
    if (status == 201 || status == 200) {
      size_t len = 0;
      const char *body = llorch_http_call_body(call, &len);
      cJSON *doc = cJSON_ParseWithLength(body, len);
      const cJSON *w = cJSON_GetObjectItemCaseSensitive(doc, "worker");
      const cJSON *id = cJSON_GetObjectItemCaseSensitive(w, "id");
      const cJSON *tok = cJSON_GetObjectItemCaseSensitive(w, "token");
      if (cJSON_IsString(id) && strlen(id->valuestring) < SCHED_NAME_MAX) {
        LOG_INFO("pools", NULL, "%s: worker %s starting", pc->what, id->valuestring);
        /* The worker's token comes only in this answer (never in state documents). */
        sched_start_done(&o->s, pc->start_id, id->valuestring,
                         cJSON_IsString(tok) && strlen(tok->valuestring) < 128 ? tok->valuestring : "",
                         now);
        orch_dispatch_soon(o);
        cJSON_Delete(doc);
        free(pc);
        return;
      }
      cJSON_Delete(doc);
      snprintf(reason, sizeof reason, "answer %d without worker.id", status);
    } else {
      pool_error_text(call, reason, sizeof reason);
    }
  }
  LOG_WARN("pools", NULL, "%s failed: %s", pc->what, reason);
  sched_start_failed(&o->s, pc->start_id, reason, now);
  free(pc);
}

void orch_pool_start(void *ud, const sched_start *st) {
  orch *o = ud;
  pool_call *pc = calloc(1, sizeof *pc);
  if (!pc) {
    sched_start_failed(&o->s, st->start_id, "out of memory", orch_now_ms(o));
    return;
  }
  pc->o = o;
  pc->start_id = st->start_id;
  snprintf(pc->what, sizeof pc->what, "start %s on %s %s", st->model->name, st->pool->name, st->device);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"model\":");
  llorch_jbuf_str(&b, st->model->name);
  llorch_jbuf_cstr(&b, ",\"file\":");
  llorch_jbuf_str(&b, st->file);
  llorch_jbuf_cstr(&b, ",\"devices\":[");
  llorch_jbuf_str(&b, st->device);
  llorch_jbuf_cstr(&b, "],\"ctx\":");
  llorch_jbuf_int(&b, st->ctx);
  llorch_jbuf_cstr(&b, ",\"slots\":");
  llorch_jbuf_int(&b, st->slots);
  /* the catalog's chat template, when it names one */
  const llorch_model_list *cat = &o->cfg->orchestrator.models;
  for (size_t i = 0; i < cat->count; i++) {
    if (strcmp(cat->items[i].name, st->model->name) != 0 || !cat->items[i].chat_template) continue;
    llorch_jbuf_cstr(&b, ",\"chat_template\":");
    llorch_jbuf_str(&b, cat->items[i].chat_template);
  }
  llorch_jbuf_cstr(&b, "}");
  char url[SCHED_URL_MAX + 16];
  snprintf(url, sizeof url, "%s/v2/workers", st->pool->url);
  llorch_errmsg em = {{0}};
  LOG_INFO("pools", NULL, "%s (ctx %d x %d slots, needs ~%.1f MiB)", pc->what, st->ctx, st->slots,
           (double)st->need_bytes / (1024.0 * 1024.0));
  int rc = pool_request(o, "POST", url, &b, 10000, start_on_done, pc, &em);
  llorch_jbuf_free(&b);
  if (rc < 0) {
    LOG_WARN("pools", NULL, "%s: %s", pc->what, em.text);
    sched_start_failed(&o->s, st->start_id, em.text[0] ? em.text : llorch_strerror(rc), orch_now_ms(o));
    free(pc);
  }
}

/* ---- client side: copies of model files between pools ---- */

typedef struct fetch_call {
  orch *o;
  uint64_t fetch_id;
  char file[SCHED_FILE_MAX];
  char target[SCHED_NAME_MAX], target_url[SCHED_URL_MAX];
  char source[SCHED_NAME_MAX], source_url[SCHED_URL_MAX];
  uint64_t size;
} fetch_call;

static void fetch_fail(fetch_call *fc, const char *reason) {
  LOG_WARN("pools", NULL, "copy of %s to %s from %s: %s", fc->file, fc->target, fc->source, reason);
  sched_fetch_failed(&fc->o->s, fc->fetch_id, reason, orch_now_ms(fc->o));
  orch_dispatch_soon(fc->o);
  free(fc);
}

static void fetch_post_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  fetch_call *fc = user;
  char reason[600];
  if (err) {
    snprintf(reason, sizeof reason, "%s asked to copy: %s", fc->target, errmsg ? errmsg : llorch_strerror(err));
    fetch_fail(fc, reason);
    return;
  }
  int status = llorch_http_call_status(call);
  char text[360];
  if (status != 202 && status != 200) pool_error_text(call, text, sizeof text);
  /* Already copying: asked by this orchestrator before it restarted. */
  bool running = status == 409 && strstr(text, "FETCH_RUNNING") != NULL;
  if (status != 202 && status != 200 && !running) {
    snprintf(reason, sizeof reason, "%s refused the copy: %s", fc->target, text);
    fetch_fail(fc, reason);
    return;
  }
  if (running) LOG_INFO("pools", NULL, "%s is copying %s already: following that copy", fc->target, fc->file);
  sched_fetch_answered(&fc->o->s, fc->fetch_id, running, orch_now_ms(fc->o));
  free(fc);
}

static void fetch_sha_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  fetch_call *fc = user;
  orch *o = fc->o;
  char reason[600];
  if (err) {
    snprintf(reason, sizeof reason, "the digest from %s: %s", fc->source, errmsg ? errmsg : llorch_strerror(err));
    fetch_fail(fc, reason);
    return;
  }
  int status = llorch_http_call_status(call);
  size_t len = 0;
  const char *body = llorch_http_call_body(call, &len);
  cJSON *doc = status == 200 ? cJSON_ParseWithLength(body, len) : NULL;
  const cJSON *sha = cJSON_GetObjectItemCaseSensitive(doc, "sha256");
  const cJSON *size = cJSON_GetObjectItemCaseSensitive(doc, "size");
  if (!cJSON_IsString(sha) || !llorch_sha256_hex_valid(sha->valuestring) || !cJSON_IsNumber(size)) {
    char text[360];
    if (status == 200) snprintf(text, sizeof text, "an answer without sha256 and size");
    else pool_error_text(call, text, sizeof text);
    snprintf(reason, sizeof reason, "the digest from %s: %s", fc->source, text);
    cJSON_Delete(doc);
    fetch_fail(fc, reason);
    return;
  }
  /* The source's own size is the one its digest covers. */
  fc->size = (uint64_t)size->valuedouble;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  char id[32];
  snprintf(id, sizeof id, "f%" PRIu64, fc->fetch_id);
  llorch_jbuf_cstr(&b, "{\"file\":");
  llorch_jbuf_str(&b, fc->file);
  llorch_jbuf_cstr(&b, ",\"source_url\":");
  llorch_jbuf_str(&b, fc->source_url);
  llorch_jbuf_cstr(&b, ",\"sha256\":");
  llorch_jbuf_str(&b, sha->valuestring);
  llorch_jbuf_cstr(&b, ",\"size\":");
  llorch_jbuf_int(&b, (int64_t)fc->size);
  llorch_jbuf_cstr(&b, ",\"id\":");
  llorch_jbuf_str(&b, id);
  llorch_jbuf_cstr(&b, "}");
  cJSON_Delete(doc);
  char url[SCHED_URL_MAX + 32];
  snprintf(url, sizeof url, "%s/v2/files/fetch", fc->target_url);
  llorch_errmsg em = {{0}};
  int rc = pool_request(o, "POST", url, &b, 10000, fetch_post_on_done, fc, &em);
  llorch_jbuf_free(&b);
  if (rc < 0) fetch_fail(fc, em.text[0] ? em.text : llorch_strerror(rc));
}

static void fetch_cancel_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  char *what = user;
  if (err)
    LOG_WARN("pools", NULL, "%s: %s", what, errmsg ? errmsg : llorch_strerror(err));
  else if (llorch_http_call_status(call) != 200 && llorch_http_call_status(call) != 404)
    LOG_WARN("pools", NULL, "%s answered %d", what, llorch_http_call_status(call));
  free(what);
}

void orch_pool_fetch_cancel(void *ud, const sched_pool *target, const char *file) {
  orch *o = ud;
  char *what = malloc(SCHED_NAME_MAX + SCHED_FILE_MAX + 64);
  if (!what) return;
  snprintf(what, SCHED_NAME_MAX + SCHED_FILE_MAX + 64, "cancel the copy of %s on %s", file, target->name);
  char url[SCHED_URL_MAX + SCHED_FILE_MAX + 32];
  snprintf(url, sizeof url, "%s/v2/files/fetch/%s", target->url, file);
  llorch_errmsg em = {{0}};
  LOG_INFO("pools", NULL, "%s (given up on)", what);
  if (pool_request(o, "DELETE", url, NULL, 10000, fetch_cancel_on_done, what, &em) < 0) {
    LOG_WARN("pools", NULL, "%s: %s", what, em.text);
    free(what);
  }
}

void orch_pool_fetch(void *ud, const sched_fetch_order *fo) {
  orch *o = ud;
  fetch_call *fc = calloc(1, sizeof *fc);
  if (!fc) {
    sched_fetch_failed(&o->s, fo->fetch_id, "out of memory", orch_now_ms(o));
    return;
  }
  fc->o = o;
  fc->fetch_id = fo->fetch_id;
  fc->size = fo->size;
  snprintf(fc->file, sizeof fc->file, "%s", fo->file);
  snprintf(fc->target, sizeof fc->target, "%s", fo->target->name);
  snprintf(fc->target_url, sizeof fc->target_url, "%s", fo->target->url);
  snprintf(fc->source, sizeof fc->source, "%s", fo->source->name);
  /* The source pool's advertise URL from its own report: the target reaches
   * it with the same cluster token the orchestrator uses. */
  snprintf(fc->source_url, sizeof fc->source_url, "%s", fo->source->url);
  char url[SCHED_URL_MAX + SCHED_FILE_MAX + 32];
  snprintf(url, sizeof url, "%s/v2/files/%s/sha256", fc->source_url, fc->file);
  llorch_errmsg em = {{0}};
  /* The source hashes a file it has not hashed before: minutes for a big one. */
  if (pool_request(o, "GET", url, NULL, 30 * 60 * 1000, fetch_sha_on_done, fc, &em) < 0) {
    sched_fetch_failed(&o->s, fo->fetch_id, em.text, orch_now_ms(o));
    free(fc);
  }
}

static void stop_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pool_call *pc = user;
  if (err) LOG_WARN("pools", NULL, "%s failed: %s", pc->what, errmsg ? errmsg : llorch_strerror(err));
  else if (llorch_http_call_status(call) >= 300 && llorch_http_call_status(call) != 404) {
    char reason[400];
    pool_error_text(call, reason, sizeof reason);
    LOG_WARN("pools", NULL, "%s failed: %s", pc->what, reason);
  }
  free(pc);
}

void orch_pool_stop(void *ud, sched_worker *w, const char *why) {
  orch *o = ud;
  pool_call *pc = calloc(1, sizeof *pc);
  if (!pc) return;
  pc->o = o;
  snprintf(pc->what, sizeof pc->what, "stop %s/%s (%s)", w->pool->name, w->id, why);
  LOG_INFO("pools", NULL, "%s", pc->what);
  char url[SCHED_URL_MAX + SCHED_NAME_MAX + 16];
  snprintf(url, sizeof url, "%s/v2/workers/%s", w->pool->url, w->id);
  llorch_errmsg em = {{0}};
  if (pool_request(o, "DELETE", url, NULL, 10000, stop_on_done, pc, &em) < 0) {
    LOG_WARN("pools", NULL, "%s: %s", pc->what, em.text);
    free(pc);
  }
}

/* ---- tokens of adopted workers ---- */

/*
 * A worker adopted after an orchestrator restart came without its token
 * (state documents never carry one): ask its pool, with the cluster token,
 * for that one worker. It is not routed to until the answer came
 * (sched_worker_routable); a failed ask is repeated after the next document.
 */
typedef struct token_call {
  orch *o;
  char pool[SCHED_NAME_MAX];
  char id[SCHED_NAME_MAX];
} token_call;

static sched_worker *worker_by_name(orch *o, const char *pool, const char *id) {
  for (int i = 0; i < o->s.n_workers; i++) {
    sched_worker *w = o->s.workers[i];
    if (w->pool && strcmp(w->pool->name, pool) == 0 && strcmp(w->id, id) == 0) return w;
  }
  return NULL;
}

static void token_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  token_call *tc = user;
  orch *o = tc->o;
  sched_worker *w = worker_by_name(o, tc->pool, tc->id);
  const char *tok = NULL;
  cJSON *doc = NULL;
  if (!err && llorch_http_call_status(call) == 200) {
    size_t len = 0;
    const char *body = llorch_http_call_body(call, &len);
    doc = cJSON_ParseWithLength(body, len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "worker"), "token");
    if (cJSON_IsString(t) && t->valuestring[0] && strlen(t->valuestring) < sizeof w->token) tok = t->valuestring;
  }
  if (w) {
    w->token_asked = false;
    if (tok) {
      snprintf(w->token, sizeof w->token, "%s", tok);
      LOG_INFO("pools", NULL, "adopted worker %s/%s: token received, routable", tc->pool, tc->id);
      orch_dispatch_soon(o);
    } else {
      LOG_WARN("pools", NULL, "adopted worker %s/%s: no token from its pool (%s); asking again later",
               tc->pool, tc->id, err ? (errmsg ? errmsg : llorch_strerror(err)) : "answer without one");
    }
  }
  cJSON_Delete(doc);
  free(tc);
}

static void pool_fetch_tokens(orch *o, sched_pool *p) {
  for (int i = 0; i < o->s.n_workers; i++) {
    sched_worker *w = o->s.workers[i];
    if (w->pool != p || !w->adopted || w->token[0] || w->token_asked) continue;
    if (w->state != SCHED_WORKER_READY && w->state != SCHED_WORKER_STARTING) continue;
    token_call *tc = calloc(1, sizeof *tc);
    if (!tc) return;
    tc->o = o;
    snprintf(tc->pool, sizeof tc->pool, "%s", p->name);
    snprintf(tc->id, sizeof tc->id, "%s", w->id);
    char url[SCHED_URL_MAX + SCHED_NAME_MAX + 16];
    snprintf(url, sizeof url, "%s/v2/workers/%s", p->url, w->id);
    llorch_errmsg em = {{0}};
    if (pool_request(o, "GET", url, NULL, 10000, token_on_done, tc, &em) < 0) {
      LOG_WARN("pools", NULL, "cannot ask %s for worker %s's token: %s", p->name, w->id, em.text);
      free(tc);
      continue;
    }
    w->token_asked = true;
  }
}
