/*
 * Everything between the Q/K/V projections and attention, in one kernel:
 * the qwen2 biases, the qwen3 per-head RMSNorm of q and k, RoPE (NORM:
 * adjacent pairs; NEOX: pairs i and i + n_rot/2) and the write of K and V,
 * rounded to F16, into the cache at (sequence, position).
 *
 * One block per (entry, head slot): slots [0, n_head) are query heads,
 * [n_head, n_head + n_head_kv) key heads (which also carry the value head's
 * cache write). Thread i owns one pair of dimensions.
 *
 * Angles: theta = pos * base^(-2i / n_rot), divided by the frequency factor
 * (rope_freqs.weight) and multiplied by the linear scale, as ggml's CUDA
 * rope computes it (the CPU engine accumulates theta by repeated
 * multiplication; the two differ in the last bits of an angle).
 */
#include "cuda-impl.cuh"
#include "reduce.cuh"

#define ROPE_THREADS 128 /* head_dim <= 256 */

__global__ void __launch_bounds__(ROPE_THREADS)
    k_rope_kv(cuda_shape sh, const float *__restrict__ bq, const float *__restrict__ bk,
              const float *__restrict__ bv, const float *__restrict__ q_norm,
              const float *__restrict__ k_norm, const float *__restrict__ rope_ff,
              const int32_t *__restrict__ pos_arr, const int32_t *__restrict__ seq_arr,
              float *__restrict__ q, float *__restrict__ k, const float *__restrict__ v,
              uint16_t *__restrict__ k_cache, uint16_t *__restrict__ v_cache) {
  __shared__ float red[32];
  const int e = blockIdx.x, slot = blockIdx.y, i = threadIdx.x;
  const int hd = sh.head_dim, half_pairs = hd / 2;
  const bool is_q = slot < sh.n_head;
  const int h = is_q ? slot : slot - sh.n_head;
  float *vec = is_q ? q + (size_t)e * sh.q_dim + (size_t)h * hd
                    : k + (size_t)e * sh.kv_dim + (size_t)h * hd;
  const float *bias = is_q ? bq : bk;
  const float *nw = is_q ? q_norm : k_norm;
  /* this thread's pair: rotated pairs first, then unrotated dims two by two */
  const int n_rot = sh.n_rot, rp = n_rot / 2;
  int d0 = 0, d1 = 0;
  const bool active = i < half_pairs;
  if (active) {
    if (i < rp) {
      d0 = sh.rope_type == LLORCH_ROPE_NEOX ? i : 2 * i;
      d1 = sh.rope_type == LLORCH_ROPE_NEOX ? i + rp : 2 * i + 1;
    } else {
      d0 = n_rot + 2 * (i - rp);
      d1 = d0 + 1;
    }
  }
  float x0 = 0.0f, x1 = 0.0f;
  if (active) {
    x0 = vec[d0];
    x1 = vec[d1];
    if (bias) {
      const int off = h * hd;
      x0 = x0 + bias[off + d0];
      x1 = x1 + bias[off + d1];
    }
  }
  if (nw) { /* block-wide: every thread takes part in the reduction */
    const float ss = block_sum(x0 * x0 + x1 * x1, red);
    const float scale = rsqrtf(ss / (float)hd + sh.rms_eps);
    x0 = (x0 * scale) * nw[d0];
    x1 = (x1 * scale) * nw[d1];
  }
  if (!active) return;
  const int pos = pos_arr[e];
  if (i < rp) {
    const float theta_scale = powf(sh.rope_base, -2.0f / (float)n_rot);
    const float theta = (float)pos * powf(theta_scale, (float)i);
    const float ff = rope_ff ? rope_ff[i] : 1.0f;
    const float th = sh.rope_scale * (theta / ff);
    float sn, cs;
    sincosf(th, &sn, &cs);
    const float r0 = x0 * cs - x1 * sn;
    const float r1 = x0 * sn + x1 * cs;
    x0 = r0;
    x1 = r1;
  }
  if (is_q) {
    vec[d0] = x0;
    vec[d1] = x1;
    return;
  }
  const size_t cell = ((size_t)seq_arr[e] * sh.n_ctx + (size_t)pos) * sh.kv_dim + (size_t)h * hd;
  k_cache[cell + d0] = __half_as_ushort(__float2half_rn(x0));
  k_cache[cell + d1] = __half_as_ushort(__float2half_rn(x1));
  /* the value head: plain dims 2i, 2i + 1 (plus bias) */
  const float *vr = v + (size_t)e * sh.kv_dim + (size_t)h * hd;
  float v0 = vr[2 * i], v1 = vr[2 * i + 1];
  if (bv) {
    v0 = v0 + bv[h * hd + 2 * i];
    v1 = v1 + bv[h * hd + 2 * i + 1];
  }
  v_cache[cell + 2 * i] = __half_as_ushort(__float2half_rn(v0));
  v_cache[cell + 2 * i + 1] = __half_as_ushort(__float2half_rn(v1));
}

int cuda_rope_kv(const cuda_shape *sh, const cuda_layer *L, const cuda_meta *meta,
                 const float *rope_ff, float *q, float *k, const float *v, int n,
                 cudaStream_t s) {
  if (n <= 0) return 0;
  const dim3 grid((unsigned)n, (unsigned)(sh->n_head + sh->n_head_kv));
  k_rope_kv<<<grid, ROPE_THREADS, 0, s>>>(*sh, L->bq, L->bk, L->bv, L->q_norm, L->k_norm, rope_ff,
                                          meta->pos, meta->seq, q, k, v, L->k_cache,
                                          L->v_cache);
  return 0;
}
