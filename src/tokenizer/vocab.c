/*
 * Loading a tokenizer from GGUF metadata, the vocabulary queries, the
 * special-token partition that runs before either algorithm, and decoding.
 *
 * Behaviour follows llama.cpp's llama-vocab.cpp (the implementation llorch
 * is compared with): the same defaults where keys are absent, the same
 * end-of-generation detection by token text, and the same way special-token
 * text is cut out of the input before BPE / SentencePiece run.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "tokenizer-impl.h"

/* ---- pre-tokenizer names (tokenizer.ggml.pre) ---- */

typedef struct pre_name {
  const char *name;
  tok_pre pre;
  bool add_bos; /* llama.cpp's add_bos default for this pre-tokenizer */
  bool ignore_merges;
} pre_name;

static const pre_name pre_names[] = {
    {"default", TOK_PRE_DEFAULT, false, false},
    {"gpt-2", TOK_PRE_GPT2, false, false},
    {"phi-2", TOK_PRE_GPT2, false, false},
    {"mpt", TOK_PRE_GPT2, false, false},
    {"olmo", TOK_PRE_GPT2, false, false},
    {"jais", TOK_PRE_GPT2, false, false},
    {"llama3", TOK_PRE_LLAMA3, true, true},
    {"llama-v3", TOK_PRE_LLAMA3, true, true},
    {"llama-bpe", TOK_PRE_LLAMA3, true, true},
    {"falcon3", TOK_PRE_LLAMA3, true, true},
    {"pixtral", TOK_PRE_LLAMA3, true, true},
    {"dbrx", TOK_PRE_LLAMA3, false, false},
    {"smaug-bpe", TOK_PRE_LLAMA3, false, false},
    {"qwen2", TOK_PRE_QWEN2, false, false},
    {"deepseek-r1-qwen", TOK_PRE_QWEN2, false, false},
    {"stablelm2", TOK_PRE_QWEN2, false, false},
    {"megrez", TOK_PRE_QWEN2, false, false},
    {"starcoder", TOK_PRE_STARCODER, false, false},
    {"refact", TOK_PRE_STARCODER, false, false},
    {"smollm", TOK_PRE_STARCODER, false, false},
    {"command-r", TOK_PRE_STARCODER, false, false},
    {"codeshell", TOK_PRE_STARCODER, false, false},
    {"exaone", TOK_PRE_STARCODER, false, false},
};

static void pre_names_list(char *buf, size_t cap) {
  size_t used = 0;
  buf[0] = 0;
  for (size_t i = 0; i < sizeof(pre_names) / sizeof(pre_names[0]) && used < cap; i++) {
    int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", pre_names[i].name);
    if (n < 0) break;
    used += (size_t)n;
  }
}

/* ---- tokens list ---- */

void llorch_tokens_free(llorch_tokens *v) {
  if (!v) return;
  free(v->ids);
  v->ids = NULL;
  v->n = v->cap = 0;
}

int llorch_tokens_push(llorch_tokens *v, int32_t id) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 64;
    int32_t *ids = realloc(v->ids, cap * sizeof(*ids));
    if (!ids) return LLORCH_ENOMEM;
    v->ids = ids;
    v->cap = cap;
  }
  v->ids[v->n++] = id;
  return 0;
}

/* ---- loading ---- */

static char *str_dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

/* Reads an optional special-token id: absent keeps *id; present must be a
 * vocabulary index. */
static int vocab_read_special(const llorch_gguf *g, const char *key, int32_t n_vocab,
                              int32_t *id, llorch_errmsg *em) {
  int64_t v;
  int rc = llorch_gguf_get_i64(g, key, &v, em);
  if (rc == LLORCH_ENOTFOUND) return 0;
  if (rc != 0) return rc;
  if (v < 0 || v >= n_vocab)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "%s = %lld is out of range (vocabulary has %d tokens)",
                             key, (long long)v, n_vocab);
  *id = (int32_t)v;
  return 0;
}

static int vocab_read_bool(const llorch_gguf *g, const char *key, bool *out, llorch_errmsg *em) {
  bool v;
  int rc = llorch_gguf_get_bool(g, key, &v, em);
  if (rc == LLORCH_ENOTFOUND) return 0;
  if (rc != 0) return rc;
  *out = v;
  return 0;
}

static bool str_eq(const char *a, size_t alen, const char *b) {
  return strlen(b) == alen && memcmp(a, b, alen) == 0;
}

/*
 * llama.cpp recognises some special tokens by their text, whatever their
 * token_type says: it forces them to CONTROL, and some of them end
 * generation. The lists are llama.cpp's (llama-vocab.cpp, load()).
 */
/* end of generation */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", "[e~[",
};
/* EOT candidates when tokenizer.ggml.eot_token_id is absent, in priority order */
static const char *const eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
    "<end_of_utterance>",
};
/* fill-in-the-middle pad / repo / file separator: CONTROL and end of generation */
static const char *const fim_eog_texts[] = {
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
};
/* fill-in-the-middle prefix / suffix / middle: CONTROL only */
static const char *const fim_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>",
};
_Static_assert(sizeof fim_texts / sizeof fim_texts[0] == 24, "8 names each for prefix, suffix, middle");
/* gpt-oss: always rendered (llama.cpp makes them USER_DEFINED) */
static const char *const user_defined_texts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static int32_t vocab_find_str(const llorch_tokenizer *t, const char *s) {
  return tok_map_get(&t->token_map, s, (uint32_t)strlen(s));
}

