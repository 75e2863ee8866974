/*
 * A transformer model as the engine sees it: hyper-parameters read from GGUF
 * metadata and the weight tensors, validated for shape, before any backend
 * touches them.
 *
 * Supported architectures (general.architecture):
 *   llama  - RoPE NORM (adjacent pairs), optional rope_freqs.weight (Llama 3.x)
 *   qwen2  - q/k/v biases, RoPE NEOX (pairs i and i + n_rot/2)
 *   qwen3  - per-head RMSNorm attn_q_norm / attn_k_norm before RoPE, NEOX,
 *            head size from <arch>.attention.key_length
 * All with GQA and tied embeddings when output.weight is absent.
 *
 * Tensor names (ggml/llama.cpp convention), per layer i:
 *   blk.i.attn_norm.weight  blk.i.attn_q.weight  blk.i.attn_k.weight
 *   blk.i.attn_v.weight     blk.i.attn_output.weight
 *   blk.i.attn_q.bias ...   (qwen2)   blk.i.attn_q_norm.weight ... (qwen3)
 *   blk.i.ffn_norm.weight   blk.i.ffn_gate.weight  blk.i.ffn_up.weight
 *   blk.i.ffn_down.weight
 * and token_embd.weight, output_norm.weight, output.weight (optional),
 * rope_freqs.weight (optional).
 *
 * A weight matrix W of GGUF shape ne = {n_in, n_out} is stored row-major with
 * n_out rows of n_in elements, each row quantized independently; y = W x means
 * y[r] = dot(row r, x).
 */
#ifndef LLORCH_MODEL_H
#define LLORCH_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/error.h"
#include "llorch/gguf.h"

typedef enum llorch_arch {
  LLORCH_ARCH_LLAMA = 0,
  LLORCH_ARCH_QWEN2 = 1,
  LLORCH_ARCH_QWEN3 = 2,
} llorch_arch;

typedef enum llorch_rope_type {
  LLORCH_ROPE_NORM = 0, /* rotate (x[2i], x[2i+1]) */
  LLORCH_ROPE_NEOX = 1, /* rotate (x[i], x[i + n_rot/2]) */
} llorch_rope_type;

/* How an embedding pools the hidden states of a prompt: <arch>.pooling_type
 * with llama.cpp's values. */
typedef enum llorch_pooling {
  LLORCH_POOLING_UNSET = -1, /* the file does not say */
  LLORCH_POOLING_NONE = 0,   /* one vector per token (not an OpenAI embedding) */
  LLORCH_POOLING_MEAN = 1,
  LLORCH_POOLING_CLS = 2,    /* the first token's */
  LLORCH_POOLING_LAST = 3,   /* the last token's (Qwen3-Embedding) */
  LLORCH_POOLING_RANK = 4,   /* a reranker's score (not supported) */
} llorch_pooling;

/* "none", "mean", "cls", "last", "rank", "unset"; else "unknown". */
const char *llorch_pooling_name(int pooling);

typedef struct llorch_hparams {
  llorch_arch arch;
  uint32_t n_vocab;
  uint32_t n_ctx_train;   /* tokens */
  uint32_t n_embd;
  uint32_t n_layer;
  uint32_t n_head;
  uint32_t n_head_kv;
  uint32_t head_dim;      /* key/value length per head (key_length) */
  uint32_t n_ff;
  uint32_t n_rot;         /* rotated dims per head (rope.dimension_count, default head_dim) */
  float rms_eps;
  float rope_freq_base;
  float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling, else 1 */
  llorch_rope_type rope_type;
  bool has_qkv_bias;      /* qwen2 */
  bool has_qk_norm;       /* qwen3 */
  bool tied_embeddings;   /* output.weight absent: logits use token_embd */
  int32_t pooling;        /* llorch_pooling from <arch>.pooling_type; UNSET when absent (any
                             other value is kept as read, and embeddings refuse it) */
} llorch_hparams;

typedef struct llorch_layer {
  const llorch_gguf_tensor *attn_norm;          /* (n_embd) f32 */
  const llorch_gguf_tensor *wq, *wk, *wv, *wo;  /* (n_head*hd, n_embd) ... */
  const llorch_gguf_tensor *bq, *bk, *bv;       /* qwen2 biases or NULL */
  const llorch_gguf_tensor *q_norm, *k_norm;    /* qwen3 (head_dim) or NULL */
  const llorch_gguf_tensor *ffn_norm;           /* (n_embd) */
  const llorch_gguf_tensor *w_gate, *w_up;      /* (n_ff rows, n_embd) */
  const llorch_gguf_tensor *w_down;             /* (n_embd rows, n_ff) */
} llorch_layer;

typedef struct llorch_model {
  llorch_gguf *gguf;               /* owns the map */
  char name[128];                  /* general.name, else the file's base name */
  char arch_name[16];              /* "llama", "qwen2", "qwen3" */
  llorch_hparams hp;
  const llorch_gguf_tensor *tok_embd;    /* (n_vocab rows, n_embd) */
  const llorch_gguf_tensor *output_norm; /* (n_embd) */
  const llorch_gguf_tensor *output;      /* (n_vocab rows, n_embd); == tok_embd when tied */
  const llorch_gguf_tensor *rope_freqs;  /* (n_rot/2) f32 or NULL */
  llorch_layer *layers;                  /* (n_layer) */
  uint64_t n_params;               /* elements over all weight tensors */
  uint64_t weight_bytes;           /* bytes over all weight tensors */
  llorch_ggml_type main_type;      /* type of most weight bytes ("quantization") */
} llorch_model;

/* Opens path, validates metadata and every tensor's shape and type. */
int llorch_model_load(llorch_model **out, const char *path, llorch_errmsg *em);
void llorch_model_free(llorch_model *m);

/* Reads and validates hyper-parameters only (works on a HEADER_ONLY open). */
int llorch_hparams_read(const llorch_gguf *g, llorch_hparams *out, llorch_errmsg *em);

/* "llama, qwen2, qwen3" - for error messages. */
const char *llorch_arch_supported_list(void);

/* Memory a model needs on a device: include/llorch/memory.h. */

#endif /* LLORCH_MODEL_H */
