/*
 * JSON Schema -> GBNF (see llorch_schema_to_gbnf in include/llorch/grammar.h
 * for what is supported and what the output looks like).
 *
 * Every schema node becomes one rule, named rN; shared pieces (ws, string,
 * number, ...) are written once at the end when used. A node that can match
 * nothing (false, minLength > maxLength, a required property that can match
 * nothing, ...) is reported upwards as SC_NEVER rather than as a rule, so
 * anyOf drops the branch, an optional property disappears, and at the root
 * the error names the JSON pointer and the reason.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar-impl.h"

#define SC_NEVER 1       /* sc_schema's "matches nothing" (not an error) */
#define SC_MAX_DEPTH 64  /* nesting of schema objects (recursion goes through $ref rules) */
#define SC_INT_MAX 9999999999999999LL /* 16 digits: the bound on generated integers */

typedef struct sc_ref {
  char *ptr;       /* "#/$defs/node" */
  char name[24];   /* its rule */
} sc_ref;

typedef struct sc {
  const cJSON *root;
  unsigned flags;
  llorch_jbuf *out;
  char *warning;
  size_t warning_size;
  llorch_errmsg *em;
  uint32_t n_rules;
  sc_ref *refs;
  uint32_t n_refs, cap_refs;
  uint32_t depth;
  char never_ptr[256];
  char never_why[200];
  /* shared rules used */
  bool use_ws, use_string, use_char, use_number, use_integer, use_value, use_keychar, use_never;
} sc;

/* ---- output helpers ---- */

static void sc_rule_name(sc *c, char name[24]) { snprintf(name, 24, "r%u", c->n_rules++); }

static int sc_nomem(sc *c) { return llorch_errmsg_set(c->em, LLORCH_ENOMEM, "schema: out of memory"); }

/* Appends bytes s[0..n) as a GBNF literal "...". */
static void sc_lit(llorch_jbuf *b, const char *s, size_t n) {
  llorch_jbuf_raw(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    char tmp[8];
    if (ch == '"' || ch == '\\') {
      tmp[0] = '\\';
      tmp[1] = (char)ch;
      llorch_jbuf_raw(b, tmp, 2);
    } else if (ch < 0x20 || ch == 0x7F) {
      snprintf(tmp, sizeof tmp, "\\x%02X", ch);
      llorch_jbuf_raw(b, tmp, 4);
    } else {
      llorch_jbuf_raw(b, (const char *)&ch, 1);
    }
  }
  llorch_jbuf_raw(b, "\"", 1);
}

/* Writes "name ::= body\n". */
static int sc_emit(sc *c, const char *name, const llorch_jbuf *body) {
  llorch_jbuf_cstr(c->out, name);
  llorch_jbuf_cstr(c->out, " ::= ");
  if (body->len) llorch_jbuf_raw(c->out, body->data, body->len);
  else llorch_jbuf_cstr(c->out, "\"\"");
  llorch_jbuf_cstr(c->out, "\n");
  return llorch_jbuf_error(c->out) < 0 || llorch_jbuf_error(body) < 0 ? sc_nomem(c) : 0;
}

static int sc_never(sc *c, const char *ptr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Remembers the first reason something matches nothing; returns SC_NEVER. */
static int sc_never(sc *c, const char *ptr, const char *fmt, ...) {
  if (!c->never_why[0]) {
    snprintf(c->never_ptr, sizeof c->never_ptr, "%s", ptr[0] ? ptr : "/");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->never_why, sizeof c->never_why, fmt, ap);
    va_end(ap);
  }
  return SC_NEVER;
}

/* An unsupported keyword (or value): an error when strict, else a warning
 * (the first one is kept) and the caller ignores it. */
static int sc_unsupported(sc *c, const char *ptr, const char *key, const char *why) {
  if (c->flags & LLORCH_SCHEMA_STRICT)
    return llorch_errmsg_set(c->em, LLORCH_EUNSUPPORTED,
                             "unsupported keyword '%s' at %s%s%s", key, ptr[0] ? ptr : "/",
                             why ? ": " : "", why ? why : "");
  if (c->warning && c->warning_size && !c->warning[0])
    snprintf(c->warning, c->warning_size, "ignored unsupported keyword '%s' at %s%s%s", key,
             ptr[0] ? ptr : "/", why ? ": " : "", why ? why : "");
  return 0;
}

/* ptr + "/" + key with ~ and / escaped (JSON pointer). */
static void sc_ptr_join(char *out, size_t size, const char *ptr, const char *key) {
  size_t n = (size_t)snprintf(out, size, "%s/", ptr);
  for (const char *k = key; *k && n + 3 < size; k++) {
    if (*k == '~') {
      out[n++] = '~';
      out[n++] = '0';
    } else if (*k == '/') {
      out[n++] = '~';
      out[n++] = '1';
    } else {
      out[n++] = *k;
    }
  }
  if (n < size) out[n] = 0;
  else out[size - 1] = 0;
}

/* ---- keywords ---- */

