/*
 * JSON helpers: request-field getters with client-facing error sentences,
 * and a small JSON text builder.
 */
#include "llorch/json.h"
#include "llorch/utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/buf.h"

/* The failing field of the last getter error on this thread (llorch_json_errparam). */
static _Thread_local char json_errparam[256];

/* ---- parsing ---- */

static const char *json_kind(const cJSON *v) {
  if (cJSON_IsArray(v)) return "an array";
  if (cJSON_IsObject(v)) return "an object";
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsBool(v)) return "a boolean";
  if (cJSON_IsNull(v)) return "null";
  return "an invalid value";
}

/* ---- strings the parser would silently change ---- */

/*
 * cJSON cuts a string at an escaped NUL (so "m.gguf\u0000.x" would name
 * m.gguf), passes invalid UTF-8 through, and calls a lone surrogate escape
 * "invalid JSON". One linear pass before it finds those and names the field
 * ("messages[0].content"), following keys and array indexes on a small stack;
 * anything else malformed is left for cJSON to report.
 */
#define SCAN_DEPTH 32   /* levels named in a path; deeper ones still parse */
#define SCAN_KEY 48     /* characters of a key kept for the path */

typedef struct scan_frame {
  bool object;
  bool want_key;        /* object: the next string is a key */
  size_t index;         /* array: the element being read */
  char key[SCAN_KEY + 1];
} scan_frame;

typedef struct scan_state {
  scan_frame frames[SCAN_DEPTH];
  size_t depth;         /* may exceed SCAN_DEPTH; frames beyond are not kept */
} scan_state;

static void scan_path(const scan_state *st, bool in_key, char *buf, size_t size) {
  size_t w = 0, n = st->depth < SCAN_DEPTH ? st->depth : SCAN_DEPTH;
  buf[0] = '\0';
  for (size_t i = 0; i < n && w + 1 < size; i++) {
    const scan_frame *f = &st->frames[i];
    bool last = i + 1 == n;
    if (f->object && last && in_key) break;
    if (f->object)
      w += (size_t)snprintf(buf + w, size - w, "%s%s", w ? "." : "", f->key);
    else
      w += (size_t)snprintf(buf + w, size - w, "[%zu]", f->index);
  }
  if (st->depth > SCAN_DEPTH && w + 1 < size) snprintf(buf + w, size - w, "...");
  if (in_key) snprintf(buf + strlen(buf), size - strlen(buf), "%sa key", buf[0] ? " " : "");
  else if (buf[0] == '\0') snprintf(buf, size, "request body");
}

static int scan_hex4(const char *p, const char *end, unsigned *out) {
  unsigned v = 0;
  if (end - p < 4) return -1;
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)p[i], d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return -1;
    v = v * 16 + (unsigned)d;
  }
  *out = v;
  return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 (overlong, surrogate, > U+10FFFF, cut). */
static size_t scan_utf8(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  size_t n;
  unsigned min, cp;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) n = 2, min = 0x80, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef) n = 3, min = 0x800, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, min = 0x10000, cp = c & 0x07;
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

