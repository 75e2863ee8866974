/*
 * Chat prompts from a model's own Jinja template (include/llorch/chat.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "llorch/chat.h"
#include "llorch/file.h"

/* ChatML as Qwen2 writes it, without a default system prompt. */
const char llorch_chat_chatml_template[] =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

struct llorch_chat {
  llorch_jinja *tmpl;
  llorch_jinja *tool_use; /* or NULL */
  char *bos_text, *eos_text;
  char *source;
  char *tool_text; /* the template that teaches tool calls (tool_use's, else the main one) */
};

static char *chat_strdup(const char *s) {
  size_t n = strlen(s ? s : "");
  char *d = malloc(n + 1);
  if (d) memcpy(d, s ? s : "", n + 1);
  return d;
}

static int chat_compile(llorch_jinja **out, const char *name, const char *text, llorch_errmsg *em) {
  llorch_errmsg inner = {{0}};
  int rc = llorch_jinja_compile(out, text, strlen(text), &inner);
  if (rc < 0) return llorch_errmsg_set(em, rc, "%s: %s", name, inner.text);
  return 0;
}

static int chat_init_source(llorch_chat **out, const char *template_text, const char *tool_use_text,
                            const char *bos_text, const char *eos_text, const char *source, llorch_errmsg *em) {
  *out = NULL;
  llorch_chat *c = calloc(1, sizeof *c);
  if (!c) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory loading a chat template");
  int rc = chat_compile(&c->tmpl, "chat template", template_text, em);
  if (rc < 0) goto fail;
  if (tool_use_text && (rc = chat_compile(&c->tool_use, "tool_use chat template", tool_use_text, em)) < 0) goto fail;
  c->bos_text = chat_strdup(bos_text);
  c->eos_text = chat_strdup(eos_text);
  c->source = chat_strdup(source);
  c->tool_text = chat_strdup(tool_use_text ? tool_use_text : template_text);
  if (!c->bos_text || !c->eos_text || !c->source || !c->tool_text) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory loading a chat template");
    goto fail;
  }
  *out = c;
  return 0;
fail:
  llorch_chat_free(c);
  return rc;
}

int llorch_chat_init(llorch_chat **out, const char *template_text, const char *tool_use_text,
                     const char *bos_text, const char *eos_text, llorch_errmsg *em) {
  return chat_init_source(out, template_text, tool_use_text, bos_text, eos_text, "text", em);
}

/* The text of a special token, or NULL (no such token or not printable here). */
static const char *chat_token_text(const llorch_tokenizer *t, int32_t id, char *buf, size_t cap) {
  if (id < 0) return NULL;
  size_t len;
  const char *s = llorch_tokenizer_token_text(t, id, &len);
  if (!s || len >= cap) return NULL;
  memcpy(buf, s, len);
  buf[len] = 0;
  return buf;
}

/* A .jinja file: at most 2 MiB, no NUL (the template is C text). */
static int chat_read_file(const char *path, char **out, llorch_errmsg *em) {
  size_t n = 0;
  int rc = llorch_file_read(path, "chat template file", 2u << 20, out, &n, em);
  if (rc == LLORCH_ENOENT) rc = LLORCH_EIO; /* ENOTFOUND means "the model has no template" here */
  if (rc < 0) return rc;
  if (strlen(*out) != n) {
    free(*out);
    *out = NULL;
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "chat template file %s contains a NUL byte", path);
  }
  return 0;
}

int llorch_chat_init_model(llorch_chat **out, const llorch_gguf *g, const llorch_tokenizer *t,
                           const char *override, llorch_errmsg *em) {
  char bos_buf[256], eos_buf[256];
  const char *bos = chat_token_text(t, llorch_tokenizer_bos(t), bos_buf, sizeof bos_buf);
  const char *eos = chat_token_text(t, llorch_tokenizer_eos(t), eos_buf, sizeof eos_buf);
  *out = NULL;
  if (override && strcmp(override, "chatml") == 0)
    return chat_init_source(out, llorch_chat_chatml_template, NULL, bos, eos, "chatml", em);
  if (override && override[0]) {
    char *text = NULL;
    int rc = chat_read_file(override, &text, em);
    if (rc < 0) return rc;
    rc = chat_init_source(out, text, NULL, bos, eos, override, em);
    free(text);
    return rc;
  }
  const char *main_text = llorch_tokenizer_chat_template(t);
  if (!main_text)
    return llorch_errmsg_set(em, LLORCH_ENOTFOUND,
                             "the model has no tokenizer.chat_template; name one with chat_template: chatml "
                             "or chat_template: FILE.jinja");
  /* a named template is a GGUF string key of its own */
  char *tool_text = NULL;
  llorch_gguf_str s;
  if (g && llorch_gguf_find_kv(g, "tokenizer.chat_template.tool_use") &&
      llorch_gguf_get_str(g, "tokenizer.chat_template.tool_use", &s, NULL) == 0) {
    if (!(tool_text = malloc(s.len + 1))) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
    memcpy(tool_text, s.ptr, s.len);
    tool_text[s.len] = 0;
  }
  int rc = chat_init_source(out, main_text, tool_text, bos, eos, "gguf", em);
  free(tool_text);
  return rc;
}

void llorch_chat_free(llorch_chat *c) {
  if (!c) return;
  llorch_jinja_free(c->tmpl);
  llorch_jinja_free(c->tool_use);
  free(c->bos_text);
  free(c->eos_text);
  free(c->source);
  free(c->tool_text);
  free(c);
}

const char *llorch_chat_source(const llorch_chat *c) { return c->source; }
const char *llorch_chat_tool_template(const llorch_chat *c) { return c->tool_text; }
bool llorch_chat_has_tool_use(const llorch_chat *c) { return c->tool_use != NULL; }

int llorch_chat_render(const llorch_chat *c, const cJSON *context, time_t now, llorch_jinja_output *out,
                       llorch_errmsg *em) {
  const cJSON *tools = cJSON_GetObjectItemCaseSensitive(context, "tools");
  bool use_tools = c->tool_use && cJSON_IsArray(tools) && cJSON_GetArraySize(tools) > 0;
  llorch_jinja_render_opts o = {.bos_token = c->bos_text, .eos_token = c->eos_text, .now = now};
  return llorch_jinja_render(use_tools ? c->tool_use : c->tmpl, context, &o, out, em);
}

int llorch_chat_tokenize(const llorch_tokenizer *t, const llorch_jinja_output *r, llorch_tokens *tokens,
                         llorch_errmsg *em) {
  const char *text = r->text;
  size_t len = r->len;
  const uint8_t *plain = r->from_request;
  unsigned flags = LLORCH_TOKENIZE_ADD_SPECIAL | LLORCH_TOKENIZE_PARSE_SPECIAL;
  int32_t bos = llorch_tokenizer_bos(t);
  if (bos >= 0 && llorch_tokenizer_add_bos(t)) {
    size_t bl;
    const char *bt = llorch_tokenizer_token_text(t, bos, &bl);
    bool from_template = true;
    for (size_t i = 0; plain && i < bl && i < len; i++) from_template = from_template && !plain[i];
    if (bt && bl > 0 && bl <= len && memcmp(text, bt, bl) == 0 && from_template) {
      text += bl;
      len -= bl;
      if (plain) plain += bl;
    }
  }
  return llorch_tokenize_masked(t, text, len, flags, plain, tokens, em);
}
