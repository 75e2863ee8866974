/*
 * GBNF text -> byte-level rules (grammar-impl.h).
 *
 * Three passes:
 *   1. parse: rules of alternatives of elements, where a terminal is a set
 *      of code points (a literal is one set per character); groups and
 *      repetitions become rules of their own (x* is R ::= x R | "", so the
 *      matcher's stacks stay flat: a rule reference in last position is a
 *      tail call);
 *   2. lower: a set within ASCII becomes one byte set; any other set a rule
 *      whose alternatives are its UTF-8 encodings as byte-range sequences;
 *   3. check: every referenced rule defined, `root` present, no left
 *      recursion, and rules that can never complete removed (an error when
 *      that leaves root with nothing).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar-impl.h"

/* ---- the builder ---- */

typedef enum pel_kind {
  PEL_CS = 0,   /* code point set cs[arg] */
  PEL_REF = 1,  /* rule arg */
  PEL_BYTES = 2 /* after lowering: byte set arg */
} pel_kind;

typedef struct pel {
  uint8_t kind;
  uint32_t arg;
} pel;

typedef struct palt {
  pel *e;
  uint32_t n, cap;
} palt;

typedef struct prule {
  char *name;
  palt *alts;
  uint32_t n, cap;
  bool defined;
  size_t at;          /* byte offset of the first reference (for "undefined rule") */
} prule;

typedef struct pcs {
  uint32_t off, n; /* ranges cs_ranges[2 * off ..], n pairs (lo, hi), sorted, disjoint */
} pcs;

typedef struct gbuild {
  const char *src, *p, *end;
  const llorch_grammar_limits *lim;
  llorch_errmsg *em;
  int err;
  prule *rules;
  uint32_t n_rules, cap_rules;
  gvec cs_ranges;
  pcs *cs;
  uint32_t n_cs, cap_cs;
  gbyteset *sets;
  uint32_t n_sets, cap_sets;
  int32_t *set_hash;
  uint32_t set_hash_cap;
  uint32_t depth; /* parenthesis nesting (bounded: the parser recurses) */
  int32_t *name_hash; /* named (not synthesized) rules, open addressing, -1 empty */
  uint32_t name_hash_cap, n_named;
} gbuild;

#define GBNF_MAX_DEPTH 256

int gvec_push(gvec *v, uint32_t x) {
  if (v->n == v->cap) {
    uint32_t cap = v->cap ? v->cap * 2 : 16;
    uint32_t *nv = realloc(v->v, (size_t)cap * sizeof *nv);
    if (!nv) return LLORCH_ENOMEM;
    v->v = nv;
    v->cap = cap;
  }
  v->v[v->n++] = x;
  return 0;
}

/* Line and column (1-based, columns in bytes) of p. */
static void gb_linecol(const gbuild *b, const char *p, uint32_t *line, uint32_t *col) {
  uint32_t l = 1, c = 1;
  for (const char *q = b->src; q < p && q < b->end; q++) {
    if (*q == '\n') {
      l++;
      c = 1;
    } else {
      c++;
    }
  }
  *line = l;
  *col = c;
}