static const char *const sc_annotations[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$defs", "definitions", "$anchor", NULL};

static const char *const sc_known[] = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minLength",
    "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "nullable", NULL};

static bool sc_in(const char *const *list, const char *s) {
  for (; *list; list++)
    if (strcmp(*list, s) == 0) return true;
  return false;
}

static int sc_schema(sc *c, const cJSON *node, const char *ptr, char name[24]);

/* ---- shared rules ---- */

static void sc_write_shared(sc *c) {
  llorch_jbuf *o = c->out;
  if (c->use_value) c->use_ws = c->use_string = c->use_number = true;
  if (c->use_string) c->use_char = true;
  /* at most one space, or a newline and up to 20 spaces/tabs: bounded */
  if (c->use_ws) llorch_jbuf_cstr(o, "ws ::= ( \" \" | \"\\n\" [ \\t]{0,20} )?\n");
  if (c->use_value) {
    llorch_jbuf_cstr(o,
                     "value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
                     "object ::= \"{\" ws ( string ws \":\" ws value ( ws \",\" ws string ws \":\" "
                     "ws value )* )? ws \"}\"\n"
                     "array ::= \"[\" ws ( value ( ws \",\" ws value )* )? ws \"]\"\n");
    c->use_string = c->use_number = true;
  }
  if (c->use_string) {
    llorch_jbuf_cstr(o, "string ::= \"\\\"\" char* \"\\\"\"\n");
    c->use_char = true;
  }
  /* One JSON string character. \u escapes exclude surrogates, so that a
   * character here is one code point, as minLength/maxLength count them. */
  if (c->use_char)
    llorch_jbuf_cstr(o, "char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" ( "
                        "[0-9a-cA-CeEfF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} ) )\n");
  if (c->use_keychar) llorch_jbuf_cstr(o, "keychar ::= [^\"\\\\\\x00-\\x1F]\n");
  if (c->use_number)
    llorch_jbuf_cstr(o, "number ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? "
                        "( [eE] [-+]? [0-9]{1,2} )?\n");
  if (c->use_integer) llorch_jbuf_cstr(o, "integer ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} )\n");
  if (c->use_never) llorch_jbuf_cstr(o, "never ::= [^\\x00-\\U0010FFFF]\n");
}

/* ---- integers in a range ---- */

static int sc_ndigits(int64_t x) {
  int n = 1;
  while (x >= 10) {
    x /= 10;
    n++;
  }
  return n;
}

/* a, b with the same number of digits: digit-wise literal or [x-y] then [0-9]s */
static void sc_digits_pattern(llorch_jbuf *b, int64_t lo, int64_t hi) {
  char L[24], H[24];
  snprintf(L, sizeof L, "%lld", (long long)lo);
  snprintf(H, sizeof H, "%lld", (long long)hi);
  size_t n = strlen(L);
  llorch_jbuf_cstr(b, "(");
  for (size_t i = 0; i < n; i++) {
    char t[16];
    if (L[i] == H[i]) snprintf(t, sizeof t, " \"%c\"", L[i]);
    else snprintf(t, sizeof t, " [%c-%c]", L[i], H[i]);
    llorch_jbuf_cstr(b, t);
  }
  llorch_jbuf_cstr(b, " )");
}

static int64_t sc_pow10(int n) {
  int64_t p = 1;
  while (n-- > 0) p *= 10;
  return p;
}

/*
 * Alternatives for the non-negative integers [lo, hi]: the range is cut at
 * lo with its last k digits raised to 9s and at hi + 1 with its last k
 * digits lowered to 0s, so each piece is "same prefix, one digit range,
 * then any digits" and both ends of a piece have the same length.
 */
static void sc_uint_range(llorch_jbuf *b, int64_t lo, int64_t hi, bool *first) {
  int64_t stops[80];
  int ns = 0;
  for (int k = 1; k <= 17; k++) {
    int64_t p = sc_pow10(k);
    int64_t s = (lo / p) * p + p - 1; /* lo with k nines */
    if (s >= lo && s < hi) stops[ns++] = s;
  }
  for (int k = 1; k <= 17; k++) {
    int64_t p = sc_pow10(k);
    int64_t s = ((hi + 1) / p) * p - 1;
    if (s >= lo && s < hi) stops[ns++] = s;
  }
  stops[ns++] = hi;
  /* sort, unique */
  for (int i = 1; i < ns; i++)
    for (int j = i; j > 0 && stops[j] < stops[j - 1]; j--) {
      int64_t t = stops[j];
      stops[j] = stops[j - 1];
      stops[j - 1] = t;
    }
  int64_t start = lo;
  for (int i = 0; i < ns; i++) {
    if (i > 0 && stops[i] == stops[i - 1]) continue;
    if (stops[i] < start) continue;
    /* split further where the digit count changes */
    while (sc_ndigits(start) != sc_ndigits(stops[i])) {
      int64_t e = sc_pow10(sc_ndigits(start)) - 1;
      if (!*first) llorch_jbuf_cstr(b, " |");
      *first = false;
      llorch_jbuf_cstr(b, " ");
      sc_digits_pattern(b, start, e);
      start = e + 1;
    }
    if (!*first) llorch_jbuf_cstr(b, " |");
    *first = false;
    llorch_jbuf_cstr(b, " ");
    sc_digits_pattern(b, start, stops[i]);
    start = stops[i] + 1;
  }
}

static int sc_integer(sc *c, const cJSON *node, const char *ptr, llorch_jbuf *body) {
  int64_t lo = -SC_INT_MAX, hi = SC_INT_MAX;
  bool bounded = false;
  static const char *const keys[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
  for (int i = 0; i < 4; i++) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(node, keys[i]);
    if (!k) continue;
    char p[300];
    sc_ptr_join(p, sizeof p, ptr, keys[i]);
    if (!cJSON_IsNumber(k) || !isfinite(k->valuedouble)) {
      int rc = sc_unsupported(c, p, keys[i], "expected a number");
      if (rc < 0) return rc;
      continue;
    }
    double v = k->valuedouble;
    bounded = true;
    if (i == 0) v = ceil(v);
    else if (i == 1) v = floor(v) + 1;
    else if (i == 2) v = floor(v);
    else v = ceil(v) - 1;
    if (v > (double)SC_INT_MAX) v = (double)SC_INT_MAX + 1;
    if (v < -(double)SC_INT_MAX) v = -(double)SC_INT_MAX - 1;
    if (i < 2 && (int64_t)v > lo) lo = (int64_t)v;
    if (i >= 2 && (int64_t)v < hi) hi = (int64_t)v;
  }
  if (!bounded) {
    c->use_integer = true;
    llorch_jbuf_cstr(body, "integer");
    return 0;
  }
  if (lo > hi)
    return sc_never(c, ptr, "no integer satisfies the bounds (at most 16 digits are generated)");
  bool first = true;
  if (lo < 0) {
    int64_t nlo = hi < 0 ? -hi : 1, nhi = -lo;
    llorch_jbuf_cstr(body, "\"-\" (");
    sc_uint_range(body, nlo, nhi, &first);
    llorch_jbuf_cstr(body, " )");
    first = false;
  }
  if (hi >= 0) {
    if (!first) llorch_jbuf_cstr(body, " |");
    first = true;
    llorch_jbuf_cstr(body, " (");
    sc_uint_range(body, lo < 0 ? 0 : lo, hi, &first);
    llorch_jbuf_cstr(body, " )");
  }
  return 0;
}

/* ---- strings: pattern (a regex subset) ---- */

typedef struct rx {
  sc *c;
  const char *p, *end, *start;
  const char *ptr;
  llorch_jbuf *b;
  int err;
  int depth;
} rx;

static int rx_fail(rx *r, const char *what) {
  if (!r->err) {
    char why[200];
    snprintf(why, sizeof why, "%s at offset %d of the pattern", what, (int)(r->p - r->start));
    r->err = sc_unsupported(r->c, r->ptr, "pattern", why);
    if (r->err == 0) r->err = 1; /* not strict: ignore the pattern */
  }
  return r->err;
}

/* Decodes one UTF-8 code point (invalid bytes stand for themselves). */
static uint32_t rx_utf8(rx *r) {
  unsigned char ch = (unsigned char)*r->p;
  int n = ch < 0x80 ? 1 : (ch & 0xE0) == 0xC0 ? 2 : (ch & 0xF0) == 0xE0 ? 3 : (ch & 0xF8) == 0xF0 ? 4 : 1;
  if (r->end - r->p < n) n = 1;
  uint32_t cp = n == 1 ? ch : n == 2 ? (ch & 0x1Fu) : n == 3 ? (ch & 0x0Fu) : (ch & 0x07u);
  for (int i = 1; i < n; i++) cp = (cp << 6) | ((unsigned char)r->p[i] & 0x3Fu);
  r->p += n;
  return cp;
}

typedef struct rx_set {
  uint32_t lo[64], hi[64];
  int n;
  bool overflow;
} rx_set;

static void rx_set_add(rx_set *s, uint32_t lo, uint32_t hi) {
  if (s->n >= 64) {
    s->overflow = true;
    return;
  }
  s->lo[s->n] = lo;
  s->hi[s->n] = hi;
  s->n++;
}

/* Sorted, merged; complemented over all code points when negate. */
static void rx_set_norm(rx_set *s, bool negate) {
  for (int i = 1; i < s->n; i++)
    for (int j = i; j > 0 && s->lo[j] < s->lo[j - 1]; j--) {
      uint32_t t = s->lo[j];
      s->lo[j] = s->lo[j - 1];
      s->lo[j - 1] = t;
      t = s->hi[j];
      s->hi[j] = s->hi[j - 1];
      s->hi[j - 1] = t;
    }
  int m = 0;
  for (int i = 0; i < s->n; i++) {
    if (m && s->lo[i] <= s->hi[m - 1] + 1) {
      if (s->hi[i] > s->hi[m - 1]) s->hi[m - 1] = s->hi[i];
    } else {
      s->lo[m] = s->lo[i];
      s->hi[m] = s->hi[i];
      m++;
    }
  }
  s->n = m;
  if (!negate) return;
  rx_set c = {.n = 0};
  uint32_t next = 0;
  for (int i = 0; i < s->n; i++) {
    if (s->lo[i] > next) rx_set_add(&c, next, s->lo[i] - 1);
    next = s->hi[i] + 1;
  }
  if (next <= 0x10FFFF) rx_set_add(&c, next, 0x10FFFF);
  *s = c;
}

static bool rx_set_has(const rx_set *s, uint32_t cp) {
  for (int i = 0; i < s->n; i++)
    if (cp >= s->lo[i] && cp <= s->hi[i]) return true;
  return false;
}

/*
 * Writes the JSON-string form of the characters in s as a GBNF group: the
 * plain characters as one class, and '"', '\' and control characters as
 * their escapes.
 */
static void rx_set_emit(rx *r, const rx_set *s) {
  llorch_jbuf *b = r->b;
  llorch_jbuf_cstr(b, "(");
  bool first = true;
  char t[48];
  /* the characters written as themselves: >= 0x20, not '"' or '\' */
  llorch_jbuf cls;
  llorch_jbuf_init(&cls);
  for (int i = 0; i < s->n; i++) {
    uint32_t lo = s->lo[i] < 0x20 ? 0x20 : s->lo[i], hi = s->hi[i];
    if (hi < lo) continue;
    static const uint32_t cuts[2] = {'"', '\\'};
    for (int k = 0; k < 2; k++)
      if (cuts[k] >= lo && cuts[k] <= hi) {
        if (cuts[k] > lo) {
          snprintf(t, sizeof t, "\\U%08X-\\U%08X", lo, cuts[k] - 1);
          llorch_jbuf_cstr(&cls, t);
        }
        lo = cuts[k] + 1;
      }
    if (lo <= hi) {
      snprintf(t, sizeof t, "\\U%08X-\\U%08X", lo, hi);
      llorch_jbuf_cstr(&cls, t);
    }
  }
  if (cls.len) {
    llorch_jbuf_cstr(b, " [");
    llorch_jbuf_raw(b, cls.data, cls.len);
    llorch_jbuf_cstr(b, "]");
    first = false;
  }
  if (llorch_jbuf_error(&cls) < 0) b->err = LLORCH_ENOMEM;
  llorch_jbuf_free(&cls);
  if (rx_set_has(s, '"')) {
    llorch_jbuf_cstr(b, first ? " \"\\\\\\\"\"" : " | \"\\\\\\\"\"");
    first = false;
  }
  if (rx_set_has(s, '\\')) {
    llorch_jbuf_cstr(b, first ? " \"\\\\\\\\\"" : " | \"\\\\\\\\\"");
    first = false;
  }
  for (uint32_t cc = 0; cc < 0x20; cc++) {
    if (!rx_set_has(s, cc)) continue;
    const char *e = cc == '\n' ? "\\\\n" : cc == '\t' ? "\\\\t" : cc == '\r' ? "\\\\r"
                    : cc == '\b' ? "\\\\b" : cc == '\f' ? "\\\\f" : NULL;
    if (e) snprintf(t, sizeof t, "%s\"%s\"", first ? " " : " | ", e);
    else snprintf(t, sizeof t, "%s\"\\\\u00%02X\"", first ? " " : " | ", cc);
    llorch_jbuf_cstr(b, t);
    first = false;
  }
  if (first) {
    llorch_jbuf_cstr(b, " never");
    r->c->use_never = true;
  }
  llorch_jbuf_cstr(b, " )");
}

/* An escape inside or outside a class: a set (\d \w \s and their
 * complements) or one character. */
static int rx_escape(rx *r, rx_set *s) {
  r->p++; /* backslash */
  if (r->p >= r->end) return rx_fail(r, "a lone '\\' at the end");
  char e = *r->p++;
  switch (e) {
    case 'd': rx_set_add(s, '0', '9'); return 0;
    case 'D': {
      rx_set t = {.n = 0};
      rx_set_add(&t, '0', '9');
      rx_set_norm(&t, true);
      for (int i = 0; i < t.n; i++) rx_set_add(s, t.lo[i], t.hi[i]);
      return 0;
    }
    case 'w': case 'W': case 's': case 'S': {
      rx_set t = {.n = 0};
      if (e == 'w' || e == 'W') {
        rx_set_add(&t, '0', '9');
        rx_set_add(&t, 'A', 'Z');
        rx_set_add(&t, 'a', 'z');
        rx_set_add(&t, '_', '_');
      } else {
        rx_set_add(&t, '\t', '\r');
        rx_set_add(&t, ' ', ' ');
        rx_set_add(&t, 0xA0, 0xA0);
        rx_set_add(&t, 0x2000, 0x200A);
        rx_set_add(&t, 0x2028, 0x2029);
        rx_set_add(&t, 0x3000, 0x3000);
        rx_set_add(&t, 0xFEFF, 0xFEFF);
      }
      rx_set_norm(&t, e == 'W' || e == 'S');
      for (int i = 0; i < t.n; i++) rx_set_add(s, t.lo[i], t.hi[i]);
      return 0;
    }
    case 'n': rx_set_add(s, '\n', '\n'); return 0;
    case 't': rx_set_add(s, '\t', '\t'); return 0;
    case 'r': rx_set_add(s, '\r', '\r'); return 0;
    case 'f': rx_set_add(s, '\f', '\f'); return 0;
    case 'v': rx_set_add(s, '\v', '\v'); return 0;
    case '0': rx_set_add(s, 0, 0); return 0;
    case 'x': case 'u': {
      int nd = e == 'x' ? 2 : 4;
      uint32_t v = 0;
      for (int i = 0; i < nd; i++) {
        if (r->p >= r->end) return rx_fail(r, "a short \\x or \\u escape");
        char h = *r->p++;
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0) return rx_fail(r, "a bad hex digit in an escape");
        v = v * 16 + (uint32_t)d;
      }
      rx_set_add(s, v, v);
      return 0;
    }
    default:
      if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9'))
        return rx_fail(r, "an unsupported escape (backreferences, \\b, \\p{..} are not in the "
                          "subset)");
      rx_set_add(s, (uint32_t)(unsigned char)e, (uint32_t)(unsigned char)e);
      return 0;
  }
}

static int rx_alt(rx *r);

static int rx_atom(rx *r) {
  char ch = *r->p;
  rx_set s = {.n = 0};
  if (ch == '(') {
    if (++r->depth > 64) return rx_fail(r, "groups nested deeper than 64");
    r->p++;
    if (r->p < r->end && *r->p == '?') {
      if (r->end - r->p >= 2 && r->p[1] == ':') r->p += 2;
      else if (r->end - r->p >= 2 && r->p[1] == '<' && r->end - r->p >= 3 && r->p[2] != '=' &&
               r->p[2] != '!') {
        while (r->p < r->end && *r->p != '>') r->p++;
        if (r->p < r->end) r->p++;
      } else {
        return rx_fail(r, "lookaround or an unknown group (only (...), (?:...), (?<name>...))");
      }
    }
    llorch_jbuf_cstr(r->b, "(");
    int rc = rx_alt(r);
    if (rc) return rc;
    if (r->p >= r->end || *r->p != ')') return rx_fail(r, "an unclosed '('");
    r->p++;
    r->depth--;
    llorch_jbuf_cstr(r->b, " )");
    return 0;
  }
  if (ch == '[') {
    r->p++;
    bool neg = false;
    if (r->p < r->end && *r->p == '^') {
      neg = true;
      r->p++;
    }
    bool first = true;
    while (r->p < r->end && (*r->p != ']' || first)) {
      first = false;
      uint32_t lo;
      if (*r->p == '\\') {
        rx_set t = {.n = 0};
        int rc = rx_escape(r, &t);
        if (rc) return rc;
        if (t.n != 1 || t.lo[0] != t.hi[0]) {
          for (int i = 0; i < t.n; i++) rx_set_add(&s, t.lo[i], t.hi[i]);
          continue;
        }
        lo = t.lo[0];
      } else {
        lo = rx_utf8(r);
      }
      uint32_t hi = lo;
      if (r->end - r->p >= 2 && *r->p == '-' && r->p[1] != ']') {
        r->p++;
        if (*r->p == '\\') {
          rx_set t = {.n = 0};
          int rc = rx_escape(r, &t);
          if (rc) return rc;
          if (t.n != 1 || t.lo[0] != t.hi[0]) return rx_fail(r, "a class escape as a range end");
          hi = t.lo[0];
        } else {
          hi = rx_utf8(r);
        }
        if (hi < lo) return rx_fail(r, "a range whose end is below its start");
      }
      rx_set_add(&s, lo, hi);
    }
    if (r->p >= r->end) return rx_fail(r, "an unclosed '['");
    r->p++;
    if (s.overflow) return rx_fail(r, "a class of more than 64 ranges");
    rx_set_norm(&s, neg);
    rx_set_emit(r, &s);
    return 0;
  }
  if (ch == '.') {
    r->p++;
    rx_set_add(&s, '\n', '\n');
    rx_set_add(&s, '\r', '\r');
    rx_set_add(&s, 0x2028, 0x2029);
    rx_set_norm(&s, true);
    rx_set_emit(r, &s);
    return 0;
  }
  if (ch == '\\') {
    int rc = rx_escape(r, &s);
    if (rc) return rc;
    rx_set_norm(&s, false);
    rx_set_emit(r, &s);
    return 0;
  }
  if (ch == '*' || ch == '+' || ch == '?' || ch == '{') return rx_fail(r, "a quantifier with nothing to repeat");
  uint32_t cp = rx_utf8(r);
  rx_set_add(&s, cp, cp);
  rx_set_emit(r, &s);
  return 0;
}

static int rx_uint(rx *r, uint32_t *out) {
  uint32_t v = 0;
  if (r->p >= r->end || *r->p < '0' || *r->p > '9') return -1;
  while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
    v = v * 10 + (uint32_t)(*r->p - '0');
    if (v > 100000) return -1;
    r->p++;
  }
  *out = v;
  return 0;
}

