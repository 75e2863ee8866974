/*
 * AVX-512 kernels: the order of llama.cpp's AVX-512 CPU variants (zen4 where
 * the CPU has AVX512_BF16, the others without it), compiled with
 * per-function target attributes so the binary still starts anywhere
 * (kern_avx512_table checks the CPU before handing a table out).
 *
 * Each kernel performs, per output element, exactly the operations of its
 * scalar twin in kernels.c (kern_scalar_avx512 / kern_scalar_avx512f): 16
 * lanes, the same FMAs, the same reductions; the unit tests compare them bit
 * for bit. The quantized types reduce the same way in ggml's AVX2 and
 * AVX-512 variants (both run its 256-bit code), so their tiles, the F16
 * rounding and the Q8_0 quantizer are the AVX2 table's.
 */
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

/* ---- reductions (kern_hsum16 / kern_hsum8 orders) ---- */

TARGET static inline float hsum16(__m512 x) {
  __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(x, 1), _mm512_castps512_ps256(x));
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(h, 1), _mm256_castps256_ps128(h));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

TARGET static inline __m512 load_f16x16(const uint16_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

TARGET static inline __m512 load_bf16x16(const uint16_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

TARGET static inline __m512 load_f32x16(const float *p) { return _mm512_loadu_ps(p); }

/* ---- F16 and F32 ---- */

/* GEMV order for one row: 4 x 16 lanes over steps of 64, (0+2)+(1+3),
 * reduce, the tail in double (F16) or float (F32). */
#define GEMV16(name, WT, LOAD, TAIL_T, CVT)                                                   \
  TARGET static float name(int n, const WT *w, const float *x) {                              \
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                               \
    const int np = n - n % 64;                                                                \
    for (int i = 0; i < np; i += 64) {                                                        \
      s0 = _mm512_fmadd_ps(LOAD(w + i), _mm512_loadu_ps(x + i), s0);                          \
      s1 = _mm512_fmadd_ps(LOAD(w + i + 16), _mm512_loadu_ps(x + i + 16), s1);                \
      s2 = _mm512_fmadd_ps(LOAD(w + i + 32), _mm512_loadu_ps(x + i + 32), s2);                \
      s3 = _mm512_fmadd_ps(LOAD(w + i + 48), _mm512_loadu_ps(x + i + 48), s3);                \
    }                                                                                         \
    TAIL_T s = hsum16(_mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3)));           \
    for (int i = np; i < n; i++) s += (TAIL_T)(CVT(w[i]) * x[i]);                             \
    return (float)s;                                                                          \
  }
#define ID(v) (v)
GEMV16(dot_f16_gemv, uint16_t, load_f16x16, double, llorch_fp16_to_fp32)
GEMV16(dot_f32_gemv, float, load_f32x16, float, ID)

/* GEMM order, RM rows x RN columns at once: 16-lane accumulators walking k
 * in steps of 16, one per output; each weight vector converted once serves
 * RN columns. 4 x 6 = 24 accumulators + 4 weights + 1 activation of the 32
 * zmm registers. */
#define GEMM16_TILE(pre, WT, LOAD, RM, RN)                                                    \
  TARGET static void pre##_gemm_##RM##x##RN(int n, const char *w, size_t ws, const char *x,   \
                                            size_t xs, float *y, size_t ldy) {                \
    __m512 acc[RN][RM];                                                                       \
    for (int j = 0; j < RN; j++)                                                              \
      for (int i = 0; i < RM; i++) acc[j][i] = _mm512_setzero_ps();                           \
    for (int l = 0; l < n; l += 16) {                                                         \
      __m512 a[RM];                                                                           \
      for (int i = 0; i < RM; i++) a[i] = LOAD((const WT *)(w + i * ws) + l);                 \
      for (int j = 0; j < RN; j++) {                                                          \
        __m512 b = _mm512_loadu_ps((const float *)(x + j * xs) + l);                          \
        for (int i = 0; i < RM; i++) acc[j][i] = _mm512_fmadd_ps(a[i], b, acc[j][i]);         \
      }                                                                                       \
    }                                                                                         \
    for (int j = 0; j < RN; j++)                                                              \
      for (int i = 0; i < RM; i++) y[j * ldy + i] = hsum16(acc[j][i]);                        \
  }

