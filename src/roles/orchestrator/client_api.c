/*
 * The client API: OpenAI POST /v1/chat/completions, POST /v1/completions and
 * GET /v1/models; Anthropic POST /v1/messages and OpenAI POST /v1/responses,
 * which the OpenAI layer translates onto chat (its llorch_openai_dout writes
 * the answers in their shapes).
 *
 * A request's life: API key -> queue-full check (429 before any parsing, so
 * a refused request costs nothing) -> validation (400/404 with the worker's
 * error envelope) -> admission (sched_submit) -> the scheduler assigns it to
 * a worker (orch_req_assign) -> POST /v2/execute on that worker, whose SSE
 * events (started, token, end, error) are relayed as OpenAI chunks as they
 * arrive, or collected into one JSON answer.
 *
 * n > 1 is one request here (one queue entry, one worker, one /v2/execute
 * carrying n): the worker runs the choices as siblings of one prompt and
 * names each event's choice; the scheduler counts it as one slot of that
 * worker, which queues the other choices itself (a full worker answers 503
 * overloaded and the request is retried elsewhere, as for any request).
 *
 * Faults: a worker that fails before the client has seen a token (connection
 * refused or reset, 5xx, a stream that ends without `end`) sends the request
 * back to the head of the queue (sched_request_retry, at most retry_max
 * times); after tokens were streamed, the client gets an error chunk and
 * [DONE]. A client that goes away is cancelled on the worker at once
 * (POST /v2/jobs/{id}/cancel and the execute connection closed).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/grammar.h"
#include "llorch/log.h"
#include "orchestrator-impl.h"
#include "prefix_route.h"

/* ---- small helpers ---- */

static void req_free(orch_req *r) {
  if (!r) return;
  if (r->resume) orch_resume_release(r->resume); /* the record stays for the window */
  r->o->n_active--;
  r->o->held_bytes -= r->held_bytes;
  free(r->exec_body);
  free(r->model_name);
  for (int i = 0; r->ch && i < r->n; i++) {
    llorch_openai_message_free(&r->ch[i].msg);
    llorch_jbuf_free(&r->ch[i].text);
    llorch_openai_logprobs_free(&r->ch[i].lp);
  }
  free(r->ch);
  free(r->prefix);
  llorch_openai_dout_free(&r->dout);
  free(r->stop_sequence);
  free(r);
}

static void respond_error(llorch_http_request *http, int status, const char *type, const char *msg,
                          const char *param, const char *code) {
  llorch_http_respond_error(http, status, type, msg, param && param[0] ? param : NULL, code);
}

/* The answer's metadata; chunks of choice `index`. */
static llorch_openai_meta req_meta(const orch_req *r, int index) {
  return (llorch_openai_meta){.id = r->id, .created = r->created, .model = r->model_name,
                              .chat = r->chat, .cached_tokens = (uint32_t)r->cached_tokens,
                              .index = index};
}

/*
 * The chunk hashes prefix routing compares (prefix_route.h): the text the
 * worker's prompt is rendered from, in order - each message's role and text
 * (string content or its text parts), or the completion prompt. Without
 * memory the request is routed without them (never an error).
 */
static void req_prefix_hashes(orch_req *r, const cJSON *body) {
  llorch_jbuf t;
  llorch_jbuf_init(&t);
  if (r->chat) {
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(body, "messages")) {
      const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
      const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
      if (cJSON_IsString(role)) llorch_jbuf_cstr(&t, role->valuestring);
      llorch_jbuf_raw(&t, "\n", 1);
      if (cJSON_IsString(content)) {
        llorch_jbuf_cstr(&t, content->valuestring);
      } else {
        const cJSON *part;
        cJSON_ArrayForEach(part, content) {
          const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
          if (cJSON_IsString(text)) llorch_jbuf_cstr(&t, text->valuestring);
        }
      }
      llorch_jbuf_raw(&t, "\n", 1);
    }
  } else {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(p)) p = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsString(p)) llorch_jbuf_cstr(&t, p->valuestring);
  }
  size_t n = t.len / PREFIX_ROUTE_CHUNK;
  if (n > PREFIX_ROUTE_MAX_CHUNKS) n = PREFIX_ROUTE_MAX_CHUNKS;
  if (n && llorch_jbuf_error(&t) == 0 && (r->prefix = malloc(n * sizeof *r->prefix))) {
    r->sr.n_prefix = prefix_route_hash(t.data, t.len, r->prefix, (uint32_t)n);
    r->sr.prefix = r->prefix;
  }
  llorch_jbuf_free(&t);
}

/* ---- OpenAI output (the shared writers of openai.h) ---- */

/* Nobody will read the answer: the client went away (and, resumable, did
 * not come back in time). */
static bool req_gone(const orch_req *r) { return !r->http && !r->resume; }

/* Every SSE event of an answer goes out here: to the client, or (resumable)
 * through its record, which numbers and keeps it. */
static void req_sse(orch_req *r, const char *event, const char *data, size_t len) {
  if (r->resume) orch_resume_event(r->resume, event, data, len);
  else if (r->http) llorch_http_sse_send(r->http, event, data, len);
}

/* The end of a streamed answer. */
static void req_sse_end(orch_req *r) {
  if (r->resume) orch_resume_end(r->resume);
  else if (r->http) llorch_http_sse_end(r->http);
}

static void sse_send_buf(orch_req *r, llorch_jbuf *b) {
  if (llorch_jbuf_error(b)) return;
  req_sse(r, NULL, b->data, b->len);
}

/* A dialect's named event (llorch_openai_dout). */
static void dout_send(void *user, const char *event, const char *data, size_t len) {
  req_sse(user, event, data, len);
}

static void stream_start(orch_req *r) {
  if (r->sse_started || req_gone(r)) return;
  /* a resumable answer's record started the response at admission */
  if (!r->resume && llorch_http_sse_start(r->http) < 0) return;
  r->sse_started = true;
  if (r->dialect != LLORCH_DIALECT_OPENAI) {
    llorch_openai_dout_start(&r->dout, (uint32_t)r->prompt_tokens);
    return;
  }
  if (!r->chat) return;
  /* every choice's first chunk carries the role */
  for (int i = 0; i < r->n; i++) {
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_openai_meta m = req_meta(r, i);
    llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
    d.content = "";
    llorch_openai_write_chat_chunk(&b, &m, &d, true, NULL, NULL);
    sse_send_buf(r, &b);
    llorch_jbuf_free(&b);
  }
}

/* One parsed delta: a chunk (streaming; lp rides on the first of a token)
 * or into the assembled message. */
