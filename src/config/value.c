/*
 * Value codecs: text (from YAML or a flag) <-> the typed field an option
 * points at. The same parser reads defaults, file values and flags, so a
 * default can never be something a user could not have written.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config-impl.h"

#define FIELD(o, base, type) ((type *)(void *)((char *)(base) + (o)->offset))
#define CFIELD(o, base, type) ((const type *)(const void *)((const char *)(base) + (o)->offset))

/* ---- number syntax ---- */

/* A plain decimal integer, optionally signed; nothing else. */
static int parse_i64(const char *s, int64_t *out) {
  const char *p = s;
  if (*p == '+' || *p == '-') p++;
  if (!isdigit((unsigned char)*p)) return -1;
  for (const char *q = p; *q; q++)
    if (!isdigit((unsigned char)*q)) return -1;
  errno = 0;
  long long v = strtoll(s, NULL, 10);
  if (errno == ERANGE) return -1;
  *out = v;
  return 0;
}

/* Splits "512MiB" into the number 512 and the unit "MiB". */
static int split_number_unit(const char *s, uint64_t *num, const char **unit) {
  const char *p = s;
  if (!isdigit((unsigned char)*p)) return -1;
  uint64_t v = 0;
  while (isdigit((unsigned char)*p)) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return -1;
    v = v * 10 + d;
    p++;
  }
  while (*p == ' ') p++;
  *num = v;
  *unit = p;
  return 0;
}

/* "500ms" "10s" "5m" "1h" "2d", a plain number of seconds, or "-1". */
static int parse_duration(const char *s, int64_t *ms) {
  if (strcmp(s, "-1") == 0) {
    *ms = -1;
    return 0;
  }
  uint64_t n;
  const char *unit;
  if (split_number_unit(s, &n, &unit) != 0) return -1;
  uint64_t mul;
  if (*unit == '\0' || strcmp(unit, "s") == 0) mul = 1000;
  else if (strcmp(unit, "ms") == 0) mul = 1;
  else if (strcmp(unit, "m") == 0 || strcmp(unit, "min") == 0) mul = 60 * 1000;
  else if (strcmp(unit, "h") == 0) mul = 3600 * 1000;
  else if (strcmp(unit, "d") == 0) mul = 86400 * 1000;
  else return -1;
  if (n > (uint64_t)INT64_MAX / mul) return -1;
  *ms = (int64_t)(n * mul);
  return 0;
}

/* "512MiB" "8GiB" "4KB" (decimal) or a plain number of bytes. */
static int parse_bytes(const char *s, uint64_t *bytes) {
  static const struct { const char *unit; uint64_t mul; } units[] = {
      {"", 1}, {"B", 1},
      {"KiB", UINT64_C(1) << 10}, {"MiB", UINT64_C(1) << 20},
      {"GiB", UINT64_C(1) << 30}, {"TiB", UINT64_C(1) << 40},
      {"K", UINT64_C(1) << 10}, {"M", UINT64_C(1) << 20},
      {"G", UINT64_C(1) << 30}, {"T", UINT64_C(1) << 40},
      {"KB", UINT64_C(1000)}, {"MB", UINT64_C(1000000)},
      {"GB", UINT64_C(1000000000)}, {"TB", UINT64_C(1000000000000)},
  };
  uint64_t n;
  const char *unit;
  if (split_number_unit(s, &n, &unit) != 0) return -1;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcmp(unit, units[i].unit) == 0) {
      if (n > UINT64_MAX / units[i].mul) return -1;
      *bytes = n * units[i].mul;
      return 0;
    }
  }
  return -1;
}

static int parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) return *out = true, 0;
    if (strcasecmp(s, no[i]) == 0) return *out = false, 0;
  }
  return -1;
}

/* ---- formatting ---- */

static void format_duration(int64_t ms, char *buf, size_t n) {
  if (ms < 0) snprintf(buf, n, "-1");
  else if (ms == 0) snprintf(buf, n, "0s");
  else if (ms % (86400 * 1000) == 0) snprintf(buf, n, "%" PRId64 "d", ms / (86400 * 1000));
  else if (ms % (3600 * 1000) == 0) snprintf(buf, n, "%" PRId64 "h", ms / (3600 * 1000));
  else if (ms % (60 * 1000) == 0) snprintf(buf, n, "%" PRId64 "m", ms / (60 * 1000));
  else if (ms % 1000 == 0) snprintf(buf, n, "%" PRId64 "s", ms / 1000);
  else snprintf(buf, n, "%" PRId64 "ms", ms);
}

