/*
 * HTTP/1.1 server on a libuv loop (llhttp parser).
 *
 * One loop thread does everything: accept, parse, call the handler, write.
 * Nothing here is thread-safe; call every function from the loop thread.
 *
 * Routing is the user's: the server calls one handler per complete request
 * (headers and body read, limits checked). The handler answers immediately or
 * later (after other I/O on the same loop): the request object stays valid
 * until the response is finished, or until the client goes away (see
 * llorch_http_request_set_data). Requests on one connection, pipelined or
 * not, are handed to the handler one at a time and answered in order.
 *
 * What the server answers itself, always with a JSON body in the OpenAI
 * error envelope ({"error":{"message","type","param","code"}}):
 *   400  malformed request (bad request line, bad header, bad chunk framing)
 *   408  headers not complete within header_timeout_ms (then closes)
 *   413  body over max_body_bytes (a declared Content-Length over the limit
 *        is refused before any body byte is read; then closes)
 *   431  headers over max_header_bytes or more than max_header_count
 * Every response carries X-Request-Id: the client's X-Request-Id (a request
 * whose X-Request-Id does not match ^[A-Za-z0-9._:-]{1,64}$ gets 400), a
 * generated one when it sent none.
 *
 * Example:
 *   static void on_request(llorch_http_request *req, void *user) {
 *     if (strcmp(llorch_http_request_path(req), "/health/live") == 0)
 *       llorch_http_respond_json(req, 200, "{\"status\":\"ok\"}");
 *     else
 *       llorch_http_respond_error(req, 404, "not_found_error", "no such route", NULL, NULL);
 *   }
 *   llorch_http_config cfg;
 *   llorch_http_config_default(&cfg);
 *   llorch_http_server *srv;
 *   if (llorch_http_server_init(&srv, loop, &cfg, on_request, NULL, &em) < 0 ||
 *       llorch_http_server_listen(srv, "127.0.0.1", 0, &em) < 0) ...
 */
#ifndef LLORCH_HTTP_H
#define LLORCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "llorch/error.h"

typedef struct llorch_http_server llorch_http_server;
typedef struct llorch_http_request llorch_http_request;
struct llorch_metrics;

/* ---- configuration ---- */

typedef struct llorch_http_config {
  size_t max_header_bytes;     /* request line + headers, bytes; default 16384 */
  size_t max_header_count;     /* header fields per request; default 100 */
  size_t max_body_bytes;       /* request body, bytes (after de-chunking); default 4 MiB */
  unsigned header_timeout_ms;  /* first byte of a request to end of its headers; default 10000 */
  unsigned body_timeout_ms;    /* longest gap between body bytes; default 30000 */
  unsigned idle_timeout_ms;    /* keep-alive connection with no request; default 60000 */
  unsigned sse_keepalive_ms;   /* ": keep-alive" comment interval on SSE streams; 0 = off; default 15000 */
  unsigned body_deadline_ms;   /* end of headers to end of body, in total; 0 = none; default 60000 */
  unsigned max_connections;    /* open connections; 0 = unlimited; default 1024 */
  unsigned max_connections_per_peer; /* open connections from one IP address; 0 = unlimited;
                                      * default 0 (the role sets it from the config) */
  int backlog;                 /* listen() backlog; default 511 */
} llorch_http_config;

/* Fills cfg with the defaults above. */
void llorch_http_config_default(llorch_http_config *cfg);

/*
 * Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft limit
 * now in force (0 when it cannot be read). A server sizes max_connections
 * against it so that a flood of connections ends at the cap, not at EMFILE
 * (which would also starve the outgoing calls to pools and workers).
 */
unsigned long llorch_net_raise_nofile(void);

/* ---- server ---- */

/* Called once per complete request. See the top of this file. */
typedef void (*llorch_http_handler_fn)(llorch_http_request *req, void *user);

/*
 * Called when shutdown is complete: every connection finished (forced == 0)
 * or the grace period ended and forced connections were closed.
 */
