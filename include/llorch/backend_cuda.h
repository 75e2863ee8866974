/*
 * The CUDA backend's plain-C surface: the ops table itself is declared in
 * backend.h (llorch_backend_cuda_ops); this header holds the host-side pieces
 * that decide where everything goes, so they can be unit-tested on machines
 * without a GPU:
 *   - the memory plan: which layers live on which GPU (split in proportion to
 *     free memory), and how many bytes of weights, KV cache, scratch and
 *     runtime overhead each GPU needs, compared with what it has free
 *     (LLORCH_EINSUFFICIENT_VRAM with both numbers when it does not fit);
 *   - the scratch layout (one device allocation carved into the activation
 *     buffers of a forward pass);
 *   - the allocation table and the residency check over it (every
 *     allocation must be device memory of the GPU it was made on);
 *   - the chunked upload of weights through a bounded staging buffer;
 *   - a host build of the kernels' dequantizers (same source as the device
 *     code) so their block decoding is checked against the reference.
 * No CUDA type appears here; the CUDA calls are behind function pointers or
 * inside src/gpu/cuda/.
 */
#ifndef LLORCH_BACKEND_CUDA_H
#define LLORCH_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/backend.h"
#include "llorch/error.h"
#include "llorch/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLORCH_CUDA_MAX_DEVICES 8
#define LLORCH_CUDA_ALIGN 256u          /* bytes: every buffer starts on this boundary */
#define LLORCH_CUDA_ATT_TILE 64u        /* positions per attention tile (shared memory) */
#define LLORCH_CUDA_ATT_MAX_SPLITS 32u  /* flash-decoding: most blocks along the context */
#define LLORCH_CUDA_MATVEC_MAX_COLS 8   /* columns one matvec launch handles */
#define LLORCH_CUDA_GEMM_MIN_COLS 9     /* prefill columns from which cuBLAS is used */
#define LLORCH_CUDA_GEMM_TILE_BYTES (64ull << 20) /* dequantized F16 weight tile for cuBLAS */
#define LLORCH_CUDA_BLAS_WORKSPACE (32ull << 20)  /* cuBLAS workspace (ours, so it is checked) */
#define LLORCH_CUDA_MAX_GROUP 16        /* query heads per KV head the attention kernel takes */

/* ---- loading ---- */

/* The backend is a module next to the llorch binary, opened only by a worker
 * given --device cuda:N (src/gpu/cuda_module.c); the environment variable
 * names another path. */
#define LLORCH_CUDA_MODULE_NAME "libllorch_cuda.so"
#define LLORCH_CUDA_MODULE_ENV "LLORCH_CUDA_MODULE"

/*
 * The CUDA ops table from the module, loading it on first use (thread-safe;
 * it stays loaded). LLORCH_EUNSUPPORTED with the path and dlopen's reason when
 * it is missing or does not match this binary.
 */
int llorch_cuda_module_load(const llorch_backend_ops **out, llorch_errmsg *em);

/* ---- the memory plan ---- */

/* Offsets (bytes from the start of a device's scratch allocation) of the
 * buffers of one forward pass for up to n_batch_max entries. */
typedef struct llorch_cuda_scratch_layout {
  uint64_t x;        /* (B, n_embd) f32 residual stream */
  uint64_t xn;       /* (B, max(n_embd, q_dim)) f32 normed input */
  uint64_t q;        /* (B, q_dim) f32 */
  uint64_t k;        /* (B, kv_dim) f32 */
  uint64_t v;        /* (B, kv_dim) f32 */
  uint64_t att;      /* (B, q_dim) f32 attention output */
  uint64_t ao;       /* (B, n_embd) f32 attention projection / FFN output */
  uint64_t gate;     /* (B, n_ff) f32 */
  uint64_t up;       /* (B, n_ff) f32 */
  uint64_t part;     /* (B, n_head, n_splits, head_dim + 2) f32 flash-decoding partials */
  uint64_t xh;       /* (B, max(n_embd, q_dim, n_ff)) 16-bit activations for cuBLAS */
  uint64_t wtile;    /* gemm_tile bytes: dequantized weight rows for cuBLAS */
  uint64_t blas_ws;  /* LLORCH_CUDA_BLAS_WORKSPACE bytes */
  uint64_t logits;   /* (B, n_vocab) f32, only on the device holding output.weight */
  uint64_t meta;     /* (5, B) int32: token, pos, seq, output rows, spare */
  uint64_t total;    /* bytes */
  uint64_t gemm_tile;/* bytes reserved at wtile */
  uint32_t n_splits; /* attention blocks along the context */
  uint32_t split_len;/* positions per split (a multiple of LLORCH_CUDA_ATT_TILE) */
} llorch_cuda_scratch_layout;