static int rx_seq(rx *r) {
  llorch_jbuf_cstr(r->b, " (");
  bool empty = true;
  while (r->p < r->end && *r->p != '|' && *r->p != ')') {
    if (*r->p == '^' && r->p == r->start) {
      r->p++;
      continue;
    }
    if (*r->p == '$' && r->p + 1 == r->end) {
      r->p++;
      continue;
    }
    if (*r->p == '^' || *r->p == '$') return rx_fail(r, "an anchor that is not at an end");
    llorch_jbuf_cstr(r->b, " ");
    int rc = rx_atom(r);
    if (rc) return rc;
    empty = false;
    if (r->p >= r->end) break;
    char q = *r->p;
    if (q == '*' || q == '+' || q == '?') {
      r->p++;
      char t[4] = {q, 0};
      llorch_jbuf_cstr(r->b, t);
    } else if (q == '{') {
      const char *save = r->p;
      r->p++;
      uint32_t m = 0, n = 0;
      bool unbounded = false;
      if (rx_uint(r, &m) < 0) {
        r->p = save;
        return rx_fail(r, "a '{' that is not a {m}, {m,} or {m,n} quantifier");
      }
      n = m;
      if (r->p < r->end && *r->p == ',') {
        r->p++;
        if (r->p < r->end && *r->p == '}') unbounded = true;
        else if (rx_uint(r, &n) < 0) return rx_fail(r, "a bad {m,n} quantifier");
      }
      if (r->p >= r->end || *r->p != '}') return rx_fail(r, "an unclosed {m,n} quantifier");
      r->p++;
      if (!unbounded && n < m) return rx_fail(r, "a {m,n} quantifier with n < m");
      char t[48];
      if (unbounded) snprintf(t, sizeof t, "{%u,}", m);
      else snprintf(t, sizeof t, "{%u,%u}", m, n);
      llorch_jbuf_cstr(r->b, t);
    } else {
      continue;
    }
    /* lazy and possessive markers do not change what a full match accepts */
    if (r->p < r->end && (*r->p == '?' || *r->p == '+')) r->p++;
    if (r->p < r->end && (*r->p == '*' || *r->p == '+' || *r->p == '?' || *r->p == '{'))
      return rx_fail(r, "a quantifier applied to a quantifier");
  }
  if (empty) llorch_jbuf_cstr(r->b, " \"\"");
  llorch_jbuf_cstr(r->b, " )");
  return 0;
}

