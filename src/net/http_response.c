/*
 * Writing a response: the queue of uv writes, status line and headers, whole
 * bodies, chunked and SSE streaming, and the errors the server answers
 * itself. See http-impl.h.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "llorch/auth.h"
#include "llorch/json.h"
#include "llorch/log.h"
#include "llorch/sse.h"
#include "http-impl.h"

/* ---- writing ---- */

typedef struct http_write {
  uv_write_t w;
  http_conn *conn;
  size_t len;
  char data[];
} http_write;

static void conn_on_write(uv_write_t *w, int status) {
  http_write *hw = (http_write *)w;
  http_conn *c = hw->conn;
  c->queued -= hw->len;
  free(hw);
  if (status < 0 && status != UV_ECANCELED && !c->closing) {
    /* EPIPE / ECONNRESET: the client is gone. */
    http_conn_abort(c);
  }
}

/* Writes the concatenation of up to three pieces as one uv_write. */
static int conn_write3(http_conn *c, const char *a, size_t alen, const char *b, size_t blen,
                       const char *d, size_t dlen) {
  if (c->fake) return 0;
  if (c->closing) return LLORCH_ECLOSED;
  size_t len = alen + blen + dlen;
  http_write *hw = malloc(sizeof *hw + len);
  if (hw == NULL) return LLORCH_ENOMEM;
  hw->conn = c;
  hw->len = len;
  if (alen) memcpy(hw->data, a, alen);
  if (blen) memcpy(hw->data + alen, b, blen);
  if (dlen) memcpy(hw->data + alen + blen, d, dlen);
  uv_buf_t buf = uv_buf_init(hw->data, (unsigned)len);
  int rc = uv_write(&hw->w, (uv_stream_t *)&c->tcp, &buf, 1, conn_on_write);
  if (rc < 0) {
    free(hw);
    return LLORCH_ECLOSED;
  }
  c->queued += len;
  return 0;
}

int http_conn_write(http_conn *c, const char *data, size_t len) {
  return conn_write3(c, data, len, NULL, 0, NULL, 0);
}

/* ---- the response ---- */

static bool status_has_body(int status) {
  return !(status < 200 || status == 204 || status == 304);
}

/* Writes the status line and headers (with `extra_len` body bytes after them in one write). */
static int resp_write_head(llorch_http_request *req, int status, const char *content_type,
                           long long content_length, const char *body, size_t body_len) {
  http_conn *c = req->conn;
  llorch_http_server *srv = req->srv;
  if (srv->shutting_down || c->close_after) req->keep_alive = false;
  req->status = status;
  llorch_buf h = {0};
  char line[256];
  snprintf(line, sizeof line, "HTTP/1.%d %d %s\r\n", req->http10 ? 0 : 1, status,
           llorch_http_status_text(status));
  int rc = llorch_buf_append_str(&h, line);
  if (content_type != NULL) {
    snprintf(line, sizeof line, "Content-Type: %s\r\n", content_type);
    rc |= llorch_buf_append_str(&h, line);
  }
  if (content_length >= 0) {
    if (status_has_body(status)) {
      snprintf(line, sizeof line, "Content-Length: %lld\r\n", content_length);
      rc |= llorch_buf_append_str(&h, line);
    }
  } else if (req->body_mode == HTTP_BODY_CHUNKED) {
    rc |= llorch_buf_append_str(&h, "Transfer-Encoding: chunked\r\n");
  }
  snprintf(line, sizeof line, "X-Request-Id: %s\r\n", req->id);
  rc |= llorch_buf_append_str(&h, line);
  if (!req->keep_alive)
    rc |= llorch_buf_append_str(&h, "Connection: close\r\n");
  else if (req->http10)
    rc |= llorch_buf_append_str(&h, "Connection: keep-alive\r\n");
  if (req->resp_headers.len) rc |= llorch_buf_append(&h, req->resp_headers.data, req->resp_headers.len);
  rc |= llorch_buf_append(&h, "\r\n", 2);
  if (rc != 0) {
    llorch_buf_free(&h);
    return LLORCH_ENOMEM;
  }
  if (req->head || !status_has_body(status)) body_len = 0;
  rc = conn_write3(c, h.data, h.len, body, body_len, NULL, 0);
  llorch_buf_free(&h);
  return rc;
}

