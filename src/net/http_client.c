/*
 * HTTP/1.1 client on the loop thread.
 *
 * A call goes: parse URL -> reuse an idle pooled connection to host:port, or
 * resolve (uv_getaddrinfo) and connect to each address in turn -> write the
 * request -> parse the response with llhttp, handing headers, body pieces or
 * SSE events to the caller -> on_done once -> the connection goes back to
 * the pool when the response ended cleanly with keep-alive.
 *
 * Ownership: a connection (socket, timer, write buffer) is owned by the
 * client and freed in its close callback; a call is owned by its caller's
 * callbacks and freed after on_done returns, but not while one of its
 * callbacks is still on the stack (busy) or a name lookup is in the
 * threadpool (resolving): those finish first and free it then. That is what
 * makes cancelling from inside on_data safe.
 *
 * A connection goes back to the pool only when both its response is complete
 * and its request's write has been called back, whichever comes last. The
 * response can come first: a server may answer before it has read the whole
 * body, and under load libuv runs write callbacks in a later loop phase than
 * the read that completes the response. Handing the connection to the next
 * call then would queue write_req again while libuv still holds it (and
 * overwrite wbuf under the bytes being sent), which corrupted libuv's write
 * queue and crashed the orchestrator at thousands of concurrent streams.
 *
 * A request on a reused connection that the server had already closed (the
 * classic keep-alive race) fails with no response byte received; when its
 * method is idempotent it is retried once on a fresh connection.
 */
#include "llorch/http_client.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "llorch/http.h"
#include "llorch/log.h"
#include "http_client-impl.h"
#include "llorch/buf.h"

#define CLIENT_READ_CHUNK 65536

typedef struct client_conn client_conn;

typedef enum conn_timer_mode {
  CONN_TIMER_NONE = 0,
  CONN_TIMER_CONNECT,  /* resolve + connect deadline */
  CONN_TIMER_READ,     /* silence while waiting for the response */
  CONN_TIMER_POOL,     /* idle in the pool, or done and waiting for its write */
} conn_timer_mode;

struct client_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_connect_t connect_req;
  uv_write_t write_req;       /* at most one in flight (writing) */
  llorch_http_client *client;
  client_conn *prev, *next;   /* client->conns (all) */
  llorch_http_call *call;     /* NULL when pooled or abandoned */
  llhttp_t parser;
  llorch_buf wbuf;               /* the request being written; untouched while writing */
  char rbuf[CLIENT_READ_CHUNK];
  char key[300];              /* "host:port" */
  conn_timer_mode timer_mode;
  int handles_open;
  bool connected;
  bool pooled;
  bool reused;                /* served a call before */
  bool closing;
  bool reading;
  bool writing;               /* write_req queued in libuv, its callback not run yet */
  bool pool_after_write;      /* response done with keep-alive; pool once the write ends */
};

struct llorch_http_call {
  llorch_http_client *client;
  llorch_http_call *prev, *next;  /* client->calls */
  client_conn *conn;
  llorch_http_call_opts opts;     /* strings point into the copies below */
  char *method;
  char *host;
  int port;
  char target[300];               /* "host:port" for messages and pool keys */
  llorch_buf request;                /* serialized request */
  uv_getaddrinfo_t gai;
  struct addrinfo *addrs;
  struct addrinfo *next_addr;
  uint64_t connect_deadline;      /* uv_now ms */
  unsigned connect_timeout_ms;
  unsigned read_timeout_ms;
  int status;
  llorch_buf hdr;                    /* response header names/values, NUL-separated */
  size_t *hoff;                   /* (n_headers, 2) name/value offsets into hdr */
  size_t n_headers, cap_headers;
  size_t cur_name, cur_value;
  bool in_field;
  size_t header_bytes;
  llorch_buf body;                   /* buffered body */
  llorch_sse_parser *sse;
  bool streaming_sse;
  bool head;
  bool got_bytes;                 /* any response byte seen on this attempt */
  bool complete;
  bool keep_alive;
  bool resolving;
  bool done;
  int busy;
  int retries;
  int fail_err;                   /* error found inside a parser callback */
  char fail_msg[400];
};

struct llorch_http_client {
  uv_loop_t *loop;
  llorch_http_client_config cfg;
  client_conn *conns;
  llorch_http_call *calls;
  unsigned n_conns;
  unsigned n_idle;
  unsigned long connects;
  bool freeing;
};

static llhttp_settings_t client_settings;
static bool client_settings_ready;

