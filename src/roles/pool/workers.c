/*
 * Worker processes: the commands the orchestrator sends (POST /v2/workers,
 * DELETE /v2/workers/{id}), the workers' own ready/failed callback
 * (POST /v2/workers/{id}/ready, docs/worker-api.md), spawning with uv_spawn,
 * the stderr tail, stopping (SIGTERM, grace, SIGKILL) and reaping.
 *
 * A worker's life in handles: uv_spawn opens the process and its stderr
 * pipe; the timer serves the stop grace and then the wait for the last
 * stderr bytes after the exit. The worker is final (failed/exited) once the
 * process has exited and its stderr is drained, so the exit report carries
 * the last lines it wrote; its struct is freed once its three handles are
 * closed and the orchestrator has acknowledged a document showing its end.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llorch/auth.h"
#include "llorch/log.h"
#include "llorch/reqid.h"
#include "pool-impl.h"

extern char **environ;

/* How long to wait for the rest of a dead worker's stderr (a grandchild may
 * hold the pipe open; we do not wait for it). */
#define WORKER_DRAIN_MS 300

static void pool_worker_finish(pool_worker *w);

/* ---- helpers ---- */

pool_worker *pool_worker_find(pool *p, const char *id) {
  for (pool_worker *w = p->workers; w; w = w->next)
    if (strcmp(w->id, id) == 0) return w;
  return NULL;
}

static void respond_worker(llorch_http_request *req, int status, const pool_worker *w, bool with_token) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"worker\":");
  pool_worker_write(&b, w, with_token);
  llorch_jbuf_cstr(&b, "}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, status, b.data);
  llorch_jbuf_free(&b);
}

/*
 * Headers-time check of /v2/workers/{id}[/...] (llorch_service_route_custom):
 * the ready/failed callback needs that worker's spawn token (it proves the
 * caller is the process we started), everything else the cluster token. An
 * unknown id and a wrong token get the same 401, so nobody learns which
 * worker ids exist before proving who they are.
 */
int pool_authorize_workers(llorch_http_request *req, void *user, const char **why) {
  pool *p = user;
  const char *id = llorch_http_request_path(req) + strlen("/v2/workers/");
  const char *slash = strchr(id, '/');
  if (!slash || strcmp(slash, "/ready") != 0)
    return llorch_service_authorize(p->svc, req, LLORCH_ACCESS_CLUSTER, why);
  char wid[POOL_NAME_MAX];
  size_t idlen = (size_t)(slash - id);
  const pool_worker *w = NULL;
  if (idlen > 0 && idlen < sizeof wid) {
    memcpy(wid, id, idlen);
    wid[idlen] = '\0';
    w = pool_worker_find(p, wid);
  }
  const char *tok;
  size_t len;
  if (llorch_auth_parse_bearer(llorch_http_request_header(req, "Authorization"), &tok, &len) < 0 ||
      !w || !llorch_auth_token_equal(tok, len, w->spawn_token, strlen(w->spawn_token))) {
    *why = "the worker callback needs the spawn token of a worker this pool started";
    return 401;
  }
  return 0;
}

static void respond_invalid(llorch_http_request *req, const char *msg, const char *param) {
  llorch_http_respond_error(req, 400, "invalid_request_error", msg, param && *param ? param : NULL,
                            "INVALID_REQUEST");
}

/* ---- stderr and exit ---- */

static void pool_worker_on_close(uv_handle_t *h) {
  pool_worker *w = h->data;
  if (--w->open_handles > 0) return;
  w->reaped = true;
  pool *p = w->pool;
  pool_reap(p);
  pool_maybe_finish(p);
}

static void pool_worker_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  /* One static buffer is enough: everything runs on the loop thread and the
   * bytes are copied into the tail before the next read. */
  static char chunk[4096];
  *buf = uv_buf_init(chunk, sizeof chunk);
}

static void pool_worker_close_err(pool_worker *w) {
  if (w->err_closed) return;
  w->err_closed = true;
  uv_read_stop((uv_stream_t *)&w->err);
  uv_close((uv_handle_t *)&w->err, pool_worker_on_close);
  if (w->proc_exited) pool_worker_finish(w);
}

