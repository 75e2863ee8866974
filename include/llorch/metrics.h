/*
 * Prometheus metrics registry: counters, gauges and histograms with label
 * sets, rendered in the text exposition format (version 0.0.4) for
 * GET /metrics.
 *
 * Families are registered once (at start-up, from code: a bad name is a
 * programming error and asserts); series (one per label-value combination)
 * appear on first update. Updates and rendering are thread-safe (one mutex
 * per registry), so the engine thread may update while the loop renders.
 *
 * Example:
 *   static const char *const labels[] = {"model", "code", NULL};
 *   llorch_metric *req = llorch_metrics_counter(m, "llorch_requests_total",
 *                                               "Requests answered.", labels);
 *   llorch_metric_inc(req, (const char *[]){"tiny", "200"}, 1);
 */
#ifndef LLORCH_METRICS_H
#define LLORCH_METRICS_H

#include <stddef.h>

typedef struct llorch_metrics llorch_metrics;
typedef struct llorch_metric llorch_metric;

/* Returns 0 or LLORCH_ENOMEM. */
int llorch_metrics_init(llorch_metrics **out);
void llorch_metrics_free(llorch_metrics *m);

/*
 * Registers a family. name matches [a-zA-Z_:][a-zA-Z0-9_:]*, label_names is
 * NULL or NULL-terminated (each [a-zA-Z_][a-zA-Z0-9_]*, not "le" for
 * histograms, at most 8). Registering an existing name again with the same
 * type and labels returns the same family. Returns NULL only when out of memory.
 */
llorch_metric *llorch_metrics_counter(llorch_metrics *m, const char *name, const char *help,
                                      const char *const *label_names);
llorch_metric *llorch_metrics_gauge(llorch_metrics *m, const char *name, const char *help,
                                    const char *const *label_names);
/*
 * buckets: n strictly increasing finite upper bounds (the +Inf bucket is
 * implicit). buckets NULL -> the Prometheus defaults (.005 ... 10 seconds).
 */
llorch_metric *llorch_metrics_histogram(llorch_metrics *m, const char *name,
                                        const char *help, const char *const *label_names,
                                        const double *buckets, size_t n);

/*
 * Updates. label_values has one value per label name, in order (NULL for a
 * family without labels); values may hold any bytes (escaped when rendered).
 * A series that cannot be allocated is dropped silently (metrics must never
 * break serving).
 */
/* Counter: adds v (v >= 0; negative values are ignored). */
void llorch_metric_inc(llorch_metric *f, const char *const *label_values, double v);
/* Gauge: sets / adds (v may be negative). */
void llorch_metric_set(llorch_metric *f, const char *const *label_values, double v);
void llorch_metric_add(llorch_metric *f, const char *const *label_values, double v);
/* Histogram: records one observation. */
void llorch_metric_observe(llorch_metric *f, const char *const *label_values, double v);

/* The current value of a counter/gauge series (histograms: the count); 0 if absent. */
double llorch_metric_value(llorch_metric *f, const char *const *label_values);

/*
 * Renders every family: "# HELP", "# TYPE", then one line per series
 * (histograms: _bucket{le=...} cumulative incl. le="+Inf", _sum, _count).
 * Label values escape \ " and newline. Returns a malloc'd string (length in
 * *len when len is not NULL) or NULL when out of memory.
 */
char *llorch_metrics_render(llorch_metrics *m, size_t *len);

/* Content-Type for the rendered text. */
#define LLORCH_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif /* LLORCH_METRICS_H */
