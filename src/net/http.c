/*
 * HTTP/1.1 server: libuv for sockets and timers, llhttp for parsing.
 *
 * Shape of a connection's life:
 *
 *   accept -> [read -> pending buffer -> llhttp] -> request complete
 *          -> parser paused, handler called -> handler answers (now or later)
 *          -> response written -> parser resumed on the pending bytes
 *          -> keep-alive idle, or lingering close.
 *
 * Exactly one request per connection is with the handler at a time; bytes of
 * pipelined requests that arrive meanwhile wait in the pending buffer, which
 * is how responses come out in order. Reading goes on while the handler works
 * (up to a bounded amount) so that a client that goes away is noticed at once
 * and the handler's on_close runs (the worker cancels generation on it).
 *
 * One timer per connection serves every timeout, with a mode saying which:
 * header deadline, body gap (never past the body's total deadline), keep-alive
 * idle, SSE keep-alive comments, or the lingering close.
 *
 * Connection caps (max_connections, max_connections_per_peer): a new
 * connection over a cap makes room instead of being refused while there is
 * something cheap to close. It closes, oldest first, a lingering close, then an
 * idle keep-alive connection (or one that has not sent a byte), then one still
 * sending an unfinished request; only connections whose request is with the
 * handler are never taken. So a flood of slow or idle connections cannot lock
 * out a health checker: its connection pushes out the oldest of the flood. The
 * scan is over the open connections (bounded by the cap) on each accept.
 */
#include "llorch/http.h"

#include <inttypes.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "llorch/auth.h"
#include "llorch/json.h"
#include "llorch/log.h"
#include "llorch/metrics.h"
#include "llorch/reqid.h"
#include "llorch/sse.h"
#include "llorch/buf.h"

/* Lingering close: how long to drain a client's unread bytes before closing. */
#define HTTP_LINGER_MS 2000
/* Extra pipelined bytes buffered while a request is with the handler. */
#define HTTP_PIPELINE_SLACK 65536

typedef struct http_conn http_conn;

typedef enum http_timer_mode {
  HTTP_TIMER_NONE = 0,
  HTTP_TIMER_HEADER,  /* headers must complete by the deadline */
  HTTP_TIMER_BODY,    /* gap between body bytes */
  HTTP_TIMER_IDLE,    /* keep-alive with no request */
  HTTP_TIMER_SSE,     /* periodic ": keep-alive" */
  HTTP_TIMER_LINGER,  /* draining before close */
} http_timer_mode;

typedef enum http_req_state {
  HTTP_REQ_PARSING = 0,  /* headers/body still arriving */
  HTTP_REQ_HANDLER,      /* with the handler, nothing sent yet */
  HTTP_REQ_STREAMING,    /* chunked or SSE response started */
  HTTP_REQ_DONE,         /* response finished */
} http_req_state;

typedef enum http_body_mode {
  HTTP_BODY_FIXED = 0,   /* Content-Length */
  HTTP_BODY_CHUNKED,     /* Transfer-Encoding: chunked (HTTP/1.1) */
  HTTP_BODY_CLOSE,       /* ends at close (HTTP/1.0 streaming) */
} http_body_mode;

struct llorch_http_request {
  llorch_http_server *srv;
  http_conn *conn;        /* NULL once the client has gone away */
  http_req_state state;
  llorch_buf url;            /* request target as received */
  llorch_buf hdr;            /* header names and values, each NUL-terminated */
  size_t *hoff;           /* (n_headers, 2) offsets into hdr: name, value */
  size_t n_headers;
  size_t cap_headers;     /* pairs allocated in hoff */
  size_t cur_name;        /* offset of the header being parsed */
  size_t cur_value;
  bool in_field;
  llorch_buf body;           /* de-chunked body */
  char *path;             /* into url (split at '?') */
  char *query;            /* into url, "" when none */
  char method[24];
  char id[LLORCH_REQID_MAX + 1];
  char peer[64];
  bool head;              /* HEAD: headers only */
  bool http10;
  bool keep_alive;        /* keep the connection after this response */
  bool detached;          /* client gone, handler not yet finished */
  bool in_close_cb;       /* on_close is running: finishing must not free */
  http_body_mode body_mode;
  int status;
  llorch_buf resp_headers;   /* extra "Name: value\r\n" lines */
  void *data;
  llorch_http_close_fn on_close;
  uint64_t start_ns;      /* uv_hrtime at dispatch */
  llorch_http_error_format error_format; /* envelope of llorch_http_respond_error */
};

struct http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_shutdown_t shutdown_req;
  llorch_http_server *srv;
  http_conn *prev, *next;  /* srv->conns list */
  llhttp_t parser;
  llorch_http_request *req; /* being parsed or with the handler */
  llorch_buf pending;          /* received, not yet parsed */
  size_t pending_pos;       /* parsed bytes at the front of pending */
  size_t header_bytes;      /* of the message being parsed */
  uint64_t body_deadline;   /* uv_now() by which the body must be complete; 0 = none */
  int err_status;           /* limit hit inside a parser callback (413, 431) */
  const char *err_msg;
  http_timer_mode timer_mode;
  size_t queued;            /* bytes in uv_write requests not yet completed */
  int handles_open;         /* tcp + timer; free the conn at 0 */
  bool fake;                /* llorch_http_parse_buffer: no sockets */
  bool reading;
  bool closing;             /* uv_close called (or lingering) */
  bool in_message;          /* between message begin and complete */
  bool in_process;          /* conn_process is on the stack */
  bool close_after;         /* no more requests on this connection */
  char peer[64];
  char ip[48];              /* peer address without the port: the per-peer cap's key */
  /* llorch_http_parse_buffer only */
  int fake_count;
  int fake_status;
  void (*fake_cb)(llorch_http_request *req, void *user);
  void *fake_user;
};