static int gb_fail(gbuild *b, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A syntax error at `at`: "line L, column C: <message>". Keeps the first. */
static int gb_fail(gbuild *b, const char *at, const char *fmt, ...) {
  if (b->err) return b->err;
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  uint32_t line, col;
  gb_linecol(b, at, &line, &col);
  b->err = llorch_errmsg_set(b->em, LLORCH_EINVAL, "line %u, column %u: %s", line, col, msg);
  return b->err;
}

static int gb_nomem(gbuild *b) {
  if (!b->err) b->err = llorch_errmsg_set(b->em, LLORCH_ENOMEM, "grammar: out of memory");
  return b->err;
}

static int gb_rule_new(gbuild *b, const char *name, size_t len, uint32_t *out) {
  if (b->n_rules >= b->lim->max_rules) {
    if (!b->err)
      b->err = llorch_errmsg_set(b->em, LLORCH_ELIMIT,
                                 "the grammar needs more than %u rules (after expanding "
                                 "repetitions and character classes)", b->lim->max_rules);
    return b->err;
  }
  if (b->n_rules == b->cap_rules) {
    uint32_t cap = b->cap_rules ? b->cap_rules * 2 : 64;
    prule *nr = realloc(b->rules, (size_t)cap * sizeof *nr);
    if (!nr) return gb_nomem(b);
    b->rules = nr;
    b->cap_rules = cap;
  }
  prule *r = &b->rules[b->n_rules];
  memset(r, 0, sizeof *r);
  r->name = malloc(len + 1);
  if (!r->name) return gb_nomem(b);
  memcpy(r->name, name, len);
  r->name[len] = 0;
  *out = b->n_rules++;
  return 0;
}

/* A rule made by the parser (group, repetition, UTF-8 class): base-N. */
static int gb_rule_synth(gbuild *b, uint32_t base, uint32_t *out) {
  char name[160];
  int n = snprintf(name, sizeof name, "%.120s-%u", b->rules[base].name, b->n_rules);
  int rc = gb_rule_new(b, name, (size_t)n, out);
  if (rc == 0) b->rules[*out].defined = true;
  return rc;
}

static uint32_t gb_name_hash(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

/* The rule named name (created, with the position of this first use, when
 * new). A hash table: schema-made grammars have thousands of rules. */
static int gb_rule_find(gbuild *b, const char *name, size_t len, const char *at, uint32_t *out) {
  if (b->n_named * 2 >= b->name_hash_cap) {
    uint32_t cap = b->name_hash_cap ? b->name_hash_cap * 2 : 256;
    int32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return gb_nomem(b);
    for (uint32_t i = 0; i < cap; i++) h[i] = -1;
    for (uint32_t i = 0; i < b->name_hash_cap; i++) {
      int32_t r = b->name_hash[i];
      if (r < 0) continue;
      uint32_t k = gb_name_hash(b->rules[r].name, strlen(b->rules[r].name)) & (cap - 1);
      while (h[k] >= 0) k = (k + 1) & (cap - 1);
      h[k] = r;
    }
    free(b->name_hash);
    b->name_hash = h;
    b->name_hash_cap = cap;
  }
  uint32_t k = gb_name_hash(name, len) & (b->name_hash_cap - 1);
  while (b->name_hash[k] >= 0) {
    const char *rn = b->rules[b->name_hash[k]].name;
    if (strlen(rn) == len && memcmp(rn, name, len) == 0) {
      *out = (uint32_t)b->name_hash[k];
      return 0;
    }
    k = (k + 1) & (b->name_hash_cap - 1);
  }
  int rc = gb_rule_new(b, name, len, out);
  if (rc < 0) return rc;
  b->name_hash[k] = (int32_t)*out;
  b->n_named++;
  b->rules[*out].at = (size_t)(at - b->src);
  return 0;
}

static int gb_alt_new(gbuild *b, uint32_t rule, uint32_t *out) {
  prule *r = &b->rules[rule];
  if (r->n == r->cap) {
    uint32_t cap = r->cap ? r->cap * 2 : 4;
    palt *na = realloc(r->alts, (size_t)cap * sizeof *na);
    if (!na) return gb_nomem(b);
    r->alts = na;
    r->cap = cap;
  }
  memset(&r->alts[r->n], 0, sizeof r->alts[r->n]);
  *out = r->n++;
  return 0;
}

static int gb_push(gbuild *b, uint32_t rule, uint32_t alt, uint8_t kind, uint32_t arg) {
  palt *a = &b->rules[rule].alts[alt];
  if (a->n == a->cap) {
    uint32_t cap = a->cap ? a->cap * 2 : 8;
    pel *ne = realloc(a->e, (size_t)cap * sizeof *ne);
    if (!ne) return gb_nomem(b);
    a->e = ne;
    a->cap = cap;
  }
  a->e[a->n++] = (pel){kind, arg};
  return 0;
}

/* ---- code point sets ---- */

static int gb_cs_cmp(const void *x, const void *y) {
  const uint32_t *a = x, *c = y;
  return a[0] < c[0] ? -1 : a[0] > c[0];
}

/* Makes a set from pairs[0..2n) (any order, may overlap), complemented when
 * negate. */
static int gb_cs_make(gbuild *b, uint32_t *pairs, uint32_t n, bool negate, uint32_t *out) {
  if (n > 1) qsort(pairs, n, 2 * sizeof *pairs, gb_cs_cmp);
  if (b->n_cs == b->cap_cs) {
    uint32_t cap = b->cap_cs ? b->cap_cs * 2 : 64;
    pcs *nc = realloc(b->cs, (size_t)cap * sizeof *nc);
    if (!nc) return gb_nomem(b);
    b->cs = nc;
    b->cap_cs = cap;
  }
  uint32_t off = b->cs_ranges.n / 2, cnt = 0;
  /* merged ranges first into the tail of cs_ranges */
  uint32_t start = b->cs_ranges.n;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t lo = pairs[2 * i], hi = pairs[2 * i + 1];
    if (cnt && lo <= b->cs_ranges.v[b->cs_ranges.n - 1] + 1) {
      if (hi > b->cs_ranges.v[b->cs_ranges.n - 1]) b->cs_ranges.v[b->cs_ranges.n - 1] = hi;
      continue;
    }
    if (gvec_push(&b->cs_ranges, lo) < 0 || gvec_push(&b->cs_ranges, hi) < 0) return gb_nomem(b);
    cnt++;
  }
  if (negate) {
    /* complement of the merged ranges over [0, 0x10FFFF], rewritten in place
     * after the merged ones, then moved down */
    uint32_t next = 0, ncnt = 0;
    uint32_t mstart = start, mcnt = cnt;
    for (uint32_t i = 0; i < mcnt; i++) {
      uint32_t lo = b->cs_ranges.v[mstart + 2 * i], hi = b->cs_ranges.v[mstart + 2 * i + 1];
      if (lo > next) {
        if (gvec_push(&b->cs_ranges, next) < 0 || gvec_push(&b->cs_ranges, lo - 1) < 0)
          return gb_nomem(b);
        ncnt++;
      }
      next = hi + 1;
    }
    if (next <= 0x10FFFF) {
      if (gvec_push(&b->cs_ranges, next) < 0 || gvec_push(&b->cs_ranges, 0x10FFFF) < 0)
        return gb_nomem(b);
      ncnt++;
    }
    memmove(b->cs_ranges.v + start, b->cs_ranges.v + start + 2 * mcnt,
            (size_t)ncnt * 2 * sizeof(uint32_t));
    b->cs_ranges.n = start + 2 * ncnt;
    cnt = ncnt;
  }
  b->cs[b->n_cs] = (pcs){off, cnt};
  *out = b->n_cs++;
  return 0;
}

static int gb_push_cp(gbuild *b, uint32_t rule, uint32_t alt, uint32_t cp) {
  uint32_t pair[2] = {cp, cp}, cs = 0;
  int rc = gb_cs_make(b, pair, 1, false, &cs);
  if (rc < 0) return rc;
  return gb_push(b, rule, alt, PEL_CS, cs);
}

/* ---- lexing ---- */

static bool gb_is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

/* Skips blanks and comments; newlines too when newline_ok. */
static void gb_space(gbuild *b, bool newline_ok) {
  while (b->p < b->end) {
    char c = *b->p;
    if (c == ' ' || c == '\t') {
      b->p++;
    } else if (c == '#') {
      while (b->p < b->end && *b->p != '\n' && *b->p != '\r') b->p++;
    } else if (newline_ok && (c == '\n' || c == '\r')) {
      b->p++;
    } else {
      break;
    }
  }
}

static int gb_hex(gbuild *b, const char *at, int digits, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < digits; i++) {
    if (b->p >= b->end) return gb_fail(b, at, "escape needs %d hex digits", digits);
    char c = *b->p;
    uint32_t d;
    if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') d = (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = (uint32_t)(c - 'A' + 10);
    else return gb_fail(b, b->p, "expected a hex digit in the escape, got '%c'", c);
    v = v * 16 + d;
    b->p++;
  }
  if (v > 0x10FFFF) return gb_fail(b, at, "escape U+%X is beyond U+10FFFF", v);
  *out = v;
  return 0;
}