static void srv_count_response(llorch_http_server *srv, llorch_http_request *req) {
  int cls = req->status / 100;
  if (cls >= 1 && cls <= 5) srv->stats.responses_by_class[cls]++;
  if (srv->m_requests != NULL) {
    char code[8];
    snprintf(code, sizeof code, "%d", req->status);
    llorch_metric_inc(srv->m_requests, (const char *[]){code}, 1);
    if (req->start_ns != 0)
      llorch_metric_observe(srv->m_duration, NULL,
                            (double)(uv_hrtime() - req->start_ns) / 1e9);
  }
}

/*
 * The response is finished (fully queued): log, count, and hand the
 * connection back to the parser. For a detached request only the memory is
 * left to free.
 */
static void req_finish(llorch_http_request *req) {
  req->state = HTTP_REQ_DONE;
  if (req->detached) {
    http_req_free(req);
    return;
  }
  http_conn *c = req->conn;
  llorch_http_server *srv = req->srv;
  if (!c->fake) {
    srv_count_response(srv, req);
    if (llorch_log_enabled(LLORCH_LOG_DEBUG)) {
      double ms = req->start_ns ? (double)(uv_hrtime() - req->start_ns) / 1e6 : 0;
      LOG_DEBUG("http", req->id, "%s %s %d %.1fms %s", req->method, llorch_http_request_path(req),
                req->status, ms, req->peer);
    }
  }
  if (!req->keep_alive) c->close_after = true;
  http_conn_request_done(c);
}

/* Common checks: 0 to go on, or the code to return. Detached: finishing calls end it. */
static int req_check(llorch_http_request *req, http_req_state want, bool finishing) {
  if (req->detached) {
    if (finishing) {
      if (req->in_close_cb) req->state = HTTP_REQ_DONE; /* freed after the callback */
      else http_req_free(req);
    }
    return LLORCH_ECLOSED;
  }
  if (req->state != want) return LLORCH_ESTATE;
  return 0;
}

int llorch_http_response_header(llorch_http_request *req, const char *name,
                                const char *value) {
  if (req->detached) return LLORCH_ECLOSED;
  if (req->state != HTTP_REQ_HANDLER) return LLORCH_ESTATE;
  if (name == NULL || value == NULL || name[0] == '\0' || strpbrk(name, "\r\n:") != NULL ||
      strpbrk(value, "\r\n") != NULL)
    return LLORCH_EINVAL;
  int rc = llorch_buf_append_str(&req->resp_headers, name);
  rc |= llorch_buf_append(&req->resp_headers, ": ", 2);
  rc |= llorch_buf_append_str(&req->resp_headers, value);
  rc |= llorch_buf_append(&req->resp_headers, "\r\n", 2);
  return rc ? LLORCH_ENOMEM : 0;
}

int llorch_http_respond(llorch_http_request *req, int status, const char *content_type,
                        const void *body, size_t len) {
  int rc = req_check(req, HTTP_REQ_HANDLER, true);
  if (rc < 0) return rc;
  if (status < 100 || status > 999) return LLORCH_EINVAL;
  req->body_mode = HTTP_BODY_FIXED;
  rc = resp_write_head(req, status, content_type, (long long)len, body, len);
  if (rc < 0) req->keep_alive = false;
  req_finish(req);
  return rc;
}

int llorch_http_respond_json(llorch_http_request *req, int status, const char *json) {
  return llorch_http_respond(req, status, "application/json", json, strlen(json));
}

