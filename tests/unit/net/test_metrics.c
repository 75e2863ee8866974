/* Metrics registry and Prometheus text rendering. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/metrics.h"

static void test_render_counter_gauge(void **state) {
  llorch_metrics *m;
  assert_int_equal(llorch_metrics_init(&m), 0);
  static const char *const labels[] = {"model", "code", NULL};
  llorch_metric *c = llorch_metrics_counter(m, "llorch_requests_total", "Requests.\nAll of them\\.", labels);
  llorch_metric *g = llorch_metrics_gauge(m, "llorch_queue_depth", "Queued.", NULL);
  assert_non_null(c);
  assert_ptr_equal(llorch_metrics_counter(m, "llorch_requests_total", "again", labels), c);
  llorch_metric_inc(c, (const char *[]){"tiny", "200"}, 1);
  llorch_metric_inc(c, (const char *[]){"tiny", "200"}, 2);
  llorch_metric_inc(c, (const char *[]){"we\"ird\\na\nme", "500"}, 1);
  llorch_metric_inc(c, (const char *[]){"tiny", "200"}, -5); /* ignored */
  llorch_metric_set(g, NULL, 4);
  llorch_metric_add(g, NULL, -1.5);
  assert_true(llorch_metric_value(c, (const char *[]){"tiny", "200"}) == 3);
  size_t len;
  char *text = llorch_metrics_render(m, &len);
  assert_non_null(text);
  assert_int_equal(strlen(text), len);
  assert_string_equal(text,
                      "# HELP llorch_requests_total Requests.\\nAll of them\\\\.\n"
                      "# TYPE llorch_requests_total counter\n"
                      "llorch_requests_total{model=\"tiny\",code=\"200\"} 3\n"
                      "llorch_requests_total{model=\"we\\\"ird\\\\na\\nme\",code=\"500\"} 1\n"
                      "# HELP llorch_queue_depth Queued.\n"
                      "# TYPE llorch_queue_depth gauge\n"
                      "llorch_queue_depth 2.5\n");
  free(text);
  llorch_metrics_free(m);
}

static void test_render_histogram(void **state) {
  llorch_metrics *m;
  assert_int_equal(llorch_metrics_init(&m), 0);
  static const char *const labels[] = {"model", NULL};
  static const double buckets[] = {0.1, 1, 10};
  llorch_metric *h = llorch_metrics_histogram(m, "llorch_latency_seconds", "Latency.", labels,
                                              buckets, 3);
  llorch_metric_observe(h, (const char *[]){"a"}, 0.05);
  llorch_metric_observe(h, (const char *[]){"a"}, 0.1);  /* le is inclusive */
  llorch_metric_observe(h, (const char *[]){"a"}, 5);
  llorch_metric_observe(h, (const char *[]){"a"}, 50);
  char *text = llorch_metrics_render(m, NULL);
  assert_string_equal(text,
                      "# HELP llorch_latency_seconds Latency.\n"
                      "# TYPE llorch_latency_seconds histogram\n"
                      "llorch_latency_seconds_bucket{model=\"a\",le=\"0.1\"} 2\n"
                      "llorch_latency_seconds_bucket{model=\"a\",le=\"1\"} 2\n"
                      "llorch_latency_seconds_bucket{model=\"a\",le=\"10\"} 3\n"
                      "llorch_latency_seconds_bucket{model=\"a\",le=\"+Inf\"} 4\n"
                      "llorch_latency_seconds_sum{model=\"a\"} 55.15\n"
                      "llorch_latency_seconds_count{model=\"a\"} 4\n");
  free(text);
  llorch_metrics_free(m);
}

static void test_default_buckets_no_labels(void **state) {
  llorch_metrics *m;
  assert_int_equal(llorch_metrics_init(&m), 0);
  llorch_metric *h = llorch_metrics_histogram(m, "d_seconds", "D.", NULL, NULL, 0);
  llorch_metric_observe(h, NULL, 0.3);
  char *text = llorch_metrics_render(m, NULL);
  assert_non_null(strstr(text, "d_seconds_bucket{le=\"0.005\"} 0\n"));
  assert_non_null(strstr(text, "d_seconds_bucket{le=\"0.5\"} 1\n"));
  assert_non_null(strstr(text, "d_seconds_bucket{le=\"+Inf\"} 1\n"));
  assert_non_null(strstr(text, "d_seconds_count 1\n"));
  free(text);
  llorch_metrics_free(m);
}

static void *bump(void *arg) {
  llorch_metric *c = arg;
  for (int i = 0; i < 20000; i++) llorch_metric_inc(c, (const char *[]){i % 2 ? "x" : "y"}, 1);
  return NULL;
}

static void test_threads(void **state) {
  llorch_metrics *m;
  assert_int_equal(llorch_metrics_init(&m), 0);
  static const char *const labels[] = {"k", NULL};
  llorch_metric *c = llorch_metrics_counter(m, "t_total", "T.", labels);
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, bump, c);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  assert_true(llorch_metric_value(c, (const char *[]){"x"}) == 40000);
  assert_true(llorch_metric_value(c, (const char *[]){"y"}) == 40000);
  llorch_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_render_counter_gauge),
      cmocka_unit_test(test_render_histogram),
      cmocka_unit_test(test_default_buckets_no_labels),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