/* Marks the texts of a list as CONTROL, and as end of generation when eog. */
static void vocab_mark(llorch_tokenizer *t, const char *const *texts, size_t n, bool eog) {
  for (size_t k = 0; k < n; k++) {
    int32_t id = vocab_find_str(t, texts[k]);
    if (id < 0) continue;
    t->tokens[id].attr |= TOK_ATTR_CONTROL;
    if (eog) t->eog[id] = 1;
  }
}

/* Longest text first, then lowest id (llama.cpp's sort leaves ties unordered;
 * a fixed order keeps llorch deterministic). */
static int special_cmp_len_desc(const void *pa, const void *pb, void *ctx) {
  const tok_token *tok = ctx;
  int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
  if (tok[a].len != tok[b].len) return tok[a].len > tok[b].len ? -1 : 1;
  return a < b ? -1 : a > b;
}

/* A file's string for an error message: at most cap-1 bytes, control bytes
 * shown as '?', so the message stays one printable line. */
static const char *vocab_printable(char *dst, size_t cap, const char *s, size_t n) {
  return llorch_str_show(dst, cap, s, n, cap - 4);
}

static void lower_ascii(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

/* The kv arrays of the vocabulary, checked against each other. */
typedef struct vocab_arrays {
  const llorch_gguf_kv *tokens, *scores, *types, *merges; /* scores, types, merges: NULL when absent */
  int32_t n;                                              /* entries of tokens */
} vocab_arrays;

/* Which algorithm (gpt2 BPE or llama SentencePiece) and, for BPE, which
 * pre-tokenizer; the SentencePiece defaults llama.cpp assumes. */
static int vocab_load_kind(llorch_tokenizer *t, const llorch_gguf *g, llorch_errmsg *em) {
  int rc;
  llorch_gguf_str model, pre;
  rc = llorch_gguf_get_str(g, "tokenizer.ggml.model", &model, em);
  if (rc == LLORCH_ENOTFOUND) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.model is missing: the file has no tokenizer");
  }
  if (rc != 0) return rc;
  if (str_eq(model.ptr, model.len, "gpt2")) {
    t->kind = LLORCH_TOKENIZER_BPE;
  } else if (str_eq(model.ptr, model.len, "llama")) {
    t->kind = LLORCH_TOKENIZER_SPM;
  } else {
    char shown[65];
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "tokenizer.ggml.model '%s' is not supported (expected gpt2 or llama)",
                             vocab_printable(shown, sizeof(shown), model.ptr, model.len));
  }

  if (t->kind == LLORCH_TOKENIZER_BPE) {
    rc = llorch_gguf_get_str(g, "tokenizer.ggml.pre", &pre, em);
    if (rc == LLORCH_ENOTFOUND) {
      pre.ptr = "default";
      pre.len = 7;
    } else if (rc != 0) {
      return rc;
    }
    size_t i, n_names = sizeof(pre_names) / sizeof(pre_names[0]);
    for (i = 0; i < n_names; i++)
      if (str_eq(pre.ptr, pre.len, pre_names[i].name)) break;
    if (i == n_names) {
      char list[512], shown[65];
      pre_names_list(list, sizeof(list));
      return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED, "tokenizer.ggml.pre '%s' is not supported (supported: %s)",
                               vocab_printable(shown, sizeof(shown), pre.ptr, pre.len), list);
    }
    t->pre = pre_names[i].pre;
    t->add_bos = pre_names[i].add_bos;
    t->ignore_merges = pre_names[i].ignore_merges;
    snprintf(t->pre_name, sizeof(t->pre_name), "%s", pre_names[i].name);
  } else {
    /* llama.cpp: SentencePiece prepends BOS and a space, ids 1/2/0 by default */
    snprintf(t->pre_name, sizeof(t->pre_name), "default");
    t->add_bos = true;
    t->add_space_prefix = true;
    t->bos = 1;
    t->eos = 2;
    t->unk = 0;
  }
  return 0;
}

