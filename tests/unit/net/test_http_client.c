/*
 * HTTP client against the llorch server (both on one loop, as in the
 * orchestrator): buffered bodies, connection reuse, POST bodies, SSE
 * streaming, refused/timeout/resolve errors, cancellation from inside a
 * callback, a peer that closes mid-body, and a connection whose request is
 * still being written when its response completes (not reused until then).
 */
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "llorch/http.h"
#include "llorch/http_client.h"
#include "net/http_client-impl.h"

typedef struct env {
  uv_loop_t loop;
  llorch_http_server *srv;
  llorch_http_client *cl;
  int port;
  int server_aborts;
  uv_timer_t sse_timer;
  llorch_http_request *sse_req;
  int sse_sent;
} env;

static env E;

/* ---- server side ---- */

static void sse_tick(uv_timer_t *t) {
  if (E.sse_req == NULL) return;
  char data[64];
  snprintf(data, sizeof data, "event %d\nsecond line", E.sse_sent++);
  llorch_http_sse_send(E.sse_req, "tick", data, strlen(data));
}

static void on_server_abort(llorch_http_request *req, void *data) {
  E.server_aborts++;
  E.sse_req = NULL;
  uv_timer_stop(&E.sse_timer);
}

static void handler(llorch_http_request *req, void *user) {
  const char *p = llorch_http_request_path(req);
  if (strcmp(p, "/hello") == 0) {
    llorch_http_response_header(req, "X-Test", "yes");
    llorch_http_respond(req, 200, "text/plain", "hello", 5);
  } else if (strcmp(p, "/echo") == 0) {
    size_t len;
    const char *b = llorch_http_request_body(req, &len);
    llorch_http_respond(req, 201, "application/json", b, len);
  } else if (strcmp(p, "/sse3") == 0) {
    llorch_http_sse_start(req);
    llorch_http_sse_send(req, NULL, "one", 3);
    llorch_http_sse_send(req, "two", "a\nb", 3);
    llorch_http_sse_comment(req, "ignored");
    llorch_http_sse_send(req, NULL, "[DONE]", 6);
    llorch_http_sse_end(req);
  } else if (strcmp(p, "/sse-forever") == 0) {
    llorch_http_request_set_data(req, NULL, on_server_abort);
    llorch_http_sse_start(req);
    E.sse_req = req;
    uv_timer_start(&E.sse_timer, sse_tick, 1, 10);
  } else if (strcmp(p, "/never") == 0) {
    llorch_http_request_set_data(req, NULL, on_server_abort);
  } else if (strcmp(p, "/chunked") == 0) {
    llorch_http_response_start(req, 200, "text/plain");
    llorch_http_response_write(req, "ab", 2);
    llorch_http_response_write(req, "cd", 2);
    llorch_http_response_end(req);
  } else {
    llorch_http_respond_error(req, 404, "not_found_error", "no route", NULL, NULL);
  }
}

static int setup(void **state) {
  memset(&E, 0, sizeof E);
  uv_loop_init(&E.loop);
  uv_timer_init(&E.loop, &E.sse_timer);
  llorch_errmsg em;
  if (llorch_http_server_init(&E.srv, &E.loop, NULL, handler, NULL, &em) < 0) return -1;
  if (llorch_http_server_listen(E.srv, "127.0.0.1", 0, &em) < 0) return -1;
  E.port = llorch_http_server_port(E.srv);
  llorch_http_client_config cfg;
  llorch_http_client_config_default(&cfg);
  cfg.read_timeout_ms = 2000;
  cfg.connect_timeout_ms = 2000;
  return llorch_http_client_init(&E.cl, &E.loop, &cfg);
}

static int teardown(void **state) {
  llorch_http_client_free(E.cl);
  llorch_http_server_free(E.srv);
  uv_close((uv_handle_t *)&E.sse_timer, NULL);
  uv_run(&E.loop, UV_RUN_DEFAULT);
  return uv_loop_close(&E.loop) == 0 ? 0 : -1;
}

