/*
 * The memory estimate (include/llorch/memory.h, src/engine/memest.c) against
 * what the backends plan and allocate, for every architecture and weight
 * type over a range of context sizes and slot counts:
 *   - the coefficients give exactly the estimate's total (pool, orchestrator
 *     and /v2/info compute the same number);
 *   - CUDA: the plan for one GPU (src/gpu/cuda_plan.c, plain C) has the same
 *     weights and KV bytes, the estimate's overhead is the plan's runtime plus
 *     the context allowance, and its scratch is at least the plan's and over
 *     it by no more than the two bounds it takes (32 attention splits, the
 *     alignment of 16 buffers);
 *   - CPU: the backend's KV cache and scratch are within the estimate, the KV
 *     by no more than the V rows' padding, and the weights are the file;
 *     with every kernel variant this machine has (LLORCH_CPU_ISA).
 * What a real CPU worker holds is checked by tests/integration/memory.
 */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "llorch/backend.h"
#include "llorch/backend_cuda.h"
#include "llorch/commands.h"
#include "llorch/memory.h"
#include "llorch/model.h"

static const char *const archs[] = {"llama", "qwen2", "qwen3"};
static const char *const types[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"};
static const uint32_t ctxs[] = {1, 64, 300, 2048};
static const uint32_t slot_counts[] = {1, 3, 8};

static llorch_model *synth_load(const char *arch, const char *type) {
  char out[128];
  snprintf(out, sizeof out, "/tmp/llorch-test-memory-%d.gguf", (int)getpid());
  char *argv[] = {"synth", "--arch", (char *)arch, "--layers", "3", "--embd", "256", "--ff", "768",
                  "--heads", "8", "--kv-heads", "2", "--ctx", "2048", "--type", (char *)type,
                  "-o", out, NULL};
  assert_int_equal(llorch_cmd_synth(19, argv), 0);
  llorch_model *m = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_model_load(&m, out, &em);
  unlink(out); /* the map stays valid */
  if (rc) fail_msg("load %s %s: %s", arch, type, em.text);
  return m;
}

static void test_coeffs_are_the_estimate(void **state) {
  (void)state;
  llorch_model *m = synth_load("qwen3", "q8_0");
  for (int cuda = 0; cuda < 2; cuda++) {
    const llorch_mem_params mp = {.cuda = cuda, .n_threads = 5};
    llorch_mem_coeffs c;
    assert_int_equal(llorch_mem_coeffs_compute(m->gguf, &mp, &c, NULL), 0);
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++)
      for (size_t j = 0; j < sizeof slot_counts / sizeof slot_counts[0]; j++) {
        llorch_mem_estimate e;
        assert_int_equal(
            llorch_mem_estimate_compute(m->gguf, &mp, ctxs[i], slot_counts[j], &e, NULL), 0);
        assert_int_equal(e.total_bytes, llorch_mem_need(&c, ctxs[i], slot_counts[j]));
        assert_int_equal(e.total_bytes,
                         e.weights_bytes + e.kv_bytes + e.scratch_bytes + e.overhead_bytes);
      }
  }
  llorch_model_free(m);
}

static void test_arithmetic(void **state) {
  (void)state;
  const llorch_mem_coeffs c = {100, 3, 5, 7};
  assert_int_equal(llorch_mem_need(&c, 10, 2), 100 + 60 + 10 + 70);
  const llorch_mem_coeffs big = {1, UINT64_MAX / 2, 0, 0};
  assert_true(llorch_mem_need(&big, 3, 1) == UINT64_MAX); /* saturates, never wraps */
  assert_true(llorch_mem_need(&c, UINT64_MAX, 2) == UINT64_MAX);
  assert_int_equal(llorch_mem_held(10, 0), 10);
  assert_int_equal(llorch_mem_held(10, 11), 11);
  assert_int_equal(llorch_mem_device_share(10, 3), 4);
  assert_int_equal(llorch_mem_device_share(9, 3), 3);
  assert_int_equal(llorch_mem_device_share(9, 0), 9);
}

