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
 * rounding and the Q8_0 quantizer are the AVX2 table's - except that where
 * the CPU has AVX512_VNNI, prompts (8 or more columns) through Q8_0 and
 * repacked Q4_0/Q4_K weights take the VNNI tiles below: the same float
 * operations per output, the exact integer sums had with vpdpbusd.
 */
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define H2F32(h) _cvtsh_ss(h) /* exact, as llorch_fp16_to_fp32 */
#define TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

/* ---- reductions (kern_hsum16 / kern_hsum8 orders) ---- */

/* kern_hsum8's order ((l+h), then (0+2, 1+3), then the sum) */
TARGET static inline float hsum8(__m256 x) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

TARGET static inline float hsum16(__m512 x) {
  return hsum8(_mm256_add_ps(_mm512_extractf32x8_ps(x, 1), _mm512_castps512_ps256(x)));
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

/* ---- repacked Q4_0 / Q4_K with VNNI (prefill) ----
 *
 * ggml's repacked orders (kernels.h, tile_repacked) fix only the float side:
 * per output one FMA per block (Q4_0) or per pair of sub-blocks / per
 * super-block (Q4_K) of an exact integer dot. The integer dots can be had in
 * any way, so for prompts these kernels transpose the weights once per tile
 * into a panel where 32-bit lane r of a vector holds 4 consecutive weights
 * of row r (as unsigned bytes), and vpdpbusd against 4 broadcast activation
 * bytes adds a 16-row x 1-column piece of the dot with no horizontal sums.
 * Each panel serves every column of the tile; the float FMAs then run with
 * the 16 rows in the lanes, in the scalar twin's order per element.
 */

#define TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define RP_STRIP 16 /* rows per strip: the lanes of a zmm */
#define RP_MIN_COLS 8 /* fewer columns than this: packing would not pay (decode) */

static kern_tile_fn rp_fallback_q4_0, rp_fallback_q4_K; /* the AVX2 tiles */

static inline uint32_t rp_load32(const void *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* out[j] = dword j of the 16 bytes at w + r * ws + off, for rows r < nrows
 * in lane r (zeros above): 16 plain loads and a two-stage permute, which
 * streams where a gather per dword would wait on every row's miss. */
TARGET_VNNI static inline void rp_transpose16x4(const char *w, size_t ws, int nrows, size_t off,
                                                __m512i out[4]) {
  static const uint8_t zero[16];
  __m128i v[RP_STRIP];
  for (int r = 0; r < RP_STRIP; r++)
    v[r] = _mm_loadu_si128((const __m128i *)(r < nrows ? w + (size_t)r * ws + off : (const char *)zero));
  __m512i z[4];
  for (int i = 0; i < 4; i++) {
    __m512i t = _mm512_castsi128_si512(v[4 * i]);
    t = _mm512_inserti32x4(t, v[4 * i + 1], 1);
    t = _mm512_inserti32x4(t, v[4 * i + 2], 2);
    z[i] = _mm512_inserti32x4(t, v[4 * i + 3], 3);
  }
  /* stage 1: dwords 0/1 (2/3) of rows 0-7 (8-15) */
  const __m512i i01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const __m512i i23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
  const __m512i a01 = _mm512_permutex2var_epi32(z[0], i01, z[1]), a23 = _mm512_permutex2var_epi32(z[0], i23, z[1]);
  const __m512i b01 = _mm512_permutex2var_epi32(z[2], i01, z[3]), b23 = _mm512_permutex2var_epi32(z[2], i23, z[3]);
  /* stage 2: rows 0-7 then 8-15 of one dword */
  const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  out[0] = _mm512_permutex2var_epi32(a01, lo, b01);
  out[1] = _mm512_permutex2var_epi32(a01, hi, b01);
  out[2] = _mm512_permutex2var_epi32(a23, lo, b23);
  out[3] = _mm512_permutex2var_epi32(a23, hi, b23);
}

/* Q4_0: quads of weights as unsigned 0..15 (the -8 comes back through the
 * activations' block sums), per strip: nb x 8 vectors, then nb x 16 scales.
 * Quad j < 4 is the low nibbles of qs dword j, j >= 4 the high nibbles of
 * dword j - 4; a gather per dword transposes 16 rows at once. */
TARGET_VNNI static void rp_pack_q4_0(int nb, const char *w, size_t ws, int nrows, uint8_t *pw,
                                     float *pd) {
  const __m512i m4 = _mm512_set1_epi8(0xF);
  for (int b = 0; b < nb; b++) {
    __m512i d4[4];
    rp_transpose16x4(w, ws, nrows, (size_t)b * sizeof(llorch_block_q4_0) + offsetof(llorch_block_q4_0, qs), d4);
    for (int j = 0; j < 4; j++) {
      const __m512i v = d4[j];
      _mm512_storeu_si512(pw + ((size_t)b * 8 + j) * 64, _mm512_and_si512(v, m4));
      _mm512_storeu_si512(pw + ((size_t)b * 8 + j + 4) * 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
    }
    for (int r = 0; r < RP_STRIP; r++)
      pd[(size_t)b * RP_STRIP + r] =
          r < nrows ? H2F32(((const llorch_block_q4_0 *)(w + (size_t)r * ws))[b].d) : 0.0f;
  }
}

/* sum of the 32 int8 of a Q8_0 block (through unsigned: +128 each) */
TARGET_VNNI static inline int rp_sum_q8(const int8_t *q) {
  const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)q), _mm256_set1_epi8((char)0x80));
  const __m256i s = _mm256_sad_epu8(v, _mm256_setzero_si256());
  __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  t = _mm_add_epi64(t, _mm_unpackhi_epi64(t, t));
  return _mm_cvtsi128_si32(t) - 32 * 128;
}

