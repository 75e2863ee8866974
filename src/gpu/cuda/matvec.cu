/*
 * Matrix-vector products for decode, with the weights dequantized inside the
 * kernel (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K), and the embedding lookup.
 *
 * One warp per output row: its 32 lanes walk the row's units (dequant.cuh)
 * side by side, so a warp reads 512 contiguous bytes per step for F16/BF16
 * (one 128-bit load per lane) and the row is read exactly once for up to
 * LLORCH_CUDA_MATVEC_MAX_COLS columns (batched decode). Decode is bound by
 * reading weights, so the kernel's job is to keep every load wide and
 * coalesced and to do nothing else.
 *
 * Batch invariance: a column's sum is accumulated in the same order (lane
 * partials over units, then the same butterfly) whatever the number of
 * columns in the launch, so a sequence's logits do not depend on what else
 * shares its batch.
 */
#include "cuda-impl.cuh"
#include "dequant.cuh"

#define MV_WARPS 4 /* rows per block */

/* One row of W against NC columns of x: every lane ends with the full sums. */
template <int T, int NC>
static __device__ __forceinline__ void mv_row(const uint8_t *__restrict__ row, int n_units,
                                              const float *__restrict__ x, int ldx, float *acc) {
  constexpr int E = dq_unit<T>::ELEMS;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < NC; c++) acc[c] = 0.0f;
  for (int u = lane; u < n_units; u += 32) {
    float w[E];
    dq_unit<T>::load(row, u, w);
#pragma unroll
    for (int c = 0; c < NC; c++) {
      const float4 *xc = reinterpret_cast<const float4 *>(x + (size_t)c * ldx + (size_t)u * E);
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < E / 4; e++) {
        const float4 xv = __ldg(xc + e);
        s += w[4 * e] * xv.x + w[4 * e + 1] * xv.y + w[4 * e + 2] * xv.z + w[4 * e + 3] * xv.w;
      }
      acc[c] += s;
    }
  }
#pragma unroll
  for (int c = 0; c < NC; c++) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[c] += __shfl_xor_sync(0xffffffffu, acc[c], o);
  }
}

template <int T, int NC>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec(const uint8_t *__restrict__ W, size_t row_bytes, int n_units, int n_out,
             const float *__restrict__ x, int ldx, float *__restrict__ y, int ldy) {
  const int r = blockIdx.x * MV_WARPS + threadIdx.x / 32;
  if (r >= n_out) return;
  float acc[NC];
  mv_row<T, NC>(W + (size_t)r * row_bytes, n_units, x, ldx, acc);
  if (threadIdx.x % 32 == 0)
#pragma unroll
    for (int c = 0; c < NC; c++) y[(size_t)c * ldy + r] = acc[c];
}

/* Q, K and V projections in one launch: rows [0, n0) of W0, then W1, then W2 (same type and n_in). */
typedef struct mv_segs {
  const uint8_t *W[3];
  float *y[3];
  int n_out[3];
  int ldy[3];
} mv_segs;

template <int T, int NC>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec3(mv_segs sg, size_t row_bytes, int n_units, const float *__restrict__ x, int ldx) {
  int r = blockIdx.x * MV_WARPS + threadIdx.x / 32;
  int m = 0;
  while (m < 3 && r >= sg.n_out[m]) r -= sg.n_out[m++];
  if (m == 3) return;
  float acc[NC];
  mv_row<T, NC>(sg.W[m] + (size_t)r * row_bytes, n_units, x, ldx, acc);
  if (threadIdx.x % 32 == 0)
#pragma unroll
    for (int c = 0; c < NC; c++) sg.y[m][(size_t)c * sg.ldy[m] + r] = acc[c];
}

