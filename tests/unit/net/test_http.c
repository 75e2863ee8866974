/*
 * HTTP server: the request parser and limits through llorch_http_parse_buffer,
 * then a real server on loopback (its loop on a thread) driven with blocking
 * sockets: keep-alive, SSE framing and keep-alive comments, client
 * disconnect noticed, header timeout, 413 before the body, graceful shutdown.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "llorch/http.h"

/* ---- parser on a buffer ---- */

typedef struct seen {
  int n;
  char method[8][16];
  char path[8][64];
  char query[8][64];
  char body[8][64];
  char id[8][80];
  char ua[8][64];
  char qparam[8][64];
} seen;

static void on_parsed(llorch_http_request *req, void *user) {
  seen *s = user;
  int i = s->n++;
  snprintf(s->method[i], sizeof s->method[i], "%s", llorch_http_request_method(req));
  snprintf(s->path[i], sizeof s->path[i], "%s", llorch_http_request_path(req));
  snprintf(s->query[i], sizeof s->query[i], "%s", llorch_http_request_query(req));
  size_t len;
  const char *body = llorch_http_request_body(req, &len);
  snprintf(s->body[i], sizeof s->body[i], "%.*s", (int)len, body);
  snprintf(s->id[i], sizeof s->id[i], "%s", llorch_http_request_id(req));
  const char *ua = llorch_http_request_header(req, "user-AGENT");
  snprintf(s->ua[i], sizeof s->ua[i], "%s", ua ? ua : "(none)");
  if (llorch_http_request_query_param(req, "q", s->qparam[i], sizeof s->qparam[i]) < 0)
    snprintf(s->qparam[i], sizeof s->qparam[i], "(none)");
}

static int parse(const llorch_http_config *cfg, const char *text, seen *s) {
  memset(s, 0, sizeof *s);
  return llorch_http_parse_buffer(cfg, text, strlen(text), on_parsed, s);
}

static void test_parse_fields(void **state) {
  seen s;
  assert_int_equal(parse(NULL,
                         "GET /v1/models?q=a%20b+c&x=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t/1  \r\n"
                         "X-Request-Id: my-id-42\r\n\r\n",
                         &s), 1);
  assert_string_equal(s.method[0], "GET");
  assert_string_equal(s.path[0], "/v1/models");
  assert_string_equal(s.query[0], "q=a%20b+c&x=1");
  assert_string_equal(s.qparam[0], "a b c");
  assert_string_equal(s.ua[0], "t/1");
  assert_string_equal(s.id[0], "my-id-42");
  assert_string_equal(s.body[0], "");
}

static void test_request_id_invalid_is_replaced(void **state) {
  seen s;
  /* A client's id that does not match ^[A-Za-z0-9._:-]{1,64}$ is a 400, not silently replaced. */
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\nX-Request-Id: bad id!\r\n\r\n", &s), -400);
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\nX-Request-Id: a.b:c_d-1\r\n\r\n", &s), 1);
  assert_string_equal(s.id[0], "a.b:c_d-1");
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\n\r\n", &s), 1);
  assert_int_equal(strlen(s.id[0]), 32);
}

static void test_parse_pipelined_in_order(void **state) {
  seen s;
  assert_int_equal(parse(NULL,
                         "GET /a HTTP/1.1\r\n\r\n"
                         "POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
                         "GET /c HTTP/1.1\r\n\r\n",
                         &s), 3);
  assert_string_equal(s.path[0], "/a");
  assert_string_equal(s.path[1], "/b");
  assert_string_equal(s.body[1], "xyz");
  assert_string_equal(s.method[1], "POST");
  assert_string_equal(s.path[2], "/c");
}

static void test_parse_chunked_body(void **state) {
  seen s;
  assert_int_equal(parse(NULL,
                         "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: t\r\n\r\n",
                         &s), 1);
  assert_string_equal(s.body[0], "hello world");
}