/* S strips x C columns of Q4_0 x Q8_0: acc = fma((float)isum, dw * dx, acc)
 * per block, isum starting from -8 * sum(x) of the block. */
#define RP_Q4_0_KERNEL(S, C)                                                                     \
  TARGET_VNNI static void rp_q4_0_##S##x##C(int nb, const uint8_t *pw, const float *pd,         \
                                            size_t strip_bytes, size_t strip_floats,             \
                                            const char *x, size_t xs, const int32_t *xoff,       \
                                            float *y, size_t ldy, int nrows) {                   \
    __m512 acc[S][C];                                                                            \
    for (int s = 0; s < S; s++)                                                                  \
      for (int c = 0; c < C; c++) acc[s][c] = _mm512_setzero_ps();                               \
    for (int b = 0; b < nb; b++) {                                                               \
      __m512i is[S][C];                                                                          \
      for (int c = 0; c < C; c++)                                                                \
        for (int s = 0; s < S; s++) is[s][c] = _mm512_set1_epi32(xoff[(size_t)c * nb + b]);      \
      for (int j = 0; j < 8; j++) {                                                              \
        __m512i wv[S];                                                                           \
        for (int s = 0; s < S; s++)                                                              \
          wv[s] = _mm512_loadu_si512(pw + s * strip_bytes + ((size_t)b * 8 + j) * 64);           \
        for (int c = 0; c < C; c++) {                                                            \
          const llorch_block_q8_0 *xb = (const void *)(x + (size_t)c * xs);                      \
          const __m512i xv = _mm512_set1_epi32((int)rp_load32(xb[b].qs + 4 * j));               \
          for (int s = 0; s < S; s++) is[s][c] = _mm512_dpbusd_epi32(is[s][c], wv[s], xv);       \
        }                                                                                        \
      }                                                                                          \
      for (int c = 0; c < C; c++) {                                                              \
        const llorch_block_q8_0 *xb = (const void *)(x + (size_t)c * xs);                        \
        const __m512 dx = _mm512_set1_ps(H2F32(xb[b].d));                                        \
        for (int s = 0; s < S; s++) {                                                            \
          const __m512 dw = _mm512_loadu_ps(pd + s * strip_floats + (size_t)b * RP_STRIP);       \
          acc[s][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[s][c]), _mm512_mul_ps(dw, dx),       \
                                      acc[s][c]);                                                \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
    for (int c = 0; c < C; c++)                                                                  \
      for (int s = 0; s < S; s++) rp_store(y + (size_t)c * ldy + s * RP_STRIP, acc[s][c], nrows - s * RP_STRIP); \
  }

/* the first n (up to 16) lanes of v to y */
TARGET_VNNI static inline void rp_store(float *y, __m512 v, int n) {
  if (n >= RP_STRIP) _mm512_storeu_ps(y, v);
  else if (n > 0) _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1), v);
}

