/*
 * The CPU backend's forward pass on tiny random models of each architecture
 * and weight type, written here with the GGUF writer:
 *   - logits against a naive reference written in this file (weights
 *     dequantized, float math, float KV cache, libm exp), within a tolerance;
 *   - the SIMD kernels against the scalar ones: bit-identical logits;
 *   - batch invariance: a sequence's logits are bit-identical alone or
 *     batched with another sequence, prefill and decode mixed;
 *   - model validation errors (unknown arch, missing tensor, bad shape,
 *     unsupported type) and batch errors.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/backend.h"
#include "llorch/memory.h"
#include "llorch/model.h"
#include "llorch/quant.h"
#include "engine/kernels.h"

/* ---- a tiny model generator ---- */

typedef struct tiny_spec {
  const char *arch;
  llorch_ggml_type wtype;   /* matrices */
  uint32_t n_embd, n_ff, n_head, n_head_kv, head_dim, n_layer, n_vocab;
  bool tied;
  bool rope_freqs;          /* llama: add rope_freqs.weight */
  /* sabotage for the error tests */
  const char *skip_tensor;
  const char *bad_shape_tensor;
  llorch_ggml_type bad_type;  /* != F32: give blk.0.ffn_up.weight this type */
} tiny_spec;

static uint64_t rng;

static float rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int add_tensor(llorch_gguf_writer *w, const tiny_spec *sp, const char *name,
                      llorch_ggml_type t, uint64_t n_in, uint64_t n_out, float scale, float offset) {
  if (sp->skip_tensor && strcmp(sp->skip_tensor, name) == 0) return 0;
  if (sp->bad_shape_tensor && strcmp(sp->bad_shape_tensor, name) == 0) n_in += 32 * (n_in >= 256 ? 8 : 1);
  if (sp->bad_type != LLORCH_TYPE_F32 && strcmp(name, "blk.0.ffn_up.weight") == 0) t = sp->bad_type;
  uint64_t rows = n_out ? n_out : 1;
  size_t rs = llorch_row_size(t, (int64_t)n_in);
  assert_true(rs > 0);
  char *data = malloc(rs * rows);
  float *row = malloc(sizeof(float) * n_in);
  for (uint64_t r = 0; r < rows; r++) {
    for (uint64_t i = 0; i < n_in; i++) row[i] = offset + scale * rnd();
    if (llorch_type_can_quantize(t))
      assert_int_equal(llorch_quantize_row(t, row, data + r * rs, (int64_t)n_in), 0);
    else
      memset(data + r * rs, 0, rs); /* a type the engine rejects: contents never read */
  }
  uint64_t ne[2] = {n_in, n_out};
  int rc = llorch_gguf_writer_add_tensor(w, name, t, n_out ? 2 : 1, ne, data);
  free(data);
  free(row);
  return rc;
}

static void tiny_write(const tiny_spec *sp, const char *path) {
  llorch_gguf_writer *w;
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  char k[128];
  const char *a = sp->arch;
  llorch_gguf_writer_set_str(w, "general.architecture", a);
  llorch_gguf_writer_set_str(w, "general.name", "tiny");
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", a, s), k)
  llorch_gguf_writer_set_u32(w, KEY("context_length"), 64);
  llorch_gguf_writer_set_u32(w, KEY("embedding_length"), sp->n_embd);
  llorch_gguf_writer_set_u32(w, KEY("block_count"), sp->n_layer);
  llorch_gguf_writer_set_u32(w, KEY("feed_forward_length"), sp->n_ff);
  llorch_gguf_writer_set_u32(w, KEY("attention.head_count"), sp->n_head);
  llorch_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), sp->n_head_kv);
  llorch_gguf_writer_set_u32(w, KEY("attention.key_length"), sp->head_dim);
  llorch_gguf_writer_set_u32(w, KEY("attention.value_length"), sp->head_dim);
  llorch_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f);
  llorch_gguf_writer_set_f32(w, KEY("rope.freq_base"), 10000.0f);
