/*
 * `llorch chat-template --template FILE.jinja | --model FILE.gguf --request FILE.json
 *                       [--bos-token T] [--eos-token T] [--now 2026-11-22T19:02:00]`
 *
 * Renders a chat request with a Jinja chat template and prints the prompt
 * exactly (nothing added), or the template's error on stderr with exit 1.
 * The request is {messages, tools?, add_generation_prompt?, kwargs?}:
 * kwargs are extra template variables (chat_template_kwargs). With --model
 * the template, BOS and EOS come from the GGUF (the tool_use template when
 * the request has tools and the file has one); --bos-token/--eos-token
 * override them.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "llorch/chat.h"
#include "llorch/file.h"
#include "llorch/commands.h"
#include "llorch/gguf.h"
#include "llorch/jinja.h"
#include "llorch/tokenizer.h"

#define CT_USAGE                                                                                         \
  "usage: llorch chat-template (--template FILE.jinja | --model FILE.gguf) --request FILE.json\n"        \
  "                            [--bos-token T] [--eos-token T] [--now YYYY-MM-DDTHH:MM:SS]\n"            \
  "  --template FILE   a Jinja chat template\n"                                                          \
  "  --model FILE      a GGUF file: its tokenizer.chat_template (and .tool_use), BOS and EOS\n"        \
  "  --request FILE    {\"messages\":[...], \"tools\"?:[...], \"add_generation_prompt\"?:bool,\n"     \
  "                     \"kwargs\"?:{...}}  ('-' for stdin)\n"                                          \
  "  --bos-token T     the template's bos_token (default: the model's, or empty)\n"                    \
  "  --eos-token T     the template's eos_token (default: the model's, or empty)\n"                    \
  "  --now TIME        strftime_now's clock, UTC (default: the current time)\n"

static int ct_parse_now(const char *s, time_t *out) {
  struct tm tmv = {0};
  int n = 0;
  if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tmv.tm_year, &tmv.tm_mon, &tmv.tm_mday, &tmv.tm_hour, &tmv.tm_min,
             &tmv.tm_sec, &n) != 6 ||
      s[n] != 0 || tmv.tm_mon < 1 || tmv.tm_mon > 12 || tmv.tm_mday < 1 || tmv.tm_mday > 31 || tmv.tm_hour > 23 ||
      tmv.tm_min > 59 || tmv.tm_sec > 60)
    return -1;
  tmv.tm_year -= 1900;
  tmv.tm_mon -= 1;
  *out = timegm(&tmv);
  return 0;
}

/* The render context: the request's messages/tools/add_generation_prompt
 * plus each kwargs key as a variable of its own. */
static int ct_context(cJSON *req, cJSON **out, char *err, size_t errlen) {
  const cJSON *messages = cJSON_GetObjectItemCaseSensitive(req, "messages");
  if (!cJSON_IsArray(messages)) {
    snprintf(err, errlen, "'messages' must be an array");
    return -1;
  }
  cJSON *ctx = cJSON_CreateObject();
  if (!ctx) goto nomem;
  const char *keys[] = {"messages", "tools", "add_generation_prompt"};
  for (size_t i = 0; i < 3; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, keys[i]);
    if (!v) continue;
    cJSON *dup = cJSON_Duplicate(v, true);
    if (!dup || !cJSON_AddItemToObject(ctx, keys[i], dup)) goto nomem_ctx;
  }
  if (!cJSON_GetObjectItemCaseSensitive(ctx, "add_generation_prompt") &&
      !cJSON_AddFalseToObject(ctx, "add_generation_prompt"))
    goto nomem_ctx;
  const cJSON *kw = cJSON_GetObjectItemCaseSensitive(req, "kwargs");
  if (kw && !cJSON_IsObject(kw) && !cJSON_IsNull(kw)) {
    cJSON_Delete(ctx);
    snprintf(err, errlen, "'kwargs' must be an object");
    return -1;
  }
  for (const cJSON *e = kw ? kw->child : NULL; e; e = e->next) {
    cJSON *dup = cJSON_Duplicate(e, true);
    if (!dup) goto nomem_ctx;
    cJSON_DeleteItemFromObjectCaseSensitive(ctx, e->string);
    if (!cJSON_AddItemToObject(ctx, e->string, dup)) goto nomem_ctx;
  }
  *out = ctx;
  return 0;
nomem_ctx:
  cJSON_Delete(ctx);
nomem:
  snprintf(err, errlen, "out of memory");
  return -1;
}

