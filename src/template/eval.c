/*
 * Jinja evaluator: expressions to values, statements to output, with
 * jinja2's scoping (each loop iteration and each macro call is a new scope
 * over the one it was defined in; if/with/set blocks are not) and the
 * render bounds of jctx.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-impl.h"

/* exec results besides 0 / -1 */
enum { EXEC_BREAK = 1, EXEC_CONTINUE = 2 };

static const char MEM_MSG[] = "MemoryError: the template used more than its memory limit";

/* ---- scopes ---- */

jscope *jscope_new(jctx *c, jscope *parent) {
  jscope *s = jarena_alloc(&c->arena, sizeof *s);
  if (!s) {
    jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    return NULL;
  }
  s->parent = parent;
  return s;
}

int jscope_set(jctx *c, jscope *sc, const char *name, size_t len, jv v) {
  for (size_t i = 0; i < sc->n; i++)
    if (sc->vars[i].len == len && memcmp(sc->vars[i].name, name, len) == 0) {
      sc->vars[i].v = v;
      return 0;
    }
  if (sc->n == sc->cap) {
    size_t cap = sc->cap ? sc->cap * 2 : 4;
    jvar *nv = jarena_alloc(&c->arena, cap * sizeof *nv);
    if (!nv) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    if (sc->n) memcpy(nv, sc->vars, sc->n * sizeof *nv);
    sc->vars = nv;
    sc->cap = cap;
  }
  sc->vars[sc->n++] = (jvar){.name = name, .len = len, .v = v};
  return 0;
}

bool jscope_get(const jscope *sc, const char *name, size_t len, jv *out) {
  for (; sc; sc = sc->parent)
    for (size_t i = sc->n; i-- > 0;)
      if (sc->vars[i].len == len && memcmp(sc->vars[i].name, name, len) == 0) {
        *out = sc->vars[i].v;
        return true;
      }
  return false;
}

/* ---- helpers ---- */

static int step(jctx *c) {
  if (++c->steps > c->max_steps)
    return jctx_fail(c, LLORCH_ELIMIT, "TemplateRuntimeError: the template ran more than %llu steps",
                     (unsigned long long)c->max_steps);
  return 0;
}

static const char *undef_msg(jctx *c, const char *fmt, const char *a, size_t alen, const char *b, size_t blen) {
  /* the hint carries its error class: used, it raises this text */
  size_t n = strlen(fmt) + alen + blen + 17;
  char *m = jarena_alloc(&c->arena, n);
  if (!m) return "UndefinedError: a value is undefined";
  memcpy(m, "UndefinedError: ", 16);
  snprintf(m + 16, n - 16, fmt, (int)alen, a, (int)blen, b);
  return m;
}

static int fail_undef(jctx *c, jv v) { return jctx_fail(c, LLORCH_EINVAL, "%s", v.u.undef); }

/* 'dict object' has no attribute 'x' */
static jv missing_attr(jctx *c, jv obj, const char *name, size_t len) {
  const char *tn = obj.t == JV_NONE ? "None" : jv_type_name(obj);
  if (obj.t == JV_NONE) return jv_undef(undef_msg(c, "'%.*s' has no attribute '%.*s'", tn, strlen(tn), name, len));
  return jv_undef(undef_msg(c, "'%.*s object' has no attribute '%.*s'", tn, strlen(tn), name, len));
}

/* The items a for loop (or a filter) walks: lists as they are, dict keys,
 * string characters; undefined is empty. */
int jinja_iterate(jctx *c, jv v, jlist **out);
int jinja_iterate(jctx *c, jv v, jlist **out) {
  static jlist empty;
  switch (v.t) {
  case JV_LIST: *out = v.u.l; return 0;
  case JV_UNDEF: *out = &empty; return 0;
  case JV_DICT:
  case JV_NS: {
    jlist *l = jlist_new(c, v.u.d->n);
    if (!l) return -1;
    for (size_t i = 0; i < v.u.d->n; i++) l->v[i] = v.u.d->k[i];
    l->n = v.u.d->n;
    *out = l;
    return 0;
  }
  case JV_STR: {
    jstr *s = v.u.s;
    jlist *l = jlist_new(c, jutf8_count(s->s, s->len));
    if (!l) return -1;
    for (size_t i = 0; i < s->len;) {
      size_t k = i + 1;
      while (k < s->len && ((unsigned char)s->s[k] & 0xC0) == 0x80) k++;
      jstr *ch = jstr_new(c, s->s + i, k - i, false);
      if (!ch) return -1;
      if (s->taint) ch->taint = s->taint + i;
      l->v[l->n++] = jv_str(ch);
      i = k;
    }
    *out = l;
    return 0;
  }
  default:
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: '%s' object is not iterable", jv_type_name(v));
  }
}

/* obj.name (jinja: attribute first, then item) */
static int get_attr(jctx *c, jv obj, const char *name, size_t len, jv *out) {
  if (obj.t == JV_UNDEF) return fail_undef(c, obj);
  int r = jinja_getattr_builtin(c, obj, name, len, out);
  if (r != 0) return r < 0 ? -1 : 0;
  if ((obj.t == JV_DICT || obj.t == JV_NS) && jdict_get(obj.u.d, name, len, out)) return 0;
  *out = missing_attr(c, obj, name, len);
  return 0;
}

