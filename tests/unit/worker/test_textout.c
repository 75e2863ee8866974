/*
 * Streaming text release: UTF-8 hold-back, stop strings spanning pieces,
 * sanitizing invalid bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "roles/worker/textout.h"

/* Pushes pieces one by one; returns everything released, concatenated. */
static char *push_all(worker_textout *t, const char *const *pieces, int n, bool flush) {
  static char acc[1024];
  size_t n_acc = 0;
  for (int i = 0; i < n; i++) {
    char *out;
    size_t len;
    assert_int_equal(worker_textout_push(t, pieces[i], strlen(pieces[i]), &out, &len), 0);
    if (out) memcpy(acc + n_acc, out, len);
    n_acc += len;
    free(out);
  }
  if (flush) {
    char *out;
    size_t len;
    assert_int_equal(worker_textout_flush(t, &out, &len), 0);
    if (out) memcpy(acc + n_acc, out, len);
    n_acc += len;
    free(out);
  }
  acc[n_acc] = 0;
  return acc;
}

static void test_utf8_held_until_complete(void **state) {
  worker_textout t;
  worker_textout_init(&t, NULL, 0);
  char *out;
  size_t len;
  /* "é" = C3 A9 split over two pieces */
  assert_int_equal(worker_textout_push(&t, "a\xC3", 2, &out, &len), 0);
  assert_int_equal(len, 1);
  assert_string_equal(out, "a");
  free(out);
  assert_int_equal(worker_textout_push(&t, "\xA9", 1, &out, &len), 0);
  assert_string_equal(out, "\xC3\xA9");
  free(out);
  /* 4-byte emoji in three pieces */
  assert_int_equal(worker_textout_push(&t, "\xF0\x9F", 2, &out, &len), 0);
  assert_null(out);
  assert_int_equal(worker_textout_push(&t, "\x98", 1, &out, &len), 0);
  assert_null(out);
  assert_int_equal(worker_textout_push(&t, "\x80!", 2, &out, &len), 0);
  assert_string_equal(out, "\xF0\x9F\x98\x80!");
  free(out);
  /* an incomplete tail at the end becomes U+FFFD */
  assert_int_equal(worker_textout_push(&t, "\xE2\x82", 2, &out, &len), 0);
  assert_null(out);
  assert_int_equal(worker_textout_flush(&t, &out, &len), 0);
  assert_string_equal(out, "\xEF\xBF\xBD\xEF\xBF\xBD");
  free(out);
  worker_textout_free(&t);
}

static void test_stop_spanning_pieces(void **state) {
  char *stops[] = {"END", "\n\n"};
  worker_textout t;
  worker_textout_init(&t, stops, 2);
  const char *p[] = {"hello E", "N", "D world"};
  assert_string_equal(push_all(&t, p, 3, false), "hello ");
  assert_true(t.stopped);
  worker_textout_free(&t);

  /* a prefix that does not complete is released */
  worker_textout_init(&t, stops, 2);
  const char *q[] = {"AE", "N", "X\n", "z"};
  assert_string_equal(push_all(&t, q, 4, false), "AENX\nz");
  assert_false(t.stopped);
  worker_textout_free(&t);

  /* a held prefix at the end of generation is released by flush */
  worker_textout_init(&t, stops, 2);
  const char *r[] = {"ok", "EN"};
  assert_string_equal(push_all(&t, r, 2, true), "okEN");
  worker_textout_free(&t);

  /* the stop string in the middle of a piece drops the rest */
  worker_textout_init(&t, stops, 2);
  const char *u[] = {"a\n\nb"};
  assert_string_equal(push_all(&t, u, 1, false), "a");
  assert_true(t.stopped);
  worker_textout_free(&t);
}

static void test_sanitize(void **state) {
  size_t n;
  char *s = worker_utf8_sanitize("a\xFF" "b\xC0\x80" "c\xED\xA0\x80", 9, &n);
  assert_string_equal(s, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD" "c\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_utf8_held_until_complete),
      cmocka_unit_test(test_stop_spanning_pieces),
      cmocka_unit_test(test_sanitize),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