struct llorch_http_server {
  uv_loop_t *loop;
  llorch_http_config cfg;
  llorch_http_handler_fn handler;
  void *user;
  llorch_http_authorize_fn authorize; /* at headers complete; NULL = none */
  void *authorize_user;
  uv_tcp_t listener;
  uv_timer_t grace_timer;
  bool listening;
  bool listener_inited;
  int handles_open;         /* listener + grace timer */
  int port;
  http_conn *conns;
  unsigned n_conns;
  bool shutting_down;
  bool drained_called;
  bool freeing;
  unsigned forced;
  llorch_http_drained_fn drained;
  void *drained_user;
  llorch_http_stats stats;
  llorch_metric *m_requests;
  llorch_metric *m_aborts;
  llorch_metric *m_conns;
  llorch_metric *m_duration;
};

static llhttp_settings_t http_settings;
static bool http_settings_ready;

static void conn_process(http_conn *c);
static void conn_close(http_conn *c);
static void conn_abort(http_conn *c);
static void conn_request_done(http_conn *c);
static void srv_check_drained(llorch_http_server *srv);

/* ---- configuration ---- */

void llorch_http_config_default(llorch_http_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->max_header_bytes = 16384;
  cfg->max_header_count = 100;
  cfg->max_body_bytes = 4u << 20;
  cfg->header_timeout_ms = 10000;
  cfg->body_timeout_ms = 30000;
  cfg->body_deadline_ms = 60000;
  cfg->idle_timeout_ms = 60000;
  cfg->sse_keepalive_ms = 15000;
  cfg->max_connections = 1024;
  cfg->max_connections_per_peer = 0;
  cfg->backlog = 511;
}

const char *llorch_http_status_text(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
  }
  return "";
}

/* ---- request objects ---- */

static llorch_http_request *req_new(http_conn *c) {
  llorch_http_request *req = calloc(1, sizeof *req);
  if (req == NULL) return NULL;
  req->srv = c->srv;
  req->conn = c;
  snprintf(req->peer, sizeof req->peer, "%s", c->peer);
  return req;
}

static void req_free(llorch_http_request *req) {
  llorch_buf_free(&req->url);
  llorch_buf_free(&req->hdr);
  llorch_buf_free(&req->body);
  llorch_buf_free(&req->resp_headers);
  free(req->hoff);
  free(req);
}

const char *llorch_http_request_method(const llorch_http_request *req) { return req->method; }
const char *llorch_http_request_path(const llorch_http_request *req) {
  return req->path ? req->path : "";
}
const char *llorch_http_request_query(const llorch_http_request *req) {
  return req->query ? req->query : "";
}
const char *llorch_http_request_id(const llorch_http_request *req) { return req->id; }
const char *llorch_http_request_peer(const llorch_http_request *req) { return req->peer; }
llorch_http_server *llorch_http_request_server(const llorch_http_request *req) {
  return req->srv;
}
size_t llorch_http_request_header_count(const llorch_http_request *req) {
  return req->n_headers;
}

void llorch_http_request_header_at(const llorch_http_request *req, size_t i,
                                   const char **name, const char **value) {
  LLORCH_ASSERT(i < req->n_headers);
  *name = req->hdr.data + req->hoff[2 * i];
  *value = req->hdr.data + req->hoff[2 * i + 1];
}

const char *llorch_http_request_header(const llorch_http_request *req, const char *name) {
  for (size_t i = 0; i < req->n_headers; i++) {
    if (strcasecmp(req->hdr.data + req->hoff[2 * i], name) == 0)
      return req->hdr.data + req->hoff[2 * i + 1];
  }
  return NULL;
}

const char *llorch_http_request_body(const llorch_http_request *req, size_t *len) {
  if (len != NULL) *len = req->body.len;
  return req->body.data ? req->body.data : "";
}

void llorch_http_request_set_data(llorch_http_request *req, void *data,
                                  llorch_http_close_fn on_close) {
  req->data = data;
  req->on_close = on_close;
}

void llorch_http_request_release_body(llorch_http_request *req) { llorch_buf_free(&req->body); }

void *llorch_http_request_data(const llorch_http_request *req) { return req->data; }
bool llorch_http_request_closed(const llorch_http_request *req) { return req->detached; }

size_t llorch_http_request_queued_bytes(const llorch_http_request *req) {
  return req->conn ? req->conn->queued : 0;
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Percent-decodes s[0..n) into buf; returns the length or -1 if it does not fit. */
static int query_decode(const char *s, size_t n, char *buf, size_t size) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '+') {
      ch = ' ';
    } else if (ch == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      ch = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    }
    if (o + 1 >= size) return -1;
    buf[o++] = ch;
  }
  if (size == 0) return -1;
  buf[o] = '\0';
  return (int)o;
}

