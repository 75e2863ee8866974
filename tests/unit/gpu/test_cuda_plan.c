/*
 * Host-side parts of the CUDA backend, tested without a GPU
 * (src/gpu/cuda_plan.c, in every build; with nvcc also the host build of the
 * dequantizers in src/gpu/cuda/dequant.cuh and the init error path of
 * backend.cu):
 *   - memory plan: bytes per part, the INSUFFICIENT_VRAM check with both
 *     numbers, layer split over several GPUs in proportion to free memory,
 *     tied embeddings on two GPUs, rejected models and parameters;
 *   - scratch layout: aligned, disjoint, large enough;
 *   - residency bookkeeping with a fake driver query;
 *   - chunked upload through two bounded staging slots with fake copy ops;
 *   - the kernels' block decoders (compiled for the host) against the
 *     reference dequantizers, bit for bit;
 *   - device strings and opening "cuda:N" where no GPU is usable.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/backend.h"
#include "llorch/backend_cuda.h"
#include "llorch/memory.h"
#include "llorch/quant.h"

/* ---- a model without data: only shapes and types matter to the plan ---- */

typedef struct fake_model {
  llorch_model m;
  llorch_gguf_tensor *t; /* (cap) */
  int n, cap;
} fake_model;

static const llorch_gguf_tensor *fake_tensor(fake_model *f, const char *name, llorch_ggml_type type,
                                             uint64_t n_in, uint64_t n_out) {
  assert_true(f->n < f->cap);
  llorch_gguf_tensor *t = &f->t[f->n++];
  memset(t, 0, sizeof *t);
  t->name = name;
  t->n_dims = n_out ? 2 : 1;
  t->ne[0] = n_in;
  t->ne[1] = n_out ? n_out : 1;
  t->ne[2] = t->ne[3] = 1;
  t->type = type;
  size_t rs = llorch_row_size(type, (int64_t)n_in);
  t->nbytes = (rs ? rs : n_in) * t->ne[1];
  return t;
}

/* E=256, F=512, 4 heads of 64 over 2 KV heads, vocab 1000, ctx 4096 */
static fake_model *fake_build(uint32_t n_layer, llorch_ggml_type wt, bool tied, uint32_t n_head,
                              uint32_t n_head_kv) {
  fake_model *f = calloc(1, sizeof *f);
  f->cap = 16 * (int)n_layer + 8;
  f->t = calloc((size_t)f->cap, sizeof *f->t);
  llorch_hparams *hp = &f->m.hp;
  hp->arch = LLORCH_ARCH_LLAMA;
  hp->n_vocab = 1000;
  hp->n_ctx_train = 4096;
  hp->n_embd = 256;
  hp->n_layer = n_layer;
  hp->n_head = n_head;
  hp->n_head_kv = n_head_kv;
  hp->head_dim = 64;
  hp->n_ff = 512;
  hp->n_rot = 64;
  hp->rms_eps = 1e-6f;
  hp->rope_freq_base = 10000.0f;
  hp->rope_freq_scale = 1.0f;
  const uint64_t E = 256, F = 512, QD = 64ull * n_head, KD = 64ull * n_head_kv;
  f->m.tok_embd = fake_tensor(f, "token_embd.weight", wt, E, 1000);
  f->m.output_norm = fake_tensor(f, "output_norm.weight", LLORCH_TYPE_F32, E, 0);
  f->m.output = tied ? f->m.tok_embd : fake_tensor(f, "output.weight", wt, E, 1000);
  hp->tied_embeddings = tied;
  f->m.layers = calloc(n_layer, sizeof *f->m.layers);
  for (uint32_t il = 0; il < n_layer; il++) {
    llorch_layer *L = &f->m.layers[il];
    L->attn_norm = fake_tensor(f, "attn_norm", LLORCH_TYPE_F32, E, 0);
    L->wq = fake_tensor(f, "attn_q", wt, E, QD);
    L->wk = fake_tensor(f, "attn_k", wt, E, KD);
    L->wv = fake_tensor(f, "attn_v", wt, E, KD);
    L->wo = fake_tensor(f, "attn_output", wt, QD, E);
    L->ffn_norm = fake_tensor(f, "ffn_norm", LLORCH_TYPE_F32, E, 0);
    L->w_gate = fake_tensor(f, "ffn_gate", wt, E, F);
    L->w_up = fake_tensor(f, "ffn_up", wt, E, F);
    L->w_down = fake_tensor(f, "ffn_down", wt, F, E);
  }
  return f;
}

