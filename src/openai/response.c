/*
 * OpenAI response writers: chunks, whole answers, usage, logprobs, deltas,
 * and the message assembled from deltas for non-streaming answers. Both
 * roles write their answers here, so they cannot drift apart.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/openai.h"

/* ---- heads ---- */

/* {"id":..,"object":..,"created":..,"model":..,"system_fingerprint":null, */
static void resp_head(llorch_jbuf *b, const llorch_openai_meta *m, bool chunk) {
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, m->id);
  llorch_jbuf_cstr(b, ",\"object\":");
  llorch_jbuf_str(b, m->chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                             : "text_completion");
  llorch_jbuf_cstr(b, ",\"created\":");
  llorch_jbuf_int(b, m->created);
  llorch_jbuf_cstr(b, ",\"model\":");
  llorch_jbuf_str(b, m->model);
  llorch_jbuf_cstr(b, ",\"system_fingerprint\":null,");
}

void llorch_openai_write_usage(llorch_jbuf *b, uint32_t prompt, uint32_t completion, uint32_t cached) {
  llorch_jbuf_cstr(b, "\"usage\":{\"prompt_tokens\":");
  llorch_jbuf_int(b, prompt);
  llorch_jbuf_cstr(b, ",\"completion_tokens\":");
  llorch_jbuf_int(b, completion);
  llorch_jbuf_cstr(b, ",\"total_tokens\":");
  llorch_jbuf_int(b, (int64_t)prompt + completion);
  llorch_jbuf_cstr(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
  llorch_jbuf_int(b, cached);
  llorch_jbuf_raw(b, "}}", 2);
}

/* ---- deltas ---- */

void llorch_openai_write_delta(llorch_jbuf *b, const llorch_openai_delta *d, bool role) {
  llorch_jbuf_raw(b, "{", 1);
  bool any = false;
  if (role) {
    llorch_jbuf_cstr(b, "\"role\":\"assistant\"");
    any = true;
  }
  if (d && d->content) {
    if (any) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_key(b, "content");
    llorch_jbuf_strn(b, d->content, d->content_len);
    any = true;
  }
  if (d && d->reasoning) {
    if (any) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_key(b, "reasoning_content");
    llorch_jbuf_strn(b, d->reasoning, d->reasoning_len);
    any = true;
  }
  if (d && d->tool_index >= 0) {
    if (any) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_cstr(b, "\"tool_calls\":[{\"index\":");
    llorch_jbuf_int(b, d->tool_index);
    if (d->tool_id) {
      llorch_jbuf_cstr(b, ",\"id\":");
      llorch_jbuf_str(b, d->tool_id);
      llorch_jbuf_cstr(b, ",\"type\":\"function\"");
    }
    llorch_jbuf_cstr(b, ",\"function\":{");
    if (d->tool_name) {
      llorch_jbuf_key(b, "name");
      llorch_jbuf_str(b, d->tool_name);
      llorch_jbuf_raw(b, ",", 1);
    }
    llorch_jbuf_key(b, "arguments");
    llorch_jbuf_strn(b, d->tool_args ? d->tool_args : "", d->tool_args ? d->tool_args_len : 0);
    llorch_jbuf_cstr(b, "}}]");
  }
  llorch_jbuf_raw(b, "}", 1);
}

int llorch_openai_delta_from_json(const cJSON *o, llorch_openai_delta *d) {
  *d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  if (!cJSON_IsObject(o)) return LLORCH_EINVAL;
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "content");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "reasoning_content");
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tool_calls");
  if (cJSON_IsString(c)) {
    d->content = c->valuestring;
    d->content_len = strlen(c->valuestring);
  }
  if (cJSON_IsString(r)) {
    d->reasoning = r->valuestring;
    d->reasoning_len = strlen(r->valuestring);
  }
  if (cJSON_IsArray(t) && t->child) {
    const cJSON *call = t->child;
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(call, "index");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    if (!cJSON_IsNumber(idx) || idx->valuedouble < 0 || idx->valuedouble > 1e6)
      return LLORCH_EINVAL;
    d->tool_index = (int)idx->valuedouble;
    d->tool_id = cJSON_IsString(id) ? id->valuestring : NULL;
    d->tool_name = cJSON_IsString(name) ? name->valuestring : NULL;
    d->tool_args = cJSON_IsString(args) ? args->valuestring : "";
    d->tool_args_len = strlen(d->tool_args);
  }
  return 0;
}

