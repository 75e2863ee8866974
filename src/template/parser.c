/*
 * Jinja parser: tokens -> AST, following jinja2's grammar and operator
 * precedence (condexpr < or < and < not < compare < +,- < ~ < *,/,//,% <
 * ** < unary -,+ < postfix (. [] ()) then filters and tests).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-impl.h"

#define PARSE_MAX_DEPTH 200

typedef struct parser {
  jarena *a;
  const jtok *t;
  size_t n, i;
  unsigned depth;
  llorch_errmsg *em;
  int err;
} parser;

/* growable node list during parsing (moved into the arena when done) */
typedef struct nvec {
  jnode **v;
  size_t n, cap;
} nvec;

static const jtok *cur(parser *P) { return &P->t[P->i]; }

static int p_fail(parser *P, const char *fmt, const char *what) {
  if (P->err) return -1;
  char msg[256];
  snprintf(msg, sizeof msg, fmt, what);
  P->err = LLORCH_EFORMAT;
  llorch_errmsg_set(P->em, LLORCH_EFORMAT, "TemplateSyntaxError: %s (line %d)", msg, cur(P)->line);
  return -1;
}

static int p_oom(parser *P) {
  if (!P->err) {
    P->err = LLORCH_ENOMEM;
    llorch_errmsg_set(P->em, LLORCH_ENOMEM, "out of memory compiling a template");
  }
  return -1;
}

static bool is_name(const jtok *t, const char *name) {
  return t->type == JT_NAME && t->len == strlen(name) && memcmp(t->s, name, t->len) == 0;
}
static bool is_op(const jtok *t, int op) { return t->type == JT_OP && t->op == op; }

static bool accept_name(parser *P, const char *name) {
  if (!is_name(cur(P), name)) return false;
  P->i++;
  return true;
}
static bool accept_op(parser *P, int op) {
  if (!is_op(cur(P), op)) return false;
  P->i++;
  return true;
}

static const char *tok_desc(const jtok *t) {
  switch (t->type) {
  case JT_EOF: return "end of template";
  case JT_DATA: return "template data";
  case JT_VAR_BEGIN: return "'{{'";
  case JT_VAR_END: return "'}}'";
  case JT_BLOCK_BEGIN: return "'{%'";
  case JT_BLOCK_END: return "'%}'";
  case JT_NAME: return "a name";
  case JT_STRING: return "a string";
  case JT_INT: return "an integer";
  case JT_FLOAT: return "a float";
  case JT_OP: return "an operator";
  }
  return "?";
}

static int expect_op(parser *P, int op) {
  if (accept_op(P, op)) return 0;
  char want[8] = {(char)op, 0};
  char msg[64];
  snprintf(msg, sizeof msg, "expected '%s', got %%s", want);
  return p_fail(P, msg, tok_desc(cur(P)));
}

static int expect_block_end(parser *P) {
  if (cur(P)->type == JT_BLOCK_END) {
    P->i++;
    return 0;
  }
  return p_fail(P, "expected end of statement block, got %s", tok_desc(cur(P)));
}

static jnode *node(parser *P, jnode_kind k) {
  jnode *n = jarena_alloc(P->a, sizeof *n);
  if (!n) {
    p_oom(P);
    return NULL;
  }
  n->kind = k;
  n->line = cur(P)->line;
  return n;
}

static int nv_push(parser *P, nvec *v, jnode *n) {
  if (v->n == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 8;
    jnode **nv = realloc(v->v, cap * sizeof *nv);
    if (!nv) return p_oom(P);
    v->v = nv;
    v->cap = cap;
  }
  v->v[v->n++] = n;
  return 0;
}

static int nv_take(parser *P, nvec *v, jnodes *out) {
  out->n = v->n;
  out->v = NULL;
  if (v->n) {
    out->v = jarena_alloc(P->a, v->n * sizeof *out->v);
    if (!out->v) {
      free(v->v);
      *v = (nvec){0};
      return p_oom(P);
    }
    memcpy(out->v, v->v, v->n * sizeof *out->v);
  }
  free(v->v);
  *v = (nvec){0};
  return 0;
}

static jnode *lit(parser *P, jv v) {
  jnode *n = node(P, JN_LIT);
  if (!n) return NULL;
  n->value = jarena_alloc(P->a, sizeof(jv));
  if (!n->value) {
    p_oom(P);
    return NULL;
  }
  *n->value = v;
  return n;
}

