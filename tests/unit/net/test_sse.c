/* SSE framing (server side) and the incremental parser (client side). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/error.h"
#include "llorch/sse.h"

static void check_format(const char *event, const char *data, const char *want) {
  size_t n;
  char *s = llorch_sse_format(event, data, strlen(data), &n);
  assert_non_null(s);
  assert_int_equal(n, strlen(want));
  assert_string_equal(s, want);
  free(s);
}

static void test_format(void **state) {
  check_format(NULL, "hello", "data: hello\n\n");
  check_format("tick", "x", "event: tick\ndata: x\n\n");
  check_format(NULL, "", "data: \n\n");
  check_format(NULL, "a\nb", "data: a\ndata: b\n\n");
  check_format(NULL, "a\r\nb\rc", "data: a\ndata: b\ndata: c\n\n");
  check_format(NULL, "a\n", "data: a\ndata: \n\n");
  check_format("bad\nname", "x", "event: bad\ndata: x\n\n");
}

typedef struct collected {
  int n;
  char events[8][32];
  char data[8][128];
  char ids[8][32];
  int stop_after;
} collected;

static int collect(const llorch_sse_event *ev, void *user) {
  collected *c = user;
  assert_true(c->n < 8);
  snprintf(c->events[c->n], sizeof c->events[0], "%s", ev->event);
  assert_int_equal(strlen(ev->data), ev->data_len);
  snprintf(c->data[c->n], sizeof c->data[0], "%s", ev->data);
  snprintf(c->ids[c->n], sizeof c->ids[0], "%s", ev->id);
  c->n++;
  return c->stop_after && c->n >= c->stop_after ? 7 : 0;
}

/* Feeds text split at every position into two pieces, checking the same events each time. */
static void test_parse_any_split(void **state) {
  const char *text =
      ": comment\n"
      "data: one\n\n"
      "event: tick\r\n"
      "data: two\r\n"
      "data:  three\r\n"
      "id: 7\r\n\r\n"
      "retry: 1500\r"
      "data\r\r"
      "event: nodata\n\n"
      "data: last\n\n";
  size_t len = strlen(text);
  for (size_t cut = 0; cut <= len; cut++) {
    collected c = {0};
    llorch_sse_parser *p;
    assert_int_equal(llorch_sse_parser_init(&p, 0, collect, &c), 0);
    assert_int_equal(llorch_sse_parser_feed(p, text, cut), 0);
    assert_int_equal(llorch_sse_parser_feed(p, text + cut, len - cut), 0);
    assert_int_equal(c.n, 4);
    assert_string_equal(c.events[0], "message");
    assert_string_equal(c.data[0], "one");
    assert_string_equal(c.ids[0], "");
    assert_string_equal(c.events[1], "tick");
    assert_string_equal(c.data[1], "two\n three");
    assert_string_equal(c.ids[1], "7");
    assert_string_equal(c.events[2], "message");
    assert_string_equal(c.data[2], "");
    assert_string_equal(c.ids[2], "7");
    /* "event: nodata" had no data: not dispatched; its name does not leak. */
    assert_string_equal(c.events[3], "message");
    assert_string_equal(c.data[3], "last");
    assert_int_equal(llorch_sse_parser_retry(p), 1500);
    llorch_sse_parser_free(p);
  }
}

static void test_roundtrip_with_format(void **state) {
  const char *payload = "multi\nline\r\ndata";
  size_t n;
  char *s = llorch_sse_format("x", payload, strlen(payload), &n);
  collected c = {0};
  llorch_sse_parser *p;
  assert_int_equal(llorch_sse_parser_init(&p, 0, collect, &c), 0);
  for (size_t i = 0; i < n; i++) assert_int_equal(llorch_sse_parser_feed(p, s + i, 1), 0);
  assert_int_equal(c.n, 1);
  assert_string_equal(c.events[0], "x");
  assert_string_equal(c.data[0], "multi\nline\ndata");
  llorch_sse_parser_free(p);
  free(s);
}

static void test_bom_and_stop(void **state) {
  collected c = {.stop_after = 1};
  llorch_sse_parser *p;
  assert_int_equal(llorch_sse_parser_init(&p, 0, collect, &c), 0);
  assert_int_equal(llorch_sse_parser_feed(p, "\xEF\xBB", 2), 0);
  assert_int_equal(llorch_sse_parser_feed(p, "\xBF" "data: a\n\ndata: b\n\n", 19), 7);
  assert_int_equal(c.n, 1);
  assert_string_equal(c.data[0], "a");
  llorch_sse_parser_free(p);
}

static void test_event_limit(void **state) {
  collected c = {0};
  llorch_sse_parser *p;
  assert_int_equal(llorch_sse_parser_init(&p, 64, collect, &c), 0);
  char big[200];
  memset(big, 'x', sizeof big);
  assert_int_equal(llorch_sse_parser_feed(p, "data: ", 6), 0);
  assert_int_equal(llorch_sse_parser_feed(p, big, sizeof big), LLORCH_ELIMIT);
  assert_int_equal(llorch_sse_parser_feed(p, "\n\n", 2), LLORCH_ELIMIT);
  assert_int_equal(c.n, 0);
  llorch_sse_parser_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_format),
      cmocka_unit_test(test_parse_any_split),
      cmocka_unit_test(test_roundtrip_with_format),
      cmocka_unit_test(test_bom_and_stop),
      cmocka_unit_test(test_event_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
