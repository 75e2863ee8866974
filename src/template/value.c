/*
 * Jinja values: the arena they live in, strings with provenance, lists,
 * dicts, and how they print (Python's str/repr, json.dumps).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "jinja-impl.h"

/* ---- arena ---- */

struct jarena_chunk {
  jarena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char mem[];
};

void *jarena_alloc(jarena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0) n = 16;
  if (a->limit && a->used + n > a->limit) return NULL;
  jarena_chunk *c = a->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = 64 * 1024;
    if (c && c->cap < 4 * 1024 * 1024) cap = c->cap * 2;
    if (cap < n) cap = n;
    jarena_chunk *nc = malloc(sizeof *nc + cap);
    if (!nc) return NULL;
    nc->next = c;
    nc->used = 0;
    nc->cap = cap;
    a->head = c = nc;
  }
  void *p = c->mem + c->used;
  c->used += n;
  a->used += n;
  memset(p, 0, n);
  return p;
}

void jarena_free(jarena *a) {
  jarena_chunk *c = a->head;
  while (c) {
    jarena_chunk *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
  a->used = 0;
}

int jctx_fail(jctx *c, int code, const char *fmt, ...) {
  if (c->err) return -1;
  c->err = code;
  if (c->em) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->em->text, sizeof c->em->text, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ---- scalars, strings, containers ---- */

jv jv_none(void) { return (jv){.t = JV_NONE}; }
jv jv_bool(bool b) { return (jv){.t = JV_BOOL, .u.b = b}; }
jv jv_int(int64_t i) { return (jv){.t = JV_INT, .u.i = i}; }
jv jv_float(double f) { return (jv){.t = JV_FLOAT, .u.f = f}; }
jv jv_undef(const char *why) { return (jv){.t = JV_UNDEF, .u.undef = why}; }
jv jv_str(jstr *s) { return (jv){.t = JV_STR, .u.s = s}; }

jstr *jstr_new(jctx *c, const char *s, size_t len, bool tainted) {
  jstr *r = jarena_alloc(&c->arena, sizeof(jstr) + len + 1);
  if (!r) {
    jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
    return NULL;
  }
  r->len = len;
  if (len) memcpy(r->s, s, len);
  r->s[len] = 0;
  if (tainted && len) {
    if (!(r->taint = jarena_alloc(&c->arena, len))) {
      jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
      return NULL;
    }
    memset(r->taint, 1, len);
  }
  return r;
}

int jv_cstr(jctx *c, const char *s, size_t len, jv *out) {
  jstr *r = jstr_new(c, s, len, false);
  if (!r) return -1;
  *out = jv_str(r);
  return 0;
}

bool jstr_tainted(const jstr *s) {
  if (!s->taint) return false;
  for (size_t i = 0; i < s->len; i++)
    if (s->taint[i]) return true;
  return false;
}

jlist *jlist_new(jctx *c, size_t cap) {
  jlist *l = jarena_alloc(&c->arena, sizeof *l);
  if (!l) goto oom;
  if (cap) {
    if (!(l->v = jarena_alloc(&c->arena, cap * sizeof(jv)))) goto oom;
    l->cap = cap;
  }
  return l;
oom:
  jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
  return NULL;
}

int jlist_push(jctx *c, jlist *l, jv v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    jv *nv = jarena_alloc(&c->arena, cap * sizeof(jv));
    if (!nv) return jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
    if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return 0;
}

jdict *jdict_new(jctx *c, size_t cap) {
  jdict *d = jarena_alloc(&c->arena, sizeof *d);
  if (!d) goto oom;
  if (cap) {
    if (!(d->k = jarena_alloc(&c->arena, cap * sizeof(jv))) || !(d->v = jarena_alloc(&c->arena, cap * sizeof(jv))))
      goto oom;
    d->cap = cap;
  }
  return d;
oom:
  jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
  return NULL;
}

static bool key_is(jv k, const char *key, size_t len) {
  return k.t == JV_STR && k.u.s->len == len && memcmp(k.u.s->s, key, len) == 0;
}

bool jdict_get(const jdict *d, const char *key, size_t len, jv *out) {
  for (size_t i = 0; i < d->n; i++)
    if (key_is(d->k[i], key, len)) {
      *out = d->v[i];
      return true;
    }
  return false;
}

bool jdict_getv(const jdict *d, jv key, jv *out) {
  if (key.t == JV_STR) return jdict_get(d, key.u.s->s, key.u.s->len, out);
  for (size_t i = 0; i < d->n; i++)
    if (jv_equal(d->k[i], key)) {
      *out = d->v[i];
      return true;
    }
  return false;
}

int jdict_set(jctx *c, jdict *d, jv k, jv v) {
  for (size_t i = 0; i < d->n; i++)
    if (jv_equal(d->k[i], k)) {
      d->v[i] = v;
      return 0;
    }
  return jdict_append(c, d, k, v);
}

int jdict_append(jctx *c, jdict *d, jv k, jv v) {
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 4;
    jv *nk = jarena_alloc(&c->arena, cap * sizeof(jv)), *nv = jarena_alloc(&c->arena, cap * sizeof(jv));
    if (!nk || !nv) return jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
    if (d->n) {
      memcpy(nk, d->k, d->n * sizeof(jv));
      memcpy(nv, d->v, d->n * sizeof(jv));
    }
    d->k = nk;
    d->v = nv;
    d->cap = cap;
  }
  d->k[d->n] = k;
  d->v[d->n++] = v;
  return 0;
}

const char *jv_type_name(jv v) {
  switch (v.t) {
  case JV_UNDEF: return "Undefined";
  case JV_NONE: return "NoneType";
  case JV_BOOL: return "bool";
  case JV_INT: return "int";
  case JV_FLOAT: return "float";
  case JV_STR: return "str";
  case JV_LIST: return v.u.l->gen ? "generator" : v.u.l->tuple ? "tuple" : "list";
  case JV_DICT: return "dict";
  case JV_NS: return "Namespace";
  case JV_MACRO: return "Macro";
  case JV_FUNC: return "builtin_function_or_method";
  case JV_LOOP: return "LoopContext";
  }
  return "object";
}

bool jv_truthy(jv v) {
  switch (v.t) {
  case JV_UNDEF:
  case JV_NONE: return false;
  case JV_BOOL: return v.u.b;
  case JV_INT: return v.u.i != 0;
  case JV_FLOAT: return v.u.f != 0.0;
  case JV_STR: return v.u.s->len != 0;
  case JV_LIST: return v.u.l->gen || v.u.l->n != 0;
  case JV_DICT: return v.u.d->n != 0;
  default: return true;
  }
}

static bool is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num_of(jv v) {
  return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b;
}

bool jv_equal(jv a, jv b) {
  if (is_num(a) && is_num(b)) {
    if (a.t == JV_FLOAT || b.t == JV_FLOAT) return num_of(a) == num_of(b);
    int64_t x = a.t == JV_INT ? a.u.i : a.u.b, y = b.t == JV_INT ? b.u.i : b.u.b;
    return x == y;
  }
  if (a.t != b.t) return false;
  switch (a.t) {
  case JV_UNDEF:
  case JV_NONE: return true;
  case JV_STR: return a.u.s->len == b.u.s->len && memcmp(a.u.s->s, b.u.s->s, a.u.s->len) == 0;
  case JV_LIST:
    if (a.u.l->n != b.u.l->n || a.u.l->tuple != b.u.l->tuple) return false;
    if (a.u.l->gen || b.u.l->gen) return a.u.l == b.u.l;
    for (size_t i = 0; i < a.u.l->n; i++)
      if (!jv_equal(a.u.l->v[i], b.u.l->v[i])) return false;
    return true;
  case JV_DICT: {
    if (a.u.d->n != b.u.d->n) return false;
    for (size_t i = 0; i < a.u.d->n; i++) {
      jv o;
      if (!jdict_getv(b.u.d, a.u.d->k[i], &o) || !jv_equal(a.u.d->v[i], o)) return false;
    }
    return true;
  }
  case JV_NS: return a.u.d == b.u.d;
  case JV_MACRO: return a.u.m == b.u.m;
  case JV_FUNC: return a.u.fn == b.u.fn;
  case JV_LOOP: return a.u.loop == b.u.loop;
  default: return false;
  }
}

int jv_compare(jctx *c, jv a, jv b, int *out) {
  if (is_num(a) && is_num(b)) {
    if (a.t == JV_INT && b.t == JV_INT) *out = a.u.i < b.u.i ? -1 : a.u.i > b.u.i;
    else {
      double x = num_of(a), y = num_of(b);
      *out = x < y ? -1 : x > y;
    }
    return 0;
  }
  if (a.t == JV_STR && b.t == JV_STR) {
    size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
    int r = memcmp(a.u.s->s, b.u.s->s, n); /* UTF-8 byte order is code point order */
    *out = r < 0 ? -1 : r > 0 ? 1 : a.u.s->len < b.u.s->len ? -1 : a.u.s->len > b.u.s->len;
    return 0;
  }
  if (a.t == JV_LIST && b.t == JV_LIST && !a.u.l->gen && !b.u.l->gen) {
    for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
      if (jv_equal(a.u.l->v[i], b.u.l->v[i])) continue;
      return jv_compare(c, a.u.l->v[i], b.u.l->v[i], out);
    }
    *out = a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    return 0;
  }
  if (a.t == JV_UNDEF) return jctx_fail(c, LLORCH_EINVAL, "%s", a.u.undef);
  if (b.t == JV_UNDEF) return jctx_fail(c, LLORCH_EINVAL, "%s", b.u.undef);
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: '<' not supported between instances of '%s' and '%s'",
                   jv_type_name(a), jv_type_name(b));
}

