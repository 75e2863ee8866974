/*
 * POST /v1/embeddings on the worker: the OpenAI layer checks the body, the
 * inputs are tokenized on the libuv thread pool (like prompts), and each
 * input becomes one embedding job in the scheduler (scheduler.h: pooling),
 * batched with whatever else runs: a long list of inputs neither blocks the
 * loop nor stalls running streams. At most as many jobs of one request as
 * there are slots are in the scheduler at a time (the next is submitted when
 * one ends), so a request of 2048 inputs counts once against the queue bound
 * and requests that arrive later are not queued behind all of its inputs. When every job has ended the pooled
 * vectors are truncated to `dimensions`, L2-normalised and written by the
 * OpenAI layer.
 *
 * Pooling: the model file's <arch>.pooling_type (llama.cpp's values) when it
 * has one; else "last" (the last token's hidden state), since in a causal
 * decoder only the last token has attended to the whole input. That is what
 * Qwen3-Embedding uses and what llama.cpp returns for a model without
 * pooling metadata (llama_get_embeddings_ith of the last token).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/log.h"
#include "llorch/reqid.h"
#include "worker-impl.h"

struct worker_embed {
  worker *w;
  llorch_http_request *req;       /* NULL once the client went away */
  size_t held_bytes;              /* counted in w->held_bytes until freed */
  char request_id[72];
  char model_echo[128];
  cJSON *body;                    /* the parsed request (the inputs point into it) */
  llorch_openai_embed_request r;
  int pooling;
  uint32_t dims;                  /* the answer's length */
  int n;                          /* inputs = jobs */
  llorch_tokens *toks;            /* (n) the inputs' tokens (thread pool) */
  int tok_rc, tok_bad;            /* first failure and its input */
  llorch_errmsg tok_em;
  uv_work_t work;                 /* tokenization, then writing the answer */
  llorch_jbuf out;                /* the answer (thread pool) */
  worker_job **jobs;              /* (n) */
  int n_submitted, n_final;       /* jobs submitted (in order), final events taken */
  uint32_t prompt_tokens;
  bool answered;                  /* an error went out: the rest is only waited for */
};

static void embed_free(worker_embed *e) {
  if (!e) return;
  e->w->held_bytes -= e->held_bytes;
  if (e->req) llorch_http_request_set_data(e->req, NULL, NULL);
  for (int i = 0; e->toks && i < e->n; i++) llorch_tokens_free(&e->toks[i]);
  free(e->toks);
  for (int i = 0; e->jobs && i < e->n; i++) worker_job_free(e->jobs[i]);
  free(e->jobs);
  cJSON_Delete(e->body);
  llorch_jbuf_free(&e->out);
  free(e);
}

/* The request, detached from e before it is answered: a response that
 * completes at once frees the request inside the respond call, so e must
 * not touch it afterwards (nor embed_free clear its data). */
static llorch_http_request *embed_take_req(worker_embed *e) {
  llorch_http_request *req = e->req;
  if (req) llorch_http_request_set_data(req, NULL, NULL);
  e->req = NULL;
  return req;
}

static void embed_fail(worker_embed *e, const llorch_openai_error *err) {
  if (e->req && !e->answered) {
    if (err->status >= 400 && err->status < 500)
      llorch_metric_inc(e->w->m.requests, (const char *[]){"invalid"}, 1);
    llorch_openai_respond_error(embed_take_req(e), err);
  }
  e->answered = true;
}

/* Cancels every submitted job that has not ended (client gone, or one failed). */
static void embed_cancel(worker_embed *e) {
  for (int i = 0; i < e->n_submitted; i++) worker_sched_cancel(e->w->sched, e->jobs[i]);
}

static void embed_on_gone(llorch_http_request *req, void *data) {
  (void)req;
  worker_embed *e = data;
  e->req = NULL;
  embed_cancel(e);
}

static void embed_on_gone_early(llorch_http_request *req, void *data) {
  (void)req;
  ((worker_embed *)data)->req = NULL;
}

