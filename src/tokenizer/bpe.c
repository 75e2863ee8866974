/*
 * Byte-level BPE (tokenizer.ggml.model = "gpt2").
 *
 *   text -> code points (invalid UTF-8 -> U+FFFD, as llama.cpp)
 *        -> words, split by the pre-tokenizer's regexes (PCRE2, UTF + UCP, JIT)
 *        -> each word's bytes shown as GPT-2 unicode (byte_to_cpt)
 *        -> merges applied lowest rank first, leftmost first
 *        -> token ids (an unknown final piece falls back to its single bytes)
 *
 * Several regexes are applied in turn, each one splitting the pieces the
 * previous one produced; text a regex does not match stays a piece of its own.
 * That is llama.cpp's unicode_regex_split, and what the test vectors expect.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

/* ---- the split regexes ---- */

/*
 * "\s" is spelled out as Unicode White_Space (tab..CR, NEL, and the Z
 * categories), the set llama.cpp's own tables use. PCRE2's \s under UCP
 * leaves out U+0085, and which code points it takes has changed between
 * PCRE2 releases; an explicit class does not.
 */
#define WS "\\t-\\r\\x{85}\\p{Z}"
#define S_ "[" WS "]"
#define NS_ "[^" WS "]"
#define CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

/* GPT-2's pattern; llama.cpp's hand-written version also takes a lone "\s+". */
static const char re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" S_ "+(?!" NS_ ")|" S_ "+";
/* Llama 3: case-insensitive contractions, numbers in groups of up to three. */
static const char re_llama3[] = CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS
                                             "\\p{L}\\p{N}]+[\\r\\n]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+";
/* Qwen2: as Llama 3 but every digit on its own. */
static const char re_qwen2[] = CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS
                                            "\\p{L}\\p{N}]+[\\r\\n]*|" S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+";
/* llama.cpp's fallback for a gpt2 vocabulary without a known pre-tokenizer. */
static const char re_default_punct[] = "[\\p{P}\\$\\+<=>\\^~\\|]+";
static const char re_numbers[] = "\\p{N}+";
static const char re_ascii3[] = "[0-9][0-9][0-9]";
static const char re_digit[] = "\\p{N}";

int tok_pre_compile(tok_pre pre, void **re_out, int *n_out, llorch_errmsg *em) {
  const char *pats[TOK_MAX_REGEX];
  int n = 0;
  *n_out = 0;
  switch (pre) {
  case TOK_PRE_DEFAULT:
    pats[n++] = re_default_punct;
    pats[n++] = re_gpt2;
    pats[n++] = re_numbers;
    pats[n++] = re_ascii3;
    break;
  case TOK_PRE_GPT2: pats[n++] = re_gpt2; break;
  case TOK_PRE_LLAMA3: pats[n++] = re_llama3; break;
  case TOK_PRE_QWEN2: pats[n++] = re_qwen2; break;
  case TOK_PRE_STARCODER:
    pats[n++] = re_digit;
    pats[n++] = re_gpt2;
    break;
  }
  for (int i = 0; i < n; i++) {
    int err;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pats[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                                   &erroff, NULL);
    if (!re) {
      char msg[160];
      pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof(msg));
      tok_pre_free(re_out, *n_out);
      /* our own constant pattern: a programming error, but reported, not asserted */
      return llorch_errmsg_set(em, LLORCH_EINVAL, "pre-tokenizer regex %d does not compile at %zu: %s", i,
                               (size_t)erroff, msg);
    }
    /* JIT is a speed-up only: without it (unsupported CPU) pcre2_match interprets */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    re_out[i] = re;
    *n_out = i + 1;
  }
  return 0;
}

void tok_pre_free(void **re, int n) {
  for (int i = 0; i < n; i++) pcre2_code_free((pcre2_code *)re[i]);
}

int tok_bpe_init(llorch_tokenizer *t, llorch_errmsg *em) { return tok_pre_compile(t->pre, t->re, &t->n_re, em); }