typedef void (*llorch_http_drained_fn)(llorch_http_server *srv, unsigned forced,
                                       void *user);

/* Counters the server keeps (also exported through llorch_http_server_set_metrics). */
typedef struct llorch_http_stats {
  uint64_t connections_accepted;
  uint64_t connections_open;
  uint64_t requests;            /* handed to the handler */
  uint64_t responses_by_class[6]; /* [1]..[5] = 1xx..5xx, incl. the server's own errors */
  uint64_t client_aborts;       /* client went away before the response finished */
  uint64_t parse_errors;        /* 400/408/413/431 answered by the server itself */
  uint64_t connections_evicted; /* idle or unfinished ones closed to make room (caps) */
  uint64_t connections_refused; /* new ones closed at once: at a cap with nothing to evict */
} llorch_http_stats;

/*
 * Creates a server on loop. cfg is copied (NULL = defaults). The handler is
 * called with user. Nothing listens until llorch_http_server_listen.
 * Returns 0 or LLORCH_ENOMEM.
 */
int llorch_http_server_init(llorch_http_server **out, uv_loop_t *loop,
                            const llorch_http_config *cfg,
                            llorch_http_handler_fn handler, void *user,
                            llorch_errmsg *em);

/*
 * Called when a request's headers are complete, before any body byte is
 * read: returns 0 to go on, or an HTTP status (401, 403; 404, 405) to refuse
 * the request with *why (a static string) as the message. A refused request is
 * answered at once in the OpenAI error envelope (401 with WWW-Authenticate:
 * Bearer and code "invalid_api_key", 403 with code "forbidden") and its
 * connection is closed, so a caller without credentials never gets a body
 * buffered. The request's method, path, headers, id and peer are readable;
 * it must not be responded to or kept.
 */
typedef int (*llorch_http_authorize_fn)(llorch_http_request *req, void *user, const char **why);

/* Sets (or with NULL removes) the headers-time check above. */
void llorch_http_server_set_authorize(llorch_http_server *srv, llorch_http_authorize_fn fn,
                                      void *user);

/*
 * Binds and listens on host:port. host is an IPv4 or IPv6 literal
 * ("0.0.0.0", "::", "127.0.0.1", "::1") or a name resolved synchronously
 * (start-up only); port 0 picks an ephemeral port (see
 * llorch_http_server_port). Returns 0, LLORCH_EINVAL (bad host),
 * LLORCH_EBUSY (address in use) or LLORCH_EIO, with em naming host:port.
 */
int llorch_http_server_listen(llorch_http_server *srv, const char *host, int port,
                              llorch_errmsg *em);

/* The bound port (useful after listening on port 0); -1 when not listening. */
int llorch_http_server_port(const llorch_http_server *srv);

/*
 * Registers llorch_http_requests_total{code}, llorch_http_client_aborts_total,
 * llorch_http_connections (gauge) and llorch_http_request_duration_seconds in
 * m, updated as requests complete. Call before listening. Returns 0 or LLORCH_ENOMEM.
 */
int llorch_http_server_set_metrics(llorch_http_server *srv, struct llorch_metrics *m);

/* A snapshot of the server's counters. */
void llorch_http_server_stats(const llorch_http_server *srv, llorch_http_stats *out);

/*
 * Graceful shutdown: stops accepting, closes idle connections, lets requests
 * in flight finish (their responses go out with Connection: close). When the
 * last connection is gone, or after grace_ms (remaining connections closed,
 * their on_close callbacks run), calls drained (may be NULL) once. Calling
 * it again does nothing.
 */
void llorch_http_server_shutdown(llorch_http_server *srv, unsigned grace_ms,
                                 llorch_http_drained_fn drained, void *user);

/*
 * Closes everything still open (as the end of a grace period would) and
 * frees the server once its libuv handles have closed: the loop must run
 * afterwards (uv_run) for the memory to be released. srv is invalid on return.
 */
void llorch_http_server_free(llorch_http_server *srv);

/* ---- request (valid until its response is finished or the client goes away) ---- */

