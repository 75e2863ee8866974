/*
 * `llorch synth` (src/tools/synth.c), run in-process on small shapes: the
 * files it writes load in the reader with the metadata llama.cpp needs, the
 * tensor names/shapes/types of each architecture, the built-in or copied
 * tokenizer, Llama 3.1 rope factors, deterministic bytes per seed, weight
 * statistics, and clear usage errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "testdata.h"

#include "llorch/commands.h"
#include "llorch/gguf.h"
#include "llorch/quant.h"

static char tmpdir[256];

static int setup(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/llorch-test-synth-XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Runs synth with a NULL-terminated list of arguments after "synth". */
static int run_synth(const char *first, ...) {
  char *argv[64];
  int argc = 0;
  argv[argc++] = (char *)"synth";
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a != NULL; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  return llorch_cmd_synth(argc, argv);
}

static llorch_gguf *open_ok(const char *path) {
  llorch_gguf *g = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_gguf_open(&g, path, 0, &em);
  if (rc != 0) print_error("%s\n", em.text);
  assert_int_equal(rc, 0);
  return g;
}

static uint32_t get_u32(const llorch_gguf *g, const char *key) {
  uint32_t v = 0;
  llorch_errmsg em;
  if (llorch_gguf_get_u32(g, key, &v, &em) != 0) {
    print_error("%s\n", em.text);
    fail();
  }
  return v;
}

static const llorch_gguf_tensor *tensor(const llorch_gguf *g, const char *name, llorch_ggml_type type,
                                        uint64_t ne0, uint64_t ne1) {
  const llorch_gguf_tensor *t = llorch_gguf_find_tensor(g, name);
  if (t == NULL) {
    print_error("tensor %s missing\n", name);
    fail();
  }
  if (t->type != type || t->ne[0] != ne0 || t->ne[1] != ne1) {
    print_error("tensor %s: %s {%llu, %llu}, want %s {%llu, %llu}\n", name, llorch_type_name(t->type),
                (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], llorch_type_name(type),
                (unsigned long long)ne0, (unsigned long long)ne1);
    fail();
  }
  assert_int_equal(t->n_dims, ne1 == 1 ? 1 : 2);
  return t;
}

/* mean and std of a tensor's values, dequantized */
static void tensor_stats(const llorch_gguf_tensor *t, double *mean, double *std) {
  uint64_t n = t->ne[0] * t->ne[1];
  float *v = malloc(n * sizeof *v);
  assert_int_equal(llorch_dequantize_row(t->type, t->data, v, (int64_t)n), 0);
  double s = 0, ss = 0;
  for (uint64_t i = 0; i < n; i++) {
    s += v[i];
    ss += (double)v[i] * v[i];
  }
  *mean = s / (double)n;
  *std = sqrt(ss / (double)n - *mean * *mean);
  free(v);
}