static void test_parse_limits(void **state) {
  llorch_http_config cfg;
  llorch_http_config_default(&cfg);
  cfg.max_body_bytes = 10;
  cfg.max_header_count = 3;
  cfg.max_header_bytes = 200;
  seen s;
  /* Declared length over the limit: refused with no body bytes present at all. */
  assert_int_equal(parse(&cfg, "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", &s), -413);
  assert_int_equal(s.n, 0);
  assert_int_equal(parse(&cfg, "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", &s), 1);
  /* Chunked over the limit. */
  assert_int_equal(parse(&cfg,
                         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n",
                         &s), -413);
  assert_int_equal(parse(&cfg, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &s), 1);
  assert_int_equal(parse(&cfg, "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", &s), -431);
  char big[400];
  snprintf(big, sizeof big, "GET / HTTP/1.1\r\nX: %0250d\r\n\r\n", 7);
  assert_int_equal(parse(&cfg, big, &s), -431);
  /* A long URL counts too. */
  snprintf(big, sizeof big, "GET /%0250d HTTP/1.1\r\n\r\n", 7);
  assert_int_equal(parse(&cfg, big, &s), -431);
}

static void test_parse_malformed(void **state) {
  seen s;
  assert_int_equal(parse(NULL, "GARBAGE\r\n\r\n", &s), -400);
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\nBad Header\r\n\r\n", &s), -400);
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", &s),
                   -400);
  assert_int_equal(parse(NULL, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &s), -400);
  /* Incomplete input is not an error: just no request yet. */
  assert_int_equal(parse(NULL, "GET / HTTP/1.1\r\nHost:", &s), 0);
}

/* ---- a real server on a loop thread ---- */

typedef struct fixture {
  uv_loop_t loop;
  uv_async_t async;
  llorch_http_server *srv;
  pthread_t thread;
  int port;
  void (*task)(struct fixture *f);  /* run on the loop thread by async */
  atomic_int task_done;
  atomic_int aborted;               /* on_close calls */
  atomic_int drained;               /* 1 + forced */
  atomic_int late_rc;               /* rc of a late answer to a gone client */
  atomic_int late_done;
  atomic_int bad_header_rc;
  atomic_long queued;               /* queued bytes after writing /big */
  uv_timer_t timer;
  llorch_http_request *held;
} fixture;

static fixture F;

static void on_abort(llorch_http_request *req, void *data) {
  fixture *f = data;
  atomic_fetch_add(&f->aborted, 1);
  if (f->held == req) f->held = NULL;
}

static void on_timer(uv_timer_t *t) {
  fixture *f = t->data;
  llorch_http_request *req = f->held;
  f->held = NULL;
  if (req == NULL) return;
  int rc = llorch_http_respond(req, 200, "text/plain", "late", 4);
  atomic_store(&f->late_rc, rc);
  atomic_store(&f->late_done, 1);
}

static void handler(llorch_http_request *req, void *user) {
  fixture *f = user;
  const char *p = llorch_http_request_path(req);
  if (strcmp(p, "/hello") == 0) {
    llorch_http_response_header(req, "Retry-After", "5");
    atomic_store(&f->bad_header_rc, llorch_http_response_header(req, "Bad\r\nName", "x"));
    llorch_http_respond(req, 200, "text/plain", "hello", 5);
  } else if (strcmp(p, "/sse") == 0) {
    llorch_http_request_set_data(req, f, on_abort);
    llorch_http_sse_start(req);
    llorch_http_sse_send(req, NULL, "first", 5);
    llorch_http_sse_send(req, "multi", "a\nb", 3);
    /* Left open: keep-alive comments follow; the client's leaving ends it. */
  } else if (strcmp(p, "/slow") == 0 || strcmp(p, "/detached") == 0) {
    if (strcmp(p, "/slow") == 0) llorch_http_request_set_data(req, f, on_abort);
    f->held = req;
    uv_timer_start(&f->timer, on_timer, 300, 0);
  } else if (strcmp(p, "/big") == 0) {
    /* 32 MiB at once to a client that is not reading: most of it must queue. */
    static char chunk[65536];
    memset(chunk, 'z', sizeof chunk);
    llorch_http_response_start(req, 200, "application/octet-stream");
    for (int i = 0; i < 512; i++) llorch_http_response_write(req, chunk, sizeof chunk);
    atomic_store(&f->queued, (long)llorch_http_request_queued_bytes(req));
    llorch_http_response_end(req);
  } else if (strcmp(p, "/never") == 0) {
    llorch_http_request_set_data(req, f, on_abort);
  } else {
    llorch_http_respond_error(req, 404, "not_found_error", "no route", NULL, NULL);
  }
}