/* gate and up rows together, SwiGLU applied on the way out: y = silu(gate . x) * (up . x). */
template <int T, int NC>
__global__ void __launch_bounds__(MV_WARPS * 32)
    k_matvec_glu(const uint8_t *__restrict__ Wg, const uint8_t *__restrict__ Wu, size_t row_bytes,
                 int n_units, int n_out, const float *__restrict__ x, int ldx,
                 float *__restrict__ y, int ldy) {
  const int r = blockIdx.x * MV_WARPS + threadIdx.x / 32;
  if (r >= n_out) return;
  float g[NC], u[NC];
  mv_row<T, NC>(Wg + (size_t)r * row_bytes, n_units, x, ldx, g);
  mv_row<T, NC>(Wu + (size_t)r * row_bytes, n_units, x, ldx, u);
  if (threadIdx.x % 32 == 0)
#pragma unroll
    for (int c = 0; c < NC; c++) y[(size_t)c * ldy + r] = g[c] / (1.0f + expf(-g[c])) * u[c];
}

template <int T>
static void matvec_launch(const cuda_mat *w, const float *x, int ldx, int nc, float *y, int ldy,
                          cudaStream_t s) {
  const int n_units = w->n_in / dq_unit<T>::ELEMS;
  const dim3 grid((unsigned)((w->n_out + MV_WARPS - 1) / MV_WARPS)), block(MV_WARPS * 32);
#define MV_CASE(N)                                                                          \
  case N:                                                                                   \
    k_matvec<T, N><<<grid, block, 0, s>>>(w->d, w->row_bytes, n_units, w->n_out, x, ldx, y, \
                                          ldy);                                             \
    break;
  switch (nc) {
    MV_CASE(1)
    MV_CASE(2)
    MV_CASE(3)
    MV_CASE(4)
    MV_CASE(5)
    MV_CASE(6)
    MV_CASE(7)
    MV_CASE(8)
  default: break;
  }
#undef MV_CASE
}

int cuda_matvec(const cuda_mat *w, const float *x, int ldx, int n_cols, float *y, int ldy,
                cudaStream_t s) {
  for (int c0 = 0; c0 < n_cols; c0 += LLORCH_CUDA_MATVEC_MAX_COLS) {
    const int nc = n_cols - c0 < LLORCH_CUDA_MATVEC_MAX_COLS ? n_cols - c0
                                                             : LLORCH_CUDA_MATVEC_MAX_COLS;
    const float *xc = x + (size_t)c0 * ldx;
    float *yc = y + (size_t)c0 * ldy;
    bool ok = dq_dispatch(w->type, [&]<int T>() { matvec_launch<T>(w, xc, ldx, nc, yc, ldy, s); });
    if (!ok) return LLORCH_EUNSUPPORTED;
  }
  return 0;
}

#define MV_SWITCH(N, LAUNCH) \
  switch (N) {                 \
  case 1: LAUNCH(1); break;    \
  case 2: LAUNCH(2); break;    \
  case 3: LAUNCH(3); break;    \
  case 4: LAUNCH(4); break;    \
  case 5: LAUNCH(5); break;    \
  case 6: LAUNCH(6); break;    \
  case 7: LAUNCH(7); break;    \
  case 8: LAUNCH(8); break;    \
  default: break;              \
  }

int cuda_matvec_qkv(const cuda_mat *q, const cuda_mat *k, const cuda_mat *v, const float *x,
                    int ldx, int n_cols, float *yq, int ldq, float *yk, int ldk, float *yv,
                    int ldv, cudaStream_t s) {
  if (k->type != q->type || v->type != q->type || k->n_in != q->n_in || v->n_in != q->n_in)
    return LLORCH_EUNSUPPORTED; /* mixed quantizations (e.g. Q4_K_M's Q6_K attn_v): separately */
  const int rows = q->n_out + k->n_out + v->n_out;
  const dim3 grid((unsigned)((rows + MV_WARPS - 1) / MV_WARPS)), block(MV_WARPS * 32);
  for (int c0 = 0; c0 < n_cols; c0 += LLORCH_CUDA_MATVEC_MAX_COLS) {
    const int nc = n_cols - c0 < LLORCH_CUDA_MATVEC_MAX_COLS ? n_cols - c0
                                                             : LLORCH_CUDA_MATVEC_MAX_COLS;
    mv_segs sg = {{q->d, k->d, v->d},
                  {yq + (size_t)c0 * ldq, yk + (size_t)c0 * ldk, yv + (size_t)c0 * ldv},
                  {q->n_out, k->n_out, v->n_out},
                  {ldq, ldk, ldv}};
    const float *xc = x + (size_t)c0 * ldx;
    bool ok = dq_dispatch(q->type, [&]<int T>() {
      const int n_units = q->n_in / dq_unit<T>::ELEMS;
#define L3(N) k_matvec3<T, N><<<grid, block, 0, s>>>(sg, q->row_bytes, n_units, xc, ldx)
      MV_SWITCH(nc, L3)
#undef L3
    });
    if (!ok) return LLORCH_EUNSUPPORTED;
  }
  return 0;
}

