/*
 * AVX2 + FMA + F16C kernels, compiled with per-function target attributes
 * so the binary still starts on CPUs without them (kern_select checks
 * __builtin_cpu_supports before handing this table out).
 *
 * Each kernel performs, per output element, exactly the operations of its
 * scalar twin in kernels.c (same lanes, same FMAs, same horizontal sums);
 * the SIMD only computes several lanes, rows and columns at once. The unit
 * tests compare the two bit for bit. The AVX-512 table (kernels_avx512.c)
 * shares the quantized tiles: ggml's AVX-512 variants run the same 256-bit
 * code for them.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
/* exact, like llorch_fp16_to_fp32, but one instruction */
#define H2F(h) _cvtsh_ss(h)

/* ---- reductions (same orders as kern_hsum8 / kern_hadd8) ---- */

TARGET static inline float hsum8(__m256 x) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

TARGET static inline float hadd8(__m256 x) {
  __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  __m128 t1 = _mm_hadd_ps(t0, t0);
  return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

TARGET static inline __m256 load_f16x8(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

TARGET static inline __m256 load_bf16x8(const uint16_t *p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* ---- F16 ---- */

/* GEMV order for one row: 4 x 8 lanes, (0+2)+(1+3), hadd, tail in double. */
TARGET static float dot_f16_gemv(int n, const uint16_t *w, const float *x) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  const int np = n & ~31;
  for (int i = 0; i < np; i += 32) {
    s0 = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), s0);
    s1 = _mm256_fmadd_ps(load_f16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), s1);
    s2 = _mm256_fmadd_ps(load_f16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), s2);
    s3 = _mm256_fmadd_ps(load_f16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), s3);
  }
  __m256 v = _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3));
  double s = hadd8(v);
  for (int i = np; i < n; i++) s += (double)(llorch_fp16_to_fp32(w[i]) * x[i]);
  return (float)s;
}

/* GEMM order, RM rows x RN columns at once: each weight vector converted
 * once serves RN columns. */
#define F16_GEMM_TILE(RM, RN)                                                              \
  TARGET static void f16_gemm_##RM##x##RN(int n, const char *w, size_t ws, const char *x,  \
                                          size_t xs, float *y, size_t ldy) {               \
    __m256 acc[RN][RM];                                                                    \
    for (int j = 0; j < RN; j++)                                                           \
      for (int i = 0; i < RM; i++) acc[j][i] = _mm256_setzero_ps();                        \
    for (int l = 0; l < n; l += 8) {                                                       \
      __m256 a[RM];                                                                        \
      for (int i = 0; i < RM; i++) a[i] = load_f16x8((const uint16_t *)(w + i * ws) + l);  \
      for (int j = 0; j < RN; j++) {                                                       \
        __m256 b = _mm256_loadu_ps((const float *)(x + j * xs) + l);                       \
        for (int i = 0; i < RM; i++) acc[j][i] = _mm256_fmadd_ps(a[i], b, acc[j][i]);      \
      }                                                                                    \
    }                                                                                      \
    for (int j = 0; j < RN; j++)                                                           \
      for (int i = 0; i < RM; i++) y[j * ldy + i] = hsum8(acc[j][i]);                      \
  }

/* 3 rows x 4 columns: 12 accumulators + 3 converted weight vectors + 1
 * activation vector = the 16 ymm registers, no spills. */
F16_GEMM_TILE(3, 4)
F16_GEMM_TILE(1, 4)
F16_GEMM_TILE(3, 1)
F16_GEMM_TILE(1, 1)

