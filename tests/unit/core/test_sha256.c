/* SHA-256 (src/core/sha256.c) against FIPS 180-2 appendix B's vectors, fed
 * whole and in every split, and the hex form the protocol checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/sha256.h"

static void digest_of(const void *data, size_t len, char hex[LLORCH_SHA256_HEX]) {
  llorch_sha256 c;
  uint8_t d[LLORCH_SHA256_BYTES];
  llorch_sha256_init(&c);
  llorch_sha256_update(&c, data, len);
  llorch_sha256_final(&c, d);
  llorch_sha256_hex(d, hex);
}

static void test_fips_vectors(void **state) {
  (void)state;
  char hex[LLORCH_SHA256_HEX];
  /* B.1: "abc" */
  digest_of("abc", 3, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  /* B.2: the 448-bit two-block message */
  const char *b2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  digest_of(b2, strlen(b2), hex);
  assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  /* The empty message (FIPS 180-4 examples) */
  digest_of("", 0, hex);
  assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* B.3: one million 'a', fed in uneven pieces so every block boundary case runs. */
static void test_million_a(void **state) {
  (void)state;
  char *buf = malloc(1000000);
  assert_non_null(buf);
  memset(buf, 'a', 1000000);
  llorch_sha256 c;
  uint8_t d[LLORCH_SHA256_BYTES];
  char hex[LLORCH_SHA256_HEX];
  llorch_sha256_init(&c);
  size_t off = 0, step = 1;
  while (off < 1000000) {
    size_t n = step < 1000000 - off ? step : 1000000 - off;
    llorch_sha256_update(&c, buf + off, n);
    off += n;
    step = step * 7 % 997 + 1;
  }
  llorch_sha256_final(&c, d);
  llorch_sha256_hex(d, hex);
  assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  free(buf);
}

/* Every split of B.2 gives the same digest (the partial-block path). */
static void test_every_split(void **state) {
  (void)state;
  const char *b2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  size_t n = strlen(b2);
  for (size_t cut = 0; cut <= n; cut++) {
    llorch_sha256 c;
    uint8_t d[LLORCH_SHA256_BYTES];
    char hex[LLORCH_SHA256_HEX];
    llorch_sha256_init(&c);
    llorch_sha256_update(&c, b2, cut);
    llorch_sha256_update(&c, b2 + cut, n - cut);
    llorch_sha256_final(&c, d);
    llorch_sha256_hex(d, hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  }
}

static void test_hex_valid(void **state) {
  (void)state;
  assert_true(llorch_sha256_hex_valid("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  assert_false(llorch_sha256_hex_valid("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
  assert_false(llorch_sha256_hex_valid("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a"));
  assert_false(llorch_sha256_hex_valid("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015add"));
  assert_false(llorch_sha256_hex_valid("xa7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  assert_false(llorch_sha256_hex_valid(""));
  assert_false(llorch_sha256_hex_valid(NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fips_vectors),
      cmocka_unit_test(test_million_a),
      cmocka_unit_test(test_every_split),
      cmocka_unit_test(test_hex_valid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
