/*
 * Tests for src/roles/orchestrator/events.c and dashboard.c with the real
 * orchestrator on this thread's loop and a client thread on loopback:
 * GET /v2/cluster/events needs an operator key (401 without, 403 with a
 * client key), starts with the state ("event: cluster"), carries timeline
 * entries as things change (a pool registers, then misses its heartbeats)
 * and the state after them, and ends when the orchestrator shuts down; the
 * page and its files are served; the drain route names a missing worker.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/config.h"
#include "llorch/orchestrator.h"
#include "llorch/service.h"

#define ADMIN "test-admin-key"
#define CLIENT "test-client-key"
#define CLUSTER "test-cluster-token"
#define DOWN_STATE "{\"name\":\"pool-t\",\"url\":\"http://127.0.0.1:9\",\"up\":false,"

/* A pool's registration (docs/cluster-protocol.md section 2): one CPU device, no workers. */
static const char *const register_doc =
    "{\"protocol\":1,\"pool\":\"pool-t\",\"url\":\"http://127.0.0.1:9\",\"boot_id\":\"b1\","
    "\"seq\":1,\"heartbeat_interval_ms\":100,\"version\":\"0.1.0\","
    "\"devices\":[{\"id\":\"cpu\",\"kind\":\"cpu\",\"index\":0,\"uuid\":\"cpu-host\",\"name\":\"CPU\","
    "\"memory_total\":8589934592,\"memory_used\":0,\"memory_free\":8589934592,"
    "\"utilization\":null,\"temperature\":null}],\"models\":[],\"workers\":[]}";

/* ---- blocking HTTP for the client thread ---- */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int http_open(int port, const char *method, const char *path, const char *key, const char *body) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char req[2048], auth[128] = "";
  if (key) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", key);
  if (!body) body = "";
  int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: t\r\n%sContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s", method, path, auth, strlen(body), body);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  return fd;
}

/*
 * Reads into buf until EOF, until `until` appears (NULL: only EOF), or until
 * deadline_ms passed. Returns the bytes held, or -1 on a read error.
 */
static long http_read(int fd, char *buf, size_t cap, size_t have, const char *until, int deadline_ms) {
  int64_t end = mono_ms() + deadline_ms;
  for (;;) {
    buf[have] = '\0';
    if (until && strstr(buf, until)) return (long)have;
    int64_t left = end - mono_ms();
    if (left <= 0 || have + 1 >= cap) return (long)have;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)left) <= 0) continue;
    ssize_t got = read(fd, buf + have, cap - 1 - have);
    if (got < 0) return -1;
    if (got == 0) return (long)have; /* EOF */
    have += (size_t)got;
  }
}

typedef struct reply {
  int status;
  char text[65536];
} reply;

static int http_call(int port, const char *method, const char *path, const char *key, reply *out) {
  int fd = http_open(port, method, path, key, NULL);
  if (fd < 0) return -1;
  long n = http_read(fd, out->text, sizeof out->text, 0, NULL, 5000);
  close(fd);
  out->status = 0;
  if (n < 0 || sscanf(out->text, "HTTP/1.1 %d", &out->status) != 1) return -1;
  return 0;
}

/* ---- the script the client thread runs ---- */

typedef struct script {
  int port;
  reply no_key, client_key, page, js, missing, drain, drain_bad, reg, too_many;
  int extra_open;             /* more streams that opened next to the first one */
  char stream[65536];
  long stream_first;          /* bytes when the first cluster event was in */
  long stream_up;             /* bytes when the pool_up timeline entry was in */
  long stream_down;           /* bytes when the pool_down timeline entry was in */
  long stream_state_down;     /* bytes when a state showing the pool down was in */
  bool stream_ended;          /* EOF after SIGTERM */
} script;

static void *client_main(void *arg) {
  script *s = arg;
  http_call(s->port, "GET", "/v2/cluster/events", NULL, &s->no_key);
  http_call(s->port, "GET", "/v2/cluster/events", CLIENT, &s->client_key);
  http_call(s->port, "GET", "/", NULL, &s->page);
  http_call(s->port, "GET", "/dashboard/app.js", NULL, &s->js);
  http_call(s->port, "GET", "/dashboard/nope.js", NULL, &s->missing);
  http_call(s->port, "POST", "/v2/cluster/workers/pool-x/w-1/drain", ADMIN, &s->drain);
  http_call(s->port, "POST", "/v2/cluster/workers/w-1/drain", ADMIN, &s->drain_bad);
  int fd = http_open(s->port, "GET", "/v2/cluster/events", ADMIN, NULL);
  if (fd >= 0) {
    s->stream_first = http_read(fd, s->stream, sizeof s->stream, 0, "event: cluster\ndata: {", 5000);
    /* 64 streams at most: the 65th gets 429. */
    int extra[63];
    for (int i = 0; i < 63; i++) {
      char head[256] = "";
      extra[i] = http_open(s->port, "GET", "/v2/cluster/events", ADMIN, NULL);
      if (extra[i] >= 0 && http_read(extra[i], head, sizeof head, 0, "event: ", 5000) > 0 &&
          strstr(head, "HTTP/1.1 200"))
        s->extra_open++;
    }
    http_call(s->port, "GET", "/v2/cluster/events", ADMIN, &s->too_many);
    for (int i = 0; i < 63; i++)
      if (extra[i] >= 0) close(extra[i]);
    /* A pool registers, then sends no heartbeat: up, then down after 3 x 100 ms. */
    int r = http_open(s->port, "POST", "/v2/pools/register", CLUSTER, register_doc);
    if (r >= 0) {
      long n = http_read(r, s->reg.text, sizeof s->reg.text, 0, NULL, 5000);
      if (n > 0) sscanf(s->reg.text, "HTTP/1.1 %d", &s->reg.status);
      close(r);
    }
    size_t at = (size_t)(s->stream_first > 0 ? s->stream_first : 0);
    s->stream_up = http_read(fd, s->stream, sizeof s->stream, at, "\"kind\":\"pool_up\"", 5000);
    at = (size_t)(s->stream_up > 0 ? s->stream_up : 0);
    s->stream_down = http_read(fd, s->stream, sizeof s->stream, at, "\"kind\":\"pool_down\"", 5000);
    at = (size_t)(s->stream_down > 0 ? s->stream_down : 0);
    s->stream_state_down = http_read(fd, s->stream, sizeof s->stream, at, DOWN_STATE, 5000);
    kill(getpid(), SIGTERM);
    /* The stream must end at shutdown, long before the grace period. */
    int64_t t0 = mono_ms();
    long n = http_read(fd, s->stream, sizeof s->stream,
                       (size_t)(s->stream_state_down > 0 ? s->stream_state_down : 0), NULL, 4000);
    s->stream_ended = n >= 0 && mono_ms() - t0 < 3000;
    close(fd);
  }
  return NULL;
}

