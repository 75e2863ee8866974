/*
 * OpenAI request bodies -> llorch_openai_request: every field checked with
 * an error that names it, for both roles (the orchestrator validates before
 * queueing, the worker again before running, with the same words).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/config.h"
#include "llorch/openai.h"
#include "openai-impl.h"

/* ---- errors ---- */

int llorch_openai_fail(llorch_openai_error *err, int status, const char *type, const char *code,
                       const char *param, const char *fmt, ...) {
  err->status = status;
  err->type = type;
  err->code = code;
  snprintf(err->param, sizeof err->param, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return status == 500 ? LLORCH_ENOMEM : LLORCH_EINVAL;
}

void llorch_openai_respond_error(llorch_http_request *req, const llorch_openai_error *err) {
  if (!req) return;
  if (err->retry_after_s > 0) {
    char v[16];
    snprintf(v, sizeof v, "%d", err->retry_after_s);
    llorch_http_response_header(req, "Retry-After", v);
  }
  llorch_http_respond_error(req, err->status, err->type, err->message,
                            err->param[0] ? err->param : NULL, err->code);
}

/* A json.h getter failed: 400 naming the field it reported. */
static int req_fail_field(llorch_openai_error *err, const llorch_errmsg *em) {
  return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value",
                            llorch_json_errparam(), "%s", em->text);
}

#define REQ_BAD(param, ...) \
  llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", (param), __VA_ARGS__)

/* ---- reasoning_format ---- */

int llorch_reasoning_format_parse(const char *s, llorch_reasoning_format *out) {
  if (strcmp(s, "reasoning_content") == 0) *out = LLORCH_REASONING_CONTENT;
  else if (strcmp(s, "none") == 0) *out = LLORCH_REASONING_NONE;
  else return LLORCH_EINVAL;
  return 0;
}

const char *llorch_reasoning_format_name(llorch_reasoning_format f) {
  switch (f) {
  case LLORCH_REASONING_CONTENT: return "reasoning_content";
  case LLORCH_REASONING_NONE: return "none";
  default: return "unset";
  }
}

/* ---- messages ---- */

static const char *const req_roles[] = {"system", "user", "assistant", "developer", "tool", NULL};
enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_DEVELOPER, ROLE_TOOL };

/* content: a string, null, or an array of {"type":"text","text":...} parts;
 * *n_parts counts the parts of all messages. */
static int req_content(const cJSON *m, const char *where, bool null_ok,
                       const llorch_openai_limits *lim, int *n_parts, llorch_openai_error *err) {
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
  char param[96], desc[64];
  snprintf(param, sizeof param, "%s.content", where);
  if (cJSON_IsString(c)) return 0;
  if (!c || cJSON_IsNull(c)) {
    if (null_ok) return 0;
    return REQ_BAD(param, "'%s' is required (a string or an array of text parts)", param);
  }
  if (!cJSON_IsArray(c))
    return REQ_BAD(param, "'%s' must be a string or an array of content parts, got %s", param,
                   llorch_json_describe(c, desc, sizeof desc));
  int i = 0;
  for (const cJSON *part = c->child; part; part = part->next, i++) {
    if (++*n_parts > lim->max_content_parts)
      return REQ_BAD(param, "the messages have more than %d content parts in all (request.max_content_parts)",
                     lim->max_content_parts);
    char pw[128];
    snprintf(pw, sizeof pw, "%s[%d]", param, i);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
    if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
        !cJSON_IsString(text))
      return REQ_BAD(pw, "'%s' must be {\"type\":\"text\",\"text\":...}: this model reads text only",
                     pw);
  }
  return 0;
}

/* Is s a JSON object text? (tool_calls' arguments) */
static bool req_is_json_object(const char *s) {
  cJSON *v = cJSON_Parse(s);
  bool ok = cJSON_IsObject(v);
  cJSON_Delete(v);
  return ok;
}

