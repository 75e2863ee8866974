/*
 * OpenAI Responses (POST /v1/responses, stateless) -> a chat completions
 * body. As for Anthropic (anthropic.c): the fields only this API has are
 * checked here and named in errors; what chat shares is checked once by
 * llorch_openai_request_parse on the result.
 *
 * Stateless: no response is kept, so nothing can refer to an earlier one
 * (previous_response_id, item_reference, conversation) and store: true
 * cannot be honoured; each gets a 400 that says so.
 */
#include <stdio.h>
#include <string.h>

#include "llorch/openai.h"
#include "openai-impl.h"

#define BAD(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", (param), __VA_ARGS__)
#define UNSUPPORTED(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "unsupported_value", (param), __VA_ARGS__)

/* ---- input items ---- */

/* A message item's content: a string, or input_text / output_text parts
 * joined into out. */
static int resp_content_text(const cJSON *c, const char *where, llorch_jbuf *out,
                             llorch_openai_error *err) {
  char desc[64], shown[48];
  if (cJSON_IsString(c)) {
    llorch_jbuf_cstr(out, c->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(c))
    return BAD(where, "'%s' must be a string or an array of input_text parts, got %s", where,
               c ? llorch_json_describe(c, desc, sizeof desc) : "nothing");
  int k = 0;
  for (const cJSON *p = c->child; p; p = p->next, k++) {
    char pw[128], tp[144];
    snprintf(pw, sizeof pw, "%s[%d]", where, k);
    snprintf(tp, sizeof tp, "%s.type", pw);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
    if (!cJSON_IsObject(p) || !cJSON_IsString(type))
      return BAD(pw, "'%s' must be a content part object with a string 'type'", pw);
    const char *t = type->valuestring;
    if (strcmp(t, "input_text") == 0 || strcmp(t, "output_text") == 0 || strcmp(t, "text") == 0) {
      if (!cJSON_IsString(text)) {
        char p2[144];
        snprintf(p2, sizeof p2, "%s.text", pw);
        return BAD(p2, "'%s' must be a string", p2);
      }
      llorch_jbuf_cstr(out, text->valuestring);
    } else if (strcmp(t, "refusal") == 0) {
      const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "refusal");
      if (cJSON_IsString(r)) llorch_jbuf_cstr(out, r->valuestring);
    } else if (strcmp(t, "input_image") == 0 || strcmp(t, "input_file") == 0 ||
               strcmp(t, "input_audio") == 0) {
      return UNSUPPORTED(tp, "'%s' is \"%s\": this model reads text only", tp, t);
    } else {
      return BAD(tp, "'%s' must be \"input_text\" or \"output_text\", got \"%s\"", tp,
                 openai_show(shown, sizeof shown, t));
    }
  }
  return 0;
}

/* A new chat message {role, content} appended to msgs (content NULL: null). */
static cJSON *resp_add_message(cJSON *msgs, const char *role, const char *content) {
  cJSON *m = cJSON_CreateObject();
  if (!m || !cJSON_AddStringToObject(m, "role", role) ||
      !(content ? cJSON_AddStringToObject(m, "content", content) : cJSON_AddNullToObject(m, "content"))) {
    cJSON_Delete(m);
    return NULL;
  }
  cJSON_AddItemToArray(msgs, m);
  return m;
}

/* A function_call item: onto the tool_calls of the assistant message that
 * ends msgs (the turn it belongs to), or a new one. */