/* ---- logprobs ---- */

void llorch_openai_logprobs_init(llorch_openai_logprobs *lp, bool chat) {
  lp->chat = chat;
  lp->n = 0;
  for (int k = 0; k < 4; k++) llorch_jbuf_init(&lp->part[k]);
}

void llorch_openai_logprobs_free(llorch_openai_logprobs *lp) {
  for (int k = 0; k < 4; k++) llorch_jbuf_free(&lp->part[k]);
  lp->n = 0;
}

void llorch_openai_logprobs_reset(llorch_openai_logprobs *lp) {
  for (int k = 0; k < 4; k++) llorch_jbuf_reset(&lp->part[k]);
  lp->n = 0;
}

static void lp_bytes(llorch_jbuf *b, const llorch_openai_lp_token *t) {
  const uint8_t *bytes = t->bytes ? t->bytes : (const uint8_t *)t->text;
  size_t n = t->bytes ? t->n_bytes : t->len;
  llorch_jbuf_raw(b, "[", 1);
  for (size_t i = 0; i < n; i++) {
    if (i) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_int(b, bytes[i]);
  }
  llorch_jbuf_raw(b, "]", 1);
}

void llorch_openai_write_lp_entry(llorch_jbuf *b, const llorch_openai_lp_token *tok,
                                  const llorch_openai_lp_token *top, int n_top, bool with_top) {
  llorch_jbuf_cstr(b, "{\"token\":");
  llorch_jbuf_strn(b, tok->text, tok->len);
  llorch_jbuf_cstr(b, ",\"logprob\":");
  llorch_jbuf_num(b, tok->logprob);
  llorch_jbuf_cstr(b, ",\"bytes\":");
  lp_bytes(b, tok);
  if (with_top) {
    llorch_jbuf_cstr(b, ",\"top_logprobs\":[");
    for (int q = 0; q < n_top; q++) {
      if (q) llorch_jbuf_raw(b, ",", 1);
      llorch_openai_write_lp_entry(b, &top[q], NULL, 0, false);
    }
    llorch_jbuf_raw(b, "]", 1);
  }
  llorch_jbuf_raw(b, "}", 1);
}

void llorch_openai_logprobs_add(llorch_openai_logprobs *lp, const llorch_openai_lp_token *tok,
                                const llorch_openai_lp_token *top, int n_top, size_t text_offset) {
  if (lp->chat) {
    if (lp->n) llorch_jbuf_raw(&lp->part[0], ",", 1);
    llorch_openai_write_lp_entry(&lp->part[0], tok, top, n_top, true);
  } else {
    if (lp->n)
      for (int k = 0; k < 4; k++) llorch_jbuf_raw(&lp->part[k], ",", 1);
    llorch_jbuf_strn(&lp->part[0], tok->text, tok->len);
    llorch_jbuf_num(&lp->part[1], tok->logprob); /* NAN (an echoed first token) -> null */
    if (isnan(tok->logprob) && n_top == 0) {
      /* the first token of an echoed prompt has nothing before it */
      llorch_jbuf_cstr(&lp->part[2], "null");
      llorch_jbuf_int(&lp->part[3], (int64_t)text_offset);
      lp->n++;
      return;
    }
    llorch_jbuf_raw(&lp->part[2], "{", 1);
    for (int q = 0; q < n_top; q++) {
      /* The same token text twice would be a duplicate key: both are kept
       * (JSON readers keep the last), as the alternatives came. */
      if (q) llorch_jbuf_raw(&lp->part[2], ",", 1);
      llorch_jbuf_strn(&lp->part[2], top[q].text, top[q].len);
      llorch_jbuf_raw(&lp->part[2], ":", 1);
      llorch_jbuf_num(&lp->part[2], top[q].logprob);
    }
    llorch_jbuf_raw(&lp->part[2], "}", 1);
    llorch_jbuf_int(&lp->part[3], (int64_t)text_offset);
  }
  lp->n++;
}