typedef struct llorch_cuda_dev_plan {
  int device;               /* CUDA ordinal */
  uint32_t layer_begin;     /* first layer held here */
  uint32_t layer_end;       /* one past the last */
  bool has_embd;            /* token_embd.weight (first device) */
  bool has_output;          /* output_norm + output.weight (last device) */
  uint64_t free_bytes;      /* free VRAM measured before loading */
  uint64_t weights_bytes;   /* tensor bytes placed here (256-byte aligned each) */
  uint64_t kv_bytes;        /* K and V f16 for this device's layers, n_seq x n_ctx */
  uint64_t scratch_bytes;   /* llorch_cuda_scratch_layout.total */
  uint64_t overhead_bytes;  /* LLORCH_MEM_CUDA_RUNTIME_BYTES (llorch/memory.h) */
  uint64_t need_bytes;      /* sum of the four above */
  llorch_cuda_scratch_layout scratch;
} llorch_cuda_dev_plan;

typedef struct llorch_cuda_plan {
  int n_dev;
  uint32_t n_ctx;           /* positions per slot (params, capped at n_ctx_train) */
  uint32_t n_seq;
  uint32_t n_batch_max;
  llorch_cuda_dev_plan dev[LLORCH_CUDA_MAX_DEVICES];
} llorch_cuda_plan;

/* Bytes of one tensor on the GPU: its data rounded up to LLORCH_CUDA_ALIGN. */
uint64_t llorch_cuda_tensor_bytes(const llorch_gguf_tensor *t);

/* Bytes of the weights of layer il (all its tensors, aligned). */
uint64_t llorch_cuda_layer_weight_bytes(const llorch_model *m, uint32_t il);

/*
 * Splits the model's layers over p->n_devices GPUs (p->devices) in proportion
 * to free_bytes[i] (what each has free before loading, after what the first
 * and last GPU hold besides layers), fills every device's need, and checks it
 * against its free memory. Returns 0; LLORCH_EINVAL for bad parameters (no
 * device, more GPUs than layers, n_seq or n_batch_max 0, a head group larger
 * than LLORCH_CUDA_MAX_GROUP); LLORCH_EUNSUPPORTED for a model the kernels
 * cannot run (a weight type without a CUDA kernel, a row length not a
 * multiple of 32, head_dim over 256 or odd); LLORCH_EINSUFFICIENT_VRAM when a
 * GPU needs more than it has, with both numbers (and the parts of the need)
 * in em. The plan is filled even when it does not fit.
 */
int llorch_cuda_plan_compute(const llorch_model *m, const llorch_backend_params *p,
                             const uint64_t *free_bytes, llorch_cuda_plan *out,
                             llorch_errmsg *em);

/* Fills the scratch layout for one device: gemm_tile bytes for dequantized
 * weight tiles (0 when no matrix is quantized), has_output: reserve logits. */
void llorch_cuda_scratch_plan(const llorch_hparams *hp, uint32_t n_ctx, uint32_t n_batch_max,
                              uint64_t gemm_tile, bool has_output, llorch_cuda_scratch_layout *out);