static void format_bytes(uint64_t b, char *buf, size_t n) {
  static const char *const units[] = {"TiB", "GiB", "MiB", "KiB"};
  for (int i = 0; i < 4; i++) {
    uint64_t mul = UINT64_C(1) << (10 * (4 - i));
    if (b != 0 && b % mul == 0) {
      snprintf(buf, n, "%" PRIu64 "%s", b / mul, units[i]);
      return;
    }
  }
  snprintf(buf, n, "%" PRIu64, b);
}

void config_quote(const char *s, char *buf, size_t n) {
  size_t w = 0;
  if (n < 3) {
    if (n) buf[0] = '\0';
    return;
  }
  buf[w++] = '"';
  for (const unsigned char *p = (const unsigned char *)s; *p && w + 6 < n; p++) {
    switch (*p) {
      case '"': buf[w++] = '\\'; buf[w++] = '"'; break;
      case '\\': buf[w++] = '\\'; buf[w++] = '\\'; break;
      case '\n': buf[w++] = '\\'; buf[w++] = 'n'; break;
      case '\t': buf[w++] = '\\'; buf[w++] = 't'; break;
      default:
        if (*p < 0x20 || *p == 0x7f) w += (size_t)snprintf(buf + w, n - w, "\\x%02x", *p);
        else buf[w++] = (char)*p;
    }
  }
  buf[w++] = '"';
  buf[w] = '\0';
}

/* ---- lists ---- */

void config_strlist_free(llorch_strlist *l) {
  for (size_t i = 0; i < l->count; i++) free(l->items[i]);
  free(l->items);
  l->items = NULL;
  l->count = 0;
}

void config_model_entry_free(llorch_model_entry *e) {
  for (size_t i = 0; i < config_model_fields_count; i++)
    config_value_free(&config_model_fields[i], e);
}

int config_list_append(const config_option *o, void *base, const char *item) {
  llorch_strlist *l = FIELD(o, base, llorch_strlist);
  if (*item == '\0') return LLORCH_ERANGE;
  if (o->check && o->check(item) != 0) return LLORCH_ERANGE;
  char *copy = strdup(item);
  if (!copy) return LLORCH_ENOMEM;
  char **items = realloc(l->items, (l->count + 1) * sizeof *items);
  if (!items) {
    free(copy);
    return LLORCH_ENOMEM;
  }
  items[l->count++] = copy;
  l->items = items;
  return 0;
}

/* Appends each comma-separated item of text. Surrounding spaces are trimmed
 * so "0, 1" reads like "0,1". */
static int list_append_csv(const config_option *o, void *base, const char *text) {
  char *copy = strdup(text);
  if (!copy) return LLORCH_ENOMEM;
  int err = 0;
  /* Split by hand: strtok would skip empty items, and "0,,1" must fail. */
  char *p = copy;
  for (;;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = '\0';
    while (isspace((unsigned char)*p)) p++;
    char *end = p + strlen(p);
    while (end > p && isspace((unsigned char)end[-1])) *--end = '\0';
    err = config_list_append(o, base, p);
    if (err || !comma) break;
    p = comma + 1;
  }
  free(copy);
  return err;
}

/* ---- the generic entry points ---- */