/* ---- expressions ---- */

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, bool with_filter);

static bool enter(parser *P) {
  if (++P->depth > PARSE_MAX_DEPTH) {
    if (!P->err) {
      P->err = LLORCH_ELIMIT;
      llorch_errmsg_set(P->em, LLORCH_ELIMIT, "TemplateSyntaxError: expressions nested deeper than %d (line %d)",
                        PARSE_MAX_DEPTH, cur(P)->line);
    }
    return false;
  }
  return true;
}

/* (args) after the '(' was consumed: positional and name=value. */
static int parse_args(parser *P, jnode *call) {
  nvec pos = {0}, kwn = {0}, kwv = {0};
  while (!accept_op(P, ')')) {
    if (pos.n + kwn.n > 0 && expect_op(P, ',') < 0) goto fail;
    if (accept_op(P, ')')) break;
    if (cur(P)->type == JT_NAME && is_op(&P->t[P->i + 1], '=')) {
      jnode *k = node(P, JN_NAME);
      if (!k) goto fail;
      k->s = cur(P)->s;
      k->len = cur(P)->len;
      P->i += 2;
      jnode *v = parse_expr(P);
      if (!v || nv_push(P, &kwn, k) < 0 || nv_push(P, &kwv, v) < 0) goto fail;
    } else {
      if (kwn.n) {
        p_fail(P, "%s", "positional argument after a keyword argument");
        goto fail;
      }
      jnode *v = parse_expr(P);
      if (!v || nv_push(P, &pos, v) < 0) goto fail;
    }
  }
  if (nv_take(P, &pos, &call->items) < 0 || nv_take(P, &kwn, &call->kwnames) < 0 ||
      nv_take(P, &kwv, &call->kwvals) < 0)
    goto fail;
  return 0;
fail:
  free(pos.v);
  free(kwn.v);
  free(kwv.v);
  return -1;
}

static jnode *parse_primary(parser *P) {
  const jtok *t = cur(P);
  jnode *n = NULL;
  if (t->type == JT_NAME) {
    P->i++;
    if (is_name(t, "true") || is_name(t, "True")) return lit(P, jv_bool(true));
    if (is_name(t, "false") || is_name(t, "False")) return lit(P, jv_bool(false));
    if (is_name(t, "none") || is_name(t, "None")) return lit(P, jv_none());
    if (!(n = node(P, JN_NAME))) return NULL;
    n->s = t->s;
    n->len = t->len;
    return n;
  }
  if (t->type == JT_STRING) {
    /* adjacent literals concatenate: 'a' "b" */
    size_t total = 0, k = P->i;
    while (P->t[k].type == JT_STRING) total += P->t[k++].len;
    char *s = jarena_alloc(P->a, sizeof(jstr) + total + 1);
    if (!s) {
      p_oom(P);
      return NULL;
    }
    jstr *js = (jstr *)s;
    js->len = total;
    size_t off = 0;
    while (cur(P)->type == JT_STRING) {
      memcpy(js->s + off, cur(P)->s, cur(P)->len);
      off += cur(P)->len;
      P->i++;
    }
    js->s[total] = 0;
    return lit(P, jv_str(js));
  }
  if (t->type == JT_INT) {
    P->i++;
    return lit(P, jv_int(t->i));
  }
  if (t->type == JT_FLOAT) {
    P->i++;
    return lit(P, jv_float(t->f));
  }
  if (is_op(t, '(')) {
    P->i++;
    if (accept_op(P, ')')) {
      n = node(P, JN_TUPLE);
      return n;
    }
    jnode *first = parse_expr(P);
    if (!first) return NULL;
    if (accept_op(P, ')')) return first;
    nvec items = {0};
    if (nv_push(P, &items, first) < 0) return NULL;
    while (accept_op(P, ',')) {
      if (is_op(cur(P), ')')) break;
      jnode *e = parse_expr(P);
      if (!e || nv_push(P, &items, e) < 0) {
        free(items.v);
        return NULL;
      }
    }
    if (expect_op(P, ')') < 0 || !(n = node(P, JN_TUPLE)) || nv_take(P, &items, &n->items) < 0) {
      free(items.v);
      return NULL;
    }
    return n;
  }
  if (is_op(t, '[')) {
    P->i++;
    nvec items = {0};
    while (!accept_op(P, ']')) {
      if (items.n && expect_op(P, ',') < 0) goto list_fail;
      if (accept_op(P, ']')) break;
      jnode *e = parse_expr(P);
      if (!e || nv_push(P, &items, e) < 0) goto list_fail;
    }
    if (!(n = node(P, JN_LIST)) || nv_take(P, &items, &n->items) < 0) goto list_fail;
    return n;
  list_fail:
    free(items.v);
    return NULL;
  }
  if (is_op(t, '{')) {
    P->i++;
    nvec items = {0};
    while (!accept_op(P, '}')) {
      if (items.n && expect_op(P, ',') < 0) goto dict_fail;
      if (accept_op(P, '}')) break;
      jnode *k = parse_expr(P);
      if (!k || expect_op(P, ':') < 0) goto dict_fail;
      jnode *v = parse_expr(P);
      if (!v || nv_push(P, &items, k) < 0 || nv_push(P, &items, v) < 0) goto dict_fail;
    }
    if (!(n = node(P, JN_DICT)) || nv_take(P, &items, &n->items) < 0) goto dict_fail;
    return n;
  dict_fail:
    free(items.v);
    return NULL;
  }
  p_fail(P, "unexpected %s", tok_desc(t));
  return NULL;
}