/* Finds tokens, scores, token types and merges and checks their sizes. */
static int vocab_load_arrays(const llorch_tokenizer *t, const llorch_gguf *g, vocab_arrays *va, llorch_errmsg *em) {
  int rc;
  memset(va, 0, sizeof *va);
  rc = llorch_gguf_get_arr(g, "tokenizer.ggml.tokens", LLORCH_GGUF_STRING, &va->tokens, em);
  if (rc == LLORCH_ENOTFOUND) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.tokens is missing");
  }
  if (rc != 0) return rc;
  if (va->tokens->arr_n == 0 || va->tokens->arr_n > (uint64_t)INT32_MAX / 2) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.tokens has %llu entries (expected 1..%d)",
                             (unsigned long long)va->tokens->arr_n, INT32_MAX / 2);
  }
  int32_t n = va->n = (int32_t)va->tokens->arr_n;

  rc = llorch_gguf_get_arr(g, "tokenizer.ggml.scores", LLORCH_GGUF_FLOAT32, &va->scores, em);
  if (rc == LLORCH_EFORMAT) /* llama.cpp also takes int32 scores */
    rc = llorch_gguf_get_arr(g, "tokenizer.ggml.scores", LLORCH_GGUF_INT32, &va->scores, em);
  if (rc == LLORCH_ENOTFOUND) va->scores = NULL;
  else if (rc != 0) return rc;
  if (va->scores && va->scores->arr_n != (uint64_t)n) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.scores has %llu entries, tokens has %d",
                             (unsigned long long)va->scores->arr_n, n);
  }
  rc = llorch_gguf_get_arr(g, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, &va->types, em);
  if (rc == LLORCH_ENOTFOUND) va->types = NULL;
  else if (rc != 0) return rc;
  if (va->types && va->types->arr_n != (uint64_t)n) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "tokenizer.ggml.token_type has %llu entries, tokens has %d",
                             (unsigned long long)va->types->arr_n, n);
  }
  if (t->kind == LLORCH_TOKENIZER_BPE) {
    rc = llorch_gguf_get_arr(g, "tokenizer.ggml.merges", LLORCH_GGUF_STRING, &va->merges, em);
    if (rc == LLORCH_ENOTFOUND) {
      return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)");
    }
    if (rc != 0) return rc;
    if (va->merges->arr_n > (uint64_t)INT32_MAX / 2) {
      return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.merges has too many entries (%llu)",
                               (unsigned long long)va->merges->arr_n);
    }
  }
  return 0;
}

/* Every string in one arena (token texts NUL-terminated, then the merges'
 * pairs); the tokens with their scores and attributes, and the text -> id map.
 * *arena_end: where the merges go. */
static int vocab_load_tokens(llorch_tokenizer *t, const vocab_arrays *va, char **arena_end, llorch_errmsg *em) {
  int32_t n = va->n;
  const llorch_gguf_kv *kv_tokens = va->tokens, *kv_scores = va->scores, *kv_types = va->types,
                       *kv_merges = va->merges;
  /* one arena for every string: token texts (NUL-terminated), then merges */
  uint64_t arena_bytes = 0, cursor = 0;
  char empty_name[32];
  for (int32_t i = 0; i < n; i++) {
    llorch_gguf_str s = llorch_gguf_arr_str(kv_tokens, (uint64_t)i, &cursor);
    arena_bytes += (s.len ? s.len : (uint64_t)snprintf(empty_name, sizeof(empty_name), "[EMPTY_%d]", i)) + 1;
  }
  if (kv_merges) {
    cursor = 0;
    for (uint64_t i = 0; i < kv_merges->arr_n; i++)
      arena_bytes += llorch_gguf_arr_str(kv_merges, i, &cursor).len;
  }
  if (arena_bytes > UINT32_MAX) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer strings take %llu bytes (too large)",
                             (unsigned long long)arena_bytes);
  }
  t->arena = malloc(arena_bytes ? arena_bytes : 1);
  t->tokens = calloc((size_t)n, sizeof(*t->tokens));
  t->eog = calloc((size_t)n, 1);
  if (!t->arena || !t->tokens || !t->eog || tok_map_init(&t->token_map, (uint32_t)n) != 0) {
    return LLORCH_ENOMEM;
  }

  char *ap = t->arena;
  cursor = 0;
  for (int32_t i = 0; i < n; i++) {
    llorch_gguf_str s = llorch_gguf_arr_str(kv_tokens, (uint64_t)i, &cursor);
    tok_token *tk = &t->tokens[i];
    if (s.len == 0) {
      /* llama.cpp names empty tokens so they cannot be matched */
      s.len = (uint64_t)snprintf(ap, 32, "[EMPTY_%d]", i);
      s.ptr = ap;
    } else {
      memcpy(ap, s.ptr, s.len);
    }
    ap[s.len] = 0;
    tk->text = ap;
    tk->len = (uint32_t)s.len;
    ap += s.len + 1;
    tk->score = 0.0f;
    if (kv_scores) {
      tk->score = kv_scores->arr_type == LLORCH_GGUF_FLOAT32 ? (float)llorch_gguf_arr_f64(kv_scores, (uint64_t)i)
                                                          : (float)llorch_gguf_arr_i64(kv_scores, (uint64_t)i);
    }
    int64_t ty = kv_types ? llorch_gguf_arr_i64(kv_types, (uint64_t)i) : LLORCH_TOKEN_NORMAL;
    switch (ty) {
    case LLORCH_TOKEN_NORMAL: tk->attr = TOK_ATTR_NORMAL; break;
    case LLORCH_TOKEN_UNKNOWN: tk->attr = TOK_ATTR_UNKNOWN; break;
    case LLORCH_TOKEN_CONTROL: tk->attr = TOK_ATTR_CONTROL; break;
    case LLORCH_TOKEN_USER_DEFINED: tk->attr = TOK_ATTR_USER_DEFINED; break;
    case LLORCH_TOKEN_UNUSED: tk->attr = TOK_ATTR_UNUSED; break;
    case LLORCH_TOKEN_BYTE: tk->attr = TOK_ATTR_BYTE; break;
    case LLORCH_TOKEN_UNDEFINED: tk->attr = TOK_ATTR_UNDEFINED; break;
    default:
      return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.token_type[%d] = %lld (expected 0..6)", i,
                               (long long)ty);
    }
    if (ty == LLORCH_TOKEN_BYTE) {
      /* byte tokens are "<0xXX>": token_to_byte reads the two hex digits */
      if (tk->len != 6 || memcmp(tk->text, "<0x", 3) != 0 || !isxdigit((unsigned char)tk->text[3]) ||
          !isxdigit((unsigned char)tk->text[4]) || tk->text[5] != '>') {
        return llorch_errmsg_set(em, LLORCH_EFORMAT,
                                 "tokenizer.ggml.tokens[%d] is a BYTE token but is not of the form <0xXX>", i);
      }
    }
    int32_t prev;
    if (tok_map_put(&t->token_map, tk->text, tk->len, tk->len, i, &prev) == LLORCH_EEXIST) {
      char shown[41];
      return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.tokens: duplicate token '%s' at ids %d and %d",
                               vocab_printable(shown, sizeof(shown), tk->text, tk->len), prev, i);
    }
  }
  *arena_end = ap;
  return 0;
}