RP_Q4_0_KERNEL(3, 4)
RP_Q4_0_KERNEL(1, 4)
RP_Q4_0_KERNEL(3, 1)
RP_Q4_0_KERNEL(1, 1)

/*
 * Q4_K: per strip and super-block 64 vectors of weight quads (element order:
 * group g's low nibbles are elements 64g..64g+31, its high ones the next
 * 32), then RP_K_META 32-bit words: the 8 sub-block scales and the 4 pairs
 * of mins (m[2g] | m[2g+1] << 16, for vpmaddwd against the pair of
 * activation block sums) of the 16 rows, and their d and dmin as floats.
 */
#define RP_K_META (8 * RP_STRIP + 4 * RP_STRIP + 2 * RP_STRIP)
#define RP_K_SC(meta, b, k) ((meta) + (size_t)(b) * RP_K_META + (k) * RP_STRIP)
#define RP_K_M(meta, b, g) ((meta) + (size_t)(b) * RP_K_META + (8 + (g)) * RP_STRIP)
#define RP_K_D(meta, b) ((const float *)((meta) + (size_t)(b) * RP_K_META + 12 * RP_STRIP))
#define RP_K_DMIN(meta, b) ((const float *)((meta) + (size_t)(b) * RP_K_META + 13 * RP_STRIP))

