/*
 * Chat template families: detection from the template text and rendering.
 * See include/llorch/chat.h; each renderer below follows its family's
 * reference Jinja template, quoted in the comment above it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/chat.h"

struct llorch_chat {
  llorch_chat_family family;
  char *default_system; /* chatml: the template's default system prompt, or NULL */
  char *eos_text;       /* what the template writes for eos_token */
  bool llama31_header;  /* llama3: template prints the knowledge-cutoff system header */
  bool today_date;      /* llama3: template takes today's date (strftime_now) */
  bool phi3_eos;        /* phi3: template writes eos_token when no generation prompt */
  char *date;           /* fixed date, or NULL */
};

static const struct {
  const char *name;
  llorch_chat_family family;
} family_names[] = {
    {"chatml", LLORCH_CHAT_CHATML}, {"qwen", LLORCH_CHAT_CHATML},     {"llama3", LLORCH_CHAT_LLAMA3},
    {"llama2", LLORCH_CHAT_LLAMA2}, {"mistral", LLORCH_CHAT_MISTRAL}, {"phi3", LLORCH_CHAT_PHI3},
    {"gemma", LLORCH_CHAT_GEMMA},
};
#define N_FAMILY_NAMES (sizeof(family_names) / sizeof(family_names[0]))
#define FAMILY_LIST "chatml (qwen), llama3, llama2, mistral, phi3, gemma"

/* Outside text for an error message: at most cap-1 bytes, control bytes as
 * '?', so the message stays one printable line. */
static const char *chat_printable(char *dst, size_t cap, const char *s) {
  size_t k = 0;
  for (; s[k] && k < cap - 1; k++) dst[k] = (unsigned char)s[k] < 0x20 || s[k] == 0x7f ? '?' : s[k];
  dst[k] = 0;
  return dst;
}

const char *llorch_chat_family_name(llorch_chat_family f) {
  for (size_t i = 0; i < N_FAMILY_NAMES; i++)
    if (family_names[i].family == f) return family_names[i].name;
  return "unknown";
}

int llorch_chat_family_parse(const char *name, llorch_chat_family *out, llorch_errmsg *em) {
  for (size_t i = 0; i < N_FAMILY_NAMES; i++) {
    if (strcmp(name, family_names[i].name) == 0) {
      *out = family_names[i].family;
      return 0;
    }
  }
  char shown[65];
  return llorch_errmsg_set(em, LLORCH_EINVAL, "chat template family '%s' is not known (expected one of: %s)",
                           chat_printable(shown, sizeof(shown), name), FAMILY_LIST);
}

/*
 * The markers and their order are llama.cpp's: the first family whose marker
 * appears wins, so a ChatML template that mentions [INST] is still ChatML.
 */
llorch_chat_family llorch_chat_detect(const char *tmpl) {
  if (!tmpl) return LLORCH_CHAT_UNKNOWN;
#define HAS(s) (strstr(tmpl, (s)) != NULL)
  if (HAS("<|im_start|>")) {
    /* Phi-4 and SmolVLM use <|im_start|> but are not ChatML */
    return HAS("<|im_sep|>") || HAS("<end_of_utterance>") ? LLORCH_CHAT_UNKNOWN : LLORCH_CHAT_CHATML;
  }
  if (strncmp(tmpl, "mistral", 7) == 0 || HAS("[INST]")) {
    if (HAS("[SYSTEM_PROMPT]")) return LLORCH_CHAT_UNKNOWN; /* Mistral v7: not supported */
    return HAS("<<SYS>>") ? LLORCH_CHAT_LLAMA2 : LLORCH_CHAT_MISTRAL;
  }
  if (HAS("<|assistant|>") && HAS("<|end|>")) return LLORCH_CHAT_PHI3;
  if (HAS("<start_of_turn>")) return LLORCH_CHAT_GEMMA;
  if (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) return LLORCH_CHAT_LLAMA3;
#undef HAS
  return LLORCH_CHAT_UNKNOWN;
}

/*
 * Qwen's templates hard-code a system prompt for conversations without one:
 *   {{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}
 * Find a "<|im_start|>system" followed by plain text up to <|im_end|> (no
 * quotes, braces or '+', i.e. not an expression) and take that text.
 */
