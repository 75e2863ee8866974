/*
 * Engine kernels: every SIMD kernel this CPU can run (AVX2, AVX-512 with and
 * without the AVX512_BF16 order) against its scalar twin on random data
 * (bit for bit: the scalar kernels emulate the SIMD lane structure), the
 * ggml expf emulation against libm, the activation quantizers against values
 * worked out by hand, and the thread pool.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/kernels.h"
#include "llorch/quant.h"
#include "llorch/threadpool.h"

static uint64_t rng_state = 88172645463325252ull;

static float rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* ---- SIMD vs scalar, per weight type ---- */

/* The SIMD tables and their scalar twins; a SIMD table this CPU cannot run
 * is NULL and said so once per test. */
typedef struct twin {
  const kern_table *simd;
  const kern_table *scalar;
  const char *what;
} twin;

static int twins_get(twin out[3]) {
  out[0] = (twin){kern_avx2_table(), &kern_scalar, "AVX2"};
  out[1] = (twin){kern_avx512_table(), &kern_scalar_avx512, "AVX-512"};
  out[2] = (twin){kern_avx512f_table(), &kern_scalar_avx512f, "AVX-512 (BF16 without AVX512_BF16)"};
  if (out[1].simd && !out[1].simd->bf16_pairs) out[1].scalar = &kern_scalar_avx512f;
  int n = 0;
  for (int i = 0; i < 3; i++)
    if (out[i].simd) n++;
    else print_message("note: this CPU cannot run the %s kernels; only their scalar twin is tested\n", out[i].what);
  return n;
}

static void check_type_with(const kern_table *simd, const kern_table *scal, llorch_ggml_type t, int n,
                            int nr, int nc);

static void check_type(llorch_ggml_type t, int n, int nr, int nc) {
  twin tw[3];
  if (!twins_get(tw)) {
    print_message("skipping: this CPU has no AVX2/FMA/F16C, only the scalar kernels exist here\n");
    skip();
    return;
  }
  for (int i = 0; i < 3; i++)
    if (tw[i].simd) check_type_with(tw[i].simd, tw[i].scalar, t, n, nr, nc);
  /* the scalar twins alone (values checked below) on any CPU */
  check_type_with(&kern_scalar_avx512, &kern_scalar_avx512, t, n, nr, nc);
}

static void check_type_with(const kern_table *simd, const kern_table *scal, llorch_ggml_type t, int n,
                            int nr, int nc) {
  const size_t ws = llorch_row_size(t, n);
  assert_true(ws > 0);
  char *w = malloc(ws * (size_t)nr);
  float *row = malloc(sizeof(float) * (size_t)n);
  for (int r = 0; r < nr; r++) {
    for (int i = 0; i < n; i++) row[i] = rnd() * (1.0f + (float)(r % 3));
    assert_int_equal(llorch_quantize_row(t, row, w + (size_t)r * ws, n), 0);
  }
  kern_act a;
  assert_true(kern_act_for_type(t, &a));
  const size_t xs = kern_act_row_bytes(a, n);
  char *x = malloc(xs * (size_t)nc);
  for (int c = 0; c < nc; c++) {
    for (int i = 0; i < n; i++) row[i] = rnd() * 3.0f;
    kern_act_prepare(a, row, x + (size_t)c * xs, n);
  }
  float *y0 = calloc((size_t)nr * nc, sizeof(float));
  float *y1 = calloc((size_t)nr * nc, sizeof(float));
  /* orders 0, 1: plain GEMM / GEMV; 2, 3: the repacked tile in its GEMM /
   * GEMV order (see kern_table.tile_repacked), where it exists */
  const int n_orders = scal->tile_repacked[t] ? 4 : 2;
  assert_true((scal->tile_repacked[t] != NULL) == (simd->tile_repacked[t] != NULL));
  assert_int_equal(scal->lanes, simd->lanes);
  for (int o = n_orders - 1; o >= 0; o--) {
    kern_tile_fn ts = o >= 2 ? scal->tile_repacked[t] : scal->tile[t];
    kern_tile_fn tv = o >= 2 ? simd->tile_repacked[t] : simd->tile[t];
    ts(n, w, ws, nr, x, xs, nc, y0, (size_t)nr, (kern_order)(o & 1));
    tv(n, w, ws, nr, x, xs, nc, y1, (size_t)nr, (kern_order)(o & 1));
    for (int i = 0; i < nr * nc; i++) {
      if (memcmp(&y0[i], &y1[i], sizeof(float)) != 0)
        fail_msg("%s %s n=%d order=%d elem %d: scalar %.9g simd %.9g", simd->name, llorch_type_name(t),
                 n, o, i, (double)y0[i], (double)y1[i]);
    }
  }
  /* and the values are right: against a dequantized double dot, loosely */
  float *wd = malloc(sizeof(float) * (size_t)n);
  for (int r = 0; r < nr; r += 7) {
    assert_int_equal(llorch_dequantize_row(t, w + (size_t)r * ws, wd, n), 0);
    for (int c = 0; c < nc; c += 3) {
      /* the prepared activations as floats */
      float *xf = row;
      if (a == KERN_ACT_Q8_0) {
        assert_int_equal(llorch_dequantize_row(LLORCH_TYPE_Q8_0, x + (size_t)c * xs, xf, n), 0);
      } else if (a == KERN_ACT_Q8_K) {
        const llorch_block_q8_K *bk = (const void *)(x + (size_t)c * xs);
        for (int i = 0; i < n; i++) xf[i] = bk[i / 256].d * bk[i / 256].qs[i % 256];
      } else {
        memcpy(xf, x + (size_t)c * xs, sizeof(float) * (size_t)n);
      }
      double ref = 0, mag = 0;
      for (int i = 0; i < n; i++) {
        ref += (double)wd[i] * xf[i];
        mag += fabs((double)wd[i] * xf[i]);
      }
      double got = y0[(size_t)c * nr + r];
      if (fabs(got - ref) > 1e-5 * mag + 1e-6)
        fail_msg("%s %s n=%d r=%d c=%d: got %.9g want %.9g", scal->name, llorch_type_name(t), n, r, c,
                 got, ref);
    }
  }
  free(wd);
  free(w);
  free(row);
  free(x);
  free(y0);
  free(y1);
}

