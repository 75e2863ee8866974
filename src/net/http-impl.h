/*
 * The HTTP/1.1 server's internals (libuv for sockets and timers, llhttp for
 * parsing), shared by its three files:
 *   http.c           configuration, request objects, the server (listen, accept,
 *                    graceful shutdown), parsing without sockets;
 *   http_conn.c      a connection: llhttp callbacks, the parse loop, the timer,
 *                    lifecycle, connection caps;
 *   http_response.c  writing: status and headers, whole bodies, chunked and SSE
 *                    responses, the errors the server answers itself.
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
#ifndef LLORCH_NET_HTTP_IMPL_H
#define LLORCH_NET_HTTP_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>
#include <uv.h>

#include "llorch/buf.h"
#include "llorch/http.h"
#include "llorch/metrics.h"
#include "llorch/reqid.h"

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

/* ---- across the three files ---- */

/* http.c */
llorch_http_request *http_req_new(http_conn *c);
void http_req_free(llorch_http_request *req);
void http_srv_check_drained(llorch_http_server *srv);
void http_srv_free_if_done(llorch_http_server *srv);

/* http_conn.c */
void http_parser_settings_init(void);
/* llhttp_init for c's parser with the server's callbacks. */
void http_parser_start(http_conn *c);
void http_conn_process(http_conn *c);
void http_conn_close(http_conn *c);
void http_conn_abort(http_conn *c);
void http_conn_request_done(http_conn *c);
void http_conn_set_timer(http_conn *c, http_timer_mode mode, unsigned ms);
void http_srv_on_connection(uv_stream_t *listener, int status);

/* http_response.c */
int http_conn_write(http_conn *c, const char *data, size_t len);
void http_conn_fail(http_conn *c, int status, const char *message);

#endif /* LLORCH_NET_HTTP_IMPL_H */