int llorch_http_respond_error(llorch_http_request *req, int status, const char *type,
                              const char *message, const char *param, const char *code) {
  char *body = req->error_format == LLORCH_HTTP_ERRORS_ANTHROPIC
                   ? llorch_json_error_envelope_anthropic(message, status)
                   : llorch_json_error_envelope(message, type, param, code);
  if (body == NULL) {
    static const char oom[] =
        "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
        "\"code\":null}}";
    return llorch_http_respond(req, 500, "application/json", oom, sizeof oom - 1);
  }
  int rc = llorch_http_respond(req, status, "application/json", body, strlen(body));
  free(body);
  return rc;
}

int llorch_http_request_api_key(const llorch_http_request *req, const char **token, size_t *len) {
  if (llorch_auth_parse_bearer(llorch_http_request_header(req, "Authorization"), token, len) == 0)
    return 0;
  const char *k = llorch_http_request_header(req, "x-api-key");
  if (k == NULL) return LLORCH_EAUTH;
  while (*k == ' ' || *k == '\t') k++;
  size_t n = strlen(k);
  while (n > 0 && (k[n - 1] == ' ' || k[n - 1] == '\t')) n--;
  if (n == 0) return LLORCH_EAUTH;
  *token = k;
  *len = n;
  return 0;
}

void llorch_http_request_set_error_format(llorch_http_request *req, llorch_http_error_format f) {
  req->error_format = f;
}

llorch_http_error_format llorch_http_request_error_format(const llorch_http_request *req) {
  return req->error_format;
}

int llorch_http_require_bearer(llorch_http_request *req, const char *const *tokens,
                               size_t n) {
  const char *tok = NULL;
  size_t len = 0;
  if (llorch_http_request_api_key(req, &tok, &len) < 0) tok = NULL;
  if (llorch_auth_check_token(tok, len, tokens, n) == 0) return 0;
  llorch_http_response_header(req, "WWW-Authenticate", "Bearer");
  LOG_INFO("http", req->id, "401 for %s %s from %s: missing or wrong bearer token",
           req->method, llorch_http_request_path(req), req->peer);
  llorch_http_respond_error(req, 401, "authentication_error",
                            "missing or invalid bearer token (Authorization: Bearer <token>)",
                            NULL, "invalid_api_key");
  return LLORCH_EAUTH;
}

int llorch_http_response_start(llorch_http_request *req, int status,
                               const char *content_type) {
  int rc = req_check(req, HTTP_REQ_HANDLER, false);
  if (rc < 0) return rc;
  if (status < 200 || status > 999) return LLORCH_EINVAL;
  if (req->http10) {
    /* HTTP/1.0 has no chunked coding: the body ends when the connection does. */
    req->body_mode = HTTP_BODY_CLOSE;
    req->keep_alive = false;
  } else {
    req->body_mode = HTTP_BODY_CHUNKED;
  }
  rc = resp_write_head(req, status, content_type, -1, NULL, 0);
  req->state = HTTP_REQ_STREAMING;
  return rc;
}

int llorch_http_response_write(llorch_http_request *req, const void *data, size_t len) {
  int rc = req_check(req, HTTP_REQ_STREAMING, false);
  if (rc < 0) return rc;
  if (len == 0 || req->head) return 0;
  if (req->body_mode == HTTP_BODY_CLOSE) return http_conn_write(req->conn, data, len);
  char size_line[24];
  int n = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
  return conn_write3(req->conn, size_line, (size_t)n, data, len, "\r\n", 2);
}

int llorch_http_response_end(llorch_http_request *req) {
  int rc = req_check(req, HTTP_REQ_STREAMING, true);
  if (rc < 0) return rc;
  if (req->conn->timer_mode == HTTP_TIMER_SSE) http_conn_set_timer(req->conn, HTTP_TIMER_NONE, 0);
  if (req->body_mode == HTTP_BODY_CHUNKED && !req->head) rc = http_conn_write(req->conn, "0\r\n\r\n", 5);
  req_finish(req);
  return rc;
}

