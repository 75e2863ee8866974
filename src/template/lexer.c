/*
 * Jinja lexer: template text -> tokens, with jinja2's whitespace rules as
 * transformers configures them (trim_blocks, lstrip_blocks, no
 * keep_trailing_newline) and the explicit controls {%- -%} {%+ +%}.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "jinja-impl.h"

typedef struct lexer {
  jarena *a;
  const char *src; /* normalized: \r\n and \r are \n */
  size_t len, pos;
  int line;
  jtok *toks;
  size_t n, cap;
  llorch_errmsg *em;
} lexer;

static int lex_push(lexer *L, jtok t) {
  if (L->n == L->cap) {
    size_t cap = L->cap ? L->cap * 2 : 256;
    jtok *nt = realloc(L->toks, cap * sizeof *nt);
    if (!nt) return LLORCH_ENOMEM;
    L->toks = nt;
    L->cap = cap;
  }
  if (t.line == 0) t.line = L->line;
  L->toks[L->n++] = t;
  return 0;
}

static int lex_fail(lexer *L, const char *what) {
  return llorch_errmsg_set(L->em, LLORCH_EFORMAT, "TemplateSyntaxError: %s (line %d)", what, L->line);
}

static void lex_count_lines(lexer *L, size_t from, size_t to) {
  for (size_t i = from; i < to; i++)
    if (L->src[i] == '\n') L->line++;
}

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\f' || ch == '\v' || ch == '\r'; }

static int lex_data(lexer *L, const char *s, size_t n) {
  if (n == 0) return 0;
  char *d = jarena_alloc(L->a, n + 1);
  if (!d) return LLORCH_ENOMEM;
  memcpy(d, s, n);
  return lex_push(L, (jtok){.type = JT_DATA, .s = d, .len = n});
}

/* Python string escapes (jinja decodes literals with "unicode-escape"). */
static int lex_string(lexer *L, jtok *t) {
  char q = L->src[L->pos];
  size_t start = ++L->pos;
  while (L->pos < L->len && L->src[L->pos] != q) {
    if (L->src[L->pos] == '\\' && L->pos + 1 < L->len) L->pos++;
    L->pos++;
  }
  if (L->pos >= L->len) return lex_fail(L, "unexpected end of string");
  size_t end = L->pos++;
  char *d = jarena_alloc(L->a, (end - start) * 4 + 1), *o = d;
  if (!d) return LLORCH_ENOMEM;
  for (size_t i = start; i < end; i++) {
    char ch = L->src[i];
    if (ch == '\n') L->line++;
    if (ch != '\\' || i + 1 >= end) {
      *o++ = ch;
      continue;
    }
    char e = L->src[++i];
    uint32_t cp = 0;
    int digits = 0;
    switch (e) {
    case 'n': *o++ = '\n'; break;
    case 't': *o++ = '\t'; break;
    case 'r': *o++ = '\r'; break;
    case 'b': *o++ = '\b'; break;
    case 'f': *o++ = '\f'; break;
    case 'v': *o++ = '\v'; break;
    case 'a': *o++ = '\a'; break;
    case '0': *o++ = '\0'; break;
    case '\\': *o++ = '\\'; break;
    case '\'': *o++ = '\''; break;
    case '"': *o++ = '"'; break;
    case '\n': L->line++; break;
    case 'x': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    default:
      *o++ = '\\';
      *o++ = e;
    }
    if (!digits) continue;
    if (i + (size_t)digits >= end) return lex_fail(L, "truncated \\x/\\u escape in a string");
    for (int k = 0; k < digits; k++) {
      char h = L->src[++i];
      if (!isxdigit((unsigned char)h)) return lex_fail(L, "bad \\x/\\u escape in a string");
      cp = cp * 16 + (uint32_t)(isdigit((unsigned char)h) ? h - '0' : (tolower((unsigned char)h) - 'a' + 10));
    }
    if (cp > 0x10FFFF) return lex_fail(L, "\\U escape out of range");
    if (cp < 0x80) *o++ = (char)cp;
    else if (cp < 0x800) {
      *o++ = (char)(0xC0 | (cp >> 6));
      *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      *o++ = (char)(0xE0 | (cp >> 12));
      *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
      *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
      *o++ = (char)(0xF0 | (cp >> 18));
      *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
      *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
      *o++ = (char)(0x80 | (cp & 0x3F));
    }
  }
  *o = 0;
  t->type = JT_STRING;
  t->s = d;
  t->len = (size_t)(o - d);
  return 0;
}