static void test_qwen2_builtin_tokenizer(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/qwen2.gguf", tmpdir);
  assert_int_equal(run_synth("--arch", "qwen2", "--layers", "2", "--embd", "64", "--ff", "96", "--heads", "4",
                             "--kv-heads", "2", "--type", "f32", "--ctx", "512", "-o", out, NULL), 0);
  llorch_gguf *g = open_ok(out);
  llorch_gguf_str s;
  llorch_errmsg em;
  assert_int_equal(llorch_gguf_get_str(g, "general.architecture", &s, &em), 0);
  assert_true(s.len == 5 && memcmp(s.ptr, "qwen2", 5) == 0);
  assert_int_equal(llorch_gguf_get_str(g, "general.name", &s, &em), 0);
  assert_int_equal(get_u32(g, "general.alignment"), 32);
  assert_int_equal(get_u32(g, "general.file_type"), 0);
  assert_int_equal(get_u32(g, "qwen2.block_count"), 2);
  assert_int_equal(get_u32(g, "qwen2.embedding_length"), 64);
  assert_int_equal(get_u32(g, "qwen2.feed_forward_length"), 96);
  assert_int_equal(get_u32(g, "qwen2.attention.head_count"), 4);
  assert_int_equal(get_u32(g, "qwen2.attention.head_count_kv"), 2);
  assert_int_equal(get_u32(g, "qwen2.context_length"), 512);
  assert_int_equal(get_u32(g, "qwen2.rope.dimension_count"), 16);
  float f;
  assert_int_equal(llorch_gguf_get_f32(g, "qwen2.rope.freq_base", &f, &em), 0);
  assert_true(f == 1e6f);
  assert_int_equal(llorch_gguf_get_f32(g, "qwen2.attention.layer_norm_rms_epsilon", &f, &em), 0);
  assert_true(f == 1e-6f);
  /* the built-in tokenizer: its token count is the model's vocabulary */
  const llorch_gguf_kv *toks;
  assert_int_equal(llorch_gguf_get_arr(g, "tokenizer.ggml.tokens", LLORCH_GGUF_STRING, &toks, &em), 0);
  uint32_t V = (uint32_t)toks->arr_n;
  assert_true(V > 259);
  assert_int_equal(get_u32(g, "qwen2.vocab_size"), V);
  assert_int_equal(llorch_gguf_get_str(g, "tokenizer.chat_template", &s, &em), 0);

  tensor(g, "token_embd.weight", LLORCH_TYPE_F32, 64, V);
  tensor(g, "output_norm.weight", LLORCH_TYPE_F32, 64, 1);
  tensor(g, "output.weight", LLORCH_TYPE_F32, 64, V);
  assert_null(llorch_gguf_find_tensor(g, "rope_freqs.weight"));
  for (int l = 0; l < 2; l++) {
    char n[64];
#define T(suffix, type, a, b) (snprintf(n, sizeof n, "blk.%d." suffix, l), tensor(g, n, type, a, b))
    T("attn_norm.weight", LLORCH_TYPE_F32, 64, 1);
    T("attn_q.weight", LLORCH_TYPE_F32, 64, 64);
    T("attn_k.weight", LLORCH_TYPE_F32, 64, 32);
    T("attn_v.weight", LLORCH_TYPE_F32, 64, 32);
    T("attn_q.bias", LLORCH_TYPE_F32, 64, 1);
    T("attn_k.bias", LLORCH_TYPE_F32, 32, 1);
    T("attn_v.bias", LLORCH_TYPE_F32, 32, 1);
    T("attn_output.weight", LLORCH_TYPE_F32, 64, 64);
    T("ffn_norm.weight", LLORCH_TYPE_F32, 64, 1);
    T("ffn_gate.weight", LLORCH_TYPE_F32, 64, 96);
    T("ffn_up.weight", LLORCH_TYPE_F32, 64, 96);
    T("ffn_down.weight", LLORCH_TYPE_F32, 96, 64);
#undef T
    snprintf(n, sizeof n, "blk.%d.attn_q_norm.weight", l);
    assert_null(llorch_gguf_find_tensor(g, n));
  }
  assert_int_equal(llorch_gguf_n_tensors(g), 3 + 2 * 12);

  /* weight statistics: projections ~ 1/sqrt(n_in), norms ~ 1 */
  double mean, std;
  tensor_stats(llorch_gguf_find_tensor(g, "blk.0.attn_q.weight"), &mean, &std);
  assert_true(fabs(mean) < 0.01 && fabs(std - 0.125) < 0.01);
  tensor_stats(llorch_gguf_find_tensor(g, "blk.1.ffn_down.weight"), &mean, &std);
  assert_true(fabs(std - 3.0 / sqrt(96.0)) < 0.03);
  tensor_stats(llorch_gguf_find_tensor(g, "blk.1.ffn_norm.weight"), &mean, &std);
  assert_true(fabs(mean - 1.0) < 0.05 && std > 0.05 && std < 0.15);
  llorch_gguf_close(g);
}