/* ---- client side ---- */

typedef struct result {
  int done;
  int err;
  char errmsg[512];
  int status;
  char body[4096];
  char header[64];
  int n_events;
  char events[16][64];
  char data[16][64];
  int cancel_after;          /* cancel from inside on_sse after this many events */
  llorch_http_call *call;
  size_t streamed;
} result;

static void on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  result *r = user;
  r->done++;
  r->err = err;
  snprintf(r->errmsg, sizeof r->errmsg, "%s", errmsg ? errmsg : "");
  r->status = llorch_http_call_status(call);
  size_t len;
  const char *b = llorch_http_call_body(call, &len);
  snprintf(r->body, sizeof r->body, "%.*s", (int)len, b);
  const char *h = llorch_http_call_header(call, "x-test");
  snprintf(r->header, sizeof r->header, "%s", h ? h : "");
}

static void on_sse(llorch_http_call *call, const llorch_sse_event *ev, void *user) {
  result *r = user;
  if (r->n_events < 16) {
    snprintf(r->events[r->n_events], 64, "%s", ev->event);
    snprintf(r->data[r->n_events], 64, "%s", ev->data);
  }
  r->n_events++;
  if (r->cancel_after && r->n_events == r->cancel_after) llorch_http_call_cancel(call);
}

static void on_data(llorch_http_call *call, const char *data, size_t len, void *user) {
  result *r = user;
  r->streamed += len;
}

static void guard_cb(uv_timer_t *t) { *(int *)t->data = 1; }

/* Runs the loop until *flag or 5 s pass. */
static void run_until(int *flag) {
  uv_timer_t guard;
  int expired = 0;
  uv_timer_init(&E.loop, &guard);
  guard.data = &expired;
  uv_timer_start(&guard, guard_cb, 5000, 0);
  while (!*flag && !expired) uv_run(&E.loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(&E.loop, UV_RUN_NOWAIT);
  assert_false(expired);
}

static void start(result *r, const char *method, const char *path, const char *body,
                  bool sse) {
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", E.port, path);
  llorch_http_call_opts o = {.method = method, .url = url, .body = body,
                             .body_len = body ? strlen(body) : 0, .on_done = on_done,
                             .on_sse = sse ? on_sse : NULL, .user = r};
  llorch_errmsg em;
  assert_int_equal(llorch_http_call_start(E.cl, &o, &r->call, &em), 0);
}

static void test_get_and_reuse(void **state) {
  for (int i = 0; i < 3; i++) {
    result r = {0};
    start(&r, NULL, "/hello", NULL, false);
    run_until(&r.done);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_string_equal(r.header, "yes");
  }
  assert_int_equal(llorch_http_client_connects(E.cl), 1);
  assert_int_equal(llorch_http_client_idle_count(E.cl), 1);
}

static void test_connection_close_not_pooled(void **state) {
  static const char *const hdrs[] = {"Connection", "close", "X-Extra", "1", NULL};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", E.port);
  for (int i = 0; i < 2; i++) {
    result r = {0};
    llorch_http_call_opts o = {.url = url, .headers = hdrs, .on_done = on_done, .user = &r};
    assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
    run_until(&r.done);
    assert_int_equal(r.err, 0);
    assert_string_equal(r.body, "hello");
    assert_int_equal(llorch_http_client_idle_count(E.cl), 0);
  }
  assert_int_equal(llorch_http_client_connects(E.cl), 2);
}

/* on_done starting the next call (as a relay retrying elsewhere does). */
typedef struct chain {
  int left;
  int done;
  int errors;
} chain;

static void chain_on_done(llorch_http_call *call, int err, const char *errmsg, void *user);

static void chain_next(chain *c) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", E.port);
  llorch_http_call_opts o = {.url = url, .on_done = chain_on_done, .user = c};
  if (llorch_http_call_start(E.cl, &o, NULL, NULL) < 0) c->errors++;
}