/*
 * Tokens inside {{ }} or {% %} up to the end marker (end_ch '}' or '%').
 * Returns the strip sign of the end ('-', '+' or 0) in *sign.
 */
static int lex_tag(lexer *L, char end_ch, int *sign) {
  int depth = 0, rc;
  for (;;) {
    while (L->pos < L->len && is_space(L->src[L->pos])) {
      if (L->src[L->pos] == '\n') L->line++;
      L->pos++;
    }
    if (L->pos >= L->len) return lex_fail(L, end_ch == '}' ? "unexpected end of template, expected '}}'"
                                                            : "unexpected end of template, expected '%}'");
    const char *p = L->src + L->pos;
    size_t left = L->len - L->pos;
    /* jinja ignores end markers while brackets are open: {{ {'a': {}} }} */
    if (depth == 0) {
      if ((p[0] == '-' || p[0] == '+') && left >= 3 && p[1] == end_ch && p[2] == '}') {
        *sign = p[0];
        L->pos += 3;
        return 0;
      }
      if (left >= 2 && p[0] == end_ch && p[1] == '}') {
        *sign = 0;
        L->pos += 2;
        return 0;
      }
    }
    jtok t = {.line = L->line};
    char ch = p[0];
    if (isalpha((unsigned char)ch) || ch == '_') {
      size_t k = 1;
      while (k < left && (isalnum((unsigned char)p[k]) || p[k] == '_')) k++;
      t.type = JT_NAME;
      t.s = p;
      t.len = k;
      L->pos += k;
    } else if (isdigit((unsigned char)ch)) {
      size_t k = 0;
      bool is_float = false;
      char buf[64];
      size_t bn = 0;
      while (k < left && (isdigit((unsigned char)p[k]) || p[k] == '_')) {
        if (p[k] != '_' && bn < sizeof buf - 1) buf[bn++] = p[k];
        k++;
      }
      if (k + 1 < left && p[k] == '.' && isdigit((unsigned char)p[k + 1])) {
        is_float = true;
        if (bn < sizeof buf - 1) buf[bn++] = '.';
        k++;
        while (k < left && (isdigit((unsigned char)p[k]) || p[k] == '_')) {
          if (p[k] != '_' && bn < sizeof buf - 1) buf[bn++] = p[k];
          k++;
        }
      }
      if (k < left && (p[k] == 'e' || p[k] == 'E')) {
        size_t e = k + 1;
        if (e < left && (p[e] == '+' || p[e] == '-')) e++;
        if (e < left && isdigit((unsigned char)p[e])) {
          is_float = true;
          for (size_t q = k; q < e && bn < sizeof buf - 1; q++) buf[bn++] = p[q];
          k = e;
          while (k < left && isdigit((unsigned char)p[k])) {
            if (bn < sizeof buf - 1) buf[bn++] = p[k];
            k++;
          }
        }
      }
      buf[bn] = 0;
      if (is_float) {
        t.type = JT_FLOAT;
        t.f = strtod(buf, NULL);
      } else {
        t.type = JT_INT;
        char *endp;
        unsigned long long v = strtoull(buf, &endp, 10);
        if (bn > 18 && v > (unsigned long long)INT64_MAX) return lex_fail(L, "integer literal too large");
        t.i = (int64_t)v;
      }
      L->pos += k;
    } else if (ch == '\'' || ch == '"') {
      if ((rc = lex_string(L, &t)) != 0) return rc;
    } else {
      int op = ch;
      size_t k = 1;
      if (left >= 2) {
        if (p[0] == '=' && p[1] == '=') op = JOP_EQ, k = 2;
        else if (p[0] == '!' && p[1] == '=') op = JOP_NE, k = 2;
        else if (p[0] == '<' && p[1] == '=') op = JOP_LE, k = 2;
        else if (p[0] == '>' && p[1] == '=') op = JOP_GE, k = 2;
        else if (p[0] == '/' && p[1] == '/') op = JOP_FLOORDIV, k = 2;
        else if (p[0] == '*' && p[1] == '*') op = JOP_POW, k = 2;
      }
      if (k == 1 && !strchr("+-*/%~()[]{},.:|=<>", ch)) return lex_fail(L, "unexpected character in a tag");
      if (ch == '(' || ch == '[' || ch == '{') depth++;
      if ((ch == ')' || ch == ']' || ch == '}') && depth > 0) depth--;
      t.type = JT_OP;
      t.op = op;
      L->pos += k;
    }
    if ((rc = lex_push(L, t)) != 0) return rc;
  }
}

