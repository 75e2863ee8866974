/*
 * Output in the other APIs' shapes (openai.h llorch_openai_dout): the
 * deltas of the one output parser, grouped into Anthropic content blocks
 * or Responses output items, streamed as those APIs' SSE events and
 * written as their answer objects. Both roles drive it the same way:
 * start, add (each delta), finish.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/openai.h"
#include "openai-impl.h"

/* ---- helpers of the layer ---- */

int openai_oom(llorch_openai_error *err) {
  return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
}

/* at most 40 bytes, cut on a UTF-8 boundary, so the message stays one printable line */
const char *openai_show(char *buf, size_t cap, const char *s) { return llorch_str_show(buf, cap, s, strlen(s), 40); }

int openai_copy_field(cJSON *dst, const cJSON *src, const char *key, const char *as,
                      llorch_openai_error *err) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(src, key);
  if (!v || cJSON_IsNull(v)) return 0;
  cJSON *dup = cJSON_Duplicate(v, true);
  if (!dup) return openai_oom(err);
  cJSON_AddItemToObject(dst, as, dup);
  return 0;
}

int llorch_openai_dialect_to_chat(llorch_openai_dialect d, const cJSON *body,
                                  const llorch_openai_limits *lim, cJSON **out,
                                  llorch_openai_error *err) {
  switch (d) {
  case LLORCH_DIALECT_ANTHROPIC: return llorch_anthropic_to_chat(body, lim, out, err);
  case LLORCH_DIALECT_RESPONSES: return llorch_responses_to_chat(body, lim, out, err);
  default:
    *out = cJSON_Duplicate(body, true);
    return *out ? 0 : openai_oom(err);
  }
}

const char *llorch_openai_dialect_id_prefix(llorch_openai_dialect d) {
  switch (d) {
  case LLORCH_DIALECT_ANTHROPIC: return "msg_";
  case LLORCH_DIALECT_RESPONSES: return "resp_";
  default: return "chatcmpl-";
  }
}

/* ---- blocks ---- */

void llorch_openai_dout_init(llorch_openai_dout *o, llorch_openai_dialect dialect, const char *id,
                             const char *model, int64_t created, llorch_openai_event_fn send,
                             void *user) {
  memset(o, 0, sizeof *o);
  o->dialect = dialect;
  snprintf(o->id, sizeof o->id, "%s", id ? id : "");
  snprintf(o->model, sizeof o->model, "%s", model ? model : "");
  o->created = created;
  o->send = send;
  o->user = user;
}

void llorch_openai_dout_reset(llorch_openai_dout *o) {
  for (int i = 0; i < o->n_blocks; i++) {
    llorch_jbuf_free(&o->blocks[i].text);
    free(o->blocks[i].name);
  }
  free(o->blocks);
  o->blocks = NULL;
  o->n_blocks = 0;
  o->open = false;
}

void llorch_openai_dout_free(llorch_openai_dout *o) { llorch_openai_dout_reset(o); }

/* Sends b as event name (streaming only). */
static void dout_send(llorch_openai_dout *o, const char *name, llorch_jbuf *b) {
  if (o->send && llorch_jbuf_error(b) == 0) o->send(o->user, name, b->data, b->len);
  if (llorch_jbuf_error(b)) o->err = LLORCH_ENOMEM;
}

/* Responses: {"type":<name>,"sequence_number":N, (the caller goes on) */
static void resp_event_head(llorch_openai_dout *o, llorch_jbuf *b, const char *name) {
  llorch_jbuf_cstr(b, "{\"type\":");
  llorch_jbuf_str(b, name);
  llorch_jbuf_cstr(b, ",\"sequence_number\":");
  llorch_jbuf_int(b, o->seq++);
}

/* Is the tool call's argument text a JSON object (what tool_use.input must be)? */
static bool dout_args_object(const llorch_openai_block *k) {
  if (!k->text.data) return false;
  cJSON *v = cJSON_ParseWithLength(k->text.data, k->text.len);
  bool ok = cJSON_IsObject(v);
  cJSON_Delete(v);
  return ok;
}

/* ---- Anthropic ---- */

