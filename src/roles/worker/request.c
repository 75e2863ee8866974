/*
 * Request bodies -> jobs: every field checked with an error that names it,
 * the prompt rendered (chat) and tokenized, sampling and limits set.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/log.h"
#include "llorch/reqid.h"
#include "worker-impl.h"

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
 * Renders the chat prompt of r with the model's own template (chat.h) into
 * out. The context is the OpenAI layer's (messages normalised, tools,
 * add_generation_prompt, chat_template_kwargs); bos_token and eos_token come
 * from the model, not the request. A template error is the client's: 400
 * with the template's message.
 */
static int request_render_chat(worker *w, const llorch_openai_request *r, llorch_jinja_output *out,
                               llorch_openai_error *err) {
  if (!w->chat)
    return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", "messages",
                              "this model has no usable chat template (%s); use /v1/completions",
                              w->chat_error);
  cJSON *ctx = llorch_openai_chat_context(r);
  if (!ctx) return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  llorch_errmsg em = {{0}};
  int rc = llorch_chat_render(w->chat, ctx, 0, out, &em);
  cJSON_Delete(ctx);
  if (rc == LLORCH_ENOMEM)
    return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  if (rc < 0)
    return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", "messages",
                              "the model's chat template refused the request: %s", em.text);
  return 0;
}

/* Does text end with marker, maybe followed by whitespace? */
static bool request_ends_with(const char *text, size_t n, const char *marker) {
  size_t k = strlen(marker);
  while (n && (text[n - 1] == ' ' || text[n - 1] == '\n')) n--;
  return n >= k && memcmp(text + n - k, marker, k) == 0;
}

/* The rendered chat prompt of st's request (a sibling reads its lead's). */
static const llorch_jinja_output *request_chat_prompt(const worker_stream *st) {
  return st->lead ? &st->lead->chat_prompt : &st->chat_prompt;
}

/* The generated-text parser of a chat stream: tools (unless tool_choice
 * none), the reasoning split, where the prompt left off. */
static int request_output_setup(worker *w, const llorch_openai_request *r, worker_stream *st,
                                llorch_openai_error *err) {
  llorch_reasoning_format rf = r->reasoning_format ? r->reasoning_format : w->reasoning_default;
  llorch_openai_output_opts o = {0};
  bool tools = r->tools && r->tool_choice != LLORCH_OPENAI_TOOL_CHOICE_NONE;
  if (tools) {
    st->tools = cJSON_Duplicate(r->tools, true);
    if (!st->tools) goto oom;
  }
  o.format = tools ? w->tool_format : LLORCH_TOOL_FORMAT_NONE;
  o.tool_list = st->tools;
  o.reasoning = rf != LLORCH_REASONING_NONE;
  /* Qwen3 and DeepSeek-R1 open <think> in the generation prompt: the output
   * starts inside the thinking. */
  const llorch_jinja_output *cp = request_chat_prompt(st);
  const char *p = cp->text ? cp->text : "";
  o.start_in_reasoning = request_ends_with(p, cp->len, "<think>");
  o.start_in_recipient = request_ends_with(p, cp->len, ">>>");
  st->out = llorch_openai_output_new(&o, worker_stream_on_delta, st);
  if (!st->out) goto oom;
  return 0;
oom:
  return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
}

/* ---- logit_bias ---- */

/* The request's logit_bias (format checked by the OpenAI layer) as the job's
 * array, each id checked against this model's vocabulary. */
static int request_logit_bias(const worker *w, const llorch_openai_request *r, worker_job *j,
                              llorch_openai_error *err) {
  if (!r->logit_bias) return 0;
  int n = cJSON_GetArraySize(r->logit_bias);
  j->logit_bias = calloc((size_t)n, sizeof *j->logit_bias);
  if (!j->logit_bias) return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  uint32_t n_vocab = w->model->hp.n_vocab;
  int i = 0;
  for (const cJSON *e = r->logit_bias->child; e; e = e->next, i++) {
    long id = strtol(e->string, NULL, 10);
    if (id >= (long)n_vocab)
      return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", "logit_bias",
                                "'logit_bias' names token %ld, but this model's vocabulary has %u tokens", id,
                                n_vocab);
    j->logit_bias[i] = (llorch_logit_bias){.id = (int32_t)id, .bias = (float)e->valuedouble};
  }
  j->sp.logit_bias = j->logit_bias;
  j->sp.n_logit_bias = (uint32_t)n;
  return 0;
}

/* ---- structured output ---- */

/*
 * tool_choice "required" or a named function: the output is forced to be one
 * call in the model's tool-call syntax (grammar.h llorch_grammar_for_tools).
 * Only the JSON-bodied syntaxes can be written as prefix + JSON + suffix;
 * for the others (Qwen3-Coder's XML, DeepSeek's and Functionary's markers)
 * and for prompts that open a thinking block the choice is not enforced
 * (*out stays NULL).
 */