/* Checks the string starting after the quote at *pos; leaves *pos after its closing quote. */
static int scan_string(scan_state *st, const char *text, size_t len, size_t *pos, bool is_key,
                       llorch_errmsg *em) {
  const char *end = text + len;
  const char *p = text + *pos;
  scan_frame *kf = is_key && st->depth <= SCAN_DEPTH ? &st->frames[st->depth - 1] : NULL;
  size_t klen = 0;
  char path[sizeof json_errparam];
  while (p < end && *p != '"') {
    unsigned char c = (unsigned char)*p;
    if (c == '\\') {
      if (p + 1 >= end) break;
      if (p[1] == 'u') {
        unsigned v, lo;
        if (scan_hex4(p + 2, end, &v) < 0) break; /* cJSON reports it */
        if (v == 0) {
          scan_path(st, is_key, path, sizeof path);
          snprintf(json_errparam, sizeof json_errparam, "%s", path);
          return llorch_errmsg_set(em, LLORCH_EINVAL,
                                   "'%s' contains a NUL character (\\u0000), which is not allowed in strings",
                                   path);
        }
        if (v >= 0xd800 && v <= 0xdfff) {
          bool paired = v <= 0xdbff && end - p >= 12 && p[6] == '\\' && p[7] == 'u' &&
                        scan_hex4(p + 8, end, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff;
          if (!paired) {
            scan_path(st, is_key, path, sizeof path);
            snprintf(json_errparam, sizeof json_errparam, "%s", path);
            return llorch_errmsg_set(em, LLORCH_EINVAL,
                                     "'%s' contains a lone UTF-16 surrogate \\u%04x: a high surrogate "
                                     "(\\ud800-\\udbff) must be followed by a low one (\\udc00-\\udfff)",
                                     path, v);
          }
          p += 6;
        }
        p += 6;
      } else {
        p += 2;
      }
      if (kf && klen < SCAN_KEY) kf->key[klen++] = '?';
      continue;
    }
    size_t n = c == 0 ? 0 : scan_utf8((const unsigned char *)p, (const unsigned char *)end);
    if (n == 0) {
      scan_path(st, is_key, path, sizeof path);
      snprintf(json_errparam, sizeof json_errparam, "%s", path);
      if (c == 0)
        return llorch_errmsg_set(em, LLORCH_EINVAL,
                                 "'%s' contains a NUL byte (at byte %zu), which is not allowed in strings",
                                 path, (size_t)(p - text));
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' is not valid UTF-8 (byte 0x%02x at byte %zu)",
                               path, c, (size_t)(p - text));
    }
    if (kf && klen + n <= SCAN_KEY) {
      /* A key goes into a one-line message: no control characters in it. */
      if (n == 1 && (c < 0x20 || c == 0x7f)) kf->key[klen] = '?';
      else memcpy(kf->key + klen, p, n);
      klen += n;
    }
    p += n;
  }
  if (kf) kf->key[klen] = '\0';
  *pos = (size_t)(p - text) + (p < end ? 1 : 0);
  return 0;
}

static int json_scan_strings(const char *text, size_t len, llorch_errmsg *em) {
  scan_state st;
  st.depth = 0;
  for (size_t i = 0; i < len;) {
    char c = text[i];
    scan_frame *top = st.depth && st.depth <= SCAN_DEPTH ? &st.frames[st.depth - 1] : NULL;
    if (c == '"') {
      bool is_key = top && top->object && top->want_key;
      i++;
      int rc = scan_string(&st, text, len, &i, is_key, em);
      if (rc < 0) return rc;
      if (is_key) top->want_key = false;
      continue;
    }
    if (c == '{' || c == '[') {
      if (st.depth < SCAN_DEPTH) {
        scan_frame *f = &st.frames[st.depth];
        f->object = c == '{';
        f->want_key = f->object;
        f->index = 0;
        f->key[0] = '\0';
      }
      st.depth++;
    } else if (c == '}' || c == ']') {
      if (st.depth) st.depth--;
    } else if (c == ',' && top) {
      if (top->object) top->want_key = true;
      else top->index++;
    }
    i++;
  }
  return 0;
}

int llorch_json_parse(const char *text, size_t len, bool require_object, cJSON **out,
                      llorch_errmsg *em) {
  *out = NULL;
  /* A new document: no field of an earlier request (maybe another
   * client's, on this thread) may be named in this one's errors. */
  json_errparam[0] = '\0';
  size_t i = 0;
  while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
    i++;
  if (i == len) return llorch_errmsg_set(em, LLORCH_EINVAL, "request body is empty");
  int rc = json_scan_strings(text, len, em);
  if (rc < 0) return rc;
  const char *end = NULL;
  cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, false);
  if (v == NULL) {
    size_t pos = end != NULL && end >= text ? (size_t)(end - text) : 0;
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "request body is not valid JSON (error near byte %zu)", pos);
  }
  /* Only whitespace may follow the value. */
  size_t pos = (size_t)(end - text);
  while (pos < len && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\r' ||
                       text[pos] == '\n' || text[pos] == '\0'))
    pos++;
  if (pos < len) {
    cJSON_Delete(v);
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "request body is not valid JSON (unexpected data at byte %zu)", pos);
  }
  if (require_object && !cJSON_IsObject(v)) {
    const char *kind = json_kind(v);
    cJSON_Delete(v);
    return llorch_errmsg_set(em, LLORCH_EINVAL, "request body must be a JSON object, got %s",
                             kind);
  }
  *out = v;
  return 0;
}