TARGET_VNNI static void rp_pack_q4_K(int nb, const char *w, size_t ws, int nrows, uint8_t *pw,
                                     uint32_t *meta) {
  const __m512i m4 = _mm512_set1_epi8(0xF);
  for (int b = 0; b < nb; b++) {
    const size_t qs = (size_t)b * sizeof(llorch_block_q4_K) + offsetof(llorch_block_q4_K, qs);
    uint8_t *pb = pw + (size_t)b * 64 * 64;
    for (int g = 0; g < 4; g++)
      for (int d0 = 0; d0 < 8; d0 += 4) {
        __m512i d4[4];
        rp_transpose16x4(w, ws, nrows, qs + 32 * g + 4 * d0, d4);
        for (int d = d0; d < d0 + 4; d++) {
          const __m512i v = d4[d - d0];
          _mm512_storeu_si512(pb + (size_t)(16 * g + d) * 64, _mm512_and_si512(v, m4));
          _mm512_storeu_si512(pb + (size_t)(16 * g + 8 + d) * 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
        }
      }
    uint32_t *mb = meta + (size_t)b * RP_K_META;
    for (int r = 0; r < RP_STRIP; r++) {
      uint8_t sc[8] = {0}, m[8] = {0};
      float d = 0.0f, dmin = 0.0f;
      if (r < nrows) {
        const llorch_block_q4_K *blk = (const llorch_block_q4_K *)(w + (size_t)r * ws) + b;
        for (int j = 0; j < 8; j++) llorch_q4_K_scale_min(j, blk->scales, &sc[j], &m[j]);
        d = H2F32(blk->d);
        dmin = H2F32(blk->dmin);
      }
      for (int k = 0; k < 8; k++) mb[k * RP_STRIP + r] = sc[k];
      for (int g = 0; g < 4; g++) mb[(8 + g) * RP_STRIP + r] = m[2 * g] | (uint32_t)m[2 * g + 1] << 16;
      memcpy(&mb[12 * RP_STRIP + r], &d, sizeof d);
      memcpy(&mb[13 * RP_STRIP + r], &dmin, sizeof dmin);
    }
  }
}

/*
 * S strips x C columns of Q4_K x Q8_K in dot_q4_K_rp's order: per pair of
 * sub-blocks is = sc_lo * lo + sc_hi * hi exactly (vpdpbusd chains, then
 * vpmulld), and GEMM: acc = fma((float)is, d * xd, acc) per pair; GEMV: one
 * FMA per super-block of the pairs' integer sum. The mins go the same way
 * into accm, and the result is acc - accm.
 */
#define RP_Q4_K_KERNEL(S, C)                                                                     \
  TARGET_VNNI static void rp_q4_K_##S##x##C(int nb, const uint8_t *pw, const uint32_t *meta,    \
                                            size_t strip_bytes, size_t strip_words,              \
                                            const char *x, size_t xs, const uint32_t *xpair,     \
                                            float *y, size_t ldy, int nrows, bool gemv) {        \
    __m512 acc[S][C], accm[S][C];                                                                \
    for (int s = 0; s < S; s++)                                                                  \
      for (int c = 0; c < C; c++) acc[s][c] = accm[s][c] = _mm512_setzero_ps();                  \
    for (int b = 0; b < nb; b++) {                                                               \
      __m512i isum[S][C];                                                                        \
      for (int s = 0; s < S; s++)                                                                \
        for (int c = 0; c < C; c++) isum[s][c] = _mm512_setzero_si512();                         \
      for (int g = 0; g < 4; g++) {                                                              \
        __m512i is[S][C];                                                                        \
        for (int h = 0; h < 2; h++) {                                                            \
          __m512i t[S][C];                                                                       \
          for (int s = 0; s < S; s++)                                                            \
            for (int c = 0; c < C; c++) t[s][c] = _mm512_setzero_si512();                        \
          for (int j = 0; j < 8; j++) {                                                          \
            const int q = 16 * g + 8 * h + j;                                                    \
            __m512i wv[S];                                                                       \
            for (int s = 0; s < S; s++)                                                          \
              wv[s] = _mm512_load_si512(pw + s * strip_bytes + ((size_t)b * 64 + q) * 64);       \
            for (int c = 0; c < C; c++) {                                                        \
              const llorch_block_q8_K *xb = (const void *)(x + (size_t)c * xs);                  \
              const __m512i xv = _mm512_set1_epi32((int)rp_load32(xb[b].qs + 4 * q));            \
              for (int s = 0; s < S; s++) t[s][c] = _mm512_dpbusd_epi32(t[s][c], wv[s], xv);     \
            }                                                                                    \
          }                                                                                      \
          for (int s = 0; s < S; s++) {                                                          \
            const __m512i sc = _mm512_load_si512(RP_K_SC(meta + s * strip_words, b, 2 * g + h));  \
            for (int c = 0; c < C; c++) {                                                        \
              const __m512i p = _mm512_mullo_epi32(t[s][c], sc);                                 \
              is[s][c] = h ? _mm512_add_epi32(is[s][c], p) : p;                                  \
            }                                                                                    \
          }                                                                                      \
        }                                                                                        \
        for (int c = 0; c < C; c++) {                                                            \
          const llorch_block_q8_K *xb = (const void *)(x + (size_t)c * xs);                      \
          const __m512 xd = _mm512_set1_ps(xb[b].d);                                             \
          for (int s = 0; s < S; s++) {                                                          \
            if (gemv) {                                                                          \
              isum[s][c] = _mm512_add_epi32(isum[s][c], is[s][c]);                               \
            } else {                                                                             \
              const __m512 dd = _mm512_mul_ps(_mm512_load_ps(RP_K_D(meta + s * strip_words, b)), xd); \
              acc[s][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[s][c]), dd, acc[s][c]);          \
            }                                                                                    \
          }                                                                                      \
        }                                                                                        \
      }                                                                                          \
      if (gemv)                                                                                  \
        for (int c = 0; c < C; c++) {                                                            \
          const llorch_block_q8_K *xb = (const void *)(x + (size_t)c * xs);                      \
          const __m512 xd = _mm512_set1_ps(xb[b].d);                                             \
          for (int s = 0; s < S; s++) {                                                          \
            const __m512 dd = _mm512_mul_ps(_mm512_load_ps(RP_K_D(meta + s * strip_words, b)), xd); \
            acc[s][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[s][c]), dd, acc[s][c]);          \
          }                                                                                      \
        }                                                                                        \
    }                                                                                            \
    for (int b = 0; b < nb; b++)                                                                 \
      for (int c = 0; c < C; c++) {                                                              \
        const llorch_block_q8_K *xb = (const void *)(x + (size_t)c * xs);                        \
        const __m512 xd = _mm512_set1_ps(xb[b].d);                                               \
        const uint32_t *xp = xpair + ((size_t)c * nb + b) * 4;                                   \
        for (int s = 0; s < S; s++) {                                                            \
          const uint32_t *ms = meta + s * strip_words;                                           \
          const __m512 dm = _mm512_mul_ps(_mm512_load_ps(RP_K_DMIN(ms, b)), xd);                 \
          __m512i imin = _mm512_setzero_si512();                                                 \
          for (int g = 0; g < 4; g++) {                                                          \
            const __m512i im = _mm512_madd_epi16(_mm512_load_si512(RP_K_M(ms, b, g)),             \
                                                 _mm512_set1_epi32((int)xp[g]));                 \
            if (gemv) imin = _mm512_add_epi32(imin, im);                                         \
            else accm[s][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(im), dm, accm[s][c]);           \
          }                                                                                      \
          if (gemv) accm[s][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), dm, accm[s][c]);      \
        }                                                                                        \
      }                                                                                          \
    for (int c = 0; c < C; c++)                                                                  \
      for (int s = 0; s < S; s++)                                                                \
        rp_store(y + (size_t)c * ldy + s * RP_STRIP, _mm512_sub_ps(acc[s][c], accm[s][c]),       \
                 nrows - s * RP_STRIP);                                                          \
  }