static jnode *parse_postfix(parser *P, jnode *n) {
  while (n) {
    if (accept_op(P, '.')) {
      const jtok *t = cur(P);
      if (t->type == JT_NAME) {
        jnode *g = node(P, JN_GETATTR);
        if (!g) return NULL;
        g->a = n;
        g->s = t->s;
        g->len = t->len;
        P->i++;
        n = g;
      } else if (t->type == JT_INT) {
        jnode *g = node(P, JN_GETITEM);
        if (!g) return NULL;
        g->a = n;
        P->i++;
        if (!(g->b = lit(P, jv_int(t->i)))) return NULL;
        n = g;
      } else {
        p_fail(P, "expected a name after '.', got %s", tok_desc(t));
        return NULL;
      }
    } else if (accept_op(P, '[')) {
      jnode *parts[3] = {0};
      int nparts = 0;
      bool slice = false;
      for (;;) {
        if (is_op(cur(P), ':')) {
          slice = true;
          P->i++;
          if (++nparts > 2) {
            p_fail(P, "%s", "too many ':' in a slice");
            return NULL;
          }
          continue;
        }
        if (is_op(cur(P), ']')) break;
        if (parts[nparts]) {
          p_fail(P, "expected ']' or ':', got %s", tok_desc(cur(P)));
          return NULL;
        }
        if (!(parts[nparts] = parse_expr(P))) return NULL;
      }
      P->i++;
      jnode *g = node(P, slice ? JN_SLICE : JN_GETITEM);
      if (!g) return NULL;
      g->a = n;
      if (slice) {
        g->b = parts[0];
        g->c = parts[1];
        g->d = parts[2];
      } else {
        if (!parts[0]) {
          p_fail(P, "%s", "empty subscript");
          return NULL;
        }
        g->b = parts[0];
      }
      n = g;
    } else if (accept_op(P, '(')) {
      jnode *c = node(P, JN_CALL);
      if (!c) return NULL;
      c->a = n;
      if (parse_args(P, c) < 0) return NULL;
      n = c;
    } else {
      break;
    }
  }
  return n;
}

static jnode *parse_filter_name(parser *P, jnode *in, jnode_kind kind) {
  const jtok *t = cur(P);
  if (t->type != JT_NAME) {
    p_fail(P, "expected a filter or test name, got %s", tok_desc(t));
    return NULL;
  }
  jnode *f = node(P, kind);
  if (!f) return NULL;
  f->a = in;
  f->s = t->s;
  f->len = t->len;
  P->i++;
  /* dotted names (jinja allows them) are kept as one name */
  while (is_op(cur(P), '.') && P->t[P->i + 1].type == JT_NAME) {
    f->len = (size_t)(P->t[P->i + 1].s + P->t[P->i + 1].len - f->s);
    P->i += 2;
  }
  return f;
}