size_t llorch_json_count_values(const char *text, size_t len, size_t max) {
  /*
   * For valid JSON, 1 (the top value) plus the commas plus the non-empty
   * containers' openers, outside strings, is the number of values: each
   * value but the first in a container follows a comma, and each container's
   * first value (or member) follows its opener. Keys are not counted.
   */
  size_t n = 1, i = 0;
  while (i < len && n <= max) {
    char c = text[i++];
    if (c == '"') {
      while (i < len && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
      i++;
    } else if (c == ',' || c == '[' || c == '{') {
      n++;
      if (c != ',') {
        /* An empty container holds no value. */
        size_t k = i;
        while (k < len && (text[k] == ' ' || text[k] == '\t' || text[k] == '\r' || text[k] == '\n'))
          k++;
        if (k < len && (text[k] == ']' || text[k] == '}')) n--;
      }
    }
  }
  return n;
}

int llorch_json_parse_bounded(const char *text, size_t len, size_t max_values,
                              const char *limit_name, cJSON **out, llorch_errmsg *em) {
  *out = NULL;
  if (max_values > 0 && llorch_json_count_values(text, len, max_values) > max_values)
    return llorch_errmsg_set(em, LLORCH_ELIMIT, "request body has more than %zu JSON values (%s)",
                             max_values, limit_name);
  return llorch_json_parse(text, len, true, out, em);
}

/* ---- describing values for messages ---- */

const char *llorch_json_describe(const cJSON *v, char *buf, size_t size) {
  if (size == 0) return buf;
  if (v == NULL) {
    snprintf(buf, size, "nothing");
  } else if (cJSON_IsString(v)) {
    const char *s = v->valuestring ? v->valuestring : "";
    size_t n = strlen(s);
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_jbuf_strn(&b, s, n > 40 ? 40 : n);
    if (b.err == 0 && b.data != NULL) {
      if (n > 40 && b.len > 0) {
        b.data[b.len - 1] = '\0'; /* drop the closing quote, say it was cut */
        snprintf(buf, size, "%s...\"", b.data);
      } else {
        snprintf(buf, size, "%s", b.data);
      }
    } else {
      snprintf(buf, size, "a string");
    }
    llorch_jbuf_free(&b);
  } else if (cJSON_IsNumber(v)) {
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_jbuf_num(&b, v->valuedouble);
    snprintf(buf, size, "%s", b.data ? b.data : "a number");
    llorch_jbuf_free(&b);
  } else if (cJSON_IsTrue(v)) {
    snprintf(buf, size, "true");
  } else if (cJSON_IsFalse(v)) {
    snprintf(buf, size, "false");
  } else {
    snprintf(buf, size, "%s", json_kind(v));
  }
  return buf;
}

const char *llorch_json_path_index(char *buf, size_t size, const char *where,
                                   const char *key, size_t i) {
  if (where != NULL && where[0] != '\0')
    snprintf(buf, size, "%s.%s[%zu]", where, key, i);
  else
    snprintf(buf, size, "%s[%zu]", key, i);
  return buf;
}

const char *llorch_json_errparam(void) { return json_errparam; }

void llorch_json_set_errparam(const char *param) {
  snprintf(json_errparam, sizeof json_errparam, "%s", param ? param : "");
}

/* ---- getters ---- */

static const char *field_name(char *buf, size_t size, const char *where, const char *key) {
  if (where != NULL && where[0] != '\0') snprintf(buf, size, "%s.%s", where, key);
  else snprintf(buf, size, "%s", key);
  return buf;
}

/*
 * Looks the field up. Returns 1 when present (not null), 0 when absent or
 * null and optional, or the error for a missing required field.
 */
static int field_lookup(const cJSON *obj, const char *where, const char *key, bool required,
                        const cJSON **v, llorch_errmsg *em) {
  *v = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
  if (*v != NULL && !cJSON_IsNull(*v)) return 1;
  if (!required) return 0;
  char name[256];
  field_name(name, sizeof name, where, key);
  snprintf(json_errparam, sizeof json_errparam, "%s", name);
  return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' is required", name);
}

/* "'<field>' must be <what>, got <value>" */
static int field_error(const char *where, const char *key, const char *what, const cJSON *v,
                       llorch_errmsg *em) {
  char name[256], got[96];
  field_name(name, sizeof name, where, key);
  snprintf(json_errparam, sizeof json_errparam, "%s", name);
  return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be %s, got %s", name, what,
                           llorch_json_describe(v, got, sizeof got));
}