static void relay_delta(orch_req *r, int ci, const llorch_openai_delta *d,
                        const llorch_openai_logprobs *lp) {
  if (r->dialect != LLORCH_DIALECT_OPENAI) {
    if (r->stream) {
      stream_start(r);
      r->sent_tokens = true;
    }
    llorch_openai_dout_add(&r->dout, d);
    return;
  }
  if (!r->stream) {
    llorch_openai_message_add(&r->ch[ci].msg, d);
    return;
  }
  stream_start(r);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_meta m = req_meta(r, ci);
  llorch_openai_write_chat_chunk(&b, &m, d, false, lp, NULL);
  sse_send_buf(r, &b);
  llorch_jbuf_free(&b);
  r->sent_tokens = true;
}

/*
 * The deltas of a worker event (token or end): chat output as the worker's
 * parser split it into content, reasoning and tool calls. A worker that
 * sends none (older, or a completions request) has its text taken as
 * content. lps: the event's logprobs entries, or NULL.
 */
static void relay_deltas(orch_req *r, int ci, const cJSON *ev, const char *text, const cJSON *lps) {
  const cJSON *deltas = cJSON_GetObjectItemCaseSensitive(ev, "deltas");
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, true);
  if (lps) llorch_openai_logprobs_add_json(&lp, lps, 0);
  bool lp_sent = !lps;
  if (cJSON_IsArray(deltas)) {
    for (const cJSON *o = deltas->child; o; o = o->next) {
      llorch_openai_delta d;
      if (llorch_openai_delta_from_json(o, &d) < 0) continue;
      relay_delta(r, ci, &d, lp_sent ? NULL : &lp);
      lp_sent = true;
    }
  } else if (text && text[0]) {
    llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
    d.content = text;
    d.content_len = strlen(text);
    relay_delta(r, ci, &d, lp_sent ? NULL : &lp);
    lp_sent = true;
  }
  /* Held-back text: the token's logprobs still go out (empty delta). */
  if (!lp_sent && r->stream) relay_delta(r, ci, &(llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT, &lp);
  llorch_openai_logprobs_free(&lp);
}

/* One worker token event -> chunks (streaming) or the accumulators. */
static void relay_token(orch_req *r, int ci, const cJSON *ev) {
  orch_choice *c = &r->ch[ci];
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(ev, "text");
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(ev, "token_ids");
  const cJSON *lps = cJSON_GetObjectItemCaseSensitive(ev, "logprobs");
  const char *t = cJSON_IsString(text) ? text->valuestring : "";
  int n_ids = cJSON_IsArray(ids) ? cJSON_GetArraySize(ids) : 1;
  c->completion_tokens += n_ids > 0 ? n_ids : 1;
  r->completion_tokens += n_ids > 0 ? n_ids : 1;
  bool has_lp = r->logprobs && cJSON_IsArray(lps) && cJSON_GetArraySize(lps) > 0;
  if (r->chat) {
    if (!r->stream && has_lp) llorch_openai_logprobs_add_json(&c->lp, lps, 0);
    relay_deltas(r, ci, ev, t, r->stream && has_lp ? lps : NULL);
    return;
  }
  size_t offset = c->text.len;
  if (!r->stream) {
    llorch_jbuf_cstr(&c->text, t);
    if (has_lp) llorch_openai_logprobs_add_json(&c->lp, lps, offset);
    return;
  }
  if (!t[0] && !has_lp) return; /* held-back text: nothing to show yet */
  stream_start(r);
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, false);
  if (has_lp) llorch_openai_logprobs_add_json(&lp, lps, c->stream_offset);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_meta m = req_meta(r, ci);
  llorch_openai_write_completion_chunk(&b, &m, t, strlen(t), has_lp ? &lp : NULL, NULL);
  sse_send_buf(r, &b);
  llorch_jbuf_free(&b);
  llorch_openai_logprobs_free(&lp);
  c->stream_offset += strlen(t);
  r->sent_tokens = true;
}

/* echo: the worker's prompt event -> the start of the text (and its
 * logprobs), in the accumulators or as the first chunk. */
static void relay_prompt(orch_req *r, int ci, const cJSON *ev) {
  if (r->chat) return;
  orch_choice *c = &r->ch[ci];
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(ev, "text");
  const cJSON *lps = cJSON_GetObjectItemCaseSensitive(ev, "logprobs");
  const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(ev, "text_bytes");
  const char *t = cJSON_IsString(text) ? text->valuestring : "";
  size_t len = strlen(t);
  if (!r->stream) {
    llorch_jbuf_raw(&c->text, t, len);
    if (r->logprobs) llorch_openai_logprobs_add_prompt(&c->lp, lps, bytes, len);
    return;
  }
  stream_start(r);
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, false);
  if (r->logprobs) llorch_openai_logprobs_add_prompt(&lp, lps, bytes, len);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_meta m = req_meta(r, ci);
  llorch_openai_write_completion_chunk(&b, &m, t, len, r->logprobs ? &lp : NULL, NULL);
  sse_send_buf(r, &b);
  llorch_jbuf_free(&b);
  llorch_openai_logprobs_free(&lp);
  c->stream_offset += len;
  r->sent_tokens = true; /* the client has seen output: no retry elsewhere */
}