/* "GET", "POST", ... */
const char *llorch_http_request_method(const llorch_http_request *req);
/* The path without the query string, exactly as sent ("/v1/chat/completions"). */
const char *llorch_http_request_path(const llorch_http_request *req);
/* The query string without '?', "" when there is none. Not decoded. */
const char *llorch_http_request_query(const llorch_http_request *req);
/*
 * Looks up a query parameter (percent-decoded, '+' as space) into buf
 * (NUL-terminated). Returns the value length, or -1 when absent or too long.
 */
int llorch_http_request_query_param(const llorch_http_request *req, const char *name,
                                    char *buf, size_t buf_size);
/* The first header with this name (case-insensitive), or NULL. */
const char *llorch_http_request_header(const llorch_http_request *req, const char *name);
/* The number of headers, and the i-th one (0-based, in arrival order). */
size_t llorch_http_request_header_count(const llorch_http_request *req);
void llorch_http_request_header_at(const llorch_http_request *req, size_t i,
                                   const char **name, const char **value);
/* The body (NUL-terminated for convenience; may contain NULs), "" when empty. */
const char *llorch_http_request_body(const llorch_http_request *req, size_t *len);
/*
 * Frees the body once the handler has taken what it needs from it (a
 * request that waits in a queue would otherwise hold its raw body next to
 * the parsed copy); the body reads as "" afterwards.
 */
void llorch_http_request_release_body(llorch_http_request *req);
/*
 * The client's key: the token of "Authorization: Bearer <token>", else the
 * value of "x-api-key" (how Anthropic's clients send it), spaces trimmed.
 * Returns 0 with *token and *len pointing into the headers, or LLORCH_EAUTH.
 * Every key check goes through here, so both headers work everywhere.
 */
int llorch_http_request_api_key(const llorch_http_request *req, const char **token, size_t *len);

/* Which envelope llorch_http_respond_error writes for this request. */
typedef enum llorch_http_error_format {
  LLORCH_HTTP_ERRORS_OPENAI = 0,    /* {"error":{message,type,param,code}} */
  LLORCH_HTTP_ERRORS_ANTHROPIC = 1, /* {"type":"error","error":{type,message}}, for /v1/messages */
} llorch_http_error_format;
void llorch_http_request_set_error_format(llorch_http_request *req, llorch_http_error_format f);
llorch_http_error_format llorch_http_request_error_format(const llorch_http_request *req);

/* The request id (validated X-Request-Id or generated); use it in log lines. */
const char *llorch_http_request_id(const llorch_http_request *req);
/* The peer address, "127.0.0.1:54321" or "[::1]:54321". */
const char *llorch_http_request_peer(const llorch_http_request *req);
/* The server this request came in on. */
llorch_http_server *llorch_http_request_server(const llorch_http_request *req);

/*
 * Called once when a request ends before its response was finished: the
 * client disconnected (EOF or write error, including in the middle of an SSE
 * stream), or shutdown's grace period ran out. After it returns req is freed:
 * drop every pointer to it. Never called once the response is finished.
 */
typedef void (*llorch_http_close_fn)(llorch_http_request *req, void *data);

/*
 * Attaches handler state and an abort callback to req. Without an on_close
 * callback a request whose client went away stays allocated (every response
 * call then returns LLORCH_ECLOSED and does nothing) until the handler
 * finishes its response, so a late answer is always safe.
 */
void llorch_http_request_set_data(llorch_http_request *req, void *data,
                                  llorch_http_close_fn on_close);
void *llorch_http_request_data(const llorch_http_request *req);

/* True once the client has gone away (only seen without an on_close callback). */
bool llorch_http_request_closed(const llorch_http_request *req);

/*
 * Bytes written by the response but not yet taken by the kernel. A producer
 * (token stream) checks it to notice a slow client and slow down or give up.
 */
size_t llorch_http_request_queued_bytes(const llorch_http_request *req);