RP_Q4_K_KERNEL(2, 4)
RP_Q4_K_KERNEL(1, 4)
RP_Q4_K_KERNEL(2, 1)
RP_Q4_K_KERNEL(1, 1)

/* A 64-byte aligned scratch for one tile's panels (freed by the caller);
 * NULL when memory is short: the caller then runs the AVX2 tile instead. */
static void *rp_scratch(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

/* Asks for a tile's weight rows up front: the packing gathers 16 rows at a
 * time and would otherwise wait on each miss; meanwhile the activation sums
 * are computed. */
static void rp_prefetch_rows(const void *w, size_t ws, int nr) {
  for (int r = 0; r < nr; r++)
    for (size_t off = 0; off < ws; off += 64) _mm_prefetch((const char *)w + (size_t)r * ws + off, _MM_HINT_T0);
}

TARGET_VNNI static void tile_q4_0_rp_vnni(int n, const void *w, size_t ws, int nr, const void *x,
                                          size_t xs, int nc, float *y, size_t ldy, kern_order order) {
  const int nb = n / LLORCH_QK4_0, nstrips = (nr + RP_STRIP - 1) / RP_STRIP;
  const size_t strip_bytes = (size_t)nb * 8 * 64, strip_floats = (size_t)nb * RP_STRIP;
  uint8_t *buf = nc < RP_MIN_COLS ? NULL
                                  : rp_scratch((size_t)nstrips * (strip_bytes + strip_floats * sizeof(float)) +
                                               (size_t)nc * nb * sizeof(int32_t));
  if (!buf) {
    rp_fallback_q4_0(n, w, ws, nr, x, xs, nc, y, ldy, order);
    return;
  }
  rp_prefetch_rows(w, ws, nr);
  float *pd = (float *)(buf + (size_t)nstrips * strip_bytes);
  int32_t *xoff = (int32_t *)(pd + (size_t)nstrips * strip_floats);
  for (int c = 0; c < nc; c++) {
    const llorch_block_q8_0 *xc = (const void *)((const char *)x + (size_t)c * xs);
    for (int b = 0; b < nb; b++) {
      xoff[(size_t)c * nb + b] = -8 * rp_sum_q8(xc[b].qs);
    }
  }
  for (int s = 0; s < nstrips; s++) {
    const int left = nr - s * RP_STRIP;
    rp_pack_q4_0(nb, (const char *)w + (size_t)s * RP_STRIP * ws, ws, left < RP_STRIP ? left : RP_STRIP,
                 buf + (size_t)s * strip_bytes, pd + (size_t)s * strip_floats);
  }
  int s = 0;
  for (; s + 3 <= nstrips; s += 3) {
    const uint8_t *pw = buf + (size_t)s * strip_bytes;
    const float *ps = pd + (size_t)s * strip_floats;
    int c = 0;
    for (; c + 4 <= nc; c += 4)
      rp_q4_0_3x4(nb, pw, ps, strip_bytes, strip_floats, (const char *)x + (size_t)c * xs, xs,
                  xoff + (size_t)c * nb, y + (size_t)c * ldy + s * RP_STRIP, ldy, nr - s * RP_STRIP);
    for (; c < nc; c++)
      rp_q4_0_3x1(nb, pw, ps, strip_bytes, strip_floats, (const char *)x + (size_t)c * xs, xs,
                  xoff + (size_t)c * nb, y + (size_t)c * ldy + s * RP_STRIP, ldy, nr - s * RP_STRIP);
  }
  for (; s < nstrips; s++) {
    const uint8_t *pw = buf + (size_t)s * strip_bytes;
    const float *ps = pd + (size_t)s * strip_floats;
    int c = 0;
    for (; c + 4 <= nc; c += 4)
      rp_q4_0_1x4(nb, pw, ps, strip_bytes, strip_floats, (const char *)x + (size_t)c * xs, xs,
                  xoff + (size_t)c * nb, y + (size_t)c * ldy + s * RP_STRIP, ldy, nr - s * RP_STRIP);
    for (; c < nc; c++)
      rp_q4_0_1x1(nb, pw, ps, strip_bytes, strip_floats, (const char *)x + (size_t)c * xs, xs,
                  xoff + (size_t)c * nb, y + (size_t)c * ldy + s * RP_STRIP, ldy, nr - s * RP_STRIP);
  }
  free(buf);
}

TARGET_VNNI static void tile_q4_K_rp_vnni(int n, const void *w, size_t ws, int nr, const void *x,
                                          size_t xs, int nc, float *y, size_t ldy, kern_order order) {
  const int nb = n / LLORCH_QK_K, nstrips = (nr + RP_STRIP - 1) / RP_STRIP;
  const size_t strip_bytes = (size_t)nb * 64 * 64, strip_words = (size_t)nb * RP_K_META;
  uint8_t *buf = nc < RP_MIN_COLS ? NULL
                                  : rp_scratch((size_t)nstrips * (strip_bytes + strip_words * 4) +
                                               (size_t)nc * nb * 4 * sizeof(uint32_t));
  if (!buf) {
    rp_fallback_q4_K(n, w, ws, nr, x, xs, nc, y, ldy, order);
    return;
  }
  rp_prefetch_rows(w, ws, nr);
  uint32_t *meta = (uint32_t *)(buf + (size_t)nstrips * strip_bytes);
  uint32_t *xpair = meta + (size_t)nstrips * strip_words;
  for (int c = 0; c < nc; c++) {
    const llorch_block_q8_K *xc = (const void *)((const char *)x + (size_t)c * xs);
    for (int b = 0; b < nb; b++)
      for (int g = 0; g < 4; g++) {
        const int16_t *bs = xc[b].bsums + 4 * g;
        xpair[((size_t)c * nb + b) * 4 + g] =
            (uint16_t)(bs[0] + bs[1]) | (uint32_t)(uint16_t)(bs[2] + bs[3]) << 16;
      }
  }
  for (int s = 0; s < nstrips; s++) {
    const int left = nr - s * RP_STRIP;
    rp_pack_q4_K(nb, (const char *)w + (size_t)s * RP_STRIP * ws, ws, left < RP_STRIP ? left : RP_STRIP,
                 buf + (size_t)s * strip_bytes, meta + (size_t)s * strip_words);
  }
  const bool gemv = order == KERN_ORDER_GEMV;
#define RP_K_CALL(S, C)                                                                          \
  rp_q4_K_##S##x##C(nb, buf + (size_t)s * strip_bytes, meta + (size_t)s * strip_words, strip_bytes, \
                    strip_words, (const char *)x + (size_t)c * xs, xs, xpair + (size_t)c * nb * 4, \
                    y + (size_t)c * ldy + s * RP_STRIP, ldy, nr - s * RP_STRIP, gemv)
  int s = 0;
  for (; s + 2 <= nstrips; s += 2) {
    int c = 0;
    for (; c + 4 <= nc; c += 4) RP_K_CALL(2, 4);
    for (; c < nc; c++) RP_K_CALL(2, 1);
  }
  for (; s < nstrips; s++) {
    int c = 0;
    for (; c + 4 <= nc; c += 4) RP_K_CALL(1, 4);
    for (; c < nc; c++) RP_K_CALL(1, 1);
  }
#undef RP_K_CALL
  free(buf);
}