/* An assistant message's tool_calls: [{id, type:"function", function:{name, arguments}}]. */
static int req_tool_calls(const cJSON *calls, const char *where, const llorch_openai_limits *lim,
                          llorch_openai_error *err) {
  char p[128], desc[64];
  snprintf(p, sizeof p, "%s.tool_calls", where);
  if (!cJSON_IsArray(calls))
    return REQ_BAD(p, "'%s' must be an array of tool calls, got %s", p,
                   llorch_json_describe(calls, desc, sizeof desc));
  if (cJSON_GetArraySize(calls) > lim->max_tools)
    return REQ_BAD(p, "'%s' has %d calls; at most %d are accepted (request.max_tools)", p, cJSON_GetArraySize(calls),
                   lim->max_tools);
  int i = 0;
  for (const cJSON *c = calls->child; c; c = c->next, i++) {
    char cw[160];
    snprintf(cw, sizeof cw, "%s[%d]", p, i);
    llorch_errmsg em = {{0}};
    const char *id = NULL, *type = "function", *name = NULL;
    const cJSON *fn = NULL;
    if (!cJSON_IsObject(c)) return REQ_BAD(cw, "'%s' must be an object", cw);
    if (llorch_json_get_string(c, cw, "id", true, &id, &em) < 0 ||
        llorch_json_get_string(c, cw, "type", false, &type, &em) < 0 ||
        llorch_json_get_object(c, cw, "function", true, &fn, &em) < 0)
      return req_fail_field(err, &em);
    if (strcmp(type, "function") != 0) {
      char tp[192];
      snprintf(tp, sizeof tp, "%s.type", cw);
      char shown[48];
      return REQ_BAD(tp, "'%s' must be \"function\", got \"%s\"", tp,
                     openai_show(shown, sizeof shown, type));
    }
    char fw[192];
    snprintf(fw, sizeof fw, "%s.function", cw);
    if (llorch_json_get_string(fn, fw, "name", true, &name, &em) < 0)
      return req_fail_field(err, &em);
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    char ap[224];
    snprintf(ap, sizeof ap, "%s.arguments", fw);
    if (cJSON_IsString(args)) {
      if (!req_is_json_object(args->valuestring))
        return REQ_BAD(ap, "'%s' must be a JSON object encoded as a string, got \"%s\"", ap,
                       openai_show(desc, sizeof desc, args->valuestring));
    } else if (args && !cJSON_IsObject(args) && !cJSON_IsNull(args)) {
      return REQ_BAD(ap, "'%s' must be a JSON object encoded as a string, got %s", ap,
                     llorch_json_describe(args, desc, sizeof desc));
    }
  }
  return 0;
}

/* Is id among calls (an assistant message's tool_calls)? At most
 * LLORCH_OPENAI_MAX_TOOLS entries, so checking every tool message stays
 * linear in the request. */
static bool req_call_id_known(const cJSON *calls, const char *id) {
  for (const cJSON *c = calls ? calls->child : NULL; c; c = c->next) {
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "id");
    if (cJSON_IsString(cid) && strcmp(cid->valuestring, id) == 0) return true;
  }
  return false;
}

static int req_messages(const cJSON *messages, const llorch_openai_limits *lim,
                        llorch_openai_error *err) {
  int n = cJSON_GetArraySize(messages);
  if (n > lim->max_messages)
    return REQ_BAD("messages", "'messages' has %d items; at most %d are accepted (request.max_messages)", n,
                   lim->max_messages);
  int i = 0, n_parts = 0;
  const cJSON *last_calls = NULL; /* tool_calls of the latest assistant message that had some */
  for (const cJSON *m = messages->child; m; m = m->next, i++) {
    char where[48];
    snprintf(where, sizeof where, "messages[%d]", i);
    if (!cJSON_IsObject(m))
      return REQ_BAD(where, "'%s' must be an object with role and content", where);
    llorch_errmsg em = {{0}};
    int role = 0;
    if (llorch_json_get_enum(m, where, "role", true, req_roles, &role, &em) < 0)
      return req_fail_field(err, &em);
    const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
    if (calls && cJSON_IsNull(calls)) calls = NULL;
    if (calls && role != ROLE_ASSISTANT) {
      char p[96];
      snprintf(p, sizeof p, "%s.tool_calls", where);
      return REQ_BAD(p, "'%s' is only allowed on assistant messages", p);
    }
    int rc;
    if (calls && (rc = req_tool_calls(calls, where, lim, err)) < 0) return rc;
    if (calls) last_calls = calls;
    /* Assistant turns that only called tools have no content. */
    if ((rc = req_content(m, where, role == ROLE_ASSISTANT, lim, &n_parts, err)) < 0) return rc;
    if (role == ROLE_TOOL) {
      const char *id = NULL;
      if (llorch_json_get_string(m, where, "tool_call_id", true, &id, &em) < 0)
        return req_fail_field(err, &em);
      if (!req_call_id_known(last_calls, id)) {
        char p[96], shown[48];
        snprintf(p, sizeof p, "%s.tool_call_id", where);
        return REQ_BAD(p,
                       "'%s' is \"%s\", but no earlier assistant message has a tool call "
                       "with that id (the latest one with tool_calls answers to it)",
                       p, openai_show(shown, sizeof shown, id));
      }
    }
  }
  return 0;
}

