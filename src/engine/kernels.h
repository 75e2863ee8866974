/*
 * The CPU engine's numeric kernels (internal to src/engine).
 *
 * Every kernel reproduces the operation order of one of ggml's CPU backend
 * variants, because "correct" means the same greedy tokens as llama.cpp on
 * the same file, and a logit that ties within rounding flips if the
 * rounding differs. llama.cpp's prebuilt CPU backend picks a variant by the
 * CPU's features, and the variants reduce differently: its AVX2 variants
 * (haswell, alderlake) in 8-lane vectors, its AVX-512 ones (skylakex ...
 * zen4) in 16-lane vectors, with another expf for SiLU and softmax, and with
 * AVX512_BF16 BF16 dot products in pairs (vdpbf16ps). A kern_table carries
 * one variant's order (lanes, bf16_pairs); kern_select picks the variant
 * llama.cpp would pick on this CPU.
 *
 * Two reduction orders exist for the same weight type, depending on how
 * many tokens llama.cpp's matmul sees:
 *
 *   KERN_ORDER_GEMM  llamafile's tinyBLAS (used by ggml when a matmul has two
 *                    or more columns): one L-lane FMA accumulator per output
 *                    walks k in steps of L, then a horizontal sum (halving:
 *                    hi+lo down to one lane). L = 8 or 16; k % L != 0 falls
 *                    back to the GEMV order. BF16 with bf16_pairs: steps of
 *                    32, each lane adding the odd then the even product of
 *                    its pair.
 *   KERN_ORDER_GEMV  ggml_vec_dot_* (one column): for F16/F32 four L-lane
 *                    accumulators over steps of 4L, a tree reduction, then
 *                    the leftover tail added in double.
 *
 * Quantized types (Q8_0, Q4_0, Q4_K, Q6_K) have one order either way: an
 * exact integer dot per block or super-block, spread over 8 lanes of 4
 * consecutive elements, times the block scales with an FMA per lane, and a
 * horizontal sum at the end - the same in ggml's AVX2 and AVX-512 variants
 * (both run the 256-bit code there; VNNI changes only exact integer sums).
 *
 * Each output element's order depends only on its own row, its own column
 * and the order flag - never on which other rows or columns are computed in
 * the same call, nor on the blocking of the SIMD micro-kernels. That is what
 * makes the engine batch-invariant, and it is why the scalar kernels below
 * can be compared bit for bit with the SIMD ones.
 */
#ifndef LLORCH_ENGINE_KERNELS_H
#define LLORCH_ENGINE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/gguf.h"
#include "llorch/quant.h"

typedef enum kern_order {
  KERN_ORDER_GEMM = 0,
  KERN_ORDER_GEMV = 1,
} kern_order;

/*
 * How the activations of a matmul are prepared for a weight type (ggml's
 * vec_dot_type): F16 weights see activations rounded to F16, Q8_0/Q4_0 see
 * them quantized to Q8_0 blocks, Q4_K/Q6_K to Q8_K super-blocks, BF16 to
 * BF16, F32 as they are. F16- and BF16-rounded activations are kept as
 * floats (exactly representable) so kernels need no conversion of them.
 */
typedef enum kern_act {
  KERN_ACT_F32 = 0,  /* float, unchanged */
  KERN_ACT_F16 = 1,  /* float, each value rounded through binary16 */
  KERN_ACT_BF16 = 2, /* float, each value rounded through bfloat16 */
  KERN_ACT_Q8_0 = 3, /* llorch_block_q8_0 */
  KERN_ACT_Q8_K = 4, /* llorch_block_q8_K */
} kern_act;

/* Activation format a weight type needs; false for unsupported types. */
bool kern_act_for_type(llorch_ggml_type t, kern_act *out);
/* Bytes one prepared activation row of n values takes. */
size_t kern_act_row_bytes(kern_act a, int n);
/* Prepares one row (n values) as a weight type's matmul wants it. */
void kern_act_prepare(kern_act a, const float *x, void *dst, int n);

/*
 * A tile of a matmul: Y[c * ldy + r] = dot(W row r, X col c) for r in
 * [0, nr), c in [0, nc). W rows are w_stride bytes apart, X columns
 * x_stride bytes apart (prepared activations), n values per dot.
 */
typedef void (*kern_tile_fn)(int n, const void *w, size_t w_stride, int nr, const void *x,
                             size_t x_stride, int nc, float *y, size_t ldy, kern_order order);