/* The BPE merges ("left right") as a pair -> rank map. */
static int vocab_load_merges(llorch_tokenizer *t, const llorch_gguf_kv *kv_merges, char *ap, llorch_errmsg *em) {
  int rc;
  uint64_t cursor;
  t->n_merges = (uint32_t)kv_merges->arr_n;
  if (tok_map_init(&t->merge_map, t->n_merges) != 0) {
    return LLORCH_ENOMEM;
  }
  cursor = 0;
  for (uint32_t i = 0; i < t->n_merges; i++) {
    llorch_gguf_str s = llorch_gguf_arr_str(kv_merges, i, &cursor);
    /* "left right": llama.cpp splits at the first space after the first byte */
    const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
    if (!sp) {
      char shown[41];
      return llorch_errmsg_set(em, LLORCH_EFORMAT,
                               "tokenizer.ggml.merges[%u] = '%s' is not two tokens separated by a space", i,
                               vocab_printable(shown, sizeof(shown), s.ptr, s.len));
    }
    uint32_t alen = (uint32_t)(sp - s.ptr), blen = (uint32_t)(s.len - alen - 1);
    memcpy(ap, s.ptr, alen);
    memcpy(ap + alen, sp + 1, blen);
    /* a repeated pair keeps its first (lowest) rank, as llama.cpp's emplace does */
    rc = tok_map_put(&t->merge_map, ap, alen + blen, alen, (int32_t)i, NULL);
    if (rc == LLORCH_ENOMEM) return rc;
    ap += alen + blen;
  }
  return 0;
}

/* Special ids (BOS, EOS, EOT, EOM, UNK, PAD) and the add_* flags. */
static int vocab_load_specials(llorch_tokenizer *t, const llorch_gguf *g, llorch_errmsg *em) {
  int rc;
  int32_t n = t->n_vocab;
  if ((rc = vocab_read_special(g, "tokenizer.ggml.bos_token_id", n, &t->bos, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.eos_token_id", n, &t->eos, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.eot_token_id", n, &t->eot, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.eom_token_id", n, &t->eom, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.unknown_token_id", n, &t->unk, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.padding_token_id", n, &t->pad, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.fim_pre_token_id", n, &t->fim_pre, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.fim_suf_token_id", n, &t->fim_suf, em)) != 0 ||
      (rc = vocab_read_special(g, "tokenizer.ggml.fim_mid_token_id", n, &t->fim_mid, em)) != 0)
    return rc;
  /* defaults that fall outside a small vocabulary are dropped, as llama.cpp does */
  if (t->bos >= n) t->bos = -1;
  if (t->eos >= n) t->eos = -1;
  if (t->unk >= n) t->unk = -1;
  if ((rc = vocab_read_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, em)) != 0 ||
      (rc = vocab_read_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, em)) != 0 ||
      (rc = vocab_read_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, em)) != 0)
    return rc;
  if (t->add_bos && t->bos < 0) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.add_bos_token is true, but there is no BOS token");
  }
  if (t->add_eos && t->eos < 0) {
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tokenizer.ggml.add_eos_token is true, but there is no EOS token");
  }
  return 0;
}

