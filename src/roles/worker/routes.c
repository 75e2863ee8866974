/*
 * The worker's endpoints (docs/worker-api.md): health, metrics, the OpenAI
 * API, the native API. Authentication first, then the route.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/log.h"
#include "worker-impl.h"

/* ---- finished ids (idempotent cancel) ---- */

void worker_remember_finished(worker *w, const char *id) {
  snprintf(w->finished_ids[w->finished_next], sizeof w->finished_ids[0], "%s", id);
  w->finished_next = (w->finished_next + 1) % WORKER_FINISHED_IDS;
}

static bool routes_was_finished(const worker *w, const char *id) {
  for (unsigned i = 0; i < WORKER_FINISHED_IDS; i++)
    if (w->finished_ids[i][0] && strcmp(w->finished_ids[i], id) == 0) return true;
  return false;
}

static worker_stream *routes_find_stream(worker *w, const char *id) {
  for (worker_stream *st = w->streams; st; st = st->next)
    if (strcmp(st->job->id, id) == 0) return st;
  return NULL;
}

static const char *routes_state_name(worker_state s) {
  switch (s) {
  case WORKER_STATE_LOADING: return "loading";
  case WORKER_STATE_READY: return "ready";
  case WORKER_STATE_DRAINING: return "draining";
  default: return "failed";
  }
}

/* ---- generation endpoints ---- */

static void routes_not_ready(worker *w, llorch_http_request *req) {
  llorch_openai_error err = {.status = 503, .type = "server_error", .code = "not_ready",
                      .retry_after_s = 1};
  snprintf(err.message, sizeof err.message, "the worker is %s and takes no requests now",
           routes_state_name(w->state));
  llorch_openai_respond_error(req, &err);
}

/* Frees a stream that never reached the scheduler. */
static void routes_stream_discard(worker_stream *st) {
  st->w->held_bytes -= st->held_bytes;
  worker_stream_destroy(st);
}

static void routes_fail(worker *w, llorch_http_request *req, const llorch_openai_error *err) {
  if (err->status >= 400 && err->status < 500)
    llorch_metric_inc(w->m.requests, (const char *[]){"invalid"}, 1);
  llorch_openai_respond_error(req, err);
}

/* The client left while its prompt was being tokenized. */
static void routes_on_gone_early(llorch_http_request *req, void *data) {
  worker_stream *st = data;
  st->req = NULL;
}

static void routes_tokenize_work(uv_work_t *work) {
  worker_stream *st = work->data;
  worker_request_tokenize(st->w, st);
}

/* Back on the loop with the tokens: check, submit, attach. */
static void routes_tokenize_done(uv_work_t *work, int status) {
  worker_stream *st = work->data;
  worker *w = st->w;
  llorch_http_request *req = st->req;
  if (!req) {
    routes_stream_discard(st);
    return;
  }
  llorch_http_request_set_data(req, NULL, NULL);
  llorch_openai_error err = {0};
  llorch_errmsg em = {{0}};
  if (worker_request_finish(w, st, &err) < 0) goto fail;
  worker_job *job = st->job;
  if (st->api == LLORCH_OPENAI_NATIVE && routes_find_stream(w, job->id)) {
    err = (llorch_openai_error){.status = 409, .type = "invalid_request_error", .code = "duplicate_job"};
    snprintf(err.param, sizeof err.param, "job_id");
    snprintf(err.message, sizeof err.message, "job '%s' is already queued or running", job->id);
    goto fail;
  }
  /* n > 1: every choice at once, the first one leading (its prompt blocks
   * are computed once and reused by the others from the prefix cache) */
  worker_job *jobs[LLORCH_OPENAI_MAX_N];
  int n_jobs = st->sibs ? st->n_choices : 1;
  for (int i = 0; i < n_jobs; i++) jobs[i] = st->sibs ? st->sibs[i]->job : job;
  int rc = w->sched ? worker_sched_submit_group(w->sched, jobs, n_jobs, &em)
                    : llorch_errmsg_set(&em, LLORCH_ESTATE, "the worker is not ready");
  if (rc < 0) {
    if (rc == LLORCH_EBUSY) {
      err = (llorch_openai_error){.status = 503, .type = "server_error", .code = "overloaded",
                           .retry_after_s = 1};
      w->n_rejected++;
      llorch_metric_inc(w->m.requests, (const char *[]){"rejected"}, 1);
    } else if (rc == LLORCH_ESTATE) {
      err = (llorch_openai_error){.status = 503, .type = "server_error", .code = "not_ready",
                           .retry_after_s = 1};
    } else if (rc == LLORCH_ERANGE) {
      err = (llorch_openai_error){.status = 400, .type = "invalid_request_error",
                           .code = "context_length_exceeded"};
    } else {
      err = (llorch_openai_error){.status = 400, .type = "invalid_request_error",
                           .code = "invalid_value"};
    }
    snprintf(err.message, sizeof err.message, "%s", em.text);
    goto fail;
  }
  LOG_DEBUG("worker", st->request_id, "job %s queued: %u prompt tokens, max_tokens %u", job->id,
            job->n_prompt, job->max_tokens);
  st->n_open = n_jobs;
  worker_stream_attach(w, st);
  worker_metrics_refresh(w);
  return;

fail:
  routes_fail(w, req, &err);
  routes_stream_discard(st);
}