static int resp_function_call(const cJSON *it, const char *where, cJSON *msgs,
                              llorch_openai_error *err) {
  const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "call_id");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
  const cJSON *args = cJSON_GetObjectItemCaseSensitive(it, "arguments");
  char p[96];
  if (!cJSON_IsString(cid) || !cid->valuestring[0]) {
    snprintf(p, sizeof p, "%s.call_id", where);
    return BAD(p, "'%s' is required (a non-empty string)", p);
  }
  if (!cJSON_IsString(name)) {
    snprintf(p, sizeof p, "%s.name", where);
    return BAD(p, "'%s' is required (the name of the function called)", p);
  }
  if (!cJSON_IsString(args)) {
    snprintf(p, sizeof p, "%s.arguments", where);
    return BAD(p, "'%s' is required (the arguments as a JSON object text)", p);
  }
  cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
  const cJSON *role = cJSON_GetObjectItemCaseSensitive(last, "role");
  if (!cJSON_IsString(role) || strcmp(role->valuestring, "assistant") != 0)
    last = resp_add_message(msgs, "assistant", NULL);
  if (!last) return openai_oom(err);
  cJSON *calls = cJSON_GetObjectItemCaseSensitive(last, "tool_calls");
  if (!calls) calls = cJSON_AddArrayToObject(last, "tool_calls");
  cJSON *call = cJSON_CreateObject(), *fn = cJSON_CreateObject();
  if (!calls || !call || !fn || !cJSON_AddStringToObject(call, "id", cid->valuestring) ||
      !cJSON_AddStringToObject(call, "type", "function") ||
      !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
      !cJSON_AddStringToObject(fn, "arguments", args->valuestring)) {
    cJSON_Delete(call);
    cJSON_Delete(fn);
    return openai_oom(err);
  }
  cJSON_AddItemToObject(call, "function", fn);
  cJSON_AddItemToArray(calls, call);
  return 0;
}

static int resp_item(const cJSON *it, int i, cJSON *msgs, llorch_openai_error *err) {
  static const char *const roles[] = {"user", "assistant", "system", "developer", NULL};
  char where[32], tp[48], shown[48];
  snprintf(where, sizeof where, "input[%d]", i);
  snprintf(tp, sizeof tp, "%s.type", where);
  if (!cJSON_IsObject(it)) return BAD(where, "'%s' must be an input item object", where);
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(it, "type");
  if (type && !cJSON_IsString(type)) return BAD(tp, "'%s' must be a string", tp);
  /* {role, content} without a type is a message ("easy input message") */
  const char *t = type ? type->valuestring : "message";
  int rc = 0;
  if (strcmp(t, "message") == 0) {
    llorch_errmsg em = {{0}};
    int role = 0;
    if (llorch_json_get_enum(it, where, "role", true, roles, &role, &em) < 0)
      return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value",
                                llorch_json_errparam(), "%s", em.text);
    char cw[48];
    snprintf(cw, sizeof cw, "%s.content", where);
    llorch_jbuf text;
    llorch_jbuf_init(&text);
    rc = resp_content_text(cJSON_GetObjectItemCaseSensitive(it, "content"), cw, &text, err);
    if (rc == 0 && (llorch_jbuf_error(&text) ||
                    !resp_add_message(msgs, roles[role], text.data ? text.data : "")))
      rc = openai_oom(err);
    llorch_jbuf_free(&text);
  } else if (strcmp(t, "function_call") == 0) {
    rc = resp_function_call(it, where, msgs, err);
  } else if (strcmp(t, "function_call_output") == 0) {
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "call_id");
    char p[48];
    if (!cJSON_IsString(cid) || !cid->valuestring[0]) {
      snprintf(p, sizeof p, "%s.call_id", where);
      return BAD(p, "'%s' is required (the call_id of the function_call this answers)", p);
    }
    snprintf(p, sizeof p, "%s.output", where);
    llorch_jbuf text;
    llorch_jbuf_init(&text);
    rc = resp_content_text(cJSON_GetObjectItemCaseSensitive(it, "output"), p, &text, err);
    cJSON *m = NULL;
    if (rc == 0 && (llorch_jbuf_error(&text) ||
                    !(m = resp_add_message(msgs, "tool", text.data ? text.data : "")) ||
                    !cJSON_AddStringToObject(m, "tool_call_id", cid->valuestring)))
      rc = openai_oom(err);
    llorch_jbuf_free(&text);
  } else if (strcmp(t, "reasoning") == 0) {
    /* earlier reasoning is not fed back (chat templates drop it too) */
  } else if (strcmp(t, "item_reference") == 0) {
    rc = UNSUPPORTED(tp, "'%s' is \"item_reference\": this server is stateless and keeps no items; "
                         "send the item itself", tp);
  } else {
    rc = BAD(tp,
             "'%s' must be \"message\", \"function_call\", \"function_call_output\" or "
             "\"reasoning\", got \"%s\"",
             tp, openai_show(shown, sizeof shown, t));
  }
  return rc;
}

/* ---- tools, tool_choice, text.format ---- */