int llorch_cmd_chat_template(int argc, char **argv) {
  const char *tmpl_path = NULL, *model_path = NULL, *req_path = NULL, *bos = NULL, *eos = NULL, *now_s = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      fputs(CT_USAGE, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "llorch chat-template: %s needs a value\n%s", a, CT_USAGE);
      return 2;
    }
    const char *v = argv[++i];
    if (!strcmp(a, "--template")) tmpl_path = v;
    else if (!strcmp(a, "--model")) model_path = v;
    else if (!strcmp(a, "--request")) req_path = v;
    else if (!strcmp(a, "--bos-token")) bos = v;
    else if (!strcmp(a, "--eos-token")) eos = v;
    else if (!strcmp(a, "--now")) now_s = v;
    else {
      fprintf(stderr, "llorch chat-template: unknown option '%s'\n%s", a, CT_USAGE);
      return 2;
    }
  }
  if (!!tmpl_path == !!model_path || !req_path) {
    fprintf(stderr, "llorch chat-template: give one of --template or --model, and --request\n%s", CT_USAGE);
    return 2;
  }
  time_t now = 0;
  if (now_s && ct_parse_now(now_s, &now) < 0) {
    fprintf(stderr, "llorch chat-template: --now '%s' is not YYYY-MM-DDTHH:MM:SS\n", now_s);
    return 2;
  }
  int status = 1;
  char *req_text = NULL, *tmpl_text = NULL;
  size_t req_len = 0, tmpl_len = 0;
  cJSON *req = NULL, *ctx = NULL;
  llorch_chat *chat = NULL;
  llorch_gguf *g = NULL;
  llorch_tokenizer *tok = NULL;
  llorch_jinja_output out = {0};
  llorch_errmsg em = {{0}};
  int rc = llorch_file_read(req_path, "request file", 256u << 20, &req_text, &req_len, &em);
  if (rc < 0) {
    fprintf(stderr, "llorch chat-template: %s\n", em.text);
    goto done;
  }
  req = cJSON_ParseWithLength(req_text, req_len);
  if (!cJSON_IsObject(req)) {
    fprintf(stderr, "llorch chat-template: %s: not a JSON object\n", req_path);
    goto done;
  }
  char err[128];
  if (ct_context(req, &ctx, err, sizeof err) < 0) {
    fprintf(stderr, "llorch chat-template: %s: %s\n", req_path, err);
    goto done;
  }
  if (tmpl_path) {
    if ((rc = llorch_file_read(tmpl_path, "template file", 256u << 20, &tmpl_text, &tmpl_len, &em)) < 0) {
      fprintf(stderr, "llorch chat-template: %s\n", em.text);
      goto done;
    }
    if (strlen(tmpl_text) != tmpl_len) {
      fprintf(stderr, "llorch chat-template: %s contains a NUL byte\n", tmpl_path);
      goto done;
    }
    rc = llorch_chat_init(&chat, tmpl_text, NULL, bos, eos, &em);
  } else {
    if ((rc = llorch_gguf_open(&g, model_path, 0, &em)) == 0 && (rc = llorch_tokenizer_load(&tok, g, &em)) == 0)
      rc = llorch_chat_init_model(&chat, g, tok, NULL, &em);
    if (rc == 0 && (bos || eos)) {
      /* the same templates with the texts given on the command line */
      llorch_chat_free(chat);
      chat = NULL;
      llorch_errmsg tmp = {{0}};
      size_t bl = 0, el = 0;
      char bbuf[256] = "", ebuf[256] = "";
      const char *bt = llorch_tokenizer_bos(tok) >= 0 ? llorch_tokenizer_token_text(tok, llorch_tokenizer_bos(tok), &bl) : NULL;
      const char *et = llorch_tokenizer_eos(tok) >= 0 ? llorch_tokenizer_token_text(tok, llorch_tokenizer_eos(tok), &el) : NULL;
      if (bt && bl < sizeof bbuf) memcpy(bbuf, bt, bl), bbuf[bl] = 0;
      if (et && el < sizeof ebuf) memcpy(ebuf, et, el), ebuf[el] = 0;
      llorch_gguf_str tu;
      char *tool = NULL;
      if (llorch_gguf_find_kv(g, "tokenizer.chat_template.tool_use") &&
          llorch_gguf_get_str(g, "tokenizer.chat_template.tool_use", &tu, &tmp) == 0 && (tool = malloc(tu.len + 1))) {
        memcpy(tool, tu.ptr, tu.len);
        tool[tu.len] = 0;
      }
      rc = llorch_chat_init(&chat, llorch_tokenizer_chat_template(tok), tool, bos ? bos : bbuf, eos ? eos : ebuf, &em);
      free(tool);
    }
  }
  if (rc < 0) {
    fprintf(stderr, "llorch chat-template: %s\n", em.text[0] ? em.text : llorch_strerror(rc));
    goto done;
  }
  if ((rc = llorch_chat_render(chat, ctx, now, &out, &em)) < 0) {
    fprintf(stderr, "%s\n", em.text);
    goto done;
  }
  if (fwrite(out.text, 1, out.len, stdout) != out.len || fflush(stdout) != 0) {
    fprintf(stderr, "llorch chat-template: writing the prompt failed\n");
    goto done;
  }
  status = 0;
done:
  llorch_jinja_output_free(&out);
  llorch_chat_free(chat);
  llorch_tokenizer_free(tok);
  llorch_gguf_close(g);
  cJSON_Delete(ctx);
  cJSON_Delete(req);
  free(req_text);
  free(tmpl_text);
  return status;
}
