/* Block-wide reductions shared by the kernels (blockDim.x a multiple of 32, at most 1024). */
#ifndef LLORCH_CUDA_REDUCE_CUH
#define LLORCH_CUDA_REDUCE_CUH

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/* Sum over the block; every thread gets the result. red: 32 floats of shared memory. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  __syncthreads(); /* red may still be read by a previous call */
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < n_warps ? red[lane] : 0.0f;
  return warp_sum(v);
}

#endif /* LLORCH_CUDA_REDUCE_CUH */
