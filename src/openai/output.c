/*
 * Generated text -> content, reasoning and tool calls, incrementally.
 *
 * The parser keeps only what is still uncertain: the tail of the text that
 * could be the start of a marker ("<tool_" could become "<tool_call>"), the
 * body of a tool call until its end marker, and trailing whitespace of the
 * content (dropped when a call follows it). Everything else goes out at
 * once, so content streams as it is generated and no markup leaks.
 *
 * Modes:
 *   CONTENT    plain text; looks for the format's call markers, and at the
 *              very start for "<think>" and a bare JSON call
 *   REASONING  inside <think>..</think>: no call is recognised here (a call
 *              drafted while thinking is not a call)
 *   CALL       a call's body until its end marker (or the end of output)
 *   BARE       a JSON value at the start of the output that may be a call
 *   RECIPIENT  functionary: the name after ">>>" up to the newline
 * A body that does not parse as a call is given back as content, markers
 * and all: text that only looks like a call stays text.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "llorch/openai.h"

/* ---- formats ---- */

static const char *const format_names[] = {"none",    "json",        "hermes",   "llama3",
                                           "mistral", "qwen3_coder", "deepseek", "functionary"};

const char *llorch_tool_format_name(llorch_tool_format f) {
  return (unsigned)f < sizeof format_names / sizeof format_names[0] ? format_names[f] : "none";
}

int llorch_tool_format_parse(const char *s, llorch_tool_format *out) {
  for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++) {
    if (strcmp(s, format_names[i]) == 0) {
      *out = (llorch_tool_format)i;
      return 0;
    }
  }
  return LLORCH_EINVAL;
}

#define DS_CALLS_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_CALLS_END "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_CALL_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_CALL_END "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_SEP "<\xef\xbd\x9ctool\xe2\x96\x81" "sep\xef\xbd\x9c>"

llorch_tool_format llorch_tool_format_detect(const char *t) {
  if (!t) return LLORCH_TOOL_FORMAT_JSON;
#define HAS(s) (strstr(t, (s)) != NULL)
  /* Qwen3-Coder also writes <tool_call>: its XML body decides first. */
  if (HAS("<function=") && HAS("<parameter=")) return LLORCH_TOOL_FORMAT_QWEN3_CODER;
  if (HAS("<tool_call>")) return LLORCH_TOOL_FORMAT_HERMES;
  if (HAS("[TOOL_CALLS]")) return LLORCH_TOOL_FORMAT_MISTRAL;
  if (HAS("tool\xe2\x96\x81" "calls\xe2\x96\x81" "begin")) return LLORCH_TOOL_FORMAT_DEEPSEEK;
  if (HAS(">>>all")) return LLORCH_TOOL_FORMAT_FUNCTIONARY;
  if (HAS("<|python_tag|>") || (HAS("<|start_header_id|>") && HAS("ipython")))
    return LLORCH_TOOL_FORMAT_LLAMA3;
#undef HAS
  return LLORCH_TOOL_FORMAT_JSON;
}

/* ---- the parser ---- */

typedef enum out_mode {
  OUT_CONTENT = 0,
  OUT_REASONING,
  OUT_CALL,
  OUT_BARE,
  OUT_RECIPIENT,
} out_mode;

typedef enum call_kind {
  CALL_TAGGED = 0, /* <tool_call> .. </tool_call>: JSON or Qwen3-Coder XML body */
  CALL_PYTHON_TAG, /* <|python_tag|> .. end of output */
  CALL_MISTRAL,    /* [TOOL_CALLS] then one JSON value or name[ARGS]{..} */
  CALL_DEEPSEEK,   /* calls_begin .. calls_end */
  CALL_FUNCTIONARY /* >>>name\n{..} up to the next ">>>" */
} call_kind;

/* A JSON value being scanned as it arrives (where does it end?), so that
 * each byte of a held body is looked at once, not once per token. */
typedef struct out_jscan {
  size_t pos;              /* bytes of the body scanned */
  int depth;
  bool started, in_str, esc;
} out_jscan;

typedef struct out_marker {
  const char *text;
  call_kind kind;
} out_marker;

struct llorch_openai_output {
  llorch_openai_output_opts o;
  const char *think_open, *think_close;
  llorch_openai_emit_fn emit;
  void *user;
  llorch_jbuf buf;         /* pending text, not yet decided */
  size_t scan;             /* CALL: bytes of buf already searched for the end marker */
  out_jscan js;            /* BARE, Mistral CALL: the JSON value being held */
  size_t args_at;          /* Mistral NAME[ARGS]{..}: offset of the JSON + 1, 0 = not seen */
  /* A <tool_call> whose body starts {"name": "N", "arguments": {: the
   * call goes out at once and its arguments stream as they are written. */
  int live;                /* 0 = not (yet), 1 = arguments streaming, 2 = arguments done,
                              -1 = the body does not start that way (held whole) */
  size_t live_args;        /* offset of the arguments object in buf */
  size_t live_sent;        /* bytes of it sent */
  out_mode mode;
  call_kind kind;
  const char *open_marker; /* what opened the current call (given back on failure) */
  char name[96];           /* functionary: the recipient of the current call */
  bool at_start;           /* only whitespace so far: <think> and bare JSON allowed */
  bool skip_ws;            /* drop leading whitespace (after </think> or a call) */
  bool skip_semicolon;     /* with skip_ws: also ';' (between Llama 3.2 calls) */
  out_marker markers[2];
  int n_markers;
  llorch_jbuf held_ws;     /* trailing whitespace of the content, not yet sent */
  int n_calls;
  uint64_t rng;
  int err;
};

