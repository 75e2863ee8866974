/*
 * Jinja builtins: filters, tests, the methods of str/list/dict that templates
 * call, the loop object, and the globals (range, namespace, dict,
 * raise_exception, strftime_now). Names, defaults and messages follow
 * jinja2 3.1 and Python 3 so templates behave as under transformers.
 *
 * Provenance: string results are built with jsb_put_jstr from the slices of
 * their inputs wherever a byte maps to an input byte, so request text stays
 * marked through trim, replace, split, join, slicing and case changes.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja-impl.h"

static const char MEM_MSG[] = "MemoryError: the template used more than its memory limit";

int jinja_iterate(jctx *c, jv v, jlist **out);
int jinja_call_macro(jctx *c, const jmacro *m, const jargs *a, jv *out);

/* ---- argument access ---- */

/* The i-th positional argument or the keyword argument name. */
static bool arg(const jargs *a, size_t i, const char *name, jv *out) {
  if (i < a->npos) {
    *out = a->pos[i];
    return true;
  }
  for (size_t k = 0; k < a->nkw; k++)
    if (name && strcmp(a->kwn[k], name) == 0) {
      *out = a->kwv[k];
      return true;
    }
  return false;
}

static jv arg_or(const jargs *a, size_t i, const char *name, jv dflt) {
  jv v;
  return arg(a, i, name, &v) ? v : dflt;
}

static int need_str(jctx *c, jv v, const char *what) {
  if (v.t == JV_STR) return 0;
  if (v.t == JV_UNDEF) return jctx_fail(c, LLORCH_EINVAL, "%s", v.u.undef);
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: %s expects a string, not '%s'", what, jv_type_name(v));
}

static jv list_v(jlist *l) { return (jv){.t = JV_LIST, .u.l = l}; }

/* ---- string helpers ---- */

static bool in_set(unsigned char ch, const jstr *chars) {
  if (!chars) return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f);
  return memchr(chars->s, ch, chars->len) != NULL;
}

/* Python's str.isspace() beyond ASCII, for the UTF-8 sequence at p (n bytes
 * left): its length when it is whitespace, else 0. */
static size_t unicode_space_len(const char *p, size_t n) {
  const unsigned char *u = (const unsigned char *)p;
  if (n >= 2 && u[0] == 0xC2 && (u[1] == 0x85 || u[1] == 0xA0)) return 2;
  if (n >= 3 && u[0] == 0xE1 && u[1] == 0x9A && u[2] == 0x80) return 3; /* U+1680 */
  if (n >= 3 && u[0] == 0xE2 && u[1] == 0x80 && (u[2] <= 0x8A || u[2] == 0xA8 || u[2] == 0xA9 || u[2] == 0xAF))
    return 3; /* U+2000..200A, 2028, 2029, 202F */
  if (n >= 3 && u[0] == 0xE2 && u[1] == 0x81 && u[2] == 0x9F) return 3; /* U+205F */
  if (n >= 3 && u[0] == 0xE3 && u[1] == 0x80 && u[2] == 0x80) return 3; /* U+3000 */
  return 0;
}

/* Python's str.strip/lstrip/rstrip; chars NULL = whitespace. Multi-byte
 * characters in chars are matched byte-wise, which is exact for ASCII sets
 * (the ones templates use). */
static int str_strip(jctx *c, jstr *s, const jstr *chars, bool left, bool right, jv *out) {
  size_t a = 0, b = s->len;
  for (bool more = left; more && a < b;) {
    size_t k = in_set((unsigned char)s->s[a], chars) ? 1 : chars ? 0 : unicode_space_len(s->s + a, b - a);
    a += k;
    more = k > 0;
  }
  for (bool more = right; more && b > a;) {
    size_t k = in_set((unsigned char)s->s[b - 1], chars) ? 1 : 0;
    if (!k && !chars && ((unsigned char)s->s[b - 1] & 0x80)) {
      size_t st = b - 1;
      while (st > a && ((unsigned char)s->s[st] & 0xC0) == 0x80) st--;
      if (unicode_space_len(s->s + st, b - st) == b - st) k = b - st;
    }
    b -= k;
    more = k > 0;
  }
  if (a == 0 && b == s->len) {
    *out = jv_str(s);
    return 0;
  }
  jsb sb = {0};
  jsb_put_jstr(&sb, s, a, b - a);
  if (jsb_finish(c, &sb, out) < 0) return -1;
  out->u.s->safe = s->safe; /* Markup methods return Markup */
  return 0;
}

static jv sub_str(jctx *c, jstr *s, size_t off, size_t n, int *rc) {
  jsb sb = {0};
  jsb_put_jstr(&sb, s, off, n);
  jv out = jv_none();
  if (jsb_finish(c, &sb, &out) < 0) *rc = -1;
  return out;
}

/* str.split(sep=None, maxsplit=-1) and rsplit */
static int str_split(jctx *c, jstr *s, jv sepv, int64_t maxsplit, bool from_right, jv *out) {
  jlist *l = jlist_new(c, 0);
  if (!l) return -1;
  int rc = 0;
  if (sepv.t == JV_NONE || sepv.t == JV_UNDEF) {
    /* runs of whitespace; leading/trailing ignored */
    size_t i = 0, n = s->len;
    if (!from_right) {
      int64_t splits = 0;
      while (i < n) {
        while (i < n && in_set((unsigned char)s->s[i], NULL)) i++;
        if (i >= n) break;
        size_t st = i;
        if (maxsplit >= 0 && splits >= maxsplit) {
          size_t e = n;
          while (e > st && in_set((unsigned char)s->s[e - 1], NULL)) e--;
          if (jlist_push(c, l, sub_str(c, s, st, e - st, &rc)) < 0 || rc) return -1;
          break;
        }
        while (i < n && !in_set((unsigned char)s->s[i], NULL)) i++;
        if (jlist_push(c, l, sub_str(c, s, st, i - st, &rc)) < 0 || rc) return -1;
        splits++;
      }
    } else {
      size_t e = n;
      int64_t splits = 0;
      jlist *rev = jlist_new(c, 0);
      if (!rev) return -1;
      while (e > 0) {
        while (e > 0 && in_set((unsigned char)s->s[e - 1], NULL)) e--;
        if (e == 0) break;
        size_t en = e;
        if (maxsplit >= 0 && splits >= maxsplit) {
          size_t st = 0;
          while (st < en && in_set((unsigned char)s->s[st], NULL)) st++;
          if (jlist_push(c, rev, sub_str(c, s, st, en - st, &rc)) < 0 || rc) return -1;
          break;
        }
        while (e > 0 && !in_set((unsigned char)s->s[e - 1], NULL)) e--;
        if (jlist_push(c, rev, sub_str(c, s, e, en - e, &rc)) < 0 || rc) return -1;
        splits++;
      }
      for (size_t k = rev->n; k-- > 0;)
        if (jlist_push(c, l, rev->v[k]) < 0) return -1;
    }
    *out = list_v(l);
    return 0;
  }
  if (need_str(c, sepv, "split") < 0) return -1;
  jstr *sep = sepv.u.s;
  if (sep->len == 0) return jctx_fail(c, LLORCH_EINVAL, "ValueError: empty separator");
  if (!from_right) {
    size_t st = 0;
    int64_t splits = 0;
    for (;;) {
      const char *hit = (maxsplit < 0 || splits < maxsplit) && st <= s->len
                            ? memmem(s->s + st, s->len - st, sep->s, sep->len)
                            : NULL;
      if (!hit) {
        if (jlist_push(c, l, sub_str(c, s, st, s->len - st, &rc)) < 0 || rc) return -1;
        break;
      }
      size_t h = (size_t)(hit - s->s);
      if (jlist_push(c, l, sub_str(c, s, st, h - st, &rc)) < 0 || rc) return -1;
      st = h + sep->len;
      splits++;
    }
  } else {
    /* collect from the right, then reverse */
    jlist *rev = jlist_new(c, 0);
    if (!rev) return -1;
    size_t e = s->len;
    int64_t splits = 0;
    for (;;) {
      size_t found = SIZE_MAX;
      if ((maxsplit < 0 || splits < maxsplit) && e >= sep->len)
        for (size_t k = e - sep->len + 1; k-- > 0;)
          if (memcmp(s->s + k, sep->s, sep->len) == 0) {
            found = k;
            break;
          }
      if (found == SIZE_MAX) {
        if (jlist_push(c, rev, sub_str(c, s, 0, e, &rc)) < 0 || rc) return -1;
        break;
      }
      if (jlist_push(c, rev, sub_str(c, s, found + sep->len, e - found - sep->len, &rc)) < 0 || rc) return -1;
      e = found;
      splits++;
    }
    for (size_t k = rev->n; k-- > 0;)
      if (jlist_push(c, l, rev->v[k]) < 0) return -1;
  }
  *out = list_v(l);
  return 0;
}

