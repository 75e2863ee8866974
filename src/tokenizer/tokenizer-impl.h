/*
 * Internals of the tokenizer module: the loaded vocabulary, the string hash
 * map used for token and merge lookup, and the per-algorithm entry points.
 * Not part of the public API (include/llorch/tokenizer.h).
 */
#ifndef LLORCH_TOKENIZER_IMPL_H
#define LLORCH_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/tokenizer.h"

/* ---- token attributes: llama.cpp's bit flags (a token may carry several) ---- */
enum {
  TOK_ATTR_UNDEFINED = 0,
  TOK_ATTR_UNKNOWN = 1 << 0,
  TOK_ATTR_UNUSED = 1 << 1,
  TOK_ATTR_NORMAL = 1 << 2,
  TOK_ATTR_CONTROL = 1 << 3,
  TOK_ATTR_USER_DEFINED = 1 << 4,
  TOK_ATTR_BYTE = 1 << 5,
  TOK_ATTR_LSTRIP = 1 << 7,
  TOK_ATTR_RSTRIP = 1 << 8,
};

/* ---- string hash map (open addressing, keys point into caller-owned memory) ---- */

/*
 * A key is a byte string split in two parts (a, b) so that BPE merge pairs can
 * be looked up without building "left right" strings; plain keys have b empty.
 * Keys may hold any byte, NUL included.
 */
typedef struct tok_map_entry {
  const char *key; /* a then b, contiguous: len bytes; NULL = empty slot */
  uint32_t len;    /* bytes of a + b */
  uint32_t split;  /* bytes of a */
  uint32_t hash;
  int32_t value;
} tok_map_entry;

typedef struct tok_map {
  tok_map_entry *slots; /* (cap) */
  uint32_t cap;         /* power of two */
  uint32_t n;
} tok_map;

int tok_map_init(tok_map *m, uint32_t n_expected);
void tok_map_free(tok_map *m);
/* Inserts (key = a||b contiguous at `key`); returns 0, LLORCH_EEXIST (value
 * of the existing entry in *existing), or LLORCH_ENOMEM. */
int tok_map_put(tok_map *m, const char *key, uint32_t len, uint32_t split, int32_t value,
                int32_t *existing);
/* Looks up the pair (a, b) (need not be contiguous); -1 when absent. */
int32_t tok_map_get2(const tok_map *m, const char *a, uint32_t alen, const char *b,
                     uint32_t blen);
static inline int32_t tok_map_get(const tok_map *m, const char *s, uint32_t len) {
  return tok_map_get2(m, s, len, "", 0);
}

/* ---- pre-tokenizer kinds (tokenizer.ggml.pre) ---- */
typedef enum tok_pre {
  TOK_PRE_DEFAULT = 0,
  TOK_PRE_GPT2,
  TOK_PRE_LLAMA3,
  TOK_PRE_QWEN2,
  TOK_PRE_STARCODER,
} tok_pre;

#define TOK_MAX_REGEX 4

typedef struct tok_token {
  const char *text; /* NUL-terminated, in the tokenizer's arena */
  uint32_t len;     /* bytes */
  float score;      /* SentencePiece log-probability (0 for BPE) */
  uint16_t attr;    /* TOK_ATTR_* flags used by the algorithms */
} tok_token;

struct llorch_tokenizer {
  llorch_tokenizer_kind kind;
  tok_pre pre;
  char pre_name[64];
  int32_t n_vocab;
  tok_token *tokens;     /* (n_vocab) */
  char *arena;           /* token texts, then merge pairs */
  tok_map token_map;     /* text -> id */
  tok_map merge_map;     /* (left, right) -> rank (BPE only) */
  uint32_t n_merges;
  int32_t bos, eos, eot, eom, unk, pad; /* -1 = none */
  int32_t fim_pre, fim_suf, fim_mid;    /* fill-in-the-middle, -1 = none */
  bool add_bos, add_eos;
  bool add_space_prefix; /* SPM: prepend ' ' to text at the start / after a special token */
  bool ignore_merges;    /* llama-bpe: a whole pre-tokenized word in the vocab is one token */
  uint8_t *eog;          /* (n_vocab) 1 for end-of-generation tokens */
  int32_t *special;      /* ids of CONTROL/USER_DEFINED/UNKNOWN tokens, longest text first */
  uint32_t n_special;
  void *re[TOK_MAX_REGEX]; /* pcre2_code_8 *, the pre-tokenizer's split regexes in order */
  int n_re;
  char *chat_template;   /* tokenizer.chat_template or NULL */
};

/* ---- per-algorithm entry points (text is one fragment without special tokens) ---- */

/* A pre-tokenized word: bytes [off, off + len) of the normalised text. */
typedef struct tok_word {
  uint32_t off, len;
} tok_word;

/* Compiles the split regexes of a pre-tokenizer (pcre2 codes into re[]). */
int tok_pre_compile(tok_pre pre, void **re, int *n_re, llorch_errmsg *em);
void tok_pre_free(void **re, int n_re);
/*
 * Splits text into words with the regexes in turn. *norm gets the text as
 * llama.cpp normalises it (invalid UTF-8 -> U+FFFD, malloc'ed), *words the
 * word spans into it (malloc'ed). Returns 0, LLORCH_ENOMEM or LLORCH_ELIMIT.
 */
int tok_pre_split(void *const *re, int n_re, const char *text, size_t len, char **norm,
                  tok_word **words, size_t *n_words);

/* Byte-level BPE: pre-tokenize with the regexes, map bytes to unicode, merge. */
int tok_bpe_init(llorch_tokenizer *t, llorch_errmsg *em);
void tok_bpe_free(llorch_tokenizer *t);
int tok_bpe_encode(const llorch_tokenizer *t, const char *text, size_t len, llorch_tokens *out);

/* SentencePiece: text is already escaped (' ' -> U+2581, space prefix added). */
int tok_spm_encode(const llorch_tokenizer *t, const char *text, size_t len, llorch_tokens *out,
                   llorch_errmsg *em);

/* GPT-2 byte <-> unicode mapping: the code point standing for byte b. */
uint32_t tok_byte_to_cpt(uint8_t b);
/* The byte a code point stands for, or -1 when it is not one of the 256. */
int tok_cpt_to_byte(uint32_t cpt);

/* UTF-8 helpers. tok_utf8_len: sequence length from the lead byte as llama.cpp
 * counts it (no validation). tok_utf8_encode writes 1-4 bytes, returns count. */
size_t tok_utf8_len(uint8_t lead);
size_t tok_utf8_encode(uint32_t cpt, char *out);
/* Decodes one code point at s[*off] the lenient way llama.cpp does (invalid
 * byte -> U+FFFD, one byte consumed); advances *off. */
uint32_t tok_utf8_decode_lenient(const char *s, size_t len, size_t *off);

#endif /* LLORCH_TOKENIZER_IMPL_H */