static void answer_success(orch_req *r) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  if (r->dialect != LLORCH_DIALECT_OPENAI) {
    /* the dialects have no n: one choice */
    if (r->stream) stream_start(r);
    llorch_openai_dout_finish(&r->dout, r->ch[0].finish_reason, r->stop_sequence,
                              (uint32_t)r->prompt_tokens, (uint32_t)r->completion_tokens,
                              r->stream ? NULL : &b);
    if (r->stream) req_sse_end(r);
    else if (r->http && (llorch_jbuf_error(&b) || r->dout.err))
      respond_error(r->http, 500, "server_error", "out of memory", NULL, "internal_error");
    else if (r->http) llorch_http_respond_json(r->http, 200, b.data);
  } else if (r->stream) {
    stream_start(r);
    for (int i = 0; i < r->n; i++) {
      llorch_openai_meta m = req_meta(r, i);
      llorch_jbuf_reset(&b);
      if (r->chat) llorch_openai_write_chat_chunk(&b, &m, NULL, false, NULL, r->ch[i].finish_reason);
      else llorch_openai_write_completion_chunk(&b, &m, "", 0, NULL, r->ch[i].finish_reason);
      sse_send_buf(r, &b);
    }
    if (r->include_usage) {
      /* the prompt once, every choice's completion tokens */
      llorch_openai_meta m = req_meta(r, 0);
      llorch_jbuf_reset(&b);
      llorch_openai_write_usage_chunk(&b, &m, (uint32_t)r->prompt_tokens,
                                      (uint32_t)r->completion_tokens);
      sse_send_buf(r, &b);
    }
    req_sse(r, NULL, "[DONE]", 6);
    req_sse_end(r);
  } else if (r->http) {
    llorch_openai_choice ch[LLORCH_OPENAI_MAX_N];
    bool oom = false;
    for (int i = 0; i < r->n; i++) {
      const orch_choice *c = &r->ch[i];
      ch[i] = (llorch_openai_choice){.msg = &c->msg,
                                     .text = c->text.data,
                                     .len = c->text.len,
                                     .lp = r->logprobs ? &c->lp : NULL,
                                     .finish = c->finish_reason};
      if (c->msg.err || llorch_jbuf_error(&c->text)) oom = true;
    }
    llorch_openai_meta m = req_meta(r, 0);
    llorch_openai_write_response(&b, &m, ch, r->n, (uint32_t)r->prompt_tokens,
                                 (uint32_t)r->completion_tokens);
    if (llorch_jbuf_error(&b) || oom)
      respond_error(r->http, 500, "server_error", "out of memory", NULL, "internal_error");
    else llorch_http_respond_json(r->http, 200, b.data);
  }
  llorch_jbuf_free(&b);
  r->http = NULL;
  r->finished = true;
}

/*
 * The request failed: before the stream started, an HTTP error with the
 * envelope; after, an error chunk and [DONE] (a clean end, never a hang).
 */
static void answer_error(orch_req *r, int status, const char *type, const char *code, const char *msg) {
  if (r->resume) {
    /* a resumable answer is an SSE stream from its admission on */
    char *env = llorch_json_error_envelope(msg, type, NULL, code);
    if (env) req_sse(r, NULL, env, strlen(env));
    free(env);
    req_sse(r, NULL, "[DONE]", 6);
    req_sse_end(r);
  } else if (r->http) {
    if (r->sse_started && r->dialect != LLORCH_DIALECT_OPENAI) {
      llorch_openai_dout_fail(&r->dout, code, msg);
      llorch_http_sse_end(r->http);
    } else if (r->sse_started) {
      char *env = llorch_json_error_envelope(msg, type, NULL, code);
      if (env) llorch_http_sse_send(r->http, NULL, env, strlen(env));
      free(env);
      llorch_http_sse_send(r->http, NULL, "[DONE]", 6);
      llorch_http_sse_end(r->http);
    } else {
      respond_error(r->http, status, type, msg, NULL, code);
    }
  }
  r->http = NULL;
  r->finished = true;
}

/*
 * A worker failure as the client sees it: which model and which request,
 * nothing about the inside of the cluster (worker URLs, model paths, the
 * worker's own messages). The details went to the log under the request id.
 */
static void answer_worker_failed(orch_req *r, const char *code) {
  char msg[300];
  snprintf(msg, sizeof msg,
           "the worker serving '%.100s' failed; the details are in the orchestrator's log under request id %s",
           r->model_name, r->rid);
  answer_error(r, 502, "server_error", code, msg);
}

/* ---- the execute call ---- */

static void cancel_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  (void)call;
  (void)user;
  if (err) LOG_DEBUG("orch", NULL, "cancel call failed: %s", errmsg ? errmsg : "");
}

/* Tells the worker to drop job_id (the client went away). Fire and forget. */
static void worker_cancel_job(orch_req *r) {
  if (!r->job_id[0] || !r->worker_url[0]) return;
  char url[SCHED_URL_MAX + ORCH_JOB_ID_MAX + 32];
  snprintf(url, sizeof url, "%s/v2/jobs/%s/cancel", r->worker_url, r->job_id);
  char auth[160];
  snprintf(auth, sizeof auth, "Bearer %s", r->worker_token);
  const char *hdr[] = {"Authorization", auth, "X-Request-Id", r->rid, NULL};
  llorch_http_call_opts opts = {0};
  opts.method = "POST";
  opts.url = url;
  opts.headers = r->worker_token[0] ? hdr : hdr + 2;
  opts.body = "{}";
  opts.body_len = 2;
  opts.connect_timeout_ms = 1000;
  opts.read_timeout_ms = 2000;
  opts.on_done = cancel_done;
  llorch_errmsg em;
  if (llorch_http_call_start(r->o->client, &opts, NULL, &em) < 0)
    LOG_WARN("orch", r->rid, "cannot cancel job %s on %s: %s", r->job_id, r->worker_name, em.text);
  else
    LOG_INFO("orch", r->rid, "client went away: cancelling job %s on %s", r->job_id, r->worker_name);
}

static void exec_on_headers(llorch_http_call *call, int status, void *user) {
  (void)call;
  orch_req *r = user;
  r->exec_status = status;
}