/* One character of a literal or class: an escape or a UTF-8 sequence. */
static int gb_char(gbuild *b, uint32_t *out) {
  const char *at = b->p;
  unsigned char c = (unsigned char)*b->p;
  if (c == '\\') {
    b->p++;
    if (b->p >= b->end) return gb_fail(b, at, "unfinished escape at the end of the text");
    char e = *b->p++;
    switch (e) {
      case 'n': *out = '\n'; return 0;
      case 'r': *out = '\r'; return 0;
      case 't': *out = '\t'; return 0;
      case '\\': case '"': case '[': case ']': case '-': case '^': case '\'':
        *out = (uint32_t)e;
        return 0;
      case 'x': return gb_hex(b, at, 2, out);
      case 'u': return gb_hex(b, at, 4, out);
      case 'U': return gb_hex(b, at, 8, out);
      default:
        return gb_fail(b, at, "unknown escape '\\%c' (expected one of \\n \\r \\t \\\\ \\\" \\[ "
                              "\\] \\xHH \\uHHHH \\UHHHHHHHH)", e);
    }
  }
  int n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
  if (!n || b->end - b->p < n) return gb_fail(b, at, "invalid UTF-8 byte 0x%02X", c);
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1Fu) : n == 3 ? (c & 0x0Fu) : (c & 0x07u);
  for (int i = 1; i < n; i++) {
    unsigned char k = (unsigned char)b->p[i];
    if ((k & 0xC0) != 0x80) return gb_fail(b, at, "invalid UTF-8 sequence");
    cp = (cp << 6) | (k & 0x3Fu);
  }
  static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return gb_fail(b, at, "invalid UTF-8 sequence");
  b->p += n;
  *out = cp;
  return 0;
}

static int gb_uint(gbuild *b, uint32_t *out) {
  const char *at = b->p;
  uint64_t v = 0;
  if (b->p >= b->end || *b->p < '0' || *b->p > '9') return gb_fail(b, at, "expected a number");
  while (b->p < b->end && *b->p >= '0' && *b->p <= '9') {
    v = v * 10 + (uint64_t)(*b->p - '0');
    if (v > 1000000) return gb_fail(b, at, "repetition count over 1000000");
    b->p++;
  }
  *out = (uint32_t)v;
  return 0;
}

/* ---- repetition ---- */

/*
 * Wraps elements [from, n) of (rule, alt) - the last symbol - into a rule X
 * and replaces them by X repeated min..max times (max UINT32_MAX = no bound).
 */
