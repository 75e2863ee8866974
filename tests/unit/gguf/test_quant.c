/*
 * Dequantizer vectors worked out by hand from the format definitions
 * (ggml-common.h / ggml-quants.c): blocks are built byte by byte with chosen
 * d, scales and quants, and the expected floats are written from the format
 * formula or as literals - never by calling the code under test. Then
 * half-precision conversions against values computed from the format
 * definition in double arithmetic, and quantize -> dequantize round-trip
 * error bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>
#include <cmocka.h>

#include "llorch/quant.h"

/* ---- helpers ---- */

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v & 0xff);
  p[1] = (uint8_t)(v >> 8);
}

static uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* exact compare, printing the index on failure */
static void expect_floats(const float *got, const float *want, int n) {
  for (int i = 0; i < n; i++) {
    if (f2u(got[i]) != f2u(want[i])) {
      print_error("element %d: got %.9g, want %.9g\n", i, (double)got[i], (double)want[i]);
      fail();
    }
  }
}

/* ---- dequantizers ---- */

static void test_dequant_f32_f16_bf16(void **state) {
  (void)state;
  uint8_t f16[16];
  const uint16_t h[8] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x7c00, 0x8000, 0x3555};
  for (int i = 0; i < 8; i++) put16(f16 + 2 * i, h[i]);
  /* 1, -2, 65504 (largest), 2^-24 (smallest subnormal), 2^-14 (smallest
   * normal), +inf, -0, 0x3555 = 1.0101010101b * 2^-2 = 1365/4096 */
  const float want16[8] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f, 6.103515625e-05f,
                           INFINITY, -0.0f, 0.333251953125f};
  float got[8];
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_F16, f16, got, 8), 0);
  expect_floats(got, want16, 8);

  uint8_t b16[8];
  const uint16_t b[4] = {0x3f80, 0xc0a0, 0x7f80, 0x4049};
  for (int i = 0; i < 4; i++) put16(b16 + 2 * i, b[i]);
  const float wantb[4] = {1.0f, -5.0f, INFINITY, 3.140625f};
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_BF16, b16, got, 4), 0);
  expect_floats(got, wantb, 4);

  const float f32[3] = {1.5f, -0.25f, 1e30f};
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_F32, f32, got, 3), 0);
  expect_floats(got, f32, 3);
}

static void test_dequant_q8_0(void **state) {
  (void)state;
  uint8_t blk[2 * 34];
  /* block 0: d = 0.5 (0x3800), qs[j] = j - 16; block 1: d = -3 (0xc200), qs = 127, -127, 0... */
  put16(blk, 0x3800);
  for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(int8_t)(j - 16);
  put16(blk + 34, 0xc200);
  memset(blk + 36, 0, 32);
  blk[36] = 127;
  blk[37] = (uint8_t)(int8_t)-127;
  blk[38] = 1;
  float want[64], got[64];
  for (int j = 0; j < 32; j++) want[j] = (float)(j - 16) * 0.5f;
  for (int j = 32; j < 64; j++) want[j] = 0.0f * -3.0f; /* -0 */
  want[32] = -381.0f;
  want[33] = 381.0f;
  want[34] = -3.0f;
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q8_0, blk, got, 64), 0);
  expect_floats(got, want, 64);
  assert_true(got[0] == -8.0f && got[31] == 7.5f); /* literal spot checks */
}

static void test_dequant_q4_0(void **state) {
  (void)state;
  uint8_t blk[18];
  put16(blk, 0x4000); /* d = 2 */
  for (int j = 0; j < 16; j++) blk[2 + j] = (uint8_t)(j | ((15 - j) << 4));
  /* element j (j < 16) = low nibble j: (j - 8) * 2; element j + 16 = high nibble 15 - j */
  const float want[32] = {-16, -14, -12, -10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10, 12, 14,
                          14,  12,  10,  8,   6,  4,  2,  0,  -2, -4, -6, -8, -10, -12, -14, -16};
  float got[32];
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q4_0, blk, got, 32), 0);
  expect_floats(got, want, 32);
}

