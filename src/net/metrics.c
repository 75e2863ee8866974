/*
 * Prometheus metrics registry and text exposition.
 *
 * Families and their series live in linked lists under one mutex per
 * registry. Series are few (label sets are small and known: models, status
 * codes, devices), so a linear search is cheaper than any hashing here and
 * keeps the render order stable (first-seen order).
 */
#include "llorch/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"
#include "llorch/buf.h"

#define METRIC_MAX_LABELS 8

typedef enum metric_type {
  METRIC_COUNTER = 0,
  METRIC_GAUGE,
  METRIC_HISTOGRAM,
} metric_type;

typedef struct metric_series {
  struct metric_series *next;
  char *values[METRIC_MAX_LABELS]; /* label values, in label-name order */
  double value;                    /* counter / gauge */
  double sum;                      /* histogram: sum of observations */
  uint64_t count;                  /* histogram: number of observations */
  uint64_t *bucket_counts;         /* histogram: (n_buckets) per-bucket, not cumulative */
} metric_series;

struct llorch_metric {
  llorch_metric *next;
  llorch_metrics *reg;
  metric_type type;
  char *name;
  char *help;
  char *label_names[METRIC_MAX_LABELS];
  size_t n_labels;
  double *buckets;      /* (n_buckets) upper bounds, increasing; +Inf implicit */
  size_t n_buckets;
  metric_series *series;
  metric_series *series_tail;
};

struct llorch_metrics {
  pthread_mutex_t mu;
  llorch_metric *families;
  llorch_metric *tail;
};

static const double metric_default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5,   1,    2.5,   5,    10};

/* ---- registry ---- */

int llorch_metrics_init(llorch_metrics **out) {
  llorch_metrics *m = calloc(1, sizeof *m);
  if (m == NULL) return LLORCH_ENOMEM;
  pthread_mutex_init(&m->mu, NULL);
  *out = m;
  return 0;
}

static void series_free(metric_series *s, size_t n_labels) {
  for (size_t i = 0; i < n_labels; i++) free(s->values[i]);
  free(s->bucket_counts);
  free(s);
}

static void family_free(llorch_metric *f) {
  metric_series *s = f->series;
  while (s != NULL) {
    metric_series *next = s->next;
    series_free(s, f->n_labels);
    s = next;
  }
  for (size_t i = 0; i < f->n_labels; i++) free(f->label_names[i]);
  free(f->name);
  free(f->help);
  free(f->buckets);
  free(f);
}