#define GEMM16_FAMILY(pre, WT, LOAD)                                                          \
  GEMM16_TILE(pre, WT, LOAD, 4, 6)                                                            \
  GEMM16_TILE(pre, WT, LOAD, 1, 6)                                                            \
  GEMM16_TILE(pre, WT, LOAD, 4, 1)                                                            \
  GEMM16_TILE(pre, WT, LOAD, 1, 1)                                                            \
  TARGET static void pre##_gemm(int n, const char *w, size_t ws, int nr, const char *x,       \
                                size_t xs, int nc, float *y, size_t ldy) {                    \
    int r = 0;                                                                                \
    for (; r + 4 <= nr; r += 4) {                                                             \
      int c = 0;                                                                              \
      for (; c + 6 <= nc; c += 6)                                                             \
        pre##_gemm_4x6(n, w + (size_t)r * ws, ws, x + (size_t)c * xs, xs,                     \
                       y + (size_t)c * ldy + r, ldy);                                         \
      for (; c < nc; c++)                                                                     \
        pre##_gemm_4x1(n, w + (size_t)r * ws, ws, x + (size_t)c * xs, xs,                     \
                       y + (size_t)c * ldy + r, ldy);                                         \
    }                                                                                         \
    for (; r < nr; r++) {                                                                     \
      int c = 0;                                                                              \
      for (; c + 6 <= nc; c += 6)                                                             \
        pre##_gemm_1x6(n, w + (size_t)r * ws, ws, x + (size_t)c * xs, xs,                     \
                       y + (size_t)c * ldy + r, ldy);                                         \
      for (; c < nc; c++)                                                                     \
        pre##_gemm_1x1(n, w + (size_t)r * ws, ws, x + (size_t)c * xs, xs,                     \
                       y + (size_t)c * ldy + r, ldy);                                         \
    }                                                                                         \
  }

GEMM16_FAMILY(f16, uint16_t, load_f16x16)
GEMM16_FAMILY(f32, float, load_f32x16)
GEMM16_FAMILY(bf16, uint16_t, load_bf16x16)

TARGET static void tile_f16(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                            int nc, float *y, size_t ldy, kern_order order) {
  if (order == KERN_ORDER_GEMM && n % 16 == 0) {
    f16_gemm(n, w, ws, nr, x, xs, nc, y, ldy);
    return;
  }
  /* rows outer: with several decode columns (batched sequences) each
   * weight row comes from memory once and from L1 for the others */
  for (int r = 0; r < nr; r++)
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_f16_gemv(n, (const uint16_t *)((const char *)w + (size_t)r * ws),
                                            (const float *)((const char *)x + (size_t)c * xs));
}

TARGET static void tile_f32(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                            int nc, float *y, size_t ldy, kern_order order) {
  if (order == KERN_ORDER_GEMM && n % 16 == 0) {
    f32_gemm(n, w, ws, nr, x, xs, nc, y, ldy);
    return;
  }
  for (int r = 0; r < nr; r++)
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_f32_gemv(n, (const float *)((const char *)w + (size_t)r * ws),
                                            (const float *)((const char *)x + (size_t)c * xs));
}

/* ---- BF16 ---- */

/* Without AVX512_BF16: GEMM as F16 with a bf16 load; GEMV two 16-lane
 * mul-then-add accumulators over steps of 32, each reduced and added in
 * double, the tail in double. */
