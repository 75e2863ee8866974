/*
 * A small byte-level BPE tokenizer learned from the corpus the project ships
 * (data/synth-corpus.txt, compiled in as llorch_synth_corpus), so that
 * `llorch synth` makes self-contained models with a real, working tokenizer.
 *
 * Training is the textbook greedy algorithm: pre-tokenize the corpus with the
 * qwen2 regex, count each distinct word once with its frequency, then
 * repeatedly merge the most frequent adjacent pair of symbols (ties: the
 * pair with the smallest ids, so the result is the same on every machine).
 * A few thousand merges over ~30 KB take well under a second.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer-impl.h"

extern const unsigned char llorch_synth_corpus[];
extern const size_t llorch_synth_corpus_len;

#define SYNTH_DEFAULT_VOCAB 2048u
#define SYNTH_N_SPECIAL 3u

static const char synth_chat_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/* ---- training state ---- */

typedef struct synth_word {
  int32_t *sym;  /* (n) token ids */
  uint32_t n;
  uint32_t count; /* occurrences in the corpus */
} synth_word;

typedef struct synth_vocab {
  char **text;   /* (n) token texts, GPT-2 unicode form, NUL-terminated */
  size_t n, cap;
  tok_map map;   /* text -> id */
} synth_vocab;

static int vocab_add(synth_vocab *v, char *text, int32_t *id_out) {
  int32_t prev;
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 512;
    char **t = realloc(v->text, cap * sizeof(*t));
    if (!t) return LLORCH_ENOMEM;
    v->text = t;
    v->cap = cap;
  }
  int rc = tok_map_put(&v->map, text, (uint32_t)strlen(text), (uint32_t)strlen(text), (int32_t)v->n, &prev);
  if (rc == LLORCH_EEXIST) {
    /* "a"+"bc" and "ab"+"c" give the same token: keep one id, both merges */
    free(text);
    *id_out = prev;
    return 0;
  }
  if (rc != 0) return rc;
  v->text[v->n] = text;
  *id_out = (int32_t)v->n++;
  return 0;
}

/* Pair counts in an open-addressed table keyed by (left << 32 | right). */
typedef struct pair_table {
  uint64_t *key;  /* (cap) UINT64_MAX = empty */
  uint64_t *count;
  size_t cap;
} pair_table;

static size_t pair_slot(const pair_table *p, uint64_t key) {
  uint64_t h = key * 0x9e3779b97f4a7c15ULL;
  size_t j = (size_t)(h >> 20) & (p->cap - 1);
  while (p->key[j] != UINT64_MAX && p->key[j] != key) j = (j + 1) & (p->cap - 1);
  return j;
}