static int str_replace(jctx *c, jstr *s, jv oldv, jv newv, int64_t count, jv *out) {
  if (need_str(c, oldv, "replace") < 0 || need_str(c, newv, "replace") < 0) return -1;
  jstr *o = oldv.u.s, *n = newv.u.s;
  jsb sb = {0};
  int64_t done = 0;
  if (o->len == 0) {
    /* Python inserts new between every character (and at both ends) */
    for (size_t i = 0; i <= s->len; i++) {
      if (count < 0 || done < count) {
        jsb_put_jstr(&sb, n, 0, n->len);
        done++;
      }
      if (i < s->len) {
        size_t k = i + 1;
        while (k < s->len && ((unsigned char)s->s[k] & 0xC0) == 0x80) k++;
        jsb_put_jstr(&sb, s, i, k - i);
        i = k - 1;
      }
    }
    return jsb_finish(c, &sb, out);
  }
  size_t st = 0;
  while (st <= s->len) {
    const char *hit = count < 0 || done < count ? memmem(s->s + st, s->len - st, o->s, o->len) : NULL;
    if (!hit) break;
    size_t h = (size_t)(hit - s->s);
    jsb_put_jstr(&sb, s, st, h - st);
    jsb_put_jstr(&sb, n, 0, n->len);
    st = h + o->len;
    done++;
  }
  jsb_put_jstr(&sb, s, st, s->len - st);
  return jsb_finish(c, &sb, out);
}

/* ASCII case mapping keeps every byte in place (and its provenance);
 * non-ASCII text is left as it is. */
enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE };
static int str_case(jctx *c, jstr *s, int mode, jv *out) {
  jstr *r = jstr_new(c, s->s, s->len, false);
  if (!r) return -1;
  r->taint = s->taint;
  r->safe = s->safe;
  bool prev_cased = false;
  for (size_t i = 0; i < r->len; i++) {
    unsigned char ch = (unsigned char)r->s[i];
    switch (mode) {
    case CASE_UPPER: r->s[i] = (char)toupper(ch); break;
    case CASE_LOWER: r->s[i] = (char)tolower(ch); break;
    case CASE_TITLE:
      r->s[i] = (char)(prev_cased ? tolower(ch) : toupper(ch));
      prev_cased = isalpha(ch) || ch >= 0x80;
      break;
    case CASE_CAPITALIZE: r->s[i] = (char)(i == 0 ? toupper(ch) : tolower(ch)); break;
    }
  }
  *out = jv_str(r);
  return 0;
}

static bool str_starts(const jstr *s, const jstr *p) { return p->len <= s->len && memcmp(s->s, p->s, p->len) == 0; }
static bool str_ends(const jstr *s, const jstr *p) {
  return p->len <= s->len && memcmp(s->s + s->len - p->len, p->s, p->len) == 0;
}

static int str_affix(jctx *c, jstr *s, jv p, bool ends, bool *out) {
  if (p.t == JV_LIST) {
    *out = false;
    for (size_t i = 0; i < p.u.l->n; i++) {
      if (need_str(c, p.u.l->v[i], ends ? "endswith" : "startswith") < 0) return -1;
      if (ends ? str_ends(s, p.u.l->v[i].u.s) : str_starts(s, p.u.l->v[i].u.s)) *out = true;
    }
    return 0;
  }
  if (need_str(c, p, ends ? "endswith" : "startswith") < 0) return -1;
  *out = ends ? str_ends(s, p.u.s) : str_starts(s, p.u.s);
  return 0;
}

/* Python str.format with {} {0} {name} fields and {{ }} escapes; format
 * specs other than an empty one are refused with a clear error. */
static int str_format(jctx *c, jstr *f, const jargs *a, jv *out) {
  jsb sb = {0};
  size_t auto_idx = 0, run = 0;
  for (size_t i = 0; i < f->len; i++) {
    char ch = f->s[i];
    if ((ch == '{' || ch == '}') && i + 1 < f->len && f->s[i + 1] == ch) {
      jsb_put_jstr(&sb, f, run, i + 1 - run);
      i++;
      run = i + 1;
      continue;
    }
    if (ch != '{') continue;
    const char *close = memchr(f->s + i, '}', f->len - i);
    if (!close) {
      jsb_free(&sb);
      return jctx_fail(c, LLORCH_EINVAL, "ValueError: Single '{' encountered in format string");
    }
    jsb_put_jstr(&sb, f, run, i - run);
    size_t fs = i + 1, fe = (size_t)(close - f->s);
    const char *colon = memchr(f->s + fs, ':', fe - fs);
    size_t name_end = colon ? (size_t)(colon - f->s) : fe;
    if (colon && fe - name_end > 1) {
      jsb_free(&sb);
      return jctx_fail(c, LLORCH_EINVAL, "ValueError: format specs are not supported in str.format");
    }
    jv v;
    bool found;
    if (name_end == fs) found = arg(a, auto_idx++, NULL, &v);
    else if (isdigit((unsigned char)f->s[fs])) found = arg(a, (size_t)atoi(f->s + fs), NULL, &v);
    else {
      char key[64];
      snprintf(key, sizeof key, "%.*s", (int)(name_end - fs < 63 ? name_end - fs : 63), f->s + fs);
      found = false;
      for (size_t k = 0; k < a->nkw; k++)
        if (strcmp(a->kwn[k], key) == 0) {
          v = a->kwv[k];
          found = true;
        }
    }
    if (!found) {
      jsb_free(&sb);
      return jctx_fail(c, LLORCH_EINVAL, "IndexError: Replacement index out of range for positional args tuple");
    }
    if (jv_write_str(c, &sb, v) < 0) {
      jsb_free(&sb);
      return -1;
    }
    i = fe;
    run = fe + 1;
  }
  jsb_put_jstr(&sb, f, run, f->len - run);
  return jsb_finish(c, &sb, out);
}

/* "%s %d" % args: s, d, i, r, f with optional width/precision. */
int jinja_format_percent(jctx *c, jstr *fmt, jv args, jv *out);
int jinja_format_percent(jctx *c, jstr *fmt, jv args, jv *out) {
  const jv *items = &args;
  size_t n = 1, used = 0;
  if (args.t == JV_LIST && args.u.l->tuple) {
    items = args.u.l->v;
    n = args.u.l->n;
  }
  jsb sb = {0};
  size_t run = 0;
  for (size_t i = 0; i < fmt->len; i++) {
    if (fmt->s[i] != '%') continue;
    jsb_put_jstr(&sb, fmt, run, i - run);
    size_t k = i + 1;
    char spec[32] = "%";
    size_t sl = 1;
    while (k < fmt->len && strchr("-+ 0#.123456789", fmt->s[k]) && sl < 20) spec[sl++] = fmt->s[k++];
    if (k >= fmt->len) goto bad;
    char conv = fmt->s[k];
    if (conv == '%') {
      jsb_puts(&sb, "%");
    } else {
      if (used >= n) {
        jsb_free(&sb);
        return jctx_fail(c, LLORCH_EINVAL, "TypeError: not enough arguments for format string");
      }
      jv v = items[used++];
      char buf[128];
      if (conv == 's' || conv == 'r') {
        jsb tmp = {0};
        if ((conv == 's' ? jv_write_str(c, &tmp, v) : jv_write_repr(c, &tmp, v)) < 0) {
          jsb_free(&tmp);
          jsb_free(&sb);
          return -1;
        }
        int width = sl > 1 ? atoi(spec + 1 + (spec[1] == '-')) : 0;
        size_t cps = jutf8_count(tmp.s ? tmp.s : "", tmp.len);
        if (spec[1] != '-')
          for (size_t p = cps; (int)p < width; p++) jsb_puts(&sb, " ");
        if (tmp.len) {
          jstr view = {0};
          (void)view;
          jsb_put(&sb, tmp.s, tmp.len, false);
          if (tmp.taint && sb.taint) memcpy(sb.taint + sb.len - tmp.len, tmp.taint, tmp.len);
          else if (tmp.taint) {
            /* keep provenance: re-append through a string */
            sb.len -= tmp.len;
            jstr *t = jstr_new(c, tmp.s, tmp.len, false);
            if (!t) {
              jsb_free(&tmp);
              jsb_free(&sb);
              return -1;
            }
            t->taint = tmp.taint;
            jsb_put_jstr(&sb, t, 0, t->len);
          }
        }
        if (spec[1] == '-')
          for (size_t p = cps; (int)p < width; p++) jsb_puts(&sb, " ");
        jsb_free(&tmp);
      } else if (conv == 'd' || conv == 'i') {
        if (v.t != JV_INT && v.t != JV_FLOAT && v.t != JV_BOOL) goto bad_type;
        spec[sl++] = 'l';
        spec[sl++] = 'l';
        spec[sl++] = 'd';
        spec[sl] = 0;
        snprintf(buf, sizeof buf, spec,
                 (long long)(v.t == JV_INT ? v.u.i : v.t == JV_BOOL ? v.u.b : (int64_t)v.u.f));
        jsb_puts(&sb, buf);
      } else if (conv == 'f' || conv == 'e' || conv == 'g' || conv == 'x' || conv == 'X') {
        if (v.t != JV_INT && v.t != JV_FLOAT && v.t != JV_BOOL) goto bad_type;
        if (conv == 'x' || conv == 'X') {
          spec[sl++] = 'l';
          spec[sl++] = 'l';
          spec[sl++] = conv;
          spec[sl] = 0;
          snprintf(buf, sizeof buf, spec, (long long)(v.t == JV_INT ? v.u.i : (int64_t)v.u.b));
        } else {
          spec[sl++] = conv;
          spec[sl] = 0;
          snprintf(buf, sizeof buf, spec, v.t == JV_FLOAT ? v.u.f : (double)(v.t == JV_INT ? v.u.i : v.u.b));
        }
        jsb_puts(&sb, buf);
      } else {
        goto bad;
      }
    }
    i = k;
    run = k + 1;
  }
  jsb_put_jstr(&sb, fmt, run, fmt->len - run);
  if (used < n && n > 1) {
    jsb_free(&sb);
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: not all arguments converted during string formatting");
  }
  return jsb_finish(c, &sb, out);
bad:
  jsb_free(&sb);
  return jctx_fail(c, LLORCH_EINVAL, "ValueError: unsupported format character in a %% format");
bad_type:
  jsb_free(&sb);
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: a number is required for a numeric %% format");
}