/* ---- UTF-8 ---- */

size_t jutf8_count(const char *s, size_t len) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
  return n;
}

size_t jutf8_offset(const char *s, size_t len, size_t cp) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (((unsigned char)s[i] & 0xC0) != 0x80) {
      if (n == cp) return i;
      n++;
    }
  }
  return len;
}

/* ---- string builder ---- */

static bool jsb_grow(jsb *b, size_t n) {
  if (b->oom) return false;
  if (b->len + n + 1 <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 128;
  while (cap < b->len + n + 1) cap *= 2;
  char *ns = realloc(b->s, cap);
  if (!ns) {
    b->oom = true;
    return false;
  }
  b->s = ns;
  if (b->taint) {
    uint8_t *nt = realloc(b->taint, cap);
    if (!nt) {
      b->oom = true;
      return false;
    }
    b->taint = nt;
  }
  b->cap = cap;
  return true;
}

static bool jsb_need_taint(jsb *b) {
  if (b->taint) return true;
  b->taint = calloc(b->cap ? b->cap : 1, 1);
  if (!b->taint) b->oom = true;
  return b->taint != NULL;
}

void jsb_put(jsb *b, const char *s, size_t n, bool tainted) {
  if (!jsb_grow(b, n)) return;
  if (tainted && n && !jsb_need_taint(b)) return;
  memcpy(b->s + b->len, s, n);
  if (b->taint) memset(b->taint + b->len, tainted ? 1 : 0, n);
  b->len += n;
  b->s[b->len] = 0;
}

void jsb_puts(jsb *b, const char *s) { jsb_put(b, s, strlen(s), false); }

void jsb_put_jstr(jsb *b, const jstr *s, size_t off, size_t n) {
  if (!s->taint) {
    jsb_put(b, s->s + off, n, false);
    return;
  }
  if (!jsb_grow(b, n) || !jsb_need_taint(b)) return;
  memcpy(b->s + b->len, s->s + off, n);
  memcpy(b->taint + b->len, s->taint + off, n);
  b->len += n;
  b->s[b->len] = 0;
}

void jsb_free(jsb *b) {
  free(b->s);
  free(b->taint);
  *b = (jsb){0};
}

int jsb_finish(jctx *c, jsb *b, jv *out) {
  if (b->oom) {
    jsb_free(b);
    return jctx_fail(c, LLORCH_ENOMEM, "MemoryError: out of memory");
  }
  jstr *s = jstr_new(c, b->s ? b->s : "", b->len, false);
  if (s && b->taint) {
    bool any = false;
    for (size_t i = 0; i < b->len && !any; i++) any = b->taint[i];
    if (any) {
      if (!(s->taint = jarena_alloc(&c->arena, b->len))) s = NULL, jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
      else memcpy(s->taint, b->taint, b->len);
    }
  }
  jsb_free(b);
  if (!s) return -1;
  *out = jv_str(s);
  return 0;
}

/* ---- Markup ---- */

int jstr_escape(jctx *c, const jstr *str, jv *out) {
  jsb sb = {0};
  size_t run = 0;
  for (size_t i = 0; i < str->len; i++) {
    const char *e = NULL;
    switch (str->s[i]) {
    case '&': e = "&amp;"; break;
    case '<': e = "&lt;"; break;
    case '>': e = "&gt;"; break;
    case '"': e = "&#34;"; break;
    case '\'': e = "&#39;"; break;
    }
    if (!e) continue;
    jsb_put_jstr(&sb, str, run, i - run);
    jsb_put(&sb, e, strlen(e), str->taint && str->taint[i]);
    run = i + 1;
  }
  jsb_put_jstr(&sb, str, run, str->len - run);
  if (jsb_finish(c, &sb, out) < 0) return -1;
  out->u.s->safe = true;
  return 0;
}

int jstr_mark_safe(jctx *c, jstr *s, jv *out) {
  if (s->safe) {
    *out = jv_str(s);
    return 0;
  }
  jstr *r = jstr_new(c, s->s, s->len, false);
  if (!r) return -1;
  r->taint = s->taint;
  r->safe = true;
  *out = jv_str(r);
  return 0;
}

/* ---- printing ---- */

/* Python's repr(float): the shortest text that reads back to f. */
void jv_write_float(jsb *b, double f) {
  char buf[40];
  if (isnan(f)) {
    jsb_puts(b, "nan");
    return;
  }
  if (isinf(f)) {
    jsb_puts(b, f < 0 ? "-inf" : "inf");
    return;
  }
  int prec = 1;
  for (; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*e", prec - 1, f);
    if (strtod(buf, NULL) == f) break;
  }
  /* buf: [-]d.ddde[+-]XX ; digits and exponent */
  char digits[24];
  size_t nd = 0;
  const char *p = buf;
  bool neg = *p == '-';
  if (neg) p++;
  for (; *p && *p != 'e'; p++)
    if (*p != '.') digits[nd++] = *p;
  int exp10 = atoi(p + 1);
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  char out[64];
  size_t o = 0;
  if (neg) out[o++] = '-';
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 < 0) {
      out[o++] = '0';
      out[o++] = '.';
      for (int k = -1; k > exp10; k--) out[o++] = '0';
      for (size_t k = 0; k < nd; k++) out[o++] = digits[k];
    } else {
      for (int k = 0; k <= exp10; k++) out[o++] = (size_t)k < nd ? digits[k] : '0';
      out[o++] = '.';
      if ((size_t)exp10 + 1 < nd)
        for (size_t k = (size_t)exp10 + 1; k < nd; k++) out[o++] = digits[k];
      else
        out[o++] = '0';
    }
    out[o] = 0;
  } else {
    out[o++] = digits[0];
    if (nd > 1) {
      out[o++] = '.';
      for (size_t k = 1; k < nd; k++) out[o++] = digits[k];
    }
    snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
  }
  jsb_puts(b, out);
}

