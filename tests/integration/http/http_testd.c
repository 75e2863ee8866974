/*
 * http_testd: a small server on llorch_net for the HTTP conformance test
 * (endpoints the roles do not have: SSE test stream, slow responder, echo).
 *
 *   http_testd [--port N] [--header-timeout-ms N] [--idle-timeout-ms N]
 *              [--max-body N] [--max-headers N] [--max-header-bytes N]
 *              [--sse-keepalive-ms N] [--grace-ms N]
 *
 * Prints "PORT <n>" on stdout once listening. SIGTERM/SIGINT: graceful
 * shutdown; exit 0 when every request finished, 3 when the grace period
 * had to cut some off.
 *
 * Routes:
 *   GET  /health                 {"status":"ok"}
 *   POST /echo                   the body back, same Content-Type
 *   POST /json                   validates {"max_tokens":int>=1,"messages":[{"role":...}]}
 *   GET  /sse?n=N&interval_ms=M  N events (0 = until the client leaves), M ms apart
 *   GET  /slow?ms=M              answers after M ms
 *   GET  /chunked                a chunked body in three pieces
 *   GET  /stats                  the server's counters as JSON
 *   GET  /metrics                Prometheus text
 *   anything else                404 (OpenAI error envelope)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "llorch/http.h"
#include "llorch/json.h"
#include "llorch/log.h"
#include "llorch/metrics.h"

typedef struct testd {
  uv_loop_t *loop;
  llorch_http_server *srv;
  llorch_metrics *metrics;
  uv_signal_t sigterm, sigint;
  unsigned grace_ms;
  int exit_code;
  unsigned sse_aborts;  /* SSE streams whose client left */
} testd;

static testd T;

/* ---- delayed work (slow responder, SSE ticks) ---- */

typedef struct job {
  uv_timer_t timer;
  llorch_http_request *req;  /* NULL once the client left */
  int kind;                  /* 0 slow, 1 sse */
  long remaining;            /* sse events left; < 0 forever */
  long sent;
} job;

static void job_on_closed(uv_handle_t *h) { free(h->data); }

static void job_finish(job *j) {
  uv_timer_stop(&j->timer);
  uv_close((uv_handle_t *)&j->timer, job_on_closed);
}

static void job_on_client_gone(llorch_http_request *req, void *data) {
  job *j = data;
  if (j->kind == 1) T.sse_aborts++;
  LOG_INFO("testd", llorch_http_request_id(req), "client left; stopping %s job after %ld events",
           j->kind ? "sse" : "slow", j->sent);
  j->req = NULL;
  job_finish(j);
}

static void job_on_timer(uv_timer_t *t) {
  job *j = t->data;
  if (j->kind == 0) {
    llorch_http_respond_json(j->req, 200, "{\"slow\":true}");
    job_finish(j);
    return;
  }
  char data[128];
  if (j->sent % 3 == 2)
    snprintf(data, sizeof data, "line one of %ld\nline two", j->sent);
  else
    snprintf(data, sizeof data, "tick %ld", j->sent);
  llorch_http_sse_send(j->req, j->sent % 2 ? "tick" : NULL, data, strlen(data));
  j->sent++;
  if (j->remaining > 0 && --j->remaining == 0) {
    llorch_http_sse_send(j->req, NULL, "[DONE]", 6);
    llorch_http_sse_end(j->req);
    job_finish(j);
  }
}

static long query_long(llorch_http_request *req, const char *name, long def) {
  char buf[32];
  if (llorch_http_request_query_param(req, name, buf, sizeof buf) <= 0) return def;
  return strtol(buf, NULL, 10);
}

static void start_job(llorch_http_request *req, int kind, long ms, long n) {
  job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, NULL);
    return;
  }
  j->req = req;
  j->kind = kind;
  j->remaining = n > 0 ? n : -1;
  uv_timer_init(T.loop, &j->timer);
  j->timer.data = j;
  llorch_http_request_set_data(req, j, job_on_client_gone);
  if (kind == 1) {
    llorch_http_sse_start(req);
    uv_timer_start(&j->timer, job_on_timer, (uint64_t)ms, (uint64_t)(ms > 0 ? ms : 1));
  } else {
    uv_timer_start(&j->timer, job_on_timer, (uint64_t)ms, 0);
  }
}

/* ---- routes ---- */

static void route_json(llorch_http_request *req) {
  static const char *const roles[] = {"system", "user", "assistant", NULL};
  size_t len;
  const char *body = llorch_http_request_body(req, &len);
  llorch_errmsg em;
  cJSON *doc = NULL;
  const cJSON *msgs = NULL;
  int64_t max_tokens = 16;
  if (llorch_json_parse(body, len, true, &doc, &em) < 0 ||
      llorch_json_get_int(doc, NULL, "max_tokens", false, 1, INT64_MAX, &max_tokens, &em) < 0 ||
      llorch_json_get_array(doc, NULL, "messages", true, 1, &msgs, &em) < 0)
    goto bad;
  for (int i = 0; i < cJSON_GetArraySize(msgs); i++) {
    char where[64];
    int role;
    llorch_json_path_index(where, sizeof where, NULL, "messages", (size_t)i);
    if (llorch_json_get_enum(cJSON_GetArrayItem(msgs, i), where, "role", true, roles, &role,
                             &em) < 0)
      goto bad;
  }
  char out[64];
  snprintf(out, sizeof out, "{\"ok\":true,\"max_tokens\":%lld}", (long long)max_tokens);
  llorch_http_respond_json(req, 200, out);
  cJSON_Delete(doc);
  return;
bad:
  llorch_http_respond_error(req, 400, "invalid_request_error", em.text,
                            llorch_json_errparam()[0] ? llorch_json_errparam() : NULL, NULL);
  cJSON_Delete(doc);
}

