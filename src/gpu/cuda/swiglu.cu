/* SwiGLU: gate = silu(gate) * up, silu(x) = x / (1 + exp(-x)) as ggml. */
#include "cuda-impl.cuh"

__global__ void k_swiglu(float *__restrict__ gate, const float *__restrict__ up, int64_t n) {
  const int64_t i4 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (i4 + 3 < n) {
    /* n_ff is a multiple of 32, so the rows stay float4-aligned */
    float4 g = reinterpret_cast<float4 *>(gate)[i4 / 4];
    const float4 u = reinterpret_cast<const float4 *>(up)[i4 / 4];
    g.x = g.x / (1.0f + expf(-g.x)) * u.x;
    g.y = g.y / (1.0f + expf(-g.y)) * u.y;
    g.z = g.z / (1.0f + expf(-g.z)) * u.z;
    g.w = g.w / (1.0f + expf(-g.w)) * u.w;
    reinterpret_cast<float4 *>(gate)[i4 / 4] = g;
  } else {
    for (int64_t i = i4; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
  }
}

int cuda_swiglu(float *gate, const float *up, int64_t n, cudaStream_t s) {
  if (n <= 0) return 0;
  const int64_t threads = 256, n4 = (n + 3) / 4;
  k_swiglu<<<(unsigned)((n4 + threads - 1) / threads), (unsigned)threads, 0, s>>>(gate, up, n);
  return 0;
}