static bool out_is_ws(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

static bool out_starts(const char *s, size_t n, const char *prefix) {
  size_t k = strlen(prefix);
  return n >= k && memcmp(s, prefix, k) == 0;
}

/* s[0..n) is a proper prefix of marker? */
static bool out_is_prefix_of(const char *s, size_t n, const char *marker) {
  size_t k = strlen(marker);
  return n < k && memcmp(s, marker, n) == 0;
}

static const char *out_memmem(const char *h, size_t hn, const char *needle) {
  size_t nn = strlen(needle);
  if (nn == 0 || hn < nn) return NULL;
  const char *end = h + hn - nn;
  for (const char *p = h; p <= end; p++) {
    p = memchr(p, needle[0], (size_t)(end - p) + 1);
    if (!p) return NULL;
    if (memcmp(p, needle, nn) == 0) return p;
  }
  return NULL;
}

/* The longest suffix of s[0..n) that is a proper prefix of marker. */
static size_t out_partial_suffix(const char *s, size_t n, const char *marker) {
  size_t k = strlen(marker);
  size_t best = k - 1 < n ? k - 1 : n;
  for (size_t len = best; len > 0; len--)
    if (memcmp(s + n - len, marker, len) == 0) return len;
  return 0;
}

static void out_consume(llorch_openai_output *p, size_t n) {
  if (n >= p->buf.len) {
    llorch_jbuf_reset(&p->buf);
    return;
  }
  memmove(p->buf.data, p->buf.data + n, p->buf.len - n);
  p->buf.len -= n;
  p->buf.data[p->buf.len] = 0;
}

/* ---- emitting ---- */

static void out_send(llorch_openai_output *p, const llorch_openai_delta *d) {
  p->emit(p->user, d);
}

static void out_send_content(llorch_openai_output *p, const char *s, size_t n) {
  if (!n) return;
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.content = s;
  d.content_len = n;
  out_send(p, &d);
}

/* Content with its trailing whitespace held back (a call may follow). */
static void out_content(llorch_openai_output *p, const char *s, size_t n) {
  if (!n) return;
  size_t k = n;
  while (k && out_is_ws(s[k - 1])) k--;
  if (k) {
    if (p->held_ws.len) out_send_content(p, p->held_ws.data, p->held_ws.len);
    llorch_jbuf_reset(&p->held_ws);
    out_send_content(p, s, k);
  }
  llorch_jbuf_raw(&p->held_ws, s + k, n - k);
  if (llorch_jbuf_error(&p->held_ws) < 0) p->err = LLORCH_ENOMEM;
}

static void out_reasoning(llorch_openai_output *p, const char *s, size_t n) {
  if (!n) return;
  if (p->o.reasoning) {
    llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
    d.reasoning = s;
    d.reasoning_len = n;
    out_send(p, &d);
  } else {
    out_content(p, s, n);
  }
}

static void out_make_id(llorch_openai_output *p, char *id, size_t cap, bool mistral) {
  static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  size_t pos = 0;
  if (!mistral) pos = (size_t)snprintf(id, cap, "call_");
  size_t n = mistral ? 9 : 24; /* Mistral templates require exactly 9 alphanumerics */
  for (size_t i = 0; i < n && pos + 1 < cap; i++) {
    /* xorshift64*: ids need to be unique, not secret */
    p->rng ^= p->rng >> 12;
    p->rng ^= p->rng << 25;
    p->rng ^= p->rng >> 27;
    uint64_t r = p->rng * 0x2545F4914F6CDD1Dull;
    id[pos++] = alnum[(r >> 32) % (sizeof alnum - 1)];
  }
  id[pos] = 0;
}

static bool out_id_mistral_ok(const char *s) {
  if (strlen(s) != 9) return false;
  for (int i = 0; i < 9; i++)
    if (!isalnum((unsigned char)s[i])) return false;
  return true;
}

/* One call: the id and name first, then the arguments. */
static void out_emit_call(llorch_openai_output *p, const char *name, const cJSON *args,
                          const char *given_id) {
  char id[48];
  bool mistral = p->o.format == LLORCH_TOOL_FORMAT_MISTRAL;
  if (given_id && (!mistral || out_id_mistral_ok(given_id)) && strlen(given_id) < sizeof id)
    snprintf(id, sizeof id, "%s", given_id);
  else
    out_make_id(p, id, sizeof id, mistral);
  char *text = args ? llorch_json_print(args) : NULL;
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = p->n_calls;
  d.tool_id = id;
  d.tool_name = name;
  d.tool_args = "";
  out_send(p, &d);
  d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = p->n_calls;
  d.tool_args = text ? text : "{}";
  d.tool_args_len = strlen(d.tool_args);
  out_send(p, &d);
  if (args && !text) p->err = LLORCH_ENOMEM;
  free(text);
  p->n_calls++;
}

/* The head of a call streamed live: index, id and name. */
static void out_emit_call_head(llorch_openai_output *p, const char *name) {
  char id[48];
  out_make_id(p, id, sizeof id, p->o.format == LLORCH_TOOL_FORMAT_MISTRAL);
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = p->n_calls++;
  d.tool_id = id;
  d.tool_name = name;
  d.tool_args = "";
  out_send(p, &d);
  llorch_jbuf_reset(&p->held_ws); /* whitespace before a call is not content */
}

static void out_emit_call_args(llorch_openai_output *p, const char *s, size_t n) {
  if (!n) return;
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = p->n_calls - 1;
  d.tool_args = s;
  d.tool_args_len = n;
  out_send(p, &d);
}

/* ---- call bodies ---- */

/* A list of parsed calls, emitted only once the whole body parsed. */
typedef struct out_calls {
  cJSON *list; /* [{name, arguments(object), id?}] */
} out_calls;

static bool out_name_ok(const char *s) {
  size_t n = strlen(s);
  if (!n || n > 64) return false;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return false;
  return true;
}

static bool out_tool_known(const llorch_openai_output *p, const char *name) {
  for (const cJSON *t = p->o.tool_list ? p->o.tool_list->child : NULL; t; t = t->next) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
    if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0) return true;
  }
  return false;
}