static void test_tile_f32(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_F32, 72, 9, 5);   /* 16-lane: GEMV (72 % 16 = 8) */
  check_type(LLORCH_TYPE_F32, 100, 3, 2);
  check_type(LLORCH_TYPE_F32, 192, 9, 13); /* 16-lane GEMM tiles 4x6 and edges */
}
static void test_tile_f16(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_F16, 256, 11, 7); /* edge tiles on both axes */
  check_type(LLORCH_TYPE_F16, 904, 4, 3);  /* GEMV tail (904 % 32 = 8, % 64 = 8) */
  check_type(LLORCH_TYPE_F16, 36, 5, 4);   /* not a multiple of 8: GEMV order both ways */
  check_type(LLORCH_TYPE_F16, 40, 6, 7);   /* a multiple of 8, not of 16 */
  check_type(LLORCH_TYPE_F16, 160, 9, 13); /* 160 % 64 = 32: tail of the 16-lane GEMV */
}
static void test_tile_bf16(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_BF16, 264, 6, 4); /* pairs: GEMV (264 % 32 = 8) */
  check_type(LLORCH_TYPE_BF16, 256, 9, 6); /* pairs: GEMM 4x4 tiles and edges */
  check_type(LLORCH_TYPE_BF16, 96, 5, 3);  /* pairs GEMV: one step of 64, a tail of 32 */
  check_type(LLORCH_TYPE_BF16, 48, 5, 3);  /* 16 lanes, not 32 */
}
static void test_tile_q8_0(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_Q8_0, 256, 9, 5);
  check_type(LLORCH_TYPE_Q8_0, 96, 12, 8); /* VNNI: whole 4 x 4 tiles only */
  check_type(LLORCH_TYPE_Q8_0, 160, 14, 11); /* and their edges on both axes */
}
static void test_tile_q4_0(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_Q4_0, 320, 9, 5);
  check_type(LLORCH_TYPE_Q4_0, 256, 3, 19); /* repacked: 1 row x 8 columns, then the rest */
  /* repacked with VNNI: 16-row strips (3 and 1 at a time, a partial one),
   * 4 columns and 1 at a time; under 8 columns the AVX2 tile */
  check_type(LLORCH_TYPE_Q4_0, 288, 72, 11);
  check_type(LLORCH_TYPE_Q4_0, 64, 40, 8);
}
static void test_tile_q4_K(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_Q4_K, 512, 5, 3);
  check_type(LLORCH_TYPE_Q4_K, 768, 3, 19); /* repacked GEMM: 1 row x 8 columns, then the rest */
  /* repacked with VNNI: 16-row strips (2 and 1 at a time, a partial one),
   * 4 columns and 1 at a time, both orders */
  check_type(LLORCH_TYPE_Q4_K, 512, 56, 11);
  check_type(LLORCH_TYPE_Q4_K, 256, 24, 8);
}
static void test_tile_q6_K(void **s) {
  (void)s;
  check_type(LLORCH_TYPE_Q6_K, 512, 5, 3);
}

