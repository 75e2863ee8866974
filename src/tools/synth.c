/*
 * `llorch synth`: writes a random-weight model of a real shape as a GGUF file
 * that llama.cpp loads (same metadata keys and tensor names as its converted
 * models), for tests and benchmarks without downloading weights.
 *
 * Weights are a pure function of (--seed, tensor name, element index): each
 * element's draw comes from a counter-based generator (splitmix64 over the
 * element index), so the bytes do not depend on how the writer chunks a
 * tensor. Tensors are produced by the writer's fill callback, quantized a
 * slice at a time, so an 8B model never sits in memory.
 *
 * Scales are chosen so greedy decoding is well defined (see synth_plan_scales):
 * llorch's output is compared token by token with llama.cpp, so near-ties
 * between the two top logits must be rare.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/commands.h"
#include "llorch/error.h"
#include "llorch/file.h"
#include "llorch/gguf.h"
#include "llorch/hash.h"
#include "llorch/jinja.h"
#include "llorch/quant.h"
#include "llorch/tokenizer.h"

/* ---- parameters ---- */

typedef struct synth_params {
  const char *arch;     /* "llama", "qwen2", "qwen3" */
  const char *preset;   /* or NULL */
  uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv;
  uint32_t head_dim;    /* 0: n_embd / n_head */
  uint32_t n_vocab;     /* 0: from the tokenizer */
  uint32_t n_ctx;       /* tokens */
  float rope_base;
  float rms_eps;
  bool tie_embeddings;  /* no output.weight */
  bool fim;             /* --fim: fill-in-the-middle tokens in the built-in vocabulary */
  bool llama3_rope;     /* write rope_freqs.weight (Llama 3.1 scaling) */
  float rope_scale_factor; /* Llama 3.1 "factor" (8 for 8B, 32 for 3.2) */
  const char *vocab_from;
  const char *chat_template; /* --chat-template FILE.jinja: embedded as tokenizer.chat_template */
  llorch_ggml_type type;
  uint64_t seed;
  int pooling;          /* --pooling: <arch>.pooling_type to write; -1 none written */
  const char *out;
} synth_params;

typedef struct synth_preset {
  const char *name;
  const char *arch;
  uint32_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab, n_ctx;
  float rope_base, rms_eps;
  bool tie_embeddings, llama3_rope;
  float rope_scale_factor;
} synth_preset;

/* The real models' config.json values. */
static const synth_preset synth_presets[] = {
    {"qwen2.5-0.5b", "qwen2", 24, 896, 4864, 14, 2, 64, 151936, 32768, 1e6f, 1e-6f, true, false, 0},
    {"llama3.2-1b", "llama", 16, 2048, 8192, 32, 8, 64, 128256, 131072, 500000.0f, 1e-5f, false,
     true, 32.0f},
    {"qwen3-0.6b", "qwen3", 28, 1024, 3072, 16, 8, 128, 151936, 40960, 1e6f, 1e-6f, true, false, 0},
    {"llama3-8b", "llama", 32, 4096, 14336, 32, 8, 128, 128256, 8192, 500000.0f, 1e-5f, false, true,
     8.0f},
};

static void synth_usage(FILE *f) {
  fprintf(f,
          "usage: llorch synth (--preset NAME | --arch llama|qwen2|qwen3 --layers N --embd N --ff N\n"
          "                     --heads N --kv-heads N) [--head-dim N] [--vocab N] [--ctx N]\n"
          "                     [--rope-base X] [--tie-embeddings] [--vocab-from FILE.gguf] [--fim]\n"
          "                     [--type f32|f16|bf16|q8_0|q4_0|q4_k|q6_k] [--seed N]\n"
          "                     [--chat-template FILE.jinja|none] [--pooling none|mean|cls|last]\n"
          "                     -o OUT.gguf\n"
          "presets: qwen2.5-0.5b, llama3.2-1b, qwen3-0.6b, llama3-8b\n");
}

static int synth_parse_u32(const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 || v < lo || v > hi) {
    fprintf(stderr, "synth: %s '%s': expected an integer in %" PRIu32 "..%" PRIu32 "\n", flag, s, lo, hi);
    return LLORCH_EINVAL;
  }
  *out = (uint32_t)v;
  return 0;
}

