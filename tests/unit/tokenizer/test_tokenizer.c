/*
 * Tokenizer behaviour beyond the shared vectors: the synthetic vocabulary
 * (loads, round-trips, compresses), special-token parsing only when asked,
 * BOS/EOS rules, end-of-generation ids, pieces, and clear errors for broken
 * tokenizer metadata.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "testdata.h"
#include "llorch/gguf.h"
#include "llorch/tokenizer.h"

static const char *testdata_dir(void) {
  static char dir[900];
  return testdata_path(dir, sizeof dir, "tokenizer");
}

static llorch_tokenizer *load_vocab(const char *name) {
  char path[1024];
  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  snprintf(path, sizeof(path), "%s/%s", testdata_dir(), name);
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("load %s: %s", path, em.text);
  return t;
}

static char tmpdir[256];

static int setup(void **state) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/llorch-tok-test-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  return 0;
}

static int teardown(void **state) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void tokens_expect(const llorch_tokens *v, const int32_t *ids, size_t n) {
  assert_int_equal(v->n, n);
  for (size_t i = 0; i < n; i++) assert_int_equal(v->ids[i], ids[i]);
}

static void roundtrip(const llorch_tokenizer *t, const char *text, size_t len) {
  llorch_tokens v = {0};
  llorch_errmsg em;
  char *dec = NULL;
  size_t dlen;
  assert_int_equal(llorch_tokenize(t, text, len, 0, &v, &em), 0);
  assert_int_equal(llorch_detokenize(t, v.ids, v.n, 0, &dec, &dlen, &em), 0);
  assert_int_equal(dlen, len);
  assert_memory_equal(dec, text, len);
  free(dec);
  llorch_tokens_free(&v);
}

/* ---- synthetic vocabulary ---- */

static llorch_tokenizer *synth_load_fim(uint32_t hint, bool fim, uint32_t *n_vocab, double *seconds) {
  llorch_gguf_writer *w;
  llorch_errmsg em = {{0}};
  char path[512];
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  int rc = llorch_tokenizer_synth_vocab(w, hint, fim, n_vocab, &em);
  clock_gettime(CLOCK_MONOTONIC, &b);
  if (rc != 0) fail_msg("synth_vocab: %s", em.text);
  if (seconds) *seconds = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
  assert_int_equal(llorch_gguf_writer_set_str(w, "general.architecture", "qwen2"), 0);
  snprintf(path, sizeof(path), "%s/synth-%u%s.gguf", tmpdir, hint, fim ? "-fim" : "");
  if (llorch_gguf_writer_write_file(w, path, &em) != 0) fail_msg("write: %s", em.text);
  llorch_gguf_writer_free(w);
  llorch_tokenizer *t = NULL;
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("load synth: %s", em.text);
  return t;
}

static llorch_tokenizer *synth_load(uint32_t hint, uint32_t *n_vocab, double *seconds) {
  return synth_load_fim(hint, false, n_vocab, seconds);
}

extern const unsigned char llorch_synth_corpus[];
extern const size_t llorch_synth_corpus_len;