TARGET static void tile_f16(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                            int nc, float *y, size_t ldy, kern_order order) {
  const char *wb = w, *xb = x;
  if (order == KERN_ORDER_GEMV || n % 8 != 0) {
    /* rows outer: with several decode columns (batched sequences) each
     * weight row comes from memory once and from L1 for the others */
    for (int r = 0; r < nr; r++)
      for (int c = 0; c < nc; c++)
        y[(size_t)c * ldy + r] = dot_f16_gemv(n, (const uint16_t *)(wb + (size_t)r * ws),
                                              (const float *)(xb + (size_t)c * xs));
    return;
  }
  /* rows outer: three weight rows (up to 3 x n x 2 bytes) stay in L1 while
   * the activation columns stream past them from L2 */
  int r = 0;
  for (; r + 3 <= nr; r += 3) {
    int c = 0;
    for (; c + 4 <= nc; c += 4)
      f16_gemm_3x4(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
    for (; c < nc; c++)
      f16_gemm_3x1(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
  }
  for (; r < nr; r++) {
    int c = 0;
    for (; c + 4 <= nc; c += 4)
      f16_gemm_1x4(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
    for (; c < nc; c++)
      f16_gemm_1x1(n, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
  }
}

/* ---- F32 and BF16 weights (rare in practice: plain, unblocked) ---- */

TARGET static void tile_f32(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                            int nc, float *y, size_t ldy, kern_order order) {
  for (int c = 0; c < nc; c++) {
    const float *xc = (const float *)((const char *)x + (size_t)c * xs);
    for (int r = 0; r < nr; r++) {
      const float *wr = (const float *)((const char *)w + (size_t)r * ws);
      float v;
      if (order == KERN_ORDER_GEMM && n % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int l = 0; l < n; l += 8)
          acc = _mm256_fmadd_ps(_mm256_loadu_ps(wr + l), _mm256_loadu_ps(xc + l), acc);
        v = hsum8(acc);
      } else {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        const int np = n & ~31;
        for (int i = 0; i < np; i += 32) {
          s0 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i), _mm256_loadu_ps(xc + i), s0);
          s1 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i + 8), _mm256_loadu_ps(xc + i + 8), s1);
          s2 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i + 16), _mm256_loadu_ps(xc + i + 16), s2);
          s3 = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i + 24), _mm256_loadu_ps(xc + i + 24), s3);
        }
        float s = hadd8(_mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3)));
        for (int i = np; i < n; i++) s += wr[i] * xc[i];
        v = s;
      }
      y[(size_t)c * ldy + r] = v;
    }
  }
}

TARGET static void tile_bf16(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                             int nc, float *y, size_t ldy, kern_order order) {
  for (int c = 0; c < nc; c++) {
    const float *xc = (const float *)((const char *)x + (size_t)c * xs);
    for (int r = 0; r < nr; r++) {
      const uint16_t *wr = (const uint16_t *)((const char *)w + (size_t)r * ws);
      float v;
      if (order == KERN_ORDER_GEMM && n % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int l = 0; l < n; l += 8)
          acc = _mm256_fmadd_ps(load_bf16x8(wr + l), _mm256_loadu_ps(xc + l), acc);
        v = hsum8(acc);
      } else {
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        int i = 0;
        for (; i + 32 <= n; i += 32) {
          c0 = _mm256_add_ps(_mm256_mul_ps(load_bf16x8(wr + i), _mm256_loadu_ps(xc + i)), c0);
          c1 = _mm256_add_ps(_mm256_mul_ps(load_bf16x8(wr + i + 8), _mm256_loadu_ps(xc + i + 8)), c1);
          c2 = _mm256_add_ps(_mm256_mul_ps(load_bf16x8(wr + i + 16), _mm256_loadu_ps(xc + i + 16)), c2);
          c3 = _mm256_add_ps(_mm256_mul_ps(load_bf16x8(wr + i + 24), _mm256_loadu_ps(xc + i + 24)), c3);
        }
        double s = hsum8(_mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c1, c3)));
        for (; i < n; i++) s += (double)(llorch_bf16_to_fp32(wr[i]) * xc[i]);
        v = (float)s;
      }
      y[(size_t)c * ldy + r] = v;
    }
  }
}

/* ---- Q8_0 / Q4_0 ---- */

/* 8 lanes of exact int32 dots of 4 consecutive int8 products, as floats
 * (ggml's mul_sum_i8_pairs_float). */
TARGET static inline __m256 mul_sum_i8_pairs(__m256i x, __m256i y) {
  const __m256i ax = _mm256_sign_epi8(x, x);
  const __m256i sy = _mm256_sign_epi8(y, x);
  const __m256i dot = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)));
}

