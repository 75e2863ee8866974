/*
 * Weight decoding shared by the matvec, GEMM-tile and embedding kernels, and
 * compiled for the host too (llorch_cuda_dequantize_row_host) so a unit test
 * checks the block decoding against the reference dequantizers without a GPU.
 *
 * A row is cut into "units" that one thread decodes at a time into
 * registers: 8 elements for F16/BF16 (one 128-bit load), 4 for F32 (one
 * 128-bit load), 32 for the block types (a Q8_0/Q4_0 block, a 32-element
 * sub-block of a Q4_K or Q6_K super-block; Q4_K's quants come in with two
 * 128-bit loads, the other block types are not 16-byte aligned and are read
 * bytewise). The operation order inside a
 * unit follows ggml's dequantize_row_* (d1 = d * sc first, then d1 * q - m1).
 */
#ifndef LLORCH_CUDA_DEQUANT_CUH
#define LLORCH_CUDA_DEQUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "c_headers.cuh"

#define DQ_FN __host__ __device__ __forceinline__

static DQ_FN float dq_h2f(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h));
#else
  return llorch_fp16_to_fp32(h);
#endif
}

static DQ_FN float dq_bf2f(uint16_t h) {
#ifdef __CUDA_ARCH__
  return __uint_as_float((uint32_t)h << 16);
#else
  return llorch_bf16_to_fp32(h);
#endif
}

/* llorch_q4_K_scale_min (quant.h) for both sides: that one is host-only. */
static DQ_FN void dq_scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

/* Unit geometry per type: elements per unit. */
template <int T> struct dq_unit;

template <> struct dq_unit<LLORCH_TYPE_F32> {
  static constexpr int ELEMS = 4;
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
#ifdef __CUDA_ARCH__
    const float4 v = reinterpret_cast<const float4 *>(row)[u];
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#else
    const float *p = reinterpret_cast<const float *>(row) + 4 * u;
    for (int i = 0; i < 4; i++) w[i] = p[i];
#endif
  }
};

template <> struct dq_unit<LLORCH_TYPE_F16> {
  static constexpr int ELEMS = 8;
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
#ifdef __CUDA_ARCH__
    /* one 128-bit load: rows are 16-byte aligned (n_in % 32 == 0, buffers 256-aligned) */
    const uint4 v = reinterpret_cast<const uint4 *>(row)[u];
    const __half2 *h = reinterpret_cast<const __half2 *>(&v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 f = __half22float2(h[i]);
      w[2 * i] = f.x, w[2 * i + 1] = f.y;
    }
#else
    const uint16_t *p = reinterpret_cast<const uint16_t *>(row) + 8 * u;
    for (int i = 0; i < 8; i++) w[i] = dq_h2f(p[i]);
#endif
  }
};

template <> struct dq_unit<LLORCH_TYPE_BF16> {
  static constexpr int ELEMS = 8;
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
#ifdef __CUDA_ARCH__
    const uint4 v = reinterpret_cast<const uint4 *>(row)[u];
    const uint32_t p[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      w[2 * i] = __uint_as_float(p[i] << 16);
      w[2 * i + 1] = __uint_as_float(p[i] & 0xffff0000u);
    }
#else
    const uint16_t *p = reinterpret_cast<const uint16_t *>(row) + 8 * u;
    for (int i = 0; i < 8; i++) w[i] = dq_bf2f(p[i]);
#endif
  }
};

template <> struct dq_unit<LLORCH_TYPE_Q8_0> {
  static constexpr int ELEMS = 32;
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
    const llorch_block_q8_0 *b = reinterpret_cast<const llorch_block_q8_0 *>(row) + u;
    const float d = dq_h2f(b->d);
#pragma unroll
    for (int j = 0; j < 32; j++) w[j] = (float)b->qs[j] * d;
  }
};