static int synth_parse_args(int argc, char **argv, synth_params *p) {
  memset(p, 0, sizeof *p);
  p->type = LLORCH_TYPE_F16;
  p->seed = 42;
  p->pooling = -1;
  bool tie_flag = false;
  float rope_base = 0;
  synth_params given = {0}; /* explicit flags override the preset */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      synth_usage(stdout);
      return 1;
    }
    if (strcmp(a, "--tie-embeddings") == 0) {
      tie_flag = true;
      continue;
    }
    if (strcmp(a, "--fim") == 0) {
      p->fim = true;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "synth: %s needs a value\n", a);
      return LLORCH_EINVAL;
    }
    const char *v = argv[++i];
    int rc = 0;
    if (strcmp(a, "--arch") == 0) {
      if (strcmp(v, "llama") && strcmp(v, "qwen2") && strcmp(v, "qwen3")) {
        fprintf(stderr, "synth: --arch '%s': expected llama, qwen2 or qwen3\n", v);
        return LLORCH_EINVAL;
      }
      given.arch = v;
    } else if (strcmp(a, "--preset") == 0) given.preset = v;
    else if (strcmp(a, "--layers") == 0) rc = synth_parse_u32(a, v, 1, 1024, &given.n_layer);
    else if (strcmp(a, "--embd") == 0) rc = synth_parse_u32(a, v, 1, 1 << 16, &given.n_embd);
    else if (strcmp(a, "--ff") == 0) rc = synth_parse_u32(a, v, 1, 1 << 18, &given.n_ff);
    else if (strcmp(a, "--heads") == 0) rc = synth_parse_u32(a, v, 1, 1024, &given.n_head);
    else if (strcmp(a, "--kv-heads") == 0) rc = synth_parse_u32(a, v, 1, 1024, &given.n_head_kv);
    else if (strcmp(a, "--head-dim") == 0) rc = synth_parse_u32(a, v, 2, 1024, &given.head_dim);
    else if (strcmp(a, "--vocab") == 0) rc = synth_parse_u32(a, v, 1, 1 << 22, &given.n_vocab);
    else if (strcmp(a, "--ctx") == 0) rc = synth_parse_u32(a, v, 1, 1u << 24, &given.n_ctx);
    else if (strcmp(a, "--vocab-from") == 0) p->vocab_from = v;
    else if (strcmp(a, "--chat-template") == 0) p->chat_template = v;
    else if (strcmp(a, "--pooling") == 0) {
      /* an embedding model's pooling, as llama.cpp's converter writes it */
      static const char *const names[] = {"none", "mean", "cls", "last"};
      p->pooling = -1;
      for (int k = 0; k < 4; k++)
        if (strcmp(v, names[k]) == 0) p->pooling = k;
      if (p->pooling < 0) {
        fprintf(stderr, "synth: --pooling '%s': expected none, mean, cls or last\n", v);
        return LLORCH_EINVAL;
      }
    }
    else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) p->out = v;
    else if (strcmp(a, "--rope-base") == 0) {
      char *end;
      rope_base = strtof(v, &end);
      if (*end != '\0' || !(rope_base > 1.0f) || !isfinite(rope_base)) {
        fprintf(stderr, "synth: --rope-base '%s': expected a number > 1\n", v);
        return LLORCH_EINVAL;
      }
    } else if (strcmp(a, "--type") == 0) {
      if (llorch_type_parse(v, &p->type) != 0 || !llorch_type_can_quantize(p->type)) {
        fprintf(stderr, "synth: --type '%s': expected f32, f16, bf16, q8_0, q4_0, q4_k or q6_k\n", v);
        return LLORCH_EINVAL;
      }
    } else if (strcmp(a, "--seed") == 0) {
      char *end;
      errno = 0;
      p->seed = strtoull(v, &end, 10);
      if (v[0] == '\0' || v[0] == '-' || *end != '\0' || errno != 0) {
        fprintf(stderr, "synth: --seed '%s': expected a non-negative integer\n", v);
        return LLORCH_EINVAL;
      }
    } else {
      fprintf(stderr, "synth: unknown flag '%s'\n", a);
      synth_usage(stderr);
      return LLORCH_EINVAL;
    }
    if (rc != 0) return rc;
  }

  if (given.preset != NULL) {
    const synth_preset *ps = NULL;
    for (size_t i = 0; i < sizeof synth_presets / sizeof synth_presets[0]; i++)
      if (strcmp(synth_presets[i].name, given.preset) == 0) ps = &synth_presets[i];
    if (ps == NULL) {
      fprintf(stderr, "synth: --preset '%s': expected qwen2.5-0.5b, llama3.2-1b, qwen3-0.6b or llama3-8b\n",
              given.preset);
      return LLORCH_EINVAL;
    }
    p->preset = ps->name;
    p->arch = ps->arch;
    p->n_layer = ps->n_layer;
    p->n_embd = ps->n_embd;
    p->n_ff = ps->n_ff;
    p->n_head = ps->n_head;
    p->n_head_kv = ps->n_head_kv;
    p->head_dim = ps->head_dim;
    p->n_vocab = ps->n_vocab;
    p->n_ctx = ps->n_ctx;
    p->rope_base = ps->rope_base;
    p->rms_eps = ps->rms_eps;
    p->tie_embeddings = ps->tie_embeddings;
    p->llama3_rope = ps->llama3_rope;
    p->rope_scale_factor = ps->rope_scale_factor;
  }
  if (given.arch) {
    if (p->arch && strcmp(p->arch, given.arch) != 0) {
      fprintf(stderr, "synth: --arch %s conflicts with --preset %s (%s)\n", given.arch, p->preset, p->arch);
      return LLORCH_EINVAL;
    }
    p->arch = given.arch;
  }
