/*
 * Type geometry, fp16 rounding, and the reference scalar (de)quantizers.
 *
 * The dequantizers transcribe ggml's dequantize_row_* (ggml-quants.c) with
 * the same operation order, so results are bit-identical as long as the
 * compiler does not contract a*b-c into an FMA: the project builds with
 * -std=c11, under which gcc and clang default to -ffp-contract=off.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "llorch/quant.h"

/* ---- type table ---- */

typedef struct type_info {
  const char *name;
  uint32_t block_elems;
  uint32_t block_bytes;
} type_info;

static const type_info type_table[LLORCH_TYPE_COUNT] = {
    [LLORCH_TYPE_F32] = {"F32", 1, 4},
    [LLORCH_TYPE_F16] = {"F16", 1, 2},
    [LLORCH_TYPE_Q4_0] = {"Q4_0", LLORCH_QK4_0, sizeof(llorch_block_q4_0)},
    [LLORCH_TYPE_Q4_1] = {"Q4_1", LLORCH_QK4_1, sizeof(llorch_block_q4_1)},
    [LLORCH_TYPE_Q5_0] = {"Q5_0", LLORCH_QK5_0, sizeof(llorch_block_q5_0)},
    [LLORCH_TYPE_Q5_1] = {"Q5_1", LLORCH_QK5_1, sizeof(llorch_block_q5_1)},
    [LLORCH_TYPE_Q8_0] = {"Q8_0", LLORCH_QK8_0, sizeof(llorch_block_q8_0)},
    [LLORCH_TYPE_Q8_1] = {"Q8_1", LLORCH_QK8_1, sizeof(llorch_block_q8_1)},
    [LLORCH_TYPE_Q2_K] = {"Q2_K", LLORCH_QK_K, sizeof(llorch_block_q2_K)},
    [LLORCH_TYPE_Q3_K] = {"Q3_K", LLORCH_QK_K, sizeof(llorch_block_q3_K)},
    [LLORCH_TYPE_Q4_K] = {"Q4_K", LLORCH_QK_K, sizeof(llorch_block_q4_K)},
    [LLORCH_TYPE_Q5_K] = {"Q5_K", LLORCH_QK_K, sizeof(llorch_block_q5_K)},
    [LLORCH_TYPE_Q6_K] = {"Q6_K", LLORCH_QK_K, sizeof(llorch_block_q6_K)},
    [LLORCH_TYPE_Q8_K] = {"Q8_K", LLORCH_QK_K, sizeof(llorch_block_q8_K)},
    [LLORCH_TYPE_BF16] = {"BF16", 1, 2},
};

static const type_info *type_lookup(llorch_ggml_type t) {
  if ((unsigned)t >= LLORCH_TYPE_COUNT || type_table[t].name == NULL) return NULL;
  return &type_table[t];
}

bool llorch_type_geometry(llorch_ggml_type t, size_t *block_elems, size_t *block_bytes) {
  const type_info *ti = type_lookup(t);
  if (ti == NULL) return false;
  if (block_elems) *block_elems = ti->block_elems;
  if (block_bytes) *block_bytes = ti->block_bytes;
  return true;
}

const char *llorch_type_name(llorch_ggml_type t) {
  const type_info *ti = type_lookup(t);
  return ti ? ti->name : "?";
}