static void exec_on_sse(llorch_http_call *call, const llorch_sse_event *ev, void *user) {
  (void)call;
  orch_req *r = user;
  if (req_gone(r)) return; /* client gone: the call is being cancelled */
  cJSON *d = cJSON_ParseWithLength(ev->data, ev->data_len);
  if (!d) {
    LOG_WARN("orch", r->rid, "worker %s sent an event that is not JSON (%s)", r->worker_name, ev->event);
    cJSON_Delete(d);
    return;
  }
  /* n > 1: which choice (the worker names it; absent = 0) */
  const cJSON *choice = cJSON_GetObjectItemCaseSensitive(d, "choice");
  int ci = cJSON_IsNumber(choice) ? (int)choice->valuedouble : 0;
  if (ci < 0 || ci >= r->n) {
    LOG_WARN("orch", r->rid, "worker %s sent an event for choice %d of %d: ignored", r->worker_name,
             ci, r->n);
    cJSON_Delete(d);
    return;
  }
  if (strcmp(ev->event, "started") == 0) {
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(d, "prompt_tokens");
    if (cJSON_IsNumber(pt)) r->prompt_tokens = pt->valueint;
    if (r->stream) stream_start(r);
  } else if (strcmp(ev->event, "token") == 0) {
    uint64_t t = orch_now_ns();
    if (!r->got_token) {
      r->t_first_ns = t;
      llorch_metric_observe(r->o->m_ttft, NULL, (double)(t - r->t_admit_ns) / 1e9);
    } else {
      llorch_metric_observe(r->o->m_itl, NULL, (double)(t - r->t_last_ns) / 1e9);
    }
    r->t_last_ns = t;
    r->got_token = true;
    relay_token(r, ci, d);
    /* A client that stops reading would make us buffer its tokens without
     * bound: past the limit its job is cancelled on the worker, whose final
     * event still ends the response properly (the worker applies the same
     * limit: one constant, openai.h). */
    if (r->http && !r->slow_client && llorch_http_request_queued_bytes(r->http) > LLORCH_OPENAI_MAX_QUEUED_BYTES) {
      LOG_WARN("orch", r->rid, "client %s is not reading (%zu bytes queued): cancelling job %s on %s",
               llorch_http_request_peer(r->http), llorch_http_request_queued_bytes(r->http), r->job_id,
               r->worker_name);
      r->slow_client = true;
      worker_cancel_job(r);
    }
  } else if (strcmp(ev->event, "prompt") == 0) {
    relay_prompt(r, ci, d);
  } else if (strcmp(ev->event, "end") == 0) {
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(d, "finish_reason");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(d, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(d, "completion_tokens");
    const cJSON *cached = cJSON_GetObjectItemCaseSensitive(d, "cached_tokens");
    orch_choice *c = &r->ch[ci];
    /* the prompt (and its cache hits) counted once: the first choice's */
    if (cJSON_IsNumber(cached) && ci == 0) r->cached_tokens = cached->valueint;
    snprintf(c->finish_reason, sizeof c->finish_reason, "%s", cJSON_IsString(fr) ? fr->valuestring : "stop");
    if (cJSON_IsNumber(pt) && ci == 0) r->prompt_tokens = pt->valueint;
    if (cJSON_IsNumber(ct)) {
      r->completion_tokens += ct->valueint - c->completion_tokens;
      c->completion_tokens = ct->valueint;
    }
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(d, "stop_sequence");
    free(r->stop_sequence);
    r->stop_sequence = cJSON_IsString(ss) ? strdup(ss->valuestring) : NULL;
    /* The worker's parser releases what it held back (a call's end) here. */
    if (r->chat && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(d, "deltas")))
      relay_deltas(r, ci, d, NULL, NULL);
    if (!c->ended) r->n_ended++;
    c->ended = true;
    r->got_end = r->n_ended == r->n; /* the stream is complete after every choice's end */
  } else if (strcmp(ev->event, "error") == 0) {
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(d, "code");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(d, "message");
    const cJSON *rt = cJSON_GetObjectItemCaseSensitive(d, "retriable");
    snprintf(r->err_code, sizeof r->err_code, "%s", cJSON_IsString(code) ? code->valuestring : "internal_error");
    snprintf(r->err_msg, sizeof r->err_msg, "%s", cJSON_IsString(msg) ? msg->valuestring : "worker error");
    r->retriable_error = cJSON_IsTrue(rt);
    r->got_end = true;
  }
  cJSON_Delete(d);
}

static void req_reset_attempt(orch_req *r) {
  r->exec_status = 0;
  r->got_token = false;
  r->got_end = false;
  r->retriable_error = false;
  r->err_code[0] = r->err_msg[0] = '\0';
  r->completion_tokens = 0;
  r->n_ended = 0;
  for (int i = 0; i < r->n; i++) {
    orch_choice *c = &r->ch[i];
    c->finish_reason[0] = '\0';
    c->completion_tokens = 0;
    c->ended = false;
    c->stream_offset = 0;
    llorch_openai_message_reset(&c->msg);
    llorch_jbuf_reset(&c->text);
    llorch_openai_logprobs_reset(&c->lp);
  }
  llorch_openai_dout_reset(&r->dout);
}

/* The request is over: scheduler slot back, counters, memory. */
static void req_end(orch_req *r, const char *outcome) {
  orch *o = r->o;
  sched_request_done(&o->s, &r->sr, orch_now_ms(o));
  orch_count(o, outcome);
  if (r->completion_tokens > 0 && strcmp(outcome, "completed") == 0) {
    llorch_metric_inc(o->m_tokens, (const char *[]){"generated"}, r->completion_tokens);
    llorch_metric_inc(o->m_tokens, (const char *[]){"prompt"}, r->prompt_tokens);
  }
  req_free(r);
  orch_dispatch_soon(o);
}

/* A failure the client has not seen: back to the queue if allowed. */
static bool try_retry(orch_req *r, bool broken, const char *why) {
  orch *o = r->o;
  if (r->sent_tokens || o->stopping) return false;
  int64_t now = orch_now_ms(o);
  if (!sched_request_retry(&o->s, &r->sr, broken, now)) {
    LOG_WARN("orch", r->rid, "worker %s failed (%s); no retries left (%d attempts)", r->worker_name, why,
             r->sr.attempts);
    return false;
  }
  LOG_WARN("orch", r->rid, "worker %s failed before the first token (%s); retrying elsewhere",
           r->worker_name, why);
  req_reset_attempt(r);
  orch_dispatch_soon(o);
  return true;
}

/* A worker's OpenAI error body answered again through respond_error, which
 * writes the request's own envelope. */
static void relay_error_body(orch_req *r, int status, const char *body, size_t len) {
  cJSON *j = cJSON_ParseWithLength(body, len);
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
  const cJSON *param = cJSON_GetObjectItemCaseSensitive(e, "param");
  const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
  respond_error(r->http, status, cJSON_IsString(type) ? type->valuestring : "invalid_request_error",
                cJSON_IsString(msg) ? msg->valuestring : "the request was refused",
                cJSON_IsString(param) ? param->valuestring : NULL,
                cJSON_IsString(code) ? code->valuestring : NULL);
  cJSON_Delete(j);
}

/*
 * The worker's embeddings answer to the client, with "model" as the client
 * named it (the worker knows its model by its own name). The vectors are
 * copied, not parsed: a large answer costs the loop a memcpy. 0, or
 * LLORCH_EFORMAT when the worker's body is not an embeddings answer.
 */
static int embed_answer(orch_req *r, const char *body, size_t len) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  uint32_t pt = 0;
  int rc = llorch_openai_embeddings_rename(body, len, r->model_name, &b, &pt);
  if (rc == LLORCH_EFORMAT) {
    llorch_jbuf_free(&b);
    return rc;
  }
  r->prompt_tokens = (int)pt;
  if (rc < 0) respond_error(r->http, 500, "server_error", "out of memory", NULL, "internal_error");
  else llorch_http_respond(r->http, 200, "application/json", b.data, b.len);
  llorch_jbuf_free(&b);
  llorch_metric_inc(r->o->m_tokens, (const char *[]){"prompt"}, pt);
  r->http = NULL;
  r->finished = true;
  return 0;
}