#define SYNTH_TAKE(f) if (given.f) p->f = given.f
  SYNTH_TAKE(n_layer); SYNTH_TAKE(n_embd); SYNTH_TAKE(n_ff); SYNTH_TAKE(n_head);
  SYNTH_TAKE(n_head_kv); SYNTH_TAKE(head_dim); SYNTH_TAKE(n_vocab); SYNTH_TAKE(n_ctx);
#undef SYNTH_TAKE
  if (tie_flag) p->tie_embeddings = true;
  if (p->fim && p->vocab_from) {
    fprintf(stderr, "synth: --fim adds tokens to the built-in vocabulary; --vocab-from %s brings its own\n",
            p->vocab_from);
    return LLORCH_EINVAL;
  }

  if (p->arch == NULL) {
    fprintf(stderr, "synth: --arch or --preset is required\n");
    return LLORCH_EINVAL;
  }
  const char *missing = !p->n_layer ? "--layers" : !p->n_embd ? "--embd" : !p->n_ff ? "--ff"
                        : !p->n_head ? "--heads" : !p->n_head_kv ? "--kv-heads" : !p->out ? "-o" : NULL;
  if (missing) {
    fprintf(stderr, "synth: %s is required\n", missing);
    return LLORCH_EINVAL;
  }
  if (p->head_dim == 0) {
    if (p->n_embd % p->n_head != 0) {
      fprintf(stderr, "synth: --embd %" PRIu32 " is not a multiple of --heads %" PRIu32
              " (give --head-dim)\n", p->n_embd, p->n_head);
      return LLORCH_EINVAL;
    }
    p->head_dim = p->n_embd / p->n_head;
  }
  if (p->head_dim % 2 != 0) {
    fprintf(stderr, "synth: head dim %" PRIu32 " must be even (RoPE rotates pairs)\n", p->head_dim);
    return LLORCH_EINVAL;
  }
  if (p->n_head % p->n_head_kv != 0) {
    fprintf(stderr, "synth: --heads %" PRIu32 " is not a multiple of --kv-heads %" PRIu32 "\n",
            p->n_head, p->n_head_kv);
    return LLORCH_EINVAL;
  }
  bool llama = strcmp(p->arch, "llama") == 0;
  if (p->n_ctx == 0) p->n_ctx = 4096;
  if (p->rms_eps == 0) p->rms_eps = llama ? 1e-5f : 1e-6f;
  if (p->rope_base == 0) p->rope_base = llama ? 10000.0f : 1e6f;
  if (rope_base != 0) p->rope_base = rope_base;
  return 0;
}

/* ---- random numbers ---- */

static uint64_t synth_name_seed(uint64_t seed, const char *name) {
  uint64_t h = 1469598103934665603ull;
  for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
  return llorch_mix64(seed ^ llorch_mix64(h));
}

