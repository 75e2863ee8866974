/*
 * The compute backend interface: what the CPU engine and the CUDA backend
 * both implement (ggml's backend idea: a table of function pointers and a
 * void *ctx; no CUDA type ever appears here).
 *
 * A backend owns the weights it needs (the CPU backend uses the mmapped GGUF
 * in place; CUDA copies them to VRAM) and the KV cache. One forward call
 * runs a batch of (sequence, position, token) entries from any mix of
 * sequences - prefill chunks and decode steps together - and returns logits
 * for the entries that ask.
 *
 * Paged KV cache (CPU backend; see seq_set_blocks): the cache is one pool of
 * n_kv_blocks blocks of kv_block_tokens positions each, and each sequence
 * reads and writes its positions through a block table (position p lives in
 * block table[p / kv_block_tokens] at offset p % kv_block_tokens). A caller
 * that never sets a table gets the fixed layout of the slot model: sequence s
 * owns blocks [s * ceil(n_ctx / kv_block_tokens), ...), so n_seq slots of
 * n_ctx positions each. A caller that manages blocks itself (the worker's
 * scheduler) sets every sequence's table before feeding it; blocks may then
 * be shared between sequences for the positions both have computed (prefix
 * caching), since a forward only writes positions >= the sequence's length.
 *
 * Contract for a batch:
 *   - entries of one sequence appear in increasing position order, and the
 *     first entry of a sequence in the batch has position == that sequence's
 *     current length (positions are contiguous; the cache for positions >= pos
 *     is overwritten);
 *   - each entry attends to its own sequence's positions 0..pos inclusive;
 *   - logits are written for entries with logits[i] != 0, in entry order,
 *     n_vocab floats each.
 * The result for a sequence must not depend on which other sequences share
 * the batch (batch invariance): greedy outputs are identical alone or batched.
 *
 * Same logits as llama.cpp (CPU backend): llama.cpp's rounding depends on how
 * many tokens each matmul sees, and the CPU backend reproduces that per
 * sequence from the sequence's own entries in the batch. To get llama.cpp's
 * numbers, send a prompt in chunks of at most 512 entries (its n_ubatch) and
 * ask logits only for the entries llama.cpp would output (the last prompt
 * entry); asking logits for every prompt entry changes the last layer's
 * rounding for them (still correct, no longer bit-identical).
 */
#ifndef LLORCH_BACKEND_H
#define LLORCH_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/error.h"
#include "llorch/model.h"

typedef struct llorch_batch {
  int32_t n_tokens;
  const int32_t *token;  /* (n_tokens) token ids */
  const int32_t *pos;    /* (n_tokens) position within its sequence */
  const int32_t *seq;    /* (n_tokens) sequence slot in [0, n_seq) */
  const int8_t *logits;  /* (n_tokens) nonzero: return logits for this entry */
  /* NULL, or (n_tokens) nonzero: return this entry's final hidden state (the
   * last layer's output after output_norm, n_embd floats: what embeddings
   * pool). Only forward_hidden reads it; forward ignores it. */
  const int8_t *hidden;
} llorch_batch;

typedef struct llorch_backend_params {
  uint32_t n_ctx;        /* most positions of one sequence */
  uint32_t n_seq;        /* sequence ids [0, n_seq) */
  uint32_t kv_block_tokens; /* positions per KV block; 0 = 16 */
  uint32_t n_kv_blocks;  /* KV blocks in the pool; 0 = n_seq * ceil(n_ctx / kv_block_tokens) */
  uint32_t n_batch_max;  /* most entries in one forward call */
  int n_threads;         /* CPU threads (CPU backend; host work of others) */
  int n_devices;         /* CUDA: number of entries in devices */
  int devices[8];        /* CUDA ordinals: layers are split across them */
} llorch_backend_params;

#define LLORCH_MAX_ALLOCS 8
typedef struct llorch_backend_memory {
  uint64_t weights_bytes;   /* bytes of weights held by the backend */
  uint64_t kv_bytes;        /* bytes of KV cache */
  uint32_t kv_block_tokens; /* positions per KV block; 0: not paged (one region per slot) */
  uint32_t kv_blocks;       /* blocks in the pool; 0: not paged */
  uint64_t scratch_bytes;   /* bytes of activations/workspace */
  char weights_location[32];/* "host-mmap", "cuda:0", "cuda:0,1" */
  char kv_location[32];     /* "host", "cuda:0", ... */
  /* VRAM-only verification (CUDA): every allocation checked to be device
   * memory (cudaPointerGetAttributes). CPU backend: false, n_checked 0. */
  bool residency_verified;
  uint32_t allocations_checked;
  uint32_t allocations_not_device;
  int64_t verified_at_ms;   /* wall clock of the last check, 0 if never */
} llorch_backend_memory;