static void on_request(llorch_http_request *req, void *user) {
  const char *m = llorch_http_request_method(req);
  const char *p = llorch_http_request_path(req);
  if (strcmp(p, "/health") == 0) {
    llorch_http_respond_json(req, 200, "{\"status\":\"ok\"}");
  } else if (strcmp(p, "/echo") == 0 && strcmp(m, "POST") == 0) {
    size_t len;
    const char *body = llorch_http_request_body(req, &len);
    const char *ct = llorch_http_request_header(req, "Content-Type");
    llorch_http_respond(req, 200, ct ? ct : "application/octet-stream", body, len);
  } else if (strcmp(p, "/json") == 0 && strcmp(m, "POST") == 0) {
    route_json(req);
  } else if (strcmp(p, "/sse") == 0) {
    start_job(req, 1, query_long(req, "interval_ms", 20), query_long(req, "n", 5));
  } else if (strcmp(p, "/slow") == 0) {
    start_job(req, 0, query_long(req, "ms", 500), 0);
  } else if (strcmp(p, "/chunked") == 0) {
    llorch_http_response_start(req, 200, "text/plain");
    llorch_http_response_write(req, "one ", 4);
    llorch_http_response_write(req, "two ", 4);
    llorch_http_response_write(req, "three", 5);
    llorch_http_response_end(req);
  } else if (strcmp(p, "/stats") == 0) {
    llorch_http_stats st;
    llorch_http_server_stats(T.srv, &st);
    char out[256];
    snprintf(out, sizeof out,
             "{\"requests\":%llu,\"client_aborts\":%llu,\"sse_aborts\":%u,\"parse_errors\":%llu}",
             (unsigned long long)st.requests, (unsigned long long)st.client_aborts,
             T.sse_aborts, (unsigned long long)st.parse_errors);
    llorch_http_respond_json(req, 200, out);
  } else if (strcmp(p, "/metrics") == 0) {
    size_t len;
    char *text = llorch_metrics_render(T.metrics, &len);
    if (text == NULL) {
      llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, NULL);
      return;
    }
    llorch_http_respond(req, 200, LLORCH_METRICS_CONTENT_TYPE, text, len);
    free(text);
  } else {
    char msg[300];
    snprintf(msg, sizeof msg, "no route for %s %s", m, p);
    llorch_http_respond_error(req, 404, "not_found_error", msg, NULL, NULL);
  }
}

/* ---- shutdown ---- */

static void on_drained(llorch_http_server *srv, unsigned forced, void *user) {
  LOG_INFO("testd", NULL, "drained (%u forced)", forced);
  T.exit_code = forced ? 3 : 0;
  llorch_http_server_free(srv);
  T.srv = NULL;
  uv_close((uv_handle_t *)&T.sigterm, NULL);
  uv_close((uv_handle_t *)&T.sigint, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  LOG_INFO("testd", NULL, "signal %d: draining (grace %u ms)", signum, T.grace_ms);
  uv_signal_stop(&T.sigterm);
  uv_signal_stop(&T.sigint);
  llorch_http_server_shutdown(T.srv, T.grace_ms, on_drained, NULL);
}

int main(int argc, char **argv) {
  llorch_http_config cfg;
  llorch_http_config_default(&cfg);
  int port = 0;
  T.grace_ms = 5000;
  for (int i = 1; i + 1 < argc; i += 2) {
    long v = strtol(argv[i + 1], NULL, 10);
    if (strcmp(argv[i], "--port") == 0) port = (int)v;
    else if (strcmp(argv[i], "--header-timeout-ms") == 0) cfg.header_timeout_ms = (unsigned)v;
    else if (strcmp(argv[i], "--idle-timeout-ms") == 0) cfg.idle_timeout_ms = (unsigned)v;
    else if (strcmp(argv[i], "--max-body") == 0) cfg.max_body_bytes = (size_t)v;
    else if (strcmp(argv[i], "--max-headers") == 0) cfg.max_header_count = (size_t)v;
    else if (strcmp(argv[i], "--max-header-bytes") == 0) cfg.max_header_bytes = (size_t)v;
    else if (strcmp(argv[i], "--sse-keepalive-ms") == 0) cfg.sse_keepalive_ms = (unsigned)v;
    else if (strcmp(argv[i], "--grace-ms") == 0) T.grace_ms = (unsigned)v;
    else {
      fprintf(stderr, "http_testd: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  llorch_log_init(LLORCH_LOG_DEBUG, LLORCH_LOG_FORMAT_TEXT, stderr);
  signal(SIGPIPE, SIG_IGN);
  T.loop = uv_default_loop();
  llorch_errmsg em;
  if (llorch_metrics_init(&T.metrics) < 0) return 1;
  if (llorch_http_server_init(&T.srv, T.loop, &cfg, on_request, NULL, &em) < 0 ||
      llorch_http_server_set_metrics(T.srv, T.metrics) < 0 ||
      llorch_http_server_listen(T.srv, "127.0.0.1", port, &em) < 0) {
    fprintf(stderr, "http_testd: %s\n", em.text);
    return 1;
  }
  uv_signal_init(T.loop, &T.sigterm);
  uv_signal_init(T.loop, &T.sigint);
  uv_signal_start(&T.sigterm, on_signal, SIGTERM);
  uv_signal_start(&T.sigint, on_signal, SIGINT);
  printf("PORT %d\n", llorch_http_server_port(T.srv));
  fflush(stdout);
  uv_run(T.loop, UV_RUN_DEFAULT);
  uv_loop_close(T.loop);
  llorch_metrics_free(T.metrics);
  return T.exit_code;
}