static void write_int(jsb *b, int64_t i) {
  char buf[24];
  snprintf(buf, sizeof buf, "%lld", (long long)i);
  jsb_puts(b, buf);
}

/* str.isprintable() for one code point: false for controls, format
 * characters, separators other than ' ' and private use (Python's Cc, Cf,
 * Zl, Zp, Zs, Co); unassigned code points are not tabled and count as
 * printable. */
static bool py_printable(uint32_t cp) {
  static const uint32_t ranges[][2] = {
      {0x0, 0x1f},         {0x7f, 0xa0},         {0xad, 0xad},         {0x600, 0x605},     {0x61c, 0x61c},
      {0x6dd, 0x6dd},      {0x70f, 0x70f},       {0x890, 0x891},       {0x8e2, 0x8e2},     {0x1680, 0x1680},
      {0x180e, 0x180e},    {0x2000, 0x200f},     {0x2028, 0x202f},     {0x205f, 0x2064},   {0x2066, 0x206f},
      {0x3000, 0x3000},    {0xd800, 0xf8ff},     {0xfeff, 0xfeff},     {0xfff9, 0xfffb},   {0xfffe, 0xffff},
      {0x110bd, 0x110bd},  {0x110cd, 0x110cd},   {0x13430, 0x1343f},   {0x1bca0, 0x1bca3}, {0x1d173, 0x1d17a},
      {0xe0001, 0xe0001},  {0xe0020, 0xe007f},   {0xf0000, 0x10ffff},
  };
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
    if (cp >= ranges[i][0] && cp <= ranges[i][1]) return false;
  return true;
}