/* obj[key] (jinja: item first, then attribute) */
static int get_item(jctx *c, jv obj, jv key, jv *out) {
  if (obj.t == JV_UNDEF) return fail_undef(c, obj);
  if (obj.t == JV_DICT || obj.t == JV_NS) {
    if (jdict_getv(obj.u.d, key, out)) return 0;
  } else if ((obj.t == JV_LIST || obj.t == JV_STR) && (key.t == JV_INT || key.t == JV_BOOL)) {
    int64_t i = key.t == JV_INT ? key.u.i : key.u.b;
    if (obj.t == JV_LIST && !obj.u.l->gen) {
      int64_t n = (int64_t)obj.u.l->n;
      if (i < 0) i += n;
      if (i >= 0 && i < n) {
        *out = obj.u.l->v[i];
        return 0;
      }
    } else if (obj.t == JV_STR) {
      jstr *s = obj.u.s;
      int64_t n = (int64_t)jutf8_count(s->s, s->len);
      if (i < 0) i += n;
      if (i >= 0 && i < n) {
        size_t a = jutf8_offset(s->s, s->len, (size_t)i), b = jutf8_offset(s->s, s->len, (size_t)i + 1);
        jstr *r = jstr_new(c, s->s + a, b - a, false);
        if (!r) return -1;
        if (s->taint) r->taint = s->taint + a;
        *out = jv_str(r);
        return 0;
      }
    }
    char idx[24];
    snprintf(idx, sizeof idx, "%lld", (long long)i);
    const char *tn = jv_type_name(obj);
    *out = jv_undef(undef_msg(c, "'%.*s object' has no element %.*s", tn, strlen(tn), idx, strlen(idx)));
    return 0;
  }
  if (key.t == JV_STR) return get_attr(c, obj, key.u.s->s, key.u.s->len, out);
  if (obj.t == JV_NONE) {
    *out = jv_undef("UndefinedError: 'None' has no attribute");
    return 0;
  }
  *out = jv_undef("UndefinedError: the subscript is undefined");
  if (obj.t == JV_DICT) {
    char k[64] = "?";
    jsb b = {0};
    if (jv_write_repr(c, &b, key) == 0 && b.s) snprintf(k, sizeof k, "%s", b.s);
    jsb_free(&b);
    *out = jv_undef(undef_msg(c, "'%.*s object' has no element %.*s", "dict", 4, k, strlen(k)));
  }
  return 0;
}

/* Python slice semantics on n elements; fills idx with the chosen indexes. */
static int slice_indexes(jctx *c, int64_t n, jv a, jv b, jv s, int64_t *start, int64_t *stop, int64_t *stp) {
  int64_t st = 1;
  if (s.t == JV_INT) st = s.u.i;
  else if (s.t != JV_NONE && s.t != JV_UNDEF) return jctx_fail(c, LLORCH_EINVAL, "TypeError: slice indices must be integers or None");
  if (st == 0) return jctx_fail(c, LLORCH_EINVAL, "ValueError: slice step cannot be zero");
  int64_t lo, hi;
  if (a.t == JV_INT) {
    lo = a.u.i < 0 ? a.u.i + n : a.u.i;
    if (lo < 0) lo = st < 0 ? -1 : 0;
    if (lo >= n) lo = st < 0 ? n - 1 : n;
  } else if (a.t == JV_NONE || a.t == JV_UNDEF) {
    lo = st < 0 ? n - 1 : 0;
  } else {
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: slice indices must be integers or None");
  }
  if (b.t == JV_INT) {
    hi = b.u.i < 0 ? b.u.i + n : b.u.i;
    if (hi < 0) hi = st < 0 ? -1 : 0;
    if (hi >= n) hi = st < 0 ? n - 1 : n;
  } else if (b.t == JV_NONE || b.t == JV_UNDEF) {
    hi = st < 0 ? -1 : n;
  } else {
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: slice indices must be integers or None");
  }
  *start = lo;
  *stop = hi;
  *stp = st;
  return 0;
}