static jnode *parse_filters(parser *P, jnode *n) {
  while (n) {
    if (accept_op(P, '|')) {
      jnode *f = parse_filter_name(P, n, JN_FILTER);
      if (!f) return NULL;
      if (accept_op(P, '(') && parse_args(P, f) < 0) return NULL;
      n = f;
    } else if (is_name(cur(P), "is")) {
      P->i++;
      bool neg = accept_name(P, "not");
      jnode *f = parse_filter_name(P, n, JN_TEST);
      if (!f) return NULL;
      f->negate = neg;
      const jtok *t = cur(P);
      if (accept_op(P, '(')) {
        if (parse_args(P, f) < 0) return NULL;
      } else if ((t->type == JT_NAME && !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and") &&
                  !is_name(t, "if") && !is_name(t, "in") && !is_name(t, "not") && !is_name(t, "is")) ||
                 t->type == JT_STRING || t->type == JT_INT || t->type == JT_FLOAT || is_op(t, '[') ||
                 is_op(t, '{') || (is_op(t, '-') && false)) {
        /* one argument without parentheses: x is divisibleby 3 */
        jnode *arg = parse_postfix(P, parse_primary(P));
        if (!arg) return NULL;
        nvec items = {0};
        if (nv_push(P, &items, arg) < 0 || nv_take(P, &items, &f->items) < 0) return NULL;
      }
      n = f;
    } else if (accept_op(P, '(')) {
      jnode *c = node(P, JN_CALL);
      if (!c) return NULL;
      c->a = n;
      if (parse_args(P, c) < 0) return NULL;
      n = c;
    } else {
      break;
    }
  }
  return n;
}

static jnode *parse_unary(parser *P, bool with_filter) {
  if (!enter(P)) return NULL;
  jnode *n;
  if (is_op(cur(P), '-') || is_op(cur(P), '+')) {
    int op = cur(P)->op;
    P->i++;
    jnode *inner = parse_unary(P, false);
    if (!inner || !(n = node(P, JN_UNOP))) {
      P->depth--;
      return NULL;
    }
    n->op = op;
    n->a = inner;
  } else {
    n = parse_postfix(P, parse_primary(P));
  }
  if (with_filter) n = parse_filters(P, n);
  P->depth--;
  return n;
}

static jnode *binop(parser *P, int op, jnode *a, jnode *b) {
  if (!a || !b) return NULL;
  jnode *n = node(P, JN_BINOP);
  if (!n) return NULL;
  n->op = op;
  n->a = a;
  n->b = b;
  return n;
}

static jnode *parse_pow(parser *P) {
  jnode *l = parse_unary(P, true);
  while (l && accept_op(P, JOP_POW)) l = binop(P, JOP_POW, l, parse_unary(P, true));
  return l;
}

static jnode *parse_math2(parser *P) {
  jnode *l = parse_pow(P);
  while (l) {
    int op = cur(P)->type == JT_OP ? cur(P)->op : 0;
    if (op != '*' && op != '/' && op != '%' && op != JOP_FLOORDIV) break;
    P->i++;
    l = binop(P, op, l, parse_pow(P));
  }
  return l;
}

static jnode *parse_concat(parser *P) {
  jnode *first = parse_math2(P);
  if (!first || !is_op(cur(P), '~')) return first;
  nvec items = {0};
  if (nv_push(P, &items, first) < 0) return NULL;
  while (accept_op(P, '~')) {
    jnode *e = parse_math2(P);
    if (!e || nv_push(P, &items, e) < 0) {
      free(items.v);
      return NULL;
    }
  }
  jnode *n = node(P, JN_CONCAT);
  if (!n || nv_take(P, &items, &n->items) < 0) {
    free(items.v);
    return NULL;
  }
  return n;
}

static jnode *parse_math1(parser *P) {
  jnode *l = parse_concat(P);
  while (l && (is_op(cur(P), '+') || is_op(cur(P), '-'))) {
    int op = cur(P)->op;
    P->i++;
    l = binop(P, op, l, parse_concat(P));
  }
  return l;
}

/* comparison operators: JOP_EQ.. or 'i' (in), 'n' (not in) */
static int compare_op(parser *P) {
  const jtok *t = cur(P);
  if (t->type == JT_OP && (t->op == JOP_EQ || t->op == JOP_NE || t->op == JOP_LE || t->op == JOP_GE ||
                           t->op == '<' || t->op == '>')) {
    P->i++;
    return t->op;
  }
  if (is_name(t, "in")) {
    P->i++;
    return 'i';
  }
  if (is_name(t, "not") && is_name(&P->t[P->i + 1], "in")) {
    P->i += 2;
    return 'n';
  }
  return 0;
}