/* ---- methods and the loop object ---- */

enum method_id {
  M_NONE,
  /* str */
  M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_REPLACE, M_UPPER, M_LOWER, M_TITLE, M_CAPITALIZE,
  M_STARTSWITH, M_ENDSWITH, M_FIND, M_RFIND, M_COUNT_STR, M_JOIN, M_FORMAT, M_SPLITLINES, M_ISDIGIT,
  M_ISALPHA, M_ISSPACE, M_ISALNUM, M_ISUPPER, M_ISLOWER, M_INDEX_STR,
  /* list */
  M_INDEX, M_COUNT,
  /* dict */
  M_ITEMS, M_KEYS, M_VALUES, M_GET,
  /* loop */
  M_CYCLE, M_CHANGED,
  /* globals */
  G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_JOINER_CALL, G_CYCLER_NEXT,
  /* refused by the immutable sandbox */
  M_UNSAFE,
};

static const struct {
  const char *name;
  int id;
} str_methods[] = {
    {"strip", M_STRIP},       {"lstrip", M_LSTRIP},     {"rstrip", M_RSTRIP},         {"split", M_SPLIT},
    {"rsplit", M_RSPLIT},     {"replace", M_REPLACE},   {"upper", M_UPPER},           {"lower", M_LOWER},
    {"title", M_TITLE},       {"capitalize", M_CAPITALIZE}, {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH},
    {"find", M_FIND},         {"rfind", M_RFIND},       {"count", M_COUNT_STR},       {"join", M_JOIN},
    {"format", M_FORMAT},     {"splitlines", M_SPLITLINES}, {"isdigit", M_ISDIGIT},  {"isalpha", M_ISALPHA},
    {"isspace", M_ISSPACE},   {"isalnum", M_ISALNUM},   {"isupper", M_ISUPPER},       {"islower", M_ISLOWER},
    {"index", M_INDEX_STR},
},
  list_methods[] = {{"index", M_INDEX}, {"count", M_COUNT}, {"append", M_UNSAFE}, {"extend", M_UNSAFE},
                    {"insert", M_UNSAFE}, {"pop", M_UNSAFE}, {"remove", M_UNSAFE}, {"reverse", M_UNSAFE},
                    {"sort", M_UNSAFE}, {"clear", M_UNSAFE}},
  dict_methods[] = {{"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES}, {"get", M_GET},
                    {"pop", M_UNSAFE}, {"popitem", M_UNSAFE}, {"update", M_UNSAFE}, {"setdefault", M_UNSAFE},
                    {"clear", M_UNSAFE}};

#define FIND_METHOD(table, name, len, id)                                              \
  for (size_t k_ = 0; k_ < sizeof(table) / sizeof(table[0]); k_++)                    \
    if (strlen(table[k_].name) == (len) && memcmp(table[k_].name, (name), (len)) == 0) \
      id = table[k_].id;

static int bind(jctx *c, jv self, int id, const char *name, size_t len, jv *out) {
  jfunc *f = jarena_alloc(&c->arena, sizeof *f + len + 1);
  if (!f) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
  char *nm = (char *)(f + 1);
  memcpy(nm, name, len);
  f->id = id;
  f->self = self;
  f->name = nm;
  *out = (jv){.t = JV_FUNC, .u.fn = f};
  return 1;
}

int jinja_getattr_builtin(jctx *c, jv obj, const char *name, size_t len, jv *out) {
  int id = M_NONE;
  const char *tname = NULL;
  switch (obj.t) {
  case JV_STR:
    FIND_METHOD(str_methods, name, len, id);
    tname = "str";
    break;
  case JV_LIST:
    if (obj.u.l->gen) return 0;
    FIND_METHOD(list_methods, name, len, id);
    tname = obj.u.l->tuple ? "tuple" : "list";
    break;
  case JV_DICT:
    FIND_METHOD(dict_methods, name, len, id);
    tname = "dict";
    break;
  case JV_LOOP: {
    const jloop *L = obj.u.loop;
    int64_t n = (int64_t)L->items->n, i = (int64_t)L->index0;
#define IS(s) (len == sizeof(s) - 1 && memcmp(name, s, len) == 0)
    if (IS("index")) *out = jv_int(i + 1);
    else if (IS("index0")) *out = jv_int(i);
    else if (IS("revindex")) *out = jv_int(n - i);
    else if (IS("revindex0")) *out = jv_int(n - i - 1);
    else if (IS("first")) *out = jv_bool(i == 0);
    else if (IS("last")) *out = jv_bool(i == n - 1);
    else if (IS("length")) *out = jv_int(n);
    else if (IS("depth")) *out = jv_int(L->depth);
    else if (IS("depth0")) *out = jv_int(L->depth - 1);
    else if (IS("previtem")) *out = i > 0 ? L->items->v[i - 1] : jv_undef("UndefinedError: there is no previous item");
    else if (IS("nextitem")) *out = i + 1 < n ? L->items->v[i + 1] : jv_undef("UndefinedError: there is no next item");
    else if (IS("cycle")) return bind(c, obj, M_CYCLE, name, len, out);
    else if (IS("changed")) return bind(c, obj, M_CHANGED, name, len, out);
    else return 0;
#undef IS
    return 1;
  }
  default: return 0;
  }
  if (id == M_NONE) return 0;
  if (id == M_UNSAFE) {
    size_t n = 96 + len;
    char *m = jarena_alloc(&c->arena, n);
    if (!m) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    snprintf(m, n, "SecurityError: access to attribute '%.*s' of '%s' object is unsafe.", (int)len, name, tname);
    *out = jv_undef(m);
    return 1;
  }
  return bind(c, obj, id, name, len, out);
}

static int m_str(jctx *c, const jfunc *fn, const jargs *a, jv *out) {
  jstr *s = fn->self.u.s;
  jv x;
  switch (fn->id) {
  case M_STRIP:
  case M_LSTRIP:
  case M_RSTRIP: {
    jv ch = arg_or(a, 0, "chars", jv_none());
    if (ch.t != JV_NONE && need_str(c, ch, fn->name) < 0) return -1;
    return str_strip(c, s, ch.t == JV_STR ? ch.u.s : NULL, fn->id != M_RSTRIP, fn->id != M_LSTRIP, out);
  }
  case M_SPLIT:
  case M_RSPLIT: {
    jv ms = arg_or(a, 1, "maxsplit", jv_int(-1));
    return str_split(c, s, arg_or(a, 0, "sep", jv_none()), ms.t == JV_INT ? ms.u.i : -1, fn->id == M_RSPLIT, out);
  }
  case M_REPLACE: {
    jv cnt = arg_or(a, 2, "count", jv_int(-1));
    return str_replace(c, s, arg_or(a, 0, "old", jv_undef("UndefinedError: replace() needs 'old'")),
                       arg_or(a, 1, "new", jv_undef("UndefinedError: replace() needs 'new'")),
                       cnt.t == JV_INT ? cnt.u.i : -1, out);
  }
  case M_UPPER: return str_case(c, s, CASE_UPPER, out);
  case M_LOWER: return str_case(c, s, CASE_LOWER, out);
  case M_TITLE: return str_case(c, s, CASE_TITLE, out);
  case M_CAPITALIZE: return str_case(c, s, CASE_CAPITALIZE, out);
  case M_STARTSWITH:
  case M_ENDSWITH: {
    bool r;
    if (!arg(a, 0, "prefix", &x)) return jctx_fail(c, LLORCH_EINVAL, "TypeError: %s() takes at least 1 argument", fn->name);
    if (str_affix(c, s, x, fn->id == M_ENDSWITH, &r) < 0) return -1;
    *out = jv_bool(r);
    return 0;
  }
  case M_FIND:
  case M_RFIND:
  case M_INDEX_STR:
  case M_COUNT_STR: {
    if (!arg(a, 0, "sub", &x) || need_str(c, x, fn->name) < 0)
      return x.t == JV_STR ? -1 : jctx_fail(c, LLORCH_EINVAL, "TypeError: %s() needs a substring", fn->name);
    jstr *sub = x.u.s;
    if (fn->id == M_COUNT_STR) {
      int64_t n = 0;
      if (sub->len == 0) n = (int64_t)jutf8_count(s->s, s->len) + 1;
      else
        for (const char *p = s->s; (p = memmem(p, s->len - (size_t)(p - s->s), sub->s, sub->len)); p += sub->len) n++;
      *out = jv_int(n);
      return 0;
    }
    int64_t pos = -1;
    if (fn->id == M_RFIND) {
      if (sub->len <= s->len)
        for (size_t k = s->len - sub->len + 1; k-- > 0;)
          if (memcmp(s->s + k, sub->s, sub->len) == 0) {
            pos = (int64_t)jutf8_count(s->s, k);
            break;
          }
    } else {
      const char *p = memmem(s->s, s->len, sub->s, sub->len);
      if (p) pos = (int64_t)jutf8_count(s->s, (size_t)(p - s->s));
    }
    if (pos < 0 && fn->id == M_INDEX_STR) return jctx_fail(c, LLORCH_EINVAL, "ValueError: substring not found");
    *out = jv_int(pos);
    return 0;
  }
  case M_JOIN: {
    jlist *items;
    if (!arg(a, 0, "iterable", &x) || jinja_iterate(c, x, &items) < 0)
      return c->err ? -1 : jctx_fail(c, LLORCH_EINVAL, "TypeError: join() takes exactly one argument");
    jsb sb = {0};
    for (size_t i = 0; i < items->n; i++) {
      if (items->v[i].t != JV_STR) {
        jsb_free(&sb);
        return jctx_fail(c, LLORCH_EINVAL, "TypeError: sequence item %zu: expected str instance, %s found", i,
                         jv_type_name(items->v[i]));
      }
      if (i) jsb_put_jstr(&sb, s, 0, s->len);
      jsb_put_jstr(&sb, items->v[i].u.s, 0, items->v[i].u.s->len);
    }
    return jsb_finish(c, &sb, out);
  }
  case M_FORMAT: return str_format(c, s, a, out);
  case M_SPLITLINES: {
    jlist *l = jlist_new(c, 0);
    if (!l) return -1;
    size_t st = 0;
    int rc = 0;
    for (size_t i = 0; i < s->len; i++) {
      if (s->s[i] != '\n' && s->s[i] != '\r') continue;
      if (jlist_push(c, l, sub_str(c, s, st, i - st, &rc)) < 0 || rc) return -1;
      if (s->s[i] == '\r' && i + 1 < s->len && s->s[i + 1] == '\n') i++;
      st = i + 1;
    }
    if (st < s->len && (jlist_push(c, l, sub_str(c, s, st, s->len - st, &rc)) < 0 || rc)) return -1;
    *out = list_v(l);
    return 0;
  }
  default: {
    bool r = s->len > 0, has_cased = false;
    for (size_t i = 0; i < s->len; i++) {
      unsigned char ch = (unsigned char)s->s[i];
      if (isalpha(ch)) has_cased = true;
      switch (fn->id) {
      case M_ISDIGIT: r = r && isdigit(ch); break;
      case M_ISALPHA: r = r && isalpha(ch); break;
      case M_ISSPACE: r = r && isspace(ch); break;
      case M_ISALNUM: r = r && isalnum(ch); break;
      case M_ISUPPER: r = r && !islower(ch); break;
      case M_ISLOWER: r = r && !isupper(ch); break;
      }
    }
    if (fn->id == M_ISUPPER || fn->id == M_ISLOWER) r = r && has_cased;
    *out = jv_bool(r);
    return 0;
  }
  }
}

static int m_dict(jctx *c, const jfunc *fn, const jargs *a, jv *out) {
  jdict *d = fn->self.u.d;
  if (fn->id == M_GET) {
    jv k;
    if (!arg(a, 0, "key", &k)) return jctx_fail(c, LLORCH_EINVAL, "TypeError: get expected at least 1 argument, got 0");
    if (!jdict_getv(d, k, out)) *out = arg_or(a, 1, "default", jv_none());
    return 0;
  }
  jlist *l = jlist_new(c, d->n);
  if (!l) return -1;
  for (size_t i = 0; i < d->n; i++) {
    if (fn->id == M_KEYS) l->v[i] = d->k[i];
    else if (fn->id == M_VALUES) l->v[i] = d->v[i];
    else {
      jlist *pair = jlist_new(c, 2);
      if (!pair) return -1;
      pair->tuple = true;
      pair->v[0] = d->k[i];
      pair->v[1] = d->v[i];
      pair->n = 2;
      l->v[i] = list_v(pair);
    }
  }
  l->n = d->n;
  *out = list_v(l);
  return 0;
}

static int g_range(jctx *c, const jargs *a, jv *out) {
  int64_t lo = 0, hi, st = 1;
  for (size_t i = 0; i < a->npos; i++)
    if (a->pos[i].t != JV_INT) return jctx_fail(c, LLORCH_EINVAL, "TypeError: range() takes integers");
  if (a->npos == 1) hi = a->pos[0].u.i;
  else if (a->npos >= 2) {
    lo = a->pos[0].u.i;
    hi = a->pos[1].u.i;
    if (a->npos >= 3) st = a->pos[2].u.i;
  } else {
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: range expected at least 1 argument, got 0");
  }
  if (st == 0) return jctx_fail(c, LLORCH_EINVAL, "ValueError: range() arg 3 must not be zero");
  /* jinja's sandbox caps range at 100000 items */
  int64_t n = st > 0 ? (hi > lo ? (hi - lo + st - 1) / st : 0) : (lo > hi ? (lo - hi - st - 1) / -st : 0);
  if (n > 100000)
    return jctx_fail(c, LLORCH_EINVAL, "OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  jlist *l = jlist_new(c, (size_t)n);
  if (!l) return -1;
  for (int64_t i = 0; i < n; i++) l->v[i] = jv_int(lo + i * st);
  l->n = (size_t)n;
  *out = list_v(l);
  return 0;
}

int jinja_call_func(jctx *c, jscope *sc, const jfunc *fn, const jargs *a, jv *out) {
  (void)sc;
  switch (fn->id) {
  case M_INDEX:
  case M_COUNT: {
    jv x;
    if (!arg(a, 0, "value", &x)) return jctx_fail(c, LLORCH_EINVAL, "TypeError: %s() takes exactly one argument", fn->name);
    jlist *l = fn->self.u.l;
    int64_t n = 0;
    for (size_t i = 0; i < l->n; i++)
      if (jv_equal(l->v[i], x)) {
        if (fn->id == M_INDEX) {
          *out = jv_int((int64_t)i);
          return 0;
        }
        n++;
      }
    if (fn->id == M_INDEX) return jctx_fail(c, LLORCH_EINVAL, "ValueError: value is not in list");
    *out = jv_int(n);
    return 0;
  }
  case M_ITEMS:
  case M_KEYS:
  case M_VALUES:
  case M_GET: return m_dict(c, fn, a, out);
  case M_CYCLE: {
    jloop *L = fn->self.u.loop;
    if (a->npos == 0) return jctx_fail(c, LLORCH_EINVAL, "TypeError: no items for cycling given");
    *out = a->pos[L->index0 % a->npos];
    return 0;
  }
  case M_CHANGED: {
    jloop *L = fn->self.u.loop;
    jlist *cur = jlist_new(c, a->npos);
    if (!cur) return -1;
    for (size_t i = 0; i < a->npos; i++) cur->v[i] = a->pos[i];
    cur->n = a->npos;
    jv v = list_v(cur);
    bool changed = L->last_changed.t == JV_UNDEF || !jv_equal(L->last_changed, v);
    L->last_changed = v;
    *out = jv_bool(changed);
    return 0;
  }
  case G_RANGE: return g_range(c, a, out);
  case G_NAMESPACE:
  case G_DICT: {
    jdict *d = jdict_new(c, a->nkw);
    if (!d) return -1;
    if (a->npos >= 1 && (a->pos[0].t == JV_DICT || a->pos[0].t == JV_NS))
      for (size_t i = 0; i < a->pos[0].u.d->n; i++)
        if (jdict_set(c, d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]) < 0) return -1;
    for (size_t i = 0; i < a->nkw; i++) {
      jv k;
      if (jv_cstr(c, a->kwn[i], strlen(a->kwn[i]), &k) < 0 || jdict_set(c, d, k, a->kwv[i]) < 0) return -1;
    }
    *out = (jv){.t = fn->id == G_NAMESPACE ? JV_NS : JV_DICT, .u.d = d};
    return 0;
  }
  case G_RAISE: {
    jv m = arg_or(a, 0, "message", jv_none());
    jsb b = {0};
    jv_write_str(c, &b, m);
    jctx_fail(c, LLORCH_EINVAL, "TemplateError: %s", b.s ? b.s : "");
    jsb_free(&b);
    return -1;
  }
  case G_STRFTIME: {
    jv f = arg_or(a, 0, "format", jv_none());
    if (need_str(c, f, "strftime_now") < 0) return -1;
    struct tm tmv;
    time_t now = c->now;
    gmtime_r(&now, &tmv);
    char buf[256];
    size_t n = f.u.s->len ? strftime(buf, sizeof buf, f.u.s->s, &tmv) : 0;
    return jv_cstr(c, buf, n, out);
  }
  default:
    if (fn->self.t == JV_STR) return m_str(c, fn, a, out);
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: '%s' is not callable", fn->name);
  }
}

int jinja_globals_init(jctx *c, jscope *g) {
  static const struct {
    const char *name;
    int id;
  } globals[] = {{"range", G_RANGE},
                 {"namespace", G_NAMESPACE},
                 {"dict", G_DICT},
                 {"raise_exception", G_RAISE},
                 {"strftime_now", G_STRFTIME}};
  for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
    jv f;
    if (bind(c, jv_none(), globals[i].id, globals[i].name, strlen(globals[i].name), &f) < 0 ||
        jscope_set(c, g, globals[i].name, strlen(globals[i].name), f) < 0)
      return -1;
  }
  return 0;
}