/* ---- elementwise ---- */

static void test_expf_emulation(void **s) {
  (void)s;
  for (int i = 0; i < 20000; i++) {
    float x = rnd() * 80.0f; /* normal range: subnormal results lose bits by design */
    float e = kern_expf_ggml(x), ref = expf(x);
    if (fabsf(e - ref) > 4e-7f * ref) fail_msg("exp(%g): %.9g vs %.9g", (double)x, (double)e, (double)ref);
  }
  assert_true(kern_expf_ggml(-INFINITY) == 0.0f);
  assert_true(kern_expf_ggml(-150.0f) == 0.0f);
  assert_true(isinf(kern_expf_ggml(100.0f)));
  assert_true(kern_expf_ggml(0.0f) == 1.0f);
}

static void test_expf512_emulation(void **s) {
  (void)s;
  for (int i = 0; i < 20000; i++) {
    float x = rnd() * 80.0f;
    float e = kern_expf_ggml512(x), ref = expf(x);
    if (fabsf(e - ref) > 4e-7f * ref) fail_msg("exp(%g): %.9g vs %.9g", (double)x, (double)e, (double)ref);
  }
  assert_true(kern_expf_ggml512(-INFINITY) == 0.0f);
  assert_true(kern_expf_ggml512(-150.0f) == 0.0f);
  assert_true(isinf(kern_expf_ggml512(100.0f)));
  assert_true(kern_expf_ggml512(0.0f) == 1.0f);
  /* the two forms round differently somewhere: that is why both exist */
  int differ = 0;
  for (int i = 0; i < 20000; i++) {
    float x = rnd() * 20.0f;
    differ += kern_expf_ggml512(x) != kern_expf_ggml(x);
  }
  assert_true(differ > 0);
}

static void test_isa_names(void **s) {
  (void)s;
  assert_ptr_equal(kern_by_name("scalar"), &kern_scalar);
  assert_ptr_equal(kern_by_name("scalar-avx512"), &kern_scalar_avx512);
  assert_ptr_equal(kern_by_name("scalar-avx512f"), &kern_scalar_avx512f);
  assert_ptr_equal(kern_by_name("avx2"), kern_avx2_table());
  assert_ptr_equal(kern_by_name("avx512"), kern_avx512_table());
  assert_null(kern_by_name("avx1024"));
  const char *err = NULL;
  setenv("LLORCH_CPU_ISA", "avx1024", 1);
  assert_null(kern_select(&err));
  assert_non_null(err);
  setenv("LLORCH_CPU_ISA", "scalar", 1);
  assert_ptr_equal(kern_select(&err), &kern_scalar);
  unsetenv("LLORCH_CPU_ISA");
  const kern_table *best = kern_select(&err);
  assert_non_null(best);
  if (kern_avx512_table()) assert_ptr_equal(best, kern_avx512_table());
  else if (kern_avx2_table()) assert_ptr_equal(best, kern_avx2_table());
}

static void check_elementwise(const kern_table *simd, const kern_table *scal);

static void test_elementwise_simd_matches_scalar(void **s) {
  (void)s;
  twin tw[3];
  if (!twins_get(tw)) {
    print_message("skipping: this CPU has no AVX2/FMA/F16C, only the scalar kernels exist here\n");
    skip();
    return;
  }
  for (int i = 0; i < 3; i++)
    if (tw[i].simd) check_elementwise(tw[i].simd, tw[i].scalar);
}

static void check_elementwise(const kern_table *simd, const kern_table *scal) {
  enum { N = 203 };
  float g[N], u[N], y0[N], y1[N], x[N];
  for (int i = 0; i < N; i++) {
    g[i] = rnd() * 12.0f;
    u[i] = rnd();
    x[i] = rnd() * 30.0f;
  }
  g[5] = -100.0f; /* exp(100) overflows: the special-case lanes */
  scal->swiglu(N, y0, g, u);
  simd->swiglu(N, y1, g, u);
  assert_memory_equal(y0, y1, sizeof y0);
  x[9] = -INFINITY;
  double s0 = scal->softmax_exp(N, y0, x, 30.0f);
  double s1 = simd->softmax_exp(N, y1, x, 30.0f);
  assert_memory_equal(y0, y1, sizeof y0);
  assert_true(s0 == s1);
  assert_true(y0[9] == 0.0f);
  scal->round_f16(N, y0, x);
  simd->round_f16(N, y1, x);
  assert_memory_equal(y0, y1, sizeof y0);
  /* Q8_0 activation quantizers: ties included (x * 127/amax lands on .5) */
  float q[128];
  for (int i = 0; i < 128; i++) q[i] = rnd() * 5.0f;
  q[3] = 127.0f, q[4] = 2.5f, q[5] = -3.5f; /* block 0: amax 127, exact ties */
  llorch_block_q8_0 b0[4], b1[4];
  scal->quantize_q8_0(q, b0, 128);
  simd->quantize_q8_0(q, b1, 128);
  assert_memory_equal(b0, b1, sizeof b0);
  assert_int_equal(b0[0].qs[4], 2);
  assert_int_equal(b0[0].qs[5], -4);
}