static void fake_free(fake_model *f) {
  free(f->m.layers);
  free(f->t);
  free(f);
}

static uint64_t al(uint64_t n) { return (n + 255) / 256 * 256; }

static llorch_backend_params params_for(uint32_t n_ctx, uint32_t n_seq, uint32_t B, int n_dev) {
  llorch_backend_params p = {.n_ctx = n_ctx, .n_seq = n_seq, .n_batch_max = B, .n_threads = 1,
                             .n_devices = n_dev};
  for (int i = 0; i < n_dev; i++) p.devices[i] = i;
  return p;
}

/* ---- the plan ---- */

static void test_plan_single_gpu_parts(void **state) {
  (void)state;
  fake_model *f = fake_build(4, LLORCH_TYPE_F16, false, 4, 2);
  llorch_backend_params p = params_for(512, 3, 16, 1);
  uint64_t free_b[1] = {80ull << 30};
  llorch_cuda_plan plan;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  assert_int_equal(plan.n_dev, 1);
  const llorch_cuda_dev_plan *d = &plan.dev[0];
  assert_int_equal(d->layer_begin, 0);
  assert_int_equal(d->layer_end, 4);
  assert_true(d->has_embd && d->has_output);
  uint64_t w = 0;
  for (int i = 0; i < f->n; i++) w += al(f->t[i].nbytes);
  assert_int_equal(d->weights_bytes, w);
  /* K and V, f16, 4 layers x 3 slots x 512 positions x (2 heads x 64) */
  assert_int_equal(d->kv_bytes, 2ull * 4 * 3 * 512 * 128 * 2);
  assert_int_equal(d->overhead_bytes, LLORCH_MEM_CUDA_RUNTIME_BYTES);
  assert_int_equal(d->scratch_bytes, d->scratch.total);
  assert_int_equal(d->need_bytes, d->weights_bytes + d->kv_bytes + d->scratch_bytes + d->overhead_bytes);
  assert_true(d->scratch.logits > 0);
  /* n_ctx is capped at the training context; 0 means the training context */
  p.n_ctx = 100000;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  assert_int_equal(plan.n_ctx, 4096);
  p.n_ctx = 0;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  assert_int_equal(plan.n_ctx, 4096);
  fake_free(f);
}

static void test_plan_insufficient_vram(void **state) {
  (void)state;
  fake_model *f = fake_build(4, LLORCH_TYPE_F16, false, 4, 2);
  llorch_backend_params p = params_for(4096, 64, 16, 1);
  uint64_t free_b[1] = {80ull << 30};
  llorch_cuda_plan plan;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  const uint64_t need = plan.dev[0].need_bytes;
  /* one byte short fails; exactly enough passes */
  free_b[0] = need - 1;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINSUFFICIENT_VRAM);
  char want_need[64], want_free[64];
  snprintf(want_need, sizeof want_need, "needs %.1f MiB", (double)need / 1048576.0);
  snprintf(want_free, sizeof want_free, "has %.1f MiB free", (double)(need - 1) / 1048576.0);
  assert_non_null(strstr(em.text, want_need));
  assert_non_null(strstr(em.text, want_free));
  assert_non_null(strstr(em.text, "cuda:0"));
  assert_non_null(strstr(em.text, "KV cache"));
  free_b[0] = need;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  fake_free(f);
}