static void pool_worker_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  pool_worker *w = s->data;
  if (n > 0) {
    pool_worker_tail_feed(w, buf->base, (size_t)n);
    LOG_DEBUG("pool", NULL, "worker %s stderr: %.*s", w->id, (int)(n > 400 ? 400 : n), buf->base);
    return;
  }
  if (n < 0) pool_worker_close_err(w); /* EOF or error: the worker closed its stderr */
}

static void pool_worker_on_drain_timeout(uv_timer_t *t) { pool_worker_close_err(t->data); }

static void pool_worker_on_kill_timer(uv_timer_t *t) {
  pool_worker *w = t->data;
  if (w->proc_exited || w->kill_sent) return;
  w->kill_sent = true;
  LOG_WARN("pool", NULL, "worker %s (pid %d) still running %" PRId64 " ms after SIGTERM: SIGKILL",
           w->id, w->pid, w->pool->cfg->pool.stop_grace_ms);
  uv_process_kill(&w->proc, SIGKILL);
}

static void pool_worker_on_exit(uv_process_t *proc, int64_t status, int term_signal) {
  pool_worker *w = proc->data;
  w->proc_exited = true;
  if (!w->has_exit || w->exit_code < 0) {
    w->exit_code = term_signal ? -1 : (int)status;
    w->exit_signal = term_signal;
  }
  char what[64];
  pool_exit_describe(term_signal ? -1 : (int)status, term_signal, what, sizeof what);
  LOG_INFO("pool", NULL, "worker %s (pid %d, %s) ended: %s", w->id, w->pid, w->model, what);
  uv_close((uv_handle_t *)proc, pool_worker_on_close);
  if (w->err_closed) {
    pool_worker_finish(w);
  } else {
    uv_timer_start(&w->timer, pool_worker_on_drain_timeout, WORKER_DRAIN_MS, 0);
  }
}

/* The process is gone and its stderr read: the worker's end is known. */
static void pool_worker_finish(pool_worker *w) {
  pool *p = w->pool;
  if (!uv_is_closing((uv_handle_t *)&w->timer)) {
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, pool_worker_on_close);
  }
  pool_worker_tail_flush(w);
  char what[64];
  pool_exit_describe(w->exit_code, w->exit_signal, what, sizeof what);
  const char *event = NULL;
  if (w->state == POOL_WORKER_FAILED && w->has_exit) {
    /* It reported failed itself and that was sent; the exit adds its status. */
    size_t n = strlen(w->reason);
    snprintf(w->reason + n, sizeof w->reason - n, " (%s)", what);
  } else if (w->state == POOL_WORKER_STARTING) {
    w->state = POOL_WORKER_FAILED;
    snprintf(w->reason, sizeof w->reason, "exited before ready: %s", what);
    event = "worker_failed";
  } else {
    /* Ready or stopping: "exited", whatever the cause (a stop of a worker
     * that never became ready is still an end the orchestrator asked for). */
    bool asked = w->state == POOL_WORKER_STOPPING;
    w->state = POOL_WORKER_EXITED;
    snprintf(w->reason, sizeof w->reason, "%s%s", asked ? "stopped: " : "", what);
    event = "worker_exited";
  }
  w->has_exit = true;
  if (w->exit_signal || w->exit_code > 0) {
    /* An end nobody asked for: its last words go to the pool's log too. */
    char last[3 * POOL_STDERR_LINE_MAX + 8] = "";
    size_t n = 0;
    int from = w->tail_n > 3 ? w->tail_n - 3 : 0;
    for (int i = from; i < w->tail_n && n < sizeof last; i++)
      n += (size_t)snprintf(last + n, sizeof last - n, "%s%s", i > from ? " | " : "",
                            w->tail[(w->tail_first + i) % POOL_STDERR_LINES]);
    LOG_WARN("pool", NULL, "worker %s (%s) %s; stderr ends: %s", w->id, w->model, w->reason,
             last[0] ? last : "(nothing)");
  }
  llorch_metric_inc(p->m_spawns, (const char *[]){event ? event + 7 : "failed"}, 1);
  if (event) pool_send_event(p, w, event);
}

/* ---- spawning ---- */