/* Weight types the CUDA kernels read: F32 F16 BF16 Q8_0 Q4_0 Q4_K Q6_K. */
bool llorch_cuda_type_supported(llorch_ggml_type t);

/* ---- allocations and residency ---- */

typedef struct llorch_cuda_alloc {
  void *ptr;          /* from cudaMalloc */
  uint64_t bytes;
  int device;         /* ordinal it was allocated on */
  char what[24];      /* "weights", "kv", "scratch" */
} llorch_cuda_alloc;

typedef struct llorch_cuda_alloc_table {
  llorch_cuda_alloc *a; /* (cap) */
  uint32_t n, cap;
} llorch_cuda_alloc_table;

/* Records an allocation; LLORCH_ENOMEM if the table cannot grow. */
int llorch_cuda_alloc_table_add(llorch_cuda_alloc_table *t, void *ptr, uint64_t bytes, int device,
                                const char *what);
/* Frees the table's own memory (not the allocations). */
void llorch_cuda_alloc_table_free(llorch_cuda_alloc_table *t);

/*
 * What the driver says about a pointer: *is_device true when it is device
 * memory (cudaMemoryTypeDevice, not managed, host or unregistered), and
 * *device its ordinal. Returns 0, or a negative code when the query fails
 * (the allocation then counts as not verified).
 */
typedef int (*llorch_cuda_ptr_query_fn)(void *ud, const void *ptr, bool *is_device, int *device);

/*
 * Checks every allocation of t with query and writes the result into mem
 * (allocations_checked, allocations_not_device, residency_verified,
 * verified_at_ms = now_ms). residency_verified is true only when at least one
 * allocation was checked and every one is device memory of the GPU it was
 * made on. Returns 0, or LLORCH_EDEVICE with em naming the first allocation
 * that failed.
 */
int llorch_cuda_residency_check(const llorch_cuda_alloc_table *t, llorch_cuda_ptr_query_fn query,
                                void *ud, int64_t now_ms, llorch_backend_memory *mem,
                                llorch_errmsg *em);

/* ---- chunked upload through a bounded staging buffer ---- */

/*
 * The copy engine behind an upload: the CUDA build uses pinned staging slots,
 * cudaMemcpyAsync and one event per slot; tests use memcpy and counters.
 */
typedef struct llorch_cuda_copy_ops {
  /* Blocks until the slot's previous copy has finished (its buffer is free). */
  int (*wait_slot)(void *ud, int slot);
  /* Starts copying len bytes from staging slot to dst (device) and marks the slot busy. */
  int (*copy_async)(void *ud, int slot, void *dst, uint64_t len);
} llorch_cuda_copy_ops;

/*
 * Copies n bytes from src (the mmapped file) to dst through two staging slots
 * of slot_bytes each, alternating, so reading the next chunk from the file
 * overlaps the previous chunk's transfer and no copy of the whole tensor is
 * ever made on the host. *slot is the slot to use next (carried across
 * tensors). Returns 0 or the first error of ops.
 */
int llorch_cuda_upload(void *dst, const void *src, uint64_t n, uint8_t *const staging[2],
                       uint64_t slot_bytes, const llorch_cuda_copy_ops *ops, void *ud, int *slot);

/* ---- host build of the kernels' dequantizers ---- */

/*
 * dst[0..n) = the row src of type t, decoded by the same unit functions the
 * CUDA kernels use (compiled for the host). 0, LLORCH_EUNSUPPORTED or
 * LLORCH_EINVAL (n not a multiple of 32).
 */
int llorch_cuda_dequantize_row_host(llorch_ggml_type t, const void *src, float *dst, int64_t n);

/* ---- devices ---- */

/*
 * Number of CUDA devices the runtime sees; 0 with em saying why when there
 * is no driver or no device (so tests can skip, saying why).
 */
int llorch_cuda_device_count(llorch_errmsg *em);

#ifdef __cplusplus
}
#endif

#endif /* LLORCH_BACKEND_CUDA_H */
