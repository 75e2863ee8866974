/*
 * Model loading: hyper-parameters from GGUF metadata, every tensor looked up
 * and checked for shape and type before a backend touches it, and the memory
 * plan shared by the backends, the pool manager and the orchestrator.
 */
#include "llorch/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/quant.h"

/* ---- architectures ---- */

typedef struct model_arch_info {
  const char *name;
  llorch_arch arch;
  llorch_rope_type rope;
  bool qkv_bias;
  bool qk_norm;
} model_arch_info;

static const model_arch_info model_archs[] = {
    {"llama", LLORCH_ARCH_LLAMA, LLORCH_ROPE_NORM, false, false},
    {"qwen2", LLORCH_ARCH_QWEN2, LLORCH_ROPE_NEOX, true, false},
    {"qwen3", LLORCH_ARCH_QWEN3, LLORCH_ROPE_NEOX, false, true},
};

const char *llorch_arch_supported_list(void) { return "llama, qwen2, qwen3"; }

/* Weight types the engine can multiply by (matrices; 1-D tensors are F32). */
static bool model_type_supported(llorch_ggml_type t) {
  switch (t) {
  case LLORCH_TYPE_F32:
  case LLORCH_TYPE_F16:
  case LLORCH_TYPE_BF16:
  case LLORCH_TYPE_Q8_0:
  case LLORCH_TYPE_Q4_0:
  case LLORCH_TYPE_Q4_K:
  case LLORCH_TYPE_Q6_K: return true;
  default: return false;
  }
}

/* ---- hyper-parameters ---- */

const char *llorch_pooling_name(int pooling) {
  switch (pooling) {
  case LLORCH_POOLING_UNSET: return "unset";
  case LLORCH_POOLING_NONE: return "none";
  case LLORCH_POOLING_MEAN: return "mean";
  case LLORCH_POOLING_CLS: return "cls";
  case LLORCH_POOLING_LAST: return "last";
  case LLORCH_POOLING_RANK: return "rank";
  default: return "unknown";
  }
}

/* Reads "<arch>.<suffix>" as u32; absent -> *out = dflt (or an error when
 * required). */
static int model_get_u32(const llorch_gguf *g, const char *arch, const char *suffix, bool required,
                         uint32_t dflt, uint32_t *out, llorch_errmsg *em) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  int rc = llorch_gguf_get_u32(g, key, out, em);
  if (rc == LLORCH_ENOTFOUND) {
    if (required) return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: metadata key %s is missing", key);
    *out = dflt;
    return 0;
  }
  return rc;
}

static int model_get_f32(const llorch_gguf *g, const char *arch, const char *suffix, bool required,
                         float dflt, float *out, llorch_errmsg *em) {
  char key[128];
  snprintf(key, sizeof key, "%s.%s", arch, suffix);
  int rc = llorch_gguf_get_f32(g, key, out, em);
  if (rc == LLORCH_ENOTFOUND) {
    if (required) return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: metadata key %s is missing", key);
    *out = dflt;
    return 0;
  }
  return rc;
}