static void anth_usage(llorch_jbuf *b, uint32_t in, uint32_t out) {
  llorch_jbuf_cstr(b, "\"usage\":{\"input_tokens\":");
  llorch_jbuf_int(b, in);
  llorch_jbuf_cstr(b, ",\"output_tokens\":");
  llorch_jbuf_int(b, out);
  llorch_jbuf_raw(b, "}", 1);
}

/* A content block as in content_block_start (empty) or the final message (full). */
static void anth_block(llorch_jbuf *b, const llorch_openai_block *k, bool full) {
  switch (k->kind) {
  case LLORCH_BLOCK_TEXT:
    llorch_jbuf_cstr(b, "{\"type\":\"text\",\"text\":");
    llorch_jbuf_strn(b, full && k->text.data ? k->text.data : "", full ? k->text.len : 0);
    llorch_jbuf_raw(b, "}", 1);
    break;
  case LLORCH_BLOCK_REASONING:
    llorch_jbuf_cstr(b, "{\"type\":\"thinking\",\"thinking\":");
    llorch_jbuf_strn(b, full && k->text.data ? k->text.data : "", full ? k->text.len : 0);
    llorch_jbuf_cstr(b, ",\"signature\":\"\"}");
    break;
  case LLORCH_BLOCK_TOOL:
    llorch_jbuf_cstr(b, "{\"type\":\"tool_use\",\"id\":");
    llorch_jbuf_str(b, k->id);
    llorch_jbuf_cstr(b, ",\"name\":");
    llorch_jbuf_str(b, k->name ? k->name : "");
    llorch_jbuf_cstr(b, ",\"input\":");
    /* A call the model left unparsable still answers an object. */
    if (full && dout_args_object(k)) llorch_jbuf_raw(b, k->text.data, k->text.len);
    else llorch_jbuf_cstr(b, "{}");
    llorch_jbuf_raw(b, "}", 1);
    break;
  }
}

static const char *anth_stop_reason(const char *finish, const char *stop_sequence) {
  if (finish && strcmp(finish, "tool_calls") == 0) return "tool_use";
  if (finish && strcmp(finish, "length") == 0) return "max_tokens";
  if (stop_sequence) return "stop_sequence";
  return "end_turn";
}

static void anth_message(llorch_openai_dout *o, llorch_jbuf *b, bool full, const char *finish,
                         const char *stop_sequence, uint32_t in, uint32_t out) {
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, o->id);
  llorch_jbuf_cstr(b, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
  llorch_jbuf_str(b, o->model);
  llorch_jbuf_cstr(b, ",\"content\":[");
  for (int i = 0; full && i < o->n_blocks; i++) {
    if (i) llorch_jbuf_raw(b, ",", 1);
    anth_block(b, &o->blocks[i], true);
  }
  llorch_jbuf_cstr(b, "],\"stop_reason\":");
  llorch_jbuf_str(b, full ? anth_stop_reason(finish, stop_sequence) : NULL);
  llorch_jbuf_cstr(b, ",\"stop_sequence\":");
  llorch_jbuf_str(b, full ? stop_sequence : NULL);
  llorch_jbuf_raw(b, ",", 1);
  anth_usage(b, in, out);
  llorch_jbuf_raw(b, "}", 1);
}

static void anth_open(llorch_openai_dout *o) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"type\":\"content_block_start\",\"index\":");
  llorch_jbuf_int(&b, o->n_blocks - 1);
  llorch_jbuf_cstr(&b, ",\"content_block\":");
  anth_block(&b, &o->blocks[o->n_blocks - 1], false);
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, "content_block_start", &b);
  llorch_jbuf_free(&b);
}

static void anth_close(llorch_openai_dout *o) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"type\":\"content_block_stop\",\"index\":");
  llorch_jbuf_int(&b, o->n_blocks - 1);
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, "content_block_stop", &b);
  llorch_jbuf_free(&b);
}

static void anth_delta(llorch_openai_dout *o, const char *text, size_t len) {
  static const char *const kinds[] = {"\"text_delta\",\"text\":", "\"thinking_delta\",\"thinking\":",
                                      "\"input_json_delta\",\"partial_json\":"};
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"type\":\"content_block_delta\",\"index\":");
  llorch_jbuf_int(&b, o->n_blocks - 1);
  llorch_jbuf_cstr(&b, ",\"delta\":{\"type\":");
  llorch_jbuf_cstr(&b, kinds[o->blocks[o->n_blocks - 1].kind]);
  llorch_jbuf_strn(&b, text, len);
  llorch_jbuf_cstr(&b, "}}");
  dout_send(o, "content_block_delta", &b);
  llorch_jbuf_free(&b);
}