TARGET static inline __m256i q4_0_unpack(const uint8_t *qs) {
  const __m128i t = _mm_loadu_si128((const __m128i *)qs);
  __m256i v = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  v = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
  return _mm256_sub_epi8(v, _mm256_set1_epi8(8));
}

/* 4 (then 2) rows x 2 columns per pass: each weight block loaded once for 2
 * columns, each activation block once for 4 rows. */
#define Q0_TILE(name, wtype, UNPACK)                                                        \
  TARGET static void name(int n, const void *w, size_t ws, int nr, const void *x, size_t xs, \
                          int nc, float *y, size_t ldy, kern_order order) {                  \
    (void)order;                                                                            \
    const int nb = n / 32;                                                                  \
    const char *wb = w, *xb = x;                                                            \
    int c = 0;                                                                              \
    for (; c + 2 <= nc; c += 2) {                                                           \
      const llorch_block_q8_0 *x0 = (const void *)(xb + (size_t)c * xs);                    \
      const llorch_block_q8_0 *x1 = (const void *)(xb + (size_t)(c + 1) * xs);              \
      int r = 0;                                                                            \
      /* 4 rows x 2 columns: 8 accumulators; each activation block serves 4 \
       * rows (half the activation loads of 2 x 2), same per-element order */ \
      for (; r + 4 <= nr; r += 4) {                                                         \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        __m256 acc[4][2];                                                                   \
        for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();            \
        for (int b = 0; b < nb; b++) {                                                      \
          const __m256i p0 = _mm256_loadu_si256((const __m256i *)x0[b].qs);                 \
          const __m256i p1 = _mm256_loadu_si256((const __m256i *)x1[b].qs);                 \
          const float dx0 = H2F(x0[b].d), dx1 = H2F(x1[b].d);                               \
          for (int i = 0; i < 4; i++) {                                                     \
            const wtype *wi = (const void *)((const char *)w0 + (size_t)i * ws);            \
            const __m256i qi = UNPACK(wi[b]);                                               \
            const float dwi = H2F(wi[b].d);                                                 \
            acc[i][0] = _mm256_fmadd_ps(_mm256_set1_ps(dwi * dx0), mul_sum_i8_pairs(qi, p0), acc[i][0]); \
            acc[i][1] = _mm256_fmadd_ps(_mm256_set1_ps(dwi * dx1), mul_sum_i8_pairs(qi, p1), acc[i][1]); \
          }                                                                                 \
        }                                                                                   \
        for (int i = 0; i < 4; i++) {                                                       \
          y[(size_t)c * ldy + r + i] = hsum8(acc[i][0]);                                    \
          y[(size_t)(c + 1) * ldy + r + i] = hsum8(acc[i][1]);                              \
        }                                                                                   \
      }                                                                                     \
      for (; r + 2 <= nr; r += 2) {                                                         \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        const wtype *w1 = (const void *)(wb + (size_t)(r + 1) * ws);                        \
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;                  \
        for (int b = 0; b < nb; b++) {                                                      \
          const __m256i q0 = UNPACK(w0[b]), q1 = UNPACK(w1[b]);                             \
          const __m256i p0 = _mm256_loadu_si256((const __m256i *)x0[b].qs);                 \
          const __m256i p1 = _mm256_loadu_si256((const __m256i *)x1[b].qs);                 \
          const float dw0 = H2F(w0[b].d), dw1 = H2F(w1[b].d); \
          const float dx0 = H2F(x0[b].d), dx1 = H2F(x1[b].d); \
          a00 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * dx0), mul_sum_i8_pairs(q0, p0), a00);  \
          a01 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * dx1), mul_sum_i8_pairs(q0, p1), a01);  \
          a10 = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * dx0), mul_sum_i8_pairs(q1, p0), a10);  \
          a11 = _mm256_fmadd_ps(_mm256_set1_ps(dw1 * dx1), mul_sum_i8_pairs(q1, p1), a11);  \
        }                                                                                   \
        y[(size_t)c * ldy + r] = hsum8(a00);                                                \
        y[(size_t)(c + 1) * ldy + r] = hsum8(a01);                                          \
        y[(size_t)c * ldy + r + 1] = hsum8(a10);                                            \
        y[(size_t)(c + 1) * ldy + r + 1] = hsum8(a11);                                      \
      }                                                                                     \
      for (; r < nr; r++) {                                                                 \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        __m256 a00 = _mm256_setzero_ps(), a01 = a00;                                        \
        for (int b = 0; b < nb; b++) {                                                      \
          const __m256i q0 = UNPACK(w0[b]);                                                 \
          const float dw0 = H2F(w0[b].d);                                   \
          a00 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * H2F(x0[b].d)),         \
                                mul_sum_i8_pairs(q0, _mm256_loadu_si256((const __m256i *)x0[b].qs)), a00); \
          a01 = _mm256_fmadd_ps(_mm256_set1_ps(dw0 * H2F(x1[b].d)),         \
                                mul_sum_i8_pairs(q0, _mm256_loadu_si256((const __m256i *)x1[b].qs)), a01); \
        }                                                                                   \
        y[(size_t)c * ldy + r] = hsum8(a00);                                                \
        y[(size_t)(c + 1) * ldy + r] = hsum8(a01);                                          \
      }                                                                                     \
    }                                                                                       \
    for (; c < nc; c++) {                                                                   \
      const llorch_block_q8_0 *x0 = (const void *)(xb + (size_t)c * xs);                    \
      int r = 0;                                                                            \
      /* one column (decode): 4 rows in flight, memory-bound */                             \
      for (; r + 4 <= nr; r += 4) {                                                         \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        const wtype *w1 = (const void *)(wb + (size_t)(r + 1) * ws);                        \
        const wtype *w2 = (const void *)(wb + (size_t)(r + 2) * ws);                        \
        const wtype *w3 = (const void *)(wb + (size_t)(r + 3) * ws);                        \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                         \
        for (int b = 0; b < nb; b++) {                                                      \
          const __m256i p0 = _mm256_loadu_si256((const __m256i *)x0[b].qs);                 \
          const float dx0 = H2F(x0[b].d);                                                   \
          a0 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w0[b].d) * dx0), mul_sum_i8_pairs(UNPACK(w0[b]), p0), a0); \
          a1 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w1[b].d) * dx0), mul_sum_i8_pairs(UNPACK(w1[b]), p0), a1); \
          a2 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w2[b].d) * dx0), mul_sum_i8_pairs(UNPACK(w2[b]), p0), a2); \
          a3 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w3[b].d) * dx0), mul_sum_i8_pairs(UNPACK(w3[b]), p0), a3); \
        }                                                                                   \
        y[(size_t)c * ldy + r] = hsum8(a0);                                                 \
        y[(size_t)c * ldy + r + 1] = hsum8(a1);                                             \
        y[(size_t)c * ldy + r + 2] = hsum8(a2);                                             \
        y[(size_t)c * ldy + r + 3] = hsum8(a3);                                             \
      }                                                                                     \
      for (; r + 2 <= nr; r += 2) {                                                         \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        const wtype *w1 = (const void *)(wb + (size_t)(r + 1) * ws);                        \
        __m256 a00 = _mm256_setzero_ps(), a10 = a00;                                        \
        for (int b = 0; b < nb; b++) {                                                      \
          const __m256i p0 = _mm256_loadu_si256((const __m256i *)x0[b].qs);                 \
          const float dx0 = H2F(x0[b].d);                                   \
          a00 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w0[b].d) * dx0),         \
                                mul_sum_i8_pairs(UNPACK(w0[b]), p0), a00);                  \
          a10 = _mm256_fmadd_ps(_mm256_set1_ps(H2F(w1[b].d) * dx0),         \
                                mul_sum_i8_pairs(UNPACK(w1[b]), p0), a10);                  \
        }                                                                                   \
        y[(size_t)c * ldy + r] = hsum8(a00);                                                \
        y[(size_t)c * ldy + r + 1] = hsum8(a10);                                            \
      }                                                                                     \
      for (; r < nr; r++) {                                                                 \
        const wtype *w0 = (const void *)(wb + (size_t)r * ws);                              \
        __m256 a00 = _mm256_setzero_ps();                                                   \
        for (int b = 0; b < nb; b++)                                                        \
          a00 = _mm256_fmadd_ps(                                                            \
              _mm256_set1_ps(H2F(w0[b].d) * H2F(x0[b].d)),  \
              mul_sum_i8_pairs(UNPACK(w0[b]), _mm256_loadu_si256((const __m256i *)x0[b].qs)), a00); \
        y[(size_t)c * ldy + r] = hsum8(a00);                                                \
      }                                                                                     \
    }                                                                                       \
  }