static int request_tool_grammar(worker *w, const llorch_openai_request *r, const worker_stream *st,
                                llorch_grammar **out, llorch_errmsg *em) {
  *out = NULL;
  if (!r->chat || !r->tools || (r->tool_choice != LLORCH_OPENAI_TOOL_CHOICE_REQUIRED &&
                                r->tool_choice != LLORCH_OPENAI_TOOL_CHOICE_NAMED))
    return 0;
  const char *prefix = NULL, *suffix = NULL;
  switch (w->tool_format) {
  case LLORCH_TOOL_FORMAT_HERMES:
    prefix = "<tool_call>\n";
    suffix = "\n</tool_call>";
    break;
  case LLORCH_TOOL_FORMAT_MISTRAL:
    prefix = "[TOOL_CALLS][";
    suffix = "]";
    break;
  case LLORCH_TOOL_FORMAT_JSON:
  case LLORCH_TOOL_FORMAT_LLAMA3: /* a bare {"name", "arguments"} object */
    break;
  default:
    return 0;
  }
  const llorch_jinja_output *cp = request_chat_prompt(st);
  if (request_ends_with(cp->text ? cp->text : "", cp->len, "<think>")) return 0;
  const char *name = r->tool_choice_name;
  return llorch_grammar_for_tools(r->tools, name ? &name : NULL, name ? 1 : 0, prefix, suffix, NULL,
                                  out, em);
}

/*
 * response_format / grammar (or a forced tool call) -> the job's grammar
 * state (grammar.h parses and compiles; one implementation for every
 * role). A non-strict schema's ignored keyword is reported in an
 * X-Llorch-Warning response header.
 */
static int request_structured(worker *w, const cJSON *body, const llorch_openai_request *r,
                              worker_stream *st, worker_job *j, llorch_openai_error *err) {
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  char param[96], warning[256];
  int rc = llorch_grammar_from_request(body, NULL, &g, param, sizeof param, warning,
                                       sizeof warning, &em);
  if (rc == 0 && !g) {
    snprintf(param, sizeof param, "tools");
    rc = request_tool_grammar(w, r, st, &g, &em);
  }
  if (rc == LLORCH_ENOMEM)
    return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  if (rc < 0)
    return llorch_openai_fail(err, 400, "invalid_request_error",
                              rc == LLORCH_EUNSUPPORTED ? "unsupported_value" : "invalid_value",
                              param, "%s", em.text);
  if (!g) return 0;
  rc = llorch_grammar_state_init(&j->grammar, g, w->gvocab, &em);
  llorch_grammar_free(g); /* the state holds its own reference */
  if (rc < 0)
    return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "%s", em.text);
  if (warning[0] && st->req) llorch_http_response_header(st->req, "X-Llorch-Warning", warning);
  return 0;
}

/* Test hook: the first scripted reply whose "match" occurs in the prompt. */
static const char *request_script_reply(const worker *w, const char *prompt) {
  for (const cJSON *e = w->script ? w->script->child : NULL; e; e = e->next) {
    const cJSON *match = cJSON_GetObjectItemCaseSensitive(e, "match");
    const cJSON *reply = cJSON_GetObjectItemCaseSensitive(e, "reply");
    if (cJSON_IsString(match) && cJSON_IsString(reply) && prompt &&
        strstr(prompt, match->valuestring))
      return reply->valuestring;
  }
  return NULL;
}

/* ---- build ---- */