int llorch_http_request_query_param(const llorch_http_request *req, const char *name,
                                    char *buf, size_t buf_size) {
  const char *q = llorch_http_request_query(req);
  size_t nlen = strlen(name);
  while (*q != '\0') {
    const char *amp = strchr(q, '&');
    size_t plen = amp ? (size_t)(amp - q) : strlen(q);
    const char *eq = memchr(q, '=', plen);
    size_t klen = eq ? (size_t)(eq - q) : plen;
    if (klen == nlen && memcmp(q, name, nlen) == 0) {
      if (eq == NULL) return query_decode("", 0, buf, buf_size);
      return query_decode(eq + 1, plen - klen - 1, buf, buf_size);
    }
    q += plen;
    if (*q == '&') q++;
  }
  return -1;
}

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
    conn_abort(c);
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

static int conn_write(http_conn *c, const char *data, size_t len) {
  return conn_write3(c, data, len, NULL, 0, NULL, 0);
}

/* ---- timers ---- */

static void conn_on_timer(uv_timer_t *t);

static void conn_set_timer(http_conn *c, http_timer_mode mode, unsigned ms) {
  if (c->fake) return;
  c->timer_mode = mode;
  if (mode == HTTP_TIMER_NONE || ms == 0) {
    uv_timer_stop(&c->timer);
    c->timer_mode = HTTP_TIMER_NONE;
    return;
  }
  uint64_t repeat = mode == HTTP_TIMER_SSE ? ms : 0;
  uv_timer_start(&c->timer, conn_on_timer, ms, repeat);
}

/*
 * Arms the body timer: the gap limit, cut short by the total deadline, so a
 * client trickling one byte per gap cannot hold a body open for ever.
 * Returns false when the deadline has already passed.
 */
static bool conn_arm_body_timer(http_conn *c) {
  if (c->fake) return true;
  unsigned ms = c->srv->cfg.body_timeout_ms;
  if (c->body_deadline != 0) {
    uint64_t now = uv_now(c->srv->loop);
    if (now >= c->body_deadline) return false;
    if (ms == 0 || c->body_deadline - now < ms) ms = (unsigned)(c->body_deadline - now);
  }
  conn_set_timer(c, HTTP_TIMER_BODY, ms);
  return true;
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
    req_free(req);
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
  conn_request_done(c);
}

