/*
 * Portable kernels: the reference every SIMD kernel is tested against, and
 * the fallback on CPUs without AVX2/FMA/F16C. They emulate ggml's SIMD lane
 * structure with scalar code (fmaf per lane, the same horizontal sums), so
 * results are bit-identical to the SIMD kernels, not merely close.
 *
 * This file is compiled with ISO C floating-point semantics
 * (-ffp-contract=off via -std=c11): a*b+c is two roundings unless written
 * as fmaf, exactly like the intrinsics it mirrors.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---- */

float kern_round_f16(float x) { return llorch_fp16_to_fp32(llorch_fp32_to_fp16(x)); }

float kern_round_bf16(float x) { return llorch_bf16_to_fp32(llorch_fp32_to_bf16(x)); }

static inline uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/*
 * ggml_v_expf, one lane. The algorithm (from Arm's optimized routines): n =
 * round(x / ln2) via the 1.5*2^23 shifter, b = x - n*ln2 in two FMA steps,
 * a degree-5 polynomial for exp(b) - 1, scaled by 2^n through the exponent
 * bits, with special handling when |n| > 126. Reproduced step by step so
 * the SiLU and softmax outputs match ggml to the bit.
 */
float kern_expf_ggml(float x) {
  const float r = 0x1.8p23f;
  const float z = fmaf(x, 0x1.715476p+0f, r);
  const float n = z - r;
  const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
  const uint32_t e = f2u(z) << 23;
  const float k = u2f(e + f2u(1.0f));
  const bool c = fabsf(n) > 126.0f;
  const float u = b * b;
  const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                            fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                       u, 0x1.ffffecp-1f * b);
  if (!c) return fmaf(j, k, k);
  const uint32_t g = (n <= 0.0f) ? 0x82000000u : 0u;
  const float s1 = u2f(g + 0x7f000000u);
  const float s2 = u2f(e - g);
  if (fabsf(n) > 192.0f) return s1 * s1;
  return fmaf(s2, j, s2) * s1;
}

float kern_silu_ggml(float x) { return x / (1.0f + kern_expf_ggml(0.0f - x)); }

/*
 * ggml_v_expf, AVX-512 form: the same reduction and polynomial, but the
 * final 1 + ... is inside the polynomial's last FMA and the scaling by 2^n
 * is vscalefps (one rounding, as ldexpf); |n| > 192 gives 0 or infinity.
 */
float kern_expf_ggml512(float x) {
  const float r = 0x1.8p23f;
  const float z = fmaf(x, 0x1.715476p+0f, r);
  const float n = z - r;
  const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
  const float u = b * b;
  const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                            fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                       u, fmaf(0x1.ffffecp-1f, b, 1.0f));
  if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
  return ldexpf(j, (int)n);
}

float kern_silu_ggml512(float x) { return x / (1.0f + kern_expf_ggml512(0.0f - x)); }

/* ---- activation quantizers ---- */

/* ggml's nearest_int: round half to even through the 1.5*2^23 trick */
static inline int nearest_int(float fval) {
  float val = fval + 12582912.f;
  int i;
  memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}


void kern_quantize_q8_0(const float *x, llorch_block_q8_0 *y, int n) {
  const int nb = n / LLORCH_QK8_0;
  for (int i = 0; i < nb; i++) {
    const float *xb = x + i * LLORCH_QK8_0;
    /* the AVX2 path takes the max of |x| lane-wise; max is order-free */
    float amax = 0.0f;
    for (int j = 0; j < LLORCH_QK8_0; j++) {
      float a = fabsf(xb[j]);
      if (a > amax) amax = a;
    }
    const float d = amax / 127.f;
    y[i].d = llorch_fp32_to_fp16(d);
    const float id = (amax != 0.0f) ? 127.f / amax : 0.0f;
    for (int j = 0; j < LLORCH_QK8_0; j++) {
      /* _mm256_round_ps(_MM_ROUND_NEAREST): ties to even, as nearest_int */
      y[i].qs[j] = (int8_t)nearest_int(xb[j] * id);
    }
  }
}