/* worker_request_build, or with lead != st a sibling's (see worker-impl.h). */
static int request_build(worker *w, llorch_openai_api api, const cJSON *body, worker_stream *st,
                         worker_job **out, llorch_openai_error *err) {
  *out = NULL;
  const worker_stream *lead = st->lead && st->lead != st ? st->lead : NULL;
  llorch_openai_request r;
  worker_job *j = NULL;
  llorch_jbuf text;
  llorch_jbuf_init(&text);
  llorch_openai_limits lim = llorch_openai_limits_from_config(w->cfg);
  int rc = llorch_openai_request_parse(body, api, &lim, &r, err);
  if (rc < 0) goto fail;

  if (r.model && !worker_model_name_matches(w, r.model)) {
    rc = llorch_openai_fail(err, 404, "invalid_request_error", "model_not_found", "model",
                            "The model '%s' does not exist on this worker; it serves '%s' (file %s)",
                            r.model, w->model_name, w->file_base);
    goto fail;
  }
  snprintf(st->model_echo, sizeof st->model_echo, "%s", r.model ? r.model : w->model_name);
  st->stream = r.stream;
  st->include_usage = r.include_usage;
  st->chat = r.chat;
  if (!lead) st->n_choices = r.n;

  unsigned flags = LLORCH_TOKENIZE_ADD_SPECIAL;
  /* A sibling has no prompt of its own: the lead's tokens are copied into
   * its job once they exist (worker_request_finish). */
  if (!lead && r.chat) {
    /* tokenized by llorch_chat_tokenize: special tokens only where the
     * template wrote them */
    if ((rc = request_render_chat(w, &r, &st->chat_prompt, err)) < 0) goto fail;
  } else if (!lead) {
    llorch_jbuf_cstr(&text, r.prompt);
  }
  if (r.suffix) {
    int32_t fim[3];
    if (!llorch_tokenizer_fim(w->tok, fim)) {
      rc = llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", "suffix",
                              "'suffix' needs a model with fill-in-the-middle tokens "
                              "(<|fim_prefix|>/<|fim_suffix|>/<|fim_middle|>, <PRE>/<SUF>/<MID>, "
                              "<fim_prefix>/...); %s has none", w->model_name);
      goto fail;
    }
    st->fim = true;
    if (!lead) llorch_jbuf_cstr(&st->suffix_text, r.suffix);
  }
  if (r.echo && !lead) {
    st->echo_len = strlen(r.prompt);
    st->echo_text = malloc(st->echo_len + 1);
    if (!st->echo_text) {
      rc = llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
      goto fail;
    }
    memcpy(st->echo_text, r.prompt, st->echo_len + 1);
  }
  if (llorch_jbuf_error(&text) < 0) {
    rc = llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    goto fail;
  }
  st->tok_flags = flags;
  st->prompt_param = r.chat ? "messages" : "prompt";

  char idbuf[72];
  /* The choices of one request share its job id: cancelling it cancels them all. */
  const char *job_id = lead ? lead->job->id : r.job_id;
  if (!job_id) {
    /* Random: a job id is what /v2/jobs/{id}/cancel takes. */
    char rnd[LLORCH_REQID_MAX + 1];
    llorch_reqid_generate(rnd);
    snprintf(idbuf, sizeof idbuf, "job-%.32s", rnd);
    ++w->next_id;
    job_id = idbuf;
  }
  j = worker_job_new(job_id, NULL, 0);
  if (!j) {
    rc = llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    goto fail;
  }
  snprintf(j->request_id, sizeof j->request_id, "%s", st->request_id);
  j->max_tokens = r.max_tokens; /* 0 = all that fits; the scheduler clamps */
  j->ignore_eos = r.ignore_eos;
  for (int i = 0; i < r.n_stop; i++) {
    if (worker_job_add_stop(j, r.stop[i], strlen(r.stop[i])) < 0) {
      rc = llorch_openai_fail(err, 500, "server_error", "internal_error", "stop", "out of memory");
      goto fail;
    }
  }

  /* sampling */
  llorch_sampler_params *sp = &j->sp;
  llorch_sampler_params_default(sp);
  sp->temperature = (float)r.temperature;
  sp->top_p = (float)r.top_p;
  sp->min_p = (float)r.min_p;
  sp->top_k = (int32_t)r.top_k;
  sp->presence_penalty = (float)r.presence_penalty;
  sp->frequency_penalty = (float)r.frequency_penalty;
  sp->repetition_penalty = (float)r.repetition_penalty;
  if (r.has_seed) {
    /* n > 1 with a seed: reproducible, and the choices still differ */
    sp->seed = (uint64_t)r.seed + (uint64_t)st->choice;
  } else {
    /* Unseeded requests still differ from each other. */
    static uint64_t counter;
    sp->seed = uv_hrtime() ^ (++counter * 0x9E3779B97F4A7C15ull);
  }
  j->want_logprobs = r.logprobs;
  /* echo computes the prompt's logprobs whether they are shown or not (the
   * PROMPT event brings the prompt's text out first) */
  j->prompt_logprobs = r.echo;
  j->prompt_only = r.prompt_only;
  sp->n_logprobs = r.top_logprobs;
  if ((rc = request_logit_bias(w, &r, j, err)) < 0) goto fail;
  llorch_errmsg vem = {{0}};
  if (llorch_sampler_params_validate(sp, &vem) < 0) {
    rc = llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", NULL, "%s",
                            vem.text);
    goto fail;
  }

  if ((rc = request_structured(w, body, &r, st, j, err)) < 0) goto fail;

  st->prompt_text = text; /* moves to the stream */
  llorch_jbuf_init(&text);
  if (r.chat) {
    if ((rc = request_output_setup(w, &r, st, err)) < 0) goto fail;
    /* Markers such as <|python_tag|> or [TOOL_CALLS] are special tokens:
     * the parser has to see their text. */
    if (st->tools) j->detok_flags = LLORCH_DETOK_RENDER_SPECIAL;
  }
  st->script_reply = lead ? lead->script_reply
                          : request_script_reply(w, r.chat ? st->chat_prompt.text : st->prompt_text.data);
  *out = j;
  return 0;

