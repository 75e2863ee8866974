/*
 * Anthropic Messages (POST /v1/messages) -> a chat completions body. The
 * translation checks the fields that only this API has (content blocks,
 * tool_use/tool_result, input_schema, tool_choice's types) and names them
 * in its errors; everything chat has too (sampling ranges, tool names,
 * tool_call ids) is left to llorch_openai_request_parse on the result, so
 * it is checked once, the same way.
 */
#include <stdio.h>
#include <string.h>

#include "llorch/openai.h"
#include "openai-impl.h"

#define BAD(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", (param), __VA_ARGS__)
#define UNSUPPORTED(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "unsupported_value", (param), __VA_ARGS__)

/* ---- content ---- */

/* A tool_result's content: a string, or text blocks joined (into *out). */
static int anth_result_text(const cJSON *c, const char *where, llorch_jbuf *out,
                            llorch_openai_error *err) {
  char desc[64];
  if (!c || cJSON_IsNull(c)) return 0;
  if (cJSON_IsString(c)) {
    llorch_jbuf_cstr(out, c->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(c))
    return BAD(where, "'%s' must be a string or an array of text blocks, got %s", where,
               llorch_json_describe(c, desc, sizeof desc));
  int k = 0;
  for (const cJSON *b = c->child; b; b = b->next, k++) {
    char p[160];
    snprintf(p, sizeof p, "%s[%d]", where, k);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(b, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(b, "text");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text))
      return UNSUPPORTED(p, "'%s' must be {\"type\":\"text\",\"text\":...}: this model reads text only",
                         p);
    if (k) llorch_jbuf_raw(out, "\n", 1);
    llorch_jbuf_cstr(out, text->valuestring);
  }
  return 0;
}

/* A tool_use block -> an OpenAI tool call {id, type, function:{name, arguments}}. */
static int anth_tool_use(const cJSON *b, const char *where, cJSON *calls, llorch_openai_error *err) {
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "id");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(b, "name");
  const cJSON *input = cJSON_GetObjectItemCaseSensitive(b, "input");
  char p[176];
  if (!cJSON_IsString(id) || !id->valuestring[0]) {
    snprintf(p, sizeof p, "%s.id", where);
    return BAD(p, "'%s' is required (the tool_use block's id, a non-empty string)", p);
  }
  if (!cJSON_IsString(name)) {
    snprintf(p, sizeof p, "%s.name", where);
    return BAD(p, "'%s' is required (the name of the tool called)", p);
  }
  if (!cJSON_IsObject(input)) {
    char desc[64];
    snprintf(p, sizeof p, "%s.input", where);
    return BAD(p, "'%s' must be an object (the tool's arguments), got %s", p,
               llorch_json_describe(input, desc, sizeof desc));
  }
  char *args = llorch_json_print(input);
  cJSON *call = cJSON_CreateObject(), *fn = cJSON_CreateObject();
  if (!args || !call || !fn || !cJSON_AddStringToObject(call, "id", id->valuestring) ||
      !cJSON_AddStringToObject(call, "type", "function") ||
      !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
      !cJSON_AddStringToObject(fn, "arguments", args)) {
    cJSON_free(args);
    cJSON_Delete(call);
    cJSON_Delete(fn);
    return openai_oom(err);
  }
  cJSON_free(args);
  cJSON_AddItemToObject(call, "function", fn);
  cJSON_AddItemToArray(calls, call);
  return 0;
}

/*
 * One Anthropic message -> chat messages appended to msgs: a user turn's
 * tool_result blocks become tool messages (first, as Anthropic puts them),
 * its text a user message; an assistant turn's text and tool_use blocks one
 * assistant message with tool_calls. Earlier turns' thinking is dropped
 * (chat templates leave it out of the history too).
 */
