/*
 * Residual add fused with RMSNorm: one block per row reads the residual
 * stream and the branch output once, writes the updated stream and the
 * normed copy the next matmul reads (ggml's rms_norm then mul: scale in
 * float, y = (x * scale) * w).
 */
#include "cuda-impl.cuh"
#include "reduce.cuh"

#define NORM_THREADS 256

__global__ void __launch_bounds__(NORM_THREADS)
    k_add_rmsnorm(const float *x, const float *add, float *x_out,
                  const int32_t *__restrict__ rows, const float *__restrict__ w,
                  float *__restrict__ xn, int n_embd, float eps) {
  __shared__ float red[32];
  const int r = blockIdx.x;
  const int src = rows ? rows[r] : r;
  const float *xr = x + (size_t)src * n_embd;
  const float *ar = add ? add + (size_t)src * n_embd : nullptr;
  float *outr = x_out ? x_out + (size_t)src * n_embd : nullptr;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n_embd; i += blockDim.x) {
    const float v = ar ? ar[i] + xr[i] : xr[i];
    if (outr) outr[i] = v;
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float scale = rsqrtf(ss / (float)n_embd + eps);
  /* re-read: each thread touches the same elements it wrote, so no sync is needed */
  float *yr = xn + (size_t)r * n_embd;
  for (int i = threadIdx.x; i < n_embd; i += blockDim.x) {
    const float v = outr ? outr[i] : (ar ? ar[i] + xr[i] : xr[i]);
    yr[i] = (v * scale) * w[i];
  }
}

int cuda_add_rmsnorm(const float *x, const float *add, float *x_out, const int32_t *rows,
                     const float *w, float *xn, int n, int n_embd, float eps, cudaStream_t s) {
  if (n <= 0) return 0;
  k_add_rmsnorm<<<n, NORM_THREADS, 0, s>>>(x, add, x_out, rows, w, xn, n_embd, eps);
  return 0;
}