static void test_qwen3_q4_k(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/qwen3.gguf", tmpdir);
  /* embd 256: q/k/v/gate/up rows are whole Q4_K blocks; heads*head_dim = 128
   * and ff = 320 are not, and fall back to Q4_0 (32-element blocks) */
  assert_int_equal(run_synth("--arch", "qwen3", "--layers", "1", "--embd", "256", "--ff", "320", "--heads", "4",
                             "--kv-heads", "2", "--head-dim", "32", "--type", "q4_k", "--pooling", "last",
                             "-o", out, NULL), 0);
  llorch_gguf *g = open_ok(out);
  uint32_t V = get_u32(g, "qwen3.vocab_size");
  assert_int_equal(get_u32(g, "qwen3.pooling_type"), 3); /* llama.cpp's LLAMA_POOLING_TYPE_LAST */
  assert_int_equal(get_u32(g, "qwen3.attention.key_length"), 32);
  assert_int_equal(get_u32(g, "qwen3.attention.value_length"), 32);
  assert_int_equal(get_u32(g, "qwen3.rope.dimension_count"), 32);
  assert_int_equal(get_u32(g, "general.file_type"), 15);
  tensor(g, "token_embd.weight", LLORCH_TYPE_Q4_K, 256, V);
  tensor(g, "output.weight", LLORCH_TYPE_Q6_K, 256, V);
  tensor(g, "blk.0.attn_q.weight", LLORCH_TYPE_Q4_K, 256, 128);
  tensor(g, "blk.0.attn_k.weight", LLORCH_TYPE_Q4_K, 256, 64);
  tensor(g, "blk.0.attn_q_norm.weight", LLORCH_TYPE_F32, 32, 1);
  tensor(g, "blk.0.attn_k_norm.weight", LLORCH_TYPE_F32, 32, 1);
  tensor(g, "blk.0.attn_output.weight", LLORCH_TYPE_Q4_0, 128, 256);
  tensor(g, "blk.0.ffn_up.weight", LLORCH_TYPE_Q4_K, 256, 320);
  tensor(g, "blk.0.ffn_down.weight", LLORCH_TYPE_Q4_0, 320, 256);
  assert_null(llorch_gguf_find_tensor(g, "blk.0.attn_q.bias"));
  double mean, std;
  tensor_stats(llorch_gguf_find_tensor(g, "blk.0.attn_q.weight"), &mean, &std);
  assert_true(fabs(std - 1.0 / 16.0) < 0.01); /* quantized, still the right scale */
  llorch_gguf_close(g);
}

/* Llama 3.x rope factors, worked out by hand for base 500000, head dim 16,
 * factor 32: freq_i = 500000^(-i/8), wavelength 2 pi / freq_i against 2048
 * (high) and 8192 (low): i = 0..3 short (1), i = 4 wavelength 4443 is between
 * (smooth = (8192/4443 - 1)/3 = 0.2813, 1/((1-0.2813)/32 + 0.2813) = 3.292),
 * i = 5..7 long (32). */
static void test_llama_preset_rope_freqs(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/llama.gguf", tmpdir);
  assert_int_equal(run_synth("--preset", "llama3.2-1b", "--layers", "1", "--embd", "64", "--ff", "64",
                             "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--type", "q8_0", "--ctx",
                             "1024", "-o", out, NULL), 0);
  llorch_gguf *g = open_ok(out);
  llorch_errmsg em;
  float f;
  assert_int_equal(llorch_gguf_get_f32(g, "llama.rope.freq_base", &f, &em), 0);
  assert_true(f == 500000.0f);
  assert_int_equal(llorch_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &em), 0);
  assert_true(f == 1e-5f);
  assert_int_equal(get_u32(g, "llama.context_length"), 1024);
  assert_int_equal(get_u32(g, "general.file_type"), 7);
  const llorch_gguf_tensor *r = tensor(g, "rope_freqs.weight", LLORCH_TYPE_F32, 8, 1);
  float rf[8];
  memcpy(rf, r->data, sizeof rf);
  const float want[8] = {1, 1, 1, 1, 3.292f, 32, 32, 32};
  for (int i = 0; i < 8; i++) assert_true(fabsf(rf[i] - want[i]) < 0.005f);
  uint32_t V = get_u32(g, "llama.vocab_size");
  tensor(g, "output.weight", LLORCH_TYPE_Q8_0, 64, V); /* llama presets tie nothing */
  tensor(g, "blk.0.attn_q.weight", LLORCH_TYPE_Q8_0, 64, 64);
  assert_null(llorch_gguf_find_tensor(g, "blk.0.attn_q.bias"));
  llorch_gguf_close(g);
}