/* ---- Responses ---- */

static void resp_usage(llorch_jbuf *b, uint32_t in, uint32_t out) {
  llorch_jbuf_cstr(b, "\"usage\":{\"input_tokens\":");
  llorch_jbuf_int(b, in);
  llorch_jbuf_cstr(b, ",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":");
  llorch_jbuf_int(b, out);
  llorch_jbuf_cstr(b, ",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
  llorch_jbuf_int(b, (int64_t)in + out);
  llorch_jbuf_raw(b, "}", 1);
}

/* An output item; done: with its text and status "completed". */
static void resp_item(llorch_jbuf *b, const llorch_openai_block *k, bool done) {
  const char *status = done ? "completed" : "in_progress";
  const char *text = done && k->text.data ? k->text.data : "";
  size_t len = done ? k->text.len : 0;
  switch (k->kind) {
  case LLORCH_BLOCK_TEXT:
    llorch_jbuf_cstr(b, "{\"type\":\"message\",\"id\":");
    llorch_jbuf_str(b, k->item_id);
    llorch_jbuf_cstr(b, ",\"status\":");
    llorch_jbuf_str(b, status);
    llorch_jbuf_cstr(b, ",\"role\":\"assistant\",\"content\":[");
    if (done) {
      llorch_jbuf_cstr(b, "{\"type\":\"output_text\",\"text\":");
      llorch_jbuf_strn(b, text, len);
      llorch_jbuf_cstr(b, ",\"annotations\":[],\"logprobs\":[]}");
    }
    llorch_jbuf_cstr(b, "]}");
    break;
  case LLORCH_BLOCK_REASONING:
    llorch_jbuf_cstr(b, "{\"type\":\"reasoning\",\"id\":");
    llorch_jbuf_str(b, k->item_id);
    llorch_jbuf_cstr(b, ",\"summary\":[],\"content\":[");
    if (done) {
      llorch_jbuf_cstr(b, "{\"type\":\"reasoning_text\",\"text\":");
      llorch_jbuf_strn(b, text, len);
      llorch_jbuf_raw(b, "}", 1);
    }
    llorch_jbuf_cstr(b, "],\"status\":");
    llorch_jbuf_str(b, status);
    llorch_jbuf_raw(b, "}", 1);
    break;
  case LLORCH_BLOCK_TOOL:
    llorch_jbuf_cstr(b, "{\"type\":\"function_call\",\"id\":");
    llorch_jbuf_str(b, k->item_id);
    llorch_jbuf_cstr(b, ",\"call_id\":");
    llorch_jbuf_str(b, k->id);
    llorch_jbuf_cstr(b, ",\"name\":");
    llorch_jbuf_str(b, k->name ? k->name : "");
    llorch_jbuf_cstr(b, ",\"arguments\":");
    llorch_jbuf_strn(b, text, len);
    llorch_jbuf_cstr(b, ",\"status\":");
    llorch_jbuf_str(b, status);
    llorch_jbuf_raw(b, "}", 1);
    break;
  }
}

/* The response object; status "in_progress" has no output yet. */
static void resp_object(llorch_openai_dout *o, llorch_jbuf *b, const char *status,
                        const char *finish, uint32_t in, uint32_t out) {
  bool done = strcmp(status, "in_progress") != 0;
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, o->id);
  llorch_jbuf_cstr(b, ",\"object\":\"response\",\"created_at\":");
  llorch_jbuf_int(b, o->created);
  llorch_jbuf_cstr(b, ",\"status\":");
  llorch_jbuf_str(b, status);
  llorch_jbuf_cstr(b, ",\"error\":null,\"incomplete_details\":");
  if (finish && strcmp(finish, "length") == 0)
    llorch_jbuf_cstr(b, "{\"reason\":\"max_output_tokens\"}");
  else
    llorch_jbuf_cstr(b, "null");
  llorch_jbuf_cstr(b, ",\"model\":");
  llorch_jbuf_str(b, o->model);
  llorch_jbuf_cstr(b, ",\"output\":[");
  for (int i = 0; done && i < o->n_blocks; i++) {
    if (i) llorch_jbuf_raw(b, ",", 1);
    resp_item(b, &o->blocks[i], true);
  }
  llorch_jbuf_cstr(b, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
                      "\"store\":false,\"text\":{\"format\":{\"type\":\"text\"}},"
                      "\"truncation\":\"disabled\",\"metadata\":{},");
  if (done) resp_usage(b, in, out);
  else llorch_jbuf_cstr(b, "\"usage\":null");
  llorch_jbuf_raw(b, "}", 1);
}

/* {"type":..,"sequence_number":..,"response":{..}} */
static void resp_send_state(llorch_openai_dout *o, const char *name, const char *status,
                            const char *finish, uint32_t in, uint32_t out) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  resp_event_head(o, &b, name);
  llorch_jbuf_cstr(&b, ",\"response\":");
  resp_object(o, &b, status, finish, in, out);
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, name, &b);
  llorch_jbuf_free(&b);
}

