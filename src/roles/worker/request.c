/*
 * Request bodies -> jobs: every field checked with an error that names it,
 * the prompt rendered (chat) and tokenized, sampling and limits set.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "worker-impl.h"

/* ---- errors ---- */

static int request_fail(worker_error *err, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int request_fail(worker_error *err, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...) {
  err->status = status;
  err->type = type;
  err->code = code;
  snprintf(err->param, sizeof err->param, "%s", param ? param : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return LLORCH_EINVAL;
}

/* A json.h getter failed: 400 naming the field it reported. */
static int request_fail_field(worker_error *err, const llorch_errmsg *em) {
  return request_fail(err, 400, "invalid_request_error", "invalid_value", llorch_json_errparam(),
                      "%s", em->text);
}

/* ---- model name ---- */

bool worker_model_name_matches(const worker *w, const char *name) {
  if (strcmp(name, w->model_name) == 0 || strcmp(name, w->file_base) == 0) return true;
  size_t n = strlen(w->file_base);
  /* the file name without ".gguf" */
  if (n > 5 && strcmp(w->file_base + n - 5, ".gguf") == 0 && strlen(name) == n - 5 &&
      strncmp(name, w->file_base, n - 5) == 0)
    return true;
  return false;
}

/* ---- chat rendering ---- */

/*
 * The text of one message's content: a string, or an array of
 * {"type":"text","text":...} parts joined; null (assistant turns that only
 * called tools) is "". Appends to b.
 */
static int request_message_content(const cJSON *msg, const char *where, llorch_jbuf *b,
                                   worker_error *err) {
  const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
  char param[96];
  snprintf(param, sizeof param, "%s.content", where);
  if (!c || cJSON_IsNull(c)) return 0;
  if (cJSON_IsString(c)) {
    llorch_jbuf_cstr(b, c->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(c))
    return request_fail(err, 400, "invalid_request_error", "invalid_value", param,
                        "'%s' must be a string or an array of content parts", param);
  int i = 0;
  for (const cJSON *part = c->child; part; part = part->next, i++) {
    char pw[128];
    snprintf(pw, sizeof pw, "%s[%d]", param, i);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
    if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 ||
        !cJSON_IsString(text))
      return request_fail(err, 400, "invalid_request_error", "invalid_value", pw,
                          "'%s' must be {\"type\":\"text\",\"text\":...}: this model reads text only",
                          pw);
    llorch_jbuf_cstr(b, text->valuestring);
  }
  return 0;
}

/*
 * Renders messages with the model's chat template family (chat.h: llorch
 * recognises the family of tokenizer.chat_template rather than running
 * Jinja). "developer" is OpenAI's newer name for "system".
 */
static int request_render_chat(worker *w, const cJSON *messages, llorch_jbuf *out,
                               worker_error *err) {
  static const char *const roles[] = {"system", "user", "assistant", "developer", "tool", NULL};
  size_t n = (size_t)cJSON_GetArraySize(messages);
  /* Bounded before anything is allocated per message (request.max_messages). */
  size_t max_messages = w->cfg ? (size_t)w->cfg->request.max_messages : 1024;
  size_t max_parts = w->cfg ? (size_t)w->cfg->request.max_content_parts : 1024;
  if (n > max_messages)
    return request_fail(err, 400, "invalid_request_error", "invalid_value", "messages",
                        "'messages' has %zu items, at most %zu (request.max_messages)", n,
                        max_messages);
  size_t n_parts = 0;
  for (const cJSON *m = messages->child; m; m = m->next) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsArray(c)) n_parts += (size_t)cJSON_GetArraySize(c);
  }
  if (n_parts > max_parts)
    return request_fail(err, 400, "invalid_request_error", "invalid_value", "messages",
                        "the messages have %zu content parts in all, at most %zu "
                        "(request.max_content_parts)",
                        n_parts, max_parts);
  llorch_chat_message *msgs = calloc(n, sizeof *msgs);
  llorch_jbuf *contents = calloc(n, sizeof *contents);
  char *text = NULL;
  size_t text_len = 0;
  int rc = 0;
  if (!msgs || !contents) {
    rc = request_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    goto out;
  }
  size_t i = 0;
  for (const cJSON *m = messages->child; m; m = m->next, i++) {
    char where[48];
    snprintf(where, sizeof where, "messages[%zu]", i);
    llorch_jbuf_init(&contents[i]);
    if (!cJSON_IsObject(m)) {
      rc = request_fail(err, 400, "invalid_request_error", "invalid_value", where,
                        "'%s' must be an object with role and content", where);
      goto out;
    }
    llorch_errmsg em = {{0}};
    int role = 0;
    if (llorch_json_get_enum(m, where, "role", true, roles, &role, &em) < 0) {
      rc = request_fail_field(err, &em);
      goto out;
    }
    if (role == 4) {
      char p[64];
      snprintf(p, sizeof p, "%s.role", where);
      rc = request_fail(err, 400, "invalid_request_error", "unsupported_value", p,
                        "'%s' is \"tool\": tool calls are not supported by this worker", p);
      goto out;
    }
    msgs[i].role = role == 3 ? "system" : roles[role];
    if ((rc = request_message_content(m, where, &contents[i], err)) < 0) goto out;
    msgs[i].content = contents[i].data ? contents[i].data : "";
  }
  llorch_errmsg em = {{0}};
  if (llorch_chat_render(w->chat, msgs, n, true, &text, &text_len, &em) < 0) {
    rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "messages", "%s",
                      em.text);
    goto out;
  }
  llorch_jbuf_raw(out, text, text_len);
  if (llorch_jbuf_error(out) < 0)
    rc = request_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");

