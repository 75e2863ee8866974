/*
 * Differential check of the dequantizers and half-precision conversions
 * against ggml itself: libggml-base.so from the prebuilt llama.cpp that
 * node-llama-cpp ships (tests/reference, `npm ci` there) is loaded with
 * dlopen and its dequantize_row_* / ggml_fp32_to_* are called on the same
 * random blocks. Results must be identical bit for bit: the engine's
 * "same logits as llama.cpp" rests on it. Skipped when the library is not
 * installed.
 */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "llorch/quant.h"

#ifndef GGML_BASE_LIB
#define GGML_BASE_LIB ""
#endif

typedef void (*ggml_dequant_fn)(const void *x, float *y, int64_t k);
typedef uint16_t (*ggml_to_half_fn)(float f);

static void *lib;

static int setup(void **state) {
  (void)state;
  lib = dlopen(GGML_BASE_LIB, RTLD_NOW | RTLD_LOCAL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (lib) dlclose(lib);
  return 0;
}

static void *sym(const char *name) {
  if (lib == NULL) {
    print_message("skipping: cannot load %s (scripts/install-deps.sh --with-npm installs it in tests/reference)\n", GGML_BASE_LIB);
    skip();
  }
  void *p = dlsym(lib, name);
  if (p == NULL) {
    print_error("%s not exported by %s\n", name, GGML_BASE_LIB);
    fail();
  }
  return p;
}

static uint64_t rng = 0x1234567887654321ull;

static uint64_t next64(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* a finite fp16 scale of moderate size, either sign */
static uint16_t random_scale(void) {
  uint16_t exp = (uint16_t)(5 + next64() % 20); /* 2^-10 .. 2^9 */
  return (uint16_t)((next64() & 0x8000) | (exp << 10) | (next64() & 0x3ff));
}

/* Random blocks: random bytes, then the fp16 fields at the given offsets set finite. */
static void check_type(llorch_ggml_type t, const char *fn, const size_t *half_offsets, int n_half) {
  ggml_dequant_fn ref = (ggml_dequant_fn)sym(fn);
  size_t be, bb;
  assert_true(llorch_type_geometry(t, &be, &bb));
  enum { BLOCKS = 512 };
  uint8_t *blk = malloc(BLOCKS * bb);
  float *a = malloc(BLOCKS * be * sizeof(float)), *b = malloc(BLOCKS * be * sizeof(float));
  for (int round = 0; round < 20; round++) {
    for (size_t i = 0; i < BLOCKS * bb; i++) blk[i] = (uint8_t)next64();
    for (size_t k = 0; k < BLOCKS; k++)
      for (int h = 0; h < n_half; h++) {
        uint16_t s = random_scale();
        memcpy(blk + k * bb + half_offsets[h], &s, 2);
      }
    int64_t n = (int64_t)(BLOCKS * be);
    ref(blk, a, n);
    assert_int_equal(llorch_dequantize_row(t, blk, b, n), 0);
    for (int64_t i = 0; i < n; i++) {
      uint32_t x, y;
      memcpy(&x, &a[i], 4);
      memcpy(&y, &b[i], 4);
      if (x != y) {
        print_error("%s element %lld: ggml %.9g, llorch %.9g\n", llorch_type_name(t), (long long)i,
                    (double)a[i], (double)b[i]);
        fail();
      }
    }
  }
  free(blk);
  free(a);
  free(b);
}

static void test_q8_0(void **state) {
  (void)state;
  const size_t h[1] = {offsetof(llorch_block_q8_0, d)};
  check_type(LLORCH_TYPE_Q8_0, "dequantize_row_q8_0", h, 1);
}

static void test_q4_0(void **state) {
  (void)state;
  const size_t h[1] = {offsetof(llorch_block_q4_0, d)};
  check_type(LLORCH_TYPE_Q4_0, "dequantize_row_q4_0", h, 1);
}

static void test_q4_K(void **state) {
  (void)state;
  const size_t h[2] = {offsetof(llorch_block_q4_K, d), offsetof(llorch_block_q4_K, dmin)};
  check_type(LLORCH_TYPE_Q4_K, "dequantize_row_q4_K", h, 2);
}

static void test_q6_K(void **state) {
  (void)state;
  const size_t h[1] = {offsetof(llorch_block_q6_K, d)};
  check_type(LLORCH_TYPE_Q6_K, "dequantize_row_q6_K", h, 1);
}

/* Our quantizers' blocks decode the same in ggml (they are valid blocks). */
static void test_quantized_blocks_decode_alike(void **state) {
  (void)state;
  ggml_dequant_fn ref_q4k = (ggml_dequant_fn)sym("dequantize_row_q4_K");
  ggml_dequant_fn ref_q6k = (ggml_dequant_fn)sym("dequantize_row_q6_K");
  enum { N = 256 * 32 };
  static float x[N], a[N], b[N];
  static uint8_t q[N];
  for (int i = 0; i < N; i++) x[i] = (float)((int64_t)(next64() % 20001) - 10000) / 3000.0f;
  assert_int_equal(llorch_quantize_row(LLORCH_TYPE_Q4_K, x, q, N), 0);
  ref_q4k(q, a, N);
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q4_K, q, b, N), 0);
  assert_memory_equal(a, b, sizeof a);
  assert_int_equal(llorch_quantize_row(LLORCH_TYPE_Q6_K, x, q, N), 0);
  ref_q6k(q, a, N);
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q6_K, q, b, N), 0);
  assert_memory_equal(a, b, sizeof a);
}

static void test_half_conversions(void **state) {
  (void)state;
  ggml_to_half_fn to_fp16 = (ggml_to_half_fn)sym("ggml_fp32_to_fp16");
  ggml_to_half_fn to_bf16 = (ggml_to_half_fn)sym("ggml_fp32_to_bf16");
  for (int i = 0; i < 1000000; i++) {
    uint32_t u = (uint32_t)next64();
    float f;
    memcpy(&f, &u, 4);
    if (!isnan(f)) /* NaN payloads may legitimately differ for fp16 */
      if (to_fp16(f) != llorch_fp32_to_fp16(f)) {
        print_error("fp16 of 0x%08x: ggml 0x%04x llorch 0x%04x\n", u, to_fp16(f), llorch_fp32_to_fp16(f));
        fail();
      }
    if (to_bf16(f) != llorch_fp32_to_bf16(f)) {
      print_error("bf16 of 0x%08x: ggml 0x%04x llorch 0x%04x\n", u, to_bf16(f), llorch_fp32_to_bf16(f));
      fail();
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_q8_0),
      cmocka_unit_test(test_q4_0),
      cmocka_unit_test(test_q4_K),
      cmocka_unit_test(test_q6_K),
      cmocka_unit_test(test_quantized_blocks_decode_alike),
      cmocka_unit_test(test_half_conversions),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