static void test_synth_vocab(void **state) {
  uint32_t n_vocab = 0;
  double secs = 0;
  llorch_tokenizer *t = synth_load(0, &n_vocab, &secs);
  print_message("synth vocab: %u tokens learned in %.3f s\n", n_vocab, secs);
  assert_int_equal(llorch_tokenizer_n_vocab(t), (int32_t)n_vocab);
  assert_true(n_vocab > 1500 && n_vocab <= 2048);
  assert_int_equal(llorch_tokenizer_kind_of(t), LLORCH_TOKENIZER_BPE);
  assert_string_equal(llorch_tokenizer_pre_name(t), "qwen2");
  assert_false(llorch_tokenizer_add_bos(t));
  int32_t im_end = llorch_tokenizer_find(t, "<|im_end|>", 10);
  int32_t im_start = llorch_tokenizer_find(t, "<|im_start|>", 12);
  int32_t eot = llorch_tokenizer_find(t, "<|endoftext|>", 13);
  assert_true(im_end >= 256 && im_start >= 256 && eot >= 256);
  assert_int_equal(llorch_tokenizer_eos(t), im_end);
  assert_int_equal(llorch_tokenizer_eot(t), im_end);
  assert_true(llorch_tokenizer_is_eog(t, im_end));
  assert_true(llorch_tokenizer_is_eog(t, eot)); /* by text, as llama.cpp */
  assert_false(llorch_tokenizer_is_eog(t, im_start));
  assert_non_null(llorch_tokenizer_chat_template(t));
  assert_non_null(strstr(llorch_tokenizer_chat_template(t), "<|im_start|>"));

  /* the merges compress the corpus they were learned from */
  llorch_tokens v = {0};
  llorch_errmsg em;
  assert_int_equal(llorch_tokenize(t, (const char *)llorch_synth_corpus, llorch_synth_corpus_len, 0, &v, &em), 0);
  print_message("synth vocab: corpus %zu bytes -> %zu tokens (%.2f bytes/token)\n", llorch_synth_corpus_len, v.n,
                (double)llorch_synth_corpus_len / (double)v.n);
  assert_true(v.n * 2 < llorch_synth_corpus_len); /* bytes alone would be 1 byte/token */
  llorch_tokens_free(&v);
  roundtrip(t, (const char *)llorch_synth_corpus, llorch_synth_corpus_len);

  /* text it never saw, including bytes no merge covers */
  static const char other[] = "Zebras quietly juxtapose 12345 vexing glyphs: \xc3\xa9t\xc3\xa9, \xe4\xbd\xa0\xe5\xa5\xbd, "
                              "\xf0\x9f\x98\x80!\n\tTabs\r\nand\x01control bytes";
  roundtrip(t, other, sizeof(other) - 1);

  /* special text: plain by default, the token with PARSE_SPECIAL */
  static const char chat[] = "<|im_start|>user\nhi<|im_end|>";
  assert_int_equal(llorch_tokenize(t, chat, sizeof(chat) - 1, LLORCH_TOKENIZE_PARSE_SPECIAL, &v, &em), 0);
  assert_int_equal(v.ids[0], im_start);
  assert_int_equal(v.ids[v.n - 1], im_end);
  size_t n_special = v.n;
  llorch_tokens_free(&v);
  assert_int_equal(llorch_tokenize(t, chat, sizeof(chat) - 1, 0, &v, &em), 0);
  assert_true(v.n > n_special);
  for (size_t i = 0; i < v.n; i++) assert_false(v.ids[i] == im_start || v.ids[i] == im_end);
  llorch_tokens_free(&v);

  /* deterministic: the same vocabulary twice */
  uint32_t n2;
  llorch_tokenizer *t2 = synth_load(0, &n2, NULL);
  assert_int_equal(n2, n_vocab);
  for (int32_t i = 0; i < (int32_t)n_vocab; i++) {
    size_t l1, l2;
    const char *s1 = llorch_tokenizer_token_text(t, i, &l1), *s2 = llorch_tokenizer_token_text(t2, i, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(s1, s2, l1);
  }
  llorch_tokenizer_free(t2);
  llorch_tokenizer_free(t);

  /* a smaller hint gives a smaller vocabulary */
  t = synth_load(300, &n2, NULL);
  assert_int_equal(n2, 300);
  roundtrip(t, other, sizeof(other) - 1);
  llorch_tokenizer_free(t);

  llorch_gguf_writer *w;
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  assert_int_equal(llorch_tokenizer_synth_vocab(w, 100, false, &n2, &em), LLORCH_EINVAL);
  llorch_gguf_writer_free(w);
}

/* ---- special tokens, BOS/EOS, pieces on the real vocabularies ---- */

static void test_qwen2_special(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-qwen2.gguf");
  llorch_tokens v = {0};
  llorch_errmsg em;
  int32_t im_start = llorch_tokenizer_find(t, "<|im_start|>", 12);
  int32_t im_end = llorch_tokenizer_find(t, "<|im_end|>", 10);
  assert_int_equal(im_start, 151644);
  assert_int_equal(im_end, 151645);
  assert_false(llorch_tokenizer_add_bos(t)); /* qwen2: no BOS */
  assert_int_equal(llorch_tokenizer_eos(t), 151643);
  assert_int_equal(llorch_tokenizer_eot(t), im_end);
  assert_true(llorch_tokenizer_is_eog(t, 151643));
  assert_true(llorch_tokenizer_is_eog(t, im_end));
  assert_false(llorch_tokenizer_is_eog(t, im_start));
  assert_false(llorch_tokenizer_is_eog(t, 9707));
  /* "</s>" is a NORMAL token in Qwen2's file, but llama.cpp makes it CONTROL
   * and end-of-generation by its text (found by the differential check) */
  int32_t s_end = llorch_tokenizer_find(t, "</s>", 4);
  assert_int_equal(s_end, 128247);
  assert_true(llorch_tokenizer_is_eog(t, s_end));
  assert_int_equal(llorch_tokenizer_token_attr(t, s_end), LLORCH_TOKEN_CONTROL);

  const char *s = "<|im_start|>user\nHello<|im_end|>\n";
  assert_int_equal(llorch_tokenize(t, s, strlen(s), LLORCH_TOKENIZE_PARSE_SPECIAL | LLORCH_TOKENIZE_ADD_SPECIAL,
                                   &v, &em), 0);
  /* <|im_start|> user \n Hello <|im_end|> \n */
  static const int32_t want[] = {151644, 872, 198, 9707, 151645, 198};
  tokens_expect(&v, want, 6);
  llorch_tokens_free(&v);

  /* pieces: control tokens hidden unless asked */
  char buf[32];
  assert_int_equal(llorch_token_piece(t, im_end, 0, buf, sizeof(buf)), 0);
  assert_int_equal(llorch_token_piece(t, im_end, LLORCH_DETOK_RENDER_SPECIAL, buf, sizeof(buf)), 10);
  assert_memory_equal(buf, "<|im_end|>", 10);
  assert_int_equal(llorch_token_piece(t, 9707, 0, buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "Hello", 5);
  assert_int_equal(llorch_token_piece(t, 9707, 0, buf, 2), 5); /* too small: full length returned */
  assert_int_equal(llorch_token_piece(t, -1, 0, buf, sizeof(buf)), LLORCH_ERANGE);
  assert_int_equal(llorch_token_piece(t, 151936, 0, buf, sizeof(buf)), LLORCH_ERANGE);
  int32_t bad = 999999;
  char *dec;
  assert_int_equal(llorch_detokenize(t, &bad, 1, 0, &dec, NULL, &em), LLORCH_ERANGE);
  assert_non_null(strstr(em.text, "999999"));
  llorch_tokenizer_free(t);
}

static void test_llama_bpe_bos(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-llama-bpe.gguf");
  llorch_tokens v = {0};
  llorch_errmsg em;
  assert_true(llorch_tokenizer_add_bos(t)); /* llama-bpe: BOS by default */
  assert_int_equal(llorch_tokenizer_bos(t), 128000);
  assert_int_equal(llorch_tokenize(t, "Hello", 5, LLORCH_TOKENIZE_ADD_SPECIAL, &v, &em), 0);
  static const int32_t want[] = {128000, 9906};
  tokens_expect(&v, want, 2);
  llorch_tokens_free(&v);
  assert_int_equal(llorch_tokenize(t, "Hello", 5, 0, &v, &em), 0);
  tokens_expect(&v, want + 1, 1);
  llorch_tokens_free(&v);
  /* <|eot_id|> is EOG and found by text */
  int32_t eot = llorch_tokenizer_find(t, "<|eot_id|>", 10);
  assert_true(eot > 0);
  assert_int_equal(llorch_tokenizer_eot(t), eot);
  assert_true(llorch_tokenizer_is_eog(t, eot));
  const char *s = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  assert_int_equal(llorch_tokenize(t, s, strlen(s), LLORCH_TOKENIZE_PARSE_SPECIAL, &v, &em), 0);
  assert_int_equal(v.ids[0], llorch_tokenizer_find(t, "<|start_header_id|>", 19));
  assert_int_equal(v.ids[v.n - 1], eot);
  llorch_tokens_free(&v);
  llorch_tokenizer_free(t);
}

static void test_spm_bos_and_space(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-llama-spm.gguf");
  llorch_tokens v = {0};
  llorch_errmsg em;
  assert_int_equal(llorch_tokenizer_kind_of(t), LLORCH_TOKENIZER_SPM);
  assert_true(llorch_tokenizer_add_bos(t));
  assert_int_equal(llorch_tokenize(t, "Hello world", 11, LLORCH_TOKENIZE_ADD_SPECIAL, &v, &em), 0);
  static const int32_t want[] = {1, 15043, 3186};
  tokens_expect(&v, want, 3);
  llorch_tokens_free(&v);
  /* "</s>" is plain text by default; with parse_special it is EOS, and the
   * text after a special token gets the space prefix again */
  assert_int_equal(llorch_tokenize(t, "Hi</s>Hi", 8, LLORCH_TOKENIZE_PARSE_SPECIAL, &v, &em), 0);
  assert_int_equal(v.ids[1], 2);
  llorch_tokens lhs = {0};
  assert_int_equal(llorch_tokenize(t, "Hi", 2, 0, &lhs, &em), 0);
  assert_int_equal(v.n, 1 + 2 * lhs.n);
  assert_int_equal(v.ids[0], lhs.ids[0]);
  assert_int_equal(v.ids[2], lhs.ids[0]);
  llorch_tokens_free(&lhs);
  llorch_tokens_free(&v);
  assert_int_equal(llorch_tokenize(t, "Hi</s>Hi", 8, 0, &v, &em), 0);
  for (size_t i = 0; i < v.n; i++) assert_int_not_equal(v.ids[i], 2);
  llorch_tokens_free(&v);
  /* byte fallback for a character the vocabulary lacks, and back */
  static const char rare[] = "\xf0\x9f\xa6\x99 \xe1\x9a\xa0";
  roundtrip(t, rare, sizeof(rare) - 1);
  /* invalid UTF-8 survives SentencePiece's byte fallback unchanged (a
   * space right after a bad lead byte would not: like llama.cpp, the lead
   * byte's "character" swallows the U+2581 that stands for it) */
  static const char broken[] = "a\xff\xfe!b\xc3";
  roundtrip(t, broken, sizeof(broken) - 1);
  llorch_tokenizer_free(t);
}

/* ---- broken metadata gets a clear error ---- */

typedef void (*mutate_fn)(llorch_gguf_writer *w);

static void write_vocab(llorch_gguf_writer *w, const char *model, bool with_merges) {
  static const char *const toks[] = {"a", "b", "ab", "<s>", "</s>"};
  static const int32_t types[] = {1, 1, 1, 3, 3};
  static const char *const merges[] = {"a b"};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", model);
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 5);
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, types, 5);
  if (with_merges) llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 1);
}