static int rx_alt(rx *r) {
  int rc = rx_seq(r);
  while (rc == 0 && r->p < r->end && *r->p == '|') {
    r->p++;
    llorch_jbuf_cstr(r->b, " |");
    rc = rx_seq(r);
  }
  return rc;
}

/* pattern -> "\"" (its language, JSON-escaped) "\"". Returns 0, 1 when the
 * pattern was ignored (not strict), or a negative error. */
static int sc_pattern(sc *c, const char *pattern, const char *ptr, llorch_jbuf *body) {
  llorch_jbuf tmp;
  llorch_jbuf_init(&tmp);
  rx r = {.c = c, .p = pattern, .end = pattern + strlen(pattern), .start = pattern,
          .ptr = ptr, .b = &tmp};
  int rc = rx_alt(&r);
  if (rc == 0 && r.p < r.end) rc = rx_fail(&r, "an unmatched ')'");
  if (rc == 0) {
    llorch_jbuf_cstr(body, "\"\\\"\" (");
    llorch_jbuf_raw(body, tmp.data ? tmp.data : "", tmp.len);
    llorch_jbuf_cstr(body, " ) \"\\\"\"");
  }
  llorch_jbuf_free(&tmp);
  return rc;
}

/* ---- strings ---- */

static int sc_get_count(sc *c, const cJSON *node, const char *ptr, const char *key, int64_t *out,
                        bool *has) {
  const cJSON *k = cJSON_GetObjectItemCaseSensitive(node, key);
  *has = false;
  if (!k) return 0;
  char p[300];
  sc_ptr_join(p, sizeof p, ptr, key);
  if (!cJSON_IsNumber(k) || k->valuedouble < 0 || k->valuedouble != floor(k->valuedouble) ||
      k->valuedouble > 1e6) {
    if (c->flags & LLORCH_SCHEMA_STRICT)
      return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'%s' at %s must be an integer in [0, 1000000]",
                               key, p);
    return sc_unsupported(c, ptr, key, "expected an integer in [0, 1000000]");
  }
  *out = (int64_t)k->valuedouble;
  *has = true;
  return 0;
}

static const char *const sc_formats[] = {"date", "time", "date-time", "uuid", "email", NULL};

static void sc_format_body(sc *c, int f, llorch_jbuf *b) {
  static const char *date =
      "[0-9]{4} \"-\" ( \"02-\" ( \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8] ) | ( \"0\" [469] | "
      "\"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"30\" ) | ( \"0\" [13578] | \"1\" [02] ) "
      "\"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] ) )";
  static const char *time =
      "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,6} )? "
      "( \"Z\" | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )";
  llorch_jbuf_cstr(b, "\"\\\"\" ");
  switch (f) {
    case 0: llorch_jbuf_cstr(b, date); break;
    case 1: llorch_jbuf_cstr(b, time); break;
    case 2:
      llorch_jbuf_cstr(b, date);
      llorch_jbuf_cstr(b, " \"T\" ");
      llorch_jbuf_cstr(b, time);
      break;
    case 3:
      llorch_jbuf_cstr(b, "[0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" "
                          "[0-9a-f]{12}");
      break;
    default:
      llorch_jbuf_cstr(b, "[a-zA-Z0-9_+-]{1,24} ( \".\" [a-zA-Z0-9_+-]{1,24} )? \"@\" ( [a-z0-9] "
                          "( [a-z0-9-]{0,16} [a-z0-9] )? \".\" ){1,3} [a-z]{2,8}");
      break;
  }
  llorch_jbuf_cstr(b, " \"\\\"\"");
}

static int sc_string(sc *c, const cJSON *node, const char *ptr, llorch_jbuf *body) {
  int64_t minl = 0, maxl = -1, v;
  bool has_min, has_max;
  int rc;
  if ((rc = sc_get_count(c, node, ptr, "minLength", &v, &has_min)) < 0) return rc;
  if (has_min) minl = v;
  if ((rc = sc_get_count(c, node, ptr, "maxLength", &v, &has_max)) < 0) return rc;
  if (has_max) maxl = v;
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(node, "format");
  const cJSON *pat = cJSON_GetObjectItemCaseSensitive(node, "pattern");
  char p[300];
  if (pat) {
    sc_ptr_join(p, sizeof p, ptr, "pattern");
    if (!cJSON_IsString(pat)) return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'pattern' at %s must be a string", p);
    if (fmt || has_min || has_max) {
      rc = sc_unsupported(c, ptr, fmt ? "format" : has_min ? "minLength" : "maxLength",
                          "not supported together with pattern (pattern is used)");
      if (rc < 0) return rc;
    }
    rc = sc_pattern(c, pat->valuestring, p, body);
    if (rc <= 0) return rc;
    /* ignored pattern: a plain string */
    body->len = 0;
    if (body->data) body->data[0] = 0;
  } else if (fmt) {
    sc_ptr_join(p, sizeof p, ptr, "format");
    int f = -1;
    for (int i = 0; cJSON_IsString(fmt) && sc_formats[i]; i++)
      if (strcmp(fmt->valuestring, sc_formats[i]) == 0) f = i;
    if (f < 0) {
      char why[160];
      snprintf(why, sizeof why, "format %.60s is not one of date, time, date-time, uuid, email",
               cJSON_IsString(fmt) ? fmt->valuestring : "(not a string)");
      rc = sc_unsupported(c, p, "format", why);
      if (rc < 0) return rc;
    } else {
      if (has_min || has_max) {
        rc = sc_unsupported(c, ptr, has_min ? "minLength" : "maxLength",
                            "not supported together with format (format is used)");
        if (rc < 0) return rc;
      }
      sc_format_body(c, f, body);
      return 0;
    }
  }
  if (maxl >= 0 && minl > maxl)
    return sc_never(c, ptr, "minLength %lld > maxLength %lld", (long long)minl, (long long)maxl);
  c->use_char = true;
  char t[96];
  if (!has_min && !has_max) {
    c->use_string = true;
    llorch_jbuf_cstr(body, "string");
  } else if (maxl < 0) {
    snprintf(t, sizeof t, "\"\\\"\" char{%lld,} \"\\\"\"", (long long)minl);
    llorch_jbuf_cstr(body, t);
  } else {
    snprintf(t, sizeof t, "\"\\\"\" char{%lld,%lld} \"\\\"\"", (long long)minl, (long long)maxl);
    llorch_jbuf_cstr(body, t);
  }
  return 0;
}

/* ---- enum / const ---- */

static void sc_json_literal(llorch_jbuf *b, const cJSON *v) {
  char *s = cJSON_PrintUnformatted(v);
  if (!s) {
    b->err = LLORCH_ENOMEM;
    return;
  }
  sc_lit(b, s, strlen(s));
  free(s);
}

/* ---- $ref ---- */

/* The node at JSON pointer ref ("#", "#/a/b~1c/0"), or NULL. */
static const cJSON *sc_resolve(const cJSON *root, const char *ref) {
  if (ref[0] != '#') return NULL;
  const char *p = ref + 1;
  const cJSON *n = root;
  while (*p) {
    if (*p != '/') return NULL;
    p++;
    char tok[256];
    size_t k = 0;
    while (*p && *p != '/' && k + 1 < sizeof tok) {
      if (p[0] == '~' && p[1] == '0') {
        tok[k++] = '~';
        p += 2;
      } else if (p[0] == '~' && p[1] == '1') {
        tok[k++] = '/';
        p += 2;
      } else {
        tok[k++] = *p++;
      }
    }
    tok[k] = 0;
    if (cJSON_IsObject(n)) {
      n = cJSON_GetObjectItemCaseSensitive(n, tok);
    } else if (cJSON_IsArray(n)) {
      char *end;
      long i = strtol(tok, &end, 10);
      if (*end || i < 0) return NULL;
      n = cJSON_GetArrayItem(n, (int)i);
    } else {
      return NULL;
    }
    if (!n) return NULL;
  }
  return n;
}