static void call_fail(llorch_http_call *call, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_connect_next(llorch_http_call *call);
static void call_begin_connect(llorch_http_call *call);
static void conn_close(client_conn *c);

/* ---- configuration ---- */

void llorch_http_client_config_default(llorch_http_client_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->connect_timeout_ms = 5000;
  cfg->read_timeout_ms = 60000;
  cfg->max_idle_per_host = 4;
  cfg->idle_keep_ms = 30000;
  cfg->max_header_bytes = 65536;
  cfg->max_body_bytes = 64u << 20;
}

int llorch_http_client_init(llorch_http_client **out, uv_loop_t *loop,
                            const llorch_http_client_config *cfg) {
  llorch_http_client *c = calloc(1, sizeof *c);
  if (c == NULL) return LLORCH_ENOMEM;
  c->loop = loop;
  llorch_net_ignore_sigpipe();
  if (cfg) c->cfg = *cfg;
  else llorch_http_client_config_default(&c->cfg);
  *out = c;
  return 0;
}

unsigned llorch_http_client_idle_count(const llorch_http_client *c) { return c->n_idle; }
unsigned long llorch_http_client_connects(const llorch_http_client *c) { return c->connects; }

/* ---- call bookkeeping ---- */

static void call_free(llorch_http_call *call) {
  if (call->addrs) uv_freeaddrinfo(call->addrs);
  llorch_sse_parser_free(call->sse);
  llorch_buf_free(&call->request);
  llorch_buf_free(&call->hdr);
  llorch_buf_free(&call->body);
  free(call->hoff);
  free(call->method);
  free(call->host);
  free(call);
}

static void call_free_if_idle(llorch_http_call *call) {
  if (call->done && call->busy == 0 && !call->resolving) call_free(call);
}

/* Ends the call: detaches its connection (the caller decided its fate), runs on_done. */
static void call_finish(llorch_http_call *call, int err, const char *msg) {
  if (call->done) return;
  call->done = true;
  llorch_http_client *cl = call->client;
  if (call->prev) call->prev->next = call->next;
  else cl->calls = call->next;
  if (call->next) call->next->prev = call->prev;
  if (call->conn != NULL) {
    client_conn *c = call->conn;
    call->conn = NULL;
    c->call = NULL;
    conn_close(c);
  }
  if (call->opts.on_done) {
    call->busy++;
    call->opts.on_done(call, err, err ? msg : NULL, call->opts.user);
    call->busy--;
  }
  call_free_if_idle(call);
}

static void call_fail(llorch_http_call *call, int err, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  call_finish(call, err, msg);
}

/* Maps a libuv connect/read error to ours. */
static int map_uv_error(int uverr) {
  switch (uverr) {
    case UV_ECONNREFUSED: return LLORCH_ECONNREFUSED;
    case UV_EHOSTUNREACH:
    case UV_ENETUNREACH:
    case UV_EHOSTDOWN:
    case UV_ENETDOWN:
    case UV_EADDRNOTAVAIL: return LLORCH_EUNREACH;
    case UV_ETIMEDOUT: return LLORCH_ETIMEDOUT;
    case UV_EOF:
    case UV_ECONNRESET:
    case UV_EPIPE:
    case UV_ECONNABORTED: return LLORCH_ECLOSED;
    case UV_ECANCELED: return LLORCH_ECANCELED;
  }
  return LLORCH_EIO;
}

/* ---- connections ---- */

static void conn_on_handle_closed(uv_handle_t *h) {
  client_conn *c = h->data;
  if (--c->handles_open > 0) return;
  llorch_http_client *cl = c->client;
  if (c->prev) c->prev->next = c->next;
  else cl->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  cl->n_conns--;
  llorch_buf_free(&c->wbuf);
  free(c);
  if (cl->freeing && cl->n_conns == 0) free(cl);
}

static void conn_close(client_conn *c) {
  if (c->closing) return;
  c->closing = true;
  if (c->pooled) {
    c->pooled = false;
    c->client->n_idle--;
  }
  uv_close((uv_handle_t *)&c->tcp, conn_on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
}

static void conn_on_timer(uv_timer_t *t);

static void conn_set_timer(client_conn *c, conn_timer_mode mode, uint64_t ms) {
  c->timer_mode = mode;
  if (mode == CONN_TIMER_NONE) {
    uv_timer_stop(&c->timer);
    return;
  }
  uv_timer_start(&c->timer, conn_on_timer, ms ? ms : 1, 0);
}

static int on_resp_message_begin(llhttp_t *p);
static int on_resp_header_field(llhttp_t *p, const char *at, size_t len);
static int on_resp_header_field_complete(llhttp_t *p);
static int on_resp_header_value(llhttp_t *p, const char *at, size_t len);
static int on_resp_header_value_complete(llhttp_t *p);
static int on_resp_headers_complete(llhttp_t *p);
static int on_resp_body(llhttp_t *p, const char *at, size_t len);
static int on_resp_message_complete(llhttp_t *p);

static void client_settings_init(void) {
  if (client_settings_ready) return;
  llhttp_settings_init(&client_settings);
  client_settings.on_message_begin = on_resp_message_begin;
  client_settings.on_header_field = on_resp_header_field;
  client_settings.on_header_field_complete = on_resp_header_field_complete;
  client_settings.on_header_value = on_resp_header_value;
  client_settings.on_header_value_complete = on_resp_header_value_complete;
  client_settings.on_headers_complete = on_resp_headers_complete;
  client_settings.on_body = on_resp_body;
  client_settings.on_message_complete = on_resp_message_complete;
  client_settings_ready = true;
}

static client_conn *conn_new(llorch_http_client *cl, const char *key) {
  client_conn *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->client = cl;
  snprintf(c->key, sizeof c->key, "%s", key);
  uv_tcp_init(cl->loop, &c->tcp);
  uv_timer_init(cl->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  c->next = cl->conns;
  if (cl->conns) cl->conns->prev = c;
  cl->conns = c;
  cl->n_conns++;
  client_settings_init();
  llhttp_init(&c->parser, HTTP_RESPONSE, &client_settings);
  c->parser.data = c;
  return c;
}

/* ---- response parsing ---- */

static llorch_http_call *parser_call(llhttp_t *p) { return ((client_conn *)p->data)->call; }

static int resp_header_limit(llorch_http_call *call, size_t add) {
  call->header_bytes += add;
  if (call->header_bytes <= call->client->cfg.max_header_bytes) return 0;
  call->fail_err = LLORCH_EPROTO;
  snprintf(call->fail_msg, sizeof call->fail_msg, "response headers from %s over %zu bytes",
           call->target, call->client->cfg.max_header_bytes);
  return -1;
}

static int on_resp_message_begin(llhttp_t *p) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL) return -1;
  return 0;
}

static int on_resp_header_field(llhttp_t *p, const char *at, size_t len) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL || resp_header_limit(call, len) < 0) return -1;
  if (!call->in_field) {
    call->in_field = true;
    call->cur_name = call->hdr.len;
  }
  return llorch_buf_append(&call->hdr, at, len) ? -1 : 0;
}