static int gb_repeat(gbuild *b, uint32_t rule, uint32_t alt, uint32_t from, uint32_t min,
                     uint32_t max) {
  palt *a = &b->rules[rule].alts[alt];
  uint32_t x = 0;
  int rc;
  if (a->n - from == 1 && a->e[from].kind == PEL_REF) {
    x = a->e[from].arg;
  } else {
    if ((rc = gb_rule_synth(b, rule, &x)) < 0) return rc;
    uint32_t xa = 0;
    if ((rc = gb_alt_new(b, x, &xa)) < 0) return rc;
    a = &b->rules[rule].alts[alt];
    for (uint32_t i = from; i < a->n; i++)
      if ((rc = gb_push(b, x, xa, a->e[i].kind, a->e[i].arg)) < 0) return rc;
  }
  a = &b->rules[rule].alts[alt];
  a->n = from;
  for (uint32_t i = 0; i < min; i++)
    if ((rc = gb_push(b, rule, alt, PEL_REF, x)) < 0) return rc;
  if (max == min) return 0;
  uint32_t r = 0, ra = 0, re = 0;
  if (max == UINT32_MAX) {
    /* R ::= X R | "" */
    if ((rc = gb_rule_synth(b, rule, &r)) < 0 || (rc = gb_alt_new(b, r, &ra)) < 0 ||
        (rc = gb_push(b, r, ra, PEL_REF, x)) < 0 || (rc = gb_push(b, r, ra, PEL_REF, r)) < 0 ||
        (rc = gb_alt_new(b, r, &re)) < 0)
      return rc;
    return gb_push(b, rule, alt, PEL_REF, r);
  }
  /* O1 ::= X | "";  Ok ::= X O(k-1) | "" */
  uint32_t prev = 0;
  for (uint32_t k = 1; k <= max - min; k++) {
    if ((rc = gb_rule_synth(b, rule, &r)) < 0 || (rc = gb_alt_new(b, r, &ra)) < 0 ||
        (rc = gb_push(b, r, ra, PEL_REF, x)) < 0)
      return rc;
    if (k > 1 && (rc = gb_push(b, r, ra, PEL_REF, prev)) < 0) return rc;
    if ((rc = gb_alt_new(b, r, &re)) < 0) return rc;
    prev = r;
  }
  return gb_push(b, rule, alt, PEL_REF, prev);
}

/* ---- parsing ---- */

static int gb_alternates(gbuild *b, uint32_t rule, bool nested);

static int gb_class(gbuild *b, uint32_t rule, uint32_t alt) {
  const char *at = b->p;
  b->p++; /* [ */
  bool negate = false;
  if (b->p < b->end && *b->p == '^') {
    negate = true;
    b->p++;
  }
  gvec pairs = {0};
  int rc = 0;
  while (b->p < b->end && *b->p != ']') {
    uint32_t lo, hi;
    if ((rc = gb_char(b, &lo)) < 0) goto out;
    hi = lo;
    if (b->p + 1 < b->end && *b->p == '-' && b->p[1] != ']') {
      b->p++;
      const char *rat = b->p;
      if ((rc = gb_char(b, &hi)) < 0) goto out;
      if (hi < lo) {
        rc = gb_fail(b, rat, "range end U+%04X is below its start U+%04X", hi, lo);
        goto out;
      }
    }
    if (gvec_push(&pairs, lo) < 0 || gvec_push(&pairs, hi) < 0) {
      rc = gb_nomem(b);
      goto out;
    }
  }
  if (b->p >= b->end) {
    rc = gb_fail(b, at, "unterminated character class (expected ']')");
    goto out;
  }
  b->p++; /* ] */
  uint32_t cs = 0;
  if ((rc = gb_cs_make(b, pairs.v, pairs.n / 2, negate, &cs)) < 0) goto out;
  rc = gb_push(b, rule, alt, PEL_CS, cs);
out:
  free(pairs.v);
  return rc;
}