int llorch_http_sse_start(llorch_http_request *req) {
  int rc = req_check(req, HTTP_REQ_HANDLER, false);
  if (rc < 0) return rc;
  rc = llorch_http_response_header(req, "Cache-Control", "no-cache");
  if (rc < 0) return rc;
  /* Tells nginx-style proxies in front of us not to buffer the stream. */
  llorch_http_response_header(req, "X-Accel-Buffering", "no");
  rc = llorch_http_response_start(req, 200, "text/event-stream");
  if (rc == 0 && req->srv->cfg.sse_keepalive_ms > 0)
    http_conn_set_timer(req->conn, HTTP_TIMER_SSE, req->srv->cfg.sse_keepalive_ms);
  return rc;
}

int llorch_http_sse_send(llorch_http_request *req, const char *event, const char *data,
                         size_t len) {
  int rc = req_check(req, HTTP_REQ_STREAMING, false);
  if (rc < 0) return rc;
  size_t n;
  char *text = llorch_sse_format(event, data ? data : "", data ? len : 0, &n);
  if (text == NULL) return LLORCH_ENOMEM;
  rc = llorch_http_response_write(req, text, n);
  free(text);
  return rc;
}

int llorch_http_sse_comment(llorch_http_request *req, const char *text) {
  int rc = req_check(req, HTTP_REQ_STREAMING, false);
  if (rc < 0) return rc;
  if (strpbrk(text, "\r\n") != NULL) return LLORCH_EINVAL;
  llorch_buf b = {0};
  rc = llorch_buf_append(&b, ": ", 2) | llorch_buf_append_str(&b, text) | llorch_buf_append(&b, "\n\n", 2);
  if (rc == 0) rc = llorch_http_response_write(req, b.data, b.len);
  else rc = LLORCH_ENOMEM;
  llorch_buf_free(&b);
  return rc;
}

int llorch_http_sse_end(llorch_http_request *req) { return llorch_http_response_end(req); }

/* ---- errors the server answers itself ---- */

/*
 * Answers a request the parser refused, then closes the connection (after
 * the lingering drain): after a framing error the rest of the stream cannot
 * be trusted.
 */
void http_conn_fail(http_conn *c, int status, const char *message) {
  if (c->fake) {
    if (c->fake_status == 0) c->fake_status = status;
    c->close_after = true;
    return;
  }
  llorch_http_server *srv = c->srv;
  srv->stats.parse_errors++;
  llorch_http_request *req = c->req;
  if (req == NULL) req = c->req = http_req_new(c);
  if (req == NULL) {
    http_conn_close(c);
    return;
  }
  if (req->id[0] == '\0') llorch_reqid_generate(req->id);
  if (req->method[0] == '\0') snprintf(req->method, sizeof req->method, "-");
  if (req->path != NULL)
    LOG_INFO("http", req->id, "%d for %s %s from %s: %s", status, req->method, req->path, c->peer,
             message);
  else
    LOG_INFO("http", req->id, "%d from %s: %s", status, c->peer, message);
  req->state = HTTP_REQ_HANDLER;
  req->keep_alive = false;
  req->head = false;
  c->close_after = true;
  c->in_message = false;
  const char *type = status == 413 || status == 431 || status == 400 || status == 404 || status == 405
                         ? "invalid_request_error"
                     : status == 408 ? "timeout_error"
                     : status == 401 ? "authentication_error"
                     : status == 403 ? "permission_error" : "server_error";
  const char *code = NULL;
  if (status == 401) {
    llorch_http_response_header(req, "WWW-Authenticate", "Bearer");
    code = "invalid_api_key";
  } else if (status == 403) {
    code = "forbidden";
  }
  llorch_http_respond_error(req, status, type, message, NULL, code);
}