static void test_plan_split_proportional(void **state) {
  (void)state;
  fake_model *f = fake_build(16, LLORCH_TYPE_F16, false, 4, 2);
  llorch_backend_params p = params_for(1024, 4, 8, 2);
  llorch_cuda_plan plan;
  llorch_errmsg em = {{0}};
  /* equal free memory: an even split */
  uint64_t free_b[2] = {8ull << 30, 8ull << 30};
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), 0);
  assert_int_equal(plan.dev[0].layer_begin, 0);
  assert_int_equal(plan.dev[0].layer_end, 8);
  assert_int_equal(plan.dev[1].layer_begin, 8);
  assert_int_equal(plan.dev[1].layer_end, 16);
  assert_true(plan.dev[0].has_embd && !plan.dev[0].has_output);
  assert_true(!plan.dev[1].has_embd && plan.dev[1].has_output);
  assert_int_equal(plan.dev[0].scratch.logits, plan.dev[0].scratch.blas_ws + al(LLORCH_CUDA_BLAS_WORKSPACE));
  /* 3:1 free (beyond the fixed parts): about three quarters of the layers on the first */
  free_b[0] = plan.dev[0].need_bytes - plan.dev[0].weights_bytes - plan.dev[0].kv_bytes + (3ull << 30);
  free_b[1] = plan.dev[1].need_bytes - plan.dev[1].weights_bytes - plan.dev[1].kv_bytes + (1ull << 30);
  llorch_cuda_plan p31;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &p31, &em), 0);
  assert_int_equal(p31.dev[0].layer_end, 12);
  assert_int_equal(p31.dev[1].layer_begin, 12);
  assert_int_equal(p31.dev[1].layer_end, 16);
  /* a GPU with almost nothing free still gets one layer (it was listed), and fails the check */
  free_b[0] = 64ull << 30;
  free_b[1] = 1;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &p31, &em), LLORCH_EINSUFFICIENT_VRAM);
  assert_int_equal(p31.dev[0].layer_end, 15);
  assert_int_equal(p31.dev[1].layer_end - p31.dev[1].layer_begin, 1);
  assert_non_null(strstr(em.text, "cuda:1"));
  /* four GPUs: contiguous, complete, every layer once */
  llorch_backend_params p4 = params_for(1024, 4, 8, 4);
  uint64_t free4[4] = {10ull << 30, 20ull << 30, 10ull << 30, 40ull << 30};
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p4, free4, &p31, &em), 0);
  uint32_t next = 0;
  for (int d = 0; d < 4; d++) {
    assert_int_equal(p31.dev[d].layer_begin, next);
    assert_true(p31.dev[d].layer_end > p31.dev[d].layer_begin);
    assert_int_equal(p31.dev[d].device, d);
    next = p31.dev[d].layer_end;
  }
  assert_int_equal(next, 16);
  assert_true(p31.dev[3].layer_end - p31.dev[3].layer_begin > p31.dev[0].layer_end - p31.dev[0].layer_begin);
  fake_free(f);
}

static void test_plan_tied_two_gpus(void **state) {
  (void)state;
  fake_model *f = fake_build(4, LLORCH_TYPE_Q8_0, true, 4, 2);
  llorch_cuda_plan one, two;
  llorch_errmsg em = {{0}};
  llorch_backend_params p1 = params_for(256, 1, 4, 1), p2 = params_for(256, 1, 4, 2);
  uint64_t free_b[2] = {8ull << 30, 8ull << 30};
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p1, free_b, &one, &em), 0);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p2, free_b, &two, &em), 0);
  /* one GPU holds the tied matrix once; split over two, both ends need it */
  const uint64_t embd = al(f->m.tok_embd->nbytes);
  assert_int_equal(two.dev[0].weights_bytes + two.dev[1].weights_bytes, one.dev[0].weights_bytes + embd);
  /* quantized matrices reserve a dequantization tile for cuBLAS */
  assert_true(one.dev[0].scratch.gemm_tile >= 256 * 2);
  assert_true(one.dev[0].scratch.gemm_tile <= LLORCH_CUDA_GEMM_TILE_BYTES);
  fake_free(f);
}