static int load_built(void (*build)(llorch_gguf_writer *), llorch_errmsg *em) {
  llorch_gguf_writer *w;
  char path[512];
  snprintf(path, sizeof(path), "%s/bad.gguf", tmpdir);
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  build(w);
  assert_int_equal(llorch_gguf_writer_write_file(w, path, em), 0);
  llorch_gguf_writer_free(w);
  llorch_tokenizer *t = NULL;
  int rc = llorch_tokenizer_load_file(&t, path, em);
  llorch_tokenizer_free(t);
  return rc;
}

static void b_ok(llorch_gguf_writer *w) { write_vocab(w, "gpt2", true); }
static void b_no_model(llorch_gguf_writer *w) { llorch_gguf_writer_set_str(w, "general.name", "x"); }
static void b_bad_model(llorch_gguf_writer *w) { write_vocab(w, "wordpiece9", true); }
static void b_bad_model_nl(llorch_gguf_writer *w) { write_vocab(w, "two\nlines", true); }
static void b_bad_pre(llorch_gguf_writer *w) {
  write_vocab(w, "gpt2", true);
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.pre", "klingon");
}
static void b_no_merges(llorch_gguf_writer *w) { write_vocab(w, "gpt2", false); }
static void b_bad_merge(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b"};
  static const char *const merges[] = {"ab"};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 1);
}
static void b_types_len(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b"};
  static const int32_t types[] = {1, 1, 1};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, types, 3);
}
static void b_scores_len(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b"};
  static const float scores[] = {0.5f};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.scores", LLORCH_GGUF_FLOAT32, scores, 1);
}
static void b_bos_range(llorch_gguf_writer *w) {
  write_vocab(w, "gpt2", true);
  llorch_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 77);
}
static void b_dup(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b", "a"};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3);
}
static void b_tokens_type(llorch_gguf_writer *w) {
  static const int32_t toks[] = {1, 2};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", LLORCH_GGUF_INT32, toks, 2);
}
static void b_add_bos_none(llorch_gguf_writer *w) {
  write_vocab(w, "gpt2", true);
  llorch_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true);
}
static void b_bad_type(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b"};
  static const int32_t types[] = {1, 9};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 2);
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, types, 2);
}