#undef KEY
  const uint64_t E = sp->n_embd, F = sp->n_ff, HD = sp->head_dim;
  const uint64_t QD = HD * sp->n_head, KD = HD * sp->n_head_kv;
  const float ws = 1.0f / sqrtf((float)E);
  assert_int_equal(add_tensor(w, sp, "token_embd.weight", sp->wtype, E, sp->n_vocab, 1.0f, 0), 0);
  assert_int_equal(add_tensor(w, sp, "output_norm.weight", LLORCH_TYPE_F32, E, 0, 0.2f, 1.0f), 0);
  if (!sp->tied)
    assert_int_equal(add_tensor(w, sp, "output.weight", sp->wtype, E, sp->n_vocab, ws * 4, 0), 0);
  if (sp->rope_freqs)
    assert_int_equal(add_tensor(w, sp, "rope_freqs.weight", LLORCH_TYPE_F32, HD / 2, 0, 0.5f, 1.5f), 0);
  for (uint32_t il = 0; il < sp->n_layer; il++) {
    char n[96];
#define T(s) (snprintf(n, sizeof n, "blk.%u.%s", il, s), n)
    assert_int_equal(add_tensor(w, sp, T("attn_norm.weight"), LLORCH_TYPE_F32, E, 0, 0.2f, 1.0f), 0);
    assert_int_equal(add_tensor(w, sp, T("attn_q.weight"), sp->wtype, E, QD, ws * 2, 0), 0);
    assert_int_equal(add_tensor(w, sp, T("attn_k.weight"), sp->wtype, E, KD, ws * 2, 0), 0);
    assert_int_equal(add_tensor(w, sp, T("attn_v.weight"), sp->wtype, E, KD, ws, 0), 0);
    assert_int_equal(add_tensor(w, sp, T("attn_output.weight"), sp->wtype, QD, E, ws, 0), 0);
    if (strcmp(a, "qwen2") == 0) {
      assert_int_equal(add_tensor(w, sp, T("attn_q.bias"), LLORCH_TYPE_F32, QD, 0, 0.5f, 0), 0);
      assert_int_equal(add_tensor(w, sp, T("attn_k.bias"), LLORCH_TYPE_F32, KD, 0, 0.5f, 0), 0);
      assert_int_equal(add_tensor(w, sp, T("attn_v.bias"), LLORCH_TYPE_F32, KD, 0, 0.5f, 0), 0);
    }
    if (strcmp(a, "qwen3") == 0) {
      assert_int_equal(add_tensor(w, sp, T("attn_q_norm.weight"), LLORCH_TYPE_F32, HD, 0, 0.2f, 1.0f), 0);
      assert_int_equal(add_tensor(w, sp, T("attn_k_norm.weight"), LLORCH_TYPE_F32, HD, 0, 0.2f, 1.0f), 0);
    }
    assert_int_equal(add_tensor(w, sp, T("ffn_norm.weight"), LLORCH_TYPE_F32, E, 0, 0.2f, 1.0f), 0);
    assert_int_equal(add_tensor(w, sp, T("ffn_gate.weight"), sp->wtype, E, F, ws * 2, 0), 0);
    assert_int_equal(add_tensor(w, sp, T("ffn_up.weight"), sp->wtype, E, F, ws * 2, 0), 0);
    assert_int_equal(add_tensor(w, sp, T("ffn_down.weight"), sp->wtype, F, E, 1.0f / sqrtf((float)F), 0), 0);
#undef T
  }
  llorch_errmsg em = {{0}};
  int rc = llorch_gguf_writer_write_file(w, path, &em);
  if (rc) fail_msg("write %s: %s", path, em.text);
  llorch_gguf_writer_free(w);
}

static tiny_spec tiny_default(const char *arch, llorch_ggml_type t) {
  tiny_spec s = {.arch = arch, .wtype = t, .n_embd = 256, .n_ff = 512, .n_head = 4,
                 .n_head_kv = 2, .head_dim = 64, .n_layer = 2, .n_vocab = 96,
                 .bad_type = LLORCH_TYPE_F32};
  if (strcmp(arch, "qwen3") == 0) s.n_head = 8; /* q_dim 512 != n_embd: key_length matters */
  if (strcmp(arch, "llama") == 0) s.rope_freqs = true;
  if (strcmp(arch, "qwen2") == 0) s.tied = true;
  return s;
}

static char tmp_path[64];

static llorch_model *tiny_load(const tiny_spec *sp) {
  snprintf(tmp_path, sizeof tmp_path, "/tmp/llorch-engine-test-%d.gguf", (int)getpid());
  rng = 0x9E3779B97F4A7C15ull;
  tiny_write(sp, tmp_path);
  llorch_model *m = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_model_load(&m, tmp_path, &em);
  unlink(tmp_path); /* the map stays valid */
  if (rc) fail_msg("load: %s", em.text);
  return m;
}

/* ---- the naive reference: float math on dequantized weights ---- */

typedef struct ref_model {
  const llorch_model *m;
  float *kc, *vc; /* (n_layer, n_ctx, kv_dim) */
  int n_ctx;
} ref_model;

static float *deq(const llorch_gguf_tensor *t) {
  uint64_t n = t->ne[0] * t->ne[1];
  float *out = malloc(sizeof(float) * n);
  size_t rs = llorch_row_size(t->type, (int64_t)t->ne[0]);
  for (uint64_t r = 0; r < t->ne[1]; r++)
    assert_int_equal(llorch_dequantize_row(t->type, (const char *)t->data + r * rs, out + r * t->ne[0],
                                           (int64_t)t->ne[0]), 0);
  return out;
}

static void ref_matvec(const llorch_gguf_tensor *t, const float *x, float *y) {
  float *w = deq(t);
  for (uint64_t r = 0; r < t->ne[1]; r++) {
    double s = 0;
    for (uint64_t i = 0; i < t->ne[0]; i++) s += (double)w[r * t->ne[0] + i] * x[i];
    y[r] = (float)s;
  }
  free(w);
}

static void ref_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
  double s = 0;
  for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
  float sc = (float)(1.0 / sqrt(s / n + eps));
  for (int i = 0; i < n; i++) y[i] = x[i] * sc * w[i];
}

static void ref_rope(const llorch_model *m, float *x, int pos) {
  const llorch_hparams *hp = &m->hp;
  const int n_rot = (int)hp->n_rot;
  for (int i = 0; i < n_rot / 2; i++) {
    double freq = pow(hp->rope_freq_base, -2.0 * i / n_rot);
    if (m->rope_freqs) freq /= ((const float *)m->rope_freqs->data)[i];
    double th = pos * freq;
    int a = hp->rope_type == LLORCH_ROPE_NORM ? 2 * i : i;
    int b = hp->rope_type == LLORCH_ROPE_NORM ? 2 * i + 1 : i + n_rot / 2;
    float x0 = x[a], x1 = x[b];
    x[a] = (float)(x0 * cos(th) - x1 * sin(th));
    x[b] = (float)(x0 * sin(th) + x1 * cos(th));
  }
}