/* ---- responses ---- */
/*
 * All return 0, LLORCH_ECLOSED (client gone: nothing was sent; the call still
 * counts as finishing the response when it would have), LLORCH_ESTATE (wrong
 * order, e.g. a header after the response started) or LLORCH_EINVAL.
 * A response is finished by llorch_http_respond*, llorch_http_response_end or
 * llorch_http_sse_end; after that req is invalid.
 */

/* Adds a response header before the response starts (e.g. "Retry-After", "5").
 * Rejects names/values with CR, LF or NUL (LLORCH_EINVAL). */
int llorch_http_response_header(llorch_http_request *req, const char *name,
                                const char *value);

/* A complete response with Content-Length. content_type may be NULL (no header). */
int llorch_http_respond(llorch_http_request *req, int status, const char *content_type,
                        const void *body, size_t len);

/* A complete JSON response (Content-Type: application/json). */
int llorch_http_respond_json(llorch_http_request *req, int status, const char *json);

/*
 * An OpenAI-style error: {"error":{"message":message,"type":type,"param":param,
 * "code":code}} with the given status (Anthropic's envelope instead when the
 * request's error format says so, its type chosen from the status). param and code may be NULL (null in the
 * JSON). message is escaped. type e.g. "invalid_request_error".
 */
int llorch_http_respond_error(llorch_http_request *req, int status, const char *type,
                              const char *message, const char *param, const char *code);

/* Starts a chunked response (Transfer-Encoding: chunked; close-delimited for HTTP/1.0). */
int llorch_http_response_start(llorch_http_request *req, int status,
                               const char *content_type);
/* Sends one chunk (one write); len 0 does nothing. */
int llorch_http_response_write(llorch_http_request *req, const void *data, size_t len);
/* Sends the last chunk and finishes the response. */
int llorch_http_response_end(llorch_http_request *req);

/*
 * Starts a Server-Sent Events response: 200, Content-Type: text/event-stream,
 * Cache-Control: no-cache, chunked, and a ": keep-alive" comment every
 * sse_keepalive_ms while the stream is open.
 */
int llorch_http_sse_start(llorch_http_request *req);
/*
 * Sends one event in one write: "event: <event>\n" (when event is not NULL),
 * one "data: " line per line of data (split on \n, \r\n or \r), then a blank
 * line. data may be empty.
 */
int llorch_http_sse_send(llorch_http_request *req, const char *event, const char *data,
                         size_t len);
/* Sends ": <text>\n\n" (a comment; clients ignore it). */
int llorch_http_sse_comment(llorch_http_request *req, const char *text);
/* Ends the stream and finishes the response. */
int llorch_http_sse_end(llorch_http_request *req);

/*
 * Checks the request's key (llorch_http_request_api_key) against n accepted tokens (n == 0: auth off,
 * returns 0). On failure answers 401 with an OpenAI error envelope
 * (type "authentication_error", WWW-Authenticate: Bearer), which finishes
 * the response, and returns LLORCH_EAUTH.
 */
int llorch_http_require_bearer(llorch_http_request *req, const char *const *tokens,
                               size_t n);

/*
 * Sets SIGPIPE to SIG_IGN unless the program installed a handler, so that a
 * peer that went away shows up as EPIPE on the write instead of killing the
 * process. Called by llorch_http_server_init and llorch_http_client_init.
 */
void llorch_net_ignore_sigpipe(void);

/* "Not Found" for 404, "" for unknown codes. */
const char *llorch_http_status_text(int status);

/* ---- parsing without sockets (fuzzing, unit tests) ---- */

/*
 * Runs bytes through the same request parser and limits the server uses,
 * as if they arrived on one connection, and returns the number of complete
 * requests parsed (>= 0), or minus the HTTP status the server would answer
 * with (-400, -413, -431). For each complete request, on_request (may be
 * NULL) is called with the request; it must not respond or keep req.
 */
int llorch_http_parse_buffer(const llorch_http_config *cfg, const void *data, size_t len,
                             void (*on_request)(llorch_http_request *req, void *user),
                             void *user);

#endif /* LLORCH_HTTP_H */