/* One {token, logprob, bytes} object of a native event -> lp_token (bytes into buf). */
static void lp_from_json(const cJSON *e, llorch_openai_lp_token *t, uint8_t *buf, size_t cap) {
  const cJSON *tok = cJSON_GetObjectItemCaseSensitive(e, "token");
  const cJSON *lp = cJSON_GetObjectItemCaseSensitive(e, "logprob");
  const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(e, "bytes");
  t->text = cJSON_IsString(tok) ? tok->valuestring : "";
  t->len = strlen(t->text);
  /* null: an echoed prompt's first token (no logprob) */
  t->logprob = cJSON_IsNumber(lp) ? lp->valuedouble : cJSON_IsNull(lp) ? NAN : 0.0;
  t->bytes = NULL;
  t->n_bytes = 0;
  if (cJSON_IsArray(bytes)) {
    size_t n = 0;
    for (const cJSON *x = bytes->child; x && n < cap; x = x->next)
      buf[n++] = cJSON_IsNumber(x) ? (uint8_t)((int)x->valuedouble & 0xff) : 0;
    t->bytes = buf;
    t->n_bytes = n;
  }
}

/* One chat-shaped entry of a native event -> lp. */
static void lp_add_entry(llorch_openai_logprobs *lp, const cJSON *e, size_t text_offset) {
  uint8_t buf[256], tbuf[LLORCH_OPENAI_MAX_TOP_LOGPROBS][256];
  llorch_openai_lp_token tok, top[LLORCH_OPENAI_MAX_TOP_LOGPROBS];
  lp_from_json(e, &tok, buf, sizeof buf);
  int n_top = 0;
  const cJSON *tops = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
  for (const cJSON *t = cJSON_IsArray(tops) ? tops->child : NULL;
       t && n_top < LLORCH_OPENAI_MAX_TOP_LOGPROBS; t = t->next, n_top++)
    lp_from_json(t, &top[n_top], tbuf[n_top], sizeof tbuf[n_top]);
  llorch_openai_logprobs_add(lp, &tok, top, n_top, text_offset);
}

void llorch_openai_logprobs_add_json(llorch_openai_logprobs *lp, const cJSON *entries,
                                     size_t text_offset) {
  for (const cJSON *e = cJSON_IsArray(entries) ? entries->child : NULL; e; e = e->next)
    lp_add_entry(lp, e, text_offset);
}

void llorch_openai_logprobs_add_prompt(llorch_openai_logprobs *lp, const cJSON *entries,
                                       const cJSON *text_bytes, size_t text_len) {
  size_t offset = 0;
  const cJSON *nb = cJSON_IsArray(text_bytes) ? text_bytes->child : NULL;
  for (const cJSON *e = cJSON_IsArray(entries) ? entries->child : NULL; e; e = e->next) {
    lp_add_entry(lp, e, offset < text_len ? offset : text_len);
    if (cJSON_IsNumber(nb) && nb->valuedouble > 0) offset += (size_t)nb->valuedouble;
    if (nb) nb = nb->next;
  }
}

void llorch_openai_write_logprobs(llorch_jbuf *b, const llorch_openai_logprobs *lp) {
  if (!lp) {
    llorch_jbuf_cstr(b, "null");
    return;
  }
  if (lp->chat) {
    llorch_jbuf_cstr(b, "{\"content\":[");
    llorch_jbuf_raw(b, lp->part[0].data ? lp->part[0].data : "", lp->part[0].len);
    llorch_jbuf_cstr(b, "]}");
    return;
  }
  static const char *const keys[4] = {"{\"tokens\":[", "],\"token_logprobs\":[",
                                      "],\"top_logprobs\":[", "],\"text_offset\":["};
  for (int k = 0; k < 4; k++) {
    llorch_jbuf_cstr(b, keys[k]);
    llorch_jbuf_raw(b, lp->part[k].data ? lp->part[k].data : "", lp->part[k].len);
  }
  llorch_jbuf_cstr(b, "]}");
}