/* The JSON schema type of parameter `param` of tool `name`, or NULL. */
static const char *out_param_type(const llorch_openai_output *p, const char *name,
                                  const char *param) {
  for (const cJSON *t = p->o.tool_list ? p->o.tool_list->child : NULL; t; t = t->next) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (!cJSON_IsString(n) || strcmp(n->valuestring, name) != 0) continue;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(fn, "parameters"), "properties");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(props, param), "type");
    return cJSON_IsString(type) ? type->valuestring : NULL;
  }
  return NULL;
}

/* Adds {name, arguments, id} to calls; arguments may be an object or a JSON
 * string holding one; false when it is neither. */
static bool out_calls_add(out_calls *c, const char *name, const cJSON *args, const char *id) {
  if (!out_name_ok(name)) return false;
  cJSON *a = NULL;
  if (!args || cJSON_IsNull(args)) a = cJSON_CreateObject();
  else if (cJSON_IsObject(args)) a = cJSON_Duplicate(args, true);
  else if (cJSON_IsString(args)) {
    a = cJSON_Parse(args->valuestring);
    if (!cJSON_IsObject(a)) {
      cJSON_Delete(a);
      return false;
    }
  } else {
    return false;
  }
  cJSON *o = cJSON_CreateObject();
  if (!a || !o) {
    cJSON_Delete(a);
    cJSON_Delete(o);
    return false;
  }
  cJSON_AddStringToObject(o, "name", name);
  cJSON_AddItemToObject(o, "arguments", a);
  if (id) cJSON_AddStringToObject(o, "id", id);
  cJSON_AddItemToArray(c->list, o);
  return true;
}

/* {"name":..,"arguments"|"parameters":..} or {"type":"function","function":{..}} */
static bool out_calls_add_object(out_calls *c, const cJSON *o) {
  if (!cJSON_IsObject(o)) return false;
  const cJSON *fn = cJSON_GetObjectItemCaseSensitive(o, "function");
  const cJSON *src = cJSON_IsObject(fn) ? fn : o;
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(src, "name");
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(src, "arguments");
  if (!args) args = cJSON_GetObjectItemCaseSensitive(src, "parameters");
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
  if (!cJSON_IsString(name)) return false;
  return out_calls_add(c, name->valuestring, args, cJSON_IsString(id) ? id->valuestring : NULL);
}

/* Parses a whole JSON text (trimmed); NULL unless it is all one value. */
static cJSON *out_parse_json(const char *s, size_t n) {
  while (n && out_is_ws(*s)) s++, n--;
  while (n && out_is_ws(s[n - 1])) n--;
  if (!n) return NULL;
  const char *end = NULL;
  cJSON *v = cJSON_ParseWithLengthOpts(s, n, &end, false);
  if (v && end != s + n) {
    cJSON_Delete(v);
    return NULL;
  }
  return v;
}

/*
 * Where the JSON value starting at s (after whitespace) ends: its length
 * including the leading whitespace, 0 while incomplete, -1 when s does not
 * start an object or array. Strings and escapes are followed, so braces in
 * strings do not count.
 */
static long out_json_end(const char *s, size_t n) {
  size_t i = 0;
  while (i < n && out_is_ws(s[i])) i++;
  if (i == n) return 0;
  if (s[i] != '{' && s[i] != '[') return -1;
  int depth = 0;
  bool in_str = false, esc = false;
  for (; i < n; i++) {
    char ch = s[i];
    if (in_str) {
      if (esc) esc = false;
      else if (ch == '\\') esc = true;
      else if (ch == '"') in_str = false;
      continue;
    }
    if (ch == '"') in_str = true;
    else if (ch == '{' || ch == '[') depth++;
    else if (ch == '}' || ch == ']') {
      if (--depth == 0) return (long)(i + 1);
      if (depth < 0) return -1;
    }
  }
  return 0;
}

/* out_json_end, resumable: continues from js over s[0..n) (the same text
 * as before, longer). */
static long out_jscan_run(out_jscan *js, const char *s, size_t n) {
  size_t i = js->pos;
  if (!js->started) {
    while (i < n && out_is_ws(s[i])) i++;
    js->pos = i;
    if (i == n) return 0;
    if (s[i] != '{' && s[i] != '[') return -1;
    js->started = true;
  }
  for (; i < n; i++) {
    char ch = s[i];
    if (js->in_str) {
      if (js->esc) js->esc = false;
      else if (ch == '\\') js->esc = true;
      else if (ch == '"') js->in_str = false;
      continue;
    }
    if (ch == '"') js->in_str = true;
    else if (ch == '{' || ch == '[') js->depth++;
    else if (ch == '}' || ch == ']') {
      if (--js->depth == 0) return (long)(i + 1);
      if (js->depth < 0) return -1;
    }
  }
  js->pos = i;
  return 0;
}

static const char *out_end_marker(call_kind k) {
  switch (k) {
  case CALL_TAGGED: return "</tool_call>";
  case CALL_DEEPSEEK: return DS_CALLS_END;
  case CALL_FUNCTIONARY: return ">>>";
  default: return NULL;
  }
}