/* ---- tools ---- */

static int req_tools(const cJSON *body, const llorch_openai_limits *lim, llorch_openai_request *r,
                     llorch_openai_error *err) {
  llorch_errmsg em = {{0}};
  const cJSON *tools = NULL;
  if (llorch_json_get_array(body, NULL, "tools", false, 0, &tools, &em) < 0)
    return req_fail_field(err, &em);
  int n = tools ? cJSON_GetArraySize(tools) : 0;
  if (n > lim->max_tools)
    return REQ_BAD("tools", "'tools' has %d entries; at most %d are accepted (request.max_tools)", n, lim->max_tools);
  int i = 0;
  for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next, i++) {
    char w[32], fw[48], desc[64];
    snprintf(w, sizeof w, "tools[%d]", i);
    snprintf(fw, sizeof fw, "tools[%d].function", i);
    if (!cJSON_IsObject(t)) return REQ_BAD(w, "'%s' must be an object, got %s", w,
                                           llorch_json_describe(t, desc, sizeof desc));
    const char *type = NULL, *name = NULL, *descr = NULL;
    const cJSON *fn = NULL, *params = NULL;
    if (llorch_json_get_string(t, w, "type", true, &type, &em) < 0)
      return req_fail_field(err, &em);
    if (strcmp(type, "function") != 0) {
      char p[48];
      snprintf(p, sizeof p, "%s.type", w);
      char shown[48];
      return REQ_BAD(p, "'%s' must be \"function\" (the only tool type supported), got \"%s\"",
                     p, openai_show(shown, sizeof shown, type));
    }
    if (llorch_json_get_object(t, w, "function", true, &fn, &em) < 0 ||
        llorch_json_get_string(fn, fw, "name", true, &name, &em) < 0 ||
        llorch_json_get_string(fn, fw, "description", false, &descr, &em) < 0 ||
        llorch_json_get_object(fn, fw, "parameters", false, &params, &em) < 0)
      return req_fail_field(err, &em);
    size_t nl = strlen(name);
    bool ok = nl > 0 && nl <= 64;
    for (size_t k = 0; ok && k < nl; k++) {
      char c = name[k];
      ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.';
    }
    if (!ok) {
      char p[64];
      snprintf(p, sizeof p, "%s.name", fw);
      char shown[48];
      return REQ_BAD(p, "'%s' must be 1..64 characters of [A-Za-z0-9_.-], got \"%s\"", p,
                     openai_show(shown, sizeof shown, name));
    }
    int k = 0;
    for (const cJSON *u = tools->child; u != t; u = u->next, k++) {
      const cJSON *ufn = cJSON_GetObjectItemCaseSensitive(u, "function");
      const cJSON *un = cJSON_GetObjectItemCaseSensitive(ufn, "name");
      if (cJSON_IsString(un) && strcmp(un->valuestring, name) == 0) {
        char p[64];
        snprintf(p, sizeof p, "%s.name", fw);
        return REQ_BAD(p, "'%s' is \"%s\", the same name as tools[%d]", p, name, k);
      }
    }
  }
  r->tools = n ? tools : NULL;

  /* tool_choice: "none" | "auto" | "required" | {"type":"function","function":{"name":..}} */
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
  r->tool_choice = LLORCH_OPENAI_TOOL_CHOICE_AUTO;
  if (tc && !cJSON_IsNull(tc)) {
    char desc[64];
    if (cJSON_IsString(tc)) {
      static const char *const names[] = {"auto", "none", "required", NULL};
      int k = 0;
      while (names[k] && strcmp(names[k], tc->valuestring) != 0) k++;
      if (!names[k])
        return REQ_BAD("tool_choice",
                       "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                       "{\"type\":\"function\",\"function\":{\"name\":...}}, got %s",
                       llorch_json_describe(tc, desc, sizeof desc));
      r->tool_choice = (llorch_openai_tool_choice)k;
    } else if (cJSON_IsObject(tc)) {
      const cJSON *type = cJSON_GetObjectItemCaseSensitive(tc, "type");
      const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
      const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
      if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0 ||
          !cJSON_IsObject(fn) || !cJSON_IsString(name))
        return REQ_BAD("tool_choice",
                       "'tool_choice' as an object must be {\"type\":\"function\",\"function\":"
                       "{\"name\":...}}");
      r->tool_choice = LLORCH_OPENAI_TOOL_CHOICE_NAMED;
      r->tool_choice_name = name->valuestring;
    } else {
      return REQ_BAD("tool_choice",
                     "'tool_choice' must be \"auto\", \"none\", \"required\" or an object naming a "
                     "function, got %s",
                     llorch_json_describe(tc, desc, sizeof desc));
    }
    if ((r->tool_choice == LLORCH_OPENAI_TOOL_CHOICE_REQUIRED ||
         r->tool_choice == LLORCH_OPENAI_TOOL_CHOICE_NAMED) &&
        !r->tools)
      return REQ_BAD("tool_choice", "'tool_choice' asks for a tool call but 'tools' is empty");
    if (r->tool_choice == LLORCH_OPENAI_TOOL_CHOICE_NAMED) {
      bool found = false;
      for (const cJSON *t = r->tools->child; t && !found; t = t->next) {
        const cJSON *n2 = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
        found = cJSON_IsString(n2) && strcmp(n2->valuestring, r->tool_choice_name) == 0;
      }
      if (!found)
        return REQ_BAD("tool_choice.function.name",
                       "'tool_choice.function.name' is \"%s\", which is not in 'tools'",
                       openai_show(desc, sizeof desc, r->tool_choice_name));
    }
  }
  r->parallel_tool_calls = true;
  if (llorch_json_get_bool(body, NULL, "parallel_tool_calls", false, &r->parallel_tool_calls,
                           &em) < 0)
    return req_fail_field(err, &em);
  return 0;
}