/* One alternative: elements until '|', ')', a newline (top level) or the end. */
static int gb_sequence(gbuild *b, uint32_t rule, bool nested) {
  uint32_t alt = 0;
  int rc = gb_alt_new(b, rule, &alt);
  if (rc < 0) return rc;
  uint32_t last_start = UINT32_MAX; /* first element of the last symbol */
  while (b->p < b->end) {
    char c = *b->p;
    const char *at = b->p;
    uint32_t n_before = b->rules[rule].alts[alt].n;
    if (c == '"') {
      b->p++;
      last_start = n_before;
      while (b->p < b->end && *b->p != '"') {
        if (*b->p == '\n' || *b->p == '\r')
          return gb_fail(b, at, "unterminated literal (newline before the closing '\"')");
        uint32_t cp;
        if ((rc = gb_char(b, &cp)) < 0) return rc;
        if ((rc = gb_push_cp(b, rule, alt, cp)) < 0) return rc;
      }
      if (b->p >= b->end) return gb_fail(b, at, "unterminated literal (expected '\"')");
      b->p++;
    } else if (c == '[') {
      last_start = n_before;
      if ((rc = gb_class(b, rule, alt)) < 0) return rc;
    } else if (c == '.') {
      b->p++;
      last_start = n_before;
      uint32_t pair[2] = {0, 0x10FFFF}, cs = 0;
      if ((rc = gb_cs_make(b, pair, 1, false, &cs)) < 0) return rc;
      if ((rc = gb_push(b, rule, alt, PEL_CS, cs)) < 0) return rc;
    } else if (gb_is_name_char(c)) {
      const char *s = b->p;
      while (b->p < b->end && gb_is_name_char(*b->p)) b->p++;
      uint32_t ref = 0;
      if ((rc = gb_rule_find(b, s, (size_t)(b->p - s), s, &ref)) < 0) return rc;
      last_start = n_before;
      if ((rc = gb_push(b, rule, alt, PEL_REF, ref)) < 0) return rc;
    } else if (c == '(') {
      if (++b->depth > GBNF_MAX_DEPTH)
        return gb_fail(b, at, "parentheses nested deeper than %d", GBNF_MAX_DEPTH);
      b->p++;
      uint32_t sub = 0;
      if ((rc = gb_rule_synth(b, rule, &sub)) < 0) return rc;
      gb_space(b, true);
      if ((rc = gb_alternates(b, sub, true)) < 0) return rc;
      if (b->p >= b->end || *b->p != ')') return gb_fail(b, at, "unclosed '(' (expected ')')");
      b->p++;
      b->depth--;
      last_start = n_before;
      if ((rc = gb_push(b, rule, alt, PEL_REF, sub)) < 0) return rc;
    } else if (c == '*' || c == '+' || c == '?' || c == '{') {
      if (last_start == UINT32_MAX)
        return gb_fail(b, at, "'%c' must follow something to repeat", c);
      uint32_t min = 0, max = UINT32_MAX;
      b->p++;
      if (c == '+') min = 1;
      else if (c == '?') max = 1;
      else if (c == '{') {
        gb_space(b, nested);
        if ((rc = gb_uint(b, &min)) < 0) return rc;
        gb_space(b, nested);
        max = min;
        if (b->p < b->end && *b->p == ',') {
          b->p++;
          gb_space(b, nested);
          max = UINT32_MAX;
          if (b->p < b->end && *b->p >= '0' && *b->p <= '9') {
            if ((rc = gb_uint(b, &max)) < 0) return rc;
            gb_space(b, nested);
          }
        }
        if (b->p >= b->end || *b->p != '}')
          return gb_fail(b, at, "expected '}' to close the repetition");
        b->p++;
        if (max < min) return gb_fail(b, at, "repetition {%u,%u}: max below min", min, max);
      }
      if ((rc = gb_repeat(b, rule, alt, last_start, min, max)) < 0) return rc;
      last_start = UINT32_MAX; /* x** is an error, as in llama.cpp */
    } else {
      break;
    }
    gb_space(b, nested);
  }
  return 0;
}

static int gb_alternates(gbuild *b, uint32_t rule, bool nested) {
  int rc = gb_sequence(b, rule, nested);
  if (rc < 0) return rc;
  while (b->p < b->end && *b->p == '|') {
    b->p++;
    gb_space(b, true);
    if ((rc = gb_sequence(b, rule, nested)) < 0) return rc;
  }
  return 0;
}

static int gb_parse(gbuild *b) {
  int rc;
  for (;;) {
    gb_space(b, true);
    if (b->p >= b->end) break;
    const char *at = b->p;
    if (!gb_is_name_char(*b->p))
      return gb_fail(b, at, "expected a rule name, got '%c'", *b->p);
    const char *s = b->p;
    while (b->p < b->end && gb_is_name_char(*b->p)) b->p++;
    size_t len = (size_t)(b->p - s);
    gb_space(b, false);
    if (b->end - b->p < 3 || memcmp(b->p, "::=", 3) != 0)
      return gb_fail(b, b->p, "expected '::=' after the rule name '%.*s'", (int)len, s);
    b->p += 3;
    gb_space(b, true);
    uint32_t r = 0;
    if ((rc = gb_rule_find(b, s, len, s, &r)) < 0) return rc;
    if (b->rules[r].defined)
      return gb_fail(b, at, "rule '%.*s' is defined twice", (int)len, s);
    b->rules[r].defined = true;
    if ((rc = gb_alternates(b, r, false)) < 0) return rc;
    if (b->p < b->end && *b->p != '\n' && *b->p != '\r')
      return gb_fail(b, b->p, "unexpected '%c' (expected an element, '|' or the end of the line)",
                     *b->p);
  }
  for (uint32_t i = 0; i < b->n_rules; i++)
    if (!b->rules[i].defined)
      return gb_fail(b, b->src + b->rules[i].at, "rule '%s' is used but not defined",
                     b->rules[i].name);
  return 0;
}

/* ---- lowering code point sets to bytes ---- */

static uint32_t gb_set_hash(const gbyteset *s) {
  uint32_t h = 2166136261u;
  for (int i = 0; i < 8; i++) h = (h ^ s->w[i]) * 16777619u;
  return h;
}