/* Common checks: 0 to go on, or the code to return. Detached: finishing calls end it. */
static int req_check(llorch_http_request *req, http_req_state want, bool finishing) {
  if (req->detached) {
    if (finishing) {
      if (req->in_close_cb) req->state = HTTP_REQ_DONE; /* freed after the callback */
      else req_free(req);
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
  if (req->body_mode == HTTP_BODY_CLOSE) return conn_write(req->conn, data, len);
  char size_line[24];
  int n = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
  return conn_write3(req->conn, size_line, (size_t)n, data, len, "\r\n", 2);
}

int llorch_http_response_end(llorch_http_request *req) {
  int rc = req_check(req, HTTP_REQ_STREAMING, true);
  if (rc < 0) return rc;
  if (req->conn->timer_mode == HTTP_TIMER_SSE) conn_set_timer(req->conn, HTTP_TIMER_NONE, 0);
  if (req->body_mode == HTTP_BODY_CHUNKED && !req->head) rc = conn_write(req->conn, "0\r\n\r\n", 5);
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
    conn_set_timer(req->conn, HTTP_TIMER_SSE, req->srv->cfg.sse_keepalive_ms);
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
static void conn_fail(http_conn *c, int status, const char *message) {
  if (c->fake) {
    if (c->fake_status == 0) c->fake_status = status;
    c->close_after = true;
    return;
  }
  llorch_http_server *srv = c->srv;
  srv->stats.parse_errors++;
  llorch_http_request *req = c->req;
  if (req == NULL) req = c->req = req_new(c);
  if (req == NULL) {
    conn_close(c);
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

/* ---- parser callbacks ---- */

static http_conn *parser_conn(llhttp_t *p) { return (http_conn *)p->data; }

static int header_limit(http_conn *c, size_t add) {
  c->header_bytes += add;
  if (c->header_bytes > c->srv->cfg.max_header_bytes) {
    c->err_status = 431;
    c->err_msg = "request headers too large";
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  http_conn *c = parser_conn(p);
  c->in_message = true;
  c->header_bytes = 0;
  c->req = req_new(c);
  if (c->req == NULL) {
    c->err_status = 500;
    c->err_msg = "out of memory";
    return -1;
  }
  if (c->timer_mode != HTTP_TIMER_HEADER)
    conn_set_timer(c, HTTP_TIMER_HEADER, c->srv->cfg.header_timeout_ms);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = parser_conn(p);
  if (header_limit(c, len) < 0) return -1;
  return llorch_buf_append(&c->req->url, at, len) ? -1 : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = parser_conn(p);
  llorch_http_request *req = c->req;
  if (header_limit(c, len) < 0) return -1;
  if (!req->in_field) {
    req->in_field = true;
    req->cur_name = req->hdr.len;
  }
  return llorch_buf_append(&req->hdr, at, len) ? -1 : 0;
}

static int on_header_field_complete(llhttp_t *p) {
  http_conn *c = parser_conn(p);
  llorch_http_request *req = c->req;
  if (!req->in_field) req->cur_name = req->hdr.len; /* empty name: llhttp refuses it anyway */
  req->in_field = false;
  if (req->n_headers + 1 > c->srv->cfg.max_header_count) {
    c->err_status = 431;
    c->err_msg = "too many request headers";
    return -1;
  }
  if (llorch_buf_append(&req->hdr, "", 1)) return -1;
  req->cur_value = req->hdr.len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = parser_conn(p);
  if (header_limit(c, len) < 0) return -1;
  return llorch_buf_append(&c->req->hdr, at, len) ? -1 : 0;
}

static int on_header_value_complete(llhttp_t *p) {
  http_conn *c = parser_conn(p);
  llorch_http_request *req = c->req;
  /* ": " and CRLF count towards the limit too. */
  if (header_limit(c, 4) < 0) return -1;
  while (req->hdr.len > req->cur_value &&
         (req->hdr.data[req->hdr.len - 1] == ' ' || req->hdr.data[req->hdr.len - 1] == '\t'))
    req->hdr.len--;
  if (llorch_buf_append(&req->hdr, "", 1)) return -1;
  if (req->n_headers == req->cap_headers) {
    size_t cap = req->cap_headers ? req->cap_headers * 2 : 16;
    size_t *h = realloc(req->hoff, cap * 2 * sizeof *h);
    if (h == NULL) return -1;
    req->hoff = h;
    req->cap_headers = cap;
  }
  req->hoff[2 * req->n_headers] = req->cur_name;
  req->hoff[2 * req->n_headers + 1] = req->cur_value;
  req->n_headers++;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  http_conn *c = parser_conn(p);
  llorch_http_request *req = c->req;
  const llorch_http_config *cfg = &c->srv->cfg;
  /* The request line and headers only; chunked trailers come later and are not checked again. */
  snprintf(req->method, sizeof req->method, "%s", llhttp_method_name(llhttp_get_method(p)));
  req->head = llhttp_get_method(p) == HTTP_HEAD;
  req->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
  if (llhttp_get_http_major(p) != 1) {
    c->err_status = 505;
    c->err_msg = "only HTTP/1.0 and HTTP/1.1 are supported";
    return -1;
  }
  /* Split the target into path and query. */
  if (req->url.data == NULL && llorch_buf_append(&req->url, "", 0)) return -1;
  req->path = req->url.data;
  char *q = strchr(req->url.data, '?');
  if (q != NULL) {
    *q = '\0';
    req->query = q + 1;
  } else {
    req->query = req->url.data + req->url.len;
  }
  /* A client's id is a label for its logs and ours, never a key; one that
   * could smuggle anything into a log line or header is refused. */
  const char *rid = llorch_http_request_header(req, "X-Request-Id");
  if (rid != NULL && !llorch_reqid_valid(rid, strlen(rid))) {
    llorch_reqid_generate(req->id);
    c->err_status = 400;
    c->err_msg = "header 'X-Request-Id' must match ^[A-Za-z0-9._:-]{1,64}$";
    return -1;
  }
  if (rid != NULL)
    snprintf(req->id, sizeof req->id, "%s", rid);
  else
    llorch_reqid_generate(req->id);

  /*
   * Who may send this request is decided from its headers alone: a caller
   * without the right credentials gets its 401/403 before one byte of its
   * body is read or buffered, and the connection closes (conn_fail).
   */
  if (c->srv->authorize != NULL && !c->fake) {
    const char *why = NULL;
    int refuse = c->srv->authorize(req, c->srv->authorize_user, &why);
    if (refuse != 0) {
      c->err_status = refuse;
      c->err_msg = why != NULL ? why : "not allowed";
      return -1;
    }
  }

  bool chunked = (p->flags & F_CHUNKED) != 0;
  bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  if (has_length && p->content_length > cfg->max_body_bytes) {
    /* Refused from the declared length alone: the body is never read. */
    c->err_status = 413;
    c->err_msg = "request body too large";
    return -1;
  }
  if (chunked || (has_length && p->content_length > 0)) {
    /* The declared length is within max_body_bytes: one allocation, no regrowth copies. */
    if (has_length && llorch_buf_reserve(&req->body, (size_t)p->content_length) < 0) {
      c->err_status = 500;
      c->err_msg = "out of memory";
      return -1;
    }
    c->body_deadline = 0;
    if (!c->fake && cfg->body_deadline_ms > 0)
      c->body_deadline = uv_now(c->srv->loop) + cfg->body_deadline_ms;
    conn_arm_body_timer(c);
    const char *expect = llorch_http_request_header(req, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && !req->http10)
      conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  } else {
    conn_set_timer(c, HTTP_TIMER_NONE, 0);
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = parser_conn(p);
  llorch_http_request *req = c->req;
  if (len > c->srv->cfg.max_body_bytes - req->body.len) {
    c->err_status = 413;
    c->err_msg = "request body too large";
    return -1;
  }
  return llorch_buf_append(&req->body, at, len) ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn *c = parser_conn(p);
  c->in_message = false;
  c->req->keep_alive = llhttp_should_keep_alive(p) != 0;
  /*
   * Pause: the parser stops right after this message, so the bytes of the
   * next pipelined request stay unparsed until this one is answered.
   */
  return HPE_PAUSED;
}

static void http_settings_init(void) {
  if (http_settings_ready) return;
  llhttp_settings_init(&http_settings);
  http_settings.on_message_begin = on_message_begin;
  http_settings.on_url = on_url;
  http_settings.on_header_field = on_header_field;
  http_settings.on_header_field_complete = on_header_field_complete;
  http_settings.on_header_value = on_header_value;
  http_settings.on_header_value_complete = on_header_value_complete;
  http_settings.on_headers_complete = on_headers_complete;
  http_settings.on_body = on_body;
  http_settings.on_message_complete = on_message_complete;
  http_settings_ready = true;
}

/* ---- the connection's parse loop ---- */

static void conn_dispatch(http_conn *c) {
  llorch_http_request *req = c->req;
  req->state = HTTP_REQ_HANDLER;
  if (c->fake) {
    c->fake_count++;
    if (c->fake_cb != NULL) c->fake_cb(req, c->fake_user);
    if (c->req == req) { /* not finished by a (misbehaving) callback */
      req_free(req);
      c->req = NULL;
    }
    return;
  }
  llorch_http_server *srv = c->srv;
  srv->stats.requests++;
  req->start_ns = uv_hrtime();
  conn_set_timer(c, HTTP_TIMER_NONE, 0);
  srv->handler(req, srv->user);
}

static void conn_read_start(http_conn *c);

/*
 * Parses pending bytes until a request goes to the handler, the bytes run
 * out, or the connection fails. Re-entered from conn_request_done when the
 * handler answers synchronously: the in_process flag turns that into another
 * turn of this loop instead of recursion, so a burst of pipelined requests
 * does not grow the stack.
 */
static void conn_process(http_conn *c) {
  if (c->in_process) return;
  c->in_process = true;
  for (;;) {
    if (c->closing || c->close_after) break;
    if (c->req != NULL && c->req->state != HTTP_REQ_PARSING) break;
    if (c->pending_pos >= c->pending.len) break;
    const char *data = c->pending.data + c->pending_pos;
    size_t len = c->pending.len - c->pending_pos;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK) {
      c->pending_pos = c->pending.len;
      break;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      c->pending_pos += (size_t)(llhttp_get_error_pos(&c->parser) - data);
      if (c->req == NULL || c->in_message) {
        /* Paused without a complete request (an upgrade llhttp stopped on). */
        conn_fail(c, 400, "protocol upgrades are not supported");
        break;
      }
      if (err == HPE_PAUSED_UPGRADE) {
        /* No protocol upgrades here: answer this request, then close. */
        c->req->keep_alive = false;
        llhttp_resume_after_upgrade(&c->parser);
      } else {
        llhttp_resume(&c->parser);
      }
      conn_dispatch(c);
      continue;
    }
    int status = c->err_status;
    const char *msg = c->err_msg;
    char reason[200];
    if (status == 0) {
      status = 400;
      snprintf(reason, sizeof reason, "malformed request: %s", llhttp_get_error_reason(&c->parser));
      msg = reason;
    }
    if (c->req != NULL && c->req->state != HTTP_REQ_PARSING) {
      /* Cannot happen: the parser is paused while a request is with the handler. */
      break;
    }
    conn_fail(c, status, msg);
    break;
  }
  /* Drop parsed bytes from the front once they are the larger part. */
  if (c->pending_pos > 0 && (c->pending_pos >= c->pending.len || c->pending_pos > 4096)) {
    llorch_buf_consume(&c->pending, c->pending_pos);
    c->pending_pos = 0;
  }
  c->in_process = false;
  if (c->fake || c->closing) return;
  if (c->req == NULL && !c->close_after) {
    if (!c->in_message && c->pending.len == 0)
      conn_set_timer(c, HTTP_TIMER_IDLE, c->srv->cfg.idle_timeout_ms);
    conn_read_start(c);
  }
}

/* ---- connection lifecycle ---- */

static void srv_free_if_done(llorch_http_server *srv);

static void conn_on_handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  if (--c->handles_open > 0) return;
  llorch_http_server *srv = c->srv;
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->n_conns--;
  srv->stats.connections_open--;
  if (srv->m_conns) llorch_metric_add(srv->m_conns, NULL, -1);
  llorch_buf_free(&c->pending);
  free(c);
  srv_check_drained(srv);
  srv_free_if_done(srv);
}

/*
 * Gives up on the request in flight, if any: the handler hears about it
 * through on_close (then the request is freed) or, without one, the request
 * stays detached until the handler finishes it.
 */
static void conn_drop_request(http_conn *c) {
  llorch_http_request *req = c->req;
  if (req == NULL) return;
  c->req = NULL;
  if (req->state == HTTP_REQ_PARSING || req->state == HTTP_REQ_DONE) {
    req_free(req);
    return;
  }
  llorch_http_server *srv = c->srv;
  srv->stats.client_aborts++;
  if (srv->m_aborts) llorch_metric_inc(srv->m_aborts, NULL, 1);
  LOG_INFO("http", req->id, "client %s went away during %s %s (%s)", req->peer, req->method,
           llorch_http_request_path(req),
           req->state == HTTP_REQ_STREAMING ? "response streaming" : "before the response");
  req->conn = NULL;
  req->detached = true;
  if (req->on_close != NULL) {
    llorch_http_close_fn cb = req->on_close;
    req->on_close = NULL;
    req->in_close_cb = true;
    cb(req, req->data);
    req_free(req);
  }
}

static void conn_close(http_conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  c->closing = true;
  c->timer_mode = HTTP_TIMER_NONE;
  conn_drop_request(c);
  uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
}

/* The client went away (EOF, reset, write error) or we give up on it. */
static void conn_abort(http_conn *c) { conn_close(c); }

static void conn_on_shutdown(uv_shutdown_t *sr, int status) {
  http_conn *c = sr->data;
  if (status < 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  /*
   * Lingering close: keep reading (and discarding) until the client closes
   * or HTTP_LINGER_MS passes. Closing with unread bytes in the kernel buffer
   * makes it send RST, which can destroy the response we just wrote before
   * the client reads it (e.g. a 413 while the client is still sending).
   */
  c->timer_mode = HTTP_TIMER_LINGER;
  uv_timer_start(&c->timer, conn_on_timer, HTTP_LINGER_MS, 0);
  conn_read_start(c);
}

/* Closes after everything queued is written. */
static void conn_close_gracefully(http_conn *c) {
  if (c->closing) return;
  c->closing = true;
  conn_set_timer(c, HTTP_TIMER_NONE, 0);
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_on_shutdown) < 0)
    conn_close(c);
}

static void conn_request_done(http_conn *c) {
  llorch_http_request *req = c->req;
  c->req = NULL;
  if (req != NULL) req_free(req);
  if (c->fake) return;
  if (c->close_after || c->srv->shutting_down) {
    conn_close_gracefully(c);
    return;
  }
  conn_process(c);
}

static void conn_on_timer(uv_timer_t *t) {
  http_conn *c = t->data;
  switch (c->timer_mode) {
    case HTTP_TIMER_HEADER:
      c->timer_mode = HTTP_TIMER_NONE;
      if (c->in_message) {
        conn_fail(c, 408, "request headers not received in time");
      } else {
        conn_close(c);
      }
      break;
    case HTTP_TIMER_BODY: {
      c->timer_mode = HTTP_TIMER_NONE;
      char msg[120];
      if (c->body_deadline != 0 && uv_now(c->srv->loop) >= c->body_deadline)
        snprintf(msg, sizeof msg, "request body not received in time: not complete within %u ms (http.body_deadline)",
                 c->srv->cfg.body_deadline_ms);
      else
        snprintf(msg, sizeof msg, "request body not received in time: no bytes for %u ms (http.body_timeout)",
                 c->srv->cfg.body_timeout_ms);
      conn_fail(c, 408, msg);
      break;
    }
    case HTTP_TIMER_IDLE:
      conn_close(c);
      break;
    case HTTP_TIMER_SSE:
      if (c->req != NULL && c->req->state == HTTP_REQ_STREAMING)
        llorch_http_response_write(c->req, ": keep-alive\n\n", 14);
      break;
    case HTTP_TIMER_LINGER:
      conn_close(c);
      break;
    case HTTP_TIMER_NONE:
      break;
  }
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  http_conn *c = h->data;
  size_t want = suggested < 65536 ? suggested : 65536;
  if (llorch_buf_reserve(&c->pending, want) < 0) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(c->pending.data + c->pending.len, (unsigned)want);
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  http_conn *c = s->data;
  if (c->closing) {
    /* Lingering: discard, close on EOF/error. */
    if (n < 0) conn_close(c);
    return;
  }
  if (n < 0) {
    /* EOF or reset. A request with the handler is aborted (see conn_drop_request). */
    conn_close(c);
    return;
  }
  if (n == 0) return;
  c->pending.len += (size_t)n;
  c->pending.data[c->pending.len] = '\0';
  if (c->timer_mode == HTTP_TIMER_BODY && !conn_arm_body_timer(c)) {
    c->timer_mode = HTTP_TIMER_NONE;
    char msg[120];
    snprintf(msg, sizeof msg, "request body not received in time: not complete within %u ms (http.body_deadline)",
             c->srv->cfg.body_deadline_ms);
    conn_fail(c, 408, msg);
    return;
  }
  if (c->req != NULL && c->req->state != HTTP_REQ_PARSING) {
    /* Pipelined bytes while the handler works: buffer, within bounds. */
    if (c->pending.len - c->pending_pos >
        c->srv->cfg.max_header_bytes + HTTP_PIPELINE_SLACK) {
      uv_read_stop(s);
      c->reading = false;
    }
    return;
  }
  conn_process(c);
}

static void conn_read_start(http_conn *c) {
  if (c->reading || uv_is_closing((uv_handle_t *)&c->tcp)) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) == 0) c->reading = true;
}

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t size, char *ip,
                        size_t ip_size) {
  snprintf(ip, ip_size, "?");
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, ip, ip_size);
    snprintf(out, size, "%s:%d", ip, ntohs(a->sin_port));
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    uv_ip6_name(a, ip, ip_size);
    snprintf(out, size, "[%s]:%d", ip, ntohs(a->sin6_port));
  } else {
    snprintf(out, size, "?");
  }
}

