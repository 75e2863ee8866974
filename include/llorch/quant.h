/*
 * Weight formats: ggml's block layouts, half-precision conversions, and
 * reference scalar (de)quantizers.
 *
 * The block structs match ggml's byte for byte (ggml-common.h), so a pointer
 * into a mmapped GGUF tensor can be cast to an array of them: a row of n
 * elements of type T is n / block_elems consecutive blocks. The SIMD kernels
 * of the engine and the CUDA backend read these same structs.
 *
 * The dequantizers are bit-exact with ggml's dequantize_row_* (same operation
 * order, no FMA contraction), which is what "same logits as llama.cpp" rests
 * on. The quantizers only need to produce valid, reasonable blocks (they are
 * used by `llorch synth`); they are simple max-abs / min-max schemes, not
 * ggml's error-minimizing searches.
 */
#ifndef LLORCH_QUANT_H
#define LLORCH_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "llorch/gguf.h"

/* ---- half precision: IEEE binary16 and bfloat16, stored as raw bits ---- */

typedef uint16_t llorch_fp16; /* IEEE 754 binary16 bits */
typedef uint16_t llorch_bf16; /* upper 16 bits of an IEEE binary32 */

/* Exact (every binary16 value is a binary32 value); NaN stays NaN. */
static inline float llorch_fp16_to_fp32(llorch_fp16 h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (man << 13); /* inf / NaN, payload kept */
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13); /* 127 - 15 = 112 */
  } else if (man == 0) {
    bits = sign; /* +-0 */
  } else {
    /* subnormal: normalize the mantissa */
    uint32_t e = 113; /* exponent of 2^-14 in binary32 bias, before shifting */
    while ((man & 0x400u) == 0) {
      man <<= 1;
      e--;
    }
    bits = sign | (e << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Round to nearest, ties to even (what F16C's vcvtps2ph and ggml do);
 * overflow gives inf; NaN gives a quiet NaN. */
llorch_fp16 llorch_fp32_to_fp16(float f);

/* Exact. */
static inline float llorch_bf16_to_fp32(llorch_bf16 h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* As ggml_compute_fp32_to_bf16: round to nearest even; NaN forced quiet. */
static inline llorch_bf16 llorch_fp32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (llorch_bf16)((u >> 16) | 64u);
  return (llorch_bf16)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* ---- block layouts (ggml-common.h) ---- */

#define LLORCH_QK4_0 32
#define LLORCH_QK4_1 32
#define LLORCH_QK5_0 32
#define LLORCH_QK5_1 32
#define LLORCH_QK8_0 32
#define LLORCH_QK8_1 32
#define LLORCH_QK_K 256        /* elements per k-quant super-block */
#define LLORCH_K_SCALE_SIZE 12 /* bytes of packed 6-bit scales+mins (Q4_K, Q5_K) */

/* x[j] = (q[j] - 8) * d; qs[j] low nibble is element j, high nibble j + 16 */
typedef struct llorch_block_q4_0 {
  llorch_fp16 d;
  uint8_t qs[LLORCH_QK4_0 / 2];
} llorch_block_q4_0; /* 18 bytes */

/* x[j] = q[j] * d + m */
typedef struct llorch_block_q4_1 {
  llorch_fp16 d;
  llorch_fp16 m;
  uint8_t qs[LLORCH_QK4_1 / 2];
} llorch_block_q4_1; /* 20 bytes */

/* x[j] = (q[j] - 16) * d; 5th bit of element j is bit j of qh (little-endian u32) */
typedef struct llorch_block_q5_0 {
  llorch_fp16 d;
  uint8_t qh[4];
  uint8_t qs[LLORCH_QK5_0 / 2];
} llorch_block_q5_0; /* 22 bytes */

typedef struct llorch_block_q5_1 {
  llorch_fp16 d;
  llorch_fp16 m;
  uint8_t qh[4];
  uint8_t qs[LLORCH_QK5_1 / 2];
} llorch_block_q5_1; /* 24 bytes */

/* x[j] = qs[j] * d */
typedef struct llorch_block_q8_0 {
  llorch_fp16 d;
  int8_t qs[LLORCH_QK8_0];
} llorch_block_q8_0; /* 34 bytes */

/* s = d * sum(qs) (used for activations in ggml, rarely stored) */
typedef struct llorch_block_q8_1 {
  llorch_fp16 d;
  llorch_fp16 s;
  int8_t qs[LLORCH_QK8_1];
} llorch_block_q8_1; /* 36 bytes */

/* 16 sub-blocks of 16: 4-bit scale and 4-bit min per sub-block, 2-bit quants */
typedef struct llorch_block_q2_K {
  uint8_t scales[LLORCH_QK_K / 16];
  uint8_t qs[LLORCH_QK_K / 4];
  llorch_fp16 d;
  llorch_fp16 dmin;
} llorch_block_q2_K; /* 84 bytes */

/* 16 sub-blocks of 16: 6-bit scales packed in 12 bytes, 3-bit quants */
typedef struct llorch_block_q3_K {
  uint8_t hmask[LLORCH_QK_K / 8];
  uint8_t qs[LLORCH_QK_K / 4];
  uint8_t scales[12];
  llorch_fp16 d;
} llorch_block_q3_K; /* 110 bytes */

/*
 * 8 sub-blocks of 32: x = d * sc[j] * q - dmin * m[j], q in 0..15.
 * scales: 6-bit sc[0..7] and m[0..7] packed (see llorch_q4_K_scale_min);
 * qs: for each 64-element group g, qs[32g + l] low nibble is element
 * 64g + l, high nibble 64g + 32 + l.
 */
typedef struct llorch_block_q4_K {
  llorch_fp16 d;
  llorch_fp16 dmin;
  uint8_t scales[LLORCH_K_SCALE_SIZE];
  uint8_t qs[LLORCH_QK_K / 2];
} llorch_block_q4_K; /* 144 bytes */

typedef struct llorch_block_q5_K {
  llorch_fp16 d;
  llorch_fp16 dmin;
  uint8_t scales[LLORCH_K_SCALE_SIZE];
  uint8_t qh[LLORCH_QK_K / 8];
  uint8_t qs[LLORCH_QK_K / 2];
} llorch_block_q5_K; /* 176 bytes */

/*
 * 16 sub-blocks of 16: x = d * scales[s] * (q - 32), q 6 bits: low 4 bits in
 * ql, high 2 bits in qh. For each 128-element half h (ql += 64h, qh += 32h,
 * scales += 8h, y += 128h) and l in 0..31:
 *   y[l]      = ql[l] & 15      | ((qh[l] >> 0) & 3) << 4   scale[l/16 + 0]
 *   y[l + 32] = ql[l + 32] & 15 | ((qh[l] >> 2) & 3) << 4   scale[l/16 + 2]
 *   y[l + 64] = ql[l] >> 4      | ((qh[l] >> 4) & 3) << 4   scale[l/16 + 4]
 *   y[l + 96] = ql[l + 32] >> 4 | ((qh[l] >> 6) & 3) << 4   scale[l/16 + 6]
 */
typedef struct llorch_block_q6_K {
  uint8_t ql[LLORCH_QK_K / 2];
  uint8_t qh[LLORCH_QK_K / 4];
  int8_t scales[LLORCH_QK_K / 16];
  llorch_fp16 d;
} llorch_block_q6_K; /* 210 bytes */

/* activations in ggml's k-quant dot products; bsums[i] = sum of qs[16i..16i+15] */
typedef struct llorch_block_q8_K {
  float d;
  int8_t qs[LLORCH_QK_K];
  int16_t bsums[LLORCH_QK_K / 16];
} llorch_block_q8_K; /* 292 bytes */

_Static_assert(sizeof(llorch_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(llorch_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(llorch_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(llorch_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(llorch_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(llorch_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(llorch_block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(llorch_block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(llorch_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(llorch_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(llorch_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(llorch_block_q8_K) == 292, "q8_K layout");

/*
 * Unpacks the 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K
 * super-block, as ggml's get_scale_min_k4: j < 4 are the low 6 bits of bytes
 * j and j + 4; j >= 4 take 4 bits from byte j + 4 and their top 2 bits from
 * the top bits of bytes j - 4 (scale) and j (min).
 */
static inline void llorch_q4_K_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

/* ---- rows ---- */

/* Bytes of a row of n elements of type t; 0 if t is unknown or n is not a
 * multiple of its block size. */
size_t llorch_row_size(llorch_ggml_type t, int64_t n);

/* Types llorch_dequantize_row handles: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K. */
bool llorch_type_can_dequantize(llorch_ggml_type t);
/* Types llorch_quantize_row handles: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K. */
bool llorch_type_can_quantize(llorch_ggml_type t);

/*
 * dst[0..n) = the n values of the row src of type t (n a multiple of the
 * block size). Returns 0, or LLORCH_EUNSUPPORTED for a type not listed above,
 * LLORCH_EINVAL for a bad n. Bit-exact with ggml's dequantize_row_*.
 */
int llorch_dequantize_row(llorch_ggml_type t, const void *src, float *dst, int64_t n);

/*
 * Quantizes n floats into llorch_row_size(t, n) bytes at dst. Returns 0,
 * LLORCH_EUNSUPPORTED or LLORCH_EINVAL as above. Deterministic; not ggml's
 * error-minimizing quantizers, but every block is valid and close to src.
 */
int llorch_quantize_row(llorch_ggml_type t, const float *src, void *dst, int64_t n);

#endif /* LLORCH_QUANT_H */