static void exec_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  orch_req *r = user;
  r->call = NULL;
  if (req_gone(r)) {
    /* Client gone (on_close cancelled this call) or shutdown. */
    req_end(r, "cancelled");
    return;
  }
  char why[600];
  int status = r->exec_status;
  if (r->embed && err == 0 && status == 200) {
    size_t len = 0;
    const char *body = llorch_http_call_body(call, &len);
    if (embed_answer(r, body, len) == 0) {
      req_end(r, "completed");
      return;
    }
    snprintf(why, sizeof why, "the worker's embeddings answer is not what it should be");
    if (try_retry(r, true, why)) return;
    LOG_WARN("orch", r->rid, "request failed on %s: %s", r->worker_name, why);
    answer_worker_failed(r, "worker_failed");
    req_end(r, "failed");
    return;
  }
  if (err == 0 && status == 200 && r->got_end && !r->err_code[0]) {
    answer_success(r);
    req_end(r, "completed");
    return;
  }
  if (err != 0) {
    snprintf(why, sizeof why, "%s", errmsg ? errmsg : llorch_strerror(err));
    if (try_retry(r, true, why)) return;
  } else if (status == 200 && !r->got_end) {
    snprintf(why, sizeof why, "stream ended without an end event");
    if (try_retry(r, true, why)) return;
  } else if (status == 200) { /* error event */
    snprintf(why, sizeof why, "%s: %s", r->err_code, r->err_msg);
    if ((r->retriable_error || !r->got_token) && try_retry(r, !r->retriable_error, why)) return;
  } else {
    /* An HTTP error from the worker before any stream. */
    size_t len = 0;
    const char *body = llorch_http_call_body(call, &len);
    /* 501 from /v1/embeddings: that worker's device cannot embed (CUDA);
     * the client is told so, the worker is not broken */
    if ((status >= 400 && status < 500 && status != 401 && status != 408 && status != 429) ||
        (r->embed && status == 501)) {
      /* The request itself is wrong (the worker validates more than we do): pass it on
       * (in the client's API's envelope when that is not OpenAI's). */
      if (r->resume) {
        /* already streaming: the worker's error as an error event */
        cJSON *j = cJSON_ParseWithLength(body, len);
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
        answer_error(r, status, "invalid_request_error", "invalid_value",
                     cJSON_IsString(msg) ? msg->valuestring : "the worker refused the request");
        cJSON_Delete(j);
        req_end(r, "failed");
        return;
      }
      if (r->http && llorch_http_request_error_format(r->http) != LLORCH_HTTP_ERRORS_OPENAI)
        relay_error_body(r, status, body, len);
      else if (r->http) llorch_http_respond(r->http, status, "application/json", body, len);
      r->http = NULL;
      r->finished = true;
      req_end(r, "failed");
      return;
    }
    bool overloaded = (status == 503 || status == 429) && strstr(body, "overloaded");
    snprintf(why, sizeof why, "HTTP %d from %s: %.300s", status, r->embed ? "/v1/embeddings" : "/v2/execute", body);
    if (try_retry(r, !overloaded, why)) return;
  }
  LOG_WARN("orch", r->rid, "request failed on %s: %s", r->worker_name, why);
  answer_worker_failed(r, r->err_code[0] ? r->err_code : "worker_failed");
  req_end(r, "failed");
}

static int exec_start(orch_req *r) {
  orch *o = r->o;
  size_t blen = strlen(r->exec_body) + ORCH_JOB_ID_MAX + 32;
  char *body = malloc(blen);
  if (!body) return LLORCH_ENOMEM;
  /* exec_body is an object with at least messages/prompt: splice job_id in
   * (embeddings: the worker's /v1/embeddings body as it is). */
  if (r->embed) snprintf(body, blen, "%s", r->exec_body);
  else snprintf(body, blen, "{\"job_id\":\"%s\",%s", r->job_id, r->exec_body + 1);
  char url[SCHED_URL_MAX + 24];
  snprintf(url, sizeof url, "%s%s", r->worker_url, r->embed ? "/v1/embeddings" : "/v2/execute");
  char auth[160];
  snprintf(auth, sizeof auth, "Bearer %s", r->worker_token);
  const char *hdr[] = {"Content-Type", "application/json", "X-Request-Id", r->rid,
                       "Authorization", auth, NULL};
  if (!r->worker_token[0]) hdr[4] = NULL;
  llorch_http_call_opts opts = {0};
  opts.method = "POST";
  opts.url = url;
  opts.headers = hdr;
  opts.body = body;
  opts.body_len = strlen(body);
  opts.connect_timeout_ms = 2000;
  /* Tokens may be far apart on a slow model, but a silent worker is a dead one.
   * An embeddings answer comes only once every input was computed. */
  opts.read_timeout_ms = r->embed ? 600000 : 120000;
  opts.on_headers = exec_on_headers;
  opts.on_sse = r->embed ? NULL : exec_on_sse;
  opts.on_done = exec_on_done;
  opts.user = r;
  llorch_errmsg em = {{0}};
  int rc = llorch_http_call_start(o->client, &opts, &r->call, &em);
  free(body);
  if (rc < 0) {
    r->call = NULL;
    snprintf(r->err_msg, sizeof r->err_msg, "%s", em.text);
  }
  return rc;
}

void orch_req_assign(void *ud, sched_req *sr, sched_worker *w) {
  orch *o = ud;
  orch_req *r = sr->user;
  snprintf(r->worker_url, sizeof r->worker_url, "%s", w->url);
  snprintf(r->worker_token, sizeof r->worker_token, "%s", w->token);
  snprintf(r->worker_name, sizeof r->worker_name, "%s/%s", w->pool->name, w->id);
  /* Fresh and random per attempt, never the client's X-Request-Id: whoever
   * knows a job id can cancel it on the worker. */
  llorch_reqid_generate(r->job_id);
  LOG_DEBUG("orch", r->rid, "assigned to %s (job %s, attempt %d)", r->worker_name, r->job_id, sr->attempts);
  if (exec_start(r) < 0) {
    /* Not from inside the dispatch pass: the retry would re-enter it. */
    r->next_deferred = o->deferred;
    r->in_deferred = true;
    o->deferred = r;
    orch_kick(o);
  }
}