/* ---- connection caps ---- */

/* How cheap a connection is to close for room: lower goes first; -1 never. */
static int conn_evict_class(const http_conn *c) {
  if (uv_is_closing((const uv_handle_t *)&c->tcp)) return -2; /* already going: not counted */
  if (c->closing) return c->timer_mode == HTTP_TIMER_LINGER ? 0 : -1;
  if (c->req == NULL && !c->in_message) return 1;  /* keep-alive idle, or no byte yet */
  if (c->req != NULL && c->req->state == HTTP_REQ_PARSING) return 2; /* unfinished request */
  return -1;                                        /* with the handler: real work */
}

/*
 * Makes room for the new connection nc under both caps; false when a cap is
 * reached and every other connection is busy with a handler.
 */
static bool srv_make_room(llorch_http_server *srv, http_conn *nc) {
  const llorch_http_config *cfg = &srv->cfg;
  if (cfg->max_connections == 0 && cfg->max_connections_per_peer == 0) return true;
  unsigned live = 1, same = 1;
  http_conn *oldest[3] = {NULL, NULL, NULL}, *oldest_same[3] = {NULL, NULL, NULL};
  /* The list runs newest to oldest: the last one seen of a class is its oldest. */
  for (http_conn *c = srv->conns; c != NULL; c = c->next) {
    if (c == nc) continue;
    int cls = conn_evict_class(c);
    if (cls == -2) continue;
    live++;
    bool peer = strcmp(c->ip, nc->ip) == 0;
    if (peer) same++;
    if (cls < 0) continue;
    oldest[cls] = c;
    if (peer) oldest_same[cls] = c;
  }
  http_conn *victim[2] = {NULL, NULL};
  if (cfg->max_connections_per_peer > 0 && same > cfg->max_connections_per_peer) {
    for (int k = 0; k < 3 && !victim[0]; k++) victim[0] = oldest_same[k];
    if (!victim[0]) return false;
    live--;
  }
  if (cfg->max_connections > 0 && live > cfg->max_connections) {
    for (int k = 0; k < 3 && !victim[1]; k++)
      if (oldest[k] != victim[0]) victim[1] = oldest[k];
    if (!victim[1]) return false;
  }
  for (int k = 0; k < 2; k++) {
    if (!victim[k]) continue;
    srv->stats.connections_evicted++;
    LOG_DEBUG("http", NULL, "connection cap: closing %s connection from %s for one from %s",
              conn_evict_class(victim[k]) == 2 ? "an unfinished" : "an idle", victim[k]->peer,
              nc->peer);
    conn_close(victim[k]);
  }
  return true;
}

