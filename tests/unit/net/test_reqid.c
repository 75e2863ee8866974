/* Request id validation and generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/reqid.h"

static void test_valid_ids(void **state) {
  assert_true(llorch_reqid_valid("a", 1));
  assert_true(llorch_reqid_valid("abc-DEF-123", 11));
  assert_true(llorch_reqid_valid("trace.1:span_2", 14));
  char max[65];
  memset(max, 'x', 64);
  max[64] = '\0';
  assert_true(llorch_reqid_valid(max, 64));
}

static void test_invalid_ids(void **state) {
  assert_false(llorch_reqid_valid(NULL, 0));
  assert_false(llorch_reqid_valid("", 0));
  char big[66];
  memset(big, 'x', 65);
  big[65] = '\0';
  assert_false(llorch_reqid_valid(big, 65));
  assert_false(llorch_reqid_valid("a b", 3));
  assert_false(llorch_reqid_valid("a/b", 3));
  assert_false(llorch_reqid_valid("a%b", 3));
  assert_false(llorch_reqid_valid("a\nb", 3));
  assert_false(llorch_reqid_valid("a\"b", 3));
  assert_false(llorch_reqid_valid("\xc3\xa9", 2));
}

static void test_generated_ids_are_valid_and_unique(void **state) {
  char a[LLORCH_REQID_MAX + 1], b[LLORCH_REQID_MAX + 1];
  llorch_reqid_generate(a);
  llorch_reqid_generate(b);
  assert_int_equal(strlen(a), 32);
  assert_true(llorch_reqid_valid(a, strlen(a)));
  assert_true(llorch_reqid_valid(b, strlen(b)));
  assert_string_not_equal(a, b);
  for (int i = 0; i < 1000; i++) {
    llorch_reqid_generate(b);
    assert_string_not_equal(a, b);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_ids),
      cmocka_unit_test(test_invalid_ids),
      cmocka_unit_test(test_generated_ids_are_valid_and_unique),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