/* Index of byte set s, added when new. */
static int gb_set_intern(gbuild *b, const gbyteset *s, uint32_t *out) {
  if (b->n_sets * 2 >= b->set_hash_cap) {
    uint32_t cap = b->set_hash_cap ? b->set_hash_cap * 2 : 256;
    int32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return gb_nomem(b);
    for (uint32_t i = 0; i < cap; i++) h[i] = -1;
    for (uint32_t i = 0; i < b->n_sets; i++) {
      uint32_t k = gb_set_hash(&b->sets[i]) & (cap - 1);
      while (h[k] >= 0) k = (k + 1) & (cap - 1);
      h[k] = (int32_t)i;
    }
    free(b->set_hash);
    b->set_hash = h;
    b->set_hash_cap = cap;
  }
  uint32_t k = gb_set_hash(s) & (b->set_hash_cap - 1);
  while (b->set_hash[k] >= 0) {
    if (memcmp(&b->sets[b->set_hash[k]], s, sizeof *s) == 0) {
      *out = (uint32_t)b->set_hash[k];
      return 0;
    }
    k = (k + 1) & (b->set_hash_cap - 1);
  }
  if (b->n_sets == b->cap_sets) {
    uint32_t cap = b->cap_sets ? b->cap_sets * 2 : 64;
    gbyteset *ns = realloc(b->sets, (size_t)cap * sizeof *ns);
    if (!ns) return gb_nomem(b);
    b->sets = ns;
    b->cap_sets = cap;
  }
  b->sets[b->n_sets] = *s;
  b->set_hash[k] = (int32_t)b->n_sets;
  *out = b->n_sets++;
  return 0;
}

static int gb_set_range(gbuild *b, uint32_t lo, uint32_t hi, uint32_t *out) {
  gbyteset s;
  memset(&s, 0, sizeof s);
  for (uint32_t c = lo; c <= hi; c++) s.w[c >> 5] |= 1u << (c & 31);
  return gb_set_intern(b, &s, out);
}

static int gb_utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

static void gb_utf8_encode(uint32_t cp, uint8_t *o) {
  int n = gb_utf8_len(cp);
  if (n == 1) {
    o[0] = (uint8_t)cp;
    return;
  }
  static const uint8_t lead[] = {0, 0, 0xC0, 0xE0, 0xF0};
  for (int i = n - 1; i > 0; i--) {
    o[i] = (uint8_t)(0x80 | (cp & 0x3F));
    cp >>= 6;
  }
  o[0] = (uint8_t)(lead[n] | cp);
}

/*
 * Adds to rule the UTF-8 encodings of code points [lo, hi] (no surrogates) as
 * alternatives of byte ranges: the range is split until, within each piece,
 * the encodings of lo and hi differ only position by position (every
 * combination of the per-byte ranges is then a code point in the piece).
 */
static int gb_utf8_range(gbuild *b, uint32_t rule, uint32_t lo, uint32_t hi) {
  static const uint32_t len_max[] = {0x7F, 0x7FF, 0xFFFF};
  for (int i = 0; i < 3; i++)
    if (lo <= len_max[i] && hi > len_max[i]) {
      int rc = gb_utf8_range(b, rule, lo, len_max[i]);
      return rc < 0 ? rc : gb_utf8_range(b, rule, len_max[i] + 1, hi);
    }
  int n = gb_utf8_len(lo);
  for (int i = 1; i < n; i++) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        int rc = gb_utf8_range(b, rule, lo, lo | m);
        return rc < 0 ? rc : gb_utf8_range(b, rule, (lo | m) + 1, hi);
      }
      if ((hi & m) != m) {
        int rc = gb_utf8_range(b, rule, lo, (hi & ~m) - 1);
        return rc < 0 ? rc : gb_utf8_range(b, rule, hi & ~m, hi);
      }
    }
  }
  uint8_t L[4], H[4];
  gb_utf8_encode(lo, L);
  gb_utf8_encode(hi, H);
  uint32_t alt = 0;
  int rc = gb_alt_new(b, rule, &alt);
  for (int i = 0; rc == 0 && i < n; i++) {
    uint32_t set = 0;
    rc = gb_set_range(b, L[i], H[i], &set);
    if (rc == 0) rc = gb_push(b, rule, alt, PEL_BYTES, set);
  }
  return rc;
}

/*
 * Replaces every code point set by bytes: ASCII-only sets by one byte set,
 * others by a rule of UTF-8 alternatives (one rule per distinct set). An
 * empty set becomes a reference to a rule with no alternatives (it can
 * never match; the check pass removes what depends on it).
 */
