/*
 * One HTTP connection: llhttp's callbacks, the parse loop that hands one
 * request at a time to the handler, the connection's timer, its lifecycle
 * (read, linger, close) and the connection caps. See http-impl.h.
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

static llhttp_settings_t http_settings;
static bool http_settings_ready;

/* ---- timers ---- */

static void conn_on_timer(uv_timer_t *t);

void http_conn_set_timer(http_conn *c, http_timer_mode mode, unsigned ms) {
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
  http_conn_set_timer(c, HTTP_TIMER_BODY, ms);
  return true;
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
  c->req = http_req_new(c);
  if (c->req == NULL) {
    c->err_status = 500;
    c->err_msg = "out of memory";
    return -1;
  }
  if (c->timer_mode != HTTP_TIMER_HEADER)
    http_conn_set_timer(c, HTTP_TIMER_HEADER, c->srv->cfg.header_timeout_ms);
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
   * body is read or buffered, and the connection closes (http_conn_fail).
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
      http_conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  } else {
    http_conn_set_timer(c, HTTP_TIMER_NONE, 0);
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

/* Fills the callbacks once (the first server made on the loop thread, or a
 * parse without sockets). */
void http_parser_settings_init(void) {
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

void http_parser_start(http_conn *c) {
  http_parser_settings_init();
  llhttp_init(&c->parser, HTTP_REQUEST, &http_settings);
  c->parser.data = c;
}

/* ---- the connection's parse loop ---- */

static void conn_dispatch(http_conn *c) {
  llorch_http_request *req = c->req;
  req->state = HTTP_REQ_HANDLER;
  if (c->fake) {
    c->fake_count++;
    if (c->fake_cb != NULL) c->fake_cb(req, c->fake_user);
    if (c->req == req) { /* not finished by a (misbehaving) callback */
      http_req_free(req);
      c->req = NULL;
    }
    return;
  }
  llorch_http_server *srv = c->srv;
  srv->stats.requests++;
  req->start_ns = uv_hrtime();
  http_conn_set_timer(c, HTTP_TIMER_NONE, 0);
  srv->handler(req, srv->user);
}

static void conn_read_start(http_conn *c);

/*
 * Parses pending bytes until a request goes to the handler, the bytes run
 * out, or the connection fails. Re-entered from http_conn_request_done when the
 * handler answers synchronously: the in_process flag turns that into another
 * turn of this loop instead of recursion, so a burst of pipelined requests
 * does not grow the stack.
 */
void http_conn_process(http_conn *c) {
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
        http_conn_fail(c, 400, "protocol upgrades are not supported");
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
    http_conn_fail(c, status, msg);
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
      http_conn_set_timer(c, HTTP_TIMER_IDLE, c->srv->cfg.idle_timeout_ms);
    conn_read_start(c);
  }
}

/* ---- connection lifecycle ---- */


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
  http_srv_check_drained(srv);
  http_srv_free_if_done(srv);
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
    http_req_free(req);
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
    http_req_free(req);
  }
}

void http_conn_close(http_conn *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  c->closing = true;
  c->timer_mode = HTTP_TIMER_NONE;
  conn_drop_request(c);
  uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
}

/* The client went away (EOF, reset, write error) or we give up on it. */
void http_conn_abort(http_conn *c) { http_conn_close(c); }

static void conn_on_shutdown(uv_shutdown_t *sr, int status) {
  http_conn *c = sr->data;
  if (status < 0 || uv_is_closing((uv_handle_t *)&c->tcp)) {
    http_conn_close(c);
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
  http_conn_set_timer(c, HTTP_TIMER_NONE, 0);
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, conn_on_shutdown) < 0)
    http_conn_close(c);
}

void http_conn_request_done(http_conn *c) {
  llorch_http_request *req = c->req;
  c->req = NULL;
  if (req != NULL) http_req_free(req);
  if (c->fake) return;
  if (c->close_after || c->srv->shutting_down) {
    conn_close_gracefully(c);
    return;
  }
  http_conn_process(c);
}

static void conn_on_timer(uv_timer_t *t) {
  http_conn *c = t->data;
  switch (c->timer_mode) {
    case HTTP_TIMER_HEADER:
      c->timer_mode = HTTP_TIMER_NONE;
      if (c->in_message) {
        http_conn_fail(c, 408, "request headers not received in time");
      } else {
        http_conn_close(c);
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
      http_conn_fail(c, 408, msg);
      break;
    }
    case HTTP_TIMER_IDLE:
      http_conn_close(c);
      break;
    case HTTP_TIMER_SSE:
      if (c->req != NULL && c->req->state == HTTP_REQ_STREAMING)
        llorch_http_response_write(c->req, ": keep-alive\n\n", 14);
      break;
    case HTTP_TIMER_LINGER:
      http_conn_close(c);
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
    if (n < 0) http_conn_close(c);
    return;
  }
  if (n < 0) {
    /* EOF or reset. A request with the handler is aborted (see conn_drop_request). */
    http_conn_close(c);
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
    http_conn_fail(c, 408, msg);
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
  http_conn_process(c);
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
    http_conn_close(victim[k]);
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

void http_srv_on_connection(uv_stream_t *listener, int status) {
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
    http_conn_close(c);
    return;
  }
  srv->stats.connections_accepted++;
  if (srv->shutting_down) {
    http_conn_close(c);
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
    http_conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_start(c);
  http_conn_set_timer(c, HTTP_TIMER_HEADER, srv->cfg.header_timeout_ms);
  conn_read_start(c);
}
