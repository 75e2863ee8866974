/*
 * Internals of the Jinja engine (include/llorch/jinja.h): tokens, the AST,
 * values and the render context shared by lexer.c, parser.c, value.c,
 * eval.c and builtins.c.
 */
#ifndef LLORCH_JINJA_IMPL_H
#define LLORCH_JINJA_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "llorch/error.h"
#include "llorch/jinja.h"

/* ---- arena: every allocation of a compile or a render, freed at once ---- */

typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
  jarena_chunk *head;
  size_t used;  /* bytes handed out, all chunks */
  size_t limit; /* bytes; 0 = none */
} jarena;

void *jarena_alloc(jarena *a, size_t n); /* zeroed; NULL past the limit or out of memory */
void jarena_free(jarena *a);

/* ---- tokens ---- */

typedef enum jtok_type {
  JT_EOF,
  JT_DATA,        /* template text */
  JT_VAR_BEGIN,   /* {{ */
  JT_VAR_END,     /* }} */
  JT_BLOCK_BEGIN, /* {% */
  JT_BLOCK_END,   /* %} */
  JT_NAME,
  JT_STRING, /* decoded text in s/len */
  JT_INT,
  JT_FLOAT,
  JT_OP, /* op below */
} jtok_type;

/* Operators: single characters stand for themselves; these for the rest. */
enum { JOP_EQ = 256, JOP_NE, JOP_LE, JOP_GE, JOP_FLOORDIV, JOP_POW };

typedef struct jtok {
  jtok_type type;
  int op;
  const char *s; /* NAME, STRING, DATA: arena text */
  size_t len;
  int64_t i;
  double f;
  int line;
} jtok;

/* Splits src into tokens (arena-allocated array ending in JT_EOF). */
int jinja_lex(jarena *a, const char *src, size_t len, jtok **out, size_t *n, llorch_errmsg *em);

/* ---- AST ---- */

typedef enum jnode_kind {
  /* statements */
  JN_TEXT,   /* s */
  JN_OUTPUT, /* a */
  JN_IF,     /* a cond, body, else_body */
  JN_FOR,    /* targets (names), a iterable, b filter, body, else_body */
  JN_SET,    /* targets (names) or name+attr (namespace), a value */
  JN_SET_BLOCK, /* name, body, filters in b */
  JN_MACRO,  /* name, params (names + defaults), body */
  JN_CALL_BLOCK, /* a call expression, params, body */
  JN_FILTER_BLOCK, /* b filter chain applied to body (a placeholder) */
  JN_BREAK,
  JN_CONTINUE,
  JN_WITH, /* targets + values, body */
  /* expressions */
  JN_LIT,     /* value */
  JN_NAME,    /* s */
  JN_GETATTR, /* a . s */
  JN_GETITEM, /* a [b] */
  JN_SLICE,   /* a [b:c:d] (each may be NULL) */
  JN_CALL,    /* a (args) */
  JN_FILTER,  /* a | s (args) ; a NULL inside a filter block chain */
  JN_TEST,    /* a is [not] s (args) */
  JN_BINOP,   /* op, a, b */
  JN_UNOP,    /* op ('-', '+', '!' for not), a */
  JN_AND,
  JN_OR,
  JN_COND,  /* a if b else c (c NULL -> undefined) */
  JN_LIST,  /* items */
  JN_TUPLE, /* items */
  JN_DICT,  /* items: key, value, key, value, ... */
  JN_COMPARE, /* a, then ops[i] with items[i] */
  JN_CONCAT,  /* items joined with ~ */
} jnode_kind;

typedef struct jnode jnode;

typedef struct jnodes {
  jnode **v;
  size_t n;
} jnodes;

