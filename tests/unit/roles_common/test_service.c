/*
 * Unit tests for src/roles/common/service.c: the listen address parser,
 * routing (exact, prefix, 404, 405 with Allow), the built-in endpoints, and
 * the shutdown sequence (stop hooks, drain of a request in flight, shutdown
 * hooks newest first, exit status). The service runs on this thread's loop;
 * a client thread talks to it over loopback with blocking sockets.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/config.h"
#include "llorch/service.h"

/* ---- a blocking HTTP client for the client thread ---- */

typedef struct reply {
  int status;
  char text[16384]; /* the whole response, headers included */
} reply;

static int http_call(int port, const char *method, const char *path, reply *out) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char req[512];
  int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                   method, path);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  size_t len = 0;
  ssize_t got;
  while (len + 1 < sizeof out->text &&
         (got = read(fd, out->text + len, sizeof out->text - 1 - len)) > 0)
    len += (size_t)got;
  out->text[len] = '\0';
  close(fd);
  out->status = 0;
  if (sscanf(out->text, "HTTP/1.1 %d", &out->status) != 1) return -1;
  return 0;
}

/* ---- the service under test ---- */

typedef struct fixture {
  llorch_config cfg;
  llorch_service *svc;
  int port;
  char events[256];          /* hook and handler calls, in order */
  llorch_http_request *slow; /* the request answered late */
  uv_timer_t slow_timer;
  bool timer_open;
} fixture;

static void note(fixture *f, const char *what) {
  size_t w = strlen(f->events);
  snprintf(f->events + w, sizeof f->events - w, "%s%s", w ? "," : "", what);
}

static void on_exact(llorch_http_request *req, void *user) {
  llorch_http_respond(req, 200, "text/plain", "exact", 5);
}
static void on_prefix(llorch_http_request *req, void *user) {
  llorch_http_respond(req, 200, "text/plain", "short-prefix", 12);
}
static void on_long_prefix(llorch_http_request *req, void *user) {
  llorch_http_respond(req, 200, "text/plain", "long-prefix", 11);
}

static void slow_answer(uv_timer_t *t) {
  fixture *f = t->data;
  note(f, "slow-answered");
  llorch_http_respond(f->slow, 200, "text/plain", "slow", 4);
  f->slow = NULL;
}

static void on_slow(llorch_http_request *req, void *user) {
  fixture *f = user;
  f->slow = req;
  note(f, "slow-started");
  uv_timer_start(&f->slow_timer, slow_answer, 400, 0);
}

static void hook_stop(llorch_service *svc, void *user) { note(user, "stop"); }
static void hook_first(llorch_service *svc, void *user) { note(user, "shutdown-first"); }
static void hook_second(llorch_service *svc, void *user) {
  fixture *f = user;
  note(f, "shutdown-second");
  if (f->timer_open) {
    uv_close((uv_handle_t *)&f->slow_timer, NULL);
    f->timer_open = false;
  }
}

static void noop_timer(uv_timer_t *t) {}

static void hook_close_keepalive(llorch_service *svc, void *user) {
  uv_close(user, NULL);
}