/* environ plus our own variables: CUDA_VISIBLE_DEVICES (replaced), the
 * parent's pid for the child's PR_SET_PDEATHSIG (pool.c), and the worker's
 * two tokens. The tokens travel in the environment rather than on the
 * command line, which every local user can read with ps; any inherited
 * LLORCH_WORKER_* secret is dropped so the child gets exactly ours. */
#define WORKER_TOKEN_ENV "LLORCH_WORKER_TOKEN"
#define WORKER_SPAWN_TOKEN_ENV "LLORCH_WORKER_SPAWN_TOKEN"

typedef struct worker_env_bufs {
  char cuda[160];
  char parent[64];
  char token[160];
  char spawn_token[160];
} worker_env_bufs;

static bool env_is(const char *entry, const char *name) {
  size_t n = strlen(name);
  return strncmp(entry, name, n) == 0 && entry[n] == '=';
}

static char **pool_worker_env(const char *cuda_visible, const pool_worker *w, worker_env_bufs *b) {
  size_t n = 0;
  while (environ[n]) n++;
  char **env = calloc(n + 5, sizeof *env);
  if (!env) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (cuda_visible && env_is(environ[i], "CUDA_VISIBLE_DEVICES")) continue;
    if (env_is(environ[i], LLORCH_POOL_PARENT_ENV) || env_is(environ[i], WORKER_TOKEN_ENV) ||
        env_is(environ[i], WORKER_SPAWN_TOKEN_ENV))
      continue;
    env[k++] = environ[i];
  }
  if (cuda_visible) {
    snprintf(b->cuda, sizeof b->cuda, "CUDA_VISIBLE_DEVICES=%s", cuda_visible);
    env[k++] = b->cuda;
  }
  snprintf(b->parent, sizeof b->parent, "%s=%d", LLORCH_POOL_PARENT_ENV, (int)getpid());
  env[k++] = b->parent;
  snprintf(b->token, sizeof b->token, "%s=%s", WORKER_TOKEN_ENV, w->token);
  env[k++] = b->token;
  snprintf(b->spawn_token, sizeof b->spawn_token, "%s=%s", WORKER_SPAWN_TOKEN_ENV, w->spawn_token);
  env[k++] = b->spawn_token;
  env[k] = NULL;
  return env;
}

/* A port for the worker: 0 (the worker picks one and reports it), or with
 * pool.worker_port_base the first port from there no live worker holds. */
static int pool_worker_pick_port(pool *p) {
  int base = p->cfg->pool.worker_port_base;
  if (base <= 0) return 0;
  for (int port = base; port <= 65535; port++) {
    bool used = false;
    for (pool_worker *w = p->workers; w && !used; w = w->next)
      used = pool_worker_alive(w) && w->port == port;
    if (!used) return port;
  }
  return 0;
}