void kern_quantize_q8_K(const float *x, llorch_block_q8_K *y, int n) {
  const int nb = n / LLORCH_QK_K;
  for (int i = 0; i < nb; i++) {
    const float *xb = x + i * LLORCH_QK_K;
    float max = 0, amax = 0;
    for (int j = 0; j < LLORCH_QK_K; j++) {
      float ax = fabsf(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (!amax) {
      y[i].d = 0;
      memset(y[i].qs, 0, sizeof y[i].qs);
      memset(y[i].bsums, 0, sizeof y[i].bsums);
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < LLORCH_QK_K; j++) {
      int v = nearest_int(iscale * xb[j]);
      y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < LLORCH_QK_K / 16; j++) {
      int sum = 0;
      for (int l = 0; l < 16; l++) sum += y[i].qs[j * 16 + l];
      y[i].bsums[j] = (int16_t)sum;
    }
    y[i].d = 1 / iscale;
  }
}

bool kern_act_for_type(llorch_ggml_type t, kern_act *out) {
  switch (t) {
  case LLORCH_TYPE_F32: *out = KERN_ACT_F32; return true;
  case LLORCH_TYPE_F16: *out = KERN_ACT_F16; return true;
  case LLORCH_TYPE_BF16: *out = KERN_ACT_BF16; return true;
  case LLORCH_TYPE_Q8_0:
  case LLORCH_TYPE_Q4_0: *out = KERN_ACT_Q8_0; return true;
  case LLORCH_TYPE_Q4_K:
  case LLORCH_TYPE_Q6_K: *out = KERN_ACT_Q8_K; return true;
  default: return false;
  }
}

size_t kern_act_row_bytes(kern_act a, int n) {
  switch (a) {
  case KERN_ACT_F32:
  case KERN_ACT_F16:
  case KERN_ACT_BF16: return (size_t)n * sizeof(float);
  case KERN_ACT_Q8_0: return (size_t)(n / LLORCH_QK8_0) * sizeof(llorch_block_q8_0);
  case KERN_ACT_Q8_K: return (size_t)(n / LLORCH_QK_K) * sizeof(llorch_block_q8_K);
  }
  return 0;
}

void kern_act_prepare(kern_act a, const float *x, void *dst, int n) {
  float *f = dst;
  switch (a) {
  case KERN_ACT_F32: memcpy(f, x, (size_t)n * sizeof(float)); break;
  case KERN_ACT_F16:
    for (int i = 0; i < n; i++) f[i] = kern_round_f16(x[i]);
    break;
  case KERN_ACT_BF16:
    for (int i = 0; i < n; i++) f[i] = kern_round_bf16(x[i]);
    break;
  case KERN_ACT_Q8_0: kern_quantize_q8_0(x, dst, n); break;
  case KERN_ACT_Q8_K: kern_quantize_q8_K(x, dst, n); break;
  }
}

/* ---- float dot products (F32 / F16 / BF16 weights) ---- */

typedef float (*load_fn)(const void *w, int i);

static float load_f32(const void *w, int i) { return ((const float *)w)[i]; }
static float load_f16(const void *w, int i) { return llorch_fp16_to_fp32(((const uint16_t *)w)[i]); }
static float load_bf16(const void *w, int i) { return llorch_bf16_to_fp32(((const uint16_t *)w)[i]); }

/* tinyBLAS: acc[l] over k in steps of L (8 or 16) with FMA, then the
 * halving horizontal sum. k % L == 0. */
static float dot_gemm(int n, const void *w, load_fn ld, const float *x, int L) {
  float acc[16] = {0};
  for (int i = 0; i < n; i += L)
    for (int l = 0; l < L; l++) acc[l] = fmaf(ld(w, i + l), x[i + l], acc[l]);
  return L == 8 ? kern_hsum8(acc) : kern_hsum16(acc);
}

/* ggml_vec_dot_f16 / _f32: 4 x L lanes over steps of 4L, tree-reduced
 * ((0+2)+(1+3), then hadd twice for 8 lanes, _mm512_reduce_add_ps for 16);
 * the tail in double for F16, in float for F32. */
static float dot_gemv(int n, const void *w, load_fn ld, const float *x, bool tail_double, int L) {
  float acc[4][16] = {{0}};
  const int step = 4 * L;
  const int np = n - n % step;
  for (int i = 0; i < np; i += step)
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < L; l++)
        acc[j][l] = fmaf(ld(w, i + L * j + l), x[i + L * j + l], acc[j][l]);
  float v[16];
  for (int l = 0; l < L; l++) v[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
  float red = L == 8 ? kern_hadd8(v) : kern_hsum16(v);
  if (tail_double) {
    double s = red;
    for (int i = np; i < n; i++) s += (double)(ld(w, i) * x[i]);
    return (float)s;
  }
  float s = red;
  for (int i = np; i < n; i++) s += ld(w, i) * x[i];
  return s;
}

/* ggml_vec_dot_bf16 (AVX2): c1..c4 accumulate mul then add (no FMA), combined
 * as (c1+c3)+(c2+c4), hsum_float_8 order, tail in double. */
static float dot_bf16_gemv(int n, const void *w, const float *x) {
  float c[4][8] = {{0}};
  int i = 0;
  for (; i + 32 <= n; i += 32)
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 8; l++) {
        float p = load_bf16(w, i + 8 * j + l) * x[i + 8 * j + l];
        c[j][l] = p + c[j][l];
      }
  float v[8];
  for (int l = 0; l < 8; l++) v[l] = (c[0][l] + c[2][l]) + (c[1][l] + c[3][l]);
  double s = kern_hsum8(v);
  for (; i < n; i++) s += (double)(load_bf16(w, i) * x[i]);
  return (float)s;
}

/* bfloat16 as vdpbf16ps reads it: denormals are zero */
static inline float bf16_daz(float v) { return fpclassify(v) == FP_SUBNORMAL ? copysignf(0.0f, v) : v; }
static inline float ftz(float v) { return fpclassify(v) == FP_SUBNORMAL ? copysignf(0.0f, v) : v; }

/* One lane of vdpbf16ps: the odd product of the pair, then the even one,
 * each added with one rounding (bf16 x bf16 products are exact in float). */
static inline float dp_pair(float acc, const void *w, const float *x, int i) {
  acc = ftz(acc + bf16_daz(load_bf16(w, i + 1)) * bf16_daz(x[i + 1]));
  return ftz(acc + bf16_daz(load_bf16(w, i)) * bf16_daz(x[i]));
}

/*
 * ggml_vec_dot_bf16 on AVX-512: with AVX512_BF16 two 16-lane vdpbf16ps
 * accumulators over steps of 64 (elements 0-31 and 32-63); without it two
 * 16-lane mul-then-add accumulators over steps of 32. Each reduced with
 * _mm512_reduce_add_ps and added in double, the tail in double.
 */
static float dot_bf16_gemv16(int n, const void *w, const float *x, bool pairs) {
  float c1[16] = {0}, c2[16] = {0};
  int i = 0;
  if (pairs) {
    for (; i + 64 <= n; i += 64)
      for (int l = 0; l < 16; l++) {
        c1[l] = dp_pair(c1[l], w, x, i + 2 * l);
        c2[l] = dp_pair(c2[l], w, x, i + 32 + 2 * l);
      }
  } else {
    for (; i + 32 <= n; i += 32)
      for (int l = 0; l < 16; l++) {
        c1[l] = load_bf16(w, i + l) * x[i + l] + c1[l];
        c2[l] = load_bf16(w, i + 16 + l) * x[i + 16 + l] + c2[l];
      }
  }
  double s = (double)kern_hsum16(c1);
  s += (double)kern_hsum16(c2);
  for (; i < n; i++) s += (double)(load_bf16(w, i) * x[i]);
  return (float)s;
}

/* tinyBLAS BF16 with AVX512_BF16: one vdpbf16ps accumulator, steps of 32. */
static float dot_bf16_gemm_pairs(int n, const void *w, const float *x) {
  float acc[16] = {0};
  for (int i = 0; i < n; i += 32)
    for (int l = 0; l < 16; l++) acc[l] = dp_pair(acc[l], w, x, i + 2 * l);
  return kern_hsum16(acc);
}

typedef enum float_kind { FK_F32, FK_F16, FK_BF16 } float_kind;

static float dot_float(int n, const void *wr, const float *xc, kern_order order, float_kind kind,
                       int L, bool pairs) {
  const load_fn ld = kind == FK_F32 ? load_f32 : kind == FK_F16 ? load_f16 : load_bf16;
  if (kind == FK_BF16 && pairs)
    return order == KERN_ORDER_GEMM && n % 32 == 0 ? dot_bf16_gemm_pairs(n, wr, xc)
                                                   : dot_bf16_gemv16(n, wr, xc, true);
  if (order == KERN_ORDER_GEMM && n % L == 0) return dot_gemm(n, wr, ld, xc, L);
  if (kind == FK_BF16) return L == 8 ? dot_bf16_gemv(n, wr, xc) : dot_bf16_gemv16(n, wr, xc, false);
  return dot_gemv(n, wr, ld, xc, kind == FK_F16, L);
}

static void tile_float(int n, const void *w, size_t w_stride, int nr, const void *x,
                       size_t x_stride, int nc, float *y, size_t ldy, kern_order order,
                       float_kind kind, int L, bool pairs) {
  for (int c = 0; c < nc; c++) {
    const float *xc = (const float *)((const char *)x + (size_t)c * x_stride);
    for (int r = 0; r < nr; r++) {
      const void *wr = (const char *)w + (size_t)r * w_stride;
      y[(size_t)c * ldy + r] = dot_float(n, wr, xc, order, kind, L, pairs);
    }
  }
}

#define FLOAT_TILE(name, kind, L, pairs)                                                       \
  static void name(int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nc, \
                   float *y, size_t ldy, kern_order o) {                                     \
    tile_float(n, w, ws, nr, x, xs, nc, y, ldy, o, kind, L, pairs);                          \
  }
FLOAT_TILE(tile_f32, FK_F32, 8, false)
FLOAT_TILE(tile_f16, FK_F16, 8, false)
FLOAT_TILE(tile_bf16, FK_BF16, 8, false)
FLOAT_TILE(tile_f32_16, FK_F32, 16, false)
FLOAT_TILE(tile_f16_16, FK_F16, 16, false)
FLOAT_TILE(tile_bf16_16, FK_BF16, 16, false)
FLOAT_TILE(tile_bf16_pairs, FK_BF16, 16, true)

/* ---- quantized dot products ---- */

/* One Q8_0/Q4_0 block: lane l holds the exact integer dot of elements
 * 4l..4l+3 (maddubs + madd), scaled by d_w*d_x with one FMA per lane. */
static float dot_q8_0(int n, const llorch_block_q8_0 *w, const llorch_block_q8_0 *x) {
  float acc[8] = {0};
  for (int b = 0; b < n / LLORCH_QK8_0; b++) {
    const float d = llorch_fp16_to_fp32(w[b].d) * llorch_fp16_to_fp32(x[b].d);
    for (int l = 0; l < 8; l++) {
      int s = 0;
      for (int t = 0; t < 4; t++) s += w[b].qs[4 * l + t] * x[b].qs[4 * l + t];
      acc[l] = fmaf(d, (float)s, acc[l]);
    }
  }
  return kern_hsum8(acc);
}

static float dot_q4_0(int n, const llorch_block_q4_0 *w, const llorch_block_q8_0 *x) {
  float acc[8] = {0};
  for (int b = 0; b < n / LLORCH_QK4_0; b++) {
    const float d = llorch_fp16_to_fp32(w[b].d) * llorch_fp16_to_fp32(x[b].d);
    int8_t q[32];
    for (int j = 0; j < 16; j++) {
      q[j] = (int8_t)((w[b].qs[j] & 0xF) - 8);
      q[j + 16] = (int8_t)((w[b].qs[j] >> 4) - 8);
    }
    for (int l = 0; l < 8; l++) {
      int s = 0;
      for (int t = 0; t < 4; t++) s += q[4 * l + t] * x[b].qs[4 * l + t];
      acc[l] = fmaf(d, (float)s, acc[l]);
    }
  }
  return kern_hsum8(acc);
}

/*
 * Q4_K x Q8_K as ggml's AVX2 vec_dot: per super-block an exact integer sum
 * per lane (lane l: elements 32g + 4l..4l+3 of every 32-group g, times the
 * group's scale), one FMA per lane with d = y.d * x.d; the mins go through a
 * 4-lane accumulator (lane t: groups 2t and 2t+1) with dmin = -y.d * x.dmin.
 */
static float dot_q4_K(int n, const llorch_block_q4_K *w, const llorch_block_q8_K *x) {
  float acc[8] = {0}, accm[4] = {0};
  for (int b = 0; b < n / LLORCH_QK_K; b++) {
    const float d = x[b].d * llorch_fp16_to_fp32(w[b].d);
    const float dmin = -x[b].d * llorch_fp16_to_fp32(w[b].dmin);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) llorch_q4_K_scale_min(j, w[b].scales, &sc[j], &m[j]);
    for (int t = 0; t < 4; t++) {
      int q8s0 = x[b].bsums[4 * t + 0] + x[b].bsums[4 * t + 1];
      int q8s1 = x[b].bsums[4 * t + 2] + x[b].bsums[4 * t + 3];
      int prod = m[2 * t] * q8s0 + m[2 * t + 1] * q8s1;
      accm[t] = fmaf(dmin, (float)prod, accm[t]);
    }
    int sumi[8] = {0};
    for (int g = 0; g < 4; g++) {
      const uint8_t *q4 = w[b].qs + 32 * g;
      const int8_t *q8 = x[b].qs + 64 * g;
      for (int l = 0; l < 8; l++) {
        int lo = 0, hi = 0;
        for (int t = 0; t < 4; t++) {
          lo += (q4[4 * l + t] & 0xF) * q8[4 * l + t];
          hi += (q4[4 * l + t] >> 4) * q8[32 + 4 * l + t];
        }
        sumi[l] += sc[2 * g] * lo + sc[2 * g + 1] * hi;
      }
    }
    for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)sumi[l], acc[l]);
  }
  float m0 = accm[0] + accm[2], m1 = accm[1] + accm[3];
  return kern_hsum8(acc) + (m0 + m1);
}