/*
 * Element i of a tensor: splitmix64 at counter i (counter-based, so any slice
 * is computed alone), turned into an approximately standard normal value as
 * the sum of the four 16-bit quarters (Irwin-Hall, n = 4: mean 2, variance
 * 1/3, rescaled). Bounded at +-3.46, which random weights do not mind.
 */
static inline float synth_normal(uint64_t tseed, uint64_t i) {
  uint64_t r = llorch_mix64(tseed + (i + 1) * 0x9e3779b97f4a7c15ull);
  uint32_t s = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
               (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
  return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* ---- tensors ---- */

typedef struct synth_tensor {
  char name[64];
  llorch_ggml_type type;
  uint32_t n_dims;
  uint64_t ne[2];
  float mean, std;   /* element = mean + std * normal */
  uint64_t tseed;
} synth_tensor;

/* Fill callback: rows [offset / row_bytes, ...) generated and quantized in slices. */
static int synth_fill(void *ctx, const char *name, uint64_t offset, void *dst, uint64_t nbytes) {
  const synth_tensor *t = ctx;
  enum { SLICE = 16384 }; /* floats per slice: a multiple of every block size */
  float buf[SLICE];
  size_t row_bytes = llorch_row_size(t->type, (int64_t)t->ne[0]);
  uint64_t first = offset / row_bytes * t->ne[0]; /* element index of the chunk start */
  uint64_t count = nbytes / row_bytes * t->ne[0];
  uint8_t *out = dst;
  for (uint64_t done = 0; done < count;) {
    /* a slice ends on a block boundary: rows are whole blocks, SLICE is a multiple of 256 */
    uint64_t n = count - done < SLICE ? count - done : SLICE;
    for (uint64_t j = 0; j < n; j++) buf[j] = t->mean + t->std * synth_normal(t->tseed, first + done + j);
    int rc = llorch_quantize_row(t->type, buf, out, (int64_t)n);
    if (rc != 0) return rc;
    out += llorch_row_size(t->type, (int64_t)n);
    done += n;
  }
  (void)name;
  return 0;
}

/*
 * The type a weight matrix gets: the requested one when its rows split into
 * whole blocks, else a fallback with smaller blocks (llama.cpp does the same
 * for rows that are not a multiple of 256, e.g. Qwen2.5-0.5B's 896).
 */
static llorch_ggml_type synth_matrix_type(llorch_ggml_type want, uint64_t ne0) {
  size_t be;
  llorch_type_geometry(want, &be, NULL);
  if (ne0 % be == 0) return want;
  if (want == LLORCH_TYPE_Q4_K && ne0 % LLORCH_QK4_0 == 0) return LLORCH_TYPE_Q4_0;
  if (ne0 % LLORCH_QK8_0 == 0) return LLORCH_TYPE_Q8_0;
  return LLORCH_TYPE_F16;
}

/* llama.cpp's llama_ftype for general.file_type */
static uint32_t synth_file_type(llorch_ggml_type t) {
  switch (t) {
  case LLORCH_TYPE_F32: return 0;
  case LLORCH_TYPE_F16: return 1;
  case LLORCH_TYPE_Q4_0: return 2;
  case LLORCH_TYPE_Q8_0: return 7;
  case LLORCH_TYPE_Q4_K: return 15; /* MOSTLY_Q4_K_M: q4_k with q6_k output, as here */
  case LLORCH_TYPE_Q6_K: return 18;
  case LLORCH_TYPE_BF16: return 32;
  default: return 0;
  }
}

typedef struct synth_state {
  synth_params p;
  synth_tensor *tensors; /* (n_tensors) */
  size_t n_tensors, cap;
  uint64_t n_params;
  uint64_t n_bytes;      /* tensor data, bytes */
} synth_state;

static int synth_add(synth_state *s, llorch_gguf_writer *w, const char *name, llorch_ggml_type type,
                     uint32_t n_dims, uint64_t ne0, uint64_t ne1, float mean, float std) {
  synth_tensor *t = &s->tensors[s->n_tensors++];
  LLORCH_ASSERT(s->n_tensors <= s->cap);
  snprintf(t->name, sizeof t->name, "%s", name);
  t->type = type;
  t->n_dims = n_dims;
  t->ne[0] = ne0;
  t->ne[1] = ne1;
  t->mean = mean;
  t->std = std;
  t->tseed = synth_name_seed(s->p.seed, name);
  s->n_params += ne0 * ne1;
  s->n_bytes += llorch_row_size(type, (int64_t)ne0) * ne1;
  return llorch_gguf_writer_add_tensor_fill(w, t->name, type, n_dims, t->ne, synth_fill, t);
}

/*
 * Llama 3.1 rope scaling, as convert_hf_to_gguf.py writes rope_freqs.weight:
 * per frequency pair, 1 for short wavelengths, `factor` for long ones and a
 * smooth blend in between (low_freq_factor 1, high_freq_factor 4, original
 * context 8192).
 */
static void synth_llama3_rope_factors(const synth_params *p, float *out) {
  const double low_freq_factor = 1.0, high_freq_factor = 4.0, old_ctx = 8192.0;
  const double low_freq_wavelen = old_ctx / low_freq_factor;
  const double high_freq_wavelen = old_ctx / high_freq_factor;
  for (uint32_t i = 0; i < p->head_dim / 2; i++) {
    /* torch computes the frequencies in float32 */
    float freq = 1.0f / powf(p->rope_base, (float)(2 * i) / (float)p->head_dim);
    double wavelen = 2.0 * M_PI / freq;
    if (wavelen < high_freq_wavelen) {
      out[i] = 1.0f;
    } else if (wavelen > low_freq_wavelen) {
      out[i] = p->rope_scale_factor;
    } else {
      double smooth = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      out[i] = (float)(1.0 / ((1.0 - smooth) / p->rope_scale_factor + smooth));
    }
  }
}

/*
 * Scales, tuned with llama.cpp's greedy decoding of the result (40 steps:
 * distinct tokens, repeats, top-1/top-2 gaps). Every matrix sees
 * RMS-normalized input, so projections use std 1/sqrt(n_in) (unit-variance
 * outputs); the FFN's w_down has gain 3 and attention's wo gain 0.5: a larger
 * attention share makes the state follow the context more than the current
 * token and greedy decoding of tied-embedding models then locks onto one
 * token. The token embedding is small (std 0.02, as real models at init), so
 * tied models do not echo the input token (its logit bonus is about
 * LOGIT_STD * embd_std * sqrt(n_embd) / rms(h); at std 1 every token
 * predicted itself). The final norm's weight sets the logit scale: logits
 * get a standard deviation of about LOGIT_STD, so the gap between the two
 * top logits of ~1e5 draws is typically ~1.5 and ties within float rounding
 * are rare.
 */
#define SYNTH_LOGIT_STD 8.0f
#define SYNTH_ATTN_OUT_GAIN 0.5f
#define SYNTH_FFN_OUT_GAIN 3.0f
#define SYNTH_EMBD_STD 0.02f

static int synth_add_tensors(synth_state *s, llorch_gguf_writer *w, uint32_t n_vocab,
                             float *rope_factors) {
  const synth_params *p = &s->p;
  const uint64_t E = p->n_embd, F = p->n_ff, V = n_vocab;
  const uint64_t Q = (uint64_t)p->n_head * p->head_dim, K = (uint64_t)p->n_head_kv * p->head_dim;
  const bool qwen2 = strcmp(p->arch, "qwen2") == 0, qwen3 = strcmp(p->arch, "qwen3") == 0;
  const llorch_ggml_type T = p->type;
  /* llama.cpp's q4_k files keep output.weight (and tied embeddings) at q6_k */
  const llorch_ggml_type T_out = T == LLORCH_TYPE_Q4_K ? LLORCH_TYPE_Q6_K : T;
  const float emb_std = SYNTH_EMBD_STD;
  const float out_std = p->tie_embeddings ? emb_std : 1.0f / sqrtf((float)E);
  /* logits = output . (norm(h) * w_norm): std = out_std * sqrt(E) * w_norm */
  const float out_norm = SYNTH_LOGIT_STD / (out_std * sqrtf((float)E));
  char name[64];
  int rc;

  s->cap = 4 + (size_t)p->n_layer * 16;
  s->tensors = calloc(s->cap, sizeof *s->tensors);
  if (s->tensors == NULL) return LLORCH_ENOMEM;

  if ((rc = synth_add(s, w, "token_embd.weight", synth_matrix_type(p->tie_embeddings ? T_out : T, E),
                      2, E, V, 0.0f, emb_std)) != 0) return rc;
  if (p->llama3_rope) {
    uint64_t ne = p->head_dim / 2;
    synth_llama3_rope_factors(p, rope_factors);
    if ((rc = llorch_gguf_writer_add_tensor(w, "rope_freqs.weight", LLORCH_TYPE_F32, 1, &ne,
                                            rope_factors)) != 0) return rc;
    s->n_params += ne;
    s->n_bytes += ne * 4;
  }
  for (uint32_t l = 0; l < p->n_layer; l++) {
#define LAYER(suffix) (snprintf(name, sizeof name, "blk.%" PRIu32 "." suffix, l), name)
    if ((rc = synth_add(s, w, LAYER("attn_norm.weight"), LLORCH_TYPE_F32, 1, E, 1, 1.0f, 0.1f))) return rc;
    if ((rc = synth_add(s, w, LAYER("attn_q.weight"), synth_matrix_type(T, E), 2, E, Q, 0.0f,
                        1.0f / sqrtf((float)E)))) return rc;
    if ((rc = synth_add(s, w, LAYER("attn_k.weight"), synth_matrix_type(T, E), 2, E, K, 0.0f,
                        1.0f / sqrtf((float)E)))) return rc;
    if ((rc = synth_add(s, w, LAYER("attn_v.weight"), synth_matrix_type(T, E), 2, E, K, 0.0f,
                        1.0f / sqrtf((float)E)))) return rc;
    if (qwen2) {
      if ((rc = synth_add(s, w, LAYER("attn_q.bias"), LLORCH_TYPE_F32, 1, Q, 1, 0.0f, 0.5f))) return rc;
      if ((rc = synth_add(s, w, LAYER("attn_k.bias"), LLORCH_TYPE_F32, 1, K, 1, 0.0f, 0.5f))) return rc;
      if ((rc = synth_add(s, w, LAYER("attn_v.bias"), LLORCH_TYPE_F32, 1, K, 1, 0.0f, 0.5f))) return rc;
    }
    if (qwen3) {
      if ((rc = synth_add(s, w, LAYER("attn_q_norm.weight"), LLORCH_TYPE_F32, 1, p->head_dim, 1, 1.0f,
                          0.1f))) return rc;
      if ((rc = synth_add(s, w, LAYER("attn_k_norm.weight"), LLORCH_TYPE_F32, 1, p->head_dim, 1, 1.0f,
                          0.1f))) return rc;
    }
    if ((rc = synth_add(s, w, LAYER("attn_output.weight"), synth_matrix_type(T, Q), 2, Q, E, 0.0f,
                        SYNTH_ATTN_OUT_GAIN / sqrtf((float)Q)))) return rc;
    if ((rc = synth_add(s, w, LAYER("ffn_norm.weight"), LLORCH_TYPE_F32, 1, E, 1, 1.0f, 0.1f))) return rc;
    if ((rc = synth_add(s, w, LAYER("ffn_gate.weight"), synth_matrix_type(T, E), 2, E, F, 0.0f,
                        1.0f / sqrtf((float)E)))) return rc;
    if ((rc = synth_add(s, w, LAYER("ffn_up.weight"), synth_matrix_type(T, E), 2, E, F, 0.0f,
                        1.0f / sqrtf((float)E)))) return rc;
    if ((rc = synth_add(s, w, LAYER("ffn_down.weight"), synth_matrix_type(T, F), 2, F, E, 0.0f,
                        SYNTH_FFN_OUT_GAIN / sqrtf((float)F)))) return rc;
#undef LAYER
  }
  if ((rc = synth_add(s, w, "output_norm.weight", LLORCH_TYPE_F32, 1, E, 1, out_norm, 0.05f * out_norm)))
    return rc;
  if (!p->tie_embeddings)
    if ((rc = synth_add(s, w, "output.weight", synth_matrix_type(T_out, E), 2, E, V, 0.0f, out_std)))
      return rc;
  return 0;
}

/* ---- metadata ---- */

static int synth_vocab_from(llorch_gguf_writer *w, const char *path, uint32_t *n_vocab) {
  llorch_errmsg em = {{0}};
  llorch_gguf *g;
  int rc = llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, &em);
  if (rc != 0) {
    fprintf(stderr, "synth: --vocab-from: %s\n", em.text);
    return rc;
  }
  const llorch_gguf_kv *tokens;
  rc = llorch_gguf_get_arr(g, "tokenizer.ggml.tokens", LLORCH_GGUF_STRING, &tokens, &em);
  if (rc != 0) {
    fprintf(stderr, "synth: --vocab-from %s: %s\n", path, em.text);
    goto out;
  }
  if (tokens->arr_n == 0 || tokens->arr_n > (1u << 22)) {
    fprintf(stderr, "synth: --vocab-from %s: %" PRIu64 " tokens (expected 1..4194304)\n", path,
            tokens->arr_n);
    rc = LLORCH_EFORMAT;
    goto out;
  }
  *n_vocab = (uint32_t)tokens->arr_n;
  for (uint64_t i = 0; i < llorch_gguf_n_kv(g); i++) {
    const llorch_gguf_kv *kv = llorch_gguf_kv_at(g, i);
    if (strncmp(kv->key, "tokenizer.", 10) == 0 && (rc = llorch_gguf_writer_copy_kv(w, kv)) != 0) {
      fprintf(stderr, "synth: copying %s: %s\n", kv->key, llorch_strerror(rc));
      goto out;
    }
  }
out:
  llorch_gguf_close(g);
  return rc;
}

static int synth_set_hparams(llorch_gguf_writer *w, const synth_params *p, uint32_t n_vocab) {
  char key[96], name[96];
  int rc = 0;
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, p->arch), key)
  snprintf(name, sizeof name, "synth-%s-%s", p->preset ? p->preset : p->arch, llorch_type_name(p->type));
  rc |= llorch_gguf_writer_set_str(w, "general.architecture", p->arch);
  rc |= llorch_gguf_writer_set_str(w, "general.name", name);
  rc |= llorch_gguf_writer_set_u32(w, "general.file_type", synth_file_type(p->type));
  rc |= llorch_gguf_writer_set_u32(w, "general.quantization_version", 2);
  rc |= llorch_gguf_writer_set_u32(w, "general.alignment", 32);
  rc |= llorch_gguf_writer_set_u32(w, KEY("vocab_size"), n_vocab);
  rc |= llorch_gguf_writer_set_u32(w, KEY("context_length"), p->n_ctx);
  rc |= llorch_gguf_writer_set_u32(w, KEY("embedding_length"), p->n_embd);
  rc |= llorch_gguf_writer_set_u32(w, KEY("block_count"), p->n_layer);
  rc |= llorch_gguf_writer_set_u32(w, KEY("feed_forward_length"), p->n_ff);
  rc |= llorch_gguf_writer_set_u32(w, KEY("attention.head_count"), p->n_head);
  rc |= llorch_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), p->n_head_kv);
  rc |= llorch_gguf_writer_set_u32(w, KEY("attention.key_length"), p->head_dim);
  rc |= llorch_gguf_writer_set_u32(w, KEY("attention.value_length"), p->head_dim);
  rc |= llorch_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), p->rms_eps);
  rc |= llorch_gguf_writer_set_f32(w, KEY("rope.freq_base"), p->rope_base);
  rc |= llorch_gguf_writer_set_u32(w, KEY("rope.dimension_count"), p->head_dim);
  if (p->pooling >= 0) rc |= llorch_gguf_writer_set_u32(w, KEY("pooling_type"), (uint32_t)p->pooling);