static int on_resp_header_field_complete(llhttp_t *p) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL) return -1;
  if (!call->in_field) call->cur_name = call->hdr.len;
  call->in_field = false;
  if (llorch_buf_append(&call->hdr, "", 1)) return -1;
  call->cur_value = call->hdr.len;
  return 0;
}

static int on_resp_header_value(llhttp_t *p, const char *at, size_t len) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL || resp_header_limit(call, len) < 0) return -1;
  return llorch_buf_append(&call->hdr, at, len) ? -1 : 0;
}

static int on_resp_header_value_complete(llhttp_t *p) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL || resp_header_limit(call, 4) < 0) return -1;
  while (call->hdr.len > call->cur_value &&
         (call->hdr.data[call->hdr.len - 1] == ' ' || call->hdr.data[call->hdr.len - 1] == '\t'))
    call->hdr.len--;
  if (llorch_buf_append(&call->hdr, "", 1)) return -1;
  if (call->n_headers == call->cap_headers) {
    size_t cap = call->cap_headers ? call->cap_headers * 2 : 16;
    size_t *h = realloc(call->hoff, cap * 2 * sizeof *h);
    if (h == NULL) return -1;
    call->hoff = h;
    call->cap_headers = cap;
  }
  call->hoff[2 * call->n_headers] = call->cur_name;
  call->hoff[2 * call->n_headers + 1] = call->cur_value;
  call->n_headers++;
  return 0;
}

static int call_on_sse_event(const llorch_sse_event *ev, void *user) {
  llorch_http_call *call = user;
  call->busy++;
  call->opts.on_sse(call, ev, call->opts.user);
  call->busy--;
  return call->done ? 1 : 0;
}