static void test_plan_rejects(void **state) {
  (void)state;
  llorch_cuda_plan plan;
  llorch_errmsg em = {{0}};
  uint64_t free_b[8] = {1ull << 40, 1ull << 40, 1ull << 40};
  fake_model *f = fake_build(2, LLORCH_TYPE_F16, false, 4, 2);
  llorch_backend_params p = params_for(256, 1, 4, 3);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "3 GPUs"));
  p = params_for(256, 0, 4, 1);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINVAL);
  p = params_for(256, 1, 0, 1);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINVAL);
  p = params_for(256, 1, 65536, 1);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINVAL);
  p = params_for(256, 1, 4, 0);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EINVAL);
  /* a type without a CUDA kernel, named */
  p = params_for(256, 1, 4, 1);
  ((llorch_gguf_tensor *)f->m.layers[1].w_up)->type = LLORCH_TYPE_Q5_0;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EUNSUPPORTED);
  assert_non_null(strstr(em.text, "ffn_up"));
  assert_non_null(strstr(em.text, "Q5_0"));
  fake_free(f);
  /* 32 query heads on one KV head: more than the attention kernel's group */
  f = fake_build(2, LLORCH_TYPE_F16, false, 32, 1);
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EUNSUPPORTED);
  fake_free(f);
  /* rows not a multiple of 32 */
  f = fake_build(2, LLORCH_TYPE_F32, false, 4, 2);
  ((llorch_gguf_tensor *)f->m.layers[0].w_down)->ne[0] = 500;
  assert_int_equal(llorch_cuda_plan_compute(&f->m, &p, free_b, &plan, &em), LLORCH_EUNSUPPORTED);
  assert_non_null(strstr(em.text, "500"));
  fake_free(f);
  assert_true(llorch_cuda_type_supported(LLORCH_TYPE_Q4_K));
  assert_true(llorch_cuda_type_supported(LLORCH_TYPE_Q6_K));
  assert_false(llorch_cuda_type_supported(LLORCH_TYPE_Q2_K));
}

/* ---- scratch ---- */

static void test_scratch_layout(void **state) {
  (void)state;
  llorch_hparams hp = {.n_vocab = 151936, .n_embd = 896, .n_head = 14, .n_head_kv = 2,
                       .head_dim = 64, .n_ff = 4864, .n_rot = 64, .n_ctx_train = 32768};
  const uint32_t ctxs[] = {1, 63, 64, 65, 4096, 32768, 100000};
  for (size_t ci = 0; ci < sizeof ctxs / sizeof ctxs[0]; ci++) {
    for (int has_out = 0; has_out < 2; has_out++) {
      llorch_cuda_scratch_layout L;
      const uint32_t B = 32;
      llorch_cuda_scratch_plan(&hp, ctxs[ci], B, 1000, has_out, &L);
      assert_true(L.split_len % LLORCH_CUDA_ATT_TILE == 0);
      assert_true(L.n_splits >= 1 && L.n_splits <= LLORCH_CUDA_ATT_MAX_SPLITS);
      assert_true((uint64_t)L.n_splits * L.split_len >= ctxs[ci]);
      assert_true((uint64_t)(L.n_splits - 1) * L.split_len < ctxs[ci]);
      const uint64_t QD = 14 * 64, KD = 2 * 64;
      struct { uint64_t off, bytes; } f[] = {
          {L.x, B * 896 * 4}, {L.xn, B * 896 * 4}, {L.q, B * QD * 4}, {L.k, B * KD * 4},
          {L.v, B * KD * 4}, {L.att, B * QD * 4}, {L.ao, B * 896 * 4}, {L.gate, B * 4864 * 4},
          {L.up, B * 4864 * 4}, {L.part, B * 14ull * L.n_splits * 66 * 4}, {L.xh, B * 4864 * 2},
          {L.wtile, 1000}, {L.blas_ws, LLORCH_CUDA_BLAS_WORKSPACE},
          {L.logits, has_out ? B * 151936ull * 4 : 0}, {L.meta, 5 * B * 4}};
      const size_t nf = sizeof f / sizeof f[0];
      for (size_t i = 0; i < nf; i++) {
        assert_int_equal(f[i].off % LLORCH_CUDA_ALIGN, 0);
        assert_true(f[i].off + f[i].bytes <= L.total);
        /* disjoint: each ends before the next begins */
        if (i + 1 < nf) assert_true(f[i].off + f[i].bytes <= f[i + 1].off);
      }
    }
  }
}