/* ---- stop ---- */

static int req_stop(const cJSON *body, const llorch_openai_limits *lim, llorch_openai_request *r,
                    llorch_openai_error *err) {
  int max = lim->max_stop < LLORCH_OPENAI_MAX_STOP ? lim->max_stop : LLORCH_OPENAI_MAX_STOP;
  const cJSON *stop = cJSON_GetObjectItemCaseSensitive(body, "stop");
  if (!stop || cJSON_IsNull(stop)) return 0;
  if (cJSON_IsString(stop)) {
    if (stop->valuestring[0]) r->stop[r->n_stop++] = stop->valuestring; /* "" stops nothing */
    return 0;
  }
  if (!cJSON_IsArray(stop))
    return REQ_BAD("stop", "'stop' must be a string or an array of up to %d strings", max);
  int i = 0;
  for (const cJSON *s = stop->child; s; s = s->next, i++) {
    char p[32];
    snprintf(p, sizeof p, "stop[%d]", i);
    if (!cJSON_IsString(s) || !s->valuestring[0])
      return REQ_BAD(p, "'%s' must be a non-empty string", p);
    if (i >= max) return REQ_BAD("stop", "'stop' has more than %d strings (request.max_stop)", max);
    r->stop[r->n_stop++] = s->valuestring;
  }
  return 0;
}

/* ---- sampling and logprobs ---- */