static void test_cuda_plan_within_estimate(void **state) {
  (void)state;
  for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++)
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
      llorch_model *m = synth_load(archs[a], types[t]);
      const llorch_hparams *hp = &m->hp;
      const llorch_mem_params mp = {.cuda = true, .n_threads = 1};
      for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++)
        for (size_t j = 0; j < sizeof slot_counts / sizeof slot_counts[0]; j++) {
          const uint32_t ctx = ctxs[i], slots = slot_counts[j];
          llorch_backend_params p = {.n_ctx = ctx, .n_seq = slots,
                                     .n_batch_max = slots + LLORCH_MEM_PREFILL_CHUNK,
                                     .n_threads = 1, .n_devices = 1};
          uint64_t free_b[1] = {1ull << 40};
          llorch_cuda_plan plan;
          llorch_errmsg em = {{0}};
          if (llorch_cuda_plan_compute(m, &p, free_b, &plan, &em) != 0)
            fail_msg("%s %s: %s", archs[a], types[t], em.text);
          const llorch_cuda_dev_plan *d = &plan.dev[0];
          llorch_mem_estimate e;
          assert_int_equal(llorch_mem_estimate_compute(m->gguf, &mp, ctx, slots, &e, NULL), 0);
          assert_int_equal(e.weights_bytes, d->weights_bytes);
          assert_int_equal(e.kv_bytes, d->kv_bytes);
          assert_int_equal(e.overhead_bytes, d->overhead_bytes + LLORCH_MEM_CUDA_CONTEXT_BYTES);
          const uint64_t B = p.n_batch_max;
          const uint64_t split_slack = B * hp->n_head * (LLORCH_CUDA_ATT_MAX_SPLITS - d->scratch.n_splits) *
                                       (hp->head_dim + 2) * 4;
          if (e.scratch_bytes < d->scratch_bytes ||
              e.scratch_bytes - d->scratch_bytes > split_slack + 16 * (LLORCH_CUDA_ALIGN - 1))
            fail_msg("%s %s ctx %u x %u: scratch estimate %llu, plan %llu (slack allowed %llu)",
                     archs[a], types[t], ctx, slots, (unsigned long long)e.scratch_bytes,
                     (unsigned long long)d->scratch_bytes,
                     (unsigned long long)(split_slack + 16 * (LLORCH_CUDA_ALIGN - 1)));
          /* what a CUDA worker reports it holds is never above the estimate */
          assert_true(d->need_bytes + LLORCH_MEM_CUDA_CONTEXT_BYTES <= e.total_bytes);
        }
      llorch_model_free(m);
    }
}

/* One kernel variant (LLORCH_CPU_ISA); false when this CPU cannot run it. */
static bool cpu_backend_check(const char *isa) {
  setenv("LLORCH_CPU_ISA", isa, 1);
  for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++)
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
      llorch_model *m = synth_load(archs[a], types[t]);
      const llorch_hparams *hp = &m->hp;
      const int threads = 3;
      const llorch_mem_params mp = {.cuda = false, .n_threads = threads};
      for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0]; i++)
        for (size_t j = 0; j < sizeof slot_counts / sizeof slot_counts[0]; j++) {
          const uint32_t ctx = ctxs[i], slots = slot_counts[j];
          llorch_backend_params p = {.n_ctx = ctx, .n_seq = slots,
                                     .n_batch_max = slots + LLORCH_MEM_PREFILL_CHUNK,
                                     .n_threads = threads};
          llorch_backend b;
          llorch_errmsg em = {{0}};
          if (llorch_backend_open(&b, m, "cpu", &p, &em) != 0) {
            if (strstr(em.text, "LLORCH_CPU_ISA") || strstr(em.text, "this CPU")) {
              llorch_model_free(m);
              unsetenv("LLORCH_CPU_ISA");
              return false;
            }
            fail_msg("%s: %s", isa, em.text);
          }
          llorch_backend_memory mem;
          b.ops->memory(b.ctx, &mem);
          llorch_backend_close(&b);
          llorch_mem_estimate e;
          assert_int_equal(llorch_mem_estimate_compute(m->gguf, &mp, ctx, slots, &e, NULL), 0);
          assert_int_equal(e.weights_bytes, llorch_gguf_file_size(m->gguf));
          assert_true(e.weights_bytes >= m->weight_bytes);
          /* V rows padded to at most 64 positions (AVX-512's GEMV step) */
          const uint64_t pad = (uint64_t)hp->n_layer * hp->n_head_kv * hp->head_dim * 2 * 63 * slots;
          assert_true(e.kv_bytes >= mem.kv_bytes);
          assert_true(e.kv_bytes - mem.kv_bytes <= pad);
          assert_true(e.scratch_bytes >= mem.scratch_bytes);
          assert_int_equal(e.overhead_bytes, LLORCH_MEM_CPU_PROCESS_BYTES);
        }
      llorch_model_free(m);
    }
  unsetenv("LLORCH_CPU_ISA");
  return true;
}

static void test_cpu_backend_within_estimate(void **state) {
  (void)state;
  static const char *const isas[] = {"scalar", "avx2", "avx512"};
  int ran = 0;
  for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
    bool ok = cpu_backend_check(isas[i]);
    printf("cpu backend kernels %s: %s\n", isas[i], ok ? "checked" : "not runnable on this CPU");
    ran += ok;
  }
  assert_true(ran >= 1);
}

static void test_usage_read(void **state) {
  (void)state;
  llorch_mem_usage u;
  assert_int_equal(llorch_mem_usage_read(0, &u), 0);
  assert_true(u.rss_bytes > 0);
  assert_true(u.hwm_bytes >= u.rss_bytes);
  assert_true(u.rss_anon_bytes + u.rss_file_bytes + u.rss_shmem_bytes <= u.rss_bytes + 4096);
  assert_int_equal(llorch_mem_usage_read(getpid(), &u), 0);
  assert_true(u.rss_bytes > 0);
  /* pid_max is at most 2^22: this one cannot exist */
  assert_int_equal(llorch_mem_usage_read(1 << 23, &u), LLORCH_ENOENT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_arithmetic),
      cmocka_unit_test(test_coeffs_are_the_estimate),
      cmocka_unit_test(test_cuda_plan_within_estimate),
      cmocka_unit_test(test_cpu_backend_within_estimate),
      cmocka_unit_test(test_usage_read),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
