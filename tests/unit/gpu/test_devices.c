/* Device inventory: the CPU fallback, NVML through a fake library, --gpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/gpu.h"

static void test_cpu_device_when_no_nvml(void **state) {
  setenv("LLORCH_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
  llorch_gpu_inventory *inv;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gpu_inventory_open(&inv, NULL, &em), 0);
  assert_false(llorch_gpu_inventory_has_nvml(inv));
  assert_int_equal(llorch_gpu_inventory_count(inv), 1);
  const llorch_device_info *d = llorch_gpu_inventory_get(inv, 0);
  assert_int_equal(d->kind, LLORCH_DEVICE_CPU);
  assert_string_equal(d->id, "cpu");
  assert_true(d->memory_total > 0);
  assert_true(d->memory_free <= d->memory_total);
  assert_int_equal(d->memory_used, d->memory_total - d->memory_free);
  assert_ptr_equal(llorch_gpu_inventory_find(inv, "cpu"), d);
  assert_null(llorch_gpu_inventory_find(inv, "gpu0"));
  llorch_gpu_inventory_close(inv);
}

static void test_cpu_memory_override(void **state) {
  setenv("LLORCH_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
  llorch_gpu_inventory_options opt = {.cpu_memory = 1ull << 30};
  llorch_gpu_inventory *inv;
  assert_int_equal(llorch_gpu_inventory_open(&inv, &opt, NULL), 0);
  const llorch_device_info *d = llorch_gpu_inventory_get(inv, 0);
  assert_int_equal(d->memory_total, 1ull << 30);
  assert_true(d->memory_free <= 1ull << 30);
  llorch_gpu_inventory_close(inv);
}

static void test_fake_nvml_all_gpus(void **state) {
  setenv("LLORCH_NVML_LIBRARY", FAKE_NVML_PATH, 1);
  llorch_gpu_inventory *inv;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gpu_inventory_open(&inv, NULL, &em), 0);
  assert_true(llorch_gpu_inventory_has_nvml(inv));
  assert_string_equal(llorch_gpu_inventory_driver(inv), "999.1");
  assert_int_equal(llorch_gpu_inventory_count(inv), 2);
  const llorch_device_info *d = llorch_gpu_inventory_get(inv, 1);
  assert_int_equal(d->kind, LLORCH_DEVICE_CUDA);
  assert_string_equal(d->id, "gpu1");
  assert_string_equal(d->uuid, "GPU-fake-1");
  assert_string_equal(d->name, "Fake H100 #1");
  assert_int_equal(d->memory_total, 80ull << 30);
  assert_int_equal(d->utilization_pct, 42);
  assert_int_equal(d->temperature_c, 55);
  uint64_t used_before = d->memory_used;
  assert_int_equal(llorch_gpu_inventory_refresh(inv, &em), 0);
  assert_true(d->memory_used > used_before); /* the refresh really re-read */
  assert_int_equal(d->memory_free, d->memory_total - d->memory_used);
  llorch_gpu_inventory_close(inv);
}

static void test_fake_nvml_gpu_subset(void **state) {
  setenv("LLORCH_NVML_LIBRARY", FAKE_NVML_PATH, 1);
  int gpus[] = {1};
  llorch_gpu_inventory_options opt = {.gpus = gpus, .n_gpus = 1};
  llorch_gpu_inventory *inv;
  assert_int_equal(llorch_gpu_inventory_open(&inv, &opt, NULL), 0);
  assert_int_equal(llorch_gpu_inventory_count(inv), 1);
  assert_string_equal(llorch_gpu_inventory_get(inv, 0)->id, "gpu1");
  llorch_gpu_inventory_close(inv);
}

static void test_fake_nvml_missing_gpu(void **state) {
  setenv("LLORCH_NVML_LIBRARY", FAKE_NVML_PATH, 1);
  int gpus[] = {0, 5};
  llorch_gpu_inventory_options opt = {.gpus = gpus, .n_gpus = 2};
  llorch_gpu_inventory *inv = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gpu_inventory_open(&inv, &opt, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "GPU 5 does not exist (2 NVIDIA GPUs found)"));
}

static void test_force_cpu(void **state) {
  setenv("LLORCH_NVML_LIBRARY", FAKE_NVML_PATH, 1);
  llorch_gpu_inventory_options opt = {.force_cpu = true};
  llorch_gpu_inventory *inv;
  assert_int_equal(llorch_gpu_inventory_open(&inv, &opt, NULL), 0);
  assert_false(llorch_gpu_inventory_has_nvml(inv));
  assert_string_equal(llorch_gpu_inventory_get(inv, 0)->id, "cpu");
  llorch_gpu_inventory_close(inv);
}

static void test_gpu_list_parse(void **state) {
  int out[8], n;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gpu_list_parse("0,1,3", out, 8, &n, &em), 0);
  assert_int_equal(n, 3);
  assert_int_equal(out[2], 3);
  assert_int_equal(llorch_gpu_list_parse("", out, 8, &n, &em), 0);
  assert_int_equal(n, 0);
  assert_int_equal(llorch_gpu_list_parse("0,x", out, 8, &n, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "got 'x'"));
  assert_int_equal(llorch_gpu_list_parse("1,1", out, 8, &n, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "listed twice"));
  assert_int_equal(llorch_gpu_list_parse("0,", out, 8, &n, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_gpu_list_parse("-1", out, 8, &n, &em), LLORCH_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cpu_device_when_no_nvml), cmocka_unit_test(test_cpu_memory_override),
      cmocka_unit_test(test_fake_nvml_all_gpus),      cmocka_unit_test(test_fake_nvml_gpu_subset),
      cmocka_unit_test(test_fake_nvml_missing_gpu),   cmocka_unit_test(test_force_cpu),
      cmocka_unit_test(test_gpu_list_parse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