static void expect_error(void (*build)(llorch_gguf_writer *), int code, const char *needle) {
  llorch_errmsg em = {{0}};
  int rc = load_built(build, &em);
  if (rc != code || !strstr(em.text, needle))
    fail_msg("expected %s containing '%s', got %s: '%s'", llorch_err_name(code), needle, llorch_err_name(rc), em.text);
}

static void test_bad_metadata(void **state) {
  llorch_errmsg em = {{0}};
  assert_int_equal(load_built(b_ok, &em), 0);
  expect_error(b_no_model, LLORCH_EFORMAT, "tokenizer.ggml.model is missing");
  expect_error(b_bad_model, LLORCH_EUNSUPPORTED, "'wordpiece9'");
  expect_error(b_bad_model_nl, LLORCH_EUNSUPPORTED, "'two?lines'"); /* one printable line */
  expect_error(b_bad_pre, LLORCH_EUNSUPPORTED, "tokenizer.ggml.pre 'klingon'");
  expect_error(b_no_merges, LLORCH_EFORMAT, "tokenizer.ggml.merges is missing");
  expect_error(b_bad_merge, LLORCH_EFORMAT, "merges[0] = 'ab'");
  expect_error(b_types_len, LLORCH_EFORMAT, "token_type has 3 entries, tokens has 2");
  expect_error(b_scores_len, LLORCH_EFORMAT, "scores has 1 entries, tokens has 2");
  expect_error(b_bos_range, LLORCH_EFORMAT, "bos_token_id = 77 is out of range");
  expect_error(b_dup, LLORCH_EFORMAT, "duplicate token 'a' at ids 0 and 2");
  expect_error(b_tokens_type, LLORCH_EFORMAT, "tokenizer.ggml.tokens");
  expect_error(b_add_bos_none, LLORCH_EFORMAT, "add_bos_token is true");
  expect_error(b_bad_type, LLORCH_EFORMAT, "token_type[1] = 9");
}