/* ---- activation quantizers ---- */

static void test_quantize_q8_0_values(void **s) {
  (void)s;
  float x[32] = {0};
  x[0] = 127.0f;  /* amax 127: d = 1, id = 1 */
  x[1] = 2.5f;    /* tie: rounds to even 2 */
  x[2] = 3.5f;    /* tie: rounds to even 4 */
  x[3] = -2.5f;   /* -2 */
  x[4] = 0.49f;
  x[5] = -127.0f;
  llorch_block_q8_0 b;
  kern_quantize_q8_0(x, &b, 32);
  assert_true(llorch_fp16_to_fp32(b.d) == 1.0f);
  assert_int_equal(b.qs[0], 127);
  assert_int_equal(b.qs[1], 2);
  assert_int_equal(b.qs[2], 4);
  assert_int_equal(b.qs[3], -2);
  assert_int_equal(b.qs[4], 0);
  assert_int_equal(b.qs[5], -127);
  memset(x, 0, sizeof x);
  kern_quantize_q8_0(x, &b, 32);
  assert_true(llorch_fp16_to_fp32(b.d) == 0.0f);
  assert_int_equal(b.qs[7], 0);
}

static void test_quantize_q8_K_values(void **s) {
  (void)s;
  float x[256] = {0};
  x[0] = -4.0f; /* the largest magnitude is negative: iscale = -127 / -4 */
  x[1] = 2.0f;
  x[17] = 1.0f;
  llorch_block_q8_K b;
  kern_quantize_q8_K(x, &b, 256);
  assert_int_equal(b.qs[0], -127);
  assert_int_equal(b.qs[1], 64);  /* 63.5 -> nearest even 64 */
  assert_int_equal(b.qs[17], 32); /* 31.75 -> 32 */
  assert_true(fabsf(b.d - 4.0f / 127.0f) < 1e-9f);
  assert_int_equal(b.bsums[0], -127 + 64);
  assert_int_equal(b.bsums[1], 32);
  assert_int_equal(b.bsums[2], 0);
}

/* ---- thread pool ---- */

typedef struct pool_probe {
  int calls[8];
  int nth_seen;
} pool_probe;

static void pool_task(void *arg, int ith, int nth) {
  pool_probe *p = arg;
  p->calls[ith]++;
  p->nth_seen = nth;
}

static void test_threadpool_runs_every_thread(void **s) {
  (void)s;
  for (int n = 1; n <= 4; n++) {
    llorch_threadpool *tp;
    assert_int_equal(llorch_threadpool_init(&tp, n), 0);
    assert_int_equal(llorch_threadpool_size(tp), n);
    pool_probe p;
    memset(&p, 0, sizeof p);
    for (int r = 0; r < 500; r++) llorch_threadpool_run(tp, pool_task, &p);
    for (int i = 0; i < n; i++) assert_int_equal(p.calls[i], 500);
    for (int i = n; i < 8; i++) assert_int_equal(p.calls[i], 0);
    assert_int_equal(p.nth_seen, n);
    llorch_threadpool_free(tp);
  }
  llorch_threadpool *tp;
  assert_int_equal(llorch_threadpool_init(&tp, 0), LLORCH_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tile_f32),
      cmocka_unit_test(test_tile_f16),
      cmocka_unit_test(test_tile_bf16),
      cmocka_unit_test(test_tile_q8_0),
      cmocka_unit_test(test_tile_q4_0),
      cmocka_unit_test(test_tile_q4_K),
      cmocka_unit_test(test_tile_q6_K),
      cmocka_unit_test(test_expf_emulation),
      cmocka_unit_test(test_expf512_emulation),
      cmocka_unit_test(test_isa_names),
      cmocka_unit_test(test_elementwise_simd_matches_scalar),
      cmocka_unit_test(test_quantize_q8_0_values),
      cmocka_unit_test(test_quantize_q8_K_values),
      cmocka_unit_test(test_threadpool_runs_every_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