static int chatml_default_system(const char *tmpl, char **found) {
  static const char marker[] = "<|im_start|>system";
  for (const char *p = strstr(tmpl, marker); p; p = strstr(p + 1, marker)) {
    const char *s = p + sizeof(marker) - 1;
    if (s[0] == '\n') s += 1;
    else if (s[0] == '\\' && s[1] == 'n') s += 2;
    else continue;
    const char *e = strstr(s, "<|im_end|>"), *expr = strpbrk(s, "'\"{}+");
    if (!e || e == s || (expr && expr < e)) continue;
    char *out = malloc((size_t)(e - s) + 1), *o = out;
    if (!out) return LLORCH_ENOMEM;
    for (const char *q = s; q < e; q++) {
      if (q[0] == '\\' && q[1] == 'n' && q + 1 < e) {
        *o++ = '\n';
        q++;
      } else {
        *o++ = *q;
      }
    }
    *o = 0;
    *found = out;
    return 0;
  }
  return 0;
}

int llorch_chat_init(llorch_chat **out, const char *tmpl, const char *family, const char *eos_text,
                     llorch_errmsg *em) {
  llorch_chat_family f;
  int rc;
  *out = NULL;
  if (family) {
    if ((rc = llorch_chat_family_parse(family, &f, em)) != 0) return rc;
  } else if (!tmpl) {
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "the model has no tokenizer.chat_template; name a template family (%s)", FAMILY_LIST);
  } else if ((f = llorch_chat_detect(tmpl)) == LLORCH_CHAT_UNKNOWN) {
    char shown[41];
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "tokenizer.chat_template (%zu bytes, starting '%s') is of no supported family; "
                             "name one of: %s",
                             strlen(tmpl), chat_printable(shown, sizeof(shown), tmpl), FAMILY_LIST);
  }
  llorch_chat *c = calloc(1, sizeof(*c));
  if (!c) return LLORCH_ENOMEM;
  c->family = f;
  if (!eos_text) eos_text = f == LLORCH_CHAT_PHI3 ? "<|endoftext|>" : f == LLORCH_CHAT_GEMMA ? "<eos>" : "</s>";
  c->eos_text = strdup(eos_text);
  if (!c->eos_text) goto nomem;
  if (tmpl && f == LLORCH_CHAT_CHATML && chatml_default_system(tmpl, &c->default_system) != 0) goto nomem;
  if (tmpl && f == LLORCH_CHAT_LLAMA3) {
    c->llama31_header = strstr(tmpl, "Cutting Knowledge Date") != NULL;
    c->today_date = strstr(tmpl, "strftime_now") != NULL;
  }
  /* Phi-3's template: {% if add_generation_prompt %}...{% else %}{{ eos_token }}{% endif %} */
  if (f == LLORCH_CHAT_PHI3) c->phi3_eos = !tmpl || strstr(tmpl, "eos_token") != NULL;
  *out = c;
  return 0;
nomem:
  llorch_chat_free(c);
  return LLORCH_ENOMEM;
}

int llorch_chat_init_tokenizer(llorch_chat **out, const llorch_tokenizer *t, const char *family,
                               llorch_errmsg *em) {
  const char *eos = NULL;
  char eos_buf[128];
  size_t len;
  int32_t id = llorch_tokenizer_eos(t);
  if (id >= 0) {
    const char *s = llorch_tokenizer_token_text(t, id, &len);
    if (s && len < sizeof(eos_buf)) {
      memcpy(eos_buf, s, len);
      eos_buf[len] = 0;
      eos = eos_buf;
    }
  }
  return llorch_chat_init(out, llorch_tokenizer_chat_template(t), family, eos, em);
}

void llorch_chat_free(llorch_chat *c) {
  if (!c) return;
  free(c->default_system);
  free(c->eos_text);
  free(c->date);
  free(c);
}

llorch_chat_family llorch_chat_family_of(const llorch_chat *c) { return c->family; }
const char *llorch_chat_default_system(const llorch_chat *c) { return c->default_system; }

int llorch_chat_set_date(llorch_chat *c, const char *date) {
  char *d = NULL;
  if (date && !(d = strdup(date))) return LLORCH_ENOMEM;
  free(c->date);
  c->date = d;
  return 0;
}

/* ---- output buffer ---- */

typedef struct sbuf {
  char *s;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns) {
      b->oom = true;
      return;
    }
    b->s = ns;
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}