/* Submits the next job. 0, or a negative code with err (nothing submitted). */
static int embed_submit_next(worker_embed *e, llorch_openai_error *err) {
  worker *w = e->w;
  llorch_errmsg em = {{0}};
  int rc = worker_sched_submit(w->sched, e->jobs[e->n_submitted], &em);
  if (rc == 0) {
    e->n_submitted++;
    return 0;
  }
  if (rc == LLORCH_EBUSY) {
    *err = (llorch_openai_error){.status = 503, .type = "server_error", .code = "overloaded",
                                 .retry_after_s = 1};
    w->n_rejected++;
    llorch_metric_inc(w->m.requests, (const char *[]){"rejected"}, 1);
  } else if (rc == LLORCH_ESTATE) {
    *err = (llorch_openai_error){.status = 503, .type = "server_error", .code = "not_ready",
                                 .retry_after_s = 1};
  } else if (rc == LLORCH_EUNSUPPORTED) {
    *err = (llorch_openai_error){.status = 501, .type = "invalid_request_error", .code = "unsupported"};
  } else if (rc == LLORCH_ENOMEM) {
    *err = (llorch_openai_error){.status = 500, .type = "server_error", .code = "internal_error"};
  } else {
    *err = (llorch_openai_error){.status = 400, .type = "invalid_request_error", .code = "invalid_value"};
  }
  snprintf(err->message, sizeof err->message, "%s", em.text);
  return rc;
}

/* ---- tokenization (thread pool: touches only e) ---- */

static void embed_tokenize_work(uv_work_t *work) {
  worker_embed *e = work->data;
  const worker *w = e->w;
  for (int i = 0; i < e->n && e->tok_rc == 0; i++) {
    const char *text;
    const cJSON *ids;
    llorch_openai_embed_input(&e->r, i, &text, &ids);
    if (text) {
      /* BOS/EOS as the model's tokenizer says (llama-server's embeddings do
       * the same); special-token text in the input stays text */
      e->tok_rc = llorch_tokenize(w->tok, text, strlen(text), LLORCH_TOKENIZE_ADD_SPECIAL,
                                  &e->toks[i], &e->tok_em);
    } else {
      for (const cJSON *id = ids->child; id && e->tok_rc == 0; id = id->next) {
        if (id->valuedouble >= (double)w->model->hp.n_vocab) {
          e->tok_rc = llorch_errmsg_set(&e->tok_em, LLORCH_EINVAL,
                                        "token id %.0f is outside this model's vocabulary of %u "
                                        "tokens", id->valuedouble, w->model->hp.n_vocab);
          break;
        }
        e->tok_rc = llorch_tokens_push(&e->toks[i], (int32_t)id->valuedouble);
      }
    }
    if (e->tok_rc) e->tok_bad = i;
  }
}

/* The param naming input i: "input" for a single input, else "input[i]". */
static const char *embed_param(const worker_embed *e, int i, char *buf, size_t cap) {
  if (cJSON_IsString(e->r.input) || (e->r.ids && cJSON_IsNumber(e->r.input->child))) return "input";
  return llorch_json_path_index(buf, cap, NULL, "input", (size_t)i);
}

static void embed_tokenize_done(uv_work_t *work, int status) {
  worker_embed *e = work->data;
  worker *w = e->w;
  llorch_openai_error err = {0};
  char param[64];
  if (!e->req || status < 0) {
    embed_free(e);
    return;
  }
  llorch_http_request_set_data(e->req, NULL, NULL);
  if (e->tok_rc < 0) {
    const char *p = embed_param(e, e->tok_bad, param, sizeof param);
    if (e->tok_rc == LLORCH_ENOMEM) llorch_openai_fail(&err, 500, "server_error", "internal_error", NULL, "out of memory");
    else llorch_openai_fail(&err, 400, "invalid_request_error", "invalid_value", p, "'%s' cannot be used: %s", p,
                            e->tok_em.text[0] ? e->tok_em.text : llorch_strerror(e->tok_rc));
    goto fail;
  }
  /* every input checked before any job runs: one bad input refuses the request */
  for (int i = 0; i < e->n; i++) {
    const char *p = embed_param(e, i, param, sizeof param);
    if (e->toks[i].n == 0) {
      llorch_openai_fail(&err, 400, "invalid_request_error", "invalid_value", p,
                         "'%s' has no tokens; nothing to embed", p);
      goto fail;
    }
    if (e->toks[i].n >= w->n_ctx) {
      llorch_openai_fail(&err, 400, "invalid_request_error", "context_length_exceeded", p,
                         "'%s' has %zu tokens; this model's context is %u tokens per request "
                         "(at most %u per input)", p, e->toks[i].n, w->n_ctx, w->n_ctx - 1);
      goto fail;
    }
  }
  char rnd[LLORCH_REQID_MAX + 1];
  llorch_reqid_generate(rnd);
  for (int i = 0; i < e->n; i++) {
    char id[72];
    snprintf(id, sizeof id, "embd-%.32s-%d", rnd, i);
    worker_job *j = worker_job_new(id, e->toks[i].ids, (uint32_t)e->toks[i].n);
    if (!j) {
      llorch_openai_fail(&err, 500, "server_error", "internal_error", NULL, "out of memory");
      goto fail;
    }
    llorch_tokens_free(&e->toks[i]);
    snprintf(j->request_id, sizeof j->request_id, "%s", e->request_id);
    j->pooling = e->pooling;
    j->queue_exempt = i > 0;
    j->owner = e;
    e->jobs[i] = j;
  }
  const int first = e->n < (int)w->n_slots ? e->n : (int)w->n_slots;
  for (int i = 0; i < first; i++)
    if (embed_submit_next(e, &err) < 0) goto fail_submitted;
  llorch_http_request_set_data(e->req, e, embed_on_gone);
  LOG_DEBUG("worker", e->request_id, "embeddings: %d inputs queued (pooling %s)", e->n,
            llorch_pooling_name(e->pooling));
  worker_metrics_refresh(w);
  return;

fail_submitted:
  if (e->n_submitted) {
    /* the jobs already queued end as cancelled; their events free e */
    embed_fail(e, &err);
    embed_cancel(e);
    return;
  }
fail:
  embed_fail(e, &err);
  embed_free(e);
}