static int gb_lower(gbuild *b) {
  uint32_t n_cs = b->n_cs;
  int32_t *cs_rule = malloc(((size_t)n_cs + 1) * sizeof *cs_rule);
  if (!cs_rule) return gb_nomem(b);
  for (uint32_t i = 0; i < n_cs; i++) cs_rule[i] = -1;
  int rc = 0;
  uint32_t n_rules = b->n_rules;
  for (uint32_t r = 0; r < n_rules && rc == 0; r++) {
    for (uint32_t a = 0; a < b->rules[r].n && rc == 0; a++) {
      for (uint32_t k = 0; k < b->rules[r].alts[a].n && rc == 0; k++) {
        pel *e = &b->rules[r].alts[a].e[k];
        if (e->kind != PEL_CS) continue;
        uint32_t ci = e->arg;
        const pcs *c = &b->cs[ci];
        const uint32_t *rg = b->cs_ranges.v + 2 * c->off;
        if (c->n > 0 && rg[2 * c->n - 1] < 0x80) {
          gbyteset s;
          memset(&s, 0, sizeof s);
          for (uint32_t i = 0; i < c->n; i++)
            for (uint32_t x = rg[2 * i]; x <= rg[2 * i + 1]; x++) s.w[x >> 5] |= 1u << (x & 31);
          uint32_t set = 0;
          rc = gb_set_intern(b, &s, &set);
          e = &b->rules[r].alts[a].e[k];
          e->kind = PEL_BYTES;
          e->arg = set;
          continue;
        }
        /* Same set content seen before (literals repeat characters)? */
        int32_t found = cs_rule[ci];
        for (uint32_t j = 0; j < n_cs && found < 0; j++) {
          if (cs_rule[j] < 0 || b->cs[j].n != c->n) continue;
          if (memcmp(b->cs_ranges.v + 2 * b->cs[j].off, rg, (size_t)c->n * 2 * sizeof *rg) == 0)
            found = cs_rule[j];
        }
        if (found < 0) {
          uint32_t u = 0;
          if ((rc = gb_rule_synth(b, r, &u)) < 0) break;
          /* re-read: the rule table may have moved */
          c = &b->cs[ci];
          rg = b->cs_ranges.v + 2 * c->off;
          /* the ASCII part as one alternative of one byte set */
          gbyteset s;
          memset(&s, 0, sizeof s);
          bool any_ascii = false;
          for (uint32_t i = 0; i < c->n && rc == 0; i++) {
            uint32_t lo = rg[2 * i], hi = rg[2 * i + 1];
            for (; lo <= hi && lo < 0x80; lo++) {
              s.w[lo >> 5] |= 1u << (lo & 31);
              any_ascii = true;
            }
            if (lo > hi) continue;
            /* skip the surrogates */
            if (lo < 0xD800 && hi >= 0xD800) {
              rc = gb_utf8_range(b, u, lo, 0xD7FF);
              lo = 0xE000;
            } else if (lo >= 0xD800 && lo <= 0xDFFF) {
              lo = 0xE000;
            }
            if (rc == 0 && lo <= hi) rc = gb_utf8_range(b, u, lo, hi);
            rg = b->cs_ranges.v + 2 * b->cs[ci].off;
          }
          if (rc == 0 && any_ascii) {
            uint32_t alt = 0, set = 0;
            if ((rc = gb_set_intern(b, &s, &set)) == 0 && (rc = gb_alt_new(b, u, &alt)) == 0)
              rc = gb_push(b, u, alt, PEL_BYTES, set);
          }
          found = (int32_t)u;
          cs_rule[ci] = found;
        }
        e = &b->rules[r].alts[a].e[k];
        e->kind = PEL_REF;
        e->arg = (uint32_t)found;
      }
    }
  }
  free(cs_rule);
  return rc;
}

/* ---- checks and the final arrays ---- */

/* Left recursion: a cycle of rules each of which can begin with the next
 * (after elements that can match the empty string). Iterative DFS. */
static int gb_check_left_recursion(gbuild *b, const bool *nullable) {
  uint32_t n = b->n_rules;
  uint8_t *color = calloc(n, 1); /* 0 new, 1 on the path, 2 done */
  uint32_t *stk = malloc((size_t)n * 3 * sizeof *stk); /* rule, alt, elem */
  if (!color || !stk) {
    free(color);
    free(stk);
    return gb_nomem(b);
  }
  int rc = 0;
  for (uint32_t r0 = 0; r0 < n && rc == 0; r0++) {
    if (color[r0]) continue;
    uint32_t sp = 0;
    stk[0] = r0;
    stk[1] = 0;
    stk[2] = 0;
    sp = 1;
    color[r0] = 1;
    while (sp && rc == 0) {
      uint32_t *f = &stk[3 * (sp - 1)];
      prule *r = &b->rules[f[0]];
      if (f[1] >= r->n) {
        color[f[0]] = 2;
        sp--;
        continue;
      }
      palt *a = &r->alts[f[1]];
      if (f[2] >= a->n) {
        f[1]++;
        f[2] = 0;
        continue;
      }
      pel *e = &a->e[f[2]];
      bool go_on = e->kind == PEL_REF && nullable[e->arg];
      uint32_t target = e->kind == PEL_REF ? e->arg : UINT32_MAX;
      if (go_on) f[2]++;
      else {
        f[1]++;
        f[2] = 0;
      }
      if (target == UINT32_MAX) continue;
      if (color[target] == 1) {
        rc = b->err = llorch_errmsg_set(b->em, LLORCH_EINVAL,
                                        "left recursion through rule '%s' (a rule that can "
                                        "begin with itself)", b->rules[target].name);
      } else if (color[target] == 0) {
        color[target] = 1;
        stk[3 * sp] = target;
        stk[3 * sp + 1] = 0;
        stk[3 * sp + 2] = 0;
        sp++;
      }
    }
  }
  free(color);
  free(stk);
  return rc;
}

