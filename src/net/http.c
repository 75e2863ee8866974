/*
 * HTTP/1.1 server: configuration, request objects, the server (listen,
 * accept, graceful shutdown) and parsing without sockets. A connection's
 * life is in http_conn.c, responses in http_response.c; http-impl.h says how
 * they fit together.
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

llorch_http_request *http_req_new(http_conn *c) {
  llorch_http_request *req = calloc(1, sizeof *req);
  if (req == NULL) return NULL;
  req->srv = c->srv;
  req->conn = c;
  snprintf(req->peer, sizeof req->peer, "%s", c->peer);
  return req;
}

void http_req_free(llorch_http_request *req) {
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
  http_parser_settings_init();
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
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, srv->cfg.backlog, http_srv_on_connection);
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
  http_srv_check_drained(srv);
  http_srv_free_if_done(srv);
}

void http_srv_free_if_done(llorch_http_server *srv) {
  if (srv->freeing && srv->handles_open == 0 && srv->n_conns == 0) free(srv);
}

void http_srv_check_drained(llorch_http_server *srv) {
  if (!srv->shutting_down || srv->drained_called || srv->n_conns > 0) return;
  if (srv->listener_inited && !uv_is_closing((uv_handle_t *)&srv->listener)) return;
  srv->drained_called = true;
  uv_timer_stop(&srv->grace_timer);
  if (srv->drained != NULL) {
    /*
     * The callback may free the server; http_srv_free_if_done cannot free it
     * underneath us because the grace timer stays open until then.
     */
    srv->drained(srv, srv->forced, srv->drained_user);
  }
}

static void srv_close_all(llorch_http_server *srv, bool count_forced) {
  for (http_conn *c = srv->conns; c != NULL; c = c->next) {
    if (uv_is_closing((uv_handle_t *)&c->tcp)) continue;
    if (count_forced && c->req != NULL) srv->forced++;
    http_conn_close(c);
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
    if (c->req == NULL || c->req->state == HTTP_REQ_PARSING) http_conn_close(c);
    else c->close_after = true;
  }
  uv_timer_start(&srv->grace_timer, srv_on_grace_timer, grace_ms, 0);
  if (!srv->listener_inited) http_srv_check_drained(srv);
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
  http_parser_start(&c);
  int result;
  if (llorch_buf_append(&c.pending, data, len) < 0) {
    result = -500;
    goto done;
  }
  /* Fake dispatch frees each request at once, so one pass parses everything. */
  http_conn_process(&c);
  result = c.fake_status ? -c.fake_status : c.fake_count;
done:
  if (c.req != NULL) http_req_free(c.req);
  llorch_buf_free(&c.pending);
  return result;
}