void orch_run_deferred(orch *o) {
  orch_req *list = o->deferred;
  o->deferred = NULL;
  while (list) {
    orch_req *r = list;
    list = r->next_deferred;
    r->next_deferred = NULL;
    r->in_deferred = false;
    if (req_gone(r)) {
      req_end(r, "cancelled");
      continue;
    }
    char why[SCHED_URL_MAX + sizeof r->err_msg + 32];
    snprintf(why, sizeof why, "cannot call %s: %s", r->worker_url, r->err_msg);
    if (try_retry(r, true, why)) continue;
    LOG_WARN("orch", r->rid, "request failed on %s: %s", r->worker_name, why);
    answer_worker_failed(r, "worker_failed");
    req_end(r, "failed");
  }
}

void orch_req_fail(void *ud, sched_req *sr, int status, const char *code, const char *msg) {
  orch *o = ud;
  orch_req *r = sr->user;
  LOG_WARN("orch", r->rid, "%s", msg);
  if (r->resume) {
    answer_error(r, status, "server_error", code, msg);
  } else if (r->http) {
    llorch_http_response_header(r->http, "Retry-After", "5");
    respond_error(r->http, status, "server_error", msg, NULL, code);
  }
  r->http = NULL;
  /* sr is already DONE (the scheduler took it out of the queue). */
  orch_count(o, strcmp(code, "queue_timeout") == 0 ? "timed_out" : "failed");
  req_free(r);
}

/* ---- client disconnect ---- */

/* Nobody reads the answer any more: the worker's job is cancelled. */
static void req_client_gone(orch_req *r) {
  r->http = NULL;
  if (r->finished) return;
  if (r->call) {
    /* an embeddings call has no job id: closing it cancels its jobs */
    if (!r->embed) worker_cancel_job(r);
    /* Runs exec_on_done (ECANCELED) before returning; it ends r. */
    llorch_http_call_cancel(r->call);
    return;
  }
  if (r->in_deferred) return; /* orch_run_deferred ends it */
  LOG_INFO("orch", r->rid, "client went away while queued");
  req_end(r, "cancelled");
}

static void req_on_close(llorch_http_request *http, void *data) {
  (void)http;
  req_client_gone(data);
}

void orch_req_abandon(orch_req *r) {
  r->resume = NULL; /* the record keeps what it has; nothing more goes to it */
  req_client_gone(r);
}

void orch_req_abort_all(orch *o) {
  /* Queued requests: answered 503 now; running ones finish within the grace period. */
  for (int p = 0; p < SCHED_N_PRIO; p++) {
    sched_req *q = &o->s.queues[p];
    while (q->next != q) {
      sched_req *sr = q->next;
      orch_req *r = sr->user;
      sched_request_cancel(&o->s, sr, orch_now_ms(o));
      if (r->resume) {
        answer_error(r, 503, "server_error", "shutting_down", "the orchestrator is shutting down");
      } else if (r->http) {
        llorch_http_response_header(r->http, "Retry-After", "5");
        respond_error(r->http, 503, "server_error", "the orchestrator is shutting down", NULL, "shutting_down");
      }
      r->http = NULL;
      r->finished = true;
      orch_count(o, "failed");
      req_free(r);
    }
  }
}

/* ---- handlers ---- */

static int request_priority(orch *o, llorch_http_request *req, int model) {
  const char *p = llorch_http_request_header(req, "X-Llorch-Priority");
  if (p && strcmp(p, "batch") == 0) return LLORCH_PRIORITY_BATCH;
  if (p && strcmp(p, "interactive") == 0) return LLORCH_PRIORITY_INTERACTIVE;
  return o->s.models[model].priority;
}

/*
 * Parsing and checking a large body costs milliseconds per MiB (and 8 MiB of
 * a bad shape tens of them); on the loop that would stall every other
 * connection, /health/live included. Bodies past this size are parsed on
 * libuv's thread pool; small ones inline, where a thread hop costs more.
 */
#define ORCH_PARSE_OFFLOAD_BYTES (64u << 10)

/* One body being parsed (inline or on the thread pool) before admission. */
typedef struct orch_parse {
  uv_work_t work;
  orch_req *r;                  /* r->http is the request; r->model_name set by the parse */
  const char *text;             /* the request's body: it outlives the parse (see on_generate) */
  size_t len;
  int rc;
  llorch_openai_error err;      /* the answer when rc < 0 (param copied: errparam is per thread) */
  char warning[256];            /* X-Llorch-Warning of a non-strict schema, set on the loop */
} orch_parse;

/* The catalog entry's reasoning_format (config is read-only: any thread may read it). */
static llorch_reasoning_format catalog_reasoning(const llorch_config *cfg, const char *model) {
  for (size_t i = 0; i < cfg->orchestrator.models.count; i++)
    if (strcmp(cfg->orchestrator.models.items[i].name, model) == 0)
      return cfg->orchestrator.models.items[i].reasoning_format == 1 ? LLORCH_REASONING_NONE
                                                                      : LLORCH_REASONING_CONTENT;
  return LLORCH_REASONING_CONTENT;
}

/*
 * Parses and checks the body with the OpenAI layer (the worker's own
 * validation, so both give the same 400), compiles response_format/grammar
 * to refuse a bad one before queueing, and builds the worker's /v2/execute
 * body (exec_start splices the job_id in). Touches nothing but p and p->r:
 * it runs on the thread pool for large bodies.
 */
/* parse_body of an embeddings request: the OpenAI layer's checks, model
 * required, and the worker's /v1/embeddings body (the model left out). */
static void parse_embed_body(orch_parse *p, const cJSON *body) {
  orch_req *r = p->r;
  llorch_openai_embed_request er;
  p->rc = llorch_openai_embed_parse(body, &er, &p->err);
  if (p->rc < 0) return;
  if (!er.model) {
    p->rc = llorch_openai_fail(&p->err, 400, "invalid_request_error", "missing_field", "model",
                               "'model' is required");
    return;
  }
  r->model_name = strdup(er.model);
  r->exec_body = r->model_name ? llorch_openai_embed_body(&er) : NULL;
  if (!r->exec_body)
    p->rc = llorch_openai_fail(&p->err, 500, "server_error", "internal_error", NULL, "out of memory");
}

