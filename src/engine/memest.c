/*
 * The memory estimate of a worker (include/llorch/memory.h): coefficients
 * from a GGUF header that mirror, term by term, what the CPU backend
 * (cpu.c's cpu_init), the worker's scheduler and sampler, and the CUDA plan
 * (src/gpu/cuda_plan.c) allocate; and the measurement of a process's
 * resident memory that the estimate is calibrated against.
 */
#include "llorch/memory.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "llorch/backend_cuda.h"
#include "llorch/model.h"

/* ---- calibrated per-model terms ---- */

/* The tokenizer's tables (token strings are in the map; ids, scores, the
 * merge hash and the byte map on the heap), the chat template and the GGUF
 * key table: measured 60-80 bytes per vocabulary entry, 96 allowed. */
#define MEM_TOKENIZER_PER_VOCAB 96ull
/* The worker's per-slot state besides the vocabulary rows (slot structs,
 * batch arrays, event records). */
#define MEM_SLOT_STATE_BYTES 4096ull
/* The CPU backend pads V rows and attention rows of the context to its GEMV
 * step, 4 vectors: 32 positions with AVX2, 64 with AVX-512 (cpu.c). */
#define MEM_CPU_CTX_PAD 64ull

static uint64_t max3(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t m = a > b ? a : b;
  return m > c ? m : c;
}

/* Bytes per entry of the batch (B = slots + LLORCH_MEM_PREFILL_CHUNK) that
 * the backend's activations take: each backend's buffers, one row each. */
static uint64_t cpu_batch_row_bytes(const llorch_hparams *hp) {
  const uint64_t E = hp->n_embd, F = hp->n_ff;
  const uint64_t QD = (uint64_t)hp->head_dim * hp->n_head, KD = (uint64_t)hp->head_dim * hp->n_head_kv;
  const uint64_t XW = E > QD ? E : QD;
  /* x, xn, q (each at most XW wide), k, v, gate, up, and the activation row
   * (the widest of E, QD, F), all f32; then the order/index arrays (4 x 1 byte,
   * 2 x int32) and one matmul block descriptor (up to 32 bytes). */
  return (E + 2 * XW + 2 * KD + 2 * F + max3(E, QD, F)) * sizeof(float) + 4 + 8 + 32;
}

static uint64_t cuda_batch_row_bytes(const llorch_hparams *hp) {
  const uint64_t E = hp->n_embd, F = hp->n_ff, HD = hp->head_dim;
  const uint64_t QD = HD * hp->n_head, KD = HD * hp->n_head_kv;
  const uint64_t XW = E > QD ? E : QD;
  const uint64_t HW = XW > F ? XW : F;
  /* llorch_cuda_scratch_plan's buffers per entry: x, xn, q, k, v, att, ao,
   * gate, up (f32), flash-decoding partials for at most ATT_MAX_SPLITS
   * splits, the 16-bit activation row, logits (the output device) and meta. */
  return (E + XW + QD + 2 * KD + QD + E + 2 * F) * 4 +
         (uint64_t)hp->n_head * LLORCH_CUDA_ATT_MAX_SPLITS * (HD + 2) * 4 + HW * 2 +
         (uint64_t)hp->n_vocab * 4 + 5 * 4;
}

/* The widest F16 copy of a quantized matrix cuBLAS reads, capped: the plan's
 * wtile (plan_max_quant_tile over the bound tensors; here over every 2-D
 * tensor, which is the same set). */
static uint64_t cuda_gemm_tile(const llorch_gguf *g) {
  uint64_t best = 0;
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(g); i++) {
    const llorch_gguf_tensor *t = llorch_gguf_tensor_at(g, i);
    if (t->n_dims < 2) continue;
    if (t->type == LLORCH_TYPE_F32 || t->type == LLORCH_TYPE_F16 || t->type == LLORCH_TYPE_BF16)
      continue;
    uint64_t b = t->ne[0] * t->ne[1] * 2;
    if (b > best) best = b;
  }
  return best > LLORCH_CUDA_GEMM_TILE_BYTES ? LLORCH_CUDA_GEMM_TILE_BYTES : best;
}

/*
 * The parts, each as (fixed, per token-slot, per slot, per ctx) so that the
 * coefficients and the estimate at (ctx, slots) are the same sums.
 */
typedef struct mem_part {
  uint64_t fixed, per_token, per_slot, per_ctx;
} mem_part;

typedef struct mem_parts {
  mem_part weights, kv, scratch, overhead;
} mem_parts;