int llorch_hparams_read(const llorch_gguf *g, llorch_hparams *out, llorch_errmsg *em) {
  llorch_gguf_str s;
  int rc = llorch_gguf_get_str(g, "general.architecture", &s, em);
  if (rc == LLORCH_ENOTFOUND)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: general.architecture is missing");
  if (rc) return rc;
  const model_arch_info *ai = NULL;
  for (size_t i = 0; i < sizeof model_archs / sizeof model_archs[0]; i++)
    if (s.len == strlen(model_archs[i].name) && memcmp(s.ptr, model_archs[i].name, s.len) == 0)
      ai = &model_archs[i];
  if (!ai)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "model: architecture '%.*s' is not supported (supported: %s)",
                             (int)(s.len > 64 ? 64 : s.len), s.ptr, llorch_arch_supported_list());
  const char *a = ai->name;
  llorch_hparams hp;
  memset(&hp, 0, sizeof hp);
  hp.arch = ai->arch;
  hp.rope_type = ai->rope;
  hp.has_qkv_bias = ai->qkv_bias;
  hp.has_qk_norm = ai->qk_norm;

  if ((rc = model_get_u32(g, a, "context_length", true, 0, &hp.n_ctx_train, em))) return rc;
  if ((rc = model_get_u32(g, a, "embedding_length", true, 0, &hp.n_embd, em))) return rc;
  if ((rc = model_get_u32(g, a, "block_count", true, 0, &hp.n_layer, em))) return rc;
  if ((rc = model_get_u32(g, a, "feed_forward_length", true, 0, &hp.n_ff, em))) return rc;
  if ((rc = model_get_u32(g, a, "attention.head_count", true, 0, &hp.n_head, em))) return rc;
  if ((rc = model_get_u32(g, a, "attention.head_count_kv", false, hp.n_head, &hp.n_head_kv, em)))
    return rc;
  if (hp.n_embd == 0 || hp.n_layer == 0 || hp.n_ff == 0 || hp.n_head == 0 || hp.n_head_kv == 0 ||
      hp.n_ctx_train == 0)
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "model: %s.embedding_length/block_count/feed_forward_length/"
                             "head_count/head_count_kv/context_length must be > 0",
                             a);
  if (hp.n_embd > (1u << 20) || hp.n_layer > 4096 || hp.n_ff > (1u << 22) || hp.n_head > 4096)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: %s hyper-parameters out of range", a);
  if (hp.n_head % hp.n_head_kv != 0)
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "model: %s.attention.head_count (%u) is not a multiple of head_count_kv (%u)",
                             a, hp.n_head, hp.n_head_kv);
  uint32_t dflt_hd = hp.n_embd / hp.n_head;
  if ((rc = model_get_u32(g, a, "attention.key_length", false, dflt_hd, &hp.head_dim, em))) return rc;
  uint32_t vlen;
  if ((rc = model_get_u32(g, a, "attention.value_length", false, hp.head_dim, &vlen, em))) return rc;
  if (vlen != hp.head_dim)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "model: %s.attention.value_length %u differs from key_length %u", a,
                             vlen, hp.head_dim);
  if (hp.head_dim == 0 || hp.head_dim % 2 != 0 || hp.head_dim > 1024)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: head size %u must be even and <= 1024",
                             hp.head_dim);
  if ((rc = model_get_u32(g, a, "rope.dimension_count", false, hp.head_dim, &hp.n_rot, em))) return rc;
  if (hp.n_rot > hp.head_dim || hp.n_rot % 2 != 0)
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "model: %s.rope.dimension_count %u must be even and <= head size %u",
                             a, hp.n_rot, hp.head_dim);
  if ((rc = model_get_f32(g, a, "attention.layer_norm_rms_epsilon", true, 0, &hp.rms_eps, em)))
    return rc;
  if (!(hp.rms_eps >= 0.0f && hp.rms_eps < 1.0f))
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: rms epsilon %g out of range",
                             (double)hp.rms_eps);
  if ((rc = model_get_f32(g, a, "rope.freq_base", false, 10000.0f, &hp.rope_freq_base, em))) return rc;
  if (!(hp.rope_freq_base > 0.0f))
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: rope.freq_base %g must be > 0",
                             (double)hp.rope_freq_base);
  hp.rope_freq_scale = 1.0f;
  char key[128];
  snprintf(key, sizeof key, "%s.rope.scaling.type", a);
  llorch_gguf_str st;
  rc = llorch_gguf_get_str(g, key, &st, em);
  if (rc && rc != LLORCH_ENOTFOUND) return rc;
  bool scaled = false;
  if (rc == 0) {
    if (st.len == 6 && memcmp(st.ptr, "linear", 6) == 0) scaled = true;
    else if (!(st.len == 4 && memcmp(st.ptr, "none", 4) == 0))
      return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                               "model: %s '%.*s' is not supported (supported: none, linear)", key,
                               (int)(st.len > 32 ? 32 : st.len), st.ptr);
  }
  float factor = 0;
  if ((rc = model_get_f32(g, a, "rope.scaling.factor", false, 0.0f, &factor, em))) return rc;
  if (scaled && factor > 0.0f) hp.rope_freq_scale = 1.0f / factor;

  uint32_t pooling = 0;
  if ((rc = model_get_u32(g, a, "pooling_type", false, (uint32_t)LLORCH_POOLING_UNSET, &pooling, em)))
    return rc;
  hp.pooling = pooling > 1000u ? LLORCH_POOLING_UNSET : (int32_t)pooling;

  /* vocabulary: the token list when present, else the embedding's rows */
  const llorch_gguf_kv *toks = llorch_gguf_find_kv(g, "tokenizer.ggml.tokens");
  if (toks && toks->type == LLORCH_GGUF_ARRAY) hp.n_vocab = (uint32_t)toks->arr_n;
  const llorch_gguf_tensor *te = llorch_gguf_find_tensor(g, "token_embd.weight");
  if (te && te->n_dims == 2) {
    if (hp.n_vocab && hp.n_vocab != te->ne[1])
      return llorch_errmsg_set(em, LLORCH_EFORMAT,
                               "model: token_embd.weight has %llu rows but the vocabulary has %u tokens",
                               (unsigned long long)te->ne[1], hp.n_vocab);
    hp.n_vocab = (uint32_t)te->ne[1];
  }
  if (hp.n_vocab == 0)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "model: vocabulary size unknown (no tokens, no token_embd.weight)");
  hp.tied_embeddings = llorch_gguf_find_tensor(g, "output.weight") == NULL;
  *out = hp;
  return 0;
}