/* End of generation: by id from metadata, and by text as llama.cpp does. */
static void vocab_mark_eog(llorch_tokenizer *t) {
  if (t->eot < 0) {
    for (size_t k = 0; k < N_OF(eot_texts) && t->eot < 0; k++) t->eot = vocab_find_str(t, eot_texts[k]);
  }
  if (t->eot >= 0) t->tokens[t->eot].attr |= TOK_ATTR_CONTROL;
  vocab_mark(t, fim_texts, N_OF(fim_texts), false);
  /* FIM ids absent from the metadata: by text, as llama.cpp does (fim_texts
   * holds 8 prefix, then 8 suffix, then 8 middle names) */
  int32_t *fim[3] = {&t->fim_pre, &t->fim_suf, &t->fim_mid};
  for (size_t k = 0; k < N_OF(fim_texts); k++)
    if (*fim[k / 8] < 0) *fim[k / 8] = vocab_find_str(t, fim_texts[k]);
  vocab_mark(t, fim_eog_texts, N_OF(fim_eog_texts), true);
  vocab_mark(t, eog_texts, N_OF(eog_texts), true);
  for (size_t k = 0; k < N_OF(user_defined_texts); k++) {
    int32_t id = vocab_find_str(t, user_defined_texts[k]);
    if (id >= 0) t->tokens[id].attr = TOK_ATTR_USER_DEFINED;
  }
  if (t->eos >= 0) t->eog[t->eos] = 1;
  if (t->eot >= 0) t->eog[t->eot] = 1;
  if (t->eom >= 0) t->eog[t->eom] = 1;
  {
    /* llama.cpp's two exceptions: with <|return|> and <|call|> (gpt-oss) or
     * <|calls|> and <|flush|> (solar-open), <|end|> is not EOG but
     * USER_DEFINED; with <|tool_response> (gemma4), </s> is a normal token */
    int32_t ret = vocab_find_str(t, "<|return|>"), call = vocab_find_str(t, "<|call|>");
    int32_t calls = vocab_find_str(t, "<|calls|>"), flush = vocab_find_str(t, "<|flush|>");
    int32_t end = vocab_find_str(t, "<|end|>");
    if (calls < 0) calls = call;
    if (end >= 0 && t->eog[end] && ((ret >= 0 && call >= 0) || (calls >= 0 && flush >= 0))) {
      t->eog[end] = 0;
      t->tokens[end].attr = TOK_ATTR_USER_DEFINED;
    }
    int32_t tool = vocab_find_str(t, "<|tool_response>"), s_end = vocab_find_str(t, "</s>");
    if (tool >= 0 && s_end >= 0 && t->eog[s_end]) {
      t->eog[s_end] = 0;
      t->tokens[s_end].attr = TOK_ATTR_NORMAL;
    }
  }
}

/* The special tokens, longest first (the order the partition tries them). */
static int vocab_sort_special(llorch_tokenizer *t) {
  int32_t n = t->n_vocab;
  for (int32_t i = 0; i < n; i++)
    if (t->tokens[i].attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) t->n_special++;
  t->special = malloc((t->n_special ? t->n_special : 1) * sizeof(*t->special));
  if (!t->special) return LLORCH_ENOMEM;
  t->n_special = 0;
  for (int32_t i = 0; i < n; i++)
    if (t->tokens[i].attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN))
      t->special[t->n_special++] = i;
  qsort_r(t->special, t->n_special, sizeof(*t->special), special_cmp_len_desc, t->tokens);
  return 0;
}

/* llama.cpp strips whitespace after Phi-3's special tokens (chosen by model name). */
static void vocab_phi3_rstrip(llorch_tokenizer *t, const llorch_gguf *g) {
  llorch_gguf_str name;
  if (llorch_gguf_get_str(g, "general.name", &name, NULL) == 0) {
    char lname[128];
    snprintf(lname, sizeof(lname), "%.*s", (int)(name.len > 127 ? 127 : name.len), name.ptr);
    lower_ascii(lname);
    if (strstr(lname, "phi-3") || strstr(lname, "phi3")) {
      for (uint32_t k = 0; k < t->n_special; k++) t->tokens[t->special[k]].attr |= TOK_ATTR_RSTRIP;
      static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
      int32_t id = tok_map_get(&t->token_map, "</s>", 4);
      if (id >= 0) t->tokens[id].attr |= TOK_ATTR_RSTRIP;
      for (size_t k = 0; k < 3; k++) {
        id = tok_map_get(&t->token_map, keep[k], (uint32_t)strlen(keep[k]));
        if (id >= 0) t->tokens[id].attr &= (uint16_t)~TOK_ATTR_RSTRIP;
      }
    }
  }
}

int llorch_tokenizer_load(llorch_tokenizer **out, const llorch_gguf *g, llorch_errmsg *em) {
  int rc;
  llorch_gguf_str tmpl;
  vocab_arrays va;
  char *merges_at = NULL;
  *out = NULL;

  llorch_tokenizer *t = calloc(1, sizeof(*t));
  if (!t) return LLORCH_ENOMEM;
  t->bos = t->eos = t->eot = t->eom = t->unk = t->pad = -1;
  t->fim_pre = t->fim_suf = t->fim_mid = -1;

  if ((rc = vocab_load_kind(t, g, em)) != 0) goto fail;
  if ((rc = vocab_load_arrays(t, g, &va, em)) != 0) goto fail;
  t->n_vocab = va.n;
  if ((rc = vocab_load_tokens(t, &va, &merges_at, em)) != 0) goto fail;
  if (va.merges && (rc = vocab_load_merges(t, va.merges, merges_at, em)) != 0) goto fail;
  if ((rc = vocab_load_specials(t, g, em)) != 0) goto fail;
  vocab_mark_eog(t);
  if ((rc = vocab_sort_special(t)) != 0) goto fail;
  vocab_phi3_rstrip(t, g);

  rc = llorch_gguf_get_str(g, "tokenizer.chat_template", &tmpl, em);
  if (rc == 0) {
    t->chat_template = str_dup_n(tmpl.ptr, tmpl.len);
    if (!t->chat_template) {
      rc = LLORCH_ENOMEM;
      goto fail;
    }
  } else if (rc != LLORCH_ENOTFOUND) {
    goto fail;
  }

  if (t->kind == LLORCH_TOKENIZER_BPE && (rc = tok_bpe_init(t, em)) != 0) goto fail;

  *out = t;
  return 0;

fail:
  llorch_tokenizer_free(t);
  return rc;
}