/* ,"item_id":..,"output_index":N (and content_index for text parts) */
static void resp_item_ref(llorch_openai_dout *o, llorch_jbuf *b, bool content) {
  const llorch_openai_block *k = &o->blocks[o->n_blocks - 1];
  llorch_jbuf_cstr(b, ",\"item_id\":");
  llorch_jbuf_str(b, k->item_id);
  llorch_jbuf_cstr(b, ",\"output_index\":");
  llorch_jbuf_int(b, o->n_blocks - 1);
  if (content) llorch_jbuf_cstr(b, ",\"content_index\":0");
}

/* ,"part":{..}: a message's output_text or a reasoning item's reasoning_text */
static void resp_text_part(llorch_jbuf *b, const llorch_openai_block *k, bool full) {
  bool text = k->kind == LLORCH_BLOCK_TEXT;
  llorch_jbuf_cstr(b, text ? ",\"part\":{\"type\":\"output_text\",\"text\":"
                           : ",\"part\":{\"type\":\"reasoning_text\",\"text\":");
  llorch_jbuf_strn(b, full && k->text.data ? k->text.data : "", full ? k->text.len : 0);
  llorch_jbuf_cstr(b, text ? ",\"annotations\":[],\"logprobs\":[]}" : "}");
}

static void resp_open(llorch_openai_dout *o) {
  const llorch_openai_block *k = &o->blocks[o->n_blocks - 1];
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  resp_event_head(o, &b, "response.output_item.added");
  llorch_jbuf_cstr(&b, ",\"output_index\":");
  llorch_jbuf_int(&b, o->n_blocks - 1);
  llorch_jbuf_cstr(&b, ",\"item\":");
  resp_item(&b, k, false);
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, "response.output_item.added", &b);
  if (k->kind != LLORCH_BLOCK_TOOL) {
    llorch_jbuf_reset(&b);
    resp_event_head(o, &b, "response.content_part.added");
    resp_item_ref(o, &b, true);
    resp_text_part(&b, k, false);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "response.content_part.added", &b);
  }
  llorch_jbuf_free(&b);
}

static void resp_close(llorch_openai_dout *o) {
  const llorch_openai_block *k = &o->blocks[o->n_blocks - 1];
  const char *text = k->text.data ? k->text.data : "";
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  switch (k->kind) {
  case LLORCH_BLOCK_TEXT:
    resp_event_head(o, &b, "response.output_text.done");
    resp_item_ref(o, &b, true);
    llorch_jbuf_cstr(&b, ",\"text\":");
    llorch_jbuf_strn(&b, text, k->text.len);
    llorch_jbuf_cstr(&b, ",\"logprobs\":[]}");
    dout_send(o, "response.output_text.done", &b);
    llorch_jbuf_reset(&b);
    resp_event_head(o, &b, "response.content_part.done");
    resp_item_ref(o, &b, true);
    resp_text_part(&b, k, true);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "response.content_part.done", &b);
    break;
  case LLORCH_BLOCK_REASONING:
    resp_event_head(o, &b, "response.reasoning_text.done");
    resp_item_ref(o, &b, true);
    llorch_jbuf_cstr(&b, ",\"text\":");
    llorch_jbuf_strn(&b, text, k->text.len);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "response.reasoning_text.done", &b);
    llorch_jbuf_reset(&b);
    resp_event_head(o, &b, "response.content_part.done");
    resp_item_ref(o, &b, true);
    resp_text_part(&b, k, true);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "response.content_part.done", &b);
    break;
  case LLORCH_BLOCK_TOOL:
    resp_event_head(o, &b, "response.function_call_arguments.done");
    resp_item_ref(o, &b, false);
    llorch_jbuf_cstr(&b, ",\"name\":");
    llorch_jbuf_str(&b, k->name ? k->name : "");
    llorch_jbuf_cstr(&b, ",\"arguments\":");
    llorch_jbuf_strn(&b, text, k->text.len);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "response.function_call_arguments.done", &b);
    break;
  }
  llorch_jbuf_reset(&b);
  resp_event_head(o, &b, "response.output_item.done");
  llorch_jbuf_cstr(&b, ",\"output_index\":");
  llorch_jbuf_int(&b, o->n_blocks - 1);
  llorch_jbuf_cstr(&b, ",\"item\":");
  resp_item(&b, k, true);
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, "response.output_item.done", &b);
  llorch_jbuf_free(&b);
}