static int sc_ref_rule(sc *c, const char *ref, const char *ptr, char name[24]) {
  for (uint32_t i = 0; i < c->n_refs; i++)
    if (strcmp(c->refs[i].ptr, ref) == 0) {
      memcpy(name, c->refs[i].name, 24);
      return 0;
    }
  const cJSON *target = sc_resolve(c->root, ref);
  if (!target)
    return llorch_errmsg_set(c->em, LLORCH_EINVAL,
                             "'$ref' at %s: \"%.100s\" does not point into this schema (only "
                             "local references \"#...\" are supported)", ptr, ref);
  if (c->n_refs == c->cap_refs) {
    uint32_t cap = c->cap_refs ? c->cap_refs * 2 : 16;
    sc_ref *nr = realloc(c->refs, (size_t)cap * sizeof *nr);
    if (!nr) return sc_nomem(c);
    c->refs = nr;
    c->cap_refs = cap;
  }
  sc_ref *r = &c->refs[c->n_refs];
  r->ptr = strdup(ref);
  if (!r->ptr) return sc_nomem(c);
  sc_rule_name(c, r->name);
  memcpy(name, r->name, 24);
  c->n_refs++;
  /* registered before compiling the target, so recursion finds the name */
  char inner[24];
  uint32_t saved_depth = c->depth;
  c->depth = 0;
  int rc = sc_schema(c, target, ref + 1, inner);
  c->depth = saved_depth;
  if (rc < 0) return rc;
  llorch_jbuf body;
  llorch_jbuf_init(&body);
  if (rc == SC_NEVER) {
    c->use_never = true;
    llorch_jbuf_cstr(&body, "never");
  } else {
    llorch_jbuf_cstr(&body, inner);
  }
  int erc = sc_emit(c, name, &body);
  llorch_jbuf_free(&body);
  return erc;
}

/* ---- objects ---- */

/* Keys that are none of names[]: a trie over their characters, where each
 * node offers "a character no name continues with, then anything", each
 * child, and the end when no name ends there. Writes the rule for the node
 * holding names [lo, hi) that share their first `depth` bytes. */
static int sc_key_exclusion(sc *c, const char **names, int lo, int hi, size_t depth,
                            char name[24]) {
  sc_rule_name(c, name);
  llorch_jbuf body;
  llorch_jbuf_init(&body);
  c->use_keychar = true;
  bool name_ends = false;
  llorch_jbuf_cstr(&body, "[^\"\\\\\\x00-\\x1F");
  /* children: distinct next bytes (names are sorted) */
  for (int i = lo; i < hi; i++) {
    unsigned char ch = (unsigned char)names[i][depth];
    if (!ch) {
      name_ends = true;
      continue;
    }
    if (ch < 0x20 || ch >= 0x80 || ch == '"' || ch == '\\') continue;
    char t[16];
    snprintf(t, sizeof t, "\\x%02X", ch);
    llorch_jbuf_cstr(&body, t);
  }
  /* The class works on code points but names are walked byte by byte, so
   * a key leaves the names' trie on an ASCII character only (then any
   * characters follow); children through a non-ASCII byte, or a byte a key
   * cannot hold unescaped, are not followed: such a name cannot be written
   * by these keys anyway. */
  llorch_jbuf_cstr(&body, "\\x80-\\U0010FFFF] keychar*");
  if (!name_ends) llorch_jbuf_cstr(&body, " | \"\"");
  int rc = 0;
  for (int i = lo; i < hi && rc == 0;) {
    unsigned char ch = (unsigned char)names[i][depth];
    if (!ch) {
      i++;
      continue;
    }
    int j = i;
    while (j < hi && (unsigned char)names[j][depth] == ch) j++;
    if (ch < 0x20 || ch >= 0x80 || ch == '"' || ch == '\\') {
      i = j;
      continue;
    }
    char child[24];
    rc = sc_key_exclusion(c, names, i, j, depth + 1, child);
    if (rc == 0) {
      char t[48];
      snprintf(t, sizeof t, " | \"\\x%02X\" %s", ch, child);
      llorch_jbuf_cstr(&body, t);
    }
    i = j;
  }
  if (rc == 0) rc = sc_emit(c, name, &body);
  llorch_jbuf_free(&body);
  return rc;
}

static int sc_strcmp(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int sc_object(sc *c, const cJSON *node, const char *ptr, llorch_jbuf *body) {
  const cJSON *props = cJSON_GetObjectItemCaseSensitive(node, "properties");
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(node, "required");
  const cJSON *addl = cJSON_GetObjectItemCaseSensitive(node, "additionalProperties");
  char p[300];
  if (props && !cJSON_IsObject(props)) {
    sc_ptr_join(p, sizeof p, ptr, "properties");
    return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'properties' at %s must be an object", p);
  }
  if (req && !cJSON_IsArray(req)) {
    sc_ptr_join(p, sizeof p, ptr, "required");
    return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'required' at %s must be an array of strings", p);
  }
  for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
    if (!cJSON_IsString(r)) {
      sc_ptr_join(p, sizeof p, ptr, "required");
      return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'required' at %s must be an array of strings", p);
    }
  int n_props = props ? cJSON_GetArraySize(props) : 0;
  int n_req = req ? cJSON_GetArraySize(req) : 0;
  /* declared properties, then required names that are not declared */
  int cap = n_props + n_req + 1;
  const char **names = calloc((size_t)cap, sizeof *names);
  char(*rules)[24] = calloc((size_t)cap, sizeof *rules);
  bool *required = calloc((size_t)cap, sizeof *required);
  int n = 0, rc = 0;
  llorch_jbuf kv;
  llorch_jbuf_init(&kv);
  if (!names || !rules || !required) {
    rc = sc_nomem(c);
    goto out;
  }
  /* what extra keys may hold: NULL none, else the schema */
  const cJSON *extra = NULL;
  bool extra_any = false;
  if (addl && cJSON_IsBool(addl)) extra_any = cJSON_IsTrue(addl);
  else if (addl && cJSON_IsObject(addl)) extra = addl;
  else if (addl) {
    sc_ptr_join(p, sizeof p, ptr, "additionalProperties");
    rc = llorch_errmsg_set(c->em, LLORCH_EINVAL,
                           "'additionalProperties' at %s must be a boolean or a schema", p);
    goto out;
  } else if (!props && !req) {
    extra_any = true; /* {"type":"object"}: any object */
  }
  for (const cJSON *pr = props ? props->child : NULL; pr; pr = pr->next) names[n++] = pr->string;
  for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
    int k = 0;
    while (k < n && strcmp(names[k], r->valuestring) != 0) k++;
    if (k == n) names[n++] = r->valuestring;
    required[k] = true;
  }
  int n_declared = n_props;
  /* value rules */
  for (int k = 0; k < n; k++) {
    char vp[300];
    int vr;
    if (k < n_declared) {
      char pp[300];
      sc_ptr_join(pp, sizeof pp, ptr, "properties");
      sc_ptr_join(vp, sizeof vp, pp, names[k]);
      vr = sc_schema(c, cJSON_GetObjectItemCaseSensitive(props, names[k]), vp, rules[k]);
    } else if (addl && cJSON_IsFalse(addl)) {
      sc_ptr_join(vp, sizeof vp, ptr, "required");
      vr = sc_never(c, vp, "required property '%.60s' is not declared and additionalProperties "
                           "is false", names[k]);
    } else if (extra) {
      sc_ptr_join(vp, sizeof vp, ptr, "additionalProperties");
      vr = sc_schema(c, extra, vp, rules[k]);
    } else {
      c->use_value = true;
      snprintf(rules[k], 24, "value");
      vr = 0;
    }
    if (vr < 0) {
      rc = vr;
      goto out;
    }
    if (vr == SC_NEVER) {
      if (required[k]) {
        rc = SC_NEVER;
        goto out;
      }
      rules[k][0] = 0; /* dropped */
    }
  }
  c->use_ws = true;
  /* extra members: key (not a declared name) and value */
  char extra_rule[24] = "";
  if (extra || extra_any) {
    char key_rule[24], val_rule[24];
    if (n == 0) {
      c->use_string = true;
      snprintf(key_rule, sizeof key_rule, "string");
    } else {
      const char **sorted = malloc((size_t)n * sizeof *sorted);
      if (!sorted) {
        rc = sc_nomem(c);
        goto out;
      }
      memcpy(sorted, names, (size_t)n * sizeof *sorted);
      qsort(sorted, (size_t)n, sizeof *sorted, sc_strcmp);
      char inner[24];
      rc = sc_key_exclusion(c, sorted, 0, n, 0, inner);
      free(sorted);
      if (rc < 0) goto out;
      sc_rule_name(c, key_rule);
      llorch_jbuf_reset(&kv);
      llorch_jbuf_cstr(&kv, "\"\\\"\" ");
      llorch_jbuf_cstr(&kv, inner);
      llorch_jbuf_cstr(&kv, " \"\\\"\"");
      if ((rc = sc_emit(c, key_rule, &kv)) < 0) goto out;
    }
    int vr = 0;
    if (extra) {
      sc_ptr_join(p, sizeof p, ptr, "additionalProperties");
      vr = sc_schema(c, extra, p, val_rule);
      if (vr < 0) {
        rc = vr;
        goto out;
      }
    } else {
      c->use_value = true;
      snprintf(val_rule, sizeof val_rule, "value");
    }
    if (vr != SC_NEVER) {
      sc_rule_name(c, extra_rule);
      llorch_jbuf_reset(&kv);
      llorch_jbuf_cstr(&kv, key_rule);
      llorch_jbuf_cstr(&kv, " ws \":\" ws ");
      llorch_jbuf_cstr(&kv, val_rule);
      if ((rc = sc_emit(c, extra_rule, &kv)) < 0) goto out;
    }
  }
  /* the chain: rest[k][first] = members from k on; first: nothing written yet */
  char base[24];
  sc_rule_name(c, base);
  for (int k = n; k >= 0; k--) {
    for (int first = 0; first < 2; first++) {
      llorch_jbuf_reset(&kv);
      const char *sep = first ? "" : "ws \",\" ws ";
      if (k == n) {
        if (extra_rule[0]) {
          char t[160];
          if (first) snprintf(t, sizeof t, "( %s ( ws \",\" ws %s )* )?", extra_rule, extra_rule);
          else snprintf(t, sizeof t, "( ws \",\" ws %s )*", extra_rule);
          llorch_jbuf_cstr(&kv, t);
        }
      } else if (!rules[k][0]) {
        char t[64];
        snprintf(t, sizeof t, "%s-%d-%d", base, k + 1, first);
        llorch_jbuf_cstr(&kv, t);
      } else {
        llorch_jbuf_cstr(&kv, sep);
        /* the key as JSON text, written as a GBNF literal of those bytes */
        llorch_jbuf key;
        llorch_jbuf_init(&key);
        llorch_jbuf_strn(&key, names[k], strlen(names[k]));
        if (llorch_jbuf_error(&key) < 0) {
          llorch_jbuf_free(&key);
          rc = sc_nomem(c);
          goto out;
        }
        sc_lit(&kv, key.data, key.len);
        llorch_jbuf_free(&key);
        char t[120];
        snprintf(t, sizeof t, " ws \":\" ws %s %s-%d-0", rules[k], base, k + 1);
        llorch_jbuf_cstr(&kv, t);
        if (!required[k]) {
          snprintf(t, sizeof t, " | %s-%d-%d", base, k + 1, first);
          llorch_jbuf_cstr(&kv, t);
        }
      }
      char rn[48];
      snprintf(rn, sizeof rn, "%s-%d-%d", base, k, first);
      if ((rc = sc_emit(c, rn, &kv)) < 0) goto out;
    }
  }
  {
    char t[96];
    snprintf(t, sizeof t, "\"{\" ws %s-0-1 ws \"}\"", base);
    llorch_jbuf_cstr(body, t);
  }

out:
  llorch_jbuf_free(&kv);
  free(names);
  free(rules);
  free(required);
  return rc;
}

