/*
 * Attention for decode and prefill over the F16 KV cache, flash-decoding
 * style: the context of an entry is cut into n_splits spans of split_len
 * positions; one block per (KV head, entry, span) computes an online softmax
 * over its span in tiles of LLORCH_CUDA_ATT_TILE positions and writes an
 * unnormalized partial (acc, running max, running sum); a second kernel
 * merges the spans. Long contexts thus spread over many SMs even at batch 1.
 *
 * Grouped-query attention: a block handles all G = n_head / n_head_kv query
 * heads that share its KV head, so each K and V row is read from memory once
 * for the whole group (the cache read is what decode attention costs).
 *
 * Numerics as the CPU engine where it matters: q is rounded to F16 before
 * the K dot (ggml converts it to the cache type), scores are scaled by
 * 1/sqrt(head_dim), softmax in float with expf. The probabilities stay in
 * float here (the CPU rounds them to F16), a difference in the last bits.
 */
#include <math.h>

#include "cuda-impl.cuh"
#include "reduce.cuh"

#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / 32)
#define ATT_TILE ((int)LLORCH_CUDA_ATT_TILE)
#define ATT_DPT 2 /* head dims per thread in the V accumulation: head_dim <= 256 */

template <int GMAX>
__global__ void __launch_bounds__(ATT_THREADS)
    k_att_split(cuda_shape sh, const uint16_t *__restrict__ kc, const uint16_t *__restrict__ vc,
                const int32_t *__restrict__ pos_arr, const int32_t *__restrict__ seq_arr,
                const float *__restrict__ q, float *__restrict__ part, int split_len,
                int n_splits) {
  extern __shared__ float smem[];
  const int hd = sh.head_dim, G = sh.n_head / sh.n_head_kv;
  const int kvh = blockIdx.x, e = blockIdx.y, sp = blockIdx.z;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float *qs = smem;              /* (G, hd) */
  float *sc = qs + G * hd;       /* (G, ATT_TILE) scores, then probabilities */
  float *m_run = sc + G * ATT_TILE; /* (G) */
  float *l_run = m_run + G;      /* (G) */
  float *corr = l_run + G;       /* (G) */

  const int n_kv = pos_arr[e] + 1;
  const int t0 = sp * split_len;
  const int t1 = min(t0 + split_len, n_kv);
  const size_t head_stride = (size_t)n_splits * (hd + 2);
  float *pbase = part + ((size_t)e * sh.n_head + (size_t)kvh * G) * head_stride + (size_t)sp * (hd + 2);
  if (t0 >= t1) { /* this span is past the entry's position: an empty partial */
    for (int g = tid; g < G; g += ATT_THREADS) {
      pbase[g * head_stride + hd] = -INFINITY;
      pbase[g * head_stride + hd + 1] = 0.0f;
    }
    return;
  }
  const float *qe = q + (size_t)e * sh.q_dim + (size_t)kvh * G * hd;
  for (int i = tid; i < G * hd; i += ATT_THREADS) qs[i] = __half2float(__float2half_rn(qe[i]));
  for (int g = tid; g < G; g += ATT_THREADS) {
    m_run[g] = -INFINITY;
    l_run[g] = 0.0f;
  }
  const size_t row0 = (size_t)seq_arr[e] * sh.n_ctx;
  const size_t koff = (size_t)kvh * hd;
  const float scale = rsqrtf((float)hd);
  float acc[GMAX][ATT_DPT];
#pragma unroll
  for (int g = 0; g < GMAX; g++)
#pragma unroll
    for (int k = 0; k < ATT_DPT; k++) acc[g][k] = 0.0f;
  __syncthreads();

  for (int tt = t0; tt < t1; tt += ATT_TILE) {
    const int nt = min(ATT_TILE, t1 - tt);
    /* scores: a warp per position, lanes across the head dims, all G heads at once */
    for (int j = warp; j < nt; j += ATT_WARPS) {
      const uint16_t *kr = kc + (row0 + (size_t)(tt + j)) * sh.kv_dim + koff;
      float s[GMAX];
#pragma unroll
      for (int g = 0; g < GMAX; g++) s[g] = 0.0f;
      for (int d = 2 * lane; d < hd; d += 64) {
        const float2 kv = __half22float2(*reinterpret_cast<const __half2 *>(kr + d));
#pragma unroll
        for (int g = 0; g < GMAX; g++)
          if (g < G) s[g] += kv.x * qs[g * hd + d] + kv.y * qs[g * hd + d + 1];
      }
#pragma unroll
      for (int g = 0; g < GMAX; g++) {
        if (g < G) {
          const float v = warp_sum(s[g]);
          if (lane == 0) sc[g * ATT_TILE + j] = v * scale;
        }
      }
    }
    __syncthreads();
    /* online softmax: a warp per head */
    for (int g = warp; g < G; g += ATT_WARPS) {
      float mx = -INFINITY;
      for (int j = lane; j < nt; j += 32) mx = fmaxf(mx, sc[g * ATT_TILE + j]);
      mx = warp_max(mx);
      const float m_new = fmaxf(m_run[g], mx);
      float sum = 0.0f;
      for (int j = lane; j < nt; j += 32) {
        const float p = expf(sc[g * ATT_TILE + j] - m_new);
        sc[g * ATT_TILE + j] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float c = m_run[g] == -INFINITY ? 0.0f : expf(m_run[g] - m_new);
        corr[g] = c;
        l_run[g] = l_run[g] * c + sum;
        m_run[g] = m_new;
      }
    }
    __syncthreads();
    /* V: each thread owns head dims tid, tid + 128; a V row is read once for the group */
#pragma unroll
    for (int g = 0; g < GMAX; g++)
      if (g < G)
#pragma unroll
        for (int k = 0; k < ATT_DPT; k++) acc[g][k] *= corr[g];
    for (int j = 0; j < nt; j++) {
      const uint16_t *vr = vc + (row0 + (size_t)(tt + j)) * sh.kv_dim + koff;
#pragma unroll
      for (int k = 0; k < ATT_DPT; k++) {
        const int d = tid + k * ATT_THREADS;
        if (d < hd) {
          const float vv = __half2float(__ushort_as_half(vr[d]));
#pragma unroll
          for (int g = 0; g < GMAX; g++)
            if (g < G) acc[g][k] += sc[g * ATT_TILE + j] * vv;
        }
      }
    }
    __syncthreads(); /* sc is rewritten by the next tile */
  }
#pragma unroll
  for (int g = 0; g < GMAX; g++) {
    if (g >= G) continue;
    float *pg = pbase + (size_t)g * head_stride;
#pragma unroll
    for (int k = 0; k < ATT_DPT; k++) {
      const int d = tid + k * ATT_THREADS;
      if (d < hd) pg[d] = acc[g][k];
    }
    if (tid == 0) {
      pg[hd] = m_run[g];
      pg[hd + 1] = l_run[g];
    }
  }
}