static int do_slice(jctx *c, jv obj, jv a, jv b, jv s, jv *out) {
  if (obj.t == JV_UNDEF) return fail_undef(c, obj);
  int64_t lo, hi, st;
  if (obj.t == JV_LIST && !obj.u.l->gen) {
    jlist *l = obj.u.l;
    if (slice_indexes(c, (int64_t)l->n, a, b, s, &lo, &hi, &st) < 0) return -1;
    jlist *r = jlist_new(c, 0);
    if (!r) return -1;
    r->tuple = l->tuple;
    for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st)
      if (jlist_push(c, r, l->v[i]) < 0) return -1;
    *out = (jv){.t = JV_LIST, .u.l = r};
    return 0;
  }
  if (obj.t == JV_STR) {
    jstr *str = obj.u.s;
    size_t ncp = jutf8_count(str->s, str->len);
    bool ascii = ncp == str->len;
    if (slice_indexes(c, (int64_t)ncp, a, b, s, &lo, &hi, &st) < 0) return -1;
    jsb sb = {0};
    if (ascii && st == 1) {
      if (hi > lo) jsb_put_jstr(&sb, str, (size_t)lo, (size_t)(hi - lo));
    } else {
      for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) {
        size_t x = ascii ? (size_t)i : jutf8_offset(str->s, str->len, (size_t)i);
        size_t y = ascii ? (size_t)i + 1 : jutf8_offset(str->s, str->len, (size_t)i + 1);
        jsb_put_jstr(&sb, str, x, y - x);
      }
    }
    return jsb_finish(c, &sb, out);
  }
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: '%s' object is not subscriptable", jv_type_name(obj));
}