template <> struct dq_unit<LLORCH_TYPE_Q4_0> {
  static constexpr int ELEMS = 32;
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
    const llorch_block_q4_0 *b = reinterpret_cast<const llorch_block_q4_0 *>(row) + u;
    const float d = dq_h2f(b->d);
#pragma unroll
    for (int j = 0; j < 16; j++) {
      const int x0 = (b->qs[j] & 0x0F) - 8;
      const int x1 = (b->qs[j] >> 4) - 8;
      w[j] = (float)x0 * d;
      w[j + 16] = (float)x1 * d;
    }
  }
};

template <> struct dq_unit<LLORCH_TYPE_Q4_K> {
  static constexpr int ELEMS = 32;
  /* unit u: super-block u / 8, sub-block j = u % 8 (elements 32j..32j+31) */
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
    const llorch_block_q4_K *b = reinterpret_cast<const llorch_block_q4_K *>(row) + u / 8;
    const int j = u % 8;
    const float d = dq_h2f(b->d), dmin = dq_h2f(b->dmin);
    uint8_t sc, m;
    dq_scale_min_k4(j, b->scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    const uint8_t *q = b->qs + 32 * (j / 2);
    const int shift = (j & 1) ? 4 : 0;
#ifdef __CUDA_ARCH__
    /* qs sits 16 bytes into a 144-byte block: two 128-bit loads (little-endian words) */
    const uint4 a = reinterpret_cast<const uint4 *>(q)[0], c = reinterpret_cast<const uint4 *>(q)[1];
    const uint32_t wd[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
    for (int l = 0; l < 32; l++)
      w[l] = d1 * (float)((wd[l / 4] >> (8 * (l % 4) + shift)) & 0xF) - m1;
#else
    for (int l = 0; l < 32; l++) w[l] = d1 * (float)((q[l] >> shift) & 0xF) - m1;
#endif
  }
};

template <> struct dq_unit<LLORCH_TYPE_Q6_K> {
  static constexpr int ELEMS = 32;
  /* unit u: super-block u / 8, k = u % 8: half k / 4, quarter k % 4 of it */
  static DQ_FN void load(const uint8_t *row, int u, float *w) {
    const llorch_block_q6_K *b = reinterpret_cast<const llorch_block_q6_K *>(row) + u / 8;
    const int k = u % 8, h = k / 4, qd = k % 4;
    const float d = dq_h2f(b->d);
    const uint8_t *ql = b->ql + 64 * h + ((qd & 1) ? 32 : 0);
    const uint8_t *qh = b->qh + 32 * h;
    const int8_t *sc = b->scales + 8 * h + 2 * qd;
    const int lshift = (qd >= 2) ? 4 : 0, hshift = 2 * qd;
#pragma unroll
    for (int l = 0; l < 32; l++) {
      const int q = (int)(((ql[l] >> lshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4)) - 32;
      w[l] = d * (float)sc[l / 16] * (float)q;
    }
  }
};

/* Calls F.template operator()<T>() for a supported runtime type; false otherwise. */
template <typename F> static bool dq_dispatch(llorch_ggml_type t, F &&f) {
  switch (t) {
  case LLORCH_TYPE_F32: f.template operator()<LLORCH_TYPE_F32>(); return true;
  case LLORCH_TYPE_F16: f.template operator()<LLORCH_TYPE_F16>(); return true;
  case LLORCH_TYPE_BF16: f.template operator()<LLORCH_TYPE_BF16>(); return true;
  case LLORCH_TYPE_Q8_0: f.template operator()<LLORCH_TYPE_Q8_0>(); return true;
  case LLORCH_TYPE_Q4_0: f.template operator()<LLORCH_TYPE_Q4_0>(); return true;
  case LLORCH_TYPE_Q4_K: f.template operator()<LLORCH_TYPE_Q4_K>(); return true;
  case LLORCH_TYPE_Q6_K: f.template operator()<LLORCH_TYPE_Q6_K>(); return true;
  default: return false;
  }
}

#endif /* LLORCH_CUDA_DEQUANT_CUH */