/* ---- Q8_0 with VNNI (prefill) ----
 *
 * The Q8_0 order (kernels.h) takes per block 8 lanes of exact 4-element
 * integer dots, scaled by d_w * d_x with one FMA per lane. ggml's AVX2 code
 * gets them as maddubs(|w|, sign(x, w)) then madd with ones; vpdpbusd gives
 * the same exact sums in one step (no int16 saturation: |w| <= 127 after
 * quantization, and the scalar twin sums exactly anyway), and |w| is taken
 * once per row for 4 columns. 4 rows x 4 columns; the edges and decode (one
 * column) run the AVX2 tile, which gives the same bits per element.
 */
static kern_tile_fn q8_0_fallback;

TARGET_VNNI static void q8_0_vnni_4x4(int nb, const char *w, size_t ws, const char *x, size_t xs, float *y,
                                      size_t ldy) {
  __m256 acc[4][4];
  for (int i = 0; i < 4; i++)
    for (int c = 0; c < 4; c++) acc[i][c] = _mm256_setzero_ps();
  for (int b = 0; b < nb; b++) {
    __m256i wq[4], ax[4];
    float dw[4];
    for (int i = 0; i < 4; i++) {
      const llorch_block_q8_0 *wb = (const llorch_block_q8_0 *)(w + (size_t)i * ws) + b;
      wq[i] = _mm256_loadu_si256((const __m256i *)wb->qs);
      ax[i] = _mm256_abs_epi8(wq[i]);
      dw[i] = H2F32(wb->d);
    }
    for (int c = 0; c < 4; c++) {
      const llorch_block_q8_0 *xb = (const llorch_block_q8_0 *)(x + (size_t)c * xs) + b;
      const __m256i p = _mm256_loadu_si256((const __m256i *)xb->qs);
      const float dx = H2F32(xb->d);
      for (int i = 0; i < 4; i++) {
        const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax[i], _mm256_sign_epi8(p, wq[i]));
        acc[i][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dx), _mm256_cvtepi32_ps(s), acc[i][c]);
      }
    }
  }
  for (int c = 0; c < 4; c++)
    for (int i = 0; i < 4; i++) y[(size_t)c * ldy + i] = hsum8(acc[i][c]);
}