/* One UTF-8 sequence at s (n bytes left): its code point and length; an
 * invalid byte reads as itself (length 1). */
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *len) {
  unsigned char c0 = s[0];
  size_t need = c0 >= 0xF0 && c0 < 0xF8 ? 4 : c0 >= 0xE0 ? 3 : c0 >= 0xC0 ? 2 : 1;
  if (c0 < 0x80 || need > n || c0 >= 0xF8) {
    *len = 1;
    return c0;
  }
  uint32_t cp = c0 & (0x7F >> need);
  for (size_t i = 1; i < need; i++) {
    if ((s[i] & 0xC0) != 0x80) {
      *len = 1;
      return c0;
    }
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  *len = need;
  return cp;
}

/* Python's repr(str): quotes chosen as Python does, escapes for what is not
 * printable. */
static void write_str_repr(jsb *b, const jstr *s) {
  bool has_sq = memchr(s->s, '\'', s->len) != NULL, has_dq = memchr(s->s, '"', s->len) != NULL;
  char q = has_sq && !has_dq ? '"' : '\'';
  bool t = jstr_tainted(s);
  jsb_put(b, &q, 1, false);
  size_t run = 0;
  for (size_t i = 0; i < s->len; i++) {
    unsigned char ch = (unsigned char)s->s[i];
    const char *esc = NULL;
    char buf[16];
    if (ch == '\\') esc = "\\\\";
    else if (ch == (unsigned char)q) esc = q == '\'' ? "\\'" : "\\\"";
    else if (ch == '\n') esc = "\\n";
    else if (ch == '\r') esc = "\\r";
    else if (ch == '\t') esc = "\\t";
    else if (ch < 0x20 || ch == 0x7f) {
      snprintf(buf, sizeof buf, "\\x%02x", ch);
      esc = buf;
    }
    size_t clen = 1;
    if (!esc && ch >= 0x80) {
      uint32_t cp = utf8_next((const unsigned char *)s->s + i, s->len - i, &clen);
      if (!py_printable(cp)) {
        snprintf(buf, sizeof buf, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", (unsigned)cp);
        esc = buf;
      }
    }
    if (!esc) {
      i += clen - 1;
      continue;
    }
    jsb_put(b, s->s + run, i - run, t);
    jsb_put(b, esc, strlen(esc), t);
    i += clen - 1;
    run = i + 1;
  }
  jsb_put(b, s->s + run, s->len - run, t);
  jsb_put(b, &q, 1, false);
}

int jv_write_repr(jctx *c, jsb *b, jv v) {
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: values nested deeper than %u", c->max_depth);
  }
  int rc = 0;
  switch (v.t) {
  case JV_STR: write_str_repr(b, v.u.s); break;
  case JV_LIST: {
    if (v.u.l->gen) {
      jsb_puts(b, "<generator object>");
      break;
    }
    jsb_puts(b, v.u.l->tuple ? "(" : "[");
    for (size_t i = 0; i < v.u.l->n && rc == 0; i++) {
      if (i) jsb_puts(b, ", ");
      rc = jv_write_repr(c, b, v.u.l->v[i]);
    }
    if (v.u.l->tuple && v.u.l->n == 1) jsb_puts(b, ",");
    jsb_puts(b, v.u.l->tuple ? ")" : "]");
    break;
  }
  case JV_DICT: {
    jsb_puts(b, "{");
    for (size_t i = 0; i < v.u.d->n && rc == 0; i++) {
      if (i) jsb_puts(b, ", ");
      if ((rc = jv_write_repr(c, b, v.u.d->k[i])) == 0) {
        jsb_puts(b, ": ");
        rc = jv_write_repr(c, b, v.u.d->v[i]);
      }
    }
    jsb_puts(b, "}");
    break;
  }
  default: rc = jv_write_str(c, b, v);
  }
  c->depth--;
  return rc;
}

int jv_write_str(jctx *c, jsb *b, jv v) {
  switch (v.t) {
  case JV_UNDEF: return 0;
  case JV_NONE: jsb_puts(b, "None"); return 0;
  case JV_BOOL: jsb_puts(b, v.u.b ? "True" : "False"); return 0;
  case JV_INT: write_int(b, v.u.i); return 0;
  case JV_FLOAT: jv_write_float(b, v.u.f); return 0;
  case JV_STR: jsb_put_jstr(b, v.u.s, 0, v.u.s->len); return 0;
  case JV_LIST:
  case JV_DICT: return jv_write_repr(c, b, v);
  case JV_NS: {
    jsb_puts(b, "<Namespace {");
    for (size_t i = 0; i < v.u.d->n; i++) {
      if (i) jsb_puts(b, ", ");
      if (jv_write_repr(c, b, v.u.d->k[i]) < 0) return -1;
      jsb_puts(b, ": ");
      if (jv_write_repr(c, b, v.u.d->v[i]) < 0) return -1;
    }
    jsb_puts(b, "}>");
    return 0;
  }
  case JV_MACRO: jsb_puts(b, "<Macro>"); return 0;
  case JV_FUNC: jsb_puts(b, "<built-in function>"); return 0;
  case JV_LOOP: jsb_puts(b, "<LoopContext>"); return 0;
  }
  return 0;
}

int jv_to_str(jctx *c, jv v, jv *out) {
  if (v.t == JV_STR) {
    *out = v;
    return 0;
  }
  jsb b = {0};
  if (jv_write_str(c, &b, v) < 0) {
    jsb_free(&b);
    return -1;
  }
  return jsb_finish(c, &b, out);
}

/* ---- json.dumps(ensure_ascii=False) ---- */

static void write_json_str(jsb *b, const char *s, size_t len, bool t) {
  jsb_put(b, "\"", 1, false);
  size_t run = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    const char *esc = NULL;
    char buf[8];
    if (ch == '"') esc = "\\\"";
    else if (ch == '\\') esc = "\\\\";
    else if (ch == '\n') esc = "\\n";
    else if (ch == '\r') esc = "\\r";
    else if (ch == '\t') esc = "\\t";
    else if (ch == '\b') esc = "\\b";
    else if (ch == '\f') esc = "\\f";
    else if (ch < 0x20) {
      snprintf(buf, sizeof buf, "\\u%04x", ch);
      esc = buf;
    }
    if (!esc) continue;
    jsb_put(b, s + run, i - run, t);
    jsb_put(b, esc, strlen(esc), t);
    run = i + 1;
  }
  jsb_put(b, s + run, len - run, t);
  jsb_put(b, "\"", 1, false);
}