int llorch_tokenizer_synth_vocab(llorch_gguf_writer *w, uint32_t n_vocab_hint, bool fim, uint32_t *n_vocab_out,
                                 llorch_errmsg *em) {
  int rc;
  void *re[TOK_MAX_REGEX];
  int n_re = 0;
  char *norm = NULL;
  tok_word *words = NULL;
  size_t n_words = 0;
  tok_map wmap = {0};
  synth_word *uw = NULL;
  size_t n_uw = 0;
  synth_vocab v = {0};
  char **merges = NULL;
  size_t n_merges = 0;
  pair_table pt = {0};
  int32_t *types = NULL;

  if (n_vocab_hint == 0) n_vocab_hint = SYNTH_DEFAULT_VOCAB;
  if (n_vocab_hint < 256 + SYNTH_N_SPECIAL)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "vocabulary size %u is too small (at least %u)", n_vocab_hint,
                             256 + SYNTH_N_SPECIAL);
  if (n_vocab_hint > 65536)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "vocabulary size %u is too large for the synthetic tokenizer "
                             "(at most 65536)", n_vocab_hint);

  /* -- words of the corpus, each distinct word once with its count -- */
  if ((rc = tok_pre_compile(TOK_PRE_QWEN2, re, &n_re, em)) != 0) return rc;
  rc = tok_pre_split(re, n_re, (const char *)llorch_synth_corpus, llorch_synth_corpus_len, &norm, &words,
                     &n_words);
  if (rc != 0) goto out;
  if ((rc = tok_map_init(&wmap, (uint32_t)n_words)) != 0) goto out;
  uw = calloc(n_words ? n_words : 1, sizeof(*uw));
  if (!uw || (rc = tok_map_init(&v.map, n_vocab_hint)) != 0) {
    rc = LLORCH_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < n_words; i++) {
    int32_t prev;
    rc = tok_map_put(&wmap, norm + words[i].off, words[i].len, words[i].len, (int32_t)n_uw, &prev);
    if (rc == LLORCH_EEXIST) {
      uw[prev].count++;
      continue;
    }
    if (rc != 0) goto out;
    synth_word *sw = &uw[n_uw++];
    sw->n = words[i].len;
    sw->count = 1;
    sw->sym = malloc(sw->n * sizeof(*sw->sym));
    if (!sw->sym) {
      rc = LLORCH_ENOMEM;
      goto out;
    }
    /* the 256 byte tokens come first, id = byte value */
    for (uint32_t k = 0; k < sw->n; k++) sw->sym[k] = (uint8_t)norm[words[i].off + k];
  }

  /* -- the 256 byte tokens in GPT-2's unicode form -- */
  for (unsigned b = 0; b < 256; b++) {
    char *s = malloc(4);
    int32_t id;
    if (!s) {
      rc = LLORCH_ENOMEM;
      goto out;
    }
    s[tok_utf8_encode(tok_byte_to_cpt((uint8_t)b), s)] = 0;
    if ((rc = vocab_add(&v, s, &id)) != 0) goto out;
  }

  /* -- greedy merges -- */
  uint32_t target = n_vocab_hint - SYNTH_N_SPECIAL;
  size_t total_syms = 0;
  for (size_t i = 0; i < n_uw; i++) total_syms += uw[i].n;
  pt.cap = 64;
  while (pt.cap < total_syms * 2) pt.cap <<= 1;
  pt.key = malloc(pt.cap * sizeof(*pt.key));
  pt.count = malloc(pt.cap * sizeof(*pt.count));
  merges = malloc(n_vocab_hint * sizeof(*merges));
  if (!pt.key || !pt.count || !merges) {
    rc = LLORCH_ENOMEM;
    goto out;
  }
  while (v.n < target) {
    memset(pt.key, 0xff, pt.cap * sizeof(*pt.key));
    uint64_t best_key = UINT64_MAX, best_count = 1;
    for (size_t i = 0; i < n_uw; i++) {
      const synth_word *sw = &uw[i];
      for (uint32_t k = 0; k + 1 < sw->n; k++) {
        uint64_t key = (uint64_t)(uint32_t)sw->sym[k] << 32 | (uint32_t)sw->sym[k + 1];
        size_t j = pair_slot(&pt, key);
        if (pt.key[j] == UINT64_MAX) {
          pt.key[j] = key;
          pt.count[j] = 0;
        }
        pt.count[j] += sw->count;
        if (pt.count[j] > best_count || (pt.count[j] == best_count && key < best_key)) {
          best_count = pt.count[j];
          best_key = key;
        }
      }
    }
    if (best_key == UINT64_MAX) break; /* no pair occurs twice: nothing left to learn */
    int32_t a = (int32_t)(best_key >> 32), b = (int32_t)(best_key & 0xffffffffu);
    size_t la = strlen(v.text[a]), lb = strlen(v.text[b]);
    char *merged = malloc(la + lb + 1), *rule = malloc(la + lb + 2);
    if (!merged || !rule) {
      free(merged);
      free(rule);
      rc = LLORCH_ENOMEM;
      goto out;
    }
    memcpy(merged, v.text[a], la);
    memcpy(merged + la, v.text[b], lb + 1);
    memcpy(rule, v.text[a], la);
    rule[la] = ' ';
    memcpy(rule + la + 1, v.text[b], lb + 1);
    merges[n_merges++] = rule;
    int32_t id;
    if ((rc = vocab_add(&v, merged, &id)) != 0) goto out;
    /* apply the merge left to right in every word, as BPE encoding will */
    for (size_t i = 0; i < n_uw; i++) {
      synth_word *sw = &uw[i];
      uint32_t o = 0;
      for (uint32_t k = 0; k < sw->n; k++) {
        if (k + 1 < sw->n && sw->sym[k] == a && sw->sym[k + 1] == b) {
          sw->sym[o++] = id;
          k++;
        } else {
          sw->sym[o++] = sw->sym[k];
        }
      }
      sw->n = o;
    }
    if (n_merges == n_vocab_hint) break;
  }

  /* -- special tokens -- */
  /* with fim, Qwen2.5-Coder's fill-in-the-middle tokens after ChatML's */
  static const char *const specials[SYNTH_N_SPECIAL + 3] = {
      "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>",
      "<|fim_middle|>"};
  int32_t special_ids[SYNTH_N_SPECIAL + 3];
  size_t n_normal = v.n;
  const unsigned n_special = SYNTH_N_SPECIAL + (fim ? 3u : 0u);
  for (unsigned k = 0; k < n_special; k++) {
    char *s = strdup(specials[k]);
    if (!s) {
      rc = LLORCH_ENOMEM;
      goto out;
    }
    if ((rc = vocab_add(&v, s, &special_ids[k])) != 0) goto out;
  }
  types = malloc(v.n * sizeof(*types));
  if (!types) {
    rc = LLORCH_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < v.n; i++) types[i] = i < n_normal ? LLORCH_TOKEN_NORMAL : LLORCH_TOKEN_CONTROL;

  /* -- the GGUF keys -- */
  if ((rc = llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) != 0 ||
      (rc = llorch_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2")) != 0 ||
      (rc = llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.text, v.n)) != 0 ||
      (rc = llorch_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, types, v.n)) != 0 ||
      (rc = llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, n_merges)) != 0 ||
      (rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)special_ids[2])) != 0 ||
      (rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)special_ids[2])) != 0 ||
      (rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)special_ids[0])) != 0 ||
      (rc = llorch_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false)) != 0 ||
      (rc = llorch_gguf_writer_set_str(w, "tokenizer.chat_template", synth_chat_template)) != 0) {
    llorch_errmsg_set(em, rc, "writing the synthetic tokenizer's keys: %s", llorch_strerror(rc));
    goto out;
  }
  if (fim && ((rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.fim_pre_token_id", (uint32_t)special_ids[3])) != 0 ||
              (rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.fim_suf_token_id", (uint32_t)special_ids[4])) != 0 ||
              (rc = llorch_gguf_writer_set_u32(w, "tokenizer.ggml.fim_mid_token_id", (uint32_t)special_ids[5])) != 0)) {
    llorch_errmsg_set(em, rc, "writing the synthetic tokenizer's FIM keys: %s", llorch_strerror(rc));
    goto out;
  }
  if (n_vocab_out) *n_vocab_out = (uint32_t)v.n;
  rc = 0;

out:
  tok_pre_free(re, n_re);
  free(norm);
  free(words);
  tok_map_free(&wmap);
  for (size_t i = 0; i < n_uw; i++) free(uw[i].sym);
  free(uw);
  for (size_t i = 0; i < v.n; i++) free(v.text[i]);
  free(v.text);
  tok_map_free(&v.map);
  for (size_t i = 0; i < n_merges; i++) free(merges[i]);
  free(merges);
  free(pt.key);
  free(pt.count);
  free(types);
  return rc;
}