static bool is_num(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num_of(jv v) { return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b; }
static int64_t int_of(jv v) { return v.t == JV_INT ? v.u.i : (int64_t)v.u.b; }

static const char *op_name(int op) {
  switch (op) {
  case '+': return "+";
  case '-': return "-";
  case '*': return "*";
  case '/': return "/";
  case '%': return "%";
  case JOP_FLOORDIV: return "//";
  case JOP_POW: return "**";
  }
  return "?";
}

int jinja_format_percent(jctx *c, jstr *fmt, jv args, jv *out);

static int binop(jctx *c, int op, jv a, jv b, jv *out) {
  if (a.t == JV_UNDEF) return fail_undef(c, a);
  if (b.t == JV_UNDEF) return fail_undef(c, b);
  if (is_num(a) && is_num(b)) {
    bool fl = a.t == JV_FLOAT || b.t == JV_FLOAT;
    if (!fl) {
      int64_t x = int_of(a), y = int_of(b), r;
      switch (op) {
      case '+':
        if (__builtin_add_overflow(x, y, &r)) goto overflow;
        *out = jv_int(r);
        return 0;
      case '-':
        if (__builtin_sub_overflow(x, y, &r)) goto overflow;
        *out = jv_int(r);
        return 0;
      case '*':
        if (__builtin_mul_overflow(x, y, &r)) goto overflow;
        *out = jv_int(r);
        return 0;
      case JOP_FLOORDIV:
      case '%':
        if (y == 0) return jctx_fail(c, LLORCH_EINVAL, "ZeroDivisionError: integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) goto overflow;
        {
          int64_t q = x / y, m = x % y;
          if (m != 0 && ((m < 0) != (y < 0))) {
            q--;
            m += y;
          }
          *out = jv_int(op == '%' ? m : q);
        }
        return 0;
      case JOP_POW:
        if (y >= 0) {
          int64_t acc = 1, base = x;
          for (int64_t e = y; e > 0; e >>= 1) {
            if ((e & 1) && __builtin_mul_overflow(acc, base, &acc)) goto overflow;
            if (e > 1 && __builtin_mul_overflow(base, base, &base)) goto overflow;
          }
          *out = jv_int(acc);
          return 0;
        }
        break;
      }
    }
    double x = num_of(a), y = num_of(b);
    switch (op) {
    case '+': *out = jv_float(x + y); return 0;
    case '-': *out = jv_float(x - y); return 0;
    case '*': *out = jv_float(x * y); return 0;
    case '/':
      if (y == 0) return jctx_fail(c, LLORCH_EINVAL, "ZeroDivisionError: division by zero");
      *out = jv_float(x / y);
      return 0;
    case JOP_FLOORDIV:
      if (y == 0) return jctx_fail(c, LLORCH_EINVAL, "ZeroDivisionError: float floor division by zero");
      *out = jv_float(floor(x / y));
      return 0;
    case '%':
      if (y == 0) return jctx_fail(c, LLORCH_EINVAL, "ZeroDivisionError: float modulo");
      {
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        *out = jv_float(m);
      }
      return 0;
    case JOP_POW: *out = jv_float(pow(x, y)); return 0;
    }
  }
  if (a.t == JV_STR && b.t == JV_STR && op == '+' && a.u.s->safe != b.u.s->safe) {
    /* Markup + str escapes the plain operand (markupsafe) */
    jv esc;
    if (jstr_escape(c, a.u.s->safe ? b.u.s : a.u.s, &esc) < 0) return -1;
    if (a.u.s->safe) b = esc;
    else a = esc;
  }
  if (a.t == JV_STR && b.t == JV_STR && op == '+') {
    bool safe = a.u.s->safe;
    jsb sb = {0};
    jsb_put_jstr(&sb, a.u.s, 0, a.u.s->len);
    jsb_put_jstr(&sb, b.u.s, 0, b.u.s->len);
    if (jsb_finish(c, &sb, out) < 0) return -1;
    out->u.s->safe = safe;
    return 0;
  }
  if (a.t == JV_LIST && b.t == JV_LIST && op == '+' && !a.u.l->gen && !b.u.l->gen) {
    jlist *l = jlist_new(c, a.u.l->n + b.u.l->n);
    if (!l) return -1;
    for (size_t i = 0; i < a.u.l->n; i++) l->v[l->n++] = a.u.l->v[i];
    for (size_t i = 0; i < b.u.l->n; i++) l->v[l->n++] = b.u.l->v[i];
    l->tuple = a.u.l->tuple;
    *out = (jv){.t = JV_LIST, .u.l = l};
    return 0;
  }
  if (op == '*' && ((a.t == JV_STR && b.t == JV_INT) || (a.t == JV_INT && b.t == JV_STR))) {
    jstr *s = a.t == JV_STR ? a.u.s : b.u.s;
    int64_t n = a.t == JV_INT ? a.u.i : b.u.i;
    if (n > 0 && (uint64_t)n * s->len > c->max_output)
      return jctx_fail(c, LLORCH_ELIMIT, "MemoryError: a repeated string would exceed the output limit");
    jsb sb = {0};
    for (int64_t i = 0; i < n; i++) jsb_put_jstr(&sb, s, 0, s->len);
    return jsb_finish(c, &sb, out);
  }
  if (op == '%' && a.t == JV_STR) return jinja_format_percent(c, a.u.s, b, out);
  if (a.t == JV_STR && op == '+')
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: can only concatenate str (not \"%s\") to str", jv_type_name(b));
  if (a.t == JV_LIST && op == '+')
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: can only concatenate list (not \"%s\") to list", jv_type_name(b));
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: unsupported operand type(s) for %s: '%s' and '%s'", op_name(op),
                   jv_type_name(a), jv_type_name(b));
overflow:
  return jctx_fail(c, LLORCH_EINVAL, "OverflowError: integer result out of range");
}

static int contains(jctx *c, jv needle, jv hay, bool *out) {
  switch (hay.t) {
  case JV_STR:
    if (needle.t != JV_STR) {
      if (needle.t == JV_UNDEF) return fail_undef(c, needle);
      return jctx_fail(c, LLORCH_EINVAL, "TypeError: 'in <string>' requires string as left operand, not %s",
                       jv_type_name(needle));
    }
    *out = needle.u.s->len == 0 ||
           (needle.u.s->len <= hay.u.s->len && memmem(hay.u.s->s, hay.u.s->len, needle.u.s->s, needle.u.s->len));
    return 0;
  case JV_LIST:
    *out = false;
    for (size_t i = 0; i < hay.u.l->n; i++)
      if (jv_equal(needle, hay.u.l->v[i])) {
        *out = true;
        break;
      }
    return 0;
  case JV_DICT:
  case JV_NS: {
    jv tmp;
    *out = jdict_getv(hay.u.d, needle, &tmp);
    return 0;
  }
  case JV_UNDEF: *out = false; return 0;
  default:
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: argument of type '%s' is not iterable", jv_type_name(hay));
  }
}

/* ---- calls ---- */

static int exec_body(jctx *c, jscope *sc, const jnodes *body, jsb *out);

static int call_macro(jctx *c, const jmacro *m, const jargs *a, jv caller, jv *out) {
  const jnode *def = m->def;
  const char *mname = def->kind == JN_MACRO ? def->s : "caller";
  int mlen = def->kind == JN_MACRO ? (int)def->len : 6;
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: macro calls nested deeper than %u", c->max_depth);
  }
  int rc = -1;
  jscope *sc = jscope_new(c, m->closure);
  if (!sc) goto done;
  size_t np = def->targets.n;
  jlist *varargs = jlist_new(c, 0);
  jdict *kwargs = jdict_new(c, 0);
  if (!varargs || !kwargs) goto done;
  bool *given = jarena_alloc(&c->arena, np ? np : 1);
  if (!given) {
    jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    goto done;
  }
  for (size_t i = 0; i < a->npos; i++) {
    if (i < np) {
      if (jscope_set(c, sc, def->targets.v[i]->s, def->targets.v[i]->len, a->pos[i]) < 0) goto done;
      given[i] = true;
    } else if (jlist_push(c, varargs, a->pos[i]) < 0) {
      goto done;
    }
  }
  for (size_t k = 0; k < a->nkw; k++) {
    size_t i = 0;
    size_t kl = strlen(a->kwn[k]);
    for (; i < np; i++)
      if (def->targets.v[i]->len == kl && memcmp(def->targets.v[i]->s, a->kwn[k], kl) == 0) break;
    if (i < np) {
      if (jscope_set(c, sc, def->targets.v[i]->s, def->targets.v[i]->len, a->kwv[k]) < 0) goto done;
      given[i] = true;
    } else {
      jv key;
      if (jv_cstr(c, a->kwn[k], kl, &key) < 0 || jdict_set(c, kwargs, key, a->kwv[k]) < 0) goto done;
    }
  }
  for (size_t i = 0; i < np; i++) {
    if (given[i]) continue;
    jv v;
    if (def->defaults.v[i]) {
      if (jinja_eval(c, sc, def->defaults.v[i], &v) < 0) goto done;
    } else {
      v = jv_undef(undef_msg(c, "parameter '%.*s' was not provided%.*s", def->targets.v[i]->s,
                             def->targets.v[i]->len, "", 0));
    }
    if (jscope_set(c, sc, def->targets.v[i]->s, def->targets.v[i]->len, v) < 0) goto done;
  }
  if (jscope_set(c, sc, "varargs", 7, (jv){.t = JV_LIST, .u.l = varargs}) < 0 ||
      jscope_set(c, sc, "kwargs", 6, (jv){.t = JV_DICT, .u.d = kwargs}) < 0)
    goto done;
  if (caller.t != JV_UNDEF && jscope_set(c, sc, "caller", 6, caller) < 0) goto done;
  (void)mname;
  (void)mlen;
  jsb body = {0};
  int r = exec_body(c, sc, &def->body, &body);
  if (r < 0) {
    jsb_free(&body);
    goto done;
  }
  rc = jsb_finish(c, &body, out);
done:
  c->depth--;
  return rc;
}