#define UNPACK_Q8_0(blk) _mm256_loadu_si256((const __m256i *)(blk).qs)
#define UNPACK_Q4_0(blk) q4_0_unpack((blk).qs)

Q0_TILE(tile_q8_0, llorch_block_q8_0, UNPACK_Q8_0)
Q0_TILE(tile_q4_0, llorch_block_q4_0, UNPACK_Q4_0)

/* ---- Q4_K / Q6_K (one dot at a time, as ggml's vec_dot) ---- */

TARGET static float dot_q4_K(int n, const llorch_block_q4_K *x, const llorch_block_q8_K *y) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  for (int i = 0; i < n / LLORCH_QK_K; i++) {
    const float d = y[i].d * H2F(x[i].d);
    const float dmin = -y[i].d * H2F(x[i].dmin);
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; j++) llorch_q4_K_scale_min(j, x[i].scales, &sc[j], &mn[j]);
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn));
    const __m256i q8sums = _mm256_loadu_si256((const __m256i *)y[i].bsums);
    const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0),
                                       _mm256_extracti128_si256(q8sums, 1));
    const __m128i prod = _mm_madd_epi16(mins, q8s);
    acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);
    const uint8_t *q4 = x[i].qs;
    const int8_t *q8 = y[i].qs;
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      const __m256i scale_l = _mm256_set1_epi16(sc[2 * j]);
      const __m256i scale_h = _mm256_set1_epi16(sc[2 * j + 1]);
      const __m256i q4bits = _mm256_loadu_si256((const __m256i *)q4);
      q4 += 32;
      const __m256i q4l = _mm256_and_si256(q4bits, m4);
      const __m256i q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
      const __m256i q8l = _mm256_loadu_si256((const __m256i *)q8);
      q8 += 32;
      const __m256i p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
      const __m256i q8h = _mm256_loadu_si256((const __m256i *)q8);
      q8 += 32;
      const __m256i p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
  acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
  return hsum8(acc) + _mm_cvtss_f32(acc_m);
}

