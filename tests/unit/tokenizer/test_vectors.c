/*
 * llama.cpp's tokenizer vectors ($LLORCH_TESTDATA/tokenizer, from llama.cpp's
 * models/ folder): every string must give exactly the listed ids with plain
 * text and nothing added, and decoding the ids must give the string back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>

#include <cmocka.h>

#include "testdata.h"
#include "llorch/gguf.h"
#include "llorch/tokenizer.h"

#define SEP "\n__ggml_vocab_test__\n"

static const char *testdata_dir(void) {
  static char dir[900];
  return testdata_path(dir, sizeof dir, "tokenizer");
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    fclose(f);
    return NULL;
  }
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/*
 * LLORCH_TOK_VECTORS names another folder of NAME.gguf(.inp/.out) files, for
 * the differential check against llama.cpp (tests/unit/tokenizer/README.md);
 * the vector count is then whatever the files hold.
 */
static const char *vectors_dir(int *expect_vectors) {
  const char *e = getenv("LLORCH_TOK_VECTORS");
  if (e && *e) {
    *expect_vectors = -1;
    return e;
  }
  return testdata_dir();
}

/* Checks one vocabulary: every vector must match and round-trip. */
static void check_vocab(const char *name, int expect_vectors) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", vectors_dir(&expect_vectors), name);
  llorch_tokenizer *t = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_tokenizer_load_file(&t, path, &em);
  if (rc != 0) fail_msg("load %s: %s", path, em.text);

  size_t inp_len, out_len;
  char p2[1100];
  snprintf(p2, sizeof(p2), "%s.inp", path);
  char *inp = read_all(p2, &inp_len);
  snprintf(p2, sizeof(p2), "%s.out", path);
  char *outs = read_all(p2, &out_len);
  assert_non_null(inp);
  assert_non_null(outs);

  int n_vec = 0, n_ok = 0, n_rt = 0;
  /* LLORCH_TOK_SPECIAL=1: the .out files were made with special-token parsing */
  const char *sp = getenv("LLORCH_TOK_SPECIAL");
  bool parse_special = sp && *sp == '1';
  char *ip = inp, *op = outs;
  while (*ip || ip < inp + inp_len) {
    char *sep = strstr(ip, SEP);
    if (!sep) break; /* the file ends with a separator */
    size_t tlen = (size_t)(sep - ip);
    char *eol = strchr(op, '\n');
    assert_non_null(eol);
    *eol = 0;

    llorch_tokens ids = {0};
    rc = llorch_tokenize(t, ip, tlen, parse_special ? LLORCH_TOKENIZE_PARSE_SPECIAL : 0, &ids, &em);
    assert_int_equal(rc, 0);
    /* expected ids */
    char got[8192];
    size_t g = 0;
    for (size_t i = 0; i < ids.n && g + 16 < sizeof(got); i++) g += (size_t)snprintf(got + g, sizeof(got) - g, " %d", ids.ids[i]);
    got[g] = 0;
    /* compare as id lists: the expected line is " id id ..." */
    char *exp = op;
    bool same = true;
    {
      char *q = exp;
      size_t k = 0;
      for (;;) {
        while (*q == ' ') q++;
        if (!*q) break;
        long v = strtol(q, &q, 10);
        if (k >= ids.n || ids.ids[k] != v) same = false;
        k++;
      }
      if (k != ids.n) same = false;
    }
    n_vec++;
    if (same) n_ok++;
    else print_message("%s vector %d MISMATCH\n  text: [%.*s]\n  want:%s\n  got: %s\n", name, n_vec, (int)tlen, ip,
                       exp, got);
    char *dec = NULL;
    size_t dlen = 0;
    rc = llorch_detokenize(t, ids.ids, ids.n, parse_special ? LLORCH_DETOK_RENDER_SPECIAL : 0, &dec, &dlen, &em);
    assert_int_equal(rc, 0);
    if (dlen == tlen && memcmp(dec, ip, tlen) == 0) n_rt++;
    else if (!parse_special || llorch_tokenizer_kind_of(t) == LLORCH_TOKENIZER_BPE)
      print_message("%s vector %d ROUNDTRIP\n  text: [%.*s]\n  got:  [%s]\n", name, n_vec, (int)tlen, ip, dec);
    free(dec);
    llorch_tokens_free(&ids);
    ip = sep + strlen(SEP);
    op = eol + 1;
  }
  print_message("%s: %d of %d vectors match, %d of %d round-trip\n", name, n_ok, n_vec, n_rt, n_vec);
  if (expect_vectors >= 0) assert_int_equal(n_vec, expect_vectors);
  assert_int_equal(n_ok, n_vec);
  /* With special tokens parsed, SentencePiece puts a space prefix after each
   * special token (as llama.cpp does), so only byte-level BPE gives the text
   * back exactly there. */
  if (!parse_special || llorch_tokenizer_kind_of(t) == LLORCH_TOKENIZER_BPE) assert_int_equal(n_rt, n_vec);
  free(inp);
  free(outs);
  llorch_tokenizer_free(t);
}

static void test_qwen2(void **state) { check_vocab("ggml-vocab-qwen2.gguf", 46); }
static void test_llama_bpe(void **state) { check_vocab("ggml-vocab-llama-bpe.gguf", 46); }
static void test_llama_spm(void **state) { check_vocab("ggml-vocab-llama-spm.gguf", 46); }

/* Every NAME.gguf with NAME.gguf.inp in $LLORCH_TOK_VECTORS. */
static void test_dir(void **state) {
  int dummy;
  const char *dir = vectors_dir(&dummy);
  DIR *d = opendir(dir);
  if (!d) fail_msg("cannot open %s", dir);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l > 5 && strcmp(e->d_name + l - 5, ".gguf") == 0) {
      check_vocab(e->d_name, -1);
      n++;
    }
  }
  closedir(d);
  assert_true(n > 0);
}

int main(void) {
  if (getenv("LLORCH_TOK_VECTORS")) {
    const struct CMUnitTest dir_tests[] = {cmocka_unit_test(test_dir)};
    return cmocka_run_group_tests(dir_tests, NULL, NULL);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_qwen2),
      cmocka_unit_test(test_llama_bpe),
      cmocka_unit_test(test_llama_spm),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