static int on_resp_headers_complete(llhttp_t *p) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL) return -1;
  int status = llhttp_get_status_code(p);
  if (status < 200) {
    /* 100 Continue and friends: drop what we kept and wait for the real response. */
    call->n_headers = 0;
    llorch_buf_reset(&call->hdr);
    call->header_bytes = 0;
    return 0;
  }
  call->status = status;
  if (call->opts.on_sse != NULL && status >= 200 && status < 300) {
    if (llorch_sse_parser_init(&call->sse, 0, call_on_sse_event, call) < 0) return -1;
    call->streaming_sse = true;
  }
  if (call->opts.on_headers) {
    call->busy++;
    call->opts.on_headers(call, status, call->opts.user);
    call->busy--;
    if (call->done) return -1;
  }
  return call->head ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL || call->status < 200) return call == NULL ? -1 : 0;
  if (call->streaming_sse) {
    int rc = llorch_sse_parser_feed(call->sse, at, len);
    if (call->done) return -1;
    if (rc < 0) {
      call->fail_err = LLORCH_EPROTO;
      snprintf(call->fail_msg, sizeof call->fail_msg, "bad event stream from %s: %s",
               call->target, llorch_strerror(rc));
      return -1;
    }
    return 0;
  }
  if (call->opts.on_data != NULL && !(call->opts.on_sse != NULL)) {
    call->busy++;
    call->opts.on_data(call, at, len, call->opts.user);
    call->busy--;
    return call->done ? -1 : 0;
  }
  if (len > call->client->cfg.max_body_bytes - call->body.len) {
    call->fail_err = LLORCH_EPROTO;
    snprintf(call->fail_msg, sizeof call->fail_msg, "response body from %s over %zu bytes",
             call->target, call->client->cfg.max_body_bytes);
    return -1;
  }
  return llorch_buf_append(&call->body, at, len) ? -1 : 0;
}

static int on_resp_message_complete(llhttp_t *p) {
  llorch_http_call *call = parser_call(p);
  if (call == NULL) return -1;
  if (call->status < 200) return 0; /* an interim response ended */
  call->complete = true;
  call->keep_alive = llhttp_should_keep_alive(p) != 0;
  return HPE_PAUSED;
}

/* A connection with no call and no write in flight: into the pool if there is room, else closed. */
static void conn_pool_or_close(client_conn *c) {
  llorch_http_client *cl = c->client;
  LLORCH_ASSERT(c->call == NULL && !c->writing && !c->closing);
  c->pool_after_write = false;
  unsigned same_host = 0;
  for (client_conn *o = cl->conns; o != NULL; o = o->next)
    if (o->pooled && strcmp(o->key, c->key) == 0) same_host++;
  if (cl->freeing || same_host >= cl->cfg.max_idle_per_host) {
    conn_close(c);
    return;
  }
  /* Keep reading while pooled so a server-side close is noticed. */
  c->pooled = true;
  cl->n_idle++;
  conn_set_timer(c, CONN_TIMER_POOL, cl->cfg.idle_keep_ms);
}

/*
 * The response is complete: pool the connection (now, or once its write is
 * called back) or close it, then on_done(0).
 */
static void call_complete(llorch_http_call *call) {
  client_conn *c = call->conn;
  llorch_http_client *cl = call->client;
  call->conn = NULL;
  c->call = NULL;
  if (!call->keep_alive || cl->freeing || cl->cfg.max_idle_per_host == 0) {
    conn_close(c);
  } else {
    llhttp_init(&c->parser, HTTP_RESPONSE, &client_settings);
    c->parser.data = c;
    c->reused = true;
    if (c->writing) {
      /*
       * The server answered before our write was called back: park the
       * connection (no call, not pooled) until conn_on_write; the pool timer
       * bounds the wait, and a byte or EOF from the server closes it as it
       * would a pooled one.
       */
      c->pool_after_write = true;
      conn_set_timer(c, CONN_TIMER_POOL, cl->cfg.idle_keep_ms);
    } else {
      conn_pool_or_close(c);
    }
  }
  call_finish(call, 0, NULL);
}