static void chain_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  chain *c = user;
  if (err != 0 || strcmp(llorch_http_call_body(call, NULL), "hello") != 0) c->errors++;
  if (--c->left > 0) chain_next(c);
  else c->done = 1;
}

static void test_call_from_on_done(void **state) {
  chain c = {.left = 5};
  chain_next(&c);
  run_until(&c.done);
  assert_int_equal(c.errors, 0);
  /* Each call found the previous one's connection back in the pool. */
  assert_int_equal(llorch_http_client_connects(E.cl), 1);
}

static void test_post_and_status(void **state) {
  result r = {0};
  start(&r, "POST", "/echo", "{\"x\":1}", false);
  run_until(&r.done);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.status, 201);
  assert_string_equal(r.body, "{\"x\":1}");
  result n = {0};
  start(&n, "DELETE", "/missing", NULL, false);
  run_until(&n.done);
  assert_int_equal(n.err, 0); /* a 404 is an answer, not an error */
  assert_int_equal(n.status, 404);
  assert_non_null(strstr(n.body, "no route"));
}

static void test_chunked_streamed(void **state) {
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/chunked", E.port);
  llorch_http_call_opts o = {.url = url, .on_data = on_data, .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.streamed, 4);
  assert_string_equal(r.body, ""); /* streamed, not buffered */
}

/* llorch_http_call_pause: nothing is delivered while paused (past the read
 * already taken), the read timeout (2 s here) does not fire during a longer
 * pause, and reading resumes where it stopped. */
typedef struct pause_state {
  result r;
  int phase;            /* 0 streaming, 1 paused, 2 resumed */
  int ticks;
  size_t at_pause, after_wait;
  uv_timer_t t;
} pause_state;

static void pause_on_tick(uv_timer_t *t) {
  pause_state *ps = t->data;
  if (++ps->ticks == 1) {
    ps->at_pause = ps->r.streamed; /* what the pausing read still carried is in */
    return;
  }
  ps->after_wait = ps->r.streamed;
  ps->phase = 2;
  uv_timer_stop(t);
  llorch_http_call_pause(ps->r.call, false);
}

static void pause_on_data(llorch_http_call *call, const char *data, size_t len, void *user) {
  pause_state *ps = user;
  ps->r.streamed += len;
  if (ps->phase == 0) {
    ps->phase = 1;
    llorch_http_call_pause(call, true);
    uv_timer_start(&ps->t, pause_on_tick, 100, 2100);
  } else if (ps->phase == 2 && ps->r.streamed > ps->after_wait + 64) {
    llorch_http_call_cancel(call);
  }
}

static void pause_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  pause_state *ps = user;
  on_done(call, err, errmsg, &ps->r);
}

static void test_pause_and_resume(void **state) {
  pause_state ps;
  memset(&ps, 0, sizeof ps);
  uv_timer_init(&E.loop, &ps.t);
  ps.t.data = &ps;
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/sse-forever", E.port);
  llorch_http_call_opts o = {.url = url, .on_data = pause_on_data, .on_done = pause_on_done, .user = &ps};
  assert_int_equal(llorch_http_call_start(E.cl, &o, &ps.r.call, NULL), 0);
  run_until(&ps.r.done);
  assert_int_equal(ps.r.err, LLORCH_ECANCELED); /* not a read timeout while paused */
  assert_int_equal(ps.phase, 2);
  assert_true(ps.at_pause > 0);
  assert_int_equal(ps.after_wait, ps.at_pause); /* nothing arrived in 2 s of pause */
  assert_true(ps.r.streamed > ps.after_wait);   /* and it flowed again after */
  uv_close((uv_handle_t *)&ps.t, NULL);
  uv_run(&E.loop, UV_RUN_NOWAIT);
}

static void test_sse_events(void **state) {
  result r = {0};
  start(&r, NULL, "/sse3", NULL, true);
  run_until(&r.done);
  assert_int_equal(r.err, 0);
  assert_int_equal(r.n_events, 3);
  assert_string_equal(r.events[0], "message");
  assert_string_equal(r.data[0], "one");
  assert_string_equal(r.events[1], "two");
  assert_string_equal(r.data[1], "a\nb");
  assert_string_equal(r.data[2], "[DONE]");
}