/*
 * Q6_K x Q8_K as ggml's AVX2 vec_dot: lane l sums sc * q * q8 (q unsigned,
 * 0..63) over elements 32G + 4l..4l+3 of every 32-group G, then the -32
 * offset is taken out per lane as 32 * (bsums[2l] sc[2l] + bsums[2l+1]
 * sc[2l+1]) - i.e. by 32-group, not by position - before one FMA per lane.
 */
static float dot_q6_K(int n, const llorch_block_q6_K *w, const llorch_block_q8_K *x) {
  float acc[8] = {0};
  for (int b = 0; b < n / LLORCH_QK_K; b++) {
    const float d = x[b].d * llorch_fp16_to_fp32(w[b].d);
    const int8_t *sc = w[b].scales;
    int sumi[8] = {0};
    for (int h = 0; h < 2; h++) {
      const uint8_t *ql = w[b].ql + 64 * h;
      const uint8_t *qh = w[b].qh + 32 * h;
      const int8_t *q8 = x[b].qs + 128 * h;
      for (int part = 0; part < 4; part++) {
        const int G = 4 * h + part;
        for (int l = 0; l < 8; l++) {
          int s = 0;
          for (int t = 0; t < 4; t++) {
            int e = 4 * l + t;
            int q;
            switch (part) {
            case 0: q = (ql[e] & 0xF) | (((qh[e] >> 0) & 3) << 4); break;
            case 1: q = (ql[e + 32] & 0xF) | (((qh[e] >> 2) & 3) << 4); break;
            case 2: q = (ql[e] >> 4) | (((qh[e] >> 4) & 3) << 4); break;
            default: q = (ql[e + 32] >> 4) | (((qh[e] >> 6) & 3) << 4); break;
            }
            s += q * q8[32 * part + e];
          }
          sumi[l] += sc[2 * G + (l >= 4)] * s;
        }
      }
    }
    for (int l = 0; l < 8; l++) {
      const int off = 32 * (x[b].bsums[2 * l] * sc[2 * l] + x[b].bsums[2 * l + 1] * sc[2 * l + 1]);
      acc[l] = fmaf(d, (float)(sumi[l] - off), acc[l]);
    }
  }
  return kern_hsum8(acc);
}