/* ---- residency ---- */

typedef struct fake_driver {
  const void *host_ptr;    /* reported as host memory */
  const void *wrong_dev;   /* reported on device 7 */
  const void *unknown;     /* query fails */
  int calls;
} fake_driver;

static int fake_query(void *ud, const void *ptr, bool *is_device, int *device) {
  fake_driver *fd = ud;
  fd->calls++;
  if (ptr == fd->unknown) return LLORCH_EDEVICE;
  *is_device = ptr != fd->host_ptr;
  *device = ptr == fd->wrong_dev ? 7 : (int)((uintptr_t)ptr >> 32);
  return 0;
}

static void test_residency(void **state) {
  (void)state;
  llorch_cuda_alloc_table t = {0};
  llorch_backend_memory mem;
  llorch_errmsg em = {{0}};
  fake_driver fd = {0};
  memset(&mem, 0, sizeof mem);
  /* empty table: nothing verified */
  assert_int_equal(llorch_cuda_residency_check(&t, fake_query, &fd, 5, &mem, &em), LLORCH_EDEVICE);
  assert_false(mem.residency_verified);
  /* pointer's high word encodes its device in this fake */
  void *p[6];
  for (int i = 0; i < 6; i++) {
    p[i] = (void *)(((uintptr_t)(i / 3) << 32) | (uintptr_t)(0x1000 * (i + 1)));
    assert_int_equal(llorch_cuda_alloc_table_add(&t, p[i], 1000 + (uint64_t)i, i / 3,
                                                 i % 3 == 0 ? "weights" : i % 3 == 1 ? "kv" : "scratch"), 0);
  }
  for (int i = 0; i < 40; i++) /* growth past the initial capacity */
    assert_int_equal(llorch_cuda_alloc_table_add(&t, p[0], 1, 0, "extra"), 0);
  assert_int_equal(t.n, 46);
  assert_int_equal(llorch_cuda_residency_check(&t, fake_query, &fd, 1234, &mem, &em), 0);
  assert_true(mem.residency_verified);
  assert_int_equal(mem.allocations_checked, 46);
  assert_int_equal(mem.allocations_not_device, 0);
  assert_int_equal(mem.verified_at_ms, 1234);
  assert_int_equal(fd.calls, 46);
  /* one allocation turns out to be host memory */
  fd.host_ptr = p[4];
  assert_int_equal(llorch_cuda_residency_check(&t, fake_query, &fd, 2000, &mem, &em), LLORCH_EDEVICE);
  assert_false(mem.residency_verified);
  assert_int_equal(mem.allocations_not_device, 1);
  assert_int_equal(mem.verified_at_ms, 2000);
  assert_non_null(strstr(em.text, "kv"));
  assert_non_null(strstr(em.text, "not device memory"));
  /* on the wrong GPU */
  fd.host_ptr = NULL;
  fd.wrong_dev = p[2];
  assert_int_equal(llorch_cuda_residency_check(&t, fake_query, &fd, 3000, &mem, &em), LLORCH_EDEVICE);
  assert_int_equal(mem.allocations_not_device, 1);
  assert_non_null(strstr(em.text, "wrong GPU"));
  /* the driver cannot say */
  fd.wrong_dev = NULL;
  fd.unknown = p[5];
  assert_int_equal(llorch_cuda_residency_check(&t, fake_query, &fd, 4000, &mem, &em), LLORCH_EDEVICE);
  assert_false(mem.residency_verified);
  assert_non_null(strstr(em.text, "could not say"));
  llorch_cuda_alloc_table_free(&t);
  assert_null(t.a);
}