static void json_newline(jsb *b, const jjson_opts *o, int level) {
  jsb_puts(b, "\n");
  for (int i = 0; i < level; i++) {
    if (o->indent_str) jsb_puts(b, o->indent_str);
    else
      for (int k = 0; k < o->indent; k++) jsb_puts(b, " ");
  }
}

static int json_key_cmp(const void *x, const void *y) {
  const jv *a = *(const jv *const *)x, *b = *(const jv *const *)y;
  if (a->t != JV_STR || b->t != JV_STR) return 0;
  size_t n = a->u.s->len < b->u.s->len ? a->u.s->len : b->u.s->len;
  int r = memcmp(a->u.s->s, b->u.s->s, n);
  return r ? r : (a->u.s->len > b->u.s->len) - (a->u.s->len < b->u.s->len);
}

int jv_write_json(jctx *c, jsb *b, jv v, const jjson_opts *o, int level) {
  bool pretty = o->indent >= 0 || o->indent_str;
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: values nested deeper than %u", c->max_depth);
  }
  int rc = 0;
  switch (v.t) {
  case JV_NONE: jsb_puts(b, "null"); break;
  case JV_BOOL: jsb_puts(b, v.u.b ? "true" : "false"); break;
  case JV_INT: write_int(b, v.u.i); break;
  case JV_FLOAT:
    if (isnan(v.u.f)) jsb_puts(b, "NaN");
    else if (isinf(v.u.f)) jsb_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
    else jv_write_float(b, v.u.f);
    break;
  case JV_STR: write_json_str(b, v.u.s->s, v.u.s->len, jstr_tainted(v.u.s)); break;
  case JV_LIST:
    if (v.u.l->gen) {
      rc = jctx_fail(c, LLORCH_EINVAL, "TypeError: Object of type generator is not JSON serializable");
      break;
    }
    if (v.u.l->n == 0) {
      jsb_puts(b, "[]");
      break;
    }
    jsb_puts(b, "[");
    for (size_t i = 0; i < v.u.l->n && rc == 0; i++) {
      if (i) jsb_puts(b, o->item_sep);
      if (pretty) json_newline(b, o, level + 1);
      rc = jv_write_json(c, b, v.u.l->v[i], o, level + 1);
    }
    if (pretty) json_newline(b, o, level);
    jsb_puts(b, "]");
    break;
  case JV_DICT:
  case JV_NS: {
    jdict *d = v.u.d;
    if (d->n == 0) {
      jsb_puts(b, "{}");
      break;
    }
    const jv **order = jarena_alloc(&c->arena, d->n * sizeof *order);
    if (!order) {
      rc = jctx_fail(c, LLORCH_ELIMIT, "MemoryError: the template used more than its memory limit");
      break;
    }
    for (size_t i = 0; i < d->n; i++) order[i] = &d->k[i];
    if (o->sort_keys) qsort(order, d->n, sizeof *order, json_key_cmp);
    jsb_puts(b, "{");
    for (size_t i = 0; i < d->n && rc == 0; i++) {
      size_t k = (size_t)(order[i] - d->k);
      if (i) jsb_puts(b, o->item_sep);
      if (pretty) json_newline(b, o, level + 1);
      jv key = d->k[k];
      if (key.t == JV_STR) write_json_str(b, key.u.s->s, key.u.s->len, jstr_tainted(key.u.s));
      else if (key.t == JV_INT || key.t == JV_FLOAT || key.t == JV_BOOL || key.t == JV_NONE) {
        jsb_puts(b, "\"");
        if (key.t == JV_BOOL) jsb_puts(b, key.u.b ? "true" : "false");
        else if (key.t == JV_NONE) jsb_puts(b, "null");
        else jv_write_str(c, b, key);
        jsb_puts(b, "\"");
      } else {
        rc = jctx_fail(c, LLORCH_EINVAL, "TypeError: keys must be str, int, float, bool or None, not %s",
                       jv_type_name(key));
        break;
      }
      jsb_puts(b, o->key_sep);
      rc = jv_write_json(c, b, d->v[k], o, level + 1);
    }
    if (pretty) json_newline(b, o, level);
    jsb_puts(b, "}");
    break;
  }
  case JV_UNDEF:
    rc = jctx_fail(c, LLORCH_EINVAL, "TypeError: Object of type Undefined is not JSON serializable");
    break;
  default:
    rc = jctx_fail(c, LLORCH_EINVAL, "TypeError: Object of type %s is not JSON serializable", jv_type_name(v));
  }
  c->depth--;
  return rc;
}