int llorch_json_get_string(const cJSON *obj, const char *where, const char *key,
                           bool required, const char **out, llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  if (!cJSON_IsString(v) || v->valuestring == NULL)
    return field_error(where, key, "a string", v, em);
  *out = v->valuestring;
  return 0;
}

/* Range wording: "an integer >= 1", "an integer between 0 and 2", ... */
static void range_text_int(char *buf, size_t size, const char *kind, int64_t min, int64_t max) {
  if (min == INT64_MIN && max == INT64_MAX) snprintf(buf, size, "%s", kind);
  else if (max == INT64_MAX) snprintf(buf, size, "%s >= %" PRId64, kind, min);
  else if (min == INT64_MIN) snprintf(buf, size, "%s <= %" PRId64, kind, max);
  else snprintf(buf, size, "%s between %" PRId64 " and %" PRId64, kind, min, max);
}

int llorch_json_get_int(const cJSON *obj, const char *where, const char *key,
                        bool required, int64_t min, int64_t max, int64_t *out,
                        llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  char what[96];
  range_text_int(what, sizeof what, "an integer", min, max);
  if (!cJSON_IsNumber(v)) return field_error(where, key, what, v, em);
  double d = v->valuedouble;
  /* 2^63 is the first double past INT64_MAX. */
  if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 ||
      d >= 9223372036854775808.0)
    return field_error(where, key, what, v, em);
  int64_t i = (int64_t)d;
  if (i < min || i > max) return field_error(where, key, what, v, em);
  *out = i;
  return 0;
}

static void range_text_num(char *buf, size_t size, double min, double max) {
  bool lo = isfinite(min), hi = isfinite(max);
  if (!lo && !hi) snprintf(buf, size, "a number");
  else if (!hi) snprintf(buf, size, "a number >= %g", min);
  else if (!lo) snprintf(buf, size, "a number <= %g", max);
  else snprintf(buf, size, "a number between %g and %g", min, max);
}

int llorch_json_get_number(const cJSON *obj, const char *where, const char *key,
                           bool required, double min, double max, double *out,
                           llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  char what[96];
  range_text_num(what, sizeof what, min, max);
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min ||
      v->valuedouble > max)
    return field_error(where, key, what, v, em);
  *out = v->valuedouble;
  return 0;
}

int llorch_json_get_bool(const cJSON *obj, const char *where, const char *key,
                         bool required, bool *out, llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  if (!cJSON_IsBool(v)) return field_error(where, key, "true or false", v, em);
  *out = cJSON_IsTrue(v);
  return 0;
}

int llorch_json_get_array(const cJSON *obj, const char *where, const char *key,
                          bool required, size_t min_items, const cJSON **out,
                          llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  if (!cJSON_IsArray(v)) return field_error(where, key, "an array", v, em);
  if ((size_t)cJSON_GetArraySize(v) < min_items) {
    char name[256];
    field_name(name, sizeof name, where, key);
    snprintf(json_errparam, sizeof json_errparam, "%s", name);
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must have at least %zu item%s, got %d",
                             name, min_items, min_items == 1 ? "" : "s",
                             cJSON_GetArraySize(v));
  }
  *out = v;
  return 0;
}

int llorch_json_get_object(const cJSON *obj, const char *where, const char *key,
                           bool required, const cJSON **out, llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  if (!cJSON_IsObject(v)) return field_error(where, key, "an object", v, em);
  *out = v;
  return 0;
}

int llorch_json_get_enum(const cJSON *obj, const char *where, const char *key,
                         bool required, const char *const *allowed, int *index,
                         llorch_errmsg *em) {
  const cJSON *v;
  int rc = field_lookup(obj, where, key, required, &v, em);
  if (rc <= 0) return rc;
  if (cJSON_IsString(v) && v->valuestring != NULL) {
    for (int i = 0; allowed[i] != NULL; i++) {
      if (strcmp(allowed[i], v->valuestring) == 0) {
        *index = i;
        return 0;
      }
    }
  }
  char what[256] = "one of ";
  size_t n = strlen(what);
  for (int i = 0; allowed[i] != NULL && n < sizeof what; i++)
    n += (size_t)snprintf(what + n, sizeof what - n, "%s%s", i ? ", " : "", allowed[i]);
  return field_error(where, key, what, v, em);
}