out:
  if (contents)
    for (size_t k = 0; k < n; k++) llorch_jbuf_free(&contents[k]);
  free(contents);
  free(msgs);
  free(text);
  return rc;
}

/* ---- fields ---- */

static int request_stop(const worker *w, const cJSON *body, worker_job *j, worker_error *err) {
  int max_stop = w->cfg ? w->cfg->request.max_stop : 4;
  if (max_stop > WORKER_MAX_STOP) max_stop = WORKER_MAX_STOP;
  const cJSON *stop = cJSON_GetObjectItemCaseSensitive(body, "stop");
  if (!stop || cJSON_IsNull(stop)) return 0;
  if (cJSON_IsString(stop)) {
    if (!stop->valuestring[0]) return 0; /* "" stops nothing */
    return worker_job_add_stop(j, stop->valuestring, strlen(stop->valuestring)) < 0
               ? request_fail(err, 500, "server_error", "internal_error", "stop", "out of memory")
               : 0;
  }
  if (!cJSON_IsArray(stop))
    return request_fail(err, 400, "invalid_request_error", "invalid_value", "stop",
                        "'stop' must be a string or an array of up to %d strings", max_stop);
  int i = 0;
  for (const cJSON *s = stop->child; s; s = s->next, i++) {
    char p[32];
    snprintf(p, sizeof p, "stop[%d]", i);
    if (!cJSON_IsString(s) || !s->valuestring[0])
      return request_fail(err, 400, "invalid_request_error", "invalid_value", p,
                          "'%s' must be a non-empty string", p);
    if (i >= max_stop)
      return request_fail(err, 400, "invalid_request_error", "invalid_value", "stop",
                          "'stop' has more than %d strings (request.max_stop)", max_stop);
    if (worker_job_add_stop(j, s->valuestring, strlen(s->valuestring)) < 0)
      return request_fail(err, 500, "server_error", "internal_error", "stop", "out of memory");
  }
  return 0;
}