static void test_cancel_inside_callback(void **state) {
  result r = {.cancel_after = 3};
  start(&r, NULL, "/sse-forever", NULL, true);
  run_until(&r.done);
  assert_int_equal(r.done, 1);
  assert_int_equal(r.err, LLORCH_ECANCELED);
  assert_int_equal(r.n_events, 3);
  assert_string_equal(r.data[0], "event 0\nsecond line");
  /* The server notices the relay went away. */
  while (E.server_aborts == 0) uv_run(&E.loop, UV_RUN_ONCE);
  assert_int_equal(E.server_aborts, 1);
}

static void test_refused(void **state) {
  /* A port nobody listens on: bind one, note it, close it. */
  uv_tcp_t t;
  uv_tcp_init(&E.loop, &t);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&t, (struct sockaddr *)&a, 0);
  struct sockaddr_in b;
  int len = sizeof b;
  uv_tcp_getsockname(&t, (struct sockaddr *)&b, &len);
  int port = ntohs(b.sin_port);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&E.loop, UV_RUN_NOWAIT);
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
  llorch_http_call_opts o = {.url = url, .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  assert_int_equal(r.err, LLORCH_ECONNREFUSED);
  char want[64];
  snprintf(want, sizeof want, "connection refused by 127.0.0.1:%d", port);
  assert_string_equal(r.errmsg, want);
}

static void test_read_timeout(void **state) {
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/never", E.port);
  llorch_http_call_opts o = {.url = url, .read_timeout_ms = 150, .on_done = on_done, .user = &r};
  uint64_t t0 = uv_now(&E.loop);
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  uv_update_time(&E.loop);
  assert_int_equal(r.err, LLORCH_ETIMEDOUT);
  assert_true(uv_now(&E.loop) - t0 >= 140);
  assert_non_null(strstr(r.errmsg, "no response data from 127.0.0.1:"));
  assert_non_null(strstr(r.errmsg, "for 150 ms"));
}

static void test_connect_timeout(void **state) {
  /* A listener whose accept queue is full (backlog 0, one pending connection
   * never accepted): Linux drops further SYNs, so connect() hangs. */
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(l, 0), 0);
  socklen_t alen = sizeof a;
  getsockname(l, (struct sockaddr *)&a, &alen);
  int filler = socket(AF_INET, SOCK_STREAM, 0);
  assert_int_equal(connect(filler, (struct sockaddr *)&a, sizeof a), 0);
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
  llorch_http_call_opts o = {.url = url, .connect_timeout_ms = 150, .on_done = on_done,
                             .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  close(filler);
  close(l);
  assert_int_equal(r.err, LLORCH_ETIMEDOUT);
  char want[96];
  snprintf(want, sizeof want, "connecting to 127.0.0.1:%d timed out after 150 ms", ntohs(a.sin_port));
  assert_string_equal(r.errmsg, want);
}

static void test_resolve_failure_and_bad_url(void **state) {
  result r = {0};
  llorch_http_call_opts o = {.url = "http://no-such-host.invalid:8080/", .on_done = on_done,
                             .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  assert_int_equal(r.err, LLORCH_ERESOLVE);
  assert_non_null(strstr(r.errmsg, "no-such-host.invalid:8080"));
  llorch_errmsg em;
  o.url = "https://x/";
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "must start with http://"));
  o.url = "http://x:99999/";
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, &em), LLORCH_EINVAL);
  o.url = "http://x/";
  const char *const bad_headers[] = {"X-A", "line\r\nbreak", NULL};
  o.headers = bad_headers;
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, &em), LLORCH_EINVAL);
}