/*
 * Does s[0..n) start like {"name": "NAME", "arguments": { (or
 * "parameters")? 1 with name and *args_off (the offset of that '{'), 0
 * while it still could, -1 when it cannot.
 */
static int out_match_head(const char *s, size_t n, char *name, size_t cap, size_t *args_off) {
  size_t i = 0;
#define WS() while (i < n && out_is_ws(s[i])) i++
#define LIT(t)                                                              \
  do {                                                                      \
    size_t lk_ = strlen(t);                                                 \
    size_t lm_ = n - i < lk_ ? n - i : lk_;                                 \
    if (memcmp(s + i, (t), lm_) != 0) return -1;                            \
    if (lm_ < lk_) return 0;                                                \
    i += lk_;                                                               \
  } while (0)
  WS();
  LIT("{");
  WS();
  LIT("\"name\"");
  WS();
  LIT(":");
  WS();
  LIT("\"");
  size_t start = i;
  while (i < n && s[i] != '"') {
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return -1;
    if (i - start >= cap - 1) return -1;
    i++;
  }
  if (i == n) return 0;
  memcpy(name, s + start, i - start);
  name[i - start] = 0;
  i++;
  WS();
  LIT(",");
  WS();
  if (i < n && n - i < 11 && memcmp(s + i, "\"arguments\"", n - i) != 0 &&
      memcmp(s + i, "\"parameters\"", n - i) != 0)
    return -1;
  if (out_starts(s + i, n - i, "\"arguments\"")) i += 11;
  else if (out_starts(s + i, n - i, "\"parameters\"")) i += 12;
  else return n - i < 12 ? 0 : -1;
  WS();
  LIT(":");
  WS();
  if (i == n) return 0;
  if (s[i] != '{') return -1;
  *args_off = i;
  return 1;
#undef WS
#undef LIT
}

/*
 * A <tool_call> body streamed live (see out_match_head). Returns true on a
 * change of state; arguments that arrived go out as a fragment either way.
 */
static bool out_step_live(llorch_openai_output *p, bool final, bool *handled) {
  const char *s = p->buf.data ? p->buf.data : "";
  size_t n = p->buf.len;
  *handled = true;
  if (p->live == 0) {
    char name[96];
    size_t off = 0;
    int m = out_match_head(s, n, name, sizeof name, &off);
    if (m == 1 && p->o.tool_list && !out_tool_known(p, name)) m = -1;
    if (m < 0 || (m == 0 && final)) {
      p->live = -1;
      *handled = false;
      return false;
    }
    if (m == 0) return false;
    out_emit_call_head(p, name);
    p->live = 1;
    p->live_args = off;
    p->live_sent = 0;
    p->js = (out_jscan){0};
    return true;
  }
  if (p->live == 1) {
    const char *a = s + p->live_args;
    size_t an = n - p->live_args;
    long end = out_jscan_run(&p->js, a, an);
    size_t upto = end > 0 ? (size_t)end : an;
    out_emit_call_args(p, a + p->live_sent, upto - p->live_sent);
    p->live_sent = upto;
    if (end > 0 || end < 0) {
      p->live = 2;
      p->scan = p->live_args + upto;
      return true;
    }
    if (!final) return false;
    p->live = 2;
    return true;
  }
  /* arguments done: the rest of the body up to </tool_call> is dropped */
  const char *endm = out_end_marker(p->kind);
  const char *e = out_memmem(s + p->scan, n - p->scan, endm);
  if (!e && !final) {
    size_t ml = strlen(endm);
    if (n >= ml && n - ml + 1 > p->scan) p->scan = n - ml + 1;
    return false;
  }
  out_consume(p, e ? (size_t)(e - s) + strlen(endm) : n);
  p->mode = OUT_CONTENT;
  p->skip_ws = true;
  p->live = 0;
  return true;
}

/* Qwen3-Coder: <function=NAME>\n<parameter=P>\nVALUE\n</parameter>...</function> */
static bool out_parse_xml_call(llorch_openai_output *p, out_calls *c, const char *s, size_t n) {
  while (n && out_is_ws(*s)) s++, n--;
  while (n && out_is_ws(s[n - 1])) n--;
  if (!out_starts(s, n, "<function=")) return false;
  const char *gt = memchr(s, '>', n);
  if (!gt) return false;
  char name[96];
  size_t nl = (size_t)(gt - (s + 10));
  if (nl == 0 || nl >= sizeof name) return false;
  memcpy(name, s + 10, nl);
  name[nl] = 0;
  if (strlen(name) != nl) return false;
  const char *q = gt + 1, *end = s + n;
  cJSON *args = cJSON_CreateObject();
  if (!args) return false;
  bool ok = false;
  for (;;) {
    while (q < end && out_is_ws(*q)) q++;
    if (out_starts(q, (size_t)(end - q), "</function>")) {
      q += 11;
      while (q < end && out_is_ws(*q)) q++;
      ok = q == end;
      break;
    }
    if (!out_starts(q, (size_t)(end - q), "<parameter=")) break;
    const char *pg = memchr(q, '>', (size_t)(end - q));
    if (!pg) break;
    char pname[96];
    size_t pl = (size_t)(pg - (q + 11));
    if (pl == 0 || pl >= sizeof pname) break;
    memcpy(pname, q + 11, pl);
    pname[pl] = 0;
    const char *v = pg + 1;
    const char *ve = out_memmem(v, (size_t)(end - v), "</parameter>");
    if (!ve) break;
    q = ve + 12;
    /* The template writes the value between newlines. */
    if (v < ve && *v == '\n') v++;
    if (ve > v && ve[-1] == '\n') ve--;
    const char *type = out_param_type(p, name, pname);
    cJSON *val = NULL;
    if (!type || strcmp(type, "string") != 0) {
      val = out_parse_json(v, (size_t)(ve - v));
      if (val && cJSON_IsString(val) && !type) {
        /* a quoted value for an untyped parameter: keep the text as written */
        cJSON_Delete(val);
        val = NULL;
      }
    }
    if (!val) {
      char *t = strndup(v, (size_t)(ve - v));
      val = t ? cJSON_CreateString(t) : NULL;
      free(t);
    }
    if (!val) break;
    cJSON_DeleteItemFromObjectCaseSensitive(args, pname);
    cJSON_AddItemToObject(args, pname, val);
  }
  if (ok) ok = out_calls_add(c, name, args, NULL);
  cJSON_Delete(args);
  return ok;
}