/* Q6_K as ggml's current AVX2 vec_dot: unsigned 6-bit quants against q8,
 * the -32 offset removed per lane from the bsums (see kernels.c). */
TARGET static float dot_q6_K(int n, const llorch_block_q6_K *x, const llorch_block_q8_K *y) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i m15 = _mm256_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps();
  for (int i = 0; i < n / LLORCH_QK_K; i++) {
    const float d = y[i].d * H2F(x[i].d);
    const uint8_t *q4 = x[i].ql;
    const uint8_t *qh = x[i].qh;
    const int8_t *q8 = y[i].qs;
    const int8_t *scs = x[i].scales;
    const __m256i q8sums = _mm256_loadu_si256((const __m256i *)y[i].bsums);
    const __m256i scales_16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)scs));
    const __m256i q8sclsub = _mm256_slli_epi32(_mm256_madd_epi16(q8sums, scales_16), 5);
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 2; j++) {
      const __m256i q4bits1 = _mm256_loadu_si256((const __m256i *)q4);
      const __m256i q4bits2 = _mm256_loadu_si256((const __m256i *)(q4 + 32));
      q4 += 64;
      const __m256i q4bitsH = _mm256_loadu_si256((const __m256i *)qh);
      qh += 32;
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(q4bitsH, m3), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bitsH, 2), m3), 4);
      const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bitsH, 4), m3), 4);
      const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bitsH, 6), m3), 4);
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(q4bits1, m15), h0),
          _mm256_or_si256(_mm256_and_si256(q4bits2, m15), h1),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m15), h2),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m15), h3),
      };
      for (int k = 0; k < 4; k++) {
        const __m256i q8v = _mm256_loadu_si256((const __m256i *)q8);
        q8 += 32;
        const __m256i p16 = _mm256_maddubs_epi16(q[k], q8v);
        const __m256i scale = _mm256_setr_m128i(_mm_set1_epi16(scs[2 * k]), _mm_set1_epi16(scs[2 * k + 1]));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p16));
      }
      scs += 8;
    }
    sumi = _mm256_sub_epi32(sumi, q8sclsub);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum8(acc);
}