/* ---- upload ---- */

typedef struct fake_copy {
  uint8_t *slot_buf[2];
  bool busy[2];
  int waits, copies, max_len;
  uint64_t slot_bytes;
  int fail_at;  /* copy number that fails, -1 never */
} fake_copy;

static int fc_wait(void *ud, int slot) {
  fake_copy *fc = ud;
  fc->waits++;
  fc->busy[slot] = false;
  return 0;
}

static int fc_copy(void *ud, int slot, void *dst, uint64_t len) {
  fake_copy *fc = ud;
  assert_false(fc->busy[slot]); /* a slot is only refilled after its copy finished */
  assert_true(len <= fc->slot_bytes);
  if (fc->copies == fc->fail_at) return LLORCH_EDEVICE;
  fc->copies++;
  if ((int)len > fc->max_len) fc->max_len = (int)len;
  memcpy(dst, fc->slot_buf[slot], len);
  fc->busy[slot] = true;
  return 0;
}

static void test_upload_chunks(void **state) {
  (void)state;
  const uint64_t slot = 1000;
  uint8_t *stg = malloc(2 * slot);
  uint8_t *const staging[2] = {stg, stg + slot};
  const uint64_t sizes[] = {1, 999, 1000, 1001, 5555};
  int cur = 0;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    const uint64_t n = sizes[k];
    uint8_t *src = malloc(n), *dst = calloc(1, n);
    for (uint64_t i = 0; i < n; i++) src[i] = (uint8_t)(i * 7 + k);
    fake_copy fc = {.slot_buf = {staging[0], staging[1]}, .slot_bytes = slot, .fail_at = -1};
    llorch_cuda_copy_ops ops = {fc_wait, fc_copy};
    const int start = cur;
    assert_int_equal(llorch_cuda_upload(dst, src, n, staging, slot, &ops, &fc, &cur), 0);
    assert_memory_equal(src, dst, n);
    const int chunks = (int)((n + slot - 1) / slot);
    assert_int_equal(fc.copies, chunks);
    assert_int_equal(fc.waits, chunks);
    assert_true((uint64_t)fc.max_len <= slot);
    assert_int_equal(cur, (start + chunks) % 2); /* the slot carries to the next tensor */
    free(src);
    free(dst);
  }
  /* a failing copy stops the upload with its error */
  uint8_t src[3000] = {0}, dst[3000];
  fake_copy fc = {.slot_buf = {staging[0], staging[1]}, .slot_bytes = slot, .fail_at = 1};
  llorch_cuda_copy_ops ops = {fc_wait, fc_copy};
  assert_int_equal(llorch_cuda_upload(dst, src, sizeof src, staging, slot, &ops, &fc, &cur), LLORCH_EDEVICE);
  assert_int_equal(fc.copies, 1);
  assert_int_equal(llorch_cuda_upload(dst, src, sizeof src, staging, 0, &ops, &fc, &cur), LLORCH_EINVAL);
  free(stg);
}

#ifdef LLORCH_HAVE_CUDA
/* ---- the kernels' decoders against the reference ---- */