/* Sampling fields into params. OpenAI's default temperature is 1. */
static int request_sampling(worker_api api, const cJSON *body, llorch_sampler_params *sp,
                            bool *want_logprobs, worker_error *err) {
  llorch_errmsg em = {{0}};
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, presence = 0.0, frequency = 0.0,
         repetition = 1.0;
  int64_t top_k = 0, seed = 0;
  bool has_seed = false;
  if (llorch_json_get_number(body, NULL, "temperature", false, 0.0, 2.0, &temperature, &em) < 0 ||
      llorch_json_get_number(body, NULL, "top_p", false, 0.0, 1.0, &top_p, &em) < 0 ||
      llorch_json_get_number(body, NULL, "min_p", false, 0.0, 1.0, &min_p, &em) < 0 ||
      llorch_json_get_int(body, NULL, "top_k", false, 0, 1 << 30, &top_k, &em) < 0 ||
      llorch_json_get_number(body, NULL, "presence_penalty", false, -2.0, 2.0, &presence, &em) <
          0 ||
      llorch_json_get_number(body, NULL, "frequency_penalty", false, -2.0, 2.0, &frequency,
                             &em) < 0 ||
      llorch_json_get_number(body, NULL, "repetition_penalty", false, 0.01, 10.0, &repetition,
                             &em) < 0)
    return request_fail_field(err, &em);
  if (top_p <= 0.0)
    return request_fail(err, 400, "invalid_request_error", "invalid_value", "top_p",
                        "'top_p' must be a number in (0, 1], got 0");
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "seed");
  if (s && !cJSON_IsNull(s)) {
    if (llorch_json_get_int(body, NULL, "seed", false, INT64_MIN, INT64_MAX, &seed, &em) < 0)
      return request_fail_field(err, &em);
    has_seed = true;
  }
  llorch_sampler_params_default(sp);
  sp->temperature = (float)temperature;
  sp->top_p = (float)top_p;
  sp->min_p = (float)min_p;
  sp->top_k = (int32_t)top_k;
  sp->presence_penalty = (float)presence;
  sp->frequency_penalty = (float)frequency;
  sp->repetition_penalty = (float)repetition;
  if (has_seed) {
    sp->seed = (uint64_t)seed;
  } else {
    /* Unseeded requests still differ from each other. */
    static uint64_t counter;
    sp->seed = uv_hrtime() ^ (++counter * 0x9E3779B97F4A7C15ull);
  }

  *want_logprobs = false;
  sp->n_logprobs = 0;
  if (api == WORKER_API_COMPLETION) {
    /* completions: logprobs is an integer 0..5 (number of alternatives) */
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(body, "logprobs");
    if (lp && !cJSON_IsNull(lp)) {
      int64_t n = 0;
      if (llorch_json_get_int(body, NULL, "logprobs", false, 0, 5, &n, &em) < 0)
        return request_fail_field(err, &em);
      *want_logprobs = true;
      sp->n_logprobs = (int32_t)n;
    }
  } else {
    bool lp = false;
    int64_t top = 0;
    if (llorch_json_get_bool(body, NULL, "logprobs", false, &lp, &em) < 0 ||
        llorch_json_get_int(body, NULL, "top_logprobs", false, 0, LLORCH_SAMPLER_MAX_LOGPROBS,
                            &top, &em) < 0)
      return request_fail_field(err, &em);
    if (top > 0 && !lp)
      return request_fail(err, 400, "invalid_request_error", "invalid_value", "top_logprobs",
                          "'top_logprobs' needs 'logprobs': true");
    *want_logprobs = lp;
    sp->n_logprobs = (int32_t)top;
  }
  llorch_errmsg vem = {{0}};
  if (llorch_sampler_params_validate(sp, &vem) < 0)
    return request_fail(err, 400, "invalid_request_error", "invalid_value", NULL, "%s", vem.text);
  return 0;
}

/* ---- the job id ---- */