static void test_dequant_q4_K(void **state) {
  (void)state;
  /* d = 1, dmin = 0.5; sub-block scales sc and mins m chosen to use all 6 bits */
  const int sc[8] = {1, 2, 3, 4, 17, 33, 48, 63};
  const int m[8] = {0, 1, 2, 3, 20, 40, 50, 63};
  uint8_t blk[144];
  put16(blk, 0x3c00);
  put16(blk + 2, 0x3800);
  /* scales packed by hand (get_scale_min_k4): bytes 0-3 = sc[0..3] | top2(sc[4..7]) << 6,
   * bytes 4-7 = m[0..3] | top2(m[4..7]) << 6, bytes 8-11 = low4(sc[4+i]) | low4(m[4+i]) << 4.
   * 17 = 01 0001, 33 = 10 0001, 48 = 11 0000, 63 = 11 1111; 20 = 01 0100, 40 = 10 1000,
   * 50 = 11 0010. */
  const uint8_t scales[12] = {0x41, 0x82, 0xC3, 0xC4, 0x40, 0x81, 0xC2, 0xC3, 0x41, 0x81, 0x20, 0xFF};
  memcpy(blk + 4, scales, 12);
  for (int i = 0; i < 128; i++) blk[16 + i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
  /* group g of 64: qs[32g + l] low nibble -> element 64g + l (sub-block 2g),
   * high nibble -> element 64g + 32 + l (sub-block 2g + 1); x = d*sc*q - dmin*m */
  float want[256], got[256];
  for (int g = 0; g < 4; g++) {
    for (int l = 0; l < 32; l++) {
      want[64 * g + l] = (float)(sc[2 * g] * (l % 16)) - 0.5f * (float)m[2 * g];
      want[64 * g + 32 + l] = (float)(sc[2 * g + 1] * (15 - l % 16)) - 0.5f * (float)m[2 * g + 1];
    }
  }
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q4_K, blk, got, 256), 0);
  expect_floats(got, want, 256);
  /* literal spot checks */
  assert_true(got[0] == 0.0f);
  assert_true(got[1] == 1.0f);
  assert_true(got[32] == 29.5f);     /* sc 2 * 15 - 0.5 * 1 */
  assert_true(got[69] == 14.0f);     /* sub-block 2: 3 * 5 - 0.5 * 2 */
  assert_true(got[202] == 455.0f);   /* sub-block 6: 48 * 10 - 25 */
  assert_true(got[224] == 913.5f);   /* sub-block 7: 63 * 15 - 31.5 */
  assert_true(got[255] == -31.5f);   /* 63 * 0 - 31.5 */
}

static void test_dequant_q6_K(void **state) {
  (void)state;
  uint8_t blk[210];
  for (int i = 0; i < 128; i++) blk[i] = (uint8_t)i;          /* ql */
  for (int i = 0; i < 64; i++) blk[128 + i] = 0xE4;           /* qh: 2-bit fields 0,1,2,3 */
  for (int i = 0; i < 16; i++) blk[192 + i] = (uint8_t)(int8_t)(i - 8); /* scales -8..7 */
  put16(blk + 208, 0x3400);                                   /* d = 0.25 */
  /* half h, l in 0..31, ql = ql + 64h, scales + 8h:
   *   y[l]    q = (ql[l] & 15)      | 0 << 4, scale[l/16]
   *   y[l+32] q = (ql[l+32] & 15)   | 1 << 4, scale[l/16 + 2]
   *   y[l+64] q = (ql[l] >> 4)      | 2 << 4, scale[l/16 + 4]
   *   y[l+96] q = (ql[l+32] >> 4)   | 3 << 4, scale[l/16 + 6]    x = d * scale * (q - 32) */
  float want[256], got[256];
  for (int h = 0; h < 2; h++) {
    for (int l = 0; l < 32; l++) {
      int a = 64 * h + l, b = 64 * h + l + 32, s = 8 * h + l / 16 - 8;
      want[128 * h + l] = 0.25f * (float)(s + 0) * (float)(((a & 15) | 0) - 32);
      want[128 * h + l + 32] = 0.25f * (float)(s + 2) * (float)(((b & 15) | 16) - 32);
      want[128 * h + l + 64] = 0.25f * (float)(s + 4) * (float)(((a >> 4) | 32) - 32);
      want[128 * h + l + 96] = 0.25f * (float)(s + 6) * (float)(((b >> 4) | 48) - 32);
    }
  }
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q6_K, blk, got, 256), 0);
  expect_floats(got, want, 256);
  assert_true(got[0] == 64.0f);      /* 0.25 * -8 * -32 */
  assert_true(got[32] == 24.0f);     /* 0.25 * -6 * (16 - 32) */
  assert_true(got[64] == 0.0f);      /* q = 32 */
  assert_true(got[96] == -9.0f);     /* 0.25 * -2 * (2 + 48 - 32) */
  assert_true(got[145] == -7.75f);   /* h 1, l 17: 0.25 * 1 * (1 - 32) */
  assert_true(got[177] == -11.25f);  /* 0.25 * 3 * (1 + 16 - 32) */
  assert_true(got[209] == 6.25f);    /* 0.25 * 5 * 5 */
  assert_true(got[241] == 40.25f);   /* 0.25 * 7 * (7 + 16) */
}