TARGET static float dot_bf16_gemv(int n, const uint16_t *w, const float *x) {
  __m512 c1 = _mm512_setzero_ps(), c2 = c1;
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    c1 = _mm512_add_ps(_mm512_mul_ps(load_bf16x16(w + i), _mm512_loadu_ps(x + i)), c1);
    c2 = _mm512_add_ps(_mm512_mul_ps(load_bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16)), c2);
  }
  double s = (double)hsum16(c1);
  s += (double)hsum16(c2);
  for (; i < n; i++) s += (double)(llorch_bf16_to_fp32(w[i]) * x[i]);
  return (float)s;
}

TARGET static void tile_bf16(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                             int nc, float *y, size_t ldy, kern_order order) {
  if (order == KERN_ORDER_GEMM && n % 16 == 0) {
    bf16_gemm(n, w, ws, nr, x, xs, nc, y, ldy);
    return;
  }
  for (int r = 0; r < nr; r++)
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_bf16_gemv(n, (const uint16_t *)((const char *)w + (size_t)r * ws),
                                             (const float *)((const char *)x + (size_t)c * xs));
}

/* With AVX512_BF16 (vdpbf16ps): the activations are bf16-exact floats;
 * packing them to bf16 is exact (vcvtne2ps2bf16 reads denormals as zero, as
 * vdpbf16ps would). */
TARGET_BF16 static inline __m512bh pack_bf16x32(const float *x) {
  return _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

TARGET_BF16 static inline __m512bh load_bf16x32(const uint16_t *p) {
  return (__m512bh)_mm512_loadu_si512((const void *)p);
}

TARGET_BF16 static float dot_bf16_gemv_pairs(int n, const uint16_t *w, const float *x) {
  __m512 c1 = _mm512_setzero_ps(), c2 = c1;
  int i = 0;
  for (; i + 64 <= n; i += 64) {
    c1 = _mm512_dpbf16_ps(c1, load_bf16x32(w + i), pack_bf16x32(x + i));
    c2 = _mm512_dpbf16_ps(c2, load_bf16x32(w + i + 32), pack_bf16x32(x + i + 32));
  }
  double s = (double)hsum16(c1);
  s += (double)hsum16(c2);
  for (; i < n; i++) s += (double)(llorch_bf16_to_fp32(w[i]) * x[i]);
  return (float)s;
}

/* GEMM: 4 rows x 4 columns of vdpbf16ps accumulators over steps of 32 */
#define BF16P_TILE(RM, RN)                                                                    \
  TARGET_BF16 static void bf16p_gemm_##RM##x##RN(int n, const char *w, size_t ws,             \
                                                 const char *x, size_t xs, float *y,          \
                                                 size_t ldy) {                                \
    __m512 acc[RN][RM];                                                                       \
    for (int j = 0; j < RN; j++)                                                              \
      for (int i = 0; i < RM; i++) acc[j][i] = _mm512_setzero_ps();                           \
    for (int l = 0; l < n; l += 32) {                                                         \
      __m512bh a[RM];                                                                         \
      for (int i = 0; i < RM; i++) a[i] = load_bf16x32((const uint16_t *)(w + i * ws) + l);   \
      for (int j = 0; j < RN; j++) {                                                          \
        __m512bh b = pack_bf16x32((const float *)(x + j * xs) + l);                           \
        for (int i = 0; i < RM; i++) acc[j][i] = _mm512_dpbf16_ps(acc[j][i], a[i], b);        \
      }                                                                                       \
    }                                                                                         \
    for (int j = 0; j < RN; j++)                                                              \
      for (int i = 0; i < RM; i++) y[j * ldy + i] = hsum16(acc[j][i]);                        \
  }
BF16P_TILE(4, 4)
BF16P_TILE(1, 1)