void tok_bpe_free(llorch_tokenizer *t) {
  tok_pre_free(t->re, t->n_re);
  t->n_re = 0;
}

/* ---- per-call scratch ---- */

typedef struct span_list {
  tok_word *v;
  size_t n, cap;
} span_list;

static int span_push(span_list *l, size_t off, size_t len) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    tok_word *v = realloc(l->v, cap * sizeof(*v));
    if (!v) return LLORCH_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = (tok_word){(uint32_t)off, (uint32_t)len};
  return 0;
}

typedef struct symbol {
  int32_t prev, next;
  uint32_t off; /* bytes into the mapped word */
  uint32_t n;   /* bytes; 0 once merged into its left neighbour */
} symbol;

typedef struct bigram {
  int32_t left, right;
  int32_t rank;
  uint32_t size; /* bytes of left + right when queued */
} bigram;

typedef struct bpe_scratch {
  char *word;       /* mapped word (GPT-2 unicode) */
  size_t word_cap;
  symbol *sym;
  size_t sym_cap;
  bigram *heap;
  size_t heap_n, heap_cap;
} bpe_scratch;

/* ---- the merge queue: a binary min-heap on (rank, left) ---- */

static bool bigram_before(const bigram *a, const bigram *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(bpe_scratch *s, bigram b) {
  if (s->heap_n == s->heap_cap) {
    size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
    bigram *h = realloc(s->heap, cap * sizeof(*h));
    if (!h) return LLORCH_ENOMEM;
    s->heap = h;
    s->heap_cap = cap;
  }
  size_t i = s->heap_n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!bigram_before(&b, &s->heap[p])) break;
    s->heap[i] = s->heap[p];
    i = p;
  }
  s->heap[i] = b;
  return 0;
}

static bigram heap_pop(bpe_scratch *s) {
  bigram top = s->heap[0], last = s->heap[--s->heap_n];
  size_t i = 0, n = s->heap_n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && bigram_before(&s->heap[c + 1], &s->heap[c])) c++;
    if (!bigram_before(&s->heap[c], &last)) break;
    s->heap[i] = s->heap[c];
    i = c;
  }
  if (n > 0) s->heap[i] = last;
  return top;
}

static int bpe_try_bigram(const llorch_tokenizer *t, bpe_scratch *s, int32_t left, int32_t right) {
  if (left < 0 || right < 0) return 0;
  const symbol *l = &s->sym[left], *r = &s->sym[right];
  int32_t rank = tok_map_get2(&t->merge_map, s->word + l->off, l->n, s->word + r->off, r->n);
  if (rank < 0) return 0;
  return heap_push(s, (bigram){left, right, rank, l->n + r->n});
}

/* Merges one mapped word and appends its tokens. */
static int bpe_merge_word(const llorch_tokenizer *t, bpe_scratch *s, size_t wlen, llorch_tokens *out) {
  int rc;
  int32_t id;
  if (t->ignore_merges && (id = tok_map_get(&t->token_map, s->word, (uint32_t)wlen)) >= 0)
    return llorch_tokens_push(out, id);

  /* one symbol per UTF-8 character of the mapped word */
  if (wlen > s->sym_cap) {
    symbol *v = realloc(s->sym, wlen * sizeof(*v));
    if (!v) return LLORCH_ENOMEM;
    s->sym = v;
    s->sym_cap = wlen;
  }
  int32_t ns = 0;
  for (size_t off = 0; off < wlen;) {
    size_t n = tok_utf8_len((uint8_t)s->word[off]);
    if (n > wlen - off) n = wlen - off;
    s->sym[ns] = (symbol){ns - 1, off + n == wlen ? -1 : ns + 1, (uint32_t)off, (uint32_t)n};
    ns++;
    off += n;
  }
  s->heap_n = 0;
  for (int32_t i = 1; i < ns; i++)
    if ((rc = bpe_try_bigram(t, s, i - 1, i)) != 0) return rc;

  while (s->heap_n > 0) {
    bigram b = heap_pop(s);
    symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
    /* stale: one side has been merged since this pair was queued */
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) s->sym[r->next].prev = b.left;
    if ((rc = bpe_try_bigram(t, s, l->prev, b.left)) != 0) return rc;
    if ((rc = bpe_try_bigram(t, s, b.left, l->next)) != 0) return rc;
  }

  for (int32_t i = 0; i != -1 && ns > 0; i = s->sym[i].next) {
    const symbol *sy = &s->sym[i];
    id = tok_map_get(&t->token_map, s->word + sy->off, sy->n);
    if (id >= 0) {
      if ((rc = llorch_tokens_push(out, id)) != 0) return rc;
      continue;
    }
    /* no such token: llama.cpp emits the tokens of its single bytes, if any */
    for (uint32_t k = 0; k < sy->n; k++) {
      id = tok_map_get(&t->token_map, s->word + sy->off + k, 1);
      if (id >= 0 && (rc = llorch_tokens_push(out, id)) != 0) return rc;
    }
  }
  return 0;
}