int config_value_parse(const config_option *o, void *base, const char *text, bool is_null,
                       bool append) {
  switch (o->type) {
    case CONFIG_TYPE_STRING: {
      char **f = FIELD(o, base, char *);
      char *v = NULL;
      /* An empty token must be an error, never "no authentication" (YAML
       * null still means "not set", as for every option). */
      if ((o->flags & CONFIG_OPT_SECRET) && !is_null && *text == '\0') return LLORCH_ERANGE;
      if (!is_null && *text) {
        if (o->check && o->check(text) != 0) return LLORCH_ERANGE;
        if (!(v = strdup(text))) return LLORCH_ENOMEM;
      }
      free(*f);
      *f = v;
      return 0;
    }
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_UINT64: {
      int64_t v;
      if (is_null || parse_i64(text, &v) != 0) return LLORCH_EFORMAT;
      if (v < o->min || v > o->max) return LLORCH_ERANGE;
      if (o->type == CONFIG_TYPE_INT) *FIELD(o, base, int) = (int)v;
      else *FIELD(o, base, uint64_t) = (uint64_t)v;
      return 0;
    }
    case CONFIG_TYPE_DOUBLE: {
      char *end;
      if (is_null || *text == '\0' || isspace((unsigned char)*text)) return LLORCH_EFORMAT;
      errno = 0;
      double v = strtod(text, &end);
      if (*end || errno == ERANGE || !isfinite(v)) return LLORCH_EFORMAT;
      if (v < o->dmin || v > o->dmax) return LLORCH_ERANGE;
      *FIELD(o, base, double) = v;
      return 0;
    }
    case CONFIG_TYPE_BOOL: {
      bool v;
      if (is_null || parse_bool(text, &v) != 0) return LLORCH_EFORMAT;
      *FIELD(o, base, bool) = v;
      return 0;
    }
    case CONFIG_TYPE_DURATION: {
      int64_t v;
      if (is_null || parse_duration(text, &v) != 0) return LLORCH_EFORMAT;
      if (v == -1 ? !(o->flags & CONFIG_OPT_NEVER) : (v < o->min || v > o->max))
        return LLORCH_ERANGE;
      *FIELD(o, base, int64_t) = v;
      return 0;
    }
    case CONFIG_TYPE_BYTES: {
      uint64_t v;
      if (is_null || parse_bytes(text, &v) != 0) return LLORCH_EFORMAT;
      if (v < (uint64_t)o->min || v > (uint64_t)o->max) return LLORCH_ERANGE;
      *FIELD(o, base, uint64_t) = v;
      return 0;
    }
    case CONFIG_TYPE_ENUM:
      if (is_null) return LLORCH_EFORMAT;
      for (int i = 0; o->enum_names[i]; i++) {
        if (strcasecmp(text, o->enum_names[i]) == 0) {
          *FIELD(o, base, int) = i;
          return 0;
        }
      }
      return LLORCH_ERANGE;
    case CONFIG_TYPE_STRLIST:
      if ((o->flags & CONFIG_OPT_SECRET) && !is_null && *text == '\0') return LLORCH_ERANGE;
      if (!append) config_strlist_free(FIELD(o, base, llorch_strlist));
      if (is_null || *text == '\0') return 0;
      return list_append_csv(o, base, text);
    case CONFIG_TYPE_MODELS:
      return LLORCH_EFORMAT; /* only from YAML, entry by entry */
  }
  return LLORCH_EINVAL;
}

void config_value_expected(const config_option *o, char *buf, size_t n) {
  switch (o->type) {
    case CONFIG_TYPE_STRING:
      snprintf(buf, n, "%s", o->expect ? o->expect : "a string");
      return;
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_UINT64:
      snprintf(buf, n, "an integer in %" PRId64 "..%" PRId64, o->min, o->max);
      return;
    case CONFIG_TYPE_DOUBLE:
      snprintf(buf, n, "a number in %g..%g", o->dmin, o->dmax);
      return;
    case CONFIG_TYPE_BOOL:
      snprintf(buf, n, "true or false");
      return;
    case CONFIG_TYPE_DURATION: {
      char lo[32], hi[32];
      format_duration(o->min, lo, sizeof lo);
      format_duration(o->max, hi, sizeof hi);
      snprintf(buf, n, "a duration (500ms, 10s, 5m) in %s..%s%s", lo, hi,
               (o->flags & CONFIG_OPT_NEVER) ? " or -1 (never)" : "");
      return;
    }
    case CONFIG_TYPE_BYTES: {
      char lo[32], hi[32];
      format_bytes((uint64_t)o->min, lo, sizeof lo);
      if (o->max == INT64_MAX) snprintf(hi, sizeof hi, "any");
      else format_bytes((uint64_t)o->max, hi, sizeof hi);
      snprintf(buf, n, "a byte size (4096, 512MiB, 8GiB) in %s..%s", lo, hi);
      return;
    }
    case CONFIG_TYPE_ENUM: {
      size_t w = (size_t)snprintf(buf, n, "one of ");
      for (int i = 0; o->enum_names[i] && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "%s%s", i ? "|" : "", o->enum_names[i]);
      return;
    }
    case CONFIG_TYPE_STRLIST:
      if (o->expect) snprintf(buf, n, "a list of items each %s", o->expect);
      else snprintf(buf, n, "a list of non-empty strings");
      return;
    case CONFIG_TYPE_MODELS:
      snprintf(buf, n, "a list of model entries {name, file, ...}");
      return;
  }
  snprintf(buf, n, "?");
}