static int pool_worker_spawn(pool *p, pool_worker *w, bool gpu, llorch_errmsg *em) {
  /* Until the handles exist there is nothing to close: a failure before
   * them leaves the worker reaped already. */
  w->proc_exited = w->err_closed = w->reaped = true;
  char exe[4096];
  size_t exe_len = sizeof exe;
  int rc = uv_exepath(exe, &exe_len);
  if (rc < 0) return llorch_errmsg_set(em, LLORCH_EIO, "cannot find the llorch executable: %s", uv_strerror(rc));

  char device[128] = "cpu", cuda_visible[128] = "";
  if (gpu) {
    /* The worker sees only its GPUs, renumbered from 0 (CUDA_VISIBLE_DEVICES). */
    size_t dn = (size_t)snprintf(device, sizeof device, "cuda:"), cn = 0;
    for (int i = 0; i < w->n_devices; i++) {
      const llorch_device_info *d = llorch_gpu_inventory_find(p->inv, w->devices[i]);
      dn += (size_t)snprintf(device + dn, sizeof device - dn, "%s%d", i ? "," : "", i);
      cn += (size_t)snprintf(cuda_visible + cn, sizeof cuda_visible - cn, "%s%d", i ? "," : "",
                             d ? d->index : 0);
    }
  }
  char listen[320], ctx[16], slots[16], callback[640];
  int port = pool_worker_pick_port(p);
  w->port = port;
  bool v6 = strchr(p->worker_host, ':') != NULL;
  snprintf(listen, sizeof listen, "%s%s%s:%d", v6 ? "[" : "", p->worker_host, v6 ? "]" : "", port);
  snprintf(ctx, sizeof ctx, "%d", w->ctx);
  snprintf(slots, sizeof slots, "%d", w->slots);
  snprintf(callback, sizeof callback, "%s/v2/workers/%s/ready", p->callback_base, w->id);
  char *args[] = {exe, "--role=worker", "--model", w->path, "--device", device, "--ctx", ctx,
                  "--slots", slots, "--listen", listen, "--worker-id", w->id, "--pool-callback",
                  callback, NULL, NULL, NULL};
  if (w->chat_template[0]) {
    args[16] = "--chat-template";
    args[17] = w->chat_template;
  }

  worker_env_bufs env_bufs;
  char **env = pool_worker_env(gpu ? cuda_visible : NULL, w, &env_bufs);
  if (!env) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");

  w->proc_exited = w->err_closed = w->reaped = false;
  uv_pipe_init(p->loop, &w->err, 0);
  w->err.data = w;
  uv_timer_init(p->loop, &w->timer);
  w->timer.data = w;
  w->proc.data = w;
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].flags = (uv_stdio_flags)(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = (uv_stream_t *)&w->err;
  uv_process_options_t opt = {0};
  opt.exit_cb = pool_worker_on_exit;
  opt.file = exe;
  opt.args = args;
  opt.env = env;
  opt.stdio_count = 3;
  opt.stdio = stdio;
  rc = uv_spawn(p->loop, &w->proc, &opt);
  free(env);
  w->open_handles = 2; /* pipe and timer; the process handle below when it started */
  if (rc < 0) {
    /* libuv needs the failed process handle closed too. */
    w->open_handles = 3;
    w->proc_exited = true;
    w->err_closed = true;
    uv_close((uv_handle_t *)&w->proc, pool_worker_on_close);
    uv_close((uv_handle_t *)&w->err, pool_worker_on_close);
    uv_close((uv_handle_t *)&w->timer, pool_worker_on_close);
    return llorch_errmsg_set(em, LLORCH_EIO, "spawning %s --role=worker: %s", exe, uv_strerror(rc));
  }
  w->open_handles = 3;
  w->pid = w->proc.pid;
  uv_read_start((uv_stream_t *)&w->err, pool_worker_alloc, pool_worker_on_read);
  LOG_INFO("pool", NULL, "worker %s: pid %d, %s on %s%s%s, ctx %d x %d slots, listen %s", w->id, w->pid,
           w->file, device, gpu ? " CUDA_VISIBLE_DEVICES=" : "", gpu ? cuda_visible : "", w->ctx,
           w->slots, listen);
  return 0;
}

/* ---- POST /v2/workers ---- */

static void respond_insufficient(llorch_http_request *req, const char *msg, uint64_t need,
                                 uint64_t free_bytes, const char *device) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"error\":{\"message\":");
  llorch_jbuf_str(&b, msg);
  llorch_jbuf_cstr(&b, ",\"type\":\"insufficient_memory\",\"param\":null,"
                       "\"code\":\"INSUFFICIENT_MEMORY\",\"need_bytes\":");
  llorch_jbuf_int(&b, (int64_t)need);
  llorch_jbuf_cstr(&b, ",\"free_bytes\":");
  llorch_jbuf_int(&b, (int64_t)free_bytes);
  llorch_jbuf_cstr(&b, ",\"device\":");
  llorch_jbuf_str(&b, device);
  llorch_jbuf_cstr(&b, "}}");
  if (llorch_jbuf_error(&b))
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 507, b.data);
  llorch_jbuf_free(&b);
}

/* The catalog name a worker serves under: printable, no quotes games. */
static int model_name_check(const char *s, llorch_errmsg *em) {
  size_t n = strlen(s);
  if (n == 0 || n >= POOL_MODEL_NAME_MAX)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'model' must be 1..%d bytes, got %zu",
                             POOL_MODEL_NAME_MAX - 1, n);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'model' contains a control character (byte %zu)", i);
  return 0;
}