static void test_ipv6_and_names(void **state) {
  /* A second server on [::1]; skipped where the host has no IPv6 loopback. */
  llorch_http_server *srv6;
  llorch_errmsg em;
  assert_int_equal(llorch_http_server_init(&srv6, &E.loop, NULL, handler, NULL, &em), 0);
  if (llorch_http_server_listen(srv6, "::1", 0, &em) < 0) {
    llorch_http_server_free(srv6);
    skip();
  }
  int port6 = llorch_http_server_port(srv6);
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://[::1]:%d/hello", port6);
  llorch_http_call_opts o = {.url = url, .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, &r.call, NULL), 0);
  char target[64];
  snprintf(target, sizeof target, "[::1]:%d", port6);
  assert_string_equal(llorch_http_call_target(r.call), target);
  run_until(&r.done);
  assert_int_equal(r.err, 0);
  assert_string_equal(r.body, "hello");
  llorch_http_server_free(srv6);
  /* "localhost" goes through the resolver. */
  result n = {0};
  snprintf(url, sizeof url, "http://localhost:%d/hello", E.port);
  o.url = url;
  o.user = &n;
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&n.done);
  assert_int_equal(n.err, 0);
  assert_string_equal(n.body, "hello");
}

/* A raw peer that promises 100 bytes, sends 10 and closes. */
static uv_tcp_t raw_listener;
static void raw_on_close(uv_handle_t *h) { free(h); }
static void raw_on_write(uv_write_t *w, int status) {
  uv_close((uv_handle_t *)w->handle, raw_on_close);
  free(w);
}
static void raw_on_conn(uv_stream_t *l, int status) {
  uv_tcp_t *c = malloc(sizeof *c);
  uv_tcp_init(l->loop, c);
  uv_accept(l, (uv_stream_t *)c);
  static char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
  uv_buf_t b = uv_buf_init(resp, sizeof resp - 1);
  uv_write_t *w = malloc(sizeof *w);
  uv_write(w, (uv_stream_t *)c, &b, 1, raw_on_write);
}

static void test_closed_mid_body(void **state) {
  uv_tcp_init(&E.loop, &raw_listener);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&raw_listener, (struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&raw_listener, 8, raw_on_conn);
  struct sockaddr_in b;
  int len = sizeof b;
  uv_tcp_getsockname(&raw_listener, (struct sockaddr *)&b, &len);
  result r = {0};
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(b.sin_port));
  llorch_http_call_opts o = {.url = url, .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  uv_close((uv_handle_t *)&raw_listener, NULL);
  assert_int_equal(r.err, LLORCH_ECLOSED);
  assert_non_null(strstr(r.errmsg, "closed the connection mid-response"));
}

/* A raw peer that answers the first request on each connection and drops the
 * connection on the second without answering: a pooled connection that died. */
typedef struct flaky_conn {
  uv_tcp_t tcp;
  int requests;
  char buf[4096];
  size_t len;
} flaky_conn;
static int flaky_connections;
static void flaky_on_close(uv_handle_t *h) { free(h->data); }
static void flaky_on_write(uv_write_t *w, int status) { free(w); }
static void flaky_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  flaky_conn *fc = h->data;
  *b = uv_buf_init(fc->buf + fc->len, (unsigned)(sizeof fc->buf - 1 - fc->len));
}
static void flaky_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  flaky_conn *fc = s->data;
  if (n < 0) {
    uv_close((uv_handle_t *)s, flaky_on_close);
    return;
  }
  fc->len += (size_t)n;
  fc->buf[fc->len] = '\0';
  char *end;
  while ((end = strstr(fc->buf, "\r\n\r\n")) != NULL) {
    size_t used = (size_t)(end + 4 - fc->buf);
    memmove(fc->buf, fc->buf + used, fc->len - used + 1);
    fc->len -= used;
    if (++fc->requests >= 2) {
      uv_close((uv_handle_t *)s, flaky_on_close);
      return;
    }
    static char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    uv_buf_t wb = uv_buf_init(ok, sizeof ok - 1);
    uv_write_t *w = malloc(sizeof *w);
    uv_write(w, s, &wb, 1, flaky_on_write);
  }
}
static void flaky_on_conn(uv_stream_t *l, int status) {
  flaky_conn *fc = calloc(1, sizeof *fc);
  uv_tcp_init(l->loop, &fc->tcp);
  fc->tcp.data = fc;
  uv_accept(l, (uv_stream_t *)&fc->tcp);
  flaky_connections++;
  uv_read_start((uv_stream_t *)&fc->tcp, flaky_alloc, flaky_read);
}