/* ---- tests ---- */

static const char *const test_names[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable", "sequence",
    "boolean", "true", "false", "callable", "equalto", "eq", "==", "ne", "!=", "lt", "<", "le", "<=", "gt", ">",
    "ge", ">=", "in", "even", "odd", "divisibleby", "sameas", "lower", "upper", "escaped", "filter", "test", NULL};

bool jinja_test_exists(const char *name) {
  for (size_t i = 0; test_names[i]; i++)
    if (strcmp(test_names[i], name) == 0) return true;
  return false;
}

static bool filter_exists(const char *name);

int jinja_test(jctx *c, jscope *sc, const char *name, jv v, const jargs *a, bool *out) {
  (void)sc;
#define T(s) (strcmp(name, s) == 0)
  jv x = arg_or(a, 0, NULL, jv_undef("UndefinedError: the test needs an argument"));
  if (T("defined")) *out = v.t != JV_UNDEF;
  else if (T("undefined")) *out = v.t == JV_UNDEF;
  else if (T("none")) *out = v.t == JV_NONE;
  else if (T("string")) *out = v.t == JV_STR;
  else if (T("number")) *out = v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
  else if (T("integer")) *out = v.t == JV_INT;
  else if (T("float")) *out = v.t == JV_FLOAT;
  else if (T("mapping")) *out = v.t == JV_DICT;
  else if (T("iterable")) *out = v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF;
  else if (T("sequence")) *out = v.t == JV_STR || (v.t == JV_LIST && !v.u.l->gen) || v.t == JV_DICT || v.t == JV_UNDEF;
  else if (T("boolean")) *out = v.t == JV_BOOL;
  else if (T("true")) *out = v.t == JV_BOOL && v.u.b;
  else if (T("false")) *out = v.t == JV_BOOL && !v.u.b;
  else if (T("callable")) *out = v.t == JV_MACRO || v.t == JV_FUNC;
  else if (T("equalto") || T("eq") || T("==")) *out = jv_equal(v, x);
  else if (T("ne") || T("!=")) *out = !jv_equal(v, x);
  else if (T("sameas")) {
    *out = v.t == x.t && (v.t == JV_NONE || v.t == JV_UNDEF || (v.t == JV_BOOL && v.u.b == x.u.b) ||
                          (v.t != JV_BOOL && jv_equal(v, x) &&
                           (v.t == JV_INT || v.t == JV_FLOAT || v.u.s == x.u.s)));
  } else if (T("lt") || T("<") || T("le") || T("<=") || T("gt") || T(">") || T("ge") || T(">=")) {
    int cmp;
    if (jv_compare(c, v, x, &cmp) < 0) return -1;
    *out = T("lt") || T("<") ? cmp < 0 : T("le") || T("<=") ? cmp <= 0 : T("gt") || T(">") ? cmp > 0 : cmp >= 0;
  } else if (T("in")) {
    *out = false;
    if (x.t == JV_STR && v.t == JV_STR) *out = memmem(x.u.s->s, x.u.s->len, v.u.s->s, v.u.s->len) != NULL || v.u.s->len == 0;
    else if (x.t == JV_LIST) {
      for (size_t i = 0; i < x.u.l->n; i++)
        if (jv_equal(x.u.l->v[i], v)) *out = true;
    } else if (x.t == JV_DICT) {
      jv tmp;
      *out = jdict_getv(x.u.d, v, &tmp);
    }
  } else if (T("even") || T("odd") || T("divisibleby")) {
    if (v.t != JV_INT) return jctx_fail(c, LLORCH_EINVAL, "TypeError: the '%s' test needs an integer, not '%s'", name, jv_type_name(v));
    if (T("divisibleby")) {
      if (x.t != JV_INT || x.u.i == 0) return jctx_fail(c, LLORCH_EINVAL, "TypeError: divisibleby needs a non-zero integer");
      *out = v.u.i % x.u.i == 0;
    } else {
      *out = (v.u.i % 2 == 0) == T("even");
    }
  } else if (T("lower") || T("upper")) {
    if (need_str(c, v, name) < 0) return -1;
    bool r = true;
    for (size_t i = 0; i < v.u.s->len; i++)
      if (T("lower") ? isupper((unsigned char)v.u.s->s[i]) : islower((unsigned char)v.u.s->s[i])) r = false;
    *out = r;
  } else if (T("escaped")) *out = false;
  else if (T("filter")) *out = x.t == JV_STR && filter_exists(x.u.s->s);
  else if (T("test")) *out = x.t == JV_STR && jinja_test_exists(x.u.s->s);
  else return jctx_fail(c, LLORCH_EINVAL, "TemplateRuntimeError: No test named '%s'.", name);
#undef T
  return 0;
}