/* One token through the reference; fills logits. */
static void ref_step(ref_model *r, int token, int pos, float *logits) {
  const llorch_model *m = r->m;
  const llorch_hparams *hp = &m->hp;
  const int E = (int)hp->n_embd, F = (int)hp->n_ff, HD = (int)hp->head_dim;
  const int QD = HD * (int)hp->n_head, KD = HD * (int)hp->n_head_kv;
  float *x = malloc(sizeof(float) * E), *xn = malloc(sizeof(float) * (E > QD ? E : QD));
  float *q = malloc(sizeof(float) * QD), *k = malloc(sizeof(float) * KD), *v = malloc(sizeof(float) * KD);
  float *att = malloc(sizeof(float) * QD), *o = malloc(sizeof(float) * E);
  float *g = malloc(sizeof(float) * F), *u = malloc(sizeof(float) * F);
  float *emb = deq(m->tok_embd);
  memcpy(x, emb + (size_t)token * E, sizeof(float) * E);
  free(emb);
  for (uint32_t il = 0; il < hp->n_layer; il++) {
    const llorch_layer *L = &m->layers[il];
    ref_rmsnorm(xn, x, L->attn_norm->data, E, hp->rms_eps);
    ref_matvec(L->wq, xn, q);
    ref_matvec(L->wk, xn, k);
    ref_matvec(L->wv, xn, v);
    if (L->bq) {
      for (int d = 0; d < QD; d++) q[d] += ((const float *)L->bq->data)[d];
      for (int d = 0; d < KD; d++) k[d] += ((const float *)L->bk->data)[d];
      for (int d = 0; d < KD; d++) v[d] += ((const float *)L->bv->data)[d];
    }
    if (L->q_norm) {
      for (uint32_t h = 0; h < hp->n_head; h++) ref_rmsnorm(q + h * HD, q + h * HD, L->q_norm->data, HD, hp->rms_eps);
      for (uint32_t h = 0; h < hp->n_head_kv; h++) ref_rmsnorm(k + h * HD, k + h * HD, L->k_norm->data, HD, hp->rms_eps);
    }
    for (uint32_t h = 0; h < hp->n_head; h++) ref_rope(m, q + h * HD, pos);
    for (uint32_t h = 0; h < hp->n_head_kv; h++) ref_rope(m, k + h * HD, pos);
    memcpy(r->kc + ((size_t)il * r->n_ctx + pos) * KD, k, sizeof(float) * KD);
    memcpy(r->vc + ((size_t)il * r->n_ctx + pos) * KD, v, sizeof(float) * KD);
    for (uint32_t h = 0; h < hp->n_head; h++) {
      int kvh = (int)(h / (hp->n_head / hp->n_head_kv));
      double sc[64], mx = -1e300, sum = 0;
      for (int t = 0; t <= pos; t++) {
        const float *kt = r->kc + ((size_t)il * r->n_ctx + t) * KD + kvh * HD;
        double s = 0;
        for (int d = 0; d < HD; d++) s += (double)q[h * HD + d] * kt[d];
        sc[t] = s / sqrt((double)HD);
        if (sc[t] > mx) mx = sc[t];
      }
      for (int t = 0; t <= pos; t++) sum += (sc[t] = exp(sc[t] - mx));
      for (int d = 0; d < HD; d++) {
        double s = 0;
        for (int t = 0; t <= pos; t++) s += sc[t] / sum * r->vc[((size_t)il * r->n_ctx + t) * KD + kvh * HD + d];
        att[h * HD + d] = (float)s;
      }
    }
    ref_matvec(L->wo, att, o);
    for (int d = 0; d < E; d++) x[d] += o[d];
    ref_rmsnorm(xn, x, L->ffn_norm->data, E, hp->rms_eps);
    ref_matvec(L->w_gate, xn, g);
    ref_matvec(L->w_up, xn, u);
    for (int i = 0; i < F; i++) g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
    ref_matvec(L->w_down, g, o);
    for (int d = 0; d < E; d++) x[d] += o[d];
  }
  ref_rmsnorm(xn, x, m->output_norm->data, E, hp->rms_eps);
  ref_matvec(m->output, xn, logits);
  free(x); free(xn); free(q); free(k); free(v); free(att); free(o); free(g); free(u);
}

/* ---- helpers over the backend ---- */

static llorch_backend open_cpu(const llorch_model *m, int n_seq, int threads) {
  llorch_backend be;
  llorch_backend_params p = {.n_ctx = 64, .n_seq = (uint32_t)n_seq, .n_batch_max = 32, .n_threads = threads};
  llorch_errmsg em = {{0}};
  int rc = llorch_backend_open(&be, m, "cpu", &p, &em);
  if (rc) fail_msg("backend open: %s", em.text);
  return be;
}

/* Runs a batch where every entry wants logits. */
static void run_batch(llorch_backend *be, int n, const int32_t *tok, const int32_t *pos,
                      const int32_t *seq, float *logits) {
  int8_t want[64];
  for (int i = 0; i < n; i++) want[i] = 1;
  llorch_batch b = {.n_tokens = n, .token = tok, .pos = pos, .seq = seq, .logits = want};
  llorch_errmsg em = {{0}};
  int rc = be->ops->forward(be->ctx, &b, logits, &em);
  if (rc) fail_msg("forward: %s", em.text);
}

static const int32_t PROMPT[7] = {5, 17, 33, 2, 90, 61, 40};
static const int32_t DECODE[3] = {11, 72, 3};