static void fixture_start(fixture *f) {
  memset(f, 0, sizeof *f);
  assert_int_equal(llorch_config_init(&f->cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  free(f->cfg.listen);
  f->cfg.listen = strdup("127.0.0.1:0");
  f->cfg.shutdown_grace_ms = 5000;
  f->cfg.log.level = LLORCH_LOG_WARN;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_service_init(&f->svc, &f->cfg, "test", &em), 0);
  /* Nothing configured: the classes guarding /metrics are opened the way a role without tokens does. */
  llorch_service_open_access(f->svc, LLORCH_ACCESS_CLUSTER);
  assert_int_equal(llorch_service_route(f->svc, "GET", "/v1/models", LLORCH_ACCESS_PUBLIC, on_exact, f), 0);
  assert_int_equal(llorch_service_route(f->svc, "POST", "/v1/models", LLORCH_ACCESS_PUBLIC, on_exact, f), 0);
  assert_int_equal(llorch_service_route(f->svc, NULL, "/v2/*", LLORCH_ACCESS_PUBLIC, on_prefix, f), 0);
  assert_int_equal(llorch_service_route(f->svc, NULL, "/v2/jobs/*", LLORCH_ACCESS_PUBLIC, on_long_prefix, f), 0);
  assert_int_equal(llorch_service_route(f->svc, "GET", "/slow", LLORCH_ACCESS_PUBLIC, on_slow, f), 0);
  assert_int_equal(llorch_service_route(f->svc, "GET", "/v1/models", LLORCH_ACCESS_PUBLIC, on_exact, f), LLORCH_EEXIST);
  assert_int_equal(llorch_service_on_stop(f->svc, hook_stop, f), 0);
  assert_int_equal(llorch_service_on_shutdown(f->svc, hook_first, f), 0);
  assert_int_equal(llorch_service_on_shutdown(f->svc, hook_second, f), 0);
  uv_timer_init(llorch_service_loop(f->svc), &f->slow_timer);
  f->slow_timer.data = f;
  f->timer_open = true;
  assert_int_equal(llorch_service_port(f->svc), -1);
  assert_int_equal(llorch_service_listen(f->svc, &em), 0);
  f->port = llorch_service_port(f->svc);
  assert_true(f->port > 0);
}

static void fixture_end(fixture *f) {
  llorch_service_free(f->svc);
  llorch_config_free(&f->cfg);
}

/* ---- tests ---- */

static void test_parse_listen(void **state) {
  char host[64];
  int port;
  assert_int_equal(llorch_service_parse_listen("127.0.0.1:8080", host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 8080);
  assert_int_equal(llorch_service_parse_listen("[::1]:0", host, sizeof host, &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 0);
  assert_int_equal(llorch_service_parse_listen(":9", host, sizeof host, &port), 0);
  assert_string_equal(host, "0.0.0.0");
  assert_int_equal(llorch_service_parse_listen("host", host, sizeof host, &port), LLORCH_EINVAL);
  assert_int_equal(llorch_service_parse_listen("h:70000", host, sizeof host, &port), LLORCH_EINVAL);
  assert_int_equal(llorch_service_parse_listen("h:", host, sizeof host, &port), LLORCH_EINVAL);
  assert_int_equal(llorch_service_parse_listen("[::1]8080", host, sizeof host, &port), LLORCH_EINVAL);
}

/* The client thread's script for test_routes_and_shutdown. */
typedef struct script {
  int port;
  reply r[8];
  int rc[8];
  reply slow;
  int slow_rc;
} script;

static void *slow_client(void *arg) {
  script *s = arg;
  s->slow_rc = http_call(s->port, "GET", "/slow", &s->slow);
  return NULL;
}

static void *client_main(void *arg) {
  script *s = arg;
  s->rc[0] = http_call(s->port, "GET", "/health/live", &s->r[0]);
  s->rc[1] = http_call(s->port, "GET", "/metrics", &s->r[1]);
  s->rc[2] = http_call(s->port, "GET", "/v1/models", &s->r[2]);
  s->rc[3] = http_call(s->port, "DELETE", "/v1/models", &s->r[3]);
  s->rc[4] = http_call(s->port, "GET", "/v2/jobs/abc/cancel", &s->r[4]);
  s->rc[5] = http_call(s->port, "PUT", "/v2/other", &s->r[5]);
  s->rc[6] = http_call(s->port, "GET", "/nope", &s->r[6]);
  s->rc[7] = http_call(s->port, "POST", "/health/live", &s->r[7]);
  /* A request in flight when SIGTERM arrives must still be answered. */
  pthread_t t;
  pthread_create(&t, NULL, slow_client, s);
  usleep(150 * 1000);
  kill(getpid(), SIGTERM);
  pthread_join(t, NULL);
  return NULL;
}

static void test_routes_and_shutdown(void **state) {
  fixture f;
  fixture_start(&f);
  script s = {.port = f.port};
  pthread_t t;
  pthread_create(&t, NULL, client_main, &s);
  llorch_errmsg em = {{0}};
  int status = llorch_service_run(f.svc, &em);
  pthread_join(t, NULL);
  assert_int_equal(status, 0);

  for (int i = 0; i < 8; i++) assert_int_equal(s.rc[i], 0);
  assert_int_equal(s.r[0].status, 200);
  assert_non_null(strstr(s.r[0].text, "{\"status\":\"ok\"}"));
  assert_int_equal(s.r[1].status, 200);
  assert_non_null(strstr(s.r[1].text, "llorch_build_info{version=\"" LLORCH_VERSION
                                      "\",role=\"orchestrator\"} 1"));
  assert_non_null(strstr(s.r[1].text, "process_start_time_seconds"));
  assert_int_equal(s.r[2].status, 200);
  assert_non_null(strstr(s.r[2].text, "\r\n\r\nexact"));
  assert_int_equal(s.r[3].status, 405);
  assert_non_null(strstr(s.r[3].text, "Allow: GET, POST\r\n"));
  assert_int_equal(s.r[4].status, 200);
  assert_non_null(strstr(s.r[4].text, "\r\n\r\nlong-prefix"));
  assert_int_equal(s.r[5].status, 200);
  assert_non_null(strstr(s.r[5].text, "\r\n\r\nshort-prefix"));
  assert_int_equal(s.r[6].status, 404);
  assert_non_null(strstr(s.r[6].text, "\"error\""));
  assert_int_equal(s.r[7].status, 405);

  assert_int_equal(s.slow_rc, 0);
  assert_int_equal(s.slow.status, 200);
  assert_non_null(strstr(s.slow.text, "\r\n\r\nslow"));
  /* stop hooks before the drain, the late answer inside it, shutdown hooks
   * after it, newest first. */
  assert_string_equal(f.events, "slow-started,stop,slow-answered,shutdown-second,shutdown-first");
  assert_true(llorch_service_stopping(f.svc));
  fixture_end(&f);
}

static void stop_soon(uv_timer_t *t) {
  llorch_service *svc = t->data;
  llorch_service_stop(svc, 3);
  llorch_service_stop(svc, 4); /* ignored: already stopping */
  uv_close((uv_handle_t *)t, NULL);
}

static void test_stop_from_code(void **state) {
  fixture f;
  fixture_start(&f);
  uv_timer_t t;
  uv_timer_init(llorch_service_loop(f.svc), &t);
  t.data = f.svc;
  uv_timer_start(&t, stop_soon, 10, 0);
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_service_run(f.svc, &em), 3);
  assert_string_equal(f.events, "stop,shutdown-second,shutdown-first");
  fixture_end(&f);
}

static void test_listen_failure(void **state) {
  fixture a;
  fixture_start(&a);
  llorch_config cfg;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_POOL), 0);
  free(cfg.listen);
  char listen[64];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", a.port);
  cfg.listen = strdup(listen);
  cfg.log.level = LLORCH_LOG_ERROR;
  llorch_service *svc;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_service_init(&svc, &cfg, "test", &em), 0);
  /* The role's hooks still run, so its handles close and run() returns. */
  fixture b;
  memset(&b, 0, sizeof b);
  assert_int_equal(llorch_service_on_stop(svc, hook_stop, &b), 0);
  assert_int_equal(llorch_service_on_shutdown(svc, hook_first, &b), 0);
  uv_timer_t keepalive;
  uv_timer_init(llorch_service_loop(svc), &keepalive);
  assert_int_equal(uv_timer_start(&keepalive, noop_timer, 60000, 60000), 0);
  assert_int_equal(llorch_service_on_shutdown(svc, hook_close_keepalive, &keepalive), 0);
  assert_int_equal(llorch_service_run(svc, &em), 1);
  assert_non_null(strstr(em.text, listen));
  assert_string_equal(b.events, "stop,shutdown-first");
  llorch_service_free(svc);
  llorch_config_free(&cfg);
  fixture_end(&a);
}