fail:
  worker_job_free(j);
  llorch_jbuf_free(&text);
  return rc < 0 ? rc : LLORCH_EINVAL;
}

int worker_request_build(worker *w, llorch_openai_api api, const cJSON *body, worker_stream *st,
                         worker_job **out, llorch_openai_error *err) {
  return request_build(w, api, body, st, out, err);
}

int worker_request_build_sibling(worker *w, const cJSON *body, worker_stream *lead, int choice,
                                 worker_stream *st, llorch_openai_error *err) {
  st->lead = lead;
  st->choice = choice;
  worker_job *j = NULL;
  int rc = request_build(w, lead->api, body, st, &j, err);
  if (rc < 0) return rc;
  j->owner = st;
  st->job = j;
  return 0;
}

void worker_request_tokenize(const worker *w, worker_stream *st) {
  const llorch_jbuf *t = &st->prompt_text;
  if (st->chat_prompt.text) {
    st->tok_rc = llorch_chat_tokenize(w->tok, &st->chat_prompt, &st->toks, &st->tok_em);
  } else if (st->fim) {
    /* as llama.cpp's server builds /infill: [BOS] PRE prefix SUF suffix MID,
     * prefix and suffix plain text */
    int32_t fim[3];
    llorch_tokenizer_fim(w->tok, fim);
    const llorch_jbuf *sx = &st->suffix_text;
    int32_t bos = llorch_tokenizer_bos(w->tok);
    st->tok_rc = 0;
    if (llorch_tokenizer_add_bos(w->tok) && bos >= 0) st->tok_rc = llorch_tokens_push(&st->toks, bos);
    if (st->tok_rc == 0) st->tok_rc = llorch_tokens_push(&st->toks, fim[0]);
    if (st->tok_rc == 0)
      st->tok_rc = llorch_tokenize(w->tok, t->data ? t->data : "", t->len, LLORCH_TOKENIZE_DEFAULT,
                                   &st->toks, &st->tok_em);
    if (st->tok_rc == 0) st->tok_rc = llorch_tokens_push(&st->toks, fim[1]);
    if (st->tok_rc == 0)
      st->tok_rc = llorch_tokenize(w->tok, sx->data ? sx->data : "", sx->len,
                                   LLORCH_TOKENIZE_DEFAULT, &st->toks, &st->tok_em);
    if (st->tok_rc == 0) st->tok_rc = llorch_tokens_push(&st->toks, fim[2]);
  } else
    st->tok_rc = llorch_tokenize(w->tok, t->data ? t->data : "", t->len, st->tok_flags, &st->toks,
                                 &st->tok_em);
  if (st->tok_rc == 0 && st->script_reply)
    st->tok_rc = llorch_tokenize(w->tok, st->script_reply, strlen(st->script_reply),
                                 LLORCH_TOKENIZE_PARSE_SPECIAL, &st->script_toks, &st->tok_em);
}

int worker_request_finish(worker *w, worker_stream *st, llorch_openai_error *err) {
  if (st->tok_rc < 0)
    return llorch_openai_fail(err, 400, "invalid_request_error", "invalid_value", st->prompt_param,
                        "the prompt cannot be tokenized: %s",
                        st->tok_em.text[0] ? st->tok_em.text : llorch_strerror(st->tok_rc));
  if (st->toks.n >= w->n_ctx)
    return llorch_openai_fail(err, 400, "invalid_request_error", "context_length_exceeded",
                        st->prompt_param,
                        "This model's context is %u tokens per request, but the prompt has %zu "
                        "tokens (at least 1 token must remain for the completion)",
                        w->n_ctx, st->toks.n);
  if (worker_job_set_prompt(st->job, st->toks.ids, (uint32_t)st->toks.n) < 0)
    return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  if (st->script_reply) {
    /* the test hook's tokens, moved into the job */
    st->job->script = st->script_toks.ids;
    st->job->n_script = (uint32_t)st->script_toks.n;
    st->script_toks.ids = NULL;
    st->script_toks.n = 0;
  }
  /* n > 1: the other choices compute from the same tokens */
  for (int i = 1; st->sibs && i < st->n_choices; i++) {
    worker_job *sj = st->sibs[i]->job;
    if (worker_job_set_prompt(sj, st->job->prompt, st->job->n_prompt) < 0)
      return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    if (st->job->script) {
      sj->script = malloc(st->job->n_script * sizeof *sj->script);
      if (!sj->script)
        return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
      memcpy(sj->script, st->job->script, st->job->n_script * sizeof *sj->script);
      sj->n_script = st->job->n_script;
    }
  }
  llorch_tokens_free(&st->toks);
  llorch_jbuf_free(&st->prompt_text);
  llorch_jbuf_free(&st->suffix_text);
  llorch_jinja_output_free(&st->chat_prompt);
  return 0;
}