static void on_async(uv_async_t *a) {
  fixture *f = a->data;
  if (f->task) {
    void (*t)(fixture *) = f->task;
    f->task = NULL;
    t(f);
    atomic_store(&f->task_done, 1);
  }
}

static void *loop_main(void *arg) {
  fixture *f = arg;
  uv_run(&f->loop, UV_RUN_DEFAULT);
  return NULL;
}

static void run_on_loop(void (*task)(fixture *f)) {
  atomic_store(&F.task_done, 0);
  F.task = task;
  uv_async_send(&F.async);
  for (int i = 0; i < 5000 && !atomic_load(&F.task_done); i++) usleep(1000);
  assert_true(atomic_load(&F.task_done));
}

static int fixture_setup(void **state) {
  memset(&F, 0, sizeof F);
  uv_loop_init(&F.loop);
  uv_async_init(&F.loop, &F.async, on_async);
  F.async.data = &F;
  uv_timer_init(&F.loop, &F.timer);
  F.timer.data = &F;
  llorch_http_config cfg;
  llorch_http_config_default(&cfg);
  cfg.header_timeout_ms = 300;
  cfg.idle_timeout_ms = 400;
  cfg.body_timeout_ms = 300;
  cfg.sse_keepalive_ms = 50;
  cfg.max_body_bytes = 1000;
  llorch_errmsg em;
  if (llorch_http_server_init(&F.srv, &F.loop, &cfg, handler, &F, &em) < 0) return -1;
  if (llorch_http_server_listen(F.srv, "127.0.0.1", 0, &em) < 0) return -1;
  F.port = llorch_http_server_port(F.srv);
  if (F.port <= 0) return -1;
  pthread_create(&F.thread, NULL, loop_main, &F);
  return 0;
}

static void task_teardown(fixture *f) {
  if (f->srv) llorch_http_server_free(f->srv);
  f->srv = NULL;
  uv_close((uv_handle_t *)&f->timer, NULL);
  uv_close((uv_handle_t *)&f->async, NULL);
}

static int fixture_teardown(void **state) {
  run_on_loop(task_teardown);
  pthread_join(F.thread, NULL);
  uv_loop_close(&F.loop);
  return 0;
}