static void test_dead_pooled_connection_retried(void **state) {
  uv_tcp_t l;
  uv_tcp_init(&E.loop, &l);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&l, (struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&l, 8, flaky_on_conn);
  int len = sizeof a;
  uv_tcp_getsockname(&l, (struct sockaddr *)&a, &len);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
  flaky_connections = 0;
  for (int i = 0; i < 2; i++) {
    result r = {0};
    llorch_http_call_opts o = {.url = url, .on_done = on_done, .user = &r};
    assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
    run_until(&r.done);
    assert_int_equal(r.err, 0);
    assert_string_equal(r.body, "ok");
  }
  /* The second call went to the pooled connection, found it dead, and retried. */
  assert_int_equal(flaky_connections, 2);
  assert_int_equal(llorch_http_client_connects(E.cl), 2);
  /* A POST is not retried: the caller hears that the connection closed. */
  result r = {0};
  llorch_http_call_opts o = {.method = "POST", .url = url, .body = "x", .body_len = 1,
                             .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  run_until(&r.done);
  assert_int_equal(r.err, LLORCH_ECLOSED);
  uv_close((uv_handle_t *)&l, NULL);
}

/*
 * A raw peer that answers each request as soon as its headers are in, then
 * stops reading for 100 ms before taking the body (a server that answers
 * early). With a body larger than the socket buffers the client's write is
 * still pending when the response is complete: the connection must not be
 * handed to another call (which would requeue the same uv_write_t and
 * overwrite the buffer being written) until that write has been called back.
 * The peer checks every byte it is sent.
 */
#define EARLY_BODY_BYTES (16u << 20)
typedef struct early_conn {
  uv_tcp_t tcp;
  uv_timer_t pause;
  int handles;
  char rbuf[65536];
  char hdr[4096];     /* the current request's head so far */
  size_t hdr_len;
  size_t body_left;   /* bytes of the current request's body still to come */
} early_conn;
typedef struct early_peer {
  int connections;
  int requests;
  char lines[8][32];  /* request lines, in arrival order */
  size_t body_bytes;  /* body bytes received, all requests */
  size_t body_bad;    /* body bytes that were not 'x' */
  int bad_heads;      /* request heads that did not parse */
} early_peer;
static early_peer EP;

static void early_on_close(uv_handle_t *h) {
  early_conn *ec = h->data;
  if (--ec->handles == 0) free(ec);
}
static void early_close(early_conn *ec) {
  if (uv_is_closing((uv_handle_t *)&ec->tcp)) return;
  uv_close((uv_handle_t *)&ec->tcp, early_on_close);
  uv_close((uv_handle_t *)&ec->pause, early_on_close);
}
static void early_on_write(uv_write_t *w, int status) { free(w); }
static void early_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  early_conn *ec = h->data;
  *b = uv_buf_init(ec->rbuf, sizeof ec->rbuf);
}
static void early_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void early_resume(uv_timer_t *t) {
  early_conn *ec = t->data;
  uv_read_start((uv_stream_t *)&ec->tcp, early_alloc, early_read);
}
/* A complete request head: note it and answer at once. */
static void early_on_head(early_conn *ec) {
  ec->hdr[ec->hdr_len] = '\0';
  if (EP.requests < 8)
    snprintf(EP.lines[EP.requests], 32, "%.*s", (int)strcspn(ec->hdr, " "), ec->hdr);
  EP.requests++;
  const char *cl = strstr(ec->hdr, "Content-Length: ");
  ec->body_left = cl ? strtoul(cl + 16, NULL, 10) : 0;
  if (strncmp(ec->hdr, "POST /big ", 10) != 0 && strncmp(ec->hdr, "GET /small ", 11) != 0)
    EP.bad_heads++;
  ec->hdr_len = 0;
  static char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  uv_buf_t wb = uv_buf_init(ok, sizeof ok - 1);
  uv_write_t *w = malloc(sizeof *w);
  uv_write(w, (uv_stream_t *)&ec->tcp, &wb, 1, early_on_write);
}
static void early_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  early_conn *ec = s->data;
  if (n < 0) {
    early_close(ec);
    return;
  }
  const char *p = b->base, *end = b->base + n;
  bool pause = false;
  while (p < end) {
    if (ec->body_left > 0) {
      size_t take = (size_t)(end - p) < ec->body_left ? (size_t)(end - p) : ec->body_left;
      for (size_t i = 0; i < take; i++) EP.body_bad += p[i] != 'x';
      EP.body_bytes += take;
      ec->body_left -= take;
      p += take;
      continue;
    }
    if (ec->hdr_len == sizeof ec->hdr - 1) {
      EP.bad_heads++;
      early_close(ec);
      return;
    }
    ec->hdr[ec->hdr_len++] = *p++;
    if (ec->hdr_len >= 4 && memcmp(ec->hdr + ec->hdr_len - 4, "\r\n\r\n", 4) == 0) {
      early_on_head(ec);
      pause = true;
    }
  }
  /* The rest of this read was taken above; the pause holds back what follows. */
  if (pause) {
    uv_read_stop(s);
    uv_timer_start(&ec->pause, early_resume, 100, 0);
  }
}