/* ---- filters ---- */

static int attr_path(jctx *c, jv v, jv attr, jv *out) {
  /* attribute="a.b" or an integer index */
  if (attr.t == JV_INT) {
    if (v.t == JV_LIST && attr.u.i >= 0 && (size_t)attr.u.i < v.u.l->n) *out = v.u.l->v[attr.u.i];
    else *out = jv_undef("UndefinedError: no such element");
    return 0;
  }
  if (need_str(c, attr, "attribute") < 0) return -1;
  const char *p = attr.u.s->s, *end = p + attr.u.s->len;
  *out = v;
  while (p <= end) {
    const char *dot = memchr(p, '.', (size_t)(end - p));
    size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
    jv cur = *out;
    if (cur.t == JV_DICT || cur.t == JV_NS) {
      if (!jdict_get(cur.u.d, p, n, out)) {
        char *m = jarena_alloc(&c->arena, n + 64);
        if (!m) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
        snprintf(m, n + 64, "UndefinedError: 'dict object' has no attribute '%.*s'", (int)n, p);
        *out = jv_undef(m);
        return 0;
      }
    } else if (cur.t == JV_LIST && n > 0 && isdigit((unsigned char)p[0])) {
      size_t i = (size_t)atol(p);
      *out = i < cur.u.l->n ? cur.u.l->v[i] : jv_undef("UndefinedError: no such element");
    } else if (cur.t == JV_UNDEF) {
      return jctx_fail(c, LLORCH_EINVAL, "%s", cur.u.undef);
    } else {
      int r = jinja_getattr_builtin(c, cur, p, n, out);
      if (r < 0) return -1;
      if (r == 0) {
        *out = jv_undef("UndefinedError: the object has no such attribute");
        return 0;
      }
    }
    if (!dot) break;
    p = dot + 1;
  }
  return 0;
}