/* ---- from the request ---- */

int jv_from_cjson(jctx *c, const cJSON *j, bool tainted, jv *out) {
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: the context is nested deeper than %u", c->max_depth);
  }
  int rc = 0;
  if (cJSON_IsNull(j) || !j) *out = jv_none();
  else if (cJSON_IsBool(j)) *out = jv_bool(cJSON_IsTrue(j));
  else if (cJSON_IsNumber(j)) {
    double d = j->valuedouble;
    if (d == floor(d) && fabs(d) < 9.007199254740992e15) {
      /* cJSON keeps no int/float distinction; a written "1.0" is rare in
       * requests and prints as 1 either way in JSON output */
      *out = jv_int((int64_t)d);
    } else {
      *out = jv_float(d);
    }
  } else if (cJSON_IsString(j)) {
    jstr *s = jstr_new(c, j->valuestring, strlen(j->valuestring), tainted);
    if (!s) rc = -1;
    else *out = jv_str(s);
  } else if (cJSON_IsArray(j)) {
    jlist *l = jlist_new(c, 0);
    if (!l) rc = -1;
    for (const cJSON *e = j->child; e && rc == 0; e = e->next) {
      jv v;
      if ((rc = jv_from_cjson(c, e, tainted, &v)) == 0) rc = jlist_push(c, l, v);
    }
    if (rc == 0) *out = (jv){.t = JV_LIST, .u.l = l};
  } else if (cJSON_IsObject(j)) {
    jdict *d = jdict_new(c, 0);
    if (!d) rc = -1;
    for (const cJSON *e = j->child; e && rc == 0; e = e->next) {
      jv k, v;
      jstr *ks = jstr_new(c, e->string ? e->string : "", e->string ? strlen(e->string) : 0, tainted);
      if (!ks) {
        rc = -1;
        break;
      }
      k = jv_str(ks);
      /* appended without a duplicate check: linear in the request's size
       * (a JSON object with a repeated key keeps its first value here) */
      if ((rc = jv_from_cjson(c, e, tainted, &v)) == 0) rc = jdict_append(c, d, k, v);
    }
    if (rc == 0) *out = (jv){.t = JV_DICT, .u.d = d};
  } else {
    *out = jv_none();
  }
  c->depth--;
  return rc;
}