static void test_dequant_units(void **state) {
  (void)state;
  const llorch_ggml_type types[] = {LLORCH_TYPE_F32, LLORCH_TYPE_F16, LLORCH_TYPE_BF16,
                                    LLORCH_TYPE_Q8_0, LLORCH_TYPE_Q4_0, LLORCH_TYPE_Q4_K,
                                    LLORCH_TYPE_Q6_K};
  const int64_t n = 1024;
  float *src = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
  uint64_t r = 88172645463325252ull;
  for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
    const llorch_ggml_type t = types[ti];
    void *q = malloc(llorch_row_size(t, n));
    for (int trial = 0; trial < 8; trial++) {
      for (int64_t i = 0; i < n; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        /* varied magnitudes per 32-block so scales and mins differ */
        src[i] = ((float)(r >> 40) / (float)(1ull << 24) - 0.5f) * (float)(1 + (i / 32) % 7) +
                 (trial % 2 ? 0.3f : 0.0f);
      }
      assert_int_equal(llorch_quantize_row(t, src, q, n), 0);
      assert_int_equal(llorch_dequantize_row(t, q, ref, n), 0);
      assert_int_equal(llorch_cuda_dequantize_row_host(t, q, got, n), 0);
      for (int64_t i = 0; i < n; i++)
        if (memcmp(&ref[i], &got[i], sizeof(float)) != 0)
          fail_msg("%s element %lld: reference %.9g, CUDA decoder %.9g", llorch_type_name(t),
                   (long long)i, ref[i], got[i]);
    }
    free(q);
  }
  assert_int_equal(llorch_cuda_dequantize_row_host(LLORCH_TYPE_Q5_0, src, got, 32), LLORCH_EUNSUPPORTED);
  assert_int_equal(llorch_cuda_dequantize_row_host(LLORCH_TYPE_F16, src, got, 33), LLORCH_EINVAL);
  free(src);
  free(ref);
  free(got);
}

#endif /* LLORCH_HAVE_CUDA */

/* ---- devices ---- */

static void test_device_strings(void **state) {
  (void)state;
  bool is_cuda = false;
  int devs[8], n = 0;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_device_parse("cuda:0,1", &is_cuda, devs, &n, &em), 0);
  assert_true(is_cuda);
  assert_int_equal(n, 2);
  assert_int_equal(devs[1], 1);
  assert_int_equal(llorch_device_parse("cuda:", &is_cuda, devs, &n, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_device_parse("cuda:0,0", &is_cuda, devs, &n, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_device_parse("gpu0", &is_cuda, devs, &n, &em), LLORCH_EINVAL);
}

#ifdef LLORCH_HAVE_CUDA
/* Where no GPU is usable, "cuda:0" fails cleanly with the runtime's reason;
 * on a GPU machine the same call reaches the ordinal check. */
static void test_open_without_gpu(void **state) {
  (void)state;
  llorch_errmsg em = {{0}};
  const int count = llorch_cuda_device_count(&em);
  llorch_model m;
  memset(&m, 0, sizeof m);
  m.hp.n_layer = 1;
  llorch_backend b;
  llorch_backend_params p = params_for(64, 1, 1, 0);
  if (count == 0) {
    assert_true(em.text[0] != '\0');
    assert_int_equal(llorch_backend_open(&b, &m, "cuda:0", &p, &em), LLORCH_EDEVICE);
    assert_non_null(strstr(em.text, "cuda:0"));
  }
  /* an ordinal past the visible GPUs is an error on any machine */
  assert_int_equal(llorch_backend_open(&b, &m, "cuda:200", &p, &em), LLORCH_EDEVICE);
  assert_null(b.ops);
}
#else
/* Without CUDA, "cuda:0" is refused with a message saying why. */
static void test_open_without_gpu(void **state) {
  (void)state;
  llorch_errmsg em = {{0}};
  llorch_model m;
  memset(&m, 0, sizeof m);
  m.hp.n_layer = 1;
  llorch_backend b;
  llorch_backend_params p = params_for(64, 1, 1, 0);
  assert_int_equal(llorch_backend_open(&b, &m, "cuda:0", &p, &em), LLORCH_EUNSUPPORTED);
  assert_non_null(strstr(em.text, "without CUDA"));
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plan_single_gpu_parts),
      cmocka_unit_test(test_plan_insufficient_vram),
      cmocka_unit_test(test_plan_split_proportional),
      cmocka_unit_test(test_plan_tied_two_gpus),
      cmocka_unit_test(test_plan_rejects),
      cmocka_unit_test(test_scratch_layout),
      cmocka_unit_test(test_residency),
      cmocka_unit_test(test_upload_chunks),
#ifdef LLORCH_HAVE_CUDA
      cmocka_unit_test(test_dequant_units),
#endif
      cmocka_unit_test(test_device_strings),
      cmocka_unit_test(test_open_without_gpu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