static void on_start(pool *p, llorch_http_request *req) {
  const char *rid = llorch_http_request_id(req);
  if (p->stopping) {
    llorch_http_respond_error(req, 503, "server_error", "the pool is shutting down", NULL,
                              "SPAWN_FAILED");
    return;
  }
  size_t len = 0;
  const char *text = llorch_http_request_body(req, &len);
  cJSON *doc = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse(text, len, true, &doc, &em) < 0) {
    respond_invalid(req, em.text, llorch_json_errparam()); /* a NUL, bad UTF-8 ... names its field */
    return;
  }
  const char *model = NULL, *file = NULL, *chat_template = NULL;
  const cJSON *devs = NULL;
  int64_t ctx = 0, slots = 1;
  if (llorch_json_get_string(doc, "", "model", true, &model, &em) < 0 ||
      llorch_json_get_string(doc, "", "file", false, &file, &em) < 0 ||
      llorch_json_get_string(doc, "", "chat_template", false, &chat_template, &em) < 0 ||
      llorch_json_get_array(doc, "", "devices", true, 1, &devs, &em) < 0 ||
      /* The worker's own limits (worker.ctx, worker.slots), so a request it
       * would refuse at start-up is refused here, with a 400. */
      llorch_json_get_int(doc, "", "ctx", false, 0, 1 << 20, &ctx, &em) < 0 ||
      llorch_json_get_int(doc, "", "slots", false, 1, 256, &slots, &em) < 0) {
    respond_invalid(req, em.text, llorch_json_errparam());
    goto done;
  }
  if (model_name_check(model, &em) < 0) {
    respond_invalid(req, em.text, "model");
    goto done;
  }
  /* Without "file" the model name is the file's stem. */
  char fbuf[POOL_FILE_MAX + 8];
  if (!file) {
    size_t n = strlen(model);
    snprintf(fbuf, sizeof fbuf, "%s%s", model, n > 5 && strcmp(model + n - 5, ".gguf") == 0 ? "" : ".gguf");
    file = fbuf;
  }
  if (pool_file_name_check(file == fbuf ? "model" : "file", file, &em) < 0) {
    respond_invalid(req, em.text, file == fbuf ? "model" : "file");
    goto done;
  }
  int n_devs = cJSON_GetArraySize(devs);
  if (n_devs > POOL_MAX_WORKER_DEVICES) {
    llorch_errmsg_set(&em, LLORCH_EINVAL, "'devices' has %d items, at most %d", n_devs,
                      POOL_MAX_WORKER_DEVICES);
    respond_invalid(req, em.text, "devices");
    goto done;
  }
  pool_resolve_urls(p);
  pool_refresh(p);
  const llorch_device_info *dinfo[POOL_MAX_WORKER_DEVICES];
  bool gpu = false;
  int di = -1;
  const cJSON *d;
  cJSON_ArrayForEach(d, devs) {
    int i = ++di;
    if (!cJSON_IsString(d)) {
      char desc[64];
      llorch_errmsg_set(&em, LLORCH_EINVAL, "'devices[%d]' must be a device id string, got %s", i,
                        llorch_json_describe(d, desc, sizeof desc));
      respond_invalid(req, em.text, "devices");
      goto done;
    }
    dinfo[i] = llorch_gpu_inventory_find(p->inv, d->valuestring);
    if (!dinfo[i]) {
      char msg[300];
      snprintf(msg, sizeof msg, "device \"%.32s\" is not offered by pool %s (it has %d device%s)",
               d->valuestring, p->cfg->pool.name, llorch_gpu_inventory_count(p->inv),
               llorch_gpu_inventory_count(p->inv) == 1 ? "" : "s");
      llorch_http_respond_error(req, 404, "invalid_request_error", msg, "devices", "DEVICE_NOT_FOUND");
      goto done;
    }
    for (int j = 0; j < i; j++)
      if (dinfo[j] == dinfo[i]) {
        llorch_errmsg_set(&em, LLORCH_EINVAL, "'devices' names \"%s\" twice", dinfo[i]->id);
        respond_invalid(req, em.text, "devices");
        goto done;
      }
    if (i == 0) gpu = dinfo[i]->kind == LLORCH_DEVICE_CUDA;
    else if (gpu != (dinfo[i]->kind == LLORCH_DEVICE_CUDA)) {
      respond_invalid(req, "'devices' mixes the CPU and GPUs; a worker runs on one kind", "devices");
      goto done;
    }
  }
  if (!gpu && n_devs > 1) {
    respond_invalid(req, "'devices' may name \"cpu\" only alone", "devices");
    goto done;
  }

  char path[4096];
  if (pool_model_locate(&p->cfg->pool.model_dirs, file, path, sizeof path) < 0) {
    char msg[400];
    snprintf(msg, sizeof msg, "model file \"%s\" is not in pool %s's model directories", file,
             p->cfg->pool.name);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, "file", "MODEL_NOT_FOUND");
    goto done;
  }
  /* chat_template: "chatml" or a .jinja file found like the model file */
  char tmpl_path[4096] = "";
  if (chat_template && strcmp(chat_template, "chatml") == 0) {
    snprintf(tmpl_path, sizeof tmpl_path, "chatml");
  } else if (chat_template) {
    /* like a model file name: directly inside a model directory */
    size_t tl = strlen(chat_template);
    bool ok = tl > 6 && tl < POOL_FILE_MAX && strcmp(chat_template + tl - 6, ".jinja") == 0 &&
              !strpbrk(chat_template, "/\\") && !strstr(chat_template, "..");
    for (size_t i = 0; ok && i < tl; i++) ok = (unsigned char)chat_template[i] >= 0x20 && chat_template[i] != 0x7f;
    if (!ok) {
      respond_invalid(req, "'chat_template' must be \"chatml\" or the name of a .jinja file inside a model "
                           "directory (no '/', no \"..\")", "chat_template");
      goto done;
    }
    if (pool_model_locate(&p->cfg->pool.model_dirs, chat_template, tmpl_path, sizeof tmpl_path) < 0) {
      char msg[400];
      snprintf(msg, sizeof msg, "chat template \"%s\" is not in pool %s's model directories", chat_template,
               p->cfg->pool.name);
      llorch_http_respond_error(req, 404, "invalid_request_error", msg, "chat_template", "MODEL_NOT_FOUND");
      goto done;
    }
  }
  uint64_t need = 0;
  uint32_t ctx_train = 0;
  if (pool_model_need(path, (uint32_t)ctx, (uint32_t)slots, gpu, &need, &ctx_train, &em) < 0) {
    llorch_http_respond_error(req, 400, "invalid_request_error", em.text, "file", "INVALID_REQUEST");
    goto done;
  }
  int wctx = ctx > 0 ? (int)ctx : (int)ctx_train;
  /* A worker spread over n GPUs needs about need/n on each; the CPU one all of it. */
  uint64_t per_dev = (need + (uint64_t)n_devs - 1) / (uint64_t)n_devs;
  for (int i = 0; i < n_devs; i++) {
    uint64_t free_bytes = pool_device_free(dinfo[i], p->workers);
    if (pool_preflight_check(model, wctx, (int)slots, dinfo[i]->id, per_dev, free_bytes, &em) < 0) {
      LOG_INFO("pool", rid, "refusing to start %s: %s", model, em.text);
      llorch_metric_inc(p->m_spawns, (const char *[]){"insufficient_memory"}, 1);
      respond_insufficient(req, em.text, per_dev, free_bytes, dinfo[i]->id);
      goto done;
    }
  }

  pool_worker *w = calloc(1, sizeof *w);
  if (!w) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "SPAWN_FAILED");
    goto done;
  }
  w->pool = p;
  /* Random, not a counter: an id must not tell anyone which ids exist. */
  char rnd[17];
  if (llorch_random_hex(rnd, 8) < 0) {
    free(w);
    llorch_http_respond_error(req, 500, "server_error", "no randomness for the worker's id", NULL,
                              "SPAWN_FAILED");
    goto done;
  }
  snprintf(w->id, sizeof w->id, "w-%s", rnd);
  p->next_worker++;
  snprintf(w->model, sizeof w->model, "%s", model);
  snprintf(w->file, sizeof w->file, "%s", file);
  snprintf(w->path, sizeof w->path, "%s", path);
  snprintf(w->chat_template, sizeof w->chat_template, "%s", tmpl_path);
  for (int i = 0; i < n_devs; i++) snprintf(w->devices[i], sizeof w->devices[i], "%s", dinfo[i]->id);
  w->n_devices = n_devs;
  w->ctx = wctx;
  w->slots = (int)slots;
  w->state = POOL_WORKER_STARTING;
  w->exit_code = -1;
  w->estimate_bytes = need;
  w->started_at_ms = pool_now_ms();
  if (pool_random_hex(w->token, POOL_TOKEN_HEX) < 0 ||
      pool_random_hex(w->spawn_token, POOL_TOKEN_HEX) < 0) {
    free(w);
    llorch_http_respond_error(req, 500, "server_error", "no randomness for the worker's tokens", NULL,
                              "SPAWN_FAILED");
    goto done;
  }
  if (pool_worker_spawn(p, w, gpu, &em) < 0) {
    /* The handles close asynchronously: keep the struct (reaped, not
     * listed) until they did; the list is the only owner, so add it there
     * marked as acknowledged and failed. */
    LOG_WARN("pool", rid, "worker %s: %s", w->id, em.text);
    w->state = POOL_WORKER_FAILED;
    w->has_exit = true;
    w->final_acked = true;
    snprintf(w->reason, sizeof w->reason, "%.300s", em.text);
    w->next = p->workers;
    p->workers = w;
    pool_reap(p); /* at once when no handle was opened */
    llorch_metric_inc(p->m_spawns, (const char *[]){"spawn_failed"}, 1);
    llorch_http_respond_error(req, 500, "server_error", em.text, NULL, "SPAWN_FAILED");
    goto done;
  }
  w->next = p->workers;
  p->workers = w;
  llorch_metric_inc(p->m_spawns, (const char *[]){"started"}, 1);
  LOG_INFO("pool", rid, "started worker %s for %s (%s), needs %" PRIu64 " bytes", w->id, w->model,
           w->file, need);
  respond_worker(req, 201, w, true);
  pool_send_event(p, w, "worker_started");