int llorch_tokenizer_load_file(llorch_tokenizer **out, const char *path, llorch_errmsg *em) {
  llorch_gguf *g;
  *out = NULL;
  int rc = llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, em);
  if (rc != 0) return rc;
  rc = llorch_tokenizer_load(out, g, em);
  llorch_gguf_close(g);
  return rc;
}

void llorch_tokenizer_free(llorch_tokenizer *t) {
  if (!t) return;
  tok_bpe_free(t);
  tok_map_free(&t->token_map);
  tok_map_free(&t->merge_map);
  free(t->special);
  free(t->eog);
  free(t->tokens);
  free(t->arena);
  free(t->chat_template);
  free(t);
}

/* ---- vocabulary queries ---- */

llorch_tokenizer_kind llorch_tokenizer_kind_of(const llorch_tokenizer *t) { return t->kind; }
const char *llorch_tokenizer_pre_name(const llorch_tokenizer *t) { return t->pre_name; }
int32_t llorch_tokenizer_n_vocab(const llorch_tokenizer *t) { return t->n_vocab; }
int32_t llorch_tokenizer_bos(const llorch_tokenizer *t) { return t->bos; }
int32_t llorch_tokenizer_eos(const llorch_tokenizer *t) { return t->eos; }
int32_t llorch_tokenizer_eot(const llorch_tokenizer *t) { return t->eot; }
int32_t llorch_tokenizer_pad(const llorch_tokenizer *t) { return t->pad; }
bool llorch_tokenizer_fim(const llorch_tokenizer *t, int32_t ids[3]) {
  ids[0] = t->fim_pre;
  ids[1] = t->fim_suf;
  ids[2] = t->fim_mid;
  return t->fim_pre >= 0 && t->fim_suf >= 0 && t->fim_mid >= 0;
}
bool llorch_tokenizer_add_bos(const llorch_tokenizer *t) { return t->add_bos; }
bool llorch_tokenizer_add_eos(const llorch_tokenizer *t) { return t->add_eos; }
const char *llorch_tokenizer_chat_template(const llorch_tokenizer *t) { return t->chat_template; }

bool llorch_tokenizer_is_eog(const llorch_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab && t->eog[id];
}

bool llorch_tokenizer_is_special(const llorch_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab &&
         (t->tokens[id].attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN));
}

/* The type as llorch (and llama.cpp) treat the token, after the by-text
 * overrides applied at load. */
llorch_token_attr llorch_tokenizer_token_attr(const llorch_tokenizer *t, int32_t id) {
  if (id < 0 || id >= t->n_vocab) return LLORCH_TOKEN_UNDEFINED;
  uint16_t a = t->tokens[id].attr;
  if (a & TOK_ATTR_CONTROL) return LLORCH_TOKEN_CONTROL;
  if (a & TOK_ATTR_USER_DEFINED) return LLORCH_TOKEN_USER_DEFINED;
  if (a & TOK_ATTR_UNKNOWN) return LLORCH_TOKEN_UNKNOWN;
  if (a & TOK_ATTR_BYTE) return LLORCH_TOKEN_BYTE;
  if (a & TOK_ATTR_UNUSED) return LLORCH_TOKEN_UNUSED;
  if (a & TOK_ATTR_NORMAL) return LLORCH_TOKEN_NORMAL;
  return LLORCH_TOKEN_UNDEFINED;
}

const char *llorch_tokenizer_token_text(const llorch_tokenizer *t, int32_t id, size_t *len) {
  if (id < 0 || id >= t->n_vocab) return NULL;
  if (len) *len = t->tokens[id].len;
  return t->tokens[id].text;
}

int32_t llorch_tokenizer_find(const llorch_tokenizer *t, const char *text, size_t len) {
  if (len > UINT32_MAX) return -1;
  return tok_map_get(&t->token_map, text, (uint32_t)len);
}

/* ---- encoding: special-token partition, then the algorithm ---- */

typedef struct fragment {
  int32_t token; /* -1: raw text [off, off+len) */
  size_t off, len;
} fragment;

typedef struct frag_list {
  fragment *v;
  size_t n, cap;
} frag_list;