/* ---- blocking socket helpers ---- */

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static void send_str(int fd, const char *s) {
  assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads until `needle` appears (NULL: until EOF). Returns bytes read; buf is NUL-terminated. */
static size_t recv_until(int fd, char *buf, size_t size, const char *needle) {
  size_t n = 0;
  while (n + 1 < size) {
    buf[n] = '\0';
    if (needle != NULL && strstr(buf, needle) != NULL) break;
    ssize_t r = recv(fd, buf + n, size - 1 - n, 0);
    if (r <= 0) break;
    n += (size_t)r;
  }
  buf[n] = '\0';
  return n;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void wait_for(atomic_int *v, int want) {
  for (int i = 0; i < 5000 && atomic_load(v) < want; i++) usleep(1000);
  assert_true(atomic_load(v) >= want);
}

/* ---- server tests ---- */

static void test_keep_alive_and_headers(void **state) {
  int fd = tcp_connect(F.port);
  char buf[4096];
  send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-1\r\n\r\n");
  recv_until(fd, buf, sizeof buf, "hello");
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Content-Length: 5\r\n"));
  assert_non_null(strstr(buf, "Retry-After: 5\r\n"));
  assert_non_null(strstr(buf, "X-Request-Id: abc-1\r\n"));
  assert_null(strstr(buf, "Connection: close"));
  assert_null(strstr(buf, "Bad"));
  assert_int_equal(atomic_load(&F.bad_header_rc), LLORCH_EINVAL);
  /* Same connection, second request, then a JSON 404. */
  send_str(fd, "GET /nope HTTP/1.1\r\n\r\n");
  recv_until(fd, buf, sizeof buf, "}}");
  assert_non_null(strstr(buf, "HTTP/1.1 404 Not Found\r\n"));
  assert_non_null(strstr(buf, "{\"error\":{\"message\":\"no route\",\"type\":\"not_found_error\""));
  close(fd);
}

static void test_pipelined_on_socket(void **state) {
  int fd = tcp_connect(F.port);
  char buf[8192];
  send_str(fd, "GET /slow HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n");
  recv_until(fd, buf, sizeof buf, NULL);
  char *a = strstr(buf, "late"), *b = strstr(buf, "hello"), *c = strstr(buf, "404 Not Found");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  /* The slow answer comes first although the others were ready sooner. */
  assert_true(a < b && b < c);
  close(fd);
}

static void test_sse_stream_and_disconnect(void **state) {
  int before = atomic_load(&F.aborted);
  int fd = tcp_connect(F.port);
  char buf[8192];
  send_str(fd, "GET /sse HTTP/1.1\r\n\r\n");
  recv_until(fd, buf, sizeof buf, ": keep-alive\n\n");
  assert_non_null(strstr(buf, "Content-Type: text/event-stream\r\n"));
  assert_non_null(strstr(buf, "Transfer-Encoding: chunked\r\n"));
  /* Each event is one chunk: size line, the whole event, CRLF. */
  assert_non_null(strstr(buf, "\r\nd\r\ndata: first\n\n\r\n"));
  assert_non_null(strstr(buf, "\r\n1e\r\nevent: multi\ndata: a\ndata: b\n\n\r\n"));
  assert_non_null(strstr(buf, "e\r\n: keep-alive\n\n\r\n"));
  close(fd);
  wait_for(&F.aborted, before + 1);
  llorch_http_stats st;
  llorch_http_server_stats(F.srv, &st);
  assert_true(st.client_aborts >= 1);
}

static void test_header_timeout(void **state) {
  int fd = tcp_connect(F.port);
  char buf[4096];
  double t0 = now_s();
  send_str(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n");
  size_t n = recv_until(fd, buf, sizeof buf, NULL); /* until the server closes */
  double dt = now_s() - t0;
  assert_true(n > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 408 Request Timeout\r\n"));
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_true(dt >= 0.25 && dt < 3.0);
  close(fd);
}

static void test_body_timeout(void **state) {
  int fd = tcp_connect(F.port);
  char buf[4096];
  double t0 = now_s();
  send_str(fd, "POST /hello HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
  recv_until(fd, buf, sizeof buf, NULL);
  double dt = now_s() - t0;
  assert_non_null(strstr(buf, "HTTP/1.1 408 Request Timeout\r\n"));
  assert_non_null(strstr(buf, "request body not received in time"));
  assert_true(dt >= 0.25 && dt < 3.0);
  close(fd);
}

static void test_idle_keepalive_closed(void **state) {
  int fd = tcp_connect(F.port);
  char buf[4096];
  send_str(fd, "GET /hello HTTP/1.1\r\n\r\n");
  recv_until(fd, buf, sizeof buf, "hello");
  double t0 = now_s();
  /* Silently closed (no 408: the client sent nothing) after the idle timeout. */
  assert_int_equal(recv_until(fd, buf, sizeof buf, NULL), 0);
  double dt = now_s() - t0;
  assert_true(dt >= 0.35 && dt < 3.0);
  close(fd);
}

static void test_413_before_body(void **state) {
  int fd = tcp_connect(F.port);
  char buf[4096];
  send_str(fd, "POST /hello HTTP/1.1\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n");
  recv_until(fd, buf, sizeof buf, "}}");
  assert_non_null(strstr(buf, "HTTP/1.1 413 Payload Too Large\r\n"));
  assert_null(strstr(buf, "100 Continue"));
  assert_non_null(strstr(buf, "request body too large"));
  close(fd);
}

static void test_detached_late_answer(void **state) {
  /* No on_close: the client leaves, the handler answers later, safely. */
  atomic_store(&F.late_done, 0);
  int fd = tcp_connect(F.port);
  send_str(fd, "GET /detached HTTP/1.1\r\n\r\n");
  usleep(50000);
  close(fd);
  wait_for(&F.late_done, 1);
  assert_int_equal(atomic_load(&F.late_rc), LLORCH_ECLOSED);
}

static void test_backpressure_visible(void **state) {
  atomic_store(&F.queued, -1);
  int fd = tcp_connect(F.port);
  send_str(fd, "GET /big HTTP/1.1\r\nConnection: close\r\n\r\n");
  for (int i = 0; i < 5000 && atomic_load(&F.queued) < 0; i++) usleep(1000);
  long queued = atomic_load(&F.queued);
  assert_true(queued > 16L * 1024 * 1024);
  /* Now drain it: every byte arrives, and the queue empties. */
  static char buf[1 << 16];
  size_t total = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    total += (size_t)r;
  }
  assert_true(total > 32u * 1024 * 1024);
  close(fd);
}

static void on_drained(llorch_http_server *srv, unsigned forced, void *user) {
  fixture *f = user;
  atomic_store(&f->drained, 1 + (int)forced);
}

static void task_shutdown_long(fixture *f) { llorch_http_server_shutdown(f->srv, 5000, on_drained, f); }
static void task_shutdown_short(fixture *f) { llorch_http_server_shutdown(f->srv, 100, on_drained, f); }

static void test_shutdown_drains_in_flight(void **state) {
  int fd = tcp_connect(F.port);
  int idle = tcp_connect(F.port);
  char buf[4096];
  send_str(fd, "GET /slow HTTP/1.1\r\n\r\n");
  usleep(50000); /* let the request reach the handler */
  run_on_loop(task_shutdown_long);
  /* The idle connection is closed at once; the slow one gets its answer. */
  assert_int_equal(recv_until(idle, buf, sizeof buf, NULL), 0);
  recv_until(fd, buf, sizeof buf, NULL);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_non_null(strstr(buf, "late"));
  close(fd);
  close(idle);
  wait_for(&F.drained, 1);
  assert_int_equal(atomic_load(&F.drained), 1); /* nothing forced */
  /* No longer accepting. */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_not_equal(connect(s, (struct sockaddr *)&a, sizeof a), 0);
  close(s);
}

static void test_shutdown_grace_expires(void **state) {
  int before = atomic_load(&F.aborted);
  int fd = tcp_connect(F.port);
  char buf[256];
  send_str(fd, "GET /never HTTP/1.1\r\n\r\n");
  usleep(50000);
  run_on_loop(task_shutdown_short);
  wait_for(&F.drained, 2);
  assert_int_equal(atomic_load(&F.drained), 2); /* one forced */
  assert_int_equal(atomic_load(&F.aborted), before + 1);
  assert_int_equal(recv_until(fd, buf, sizeof buf, NULL), 0);
  close(fd);
}

int main(void) {
  const struct CMUnitTest parser_tests[] = {
      cmocka_unit_test(test_parse_fields),
      cmocka_unit_test(test_request_id_invalid_is_replaced),
      cmocka_unit_test(test_parse_pipelined_in_order),
      cmocka_unit_test(test_parse_chunked_body),
      cmocka_unit_test(test_parse_limits),
      cmocka_unit_test(test_parse_malformed),
  };
  const struct CMUnitTest server_tests[] = {
      cmocka_unit_test_setup_teardown(test_keep_alive_and_headers, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_pipelined_on_socket, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_sse_stream_and_disconnect, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_header_timeout, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_idle_keepalive_closed, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_body_timeout, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_413_before_body, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_detached_late_answer, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_backpressure_visible, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_drains_in_flight, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_grace_expires, fixture_setup, fixture_teardown),
  };
  int rc = cmocka_run_group_tests_name("parser", parser_tests, NULL, NULL);
  rc |= cmocka_run_group_tests_name("server", server_tests, NULL, NULL);
  return rc;
}