void config_value_format(const config_option *o, const void *base, char *buf, size_t n) {
  switch (o->type) {
    case CONFIG_TYPE_STRING: {
      const char *s = *CFIELD(o, base, char *);
      if (s) config_quote(s, buf, n);
      else snprintf(buf, n, "~");
      return;
    }
    case CONFIG_TYPE_INT: snprintf(buf, n, "%d", *CFIELD(o, base, int)); return;
    case CONFIG_TYPE_UINT64: snprintf(buf, n, "%" PRIu64, *CFIELD(o, base, uint64_t)); return;
    case CONFIG_TYPE_DOUBLE: snprintf(buf, n, "%.17g", *CFIELD(o, base, double)); return;
    case CONFIG_TYPE_BOOL: snprintf(buf, n, "%s", *CFIELD(o, base, bool) ? "true" : "false"); return;
    case CONFIG_TYPE_DURATION: format_duration(*CFIELD(o, base, int64_t), buf, n); return;
    case CONFIG_TYPE_BYTES: format_bytes(*CFIELD(o, base, uint64_t), buf, n); return;
    case CONFIG_TYPE_ENUM: {
      int v = *CFIELD(o, base, int);
      int count = 0;
      while (o->enum_names[count]) count++;
      snprintf(buf, n, "%s", v >= 0 && v < count ? o->enum_names[v] : "?");
      return;
    }
    case CONFIG_TYPE_STRLIST: {
      const llorch_strlist *l = CFIELD(o, base, llorch_strlist);
      size_t w = (size_t)snprintf(buf, n, "[");
      for (size_t i = 0; i < l->count && w < n; i++) {
        char q[1024];
        config_quote(l->items[i], q, sizeof q);
        w += (size_t)snprintf(buf + w, n - w, "%s%s", i ? ", " : "", q);
      }
      if (w < n) snprintf(buf + w, n - w, "]");
      return;
    }
    case CONFIG_TYPE_MODELS:
      snprintf(buf, n, "[...]");
      return;
  }
  snprintf(buf, n, "?");
}

void config_value_free(const config_option *o, void *base) {
  switch (o->type) {
    case CONFIG_TYPE_STRING: {
      char **f = FIELD(o, base, char *);
      free(*f);
      *f = NULL;
      return;
    }
    case CONFIG_TYPE_STRLIST:
      config_strlist_free(FIELD(o, base, llorch_strlist));
      return;
    case CONFIG_TYPE_MODELS: {
      llorch_model_list *m = FIELD(o, base, llorch_model_list);
      for (size_t i = 0; i < m->count; i++) config_model_entry_free(&m->items[i]);
      free(m->items);
      m->items = NULL;
      m->count = 0;
      return;
    }
    default:
      return;
  }
}

static int role_index(llorch_role role) {
  switch (role) {
    case LLORCH_ROLE_ORCHESTRATOR: return CONFIG_ROLE_IX_ORCHESTRATOR;
    case LLORCH_ROLE_POOL: return CONFIG_ROLE_IX_POOL;
    case LLORCH_ROLE_WORKER: return CONFIG_ROLE_IX_WORKER;
    case LLORCH_ROLE_ALL: return CONFIG_ROLE_IX_ALL;
    default: return -1;
  }
}

int config_value_default(const config_option *o, void *base, llorch_role role) {
  int ix = role_index(role);
  const char *def = (ix >= 0 && o->def_role[ix]) ? o->def_role[ix] : o->def;
  config_value_free(o, base);
  if (!def) {
    if (o->type == CONFIG_TYPE_STRING || o->type == CONFIG_TYPE_STRLIST ||
        o->type == CONFIG_TYPE_MODELS)
      return 0;
    /* A number without a default would be a table bug. */
    LLORCH_ASSERT(!"option without a default");
  }
  int err = config_value_parse(o, base, def, false, false);
  /* Defaults are written by us: one that does not parse is a table bug. */
  LLORCH_ASSERT(err == 0 || err == LLORCH_ENOMEM);
  return err;
}