/* ---- arrays ---- */

static int sc_array(sc *c, const cJSON *node, const char *ptr, llorch_jbuf *body) {
  const cJSON *items = cJSON_GetObjectItemCaseSensitive(node, "items");
  const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(node, "prefixItems");
  char p[300];
  int rc;
  int64_t minn = 0, maxn = -1, v;
  bool has;
  if ((rc = sc_get_count(c, node, ptr, "minItems", &v, &has)) < 0) return rc;
  if (has) minn = v;
  if ((rc = sc_get_count(c, node, ptr, "maxItems", &v, &has)) < 0) return rc;
  if (has) maxn = v;
  if (prefix && !cJSON_IsArray(prefix)) {
    sc_ptr_join(p, sizeof p, ptr, "prefixItems");
    return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'prefixItems' at %s must be an array of schemas", p);
  }
  if (items && !cJSON_IsObject(items) && !cJSON_IsBool(items)) {
    sc_ptr_join(p, sizeof p, ptr, "items");
    return llorch_errmsg_set(c->em, LLORCH_EINVAL,
                             "'items' at %s must be a schema (an array of schemas is the old "
                             "tuple form: use prefixItems)", p);
  }
  int k = prefix ? cJSON_GetArraySize(prefix) : 0;
  if (maxn >= 0 && maxn < k) k = (int)maxn;
  char(*pr)[24] = calloc((size_t)k + 1, sizeof *pr);
  if (!pr) return sc_nomem(c);
  int i = 0;
  bool prefix_cut = false; /* a prefix item can match nothing: the array ends before it */
  for (const cJSON *it = prefix ? prefix->child : NULL; it && i < k; it = it->next, i++) {
    char ip[300], pp[300], idx[16];
    snprintf(idx, sizeof idx, "%d", i);
    sc_ptr_join(pp, sizeof pp, ptr, "prefixItems");
    sc_ptr_join(ip, sizeof ip, pp, idx);
    int r = sc_schema(c, it, ip, pr[i]);
    if (r < 0) {
      free(pr);
      return r;
    }
    if (r == SC_NEVER) {
      prefix_cut = true;
      break;
    }
  }
  k = i;
  char item[24] = "";
  bool more = false; /* items may follow the prefix */
  if (items && cJSON_IsFalse(items)) more = false;
  else if (items && cJSON_IsObject(items)) {
    sc_ptr_join(p, sizeof p, ptr, "items");
    int r = sc_schema(c, items, p, item);
    if (r < 0) {
      free(pr);
      return r;
    }
    more = r != SC_NEVER;
  } else if (!prefix) {
    c->use_value = true;
    snprintf(item, sizeof item, "value");
    more = true;
  }
  if (prefix_cut) more = false;
  int64_t max_total = more ? maxn : (maxn >= 0 && maxn < k ? maxn : k);
  if (max_total >= 0 && minn > max_total) {
    free(pr);
    return sc_never(c, ptr, "minItems %lld but at most %lld items possible", (long long)minn,
                    (long long)max_total);
  }
  c->use_ws = true;
  /* the tail after the prefix: extra items j in [max(minn - k, 0), max_total - k] */
  llorch_jbuf tail;
  llorch_jbuf_init(&tail);
  if (more && (max_total < 0 || max_total > k)) {
    int64_t a = minn > k ? minn - k : 0;          /* extra items at least */
    int64_t bmax = max_total < 0 ? -1 : max_total - k; /* at most (-1: no bound) */
    char t[200], rep[64];
    if (k == 0) {
      /* the first item has no comma before it */
      int64_t ra = a > 0 ? a - 1 : 0;
      if (bmax < 0) snprintf(rep, sizeof rep, "{%lld,}", (long long)ra);
      else snprintf(rep, sizeof rep, "{%lld,%lld}", (long long)ra, (long long)(bmax - 1));
      snprintf(t, sizeof t, "%s%s ( ws \",\" ws %s )%s%s", a == 0 ? "( " : "", item, item, rep,
               a == 0 ? " )?" : "");
    } else {
      if (bmax < 0) snprintf(rep, sizeof rep, "{%lld,}", (long long)a);
      else snprintf(rep, sizeof rep, "{%lld,%lld}", (long long)a, (long long)bmax);
      snprintf(t, sizeof t, "( ws \",\" ws %s )%s", item, rep);
    }
    llorch_jbuf_cstr(&tail, t);
  }
  /* P_i = sep p_{i+1} P_{i+1} | (i >= minn: "") ; P_k = tail */
  char base[24];
  sc_rule_name(c, base);
  llorch_jbuf kv;
  llorch_jbuf_init(&kv);
  rc = 0;
  for (int j = k; j >= 0 && rc == 0; j--) {
    llorch_jbuf_reset(&kv);
    char t[160];
    if (j == k) {
      if (tail.len) llorch_jbuf_raw(&kv, tail.data, tail.len);
    } else {
      snprintf(t, sizeof t, "%s%s %s-%d", j ? "ws \",\" ws " : "", pr[j], base, j + 1);
      llorch_jbuf_cstr(&kv, t);
      if (j >= minn) llorch_jbuf_cstr(&kv, " | \"\"");
    }
    char rn[48];
    snprintf(rn, sizeof rn, "%s-%d", base, j);
    rc = sc_emit(c, rn, &kv);
  }
  llorch_jbuf_free(&kv);
  llorch_jbuf_free(&tail);
  free(pr);
  if (rc < 0) return rc;
  char t[96];
  snprintf(t, sizeof t, "\"[\" ws %s-0 ws \"]\"", base);
  llorch_jbuf_cstr(body, t);
  return 0;
}