done:
  cJSON_Delete(doc);
}

/* ---- stop ---- */

void pool_worker_stop(pool_worker *w, const char *why) {
  if (w->proc_exited || w->term_sent) return;
  w->term_sent = true;
  if (w->state == POOL_WORKER_STARTING || w->state == POOL_WORKER_READY) w->state = POOL_WORKER_STOPPING;
  LOG_INFO("pool", NULL, "stopping worker %s (pid %d, %s): %s", w->id, w->pid, w->model, why);
  uv_process_kill(&w->proc, SIGTERM);
  uv_timer_start(&w->timer, pool_worker_on_kill_timer, (uint64_t)w->pool->cfg->pool.stop_grace_ms, 0);
}

static void on_delete(pool *p, llorch_http_request *req, const char *id) {
  pool_worker *w = pool_worker_find(p, id);
  if (!w || (w->final_acked && w->has_exit)) {
    char msg[160];
    snprintf(msg, sizeof msg, "no worker \"%.64s\" on pool %s", id, p->cfg->pool.name);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "WORKER_NOT_FOUND");
    return;
  }
  char why[120];
  snprintf(why, sizeof why, "DELETE from %s", llorch_http_request_peer(req));
  pool_worker_stop(w, why);
  respond_worker(req, 202, w, false);
}