int jinja_call(jctx *c, jscope *sc, jv fn, const jv *args, size_t nargs, const char *const *kwn, const jv *kwv,
               size_t nkw, jv *out) {
  jargs a = {.pos = args, .npos = nargs, .kwn = kwn, .kwv = kwv, .nkw = nkw};
  if (fn.t == JV_MACRO) return call_macro(c, fn.u.m, &a, fn.u.m->caller, out);
  if (fn.t == JV_FUNC) return jinja_call_func(c, sc, fn.u.fn, &a, out);
  if (fn.t == JV_UNDEF) return fail_undef(c, fn);
  return jctx_fail(c, LLORCH_EINVAL, "TypeError: '%s' object is not callable", jv_type_name(fn));
}

/* Evaluates the arguments of a call, filter or test node. */
static int eval_args(jctx *c, jscope *sc, const jnode *n, jv **pos, const char ***kwn, jv **kwv) {
  *pos = NULL;
  *kwv = NULL;
  *kwn = NULL;
  size_t np = n->items.n, nk = n->kwnames.n;
  if (np && !(*pos = jarena_alloc(&c->arena, np * sizeof(jv)))) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
  if (nk && (!(*kwv = jarena_alloc(&c->arena, nk * sizeof(jv))) ||
             !(*kwn = jarena_alloc(&c->arena, nk * sizeof(char *)))))
    return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
  for (size_t i = 0; i < np; i++)
    if (jinja_eval(c, sc, n->items.v[i], &(*pos)[i]) < 0) return -1;
  for (size_t i = 0; i < nk; i++) {
    char *k = jarena_alloc(&c->arena, n->kwnames.v[i]->len + 1);
    if (!k) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    memcpy(k, n->kwnames.v[i]->s, n->kwnames.v[i]->len);
    (*kwn)[i] = k;
    if (jinja_eval(c, sc, n->kwvals.v[i], &(*kwv)[i]) < 0) return -1;
  }
  return 0;
}

static int apply_filter(jctx *c, jscope *sc, const jnode *f, jv in, jv *out) {
  jv *pos;
  jv *kwv;
  const char **kwn;
  if (eval_args(c, sc, f, &pos, &kwn, &kwv) < 0) return -1;
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(f->len < 63 ? f->len : 63), f->s);
  jargs a = {.pos = pos, .npos = f->items.n, .kwn = kwn, .kwv = kwv, .nkw = f->kwnames.n};
  return jinja_filter(c, sc, name, in, &a, out);
}

/* ---- expressions ---- */