/* A stream with what every choice's starts with (no request, no job). */
static worker_stream *routes_stream_new(worker *w, llorch_openai_api api,
                                        llorch_openai_dialect dialect) {
  worker_stream *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->w = w;
  st->api = api;
  st->dialect = dialect;
  llorch_jbuf_init(&st->text);
  llorch_jbuf_init(&st->prompt_text);
  llorch_jbuf_init(&st->suffix_text);
  llorch_jbuf_init(&st->deltas);
  llorch_openai_message_init(&st->msg);
  llorch_openai_logprobs_init(&st->lp, api != LLORCH_OPENAI_COMPLETION);
  return st;
}

/*
 * n > 1: a stream per further choice, each with its own job, output parser
 * and answer, built from the same body (the same checks); they write to
 * the lead's request and are freed with it (worker_stream_destroy).
 */
static int routes_build_siblings(worker *w, const cJSON *body, worker_stream *lead,
                                 llorch_openai_error *err) {
  lead->sibs = calloc((size_t)lead->n_choices, sizeof *lead->sibs);
  if (!lead->sibs)
    return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
  lead->sibs[0] = lead;
  for (int i = 1; i < lead->n_choices; i++) {
    worker_stream *sib = routes_stream_new(w, lead->api, lead->dialect);
    if (!sib)
      return llorch_openai_fail(err, 500, "server_error", "internal_error", NULL, "out of memory");
    lead->sibs[i] = sib;
    sib->created = lead->created;
    snprintf(sib->resp_id, sizeof sib->resp_id, "%s", lead->resp_id);
    snprintf(sib->request_id, sizeof sib->request_id, "%s", lead->request_id);
    int rc = worker_request_build_sibling(w, body, lead, i, sib, err);
    if (rc < 0) return rc;
  }
  return 0;
}

/*
 * What every request body goes through: the worker must be ready, the bytes
 * budget, the JSON parse. NULL when the request was answered (503, 429,
 * 413, 400); *len gets the body's size.
 */
static cJSON *routes_parse_body(worker *w, llorch_http_request *req, size_t *len_out) {
  if (w->state != WORKER_STATE_READY) {
    routes_not_ready(w, req);
    return NULL;
  }
  size_t len;
  const char *body = llorch_http_request_body(req, &len);
  *len_out = len;
  /*
   * Bytes budget over everything the worker holds for requests (their
   * bodies' worth: prompt text, then tokens), whatever their number: a few
   * large queued prompts must not take the process's memory.
   */
  uint64_t max_bytes = w->cfg ? w->cfg->worker.queue_max_bytes : 0;
  if (max_bytes > 0 && w->held_bytes + len > max_bytes) {
    llorch_openai_error err = {.status = 429, .type = "rate_limit_error", .code = "overloaded",
                        .retry_after_s = 1};
    snprintf(err.message, sizeof err.message,
             "requests in progress already hold %llu bytes; this one (%zu bytes) would pass "
             "worker.queue_max_bytes (%llu)",
             (unsigned long long)w->held_bytes, len, (unsigned long long)max_bytes);
    w->n_rejected++;
    llorch_metric_inc(w->m.requests, (const char *[]){"rejected"}, 1);
    llorch_openai_respond_error(req, &err);
    return NULL;
  }
  cJSON *json = NULL;
  llorch_errmsg em = {{0}};
  size_t max_values = w->cfg ? (size_t)w->cfg->request.max_json_values : 65536;
  int prc = llorch_json_parse_bounded(body, len, max_values, "request.max_json_values", &json, &em);
  if (prc < 0) {
    llorch_http_respond_error(req, prc == LLORCH_ELIMIT ? 413 : 400, "invalid_request_error", em.text,
                              NULL, prc == LLORCH_ELIMIT ? "request_too_large" : "invalid_json");
    return NULL;
  }
  return json;
}