static int frag_push(frag_list *l, int32_t token, size_t off, size_t len) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    fragment *v = realloc(l->v, cap * sizeof(*v));
    if (!v) return LLORCH_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = (fragment){token, off, len};
  return 0;
}

/*
 * Cuts special-token text out of the raw fragments, one special token at a
 * time from the longest, as llama.cpp's tokenizer_st_partition does (the
 * order matters when special texts overlap). USER_DEFINED tokens are always
 * cut out; CONTROL and UNKNOWN ones only with parse_special.
 */
/* The first match of sp in [from, end) that may become the token: a CONTROL
 * or UNKNOWN token's text only where no byte is marked plain. */
static const char *special_find(const char *text, size_t from, size_t end, const tok_token *sp,
                                const uint8_t *plain) {
  bool check = plain && (sp->attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN));
  while (end - from >= sp->len) {
    const char *m = memmem(text + from, end - from, sp->text, sp->len);
    if (!m || !check) return m;
    size_t at = (size_t)(m - text);
    bool ok = true;
    for (size_t i = 0; i < sp->len && ok; i++) ok = !plain[at + i];
    if (ok) return m;
    from = at + 1;
  }
  return NULL;
}

static int vocab_partition(const llorch_tokenizer *t, const char *text, size_t len, bool parse_special,
                           const uint8_t *plain, frag_list *frags) {
  frag_list next = {0};
  int rc = 0;
  if (len > 0 && (rc = frag_push(frags, -1, 0, len)) != 0) return rc;
  for (uint32_t s = 0; s < t->n_special; s++) {
    const tok_token *sp = &t->tokens[t->special[s]];
    if (!parse_special && (sp->attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) continue;
    bool found = false;
    for (size_t f = 0; f < frags->n && !found; f++)
      if (frags->v[f].token < 0 && frags->v[f].len >= sp->len &&
          special_find(text, frags->v[f].off, frags->v[f].off + frags->v[f].len, sp, plain))
        found = true;
    if (!found) continue;
    next.n = 0;
    for (size_t f = 0; f < frags->n; f++) {
      fragment fr = frags->v[f];
      if (fr.token >= 0) {
        if ((rc = frag_push(&next, fr.token, 0, 0)) != 0) goto out;
        continue;
      }
      size_t off = fr.off, rem = fr.len;
      while (rem > 0) {
        const char *m = rem >= sp->len ? special_find(text, off, off + rem, sp, plain) : NULL;
        if (!m) {
          if ((rc = frag_push(&next, -1, off, rem)) != 0) goto out;
          break;
        }
        size_t at = (size_t)(m - text), left = at - off;
        if (sp->attr & TOK_ATTR_LSTRIP)
          while (left > 0 && isspace((unsigned char)text[off + left - 1])) left--;
        if (left > 0 && (rc = frag_push(&next, -1, off, left)) != 0) goto out;
        if ((rc = frag_push(&next, t->special[s], 0, 0)) != 0) goto out;
        size_t roff = at + sp->len, rlen = off + rem - roff;
        if (sp->attr & TOK_ATTR_RSTRIP)
          while (rlen > 0 && isspace((unsigned char)text[roff])) {
            roff++;
            rlen--;
          }
        off = roff;
        rem = rlen;
      }
    }
    frag_list tmp = *frags;
    *frags = next;
    next = tmp;
  }
out:
  free(next.v);
  return rc;
}

int llorch_tokenize(const llorch_tokenizer *t, const char *text, size_t len, unsigned flags,
                    llorch_tokens *out, llorch_errmsg *em) {
  return llorch_tokenize_masked(t, text, len, flags, NULL, out, em);
}

int llorch_tokenize_masked(const llorch_tokenizer *t, const char *text, size_t len, unsigned flags,
                           const uint8_t *plain, llorch_tokens *out, llorch_errmsg *em) {
  frag_list frags = {0};
  char *buf = NULL;
  size_t n_before = out->n;
  bool add_special = flags & LLORCH_TOKENIZE_ADD_SPECIAL;
  int rc = vocab_partition(t, text, len, flags & LLORCH_TOKENIZE_PARSE_SPECIAL, plain, &frags);
  if (rc != 0) goto fail;

  if (((add_special && t->add_bos) || (flags & LLORCH_TOKENIZE_ADD_BOS)) && t->bos >= 0)
    if ((rc = llorch_tokens_push(out, t->bos)) != 0) goto fail;

  bool prev_special = true; /* SPM: the text at the start gets the space prefix */
  for (size_t f = 0; f < frags.n; f++) {
    const fragment *fr = &frags.v[f];
    if (fr->token >= 0) {
      if ((rc = llorch_tokens_push(out, fr->token)) != 0) goto fail;
      prev_special = true;
      continue;
    }
    if (t->kind == LLORCH_TOKENIZER_BPE) {
      rc = tok_bpe_encode(t, text + fr->off, fr->len, out);
    } else {
      /* SentencePiece sees spaces as U+2581 and, after a special token or at
       * the start, one extra leading space */
      size_t cap = 3 * (fr->len + 1), k = 0;
      char *nb = realloc(buf, cap);
      if (!nb) {
        rc = LLORCH_ENOMEM;
        goto fail;
      }
      buf = nb;
      if (t->add_space_prefix && prev_special) {
        memcpy(buf, "\xe2\x96\x81", 3);
        k = 3;
      }
      for (size_t i = 0; i < fr->len; i++) {
        char c = text[fr->off + i];
        if (c == ' ') {
          memcpy(buf + k, "\xe2\x96\x81", 3);
          k += 3;
        } else {
          buf[k++] = c;
        }
      }
      rc = tok_spm_encode(t, buf, k, out, em);
    }
    if (rc != 0) goto fail;
    prev_special = false;
  }

  if (add_special && t->add_eos && t->eos >= 0)
    if ((rc = llorch_tokens_push(out, t->eos)) != 0) goto fail;
  free(frags.v);
  free(buf);
  return 0;

fail:
  out->n = n_before;
  free(frags.v);
  free(buf);
  if (rc == LLORCH_ENOMEM) llorch_errmsg_set(em, rc, "out of memory while tokenizing %zu bytes", len);
  else if (rc == LLORCH_ELIMIT) llorch_errmsg_set(em, rc, "text of %zu bytes is too long to tokenize", len);
  return rc;
}

/* ---- decoding ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return 0;
}

/* Appends (or measures, when buf is NULL) a piece; returns its full length. */
static size_t piece_put(char *buf, size_t cap, size_t at, const char *src, size_t n) {
  if (buf && at < cap) memcpy(buf + at, src, n <= cap - at ? n : cap - at);
  return at + n;
}

int llorch_token_piece(const llorch_tokenizer *t, int32_t id, unsigned flags, char *buf, size_t cap) {
  if (id < 0 || id >= t->n_vocab) return LLORCH_ERANGE;
  const tok_token *tk = &t->tokens[id];
  size_t n = 0;
  if (tk->attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)) {
    if (!(flags & LLORCH_DETOK_RENDER_SPECIAL)) return 0;
    n = piece_put(buf, cap, 0, tk->text, tk->len);
  } else if (tk->attr & TOK_ATTR_USER_DEFINED) {
    n = piece_put(buf, cap, 0, tk->text, tk->len); /* always shown, raw */
  } else if (tk->attr & TOK_ATTR_NORMAL) {
    if (t->kind == LLORCH_TOKENIZER_SPM) {
      for (uint32_t i = 0; i < tk->len;) {
        if (i + 3 <= tk->len && memcmp(tk->text + i, "\xe2\x96\x81", 3) == 0) {
          n = piece_put(buf, cap, n, " ", 1);
          i += 3;
        } else {
          n = piece_put(buf, cap, n, tk->text + i, 1);
          i++;
        }
      }
    } else {
      /* byte-level: each code point of the token stands for one byte */
      size_t off = 0;
      while (off < tk->len) {
        size_t start = off;
        uint32_t c = tok_utf8_decode_lenient(tk->text, tk->len, &off);
        int b = tok_cpt_to_byte(c);
        if (b >= 0) {
          char ch = (char)b;
          n = piece_put(buf, cap, n, &ch, 1);
        } else {
          /* what llama.cpp writes for a code point that is no byte */
          char tmp[64];
          int k = snprintf(tmp, sizeof(tmp), "[UNK_BYTE_0x");
          for (size_t j = start; j < off && k < 40; j++)
            k += snprintf(tmp + k, sizeof(tmp) - (size_t)k, "%02x", (uint8_t)tk->text[j]);
          n = piece_put(buf, cap, n, tmp, (size_t)k);
          n = piece_put(buf, cap, n, tk->text, tk->len);
          n = piece_put(buf, cap, n, "]", 1);
        }
      }
    }
  } else if (tk->attr & TOK_ATTR_BYTE) {
    char ch = (char)(hexval(tk->text[3]) << 4 | hexval(tk->text[4]));
    n = piece_put(buf, cap, 0, &ch, 1);
  }
  return n > INT32_MAX ? INT32_MAX : (int)n;
}

int llorch_detokenize(const llorch_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, char **out,
                      size_t *out_len, llorch_errmsg *em) {
  size_t total = 0;
  *out = NULL;
  if (out_len) *out_len = 0;
  for (size_t i = 0; i < n; i++) {
    int k = llorch_token_piece(t, ids[i], flags, NULL, 0);
    if (k < 0)
      return llorch_errmsg_set(em, k, "token id %d at position %zu is out of range (vocabulary has %d tokens)",
                               ids[i], i, t->n_vocab);
    total += (size_t)k;
  }
  char *s = malloc(total + 1);
  if (!s) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory decoding %zu tokens", n);
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    int k = llorch_token_piece(t, ids[i], flags, s + at, total - at);
    /* llama.cpp drops one leading space of the first piece for SPM vocabularies
     * that add a space prefix, so decode(encode(text)) gives text back */
    if (i == 0 && t->add_space_prefix && k > 0 && s[at] == ' ') {
      memmove(s + at, s + at + 1, (size_t)k - 1);
      k--;
    }
    at += (size_t)k;
  }
  s[at] = 0;
  *out = s;
  if (out_len) *out_len = at;
  return 0;
}