/* select/reject/selectattr/rejectattr */
static int filter_select(jctx *c, jscope *sc, jv in, const jargs *a, bool by_attr, bool keep, jv *out) {
  jlist *items;
  static jlist empty;
  /* jinja walks the input only when it is true: none selects nothing */
  if (!jv_truthy(in)) items = &empty;
  else if (jinja_iterate(c, in, &items) < 0) return -1;
  size_t first = by_attr ? 1 : 0;
  jv attr = jv_none(), test = jv_none();
  if (by_attr && !arg(a, 0, NULL, &attr)) return jctx_fail(c, LLORCH_EINVAL, "FilterArgumentError: Missing parameter for attribute name");
  bool has_test = arg(a, first, NULL, &test);
  if (has_test && need_str(c, test, "the test name") < 0) return -1;
  jargs rest = {.pos = a->npos > first + 1 ? a->pos + first + 1 : NULL,
                .npos = a->npos > first + 1 ? a->npos - first - 1 : 0,
                .kwn = a->kwn,
                .kwv = a->kwv,
                .nkw = a->nkw};
  jlist *l = jlist_new(c, 0);
  if (!l) return -1;
  l->gen = true;
  for (size_t i = 0; i < items->n; i++) {
    jv v = items->v[i], probe = v;
    if (by_attr && attr_path(c, v, attr, &probe) < 0) return -1;
    bool r;
    if (has_test) {
      if (jinja_test(c, sc, test.u.s->s, probe, &rest, &r) < 0) return -1;
    } else {
      r = jv_truthy(probe);
    }
    if (r == keep && jlist_push(c, l, v) < 0) return -1;
  }
  *out = list_v(l);
  return 0;
}

static int filter_map(jctx *c, jscope *sc, jv in, const jargs *a, jv *out) {
  jlist *items;
  static jlist empty;
  if (!jv_truthy(in)) items = &empty;
  else if (jinja_iterate(c, in, &items) < 0) return -1;
  jlist *l = jlist_new(c, items->n);
  if (!l) return -1;
  l->gen = true;
  jv attr;
  bool by_attr = false;
  for (size_t k = 0; k < a->nkw; k++)
    if (strcmp(a->kwn[k], "attribute") == 0) {
      attr = a->kwv[k];
      by_attr = true;
    }
  if (by_attr) {
    jv dflt = jv_undef(NULL);
    bool has_default = false;
    for (size_t k = 0; k < a->nkw; k++)
      if (strcmp(a->kwn[k], "default") == 0) {
        dflt = a->kwv[k];
        has_default = true;
      }
    for (size_t i = 0; i < items->n; i++) {
      jv v;
      if (attr_path(c, items->v[i], attr, &v) < 0) return -1;
      if (v.t == JV_UNDEF && has_default) v = dflt;
      l->v[l->n++] = v;
    }
  } else {
    jv fname;
    if (!arg(a, 0, NULL, &fname) || need_str(c, fname, "map") < 0)
      return c->err ? -1 : jctx_fail(c, LLORCH_EINVAL, "FilterArgumentError: map requires a filter argument");
    jargs rest = {.pos = a->npos > 1 ? a->pos + 1 : NULL, .npos = a->npos > 1 ? a->npos - 1 : 0, .kwn = a->kwn,
                  .kwv = a->kwv, .nkw = a->nkw};
    for (size_t i = 0; i < items->n; i++)
      if (jinja_filter(c, sc, fname.u.s->s, items->v[i], &rest, &l->v[l->n++]) < 0) return -1;
  }
  *out = list_v(l);
  return 0;
}

/* sort key comparison: case-insensitive for strings unless asked */
typedef struct sort_item {
  jv key, v;
  size_t idx;
} sort_item;
typedef struct sort_ctx {
  jctx *c;
  bool case_sensitive, reverse;
  int err;
} sort_ctx;

static int sort_cmp_values(sort_ctx *s, jv a, jv b) {
  if (!s->case_sensitive && a.t == JV_STR && b.t == JV_STR) {
    size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
    for (size_t i = 0; i < n; i++) {
      int x = tolower((unsigned char)a.u.s->s[i]), y = tolower((unsigned char)b.u.s->s[i]);
      if (x != y) return x < y ? -1 : 1;
    }
    return a.u.s->len < b.u.s->len ? -1 : a.u.s->len > b.u.s->len;
  }
  int r = 0;
  if (!s->err && jv_compare(s->c, a, b, &r) < 0) s->err = -1;
  return r;
}

/* stable merge sort (Python's sort is stable; qsort is not) */
static void merge_sort(sort_ctx *s, sort_item *v, sort_item *tmp, size_t n) {
  if (n < 2) return;
  size_t m = n / 2;
  merge_sort(s, v, tmp, m);
  merge_sort(s, v + m, tmp, n - m);
  size_t i = 0, j = m, k = 0;
  while (i < m && j < n) {
    int r = sort_cmp_values(s, v[j].key, v[i].key);
    if (s->reverse) r = -r;
    if (r < 0) tmp[k++] = v[j++];
    else tmp[k++] = v[i++];
  }
  while (i < m) tmp[k++] = v[i++];
  while (j < n) tmp[k++] = v[j++];
  memcpy(v, tmp, n * sizeof *v);
}

static int sorted_list(jctx *c, jlist *items, jv attr, bool has_attr, bool case_sensitive, bool reverse, int key_kind,
                       jlist **out) {
  size_t n = items->n;
  sort_item *v = jarena_alloc(&c->arena, (n ? n : 1) * sizeof *v), *tmp = jarena_alloc(&c->arena, (n ? n : 1) * sizeof *v);
  if (!v || !tmp) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
  for (size_t i = 0; i < n; i++) {
    v[i].v = items->v[i];
    v[i].idx = i;
    v[i].key = items->v[i];
    if (has_attr && attr_path(c, items->v[i], attr, &v[i].key) < 0) return -1;
    if (key_kind >= 0) v[i].key = items->v[i].u.l->v[key_kind];
  }
  sort_ctx s = {.c = c, .case_sensitive = case_sensitive, .reverse = reverse};
  merge_sort(&s, v, tmp, n);
  if (s.err) return -1;
  jlist *l = jlist_new(c, n);
  if (!l) return -1;
  for (size_t i = 0; i < n; i++) l->v[i] = v[i].v;
  l->n = n;
  *out = l;
  return 0;
}

static const char *const filter_names[] = {
    "tojson", "trim", "upper", "lower", "title", "capitalize", "length", "count", "join", "first", "last",
    "default", "d", "replace", "items", "list", "map", "select", "reject", "selectattr", "rejectattr", "unique",
    "sort", "dictsort", "string", "int", "float", "abs", "round", "indent", "wordcount", "safe", "escape", "e",
    "forceescape", "batch", "reverse", "sum", "min", "max", "attr", "center", "format", "striptags", "truncate",
    "pprint", "bool", NULL};

static bool filter_exists(const char *name) {
  for (size_t i = 0; filter_names[i]; i++)
    if (strcmp(filter_names[i], name) == 0) return true;
  return false;
}

static int html_escape(jctx *c, jv in, jv *out, bool force) {
  jv s;
  if (jv_to_str(c, in, &s) < 0) return -1;
  if (s.u.s->safe && !force) {
    *out = s;
    return 0;
  }
  return jstr_escape(c, s.u.s, out);
}