static void routes_embeddings(worker *w, llorch_http_request *req) {
  size_t len = 0;
  cJSON *json = routes_parse_body(w, req, &len);
  if (json) worker_embed_route(w, req, json, len);
}

static void routes_generate(worker *w, llorch_http_request *req, llorch_openai_api api,
                            llorch_openai_dialect dialect) {
  /* Resumable streams live at the orchestrator (it keeps the events): a
   * client asking a worker for one is told so rather than silently served
   * a stream that a disconnect cancels. */
  const char *resumable = llorch_http_request_header(req, "X-Llorch-Resumable");
  if (resumable && strcmp(resumable, "false") != 0) {
    llorch_openai_error err = {.status = 400, .type = "invalid_request_error", .code = "unsupported_value"};
    snprintf(err.param, sizeof err.param, "X-Llorch-Resumable");
    snprintf(err.message, sizeof err.message,
             "X-Llorch-Resumable: resumable streams are served by the orchestrator (and --role=all), "
             "not by a worker");
    routes_fail(w, req, &err);
    return;
  }
  size_t len = 0;
  cJSON *json = routes_parse_body(w, req, &len);
  if (!json) return;
  llorch_openai_error err = {0};
  if (dialect != LLORCH_DIALECT_OPENAI) {
    /* Anthropic Messages / Responses: the same request as chat completions */
    cJSON *chat = NULL;
    llorch_openai_limits lim = llorch_openai_limits_from_config(w->cfg);
    int trc = llorch_openai_dialect_to_chat(dialect, json, &lim, &chat, &err);
    cJSON_Delete(json);
    if (trc < 0) {
      routes_fail(w, req, &err);
      return;
    }
    json = chat;
  }
  worker_stream *st = routes_stream_new(w, api, dialect);
  if (!st) {
    cJSON_Delete(json);
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  st->lead = st;
  st->held_bytes = len;
  w->held_bytes += len;
  st->req = req;
  st->created = (int64_t)time(NULL);
  snprintf(st->request_id, sizeof st->request_id, "%s", llorch_http_request_id(req));
  snprintf(st->resp_id, sizeof st->resp_id, "%s%llu%04x",
           dialect != LLORCH_DIALECT_OPENAI ? llorch_openai_dialect_id_prefix(dialect)
           : api == LLORCH_OPENAI_CHAT      ? "chatcmpl-"
                                            : "cmpl-",
           (unsigned long long)++w->next_id, (unsigned)(uv_hrtime() & 0xffff));

  worker_job *job = NULL;
  int rc = worker_request_build(w, api, json, st, &job, &err);
  if (rc == 0) {
    job->owner = st;
    st->job = job;
    if (st->n_choices > 1) rc = routes_build_siblings(w, json, st, &err);
  }
  cJSON_Delete(json);
  /* The job holds what it needs (prompt text, then tokens): not the raw body too. */
  llorch_http_request_release_body(req);
  if (rc < 0) {
    routes_fail(w, req, &err);
    routes_stream_discard(st);
    return;
  }
  llorch_http_request_set_data(req, st, routes_on_gone_early);
  st->work.data = st;
  if (uv_queue_work(w->loop, &st->work, routes_tokenize_work, routes_tokenize_done) != 0) {
    llorch_http_request_set_data(req, NULL, NULL);
    llorch_http_respond_error(req, 500, "server_error", "cannot queue the tokenization", NULL,
                              "internal_error");
    routes_stream_discard(st);
  }
}

/* ---- cancel ---- */

static void routes_cancel(worker *w, llorch_http_request *req, const char *id) {
  const char *state = "unknown";
  int64_t sent = -1;
  worker_stream *st = routes_find_stream(w, id);
  if (st) {
    /* Token events the inference thread queued before it saw the cancel
     * are dropped too: the client gets exactly `tokens_sent` of them (all
     * choices together). */
    sent = worker_stream_cancel(w, st);
    state = "cancelled";
  } else if (routes_was_finished(w, id)) {
    state = "finished";
  }
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"job_id\":");
  llorch_jbuf_str(&b, id);
  llorch_jbuf_cstr(&b, ",\"state\":");
  llorch_jbuf_str(&b, state);
  if (sent >= 0) {
    llorch_jbuf_cstr(&b, ",\"tokens_sent\":");
    llorch_jbuf_int(&b, sent);
  }
  llorch_jbuf_raw(&b, "}", 1);
  llorch_http_respond_json(req, 200, b.data ? b.data : "{}");
  llorch_jbuf_free(&b);
}