static void test_dequant_errors(void **state) {
  (void)state;
  uint8_t buf[64] = {0};
  float out[64];
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q4_0, buf, out, 31), LLORCH_EINVAL);
  assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q5_K, buf, out, 256), LLORCH_EUNSUPPORTED);
  assert_int_equal(llorch_dequantize_row((llorch_ggml_type)99, buf, out, 32), LLORCH_EUNSUPPORTED);
}

/* ---- geometry ---- */

static void test_geometry(void **state) {
  (void)state;
  const struct { llorch_ggml_type t; size_t be, bb; const char *name; } want[] = {
      {LLORCH_TYPE_F32, 1, 4, "F32"},      {LLORCH_TYPE_F16, 1, 2, "F16"},
      {LLORCH_TYPE_BF16, 1, 2, "BF16"},    {LLORCH_TYPE_Q4_0, 32, 18, "Q4_0"},
      {LLORCH_TYPE_Q4_1, 32, 20, "Q4_1"},  {LLORCH_TYPE_Q5_0, 32, 22, "Q5_0"},
      {LLORCH_TYPE_Q5_1, 32, 24, "Q5_1"},  {LLORCH_TYPE_Q8_0, 32, 34, "Q8_0"},
      {LLORCH_TYPE_Q2_K, 256, 84, "Q2_K"}, {LLORCH_TYPE_Q3_K, 256, 110, "Q3_K"},
      {LLORCH_TYPE_Q4_K, 256, 144, "Q4_K"}, {LLORCH_TYPE_Q5_K, 256, 176, "Q5_K"},
      {LLORCH_TYPE_Q6_K, 256, 210, "Q6_K"}, {LLORCH_TYPE_Q8_K, 256, 292, "Q8_K"},
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    size_t be = 0, bb = 0;
    assert_true(llorch_type_geometry(want[i].t, &be, &bb));
    assert_int_equal(be, want[i].be);
    assert_int_equal(bb, want[i].bb);
    assert_string_equal(llorch_type_name(want[i].t), want[i].name);
    llorch_ggml_type parsed;
    assert_int_equal(llorch_type_parse(want[i].name, &parsed), 0);
    assert_int_equal(parsed, want[i].t);
  }
  llorch_ggml_type t;
  assert_int_equal(llorch_type_parse("q4_k", &t), 0);
  assert_int_equal(t, LLORCH_TYPE_Q4_K);
  assert_int_equal(llorch_type_parse("q4_k_m", &t), LLORCH_EINVAL);
  assert_false(llorch_type_geometry((llorch_ggml_type)4, NULL, NULL)); /* removed Q4_2 */
  assert_false(llorch_type_geometry((llorch_ggml_type)39, NULL, NULL));
  assert_string_equal(llorch_type_name((llorch_ggml_type)1000), "?");
  assert_int_equal(llorch_row_size(LLORCH_TYPE_Q4_K, 4096), 16 * 144);
  assert_int_equal(llorch_row_size(LLORCH_TYPE_Q4_K, 4000), 0);
}

/* ---- half precision ---- */

/*
 * Reference fp16 values from the format definition, in double arithmetic
 * (not the compiler's _Float16, which not every compiler here supports):
 * sign, 5-bit exponent biased by 15, 10-bit mantissa; exponent 0 is
 * subnormal (m * 2^-24), 31 is inf/NaN.
 */