/* DeepSeek: <｜tool▁call▁begin｜>[function<｜tool▁sep｜>]NAME..ARGS<｜tool▁call▁end｜> ... */
static bool out_parse_deepseek(out_calls *c, const char *s, size_t n) {
  const char *q = s, *end = s + n;
  int found = 0;
  for (;;) {
    while (q < end && out_is_ws(*q)) q++;
    if (q == end) break;
    if (!out_starts(q, (size_t)(end - q), DS_CALL_BEGIN)) return false;
    q += strlen(DS_CALL_BEGIN);
    const char *ce = out_memmem(q, (size_t)(end - q), DS_CALL_END);
    if (!ce) ce = end; /* the last call may be cut by the end of output */
    const char *sep = out_memmem(q, (size_t)(ce - q), DS_SEP);
    if (!sep) return false;
    const char *a = sep + strlen(DS_SEP);
    char name[96];
    const char *args_s, *args_e = ce;
    if ((size_t)(sep - q) == 8 && memcmp(q, "function", 8) == 0) {
      /* R1: function<sep>NAME\n```json\nARGS\n``` */
      const char *nl = memchr(a, '\n', (size_t)(ce - a));
      if (!nl || (size_t)(nl - a) >= sizeof name) return false;
      memcpy(name, a, (size_t)(nl - a));
      name[nl - a] = 0;
      if (strlen(name) != (size_t)(nl - a)) return false;
      args_s = nl + 1;
    } else {
      /* V3: NAME<sep>ARGS */
      if ((size_t)(sep - q) >= sizeof name) return false;
      memcpy(name, q, (size_t)(sep - q));
      name[sep - q] = 0;
      if (strlen(name) != (size_t)(sep - q)) return false;
      args_s = a;
    }
    while (args_s < args_e && out_is_ws(*args_s)) args_s++;
    if (out_starts(args_s, (size_t)(args_e - args_s), "```json")) args_s += 7;
    while (args_e > args_s && out_is_ws(args_e[-1])) args_e--;
    if (args_e - args_s >= 3 && memcmp(args_e - 3, "```", 3) == 0) args_e -= 3;
    cJSON *args = out_parse_json(args_s, (size_t)(args_e - args_s));
    bool ok = cJSON_IsObject(args) && out_calls_add(c, name, args, NULL);
    cJSON_Delete(args);
    if (!ok) return false;
    found++;
    q = ce == end ? end : ce + strlen(DS_CALL_END);
  }
  return found > 0;
}

/* Mistral: [{"name":..,"arguments":..,"id":..}, ...] or NAME[ARGS]{..} or
 * NAME[CALL_ID]ID[ARGS]{..}. */
static bool out_parse_mistral(out_calls *c, const char *s, size_t n) {
  while (n && out_is_ws(*s)) s++, n--;
  if (n && (s[0] == '[' || s[0] == '{')) {
    cJSON *v = out_parse_json(s, n);
    bool ok = v != NULL;
    if (cJSON_IsArray(v)) {
      for (const cJSON *o = v->child; o && ok; o = o->next) ok = out_calls_add_object(c, o);
      ok = ok && v->child;
    } else if (v) {
      ok = out_calls_add_object(c, v);
    }
    cJSON_Delete(v);
    return ok;
  }
  const char *args = out_memmem(s, n, "[ARGS]");
  if (!args) return false;
  char name[96], id[48] = "";
  const char *name_end = args;
  const char *cid = out_memmem(s, (size_t)(args - s), "[CALL_ID]");
  if (cid) {
    size_t il = (size_t)(args - (cid + 9));
    if (il >= sizeof id) return false;
    memcpy(id, cid + 9, il);
    id[il] = 0;
    name_end = cid;
  }
  if ((size_t)(name_end - s) >= sizeof name) return false;
  memcpy(name, s, (size_t)(name_end - s));
  name[name_end - s] = 0;
  if (strlen(name) != (size_t)(name_end - s)) return false; /* a NUL byte in the name */
  const char *a = args + 6;
  cJSON *v = out_parse_json(a, (size_t)(s + n - a));
  bool ok = cJSON_IsObject(v) && out_calls_add(c, name, v, id[0] ? id : NULL);
  cJSON_Delete(v);
  return ok;
}

/* A JSON text that is one call or several: {"tool_calls":[..]}, {"tool_call":{..}},
 * {"name":..}, [..], or objects separated by ';' (Llama 3.2). known: names
 * must be among the request's tools (the bare fallback). */