static void parse_body(orch_parse *p) {
  orch_req *r = p->r;
  const llorch_config *cfg = r->o->cfg;
  cJSON *body = NULL;
  llorch_errmsg em = {{0}};
  p->rc = llorch_json_parse_bounded(p->text, p->len, (size_t)cfg->request.max_json_values,
                                    "request.max_json_values", &body, &em);
  if (p->rc < 0) {
    /* A NUL, invalid UTF-8 or a lone surrogate names its field; malformed JSON none. */
    const char *param = llorch_json_errparam();
    bool big = p->rc == LLORCH_ELIMIT;
    llorch_openai_fail(&p->err, big ? 413 : 400, "invalid_request_error",
                       big ? "request_too_large" : param[0] ? "invalid_value" : "invalid_json",
                       param[0] ? param : NULL, "%s", em.text);
    return;
  }
  if (r->embed) {
    parse_embed_body(p, body);
    goto out;
  }
  llorch_openai_limits lim = llorch_openai_limits_from_config(cfg);
  if (r->dialect != LLORCH_DIALECT_OPENAI) {
    /* Anthropic Messages / Responses: the same request as chat completions */
    cJSON *as_chat = NULL;
    p->rc = llorch_openai_dialect_to_chat(r->dialect, body, &lim, &as_chat, &p->err);
    cJSON_Delete(body);
    body = as_chat;
    if (p->rc < 0) goto out;
  }
  llorch_openai_request oreq;
  p->rc = llorch_openai_request_parse(body, r->chat ? LLORCH_OPENAI_CHAT : LLORCH_OPENAI_COMPLETION,
                                      &lim, &oreq, &p->err);
  if (p->rc < 0) goto out;
  if (!oreq.model) {
    p->rc = llorch_openai_fail(&p->err, 400, "invalid_request_error", "missing_field", "model",
                               "'model' is required");
    goto out;
  }
  llorch_grammar *g = NULL;
  char sparam[96] = "";
  p->rc = llorch_grammar_from_request(body, NULL, &g, sparam, sizeof sparam, p->warning,
                                      sizeof p->warning, &em);
  llorch_grammar_free(g);
  if (p->rc == LLORCH_ENOMEM) goto nomem;
  if (p->rc < 0) {
    llorch_openai_fail(&p->err, 400, "invalid_request_error",
                       p->rc == LLORCH_EUNSUPPORTED ? "unsupported_value" : "invalid_value", sparam,
                       "%s", em.text);
    goto out;
  }
  r->stream = oreq.stream;
  r->include_usage = oreq.include_usage;
  /* n > 1 goes to one worker as one /v2/execute (exec_body carries n) */
  r->ch = calloc((size_t)oreq.n, sizeof *r->ch);
  if (!r->ch) goto nomem;
  r->n = oreq.n;
  for (int i = 0; i < r->n; i++) {
    llorch_openai_message_init(&r->ch[i].msg);
    llorch_jbuf_init(&r->ch[i].text);
    llorch_openai_logprobs_init(&r->ch[i].lp, r->chat);
  }
  r->logprobs = oreq.logprobs;
  r->top_logprobs = oreq.top_logprobs;
  r->model_name = strdup(oreq.model);
  if (!r->model_name) goto nomem;
  /* the catalog's reasoning_format travels with each request */
  r->exec_body = llorch_openai_request_native_body(&oreq, NULL, catalog_reasoning(cfg, oreq.model));
  if (!r->exec_body) goto nomem;
  if (cfg->orchestrator.prefix_routing) req_prefix_hashes(r, body);
  goto out;
nomem:
  p->rc = llorch_openai_fail(&p->err, 500, "server_error", "internal_error", NULL, "out of memory");
out:
  cJSON_Delete(body);
}

/* Back on the loop with a parsed (or refused) body: model lookup and admission. */
static void parse_finish(orch_parse *p) {
  orch_req *r = p->r;
  orch *o = r->o;
  llorch_http_request *req = r->http;
  if (llorch_http_request_closed(req)) {
    /* The client left meanwhile: finishing the detached request frees it. */
    llorch_http_respond(req, 499, NULL, NULL, 0);
    r->http = NULL;
    req_free(r);
    free(p);
    return;
  }
  /* From here the execute body is the request: the raw one is not kept while it waits. */
  llorch_http_request_release_body(req);
  if (p->rc < 0) {
    llorch_openai_respond_error(req, &p->err);
    req_free(r);
    free(p);
    return;
  }
  if (p->warning[0]) llorch_http_response_header(req, "X-Llorch-Warning", p->warning);
  free(p);
  /* X-Llorch-Resumable: true (resume.c): streamed chat/completions only */
  bool resumable = false;
  const char *rh = llorch_http_request_header(req, "X-Llorch-Resumable");
  if (rh) {
    char msg[300];
    resumable = strcmp(rh, "true") == 0;
    if (!resumable && strcmp(rh, "false") != 0) {
      snprintf(msg, sizeof msg, "header X-Llorch-Resumable must be 'true' or 'false', got '%.60s'", rh);
      respond_error(req, 400, "invalid_request_error", msg, "X-Llorch-Resumable", "invalid_value");
      req_free(r);
      return;
    }
    if (resumable && (!r->stream || r->dialect != LLORCH_DIALECT_OPENAI)) {
      snprintf(msg, sizeof msg, "X-Llorch-Resumable: true needs a streamed request (\"stream\": true) "
                                "to /v1/chat/completions or /v1/completions");
      respond_error(req, 400, "invalid_request_error", msg, "X-Llorch-Resumable", "unsupported_value");
      req_free(r);
      return;
    }
  }
  if (o->stopping) { /* the shutdown began while the body was being parsed */
    respond_error(req, 503, "server_error", "the orchestrator is shutting down", NULL, "shutting_down");
    req_free(r);
    return;
  }
  int mi = sched_model_find(&o->s, r->model_name);
  if (mi < 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "The model '%.200s' does not exist", r->model_name);
    respond_error(req, 404, "invalid_request_error", msg, "model", "model_not_found");
    req_free(r);
    return;
  }
  r->held_bytes = strlen(r->exec_body);
  o->held_bytes += r->held_bytes;
  char cid[LLORCH_REQID_MAX + 1];
  llorch_reqid_generate(cid);
  snprintf(r->id, sizeof r->id, "%s%.32s",
           r->dialect != LLORCH_DIALECT_OPENAI ? llorch_openai_dialect_id_prefix(r->dialect)
           : r->chat                           ? "chatcmpl-"
                                               : "cmpl-",
           cid);
  r->created = (int64_t)time(NULL);
  if (r->dialect != LLORCH_DIALECT_OPENAI)
    llorch_openai_dout_init(&r->dout, r->dialect, r->id, r->model_name, r->created,
                            r->stream ? dout_send : NULL, r);
  r->sr.model = mi;
  r->sr.priority = request_priority(o, req, mi);
  r->t_admit_ns = orch_now_ns();
  int64_t now = orch_now_ms(o);
  int ra = 1;
  if (sched_submit(&o->s, &r->sr, now, &ra) < 0) {
    char v[16], msg[160];
    snprintf(v, sizeof v, "%d", ra);
    llorch_http_response_header(req, "Retry-After", v);
    snprintf(msg, sizeof msg, "the %s queue is full; retry after %d s",
             r->sr.priority == LLORCH_PRIORITY_BATCH ? "batch" : "interactive", ra);
    respond_error(req, 429, "rate_limit_error", msg, NULL, "queue_full");
    orch_count(o, "rejected");
    req_free(r);
    return;
  }
  orch_count(o, "admitted");
  if (resumable) {
    /* the record owns the client from here: a disconnect detaches it, it
     * does not cancel the request */
    r->resume = orch_resume_open(o, r, req);
    if (r->resume) r->http = NULL;
    else LOG_WARN("orch", r->rid, "cannot make the stream resumable (out of memory); serving it as a plain one");
  }
  if (!r->resume) llorch_http_request_set_data(req, r, req_on_close);
  LOG_DEBUG("orch", r->rid, "admitted for model %s (%s, %d queued)", r->model_name,
            r->sr.priority == LLORCH_PRIORITY_BATCH ? "batch" : "interactive", o->s.total_queued);
  sched_dispatch(&o->s, now);
}