/* ---- allOf of objects: merged into one object schema ---- */

static int sc_allof(sc *c, const cJSON *node, const cJSON *all, const char *ptr, char name[24]) {
  char p[300];
  sc_ptr_join(p, sizeof p, ptr, "allOf");
  if (!cJSON_IsArray(all) || cJSON_GetArraySize(all) == 0)
    return llorch_errmsg_set(c->em, LLORCH_EINVAL, "'allOf' at %s must be a non-empty array", p);
  if (cJSON_GetArraySize(all) == 1) {
    char ip[300];
    sc_ptr_join(ip, sizeof ip, p, "0");
    return sc_schema(c, all->child, ip, name);
  }
  cJSON *merged = cJSON_CreateObject();
  cJSON *props = cJSON_CreateObject(), *req = cJSON_CreateArray();
  if (!merged || !props || !req) {
    cJSON_Delete(merged);
    cJSON_Delete(props);
    cJSON_Delete(req);
    return sc_nomem(c);
  }
  cJSON_AddItemToObject(merged, "type", cJSON_CreateString("object"));
  cJSON_AddItemToObject(merged, "properties", props);
  cJSON_AddItemToObject(merged, "required", req);
  bool closed = false;
  int rc = 0, idx = 0;
  /* members with additionalProperties false: a property survives only if
   * each of them declares it */
  const cJSON *members[64];
  int n_members = 0;
  for (const cJSON *m = all->child; m && rc == 0; m = m->next, idx++) {
    char mp[300], is[16];
    snprintf(is, sizeof is, "%d", idx);
    sc_ptr_join(mp, sizeof mp, p, is);
    const cJSON *mm = m;
    for (int hop = 0; hop < 16 && cJSON_IsObject(mm); hop++) {
      const cJSON *ref = cJSON_GetObjectItemCaseSensitive(mm, "$ref");
      if (!cJSON_IsString(ref)) break;
      mm = sc_resolve(c->root, ref->valuestring);
    }
    bool ok = cJSON_IsObject(mm) && n_members < 64;
    for (const cJSON *kw = ok ? mm->child : NULL; kw && ok; kw = kw->next) {
      if (sc_in(sc_annotations, kw->string)) continue;
      if (strcmp(kw->string, "type") == 0)
        ok = cJSON_IsString(kw) && strcmp(kw->valuestring, "object") == 0;
      else if (strcmp(kw->string, "properties") && strcmp(kw->string, "required") &&
               strcmp(kw->string, "additionalProperties"))
        ok = false;
    }
    if (!ok) {
      rc = sc_unsupported(c, mp, "allOf", "only object schemas (type, properties, required, "
                                          "additionalProperties) can be combined");
      if (rc < 0) break;
      continue;
    }
    members[n_members++] = mm;
    const cJSON *mprops = cJSON_GetObjectItemCaseSensitive(mm, "properties");
    for (const cJSON *pr = cJSON_IsObject(mprops) ? mprops->child : NULL; pr; pr = pr->next) {
      const cJSON *have = cJSON_GetObjectItemCaseSensitive(props, pr->string);
      if (have) {
        if (!cJSON_Compare(have, pr, true)) {
          char pp[300];
          sc_ptr_join(pp, sizeof pp, mp, "properties");
          sc_ptr_join(pp, sizeof pp, pp, pr->string);
          rc = sc_unsupported(c, pp, "allOf", "the same property with different schemas");
          if (rc < 0) break;
        }
        continue;
      }
      cJSON_AddItemToObject(props, pr->string, cJSON_Duplicate(pr, true));
    }
    const cJSON *mreq = cJSON_GetObjectItemCaseSensitive(mm, "required");
    for (const cJSON *r = cJSON_IsArray(mreq) ? mreq->child : NULL; r; r = r->next)
      if (cJSON_IsString(r)) cJSON_AddItemToArray(req, cJSON_CreateString(r->valuestring));
    const cJSON *ma = cJSON_GetObjectItemCaseSensitive(mm, "additionalProperties");
    if (cJSON_IsFalse(ma)) closed = true;
    else if (ma && !cJSON_IsTrue(ma)) {
      rc = sc_unsupported(c, mp, "additionalProperties", "a schema inside allOf");
      if (rc < 0) break;
    }
  }
  if (rc == 0 && closed) {
    /* drop what some closed member does not declare */
    for (cJSON *pr = props->child, *nx; pr; pr = nx) {
      nx = pr->next;
      bool allowed = true;
      for (int i = 0; i < n_members; i++) {
        const cJSON *ma = cJSON_GetObjectItemCaseSensitive(members[i], "additionalProperties");
        const cJSON *mprops = cJSON_GetObjectItemCaseSensitive(members[i], "properties");
        if (cJSON_IsFalse(ma) && !cJSON_GetObjectItemCaseSensitive(mprops, pr->string))
          allowed = false;
      }
      if (!allowed) cJSON_Delete(cJSON_DetachItemViaPointer(props, pr));
    }
    for (const cJSON *r = req->child; r; r = r->next)
      if (!cJSON_GetObjectItemCaseSensitive(props, r->valuestring)) {
        cJSON_Delete(merged);
        return sc_never(c, p, "required property '%.60s' is excluded by a member with "
                              "additionalProperties false", r->valuestring);
      }
    cJSON_AddItemToObject(merged, "additionalProperties", cJSON_CreateFalse());
  }
  if (rc == 0) {
    /* $ref inside the merged properties still resolve against the root */
    rc = sc_schema(c, merged, p, name);
  }
  cJSON_Delete(merged);
  return rc;
}

/* ---- one schema node ---- */

static const char *const sc_types[] = {"string", "integer", "number", "boolean", "null",
                                       "object", "array", NULL};

