/*
 * What a worker holds: the one definition of a worker's memory that the
 * pool's preflight and state report, the orchestrator's placement and
 * eviction arithmetic, and the CUDA plan's overheads all use.
 *
 * A worker of a model with ctx positions per slot and `slots` slots needs
 *
 *   need = fixed + per_token * ctx * slots + per_slot * slots + per_ctx * ctx
 *
 * bytes on its device (llorch_mem_need). The four coefficients come from the
 * GGUF header alone (llorch_mem_coeffs_compute), so a pool can report them
 * without reading weights and the orchestrator can plan without the file;
 * they travel in the pool's state document (docs/cluster-protocol.md). The
 * formula is exact for what it counts (the CPU backend's and the worker's
 * allocations are linear in ctx and slots) and an upper bound where the CUDA
 * plan rounds (alignment, attention splits): the plan's own figure for one GPU
 * is checked to stay under it (tests/unit/engine/test_memory.c).
 *
 * What a running worker holds is the larger of that estimate and what it was
 * measured to hold (llorch_mem_held): resident memory of its process for a
 * CPU worker, the device memory of its plan for a CUDA one. The pool counts a
 * worker with that figure, reports it as the worker's memory_bytes, and the
 * orchestrator credits an evicted worker with exactly that (split evenly over
 * its devices, llorch_mem_device_share), so a victim frees in the
 * orchestrator's books what the pool then reports free.
 */
#ifndef LLORCH_MEMORY_H
#define LLORCH_MEMORY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "llorch/error.h"
#include "llorch/gguf.h"

/* ---- the allowances (calibrated against measurement, docs/architecture.md) ---- */

/* A CPU worker process besides its model: the binary's and libraries' resident
 * pages, libuv, the HTTP server, malloc arenas of its threads, thread stacks,
 * connection buffers. Measured: 2.6-2.9 MiB resident before loading (x86-64,
 * glibc, CPU-only or CUDA build alike since the CUDA backend is a module);
 * the rest is headroom for connections and allocator slack. */
#define LLORCH_MEM_CPU_PROCESS_BYTES (16ull << 20)
/* The CUDA runtime on a GPU besides the plan's buffers: context, module
 * images (created before the plan measures free memory, so not in it). */
#define LLORCH_MEM_CUDA_CONTEXT_BYTES (256ull << 20)
/* cuBLAS handle, CUDA graphs, allocator slack: part of the CUDA plan's need
 * on every GPU (its overhead_bytes). */
#define LLORCH_MEM_CUDA_RUNTIME_BYTES (256ull << 20)
/* Prefill tokens one step takes besides one decode token per slot: a worker
 * opens its backend for n_batch_max = slots + this (src/roles/worker). */
#define LLORCH_MEM_PREFILL_CHUNK 128u
/* Prompt positions whose logprobs (completions echo) one engine step
 * computes at most: each a logits row of n_vocab floats the worker's
 * scheduler holds besides one row per slot (src/roles/worker). */
#define LLORCH_MEM_PROMPT_LP_ROWS 16u

/* ---- the formula ---- */

typedef struct llorch_mem_coeffs {
  uint64_t fixed_bytes;     /* weights + per-process allowance + scratch of one prefill chunk */
  uint64_t per_token_bytes; /* per position of one slot: K and V of every layer */
  uint64_t per_slot_bytes;  /* per slot: its decode entry's activations, logits, sampler rows */
  uint64_t per_ctx_bytes;   /* per position of the context, shared by slots: attention rows */
} llorch_mem_coeffs;

/* need(ctx, slots) in bytes; saturates at UINT64_MAX instead of wrapping. */
static inline uint64_t llorch_mem_need(const llorch_mem_coeffs *c, uint64_t ctx, uint64_t slots) {
  const uint64_t terms[4] = {c->fixed_bytes, ctx * slots, slots, ctx};
  const uint64_t mult[4] = {1, c->per_token_bytes, c->per_slot_bytes, c->per_ctx_bytes};
  uint64_t sum = 0;
  if (slots && ctx > UINT64_MAX / slots) return UINT64_MAX;
  for (int i = 0; i < 4; i++) {
    if (mult[i] && terms[i] > UINT64_MAX / mult[i]) return UINT64_MAX;
    const uint64_t t = terms[i] * mult[i];
    if (sum > UINT64_MAX - t) return UINT64_MAX;
    sum += t;
  }
  return sum;
}

/* What a worker holds: the larger of its estimate and its measured use (the
 * measurement is 0 until one arrives). */
static inline uint64_t llorch_mem_held(uint64_t estimate_bytes, uint64_t actual_bytes) {
  return actual_bytes > estimate_bytes ? actual_bytes : estimate_bytes;
}

/* A worker over n devices holds this much on each (rounded up, n < 1 as 1). */
static inline uint64_t llorch_mem_device_share(uint64_t total_bytes, int n_devices) {
  const uint64_t n = n_devices > 0 ? (uint64_t)n_devices : 1;
  return total_bytes / n + (total_bytes % n != 0);
}

/* ---- the estimate of a model ---- */

/* The parts of need(ctx, slots), for messages and /v2/info. */
typedef struct llorch_mem_estimate {
  uint64_t weights_bytes;  /* CPU: the whole file (mmapped, resident once touched:
                            * tensors and the vocabulary the tokenizer reads);
                            * CUDA: tensor data, each rounded to the plan's alignment */
  uint64_t kv_bytes;       /* K and V, all layers, slots x ctx, f16 */
  uint64_t scratch_bytes;  /* activations, logits and sampler rows for the largest batch */
  uint64_t overhead_bytes; /* per-process allowance (CUDA: context + runtime) */
  uint64_t total_bytes;    /* the sum == llorch_mem_need(coeffs, ctx, slots) */
} llorch_mem_estimate;

typedef struct llorch_mem_params {
  bool cuda;               /* for a CUDA device (else the CPU backend) */
  int n_threads;           /* CPU threads of the worker (its attention rows); < 1 = 1 */
} llorch_mem_params;

/*
 * Coefficients for a model from its GGUF header (a HEADER_ONLY open is
 * enough) and, when parts is not NULL, the parts at (ctx, slots). Returns 0,
 * or the error of llorch_hparams_read with em.
 */
int llorch_mem_coeffs_compute(const llorch_gguf *g, const llorch_mem_params *p,
                              llorch_mem_coeffs *out, llorch_errmsg *em);
int llorch_mem_estimate_compute(const llorch_gguf *g, const llorch_mem_params *p, uint32_t ctx,
                                uint32_t slots, llorch_mem_estimate *out, llorch_errmsg *em);

/* ---- measurement ---- */

/* What the kernel says a process holds (/proc/PID/status), bytes. */
typedef struct llorch_mem_usage {
  uint64_t rss_bytes;       /* VmRSS: everything resident */
  uint64_t rss_anon_bytes;  /* RssAnon: heap, KV cache, scratch, stacks */
  uint64_t rss_file_bytes;  /* RssFile: the binary, libraries, mmapped weights */
  uint64_t rss_shmem_bytes; /* RssShmem */
  uint64_t hwm_bytes;       /* VmHWM: peak resident */
} llorch_mem_usage;

/* pid 0 = this process. Returns 0, or LLORCH_ENOENT (no such process),
 * LLORCH_EIO (the file could not be read or parsed). */
int llorch_mem_usage_read(pid_t pid, llorch_mem_usage *out);

#endif /* LLORCH_MEMORY_H */