/* ---- tensors ---- */

typedef struct model_loader {
  llorch_model *m;
  llorch_errmsg *em;
} model_loader;

/*
 * Finds name and checks it: a matrix of ne = {n_in, n_out} with a supported
 * type (rows a whole number of blocks), or a vector of ne = {n_in} in F32.
 */
static int model_tensor(model_loader *ld, const char *name, bool required, uint64_t n_in,
                        uint64_t n_out, const llorch_gguf_tensor **out) {
  const llorch_gguf_tensor *t = llorch_gguf_find_tensor(ld->m->gguf, name);
  *out = t;
  if (!t) {
    if (!required) return 0;
    return llorch_errmsg_set(ld->em, LLORCH_EFORMAT, "model: tensor %s is missing", name);
  }
  bool is_matrix = n_out > 0;
  uint32_t want_dims = is_matrix ? 2 : 1;
  bool shape_ok = t->ne[0] == n_in && (is_matrix ? t->ne[1] == n_out : true);
  for (uint32_t d = want_dims; d < LLORCH_GGUF_MAX_DIMS; d++)
    if (t->ne[d] != 1) shape_ok = false;
  if (!shape_ok) {
    if (is_matrix)
      return llorch_errmsg_set(ld->em, LLORCH_EFORMAT,
                               "model: tensor %s has shape [%llu, %llu, %llu], expected [%llu, %llu]",
                               name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                               (unsigned long long)t->ne[2], (unsigned long long)n_in,
                               (unsigned long long)n_out);
    return llorch_errmsg_set(ld->em, LLORCH_EFORMAT,
                             "model: tensor %s has shape [%llu, %llu], expected [%llu]", name,
                             (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                             (unsigned long long)n_in);
  }
  if (is_matrix) {
    if (!model_type_supported(t->type))
      return llorch_errmsg_set(ld->em, LLORCH_EUNSUPPORTED,
                               "model: tensor %s has type %s; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K",
                               name, llorch_type_name(t->type));
    if (llorch_row_size(t->type, (int64_t)n_in) == 0)
      return llorch_errmsg_set(ld->em, LLORCH_EFORMAT,
                               "model: tensor %s: rows of %llu are not whole %s blocks", name,
                               (unsigned long long)n_in, llorch_type_name(t->type));
  } else if (t->type != LLORCH_TYPE_F32) {
    return llorch_errmsg_set(ld->em, LLORCH_EUNSUPPORTED,
                             "model: tensor %s has type %s; 1-D tensors must be F32", name,
                             llorch_type_name(t->type));
  }
  if (!t->data)
    return llorch_errmsg_set(ld->em, LLORCH_EINVAL, "model: tensor %s has no data (header-only open)", name);
  return 0;
}

static int model_layer_tensor(model_loader *ld, uint32_t il, const char *what, bool required,
                              uint64_t n_in, uint64_t n_out, const llorch_gguf_tensor **out) {
  char name[96];
  snprintf(name, sizeof name, "blk.%u.%s", il, what);
  return model_tensor(ld, name, required, n_in, n_out, out);
}

static int model_bind_tensors(model_loader *ld) {
  llorch_model *m = ld->m;
  const llorch_hparams *hp = &m->hp;
  const uint64_t E = hp->n_embd, HD = hp->head_dim;
  const uint64_t QD = HD * hp->n_head, KD = HD * hp->n_head_kv, F = hp->n_ff, V = hp->n_vocab;
  int rc;
  if ((rc = model_tensor(ld, "token_embd.weight", true, E, V, &m->tok_embd))) return rc;
  if ((rc = model_tensor(ld, "output_norm.weight", true, E, 0, &m->output_norm))) return rc;
  if ((rc = model_tensor(ld, "output.weight", false, E, V, &m->output))) return rc;
  if (!m->output) m->output = m->tok_embd;
  if ((rc = model_tensor(ld, "rope_freqs.weight", false, hp->n_rot / 2, 0, &m->rope_freqs))) return rc;
  m->layers = calloc(hp->n_layer, sizeof *m->layers);
  if (!m->layers) return llorch_errmsg_set(ld->em, LLORCH_ENOMEM, "model: out of memory");
  for (uint32_t il = 0; il < hp->n_layer; il++) {
    llorch_layer *L = &m->layers[il];
    if ((rc = model_layer_tensor(ld, il, "attn_norm.weight", true, E, 0, &L->attn_norm))) return rc;
    if ((rc = model_layer_tensor(ld, il, "attn_q.weight", true, E, QD, &L->wq))) return rc;
    if ((rc = model_layer_tensor(ld, il, "attn_k.weight", true, E, KD, &L->wk))) return rc;
    if ((rc = model_layer_tensor(ld, il, "attn_v.weight", true, E, KD, &L->wv))) return rc;
    if ((rc = model_layer_tensor(ld, il, "attn_output.weight", true, QD, E, &L->wo))) return rc;
    if (hp->has_qkv_bias) {
      if ((rc = model_layer_tensor(ld, il, "attn_q.bias", true, QD, 0, &L->bq))) return rc;
      if ((rc = model_layer_tensor(ld, il, "attn_k.bias", true, KD, 0, &L->bk))) return rc;
      if ((rc = model_layer_tensor(ld, il, "attn_v.bias", true, KD, 0, &L->bv))) return rc;
    }
    if (hp->has_qk_norm) {
      if ((rc = model_layer_tensor(ld, il, "attn_q_norm.weight", true, HD, 0, &L->q_norm))) return rc;
      if ((rc = model_layer_tensor(ld, il, "attn_k_norm.weight", true, HD, 0, &L->k_norm))) return rc;
    }
    if ((rc = model_layer_tensor(ld, il, "ffn_norm.weight", true, E, 0, &L->ffn_norm))) return rc;
    if ((rc = model_layer_tensor(ld, il, "ffn_gate.weight", true, E, F, &L->w_gate))) return rc;
    if ((rc = model_layer_tensor(ld, il, "ffn_up.weight", true, E, F, &L->w_up))) return rc;
    if ((rc = model_layer_tensor(ld, il, "ffn_down.weight", true, F, E, &L->w_down))) return rc;
  }
  return 0;
}

/* n_params, weight_bytes and main_type over all tensors of the file. */
static void model_count(const llorch_gguf *g, uint64_t *n_params, uint64_t *bytes,
                        llorch_ggml_type *main_type) {
  uint64_t by_type[LLORCH_TYPE_COUNT] = {0};
  *n_params = 0;
  *bytes = 0;
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(g); i++) {
    const llorch_gguf_tensor *t = llorch_gguf_tensor_at(g, i);
    uint64_t ne = 1;
    for (uint32_t d = 0; d < LLORCH_GGUF_MAX_DIMS; d++) ne *= t->ne[d];
    *n_params += ne;
    *bytes += t->nbytes;
    if (t->n_dims >= 2 && (unsigned)t->type < LLORCH_TYPE_COUNT) by_type[t->type] += t->nbytes;
  }
  llorch_ggml_type best = LLORCH_TYPE_F32;
  for (int t = 0; t < LLORCH_TYPE_COUNT; t++)
    if (by_type[t] > by_type[best]) best = (llorch_ggml_type)t;
  *main_type = best;
}