int jinja_eval(jctx *c, jscope *sc, const jnode *n, jv *out) {
  if (step(c) < 0) return -1;
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: evaluation nested deeper than %u", c->max_depth);
  }
  int rc = 0;
  jv a, b;
  switch (n->kind) {
  case JN_LIT: *out = *n->value; break;
  case JN_NAME:
    if (!jscope_get(sc, n->s, n->len, out))
      *out = jv_undef(undef_msg(c, "'%.*s' is undefined%.*s", n->s, n->len, "", 0));
    break;
  case JN_GETATTR:
    if ((rc = jinja_eval(c, sc, n->a, &a)) == 0) rc = get_attr(c, a, n->s, n->len, out);
    break;
  case JN_GETITEM:
    if ((rc = jinja_eval(c, sc, n->a, &a)) == 0 && (rc = jinja_eval(c, sc, n->b, &b)) == 0)
      rc = get_item(c, a, b, out);
    break;
  case JN_SLICE: {
    jv s0 = jv_none(), s1 = jv_none(), s2 = jv_none();
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    if (n->b && (rc = jinja_eval(c, sc, n->b, &s0)) < 0) break;
    if (n->c && (rc = jinja_eval(c, sc, n->c, &s1)) < 0) break;
    if (n->d && (rc = jinja_eval(c, sc, n->d, &s2)) < 0) break;
    rc = do_slice(c, a, s0, s1, s2, out);
    break;
  }
  case JN_CALL: {
    jv *pos, *kwv;
    const char **kwn;
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    if ((rc = eval_args(c, sc, n, &pos, &kwn, &kwv)) < 0) break;
    rc = jinja_call(c, sc, a, pos, n->items.n, kwn, kwv, n->kwnames.n, out);
    break;
  }
  case JN_FILTER:
    if ((rc = jinja_eval(c, sc, n->a, &a)) == 0) rc = apply_filter(c, sc, n, a, out);
    break;
  case JN_TEST: {
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    jv *pos, *kwv;
    const char **kwn;
    if ((rc = eval_args(c, sc, n, &pos, &kwn, &kwv)) < 0) break;
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(n->len < 63 ? n->len : 63), n->s);
    jargs args = {.pos = pos, .npos = n->items.n, .kwn = kwn, .kwv = kwv, .nkw = n->kwnames.n};
    bool r;
    if ((rc = jinja_test(c, sc, name, a, &args, &r)) == 0) *out = jv_bool(r != n->negate);
    break;
  }
  case JN_BINOP:
    if ((rc = jinja_eval(c, sc, n->a, &a)) == 0 && (rc = jinja_eval(c, sc, n->b, &b)) == 0)
      rc = binop(c, n->op, a, b, out);
    break;
  case JN_UNOP:
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    if (n->op == '!') *out = jv_bool(!jv_truthy(a));
    else if (a.t == JV_INT) {
      if (n->op == '-' && a.u.i == INT64_MIN) rc = jctx_fail(c, LLORCH_EINVAL, "OverflowError: integer out of range");
      else *out = jv_int(n->op == '-' ? -a.u.i : a.u.i);
    } else if (a.t == JV_FLOAT) *out = jv_float(n->op == '-' ? -a.u.f : a.u.f);
    else if (a.t == JV_BOOL) *out = jv_int(n->op == '-' ? -(int64_t)a.u.b : a.u.b);
    else if (a.t == JV_UNDEF) rc = fail_undef(c, a);
    else rc = jctx_fail(c, LLORCH_EINVAL, "TypeError: bad operand type for unary %c: '%s'", n->op, jv_type_name(a));
    break;
  case JN_AND:
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    if (!jv_truthy(a)) *out = a;
    else rc = jinja_eval(c, sc, n->b, out);
    break;
  case JN_OR:
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    if (jv_truthy(a)) *out = a;
    else rc = jinja_eval(c, sc, n->b, out);
    break;
  case JN_COND:
    if ((rc = jinja_eval(c, sc, n->b, &b)) < 0) break;
    if (jv_truthy(b)) rc = jinja_eval(c, sc, n->a, out);
    else if (n->c) rc = jinja_eval(c, sc, n->c, out);
    else *out = jv_undef("UndefinedError: the inline if expression evaluated to false and no else section was defined.");
    break;
  case JN_LIST:
  case JN_TUPLE: {
    jlist *l = jlist_new(c, n->items.n);
    if (!l) {
      rc = -1;
      break;
    }
    l->tuple = n->kind == JN_TUPLE;
    for (size_t i = 0; i < n->items.n && rc == 0; i++) rc = jinja_eval(c, sc, n->items.v[i], &l->v[l->n++]);
    *out = (jv){.t = JV_LIST, .u.l = l};
    break;
  }
  case JN_DICT: {
    jdict *d = jdict_new(c, n->items.n / 2);
    if (!d) {
      rc = -1;
      break;
    }
    for (size_t i = 0; i + 1 < n->items.n && rc == 0; i += 2) {
      if ((rc = jinja_eval(c, sc, n->items.v[i], &a)) == 0 && (rc = jinja_eval(c, sc, n->items.v[i + 1], &b)) == 0)
        rc = jdict_set(c, d, a, b);
    }
    *out = (jv){.t = JV_DICT, .u.d = d};
    break;
  }
  case JN_COMPARE: {
    if ((rc = jinja_eval(c, sc, n->a, &a)) < 0) break;
    bool result = true;
    for (size_t i = 0; i < n->items.n && result; i++) {
      if ((rc = jinja_eval(c, sc, n->items.v[i], &b)) < 0) break;
      int op = n->ops[i], cmp = 0;
      bool r = false;
      switch (op) {
      case JOP_EQ: r = jv_equal(a, b); break;
      case JOP_NE: r = !jv_equal(a, b); break;
      case 'i':
      case 'n':
        if ((rc = contains(c, a, b, &r)) < 0) break;
        if (op == 'n') r = !r;
        break;
      default:
        if ((rc = jv_compare(c, a, b, &cmp)) < 0) break;
        r = op == '<' ? cmp < 0 : op == '>' ? cmp > 0 : op == JOP_LE ? cmp <= 0 : cmp >= 0;
      }
      if (rc < 0) break;
      result = r;
      a = b;
    }
    if (rc == 0) *out = jv_bool(result);
    break;
  }
  case JN_CONCAT: {
    jsb sb = {0};
    for (size_t i = 0; i < n->items.n && rc == 0; i++) {
      if ((rc = jinja_eval(c, sc, n->items.v[i], &a)) == 0) rc = jv_write_str(c, &sb, a);
    }
    if (rc == 0) rc = jsb_finish(c, &sb, out);
    else jsb_free(&sb);
    break;
  }
  default: rc = jctx_fail(c, LLORCH_EINVAL, "TemplateRuntimeError: a statement where an expression belongs");
  }
  c->depth--;
  return rc < 0 ? -1 : 0;
}