static jnode *parse_compare(parser *P) {
  jnode *l = parse_math1(P);
  if (!l) return NULL;
  int op = compare_op(P);
  if (!op) return l;
  nvec items = {0};
  int ops[64];
  size_t nops = 0;
  while (op) {
    if (nops == 64) {
      p_fail(P, "%s", "too many chained comparisons");
      goto fail;
    }
    ops[nops++] = op;
    jnode *r = parse_math1(P);
    if (!r || nv_push(P, &items, r) < 0) goto fail;
    op = compare_op(P);
  }
  jnode *n = node(P, JN_COMPARE);
  if (!n) goto fail;
  n->a = l;
  n->ops = jarena_alloc(P->a, nops * sizeof(int));
  if (!n->ops) {
    p_oom(P);
    goto fail;
  }
  memcpy(n->ops, ops, nops * sizeof(int));
  if (nv_take(P, &items, &n->items) < 0) goto fail;
  return n;
fail:
  free(items.v);
  return NULL;
}

static jnode *parse_not(parser *P) {
  if (is_name(cur(P), "not")) {
    P->i++;
    if (!enter(P)) return NULL;
    jnode *inner = parse_not(P);
    P->depth--;
    if (!inner) return NULL;
    jnode *n = node(P, JN_UNOP);
    if (!n) return NULL;
    n->op = '!';
    n->a = inner;
    return n;
  }
  return parse_compare(P);
}

static jnode *parse_and(parser *P) {
  jnode *l = parse_not(P);
  while (l && accept_name(P, "and")) {
    jnode *n = node(P, JN_AND);
    if (!n) return NULL;
    n->a = l;
    if (!(n->b = parse_not(P))) return NULL;
    l = n;
  }
  return l;
}

static jnode *parse_or(parser *P) {
  jnode *l = parse_and(P);
  while (l && accept_name(P, "or")) {
    jnode *n = node(P, JN_OR);
    if (!n) return NULL;
    n->a = l;
    if (!(n->b = parse_and(P))) return NULL;
    l = n;
  }
  return l;
}

static jnode *parse_expr(parser *P) {
  if (!enter(P)) return NULL;
  jnode *l = parse_or(P);
  while (l && accept_name(P, "if")) {
    jnode *n = node(P, JN_COND);
    if (!n) break;
    n->a = l;
    if (!(n->b = parse_or(P))) {
      l = NULL;
      break;
    }
    if (accept_name(P, "else") && !(n->c = parse_expr(P))) {
      l = NULL;
      break;
    }
    l = n;
  }
  P->depth--;
  return l;
}

/* ---- statements ---- */

static int parse_body(parser *P, nvec *body, const char *const *ends, const char **which);

static int name_list(parser *P, jnodes *out, bool allow_attr, jnode **attr_target) {
  nvec v = {0};
  bool paren = accept_op(P, '(');
  do {
    if (paren && is_op(cur(P), ')')) break;
    const jtok *t = cur(P);
    if (t->type != JT_NAME) {
      free(v.v);
      return p_fail(P, "expected a name to assign to, got %s", tok_desc(t));
    }
    jnode *n = node(P, JN_NAME);
    if (!n) goto fail;
    n->s = t->s;
    n->len = t->len;
    P->i++;
    if (allow_attr && v.n == 0 && is_op(cur(P), '.')) {
      /* {% set ns.attr = ... %} */
      P->i++;
      if (cur(P)->type != JT_NAME) {
        free(v.v);
        return p_fail(P, "expected an attribute name, got %s", tok_desc(cur(P)));
      }
      jnode *g = node(P, JN_GETATTR);
      if (!g) goto fail;
      g->a = n;
      g->s = cur(P)->s;
      g->len = cur(P)->len;
      P->i++;
      *attr_target = g;
      free(v.v);
      return 0;
    }
    if (nv_push(P, &v, n) < 0) goto fail;
  } while (accept_op(P, ','));
  if (paren && expect_op(P, ')') < 0) goto fail;
  return nv_take(P, &v, out);
fail:
  free(v.v);
  return -1;
}