static int anth_message(const cJSON *m, int i, cJSON *msgs, llorch_openai_error *err) {
  static const char *const roles[] = {"user", "assistant", NULL};
  char where[48], desc[64];
  snprintf(where, sizeof where, "messages[%d]", i);
  if (!cJSON_IsObject(m)) return BAD(where, "'%s' must be an object with role and content", where);
  llorch_errmsg em = {{0}};
  int role = 0;
  if (llorch_json_get_enum(m, where, "role", true, roles, &role, &em) < 0)
    return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value",
                              llorch_json_errparam(), "%s", em.text);
  bool assistant = role == 1;
  const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
  char cw[64];
  snprintf(cw, sizeof cw, "%s.content", where);
  if (cJSON_IsString(content)) {
    cJSON *out = cJSON_CreateObject();
    if (!out || !cJSON_AddStringToObject(out, "role", roles[role]) ||
        !cJSON_AddStringToObject(out, "content", content->valuestring)) {
      cJSON_Delete(out);
      return openai_oom(err);
    }
    cJSON_AddItemToArray(msgs, out);
    return 0;
  }
  if (!cJSON_IsArray(content))
    return BAD(cw, "'%s' must be a string or an array of content blocks, got %s", cw,
               llorch_json_describe(content, desc, sizeof desc));

  llorch_jbuf text;
  llorch_jbuf_init(&text);
  cJSON *calls = cJSON_CreateArray();
  int rc = calls ? 0 : openai_oom(err);
  bool any_text = false;
  int k = 0, n_results = 0;
  for (const cJSON *b = content->child; b && rc == 0; b = b->next, k++) {
    char bw[96], tp[112], shown[48];
    snprintf(bw, sizeof bw, "%s[%d]", cw, k);
    snprintf(tp, sizeof tp, "%s.type", bw);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(b, "type");
    if (!cJSON_IsObject(b) || !cJSON_IsString(type)) {
      rc = BAD(bw, "'%s' must be a content block object with a string 'type'", bw);
      break;
    }
    const char *t = type->valuestring;
    if (strcmp(t, "text") == 0) {
      const cJSON *tx = cJSON_GetObjectItemCaseSensitive(b, "text");
      if (!cJSON_IsString(tx)) {
        char p[112];
        snprintf(p, sizeof p, "%s.text", bw);
        rc = BAD(p, "'%s' must be a string", p);
        break;
      }
      if (any_text) llorch_jbuf_raw(&text, "\n", 1);
      llorch_jbuf_cstr(&text, tx->valuestring);
      any_text = true;
    } else if (strcmp(t, "tool_use") == 0) {
      if (!assistant) {
        rc = BAD(tp, "'%s' is \"tool_use\", which only assistant messages have", tp);
        break;
      }
      rc = anth_tool_use(b, bw, calls, err);
    } else if (strcmp(t, "tool_result") == 0) {
      if (assistant) {
        rc = BAD(tp, "'%s' is \"tool_result\", which only user messages have", tp);
        break;
      }
      const cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "tool_use_id");
      if (!cJSON_IsString(id) || !id->valuestring[0]) {
        char p[112];
        snprintf(p, sizeof p, "%s.tool_use_id", bw);
        rc = BAD(p, "'%s' is required (the id of the tool_use block this answers)", p);
        break;
      }
      char p[112];
      snprintf(p, sizeof p, "%s.content", bw);
      llorch_jbuf rt;
      llorch_jbuf_init(&rt);
      rc = anth_result_text(cJSON_GetObjectItemCaseSensitive(b, "content"), p, &rt, err);
      cJSON *tm = rc == 0 ? cJSON_CreateObject() : NULL;
      if (rc == 0 && (llorch_jbuf_error(&rt) || !tm || !cJSON_AddStringToObject(tm, "role", "tool") ||
                      !cJSON_AddStringToObject(tm, "tool_call_id", id->valuestring) ||
                      !cJSON_AddStringToObject(tm, "content", rt.data ? rt.data : ""))) {
        cJSON_Delete(tm);
        tm = NULL;
        rc = openai_oom(err);
      }
      if (tm) {
        cJSON_AddItemToArray(msgs, tm);
        n_results++;
      }
      llorch_jbuf_free(&rt);
    } else if (strcmp(t, "thinking") == 0 || strcmp(t, "redacted_thinking") == 0) {
      if (!assistant) rc = BAD(tp, "'%s' is \"%s\", which only assistant messages have", tp, t);
    } else if (strcmp(t, "image") == 0 || strcmp(t, "document") == 0) {
      rc = UNSUPPORTED(tp, "'%s' is \"%s\": this model reads text only", tp, t);
    } else {
      rc = BAD(tp,
               "'%s' must be \"text\", \"tool_use\", \"tool_result\" or \"thinking\", got \"%s\"",
               tp, openai_show(shown, sizeof shown, t));
    }
  }
  if (rc == 0 && llorch_jbuf_error(&text)) rc = openai_oom(err);
  /* A user turn of only tool results adds no user message after them; an
   * assistant turn of only tool calls has content null. */
  int n_calls = calls ? cJSON_GetArraySize(calls) : 0;
  bool emit = assistant || any_text || n_results == 0;
  cJSON *out = rc == 0 && emit ? cJSON_CreateObject() : NULL;
  if (rc == 0 && emit) {
    bool null_content = assistant && !any_text && n_calls > 0;
    if (!out || !cJSON_AddStringToObject(out, "role", roles[role]) ||
        !(null_content ? cJSON_AddNullToObject(out, "content")
                       : cJSON_AddStringToObject(out, "content", text.data ? text.data : ""))) {
      rc = openai_oom(err);
    } else {
      if (n_calls > 0) {
        cJSON_AddItemToObject(out, "tool_calls", calls);
        calls = NULL;
      }
      cJSON_AddItemToArray(msgs, out);
      out = NULL;
    }
  }
  cJSON_Delete(out);
  cJSON_Delete(calls);
  llorch_jbuf_free(&text);
  return rc;
}