static void early_on_conn(uv_stream_t *l, int status) {
  early_conn *ec = calloc(1, sizeof *ec);
  uv_tcp_init(l->loop, &ec->tcp);
  uv_timer_init(l->loop, &ec->pause);
  ec->tcp.data = ec;
  ec->pause.data = ec;
  ec->handles = 2;
  uv_accept(l, (uv_stream_t *)&ec->tcp);
  EP.connections++;
  uv_read_start((uv_stream_t *)&ec->tcp, early_alloc, early_read);
}

typedef struct early_calls {
  char url_small[128];
  result big, small;
  int start_err;
} early_calls;

/* The big POST is answered: start the next call to the same host:port right away. */
static void early_big_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  early_calls *ec = user;
  on_done(call, err, errmsg, &ec->big);
  llorch_http_call_opts o = {.url = ec->url_small, .on_done = on_done, .user = &ec->small};
  ec->start_err = llorch_http_call_start(E.cl, &o, NULL, NULL);
  if (ec->start_err < 0) ec->small.done = 1;
}

static void test_pending_write_not_reused(void **state) {
  static uv_tcp_t l;
  uv_tcp_init(&E.loop, &l);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&l, (struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&l, 8, early_on_conn);
  int len = sizeof a;
  uv_tcp_getsockname(&l, (struct sockaddr *)&a, &len);
  memset(&EP, 0, sizeof EP);
  early_calls ec = {0};
  char url_big[128];
  snprintf(url_big, sizeof url_big, "http://127.0.0.1:%d/big", ntohs(a.sin_port));
  snprintf(ec.url_small, sizeof ec.url_small, "http://127.0.0.1:%d/small", ntohs(a.sin_port));
  char *body = malloc(EARLY_BODY_BYTES);
  assert_non_null(body);
  memset(body, 'x', EARLY_BODY_BYTES);
  llorch_http_call_opts o = {.method = "POST", .url = url_big, .body = body,
                             .body_len = EARLY_BODY_BYTES, .on_done = early_big_on_done,
                             .user = &ec};
  assert_int_equal(llorch_http_call_start(E.cl, &o, NULL, NULL), 0);
  free(body); /* copied by the call */
  run_until(&ec.small.done);
  assert_int_equal(ec.start_err, 0);
  assert_int_equal(ec.big.err, 0);
  assert_string_equal(ec.big.body, "ok");
  assert_int_equal(ec.small.err, 0);
  assert_string_equal(ec.small.body, "ok");
  /* The big POST's write was still pending: the follow-up got a connection of its own. */
  assert_int_equal(llorch_http_client_connects(E.cl), 2);

  /* Once the peer has taken the whole body, both connections are back in the pool. */
  uv_timer_t guard;
  int expired = 0;
  uv_timer_init(&E.loop, &guard);
  guard.data = &expired;
  uv_timer_start(&guard, guard_cb, 5000, 0);
  while ((llorch_http_client_idle_count(E.cl) < 2 || EP.body_bytes < EARLY_BODY_BYTES) &&
         !expired)
    uv_run(&E.loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&guard, NULL);
  uv_run(&E.loop, UV_RUN_NOWAIT);
  assert_false(expired);
  assert_int_equal(EP.body_bytes, EARLY_BODY_BYTES);
  assert_int_equal(EP.body_bad, 0);
  assert_int_equal(EP.bad_heads, 0);
  assert_int_equal(EP.requests, 2);
  assert_string_equal(EP.lines[0], "POST");
  assert_string_equal(EP.lines[1], "GET");

  /* And the next call reuses one of them. */
  result r = {0};
  llorch_http_call_opts g = {.url = ec.url_small, .on_done = on_done, .user = &r};
  assert_int_equal(llorch_http_call_start(E.cl, &g, NULL, NULL), 0);
  run_until(&r.done);
  assert_int_equal(r.err, 0);
  assert_string_equal(r.body, "ok");
  assert_int_equal(llorch_http_client_connects(E.cl), 2);
  assert_int_equal(EP.connections, 2);
  assert_int_equal(EP.requests, 3);
  assert_int_equal(EP.bad_heads, 0);
  uv_close((uv_handle_t *)&l, NULL);
}