/* The prompt in one chunk, then 3 single-token steps: (10, n_vocab) logits. */
static float *run_sequence(llorch_backend *be, int32_t seq) {
  const int V = (int)be->model->hp.n_vocab;
  float *out = malloc(sizeof(float) * 10 * (size_t)V);
  int32_t pos[7], sq[7];
  for (int i = 0; i < 7; i++) {
    pos[i] = i;
    sq[i] = seq;
  }
  run_batch(be, 7, PROMPT, pos, sq, out);
  for (int i = 0; i < 3; i++) {
    int32_t p = 7 + i;
    run_batch(be, 1, &DECODE[i], &p, &seq, out + (size_t)(7 + i) * V);
  }
  return out;
}

/* ---- tests ---- */

static void check_against_reference(const char *arch, llorch_ggml_type t, double tol) {
  tiny_spec sp = tiny_default(arch, t);
  llorch_model *m = tiny_load(&sp);
  llorch_backend be = open_cpu(m, 1, 2);
  float *got = run_sequence(&be, 0);
  ref_model r = {.m = m, .n_ctx = 64};
  const size_t KD = (size_t)m->hp.head_dim * m->hp.n_head_kv;
  r.kc = calloc((size_t)m->hp.n_layer * 64 * KD, sizeof(float));
  r.vc = calloc((size_t)m->hp.n_layer * 64 * KD, sizeof(float));
  const int V = (int)m->hp.n_vocab;
  float *want = malloc(sizeof(float) * (size_t)V);
  for (int i = 0; i < 10; i++) {
    int tok = i < 7 ? PROMPT[i] : DECODE[i - 7];
    ref_step(&r, tok, i, want);
    double maxabs = 0, maxdiff = 0;
    for (int v = 0; v < V; v++) {
      maxabs = fmax(maxabs, fabs(want[v]));
      maxdiff = fmax(maxdiff, fabs(want[v] - got[(size_t)i * V + v]));
    }
    if (!(maxdiff <= tol * maxabs))
      fail_msg("%s %s position %d: max |diff| %g vs max |logit| %g", arch, llorch_type_name(t), i,
               maxdiff, maxabs);
  }
  free(want);
  free(r.kc);
  free(r.vc);
  free(got);
  llorch_backend_close(&be);
  llorch_model_free(m);
}

static void test_llama_f32(void **s) { (void)s; check_against_reference("llama", LLORCH_TYPE_F32, 3e-3); }
static void test_llama_f16(void **s) { (void)s; check_against_reference("llama", LLORCH_TYPE_F16, 1e-2); }
static void test_llama_q8_0(void **s) { (void)s; check_against_reference("llama", LLORCH_TYPE_Q8_0, 3e-2); }
static void test_qwen2_f16(void **s) { (void)s; check_against_reference("qwen2", LLORCH_TYPE_F16, 1e-2); }
static void test_qwen2_bf16(void **s) { (void)s; check_against_reference("qwen2", LLORCH_TYPE_BF16, 3e-2); }
static void test_qwen2_q4_0(void **s) { (void)s; check_against_reference("qwen2", LLORCH_TYPE_Q4_0, 5e-2); }
static void test_qwen3_q8_0(void **s) { (void)s; check_against_reference("qwen3", LLORCH_TYPE_Q8_0, 3e-2); }
static void test_qwen3_q4_K(void **s) { (void)s; check_against_reference("qwen3", LLORCH_TYPE_Q4_K, 5e-2); }
static void test_llama_q6_K(void **s) { (void)s; check_against_reference("llama", LLORCH_TYPE_Q6_K, 5e-2); }

/* SIMD and scalar kernels give the same bits through a whole forward pass,
 * for each SIMD path this CPU can run and its scalar twin (LLORCH_CPU_ISA). */
static void test_scalar_and_simd_identical(void **s) {
  (void)s;
  const llorch_ggml_type types[] = {LLORCH_TYPE_F16, LLORCH_TYPE_Q8_0, LLORCH_TYPE_Q4_K, LLORCH_TYPE_BF16};
  const char *archs[] = {"qwen2", "llama", "qwen3", "qwen2"};
  const char *pairs[][2] = {{"avx2", "scalar"}, {"avx512", "scalar-avx512"}, {"avx512f", "scalar-avx512f"}};
  int ran = 0;
  for (int p = 0; p < 3; p++) {
    if (!kern_by_name(pairs[p][0])) {
      print_message("note: this CPU cannot run the %s kernels\n", pairs[p][0]);
      continue;
    }
    if (p == 1 && !kern_by_name("avx512")->bf16_pairs) pairs[p][1] = "scalar-avx512f";
    for (int i = 0; i < 4; i++) {
      tiny_spec sp = tiny_default(archs[i], types[i]);
      llorch_model *m = tiny_load(&sp);
      setenv("LLORCH_CPU_ISA", pairs[p][0], 1);
      llorch_backend fast = open_cpu(m, 1, 2);
      setenv("LLORCH_CPU_ISA", pairs[p][1], 1);
      llorch_backend slow = open_cpu(m, 1, 1);
      unsetenv("LLORCH_CPU_ISA");
      float *a = run_sequence(&fast, 0), *b = run_sequence(&slow, 0);
      assert_memory_equal(a, b, sizeof(float) * 10 * m->hp.n_vocab);
      free(a);
      free(b);
      llorch_backend_close(&fast);
      llorch_backend_close(&slow);
      llorch_model_free(m);
      ran++;
    }
  }
  if (!ran) {
    print_message("skipping: no SIMD kernels run on this CPU\n");
    skip();
  }
}