struct jnode {
  jnode_kind kind;
  int op;
  bool negate; /* JN_TEST: is not */
  int line;
  const char *s; /* text, name, attribute, filter/test name */
  size_t len;
  jnode *a, *b, *c, *d;
  jnodes body, else_body;
  jnodes items;   /* elements, positional args */
  jnodes kwnames; /* JN_CALL/FILTER/TEST: keyword args (JN_NAME nodes) */
  jnodes kwvals;
  jnodes targets; /* JN_FOR/JN_SET/JN_MACRO params: JN_NAME nodes */
  jnodes defaults; /* JN_MACRO/JN_CALL_BLOCK: one per param (NULL: none) */
  int *ops;        /* JN_COMPARE */
  struct jv *value; /* JN_LIT */
};

int jinja_parse(jarena *a, const jtok *toks, size_t n, jnodes *out, llorch_errmsg *em);

/* ---- values ---- */

typedef enum jv_type {
  JV_UNDEF,
  JV_NONE,
  JV_BOOL,
  JV_INT,
  JV_FLOAT,
  JV_STR,
  JV_LIST,  /* also tuples (tuple flag) and generators (gen flag) */
  JV_DICT,
  JV_NS,    /* namespace(): the one mutable object */
  JV_MACRO,
  JV_FUNC,  /* builtin function or bound method */
  JV_LOOP,  /* the loop variable */
} jv_type;

typedef struct jstr {
  size_t len;       /* bytes */
  uint8_t *taint;   /* (len) 1 = byte from request text; NULL: none is */
  bool safe;        /* markupsafe.Markup: |safe or |escape made it; '+' escapes plain operands */
  char s[];         /* len bytes + NUL */
} jstr;

typedef struct jv jv;
typedef struct jlist {
  size_t n, cap;
  jv *v;
  bool tuple; /* prints as (a, b) */
  bool gen;   /* a generator (map/select results): no len, not JSON */
} jlist;

typedef struct jdict {
  size_t n, cap;
  jv *k; /* (n) keys */
  jv *v; /* (n) values */
} jdict;

typedef struct jmacro jmacro;
typedef struct jfunc jfunc;
typedef struct jloop jloop;

struct jv {
  jv_type t;
  union {
    bool b;
    int64_t i;
    double f;
    jstr *s;
    jlist *l;
    jdict *d;
    jmacro *m;
    jfunc *fn;
    jloop *loop;
    const char *undef; /* the error to raise when used: "'x' is undefined" */
  } u;
};

typedef struct jscope jscope;

struct jmacro {
  const jnode *def; /* JN_MACRO, or JN_CALL_BLOCK for caller() */
  jscope *closure;
  jv caller; /* JV_UNDEF unless called from {% call %} */
};

struct jfunc {
  int id;  /* builtin or method id (builtins.c) */
  jv self; /* bound object */
  const char *name;
};

struct jloop {
  const jlist *items;
  size_t index0;
  int64_t depth;
  jv last_changed;
};

typedef struct jvar {
  const char *name;
  size_t len;
  jv v;
} jvar;

struct jscope {
  jscope *parent;
  jvar *vars;
  size_t n, cap;
  bool captured; /* a macro closes over it: not reused by the next loop iteration */
};

/* String builder with provenance. */
typedef struct jsb {
  char *s;
  uint8_t *taint; /* NULL until a request byte arrives */
  size_t len, cap;
  bool oom;
} jsb;

/* ---- render context ---- */

typedef struct jctx {
  jarena arena;
  jscope *globals;
  uint64_t steps, max_steps;
  size_t max_output;
  unsigned depth, max_depth;
  time_t now;
  int err;           /* 0 or the LLORCH_E* of the first error */
  llorch_errmsg *em; /* where that error went */
} jctx;