/* ---- the worker's callback ---- */

static void on_callback(pool *p, llorch_http_request *req, const char *id) {
  pool_worker *w = pool_worker_find(p, id);
  if (!w || w->proc_exited) {
    char msg[160];
    snprintf(msg, sizeof msg, "no running worker \"%.64s\" on this pool", id);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "WORKER_NOT_FOUND");
    return;
  }
  /* The spawn token was checked when the headers arrived (pool_authorize_workers). */
  size_t len = 0;
  const char *text = llorch_http_request_body(req, &len);
  cJSON *doc = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse(text, len, true, &doc, &em) < 0) {
    respond_invalid(req, em.text, llorch_json_errparam());
    return;
  }
  static const char *const events[] = {"ready", "failed", NULL};
  int ev = 0;
  const char *url = NULL, *reason = NULL;
  int64_t mem = 0;
  if (llorch_json_get_enum(doc, "", "event", true, events, &ev, &em) < 0 ||
      (ev == 0 && llorch_json_get_string(doc, "", "url", true, &url, &em) < 0) ||
      (ev == 0 && llorch_json_get_int(doc, "", "memory_bytes", false, 0, INT64_MAX, &mem, &em) < 0) ||
      (ev == 1 && llorch_json_get_string(doc, "", "reason", false, &reason, &em) < 0)) {
    respond_invalid(req, em.text, llorch_json_errparam());
    cJSON_Delete(doc);
    return;
  }
  char wurl[sizeof w->url];
  if (ev == 0 && pool_worker_url(url, p->worker_public_host, wurl, sizeof wurl) < 0) {
    respond_invalid(req, "'url' must be http://HOST:PORT", "url");
    cJSON_Delete(doc);
    return;
  }
  if (ev == 0) {
    bool first = !w->url[0];
    memcpy(w->url, wurl, sizeof w->url);
    /* What it measured after loading (CPU: its resident memory; CUDA: the
     * device memory of its plan); the pool's own readings of a CPU worker's
     * process take over from here (pool_workers_measure). */
    if (mem > 0 && (uint64_t)mem > w->actual_bytes) w->actual_bytes = (uint64_t)mem;
    if (w->state == POOL_WORKER_STARTING) {
      w->state = POOL_WORKER_READY;
      LOG_INFO("pool", NULL, "worker %s ready at %s (%" PRId64 " bytes)", w->id, w->url, mem);
      pool_send_event(p, w, "worker_ready");
    } else if (first) {
      LOG_INFO("pool", NULL, "worker %s ready at %s while %s", w->id, w->url,
               pool_worker_state_name(w->state));
    }
  } else if (w->state == POOL_WORKER_STARTING || w->state == POOL_WORKER_STOPPING) {
    w->state = POOL_WORKER_FAILED;
    w->has_exit = true;
    snprintf(w->reason, sizeof w->reason, "%s", reason ? reason : "the worker reported failed");
    LOG_WARN("pool", NULL, "worker %s failed: %s", w->id, w->reason);
    pool_send_event(p, w, "worker_failed");
  }
  llorch_http_respond_json(req, 200, "{}");
  cJSON_Delete(doc);
}