/* ---- the assembled message ---- */

void llorch_openai_message_init(llorch_openai_message *m) {
  memset(m, 0, sizeof *m);
  llorch_jbuf_init(&m->content);
  llorch_jbuf_init(&m->reasoning);
}

void llorch_openai_message_reset(llorch_openai_message *m) {
  llorch_openai_message_free(m);
  llorch_openai_message_init(m);
}

void llorch_openai_message_free(llorch_openai_message *m) {
  llorch_jbuf_free(&m->content);
  llorch_jbuf_free(&m->reasoning);
  for (int i = 0; i < m->n_calls; i++) {
    free(m->calls[i].name);
    llorch_jbuf_free(&m->calls[i].args);
  }
  free(m->calls);
  m->calls = NULL;
  m->n_calls = 0;
}

void llorch_openai_message_add(llorch_openai_message *m, const llorch_openai_delta *d) {
  if (d->content) llorch_jbuf_raw(&m->content, d->content, d->content_len);
  if (d->reasoning) llorch_jbuf_raw(&m->reasoning, d->reasoning, d->reasoning_len);
  if (d->tool_index < 0) return;
  /* Fragments of call i arrive in order; a new index opens a call. */
  if (d->tool_index >= m->n_calls) {
    if (d->tool_index != m->n_calls || d->tool_index >= LLORCH_OPENAI_MAX_TOOLS * 8) return;
    llorch_openai_tool_call *nc = realloc(m->calls, (size_t)(m->n_calls + 1) * sizeof *nc);
    if (!nc) {
      m->err = LLORCH_ENOMEM;
      return;
    }
    m->calls = nc;
    memset(&nc[m->n_calls], 0, sizeof nc[0]);
    llorch_jbuf_init(&nc[m->n_calls].args);
    m->n_calls++;
  }
  llorch_openai_tool_call *c = &m->calls[d->tool_index];
  if (d->tool_id) snprintf(c->id, sizeof c->id, "%s", d->tool_id);
  if (d->tool_name && !c->name) {
    c->name = strdup(d->tool_name);
    if (!c->name) m->err = LLORCH_ENOMEM;
  }
  if (d->tool_args_len) llorch_jbuf_raw(&c->args, d->tool_args, d->tool_args_len);
}

/* ---- chunks and answers ---- */

void llorch_openai_write_chat_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                    const llorch_openai_delta *d, bool role,
                                    const llorch_openai_logprobs *lp, const char *finish) {
  resp_head(b, m, true);
  llorch_jbuf_cstr(b, "\"choices\":[{\"index\":");
  llorch_jbuf_int(b, m->index);
  llorch_jbuf_cstr(b, ",\"delta\":");
  llorch_openai_write_delta(b, d, role);
  llorch_jbuf_cstr(b, ",\"logprobs\":");
  llorch_openai_write_logprobs(b, lp);
  llorch_jbuf_cstr(b, ",\"finish_reason\":");
  llorch_jbuf_str(b, finish);
  llorch_jbuf_cstr(b, "}]}");
}

void llorch_openai_write_completion_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                          const char *text, size_t len,
                                          const llorch_openai_logprobs *lp, const char *finish) {
  resp_head(b, m, true);
  llorch_jbuf_cstr(b, "\"choices\":[{\"index\":");
  llorch_jbuf_int(b, m->index);
  llorch_jbuf_cstr(b, ",\"text\":");
  llorch_jbuf_strn(b, text ? text : "", text ? len : 0);
  llorch_jbuf_cstr(b, ",\"logprobs\":");
  llorch_openai_write_logprobs(b, lp);
  llorch_jbuf_cstr(b, ",\"finish_reason\":");
  llorch_jbuf_str(b, finish);
  llorch_jbuf_cstr(b, "}]}");
}