char *llorch_json_print(const cJSON *v) { return cJSON_PrintUnformatted(v); }

/* ---- builder ---- */

void llorch_jbuf_init(llorch_jbuf *b) { memset(b, 0, sizeof *b); }

void llorch_jbuf_free(llorch_jbuf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

void llorch_jbuf_reset(llorch_jbuf *b) {
  b->len = 0;
  b->err = 0;
  b->depth = 0;
  b->nonempty = b->is_array = 0;
  b->after_key = false;
  if (b->data) b->data[0] = '\0';
}

static bool jbuf_reserve(llorch_jbuf *b, size_t extra) {
  if (b->err) return false;
  llorch_buf nb = {b->data, b->len, b->cap};
  if (llorch_buf_reserve(&nb, extra) < 0) {
    b->err = LLORCH_ENOMEM;
    return false;
  }
  b->data = nb.data;
  b->cap = nb.cap;
  return true;
}

void llorch_jbuf_raw(llorch_jbuf *b, const char *s, size_t n) {
  if (!jbuf_reserve(b, n)) return;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void llorch_jbuf_cstr(llorch_jbuf *b, const char *s) { llorch_jbuf_raw(b, s, strlen(s)); }

static void jbuf_put_strn(llorch_jbuf *b, const char *s, size_t n) {
  /* Worst case: every byte becomes \u00XX (6) or U+FFFD (3). */
  if (!jbuf_reserve(b, n * 6 + 2)) return;
  char *o = b->data + b->len;
  *o++ = '"';
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c == '"' || c == '\\') {
      *o++ = '\\';
      *o++ = (char)c;
      i++;
    } else if (c < 0x20) {
      switch (c) {
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        default: o += sprintf(o, "\\u%04x", c); break;
      }
      i++;
    } else if (c < 0x80) {
      *o++ = (char)c;
      i++;
    } else {
      size_t bad;
      bool incomplete;
      size_t len = llorch_utf8_next(p + i, n - i, &bad, &incomplete);
      if (len == 0) {
        /* Invalid UTF-8 would make the whole document invalid: one U+FFFD
         * per maximal subpart (utf8.h). */
        memcpy(o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += bad;
      } else {
        memcpy(o, p + i, len);
        o += len;
        i += len;
      }
    }
  }
  *o++ = '"';
  *o = '\0';
  b->len = (size_t)(o - b->data);
}

/* Before a value or key in a structured container: the comma between items.
 * A value right after its key takes none. */
static void jbuf_sep(llorch_jbuf *b) {
  if (b->depth == 0) return;
  if (b->after_key) {
    b->after_key = false;
    return;
  }
  uint64_t bit = (uint64_t)1 << b->depth;
  if (b->nonempty & bit) llorch_jbuf_raw(b, ",", 1);
  b->nonempty |= bit;
}

void llorch_jbuf_strn(llorch_jbuf *b, const char *s, size_t n) {
  jbuf_sep(b);
  jbuf_put_strn(b, s, n);
}

void llorch_jbuf_str(llorch_jbuf *b, const char *s) {
  jbuf_sep(b);
  if (s == NULL) llorch_jbuf_raw(b, "null", 4);
  else jbuf_put_strn(b, s, strlen(s));
}

void llorch_jbuf_int(llorch_jbuf *b, int64_t v) {
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%" PRId64, v);
  jbuf_sep(b);
  llorch_jbuf_raw(b, tmp, (size_t)n);
}

void llorch_jbuf_num(llorch_jbuf *b, double v) {
  jbuf_sep(b);
  if (!isfinite(v)) {
    llorch_jbuf_raw(b, "null", 4);
    return;
  }
  char tmp[40];
  int n = 0;
  /* The shortest of %.15g / %.17g that reads back as the same double. */
  for (int prec = 15; prec <= 17; prec++) {
    n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (strtod(tmp, NULL) == v) break;
  }
  llorch_jbuf_raw(b, tmp, (size_t)n);
}

void llorch_jbuf_bool(llorch_jbuf *b, bool v) {
  jbuf_sep(b);
  if (v) llorch_jbuf_raw(b, "true", 4);
  else llorch_jbuf_raw(b, "false", 5);
}

void llorch_jbuf_null(llorch_jbuf *b) {
  jbuf_sep(b);
  llorch_jbuf_raw(b, "null", 4);
}

void llorch_jbuf_value(llorch_jbuf *b, const char *json, size_t n) {
  jbuf_sep(b);
  llorch_jbuf_raw(b, json, n);
}

static void jbuf_open(llorch_jbuf *b, bool array) {
  jbuf_sep(b);
  if (b->err) return;
  if (b->depth >= LLORCH_JBUF_MAX_DEPTH) {
    b->err = LLORCH_EINVAL; /* a programming error: the writer's callers nest a fixed depth */
    return;
  }
  llorch_jbuf_raw(b, array ? "[" : "{", 1);
  b->depth++;
  uint64_t bit = (uint64_t)1 << b->depth;
  b->nonempty &= ~bit;
  if (array) b->is_array |= bit;
  else b->is_array &= ~bit;
}

void llorch_jbuf_obj(llorch_jbuf *b) { jbuf_open(b, false); }
void llorch_jbuf_arr(llorch_jbuf *b) { jbuf_open(b, true); }

void llorch_jbuf_end(llorch_jbuf *b) {
  if (b->err) return;
  if (b->depth == 0 || b->after_key) {
    b->err = LLORCH_EINVAL; /* unbalanced, or a key without its value */
    return;
  }
  bool array = (b->is_array >> b->depth) & 1;
  b->depth--;
  llorch_jbuf_raw(b, array ? "]" : "}", 1);
}

void llorch_jbuf_key(llorch_jbuf *b, const char *key) {
  jbuf_sep(b);
  jbuf_put_strn(b, key, strlen(key));
  llorch_jbuf_raw(b, ":", 1);
  if (b->depth > 0) b->after_key = true;
}

void llorch_jbuf_kstr(llorch_jbuf *b, const char *key, const char *s) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_str(b, s);
}