static int resp_tools(const cJSON *body, cJSON *chat, llorch_openai_error *err) {
  char desc[64], shown[48];
  const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
  if (tools && !cJSON_IsNull(tools)) {
    if (!cJSON_IsArray(tools))
      return BAD("tools", "'tools' must be an array of tools, got %s",
                 llorch_json_describe(tools, desc, sizeof desc));
    cJSON *out = cJSON_AddArrayToObject(chat, "tools");
    if (!out) return openai_oom(err);
    int i = 0;
    for (const cJSON *t = tools->child; t; t = t->next, i++) {
      char w[32], p[48];
      snprintf(w, sizeof w, "tools[%d]", i);
      snprintf(p, sizeof p, "%s.type", w);
      const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
      if (!cJSON_IsObject(t) || !cJSON_IsString(type))
        return BAD(w, "'%s' must be an object with a string 'type'", w);
      if (strcmp(type->valuestring, "function") != 0)
        return UNSUPPORTED(p, "'%s' is \"%s\": only function tools are supported", p,
                           openai_show(shown, sizeof shown, type->valuestring));
      const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
      if (!cJSON_IsString(name)) {
        snprintf(p, sizeof p, "%s.name", w);
        return BAD(p, "'%s' is required (a string)", p);
      }
      cJSON *ft = cJSON_CreateObject(), *fn = cJSON_CreateObject();
      if (!ft || !fn || !cJSON_AddStringToObject(ft, "type", "function")) {
        cJSON_Delete(ft);
        cJSON_Delete(fn);
        return openai_oom(err);
      }
      cJSON_AddItemToObject(ft, "function", fn);
      cJSON_AddItemToArray(out, ft);
      static const char *const keys[] = {"name", "description", "parameters", "strict", NULL};
      for (int k = 0; keys[k]; k++)
        if (openai_copy_field(fn, t, keys[k], keys[k], err) < 0) return LLORCH_ENOMEM;
    }
  }
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
  if (!tc || cJSON_IsNull(tc)) return 0;
  if (cJSON_IsString(tc)) return openai_copy_field(chat, body, "tool_choice", "tool_choice", err);
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(tc, "name");
  if (!cJSON_IsObject(tc) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
      !cJSON_IsString(name))
    return UNSUPPORTED("tool_choice",
                       "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                       "{\"type\":\"function\",\"name\":...}");
  cJSON *choice = cJSON_CreateObject(), *fn = cJSON_CreateObject();
  if (!choice || !fn || !cJSON_AddStringToObject(choice, "type", "function") ||
      !cJSON_AddStringToObject(fn, "name", name->valuestring)) {
    cJSON_Delete(choice);
    cJSON_Delete(fn);
    return openai_oom(err);
  }
  cJSON_AddItemToObject(choice, "function", fn);
  cJSON_AddItemToObject(chat, "tool_choice", choice);
  return 0;
}

/* text.format {type: text | json_object | json_schema {name, schema, strict}}
 * -> chat's response_format */
static int resp_text_format(const cJSON *body, cJSON *chat, llorch_openai_error *err) {
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(body, "text");
  if (!text || cJSON_IsNull(text)) return 0;
  if (!cJSON_IsObject(text)) return BAD("text", "'text' must be an object");
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(text, "format");
  if (!f || cJSON_IsNull(f)) return 0;
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(f, "type");
  if (!cJSON_IsObject(f) || !cJSON_IsString(type))
    return BAD("text.format", "'text.format' must be an object with a string 'type'");
  const char *t = type->valuestring;
  if (strcmp(t, "text") == 0) return 0;
  cJSON *rf = cJSON_AddObjectToObject(chat, "response_format");
  if (!rf || !cJSON_AddStringToObject(rf, "type", t)) return openai_oom(err);
  if (strcmp(t, "json_object") == 0) return 0;
  if (strcmp(t, "json_schema") != 0) {
    char shown[48];
    return BAD("text.format.type",
               "'text.format.type' must be \"text\", \"json_object\" or \"json_schema\", got \"%s\"",
               openai_show(shown, sizeof shown, t));
  }
  cJSON *js = cJSON_AddObjectToObject(rf, "json_schema");
  if (!js) return openai_oom(err);
  static const char *const keys[] = {"name", "description", "schema", "strict", NULL};
  for (int k = 0; keys[k]; k++)
    if (openai_copy_field(js, f, keys[k], keys[k], err) < 0) return LLORCH_ENOMEM;
  return 0;
}

/* ---- the request ---- */

int llorch_responses_to_chat(const cJSON *body, const llorch_openai_limits *lim, cJSON **out,
                             llorch_openai_error *err) {
  static const llorch_openai_limits defaults = LLORCH_OPENAI_LIMITS_DEFAULT;
  if (!lim) lim = &defaults;
  *out = NULL;
  char desc[64];
  int rc = 0;
  cJSON *chat = cJSON_CreateObject();
  cJSON *msgs = chat ? cJSON_AddArrayToObject(chat, "messages") : NULL;
  if (!msgs) {
    rc = openai_oom(err);
    goto fail;
  }
  const cJSON *prev = cJSON_GetObjectItemCaseSensitive(body, "previous_response_id");
  if (prev && !cJSON_IsNull(prev)) {
    rc = UNSUPPORTED("previous_response_id",
                     "'previous_response_id' cannot be used: this server is stateless and keeps no "
                     "responses; send the whole conversation in 'input'");
    goto fail;
  }
  const cJSON *conv = cJSON_GetObjectItemCaseSensitive(body, "conversation");
  if (conv && !cJSON_IsNull(conv)) {
    rc = UNSUPPORTED("conversation",
                     "'conversation' cannot be used: this server is stateless and keeps no "
                     "conversations; send the whole conversation in 'input'");
    goto fail;
  }
  const cJSON *store = cJSON_GetObjectItemCaseSensitive(body, "store");
  if (store && !cJSON_IsNull(store) && !cJSON_IsBool(store)) {
    rc = BAD("store", "'store' must be true or false, got %s",
             llorch_json_describe(store, desc, sizeof desc));
    goto fail;
  }
  if (cJSON_IsTrue(store)) {
    rc = UNSUPPORTED("store",
                     "'store': true is not supported: this server is stateless and keeps no "
                     "responses; leave 'store' out or set it to false");
    goto fail;
  }
  if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "background"))) {
    rc = UNSUPPORTED("background",
                     "'background': true is not supported: this server is stateless; stream "
                     "the response instead");
    goto fail;
  }

  static const char *const same[] = {"model", "stream", "temperature", "top_p",
                                     "parallel_tool_calls", NULL};
  for (int k = 0; same[k]; k++)
    if ((rc = openai_copy_field(chat, body, same[k], same[k], err)) < 0) goto fail;
  if ((rc = openai_copy_field(chat, body, "max_output_tokens", "max_tokens", err)) < 0) goto fail;

  const cJSON *ins = cJSON_GetObjectItemCaseSensitive(body, "instructions");
  if (ins && !cJSON_IsNull(ins)) {
    if (!cJSON_IsString(ins)) {
      rc = BAD("instructions", "'instructions' must be a string, got %s",
               llorch_json_describe(ins, desc, sizeof desc));
      goto fail;
    }
    if (!resp_add_message(msgs, "system", ins->valuestring)) {
      rc = openai_oom(err);
      goto fail;
    }
  }

  const cJSON *input = cJSON_GetObjectItemCaseSensitive(body, "input");
  if (cJSON_IsString(input)) {
    if (!resp_add_message(msgs, "user", input->valuestring)) {
      rc = openai_oom(err);
      goto fail;
    }
  } else if (cJSON_IsArray(input) && input->child) {
    /* counted here so that the error names 'input' (chat would say 'messages') */
    if (cJSON_GetArraySize(input) > lim->max_messages) {
      rc = BAD("input", "'input' has %d items; at most %d are accepted (request.max_messages)",
               cJSON_GetArraySize(input), lim->max_messages);
      goto fail;
    }
    int i = 0;
    for (const cJSON *it = input->child; it; it = it->next, i++)
      if ((rc = resp_item(it, i, msgs, err)) < 0) goto fail;
  } else {
    rc = BAD("input", "'input' must be a string or a non-empty array of input items, got %s",
             input ? llorch_json_describe(input, desc, sizeof desc) : "nothing");
    goto fail;
  }
  if (!msgs->child) {
    rc = BAD("input", "'input' has no message to answer (only reasoning items)");
    goto fail;
  }
  if ((rc = resp_tools(body, chat, err)) < 0) goto fail;
  if ((rc = resp_text_format(body, chat, err)) < 0) goto fail;
  /* reasoning, include, metadata, user, truncation, service_tier: nothing to do here */
  *out = chat;
  return 0;
fail:
  cJSON_Delete(chat);
  return rc;
}