unsigned long llorch_net_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    struct rlimit want = rl;
    want.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
  }
  return rl.rlim_cur == RLIM_INFINITY ? (unsigned long)-1 : (unsigned long)rl.rlim_cur;
}

static void srv_on_connection(uv_stream_t *listener, int status) {
  llorch_http_server *srv = listener->data;
  if (status < 0) {
    LOG_WARN("http", NULL, "accept failed: %s", uv_strerror(status));
    return;
  }
  http_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return;
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->n_conns++;
  srv->stats.connections_open++;
  if (srv->m_conns) llorch_metric_add(srv->m_conns, NULL, 1);
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  srv->stats.connections_accepted++;
  if (srv->shutting_down) {
    conn_close(c);
    return;
  }
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    format_peer(&ss, c->peer, sizeof c->peer, c->ip, sizeof c->ip);
  } else {
    snprintf(c->peer, sizeof c->peer, "?");
    snprintf(c->ip, sizeof c->ip, "?");
  }
  if (!srv_make_room(srv, c)) {
    /* Every connection is working on a request: this one waits for nothing. */
    if (srv->stats.connections_refused++ % 1000 == 0)
      LOG_WARN("http", NULL, "connection from %s refused: at the connection cap (%u, %u per peer) "
               "with every connection busy (%" PRIu64 " refused so far)", c->peer,
               srv->cfg.max_connections, srv->cfg.max_connections_per_peer,
               srv->stats.connections_refused);
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  http_settings_init();
  llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
  c->parser.data = c;
  conn_set_timer(c, HTTP_TIMER_HEADER, srv->cfg.header_timeout_ms);
  conn_read_start(c);
}