typedef struct llorch_backend_ops {
  const char *name; /* "cpu", "cuda" */
  int (*init)(void **ctx, const llorch_model *m, const char *device,
              const llorch_backend_params *p, llorch_errmsg *em);
  void (*free)(void *ctx);
  /* logits: (number of entries with logits != 0, n_vocab) floats, caller-owned */
  int (*forward)(void *ctx, const llorch_batch *b, float *logits, llorch_errmsg *em);
  /* Forgets a sequence slot's cache; its next entry starts at position 0.
   * With caller-managed tables (seq_set_blocks) the table is emptied too;
   * the blocks' contents stay (another table may still point at them). */
  void (*seq_reset)(void *ctx, int32_t seq);
  void (*memory)(void *ctx, llorch_backend_memory *out);
  /* Re-checks residency (CUDA); NULL for backends that hold nothing remote. */
  int (*verify_residency)(void *ctx, llorch_errmsg *em);
  /* The paged-cache ops come last: backends written with positional
   * initializers (the CUDA table) leave them NULL. */
  /*
   * Paged backends (NULL otherwise): gives sequence seq the block table
   * blocks[0..n_blocks) (copied) and the length n_past: positions < n_past
   * are taken as already computed in those blocks (a cached prefix), the
   * next entry of the sequence has position n_past. From the first call on,
   * the caller manages every sequence's table (no fixed layout any more).
   * Errors: LLORCH_EINVAL for a block id outside the pool, more blocks than
   * n_ctx needs, or n_past beyond the blocks.
   */
  int (*seq_set_blocks)(void *ctx, int32_t seq, const int32_t *blocks, uint32_t n_blocks,
                        uint32_t n_past, llorch_errmsg *em);
  /* Paged backends (NULL otherwise): copies positions [0, n_pos) of block
   * src into block dst in every layer (copy-on-write of a shared block that
   * a sequence continues in the middle). LLORCH_EINVAL for bad ids. */
  int (*kv_copy_block)(void *ctx, int32_t dst, int32_t src, uint32_t n_pos, llorch_errmsg *em);
  /*
   * Backends that can return hidden states (NULL otherwise: no embeddings on
   * that device): forward, plus for the entries with b->hidden[i] != 0 their
   * final hidden state after output_norm into hidden_out, in entry order,
   * n_embd floats each (caller-owned). An entry may ask for both. Logits are
   * computed only for the entries that ask for logits, so a batch that mixes
   * embedding prompts with generation gives the generation the logits that
   * forward gives.
   */
  int (*forward_hidden)(void *ctx, const llorch_batch *b, float *logits, float *hidden_out,
                        llorch_errmsg *em);
} llorch_backend_ops;

typedef struct llorch_backend {
  const llorch_backend_ops *ops;
  void *ctx;
  const llorch_model *model;
  llorch_backend_params params;
} llorch_backend;

/*
 * device: "cpu", "cuda:N" or "cuda:N,M,...". CUDA devices when the binary was
 * built without CUDA give LLORCH_EUNSUPPORTED with a message saying so.
 */
int llorch_backend_open(llorch_backend *out, const llorch_model *m, const char *device,
                        const llorch_backend_params *p, llorch_errmsg *em);
void llorch_backend_close(llorch_backend *b);

/* Parses "cuda:0,1" into ordinals; returns 0, or LLORCH_EINVAL with em. */
int llorch_device_parse(const char *device, bool *is_cuda, int *devices, int *n_devices,
                        llorch_errmsg *em);

/* The built-in backends. The CUDA table exists only when LLORCH_HAVE_CUDA. */
extern const llorch_backend_ops llorch_backend_cpu_ops;
#ifdef LLORCH_HAVE_CUDA
extern const llorch_backend_ops llorch_backend_cuda_ops;
#endif

#endif /* LLORCH_BACKEND_H */