static void resp_delta(llorch_openai_dout *o, const char *text, size_t len) {
  static const char *const names[] = {"response.output_text.delta", "response.reasoning_text.delta",
                                      "response.function_call_arguments.delta"};
  llorch_openai_block_kind kind = o->blocks[o->n_blocks - 1].kind;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  resp_event_head(o, &b, names[kind]);
  resp_item_ref(o, &b, kind != LLORCH_BLOCK_TOOL);
  llorch_jbuf_cstr(&b, ",\"delta\":");
  llorch_jbuf_strn(&b, text, len);
  if (kind == LLORCH_BLOCK_TEXT) llorch_jbuf_cstr(&b, ",\"logprobs\":[]");
  llorch_jbuf_raw(&b, "}", 1);
  dout_send(o, names[kind], &b);
  llorch_jbuf_free(&b);
}

/* ---- driving ---- */

void llorch_openai_dout_start(llorch_openai_dout *o, uint32_t prompt_tokens) {
  o->prompt_tokens = prompt_tokens;
  if (!o->send || o->started) return;
  o->started = true;
  if (o->dialect == LLORCH_DIALECT_ANTHROPIC) {
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_jbuf_cstr(&b, "{\"type\":\"message_start\",\"message\":");
    anth_message(o, &b, false, NULL, NULL, prompt_tokens, 0);
    llorch_jbuf_raw(&b, "}", 1);
    dout_send(o, "message_start", &b);
    llorch_jbuf_free(&b);
  } else if (o->dialect == LLORCH_DIALECT_RESPONSES) {
    resp_send_state(o, "response.created", "in_progress", NULL, 0, 0);
    resp_send_state(o, "response.in_progress", "in_progress", NULL, 0, 0);
  }
}

static void dout_close(llorch_openai_dout *o) {
  if (!o->open) return;
  o->open = false;
  if (o->dialect == LLORCH_DIALECT_ANTHROPIC) anth_close(o);
  else resp_close(o);
}

/* The block for text of kind (call: the tool index): the open one, or a new one. */
static llorch_openai_block *dout_block(llorch_openai_dout *o, llorch_openai_block_kind kind,
                                       const llorch_openai_delta *d) {
  llorch_openai_block *last = o->n_blocks ? &o->blocks[o->n_blocks - 1] : NULL;
  if (last && last->kind == kind && (kind != LLORCH_BLOCK_TOOL || last->call_index == d->tool_index))
    return last;
  if (o->n_blocks >= LLORCH_OPENAI_MAX_TOOLS * 8) return NULL; /* bounded like the message's calls */
  dout_close(o);
  llorch_openai_block *nb = realloc(o->blocks, (size_t)(o->n_blocks + 1) * sizeof *nb);
  if (!nb) {
    o->err = LLORCH_ENOMEM;
    return NULL;
  }
  o->blocks = nb;
  llorch_openai_block *k = &nb[o->n_blocks++];
  memset(k, 0, sizeof *k);
  llorch_jbuf_init(&k->text);
  k->kind = kind;
  k->call_index = kind == LLORCH_BLOCK_TOOL ? d->tool_index : -1;
  if (kind == LLORCH_BLOCK_TOOL) {
    snprintf(k->id, sizeof k->id, "%s", d->tool_id ? d->tool_id : "call");
    if (d->tool_name && !(k->name = strdup(d->tool_name))) o->err = LLORCH_ENOMEM;
  }
  static const char *const prefixes[] = {"msg", "rs", "fc"};
  /* item ids: unique within the response, derived from its id */
  snprintf(k->item_id, sizeof k->item_id, "%s_%s_%d", prefixes[kind],
           strchr(o->id, '_') ? strchr(o->id, '_') + 1 : o->id, o->n_blocks - 1);
  if (o->send && o->started) {
    o->open = true;
    if (o->dialect == LLORCH_DIALECT_ANTHROPIC) anth_open(o);
    else resp_open(o);
  }
  return k;
}