static bool request_job_id_valid(const char *s) {
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

/* ---- build ---- */

int worker_request_build(worker *w, worker_api api, const cJSON *body, worker_stream *st,
                         worker_job **out, worker_error *err) {
  *out = NULL;
  llorch_errmsg em = {{0}};
  worker_job *j = NULL;
  llorch_jbuf text;
  llorch_jbuf_init(&text);
  int rc;

  /* model */
  const char *model = NULL;
  if (llorch_json_get_string(body, NULL, "model", false, &model, &em) < 0) {
    rc = request_fail_field(err, &em);
    goto fail;
  }
  if (model && model[strcspn(model, "\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f"
                             "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e"
                             "\x1f\x7f")] != '\0') {
    /* Echoed in messages and logs: a name with line breaks could forge lines. */
    rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "model",
                      "'model' must not contain control characters");
    goto fail;
  }
  if (model && !worker_model_name_matches(w, model)) {
    rc = request_fail(err, 404, "invalid_request_error", "model_not_found", "model",
                      "The model '%s' does not exist on this worker; it serves '%s' (file %s)",
                      model, w->model_name, w->file_base);
    goto fail;
  }
  snprintf(st->model_echo, sizeof st->model_echo, "%s", model ? model : w->model_name);

  /* n */
  int64_t n = 1;
  if (llorch_json_get_int(body, NULL, "n", false, INT64_MIN, INT64_MAX, &n, &em) < 0) {
    rc = request_fail_field(err, &em);
    goto fail;
  }
  if (n != 1) {
    rc = request_fail(err, 400, "invalid_request_error", "unsupported_value", "n",
                      "'n' = %lld is not supported: this server returns one choice (n = 1)",
                      (long long)n);
    goto fail;
  }

  /* tools: not run by this worker, but a huge list is refused before any work */
  const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
  if (cJSON_IsArray(tools)) {
    int max_tools = w->cfg ? w->cfg->request.max_tools : 128;
    int nt = cJSON_GetArraySize(tools);
    if (nt > max_tools) {
      rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "tools",
                        "'tools' has %d items, at most %d (request.max_tools)", nt, max_tools);
      goto fail;
    }
  }

  /* stream */
  bool stream = api == WORKER_API_NATIVE;
  if (api != WORKER_API_NATIVE) {
    const cJSON *so = NULL;
    bool include_usage = false;
    if (llorch_json_get_bool(body, NULL, "stream", false, &stream, &em) < 0 ||
        llorch_json_get_object(body, NULL, "stream_options", false, &so, &em) < 0 ||
        (so && llorch_json_get_bool(so, "stream_options", "include_usage", false, &include_usage,
                                    &em) < 0)) {
      rc = request_fail_field(err, &em);
      goto fail;
    }
    st->include_usage = include_usage;
  }
  st->stream = stream;

  /* prompt or messages */
  const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
  const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
  if (messages && cJSON_IsNull(messages)) messages = NULL;
  if (prompt && cJSON_IsNull(prompt)) prompt = NULL;
  bool use_chat;
  if (api == WORKER_API_CHAT) {
    use_chat = true;
    prompt = NULL;
  } else if (api == WORKER_API_COMPLETION) {
    use_chat = false;
    messages = NULL;
  } else {
    if (messages && prompt) {
      rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "prompt",
                        "give either 'messages' or 'prompt', not both");
      goto fail;
    }
    use_chat = messages != NULL;
  }
  unsigned flags = LLORCH_TOKENIZE_ADD_SPECIAL;
  if (use_chat) {
    const cJSON *arr = NULL;
    if (llorch_json_get_array(body, NULL, "messages", true, 1, &arr, &em) < 0) {
      rc = request_fail_field(err, &em);
      goto fail;
    }
    if ((rc = request_render_chat(w, arr, &text, err)) < 0) goto fail;
    /* The rendered template holds special-token text that must become the
     * special tokens (chat.h: ADD_SPECIAL | PARSE_SPECIAL, as llama.cpp). */
    flags |= LLORCH_TOKENIZE_PARSE_SPECIAL;
  } else {
    if (!prompt) {
      rc = request_fail(err, 400, "invalid_request_error", "missing_field", "prompt",
                        api == WORKER_API_NATIVE ? "one of 'messages' or 'prompt' is required"
                                                 : "'prompt' is required");
      goto fail;
    }
    if (cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) == 1 &&
        cJSON_IsString(prompt->child))
      prompt = prompt->child;
    if (!cJSON_IsString(prompt)) {
      rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "prompt",
                        "'prompt' must be a string (or an array of exactly one string)");
      goto fail;
    }
    llorch_jbuf_cstr(&text, prompt->valuestring);
  }
  if (text.len == 0 && !use_chat) {
    rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "prompt",
                      "'prompt' is empty");
    goto fail;
  }
  st->tok_flags = flags;
  st->prompt_param = use_chat ? "messages" : "prompt";

  /* job id (native) */
  char idbuf[72];
  const char *job_id = NULL;
  if (api == WORKER_API_NATIVE) {
    if (llorch_json_get_string(body, NULL, "job_id", false, &job_id, &em) < 0) {
      rc = request_fail_field(err, &em);
      goto fail;
    }
    if (job_id && !request_job_id_valid(job_id)) {
      rc = request_fail(err, 400, "invalid_request_error", "invalid_value", "job_id",
                        "'job_id' must be 1..64 characters of [A-Za-z0-9._:-]");
      goto fail;
    }
  }
  if (!job_id) {
    snprintf(idbuf, sizeof idbuf, "job-%llu", (unsigned long long)++w->next_id);
    job_id = idbuf;
  }

  j = worker_job_new(job_id, NULL, 0);
  if (!j) {
    rc = request_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    goto fail;
  }
  snprintf(j->request_id, sizeof j->request_id, "%s", st->request_id);

  /* limits */
  int64_t max_tokens = 0;
  if (llorch_json_get_int(body, NULL, "max_tokens", false, 1, 1 << 30, &max_tokens, &em) < 0 ||
      (api == WORKER_API_CHAT &&
       llorch_json_get_int(body, NULL, "max_completion_tokens", false, 1, 1 << 30, &max_tokens,
                           &em) < 0)) {
    rc = request_fail_field(err, &em);
    goto fail;
  }
  j->max_tokens = (uint32_t)max_tokens; /* 0 = all that fits; the scheduler clamps */
  if (llorch_json_get_bool(body, NULL, "ignore_eos", false, &j->ignore_eos, &em) < 0) {
    rc = request_fail_field(err, &em);
    goto fail;
  }
  if ((rc = request_stop(w, body, j, err)) < 0) goto fail;
  if ((rc = request_sampling(api, body, &j->sp, &j->want_logprobs, err)) < 0) goto fail;

  st->prompt_text = text; /* moves to the stream */
  *out = j;
  return 0;