/* ---- credential classes ---- */

typedef struct authz_case {
  llorch_service *svc;
  unsigned access;
  int status;          /* what llorch_service_authorize answered */
  const char *why;
} authz_case;

static void authz_on_request(llorch_http_request *req, void *user) {
  authz_case *c = user;
  c->why = NULL;
  c->status = llorch_service_authorize(c->svc, req, c->access, &c->why);
}

static int authz(authz_case *c, unsigned access, const char *auth_header) {
  char text[256];
  snprintf(text, sizeof text, "GET /x HTTP/1.1\r\nHost: h\r\n%s%s%s\r\n", auth_header ? "Authorization: " : "",
           auth_header ? auth_header : "", auth_header ? "\r\n" : "");
  c->access = access;
  c->status = -1;
  assert_int_equal(llorch_http_parse_buffer(NULL, text, strlen(text), authz_on_request, c), 1);
  return c->status;
}

static void test_credential_classes(void **state) {
  llorch_config cfg;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  cfg.log.level = LLORCH_LOG_ERROR;
  llorch_errmsg em = {{0}};
  authz_case c = {0};
  assert_int_equal(llorch_service_init(&c.svc, &cfg, "test", &em), 0);
  /* Closed with no tokens until a role says otherwise. */
  assert_int_equal(authz(&c, LLORCH_ACCESS_CLUSTER, NULL), 401);
  assert_int_equal(authz(&c, LLORCH_ACCESS_PUBLIC, NULL), 0);
  assert_int_equal(llorch_service_add_credentials(c.svc, LLORCH_ACCESS_CLIENT, (const char *const[]){"c1", "c2"}, 2), 0);
  assert_int_equal(llorch_service_add_credentials(c.svc, LLORCH_ACCESS_ADMIN, (const char *const[]){"a1"}, 1), 0);
  assert_int_equal(llorch_service_add_credentials(c.svc, LLORCH_ACCESS_CLIENT, (const char *const[]){""}, 1),
                   LLORCH_EINVAL);
  assert_int_equal(authz(&c, LLORCH_ACCESS_CLIENT, "Bearer c2"), 0);
  assert_int_equal(authz(&c, LLORCH_ACCESS_CLIENT | LLORCH_ACCESS_ADMIN, "Bearer a1"), 0);
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN, "Bearer c1"), 403); /* a client key on an admin route */
  assert_non_null(strstr(c.why, "admin_keys"));
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN, "Bearer nope"), 401);
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN, "Bearer a"), 401);  /* a prefix is not the key */
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN, "Basic a1"), 401);
  assert_int_equal(authz(&c, LLORCH_ACCESS_CLUSTER, "Bearer a1"), 403);
  llorch_service_open_access(c.svc, LLORCH_ACCESS_CLUSTER);
  assert_int_equal(authz(&c, LLORCH_ACCESS_CLUSTER, NULL), 0);
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN | LLORCH_ACCESS_CLUSTER, NULL), 0);
  assert_int_equal(authz(&c, LLORCH_ACCESS_ADMIN, NULL), 401);
  llorch_service_free(c.svc);
  llorch_config_free(&cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_listen),
      cmocka_unit_test(test_routes_and_shutdown),
      cmocka_unit_test(test_stop_from_code),
      cmocka_unit_test(test_listen_failure),
      cmocka_unit_test(test_credential_classes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