/* An unknown LLORCH_CPU_ISA is an error naming the variable and the value. */
static void test_cpu_isa_unknown(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("llama", LLORCH_TYPE_F16);
  llorch_model *m = tiny_load(&sp);
  setenv("LLORCH_CPU_ISA", "sse9", 1);
  llorch_backend b;
  llorch_errmsg em = {{0}};
  llorch_backend_params bp = {.n_ctx = 64, .n_threads = 1, .n_seq = 1, .n_batch_max = 8};
  int rc = llorch_backend_open(&b, m, "cpu", &bp, &em);
  unsetenv("LLORCH_CPU_ISA");
  assert_int_equal(rc, LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "LLORCH_CPU_ISA 'sse9'"));
  llorch_model_free(m);
}

/*
 * Sequence 0 alone, versus sequence 0 sharing every forward call with
 * sequence 1 (its prompt interleaved with 0's prompt, then 0's decode steps
 * beside 1's longer chunks, then several decode steps together).
 */
static void test_batch_invariance(void **s) {
  (void)s;
  /* Q4_K: repacked weights, whose order depends on an entry's rank in its
   * sequence (groups of 4) - still nothing from the other sequences */
  const llorch_ggml_type types[] = {LLORCH_TYPE_F16, LLORCH_TYPE_Q8_0, LLORCH_TYPE_Q4_K};
  for (int ti = 0; ti < 3; ti++) {
    tiny_spec sp = tiny_default("qwen2", types[ti]);
    llorch_model *m = tiny_load(&sp);
    const int V = (int)m->hp.n_vocab;
    llorch_backend alone = open_cpu(m, 2, 2);
    float *ref = run_sequence(&alone, 0);
    llorch_backend mixed = open_cpu(m, 3, 2);
    float *got = malloc(sizeof(float) * 32 * (size_t)V);
    /* batch 1: seq 1 (3 tokens), seq 0's prompt (7), seq 2 (1 token), interleaved */
    int32_t tok[11], pos[11], sq[11];
    int n = 0, p0 = 0, p1 = 0;
    for (int i = 0; i < 7; i++) {
      if (i < 3) { tok[n] = 40 + i; pos[n] = p1++; sq[n] = 1; n++; }
      tok[n] = PROMPT[i]; pos[n] = p0++; sq[n] = 0; n++;
    }
    tok[n] = 7; pos[n] = 0; sq[n] = 2; n++;
    run_batch(&mixed, n, tok, pos, sq, got);
    int k = 0;
    for (int i = 0; i < n; i++)
      if (sq[i] == 0) {
        if (memcmp(got + (size_t)i * V, ref + (size_t)k * V, sizeof(float) * V) != 0)
          fail_msg("%s prompt entry %d differs when batched", llorch_type_name(types[ti]), k);
        k++;
      }
    /* decode steps of seq 0 beside a 4-token chunk of seq 1 and one of seq 2 */
    for (int d = 0; d < 3; d++) {
      n = 0;
      for (int j = 0; j < 4; j++) { tok[n] = 50 + j + d; pos[n] = p1++; sq[n] = 1; n++; }
      tok[n] = DECODE[d]; pos[n] = p0++; sq[n] = 0; n++;
      tok[n] = 9 + d; pos[n] = 1 + d; sq[n] = 2; n++;
      run_batch(&mixed, n, tok, pos, sq, got);
      if (memcmp(got + (size_t)4 * V, ref + (size_t)(7 + d) * V, sizeof(float) * V) != 0)
        fail_msg("%s decode step %d differs when batched", llorch_type_name(types[ti]), d);
    }
    /* a slot reset starts over: the prompt again gives the same logits */
    mixed.ops->seq_reset(mixed.ctx, 0);
    int32_t pp[7], ss[7];
    for (int i = 0; i < 7; i++) { pp[i] = i; ss[i] = 0; }
    run_batch(&mixed, 7, PROMPT, pp, ss, got);
    assert_memory_equal(got, ref, sizeof(float) * 7 * V);
    free(got);
    free(ref);
    llorch_backend_close(&alone);
    llorch_backend_close(&mixed);
    llorch_model_free(m);
  }
}

/* ---- the paged KV cache ---- */

static llorch_backend open_paged(const llorch_model *m, int n_seq, uint32_t block_tokens,
                                 uint32_t n_blocks) {
  llorch_backend be;
  llorch_backend_params p = {.n_ctx = 64, .n_seq = (uint32_t)n_seq, .n_batch_max = 32,
                             .n_threads = 2, .kv_block_tokens = block_tokens,
                             .n_kv_blocks = n_blocks};
  llorch_errmsg em = {{0}};
  if (llorch_backend_open(&be, m, "cpu", &p, &em)) fail_msg("backend open: %s", em.text);
  return be;
}

static void set_blocks(llorch_backend *be, int32_t seq, const int32_t *blk, uint32_t n,
                       uint32_t n_past) {
  llorch_errmsg em = {{0}};
  if (be->ops->seq_set_blocks(be->ctx, seq, blk, n, n_past, &em))
    fail_msg("seq_set_blocks: %s", em.text);
}

/* Feeds PROMPT/DECODE tokens [from, to) of the 10-token run as one batch
 * of sequence seq, every entry wanting logits. */
static void run_range(llorch_backend *be, int32_t seq, int from, int to, float *out) {
  int32_t tok[10], pos[10], sq[10];
  for (int i = from; i < to; i++) {
    tok[i - from] = i < 7 ? PROMPT[i] : DECODE[i - 7];
    pos[i - from] = i;
    sq[i - from] = seq;
  }
  run_batch(be, to - from, tok, pos, sq, out);
}

/*
 * Blocks of 4 positions in a scrambled order give the same bits as the
 * unpaged layout; a second sequence that continues a shared full block, or
 * a copy of a partly used one, gets the same logits as recomputing, and the
 * owner's blocks are untouched by it.
 */