void llorch_metrics_free(llorch_metrics *m) {
  if (m == NULL) return;
  llorch_metric *f = m->families;
  while (f != NULL) {
    llorch_metric *next = f->next;
    family_free(f);
    f = next;
  }
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static bool name_valid(const char *s, bool colon_ok) {
  if (s == NULL || s[0] == '\0') return false;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (colon_ok && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

static llorch_metric *family_register(llorch_metrics *m, metric_type type, const char *name,
                                      const char *help, const char *const *label_names,
                                      const double *buckets, size_t n_buckets) {
  /* Names come from code, never from outside: a bad one is a programming error. */
  LLORCH_ASSERT(name_valid(name, true));
  size_t n_labels = 0;
  while (label_names != NULL && label_names[n_labels] != NULL) {
    LLORCH_ASSERT(name_valid(label_names[n_labels], false));
    LLORCH_ASSERT(!(type == METRIC_HISTOGRAM && strcmp(label_names[n_labels], "le") == 0));
    n_labels++;
  }
  LLORCH_ASSERT(n_labels <= METRIC_MAX_LABELS);
  if (type == METRIC_HISTOGRAM) {
    if (buckets == NULL) {
      buckets = metric_default_buckets;
      n_buckets = sizeof metric_default_buckets / sizeof metric_default_buckets[0];
    }
    for (size_t i = 0; i < n_buckets; i++) {
      LLORCH_ASSERT(isfinite(buckets[i]));
      LLORCH_ASSERT(i == 0 || buckets[i] > buckets[i - 1]);
    }
  }

  pthread_mutex_lock(&m->mu);
  for (llorch_metric *f = m->families; f != NULL; f = f->next) {
    if (strcmp(f->name, name) == 0) {
      LLORCH_ASSERT(f->type == type && f->n_labels == n_labels);
      pthread_mutex_unlock(&m->mu);
      return f;
    }
  }
  llorch_metric *f = calloc(1, sizeof *f);
  if (f == NULL) goto fail;
  f->reg = m;
  f->type = type;
  f->name = strdup(name);
  f->help = strdup(help ? help : "");
  if (f->name == NULL || f->help == NULL) goto fail_family;
  for (size_t i = 0; i < n_labels; i++) {
    f->label_names[i] = strdup(label_names[i]);
    if (f->label_names[i] == NULL) goto fail_family;
    f->n_labels = i + 1;
  }
  if (type == METRIC_HISTOGRAM && n_buckets > 0) {
    f->buckets = malloc(n_buckets * sizeof *f->buckets);
    if (f->buckets == NULL) goto fail_family;
    memcpy(f->buckets, buckets, n_buckets * sizeof *f->buckets);
    f->n_buckets = n_buckets;
  }
  if (m->tail) m->tail->next = f;
  else m->families = f;
  m->tail = f;
  pthread_mutex_unlock(&m->mu);
  return f;

fail_family:
  family_free(f);
fail:
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

llorch_metric *llorch_metrics_counter(llorch_metrics *m, const char *name, const char *help,
                                      const char *const *label_names) {
  return family_register(m, METRIC_COUNTER, name, help, label_names, NULL, 0);
}

llorch_metric *llorch_metrics_gauge(llorch_metrics *m, const char *name, const char *help,
                                    const char *const *label_names) {
  return family_register(m, METRIC_GAUGE, name, help, label_names, NULL, 0);
}

llorch_metric *llorch_metrics_histogram(llorch_metrics *m, const char *name,
                                        const char *help, const char *const *label_names,
                                        const double *buckets, size_t n) {
  return family_register(m, METRIC_HISTOGRAM, name, help, label_names, buckets, n);
}

/* ---- updates (called with the registry lock held) ---- */

static metric_series *series_find(llorch_metric *f, const char *const *values, bool create) {
  for (metric_series *s = f->series; s != NULL; s = s->next) {
    size_t i = 0;
    while (i < f->n_labels && strcmp(s->values[i], values[i] ? values[i] : "") == 0) i++;
    if (i == f->n_labels) return s;
  }
  if (!create) return NULL;
  metric_series *s = calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  for (size_t i = 0; i < f->n_labels; i++) {
    s->values[i] = strdup(values[i] ? values[i] : "");
    if (s->values[i] == NULL) {
      series_free(s, i);
      return NULL;
    }
  }
  if (f->type == METRIC_HISTOGRAM && f->n_buckets > 0) {
    s->bucket_counts = calloc(f->n_buckets, sizeof *s->bucket_counts);
    if (s->bucket_counts == NULL) {
      series_free(s, f->n_labels);
      return NULL;
    }
  }
  if (f->series_tail) f->series_tail->next = s;
  else f->series = s;
  f->series_tail = s;
  return s;
}

static void metric_update(llorch_metric *f, const char *const *values, double v, int op) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->reg->mu);
  metric_series *s = series_find(f, values, true);
  if (s != NULL) {
    switch (op) {
      case 0: s->value += v; break;            /* inc / add */
      case 1: s->value = v; break;             /* set */
      case 2:                                  /* observe */
        s->sum += v;
        s->count++;
        for (size_t i = 0; i < f->n_buckets; i++) {
          if (v <= f->buckets[i]) {
            s->bucket_counts[i]++;
            break;
          }
        }
        break;
    }
  }
  pthread_mutex_unlock(&f->reg->mu);
}

void llorch_metric_inc(llorch_metric *f, const char *const *label_values, double v) {
  if (f == NULL || !(v >= 0)) return;
  LLORCH_ASSERT(f->type == METRIC_COUNTER);
  metric_update(f, label_values, v, 0);
}

void llorch_metric_set(llorch_metric *f, const char *const *label_values, double v) {
  if (f == NULL) return;
  LLORCH_ASSERT(f->type == METRIC_GAUGE);
  metric_update(f, label_values, v, 1);
}

void llorch_metric_add(llorch_metric *f, const char *const *label_values, double v) {
  if (f == NULL) return;
  LLORCH_ASSERT(f->type == METRIC_GAUGE);
  metric_update(f, label_values, v, 0);
}

void llorch_metric_observe(llorch_metric *f, const char *const *label_values, double v) {
  if (f == NULL || isnan(v)) return;
  LLORCH_ASSERT(f->type == METRIC_HISTOGRAM);
  metric_update(f, label_values, v, 2);
}

double llorch_metric_value(llorch_metric *f, const char *const *label_values) {
  if (f == NULL) return 0;
  pthread_mutex_lock(&f->reg->mu);
  metric_series *s = series_find(f, label_values, false);
  double v = s == NULL ? 0 : f->type == METRIC_HISTOGRAM ? (double)s->count : s->value;
  pthread_mutex_unlock(&f->reg->mu);
  return v;
}

/* ---- rendering ---- */

static int put_double(llorch_buf *b, double v) {
  char tmp[40];
  if (isnan(v)) return llorch_buf_append_str(b, "NaN");
  if (isinf(v)) return llorch_buf_append_str(b, v > 0 ? "+Inf" : "-Inf");
  if (v == floor(v) && fabs(v) < 1e15) {
    snprintf(tmp, sizeof tmp, "%.0f", v);
  } else {
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*g", prec, v);
      if (strtod(tmp, NULL) == v) break;
    }
  }
  return llorch_buf_append_str(b, tmp);
}

/* Escapes \ and newline (HELP) and also " (label values). */
static int put_escaped(llorch_buf *b, const char *s, bool quote) {
  int rc = 0;
  for (; *s; s++) {
    if (*s == '\\') rc |= llorch_buf_append(b, "\\\\", 2);
    else if (*s == '\n') rc |= llorch_buf_append(b, "\\n", 2);
    else if (quote && *s == '"') rc |= llorch_buf_append(b, "\\\"", 2);
    else rc |= llorch_buf_append(b, s, 1);
  }
  return rc;
}

/* name{l1="v1",...[,le="x"]} */
static int put_series_name(llorch_buf *b, const llorch_metric *f, const metric_series *s,
                           const char *suffix, const char *le) {
  int rc = llorch_buf_append_str(b, f->name);
  rc |= llorch_buf_append_str(b, suffix);
  if (f->n_labels == 0 && le == NULL) return rc;
  rc |= llorch_buf_append(b, "{", 1);
  for (size_t i = 0; i < f->n_labels; i++) {
    if (i) rc |= llorch_buf_append(b, ",", 1);
    rc |= llorch_buf_append_str(b, f->label_names[i]);
    rc |= llorch_buf_append(b, "=\"", 2);
    rc |= put_escaped(b, s->values[i], true);
    rc |= llorch_buf_append(b, "\"", 1);
  }
  if (le != NULL) {
    if (f->n_labels) rc |= llorch_buf_append(b, ",", 1);
    rc |= llorch_buf_append(b, "le=\"", 4);
    rc |= llorch_buf_append_str(b, le);
    rc |= llorch_buf_append(b, "\"", 1);
  }
  rc |= llorch_buf_append(b, "}", 1);
  return rc;
}

static int render_family(llorch_buf *b, const llorch_metric *f) {
  static const char *const type_names[] = {"counter", "gauge", "histogram"};
  int rc = llorch_buf_append_str(b, "# HELP ");
  rc |= llorch_buf_append_str(b, f->name);
  rc |= llorch_buf_append(b, " ", 1);
  rc |= put_escaped(b, f->help, false);
  rc |= llorch_buf_append_str(b, "\n# TYPE ");
  rc |= llorch_buf_append_str(b, f->name);
  rc |= llorch_buf_append(b, " ", 1);
  rc |= llorch_buf_append_str(b, type_names[f->type]);
  rc |= llorch_buf_append(b, "\n", 1);
  for (const metric_series *s = f->series; s != NULL; s = s->next) {
    if (f->type != METRIC_HISTOGRAM) {
      rc |= put_series_name(b, f, s, "", NULL);
      rc |= llorch_buf_append(b, " ", 1);
      rc |= put_double(b, s->value);
      rc |= llorch_buf_append(b, "\n", 1);
      continue;
    }
    uint64_t cum = 0;
    for (size_t i = 0; i < f->n_buckets; i++) {
      llorch_buf le = {0};
      cum += s->bucket_counts[i];
      rc |= put_double(&le, f->buckets[i]);
      rc |= put_series_name(b, f, s, "_bucket", le.data ? le.data : "0");
      llorch_buf_free(&le);
      rc |= llorch_buf_append(b, " ", 1);
      rc |= put_double(b, (double)cum);
      rc |= llorch_buf_append(b, "\n", 1);
    }
    rc |= put_series_name(b, f, s, "_bucket", "+Inf");
    rc |= llorch_buf_append(b, " ", 1);
    rc |= put_double(b, (double)s->count);
    rc |= llorch_buf_append(b, "\n", 1);
    rc |= put_series_name(b, f, s, "_sum", NULL);
    rc |= llorch_buf_append(b, " ", 1);
    rc |= put_double(b, s->sum);
    rc |= llorch_buf_append(b, "\n", 1);
    rc |= put_series_name(b, f, s, "_count", NULL);
    rc |= llorch_buf_append(b, " ", 1);
    rc |= put_double(b, (double)s->count);
    rc |= llorch_buf_append(b, "\n", 1);
  }
  return rc;
}

char *llorch_metrics_render(llorch_metrics *m, size_t *len) {
  llorch_buf b = {0};
  int rc = llorch_buf_append(&b, "", 0);
  pthread_mutex_lock(&m->mu);
  for (const llorch_metric *f = m->families; f != NULL && rc == 0; f = f->next)
    rc |= render_family(&b, f);
  pthread_mutex_unlock(&m->mu);
  if (rc != 0) {
    llorch_buf_free(&b);
    return NULL;
  }
  if (len != NULL) *len = b.len;
  return b.data;
}
