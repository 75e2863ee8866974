/*
 * The ready / failed report to the pool that started this worker, with
 * retries and backoff. A pool that does not answer never stops a ready
 * worker from serving: after the last attempt we log and go on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llorch/log.h"
#include "worker-impl.h"

#define CALLBACK_MAX_ATTEMPTS 10
#define CALLBACK_FIRST_DELAY_MS 200
#define CALLBACK_MAX_DELAY_MS 5000
#define CALLBACK_FAILED_BUDGET_MS 3000 /* a failed worker should exit promptly */

static void callback_send(worker *w);

/* The URL others reach us at: a wildcard listen address means "this host". */
static void callback_url(const worker *w, char *out, size_t size) {
  const char *h = w->listen_host;
  if (!h[0] || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0 || strcmp(h, "[::]") == 0)
    h = "127.0.0.1";
  bool v6 = strchr(h, ':') && h[0] != '[';
  snprintf(out, size, "http://%s%s%s:%d", v6 ? "[" : "", h, v6 ? "]" : "", w->port);
}

static char *callback_body(worker *w, bool failed) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"event\":");
  llorch_jbuf_str(&b, failed ? "failed" : "ready");
  llorch_jbuf_cstr(&b, ",\"worker_id\":");
  llorch_jbuf_str(&b, w->cfg->worker.id);
  if (failed) {
    llorch_jbuf_cstr(&b, ",\"reason\":");
    llorch_jbuf_str(&b, w->load_error);
  } else {
    char url[300];
    callback_url(w, url, sizeof url);
    llorch_jbuf_cstr(&b, ",\"model\":");
    llorch_jbuf_str(&b, w->model_name);
    llorch_jbuf_cstr(&b, ",\"device\":");
    llorch_jbuf_str(&b, w->cfg->worker.device);
    /* What it measurably holds now; the pool counts the larger of this and
     * its estimate. */
    llorch_jbuf_cstr(&b, ",\"memory_bytes\":");
    llorch_jbuf_int(&b, (int64_t)worker_memory_held(w, NULL));
    llorch_jbuf_cstr(&b, ",\"url\":");
    llorch_jbuf_str(&b, url);
    llorch_jbuf_cstr(&b, ",\"context_length\":");
    llorch_jbuf_int(&b, w->n_ctx);
    llorch_jbuf_cstr(&b, ",\"slots\":");
    llorch_jbuf_int(&b, w->n_slots);
  }
  llorch_jbuf_cstr(&b, ",\"pid\":");
  llorch_jbuf_int(&b, (int64_t)getpid());
  llorch_jbuf_raw(&b, "}", 1);
  if (llorch_jbuf_error(&b) < 0) {
    llorch_jbuf_free(&b);
    return NULL;
  }
  return b.data;
}

static void callback_finish(worker *w, bool delivered) {
  free(w->cb_body);
  w->cb_body = NULL;
  if (!delivered)
    LOG_WARN("worker", NULL, "gave up reporting %s to the pool at %s after %d attempts%s",
             w->cb_failed_event ? "failed" : "ready", w->cfg->worker.pool_callback,
             w->cb_attempt, w->cb_failed_event ? "" : "; serving anyway");
  if (w->cb_failed_event) worker_exit_after_callback(w);
}

static void callback_on_timer(uv_timer_t *t) { callback_send(t->data); }

static void callback_retry(worker *w, const char *why) {
  uint64_t delay = (uint64_t)CALLBACK_FIRST_DELAY_MS << (w->cb_attempt - 1 < 5 ? w->cb_attempt - 1 : 5);
  if (delay > CALLBACK_MAX_DELAY_MS) delay = CALLBACK_MAX_DELAY_MS;
  bool out_of_time = w->cb_failed_event && uv_hrtime() + delay * 1000000ull > w->cb_deadline_ns;
  LOG_WARN("worker", NULL, "pool callback %s attempt %d: %s", w->cfg->worker.pool_callback,
           w->cb_attempt, why);
  if (w->stopping || w->cb_attempt >= CALLBACK_MAX_ATTEMPTS || out_of_time) {
    callback_finish(w, false);
    return;
  }
  uv_timer_start(&w->cb_timer, callback_on_timer, delay, 0);
}

static void callback_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  worker *w = user;
  int status = llorch_http_call_status(call);
  if (err == 0 && status >= 200 && status < 300) {
    LOG_INFO("worker", NULL, "reported %s to the pool (HTTP %d)",
             w->cb_failed_event ? "failed" : "ready", status);
    callback_finish(w, true);
    return;
  }
  char why[600];
  if (err < 0) snprintf(why, sizeof why, "%s", errmsg ? errmsg : llorch_strerror(err));
  else snprintf(why, sizeof why, "HTTP %d", status);
  callback_retry(w, why);
}

static void callback_send(worker *w) {
  w->cb_attempt++;
  char auth[600];
  snprintf(auth, sizeof auth, "Bearer %s", w->cfg->worker.spawn_token ? w->cfg->worker.spawn_token : "");
  const char *headers[] = {"Content-Type", "application/json", "Authorization", auth, NULL};
  if (!w->cfg->worker.spawn_token) headers[2] = NULL; /* no token: no Authorization */
  llorch_http_call_opts o = {.method = "POST",
                             .url = w->cfg->worker.pool_callback,
                             .headers = headers,
                             .body = w->cb_body,
                             .body_len = strlen(w->cb_body),
                             .connect_timeout_ms = 5000,
                             .read_timeout_ms = 5000,
                             .on_done = callback_on_done,
                             .user = w};
  llorch_errmsg em = {{0}};
  if (llorch_http_call_start(w->client, &o, NULL, &em) < 0) {
    /* A malformed URL does not get better by retrying. */
    LOG_ERROR("worker", NULL, "pool callback: %s", em.text);
    w->cb_attempt = CALLBACK_MAX_ATTEMPTS;
    callback_finish(w, false);
  }
}

void worker_callback_start(worker *w, bool failed) {
  if (!w->cfg->worker.pool_callback || !w->client) {
    if (failed) worker_exit_after_callback(w);
    return;
  }
  free(w->cb_body);
  w->cb_body = callback_body(w, failed);
  w->cb_failed_event = failed;
  w->cb_attempt = 0;
  w->cb_deadline_ns = uv_hrtime() + CALLBACK_FAILED_BUDGET_MS * 1000000ull;
  if (!w->cb_body) {
    LOG_ERROR("worker", NULL, "pool callback: out of memory");
    callback_finish(w, false);
    return;
  }
  callback_send(w);
}