int cuda_matvec_glu(const cuda_mat *gate, const cuda_mat *up, const float *x, int ldx, int n_cols,
                    float *y, int ldy, cudaStream_t s) {
  if (up->type != gate->type || up->n_in != gate->n_in || up->n_out != gate->n_out)
    return LLORCH_EUNSUPPORTED;
  const dim3 grid((unsigned)((gate->n_out + MV_WARPS - 1) / MV_WARPS)), block(MV_WARPS * 32);
  for (int c0 = 0; c0 < n_cols; c0 += LLORCH_CUDA_MATVEC_MAX_COLS) {
    const int nc = n_cols - c0 < LLORCH_CUDA_MATVEC_MAX_COLS ? n_cols - c0
                                                             : LLORCH_CUDA_MATVEC_MAX_COLS;
    const float *xc = x + (size_t)c0 * ldx;
    float *yc = y + (size_t)c0 * ldy;
    bool ok = dq_dispatch(gate->type, [&]<int T>() {
      const int n_units = gate->n_in / dq_unit<T>::ELEMS;
#define LG(N)                                                                                  \
  k_matvec_glu<T, N><<<grid, block, 0, s>>>(gate->d, up->d, gate->row_bytes, n_units,          \
                                            gate->n_out, xc, ldx, yc, ldy)
      MV_SWITCH(nc, LG)
#undef LG
    });
    if (!ok) return LLORCH_EUNSUPPORTED;
  }
  return 0;
}

/* ---- embedding rows ---- */

template <int T>
__global__ void k_get_rows(const uint8_t *__restrict__ W, size_t row_bytes, int n_units,
                           const int32_t *__restrict__ token, float *__restrict__ x) {
  constexpr int E = dq_unit<T>::ELEMS;
  const uint8_t *row = W + (size_t)token[blockIdx.x] * row_bytes;
  float *out = x + (size_t)blockIdx.x * n_units * E;
  for (int u = threadIdx.x; u < n_units; u += blockDim.x) {
    float w[E];
    dq_unit<T>::load(row, u, w);
#pragma unroll
    for (int e = 0; e < E; e++) out[u * E + e] = w[e];
  }
}

int cuda_get_rows(const cuda_mat *w, const int32_t *token, int n, float *x, cudaStream_t s) {
  if (n <= 0) return 0;
  bool ok = dq_dispatch(w->type, [&]<int T>() {
    const int n_units = w->n_in / dq_unit<T>::ELEMS;
    k_get_rows<T><<<n, 128, 0, s>>>(w->d, w->row_bytes, n_units, token, x);
  });
  return ok ? 0 : LLORCH_EUNSUPPORTED;
}

/* ---- host build of the unit decoders (unit test without a GPU) ---- */

extern "C" int llorch_cuda_dequantize_row_host(llorch_ggml_type t, const void *src, float *dst,
                                               int64_t n) {
  if (n <= 0 || n % 32 != 0) return LLORCH_EINVAL;
  const uint8_t *row = static_cast<const uint8_t *>(src);
  bool ok = dq_dispatch(t, [&]<int T>() {
    constexpr int E = dq_unit<T>::ELEMS;
    for (int64_t u = 0; u < n / E; u++) dq_unit<T>::load(row, (int)u, dst + u * E);
  });
  return ok ? 0 : LLORCH_EUNSUPPORTED;
}