static void test_paged_kv(void **s) {
  (void)s;
  const llorch_ggml_type types[] = {LLORCH_TYPE_F16, LLORCH_TYPE_Q8_0};
  for (int ti = 0; ti < 2; ti++) {
    tiny_spec sp = tiny_default("qwen2", types[ti]);
    llorch_model *m = tiny_load(&sp);
    const int V = (int)m->hp.n_vocab;
    const size_t row = sizeof(float) * (size_t)V;
    llorch_backend flat = open_cpu(m, 1, 2);
    float *ref = run_sequence(&flat, 0);
    llorch_backend be = open_paged(m, 2, 4, 12);
    llorch_backend_memory mem;
    be.ops->memory(be.ctx, &mem);
    assert_int_equal(mem.kv_block_tokens, 4);
    assert_int_equal(mem.kv_blocks, 12);
    float *got = malloc(row * 10);
    /* the prompt then 3 decode steps across blocks 7, 2, 9 */
    const int32_t t0[3] = {7, 2, 9};
    set_blocks(&be, 0, t0, 3, 0);
    run_range(&be, 0, 0, 7, got);
    for (int i = 7; i < 10; i++) run_range(&be, 0, i, i + 1, got + (size_t)i * V);
    if (memcmp(got, ref, row * 10) != 0) fail_msg("%s: paged logits differ", llorch_type_name(types[ti]));
    /* sequence 1 shares full block 7 (positions 0..3) and computes 4..6 */
    const int32_t t1[2] = {7, 5};
    set_blocks(&be, 1, t1, 2, 4);
    run_range(&be, 1, 4, 7, got);
    if (memcmp(got, ref + (size_t)4 * V, row * 3) != 0)
      fail_msg("%s: continuing a shared block differs", llorch_type_name(types[ti]));
    /* copy-on-write: 3 positions of block 7 copied into block 4, then 3..6 */
    llorch_errmsg em = {{0}};
    be.ops->seq_reset(be.ctx, 1);
    assert_int_equal(be.ops->kv_copy_block(be.ctx, 4, 7, 3, &em), 0);
    const int32_t t2[2] = {4, 6};
    set_blocks(&be, 1, t2, 2, 3);
    run_range(&be, 1, 3, 7, got);
    if (memcmp(got, ref + (size_t)3 * V, row * 4) != 0)
      fail_msg("%s: continuing a copied block differs", llorch_type_name(types[ti]));
    /* the owner's blocks still hold its prompt: decode again from position 7 */
    set_blocks(&be, 0, t0, 3, 7);
    for (int i = 7; i < 10; i++) run_range(&be, 0, i, i + 1, got + (size_t)i * V);
    if (memcmp(got + (size_t)7 * V, ref + (size_t)7 * V, row * 3) != 0)
      fail_msg("%s: the shared blocks changed", llorch_type_name(types[ti]));
    /* errors: a block outside the pool, too many blocks, a length past the
     * blocks, a position without a block */
    const int32_t bad[1] = {12};
    assert_int_equal(be.ops->seq_set_blocks(be.ctx, 1, bad, 1, 0, &em), LLORCH_EINVAL);
    assert_non_null(strstr(em.text, "block 12"));
    int32_t many[17] = {0};
    assert_int_equal(be.ops->seq_set_blocks(be.ctx, 1, many, 17, 0, &em), LLORCH_EINVAL);
    assert_int_equal(be.ops->seq_set_blocks(be.ctx, 1, t1, 1, 5, &em), LLORCH_EINVAL);
    assert_int_equal(be.ops->kv_copy_block(be.ctx, 12, 0, 1, &em), LLORCH_EINVAL);
    set_blocks(&be, 1, t1, 1, 0);
    int32_t tk[5] = {1, 2, 3, 4, 5}, ps[5] = {0, 1, 2, 3, 4}, sq[5] = {1, 1, 1, 1, 1};
    int8_t want[5] = {0, 0, 0, 0, 1};
    llorch_batch b = {.n_tokens = 5, .token = tk, .pos = ps, .seq = sq, .logits = want};
    assert_int_equal(be.ops->forward(be.ctx, &b, got, &em), LLORCH_ELIMIT);
    assert_non_null(strstr(em.text, "none for position 4"));
    free(got);
    free(ref);
    llorch_backend_close(&be);
    llorch_backend_close(&flat);
    llorch_model_free(m);
  }
}

/* Only flagged entries get logits, in entry order; others cost nothing. */
static void test_logits_only_for_flagged(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("llama", LLORCH_TYPE_F16);
  llorch_model *m = tiny_load(&sp);
  const int V = (int)m->hp.n_vocab;
  llorch_backend be = open_cpu(m, 1, 2);
  float *all = run_sequence(&be, 0);
  be.ops->seq_reset(be.ctx, 0);
  int32_t pos[7], sq[7];
  int8_t want[7] = {0, 0, 0, 0, 0, 0, 1};
  for (int i = 0; i < 7; i++) { pos[i] = i; sq[i] = 0; }
  float *last = malloc(sizeof(float) * (size_t)V);
  llorch_batch b = {.n_tokens = 7, .token = PROMPT, .pos = pos, .seq = sq, .logits = want};
  assert_int_equal(be.ops->forward(be.ctx, &b, last, NULL), 0);
  /* one output row: the last layer's FFN runs as a GEMV, so only close */
  for (int v = 0; v < V; v++) assert_true(fabsf(last[v] - all[6 * V + v]) <= 1e-3f * (1 + fabsf(all[6 * V + v])));
  free(last);
  free(all);
  llorch_backend_close(&be);
  llorch_model_free(m);
}