/* After a tag's end: -  strips all whitespace; trim_blocks one newline
 * (block and comment tags only). Returns whether a newline was consumed
 * (jinja's "line starting" for lstrip_blocks at the next tag). */
static bool lex_after_tag(lexer *L, int sign, bool is_block) {
  bool newline = false;
  if (sign == '-') {
    while (L->pos < L->len && is_space(L->src[L->pos])) {
      newline = L->src[L->pos] == '\n';
      if (newline) L->line++;
      L->pos++;
    }
  } else if (sign != '+' && is_block && L->pos < L->len && L->src[L->pos] == '\n') {
    L->pos++;
    L->line++;
    newline = true;
  }
  return newline;
}

/* {% raw %}...{% endraw %}: the text between, as data. */
static int lex_raw(lexer *L, bool *line_starting) {
  for (size_t p = L->pos; p + 1 < L->len; p++) {
    if (L->src[p] != '{' || L->src[p + 1] != '%') continue;
    size_t q = p + 2;
    bool strip_before = q < L->len && L->src[q] == '-';
    if (q < L->len && (L->src[q] == '-' || L->src[q] == '+')) q++;
    while (q < L->len && is_space(L->src[q])) q++;
    if (L->len - q < 6 || memcmp(L->src + q, "endraw", 6) != 0) continue;
    q += 6;
    while (q < L->len && is_space(L->src[q])) q++;
    int sign = 0;
    if (q < L->len && (L->src[q] == '-' || L->src[q] == '+')) sign = L->src[q++];
    if (L->len - q < 2 || L->src[q] != '%' || L->src[q + 1] != '}') continue;
    size_t end = p;
    if (strip_before)
      while (end > L->pos && is_space(L->src[end - 1])) end--;
    int rc = lex_data(L, L->src + L->pos, end - L->pos);
    if (rc) return rc;
    lex_count_lines(L, L->pos, q + 2);
    L->pos = q + 2;
    *line_starting = lex_after_tag(L, sign, true);
    return 0;
  }
  return lex_fail(L, "missing {% endraw %}");
}