/* ---- the route ---- */

void worker_embed_route(worker *w, llorch_http_request *req, cJSON *json, size_t len) {
  llorch_openai_error err = {0};
  worker_embed *e = calloc(1, sizeof *e);
  if (!e) {
    cJSON_Delete(json);
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  e->w = w;
  e->req = req;
  llorch_jbuf_init(&e->out);
  e->body = json;
  e->held_bytes = len;
  w->held_bytes += len;
  snprintf(e->request_id, sizeof e->request_id, "%s", llorch_http_request_id(req));
  if (llorch_openai_embed_parse(e->body, &e->r, &err) < 0) goto fail;
  if (e->r.model && !worker_model_name_matches(w, e->r.model)) {
    llorch_openai_fail(&err, 404, "invalid_request_error", "model_not_found", "model",
                       "The model '%s' does not exist on this worker; it serves '%s' (file %s)",
                       e->r.model, w->model_name, w->file_base);
    goto fail;
  }
  snprintf(e->model_echo, sizeof e->model_echo, "%s", e->r.model ? e->r.model : w->model_name);
  const uint32_t n_embd = w->model->hp.n_embd;
  if (e->r.dimensions > n_embd) {
    llorch_openai_fail(&err, 400, "invalid_request_error", "invalid_value", "dimensions",
                       "'dimensions' is %u but this model's embeddings have %u values; ask for "
                       "1 to %u", e->r.dimensions, n_embd, n_embd);
    goto fail;
  }
  e->dims = e->r.dimensions ? e->r.dimensions : n_embd;
  const int pooling = w->model->hp.pooling;
  e->pooling = pooling == LLORCH_POOLING_UNSET ? LLORCH_POOLING_LAST : pooling;
  if (e->pooling != LLORCH_POOLING_MEAN && e->pooling != LLORCH_POOLING_CLS &&
      e->pooling != LLORCH_POOLING_LAST) {
    llorch_openai_fail(&err, 400, "invalid_request_error", "model_not_supported", "model",
                       "this model's file says %s.pooling_type %d (%s); /v1/embeddings needs "
                       "mean, cls or last pooling", w->model->arch_name, pooling,
                       llorch_pooling_name(pooling));
    goto fail;
  }
  if (!w->backend.ops->forward_hidden) {
    llorch_openai_fail(&err, 501, "invalid_request_error", "unsupported", NULL,
                       "embeddings are not supported on this device (%s): its backend returns "
                       "no hidden states", w->cfg->worker.device ? w->cfg->worker.device : "cpu");
    goto fail;
  }
  e->n = e->r.n_inputs;
  e->toks = calloc((size_t)e->n, sizeof *e->toks);
  e->jobs = calloc((size_t)e->n, sizeof *e->jobs);
  if (!e->toks || !e->jobs) {
    llorch_openai_fail(&err, 500, "server_error", "internal_error", NULL, "out of memory");
    goto fail;
  }
  /* The tokens are what the jobs hold: not the raw body too. */
  llorch_http_request_release_body(req);
  llorch_http_request_set_data(req, e, embed_on_gone_early);
  e->work.data = e;
  if (uv_queue_work(w->loop, &e->work, embed_tokenize_work, embed_tokenize_done) != 0) {
    llorch_http_request_set_data(req, NULL, NULL);
    llorch_openai_fail(&err, 500, "server_error", "internal_error", NULL,
                       "cannot queue the tokenization");
    goto fail;
  }
  return;

fail:
  embed_fail(e, &err);
  embed_free(e);
}

/* ---- events ---- */

/* The answer is written on the thread pool: 2048 inputs of a wide model are
 * millions of numbers to format, seconds the loop (and every stream on it)
 * must not wait. Touches only e. */
static void embed_write_work(uv_work_t *work) {
  worker_embed *e = work->data;
  const uint32_t n_embd = e->w->model->hp.n_embd;
  const float **vecs = malloc((size_t)e->n * sizeof *vecs);
  if (!vecs) {
    e->out.err = LLORCH_ENOMEM;
    return;
  }
  for (int i = 0; i < e->n; i++) {
    llorch_openai_embed_finish_vector(e->jobs[i]->embd, n_embd, e->dims, true);
    vecs[i] = e->jobs[i]->embd;
  }
  llorch_openai_write_embeddings(&e->out, e->model_echo, vecs, e->n, e->dims, e->r.encoding,
                                 e->prompt_tokens);
  free(vecs);
}

static void embed_write_done(uv_work_t *work, int status) {
  worker_embed *e = work->data;
  worker *w = e->w;
  if (!e->req) {
    w->n_cancelled++;
  } else if (status < 0 || llorch_jbuf_error(&e->out) < 0) {
    llorch_http_respond_error(embed_take_req(e), 500, "server_error",
                              status < 0 ? "the worker is shutting down" : "out of memory", NULL,
                              "internal_error");
    w->n_failed++;
  } else {
    llorch_http_respond(embed_take_req(e), 200, "application/json", e->out.data, e->out.len);
    w->n_completed++;
    llorch_metric_inc(w->m.requests, (const char *[]){"completed"}, 1);
    llorch_metric_inc(w->m.prompt_tokens, NULL, e->prompt_tokens);
  }
  embed_free(e);
}

void worker_embed_event(worker *w, const worker_event *ev) {
  worker_embed *e = ev->job->owner;
  switch (ev->kind) {
  case WORKER_EV_STARTED:
    llorch_metric_observe(w->m.queue_wait, NULL, ev->queue_ms / 1000.0);
    return;
  case WORKER_EV_TOKEN: return; /* embedding jobs generate nothing */
  case WORKER_EV_PROMPT: return; /* nor ask for prompt logprobs */
  case WORKER_EV_END:
    e->prompt_tokens += ev->prompt_tokens;
    if (ev->finish != WORKER_FINISH_CANCELLED && e->req && !e->answered && e->n_submitted < e->n) {
      llorch_openai_error err;
      if (embed_submit_next(e, &err) < 0) {
        embed_fail(e, &err);
        embed_cancel(e);
      }
    }
    if (ev->finish == WORKER_FINISH_CANCELLED && !e->answered) {
      llorch_openai_error err;
      llorch_openai_fail(&err, 503, "server_error", "cancelled", NULL, "the embedding job was cancelled");
      embed_fail(e, &err);
      embed_cancel(e);
    }
    break;
  case WORKER_EV_ERROR:
    if (!e->answered) {
      llorch_openai_error err;
      llorch_openai_fail(&err, ev->retriable ? 503 : 500, "server_error", ev->code, NULL, "%s",
                         ev->message);
      if (ev->retriable) err.retry_after_s = 1;
      embed_fail(e, &err);
      w->n_failed++;
      embed_cancel(e);
    }
    break;
  }
  if (++e->n_final < e->n_submitted) return;
  if (!e->answered && e->req) {
    e->work.data = e;
    if (uv_queue_work(w->loop, &e->work, embed_write_work, embed_write_done) == 0) return;
    llorch_http_respond_error(embed_take_req(e), 500, "server_error", "cannot queue the answer", NULL,
                              "internal_error");
  } else if (!e->answered) {
    w->n_cancelled++; /* the client went away */
  }
  embed_free(e);
}