static bool out_parse_json_calls(llorch_openai_output *p, out_calls *c, const char *s, size_t n,
                                 bool known) {
  const char *q = s, *end = s + n;
  int found = 0;
  while (q < end) {
    while (q < end && (out_is_ws(*q) || *q == ';')) q++;
    if (q == end) break;
    long len = out_json_end(q, (size_t)(end - q));
    if (len <= 0) return false;
    cJSON *v = out_parse_json(q, (size_t)len);
    if (!v) return false;
    bool ok;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(v, "tool_calls");
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(v, "tool_call");
    if (cJSON_IsArray(v)) list = v;
    if (cJSON_IsArray(list)) {
      ok = list->child != NULL;
      for (const cJSON *o = list->child; o && ok; o = o->next) ok = out_calls_add_object(c, o);
    } else if (cJSON_IsObject(one)) {
      ok = out_calls_add_object(c, one);
    } else {
      ok = out_calls_add_object(c, v);
    }
    cJSON_Delete(v);
    if (!ok) return false;
    found++;
    q += len;
  }
  if (!found) return false;
  if (known)
    for (const cJSON *o = c->list->child; o; o = o->next)
      if (!out_tool_known(p, cJSON_GetObjectItemCaseSensitive(o, "name")->valuestring))
        return false;
  return true;
}

/* Parses one call body of the current kind; emits the calls and returns
 * true, or emits nothing and returns false. */
static bool out_try_body(llorch_openai_output *p, const char *s, size_t n, bool bare) {
  out_calls c = {cJSON_CreateArray()};
  if (!c.list) {
    p->err = LLORCH_ENOMEM;
    return false;
  }
  bool ok;
  if (bare) {
    ok = out_parse_json_calls(p, &c, s, n, true);
  } else {
    switch (p->kind) {
    case CALL_TAGGED: {
      size_t k = 0;
      while (k < n && out_is_ws(s[k])) k++;
      if (out_starts(s + k, n - k, "<function=")) ok = out_parse_xml_call(p, &c, s, n);
      else ok = out_parse_json_calls(p, &c, s, n, false);
      break;
    }
    case CALL_PYTHON_TAG: ok = out_parse_json_calls(p, &c, s, n, false); break;
    case CALL_MISTRAL: ok = out_parse_mistral(&c, s, n); break;
    case CALL_DEEPSEEK: ok = out_parse_deepseek(&c, s, n); break;
    case CALL_FUNCTIONARY: {
      cJSON *args = out_parse_json(s, n);
      ok = cJSON_IsObject(args) && out_calls_add(&c, p->name, args, NULL);
      cJSON_Delete(args);
      break;
    }
    default: ok = false;
    }
  }
  if (ok) {
    for (const cJSON *o = c.list->child; o; o = o->next) {
      const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
      out_emit_call(p, cJSON_GetObjectItemCaseSensitive(o, "name")->valuestring,
                    cJSON_GetObjectItemCaseSensitive(o, "arguments"),
                    cJSON_IsString(id) ? id->valuestring : NULL);
    }
    llorch_jbuf_reset(&p->held_ws); /* whitespace before a call is not content */
  }
  cJSON_Delete(c.list);
  return ok;
}

/* ---- modes ---- */

/* The body did not parse: everything goes back out as content. */
static void out_give_back(llorch_openai_output *p, const char *body, size_t n, const char *tail) {
  if (p->open_marker) out_content(p, p->open_marker, strlen(p->open_marker));
  if (p->kind == CALL_FUNCTIONARY) {
    out_content(p, p->name, strlen(p->name));
    out_content(p, "\n", 1);
  }
  out_content(p, body, n);
  if (tail) out_content(p, tail, strlen(tail));
}


/* Each step handler consumes from the front of buf; it returns true when it
 * made progress (consumed something or changed mode). */

static bool out_step_reasoning(llorch_openai_output *p, bool final) {
  const char *s = p->buf.data;
  size_t n = p->buf.len;
  if (!n) return false;
  const char *close = out_memmem(s, n, p->think_close);
  if (close) {
    out_reasoning(p, s, (size_t)(close - s));
    if (!p->o.reasoning) out_content(p, p->think_close, strlen(p->think_close));
    out_consume(p, (size_t)(close - s) + strlen(p->think_close));
    p->mode = OUT_CONTENT;
    p->skip_ws = p->o.reasoning;
    p->at_start = true; /* a call may open the answer */
    return true;
  }
  size_t keep = final ? 0 : out_partial_suffix(s, n, p->think_close);
  if (n == keep) return false;
  out_reasoning(p, s, n - keep);
  out_consume(p, n - keep);
  return true;
}