static int req_sampling(const cJSON *body, llorch_openai_request *r, llorch_openai_error *err) {
  llorch_errmsg em = {{0}};
  r->temperature = 1.0; /* OpenAI's default */
  r->top_p = 1.0;
  r->min_p = 0.0;
  r->presence_penalty = r->frequency_penalty = 0.0;
  r->repetition_penalty = 1.0;
  r->top_k = 0;
  if (llorch_json_get_number(body, NULL, "temperature", false, 0.0, 2.0, &r->temperature, &em) <
          0 ||
      llorch_json_get_number(body, NULL, "top_p", false, 0.0, 1.0, &r->top_p, &em) < 0 ||
      llorch_json_get_number(body, NULL, "min_p", false, 0.0, 1.0, &r->min_p, &em) < 0 ||
      llorch_json_get_int(body, NULL, "top_k", false, 0, 1 << 30, &r->top_k, &em) < 0 ||
      llorch_json_get_number(body, NULL, "presence_penalty", false, -2.0, 2.0,
                             &r->presence_penalty, &em) < 0 ||
      llorch_json_get_number(body, NULL, "frequency_penalty", false, -2.0, 2.0,
                             &r->frequency_penalty, &em) < 0 ||
      llorch_json_get_number(body, NULL, "repetition_penalty", false, 0.01, 10.0,
                             &r->repetition_penalty, &em) < 0)
    return req_fail_field(err, &em);
  if (r->top_p <= 0.0) return REQ_BAD("top_p", "'top_p' must be a number in (0, 1], got 0");
  /* logit_bias: {"<token id>": bias in [-100, 100]}; the worker checks the
   * ids against its vocabulary */
  const cJSON *lb = cJSON_GetObjectItemCaseSensitive(body, "logit_bias");
  if (lb && !cJSON_IsNull(lb)) {
    char desc[64];
    if (!cJSON_IsObject(lb))
      return REQ_BAD("logit_bias", "'logit_bias' must be an object of token ids to biases, got %s",
                     llorch_json_describe(lb, desc, sizeof desc));
    int n = 0;
    for (const cJSON *e = lb->child; e; e = e->next) {
      if (++n > LLORCH_OPENAI_MAX_LOGIT_BIAS)
        return REQ_BAD("logit_bias", "'logit_bias' has more than %d entries", LLORCH_OPENAI_MAX_LOGIT_BIAS);
      char *end = NULL;
      long id = strtol(e->string, &end, 10);
      if (!e->string[0] || *end || id < 0 || id > INT32_MAX || (e->string[0] == '0' && e->string[1]))
        return REQ_BAD("logit_bias", "'logit_bias' key \"%s\" is not a token id (a decimal integer >= 0)",
                       openai_show(desc, sizeof desc, e->string));
      if (!cJSON_IsNumber(e) || !(e->valuedouble >= -100.0 && e->valuedouble <= 100.0))
        return REQ_BAD("logit_bias", "'logit_bias' of token %ld must be a number in [-100, 100], got %s", id,
                       llorch_json_describe(e, desc, sizeof desc));
    }
    if (n) r->logit_bias = lb;
  }
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "seed");
  if (s && !cJSON_IsNull(s)) {
    if (llorch_json_get_int(body, NULL, "seed", false, INT64_MIN, INT64_MAX, &r->seed, &em) < 0)
      return req_fail_field(err, &em);
    r->has_seed = true;
  }
  if (r->api == LLORCH_OPENAI_COMPLETION) {
    /* completions: logprobs is an integer 0..5 (number of alternatives) */
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(body, "logprobs");
    if (lp && !cJSON_IsNull(lp)) {
      int64_t n = 0;
      if (llorch_json_get_int(body, NULL, "logprobs", false, 0, 5, &n, &em) < 0)
        return req_fail_field(err, &em);
      r->logprobs = true;
      r->top_logprobs = (int)n;
    }
  } else {
    int64_t top = 0;
    if (llorch_json_get_bool(body, NULL, "logprobs", false, &r->logprobs, &em) < 0 ||
        llorch_json_get_int(body, NULL, "top_logprobs", false, 0, LLORCH_OPENAI_MAX_TOP_LOGPROBS,
                            &top, &em) < 0)
      return req_fail_field(err, &em);
    if (top > 0 && !r->logprobs)
      return REQ_BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r->top_logprobs = (int)top;
  }
  return 0;
}

/* ---- the job id ---- */

static bool req_job_id_valid(const char *s) {
  size_t n = strlen(s);
  if (!n || n > 64) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == ':' || c == '-'))
      return false;
  }
  return true;
}

/* ---- the request ---- */

llorch_openai_limits llorch_openai_limits_from_config(const llorch_config *cfg) {
  llorch_openai_limits lim = LLORCH_OPENAI_LIMITS_DEFAULT;
  if (!cfg) return lim;
  lim.max_messages = cfg->request.max_messages;
  lim.max_content_parts = cfg->request.max_content_parts;
  lim.max_stop = cfg->request.max_stop;
  lim.max_tools = cfg->request.max_tools;
  lim.max_n = cfg->request.max_n;
  return lim;
}