/* ---- tools ---- */

static int anth_tools(const cJSON *body, cJSON *chat, llorch_openai_error *err) {
  const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
  char desc[64], shown[48];
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
      if (!cJSON_IsObject(t)) return BAD(w, "'%s' must be an object, got %s", w,
                                         llorch_json_describe(t, desc, sizeof desc));
      const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
      if (type && !cJSON_IsNull(type) &&
          (!cJSON_IsString(type) || strcmp(type->valuestring, "custom") != 0)) {
        snprintf(p, sizeof p, "%s.type", w);
        return UNSUPPORTED(p,
                           "'%s' is %s: only client tools ({name, description, input_schema}) are "
                           "supported, no server tools",
                           p, llorch_json_describe(type, desc, sizeof desc));
      }
      const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
      const cJSON *descr = cJSON_GetObjectItemCaseSensitive(t, "description");
      const cJSON *schema = cJSON_GetObjectItemCaseSensitive(t, "input_schema");
      if (!cJSON_IsString(name)) {
        snprintf(p, sizeof p, "%s.name", w);
        return BAD(p, "'%s' is required (a string)", p);
      }
      if (descr && !cJSON_IsNull(descr) && !cJSON_IsString(descr)) {
        snprintf(p, sizeof p, "%s.description", w);
        return BAD(p, "'%s' must be a string", p);
      }
      if (!cJSON_IsObject(schema)) {
        snprintf(p, sizeof p, "%s.input_schema", w);
        return BAD(p, "'%s' must be a JSON Schema object, got %s", p,
                   llorch_json_describe(schema, desc, sizeof desc));
      }
      cJSON *ft = cJSON_CreateObject(), *fn = cJSON_CreateObject();
      cJSON *params = cJSON_Duplicate(schema, true);
      if (!ft || !fn || !params || !cJSON_AddStringToObject(ft, "type", "function") ||
          !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
          (cJSON_IsString(descr) && !cJSON_AddStringToObject(fn, "description", descr->valuestring))) {
        cJSON_Delete(ft);
        cJSON_Delete(fn);
        cJSON_Delete(params);
        return openai_oom(err);
      }
      cJSON_AddItemToObject(fn, "parameters", params);
      cJSON_AddItemToObject(ft, "function", fn);
      cJSON_AddItemToArray(out, ft);
    }
  }

  /* tool_choice {type: auto | any | tool (+name) | none, disable_parallel_tool_use} */
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
  if (!tc || cJSON_IsNull(tc)) return 0;
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
  if (!cJSON_IsObject(tc) || !cJSON_IsString(type))
    return BAD("tool_choice", "'tool_choice' must be an object {\"type\": \"auto\"|\"any\"|\"tool\"|"
                              "\"none\"}, got %s",
               llorch_json_describe(tc, desc, sizeof desc));
  const char *t = type->valuestring;
  cJSON *choice = NULL;
  if (strcmp(t, "auto") == 0) choice = cJSON_CreateString("auto");
  else if (strcmp(t, "any") == 0) choice = cJSON_CreateString("required");
  else if (strcmp(t, "none") == 0) choice = cJSON_CreateString("none");
  else if (strcmp(t, "tool") == 0) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(tc, "name");
    if (!cJSON_IsString(name))
      return BAD("tool_choice.name", "'tool_choice.name' is required when its type is \"tool\"");
    choice = cJSON_CreateObject();
    cJSON *fn = cJSON_CreateObject();
    if (!choice || !fn || !cJSON_AddStringToObject(choice, "type", "function") ||
        !cJSON_AddStringToObject(fn, "name", name->valuestring)) {
      cJSON_Delete(choice);
      cJSON_Delete(fn);
      return openai_oom(err);
    }
    cJSON_AddItemToObject(choice, "function", fn);
  } else {
    return BAD("tool_choice.type",
               "'tool_choice.type' must be \"auto\", \"any\", \"tool\" or \"none\", got \"%s\"",
               openai_show(shown, sizeof shown, t));
  }
  if (!choice) return openai_oom(err);
  cJSON_AddItemToObject(chat, "tool_choice", choice);
  const cJSON *dp = cJSON_GetObjectItemCaseSensitive(tc, "disable_parallel_tool_use");
  if (dp && !cJSON_IsBool(dp))
    return BAD("tool_choice.disable_parallel_tool_use",
               "'tool_choice.disable_parallel_tool_use' must be true or false");
  if (cJSON_IsTrue(dp) && !cJSON_AddFalseToObject(chat, "parallel_tool_calls"))
    return openai_oom(err);
  return 0;
}