static void sb_put(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

/* Jinja's |trim / Python's str.strip() on ASCII whitespace. */
static void sb_put_trim(sbuf *b, const char *s) {
  static const char ws[] = " \t\n\r\v\f";
  while (*s && strchr(ws, *s)) s++;
  size_t n = strlen(s);
  while (n > 0 && strchr(ws, s[n - 1])) n--;
  sb_putn(b, s, n);
}

/* ---- validation ---- */

typedef enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role;

static int roles_parse(const llorch_chat_message *msgs, size_t n, role *roles, bool strict, llorch_errmsg *em) {
  for (size_t i = 0; i < n; i++) {
    const char *r = msgs[i].role;
    if (!r) return llorch_errmsg_set(em, LLORCH_EINVAL, "messages[%zu].role is missing", i);
    if (!msgs[i].content) return llorch_errmsg_set(em, LLORCH_EINVAL, "messages[%zu].content is missing", i);
    if (strcmp(r, "system") == 0) roles[i] = ROLE_SYSTEM;
    else if (strcmp(r, "user") == 0) roles[i] = ROLE_USER;
    else if (strcmp(r, "assistant") == 0) roles[i] = ROLE_ASSISTANT;
    else {
      char shown[33];
      return llorch_errmsg_set(em, LLORCH_EINVAL, "messages[%zu].role is '%s' (expected system, user or assistant)",
                               i, chat_printable(shown, sizeof(shown), r));
    }
  }
  if (!strict) return 0;
  /* these templates raise 'Conversation roles must alternate user/assistant/user/assistant/...' */
  size_t first = n > 0 && roles[0] == ROLE_SYSTEM ? 1 : 0;
  for (size_t i = first; i < n; i++) {
    role want = (i - first) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
    if (roles[i] == ROLE_SYSTEM)
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "messages[%zu] is a system message; this template allows one only as the first message",
                               i);
    if (roles[i] != want)
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "messages[%zu].role is '%s', expected '%s': roles must alternate "
                               "user/assistant/user/... after an optional system message",
                               i, msgs[i].role, want == ROLE_USER ? "user" : "assistant");
  }
  return 0;
}

/* ---- renderers ---- */

/*
 * ChatML (Qwen2):
 *   {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
 *   {{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}
 *   {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
 *   {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
 */
static void render_chatml(const llorch_chat *c, const llorch_chat_message *m, const role *r, size_t n, bool gen,
                          sbuf *b) {
  if (c->default_system && n > 0 && r[0] != ROLE_SYSTEM) {
    sb_put(b, "<|im_start|>system\n");
    sb_put(b, c->default_system);
    sb_put(b, "<|im_end|>\n");
  }
  for (size_t i = 0; i < n; i++) {
    sb_put(b, "<|im_start|>");
    sb_put(b, m[i].role);
    sb_put(b, "\n");
    sb_put(b, m[i].content);
    sb_put(b, "<|im_end|>\n");
  }
  if (gen) sb_put(b, "<|im_start|>assistant\n");
}

/*
 * Llama 3:
 *   {% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] +
 *   '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}
 *   {% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}
 *   {% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
 * Llama 3.1+ first writes a system turn with "Cutting Knowledge Date: December 2023\n"
 * "Today Date: " + date_string + "\n\n" + the system message (trimmed, or "").
 */