int llorch_openai_request_parse(const cJSON *body, llorch_openai_api api,
                                const llorch_openai_limits *lim, llorch_openai_request *r,
                                llorch_openai_error *err) {
  static const llorch_openai_limits defaults = LLORCH_OPENAI_LIMITS_DEFAULT;
  if (!lim) lim = &defaults;
  memset(r, 0, sizeof *r);
  r->api = api;
  llorch_errmsg em = {{0}};
  int rc;

  if (llorch_json_get_string(body, NULL, "model", false, &r->model, &em) < 0)
    return req_fail_field(err, &em);
  /* Echoed in messages and logs: a name with line breaks could forge lines. */
  for (const char *c = r->model; c && *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      return REQ_BAD("model", "'model' must not contain control characters");

  /* n: choices of one prompt (siblings), bounded by the operator's request.max_n.
   * Any integer is read so that the error says what was asked. */
  int64_t n = 1;
  int max_n = lim->max_n < LLORCH_OPENAI_MAX_N ? lim->max_n : LLORCH_OPENAI_MAX_N;
  if (max_n < 1) max_n = 1;
  if (llorch_json_get_int(body, NULL, "n", false, INT64_MIN, INT64_MAX, &n, &em) < 0)
    return req_fail_field(err, &em);
  if (n < 1) return REQ_BAD("n", "'n' = %lld is not valid: expected at least 1 choice", (long long)n);
  if (n > max_n)
    return REQ_BAD("n", "'n' = %lld is more than this server allows (request.max_n = %d)", (long long)n,
                   max_n);
  r->n = (int)n;

  /* stream (native is always streamed) */
  if (api != LLORCH_OPENAI_NATIVE) {
    const cJSON *so = NULL;
    if (llorch_json_get_bool(body, NULL, "stream", false, &r->stream, &em) < 0 ||
        llorch_json_get_object(body, NULL, "stream_options", false, &so, &em) < 0 ||
        (so && llorch_json_get_bool(so, "stream_options", "include_usage", false,
                                    &r->include_usage, &em) < 0))
      return req_fail_field(err, &em);
  } else {
    r->stream = true;
  }

  /* prompt or messages */
  const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
  const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
  if (messages && cJSON_IsNull(messages)) messages = NULL;
  if (prompt && cJSON_IsNull(prompt)) prompt = NULL;
  if (api == LLORCH_OPENAI_CHAT) {
    r->chat = true;
  } else if (api == LLORCH_OPENAI_COMPLETION) {
    r->chat = false;
  } else {
    if (messages && prompt)
      return REQ_BAD("prompt", "give either 'messages' or 'prompt', not both");
    r->chat = messages != NULL;
  }
  if (r->chat) {
    if (llorch_json_get_array(body, NULL, "messages", true, 1, &r->messages, &em) < 0)
      return req_fail_field(err, &em);
    if ((rc = req_messages(r->messages, lim, err)) < 0) return rc;
    if ((rc = req_tools(body, lim, r, err)) < 0) return rc;
    if (llorch_json_get_object(body, NULL, "chat_template_kwargs", false,
                               &r->chat_template_kwargs, &em) < 0)
      return req_fail_field(err, &em);
  } else {
    if (!prompt)
      return llorch_openai_fail(err, 400, "invalid_request_error", "missing_field", "prompt",
                                api == LLORCH_OPENAI_NATIVE
                                    ? "one of 'messages' or 'prompt' is required"
                                    : "'prompt' is required");
    if (cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) == 1 &&
        cJSON_IsString(prompt->child))
      prompt = prompt->child;
    if (!cJSON_IsString(prompt))
      return REQ_BAD("prompt", "'prompt' must be a string (or an array of exactly one string)");
    if (!prompt->valuestring[0]) return REQ_BAD("prompt", "'prompt' is empty");
    r->prompt = prompt->valuestring;
  }
  /* Any JSON value: the grammar engine reads it; here it only travels. */
  r->response_format = cJSON_GetObjectItemCaseSensitive(body, "response_format");
  if (r->response_format && cJSON_IsNull(r->response_format)) r->response_format = NULL;
  r->grammar = cJSON_GetObjectItemCaseSensitive(body, "grammar");
  if (r->grammar && cJSON_IsNull(r->grammar)) r->grammar = NULL;

  const char *rf = NULL;
  char shown[48];
  if (llorch_json_get_string(body, NULL, "reasoning_format", false, &rf, &em) < 0)
    return req_fail_field(err, &em);
  if (rf && llorch_reasoning_format_parse(rf, &r->reasoning_format) < 0)
    return REQ_BAD("reasoning_format",
                   "'reasoning_format' must be \"reasoning_content\" or \"none\", got \"%s\"",
                   openai_show(shown, sizeof shown, rf));

  /* job id (native) */
  if (api == LLORCH_OPENAI_NATIVE) {
    if (llorch_json_get_string(body, NULL, "job_id", false, &r->job_id, &em) < 0)
      return req_fail_field(err, &em);
    if (r->job_id && !req_job_id_valid(r->job_id))
      return REQ_BAD("job_id", "'job_id' must be 1..64 characters of [A-Za-z0-9._:-]");
  }

  /* echo and suffix (prompts only: the legacy completions' fields) */
  if (llorch_json_get_bool(body, NULL, "echo", false, &r->echo, &em) < 0 ||
      llorch_json_get_string(body, NULL, "suffix", false, &r->suffix, &em) < 0)
    return req_fail_field(err, &em);
  if (r->echo && r->chat)
    return REQ_BAD("echo", "'echo' is for a 'prompt' (completions), not for 'messages'");
  if (r->suffix && r->chat)
    return REQ_BAD("suffix", "'suffix' is for a 'prompt' (completions), not for 'messages'");
  if (r->suffix && r->echo)
    return REQ_BAD("suffix", "'suffix' (fill-in-the-middle) cannot be combined with 'echo': true");

  /* limits: max_tokens 0 asks for nothing generated, which only echo makes
   * useful (the prompt's logprobs: the loglikelihood path) */
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(body, "max_tokens");
  if (r->echo && cJSON_IsNumber(mt) && mt->valuedouble == 0) {
    r->prompt_only = true;
    mt = NULL;
  }
  int64_t max_tokens = 0;
  if ((mt && llorch_json_get_int(body, NULL, "max_tokens", false, 1, 1 << 30, &max_tokens, &em) < 0) ||
      (r->chat && llorch_json_get_int(body, NULL, "max_completion_tokens", false, 1, 1 << 30,
                                      &max_tokens, &em) < 0))
    return req_fail_field(err, &em);
  r->max_tokens = (uint32_t)max_tokens;
  if (llorch_json_get_bool(body, NULL, "ignore_eos", false, &r->ignore_eos, &em) < 0)
    return req_fail_field(err, &em);
  if ((rc = req_stop(body, lim, r, err)) < 0) return rc;
  return req_sampling(body, r, err);
}