static void test_events_stream(void **state) {
  (void)state;
  llorch_config cfg;
  assert_int_equal(llorch_config_init(&cfg, LLORCH_ROLE_ORCHESTRATOR), 0);
  const char *yaml =
      "listen: 127.0.0.1:0\n"
      "log: {level: warn}\n"
      "shutdown_grace: 10s\n"
      "orchestrator:\n"
      "  api_keys: [" CLIENT "]\n"
      "  admin_keys: [" ADMIN "]\n"
      "  cluster_token: " CLUSTER "\n"
      "  models:\n"
      "    - {name: m, file: m.gguf}\n";
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_config_load_string(&cfg, "test.yaml", yaml, strlen(yaml), &em), 0);
  assert_int_equal(llorch_config_finish(&cfg, &em), 0);
  llorch_service *svc = NULL;
  llorch_orchestrator *o = NULL;
  assert_int_equal(llorch_service_init(&svc, &cfg, "orchestrator", &em), 0);
  assert_int_equal(llorch_orchestrator_attach(&o, svc, NULL, &em), 0);
  assert_int_equal(llorch_service_listen(svc, &em), 0);
  script *s = calloc(1, sizeof *s);
  s->port = llorch_service_port(svc);
  pthread_t t;
  pthread_create(&t, NULL, client_main, s);
  int status = llorch_service_run(svc, &em);
  pthread_join(t, NULL);
  assert_int_equal(status, 0);

  assert_int_equal(s->no_key.status, 401);
  assert_non_null(strstr(s->no_key.text, "WWW-Authenticate: Bearer"));
  assert_int_equal(s->client_key.status, 403);
  assert_int_equal(s->page.status, 200);
  assert_non_null(strstr(s->page.text, "Content-Type: text/html"));
  assert_non_null(strstr(s->page.text, "Content-Security-Policy: default-src 'none'"));
  assert_non_null(strstr(s->page.text, "<title>llorch</title>"));
  assert_int_equal(s->js.status, 200);
  assert_non_null(strstr(s->js.text, "Content-Type: text/javascript"));
  assert_non_null(strstr(s->js.text, "/v2/cluster/events"));
  assert_int_equal(s->missing.status, 404);
  assert_non_null(strstr(s->missing.text, "no dashboard file 'nope.js'"));
  assert_int_equal(s->drain.status, 404);
  assert_non_null(strstr(s->drain.text, "no worker 'w-1' on pool 'pool-x'"));
  assert_int_equal(s->drain_bad.status, 404);
  assert_non_null(strstr(s->drain_bad.text, "/v2/cluster/workers/{pool}/{worker_id}/drain"));
  assert_int_equal(s->reg.status, 200);
  assert_int_equal(s->extra_open, 63);
  assert_int_equal(s->too_many.status, 429);
  assert_non_null(strstr(s->too_many.text, "too many open event streams (limit 64)"));

  /* The stream: headers, the state first, then the timeline entry. */
  assert_true(s->stream_first > 0);
  assert_non_null(strstr(s->stream, "HTTP/1.1 200"));
  assert_non_null(strstr(s->stream, "Content-Type: text/event-stream"));
  const char *cluster = strstr(s->stream, "event: cluster\ndata: {");
  assert_non_null(cluster);
  assert_non_null(strstr(cluster, "\"pools\":[]"));
  assert_true(s->stream_up > s->stream_first);
  const char *tl = strstr(s->stream, "event: timeline\ndata: {\"seq\":1,\"time_ms\":");
  if (!tl) fprintf(stderr, "stream:\n%s\n", s->stream);
  assert_non_null(tl);
  assert_non_null(strstr(tl, "\"kind\":\"pool_up\",\"pool\":\"pool-t\",\"worker\":null,\"model\":null,"
                              "\"message\":\"pool pool-t registered from http://127.0.0.1:9: 1 devices, 0 models\"}"));
  assert_true(s->stream_down > s->stream_up);
  const char *down = strstr(tl, "event: timeline\ndata: {\"seq\":2,");
  assert_non_null(down);
  assert_non_null(strstr(down, "\"kind\":\"pool_down\",\"pool\":\"pool-t\""));
  assert_non_null(strstr(down, "\"message\":\"pool pool-t is down: no heartbeat for "));
  /* The state pushed after it shows the pool down. */
  const char *state_down = strstr(down, "event: cluster\ndata: {");
  assert_non_null(state_down);
  assert_non_null(strstr(state_down, DOWN_STATE));
  assert_true(s->stream_ended);

  free(s);
  llorch_service_free(svc);
  llorch_orchestrator_free(o);
  llorch_config_free(&cfg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_events_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