static bool out_step_content(llorch_openai_output *p, bool final) {
  const char *s = p->buf.data;
  size_t n = p->buf.len;
  if (!n) return false;
  if (p->skip_ws) {
    size_t w = 0;
    while (w < n && (out_is_ws(s[w]) || (p->skip_semicolon && s[w] == ';'))) w++;
    if (w == n) {
      out_consume(p, n);
      return false;
    }
    p->skip_ws = p->skip_semicolon = false;
    if (w) {
      out_consume(p, w);
      return true;
    }
  }
  if (p->at_start) {
    size_t w = 0;
    while (w < n && out_is_ws(s[w])) w++;
    if (w == n && !final) return false; /* only whitespace yet */
    const char *r = s + w;
    size_t rn = n - w;
    /* Thinking is tracked even when it stays inline (reasoning_format none),
     * so that a call drafted inside it is never taken for a call. */
    if (p->n_calls == 0 && out_starts(r, rn, p->think_open)) {
      /* In "none" reasoning mode the thinking stays in the content, markers and all. */
      if (!p->o.reasoning) out_content(p, s, w + strlen(p->think_open));
      out_consume(p, w + strlen(p->think_open));
      p->mode = OUT_REASONING;
      p->at_start = false;
      return true;
    }
    if (!final && p->n_calls == 0 && out_is_prefix_of(r, rn, p->think_open))
      return false;
    if (p->o.format != LLORCH_TOOL_FORMAT_NONE && rn && r[0] == '{') {
      out_content(p, s, w); /* held: dropped if a call follows */
      out_consume(p, w);
      p->mode = OUT_BARE;
      p->js = (out_jscan){0};
      p->at_start = false;
      return true;
    }
    p->at_start = false;
  }
  /* the earliest call marker */
  const char *best = NULL;
  const out_marker *bm = NULL;
  for (int i = 0; i < p->n_markers; i++) {
    const char *m = out_memmem(s, n, p->markers[i].text);
    if (m && (!best || m < best)) {
      best = m;
      bm = &p->markers[i];
    }
  }
  if (best) {
    out_content(p, s, (size_t)(best - s));
    out_consume(p, (size_t)(best - s) + strlen(bm->text));
    p->open_marker = bm->text;
    p->kind = bm->kind;
    p->mode = bm->kind == CALL_FUNCTIONARY ? OUT_RECIPIENT : OUT_CALL;
    p->scan = 0;
    p->js = (out_jscan){0};
    p->args_at = 0;
    p->live = 0;
    return true;
  }
  size_t keep = 0;
  if (!final)
    for (int i = 0; i < p->n_markers; i++) {
      size_t k = out_partial_suffix(s, n, p->markers[i].text);
      if (k > keep) keep = k;
    }
  if (n == keep) return false;
  out_content(p, s, n - keep);
  out_consume(p, n - keep);
  return true;
}

static bool out_step_recipient(llorch_openai_output *p, bool final) {
  const char *s = p->buf.data;
  size_t n = p->buf.len;
  const char *nl = n ? memchr(s, '\n', n) : NULL;
  if (!nl && !final && n < sizeof p->name) return false;
  size_t len = nl ? (size_t)(nl - s) : n;
  bool ok = len < sizeof p->name && nl;
  if (ok) {
    memcpy(p->name, s, len);
    p->name[len] = 0;
    ok = out_name_ok(p->name) && strlen(p->name) == len;
  }
  if (!ok) {
    /* No recipient line: the marker was text. What follows is content and
     * is looked at as such (it may hold the next ">>>"). */
    if (p->open_marker) out_content(p, p->open_marker, strlen(p->open_marker));
    p->mode = OUT_CONTENT;
    return true;
  }
  out_consume(p, len + 1);
  if (strcmp(p->name, "all") == 0) {
    p->mode = OUT_CONTENT;
    p->skip_ws = false;
    return true;
  }
  p->kind = CALL_FUNCTIONARY;
  p->mode = OUT_CALL;
  p->scan = 0;
  return true;
}

static bool out_step_call(llorch_openai_output *p, bool final) {
  if (p->kind == CALL_TAGGED && p->live >= 0) {
    bool handled;
    bool progress = out_step_live(p, final, &handled);
    if (handled) return progress;
  }
  const char *s = p->buf.data ? p->buf.data : "";
  size_t n = p->buf.len;
  const char *endm = out_end_marker(p->kind);
  if (p->kind == CALL_MISTRAL) {
    /* one JSON value, or NAME[ARGS]{..}: the body ends with its last brace */
    size_t k = 0;
    while (k < n && out_is_ws(s[k])) k++;
    long end = 0;
    if (k < n && (s[k] == '[' || s[k] == '{')) {
      end = out_jscan_run(&p->js, s, n);
    } else if (k < n) {
      if (!p->args_at) {
        /* NAME[ARGS] or NAME[CALL_ID]ID[ARGS]: anything else before
         * [ARGS] means this is no call (decided on at most 200 bytes). */
        size_t i = k;
        while (i < n && i < 200) {
          char ch = s[i];
          if (isalnum((unsigned char)ch) || ch == '_' || ch == '-' || ch == '.') {
            i++;
          } else if (out_starts(s + i, n - i, "[ARGS]")) {
            p->args_at = i + 6 + 1;
            break;
          } else if (out_starts(s + i, n - i, "[CALL_ID]")) {
            i += 9;
          } else if (out_is_prefix_of(s + i, n - i, "[ARGS]") ||
                     out_is_prefix_of(s + i, n - i, "[CALL_ID]")) {
            break; /* wait for more */
          } else {
            end = -1;
            break;
          }
        }
        if (!p->args_at && end == 0 && i >= 200) end = -1;
      }
      if (p->args_at) {
        size_t at = p->args_at - 1;
        long e = out_jscan_run(&p->js, s + at, n - at);
        end = e > 0 ? (long)at + e : e;
      }
    }
    if (end == 0 && !final) return false;
    if (end < 0) {
      /* Not a call: the marker was text, and what follows is content,
       * looked at as such (it may open the next call). Deciding on the
       * marker alone keeps the answer independent of how the text was
       * split into tokens. */
      out_content(p, p->open_marker, strlen(p->open_marker));
      p->mode = OUT_CONTENT;
      return true;
    }
    size_t body = end > 0 ? (size_t)end : n;
    if (!out_try_body(p, s, body, false)) out_give_back(p, s, body, NULL);
    out_consume(p, body);
    p->mode = OUT_CONTENT;
    p->skip_ws = p->n_calls > 0;
    return true;
  }
  if (endm) {
    size_t from = p->scan;
    const char *e = out_memmem(s + from, n - from, endm);
    if (e) {
      size_t body = (size_t)(e - s);
      bool functionary = p->kind == CALL_FUNCTIONARY;
      if (out_try_body(p, s, body, false)) {
        /* functionary's ">>>" opens the next segment: leave it */
        out_consume(p, functionary ? body : body + strlen(endm));
        p->skip_ws = true;
      } else {
        out_give_back(p, s, body, functionary ? NULL : endm);
        out_consume(p, functionary ? body : body + strlen(endm));
      }
      p->mode = OUT_CONTENT;
      return true;
    }
    size_t ml = strlen(endm);
    p->scan = n >= ml ? n - ml + 1 : 0;
  }
  if (!final) return false;
  /* The output ended inside a call (no end marker, or a format that ends
   * with the output): a body that parses is still a call. */
  if (!out_try_body(p, s, n, false)) out_give_back(p, s, n, NULL);
  out_consume(p, n);
  p->mode = OUT_CONTENT;
  return true;
}