TARGET static inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

/* repacked orders: the integer dot per block in SIMD (exact), the float
 * accumulation one block at a time as ggml's repacked kernels do */
TARGET static float dot_q4_0_rp(int n, const llorch_block_q4_0 *w, const llorch_block_q8_0 *x) {
  float acc = 0.0f;
  for (int b = 0; b < n / LLORCH_QK4_0; b++) {
    const __m256i q = q4_0_unpack(w[b].qs);
    const __m256i p = _mm256_loadu_si256((const __m256i *)x[b].qs);
    const __m256i dot = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(p, q));
    const int s = hsum_i32(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)));
    acc = fmaf((float)s, H2F(w[b].d) * H2F(x[b].d), acc);
  }
  return acc;
}

TARGET static float dot_q4_K_rp(int n, const llorch_block_q4_K *w, const llorch_block_q8_K *x,
                                kern_order order) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  float acc = 0.0f, accm = 0.0f;
  for (int b = 0; b < n / LLORCH_QK_K; b++) {
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) llorch_q4_K_scale_min(j, w[b].scales, &sc[j], &m[j]);
    const float dd = H2F(w[b].d) * x[b].d;
    const float dm = H2F(w[b].dmin) * x[b].d;
    int isum = 0, imin = 0;
    for (int g = 0; g < 4; g++) {
      const __m256i q4bits = _mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * g));
      const __m256i q8l = _mm256_loadu_si256((const __m256i *)(x[b].qs + 64 * g));
      const __m256i q8h = _mm256_loadu_si256((const __m256i *)(x[b].qs + 64 * g + 32));
      const __m256i pl = _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * g]),
                                           _mm256_maddubs_epi16(_mm256_and_si256(q4bits, m4), q8l));
      const __m256i ph = _mm256_madd_epi16(
          _mm256_set1_epi16(sc[2 * g + 1]),
          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4), q8h));
      const int is = hsum_i32(_mm256_add_epi32(pl, ph));
      const int im = m[2 * g] * (x[b].bsums[4 * g] + x[b].bsums[4 * g + 1]) +
                     m[2 * g + 1] * (x[b].bsums[4 * g + 2] + x[b].bsums[4 * g + 3]);
      if (order == KERN_ORDER_GEMM) {
        acc = fmaf((float)is, dd, acc);
        accm = fmaf((float)im, dm, accm);
      } else {
        isum += is;
        imin += im;
      }
    }
    if (order != KERN_ORDER_GEMM) {
      acc = fmaf((float)isum, dd, acc);
      accm = fmaf((float)imin, dm, accm);
    }
  }
  return acc - accm;
}

TARGET static void tile_q4_K_rp(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                                int nc, float *y, size_t ldy, kern_order order) {
  for (int r = 0; r < nr; r++) /* rows outer: a weight row is read once */
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_q4_K_rp(n, (const void *)((const char *)w + (size_t)r * ws),
                                           (const void *)((const char *)x + (size_t)c * xs), order);
}

#define K_TILE(name, wtype, dotfn)                                                          \
  TARGET static void name(int n, const void *w, size_t ws, int nr, const void *x, size_t xs, \
                          int nc, float *y, size_t ldy, kern_order order) {                  \
    (void)order;                                                                            \
    for (int r = 0; r < nr; r++) /* rows outer: a weight row is read once */                 \
      for (int c = 0; c < nc; c++)                                                          \
        y[(size_t)c * ldy + r] = dotfn(n, (const wtype *)((const char *)w + (size_t)r * ws),   \
                                       (const void *)((const char *)x + (size_t)c * xs));    \
  }