/* ---- server ---- */

void llorch_net_ignore_sigpipe(void) {
  /*
   * libuv writes with write(2), so a client that has gone away would kill
   * the process with SIGPIPE instead of giving us EPIPE. Only the default
   * disposition is replaced: a program that installed its own handler keeps it.
   */
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
}

int llorch_http_server_init(llorch_http_server **out, uv_loop_t *loop,
                            const llorch_http_config *cfg,
                            llorch_http_handler_fn handler, void *user,
                            llorch_errmsg *em) {
  llorch_http_server *srv = calloc(1, sizeof *srv);
  if (srv == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  srv->loop = loop;
  if (cfg != NULL) srv->cfg = *cfg;
  else llorch_http_config_default(&srv->cfg);
  srv->handler = handler;
  srv->user = user;
  srv->port = -1;
  uv_timer_init(loop, &srv->grace_timer);
  srv->grace_timer.data = srv;
  srv->handles_open = 1;
  http_settings_init();
  llorch_net_ignore_sigpipe();
  *out = srv;
  return 0;
}

void llorch_http_server_set_authorize(llorch_http_server *srv, llorch_http_authorize_fn fn,
                                      void *user) {
  srv->authorize = fn;
  srv->authorize_user = user;
}

int llorch_http_server_listen(llorch_http_server *srv, const char *host, int port,
                              llorch_errmsg *em) {
  if (srv->listening) return llorch_errmsg_set(em, LLORCH_ESTATE, "already listening");
  if (port < 0 || port > 65535)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "listen port %d out of range 0..65535", port);
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
    /* A name: resolve synchronously (start-up only, so blocking is fine). */
    uv_getaddrinfo_t gai;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    int rc = uv_getaddrinfo(srv->loop, &gai, NULL, host, NULL, &hints);
    if (rc < 0)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "cannot resolve listen host '%s': %s", host,
                               uv_strerror(rc));
    memcpy(&ss, gai.addrinfo->ai_addr, gai.addrinfo->ai_addrlen);
    uv_freeaddrinfo(gai.addrinfo);
    if (ss.ss_family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
  }
  if (!srv->listener_inited) {
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    srv->listener_inited = true;
    srv->handles_open++;
  }
  int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, srv->cfg.backlog, srv_on_connection);
  if (rc < 0) {
    int err = rc == UV_EADDRINUSE ? LLORCH_EBUSY : rc == UV_EADDRNOTAVAIL ? LLORCH_EINVAL
                                                                            : LLORCH_EIO;
    return llorch_errmsg_set(em, err, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
  }
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
  srv->port = bound.ss_family == AF_INET
                  ? ntohs(((struct sockaddr_in *)&bound)->sin_port)
                  : ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
  srv->listening = true;
  return 0;
}