/* ---- info and models ---- */

static void routes_kv_str(llorch_jbuf *b, const char *key, const char *v, bool comma) {
  if (comma) llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, key);
  llorch_jbuf_str(b, v);
}

static void routes_kv_int(llorch_jbuf *b, const char *key, int64_t v, bool comma) {
  if (comma) llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, key);
  llorch_jbuf_int(b, v);
}

static void routes_info(worker *w, llorch_http_request *req) {
  bool loaded = w->state == WORKER_STATE_READY || w->state == WORKER_STATE_DRAINING;
  worker_sched_stats ss = {0};
  if (w->sched) worker_sched_stats_get(w->sched, &ss);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_raw(&b, "{", 1);
  routes_kv_str(&b, "worker_id", w->cfg->worker.id, false);
  routes_kv_str(&b, "state", routes_state_name(w->state), true);
  routes_kv_str(&b, "version", LLORCH_VERSION, true);
  llorch_jbuf_cstr(&b, ",\"model\":{");
  routes_kv_str(&b, "name", loaded ? w->model_name : NULL, false);
  routes_kv_str(&b, "file", w->cfg->worker.model, true);
  routes_kv_str(&b, "arch", loaded ? w->model->arch_name : NULL, true);
  routes_kv_str(&b, "quant", loaded ? llorch_type_name(w->model->main_type) : NULL, true);
  routes_kv_int(&b, "n_params", loaded ? (int64_t)w->model->n_params : 0, true);
  routes_kv_int(&b, "n_vocab", loaded ? w->model->hp.n_vocab : 0, true);
  routes_kv_int(&b, "n_ctx_train", loaded ? w->model->hp.n_ctx_train : 0, true);
  llorch_jbuf_raw(&b, "}", 1);
  routes_kv_int(&b, "context_length", w->n_ctx, true);
  llorch_jbuf_cstr(&b, ",\"slots\":{");
  routes_kv_int(&b, "total", w->n_slots, false);
  routes_kv_int(&b, "busy", ss.slots_busy, true);
  routes_kv_int(&b, "queued", ss.queued, true);
  routes_kv_int(&b, "queue_max", w->cfg->worker.queue_max, true);
  llorch_jbuf_raw(&b, "}", 1);
  routes_kv_str(&b, "device", w->cfg->worker.device, true);
  routes_kv_int(&b, "threads", w->n_threads, true);
  llorch_backend_memory mem;
  worker_memory_get(w, &mem);
  llorch_jbuf_cstr(&b, ",\"memory\":{");
  routes_kv_int(&b, "weights_bytes", (int64_t)mem.weights_bytes, false);
  routes_kv_str(&b, "weights_location", loaded ? mem.weights_location : NULL, true);
  routes_kv_int(&b, "kv_bytes", (int64_t)mem.kv_bytes, true);
  routes_kv_str(&b, "kv_location", loaded ? mem.kv_location : NULL, true);
  routes_kv_int(&b, "scratch_bytes", (int64_t)mem.scratch_bytes, true);
  routes_kv_int(&b, "total_bytes",
                (int64_t)(mem.weights_bytes + mem.kv_bytes + mem.scratch_bytes), true);
  /* What the process holds (measured now), what it reports to its pool, and
   * the estimate the pool and orchestrator plan with (llorch/memory.h). */
  llorch_mem_usage use;
  uint64_t held = worker_memory_held(w, &use);
  routes_kv_int(&b, "held_bytes", (int64_t)held, true);
  llorch_jbuf_cstr(&b, ",\"process\":{");
  routes_kv_int(&b, "rss_bytes", (int64_t)use.rss_bytes, false);
  routes_kv_int(&b, "rss_anon_bytes", (int64_t)use.rss_anon_bytes, true);
  routes_kv_int(&b, "rss_file_bytes", (int64_t)use.rss_file_bytes, true);
  routes_kv_int(&b, "peak_bytes", (int64_t)use.hwm_bytes, true);
  routes_kv_int(&b, "baseline_bytes", (int64_t)w->baseline_bytes, true);
  llorch_jbuf_raw(&b, "}", 1);
  llorch_jbuf_cstr(&b, ",\"estimate\":{");
  routes_kv_int(&b, "weights_bytes", loaded ? (int64_t)w->estimate.weights_bytes : 0, false);
  routes_kv_int(&b, "kv_bytes", loaded ? (int64_t)w->estimate.kv_bytes : 0, true);
  routes_kv_int(&b, "scratch_bytes", loaded ? (int64_t)w->estimate.scratch_bytes : 0, true);
  routes_kv_int(&b, "overhead_bytes", loaded ? (int64_t)w->estimate.overhead_bytes : 0, true);
  routes_kv_int(&b, "total_bytes", loaded ? (int64_t)w->estimate.total_bytes : 0, true);
  llorch_jbuf_raw(&b, "}", 1);
  /* VRAM-only verification: every backend allocation checked to be device
   * memory. The CPU backend holds host memory by design and checks nothing. */
  llorch_jbuf_cstr(&b, ",\"residency\":{");
  llorch_jbuf_cstr(&b, "\"verified\":");
  llorch_jbuf_cstr(&b, mem.residency_verified ? "true" : "false");
  routes_kv_int(&b, "allocations_checked", mem.allocations_checked, true);
  routes_kv_int(&b, "allocations_not_device", mem.allocations_not_device, true);
  routes_kv_int(&b, "verified_at_ms", mem.verified_at_ms, true);
  llorch_jbuf_raw(&b, "}}", 2);
  llorch_jbuf_cstr(&b, ",\"requests\":{");
  int64_t running = 0;
  for (worker_stream *st = w->streams; st; st = st->next) running++;
  routes_kv_int(&b, "running", running, false);
  routes_kv_int(&b, "completed", (int64_t)w->n_completed, true);
  routes_kv_int(&b, "cancelled", (int64_t)w->n_cancelled, true);
  routes_kv_int(&b, "failed", (int64_t)w->n_failed, true);
  routes_kv_int(&b, "rejected", (int64_t)w->n_rejected, true);
  llorch_jbuf_cstr(&b, "},\"steps\":");
  llorch_jbuf_int(&b, (int64_t)ss.steps);
  llorch_jbuf_raw(&b, "}", 1);
  if (llorch_jbuf_error(&b) < 0)
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else
    llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
}