/* Splits every span of `in` by one regex into `out`. */
static int bpe_split(const pcre2_code *re, const char *subj, const span_list *in, span_list *out,
                     pcre2_match_data *md, pcre2_match_context *mctx) {
  int rc;
  out->n = 0;
  for (size_t i = 0; i < in->n; i++) {
    size_t start = in->v[i].off, end = start + in->v[i].len, pos = start;
    while (pos < end) {
      int m = pcre2_match(re, (PCRE2_SPTR)subj + start, end - start, pos - start, PCRE2_NO_UTF_CHECK, md, mctx);
      if (m == PCRE2_ERROR_NOMATCH) break;
      if (m < 0) return LLORCH_ELIMIT; /* JIT stack or match limit */
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
      size_t ms = start + ov[0], me = start + ov[1];
      if (me == ms) { /* cannot happen with our patterns; never loop on it */
        pos = ms + 1;
        continue;
      }
      if (ms > pos && (rc = span_push(out, pos, ms - pos)) != 0) return rc;
      if ((rc = span_push(out, ms, me - ms)) != 0) return rc;
      pos = me;
    }
    if (pos < end && (rc = span_push(out, pos, end - pos)) != 0) return rc;
  }
  return 0;
}

int tok_pre_split(void *const *re, int n_re, const char *text, size_t len, char **norm_out,
                  tok_word **words_out, size_t *n_words) {
  int rc = 0;
  char *norm = NULL, *subj = NULL;
  span_list a = {0}, b = {0};
  pcre2_match_data *md = NULL;
  pcre2_match_context *mctx = NULL;
  pcre2_jit_stack *jstack = NULL;
  *norm_out = NULL;
  *words_out = NULL;
  *n_words = 0;
  if (len > UINT32_MAX / 4) return LLORCH_ELIMIT;

  /*
   * norm: the text re-encoded code point by code point, as llama.cpp sees it
   * (a bad byte becomes the 3 bytes of U+FFFD). subj: the same with lone
   * surrogates (which llama.cpp's decoder lets through but PCRE2 rejects)
   * replaced by U+E000, another 3-byte code point outside \p{L}\p{N}\s, so
   * byte offsets agree between the two.
   */
  norm = malloc(3 * len + 4);
  subj = malloc(3 * len + 4);
  if (!norm || !subj) {
    rc = LLORCH_ENOMEM;
    goto out;
  }
  size_t nlen = 0;
  for (size_t off = 0; off < len;) {
    uint32_t c = tok_utf8_decode_lenient(text, len, &off);
    size_t k = tok_utf8_encode(c, norm + nlen);
    if (c >= 0xd800 && c <= 0xdfff) tok_utf8_encode(0xe000, subj + nlen);
    else memcpy(subj + nlen, norm + nlen, k);
    nlen += k;
  }
  if (nlen == 0) goto out;

  md = pcre2_match_data_create(4, NULL);
  mctx = pcre2_match_context_create(NULL);
  /* a long run of spaces or letters can outgrow JIT's default 32 KiB stack */
  jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
  if (!md || !mctx || !jstack) {
    rc = LLORCH_ENOMEM;
    goto out;
  }
  pcre2_jit_stack_assign(mctx, NULL, jstack);

  if ((rc = span_push(&a, 0, nlen)) != 0) goto out;
  for (int i = 0; i < n_re; i++) {
    if ((rc = bpe_split((const pcre2_code *)re[i], subj, &a, &b, md, mctx)) != 0) goto out;
    span_list tmp = a;
    a = b;
    b = tmp;
  }
  *words_out = a.v;
  *n_words = a.n;
  a.v = NULL;
  *norm_out = norm;
  norm = NULL;

out:
  pcre2_jit_stack_free(jstack);
  pcre2_match_context_free(mctx);
  pcre2_match_data_free(md);
  free(a.v);
  free(b.v);
  free(norm);
  free(subj);
  return rc;
}