/* ---- the worker's execute body ---- */

static void req_copy(cJSON *dst, const cJSON *v, const char *key) {
  if (!v) return;
  cJSON *dup = cJSON_Duplicate(v, true);
  if (dup) cJSON_AddItemToObject(dst, key, dup);
}

char *llorch_openai_request_native_body(const llorch_openai_request *r, const char *job_id,
                                        llorch_reasoning_format default_reasoning) {
  cJSON *ex = cJSON_CreateObject();
  if (!ex) return NULL;
  if (job_id) cJSON_AddStringToObject(ex, "job_id", job_id);
  if (r->chat) {
    req_copy(ex, r->messages, "messages");
    req_copy(ex, r->tools, "tools");
    static const char *const choices[] = {"auto", "none", "required"};
    if (r->tool_choice == LLORCH_OPENAI_TOOL_CHOICE_NAMED) {
      cJSON *tc = cJSON_AddObjectToObject(ex, "tool_choice");
      cJSON_AddStringToObject(tc, "type", "function");
      cJSON_AddStringToObject(cJSON_AddObjectToObject(tc, "function"), "name",
                              r->tool_choice_name);
    } else if (r->tools) {
      cJSON_AddStringToObject(ex, "tool_choice", choices[r->tool_choice]);
    }
    if (r->tools && !r->parallel_tool_calls) cJSON_AddFalseToObject(ex, "parallel_tool_calls");
    req_copy(ex, r->chat_template_kwargs, "chat_template_kwargs");
  } else {
    cJSON_AddStringToObject(ex, "prompt", r->prompt);
  }
  req_copy(ex, r->response_format, "response_format");
  req_copy(ex, r->grammar, "grammar");
  req_copy(ex, r->logit_bias, "logit_bias");
  llorch_reasoning_format rf = r->reasoning_format ? r->reasoning_format : default_reasoning;
  if (rf != LLORCH_REASONING_UNSET)
    cJSON_AddStringToObject(ex, "reasoning_format", llorch_reasoning_format_name(rf));
  if (r->max_tokens) cJSON_AddNumberToObject(ex, "max_tokens", r->max_tokens);
  if (r->echo) cJSON_AddTrueToObject(ex, "echo");
  if (r->prompt_only) cJSON_AddNumberToObject(ex, "max_tokens", 0);
  if (r->suffix) cJSON_AddStringToObject(ex, "suffix", r->suffix);
  if (r->n > 1) cJSON_AddNumberToObject(ex, "n", r->n);
  if (r->ignore_eos) cJSON_AddTrueToObject(ex, "ignore_eos");
  if (r->n_stop) {
    cJSON *st = cJSON_AddArrayToObject(ex, "stop");
    for (int i = 0; i < r->n_stop; i++) cJSON_AddItemToArray(st, cJSON_CreateString(r->stop[i]));
  }
  cJSON_AddNumberToObject(ex, "temperature", r->temperature);
  cJSON_AddNumberToObject(ex, "top_p", r->top_p);
  if (r->min_p > 0) cJSON_AddNumberToObject(ex, "min_p", r->min_p);
  if (r->top_k > 0) cJSON_AddNumberToObject(ex, "top_k", (double)r->top_k);
  if (r->presence_penalty != 0) cJSON_AddNumberToObject(ex, "presence_penalty", r->presence_penalty);
  if (r->frequency_penalty != 0)
    cJSON_AddNumberToObject(ex, "frequency_penalty", r->frequency_penalty);
  if (r->repetition_penalty != 1.0)
    cJSON_AddNumberToObject(ex, "repetition_penalty", r->repetition_penalty);
  if (r->has_seed) {
    /* Integers beyond 2^53 do not survive a double: write the digits. */
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", (long long)r->seed);
    cJSON_AddItemToObject(ex, "seed", cJSON_CreateRaw(digits));
  }
  if (r->logprobs) {
    cJSON_AddTrueToObject(ex, "logprobs");
    if (r->top_logprobs > 0) cJSON_AddNumberToObject(ex, "top_logprobs", r->top_logprobs);
  }
  char *s = llorch_json_print(ex);
  cJSON_Delete(ex);
  return s;
}