/* Records an error (the first one wins) and returns -1. */
int jctx_fail(jctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* value.c */
jv jv_none(void);
jv jv_bool(bool b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_undef(const char *why);
jstr *jstr_new(jctx *c, const char *s, size_t len, bool tainted);
jv jv_str(jstr *s);
int jv_cstr(jctx *c, const char *s, size_t len, jv *out); /* untainted copy */
jlist *jlist_new(jctx *c, size_t cap);
int jlist_push(jctx *c, jlist *l, jv v);
jdict *jdict_new(jctx *c, size_t cap);
int jdict_set(jctx *c, jdict *d, jv k, jv v);
int jdict_append(jctx *c, jdict *d, jv k, jv v); /* k known to be new */
bool jdict_get(const jdict *d, const char *key, size_t len, jv *out);
bool jdict_getv(const jdict *d, jv key, jv *out);
const char *jv_type_name(jv v); /* Python's: 'str', 'dict', 'list', 'NoneType', ... */
bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);
int jv_compare(jctx *c, jv a, jv b, int *out); /* -1/0/1; error for unorderable */
bool jstr_tainted(const jstr *s);

void jsb_put(jsb *b, const char *s, size_t n, bool tainted);
void jsb_puts(jsb *b, const char *s);
void jsb_put_jstr(jsb *b, const jstr *s, size_t off, size_t n); /* a slice, provenance kept */
int jsb_finish(jctx *c, jsb *b, jv *out); /* the text as a string value; frees b */
void jsb_free(jsb *b);

/* HTML-escapes s (markupsafe.escape) into a new safe string. */
int jstr_escape(jctx *c, const jstr *s, jv *out);
/* A safe (Markup) copy of s. */
int jstr_mark_safe(jctx *c, jstr *s, jv *out);

/* str(v) appended to b, as Python's str() (strings as they are). */
int jv_write_str(jctx *c, jsb *b, jv v);
/* repr(v) */
int jv_write_repr(jctx *c, jsb *b, jv v);
int jv_to_str(jctx *c, jv v, jv *out); /* str(v) as a string value */
void jv_write_float(jsb *b, double f);

typedef struct jjson_opts {
  int indent;         /* < 0: none */
  const char *indent_str; /* when given as a string */
  const char *item_sep, *key_sep;
  bool sort_keys;
} jjson_opts;
int jv_write_json(jctx *c, jsb *b, jv v, const jjson_opts *o, int level);

int jv_from_cjson(jctx *c, const struct cJSON *j, bool tainted, jv *out);

/* UTF-8 */
size_t jutf8_count(const char *s, size_t len);
size_t jutf8_offset(const char *s, size_t len, size_t cp); /* byte offset of code point cp (clamped) */

/* eval.c */
int jinja_eval(jctx *c, jscope *sc, const jnode *n, jv *out);
int jinja_call(jctx *c, jscope *sc, jv fn, const jv *args, size_t nargs, const char *const *kwn, const jv *kwv,
               size_t nkw, jv *out);
int jscope_set(jctx *c, jscope *sc, const char *name, size_t len, jv v);
jscope *jscope_new(jctx *c, jscope *parent);
bool jscope_get(const jscope *sc, const char *name, size_t len, jv *out);

/* builtins.c */
typedef struct jargs {
  const jv *pos;
  size_t npos;
  const char *const *kwn;
  const jv *kwv;
  size_t nkw;
} jargs;
int jinja_filter(jctx *c, jscope *sc, const char *name, jv in, const jargs *a, jv *out);
int jinja_test(jctx *c, jscope *sc, const char *name, jv in, const jargs *a, bool *out);
bool jinja_test_exists(const char *name);
/* obj.name for strings, lists, dicts, the loop: a bound method or attribute;
 * returns 1 when found, 0 when not, -1 on error. */
int jinja_getattr_builtin(jctx *c, jv obj, const char *name, size_t len, jv *out);
int jinja_call_func(jctx *c, jscope *sc, const jfunc *fn, const jargs *a, jv *out);
/* globals: range, namespace, dict, raise_exception, strftime_now, cycler, joiner */
int jinja_globals_init(jctx *c, jscope *g);

#endif /* LLORCH_JINJA_IMPL_H */