typedef struct kern_table {
  const char *name;               /* "scalar", "avx2", "scalar-avx512", "avx512", ... */
  int lanes;                      /* 8: ggml's AVX2 variant order; 16: its AVX-512 one */
  bool bf16_pairs;                /* BF16 dots as AVX512_BF16's vdpbf16ps (zen4 variant) */
  kern_tile_fn tile[LLORCH_TYPE_COUNT]; /* by weight type; NULL: unsupported */
  /*
   * The order of ggml's repacked ("extra buffer") kernels, which llama.cpp
   * uses on AVX2 for Q4_0 and Q4_K matrices whose row count is a multiple
   * of 8 (all but the token embedding, which stays plain for get_rows):
   * per output one FMA per (super-)block of the exact integer dot times
   * d_w * d_x, in block order, no lanes; Q4_K keeps its mins in a second
   * accumulator subtracted at the end. The order flag means something else
   * here: ggml runs its GEMM kernel over the activation rows in whole groups
   * of 4 and its GEMV kernel over the rest, and for Q4_K the two differ
   * (GEMM: one FMA per pair of sub-blocks). KERN_ORDER_GEMM = a column in a
   * group of 4. NULL where a type is never repacked.
   */
  kern_tile_fn tile_repacked[LLORCH_TYPE_COUNT];
  /* y[i] = silu(g[i]) * u[i] (ggml_vec_swiglu_f32) */
  void (*swiglu)(int n, float *y, const float *g, const float *u);
  /* n floats to n/32 Q8_0 blocks, as kern_quantize_q8_0 */
  void (*quantize_q8_0)(const float *x, llorch_block_q8_0 *y, int n);
  /* y[i] = x[i] rounded through binary16 (F16C where available) */
  void (*round_f16)(int n, float *y, const float *x);
  /* y[i] = exp(x[i] - max); returns the sum as ggml_vec_soft_max_f32 does */
  double (*softmax_exp)(int n, float *y, const float *x, float max);
} kern_table;

/* The portable references (bit-identical results to the SIMD tables): the
 * AVX2 variant's order, the AVX-512 one's with and without AVX512_BF16. */
extern const kern_table kern_scalar;
extern const kern_table kern_scalar_avx512;
extern const kern_table kern_scalar_avx512f;
/* NULL when this CPU (or this build) cannot run the AVX2 kernels. */
const kern_table *kern_avx2_table(void);
/* NULL when this CPU cannot run the AVX-512 kernels (F/BW/VL/DQ); the BF16
 * pair order where the CPU has AVX512_BF16, as llama.cpp's variants. */
const kern_table *kern_avx512_table(void);
/* The AVX-512 kernels with the BF16 order of CPUs without AVX512_BF16 (to
 * compare and test that order on any AVX-512 CPU); NULL as above. */
const kern_table *kern_avx512f_table(void);
/* The kernels for this CPU: the best table it can run, or the one the
 * environment variable LLORCH_CPU_ISA names (avx512, avx512f, avx2, scalar,
 * scalar-avx512, scalar-avx512f; a lower path to compare against, or a
 * scalar twin). An unknown or unavailable name is an error: *err gets a
 * message and NULL is returned. */
const kern_table *kern_select(const char **err);
/* The table for a name as LLORCH_CPU_ISA takes it; NULL if unknown or not
 * runnable here. */
const kern_table *kern_by_name(const char *name);

/* Whether llama.cpp repacks a matrix of this type and row count. */
static inline bool kern_is_repacked(llorch_ggml_type t, uint64_t n_rows) {
  return (t == LLORCH_TYPE_Q4_0 || t == LLORCH_TYPE_Q4_K) && n_rows % 8 == 0;
}

/* ---- pieces shared by the scalar and SIMD files ---- */

/* Scalar emulation of ggml_v_expf (AVX2 variant), bit-exact per lane. */
float kern_expf_ggml(float x);
/* Scalar silu as ggml_v_silu: x / (1 + ggml_v_expf(-x)). */
float kern_silu_ggml(float x);
/* The same for ggml's AVX-512 ggml_v_expf / ggml_v_silu (another final
 * step: 1 + poly, then scaled by 2^n with vscalefps). */
float kern_expf_ggml512(float x);
float kern_silu_ggml512(float x);

/* Rounds through binary16 / bfloat16 and back. */
float kern_round_f16(float x);
float kern_round_bf16(float x);

/* Quantizers for activations, as ggml-cpu's quantize_row_q8_0 (AVX2 path:
 * id = 127/amax, round half to even) and quantize_row_q8_K (reference). */
void kern_quantize_q8_0(const float *x, llorch_block_q8_0 *y, int n);
void kern_quantize_q8_K(const float *x, llorch_block_q8_K *y, int n);

/* Reductions of 8 lanes: tinyBLAS's hsum / hsum_float_8 ((l+h) then
 * (0+2, 1+3) then sum) and GGML_F32x8_REDUCE's final step (hadd twice). */
static inline float kern_hsum8(const float v[8]) {
  float a0 = v[4] + v[0], a1 = v[5] + v[1], a2 = v[6] + v[2], a3 = v[7] + v[3];
  float b0 = a0 + a2, b1 = a1 + a3;
  return b0 + b1;
}
static inline float kern_hadd8(const float v[8]) {
  float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
  return (a0 + a1) + (a2 + a3);
}
/* _mm512_reduce_add_ps (GCC): the high 8 lanes onto the low 8, then hsum8 */
static inline float kern_hsum16(const float v[16]) {
  float a[8];
  for (int i = 0; i < 8; i++) a[i] = v[i + 8] + v[i];
  return kern_hsum8(a);
}

#endif /* LLORCH_ENGINE_KERNELS_H */