void llorch_jbuf_kint(llorch_jbuf *b, const char *key, int64_t v) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_int(b, v);
}

void llorch_jbuf_knum(llorch_jbuf *b, const char *key, double v) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_num(b, v);
}

void llorch_jbuf_kbool(llorch_jbuf *b, const char *key, bool v) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_bool(b, v);
}

void llorch_jbuf_kobj(llorch_jbuf *b, const char *key) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_obj(b);
}

void llorch_jbuf_karr(llorch_jbuf *b, const char *key) {
  llorch_jbuf_key(b, key);
  llorch_jbuf_arr(b);
}

int llorch_jbuf_error(const llorch_jbuf *b) { return b->err; }

char *llorch_json_error_envelope(const char *message, const char *type,
                                 const char *param, const char *code) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"error\":{");
  llorch_jbuf_key(&b, "message");
  llorch_jbuf_str(&b, message ? message : "");
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "type");
  llorch_jbuf_str(&b, type ? type : "server_error");
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "param");
  llorch_jbuf_str(&b, param);
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "code");
  llorch_jbuf_str(&b, code);
  llorch_jbuf_cstr(&b, "}}");
  if (b.err) {
    llorch_jbuf_free(&b);
    return NULL;
  }
  return b.data;
}

const char *llorch_json_anthropic_error_type(int status) {
  switch (status) {
  case 400: return "invalid_request_error";
  case 401: return "authentication_error";
  case 403: return "permission_error";
  case 404: return "not_found_error";
  case 413: return "request_too_large";
  case 429: return "rate_limit_error";
  case 503: return "overloaded_error";
  default: return "api_error";
  }
}

char *llorch_json_error_envelope_anthropic(const char *message, int status) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"type\":\"error\",\"error\":{\"type\":");
  llorch_jbuf_str(&b, llorch_json_anthropic_error_type(status));
  llorch_jbuf_cstr(&b, ",\"message\":");
  llorch_jbuf_str(&b, message ? message : "");
  llorch_jbuf_cstr(&b, "}}");
  if (b.err) {
    llorch_jbuf_free(&b);
    return NULL;
  }
  return b.data;
}
