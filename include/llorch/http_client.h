/*
 * HTTP/1.1 client on the same libuv loop as the server (no threads).
 *
 * A call is one request: the URL's host is resolved with uv_getaddrinfo
 * (the system resolver, so /etc/hosts and mDNS ".local" names work where the
 * host supports them), each address is tried in turn, the request is
 * written, and the response streams back through callbacks: headers, then
 * body pieces (raw, or parsed as Server-Sent Events), then exactly one
 * on_done. Connections that end cleanly with keep-alive go back to a small
 * pool per host:port and are reused by the next call there; one whose
 * request is still being written when its response ends (a server that
 * answers early) joins the pool only once that write is done.
 *
 * Errors reach on_done as a code plus a one-line message naming host:port:
 *   LLORCH_ECONNREFUSED  nothing listens there
 *   LLORCH_EUNREACH      no route to the host / network
 *   LLORCH_ETIMEDOUT     connect_timeout_ms or read_timeout_ms ran out
 *   LLORCH_ERESOLVE      the name could not be resolved
 *   LLORCH_ECLOSED       the peer closed before the response was complete
 *   LLORCH_EPROTO        the peer's response was not valid HTTP, or an SSE
 *                        event was too large
 *   LLORCH_ECANCELED     llorch_http_call_cancel or llorch_http_client_free
 * A non-2xx status is not an error: on_done gets 0 and the status is in
 * llorch_http_call_status.
 *
 * Call every function from the loop thread.
 */
#ifndef LLORCH_HTTP_CLIENT_H
#define LLORCH_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "llorch/error.h"
#include "llorch/sse.h"

typedef struct llorch_http_client llorch_http_client;
typedef struct llorch_http_call llorch_http_call;

typedef struct llorch_http_client_config {
  unsigned connect_timeout_ms;  /* resolve + connect; default 5000 */
  unsigned read_timeout_ms;     /* longest silence while waiting for response bytes; default 60000 */
  unsigned max_idle_per_host;   /* pooled keep-alive connections per host:port; default 4 */
  unsigned idle_keep_ms;        /* a pooled connection is closed after this; default 30000 */
  size_t max_header_bytes;      /* response headers; default 65536 */
  size_t max_body_bytes;        /* buffered bodies only (no on_data/on_sse); default 64 MiB */
} llorch_http_client_config;

void llorch_http_client_config_default(llorch_http_client_config *cfg);

/* cfg is copied (NULL = defaults). Returns 0 or LLORCH_ENOMEM. */
int llorch_http_client_init(llorch_http_client **out, uv_loop_t *loop,
                            const llorch_http_client_config *cfg);

/*
 * Cancels every call in flight (their on_done runs with LLORCH_ECANCELED
 * before this returns), closes pooled connections, and frees the client once
 * its handles have closed (the loop must run afterwards).
 */
void llorch_http_client_free(llorch_http_client *c);

/* ---- calls ---- */

typedef struct llorch_http_call_opts {
  const char *method;          /* "GET", "POST", "DELETE", ...; NULL = "GET" */
  const char *url;             /* "http://host[:port]/path?query"; IPv6 as [::1] */
  const char *const *headers;  /* NULL or name, value, name, value, ..., NULL */
  const void *body;            /* NULL = no body */
  size_t body_len;             /* bytes; Content-Length is added when body != NULL */
  unsigned connect_timeout_ms; /* 0 = the client's */
  unsigned read_timeout_ms;    /* 0 = the client's */

  /* Response headers are in (status and llorch_http_call_header usable). May be NULL. */
  void (*on_headers)(llorch_http_call *call, int status, void *user);
  /* A piece of the body (de-chunked). When NULL and on_sse is NULL, the body
   * is buffered and readable with llorch_http_call_body in on_done. */
  void (*on_data)(llorch_http_call *call, const char *data, size_t len, void *user);
  /* When set, the body is parsed as text/event-stream, one call per event
   * (only for 2xx responses; other bodies are buffered). */
  void (*on_sse)(llorch_http_call *call, const llorch_sse_event *ev, void *user);
  /*
   * Exactly once, last. err is 0 (complete response) or a negative code with
   * errmsg (one line naming host:port). After it returns, call is freed.
   */
  void (*on_done)(llorch_http_call *call, int err, const char *errmsg, void *user);
  void *user;
} llorch_http_call_opts;

/*
 * Starts a call. opts and the strings/body it points to are copied. Returns 0
 * with *out (may be NULL if the caller does not need the handle), or
 * LLORCH_EINVAL (bad URL/method/header, with em) and then on_done is never
 * called.
 */
int llorch_http_call_start(llorch_http_client *c, const llorch_http_call_opts *opts,
                           llorch_http_call **out, llorch_errmsg *em);

/*
 * Cancels a call in flight: its connection is closed (never reused) and
 * on_done runs with LLORCH_ECANCELED before this returns. Safe from inside
 * the call's own on_headers/on_data/on_sse. Only for a live call: once
 * on_done has run the call is freed, so drop the pointer in on_done.
 */
void llorch_http_call_cancel(llorch_http_call *call);

/*
 * Stops (paused true) or restarts reading the call's response, so a consumer
 * that cannot keep up (a disk write in flight, a bandwidth bound) pushes back
 * on the sender through TCP instead of buffering. The rest of a read already
 * taken from the socket is still delivered to on_data. While paused the read
 * timeout does not run. Safe from inside on_data; no effect before the call
 * has a connection or after on_done.
 */
void llorch_http_call_pause(llorch_http_call *call, bool paused);

/* The response status (0 before headers). */
int llorch_http_call_status(const llorch_http_call *call);
/* A response header (case-insensitive), or NULL. Valid from on_headers to on_done. */
const char *llorch_http_call_header(const llorch_http_call *call, const char *name);
/* The buffered body (NUL-terminated), "" if none or streamed. Valid in on_done. */
const char *llorch_http_call_body(const llorch_http_call *call, size_t *len);
/* "host:port" of the call. */
const char *llorch_http_call_target(const llorch_http_call *call);

/* Pooled idle connections right now (for tests). */
unsigned llorch_http_client_idle_count(const llorch_http_client *c);
/* Connections opened so far (for tests of reuse). */
unsigned long llorch_http_client_connects(const llorch_http_client *c);

#endif /* LLORCH_HTTP_CLIENT_H */