fail:
  worker_job_free(j);
  llorch_jbuf_free(&text);
  return rc < 0 ? rc : LLORCH_EINVAL;
}

void worker_request_tokenize(const worker *w, worker_stream *st) {
  const llorch_jbuf *t = &st->prompt_text;
  st->tok_rc = llorch_tokenize(w->tok, t->data ? t->data : "", t->len, st->tok_flags, &st->toks,
                               &st->tok_em);
}

int worker_request_finish(worker *w, worker_stream *st, worker_error *err) {
  if (st->tok_rc < 0)
    return request_fail(err, 400, "invalid_request_error", "invalid_value", st->prompt_param,
                        "the prompt cannot be tokenized: %s",
                        st->tok_em.text[0] ? st->tok_em.text : llorch_strerror(st->tok_rc));
  if (st->toks.n >= w->n_ctx)
    return request_fail(err, 400, "invalid_request_error", "context_length_exceeded",
                        st->prompt_param,
                        "This model's context is %u tokens per request, but the prompt has %zu "
                        "tokens (at least 1 token must remain for the completion)",
                        w->n_ctx, st->toks.n);
  if (worker_job_set_prompt(st->job, st->toks.ids, (uint32_t)st->toks.n) < 0)
    return request_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  llorch_tokens_free(&st->toks);
  llorch_jbuf_free(&st->prompt_text);
  return 0;
}