static int mem_parts_compute(const llorch_gguf *g, const llorch_mem_params *p, mem_parts *out,
                             llorch_errmsg *em) {
  llorch_hparams hp;
  int rc = llorch_hparams_read(g, &hp, em);
  if (rc) return rc;
  memset(out, 0, sizeof *out);
  const uint64_t chunk = LLORCH_MEM_PREFILL_CHUNK;
  const uint64_t KD = (uint64_t)hp.head_dim * hp.n_head_kv;
  const uint64_t vocab_rows = (uint64_t)hp.n_vocab * (4 + 16); /* logits row + sampler (work, cand, counts) */
  if (!p->cuda) {
    /* The file is mapped, and every byte of it is read: tensors by the
     * forward pass, the vocabulary by the tokenizer. */
    out->weights.fixed = llorch_gguf_file_size(g);
    /* K rows over ctx, V transposed over ctx rounded up to the pad (cpu_init) */
    out->kv.per_token = (uint64_t)hp.n_layer * KD * 2 * sizeof(uint16_t);
    out->kv.per_slot = (uint64_t)hp.n_layer * KD * (MEM_CPU_CTX_PAD - 1) * sizeof(uint16_t);
    const uint64_t T = p->n_threads > 0 ? (uint64_t)p->n_threads : 1;
    const uint64_t row = cpu_batch_row_bytes(&hp);
    /* per-thread attention rows over the padded context: 3 * (ctx + pad - 1) + head_dim floats */
    out->scratch.per_ctx = T * 3 * sizeof(float);
    out->scratch.fixed = chunk * row + T * (3 * (MEM_CPU_CTX_PAD - 1) + hp.head_dim) * sizeof(float) +
                         (uint64_t)hp.n_vocab * MEM_TOKENIZER_PER_VOCAB +
                         (uint64_t)LLORCH_MEM_PROMPT_LP_ROWS * hp.n_vocab * sizeof(float);
    out->scratch.per_slot = row + vocab_rows + MEM_SLOT_STATE_BYTES;
    out->overhead.fixed = LLORCH_MEM_CPU_PROCESS_BYTES;
    return 0;
  }
  /* CUDA: the plan on one GPU (llorch_cuda_plan_compute), bounded above. */
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(g); i++)
    out->weights.fixed += llorch_cuda_tensor_bytes(llorch_gguf_tensor_at(g, i));
  out->kv.per_token = (uint64_t)hp.n_layer * KD * 2 * sizeof(uint16_t);
  const uint64_t row = cuda_batch_row_bytes(&hp);
  /* 16 buffers of the layout, each rounded up to the alignment */
  out->scratch.fixed = chunk * row + cuda_gemm_tile(g) + LLORCH_CUDA_BLAS_WORKSPACE +
                       16 * (LLORCH_CUDA_ALIGN - 1);
  out->scratch.per_slot = row;
  out->overhead.fixed = LLORCH_MEM_CUDA_RUNTIME_BYTES + LLORCH_MEM_CUDA_CONTEXT_BYTES;
  return 0;
}

int llorch_mem_coeffs_compute(const llorch_gguf *g, const llorch_mem_params *p,
                              llorch_mem_coeffs *out, llorch_errmsg *em) {
  mem_parts m;
  int rc = mem_parts_compute(g, p, &m, em);
  if (rc) return rc;
  const mem_part *parts[4] = {&m.weights, &m.kv, &m.scratch, &m.overhead};
  memset(out, 0, sizeof *out);
  for (int i = 0; i < 4; i++) {
    out->fixed_bytes += parts[i]->fixed;
    out->per_token_bytes += parts[i]->per_token;
    out->per_slot_bytes += parts[i]->per_slot;
    out->per_ctx_bytes += parts[i]->per_ctx;
  }
  return 0;
}

static uint64_t part_at(const mem_part *m, uint32_t ctx, uint32_t slots) {
  const llorch_mem_coeffs c = {m->fixed, m->per_token, m->per_slot, m->per_ctx};
  return llorch_mem_need(&c, ctx, slots);
}

int llorch_mem_estimate_compute(const llorch_gguf *g, const llorch_mem_params *p, uint32_t ctx,
                                uint32_t slots, llorch_mem_estimate *out, llorch_errmsg *em) {
  mem_parts m;
  int rc = mem_parts_compute(g, p, &m, em);
  if (rc) return rc;
  out->weights_bytes = part_at(&m.weights, ctx, slots);
  out->kv_bytes = part_at(&m.kv, ctx, slots);
  out->scratch_bytes = part_at(&m.scratch, ctx, slots);
  out->overhead_bytes = part_at(&m.overhead, ctx, slots);
  out->total_bytes =
      out->weights_bytes + out->kv_bytes + out->scratch_bytes + out->overhead_bytes;
  return 0;
}

/* ---- measurement ---- */

int llorch_mem_usage_read(pid_t pid, llorch_mem_usage *out) {
  char path[64];
  if (pid > 0) snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  else snprintf(path, sizeof path, "/proc/self/status");
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) return errno == ENOENT || errno == ESRCH ? LLORCH_ENOENT : LLORCH_EIO;
  static const struct {
    const char *key;
    size_t off;
  } keys[] = {{"VmRSS:", offsetof(llorch_mem_usage, rss_bytes)},
              {"RssAnon:", offsetof(llorch_mem_usage, rss_anon_bytes)},
              {"RssFile:", offsetof(llorch_mem_usage, rss_file_bytes)},
              {"RssShmem:", offsetof(llorch_mem_usage, rss_shmem_bytes)},
              {"VmHWM:", offsetof(llorch_mem_usage, hwm_bytes)}};
  char line[256];
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
      size_t n = strlen(keys[i].key);
      if (strncmp(line, keys[i].key, n) != 0) continue;
      unsigned long long kib = 0;
      /* "VmRSS:	    1234 kB" */
      if (sscanf(line + n, "%llu", &kib) == 1) {
        *(uint64_t *)((char *)out + keys[i].off) = (uint64_t)kib * 1024;
        found++;
      }
    }
  }
  fclose(f);
  /* A zombie has no VmRSS line: nothing resident, but not an error. */
  return found > 0 || pid > 0 ? 0 : LLORCH_EIO;
}