/*
 * forward_hidden: a batch mixing one sequence that wants logits (the
 * prompt's last entry) with another that wants hidden states only gives the
 * first the same logits bit for bit as forward on its own, and the hidden
 * state of an entry that asks for both is what its logits come from: the
 * output matrix times it gives its logits.
 */
static void test_forward_hidden(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("qwen2", LLORCH_TYPE_F32);
  llorch_model *m = tiny_load(&sp);
  const int V = (int)m->hp.n_vocab, E = (int)m->hp.n_embd;
  llorch_backend be = open_cpu(m, 2, 2);
  assert_non_null(be.ops->forward_hidden);
  int32_t pos[14], sq[14], tok[14];
  int8_t want[14] = {0}, hid[14] = {0};
  for (int i = 0; i < 7; i++) { tok[i] = PROMPT[i]; pos[i] = i; sq[i] = 0; }
  want[6] = 1;
  float *alone = malloc(sizeof(float) * (size_t)V);
  llorch_batch b = {.n_tokens = 7, .token = tok, .pos = pos, .seq = sq, .logits = want};
  assert_int_equal(be.ops->forward(be.ctx, &b, alone, NULL), 0);
  be.ops->seq_reset(be.ctx, 0);
  /* sequence 1 (7 entries, hidden states of all) before sequence 0 */
  int32_t tok2[14], pos2[14], sq2[14];
  int8_t want2[14] = {0};
  for (int i = 0; i < 7; i++) {
    tok2[i] = PROMPT[6 - i]; pos2[i] = i; sq2[i] = 1; hid[i] = 1;
    tok2[7 + i] = PROMPT[i]; pos2[7 + i] = i; sq2[7 + i] = 0;
  }
  want2[13] = 1;
  hid[6] = 1;
  float *mixed = malloc(sizeof(float) * (size_t)V);
  float *hidden = malloc(sizeof(float) * 7 * (size_t)E);
  llorch_batch b2 = {.n_tokens = 14, .token = tok2, .pos = pos2, .seq = sq2, .logits = want2, .hidden = hid};
  assert_int_equal(be.ops->forward_hidden(be.ctx, &b2, mixed, hidden, NULL), 0);
  assert_memory_equal(mixed, alone, sizeof(float) * (size_t)V);
  /* forward ignores hidden flags: the same batch gives the same logits */
  be.ops->seq_reset(be.ctx, 0);
  be.ops->seq_reset(be.ctx, 1);
  assert_int_equal(be.ops->forward(be.ctx, &b2, mixed, NULL), 0);
  assert_memory_equal(mixed, alone, sizeof(float) * (size_t)V);

  /* one entry asking for both: logits = output x hidden (f32 weights) */
  be.ops->seq_reset(be.ctx, 0);
  be.ops->seq_reset(be.ctx, 1);
  int8_t both[7] = {0, 0, 0, 0, 0, 0, 1};
  llorch_batch b3 = {.n_tokens = 7, .token = tok, .pos = pos, .seq = sq, .logits = both, .hidden = both};
  float h[512];
  assert_true(E <= 512);
  assert_int_equal(be.ops->forward_hidden(be.ctx, &b3, alone, h, NULL), 0);
  float *ref = malloc(sizeof(float) * (size_t)V);
  ref_matvec(m->output, h, ref);
  for (int v = 0; v < V; v++) assert_true(fabsf(ref[v] - alone[v]) <= 1e-4f * (1 + fabsf(ref[v])));
  /* and the hidden state is after output_norm: not the raw residual, scale ~ the norm weights */
  double ss = 0;
  for (int d = 0; d < E; d++) ss += (double)h[d] * h[d];
  assert_true(ss > 0 && isfinite(ss));
  free(ref);
  free(hidden);
  free(mixed);
  free(alone);
  llorch_backend_close(&be);
  llorch_model_free(m);
}

static void test_batch_errors(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("qwen2", LLORCH_TYPE_F16);
  llorch_model *m = tiny_load(&sp);
  llorch_backend be = open_cpu(m, 2, 1);
  float logits[96 * 2];
  int8_t want[2] = {1, 1};
  llorch_errmsg em = {{0}};
  int32_t tok[2] = {1, 2}, pos[2] = {0, 1}, seq[2] = {0, 0};
  llorch_batch b = {.n_tokens = 2, .token = tok, .pos = pos, .seq = seq, .logits = want};
  pos[0] = 1;
  assert_int_equal(be.ops->forward(be.ctx, &b, logits, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "expected 0"));
  pos[0] = 0;
  tok[1] = 96;
  assert_int_equal(be.ops->forward(be.ctx, &b, logits, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "token 96"));
  tok[1] = 2;
  seq[1] = 2;
  assert_int_equal(be.ops->forward(be.ctx, &b, logits, &em), LLORCH_EINVAL);
  seq[1] = 0;
  assert_int_equal(be.ops->forward(be.ctx, &b, logits, &em), 0);
  /* past the context */
  int32_t t1 = 3, p1 = 2, s1 = 1;
  llorch_batch b1 = {.n_tokens = 1, .token = &t1, .pos = &p1, .seq = &s1, .logits = want};
  assert_int_equal(be.ops->forward(be.ctx, &b1, logits, &em), LLORCH_EINVAL); /* seq 1 is empty */
  llorch_backend_close(&be);
  llorch_model_free(m);
}