int jinja_lex(jarena *a, const char *src, size_t len, jtok **out, size_t *n, llorch_errmsg *em) {
  /* jinja normalizes newlines and drops one trailing newline */
  char *norm = jarena_alloc(a, len + 1);
  if (!norm) return LLORCH_ENOMEM;
  size_t m = 0;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == '\r') {
      norm[m++] = '\n';
      if (i + 1 < len && src[i + 1] == '\n') i++;
    } else {
      norm[m++] = src[i];
    }
  }
  if (m > 0 && norm[m - 1] == '\n') m--;
  norm[m] = 0;
  lexer L = {.a = a, .src = norm, .len = m, .line = 1, .em = em};
  bool line_starting = true;
  int rc = 0;
  while (L.pos < L.len) {
    /* next tag opening */
    size_t t = L.pos;
    const char *hit = NULL;
    while ((hit = memchr(L.src + t, '{', L.len - t)) != NULL) {
      t = (size_t)(hit - L.src);
      if (t + 1 < L.len && (L.src[t + 1] == '{' || L.src[t + 1] == '%' || L.src[t + 1] == '#')) break;
      t++;
      hit = NULL;
      if (t >= L.len) break;
    }
    if (!hit) {
      if ((rc = lex_data(&L, L.src + L.pos, L.len - L.pos)) != 0) goto fail;
      lex_count_lines(&L, L.pos, L.len);
      L.pos = L.len;
      break;
    }
    char kind = L.src[t + 1];
    char sign = t + 2 < L.len && (L.src[t + 2] == '-' || L.src[t + 2] == '+') ? L.src[t + 2] : 0;
    size_t text_end = t;
    if (sign == '-') {
      while (text_end > L.pos && is_space(L.src[text_end - 1])) text_end--;
    } else if (sign != '+' && kind != '{') {
      /* lstrip_blocks: only spaces/tabs between the line start and the tag */
      size_t ls = text_end;
      while (ls > L.pos && L.src[ls - 1] != '\n') ls--;
      bool at_line_start = ls > L.pos || line_starting;
      bool blank = ls < text_end;
      for (size_t q = ls; q < text_end; q++)
        if (!is_space(L.src[q])) blank = false;
      if (at_line_start && blank) text_end = ls;
    }
    if ((rc = lex_data(&L, L.src + L.pos, text_end - L.pos)) != 0) goto fail;
    lex_count_lines(&L, L.pos, t);
    L.pos = t + 2 + (sign ? 1 : 0);
    int end_sign = 0;
    if (kind == '#') {
      const char *e = NULL;
      for (size_t q = L.pos; q + 1 < L.len; q++)
        if (L.src[q] == '#' && L.src[q + 1] == '}') {
          e = L.src + q;
          break;
        }
      if (!e) {
        rc = lex_fail(&L, "missing end of comment tag");
        goto fail;
      }
      size_t epos = (size_t)(e - L.src);
      if (epos > L.pos && (L.src[epos - 1] == '-' || L.src[epos - 1] == '+')) end_sign = L.src[epos - 1];
      lex_count_lines(&L, L.pos, epos);
      L.pos = epos + 2;
      line_starting = lex_after_tag(&L, end_sign, true);
      continue;
    }
    size_t first = L.n;
    if ((rc = lex_push(&L, (jtok){.type = kind == '{' ? JT_VAR_BEGIN : JT_BLOCK_BEGIN})) != 0) goto fail;
    if ((rc = lex_tag(&L, kind == '{' ? '}' : '%', &end_sign)) != 0) goto fail;
    if ((rc = lex_push(&L, (jtok){.type = kind == '{' ? JT_VAR_END : JT_BLOCK_END})) != 0) goto fail;
    line_starting = lex_after_tag(&L, end_sign, kind == '%');
    if (kind == '%' && L.n - first == 3 && L.toks[first + 1].type == JT_NAME && L.toks[first + 1].len == 3 &&
        memcmp(L.toks[first + 1].s, "raw", 3) == 0) {
      L.n = first;
      if ((rc = lex_raw(&L, &line_starting)) != 0) goto fail;
    }
  }
  if ((rc = lex_push(&L, (jtok){.type = JT_EOF})) != 0) goto fail;
  /* tokens live in the arena with the rest of the template */
  jtok *toks = jarena_alloc(a, L.n * sizeof *toks);
  if (!toks) {
    rc = LLORCH_ENOMEM;
    goto fail;
  }
  memcpy(toks, L.toks, L.n * sizeof *toks);
  *out = toks;
  *n = L.n;
  free(L.toks);
  return 0;
fail:
  free(L.toks);
  if (rc == LLORCH_ENOMEM) llorch_errmsg_set(em, rc, "out of memory compiling a template");
  return rc;
}