static bool out_step_bare(llorch_openai_output *p, bool final) {
  const char *s = p->buf.data ? p->buf.data : "";
  size_t n = p->buf.len;
  long end = out_jscan_run(&p->js, s, n);
  if (end == 0 && !final) return false;
  if (end < 0) {
    p->mode = OUT_CONTENT; /* the same text, as content (see out_step_call) */
    return true;
  }
  size_t body = end > 0 ? (size_t)end : n;
  bool ok = end > 0 && out_try_body(p, s, body, true);
  if (!ok) {
    /* Not a call: the text goes out as it came, and what follows is content. */
    out_content(p, s, body);
    out_consume(p, body);
    p->mode = OUT_CONTENT;
    return true;
  }
  out_consume(p, body);
  p->mode = OUT_CONTENT;
  p->at_start = true; /* Llama 3.2 may write several, separated by ';' */
  p->skip_ws = p->skip_semicolon = true;
  return true;
}

static int out_run(llorch_openai_output *p, bool final) {
  for (int guard = 0; guard < 1 << 20 && !p->err; guard++) {
    bool progress;
    switch (p->mode) {
    case OUT_REASONING: progress = out_step_reasoning(p, final); break;
    case OUT_CALL: progress = out_step_call(p, final); break;
    case OUT_BARE: progress = out_step_bare(p, final); break;
    case OUT_RECIPIENT: progress = out_step_recipient(p, final); break;
    default: progress = out_step_content(p, final); break;
    }
    if (!progress) break;
  }
  return p->err;
}

/* ---- public ---- */

llorch_openai_output *llorch_openai_output_new(const llorch_openai_output_opts *o,
                                               llorch_openai_emit_fn emit, void *user) {
  llorch_openai_output *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->o = *o;
  p->emit = emit;
  p->user = user;
  p->think_open = o->think_open ? o->think_open : "<think>";
  p->think_close = o->think_close ? o->think_close : "</think>";
  llorch_jbuf_init(&p->buf);
  llorch_jbuf_init(&p->held_ws);
  p->at_start = true;
  p->rng = o->id_seed ? o->id_seed : uv_hrtime() ^ (uint64_t)(uintptr_t)p;
  if (!p->rng) p->rng = 0x9E3779B97F4A7C15ull;
  switch (o->format) {
  case LLORCH_TOOL_FORMAT_HERMES:
  case LLORCH_TOOL_FORMAT_QWEN3_CODER:
    p->markers[p->n_markers++] = (out_marker){"<tool_call>", CALL_TAGGED};
    break;
  case LLORCH_TOOL_FORMAT_LLAMA3:
    p->markers[p->n_markers++] = (out_marker){"<|python_tag|>", CALL_PYTHON_TAG};
    break;
  case LLORCH_TOOL_FORMAT_MISTRAL:
    p->markers[p->n_markers++] = (out_marker){"[TOOL_CALLS]", CALL_MISTRAL};
    break;
  case LLORCH_TOOL_FORMAT_DEEPSEEK:
    p->markers[p->n_markers++] = (out_marker){DS_CALLS_BEGIN, CALL_DEEPSEEK};
    break;
  case LLORCH_TOOL_FORMAT_FUNCTIONARY:
    p->markers[p->n_markers++] = (out_marker){">>>", CALL_FUNCTIONARY};
    break;
  default: break;
  }
  if (o->start_in_reasoning) {
    p->mode = OUT_REASONING;
    p->at_start = false;
  } else if (o->start_in_recipient && o->format == LLORCH_TOOL_FORMAT_FUNCTIONARY) {
    p->mode = OUT_RECIPIENT;
    p->open_marker = NULL;
    p->at_start = false;
  }
  return p;
}

void llorch_openai_output_free(llorch_openai_output *p) {
  if (!p) return;
  llorch_jbuf_free(&p->buf);
  llorch_jbuf_free(&p->held_ws);
  free(p);
}

int llorch_openai_output_feed(llorch_openai_output *p, const char *text, size_t len) {
  if (p->err) return p->err;
  if (!len) return 0;
  llorch_jbuf_raw(&p->buf, text, len);
  if (llorch_jbuf_error(&p->buf) < 0) return p->err = LLORCH_ENOMEM;
  return out_run(p, false);
}

int llorch_openai_output_finish(llorch_openai_output *p) {
  if (p->err) return p->err;
  int rc = out_run(p, true);
  /* Trailing whitespace is content only when no call took its place. */
  if (p->held_ws.len && p->n_calls == 0) out_send_content(p, p->held_ws.data, p->held_ws.len);
  llorch_jbuf_reset(&p->held_ws);
  return rc;
}

int llorch_openai_output_n_calls(const llorch_openai_output *p) { return p->n_calls; }