/* (a, b=1, ...) for macro and call-block parameters */
static int parse_params(parser *P, jnode *n) {
  nvec names = {0}, defs = {0};
  if (accept_op(P, '(')) {
    while (!accept_op(P, ')')) {
      if (names.n && expect_op(P, ',') < 0) goto fail;
      if (accept_op(P, ')')) break;
      if (cur(P)->type != JT_NAME) {
        p_fail(P, "expected a parameter name, got %s", tok_desc(cur(P)));
        goto fail;
      }
      jnode *nm = node(P, JN_NAME);
      if (!nm) goto fail;
      nm->s = cur(P)->s;
      nm->len = cur(P)->len;
      P->i++;
      jnode *d = NULL;
      if (accept_op(P, '=') && !(d = parse_expr(P))) goto fail;
      if (nv_push(P, &names, nm) < 0 || nv_push(P, &defs, d) < 0) goto fail;
    }
  }
  if (nv_take(P, &names, &n->targets) < 0 || nv_take(P, &defs, &n->defaults) < 0) goto fail;
  return 0;
fail:
  free(names.v);
  free(defs.v);
  return -1;
}

static jnode *parse_filter_chain(parser *P) {
  jnode *n = NULL;
  do {
    jnode *f = parse_filter_name(P, n, JN_FILTER);
    if (!f) return NULL;
    if (accept_op(P, '(') && parse_args(P, f) < 0) return NULL;
    n = f;
  } while (accept_op(P, '|'));
  return n;
}

static int take_body(parser *P, jnode *n, jnodes *dst, const char *const *ends, const char **which) {
  nvec b = {0};
  if (parse_body(P, &b, ends, which) < 0) {
    free(b.v);
    return -1;
  }
  (void)n;
  return nv_take(P, &b, dst);
}

static bool name_eq(const char *s, size_t len, const char *lit) { return len == strlen(lit) && memcmp(s, lit, len) == 0; }