/* ---- repacked orders (see kern_table.tile_repacked) ---- */

static float dot_q4_0_rp(int n, const llorch_block_q4_0 *w, const llorch_block_q8_0 *x) {
  float acc = 0.0f;
  for (int b = 0; b < n / LLORCH_QK4_0; b++) {
    int s = 0;
    for (int j = 0; j < 16; j++)
      s += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
    acc = fmaf((float)s, llorch_fp16_to_fp32(w[b].d) * llorch_fp16_to_fp32(x[b].d), acc);
  }
  return acc;
}

/* Q4_K repacked: ggml's GEMV kernel adds one FMA per super-block; its GEMM
 * kernel (columns in groups of 4) one per pair of sub-blocks. */
static float dot_q4_K_rp(int n, const llorch_block_q4_K *w, const llorch_block_q8_K *x,
                         kern_order order) {
  float acc = 0.0f, accm = 0.0f;
  for (int b = 0; b < n / LLORCH_QK_K; b++) {
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) llorch_q4_K_scale_min(j, w[b].scales, &sc[j], &m[j]);
    const float dd = llorch_fp16_to_fp32(w[b].d) * x[b].d;
    const float dm = llorch_fp16_to_fp32(w[b].dmin) * x[b].d;
    int isum = 0, imin = 0;
    for (int g = 0; g < 4; g++) {
      const uint8_t *q4 = w[b].qs + 32 * g;
      const int8_t *q8 = x[b].qs + 64 * g;
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; l++) {
        lo += (q4[l] & 0xF) * q8[l];
        hi += (q4[l] >> 4) * q8[32 + l];
      }
      const int is = sc[2 * g] * lo + sc[2 * g + 1] * hi;
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

static void tile_q4_K_rp(int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nc,
                         float *y, size_t ldy, kern_order o) {
  for (int c = 0; c < nc; c++) {
    const llorch_block_q8_K *xc = (const void *)((const char *)x + (size_t)c * xs);
    for (int r = 0; r < nr; r++)
      y[(size_t)c * ldy + r] = dot_q4_K_rp(n, (const void *)((const char *)w + (size_t)r * ws), xc, o);
  }
}

#define QUANT_TILE(name, wtype, xtype, dotfn)                                              \
  static void name(int n, const void *w, size_t ws, int nr, const void *x, size_t xs, int nc, \
                   float *y, size_t ldy, kern_order o) {                                    \
    (void)o;                                                                                \
    for (int c = 0; c < nc; c++) {                                                          \
      const xtype *xc = (const xtype *)((const char *)x + (size_t)c * xs);                  \
      for (int r = 0; r < nr; r++)                                                          \
        y[(size_t)c * ldy + r] = dotfn(n, (const wtype *)((const char *)w + (size_t)r * ws), xc); \
    }                                                                                       \
  }

QUANT_TILE(tile_q8_0, llorch_block_q8_0, llorch_block_q8_0, dot_q8_0)
QUANT_TILE(tile_q4_0, llorch_block_q4_0, llorch_block_q8_0, dot_q4_0)
QUANT_TILE(tile_q4_K, llorch_block_q4_K, llorch_block_q8_K, dot_q4_K)
QUANT_TILE(tile_q6_K, llorch_block_q6_K, llorch_block_q8_K, dot_q6_K)
QUANT_TILE(tile_q4_0_rp, llorch_block_q4_0, llorch_block_q8_0, dot_q4_0_rp)

/* ---- elementwise ---- */

/* ggml_vec_swiglu_f32: the vector path (ggml_v_silu) for each full group of
 * 8 (16 on AVX-512), ggml_silu_f32 (libm expf) for the tail. */
static void swiglu_scalar(int n, float *y, const float *g, const float *u) {
  int i = 0;
  for (; i + 7 < n; i += 8)
    for (int e = 0; e < 8; e++) y[i + e] = kern_silu_ggml(g[i + e]) * u[i + e];
  for (; i < n; i++) y[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

static void swiglu_scalar16(int n, float *y, const float *g, const float *u) {
  int i = 0;
  for (; i + 15 < n; i += 16)
    for (int e = 0; e < 16; e++) y[i + e] = kern_silu_ggml512(g[i + e]) * u[i + e];
  for (; i < n; i++) y[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}

/* ggml_vec_soft_max_f32: groups of 8 (AVX2) or 16 (AVX-512) through
 * ggml_v_expf, each group's sum in the vector's reduction order added in
 * double; the tail through libm expf. */
static double softmax_exp_scalar(int n, float *y, const float *x, float max) {
  int i = 0;
  double sum = 0;
  for (; i + 7 < n; i += 8) {
    for (int e = 0; e < 8; e++) y[i + e] = kern_expf_ggml(x[i + e] - max);
    sum += (double)kern_hsum8(y + i);
  }
  for (; i < n; i++) {
    float v = expf(x[i] - max);
    sum += (double)v;
    y[i] = v;
  }
  return sum;
}

static double softmax_exp_scalar16(int n, float *y, const float *x, float max) {
  int i = 0;
  double sum = 0;
  for (; i + 15 < n; i += 16) {
    for (int e = 0; e < 16; e++) y[i + e] = kern_expf_ggml512(x[i + e] - max);
    sum += (double)kern_hsum16(y + i);
  }
  for (; i < n; i++) {
    float v = expf(x[i] - max);
    sum += (double)v;
    y[i] = v;
  }
  return sum;
}

static void round_f16_scalar(int n, float *y, const float *x) {
  for (int i = 0; i < n; i++) y[i] = kern_round_f16(x[i]);
}

const kern_table kern_scalar = {
    .name = "scalar",
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
    .swiglu = swiglu_scalar,
    .quantize_q8_0 = kern_quantize_q8_0,
    .round_f16 = round_f16_scalar,
    .softmax_exp = softmax_exp_scalar,
};

#define SCALAR_AVX512_TABLE(tname, str, bf16_tile, pairs)                \
  const kern_table tname = {                                              \
      .name = str,                                                        \
      .lanes = 16,                                                        \
      .bf16_pairs = pairs,                                                \
      .tile =                                                             \
          {                                                               \
              [LLORCH_TYPE_F32] = tile_f32_16,                            \
              [LLORCH_TYPE_F16] = tile_f16_16,                            \
              [LLORCH_TYPE_BF16] = bf16_tile,                             \
              [LLORCH_TYPE_Q8_0] = tile_q8_0,                             \
              [LLORCH_TYPE_Q4_0] = tile_q4_0,                             \
              [LLORCH_TYPE_Q4_K] = tile_q4_K,                             \
              [LLORCH_TYPE_Q6_K] = tile_q6_K,                             \
          },                                                              \
      .tile_repacked =                                                    \
          {                                                               \
              [LLORCH_TYPE_Q4_0] = tile_q4_0_rp,                          \
              [LLORCH_TYPE_Q4_K] = tile_q4_K_rp,                          \
          },                                                              \
      .swiglu = swiglu_scalar16,                                          \
      .quantize_q8_0 = kern_quantize_q8_0,                                \
      .round_f16 = round_f16_scalar,                                      \
      .softmax_exp = softmax_exp_scalar16,                                \
  };
SCALAR_AVX512_TABLE(kern_scalar_avx512, "scalar-avx512", tile_bf16_pairs, true)
SCALAR_AVX512_TABLE(kern_scalar_avx512f, "scalar-avx512f", tile_bf16_16, false)

const kern_table *kern_by_name(const char *name) {
  if (strcmp(name, "scalar") == 0) return &kern_scalar;
  if (strcmp(name, "scalar-avx512") == 0) return &kern_scalar_avx512;
  if (strcmp(name, "scalar-avx512f") == 0) return &kern_scalar_avx512f;
  if (strcmp(name, "avx2") == 0) return kern_avx2_table();
  if (strcmp(name, "avx512") == 0) return kern_avx512_table();
  if (strcmp(name, "avx512f") == 0) return kern_avx512f_table();
  return NULL;
}

const kern_table *kern_select(const char **err) {
  const char *env = getenv("LLORCH_CPU_ISA");
  if (env && *env) {
    const kern_table *t = kern_by_name(env);
    if (!t)
      *err = "expected avx512, avx512f, avx2, scalar, scalar-avx512 or scalar-avx512f, "
             "one this CPU can run";
    return t;
  }
  const kern_table *t = kern_avx512_table();
  if (!t) t = kern_avx2_table();
  return t ? t : &kern_scalar;
}
