/*
 * Matrix products for prefill (and batches of many prefill columns) through
 * cuBLAS on the tensor cores: activations are converted to the weights'
 * 16-bit type (F16/BF16 weights are used as they lie in VRAM), quantized
 * weights are dequantized to F16 one tile of rows at a time into a bounded
 * scratch buffer, and cuBLAS accumulates in F32.
 *
 * Row-major W (n_out rows of n_in) is, to column-major cuBLAS, an n_in x
 * n_out matrix A with lda = n_in; Y (n_cols columns of ldy) = A^T X.
 */
#include <type_traits>

#include "cuda-impl.cuh"
#include "dequant.cuh"

template <typename H>
__global__ void k_to_16(const float *__restrict__ x, int ldx, int n_in, H *__restrict__ xh) {
  const int c = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_in; i += gridDim.x * blockDim.x) {
    const float v = x[(size_t)c * ldx + i];
    if constexpr (sizeof(H) == 2 && std::is_same_v<H, __half>) xh[(size_t)c * n_in + i] = __float2half_rn(v);
    else xh[(size_t)c * n_in + i] = __float2bfloat16_rn(v);
  }
}

template <int T>
__global__ void k_dequant_f16(const uint8_t *__restrict__ W, size_t row_bytes, int n_units,
                              __half *__restrict__ out) {
  constexpr int E = dq_unit<T>::ELEMS;
  const uint8_t *row = W + (size_t)blockIdx.x * row_bytes;
  __half *o = out + (size_t)blockIdx.x * n_units * E;
  for (int u = threadIdx.x; u < n_units; u += blockDim.x) {
    float w[E];
    dq_unit<T>::load(row, u, w);
#pragma unroll
    for (int e = 0; e < E; e++) o[u * E + e] = __float2half_rn(w[e]);
  }
}

static int gemm_check(cublasStatus_t st) {
  return st == CUBLAS_STATUS_SUCCESS ? 0 : LLORCH_EDEVICE;
}

int cuda_gemm(cublasHandle_t h, const cuda_mat *w, const float *x, int ldx, int n_cols, float *y,
              int ldy, void *xh, void *wtile, uint64_t wtile_bytes, cudaStream_t s) {
  if (n_cols <= 0) return 0;
  const float alpha = 1.0f, beta = 0.0f;
  const int n_in = w->n_in;
  if (cublasSetStream(h, s) != CUBLAS_STATUS_SUCCESS) return LLORCH_EDEVICE;
  if (w->type == LLORCH_TYPE_F32)
    return gemm_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, w->n_out, n_cols, n_in, &alpha,
                                   w->d, CUDA_R_32F, n_in, x, CUDA_R_32F, ldx, &beta, y,
                                   CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  const dim3 cgrid((unsigned)((n_in + 255) / 256), (unsigned)n_cols);
  if (w->type == LLORCH_TYPE_BF16) {
    k_to_16<__nv_bfloat16><<<cgrid, 256, 0, s>>>(x, ldx, n_in, (__nv_bfloat16 *)xh);
    return gemm_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, w->n_out, n_cols, n_in, &alpha,
                                   w->d, CUDA_R_16BF, n_in, xh, CUDA_R_16BF, n_in, &beta, y,
                                   CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  k_to_16<__half><<<cgrid, 256, 0, s>>>(x, ldx, n_in, (__half *)xh);
  if (w->type == LLORCH_TYPE_F16)
    return gemm_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, w->n_out, n_cols, n_in, &alpha,
                                   w->d, CUDA_R_16F, n_in, xh, CUDA_R_16F, n_in, &beta, y,
                                   CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  /* quantized: dequantize a tile of rows, multiply, next tile */
  int tile_rows = (int)(wtile_bytes / ((uint64_t)n_in * sizeof(__half)));
  if (tile_rows < 1) return LLORCH_EINVAL; /* the plan sizes wtile for the widest row */
  if (tile_rows > w->n_out) tile_rows = w->n_out;
  for (int r0 = 0; r0 < w->n_out; r0 += tile_rows) {
    const int nr = w->n_out - r0 < tile_rows ? w->n_out - r0 : tile_rows;
    const uint8_t *wr = w->d + (size_t)r0 * w->row_bytes;
    bool ok = dq_dispatch(w->type, [&]<int T>() {
      k_dequant_f16<T><<<nr, 128, 0, s>>>(wr, w->row_bytes, n_in / dq_unit<T>::ELEMS,
                                          (__half *)wtile);
    });
    if (!ok) return LLORCH_EUNSUPPORTED;
    int rc = gemm_check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, nr, n_cols, n_in, &alpha, wtile,
                                     CUDA_R_16F, n_in, xh, CUDA_R_16F, n_in, &beta, y + r0,
                                     CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (rc) return rc;
  }
  return 0;
}