static void expect_load_error(const tiny_spec *sp, int code, const char *needle) {
  snprintf(tmp_path, sizeof tmp_path, "/tmp/llorch-engine-test-%d.gguf", (int)getpid());
  rng = 1;
  tiny_write(sp, tmp_path);
  llorch_model *m = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_model_load(&m, tmp_path, &em);
  unlink(tmp_path);
  assert_null(m);
  if (rc != code || !strstr(em.text, needle))
    fail_msg("expected %d containing '%s', got %d: %s", code, needle, rc, em.text);
}

static void test_model_errors(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("llama", LLORCH_TYPE_F16);
  sp.arch = "gpt2";
  expect_load_error(&sp, LLORCH_EUNSUPPORTED, "llama, qwen2, qwen3");
  sp = tiny_default("qwen2", LLORCH_TYPE_F16);
  sp.skip_tensor = "blk.1.attn_k.bias";
  expect_load_error(&sp, LLORCH_EFORMAT, "blk.1.attn_k.bias is missing");
  sp = tiny_default("qwen3", LLORCH_TYPE_F16);
  sp.bad_shape_tensor = "blk.0.attn_q.weight";
  expect_load_error(&sp, LLORCH_EFORMAT, "blk.0.attn_q.weight has shape");
  sp = tiny_default("llama", LLORCH_TYPE_F16);
  sp.bad_type = LLORCH_TYPE_Q4_1;
  expect_load_error(&sp, LLORCH_EUNSUPPORTED, "type Q4_1");
}

static void test_model_metadata(void **s) {
  (void)s;
  tiny_spec sp = tiny_default("qwen3", LLORCH_TYPE_Q8_0);
  llorch_model *m = tiny_load(&sp);
  assert_string_equal(m->arch_name, "qwen3");
  assert_int_equal(m->hp.head_dim, 64);
  assert_int_equal(m->hp.n_rot, 64);
  assert_true(m->hp.has_qk_norm);
  assert_false(m->hp.tied_embeddings);
  assert_int_equal(m->hp.rope_type, LLORCH_ROPE_NEOX);
  assert_int_equal(m->hp.pooling, LLORCH_POOLING_UNSET); /* no <arch>.pooling_type */
  assert_string_equal(llorch_pooling_name(LLORCH_POOLING_LAST), "last");
  assert_int_equal(m->main_type, LLORCH_TYPE_Q8_0);
  assert_true(m->n_params > 2 * (256 * 512 + 256 * 128 * 2 + 512 * 256 + 3 * 256 * 512));
  llorch_mem_estimate me;
  const llorch_mem_params mp = {.cuda = true, .n_threads = 1};
  assert_int_equal(llorch_mem_estimate_compute(m->gguf, &mp, 32, 4, &me, NULL), 0);
  assert_true(me.kv_bytes == 2ull * 2 * 32 * 4 * (2 * 64) * 2); /* K+V, layers, ctx, seqs, kv dim, f16 */
  assert_true(me.weights_bytes >= m->weight_bytes);
  llorch_model_free(m);
  sp = tiny_default("qwen2", LLORCH_TYPE_F16);
  m = tiny_load(&sp);
  assert_true(m->hp.tied_embeddings);
  assert_ptr_equal(m->output, m->tok_embd);
  assert_true(m->hp.has_qkv_bias);
  llorch_model_free(m);
}

static void test_device_parse(void **s) {
  (void)s;
  bool cuda;
  int dev[8], n;
  assert_int_equal(llorch_device_parse("cpu", &cuda, dev, &n, NULL), 0);
  assert_false(cuda);
  assert_int_equal(llorch_device_parse("cuda:0,1", &cuda, dev, &n, NULL), 0);
  assert_true(cuda);
  assert_int_equal(n, 2);
  assert_int_equal(dev[1], 1);
  llorch_errmsg em;
  assert_int_equal(llorch_device_parse("cuda:", &cuda, dev, &n, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_device_parse("cuda:0,0", &cuda, dev, &n, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_device_parse("tpu", &cuda, dev, &n, &em), LLORCH_EINVAL);
#ifndef LLORCH_HAVE_CUDA
  tiny_spec sp = tiny_default("llama", LLORCH_TYPE_F16);
  llorch_model *m = tiny_load(&sp);
  llorch_backend be;
  llorch_backend_params p = {.n_ctx = 16, .n_seq = 1, .n_batch_max = 8, .n_threads = 1};
  assert_int_equal(llorch_backend_open(&be, m, "cuda:0", &p, &em), LLORCH_EUNSUPPORTED);
  assert_non_null(strstr(em.text, "without CUDA"));
  llorch_model_free(m);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_llama_f32),
      cmocka_unit_test(test_llama_f16),
      cmocka_unit_test(test_llama_q8_0),
      cmocka_unit_test(test_llama_q6_K),
      cmocka_unit_test(test_qwen2_f16),
      cmocka_unit_test(test_qwen2_bf16),
      cmocka_unit_test(test_qwen2_q4_0),
      cmocka_unit_test(test_qwen3_q8_0),
      cmocka_unit_test(test_qwen3_q4_K),
      cmocka_unit_test(test_scalar_and_simd_identical),
      cmocka_unit_test(test_cpu_isa_unknown),
      cmocka_unit_test(test_batch_invariance),
      cmocka_unit_test(test_paged_kv),
      cmocka_unit_test(test_logits_only_for_flagged),
      cmocka_unit_test(test_forward_hidden),
      cmocka_unit_test(test_batch_errors),
      cmocka_unit_test(test_model_errors),
      cmocka_unit_test(test_model_metadata),
      cmocka_unit_test(test_device_parse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