/* ---- statements ---- */

static int assign_targets(jctx *c, jscope *sc, const jnodes *targets, jv v) {
  if (targets->n == 1) return jscope_set(c, sc, targets->v[0]->s, targets->v[0]->len, v);
  jlist *items;
  if (v.t == JV_LIST && !v.u.l->gen) items = v.u.l;
  else if (jinja_iterate(c, v, &items) < 0) return -1;
  if (items->n != targets->n)
    return jctx_fail(c, LLORCH_EINVAL, "ValueError: %s values to unpack (expected %zu, got %zu)",
                     items->n > targets->n ? "too many" : "not enough", targets->n, items->n);
  for (size_t i = 0; i < targets->n; i++)
    if (jscope_set(c, sc, targets->v[i]->s, targets->v[i]->len, items->v[i]) < 0) return -1;
  return 0;
}

static int check_output(jctx *c, const jsb *out) {
  if (out->oom) return jctx_fail(c, LLORCH_ENOMEM, "MemoryError: out of memory");
  if (out->len > c->max_output)
    return jctx_fail(c, LLORCH_ELIMIT, "TemplateRuntimeError: the output exceeded %zu bytes", c->max_output);
  return 0;
}

static int exec_for(jctx *c, jscope *sc, const jnode *n, jsb *out) {
  jv it;
  jlist *items;
  if (jinja_eval(c, sc, n->a, &it) < 0) return -1;
  if (it.t == JV_NONE || it.t == JV_INT || it.t == JV_FLOAT || it.t == JV_BOOL)
    return jctx_fail(c, LLORCH_EINVAL, "TypeError: '%s' object is not iterable", jv_type_name(it));
  if (jinja_iterate(c, it, &items) < 0) return -1;
  if (n->b) {
    /* {% for x in xs if cond %}: filtered before the loop, so loop.length counts kept items */
    jlist *kept = jlist_new(c, items->n);
    if (!kept) return -1;
    for (size_t i = 0; i < items->n; i++) {
      jscope *fs = jscope_new(c, sc);
      jv cond;
      if (!fs || assign_targets(c, fs, &n->targets, items->v[i]) < 0 || jinja_eval(c, fs, n->b, &cond) < 0)
        return -1;
      if (jv_truthy(cond)) kept->v[kept->n++] = items->v[i];
    }
    items = kept;
  }
  if (items->n == 0) return exec_body(c, sc, &n->else_body, out);
  jloop *loop = jarena_alloc(&c->arena, sizeof *loop);
  if (!loop) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
  loop->items = items;
  loop->depth = 1;
  jv outer;
  if (jscope_get(sc, "loop", 4, &outer) && outer.t == JV_LOOP) loop->depth = outer.u.loop->depth + 1;
  loop->last_changed = jv_undef("");
  jscope *body_sc = NULL;
  for (size_t i = 0; i < items->n; i++) {
    if (step(c) < 0) return -1; /* an empty body still costs a step */
    loop->index0 = i;
    /* each iteration starts from an empty scope; the last one's memory is
     * reused unless a macro defined in it still refers to it */
    if (!body_sc || body_sc->captured) {
      if (!(body_sc = jscope_new(c, sc))) return -1;
    } else {
      body_sc->n = 0;
    }
    if (assign_targets(c, body_sc, &n->targets, items->v[i]) < 0 ||
        jscope_set(c, body_sc, "loop", 4, (jv){.t = JV_LOOP, .u.loop = loop}) < 0)
      return -1;
    int r = exec_body(c, body_sc, &n->body, out);
    if (r < 0) return -1;
    if (r == EXEC_BREAK) break;
  }
  return 0;
}