K_TILE(tile_q4_K, llorch_block_q4_K, dot_q4_K)
K_TILE(tile_q6_K, llorch_block_q6_K, dot_q6_K)

TARGET static void tile_q4_0_rp(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                                int nc, float *y, size_t ldy, kern_order order) {
  (void)order;
  for (int r = 0; r < nr; r++) /* rows outer: a weight row is read once */
    for (int c = 0; c < nc; c++)
      y[(size_t)c * ldy + r] = dot_q4_0_rp(n, (const llorch_block_q4_0 *)((const char *)w + (size_t)r * ws),
                                           (const void *)((const char *)x + (size_t)c * xs));
}

/* ---- elementwise: ggml_v_expf / ggml_v_silu ---- */

TARGET static inline __m256 v_expf(__m256 x) {
  const __m256 r = _mm256_set1_ps(0x1.8p23f);
  const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
  const __m256 n = _mm256_sub_ps(z, r);
  const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                    _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
  const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
  const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
  const __m256i c = _mm256_castps_si256(
      _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
  const __m256 u = _mm256_mul_ps(b, b);
  const __m256 j = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
                      u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
      u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
  if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
  /* rare lanes with |n| > 126: fall back to the scalar twin lane by lane */
  float xs[8], out[8];
  _mm256_storeu_ps(xs, x);
  for (int l = 0; l < 8; l++) out[l] = kern_expf_ggml(xs[l]);
  return _mm256_loadu_ps(out);
}

TARGET static void swiglu_avx2(int n, float *y, const float *g, const float *u) {
  int i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 7 < n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = v_expf(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) y[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

TARGET static double softmax_exp_avx2(int n, float *y, const float *x, float max) {
  int i = 0;
  double sum = 0;
  for (; i + 7 < n; i += 8) {
    const __m256 v = v_expf(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(max)));
    _mm256_storeu_ps(y + i, v);
    sum += (double)hsum8(v);
  }
  for (; i < n; i++) {
    float v = expf(x[i] - max);
    sum += (double)v;
    y[i] = v;
  }
  return sum;
}

TARGET static void round_f16_avx2(int n, float *y, const float *x) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                                            _MM_FROUND_TO_NEAREST_INT)));
  for (; i < n; i++) y[i] = kern_round_f16(x[i]);
}

/* ggml's AVX2 quantize_row_q8_0, the same values as kern_quantize_q8_0 */
#define Q8_RND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) /* an immediate, even at -O0 */
TARGET static void quantize_q8_0_avx2(const float *x, llorch_block_q8_0 *y, int n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int i = 0; i < n / 32; i++, x += 32) {
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    __m256 mx = _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1));
    mx = _mm256_max_ps(mx, _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    y[i].d = llorch_fp32_to_fp16(amax / 127.f);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), Q8_RND));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), Q8_RND));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), Q8_RND));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), Q8_RND));
    i0 = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)y[i].qs, i0);
  }
}

static const kern_table kern_avx2 = {
    .name = "avx2",
    .lanes = 8,
    .tile =
        {
            [LLORCH_TYPE_F32] = tile_f32,
            [LLORCH_TYPE_F16] = tile_f16,
            [LLORCH_TYPE_BF16] = tile_bf16,
            [LLORCH_TYPE_Q8_0] = tile_q8_0,
            [LLORCH_TYPE_Q4_0] = tile_q4_0,
            [LLORCH_TYPE_Q4_K] = tile_q4_K,
            [LLORCH_TYPE_Q6_K] = tile_q6_K,
        },
    .tile_repacked =
        {
            [LLORCH_TYPE_Q4_0] = tile_q4_0_rp,
            [LLORCH_TYPE_Q4_K] = tile_q4_K_rp,
        },
    .swiglu = swiglu_avx2,
    .quantize_q8_0 = quantize_q8_0_avx2,
    .round_f16 = round_f16_avx2,
    .softmax_exp = softmax_exp_avx2,
};

const kern_table *kern_avx2_table(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return &kern_avx2;
  return NULL;
}

#else /* not x86-64 GCC/Clang */

const kern_table *kern_avx2_table(void) { return NULL; }

#endif