int llorch_type_parse(const char *s, llorch_ggml_type *out) {
  if (s == NULL) return LLORCH_EINVAL;
  for (int t = 0; t < LLORCH_TYPE_COUNT; t++) {
    if (type_table[t].name && strcasecmp(s, type_table[t].name) == 0) {
      *out = (llorch_ggml_type)t;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

size_t llorch_row_size(llorch_ggml_type t, int64_t n) {
  const type_info *ti = type_lookup(t);
  if (ti == NULL || n < 0 || n % ti->block_elems != 0) return 0;
  return (size_t)(n / ti->block_elems) * ti->block_bytes;
}

bool llorch_type_can_dequantize(llorch_ggml_type t) {
  switch (t) {
  case LLORCH_TYPE_F32: case LLORCH_TYPE_F16: case LLORCH_TYPE_BF16:
  case LLORCH_TYPE_Q8_0: case LLORCH_TYPE_Q4_0: case LLORCH_TYPE_Q4_K:
  case LLORCH_TYPE_Q6_K:
    return true;
  default:
    return false;
  }
}

bool llorch_type_can_quantize(llorch_ggml_type t) {
  return llorch_type_can_dequantize(t);
}

/* ---- fp16 rounding ---- */

/*
 * Round to nearest even, branch per class (F. Giesen's float_to_half_rtne):
 * normals add the rounding bias to the binary32 bits; subnormals let the
 * FPU do the rounding by adding 0.5, whose exponent lines the fp16 subnormal
 * mantissa up with the low bits of the sum.
 */
llorch_fp16 llorch_fp32_to_fp16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) /* NaN: keep the top payload bits, force quiet */
    return (llorch_fp16)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity (inf too) */
    return (llorch_fp16)(sign | 0x7c00u);
  if (ax < 0x38800000u) { /* below 2^-14: fp16 subnormal or zero */
    float a, magic;
    uint32_t magic_bits = 0x3f000000u; /* 0.5f */
    memcpy(&a, &ax, sizeof a);
    memcpy(&magic, &magic_bits, sizeof magic);
    a += magic;
    uint32_t r;
    memcpy(&r, &a, sizeof r);
    return (llorch_fp16)(sign | (r - magic_bits));
  }
  uint32_t mant_odd = (ax >> 13) & 1u;
  ax += ((uint32_t)(15 - 127) << 23) + 0xfffu + mant_odd;
  return (llorch_fp16)(sign | (ax >> 13));
}

/* ---- dequantizers (ggml-quants.c dequantize_row_*) ---- */

static void dequant_f32(const void *src, float *y, int64_t n) {
  memcpy(y, src, (size_t)n * sizeof(float));
}

static void dequant_f16(const void *src, float *y, int64_t n) {
  const uint8_t *p = src;
  for (int64_t i = 0; i < n; i++) {
    llorch_fp16 h;
    memcpy(&h, p + 2 * i, 2);
    y[i] = llorch_fp16_to_fp32(h);
  }
}

static void dequant_bf16(const void *src, float *y, int64_t n) {
  const uint8_t *p = src;
  for (int64_t i = 0; i < n; i++) {
    llorch_bf16 h;
    memcpy(&h, p + 2 * i, 2);
    y[i] = llorch_bf16_to_fp32(h);
  }
}

static void dequant_q8_0(const llorch_block_q8_0 *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK8_0; i++) {
    const float d = llorch_fp16_to_fp32(x[i].d);
    for (int j = 0; j < LLORCH_QK8_0; j++) y[i * LLORCH_QK8_0 + j] = x[i].qs[j] * d;
  }
}

static void dequant_q4_0(const llorch_block_q4_0 *x, float *y, int64_t n) {
  const int qk = LLORCH_QK4_0;
  for (int64_t i = 0; i < n / qk; i++) {
    const float d = llorch_fp16_to_fp32(x[i].d);
    for (int j = 0; j < qk / 2; j++) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8;
      const int x1 = (x[i].qs[j] >> 4) - 8;
      y[i * qk + j] = x0 * d;
      y[i * qk + j + qk / 2] = x1 * d;
    }
  }
}