static void test_vocab_from_and_tied(void **state) {
  (void)state;
  char vocab[512], out[300];
  testdata_path(vocab, sizeof vocab, "tokenizer/ggml-vocab-llama-spm.gguf");
  snprintf(out, sizeof out, "%s/spm.gguf", tmpdir);
  assert_int_equal(run_synth("--arch", "llama", "--layers", "1", "--embd", "32", "--ff", "64", "--heads", "2",
                             "--kv-heads", "1", "--tie-embeddings", "--type", "bf16", "--vocab-from", vocab,
                             "-o", out, NULL), 0);
  llorch_gguf *src, *g = open_ok(out);
  llorch_errmsg em;
  assert_int_equal(llorch_gguf_open(&src, vocab, LLORCH_GGUF_OPEN_HEADER_ONLY, &em), 0);
  /* every tokenizer.* kv is copied with its type and contents */
  int copied = 0;
  for (uint64_t i = 0; i < llorch_gguf_n_kv(src); i++) {
    const llorch_gguf_kv *a = llorch_gguf_kv_at(src, i);
    if (strncmp(a->key, "tokenizer.", 10) != 0) continue;
    const llorch_gguf_kv *b = llorch_gguf_find_kv(g, a->key);
    assert_non_null(b);
    assert_int_equal(a->type, b->type);
    if (a->type == LLORCH_GGUF_ARRAY) {
      assert_int_equal(a->arr_n, b->arr_n);
      assert_int_equal(a->arr_type, b->arr_type);
      if (a->arr_type == LLORCH_GGUF_STRING) {
        llorch_gguf_str x = llorch_gguf_arr_str(a, a->arr_n - 1, NULL);
        llorch_gguf_str y = llorch_gguf_arr_str(b, b->arr_n - 1, NULL);
        assert_true(x.len == y.len && memcmp(x.ptr, y.ptr, x.len) == 0);
      }
    } else if (a->type == LLORCH_GGUF_STRING) {
      assert_true(a->v.str.len == b->v.str.len && memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0);
    } else {
      assert_memory_equal(&a->v, &b->v, sizeof a->v);
    }
    copied++;
  }
  assert_true(copied >= 5);
  /* the vocab file's own hyper-parameters (a real model's) are not copied */
  assert_int_not_equal(get_u32(src, "llama.block_count"), 1);
  assert_int_equal(get_u32(g, "llama.block_count"), 1);
  assert_int_equal(get_u32(g, "llama.embedding_length"), 32);
  const llorch_gguf_kv *toks = llorch_gguf_find_kv(src, "tokenizer.ggml.tokens");
  assert_int_equal(toks->arr_n, 32000);
  assert_int_equal(get_u32(g, "llama.vocab_size"), 32000);
  tensor(g, "token_embd.weight", LLORCH_TYPE_BF16, 32, 32000);
  assert_null(llorch_gguf_find_tensor(g, "output.weight")); /* tied */
  llorch_gguf_close(src);
  llorch_gguf_close(g);
}