/* ---- speed (figures only; the assertion is about behaviour) ---- */

static void test_long_text(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-qwen2.gguf");
  size_t len = 0, cap = 64 * 1024;
  char *text = malloc(cap);
  while (len + llorch_synth_corpus_len < cap) {
    memcpy(text + len, llorch_synth_corpus, llorch_synth_corpus_len);
    len += llorch_synth_corpus_len;
  }
  llorch_tokens v = {0};
  llorch_errmsg em;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  assert_int_equal(llorch_tokenize(t, text, len, 0, &v, &em), 0);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ms = 1e3 * (double)(b.tv_sec - a.tv_sec) + 1e-6 * (double)(b.tv_nsec - a.tv_nsec);
  print_message("qwen2: %zu bytes -> %zu tokens in %.2f ms\n", len, v.n, ms);
  assert_true(v.n > 5000);
  llorch_tokens_free(&v);
  roundtrip(t, text, len);
  /* a run of 100k spaces must not blow the regex engine's stack */
  char *sp = malloc(100000);
  memset(sp, ' ', 100000);
  roundtrip(t, sp, 100000);
  free(sp);
  free(text);
  llorch_tokenizer_free(t);
}

/* Fill-in-the-middle tokens: from tokenizer.ggml.fim_*_token_id (synth
 * --fim writes them), else by text as llama.cpp finds them (CodeLlama's
 * <PRE>/<SUF>/<MID> here), and none in a vocabulary without them. */
static void b_fim_texts(llorch_gguf_writer *w) {
  static const char *const toks[] = {"a", "b", "ab", "<PRE>", "<SUF>", "<MID>"};
  static const int32_t types[] = {1, 1, 1, 3, 3, 3};
  static const char *const merges[] = {"a b"};
  llorch_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 6);
  llorch_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", LLORCH_GGUF_INT32, types, 6);
  llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 1);
}

static void test_fim(void **state) {
  (void)state;
  uint32_t n = 0;
  int32_t ids[3];
  llorch_tokenizer *t = synth_load_fim(0, true, &n, NULL);
  assert_true(llorch_tokenizer_fim(t, ids));
  assert_int_equal(ids[0], llorch_tokenizer_find(t, "<|fim_prefix|>", 14));
  assert_int_equal(ids[1], llorch_tokenizer_find(t, "<|fim_suffix|>", 14));
  assert_int_equal(ids[2], llorch_tokenizer_find(t, "<|fim_middle|>", 14));
  assert_true(ids[0] >= 0 && ids[1] >= 0 && ids[2] >= 0);
  assert_true(llorch_tokenizer_is_special(t, ids[0]));
  llorch_tokenizer_free(t);
  t = synth_load(0, &n, NULL);
  assert_false(llorch_tokenizer_fim(t, ids));
  assert_int_equal(ids[0], -1);
  llorch_tokenizer_free(t);
  /* by text, no metadata */
  llorch_gguf_writer *w;
  llorch_errmsg em = {{0}};
  char path[512];
  snprintf(path, sizeof(path), "%s/fim-texts.gguf", tmpdir);
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  b_fim_texts(w);
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), 0);
  llorch_gguf_writer_free(w);
  t = NULL;
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("load: %s", em.text);
  assert_true(llorch_tokenizer_fim(t, ids));
  assert_int_equal(ids[0], 3);
  assert_int_equal(ids[1], 4);
  assert_int_equal(ids[2], 5);
  llorch_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_synth_vocab),      cmocka_unit_test(test_qwen2_special),
      cmocka_unit_test(test_llama_bpe_bos),    cmocka_unit_test(test_spm_bos_and_space),
      cmocka_unit_test(test_bad_metadata),     cmocka_unit_test(test_long_text),
      cmocka_unit_test(test_fim),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