static void render_llama3(const llorch_chat *c, const llorch_chat_message *m, const role *r, size_t n, bool gen,
                          sbuf *b) {
  size_t i = 0;
  if (c->llama31_header) {
    char today[32];
    const char *date = c->date;
    if (!date && c->today_date) {
      time_t now = time(NULL);
      struct tm tmv;
      localtime_r(&now, &tmv);
      strftime(today, sizeof(today), "%d %b %Y", &tmv);
      date = today;
    }
    if (!date) date = "26 Jul 2024"; /* the 3.1 template's default */
    sb_put(b, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ");
    sb_put(b, date);
    sb_put(b, "\n\n");
    if (n > 0 && r[0] == ROLE_SYSTEM) {
      sb_put_trim(b, m[0].content);
      i = 1;
    }
    sb_put(b, "<|eot_id|>");
  }
  for (; i < n; i++) {
    sb_put(b, "<|start_header_id|>");
    sb_put(b, m[i].role);
    sb_put(b, "<|end_header_id|>\n\n");
    sb_put_trim(b, m[i].content);
    sb_put(b, "<|eot_id|>");
  }
  if (gen) sb_put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/*
 * Llama 2 (system message folded into the first user turn):
 *   {% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' +
 *   system_message + '\n<</SYS>>\n\n' + message['content'] %}...
 *   {% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
 *   {% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}
 * No generation prompt: the text already ends with [/INST].
 */
static void render_llama2(const llorch_chat *c, const llorch_chat_message *m, const role *r, size_t n, sbuf *b) {
  size_t first = n > 0 && r[0] == ROLE_SYSTEM ? 1 : 0;
  for (size_t i = first; i < n; i++) {
    if (r[i] == ROLE_USER) {
      if (i > first) sb_put(b, "<s>"); /* the first BOS comes from the tokenizer */
      sb_put(b, "[INST] ");
      if (i == first && first == 1) {
        sbuf tmp = {0};
        sb_put(&tmp, "<<SYS>>\n");
        sb_put(&tmp, m[0].content);
        sb_put(&tmp, "\n<</SYS>>\n\n");
        sb_put(&tmp, m[i].content);
        if (tmp.oom) b->oom = true;
        else sb_put_trim(b, tmp.s);
        free(tmp.s);
      } else {
        sb_put_trim(b, m[i].content);
      }
      sb_put(b, " [/INST]");
    } else {
      sb_put(b, " ");
      sb_put_trim(b, m[i].content);
      sb_put(b, " ");
      sb_put(b, c->eos_text);
    }
  }
}

/*
 * Mistral Instruct v0.1/v0.2:
 *   {{ bos_token }}{% for message in messages %}...{% if message['role'] == 'user' %}
 *   {{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}
 *   {{ message['content'] + eos_token }}{% endif %}{% endfor %}
 * The reference template rejects a system role; like llama.cpp, llorch puts it
 * at the start of the first user message, followed by a blank line.
 */
static void render_mistral(const llorch_chat *c, const llorch_chat_message *m, const role *r, size_t n, sbuf *b) {
  size_t first = n > 0 && r[0] == ROLE_SYSTEM ? 1 : 0;
  for (size_t i = first; i < n; i++) {
    if (r[i] == ROLE_USER) {
      sb_put(b, "[INST] ");
      if (i == first && first == 1) {
        sb_put(b, m[0].content);
        sb_put(b, "\n\n");
      }
      sb_put(b, m[i].content);
      sb_put(b, " [/INST]");
    } else {
      sb_put(b, m[i].content);
      sb_put(b, c->eos_text);
    }
  }
}

/*
 * Phi-3:
 *   {% for message in messages %}{{'<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n'}}
 *   {% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}
 */
static void render_phi3(const llorch_chat *c, const llorch_chat_message *m, size_t n, bool gen, sbuf *b) {
  for (size_t i = 0; i < n; i++) {
    sb_put(b, "<|");
    sb_put(b, m[i].role);
    sb_put(b, "|>\n");
    sb_put(b, m[i].content);
    sb_put(b, "<|end|>\n");
  }
  if (gen) sb_put(b, "<|assistant|>\n");
  else if (c->phi3_eos) sb_put(b, c->eos_text);
}

/*
 * Gemma (2/3):
 *   {{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix =
 *   messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}...
 *   {% if (message['role'] == 'assistant') %}{% set role = "model" %}...
 *   {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
 *   {{ message['content'] | trim }}{{ '<end_of_turn>\n' }}
 *   {% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}
 */
static void render_gemma(const llorch_chat_message *m, const role *r, size_t n, bool gen, sbuf *b) {
  size_t first = n > 0 && r[0] == ROLE_SYSTEM ? 1 : 0;
  for (size_t i = first; i < n; i++) {
    sb_put(b, "<start_of_turn>");
    sb_put(b, r[i] == ROLE_ASSISTANT ? "model" : "user");
    sb_put(b, "\n");
    if (i == first && first == 1) {
      sb_put(b, m[0].content);
      sb_put(b, "\n\n");
    }
    sb_put_trim(b, m[i].content);
    sb_put(b, "<end_of_turn>\n");
  }
  if (gen) sb_put(b, "<start_of_turn>model\n");
}

int llorch_chat_render(const llorch_chat *c, const llorch_chat_message *msgs, size_t n, bool gen, char **out,
                       size_t *out_len, llorch_errmsg *em) {
  *out = NULL;
  if (out_len) *out_len = 0;
  role *r = malloc((n ? n : 1) * sizeof(*r));
  if (!r) return LLORCH_ENOMEM;
  bool strict = c->family == LLORCH_CHAT_LLAMA2 || c->family == LLORCH_CHAT_MISTRAL || c->family == LLORCH_CHAT_GEMMA;
  int rc = roles_parse(msgs, n, r, strict, em);
  if (rc != 0) {
    free(r);
    return rc;
  }
  sbuf b = {0};
  sb_put(&b, "");
  switch (c->family) {
  case LLORCH_CHAT_CHATML: render_chatml(c, msgs, r, n, gen, &b); break;
  case LLORCH_CHAT_LLAMA3: render_llama3(c, msgs, r, n, gen, &b); break;
  case LLORCH_CHAT_LLAMA2: render_llama2(c, msgs, r, n, &b); break;
  case LLORCH_CHAT_MISTRAL: render_mistral(c, msgs, r, n, &b); break;
  case LLORCH_CHAT_PHI3: render_phi3(c, msgs, n, gen, &b); break;
  case LLORCH_CHAT_GEMMA: render_gemma(msgs, r, n, gen, &b); break;
  case LLORCH_CHAT_UNKNOWN: break;
  }
  free(r);
  if (b.oom) {
    free(b.s);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory rendering %zu messages", n);
  }
  *out = b.s;
  if (out_len) *out_len = b.len;
  return 0;
}