int llorch_http_server_port(const llorch_http_server *srv) {
  return srv->listening ? srv->port : -1;
}

int llorch_http_server_set_metrics(llorch_http_server *srv, llorch_metrics *m) {
  static const char *const code_label[] = {"code", NULL};
  static const double buckets[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};
  srv->m_requests = llorch_metrics_counter(m, "llorch_http_requests_total",
                                           "HTTP responses sent, by status code.", code_label);
  srv->m_aborts = llorch_metrics_counter(
      m, "llorch_http_client_aborts_total",
      "Requests whose client went away before the response was finished.", NULL);
  srv->m_conns = llorch_metrics_gauge(m, "llorch_http_connections",
                                      "Open HTTP connections.", NULL);
  srv->m_duration = llorch_metrics_histogram(
      m, "llorch_http_request_duration_seconds",
      "Time from a complete request to its finished response.", NULL, buckets,
      sizeof buckets / sizeof buckets[0]);
  if (!srv->m_requests || !srv->m_aborts || !srv->m_conns || !srv->m_duration)
    return LLORCH_ENOMEM;
  llorch_metric_set(srv->m_conns, NULL, (double)srv->n_conns);
  return 0;
}

void llorch_http_server_stats(const llorch_http_server *srv, llorch_http_stats *out) {
  *out = srv->stats;
}

static void srv_on_handle_closed(uv_handle_t *h) {
  llorch_http_server *srv = h->data;
  srv->handles_open--;
  srv_check_drained(srv);
  srv_free_if_done(srv);
}

static void srv_free_if_done(llorch_http_server *srv) {
  if (srv->freeing && srv->handles_open == 0 && srv->n_conns == 0) free(srv);
}

static void srv_check_drained(llorch_http_server *srv) {
  if (!srv->shutting_down || srv->drained_called || srv->n_conns > 0) return;
  if (srv->listener_inited && !uv_is_closing((uv_handle_t *)&srv->listener)) return;
  srv->drained_called = true;
  uv_timer_stop(&srv->grace_timer);
  if (srv->drained != NULL) {
    /*
     * The callback may free the server; srv_free_if_done cannot free it
     * underneath us because the grace timer stays open until then.
     */
    srv->drained(srv, srv->forced, srv->drained_user);
  }
}

static void srv_close_all(llorch_http_server *srv, bool count_forced) {
  for (http_conn *c = srv->conns; c != NULL; c = c->next) {
    if (uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    if (count_forced && c->req != NULL) srv->forced++;
    conn_close(c);
  }
}

static void srv_on_grace_timer(uv_timer_t *t) {
  llorch_http_server *srv = t->data;
  if (srv->n_conns > 0)
    LOG_WARN("http", NULL, "shutdown grace period over: closing %u connection(s)", srv->n_conns);
  srv_close_all(srv, true);
}

void llorch_http_server_shutdown(llorch_http_server *srv, unsigned grace_ms,
                                 llorch_http_drained_fn drained, void *user) {
  if (srv->shutting_down) return;
  srv->shutting_down = true;
  srv->drained = drained;
  srv->drained_user = user;
  if (srv->listener_inited && !uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, srv_on_handle_closed);
  srv->listening = false;
  /* Idle connections (nothing with the handler) go now; busy ones finish first. */
  for (http_conn *c = srv->conns; c != NULL; c = c->next) {
    if (uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    if (c->req == NULL || c->req->state == HTTP_REQ_PARSING) conn_close(c);
    else c->close_after = true;
  }
  uv_timer_start(&srv->grace_timer, srv_on_grace_timer, grace_ms, 0);
  if (!srv->listener_inited) srv_check_drained(srv);
}

void llorch_http_server_free(llorch_http_server *srv) {
  if (srv == NULL) return;
  srv->freeing = true;
  srv->shutting_down = true;
  srv->drained_called = true; /* no callback from here on */
  if (srv->listener_inited && !uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, srv_on_handle_closed);
  srv_close_all(srv, false);
  if (!uv_is_closing((uv_handle_t *)&srv->grace_timer))
    uv_close((uv_handle_t *)&srv->grace_timer, srv_on_handle_closed);
}

/* ---- parsing without sockets ---- */

int llorch_http_parse_buffer(const llorch_http_config *cfg, const void *data, size_t len,
                             void (*on_request)(llorch_http_request *req, void *user),
                             void *user) {
  llorch_http_server srv;
  memset(&srv, 0, sizeof srv);
  if (cfg != NULL) srv.cfg = *cfg;
  else llorch_http_config_default(&srv.cfg);
  http_conn c;
  memset(&c, 0, sizeof c);
  c.srv = &srv;
  c.fake = true;
  c.fake_cb = on_request;
  c.fake_user = user;
  snprintf(c.peer, sizeof c.peer, "buffer");
  http_settings_init();
  llhttp_init(&c.parser, HTTP_REQUEST, &http_settings);
  c.parser.data = &c;
  int result;
  if (llorch_buf_append(&c.pending, data, len) < 0) {
    result = -500;
    goto done;
  }
  /* Fake dispatch frees each request at once, so one pass parses everything. */
  conn_process(&c);
  result = c.fake_status ? -c.fake_status : c.fake_count;
done:
  if (c.req != NULL) req_free(c.req);
  llorch_buf_free(&c.pending);
  return result;
}