void llorch_openai_write_usage_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                     uint32_t prompt_tokens, uint32_t completion_tokens) {
  resp_head(b, m, true);
  llorch_jbuf_cstr(b, "\"choices\":[],");
  llorch_openai_write_usage(b, prompt_tokens, completion_tokens, m->cached_tokens);
  llorch_jbuf_raw(b, "}", 1);
}

/* One chat choice's message object ({"role":"assistant",...}). */
static void resp_message(llorch_jbuf *b, const llorch_openai_message *msg) {
  llorch_jbuf_cstr(b, "{\"role\":\"assistant\",\"content\":");
  if (msg->n_calls && !msg->content.len) llorch_jbuf_cstr(b, "null");
  else llorch_jbuf_strn(b, msg->content.data ? msg->content.data : "", msg->content.len);
  if (msg->reasoning.len) {
    llorch_jbuf_cstr(b, ",\"reasoning_content\":");
    llorch_jbuf_strn(b, msg->reasoning.data, msg->reasoning.len);
  }
  if (msg->n_calls) {
    llorch_jbuf_cstr(b, ",\"tool_calls\":[");
    for (int i = 0; i < msg->n_calls; i++) {
      const llorch_openai_tool_call *c = &msg->calls[i];
      if (i) llorch_jbuf_raw(b, ",", 1);
      llorch_jbuf_cstr(b, "{\"id\":");
      llorch_jbuf_str(b, c->id);
      llorch_jbuf_cstr(b, ",\"type\":\"function\",\"function\":{\"name\":");
      llorch_jbuf_str(b, c->name ? c->name : "");
      llorch_jbuf_cstr(b, ",\"arguments\":");
      llorch_jbuf_strn(b, c->args.data ? c->args.data : "{}", c->args.data ? c->args.len : 2);
      llorch_jbuf_cstr(b, "}}");
    }
    llorch_jbuf_raw(b, "]", 1);
  }
  llorch_jbuf_raw(b, "}", 1);
}

void llorch_openai_write_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                  const llorch_openai_choice *choices, int n,
                                  uint32_t prompt_tokens, uint32_t completion_tokens) {
  resp_head(b, m, false);
  llorch_jbuf_cstr(b, "\"choices\":[");
  for (int i = 0; i < n; i++) {
    const llorch_openai_choice *c = &choices[i];
    llorch_jbuf_cstr(b, i ? ",{\"index\":" : "{\"index\":");
    llorch_jbuf_int(b, i);
    if (m->chat && c->msg) {
      llorch_jbuf_cstr(b, ",\"message\":");
      resp_message(b, c->msg);
    } else {
      llorch_jbuf_cstr(b, ",\"text\":");
      llorch_jbuf_strn(b, c->text ? c->text : "", c->text ? c->len : 0);
    }
    llorch_jbuf_cstr(b, ",\"logprobs\":");
    llorch_openai_write_logprobs(b, c->lp);
    llorch_jbuf_cstr(b, ",\"finish_reason\":");
    llorch_jbuf_str(b, c->finish);
    llorch_jbuf_raw(b, "}", 1);
  }
  llorch_jbuf_cstr(b, "],");
  llorch_openai_write_usage(b, prompt_tokens, completion_tokens, m->cached_tokens);
  llorch_jbuf_raw(b, "}", 1);
}

void llorch_openai_write_chat_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                       const llorch_openai_message *msg,
                                       const llorch_openai_logprobs *lp, const char *finish,
                                       uint32_t prompt_tokens, uint32_t completion_tokens) {
  const llorch_openai_choice c = {.msg = msg, .lp = lp, .finish = finish};
  llorch_openai_write_response(b, m, &c, 1, prompt_tokens, completion_tokens);
}

void llorch_openai_write_completion_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                             const char *text, size_t len,
                                             const llorch_openai_logprobs *lp, const char *finish,
                                             uint32_t prompt_tokens, uint32_t completion_tokens) {
  const llorch_openai_choice c = {.text = text, .len = len, .lp = lp, .finish = finish};
  llorch_openai_write_response(b, m, &c, 1, prompt_tokens, completion_tokens);
}