int jinja_filter(jctx *c, jscope *sc, const char *name, jv in, const jargs *a, jv *out) {
#define F(s) (strcmp(name, s) == 0)
  jv x;
  if (F("default") || F("d")) {
    jv dflt = arg_or(a, 0, "default_value", jv_str(jstr_new(c, "", 0, false)));
    bool boolean = jv_truthy(arg_or(a, 1, "boolean", jv_bool(false)));
    *out = in.t == JV_UNDEF || (boolean && !jv_truthy(in)) ? dflt : in;
    return 0;
  }
  if (F("safe")) {
    jv s;
    if (jv_to_str(c, in, &s) < 0) return -1;
    return jstr_mark_safe(c, s.u.s, out);
  }
  if (F("string")) return jv_to_str(c, in, out);
  if (F("tojson")) {
    jjson_opts o = {.indent = -1, .item_sep = ", ", .key_sep = ": "};
    jv ind = arg_or(a, 0, "indent", jv_none());
    if (ind.t == JV_INT) {
      o.indent = (int)(ind.u.i < 0 ? 0 : ind.u.i > 64 ? 64 : ind.u.i);
      o.item_sep = ",";
    } else if (ind.t == JV_STR) {
      o.indent_str = ind.u.s->s;
      o.item_sep = ",";
    }
    jv seps = arg_or(a, 99, "separators", jv_none());
    if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
      o.item_sep = seps.u.l->v[0].u.s->s;
      o.key_sep = seps.u.l->v[1].u.s->s;
    }
    o.sort_keys = jv_truthy(arg_or(a, 99, "sort_keys", jv_bool(false)));
    jsb sb = {0};
    if (jv_write_json(c, &sb, in, &o, 0) < 0) {
      jsb_free(&sb);
      return -1;
    }
    return jsb_finish(c, &sb, out);
  }
  if (F("length") || F("count")) {
    switch (in.t) {
    case JV_STR: *out = jv_int((int64_t)jutf8_count(in.u.s->s, in.u.s->len)); return 0;
    case JV_LIST:
      if (in.u.l->gen) return jctx_fail(c, LLORCH_EINVAL, "TypeError: object of type 'generator' has no len()");
      *out = jv_int((int64_t)in.u.l->n);
      return 0;
    case JV_DICT: *out = jv_int((int64_t)in.u.d->n); return 0;
    case JV_UNDEF: *out = jv_int(0); return 0;
    default: return jctx_fail(c, LLORCH_EINVAL, "TypeError: object of type '%s' has no len()", jv_type_name(in));
    }
  }
  if (F("list")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jlist *l = jlist_new(c, items->n);
    if (!l) return -1;
    if (items->n) memcpy(l->v, items->v, items->n * sizeof(jv));
    l->n = items->n;
    *out = list_v(l);
    return 0;
  }
  if (F("items")) {
    if (in.t == JV_UNDEF) {
      jlist *l = jlist_new(c, 0);
      if (!l) return -1;
      *out = list_v(l);
      return 0;
    }
    if (in.t != JV_DICT) return jctx_fail(c, LLORCH_EINVAL, "TypeError: can only get item pairs from a mapping.");
    jfunc f = {.id = M_ITEMS, .self = in, .name = "items"};
    return m_dict(c, &f, a, out);
  }
  if (F("map")) return filter_map(c, sc, in, a, out);
  if (F("select") || F("reject")) return filter_select(c, sc, in, a, false, F("select"), out);
  if (F("selectattr") || F("rejectattr")) return filter_select(c, sc, in, a, true, F("selectattr"), out);
  if (F("first") || F("last")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    if (items->n == 0) *out = jv_undef("UndefinedError: No first item, sequence was empty.");
    else *out = items->v[F("first") ? 0 : items->n - 1];
    return 0;
  }
  if (F("join")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jv sep = arg_or(a, 0, "d", jv_none());
    jv attr;
    bool has_attr = arg(a, 1, "attribute", &attr);
    jsb sb = {0};
    for (size_t i = 0; i < items->n; i++) {
      jv v = items->v[i];
      if (has_attr && attr_path(c, v, attr, &v) < 0) {
        jsb_free(&sb);
        return -1;
      }
      if (i && sep.t == JV_STR) jsb_put_jstr(&sb, sep.u.s, 0, sep.u.s->len);
      else if (i && sep.t != JV_NONE && jv_write_str(c, &sb, sep) < 0) {
        jsb_free(&sb);
        return -1;
      }
      if (jv_write_str(c, &sb, v) < 0) {
        jsb_free(&sb);
        return -1;
      }
    }
    return jsb_finish(c, &sb, out);
  }
  if (F("upper") || F("lower") || F("title") || F("capitalize") || F("trim") || F("replace") || F("wordcount") ||
      F("indent") || F("center") || F("striptags") || F("truncate")) {
    jv s;
    if (in.t == JV_UNDEF && !F("trim")) s = jv_str(jstr_new(c, "", 0, false));
    else if (in.t == JV_UNDEF) s = jv_str(jstr_new(c, "", 0, false));
    else if (jv_to_str(c, in, &s) < 0) return -1;
    if (!s.u.s) return -1;
    jstr *str = s.u.s;
    if (F("upper")) return str_case(c, str, CASE_UPPER, out);
    if (F("lower")) return str_case(c, str, CASE_LOWER, out);
    if (F("title")) return str_case(c, str, CASE_TITLE, out);
    if (F("capitalize")) return str_case(c, str, CASE_CAPITALIZE, out);
    if (F("trim")) {
      jv ch = arg_or(a, 0, "chars", jv_none());
      return str_strip(c, str, ch.t == JV_STR ? ch.u.s : NULL, true, true, out);
    }
    if (F("replace")) {
      jv cnt = arg_or(a, 2, "count", jv_none());
      return str_replace(c, str, arg_or(a, 0, "old", jv_undef("UndefinedError: replace needs 'old'")),
                         arg_or(a, 1, "new", jv_undef("UndefinedError: replace needs 'new'")),
                         cnt.t == JV_INT ? cnt.u.i : -1, out);
    }
    if (F("wordcount")) {
      int64_t n = 0;
      bool inw = false;
      for (size_t i = 0; i < str->len; i++) {
        unsigned char ch = (unsigned char)str->s[i];
        bool w = isalnum(ch) || ch == '_' || ch >= 0x80;
        if (w && !inw) n++;
        inw = w;
      }
      *out = jv_int(n);
      return 0;
    }
    if (F("striptags") || F("truncate") || F("center")) {
      *out = s; /* rarely used by chat templates: passed through */
      return 0;
    }
    /* indent(width=4, first=False, blank=False) */
    jv w = arg_or(a, 0, "width", jv_int(4));
    bool first = jv_truthy(arg_or(a, 1, "first", jv_bool(false)));
    bool blank = jv_truthy(arg_or(a, 2, "blank", jv_bool(false)));
    jsb pad = {0};
    if (w.t == JV_STR) jsb_put(&pad, w.u.s->s, w.u.s->len, false);
    else
      for (int64_t i = 0; w.t == JV_INT && i < w.u.i && i < 256; i++) jsb_puts(&pad, " ");
    jsb sb = {0};
    size_t st = 0;
    bool line_first = true;
    for (;;) {
      const char *nl = memchr(str->s + st, '\n', str->len - st);
      size_t e = nl ? (size_t)(nl - str->s) : str->len;
      bool empty = e == st;
      bool do_pad = line_first ? first : (blank || !empty);
      if (do_pad && pad.len) jsb_put(&sb, pad.s, pad.len, false);
      jsb_put_jstr(&sb, str, st, e - st + (nl ? 1 : 0));
      if (!nl) break;
      st = e + 1;
      line_first = false;
    }
    jsb_free(&pad);
    return jsb_finish(c, &sb, out);
  }
  if (F("int")) {
    jv dflt = arg_or(a, 0, "default", jv_int(0));
    if (in.t == JV_INT) *out = in;
    else if (in.t == JV_BOOL) *out = jv_int(in.u.b);
    else if (in.t == JV_FLOAT) *out = isfinite(in.u.f) ? jv_int((int64_t)in.u.f) : dflt;
    else if (in.t == JV_STR) {
      char *end;
      errno = 0;
      long long v = strtoll(in.u.s->s, &end, 10);
      while (*end == ' ' || *end == '\n' || *end == '\t') end++;
      if (end != in.u.s->s && *end == 0) *out = jv_int(v);
      else {
        double d = strtod(in.u.s->s, &end);
        *out = end != in.u.s->s && *end == 0 && isfinite(d) ? jv_int((int64_t)d) : dflt;
      }
    } else *out = dflt;
    return 0;
  }
  if (F("float")) {
    jv dflt = arg_or(a, 0, "default", jv_float(0.0));
    if (in.t == JV_FLOAT) *out = in;
    else if (in.t == JV_INT) *out = jv_float((double)in.u.i);
    else if (in.t == JV_BOOL) *out = jv_float(in.u.b);
    else if (in.t == JV_STR) {
      char *end;
      double d = strtod(in.u.s->s, &end);
      *out = end != in.u.s->s && *end == 0 ? jv_float(d) : dflt;
    } else *out = dflt;
    return 0;
  }
  if (F("bool")) {
    *out = jv_bool(jv_truthy(in));
    return 0;
  }
  if (F("abs")) {
    if (in.t == JV_INT) *out = jv_int(in.u.i < 0 ? -in.u.i : in.u.i);
    else if (in.t == JV_FLOAT) *out = jv_float(fabs(in.u.f));
    else if (in.t == JV_BOOL) *out = jv_int(in.u.b);
    else return jctx_fail(c, LLORCH_EINVAL, "TypeError: bad operand type for abs(): '%s'", jv_type_name(in));
    return 0;
  }
  if (F("round")) {
    jv p = arg_or(a, 0, "precision", jv_int(0));
    jv m = arg_or(a, 1, "method", jv_none());
    if (in.t != JV_INT && in.t != JV_FLOAT && in.t != JV_BOOL)
      return jctx_fail(c, LLORCH_EINVAL, "TypeError: round needs a number, not '%s'", jv_type_name(in));
    double v = in.t == JV_FLOAT ? in.u.f : (double)(in.t == JV_INT ? in.u.i : in.u.b);
    double scale = pow(10.0, (double)(p.t == JV_INT ? p.u.i : 0));
    const char *method = m.t == JV_STR ? m.u.s->s : "common";
    double r = strcmp(method, "floor") == 0  ? floor(v * scale) / scale
               : strcmp(method, "ceil") == 0 ? ceil(v * scale) / scale
                                              : round(v * scale) / scale;
    *out = jv_float(r);
    return 0;
  }
  if (F("escape") || F("e") || F("forceescape")) return html_escape(c, in, out, F("forceescape"));
  if (F("reverse")) {
    if (in.t == JV_STR) {
      jv none = jv_none();
      jv step = jv_int(-1);
      jlist *chars;
      if (jinja_iterate(c, in, &chars) < 0) return -1;
      (void)none;
      (void)step;
      jsb sb = {0};
      for (size_t i = chars->n; i-- > 0;) jsb_put_jstr(&sb, chars->v[i].u.s, 0, chars->v[i].u.s->len);
      return jsb_finish(c, &sb, out);
    }
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jlist *l = jlist_new(c, items->n);
    if (!l) return -1;
    for (size_t i = 0; i < items->n; i++) l->v[i] = items->v[items->n - 1 - i];
    l->n = items->n;
    l->gen = true; /* a reverse iterator in jinja */
    *out = list_v(l);
    return 0;
  }
  if (F("unique")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    bool cs = jv_truthy(arg_or(a, 0, "case_sensitive", jv_bool(false)));
    jv attr;
    bool has_attr = arg(a, 1, "attribute", &attr);
    jlist *l = jlist_new(c, 0), *seen = jlist_new(c, 0);
    if (!l || !seen) return -1;
    l->gen = true;
    for (size_t i = 0; i < items->n; i++) {
      jv key = items->v[i];
      if (has_attr && attr_path(c, key, attr, &key) < 0) return -1;
      if (!cs && key.t == JV_STR && str_case(c, key.u.s, CASE_LOWER, &key) < 0) return -1;
      bool dup = false;
      for (size_t k = 0; k < seen->n && !dup; k++) dup = jv_equal(seen->v[k], key);
      if (dup) continue;
      if (jlist_push(c, seen, key) < 0 || jlist_push(c, l, items->v[i]) < 0) return -1;
    }
    *out = list_v(l);
    return 0;
  }
  if (F("sort")) {
    jlist *items, *l;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jv attr;
    bool has_attr = arg(a, 2, "attribute", &attr);
    if (sorted_list(c, items, attr, has_attr, jv_truthy(arg_or(a, 1, "case_sensitive", jv_bool(false))),
                    jv_truthy(arg_or(a, 0, "reverse", jv_bool(false))), -1, &l) < 0)
      return -1;
    *out = list_v(l);
    return 0;
  }
  if (F("dictsort")) {
    if (in.t != JV_DICT) return jctx_fail(c, LLORCH_EINVAL, "TypeError: dictsort needs a mapping");
    jfunc f = {.id = M_ITEMS, .self = in, .name = "items"};
    jv pairs;
    jargs none = {0};
    if (m_dict(c, &f, &none, &pairs) < 0) return -1;
    jv by = arg_or(a, 1, "by", jv_none());
    int key_kind = by.t == JV_STR && strcmp(by.u.s->s, "value") == 0 ? 1 : 0;
    jlist *l;
    if (sorted_list(c, pairs.u.l, jv_none(), false, jv_truthy(arg_or(a, 0, "case_sensitive", jv_bool(false))),
                    jv_truthy(arg_or(a, 2, "reverse", jv_bool(false))), key_kind, &l) < 0)
      return -1;
    *out = list_v(l);
    return 0;
  }
  if (F("sum") || F("min") || F("max")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jv attr;
    bool has_attr = arg(a, F("sum") ? 0 : 1, "attribute", &attr);
    if (F("sum")) {
      jv acc = arg_or(a, 1, "start", jv_int(0));
      for (size_t i = 0; i < items->n; i++) {
        jv v = items->v[i];
        if (has_attr && attr_path(c, v, attr, &v) < 0) return -1;
        if ((acc.t != JV_INT && acc.t != JV_FLOAT) || (v.t != JV_INT && v.t != JV_FLOAT && v.t != JV_BOOL))
          return jctx_fail(c, LLORCH_EINVAL, "TypeError: unsupported operand type(s) for +: '%s' and '%s'",
                           jv_type_name(acc), jv_type_name(v));
        if (acc.t == JV_INT && v.t != JV_FLOAT) acc = jv_int(acc.u.i + (v.t == JV_INT ? v.u.i : v.u.b));
        else acc = jv_float((acc.t == JV_INT ? (double)acc.u.i : acc.u.f) +
                            (v.t == JV_FLOAT ? v.u.f : (double)(v.t == JV_INT ? v.u.i : v.u.b)));
      }
      *out = acc;
      return 0;
    }
    if (items->n == 0) {
      *out = jv_undef("UndefinedError: No aggregated item, sequence was empty.");
      return 0;
    }
    jlist *sorted;
    if (sorted_list(c, items, attr, has_attr, jv_truthy(arg_or(a, 0, "case_sensitive", jv_bool(false))), false, -1,
                    &sorted) < 0)
      return -1;
    *out = F("min") ? sorted->v[0] : sorted->v[sorted->n - 1];
    return 0;
  }
  if (F("batch")) {
    jlist *items;
    if (jinja_iterate(c, in, &items) < 0) return -1;
    jv cnt = arg_or(a, 0, "linecount", jv_int(1));
    if (cnt.t != JV_INT || cnt.u.i <= 0) return jctx_fail(c, LLORCH_EINVAL, "ValueError: batch needs a positive count");
    jv fill;
    bool has_fill = arg(a, 1, "fill_with", &fill) && fill.t != JV_NONE;
    jlist *l = jlist_new(c, 0), *cur = NULL;
    if (!l) return -1;
    l->gen = true;
    for (size_t i = 0; i < items->n; i++) {
      if (!cur || cur->n == (size_t)cnt.u.i) {
        if (!(cur = jlist_new(c, 0)) || jlist_push(c, l, list_v(cur)) < 0) return -1;
      }
      if (jlist_push(c, cur, items->v[i]) < 0) return -1;
    }
    if (cur && has_fill)
      while (cur->n < (size_t)cnt.u.i)
        if (jlist_push(c, cur, fill) < 0) return -1;
    *out = list_v(l);
    return 0;
  }
  if (F("attr")) {
    if (!arg(a, 0, "name", &x) || need_str(c, x, "attr") < 0)
      return c->err ? -1 : jctx_fail(c, LLORCH_EINVAL, "TypeError: attr needs a name");
    if (in.t == JV_DICT || in.t == JV_NS) {
      int r = jinja_getattr_builtin(c, in, x.u.s->s, x.u.s->len, out);
      if (r < 0) return -1;
      if (r == 0 && !jdict_get(in.u.d, x.u.s->s, x.u.s->len, out)) *out = jv_undef("UndefinedError: no such attribute");
      return 0;
    }
    int r = jinja_getattr_builtin(c, in, x.u.s->s, x.u.s->len, out);
    if (r < 0) return -1;
    if (r == 0) *out = jv_undef("UndefinedError: no such attribute");
    return 0;
  }
  if (F("format")) {
    if (need_str(c, in, "format") < 0) return -1;
    jlist *t = jlist_new(c, a->npos);
    if (!t) return -1;
    t->tuple = true;
    for (size_t i = 0; i < a->npos; i++) t->v[t->n++] = a->pos[i];
    return jinja_format_percent(c, in.u.s, list_v(t), out);
  }
  if (F("pprint")) {
    jsb sb = {0};
    if (jv_write_repr(c, &sb, in) < 0) {
      jsb_free(&sb);
      return -1;
    }
    return jsb_finish(c, &sb, out);
  }
#undef F
  return jctx_fail(c, LLORCH_EINVAL, "TemplateAssertionError: No filter named '%s'.", name);
}