static void parse_work(uv_work_t *w) {
  orch_thread_yield_to_loop();
  parse_body(w->data);
}

static void parse_after(uv_work_t *w, int status) {
  orch_parse *p = w->data;
  if (status < 0) { /* cancelled: the loop is closing */
    p->rc = llorch_openai_fail(&p->err, 503, "server_error", "shutting_down", NULL,
                               "the orchestrator is shutting down");
  }
  parse_finish(p);
}

static void on_generate(llorch_http_request *req, orch *o, bool chat, llorch_openai_dialect dialect,
                        bool embed) {
  if (o->stopping) {
    respond_error(req, 503, "server_error", "the orchestrator is shutting down", NULL, "shutting_down");
    return;
  }
  /* Queue full: refuse before parsing anything. */
  int ra = 1;
  if (o->s.total_queued >= o->s.lim.max_total && sched_queue_full(&o->s, 0, &ra)) {
    char v[16];
    snprintf(v, sizeof v, "%d", ra);
    llorch_http_response_header(req, "Retry-After", v);
    char msg[160];
    snprintf(msg, sizeof msg, "the queue is full (%d requests waiting); retry after %d s",
             o->s.total_queued, ra);
    respond_error(req, 429, "rate_limit_error", msg, NULL, "queue_full");
    orch_count(o, "rejected");
    return;
  }
  size_t len = 0;
  const char *text = llorch_http_request_body(req, &len);
  /*
   * Bytes budget: what admitted requests hold (their execute bodies, about
   * the size of what the client sent) is bounded, whatever the number of
   * requests. Refused before parsing, like a full queue.
   */
  uint64_t max_bytes = o->cfg->orchestrator.queue.max_bytes;
  if (max_bytes > 0 && o->held_bytes + len > max_bytes) {
    int wait = sched_retry_after_s(&o->s);
    char v[16], msg[200];
    snprintf(v, sizeof v, "%d", wait);
    llorch_http_response_header(req, "Retry-After", v);
    snprintf(msg, sizeof msg, "admitted requests already hold %" PRIu64 " bytes; this one (%zu bytes) "
             "would pass orchestrator.queue.max_bytes (%" PRIu64 "); retry after %d s",
             o->held_bytes, len, max_bytes, wait);
    respond_error(req, 429, "rate_limit_error", msg, NULL, "queue_full");
    orch_count(o, "rejected");
    return;
  }
  orch_req *r = calloc(1, sizeof *r);
  orch_parse *p = calloc(1, sizeof *p);
  if (!r || !p) {
    free(r);
    free(p);
    respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    return;
  }
  o->n_active++;
  r->o = o;
  r->sr.user = r;
  r->chat = chat;
  r->embed = embed;
  r->dialect = dialect;
  r->http = req;
  snprintf(r->rid, sizeof r->rid, "%s", llorch_http_request_id(req));
  p->r = r;
  p->text = text;
  p->len = len;
  p->work.data = p;
  /*
   * Offloaded: no on_close is set while the thread reads the body, so a
   * client that leaves only detaches the request, which (and its body)
   * lives until parse_finish answers it.
   */
  if (len > ORCH_PARSE_OFFLOAD_BYTES && uv_queue_work(o->loop, &p->work, parse_work, parse_after) == 0)
    return;
  parse_body(p);
  parse_finish(p);
}

void orch_on_chat(llorch_http_request *req, void *user) {
  on_generate(req, user, true, LLORCH_DIALECT_OPENAI, false);
}
void orch_on_completions(llorch_http_request *req, void *user) {
  on_generate(req, user, false, LLORCH_DIALECT_OPENAI, false);
}
void orch_on_messages(llorch_http_request *req, void *user) {
  on_generate(req, user, true, LLORCH_DIALECT_ANTHROPIC, false);
}
void orch_on_responses(llorch_http_request *req, void *user) {
  on_generate(req, user, true, LLORCH_DIALECT_RESPONSES, false);
}

void orch_on_embeddings(llorch_http_request *req, void *user) {
  on_generate(req, user, false, LLORCH_DIALECT_OPENAI, true);
}

void orch_on_models(llorch_http_request *req, void *user) {
  orch *o = user;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{\"object\":\"list\",\"data\":[");
  for (int i = 0; i < o->s.n_models; i++) {
    const sched_model *m = &o->s.models[i];
    if (i) llorch_jbuf_cstr(&b, ",");
    llorch_jbuf_cstr(&b, "{\"id\":");
    llorch_jbuf_str(&b, m->name);
    llorch_jbuf_cstr(&b, ",\"object\":\"model\",\"created\":");
    llorch_jbuf_int(&b, o->started_unix);
    llorch_jbuf_cstr(&b, ",\"owned_by\":\"llorch\",\"state\":");
    llorch_jbuf_str(&b, sched_model_state(&o->s, i));
    llorch_jbuf_cstr(&b, ",\"replicas\":");
    llorch_jbuf_int(&b, sched_model_replicas(&o->s, i));
    llorch_jbuf_cstr(&b, ",\"pending_reason\":");
    llorch_jbuf_str(&b, m->pending[0] ? m->pending : NULL);
    llorch_jbuf_cstr(&b, "}");
  }
  llorch_jbuf_cstr(&b, "]}");
  if (llorch_jbuf_error(&b)) respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
  else llorch_http_respond_json(req, 200, b.data);
  llorch_jbuf_free(&b);
}
