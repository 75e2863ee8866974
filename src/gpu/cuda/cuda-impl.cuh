/*
 * Internals of the CUDA backend shared by its files: the per-device state,
 * the weight views the kernels read, and the launchers of each kernel family
 * (one .cu file each). Everything here is enqueued on a stream and returns
 * immediately; errors surface from cudaGetLastError / the stream sync in the
 * glue (backend.cu).
 */
#ifndef LLORCH_CUDA_IMPL_CUH
#define LLORCH_CUDA_IMPL_CUH

#include <pthread.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "c_headers.cuh"

/* A weight matrix in VRAM, still in its GGUF encoding. */
typedef struct cuda_mat {
  const uint8_t *d;        /* (n_out rows of row_bytes) device */
  llorch_ggml_type type;
  int n_in, n_out;         /* elements per row, rows */
  size_t row_bytes;
} cuda_mat;

typedef struct cuda_layer {
  const float *attn_norm, *ffn_norm;   /* (n_embd) device f32 */
  const float *bq, *bk, *bv;           /* (q_dim), (kv_dim) or NULL */
  const float *q_norm, *k_norm;        /* (head_dim) or NULL */
  cuda_mat wq, wk, wv, wo, gate, up, down;
  uint16_t *k_cache;                   /* (n_seq, n_ctx, kv_dim) f16 */
  uint16_t *v_cache;                   /* (n_seq, n_ctx, kv_dim) f16 */
} cuda_layer;

/* Shapes every kernel of a forward pass needs. */
typedef struct cuda_shape {
  int n_embd, n_ff, n_head, n_head_kv, head_dim, n_rot, n_vocab;
  int q_dim, kv_dim;
  int n_ctx, n_seq;
  float rms_eps, rope_base, rope_scale;
  llorch_rope_type rope_type;
} cuda_shape;

/* Per-entry arrays of the current batch on a device (inside scratch.meta). */
typedef struct cuda_meta {
  int32_t *token;   /* (B) */
  int32_t *pos;     /* (B) */
  int32_t *seq;     /* (B) */
  int32_t *rows;    /* (B) rows whose logits are computed, in output order */
} cuda_meta;

typedef struct cuda_dev {
  int ordinal;
  uint32_t layer_begin, layer_end;
  cudaStream_t stream;
  cudaEvent_t stage_done;   /* recorded after the activations were sent on */
  cublasHandle_t blas;
  uint8_t *weights;         /* one allocation for every tensor held here */
  uint8_t *kv;              /* K and V of this device's layers */
  uint8_t *scratch;         /* llorch_cuda_scratch_layout */
  llorch_cuda_scratch_layout lay;
  cuda_meta meta;
  float *x, *xn, *q, *k, *v, *att, *ao, *gate, *up, *part, *logits;
  void *xh, *wtile, *blas_ws;
  cuda_mat tok_embd;        /* has_embd */
  cuda_mat output;          /* has_output */
  const float *output_norm; /* has_output */
  const float *rope_ff;     /* (n_rot / 2) or NULL */
} cuda_dev;

#define CUDA_GRAPH_MAX 64 /* decode batches of up to this many entries are captured */

/* The backend's state: the handle behind llorch_backend_cuda_ops' void *ctx. */
typedef struct cuda_ctx {
  const llorch_model *m;
  cuda_shape sh;
  llorch_cuda_plan plan;
  int n_dev;
  cuda_dev dev[LLORCH_CUDA_MAX_DEVICES];
  cuda_layer *layers;        /* (n_layer) views into the owning device's buffers */
  llorch_cuda_alloc_table allocs;
  char location[32];         /* "cuda:0" or "cuda:0,1" */
  uint64_t weights_bytes, kv_bytes, scratch_bytes;
  /* host side of a forward pass */
  int32_t *seq_len;          /* (n_seq) positions cached per slot */
  int32_t *seq_count;        /* (n_seq) entries per slot in the current batch */
  int32_t *h_meta;           /* (4, B) pinned staging of token, pos, seq, rows */
  int32_t *perm;             /* (B) batch order: prefill entries first, then decode */
  int32_t *out_dst;          /* (B) for logits row r, its place in the caller's buffer */
  /* CUDA graphs of decode steps, by number of entries (single GPU only) */
  bool graphs_enabled;
  bool fused;                /* fused QKV and gate/up/SwiGLU matvecs (LLORCH_CUDA_FUSED=0: off) */
  cudaGraphExec_t graphs[CUDA_GRAPH_MAX + 1];
  /* last residency check (verify_residency may run on another thread) */
  pthread_mutex_t mem_lock;
  llorch_backend_memory residency;
} cuda_ctx;