static void test_deterministic(void **state) {
  (void)state;
  char a[300], b[300], c[300];
  snprintf(a, sizeof a, "%s/d1.gguf", tmpdir);
  snprintf(b, sizeof b, "%s/d2.gguf", tmpdir);
  snprintf(c, sizeof c, "%s/d3.gguf", tmpdir);
#define ARGS "--arch", "llama", "--layers", "1", "--embd", "64", "--ff", "64", "--heads", "2", "--kv-heads", "2", \
             "--type", "q6_k", "--vocab", "300"
  assert_int_equal(run_synth(ARGS, "--seed", "7", "-o", a, NULL), 0);
  assert_int_equal(run_synth(ARGS, "--seed", "7", "-o", b, NULL), 0);
  assert_int_equal(run_synth(ARGS, "--seed", "8", "-o", c, NULL), 0);
#undef ARGS
  llorch_gguf *ga = open_ok(a), *gb = open_ok(b), *gc = open_ok(c);
  assert_int_equal(llorch_gguf_file_size(ga), llorch_gguf_file_size(gb));
  assert_int_equal(llorch_gguf_file_size(ga), llorch_gguf_file_size(gc));
  int same_seed_equal = 1, other_seed_equal = 1;
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(ga); i++) {
    const llorch_gguf_tensor *x = llorch_gguf_tensor_at(ga, i);
    const llorch_gguf_tensor *y = llorch_gguf_find_tensor(gb, x->name);
    const llorch_gguf_tensor *z = llorch_gguf_find_tensor(gc, x->name);
    if (memcmp(x->data, y->data, x->nbytes) != 0) same_seed_equal = 0;
    if (memcmp(x->data, z->data, x->nbytes) != 0) other_seed_equal = 0;
  }
  assert_true(same_seed_equal);
  assert_false(other_seed_equal);
  /* tensors of the same shape differ from each other (seeded by name) */
  const llorch_gguf_tensor *q = llorch_gguf_find_tensor(ga, "blk.0.attn_q.weight");
  const llorch_gguf_tensor *o = llorch_gguf_find_tensor(ga, "blk.0.attn_output.weight");
  assert_int_equal(q->nbytes, o->nbytes);
  assert_memory_not_equal(q->data, o->data, q->nbytes);
  llorch_gguf_close(ga);
  llorch_gguf_close(gb);
  llorch_gguf_close(gc);
}

static void test_usage_errors(void **state) {
  (void)state;
  char out[300];
  snprintf(out, sizeof out, "%s/never.gguf", tmpdir);
  assert_int_equal(run_synth("--arch", "llama", "--layers", "1", "--embd", "64", "--ff", "64", "--heads", "2",
                             "--kv-heads", "2", NULL), 2); /* no -o */
  assert_int_equal(run_synth("--arch", "gpt2", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--preset", "llama9", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--preset", "qwen2.5-0.5b", "--arch", "llama", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--arch", "llama", "--layers", "1", "--embd", "60", "--ff", "64", "--heads", "8",
                             "--kv-heads", "2", "-o", out, NULL), 2); /* 60 % 8 */
  assert_int_equal(run_synth("--arch", "llama", "--layers", "1", "--embd", "64", "--ff", "64", "--heads", "6",
                             "--kv-heads", "4", "--head-dim", "16", "-o", out, NULL), 2); /* 6 % 4 */
  assert_int_equal(run_synth("--arch", "llama", "--layers", "0", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--arch", "llama", "--layers", "x", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--preset", "qwen2.5-0.5b", "--type", "q5_k", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--preset", "qwen2.5-0.5b", "--bogus", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--preset", "qwen2.5-0.5b", "--pooling", "avg", "-o", out, NULL), 2);
  assert_int_equal(run_synth("--arch", "llama", "--layers", "1", "--embd", "64", "--ff", "64", "--heads", "2",
                             "--kv-heads", "2", "--vocab-from", "/nonexistent.gguf", "-o", out, NULL), 1);
  assert_int_equal(access(out, F_OK), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_qwen2_builtin_tokenizer),
      cmocka_unit_test(test_qwen3_q4_k),
      cmocka_unit_test(test_llama_preset_rope_freqs),
      cmocka_unit_test(test_vocab_from_and_tied),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