/* The connection failed for its call (read/write error or EOF before the end). */
static void call_conn_failed(llorch_http_call *call, int uverr) {
  client_conn *c = call->conn;
  /*
   * Only idempotent methods: a POST the server read before dying might have
   * been acted on, so that failure goes back to the caller to decide.
   */
  bool idempotent = strcmp(call->method, "GET") == 0 || strcmp(call->method, "HEAD") == 0 ||
                    strcmp(call->method, "DELETE") == 0 || strcmp(call->method, "PUT") == 0 ||
                    strcmp(call->method, "OPTIONS") == 0;
  if (c->reused && !call->got_bytes && call->retries == 0 && idempotent &&
      (uverr == UV_EOF || uverr == UV_ECONNRESET || uverr == UV_EPIPE)) {
    /* The pooled connection was already dead: try once more on a new one. */
    call->retries++;
    call->conn = NULL;
    c->call = NULL;
    conn_close(c);
    call_begin_connect(call);
    return;
  }
  if (uverr == UV_EOF) {
    if (!call->got_bytes)
      call_fail(call, LLORCH_ECLOSED, "%s closed the connection without a response", call->target);
    else
      call_fail(call, LLORCH_ECLOSED, "%s closed the connection mid-response (%s)",
                call->target, call->status ? "in the body" : "in the headers");
    return;
  }
  call_fail(call, map_uv_error(uverr), "connection to %s failed: %s", call->target,
            uv_strerror(uverr));
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  client_conn *c = h->data;
  *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void conn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  client_conn *c = s->data;
  if (c->closing) return;
  llorch_http_call *call = c->call;
  if (call == NULL) {
    /* Pooled (or parked until its write ends): any byte or EOF means the server is done with it. */
    if (n != 0) conn_close(c);
    return;
  }
  if (n == 0) return;
  if (n == UV_EOF && call->got_bytes && call->status >= 200) {
    /* A close-delimited body ends here; anything else was cut short. */
    call->busy++;
    llhttp_errno_t err = llhttp_finish(&c->parser);
    call->busy--;
    if (call->done) {
      call_free_if_idle(call);
      return;
    }
    if ((err == HPE_OK || err == HPE_PAUSED) && call->complete) {
      call->keep_alive = false;
      call_complete(call);
      return;
    }
  }
  if (n < 0) {
    call_conn_failed(call, (int)n);
    return;
  }
  call->got_bytes = true;
  conn_set_timer(c, CONN_TIMER_READ, call->read_timeout_ms);
  call->busy++;
  llhttp_errno_t err = llhttp_execute(&c->parser, buf->base, (size_t)n);
  call->busy--;
  if (call->done) {
    call_free_if_idle(call);
    return;
  }
  if (err == HPE_PAUSED && call->complete) {
    call_complete(call);
    return;
  }
  if (err != HPE_OK) {
    if (call->fail_err)
      call_fail(call, call->fail_err, "%s", call->fail_msg);
    else
      call_fail(call, LLORCH_EPROTO, "bad HTTP response from %s: %s", call->target,
                llhttp_get_error_reason(&c->parser));
  }
}

static void conn_on_write(uv_write_t *w, int status) {
  client_conn *c = w->data;
  c->writing = false;
  if (c->closing) return;
  if (c->call != NULL) {
    if (status < 0) call_conn_failed(c->call, status);
    return;
  }
  /* The call already had its response (call_complete parked the connection). */
  if (status < 0 || !c->pool_after_write) conn_close(c);
  else conn_pool_or_close(c);
}

/* Writes the call's request on its (connected) connection and waits for the answer. */
static void call_send(llorch_http_call *call) {
  client_conn *c = call->conn;
  /* Only pooled or freshly connected connections get here, never one still writing. */
  LLORCH_ASSERT(!c->writing);
  llorch_buf_reset(&c->wbuf);
  if (llorch_buf_append(&c->wbuf, call->request.data, call->request.len) < 0) {
    call_fail(call, LLORCH_ENOMEM, "out of memory sending to %s", call->target);
    return;
  }
  uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
  c->write_req.data = c;
  int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
  if (rc < 0) {
    call_conn_failed(call, rc);
    return;
  }
  c->writing = true;
  conn_set_timer(c, CONN_TIMER_READ, call->read_timeout_ms);
  if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) == 0)
    c->reading = true;
}

void llorch_http_call_pause(llorch_http_call *call, bool paused) {
  client_conn *c = call ? call->conn : NULL;
  if (c == NULL || call->done || c->closing || !c->connected) return;
  if (paused && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    conn_set_timer(c, CONN_TIMER_NONE, 0);
  } else if (!paused && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) == 0) c->reading = true;
    conn_set_timer(c, CONN_TIMER_READ, call->read_timeout_ms);
  }
}

static void conn_on_timer(uv_timer_t *t) {
  client_conn *c = t->data;
  llorch_http_call *call = c->call;
  conn_timer_mode mode = c->timer_mode;
  c->timer_mode = CONN_TIMER_NONE;
  if (mode == CONN_TIMER_POOL || call == NULL) {
    conn_close(c);
    return;
  }
  if (mode == CONN_TIMER_CONNECT && call->resolving)
    call_fail(call, LLORCH_ETIMEDOUT, "resolving '%s' (for %s) timed out after %u ms",
              call->host, call->target, call->connect_timeout_ms);
  else if (mode == CONN_TIMER_CONNECT)
    call_fail(call, LLORCH_ETIMEDOUT, "connecting to %s timed out after %u ms", call->target,
              call->connect_timeout_ms);
  else if (mode == CONN_TIMER_READ)
    call_fail(call, LLORCH_ETIMEDOUT, "no response data from %s for %u ms", call->target,
              call->read_timeout_ms);
}