/* ---- the request ---- */

int llorch_anthropic_to_chat(const cJSON *body, const llorch_openai_limits *lim, cJSON **out,
                             llorch_openai_error *err) {
  static const llorch_openai_limits defaults = LLORCH_OPENAI_LIMITS_DEFAULT;
  if (!lim) lim = &defaults;
  int max_stop = lim->max_stop < LLORCH_OPENAI_MAX_STOP ? lim->max_stop : LLORCH_OPENAI_MAX_STOP;
  *out = NULL;
  char desc[64];
  cJSON *chat = cJSON_CreateObject();
  cJSON *msgs = chat ? cJSON_AddArrayToObject(chat, "messages") : NULL;
  int rc = 0;
  if (!msgs) {
    rc = openai_oom(err);
    goto fail;
  }
  /* Fields of the same name and meaning travel as they are. */
  static const char *const same[] = {"model", "stream", "temperature", "top_p", "top_k", NULL};
  for (int k = 0; same[k]; k++)
    if ((rc = openai_copy_field(chat, body, same[k], same[k], err)) < 0) goto fail;

  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(body, "max_tokens");
  if (!mt || cJSON_IsNull(mt)) {
    rc = llorch_openai_fail(err, 400, "invalid_request_error", "missing_field", "max_tokens",
                            "'max_tokens' is required (the most tokens to generate, at least 1)");
    goto fail;
  }
  if ((rc = openai_copy_field(chat, body, "max_tokens", "max_tokens", err)) < 0) goto fail;

  /* stop_sequences -> stop */
  const cJSON *ss = cJSON_GetObjectItemCaseSensitive(body, "stop_sequences");
  if (ss && !cJSON_IsNull(ss)) {
    if (!cJSON_IsArray(ss)) {
      rc = BAD("stop_sequences", "'stop_sequences' must be an array of strings, got %s",
               llorch_json_describe(ss, desc, sizeof desc));
      goto fail;
    }
    int i = 0;
    for (const cJSON *s = ss->child; s; s = s->next, i++) {
      char p[40];
      snprintf(p, sizeof p, "stop_sequences[%d]", i);
      if (!cJSON_IsString(s) || !s->valuestring[0]) {
        rc = BAD(p, "'%s' must be a non-empty string", p);
        goto fail;
      }
      if (i >= max_stop) {
        rc = BAD("stop_sequences", "'stop_sequences' has more than %d strings (request.max_stop)",
                 max_stop);
        goto fail;
      }
    }
    if (i && (rc = openai_copy_field(chat, body, "stop_sequences", "stop", err)) < 0) goto fail;
  }

  /* thinking {type: enabled | disabled} -> the template's enable_thinking */
  const cJSON *th = cJSON_GetObjectItemCaseSensitive(body, "thinking");
  if (th && !cJSON_IsNull(th)) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(th, "type");
    bool on = cJSON_IsString(type) && strcmp(type->valuestring, "enabled") == 0;
    bool off = cJSON_IsString(type) && strcmp(type->valuestring, "disabled") == 0;
    if (!cJSON_IsObject(th) || (!on && !off)) {
      rc = BAD("thinking.type", "'thinking' must be {\"type\": \"enabled\"|\"disabled\", ...}");
      goto fail;
    }
    cJSON *kw = cJSON_AddObjectToObject(chat, "chat_template_kwargs");
    if (!kw || !cJSON_AddBoolToObject(kw, "enable_thinking", on)) {
      rc = openai_oom(err);
      goto fail;
    }
  }

  /* system: a string or text blocks -> the first message */
  const cJSON *sys = cJSON_GetObjectItemCaseSensitive(body, "system");
  if (sys && !cJSON_IsNull(sys)) {
    llorch_jbuf st;
    llorch_jbuf_init(&st);
    rc = anth_result_text(sys, "system", &st, err);
    cJSON *sm = rc == 0 ? cJSON_CreateObject() : NULL;
    if (rc == 0 && (llorch_jbuf_error(&st) || !sm || !cJSON_AddStringToObject(sm, "role", "system") ||
                    !cJSON_AddStringToObject(sm, "content", st.data ? st.data : ""))) {
      cJSON_Delete(sm);
      sm = NULL;
      rc = openai_oom(err);
    }
    llorch_jbuf_free(&st);
    if (rc < 0) goto fail;
    cJSON_AddItemToArray(msgs, sm);
  }

  const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
  if (!cJSON_IsArray(messages) || !messages->child) {
    rc = BAD("messages", "'messages' must be a non-empty array of {role, content}, got %s",
             messages ? llorch_json_describe(messages, desc, sizeof desc) : "nothing");
    goto fail;
  }
  int i = 0;
  for (const cJSON *m = messages->child; m; m = m->next, i++)
    if ((rc = anth_message(m, i, msgs, err)) < 0) goto fail;

  if ((rc = anth_tools(body, chat, err)) < 0) goto fail;
  /* metadata, service_tier, container, mcp_servers: nothing to do here */
  *out = chat;
  return 0;
fail:
  cJSON_Delete(chat);
  return rc;
}