/* ---- the chat template's context ---- */

/* A message's content as one string (parts joined), or NULL for null. */
static cJSON *req_content_string(const cJSON *c) {
  if (cJSON_IsString(c)) return cJSON_CreateString(c->valuestring);
  if (!cJSON_IsArray(c)) return cJSON_CreateNull();
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  for (const cJSON *p = c->child; p; p = p->next) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
    if (cJSON_IsString(t)) llorch_jbuf_cstr(&b, t->valuestring);
  }
  cJSON *s = llorch_jbuf_error(&b) < 0 ? NULL : cJSON_CreateString(b.data ? b.data : "");
  llorch_jbuf_free(&b);
  return s;
}

cJSON *llorch_openai_chat_context(const llorch_openai_request *r) {
  cJSON *ctx = cJSON_CreateObject();
  cJSON *msgs = cJSON_AddArrayToObject(ctx, "messages");
  if (!ctx || !msgs) goto fail;
  for (const cJSON *m = r->messages ? r->messages->child : NULL; m; m = m->next) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(msgs, o)) {
      cJSON_Delete(o);
      goto fail;
    }
    for (const cJSON *f = m->child; f; f = f->next) {
      cJSON *v = NULL;
      if (strcmp(f->string, "role") == 0 && cJSON_IsString(f) &&
          strcmp(f->valuestring, "developer") == 0) {
        v = cJSON_CreateString("system");
      } else if (strcmp(f->string, "content") == 0) {
        v = req_content_string(f);
      } else if (strcmp(f->string, "tool_calls") == 0 && cJSON_IsArray(f)) {
        /* Templates index arguments as a mapping: parse the JSON strings. */
        v = cJSON_Duplicate(f, true);
        for (cJSON *c = v ? v->child : NULL; c; c = c->next) {
          cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
          cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
          if (cJSON_IsString(args)) {
            cJSON *parsed = cJSON_Parse(args->valuestring);
            if (parsed) cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", parsed);
          } else if (!args || cJSON_IsNull(args)) {
            cJSON_DeleteItemFromObjectCaseSensitive(fn, "arguments");
            cJSON_AddItemToObject(fn, "arguments", cJSON_CreateObject());
          }
        }
      } else {
        v = cJSON_Duplicate(f, true);
      }
      if (!v) goto fail;
      cJSON_AddItemToObject(o, f->string, v);
    }
  }
  if (r->tools && r->tool_choice != LLORCH_OPENAI_TOOL_CHOICE_NONE)
    cJSON_AddItemToObject(ctx, "tools", cJSON_Duplicate(r->tools, true));
  cJSON_AddTrueToObject(ctx, "add_generation_prompt");
  /* chat_template_kwargs' keys are template variables of their own, as
   * transformers passes them (enable_thinking); they cannot replace the
   * context's keys nor the model's bos_token/eos_token. */
  static const char *const reserved[] = {"messages", "tools", "add_generation_prompt",
                                         "bos_token", "eos_token", NULL};
  const cJSON *kw = r->chat_template_kwargs;
  for (const cJSON *e = cJSON_IsObject(kw) ? kw->child : NULL; e; e = e->next) {
    bool skip = false;
    for (int k = 0; reserved[k] && !skip; k++) skip = strcmp(e->string, reserved[k]) == 0;
    if (skip || cJSON_GetObjectItemCaseSensitive(ctx, e->string)) continue;
    cJSON *dup = cJSON_Duplicate(e, true);
    if (!dup) goto fail;
    cJSON_AddItemToObject(ctx, e->string, dup);
  }
  return ctx;
fail:
  cJSON_Delete(ctx);
  return NULL;
}