static void conn_on_connect(uv_connect_t *req, int status) {
  client_conn *c = req->data;
  if (c->closing || status == UV_ECANCELED) return;
  llorch_http_call *call = c->call;
  if (call == NULL) {
    conn_close(c);
    return;
  }
  if (status < 0) {
    if (call->next_addr != NULL) {
      /* A failed socket cannot be reused: close it and try the next address. */
      call->conn = NULL;
      c->call = NULL;
      conn_close(c);
      call_connect_next(call);
      return;
    }
    int err = map_uv_error(status);
    if (err == LLORCH_ECONNREFUSED)
      call_fail(call, err, "connection refused by %s", call->target);
    else if (err == LLORCH_EUNREACH)
      call_fail(call, err, "%s is unreachable: %s", call->target, uv_strerror(status));
    else
      call_fail(call, err, "cannot connect to %s: %s", call->target, uv_strerror(status));
    return;
  }
  c->connected = true;
  uv_tcp_nodelay(&c->tcp, 1);
  call_send(call);
}

/* A fresh connection for the call, its timer set to what is left of the connect deadline. */
static client_conn *call_attach_new_conn(llorch_http_call *call) {
  llorch_http_client *cl = call->client;
  client_conn *c = conn_new(cl, call->target);
  if (c == NULL) {
    call_fail(call, LLORCH_ENOMEM, "out of memory connecting to %s", call->target);
    return NULL;
  }
  call->conn = c;
  c->call = call;
  uint64_t now = uv_now(cl->loop);
  conn_set_timer(c, CONN_TIMER_CONNECT,
                 call->connect_deadline > now ? call->connect_deadline - now : 1);
  return c;
}

/* Connects to call->next_addr, on the call's unused connection or a new one. */
static void call_connect_next(llorch_http_call *call) {
  llorch_http_client *cl = call->client;
  struct addrinfo *ai = call->next_addr;
  call->next_addr = ai->ai_next;
  client_conn *c = call->conn != NULL ? call->conn : call_attach_new_conn(call);
  if (c == NULL) return;
  cl->connects++;
  c->connect_req.data = c;
  int rc = uv_tcp_connect(&c->connect_req, &c->tcp, ai->ai_addr, conn_on_connect);
  if (rc < 0) {
    if (call->next_addr != NULL) {
      call->conn = NULL;
      c->call = NULL;
      conn_close(c);
      call_connect_next(call);
      return;
    }
    call_fail(call, map_uv_error(rc), "cannot connect to %s: %s", call->target, uv_strerror(rc));
  }
}

static void call_on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res) {
  llorch_http_call *call = gai->data;
  call->resolving = false;
  if (call->done) {
    if (res) uv_freeaddrinfo(res);
    call_free_if_idle(call);
    return;
  }
  if (status < 0 || res == NULL) {
    if (res) uv_freeaddrinfo(res);
    call_fail(call, status == UV_ECANCELED ? LLORCH_ECANCELED : LLORCH_ERESOLVE,
              "cannot resolve '%s' (for %s): %s", call->host, call->target,
              uv_strerror(status));
    return;
  }
  call->addrs = res;
  call->next_addr = res;
  call_connect_next(call);
}

/* Takes an idle pooled connection to the call's host:port, or resolves and connects. */
static void call_begin_connect(llorch_http_call *call) {
  llorch_http_client *cl = call->client;
  call->got_bytes = false;
  call->complete = false;
  for (client_conn *c = cl->conns; c != NULL; c = c->next) {
    if (c->pooled && !c->closing && !c->writing && strcmp(c->key, call->target) == 0) {
      c->pooled = false;
      cl->n_idle--;
      c->call = call;
      call->conn = c;
      conn_set_timer(c, CONN_TIMER_NONE, 0);
      call_send(call);
      return;
    }
  }
  if (call->addrs) {
    uv_freeaddrinfo(call->addrs);
    call->addrs = call->next_addr = NULL;
  }
  call->connect_deadline = uv_now(cl->loop) + call->connect_timeout_ms;
  /* The connection (and its timer) exists from here, so the deadline covers the lookup too. */
  if (call_attach_new_conn(call) == NULL) return;
  char port[8];
  snprintf(port, sizeof port, "%d", call->port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  call->gai.data = call;
  call->resolving = true;
  int rc = uv_getaddrinfo(cl->loop, &call->gai, call_on_resolved, call->host, port, &hints);
  if (rc < 0) {
    call->resolving = false;
    call_fail(call, LLORCH_ERESOLVE, "cannot resolve '%s' (for %s): %s", call->host,
              call->target, uv_strerror(rc));
  }
}

/* ---- starting and cancelling ---- */

static bool token_ok(const char *s) {
  if (s == NULL || *s == '\0') return false;
  for (; *s; s++)
    if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s) != NULL) return false;
  return true;
}