/* The statement after '{%' and its name; consumes through its body and end tag. */
static jnode *parse_statement(parser *P) {
  const jtok *t = cur(P);
  if (t->type != JT_NAME) {
    p_fail(P, "expected a statement name, got %s", tok_desc(t));
    return NULL;
  }
  P->i++;
  const char *which = NULL;
  jnode *n = NULL;
  if (name_eq(t->s, t->len, "if")) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    if (!(n = node(P, JN_IF)) || !(n->a = parse_expr(P)) || expect_block_end(P) < 0) return NULL;
    if (take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    if (strcmp(which, "elif") == 0) {
      /* elif chains nest as else { if } */
      P->i--; /* re-read 'elif' as 'if' */
      jnode *inner = parse_statement(P);
      if (!inner) return NULL;
      n->else_body.v = jarena_alloc(P->a, sizeof(jnode *));
      if (!n->else_body.v) {
        p_oom(P);
        return NULL;
      }
      n->else_body.v[0] = inner;
      n->else_body.n = 1;
      return n; /* the inner if consumed endif */
    }
    if (strcmp(which, "else") == 0) {
      static const char *const ends2[] = {"endif", NULL};
      if (expect_block_end(P) < 0 || take_body(P, n, &n->else_body, ends2, &which) < 0) return NULL;
    }
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "elif")) {
    /* reached only through the re-read above */
    if (!(n = node(P, JN_IF)) || !(n->a = parse_expr(P)) || expect_block_end(P) < 0) return NULL;
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    if (take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    if (strcmp(which, "elif") == 0) {
      P->i--;
      jnode *inner = parse_statement(P);
      if (!inner) return NULL;
      n->else_body.v = jarena_alloc(P->a, sizeof(jnode *));
      if (!n->else_body.v) {
        p_oom(P);
        return NULL;
      }
      n->else_body.v[0] = inner;
      n->else_body.n = 1;
      return n;
    }
    if (strcmp(which, "else") == 0) {
      static const char *const ends2[] = {"endif", NULL};
      if (expect_block_end(P) < 0 || take_body(P, n, &n->else_body, ends2, &which) < 0) return NULL;
    }
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "for")) {
    if (!(n = node(P, JN_FOR)) || name_list(P, &n->targets, false, NULL) < 0) return NULL;
    if (!accept_name(P, "in")) {
      p_fail(P, "expected 'in' in a for loop, got %s", tok_desc(cur(P)));
      return NULL;
    }
    /* the iterable is an or-expression: a trailing 'if' filters items */
    if (!(n->a = parse_or(P))) return NULL;
    if (accept_name(P, "if") && !(n->b = parse_or(P))) return NULL;
    if (accept_name(P, "recursive")) {
      p_fail(P, "%s", "recursive loops are not supported");
      return NULL;
    }
    static const char *const ends[] = {"else", "endfor", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    if (strcmp(which, "else") == 0) {
      static const char *const ends2[] = {"endfor", NULL};
      if (expect_block_end(P) < 0 || take_body(P, n, &n->else_body, ends2, &which) < 0) return NULL;
    }
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "set")) {
    jnode *attr = NULL;
    if (!(n = node(P, JN_SET)) || name_list(P, &n->targets, true, &attr) < 0) return NULL;
    n->c = attr;
    if (accept_op(P, '=')) {
      /* set a = 1, 2 makes a tuple */
      jnode *v = parse_expr(P);
      if (!v) return NULL;
      if (is_op(cur(P), ',')) {
        nvec items = {0};
        if (nv_push(P, &items, v) < 0) return NULL;
        while (accept_op(P, ',')) {
          jnode *e = parse_expr(P);
          if (!e || nv_push(P, &items, e) < 0) {
            free(items.v);
            return NULL;
          }
        }
        jnode *tu = node(P, JN_TUPLE);
        if (!tu || nv_take(P, &items, &tu->items) < 0) return NULL;
        v = tu;
      }
      n->a = v;
      return expect_block_end(P) < 0 ? NULL : n;
    }
    if (attr || n->targets.n != 1) {
      p_fail(P, "%s", "a set block assigns one plain name");
      return NULL;
    }
    n->kind = JN_SET_BLOCK;
    if (accept_op(P, '|') && !(n->b = parse_filter_chain(P))) return NULL;
    static const char *const ends[] = {"endset", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "macro")) {
    if (cur(P)->type != JT_NAME) {
      p_fail(P, "expected a macro name, got %s", tok_desc(cur(P)));
      return NULL;
    }
    if (!(n = node(P, JN_MACRO))) return NULL;
    n->s = cur(P)->s;
    n->len = cur(P)->len;
    P->i++;
    if (!is_op(cur(P), '(')) {
      p_fail(P, "expected '(' after the macro name, got %s", tok_desc(cur(P)));
      return NULL;
    }
    static const char *const ends[] = {"endmacro", NULL};
    if (parse_params(P, n) < 0 || expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0)
      return NULL;
    if (cur(P)->type == JT_NAME) P->i++; /* {% endmacro name %} */
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "call")) {
    if (!(n = node(P, JN_CALL_BLOCK))) return NULL;
    if (is_op(cur(P), '(') && parse_params(P, n) < 0) return NULL;
    if (!(n->a = parse_expr(P))) return NULL;
    if (n->a->kind != JN_CALL) {
      p_fail(P, "%s", "expected a call after {% call %}");
      return NULL;
    }
    static const char *const ends[] = {"endcall", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "filter")) {
    if (!(n = node(P, JN_FILTER_BLOCK)) || !(n->b = parse_filter_chain(P))) return NULL;
    static const char *const ends[] = {"endfilter", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "with")) {
    if (!(n = node(P, JN_WITH))) return NULL;
    nvec names = {0}, vals = {0};
    while (cur(P)->type == JT_NAME) {
      jnode *nm = node(P, JN_NAME);
      if (!nm) goto with_fail;
      nm->s = cur(P)->s;
      nm->len = cur(P)->len;
      P->i++;
      if (expect_op(P, '=') < 0) goto with_fail;
      jnode *v = parse_expr(P);
      if (!v || nv_push(P, &names, nm) < 0 || nv_push(P, &vals, v) < 0) goto with_fail;
      if (!accept_op(P, ',')) break;
    }
    if (nv_take(P, &names, &n->targets) < 0 || nv_take(P, &vals, &n->items) < 0) goto with_fail;
    static const char *const ends[] = {"endwith", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    return expect_block_end(P) < 0 ? NULL : n;
  with_fail:
    free(names.v);
    free(vals.v);
    return NULL;
  }
  if (name_eq(t->s, t->len, "generation")) {
    /* transformers' assistant-mask marker: render the body */
    if (!(n = node(P, JN_WITH))) return NULL;
    static const char *const ends[] = {"endgeneration", NULL};
    if (expect_block_end(P) < 0 || take_body(P, n, &n->body, ends, &which) < 0) return NULL;
    n->op = 'g';
    return expect_block_end(P) < 0 ? NULL : n;
  }
  if (name_eq(t->s, t->len, "break") || name_eq(t->s, t->len, "continue")) {
    if (!(n = node(P, name_eq(t->s, t->len, "break") ? JN_BREAK : JN_CONTINUE))) return NULL;
    return expect_block_end(P) < 0 ? NULL : n;
  }
  char name[64];
  snprintf(name, sizeof name, "%.*s", (int)(t->len < 60 ? t->len : 60), t->s);
  if (name_eq(t->s, t->len, "include") || name_eq(t->s, t->len, "import") || name_eq(t->s, t->len, "from") ||
      name_eq(t->s, t->len, "extends") || name_eq(t->s, t->len, "block"))
    p_fail(P, "'%s' is not available: chat templates have no loader", name);
  else
    p_fail(P, "Encountered unknown tag '%s'", name);
  return NULL;
}