static void dequant_q4_K(const llorch_block_q4_K *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK_K; i++) {
    const uint8_t *q = x[i].qs;
    const float d = llorch_fp16_to_fp32(x[i].d);
    const float min = llorch_fp16_to_fp32(x[i].dmin);
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < LLORCH_QK_K; j += 64) {
      llorch_q4_K_scale_min(is + 0, x[i].scales, &sc, &m);
      const float d1 = d * sc;
      const float m1 = min * m;
      llorch_q4_K_scale_min(is + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc;
      const float m2 = min * m;
      for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

static void dequant_q6_K(const llorch_block_q6_K *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK_K; i++) {
    const float d = llorch_fp16_to_fp32(x[i].d);
    const uint8_t *ql = x[i].ql;
    const uint8_t *qh = x[i].qh;
    const int8_t *sc = x[i].scales;
    for (int h = 0; h < LLORCH_QK_K; h += 128) {
      for (int l = 0; l < 32; l++) {
        const int is = l / 16;
        const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

int llorch_dequantize_row(llorch_ggml_type t, const void *src, float *dst, int64_t n) {
  if (!llorch_type_can_dequantize(t)) return LLORCH_EUNSUPPORTED;
  if (n < 0 || (n > 0 && llorch_row_size(t, n) == 0)) return LLORCH_EINVAL;
  switch (t) {
  case LLORCH_TYPE_F32: dequant_f32(src, dst, n); break;
  case LLORCH_TYPE_F16: dequant_f16(src, dst, n); break;
  case LLORCH_TYPE_BF16: dequant_bf16(src, dst, n); break;
  case LLORCH_TYPE_Q8_0: dequant_q8_0(src, dst, n); break;
  case LLORCH_TYPE_Q4_0: dequant_q4_0(src, dst, n); break;
  case LLORCH_TYPE_Q4_K: dequant_q4_K(src, dst, n); break;
  case LLORCH_TYPE_Q6_K: dequant_q6_K(src, dst, n); break;
  default: return LLORCH_EUNSUPPORTED;
  }
  return 0;
}

/* ---- quantizers (simple schemes; only validity and closeness matter) ---- */

/* fmaxf/fminf are library calls under the project's strict float flags;
 * plain comparisons compile to maxss/minss (inputs here are never NaN). */
static inline float quant_maxf(float a, float b) { return a > b ? a : b; }
static inline float quant_minf(float a, float b) { return a < b ? a : b; }

/*
 * Round to nearest even by adding 1.5 * 2^23 (ggml's nearest_int): the sum's
 * low mantissa bits are the rounded integer. Plain SSE2 arithmetic, so the
 * quantizer loops vectorize where lrintf would not. Inputs are clamped to
 * the trick's range (|v| < 2^22) first.
 */
static inline int quant_nearest(float v) {
  v = quant_minf(quant_maxf(v, -4194303.0f), 4194303.0f);
  float t = v + 12582912.0f;
  int32_t i;
  memcpy(&i, &t, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

static int quant_clamp(int v, int lo, int hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

static void quant_q8_0(const float *x, llorch_block_q8_0 *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK8_0; i++, x += LLORCH_QK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < LLORCH_QK8_0; j++) amax = quant_maxf(amax, fabsf(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = llorch_fp32_to_fp16(d);
    for (int j = 0; j < LLORCH_QK8_0; j++)
      y[i].qs[j] = (int8_t)quant_clamp(quant_nearest(x[j] * id), -127, 127);
  }
}

/* ggml's quantize_row_q4_0_ref: the value of largest magnitude maps to -8. */
static void quant_q4_0(const float *x, llorch_block_q4_0 *y, int64_t n) {
  const int qk = LLORCH_QK4_0;
  for (int64_t i = 0; i < n / qk; i++, x += qk) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk; j++) {
      if (amax < fabsf(x[j])) {
        amax = fabsf(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = llorch_fp32_to_fp16(d);
    for (int j = 0; j < qk / 2; j++) {
      const int x0 = quant_clamp((int)floorf(x[j] * id + 8.5f), 0, 15);
      const int x1 = quant_clamp((int)floorf(x[j + qk / 2] * id + 8.5f), 0, 15);
      y[i].qs[j] = (uint8_t)(x0 | (x1 << 4));
    }
  }
}

/*
 * Q4_K: per sub-block of 32, min-max to 4 bits; the 8 scales and 8 mins are
 * then quantized to 6 bits against the super-block's d and dmin. Quants are
 * computed from the quantized scales so the rounding of d/dmin is absorbed.
 */
static void quant_q4_K(const float *x, llorch_block_q4_K *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK_K; i++, x += LLORCH_QK_K) {
    float scales[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; j++) {
      float mn = x[32 * j], mx = x[32 * j];
      for (int l = 1; l < 32; l++) {
        mn = quant_minf(mn, x[32 * j + l]);
        mx = quant_maxf(mx, x[32 * j + l]);
      }
      if (mn > 0.0f) mn = 0.0f;
      scales[j] = (mx - mn) / 15.0f;
      mins[j] = -mn;
      max_scale = quant_maxf(max_scale, scales[j]);
      max_min = quant_maxf(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    memset(y[i].scales, 0, sizeof y[i].scales);
    for (int j = 0; j < 8; j++) {
      /* round the min up so that x + dmin*m stays >= 0 for the sub-block's minimum */
      const int ls = quant_clamp(quant_nearest(inv_scale * scales[j]), 0, 63);
      const int lm = quant_clamp((int)ceilf(inv_min * mins[j]), 0, 63);
      if (j < 4) {
        y[i].scales[j] = (uint8_t)ls;
        y[i].scales[j + 4] = (uint8_t)lm;
      } else {
        y[i].scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        y[i].scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
      }
    }
    y[i].d = llorch_fp32_to_fp16(max_scale / 63.0f);
    y[i].dmin = llorch_fp32_to_fp16(max_min / 63.0f);
    const float d = llorch_fp16_to_fp32(y[i].d);
    const float dmin = llorch_fp16_to_fp32(y[i].dmin);
    uint8_t L[LLORCH_QK_K];
    for (int j = 0; j < 8; j++) {
      uint8_t sc, m;
      llorch_q4_K_scale_min(j, y[i].scales, &sc, &m);
      const float dd = d * sc;
      const float dm = dmin * m;
      const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
      for (int l = 0; l < 32; l++)
        L[32 * j + l] = (uint8_t)quant_clamp(quant_nearest((x[32 * j + l] + dm) * id), 0, 15);
    }
    uint8_t *q = y[i].qs;
    for (int j = 0; j < LLORCH_QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
  }
}

/*
 * Q6_K: per sub-block of 16 the value of largest magnitude maps to -32; the
 * 16 sub-block scales are int8 against d, the largest mapping to -128.
 */
static void quant_q6_K(const float *x, llorch_block_q6_K *y, int64_t n) {
  for (int64_t i = 0; i < n / LLORCH_QK_K; i++, x += LLORCH_QK_K) {
    float scales[16], max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int ib = 0; ib < 16; ib++) {
      float amax = 0.0f, max = 0.0f;
      for (int l = 0; l < 16; l++) {
        const float v = x[16 * ib + l];
        if (fabsf(v) > amax) {
          amax = fabsf(v);
          max = v;
        }
      }
      scales[ib] = max / -32.0f;
      if (fabsf(scales[ib]) > max_abs_scale) {
        max_abs_scale = fabsf(scales[ib]);
        max_scale = scales[ib];
      }
    }
    memset(y[i].ql, 0, sizeof y[i].ql);
    memset(y[i].qh, 0, sizeof y[i].qh);
    if (max_abs_scale == 0.0f) { /* all zero: d = 0 decodes to 0 */
      memset(y[i].scales, 0, sizeof y[i].scales);
      y[i].d = llorch_fp32_to_fp16(0.0f);
      continue;
    }
    const float iscale = -128.0f / max_scale;
    y[i].d = llorch_fp32_to_fp16(1.0f / iscale);
    for (int ib = 0; ib < 16; ib++)
      y[i].scales[ib] = (int8_t)quant_clamp(quant_nearest(iscale * scales[ib]), -128, 127);
    const float d = llorch_fp16_to_fp32(y[i].d);
    uint8_t L[LLORCH_QK_K];
    for (int ib = 0; ib < 16; ib++) {
      const float dd = d * y[i].scales[ib];
      const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
      for (int l = 0; l < 16; l++)
        L[16 * ib + l] = (uint8_t)(quant_clamp(quant_nearest(x[16 * ib + l] * id), -32, 31) + 32);
    }
    uint8_t *ql = y[i].ql, *qh = y[i].qh;
    for (int j = 0; j < LLORCH_QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; l++) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
        ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
        qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                          ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
      }
    }
  }
}

int llorch_quantize_row(llorch_ggml_type t, const float *src, void *dst, int64_t n) {
  if (!llorch_type_can_quantize(t)) return LLORCH_EUNSUPPORTED;
  if (n < 0 || (n > 0 && llorch_row_size(t, n) == 0)) return LLORCH_EINVAL;
  uint8_t *p = dst;
  switch (t) {
  case LLORCH_TYPE_F32:
    memcpy(dst, src, (size_t)n * sizeof(float));
    break;
  case LLORCH_TYPE_F16:
    for (int64_t i = 0; i < n; i++) {
      llorch_fp16 h = llorch_fp32_to_fp16(src[i]);
      memcpy(p + 2 * i, &h, 2);
    }
    break;
  case LLORCH_TYPE_BF16:
    for (int64_t i = 0; i < n; i++) {
      llorch_bf16 h = llorch_fp32_to_bf16(src[i]);
      memcpy(p + 2 * i, &h, 2);
    }
    break;
  case LLORCH_TYPE_Q8_0: quant_q8_0(src, dst, n); break;
  case LLORCH_TYPE_Q4_0: quant_q4_0(src, dst, n); break;
  case LLORCH_TYPE_Q4_K: quant_q4_K(src, dst, n); break;
  case LLORCH_TYPE_Q6_K: quant_q6_K(src, dst, n); break;
  default: return LLORCH_EUNSUPPORTED;
  }
  return 0;
}