/* ---- routing ---- */

void pool_on_workers(llorch_http_request *req, void *user) {
  pool *p = user;
  const char *method = llorch_http_request_method(req);
  const char *path = llorch_http_request_path(req);
  if (strcmp(path, "/v2/workers") == 0) {
    if (strcmp(method, "POST") == 0) on_start(p, req);
    else {
      llorch_http_response_header(req, "Allow", "POST");
      llorch_http_respond_error(req, 405, "invalid_request_error", "use POST /v2/workers", NULL,
                                "method_not_allowed");
    }
    return;
  }
  const char *id = path + strlen("/v2/workers/");
  const char *slash = strchr(id, '/');
  size_t idlen = slash ? (size_t)(slash - id) : strlen(id);
  char wid[POOL_NAME_MAX];
  if (idlen == 0 || idlen >= sizeof wid) {
    llorch_http_respond_error(req, 404, "invalid_request_error", "no such route", NULL, "not_found");
    return;
  }
  memcpy(wid, id, idlen);
  wid[idlen] = '\0';
  if (slash && strcmp(slash, "/ready") == 0) {
    if (strcmp(method, "POST") == 0) on_callback(p, req, wid);
    else {
      llorch_http_response_header(req, "Allow", "POST");
      llorch_http_respond_error(req, 405, "invalid_request_error", "use POST", NULL, "method_not_allowed");
    }
    return;
  }
  if (slash) {
    llorch_http_respond_error(req, 404, "invalid_request_error", "no such route", NULL, "not_found");
    return;
  }
  if (strcmp(method, "DELETE") == 0) {
    on_delete(p, req, wid);
  } else if (strcmp(method, "GET") == 0) {
    pool_worker *w = pool_worker_find(p, wid);
    if (w) respond_worker(req, 200, w, true);
    else llorch_http_respond_error(req, 404, "invalid_request_error", "no such worker", NULL, "WORKER_NOT_FOUND");
  } else {
    llorch_http_response_header(req, "Allow", "GET, DELETE");
    llorch_http_respond_error(req, 405, "invalid_request_error", "use GET or DELETE", NULL,
                              "method_not_allowed");
  }
}