static double fp16_value(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

/* Nearest fp16 to f, ties to even, by binary search over all finite values. */
static uint16_t fp16_nearest(float f) {
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  double a = fabs((double)f);
  if (a >= 65520.0) return sign | 0x7c00; /* halfway to 2^16 rounds to the even inf */
  uint16_t lo = 0, hi = 0x7bff;
  while (lo < hi) { /* largest h with value(h) <= a */
    uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
    if (fp16_value(mid) <= a) lo = mid;
    else hi = (uint16_t)(mid - 1);
  }
  if (lo == 0x7bff) return sign | 0x7bff;
  double d0 = a - fp16_value(lo), d1 = fp16_value((uint16_t)(lo + 1)) - a;
  uint16_t h = d0 < d1 ? lo : d1 < d0 ? (uint16_t)(lo + 1) : (lo & 1) ? (uint16_t)(lo + 1) : lo;
  return sign | h;
}

static void test_fp16_exhaustive(void **state) {
  (void)state;
  for (uint32_t h = 0; h < 0x10000; h++) {
    double want = fp16_value((uint16_t)h);
    float got = llorch_fp16_to_fp32((uint16_t)h);
    if (isnan(want)) {
      assert_true(isnan(got));
      continue;
    }
    if ((double)got != want || !signbit(got) != !signbit(want)) {
      print_error("fp16 0x%04x: got %.9g want %.9g\n", h, (double)got, want);
      fail();
    }
  }
}

static void test_fp32_to_fp16_rne(void **state) {
  (void)state;
  /* literal cases: ties to even, overflow, subnormals */
  assert_int_equal(llorch_fp32_to_fp16(1.0f), 0x3c00);
  assert_int_equal(llorch_fp32_to_fp16(u2f(0x3f801000)), 0x3c00); /* 1 + 2^-11: tie -> even 0x3c00 */
  assert_int_equal(llorch_fp32_to_fp16(u2f(0x3f803000)), 0x3c02); /* 1 + 3*2^-11: tie -> even 0x3c02 */
  assert_int_equal(llorch_fp32_to_fp16(u2f(0x3f801001)), 0x3c01); /* just above the tie */
  assert_int_equal(llorch_fp32_to_fp16(65504.0f), 0x7bff);
  assert_int_equal(llorch_fp32_to_fp16(65519.0f), 0x7bff);
  assert_int_equal(llorch_fp32_to_fp16(65520.0f), 0x7c00);         /* tie to even -> inf */
  assert_int_equal(llorch_fp32_to_fp16(-1e10f), 0xfc00);
  assert_int_equal(llorch_fp32_to_fp16(5.9604644775390625e-08f), 0x0001);
  assert_int_equal(llorch_fp32_to_fp16(2.98023223876953125e-08f), 0x0000); /* 2^-25: tie -> 0 */
  assert_int_equal(llorch_fp32_to_fp16(-0.0f), 0x8000);
  assert_true((llorch_fp32_to_fp16(NAN) & 0x7c00) == 0x7c00 && (llorch_fp32_to_fp16(NAN) & 0x3ff) != 0);
  /* a sweep of bit patterns (every exponent, then random) against the search */
  uint64_t s = 12345;
  for (int i = 0; i < 300000; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t u = (uint32_t)(s >> 32);
    if (i < 65536) u = ((uint32_t)i << 16) | (uint32_t)(s >> 48);
    float f = u2f(u);
    if (isnan(f)) continue;
    uint16_t want = fp16_nearest(f), got = llorch_fp32_to_fp16(f);
    if (got != want) {
      print_error("fp32 0x%08x: got 0x%04x want 0x%04x\n", u, got, want);
      fail();
    }
  }
  /* every tie between two neighbouring fp16 values */
  for (uint16_t h = 0; h < 0x7bff; h++) {
    float mid = (float)((fp16_value(h) + fp16_value((uint16_t)(h + 1))) / 2); /* exact in float */
    assert_int_equal(llorch_fp32_to_fp16(mid), (h & 1) ? h + 1 : h);
  }
}

static void test_bf16(void **state) {
  (void)state;
  assert_int_equal(llorch_fp32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(llorch_fp32_to_bf16(u2f(0x3f808000)), 0x3f80); /* tie -> even */
  assert_int_equal(llorch_fp32_to_bf16(u2f(0x3f818000)), 0x3f82); /* tie -> even (up) */
  assert_int_equal(llorch_fp32_to_bf16(u2f(0x3f808001)), 0x3f81);
  assert_int_equal(llorch_fp32_to_bf16(u2f(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds to inf */
  assert_int_equal(llorch_fp32_to_bf16(u2f(0x7f800001)), 0x7fc0); /* signalling NaN made quiet */
  assert_int_equal(llorch_fp32_to_bf16(u2f(0xffc00000)), 0xffc0);
  assert_int_equal(llorch_fp32_to_bf16(-INFINITY), 0xff80);
  assert_true(llorch_bf16_to_fp32(0xc0a0) == -5.0f);
}

/* ---- round trips ---- */

static float rt_normal(uint64_t *s) {
  float sum = 0;
  for (int k = 0; k < 4; k++) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    sum += (float)(*s >> 40) / (float)(1 << 24);
  }
  return (sum - 2.0f) * 1.7320508f;
}

static void roundtrip(llorch_ggml_type t, double max_rel_rmse, double max_abs_over_amax) {
  enum { N = 256 * 64 };
  static float src[N], back[N];
  static uint8_t q[N * 4];
  uint64_t s = 99;
  for (int i = 0; i < N; i++) src[i] = rt_normal(&s) * (i < N / 2 ? 0.02f : 3.0f);
  src[5] = 0.0f;
  memset(src + 256 * 10, 0, 256 * sizeof(float)); /* an all-zero super-block */
  assert_int_equal(llorch_quantize_row(t, src, q, N), 0);
  assert_int_equal(llorch_dequantize_row(t, q, back, N), 0);
  /* per 256-element span: RMS error relative to the span's RMS, and max error vs max |x| */
  for (int b = 0; b < N / 256; b++) {
    double se = 0, ss = 0, amax = 0, emax = 0;
    for (int i = 256 * b; i < 256 * (b + 1); i++) {
      double e = (double)back[i] - (double)src[i];
      se += e * e;
      ss += (double)src[i] * src[i];
      amax = fmax(amax, fabs(src[i]));
      emax = fmax(emax, fabs(e));
      assert_false(isnan(back[i]));
    }
    if (ss == 0) {
      assert_true(emax == 0);
      continue;
    }
    double rel = sqrt(se / ss);
    if (rel > max_rel_rmse || emax > max_abs_over_amax * amax) {
      print_error("%s span %d: rel rmse %.4f (max %.4f), max err %.4g vs amax %.4g\n",
                  llorch_type_name(t), b, rel, max_rel_rmse, emax, amax);
      fail();
    }
  }
}

static void test_roundtrip_f16(void **state) { (void)state; roundtrip(LLORCH_TYPE_F16, 5e-4, 5e-4); }
static void test_roundtrip_bf16(void **state) { (void)state; roundtrip(LLORCH_TYPE_BF16, 4e-3, 4e-3); }
static void test_roundtrip_q8_0(void **state) { (void)state; roundtrip(LLORCH_TYPE_Q8_0, 0.01, 0.0045); }
static void test_roundtrip_q4_0(void **state) { (void)state; roundtrip(LLORCH_TYPE_Q4_0, 0.15, 0.13); }
static void test_roundtrip_q4_K(void **state) { (void)state; roundtrip(LLORCH_TYPE_Q4_K, 0.11, 0.09); }
static void test_roundtrip_q6_K(void **state) { (void)state; roundtrip(LLORCH_TYPE_Q6_K, 0.035, 0.035); }

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dequant_f32_f16_bf16),
      cmocka_unit_test(test_dequant_q8_0),
      cmocka_unit_test(test_dequant_q4_0),
      cmocka_unit_test(test_dequant_q4_K),
      cmocka_unit_test(test_dequant_q6_K),
      cmocka_unit_test(test_dequant_errors),
      cmocka_unit_test(test_geometry),
      cmocka_unit_test(test_fp16_exhaustive),
      cmocka_unit_test(test_fp32_to_fp16_rne),
      cmocka_unit_test(test_bf16),
      cmocka_unit_test(test_roundtrip_f16),
      cmocka_unit_test(test_roundtrip_bf16),
      cmocka_unit_test(test_roundtrip_q8_0),
      cmocka_unit_test(test_roundtrip_q4_0),
      cmocka_unit_test(test_roundtrip_q4_K),
      cmocka_unit_test(test_roundtrip_q6_K),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