/* backend.cu: the kernels of one device's layers for a batch of n entries (p
 * prefill entries first), and the logits of n_out rows (p_out of them
 * prefill) on the last device. Enqueues only: no host sync, no allocation,
 * so it can be captured into a graph. */
int cuda_stage_run(cuda_ctx *c, int d, int n, int p, int n_out, int p_out);

/* graph.cu: runs a decode step of n entries (all wanting logits) from a
 * captured graph, capturing it on first use. *ran false: not captured (graphs
 * off or capture failed), run it eagerly. */
int cuda_graph_decode(cuda_ctx *c, int n, bool *ran);
/* graph.cu: destroys the captured graphs. */
void cuda_graph_free(cuda_ctx *c);

/* ---- launchers (one kernel family per file) ---- */

/* matvec.cu: y[c * ldy + r] = row r of W . x[c * ldx ...] for columns [0, n_cols), any n_cols. */
int cuda_matvec(const cuda_mat *w, const float *x, int ldx, int n_cols, float *y, int ldy,
                cudaStream_t s);
/* matvec.cu: Q, K and V in one launch; LLORCH_EUNSUPPORTED (nothing launched) when the
 * three differ in type or n_in. */
int cuda_matvec_qkv(const cuda_mat *q, const cuda_mat *k, const cuda_mat *v, const float *x,
                    int ldx, int n_cols, float *yq, int ldq, float *yk, int ldk, float *yv,
                    int ldv, cudaStream_t s);
/* matvec.cu: y = silu(gate x) * (up x) in one launch; LLORCH_EUNSUPPORTED (nothing
 * launched) when gate and up differ in type or shape. */
int cuda_matvec_glu(const cuda_mat *gate, const cuda_mat *up, const float *x, int ldx, int n_cols,
                    float *y, int ldy, cudaStream_t s);
/* matvec.cu: x[i * n_embd ...] = row token[i] of the embedding matrix, i < n. */
int cuda_get_rows(const cuda_mat *w, const int32_t *token, int n, float *x, cudaStream_t s);
/* gemm.cu: as cuda_matvec through cuBLAS (prefill); xh / wtile are scratch. */
int cuda_gemm(cublasHandle_t h, const cuda_mat *w, const float *x, int ldx, int n_cols, float *y,
              int ldy, void *xh, void *wtile, uint64_t wtile_bytes, cudaStream_t s);
/* norm.cu: for r < n: v = x[src] (+ add[src]); if x_out, x_out[src] = v;
 * xn[r] = rmsnorm(v) * w. src = rows ? rows[r] : r. */
int cuda_add_rmsnorm(const float *x, const float *add, float *x_out, const int32_t *rows,
                     const float *w, float *xn, int n, int n_embd, float eps, cudaStream_t s);
/* rope.cu: biases, per-head norms, RoPE of q and k, and the K/V cache write. */
int cuda_rope_kv(const cuda_shape *sh, const cuda_layer *L, const cuda_meta *meta,
                 const float *rope_ff, float *q, float *k, const float *v, int n,
                 cudaStream_t s);
/* attention.cu: att (n, q_dim) from q and the caches, flash-decoding over
 * n_splits blocks of split_len positions each. */
int cuda_attention(const cuda_shape *sh, const cuda_layer *L, const cuda_meta *meta,
                   const float *q, float *part, float *att, int n, uint32_t n_splits,
                   uint32_t split_len, cudaStream_t s);
/* swiglu.cu: gate = silu(gate) * up over n values. */
int cuda_swiglu(float *gate, const float *up, int64_t n, cudaStream_t s);

#endif /* LLORCH_CUDA_IMPL_CUH */