/* Builds g's arrays from the lowered builder, dropping alternatives that can
 * never complete. */
static int gb_finish(gbuild *b, llorch_grammar *g) {
  uint32_t n = b->n_rules;
  bool *nullable = calloc(n, 1), *productive = calloc(n, 1);
  int rc = 0;
  if (!nullable || !productive) {
    rc = gb_nomem(b);
    goto out;
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (uint32_t r = 0; r < n; r++) {
      for (uint32_t a = 0; a < b->rules[r].n; a++) {
        palt *al = &b->rules[r].alts[a];
        bool nul = true, prod = true;
        for (uint32_t k = 0; k < al->n; k++) {
          if (al->e[k].kind == PEL_BYTES) nul = false;
          else {
            if (!nullable[al->e[k].arg]) nul = false;
            if (!productive[al->e[k].arg]) prod = false;
          }
        }
        if (nul && !nullable[r]) nullable[r] = changed = true;
        if (prod && !productive[r]) productive[r] = changed = true;
      }
    }
  }
  uint32_t root = UINT32_MAX;
  for (uint32_t r = 0; r < n; r++)
    if (strcmp(b->rules[r].name, "root") == 0) root = r;
  if (root == UINT32_MAX) {
    rc = b->err = llorch_errmsg_set(b->em, LLORCH_EINVAL, "the grammar has no 'root' rule");
    goto out;
  }
  if (!productive[root]) {
    rc = b->err = llorch_errmsg_set(b->em, LLORCH_EINVAL,
                                    "the grammar matches nothing: rule 'root' can never "
                                    "complete (an empty character class, or recursion "
                                    "without a way out)");
    goto out;
  }
  if ((rc = gb_check_left_recursion(b, nullable)) < 0) goto out;

  /* count what survives */
  uint32_t n_alts = 0, n_elems = 0;
  for (uint32_t r = 0; r < n; r++)
    for (uint32_t a = 0; a < b->rules[r].n; a++) {
      palt *al = &b->rules[r].alts[a];
      bool prod = true;
      for (uint32_t k = 0; k < al->n; k++)
        if (al->e[k].kind == PEL_REF && !productive[al->e[k].arg]) prod = false;
      if (!prod) {
        al->n = UINT32_MAX; /* marks a dropped alternative */
        continue;
      }
      n_alts++;
      n_elems += al->n + 1;
    }
  g->elems = malloc((size_t)n_elems * sizeof *g->elems);
  g->alt_start = malloc(((size_t)n_alts + 1) * sizeof *g->alt_start);
  g->rule_alts = malloc(((size_t)n + 1) * sizeof *g->rule_alts);
  g->sets = malloc(((size_t)b->n_sets + 1) * sizeof *g->sets);
  if (!g->elems || !g->alt_start || !g->rule_alts || !g->sets) {
    rc = gb_nomem(b);
    goto out;
  }
  uint32_t ai = 0, ei = 0;
  for (uint32_t r = 0; r < n; r++) {
    g->rule_alts[r] = ai;
    for (uint32_t a = 0; a < b->rules[r].n; a++) {
      palt *al = &b->rules[r].alts[a];
      if (al->n == UINT32_MAX) continue;
      g->alt_start[ai++] = ei;
      for (uint32_t k = 0; k < al->n; k++)
        g->elems[ei++] = (gel){al->e[k].kind == PEL_BYTES ? GEL_BYTES : GEL_REF, al->e[k].arg};
      g->elems[ei++] = (gel){GEL_END, 0};
    }
  }
  g->rule_alts[n] = ai;
  g->n_rules = n;
  g->n_alts = n_alts;
  g->n_elems = n_elems;
  if (b->n_sets) memcpy(g->sets, b->sets, (size_t)b->n_sets * sizeof *g->sets);
  g->n_sets = b->n_sets;
  g->root = root;

out:
  free(nullable);
  free(productive);
  return rc;
}

int grammar_compile_gbnf(llorch_grammar *g, const char *text, size_t len, llorch_errmsg *em) {
  if (len > g->lim.max_text_bytes)
    return llorch_errmsg_set(em, LLORCH_ELIMIT, "the grammar is %zu bytes; the limit is %u", len,
                             g->lim.max_text_bytes);
  gbuild b;
  memset(&b, 0, sizeof b);
  b.src = b.p = text;
  b.end = text + len;
  b.lim = &g->lim;
  b.em = em;
  int rc = gb_parse(&b);
  if (rc == 0) rc = gb_lower(&b);
  if (rc == 0) rc = gb_finish(&b, g);
  for (uint32_t r = 0; r < b.n_rules; r++) {
    for (uint32_t a = 0; a < b.rules[r].n; a++) free(b.rules[r].alts[a].e);
    free(b.rules[r].alts);
    free(b.rules[r].name);
  }
  free(b.rules);
  free(b.cs_ranges.v);
  free(b.cs);
  free(b.sets);
  free(b.set_hash);
  free(b.name_hash);
  return rc;
}