static void dout_text(llorch_openai_dout *o, llorch_openai_block_kind kind,
                      const llorch_openai_delta *d, const char *text, size_t len) {
  llorch_openai_block *k = dout_block(o, kind, d);
  if (!k) return;
  llorch_jbuf_raw(&k->text, text, len);
  if (llorch_jbuf_error(&k->text)) o->err = LLORCH_ENOMEM;
  if (!o->open || !len) return;
  if (o->dialect == LLORCH_DIALECT_ANTHROPIC) anth_delta(o, text, len);
  else resp_delta(o, text, len);
}

void llorch_openai_dout_add(llorch_openai_dout *o, const llorch_openai_delta *d) {
  if (d->reasoning && d->reasoning_len)
    dout_text(o, LLORCH_BLOCK_REASONING, d, d->reasoning, d->reasoning_len);
  if (d->content && d->content_len) dout_text(o, LLORCH_BLOCK_TEXT, d, d->content, d->content_len);
  if (d->tool_index >= 0)
    dout_text(o, LLORCH_BLOCK_TOOL, d, d->tool_args ? d->tool_args : "",
              d->tool_args ? d->tool_args_len : 0);
}

void llorch_openai_dout_finish(llorch_openai_dout *o, const char *finish, const char *stop_sequence,
                               uint32_t prompt_tokens, uint32_t completion_tokens,
                               llorch_jbuf *body) {
  if (o->send && o->started) {
    dout_close(o);
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    if (o->dialect == LLORCH_DIALECT_ANTHROPIC) {
      llorch_jbuf_cstr(&b, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
      llorch_jbuf_str(&b, anth_stop_reason(finish, stop_sequence));
      llorch_jbuf_cstr(&b, ",\"stop_sequence\":");
      llorch_jbuf_str(&b, stop_sequence);
      llorch_jbuf_cstr(&b, "},");
      anth_usage(&b, prompt_tokens, completion_tokens);
      llorch_jbuf_raw(&b, "}", 1);
      dout_send(o, "message_delta", &b);
      llorch_jbuf_reset(&b);
      llorch_jbuf_cstr(&b, "{\"type\":\"message_stop\"}");
      dout_send(o, "message_stop", &b);
    } else {
      bool cut = finish && strcmp(finish, "length") == 0;
      resp_send_state(o, cut ? "response.incomplete" : "response.completed",
                      cut ? "incomplete" : "completed", finish, prompt_tokens, completion_tokens);
    }
    llorch_jbuf_free(&b);
  }
  if (!body) return;
  if (o->dialect == LLORCH_DIALECT_ANTHROPIC)
    anth_message(o, body, true, finish, stop_sequence, prompt_tokens, completion_tokens);
  else
    resp_object(o, body, finish && strcmp(finish, "length") == 0 ? "incomplete" : "completed",
                finish, prompt_tokens, completion_tokens);
}

void llorch_openai_dout_fail(llorch_openai_dout *o, const char *code, const char *message) {
  if (!o->send) return;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  if (o->dialect == LLORCH_DIALECT_ANTHROPIC) {
    llorch_jbuf_cstr(&b, "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":");
    llorch_jbuf_str(&b, message);
    llorch_jbuf_cstr(&b, "}}");
  } else {
    resp_event_head(o, &b, "error");
    llorch_jbuf_cstr(&b, ",\"code\":");
    llorch_jbuf_str(&b, code);
    llorch_jbuf_cstr(&b, ",\"message\":");
    llorch_jbuf_str(&b, message);
    llorch_jbuf_cstr(&b, ",\"param\":null}");
  }
  dout_send(o, "error", &b);
  llorch_jbuf_free(&b);
}