static void routes_models(worker *w, llorch_http_request *req) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"object\":\"list\",\"data\":[");
  if (w->state == WORKER_STATE_READY || w->state == WORKER_STATE_DRAINING) {
    llorch_jbuf_cstr(&b, "{\"id\":");
    llorch_jbuf_str(&b, w->model_name);
    llorch_jbuf_cstr(&b, ",\"object\":\"model\",\"created\":");
    llorch_jbuf_int(&b, (int64_t)time(NULL));
    llorch_jbuf_cstr(&b, ",\"owned_by\":\"llorch\"}");
  }
  llorch_jbuf_cstr(&b, "]}");
  llorch_http_respond_json(req, 200, b.data ? b.data : "{}");
  llorch_jbuf_free(&b);
}

static void routes_metrics(worker *w, llorch_http_request *req) {
  worker_metrics_refresh(w);
  size_t len = 0;
  char *text = llorch_metrics_render(w->metrics, &len);
  if (!text) {
    llorch_http_respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  llorch_http_respond(req, 200, LLORCH_METRICS_CONTENT_TYPE, text, len);
  free(text);
}

/* ---- the router ---- */

static bool routes_method(llorch_http_request *req, const char *want) {
  if (strcmp(llorch_http_request_method(req), want) == 0) return true;
  llorch_http_response_header(req, "Allow", want);
  char msg[96];
  snprintf(msg, sizeof msg, "%s is not allowed here; use %s", llorch_http_request_method(req),
           want);
  llorch_http_respond_error(req, 405, "invalid_request_error", msg, NULL, "method_not_allowed");
  return false;
}

void worker_route(llorch_http_request *req, void *user) {
  worker *w = user;
  const char *path = llorch_http_request_path(req);

  if (strcmp(path, "/health/live") == 0) {
    llorch_http_respond_json(req, 200, "{\"status\":\"ok\"}");
    return;
  }
  if (strcmp(path, "/health/ready") == 0) {
    char body[64];
    snprintf(body, sizeof body, "{\"status\":\"%s\"}", routes_state_name(w->state));
    llorch_http_respond_json(req, w->state == WORKER_STATE_READY ? 200 : 503, body);
    return;
  }
  if (w->cfg->worker.token) {
    const char *tokens[1] = {w->cfg->worker.token};
    if (llorch_http_require_bearer(req, tokens, 1) < 0) return; /* 401 answered */
  }
  if (strcmp(path, "/metrics") == 0) {
    if (routes_method(req, "GET")) routes_metrics(w, req);
  } else if (strcmp(path, "/v1/chat/completions") == 0) {
    if (routes_method(req, "POST")) routes_generate(w, req, LLORCH_OPENAI_CHAT, LLORCH_DIALECT_OPENAI);
  } else if (strcmp(path, "/v1/completions") == 0) {
    if (routes_method(req, "POST")) routes_generate(w, req, LLORCH_OPENAI_COMPLETION, LLORCH_DIALECT_OPENAI);
  } else if (strcmp(path, "/v2/execute") == 0) {
    if (routes_method(req, "POST")) routes_generate(w, req, LLORCH_OPENAI_NATIVE, LLORCH_DIALECT_OPENAI);
  } else if (strcmp(path, "/v1/messages") == 0) {
    if (routes_method(req, "POST")) routes_generate(w, req, LLORCH_OPENAI_CHAT, LLORCH_DIALECT_ANTHROPIC);
  } else if (strcmp(path, "/v1/responses") == 0) {
    if (routes_method(req, "POST")) routes_generate(w, req, LLORCH_OPENAI_CHAT, LLORCH_DIALECT_RESPONSES);
  } else if (strcmp(path, "/v1/embeddings") == 0) {
    if (routes_method(req, "POST")) routes_embeddings(w, req);
  } else if (strcmp(path, "/v1/models") == 0) {
    if (routes_method(req, "GET")) routes_models(w, req);
  } else if (strcmp(path, "/v2/info") == 0) {
    if (routes_method(req, "GET")) routes_info(w, req);
  } else if (strncmp(path, "/v2/jobs/", 9) == 0 && strlen(path) > 16 &&
             strcmp(path + strlen(path) - 7, "/cancel") == 0) {
    char id[72];
    size_t n = strlen(path) - 9 - 7;
    if (n == 0 || n >= sizeof id) {
      llorch_http_respond_error(req, 404, "invalid_request_error", "no such job id", NULL,
                                "not_found");
      return;
    }
    memcpy(id, path + 9, n);
    id[n] = 0;
    if (routes_method(req, "POST")) {
      if (!w->sched) routes_not_ready(w, req);
      else routes_cancel(w, req, id);
    }
  } else {
    char msg[160];
    snprintf(msg, sizeof msg, "no route for %s %.100s", llorch_http_request_method(req), path);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "not_found");
  }
}