static int exec_node(jctx *c, jscope *sc, const jnode *n, jsb *out) {
  if (step(c) < 0) return -1;
  jv v;
  switch (n->kind) {
  case JN_TEXT: jsb_put(out, n->s, n->len, false); return check_output(c, out);
  case JN_OUTPUT:
    if (jinja_eval(c, sc, n->a, &v) < 0 || jv_write_str(c, out, v) < 0) return -1;
    return check_output(c, out);
  case JN_IF:
    if (jinja_eval(c, sc, n->a, &v) < 0) return -1;
    return exec_body(c, sc, jv_truthy(v) ? &n->body : &n->else_body, out);
  case JN_FOR: return exec_for(c, sc, n, out);
  case JN_SET:
    if (jinja_eval(c, sc, n->a, &v) < 0) return -1;
    if (n->c) {
      jv ns;
      if (!jscope_get(sc, n->c->a->s, n->c->a->len, &ns) || ns.t != JV_NS)
        return jctx_fail(c, LLORCH_EINVAL, "TemplateRuntimeError: cannot assign attribute on non-namespace object");
      jv key;
      if (jv_cstr(c, n->c->s, n->c->len, &key) < 0) return -1;
      return jdict_set(c, ns.u.d, key, v);
    }
    return assign_targets(c, sc, &n->targets, v);
  case JN_SET_BLOCK: {
    jsb body = {0};
    if (exec_body(c, sc, &n->body, &body) < 0 || jsb_finish(c, &body, &v) < 0) {
      jsb_free(&body);
      return -1;
    }
    if (n->b) {
      /* the filter chain's innermost input is the body */
      const jnode *chain[32];
      size_t k = 0;
      for (const jnode *f = n->b; f && k < 32; f = f->a) chain[k++] = f;
      while (k-- > 0)
        if (apply_filter(c, sc, chain[k], v, &v) < 0) return -1;
    }
    return jscope_set(c, sc, n->targets.v[0]->s, n->targets.v[0]->len, v);
  }
  case JN_FILTER_BLOCK: {
    jsb body = {0};
    if (exec_body(c, sc, &n->body, &body) < 0 || jsb_finish(c, &body, &v) < 0) {
      jsb_free(&body);
      return -1;
    }
    const jnode *chain[32];
    size_t k = 0;
    for (const jnode *f = n->b; f && k < 32; f = f->a) chain[k++] = f;
    while (k-- > 0)
      if (apply_filter(c, sc, chain[k], v, &v) < 0) return -1;
    if (jv_write_str(c, out, v) < 0) return -1;
    return check_output(c, out);
  }
  case JN_MACRO: {
    jmacro *m = jarena_alloc(&c->arena, sizeof *m);
    if (!m) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    m->def = n;
    m->closure = sc;
    for (jscope *s2 = sc; s2; s2 = s2->parent) s2->captured = true;
    m->caller = jv_undef("UndefinedError: 'caller' is undefined");
    return jscope_set(c, sc, n->s, n->len, (jv){.t = JV_MACRO, .u.m = m});
  }
  case JN_CALL_BLOCK: {
    jmacro *cm = jarena_alloc(&c->arena, sizeof *cm);
    if (!cm) return jctx_fail(c, LLORCH_ELIMIT, MEM_MSG);
    cm->def = n;
    cm->closure = sc;
    for (jscope *s2 = sc; s2; s2 = s2->parent) s2->captured = true;
    cm->caller = jv_undef("UndefinedError: 'caller' is undefined");
    const jnode *call = n->a;
    jv fn, *pos, *kwv;
    const char **kwn;
    if (jinja_eval(c, sc, call->a, &fn) < 0 || eval_args(c, sc, call, &pos, &kwn, &kwv) < 0) return -1;
    if (fn.t != JV_MACRO) return jctx_fail(c, LLORCH_EINVAL, "TypeError: {%% call %%} needs a macro");
    jargs a = {.pos = pos, .npos = call->items.n, .kwn = kwn, .kwv = kwv, .nkw = call->kwnames.n};
    if (call_macro(c, fn.u.m, &a, (jv){.t = JV_MACRO, .u.m = cm}, &v) < 0) return -1;
    if (jv_write_str(c, out, v) < 0) return -1;
    return check_output(c, out);
  }
  case JN_BREAK: return EXEC_BREAK;
  case JN_CONTINUE: return EXEC_CONTINUE;
  case JN_WITH: {
    if (n->op == 'g') return exec_body(c, sc, &n->body, out); /* {% generation %} */
    jscope *ws = jscope_new(c, sc);
    if (!ws) return -1;
    for (size_t i = 0; i < n->targets.n; i++) {
      if (jinja_eval(c, sc, n->items.v[i], &v) < 0 ||
          jscope_set(c, ws, n->targets.v[i]->s, n->targets.v[i]->len, v) < 0)
        return -1;
    }
    return exec_body(c, ws, &n->body, out);
  }
  default: return jctx_fail(c, LLORCH_EINVAL, "TemplateRuntimeError: an expression where a statement belongs");
  }
}

static int exec_body(jctx *c, jscope *sc, const jnodes *body, jsb *out) {
  if (++c->depth > c->max_depth) {
    c->depth--;
    return jctx_fail(c, LLORCH_ELIMIT, "RecursionError: blocks nested deeper than %u", c->max_depth);
  }
  int r = 0;
  for (size_t i = 0; i < body->n; i++) {
    r = exec_node(c, sc, body->v[i], out);
    if (r != 0) break;
  }
  c->depth--;
  return r;
}

int jinja_exec(jctx *c, jscope *sc, const jnodes *body, jsb *out);
int jinja_exec(jctx *c, jscope *sc, const jnodes *body, jsb *out) {
  int r = exec_body(c, sc, body, out);
  if (r > 0) return jctx_fail(c, LLORCH_EINVAL, "TemplateSyntaxError: break or continue outside a loop");
  return r;
}

/* macro call from a filter (map with a macro is not jinja, but caller() is) */
int jinja_call_macro(jctx *c, const jmacro *m, const jargs *a, jv *out);
int jinja_call_macro(jctx *c, const jmacro *m, const jargs *a, jv *out) {
  return call_macro(c, m, a, m->caller, out);
}