/* Where a word's tokens already are in the output: the word cache. */
typedef struct cached_word {
  size_t pos; /* index into out->ids */
  size_t n;   /* tokens */
} cached_word;

int tok_bpe_encode(const llorch_tokenizer *t, const char *text, size_t len, llorch_tokens *out) {
  char *norm = NULL;
  tok_word *words = NULL;
  size_t n_words = 0;
  bpe_scratch s = {0};
  tok_map cache = {0};
  cached_word *cw = NULL;
  int32_t n_cw = 0;
  if (len == 0) return 0;
  int rc = tok_pre_split(t->re, t->n_re, text, len, &norm, &words, &n_words);
  if (rc != 0) return rc;
  /*
   * Natural text repeats its words (" the", ",", "\n"); a word's tokens
   * depend on the word alone, so each distinct word is merged once per call
   * and its tokens copied after that. The merge tables are large (hundreds
   * of thousands of entries) and their lookups miss the cache; this is what
   * keeps long prompts fast.
   */
  if (n_words > 16) {
    cw = malloc(n_words * sizeof(*cw));
    if (!cw || (rc = tok_map_init(&cache, (uint32_t)(n_words / 4 + 16))) != 0) {
      rc = LLORCH_ENOMEM;
      goto out;
    }
  }

  for (size_t w = 0; w < n_words; w++) {
    const char *wp = norm + words[w].off;
    if (cw) {
      int32_t hit = tok_map_get(&cache, wp, words[w].len);
      if (hit >= 0) {
        for (size_t k = 0; k < cw[hit].n; k++)
          if ((rc = llorch_tokens_push(out, out->ids[cw[hit].pos + k])) != 0) goto out;
        continue;
      }
    }
    size_t pos = out->n;
    size_t need = (size_t)words[w].len * 2;
    if (need > s.word_cap) {
      char *nw = realloc(s.word, need);
      if (!nw) {
        rc = LLORCH_ENOMEM;
        goto out;
      }
      s.word = nw;
      s.word_cap = need;
    }
    size_t wl = 0;
    for (uint32_t k = 0; k < words[w].len; k++)
      wl += tok_utf8_encode(tok_byte_to_cpt((uint8_t)norm[words[w].off + k]), s.word + wl);
    if ((rc = bpe_merge_word(t, &s, wl, out)) != 0) goto out;
    if (cw) {
      if ((rc = tok_map_put(&cache, wp, words[w].len, words[w].len, n_cw, NULL)) != 0) goto out;
      cw[n_cw++] = (cached_word){pos, out->n - pos};
    }
  }

out:
  tok_map_free(&cache);
  free(cw);
  free(words);
  free(s.word);
  free(s.sym);
  free(s.heap);
  free(norm);
  return rc;
}