int llorch_model_load(llorch_model **out, const char *path, llorch_errmsg *em) {
  llorch_model *m = calloc(1, sizeof *m);
  if (!m) return llorch_errmsg_set(em, LLORCH_ENOMEM, "model: out of memory");
  int rc = llorch_gguf_open(&m->gguf, path, LLORCH_GGUF_OPEN_DEFAULT, em);
  if (rc) goto fail;
  if ((rc = llorch_hparams_read(m->gguf, &m->hp, em))) goto fail;
  model_loader ld = {m, em};
  if ((rc = model_bind_tensors(&ld))) goto fail;
  snprintf(m->arch_name, sizeof m->arch_name, "%s", model_archs[m->hp.arch].name);
  llorch_gguf_str nm;
  if (llorch_gguf_get_str(m->gguf, "general.name", &nm, NULL) == 0 && nm.len > 0) {
    snprintf(m->name, sizeof m->name, "%.*s", (int)(nm.len > 127 ? 127 : nm.len), nm.ptr);
  } else {
    const char *base = strrchr(path, '/');
    snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : path);
  }
  model_count(m->gguf, &m->n_params, &m->weight_bytes, &m->main_type);
  *out = m;
  return 0;
fail:
  llorch_model_free(m);
  return rc;
}

void llorch_model_free(llorch_model *m) {
  if (!m) return;
  free(m->layers);
  llorch_gguf_close(m->gguf);
  free(m);
}