#undef KEY
  return rc != 0 ? LLORCH_ENOMEM : 0;
}

/* ---- the command ---- */

/* --chat-template: the file's text becomes tokenizer.chat_template (it must
 * compile, so a typo is caught here rather than at serve time); "none"
 * leaves the model without one. */
static int synth_set_chat_template(llorch_gguf_writer *w, const char *path) {
  if (strcmp(path, "none") == 0) {
    /* a model without a template (tests of that case) */
    int rc = llorch_gguf_writer_remove_kv(w, "tokenizer.chat_template");
    return rc == LLORCH_ENOTFOUND ? 0 : rc;
  }
  char *text = NULL;
  size_t n = 0;
  llorch_jinja *t = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_file_read(path, "--chat-template", 1u << 20, &text, &n, &em);
  if (rc < 0) {
    fprintf(stderr, "synth: %s\n", em.text);
  } else if (strlen(text) != n) {
    fprintf(stderr, "synth: --chat-template %s: contains a NUL byte\n", path);
    rc = LLORCH_EINVAL;
  } else if ((rc = llorch_jinja_compile(&t, text, n, &em)) != 0) {
    fprintf(stderr, "synth: --chat-template %s: %s\n", path, em.text);
  } else if ((rc = llorch_gguf_writer_set_str(w, "tokenizer.chat_template", text)) != 0) {
    fprintf(stderr, "synth: --chat-template: %s\n", llorch_strerror(rc));
  }
  llorch_jinja_free(t);
  free(text);
  return rc;
}