/* Merges the spans of one (entry, head): out = sum acc_s e^(m_s - M) / sum l_s e^(m_s - M). */
__global__ void k_att_combine(cuda_shape sh, const float *__restrict__ part,
                              float *__restrict__ att, int n_splits) {
  const int e = blockIdx.x, h = blockIdx.y, hd = sh.head_dim;
  const float *ph = part + ((size_t)e * sh.n_head + h) * (size_t)n_splits * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_splits; s++) M = fmaxf(M, ph[(size_t)s * (hd + 2) + hd]);
  float L = 0.0f;
  for (int s = 0; s < n_splits; s++) {
    const float m = ph[(size_t)s * (hd + 2) + hd];
    if (m != -INFINITY) L += ph[(size_t)s * (hd + 2) + hd + 1] * expf(m - M);
  }
  const float inv = 1.0f / L;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < n_splits; s++) {
      const float m = ph[(size_t)s * (hd + 2) + hd];
      if (m != -INFINITY) o += ph[(size_t)s * (hd + 2) + d] * expf(m - M);
    }
    att[(size_t)e * sh.q_dim + (size_t)h * hd + d] = o * inv;
  }
}

template <int GMAX>
static void att_launch(const cuda_shape *sh, const cuda_layer *L, const cuda_meta *meta,
                       const float *q, float *part, int n, uint32_t n_splits, uint32_t split_len,
                       cudaStream_t s) {
  const int G = sh->n_head / sh->n_head_kv;
  const size_t smem = sizeof(float) * ((size_t)G * sh->head_dim + (size_t)G * ATT_TILE + 3 * (size_t)G);
  const dim3 grid((unsigned)sh->n_head_kv, (unsigned)n, n_splits);
  k_att_split<GMAX><<<grid, ATT_THREADS, smem, s>>>(*sh, L->k_cache, L->v_cache, meta->pos,
                                                    meta->seq, q, part, (int)split_len,
                                                    (int)n_splits);
}

int cuda_attention(const cuda_shape *sh, const cuda_layer *L, const cuda_meta *meta,
                   const float *q, float *part, float *att, int n, uint32_t n_splits,
                   uint32_t split_len, cudaStream_t s) {
  if (n <= 0) return 0;
  const int G = sh->n_head / sh->n_head_kv;
  if (G <= 1) att_launch<1>(sh, L, meta, q, part, n, n_splits, split_len, s);
  else if (G <= 2) att_launch<2>(sh, L, meta, q, part, n, n_splits, split_len, s);
  else if (G <= 4) att_launch<4>(sh, L, meta, q, part, n, n_splits, split_len, s);
  else if (G <= 8) att_launch<8>(sh, L, meta, q, part, n, n_splits, split_len, s);
  else if (G <= LLORCH_CUDA_MAX_GROUP) att_launch<16>(sh, L, meta, q, part, n, n_splits, split_len, s);
  else return LLORCH_EUNSUPPORTED;
  const dim3 grid((unsigned)n, (unsigned)sh->n_head);
  k_att_combine<<<grid, 128, 0, s>>>(*sh, part, att, (int)n_splits);
  return 0;
}