/* Splits "http://host[:port]/path" into host, port, path. */
static int url_split(const char *url, char **host, int *port, const char **path,
                     llorch_errmsg *em) {
  if (url == NULL || strncasecmp(url, "http://", 7) != 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "URL '%s' must start with http://",
                             url ? url : "(null)");
  const char *h = url + 7;
  const char *hend;
  const char *rest;
  if (*h == '[') {
    hend = strchr(h, ']');
    if (hend == NULL)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "URL '%s': unclosed '[' in host", url);
    rest = hend + 1;
    h++;
  } else {
    hend = h + strcspn(h, ":/?#");
    rest = hend;
  }
  if (hend == h) return llorch_errmsg_set(em, LLORCH_EINVAL, "URL '%s' has no host", url);
  long p = 80;
  if (*rest == ':') {
    char *end;
    p = strtol(rest + 1, &end, 10);
    if (end == rest + 1 || p < 1 || p > 65535 || (*end != '\0' && *end != '/' && *end != '?'))
      return llorch_errmsg_set(em, LLORCH_EINVAL, "URL '%s': port must be 1..65535", url);
    rest = end;
  }
  if (*rest != '\0' && *rest != '/' && *rest != '?')
    return llorch_errmsg_set(em, LLORCH_EINVAL, "URL '%s': unexpected '%c' after host", url,
                             *rest);
  *host = strndup(h, (size_t)(hend - h));
  if (*host == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  *port = (int)p;
  *path = rest;
  return 0;
}

int llorch_http_call_start(llorch_http_client *cl, const llorch_http_call_opts *opts,
                           llorch_http_call **out, llorch_errmsg *em) {
  if (out) *out = NULL;
  if (cl->freeing) return llorch_errmsg_set(em, LLORCH_ESTATE, "client is shutting down");
  const char *method = opts->method ? opts->method : "GET";
  if (!token_ok(method))
    return llorch_errmsg_set(em, LLORCH_EINVAL, "bad HTTP method '%s'", method);
  llorch_http_call *call = calloc(1, sizeof *call);
  if (call == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  call->client = cl;
  call->opts = *opts;
  call->opts.url = NULL;
  call->opts.headers = NULL;
  call->opts.body = NULL;
  const char *path = "";
  int rc = url_split(opts->url, &call->host, &call->port, &path, em);
  if (rc < 0) goto fail;
  call->method = strdup(method);
  if (call->method == NULL) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
    goto fail;
  }
  call->head = strcmp(method, "HEAD") == 0;
  bool v6 = strchr(call->host, ':') != NULL;
  snprintf(call->target, sizeof call->target, v6 ? "[%s]:%d" : "%s:%d", call->host, call->port);
  call->connect_timeout_ms =
      opts->connect_timeout_ms ? opts->connect_timeout_ms : cl->cfg.connect_timeout_ms;
  call->read_timeout_ms = opts->read_timeout_ms ? opts->read_timeout_ms : cl->cfg.read_timeout_ms;

  /* Serialize the request once; a retry sends the same bytes. */
  llorch_buf *r = &call->request;
  int bad = 0;
  bad |= llorch_buf_append_str(r, method);
  bad |= llorch_buf_append(r, " ", 1);
  bad |= llorch_buf_append_str(r, *path == '\0' ? "/" : (*path == '?' ? "/" : ""));
  bad |= llorch_buf_append(r, path, strcspn(path, "#"));
  bad |= llorch_buf_append_str(r, " HTTP/1.1\r\nHost: ");
  bad |= llorch_buf_append_str(r, call->target);
  bad |= llorch_buf_append_str(r, "\r\nUser-Agent: llorch/" LLORCH_VERSION "\r\n");
  bool has_accept = false;
  for (size_t i = 0; opts->headers != NULL && opts->headers[i] != NULL; i += 2) {
    const char *name = opts->headers[i], *value = opts->headers[i + 1];
    if (value == NULL || !token_ok(name) || strpbrk(value, "\r\n") != NULL) {
      rc = llorch_errmsg_set(em, LLORCH_EINVAL, "bad request header '%s'", name);
      goto fail;
    }
    if (strcasecmp(name, "Accept") == 0) has_accept = true;
    bad |= llorch_buf_append_str(r, name);
    bad |= llorch_buf_append(r, ": ", 2);
    bad |= llorch_buf_append_str(r, value);
    bad |= llorch_buf_append(r, "\r\n", 2);
  }
  if (!has_accept && opts->on_sse != NULL)
    bad |= llorch_buf_append_str(r, "Accept: text/event-stream\r\n");
  if (opts->body != NULL) {
    char cl_line[64];
    snprintf(cl_line, sizeof cl_line, "Content-Length: %zu\r\n", opts->body_len);
    bad |= llorch_buf_append_str(r, cl_line);
  }
  bad |= llorch_buf_append(r, "\r\n", 2);
  if (opts->body != NULL) bad |= llorch_buf_append(r, opts->body, opts->body_len);
  if (bad) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
    goto fail;
  }

  call->next = cl->calls;
  if (cl->calls) cl->calls->prev = call;
  cl->calls = call;
  if (out) *out = call;
  call_begin_connect(call);
  return 0;