int llorch_cmd_synth(int argc, char **argv) {
  synth_state s = {0};
  llorch_gguf_writer *w = NULL;
  llorch_errmsg em = {{0}};
  float rope_factors[512];
  uint32_t n_vocab = 0;
  int rc = synth_parse_args(argc, argv, &s.p);
  if (rc != 0) return rc > 0 ? 0 : 2;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);

  if ((rc = llorch_gguf_writer_init(&w, 32)) != 0) goto fail;
  if (s.p.vocab_from) {
    if ((rc = synth_vocab_from(w, s.p.vocab_from, &n_vocab)) != 0) goto fail_quiet;
  } else {
    if ((rc = llorch_tokenizer_synth_vocab(w, s.p.preset ? 0 : s.p.n_vocab, s.p.fim, &n_vocab, &em)) != 0) {
      fprintf(stderr, "synth: building the tokenizer: %s\n", em.text);
      goto fail_quiet;
    }
    if (s.p.preset)
      fprintf(stderr, "synth: note: vocabulary of %" PRIu32 " tokens from the built-in tokenizer, "
              "not the preset's %" PRIu32 " (use --vocab-from for the real size)\n", n_vocab, s.p.n_vocab);
  }
  if (s.p.vocab_from && s.p.n_vocab && s.p.n_vocab != n_vocab && !s.p.preset)
    fprintf(stderr, "synth: note: --vocab %" PRIu32 " ignored: %s has %" PRIu32 " tokens\n",
            s.p.n_vocab, s.p.vocab_from, n_vocab);
  if (s.p.chat_template && (rc = synth_set_chat_template(w, s.p.chat_template)) != 0) goto fail_quiet;
  if ((rc = synth_set_hparams(w, &s.p, n_vocab)) != 0) goto fail;
  if ((rc = synth_add_tensors(&s, w, n_vocab, rope_factors)) != 0) goto fail;
  if ((rc = llorch_gguf_writer_write_file(w, s.p.out, &em)) != 0) {
    fprintf(stderr, "synth: %s\n", em.text);
    goto fail_quiet;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  fprintf(stderr,
          "synth: wrote %s: arch %s%s%s, %" PRIu32 " layers, embd %" PRIu32 ", ff %" PRIu32
          ", heads %" PRIu32 "/%" PRIu32 " (head dim %" PRIu32 "), vocab %" PRIu32 ", ctx %" PRIu32
          ", type %s%s, seed %" PRIu64 ": %zu tensors, %.1fM params, %.1f MiB of weights in %.1f s\n",
          s.p.out, s.p.arch, s.p.preset ? " preset " : "", s.p.preset ? s.p.preset : "", s.p.n_layer,
          s.p.n_embd, s.p.n_ff, s.p.n_head, s.p.n_head_kv, s.p.head_dim, n_vocab, s.p.n_ctx,
          llorch_type_name(s.p.type), s.p.tie_embeddings ? ", tied embeddings" : "", s.p.seed,
          s.n_tensors + (s.p.llama3_rope ? 1 : 0), (double)s.n_params / 1e6,
          (double)s.n_bytes / (1024.0 * 1024.0), secs);
  llorch_gguf_writer_free(w);
  free(s.tensors);
  return 0;

fail:
  fprintf(stderr, "synth: %s\n", llorch_strerror(rc));
fail_quiet:
  llorch_gguf_writer_free(w);
  free(s.tensors);
  return 1;
}