static void count_event(const llorch_sse_event *ev, void *user) { (*(int *)user)++; }

static void test_parse_response_buffers(void **state) {
  int n = 0;
  const char *sse = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "11\r\ndata: a\n\ndata: b\n\r\n1\r\n\n\r\n0\r\n\r\n";
  assert_int_equal(llorch_http_client_parse_response(sse, strlen(sse), true, false, count_event, &n), 200);
  assert_int_equal(n, 2);
  const char *closed = "HTTP/1.0 200 OK\r\n\r\nbody until close";
  assert_int_equal(llorch_http_client_parse_response(closed, strlen(closed), false, false, NULL, NULL), 200);
  const char *cut = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  assert_int_equal(llorch_http_client_parse_response(cut, strlen(cut), false, false, NULL, NULL),
                   LLORCH_ECLOSED);
  const char *head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
  assert_int_equal(llorch_http_client_parse_response(head, strlen(head), false, true, NULL, NULL), 200);
  const char *interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
  assert_int_equal(llorch_http_client_parse_response(interim, strlen(interim), false, false, NULL, NULL), 204);
  assert_int_equal(llorch_http_client_parse_response("HTTP/1.1 2", 10, false, false, NULL, NULL), 0);
  assert_int_equal(llorch_http_client_parse_response("SMTP ready\r\n", 12, false, false, NULL, NULL),
                   LLORCH_EPROTO);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_get_and_reuse, setup, teardown),
      cmocka_unit_test_setup_teardown(test_post_and_status, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connection_close_not_pooled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_call_from_on_done, setup, teardown),
      cmocka_unit_test_setup_teardown(test_chunked_streamed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pause_and_resume, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sse_events, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_inside_callback, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_resolve_failure_and_bad_url, setup, teardown),
      cmocka_unit_test_setup_teardown(test_closed_mid_body, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ipv6_and_names, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dead_pooled_connection_retried, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pending_write_not_reused, setup, teardown),
      cmocka_unit_test(test_parse_response_buffers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