fail:
  call_free(call);
  return rc;
}

void llorch_http_call_cancel(llorch_http_call *call) {
  if (call == NULL || call->done) return;
  if (call->resolving) uv_cancel((uv_req_t *)&call->gai);
  call_fail(call, LLORCH_ECANCELED, "request to %s canceled", call->target);
}

int llorch_http_call_status(const llorch_http_call *call) { return call->status; }

const char *llorch_http_call_header(const llorch_http_call *call, const char *name) {
  for (size_t i = 0; i < call->n_headers; i++)
    if (strcasecmp(call->hdr.data + call->hoff[2 * i], name) == 0)
      return call->hdr.data + call->hoff[2 * i + 1];
  return NULL;
}

const char *llorch_http_call_body(const llorch_http_call *call, size_t *len) {
  if (len) *len = call->body.len;
  return call->body.data ? call->body.data : "";
}

const char *llorch_http_call_target(const llorch_http_call *call) { return call->target; }

void llorch_http_client_free(llorch_http_client *cl) {
  if (cl == NULL) return;
  cl->freeing = true;
  while (cl->calls != NULL) llorch_http_call_cancel(cl->calls);
  for (client_conn *c = cl->conns; c != NULL; c = c->next) conn_close(c);
  if (cl->n_conns == 0) free(cl);
}

/* ---- parsing without sockets (tests, fuzzing) ---- */

typedef struct parse_only {
  void (*on_event)(const llorch_sse_event *ev, void *user);
  void *user;
} parse_only;

static void parse_only_on_sse(llorch_http_call *call, const llorch_sse_event *ev, void *user) {
  parse_only *po = user;
  if (po->on_event) po->on_event(ev, po->user);
}

int llorch_http_client_parse_response(const void *data, size_t len, bool sse, bool head,
                                      void (*on_event)(const llorch_sse_event *ev, void *user),
                                      void *user) {
  llorch_http_client cl;
  memset(&cl, 0, sizeof cl);
  llorch_http_client_config_default(&cl.cfg);
  cl.cfg.max_header_bytes = 8192;
  cl.cfg.max_body_bytes = 1u << 20;
  client_conn *c = calloc(1, sizeof *c);
  llorch_http_call *call = calloc(1, sizeof *call);
  int result = LLORCH_ENOMEM;
  if (c == NULL || call == NULL) goto done;
  parse_only po = {on_event, user};
  call->client = &cl;
  call->head = head;
  snprintf(call->target, sizeof call->target, "buffer:0");
  if (sse) call->opts.on_sse = parse_only_on_sse;
  call->opts.user = &po;
  c->call = call;
  call->conn = c;
  client_settings_init();
  llhttp_init(&c->parser, HTTP_RESPONSE, &client_settings);
  c->parser.data = c;
  llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
  bool cut = false;
  if (err == HPE_OK && !call->complete && call->status >= 200) {
    /* The peer closed: a close-delimited body ends here, anything else was cut short. */
    err = llhttp_finish(&c->parser);
    cut = err != HPE_OK && err != HPE_PAUSED;
  }
  if (call->complete) result = call->status;
  else if (call->fail_err) result = call->fail_err;
  else if (cut) result = LLORCH_ECLOSED;
  else if (err != HPE_OK && err != HPE_PAUSED) result = LLORCH_EPROTO;
  else result = 0;
done:
  if (call != NULL) {
    llorch_sse_parser_free(call->sse);
    llorch_buf_free(&call->hdr);
    llorch_buf_free(&call->body);
    free(call->hoff);
    free(call);
  }
  free(c);
  return result;
}
