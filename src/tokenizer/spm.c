/*
 * SentencePiece BPE (tokenizer.ggml.model = "llama"), as llama.cpp runs it:
 * start from one symbol per UTF-8 character, repeatedly merge the adjacent
 * pair whose concatenation is the vocabulary token with the highest score
 * (leftmost on ties), then emit each symbol's token, or its bytes as <0xXX>
 * byte-fallback tokens when the symbol is not in the vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

typedef struct spm_symbol {
  int32_t prev, next;
  uint32_t off; /* bytes into the text */
  uint32_t n;   /* bytes; 0 once merged away */
} spm_symbol;

typedef struct spm_bigram {
  int32_t left, right;
  float score;
  uint32_t size; /* bytes of left + right when queued */
} spm_bigram;

typedef struct spm_heap {
  spm_bigram *v;
  size_t n, cap;
} spm_heap;

/* higher score first, then leftmost: llama.cpp's llm_bigram_spm order */
static bool spm_before(const spm_bigram *a, const spm_bigram *b) {
  return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int spm_heap_push(spm_heap *h, spm_bigram b) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    spm_bigram *v = realloc(h->v, cap * sizeof(*v));
    if (!v) return LLORCH_ENOMEM;
    h->v = v;
    h->cap = cap;
  }
  size_t i = h->n++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!spm_before(&b, &h->v[p])) break;
    h->v[i] = h->v[p];
    i = p;
  }
  h->v[i] = b;
  return 0;
}

static spm_bigram spm_heap_pop(spm_heap *h) {
  spm_bigram top = h->v[0], last = h->v[--h->n];
  size_t i = 0, n = h->n;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && spm_before(&h->v[c + 1], &h->v[c])) c++;
    if (!spm_before(&h->v[c], &last)) break;
    h->v[i] = h->v[c];
    i = c;
  }
  if (n > 0) h->v[i] = last;
  return top;
}

static int spm_try_bigram(const llorch_tokenizer *t, const char *text, spm_symbol *sym, spm_heap *h,
                          int32_t left, int32_t right) {
  if (left < 0 || right < 0) return 0;
  /* left and right are adjacent in the text, so their concatenation is contiguous */
  int32_t id = tok_map_get(&t->token_map, text + sym[left].off, sym[left].n + sym[right].n);
  if (id < 0) return 0;
  return spm_heap_push(h, (spm_bigram){left, right, t->tokens[id].score, sym[left].n + sym[right].n});
}

/* The token for one byte: <0xXX>, else the byte as a one-character token. */
static int32_t spm_byte_token(const llorch_tokenizer *t, uint8_t b) {
  char buf[8];
  snprintf(buf, sizeof(buf), "<0x%02X>", b);
  int32_t id = tok_map_get(&t->token_map, buf, 6);
  if (id >= 0) return id;
  char c = (char)b;
  return tok_map_get(&t->token_map, &c, 1);
}

int tok_spm_encode(const llorch_tokenizer *t, const char *text, size_t len, llorch_tokens *out,
                   llorch_errmsg *em) {
  int rc = 0;
  spm_heap h = {0};
  if (len == 0) return 0;
  if (len > UINT32_MAX / 2) return llorch_errmsg_set(em, LLORCH_ELIMIT, "text of %zu bytes is too long", len);
  spm_symbol *sym = malloc(len * sizeof(*sym));
  if (!sym) return LLORCH_ENOMEM;

  int32_t ns = 0;
  for (size_t off = 0; off < len;) {
    size_t n = tok_utf8_len((uint8_t)text[off]);
    if (n > len - off) n = len - off;
    sym[ns] = (spm_symbol){ns - 1, off + n == len ? -1 : ns + 1, (uint32_t)off, (uint32_t)n};
    ns++;
    off += n;
  }
  for (int32_t i = 1; i < ns; i++)
    if ((rc = spm_try_bigram(t, text, sym, &h, i - 1, i)) != 0) goto out;

  while (h.n > 0) {
    spm_bigram b = spm_heap_pop(&h);
    spm_symbol *l = &sym[b.left], *r = &sym[b.right];
    if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
    l->n += r->n;
    r->n = 0;
    l->next = r->next;
    if (r->next >= 0) sym[r->next].prev = b.left;
    if ((rc = spm_try_bigram(t, text, sym, &h, l->prev, b.left)) != 0) goto out;
    if ((rc = spm_try_bigram(t, text, sym, &h, b.left, l->next)) != 0) goto out;
  }

  for (int32_t i = 0; i != -1; i = sym[i].next) {
    int32_t id = tok_map_get(&t->token_map, text + sym[i].off, sym[i].n);
    if (id >= 0) {
      if ((rc = llorch_tokens_push(out, id)) != 0) goto out;
      continue;
    }
    /* A merged symbol is always a token (pairs are only queued when they
     * are), so this is a single character the vocabulary lacks. */
    for (uint32_t k = 0; k < sym[i].n; k++) {
      uint8_t byte = (uint8_t)text[sym[i].off + k];
      id = spm_byte_token(t, byte);
      if (id < 0) id = t->unk;
      if (id < 0) {
        rc = llorch_errmsg_set(em, LLORCH_EFORMAT,
                               "byte 0x%02X has no token (no <0x%02X> byte token, no <unk>)", byte, byte);
        goto out;
      }
      if ((rc = llorch_tokens_push(out, id)) != 0) goto out;
    }
  }

out:
  free(h.v);
  free(sym);
  return rc;
}