static int sc_schema(sc *c, const cJSON *node, const char *ptr, char name[24]) {
  if (!node || cJSON_IsTrue(node) || (cJSON_IsObject(node) && !node->child)) {
    c->use_value = true;
    snprintf(name, 24, "value");
    return 0;
  }
  if (cJSON_IsFalse(node)) return sc_never(c, ptr, "the schema is false");
  if (!cJSON_IsObject(node))
    return llorch_errmsg_set(c->em, LLORCH_EINVAL, "the schema at %s must be an object or a boolean",
                             ptr[0] ? ptr : "/");
  if (++c->depth > SC_MAX_DEPTH) {
    c->depth--;
    return llorch_errmsg_set(c->em, LLORCH_ELIMIT, "the schema nests deeper than %d at %s",
                             SC_MAX_DEPTH, ptr);
  }
  int rc = 0;
  /* every keyword known, or an annotation */
  for (const cJSON *kw = node->child; kw; kw = kw->next) {
    if (sc_in(sc_annotations, kw->string) || sc_in(sc_known, kw->string)) continue;
    rc = sc_unsupported(c, ptr, kw->string, NULL);
    if (rc < 0) goto out;
  }
  llorch_jbuf body;
  llorch_jbuf_init(&body);
  const cJSON *ref = cJSON_GetObjectItemCaseSensitive(node, "$ref");
  const cJSON *cst = cJSON_GetObjectItemCaseSensitive(node, "const");
  const cJSON *en = cJSON_GetObjectItemCaseSensitive(node, "enum");
  const cJSON *any = cJSON_GetObjectItemCaseSensitive(node, "anyOf");
  if (!any) any = cJSON_GetObjectItemCaseSensitive(node, "oneOf");
  const cJSON *all = cJSON_GetObjectItemCaseSensitive(node, "allOf");
  const cJSON *nullable = cJSON_GetObjectItemCaseSensitive(node, "nullable");
  bool add_null = cJSON_IsTrue(nullable);
  char p[300];
  if (ref) {
    sc_ptr_join(p, sizeof p, ptr, "$ref");
    if (!cJSON_IsString(ref)) {
      rc = llorch_errmsg_set(c->em, LLORCH_EINVAL, "'$ref' at %s must be a string", p);
      goto done;
    }
    char target[24];
    rc = sc_ref_rule(c, ref->valuestring, p, target);
    if (rc < 0) goto done;
    llorch_jbuf_cstr(&body, target);
  } else if (cst) {
    sc_json_literal(&body, cst);
  } else if (en) {
    sc_ptr_join(p, sizeof p, ptr, "enum");
    if (!cJSON_IsArray(en)) {
      rc = llorch_errmsg_set(c->em, LLORCH_EINVAL, "'enum' at %s must be an array", p);
      goto done;
    }
    if (!en->child) {
      rc = sc_never(c, p, "the enum is empty");
      goto done;
    }
    for (const cJSON *e = en->child; e; e = e->next) {
      if (e != en->child) llorch_jbuf_cstr(&body, " | ");
      sc_json_literal(&body, e);
    }
  } else if (any) {
    const char *kw = cJSON_GetObjectItemCaseSensitive(node, "anyOf") ? "anyOf" : "oneOf";
    sc_ptr_join(p, sizeof p, ptr, kw);
    if (!cJSON_IsArray(any) || !any->child) {
      rc = llorch_errmsg_set(c->em, LLORCH_EINVAL, "'%s' at %s must be a non-empty array", kw, p);
      goto done;
    }
    int i = 0, kept = 0;
    for (const cJSON *e = any->child; e; e = e->next, i++) {
      char ip[300], is[16], sub[24];
      snprintf(is, sizeof is, "%d", i);
      sc_ptr_join(ip, sizeof ip, p, is);
      int r = sc_schema(c, e, ip, sub);
      if (r < 0) {
        rc = r;
        goto done;
      }
      if (r == SC_NEVER) continue;
      if (kept++) llorch_jbuf_cstr(&body, " | ");
      llorch_jbuf_cstr(&body, sub);
    }
    if (!kept) {
      rc = SC_NEVER;
      goto done;
    }
  } else if (all) {
    char sub[24];
    rc = sc_allof(c, node, all, ptr, sub);
    if (rc != 0) goto done;
    llorch_jbuf_cstr(&body, sub);
  } else {
    /* by type */
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    bool want[7] = {false};
    if (!type) {
      if (cJSON_GetObjectItemCaseSensitive(node, "properties") ||
          cJSON_GetObjectItemCaseSensitive(node, "additionalProperties") ||
          cJSON_GetObjectItemCaseSensitive(node, "required"))
        want[5] = true;
      else if (cJSON_GetObjectItemCaseSensitive(node, "items") ||
               cJSON_GetObjectItemCaseSensitive(node, "prefixItems") ||
               cJSON_GetObjectItemCaseSensitive(node, "minItems") ||
               cJSON_GetObjectItemCaseSensitive(node, "maxItems"))
        want[6] = true;
      else if (cJSON_GetObjectItemCaseSensitive(node, "minLength") ||
               cJSON_GetObjectItemCaseSensitive(node, "maxLength") ||
               cJSON_GetObjectItemCaseSensitive(node, "pattern") ||
               cJSON_GetObjectItemCaseSensitive(node, "format"))
        want[0] = true;
      else if (cJSON_GetObjectItemCaseSensitive(node, "minimum") ||
               cJSON_GetObjectItemCaseSensitive(node, "maximum"))
        want[2] = true;
      else {
        c->use_value = true;
        llorch_jbuf_cstr(&body, "value");
      }
    } else {
      sc_ptr_join(p, sizeof p, ptr, "type");
      const cJSON *list = cJSON_IsArray(type) ? type->child : type;
      for (const cJSON *t = list; t; t = cJSON_IsArray(type) ? t->next : NULL) {
        int k = -1;
        for (int i = 0; cJSON_IsString(t) && sc_types[i]; i++)
          if (strcmp(t->valuestring, sc_types[i]) == 0) k = i;
        if (k < 0) {
          rc = llorch_errmsg_set(c->em, LLORCH_EINVAL,
                                 "'type' at %s must be one of string, integer, number, boolean, "
                                 "null, object, array (or a list of them)", p);
          goto done;
        }
        want[k] = true;
      }
    }
    if (add_null) want[4] = true;
    /* integer is a subset of number: keep number only */
    if (want[2] && want[1]) want[1] = false;
    int kept = 0;
    for (int k = 0; k < 7; k++) {
      if (!want[k]) continue;
      llorch_jbuf alt;
      llorch_jbuf_init(&alt);
      int r = 0;
      switch (k) {
        case 0: r = sc_string(c, node, ptr, &alt); break;
        case 1: r = sc_integer(c, node, ptr, &alt); break;
        case 2:
          for (int i = 0; i < 4 && r == 0; i++) {
            static const char *const nk[] = {"minimum", "maximum", "exclusiveMinimum",
                                             "exclusiveMaximum"};
            if (cJSON_GetObjectItemCaseSensitive(node, nk[i]))
              r = sc_unsupported(c, ptr, nk[i], "bounds are supported on integers only");
          }
          c->use_number = true;
          llorch_jbuf_cstr(&alt, "number");
          break;
        case 3: llorch_jbuf_cstr(&alt, "\"true\" | \"false\""); break;
        case 4: llorch_jbuf_cstr(&alt, "\"null\""); break;
        case 5: r = sc_object(c, node, ptr, &alt); break;
        default: r = sc_array(c, node, ptr, &alt); break;
      }
      if (r < 0) {
        llorch_jbuf_free(&alt);
        rc = r;
        goto done;
      }
      if (r != SC_NEVER) {
        if (kept++) llorch_jbuf_cstr(&body, " | ");
        llorch_jbuf_cstr(&body, "( ");
        llorch_jbuf_raw(&body, alt.data ? alt.data : "", alt.len);
        llorch_jbuf_cstr(&body, " )");
      }
      llorch_jbuf_free(&alt);
    }
    if (!kept && body.len == 0) {
      rc = SC_NEVER;
      goto done;
    }
    add_null = false;
  }
  if (add_null) llorch_jbuf_cstr(&body, " | \"null\"");
  sc_rule_name(c, name);
  rc = sc_emit(c, name, &body);
done:
  llorch_jbuf_free(&body);
out:
  c->depth--;
  return rc;
}

int llorch_schema_to_gbnf(const cJSON *schema, unsigned flags, llorch_jbuf *out, char *warning,
                          size_t warning_size, llorch_errmsg *em) {
  sc c;
  memset(&c, 0, sizeof c);
  c.root = schema;
  c.flags = flags;
  c.out = out;
  c.warning = warning;
  c.warning_size = warning_size;
  c.em = em;
  if (warning && warning_size) warning[0] = 0;
  char top[24];
  int rc = sc_schema(&c, schema, "", top);
  if (rc == SC_NEVER)
    rc = llorch_errmsg_set(em, LLORCH_EINVAL, "the schema can match nothing: at %s: %s",
                           c.never_ptr, c.never_why);
  if (rc == 0) {
    llorch_jbuf_cstr(out, "root ::= ");
    llorch_jbuf_cstr(out, top);
    llorch_jbuf_cstr(out, "\n");
    sc_write_shared(&c);
    if (llorch_jbuf_error(out) < 0) rc = sc_nomem(&c);
  }
  for (uint32_t i = 0; i < c.n_refs; i++) free(c.refs[i].ptr);
  free(c.refs);
  if (rc < 0) grammar_errmsg_oneline(em);
  if (warning && warning_size) {
    llorch_errmsg w;
    snprintf(w.text, sizeof w.text, "%s", warning);
    grammar_errmsg_oneline(&w);
    snprintf(warning, warning_size, "%s", w.text);
  }
  return rc;
}

/* ---- grammars ---- */

int llorch_grammar_from_schema(llorch_grammar **out, const cJSON *schema, unsigned flags,
                               const llorch_grammar_limits *lim, char *warning,
                               size_t warning_size, llorch_errmsg *em) {
  *out = NULL;
  llorch_jbuf gbnf;
  llorch_jbuf_init(&gbnf);
  int rc = llorch_schema_to_gbnf(schema, flags, &gbnf, warning, warning_size, em);
  if (rc == 0) {
    llorch_errmsg inner = {{0}};
    rc = llorch_grammar_from_gbnf(out, gbnf.data, gbnf.len, lim, &inner);
    if (rc == LLORCH_EINVAL)
      llorch_errmsg_set(em, rc, "the schema can match nothing or is not supported: %s", inner.text);
    else if (rc < 0)
      llorch_errmsg_set(em, rc, "%s", inner.text);
  }
  llorch_jbuf_free(&gbnf);
  return rc;
}

int llorch_grammar_json_object(llorch_grammar **out, llorch_errmsg *em) {
  cJSON *schema = cJSON_CreateObject();
  if (!schema || !cJSON_AddStringToObject(schema, "type", "object")) {
    cJSON_Delete(schema);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  }
  int rc = llorch_grammar_from_schema(out, schema, 0, NULL, NULL, 0, em);
  cJSON_Delete(schema);
  return rc;
}
