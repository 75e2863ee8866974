/* Bearer parsing and token comparison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/auth.h"
#include "llorch/error.h"

static void test_parse_bearer(void **state) {
  const char *tok;
  size_t len;
  assert_int_equal(llorch_auth_parse_bearer("Bearer abc123", &tok, &len), 0);
  assert_int_equal(len, 6);
  assert_memory_equal(tok, "abc123", 6);
  assert_int_equal(llorch_auth_parse_bearer("bearer   sk-x  ", &tok, &len), 0);
  assert_int_equal(len, 4);
  assert_memory_equal(tok, "sk-x", 4);
  assert_int_equal(llorch_auth_parse_bearer(NULL, &tok, &len), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_parse_bearer("Basic abc", &tok, &len), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_parse_bearer("Bearer", &tok, &len), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_parse_bearer("Bearer ", &tok, &len), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_parse_bearer("Bearerabc", &tok, &len), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_parse_bearer("Bearer a b", &tok, &len), LLORCH_EAUTH);
}

static void test_token_equal(void **state) {
  assert_true(llorch_auth_token_equal("secret", 6, "secret", 6));
  assert_false(llorch_auth_token_equal("secreT", 6, "secret", 6));
  assert_false(llorch_auth_token_equal("secret", 6, "secret2", 7));
  assert_false(llorch_auth_token_equal("secret2", 7, "secret", 6));
  assert_false(llorch_auth_token_equal("", 0, "x", 1));
  assert_true(llorch_auth_token_equal("", 0, "", 0));
}

static void test_check_against_several_tokens(void **state) {
  const char *const toks[] = {"one", "two-token"};
  assert_int_equal(llorch_auth_check("Bearer one", toks, 2), 0);
  assert_int_equal(llorch_auth_check("Bearer two-token", toks, 2), 0);
  assert_int_equal(llorch_auth_check("Bearer two", toks, 2), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_check(NULL, toks, 2), LLORCH_EAUTH);
  assert_int_equal(llorch_auth_check("one", toks, 2), LLORCH_EAUTH);
  /* No tokens configured: authentication is off. */
  assert_int_equal(llorch_auth_check(NULL, toks, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_bearer),
      cmocka_unit_test(test_token_equal),
      cmocka_unit_test(test_check_against_several_tokens),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