TARGET_BF16 static void tile_bf16_pairs(int n, const void *w, size_t ws, int nr, const void *x,
                                        size_t xs, int nc, float *y, size_t ldy, kern_order order) {
  const char *wb = w, *xb = x;
  if (order == KERN_ORDER_GEMM && n % 32 == 0) {
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
      int c = 0;
      for (; c + 4 <= nc; c += 4)
        bf16p_gemm_4x4(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
      for (; c < nc; c++)
        for (int i = 0; i < 4; i++)
          bf16p_gemm_1x1(n, wb + (size_t)(r + i) * ws, ws, xb + (size_t)c * xs, xs,
                         y + (size_t)c * ldy + r + i, ldy);
    }
    for (; r < nr; r++)
      for (int c = 0; c < nc; c++)
        bf16p_gemm_1x1(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
    return;
  }
  for (int r = 0; r < nr; r++)
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_bf16_gemv_pairs(n, (const uint16_t *)(wb + (size_t)r * ws),
                                                   (const float *)(xb + (size_t)c * xs));
}

/* ---- elementwise ---- */

/* ggml_v_expf, AVX-512 form (kern_expf_ggml512) */
TARGET static inline __m512 expf16(__m512 x) {
  const __m512 r = _mm512_set1_ps(0x1.8p23f);
  const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
  const __m512 n = _mm512_sub_ps(z, r);
  const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                    _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
  const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
  const __m512 u = _mm512_mul_ps(b, b);
  const __m512 j = _mm512_fmadd_ps(
      _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)), u,
                      _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
      u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
  const __m512 res = _mm512_scalef_ps(j, n);
  if (!d) return res;
  const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, _mm512_setzero_ps(), _CMP_LE_OQ),
                                          _mm512_set1_ps(INFINITY), _mm512_setzero_ps());
  return _mm512_mask_blend_ps(d, res, alt);
}

TARGET static void swiglu_avx512(int n, float *y, const float *g, const float *u) {
  int i = 0;
  for (; i + 15 < n; i += 16) {
    const __m512 x = _mm512_loadu_ps(g + i);
    const __m512 e = expf16(_mm512_sub_ps(_mm512_setzero_ps(), x));
    const __m512 s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
  }
  for (; i < n; i++) y[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

TARGET static double softmax_exp_avx512(int n, float *y, const float *x, float max) {
  int i = 0;
  double sum = 0;
  for (; i + 15 < n; i += 16) {
    const __m512 v = expf16(_mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(max)));
    _mm512_storeu_ps(y + i, v);
    sum += (double)hsum16(v);
  }
  for (; i < n; i++) {
    float v = expf(x[i] - max);
    sum += (double)v;
    y[i] = v;
  }
  return sum;
}

/* ---- the tables ---- */

static kern_table t_pairs, t_plain;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void tables_init(void) {
  const kern_table *a = kern_avx2_table();
  if (!a) return;
  kern_table t = *a;
  t.lanes = 16;
  t.tile[LLORCH_TYPE_F32] = tile_f32;
  t.tile[LLORCH_TYPE_F16] = tile_f16;
  t.swiglu = swiglu_avx512;
  t.softmax_exp = softmax_exp_avx512;
  t_plain = t;
  t_plain.name = "avx512f";
  t_plain.tile[LLORCH_TYPE_BF16] = tile_bf16;
  t_pairs = t;
  t_pairs.name = "avx512";
  t_pairs.bf16_pairs = true;
  t_pairs.tile[LLORCH_TYPE_BF16] = tile_bf16_pairs;
}

static bool has_avx512(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         kern_avx2_table() != NULL;
}

const kern_table *kern_avx512_table(void) {
  if (!has_avx512()) return NULL;
  pthread_once(&once, tables_init);
  return __builtin_cpu_supports("avx512bf16") ? &t_pairs : &t_plain;
}

const kern_table *kern_avx512f_table(void) {
  if (!has_avx512()) return NULL;
  pthread_once(&once, tables_init);
  return &t_plain;
}

#else /* not x86-64 GCC/Clang */

const kern_table *kern_avx512_table(void) { return NULL; }
const kern_table *kern_avx512f_table(void) { return NULL; }

#endif