/*
 * Statements and text until one of ends ({% end... %} or {% else %}); the
 * end's name goes to *which and the cursor stays after it (before the
 * optional rest of that tag). ends NULL: until the end of the template.
 */
static int parse_body(parser *P, nvec *body, const char *const *ends, const char **which) {
  if (!enter(P)) return -1;
  for (;;) {
    const jtok *t = cur(P);
    if (t->type == JT_EOF) {
      P->depth--;
      if (!ends) return 0;
      char msg[160];
      size_t m = (size_t)snprintf(msg, sizeof msg, "unexpected end of template, looking for");
      for (size_t k = 0; ends[k] && m < sizeof msg; k++)
        m += (size_t)snprintf(msg + m, sizeof msg - m, "%s '%s'", k ? " or" : "", ends[k]);
      return p_fail(P, "%s", msg);
    }
    if (t->type == JT_DATA) {
      jnode *n = node(P, JN_TEXT);
      if (!n) return -1;
      n->s = t->s;
      n->len = t->len;
      P->i++;
      if (nv_push(P, body, n) < 0) return -1;
      continue;
    }
    if (t->type == JT_VAR_BEGIN) {
      P->i++;
      jnode *n = node(P, JN_OUTPUT);
      if (!n || !(n->a = parse_expr(P))) return -1;
      if (cur(P)->type != JT_VAR_END) return p_fail(P, "expected '}}', got %s", tok_desc(cur(P)));
      P->i++;
      if (nv_push(P, body, n) < 0) return -1;
      continue;
    }
    if (t->type != JT_BLOCK_BEGIN) return p_fail(P, "unexpected %s", tok_desc(t));
    const jtok *nm = &P->t[P->i + 1];
    if (ends && nm->type == JT_NAME) {
      for (size_t k = 0; ends[k]; k++) {
        if (is_name(nm, ends[k])) {
          *which = ends[k];
          P->i += 2;
          P->depth--;
          return 0;
        }
      }
    }
    if (nm->type == JT_NAME && (is_name(nm, "endif") || is_name(nm, "endfor") || is_name(nm, "else") ||
                                is_name(nm, "elif") || is_name(nm, "endmacro") || is_name(nm, "endset") ||
                                is_name(nm, "endcall") || is_name(nm, "endfilter") || is_name(nm, "endwith") ||
                                is_name(nm, "endgeneration"))) {
      char name[32];
      snprintf(name, sizeof name, "%.*s", (int)nm->len, nm->s);
      P->i++;
      return p_fail(P, "Encountered unknown tag '%s'", name);
    }
    P->i++;
    jnode *n = parse_statement(P);
    if (!n || nv_push(P, body, n) < 0) return -1;
  }
}

int jinja_parse(jarena *a, const jtok *toks, size_t n, jnodes *out, llorch_errmsg *em) {
  parser P = {.a = a, .t = toks, .n = n, .em = em};
  nvec body = {0};
  if (parse_body(&P, &body, NULL, NULL) < 0 || nv_take(&P, &body, out) < 0) {
    free(body.v);
    return P.err ? P.err : LLORCH_EFORMAT;
  }
  return 0;
}