TARGET_VNNI static void tile_q8_0_vnni(int n, const void *w, size_t ws, int nr, const void *x, size_t xs,
                                       int nc, float *y, size_t ldy, kern_order order) {
  const int r4 = nr / 4 * 4, c4 = nc / 4 * 4;
  const char *wb = w, *xb = x;
  for (int c = 0; c < c4; c += 4) /* rows inner: 4 activation columns stay in L1 */
    for (int r = 0; r < r4; r += 4)
      q8_0_vnni_4x4(n / LLORCH_QK8_0, wb + (size_t)r * ws, ws, xb + (size_t)c * xs, xs, y + (size_t)c * ldy + r, ldy);
  if (r4 < nr && c4 > 0) q8_0_fallback(n, wb + (size_t)r4 * ws, ws, nr - r4, x, xs, c4, y + r4, ldy, order);
  if (c4 < nc) q8_0_fallback(n, w, ws, nr, xb + (size_t)c4 * xs, xs, nc - c4, y + (size_t)c4 * ldy, ldy, order);
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
  /* VNNI (not in every AVX-512 CPU): the repacked prompt tiles; the same
   * values as the AVX2 tiles, which they fall back to for decode */
  if (__builtin_cpu_supports("avx512vnni")) {
    rp_fallback_q4_0 = a->tile_repacked[LLORCH_TYPE_Q4_0];
    t_plain.tile_repacked[LLORCH_TYPE_Q4_0] = t_pairs.tile_repacked[LLORCH_TYPE_Q4_0] = tile_q4_0_rp_vnni;
    rp_fallback_q4_K = a->tile_repacked[LLORCH_TYPE_Q4_K];
    t_plain.tile_repacked[LLORCH_TYPE_Q4_K] = t_pairs.tile_repacked[LLORCH_TYPE_Q4_K] = tile_q4_K_rp_vnni;
    q8_0_fallback = a->tile[LLORCH_TYPE_Q8_0];
    t_plain.tile[LLORCH_TYPE_Q8_0] = t_pairs.tile[LLORCH_TYPE_Q8_0] = tile_q8_0_vnni;
  }
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
