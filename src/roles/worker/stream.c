/*
 * Scheduler events -> responses. One function per (event, API) pair: the
 * native SSE events of docs/worker-api.md, OpenAI chat/completion chunks, or
 * the text collected for a non-streaming answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/log.h"
#include "worker-impl.h"

/* ---- helpers ---- */

void worker_respond_error(llorch_http_request *req, const worker_error *err) {
  if (!req) return;
  if (err->retry_after_s > 0) {
    char v[16];
    snprintf(v, sizeof v, "%d", err->retry_after_s);
    llorch_http_response_header(req, "Retry-After", v);
  }
  llorch_http_respond_error(req, err->status, err->type, err->message,
                            err->param[0] ? err->param : NULL, err->code);
}

static const char *stream_finish_name(worker_finish f) {
  switch (f) {
  case WORKER_FINISH_STOP: return "stop";
  case WORKER_FINISH_LENGTH: return "length";
  case WORKER_FINISH_CANCELLED: return "cancelled";
  default: return NULL;
  }
}

char *worker_token_text(const worker *w, int32_t id, size_t *len, llorch_jbuf *bytes) {
  char buf[256];
  int n = llorch_token_piece(w->tok, id, LLORCH_DETOK_RENDER_SPECIAL, buf, sizeof buf);
  if (n < 0) n = 0;
  if (n > (int)sizeof buf) n = (int)sizeof buf; /* pieces are short; a longer one is cut */
  if (bytes) {
    llorch_jbuf_raw(bytes, "[", 1);
    for (int i = 0; i < n; i++) {
      if (i) llorch_jbuf_raw(bytes, ",", 1);
      llorch_jbuf_int(bytes, (unsigned char)buf[i]);
    }
    llorch_jbuf_raw(bytes, "]", 1);
  }
  /* Raw bytes: llorch_jbuf_strn turns invalid UTF-8 into U+FFFD when the
   * text is written out; `bytes` above keeps the exact values. */
  char *t = malloc((size_t)n + 1);
  if (!t) return NULL;
  memcpy(t, buf, (size_t)n);
  t[n] = 0;
  *len = (size_t)n;
  return t;
}

/* {"token":..,"logprob":..,"bytes":[..]} plus "top_logprobs":[...] when top. */
static void stream_lp_entry(const worker *w, llorch_jbuf *b, int32_t id, float lp,
                            const worker_token_logprob *top) {
  llorch_jbuf bytes;
  llorch_jbuf_init(&bytes);
  size_t tl;
  char *t = worker_token_text(w, id, &tl, &bytes);
  llorch_jbuf_raw(b, "{", 1);
  llorch_jbuf_key(b, "token");
  llorch_jbuf_strn(b, t ? t : "", t ? tl : 0);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "logprob");
  llorch_jbuf_num(b, lp);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "bytes");
  llorch_jbuf_raw(b, bytes.data ? bytes.data : "[]", bytes.data ? bytes.len : 2);
  if (top) {
    llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_key(b, "top_logprobs");
    llorch_jbuf_raw(b, "[", 1);
    for (int q = 0; q < top->n_top; q++) {
      if (q) llorch_jbuf_raw(b, ",", 1);
      stream_lp_entry(w, b, top->top_id[q], top->top_logprob[q], NULL);
    }
    llorch_jbuf_raw(b, "]", 1);
  }
  llorch_jbuf_raw(b, "}", 1);
  free(t);
  llorch_jbuf_free(&bytes);
}

/* Completions' logprobs pieces for one token: appends to the four arrays. */
static void stream_lp_completion(const worker *w, llorch_jbuf lp[4], const worker_event *e,
                                 size_t offset, bool first) {
  size_t tl;
  char *t = worker_token_text(w, e->token_id, &tl, NULL);
  if (!first)
    for (int k = 0; k < 4; k++) llorch_jbuf_raw(&lp[k], ",", 1);
  llorch_jbuf_strn(&lp[0], t ? t : "", t ? tl : 0);
  llorch_jbuf_num(&lp[1], e->lp.logprob);
  llorch_jbuf_raw(&lp[2], "{", 1);
  for (int q = 0; q < e->lp.n_top; q++) {
    size_t al;
    char *a = worker_token_text(w, e->lp.top_id[q], &al, NULL);
    if (q) llorch_jbuf_raw(&lp[2], ",", 1);
    /* the same token text twice would be a duplicate key: keep the first */
    char key[300];
    snprintf(key, sizeof key, "%.*s", (int)(a ? al : 0), a ? a : "");
    llorch_jbuf_key(&lp[2], key);
    llorch_jbuf_num(&lp[2], e->lp.top_logprob[q]);
    free(a);
  }
  llorch_jbuf_raw(&lp[2], "}", 1);
  llorch_jbuf_int(&lp[3], (int64_t)offset);
  free(t);
}

/* Common head of an OpenAI object: {"id":..,"object":..,"created":..,"model":.., */
static void stream_openai_head(const worker_stream *st, llorch_jbuf *b, const char *object) {
  llorch_jbuf_raw(b, "{", 1);
  llorch_jbuf_key(b, "id");
  llorch_jbuf_str(b, st->resp_id);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "object");
  llorch_jbuf_str(b, object);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "created");
  llorch_jbuf_int(b, st->created);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "model");
  llorch_jbuf_str(b, st->model_echo);
  llorch_jbuf_raw(b, ",", 1);
}

static void stream_usage(llorch_jbuf *b, uint32_t prompt, uint32_t completion, uint32_t cached) {
  llorch_jbuf_key(b, "usage");
  llorch_jbuf_raw(b, "{", 1);
  llorch_jbuf_key(b, "prompt_tokens");
  llorch_jbuf_int(b, prompt);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "completion_tokens");
  llorch_jbuf_int(b, completion);
  llorch_jbuf_raw(b, ",", 1);
  llorch_jbuf_key(b, "total_tokens");
  llorch_jbuf_int(b, (int64_t)prompt + completion);
  llorch_jbuf_cstr(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
  llorch_jbuf_int(b, cached);
  llorch_jbuf_raw(b, "}}", 2);
}

/* Sends one "data: <json>" SSE event (OpenAI streams have no event names). */
static void stream_send_data(worker_stream *st, const llorch_jbuf *b) {
  if (!st->req || llorch_jbuf_error(b) < 0) return;
  llorch_http_sse_send(st->req, NULL, b->data, b->len);
}

/* ---- starting a streamed response ---- */

static void stream_start_sse(worker_stream *st) {
  if (st->headers_sent || !st->req) return;
  llorch_http_sse_start(st->req);
  st->headers_sent = true;
}

/* ---- events: native API ---- */

static void stream_native_event(worker_stream *st, const worker_event *e) {
  worker *w = st->w;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  const char *name = NULL;
  llorch_jbuf_raw(&b, "{", 1);
  llorch_jbuf_key(&b, "job_id");
  llorch_jbuf_str(&b, st->job->id);
  switch (e->kind) {
  case WORKER_EV_STARTED:
    name = "started";
    llorch_jbuf_cstr(&b, ",\"slot\":");
    llorch_jbuf_int(&b, e->slot);
    llorch_jbuf_cstr(&b, ",\"prompt_tokens\":");
    llorch_jbuf_int(&b, st->job->n_prompt);
    llorch_jbuf_cstr(&b, ",\"max_tokens\":");
    llorch_jbuf_int(&b, e->max_tokens);
    llorch_jbuf_cstr(&b, ",\"queue_ms\":");
    llorch_jbuf_num(&b, e->queue_ms);
    break;
  case WORKER_EV_TOKEN:
    name = "token";
    llorch_jbuf_cstr(&b, ",\"index\":");
    llorch_jbuf_int(&b, e->index);
    llorch_jbuf_cstr(&b, ",\"text\":");
    llorch_jbuf_strn(&b, e->text ? e->text : "", e->text_len);
    llorch_jbuf_cstr(&b, ",\"token_ids\":[");
    llorch_jbuf_int(&b, e->token_id);
    llorch_jbuf_raw(&b, "]", 1);
    if (e->has_logprob) {
      llorch_jbuf_cstr(&b, ",\"logprobs\":[");
      stream_lp_entry(w, &b, e->token_id, e->lp.logprob, &e->lp);
      llorch_jbuf_raw(&b, "]", 1);
    }
    break;
  case WORKER_EV_END:
    name = "end";
    llorch_jbuf_cstr(&b, ",\"finish_reason\":");
    llorch_jbuf_str(&b, stream_finish_name(e->finish));
    llorch_jbuf_cstr(&b, ",\"prompt_tokens\":");
    llorch_jbuf_int(&b, e->prompt_tokens);
    llorch_jbuf_cstr(&b, ",\"completion_tokens\":");
    llorch_jbuf_int(&b, e->completion_tokens);
    llorch_jbuf_cstr(&b, ",\"cached_tokens\":");
    llorch_jbuf_int(&b, e->cached_tokens);
    llorch_jbuf_cstr(&b, ",\"timings\":{\"queue_ms\":");
    llorch_jbuf_num(&b, e->queue_ms);
    llorch_jbuf_cstr(&b, ",\"ttft_ms\":");
    llorch_jbuf_num(&b, e->ttft_ms);
    llorch_jbuf_cstr(&b, ",\"prefill_ms\":");
    llorch_jbuf_num(&b, e->prefill_ms);
    llorch_jbuf_cstr(&b, ",\"decode_ms\":");
    llorch_jbuf_num(&b, e->decode_ms);
    llorch_jbuf_cstr(&b, ",\"total_ms\":");
    llorch_jbuf_num(&b, e->total_ms);
    llorch_jbuf_cstr(&b, ",\"tokens_per_s\":");
    llorch_jbuf_num(&b, e->decode_ms > 0 && e->completion_tokens > 1
                            ? (e->completion_tokens - 1) / (e->decode_ms / 1000.0)
                            : 0.0);
    llorch_jbuf_raw(&b, "}", 1);
    break;
  case WORKER_EV_ERROR:
    name = "error";
    llorch_jbuf_cstr(&b, ",\"code\":");
    llorch_jbuf_str(&b, e->code);
    llorch_jbuf_cstr(&b, ",\"message\":");
    llorch_jbuf_str(&b, e->message);
    llorch_jbuf_cstr(&b, ",\"retriable\":");
    llorch_jbuf_bool(&b, e->retriable);
    break;
  }
  llorch_jbuf_raw(&b, "}", 1);
  if (st->req && llorch_jbuf_error(&b) == 0) llorch_http_sse_send(st->req, name, b.data, b.len);
  llorch_jbuf_free(&b);
  if ((e->kind == WORKER_EV_END || e->kind == WORKER_EV_ERROR) && st->req) {
    llorch_http_sse_end(st->req);
    st->req = NULL;
  }
}

/* ---- events: OpenAI ---- */

static void stream_openai_chunk(worker_stream *st, const char *text, size_t text_len,
                                const worker_event *lp_ev, const char *finish, bool role) {
  bool chat = st->api == WORKER_API_CHAT;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  stream_openai_head(st, &b, chat ? "chat.completion.chunk" : "text_completion");
  llorch_jbuf_cstr(&b, "\"choices\":[{\"index\":0,");
  if (chat) {
    llorch_jbuf_cstr(&b, "\"delta\":{");
    bool any = false;
    if (role) {
      llorch_jbuf_cstr(&b, "\"role\":\"assistant\"");
      any = true;
    }
    if (text) {
      if (any) llorch_jbuf_raw(&b, ",", 1);
      llorch_jbuf_key(&b, "content");
      llorch_jbuf_strn(&b, text, text_len);
    }
    llorch_jbuf_cstr(&b, "},\"logprobs\":");
    if (lp_ev) {
      llorch_jbuf_cstr(&b, "{\"content\":[");
      stream_lp_entry(st->w, &b, lp_ev->token_id, lp_ev->lp.logprob, &lp_ev->lp);
      llorch_jbuf_cstr(&b, "]}");
    } else {
      llorch_jbuf_cstr(&b, "null");
    }
  } else {
    llorch_jbuf_key(&b, "text");
    llorch_jbuf_strn(&b, text ? text : "", text ? text_len : 0);
    llorch_jbuf_cstr(&b, ",\"logprobs\":");
    if (lp_ev) {
      llorch_jbuf lp[4];
      for (int k = 0; k < 4; k++) llorch_jbuf_init(&lp[k]);
      stream_lp_completion(st->w, lp, lp_ev, st->text_offset, true);
      llorch_jbuf_cstr(&b, "{\"tokens\":[");
      llorch_jbuf_raw(&b, lp[0].data, lp[0].len);
      llorch_jbuf_cstr(&b, "],\"token_logprobs\":[");
      llorch_jbuf_raw(&b, lp[1].data, lp[1].len);
      llorch_jbuf_cstr(&b, "],\"top_logprobs\":[");
      llorch_jbuf_raw(&b, lp[2].data, lp[2].len);
      llorch_jbuf_cstr(&b, "],\"text_offset\":[");
      llorch_jbuf_raw(&b, lp[3].data, lp[3].len);
      llorch_jbuf_cstr(&b, "]}");
      for (int k = 0; k < 4; k++) llorch_jbuf_free(&lp[k]);
    } else {
      llorch_jbuf_cstr(&b, "null");
    }
  }
  llorch_jbuf_cstr(&b, ",\"finish_reason\":");
  llorch_jbuf_str(&b, finish);
  llorch_jbuf_cstr(&b, "}]}");
  stream_send_data(st, &b);
  llorch_jbuf_free(&b);
}

/* The complete non-streaming answer. */
static void stream_openai_respond(worker_stream *st, const worker_event *e) {
  bool chat = st->api == WORKER_API_CHAT;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  stream_openai_head(st, &b, chat ? "chat.completion" : "text_completion");
  llorch_jbuf_cstr(&b, "\"choices\":[{\"index\":0,");
  const char *text = st->text.data ? st->text.data : "";
  if (chat) {
    llorch_jbuf_cstr(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
    llorch_jbuf_strn(&b, text, st->text.len);
    llorch_jbuf_cstr(&b, "},\"logprobs\":");
    if (st->job->want_logprobs) {
      llorch_jbuf_cstr(&b, "{\"content\":[");
      llorch_jbuf_raw(&b, st->lp[0].data ? st->lp[0].data : "", st->lp[0].len);
      llorch_jbuf_cstr(&b, "]}");
    } else {
      llorch_jbuf_cstr(&b, "null");
    }
  } else {
    llorch_jbuf_key(&b, "text");
    llorch_jbuf_strn(&b, text, st->text.len);
    llorch_jbuf_cstr(&b, ",\"logprobs\":");
    if (st->job->want_logprobs) {
      static const char *const keys[4] = {"{\"tokens\":[", "],\"token_logprobs\":[",
                                          "],\"top_logprobs\":[", "],\"text_offset\":["};
      for (int k = 0; k < 4; k++) {
        llorch_jbuf_cstr(&b, keys[k]);
        llorch_jbuf_raw(&b, st->lp[k].data ? st->lp[k].data : "", st->lp[k].len);
      }
      llorch_jbuf_cstr(&b, "]}");
    } else {
      llorch_jbuf_cstr(&b, "null");
    }
  }
  llorch_jbuf_cstr(&b, ",\"finish_reason\":");
  llorch_jbuf_str(&b, stream_finish_name(e->finish));
  llorch_jbuf_cstr(&b, "}],");
  stream_usage(&b, e->prompt_tokens, e->completion_tokens, e->cached_tokens);
  llorch_jbuf_raw(&b, "}", 1);
  if (st->req) {
    if (llorch_jbuf_error(&b) == 0) {
      llorch_http_respond_json(st->req, 200, b.data);
    } else {
      llorch_http_respond_error(st->req, 500, "server_error", "out of memory", NULL,
                                "internal_error");
    }
    st->req = NULL;
  }
  llorch_jbuf_free(&b);
}

static void stream_openai_event(worker_stream *st, const worker_event *e) {
  worker *w = st->w;
  switch (e->kind) {
  case WORKER_EV_STARTED:
    if (st->stream) {
      stream_start_sse(st);
      if (st->api == WORKER_API_CHAT) stream_openai_chunk(st, "", 0, NULL, NULL, true);
    }
    break;
  case WORKER_EV_TOKEN: {
    /* End-of-generation tokens are not part of an OpenAI completion. */
    if (llorch_tokenizer_is_eog(w->tok, e->token_id) && !e->text_len) break;
    const worker_event *lp_ev = e->has_logprob ? e : NULL;
    if (st->stream) {
      if (e->text_len || lp_ev)
        stream_openai_chunk(st, e->text ? e->text : "", e->text_len, lp_ev, NULL, false);
    } else {
      if (lp_ev) {
        if (st->api == WORKER_API_CHAT) {
          if (st->lp[0].len) llorch_jbuf_raw(&st->lp[0], ",", 1);
          stream_lp_entry(w, &st->lp[0], e->token_id, e->lp.logprob, &e->lp);
        } else {
          stream_lp_completion(w, st->lp, e, st->text_offset, st->lp[0].len == 0);
        }
      }
      if (e->text_len) llorch_jbuf_raw(&st->text, e->text, e->text_len);
    }
    st->text_offset += e->text_len;
    break;
  }
  case WORKER_EV_END:
    if (!st->stream) {
      stream_openai_respond(st, e);
      break;
    }
    stream_start_sse(st);
    stream_openai_chunk(st, NULL, 0, NULL, stream_finish_name(e->finish), false);
    if (st->include_usage) {
      llorch_jbuf b;
      llorch_jbuf_init(&b);
      stream_openai_head(st, &b, st->api == WORKER_API_CHAT ? "chat.completion.chunk"
                                                            : "text_completion");
      llorch_jbuf_cstr(&b, "\"choices\":[],");
      stream_usage(&b, e->prompt_tokens, e->completion_tokens, e->cached_tokens);
      llorch_jbuf_raw(&b, "}", 1);
      stream_send_data(st, &b);
      llorch_jbuf_free(&b);
    }
    if (st->req) {
      llorch_http_sse_send(st->req, NULL, "[DONE]", 6);
      llorch_http_sse_end(st->req);
      st->req = NULL;
    }
    break;
  case WORKER_EV_ERROR:
    if (!st->headers_sent) {
      /* Nothing was sent yet: a proper status. Queue timeouts and shutdown
       * are "try again" (503); engine failures are 500. */
      worker_error err = {.status = e->retriable ? 503 : 500,
                          .type = "server_error",
                          .code = e->code,
                          .retry_after_s = e->retriable ? 1 : 0};
      snprintf(err.message, sizeof err.message, "%s", e->message);
      worker_respond_error(st->req, &err);
      st->req = NULL;
      break;
    }
    if (st->req) {
      char *env = llorch_json_error_envelope(e->message, "server_error", NULL, e->code);
      if (env) llorch_http_sse_send(st->req, NULL, env, strlen(env));
      free(env);
      llorch_http_sse_send(st->req, NULL, "[DONE]", 6);
      llorch_http_sse_end(st->req);
      st->req = NULL;
    }
    break;
  }
}

/* ---- dispatch ---- */

static void stream_on_client_gone(llorch_http_request *req, void *data) {
  worker_stream *st = data;
  st->req = NULL;
  LOG_INFO("worker", st->request_id, "client went away: cancelling job %s", st->job->id);
  worker_sched_cancel(st->w->sched, st->job);
}

void worker_stream_attach(worker *w, worker_stream *st) {
  llorch_http_request_set_data(st->req, st, stream_on_client_gone);
  st->prev = NULL;
  st->next = w->streams;
  if (w->streams) w->streams->prev = st;
  w->streams = st;
  if (st->api == WORKER_API_NATIVE) stream_start_sse(st);
}

static void stream_free(worker *w, worker_stream *st) {
  if (st->prev) st->prev->next = st->next;
  else w->streams = st->next;
  if (st->next) st->next->prev = st->prev;
  worker_remember_finished(w, st->job->id);
  if (st->req) llorch_http_request_set_data(st->req, NULL, NULL);
  worker_job_free(st->job);
  llorch_jbuf_free(&st->text);
  llorch_jbuf_free(&st->prompt_text);
  llorch_tokens_free(&st->toks);
  for (int k = 0; k < 4; k++) llorch_jbuf_free(&st->lp[k]);
  free(st);
}

static void stream_observe(worker *w, worker_stream *st, const worker_event *e) {
  uint64_t now = uv_hrtime();
  switch (e->kind) {
  case WORKER_EV_STARTED:
    llorch_metric_observe(w->m.queue_wait, NULL, e->queue_ms / 1000.0);
    break;
  case WORKER_EV_TOKEN:
    if (st->n_tokens == 0)
      llorch_metric_observe(w->m.ttft, NULL, (double)(now - st->job->t_submit_ns) / 1e9);
    else
      llorch_metric_observe(w->m.inter_token, NULL, (double)(now - st->t_last_token_ns) / 1e9);
    st->t_last_token_ns = now;
    st->n_tokens++;
    llorch_metric_inc(w->m.generated_tokens, NULL, 1);
    break;
  case WORKER_EV_END: {
    const char *outcome = e->finish == WORKER_FINISH_CANCELLED ? "cancelled" : "completed";
    if (e->finish == WORKER_FINISH_CANCELLED) w->n_cancelled++;
    else w->n_completed++;
    llorch_metric_inc(w->m.requests, (const char *[]){outcome}, 1);
    llorch_metric_inc(w->m.prompt_tokens, NULL, e->prompt_tokens);
    LOG_INFO("worker", st->request_id,
             "job %s %s: %u prompt + %u generated tokens, ttft %.1f ms, total %.1f ms",
             st->job->id, stream_finish_name(e->finish), e->prompt_tokens, e->completion_tokens,
             e->ttft_ms, e->total_ms);
    break;
  }
  case WORKER_EV_ERROR:
    w->n_failed++;
    llorch_metric_inc(w->m.requests, (const char *[]){"failed"}, 1);
    LOG_WARN("worker", st->request_id, "job %s failed: %s: %s", st->job->id, e->code, e->message);
    break;
  }
}

void worker_events_dispatch(worker *w) {
  if (!w->sched) return;
  for (worker_event *e = worker_sched_events_take(w->sched), *n; e; e = n) {
    n = e->next;
    worker_stream *st = e->job->owner;
    if (e->kind == WORKER_EV_TOKEN && st->cancelled) {
      worker_event_free(e);
      continue;
    }
    stream_observe(w, st, e);
    if (e->kind == WORKER_EV_STARTED) st->started = true;
    if (st->api == WORKER_API_NATIVE) stream_native_event(st, e);
    else stream_openai_event(st, e);
    /* A client that stops reading would make us buffer its tokens without
     * bound: past the limit its job is cancelled (the final event still
     * ends the response properly). */
    if (st->req && !st->cancelled && e->kind == WORKER_EV_TOKEN &&
        llorch_http_request_queued_bytes(st->req) > WORKER_MAX_QUEUED_BYTES) {
      LOG_WARN("worker", st->request_id, "client is not reading (%zu bytes queued): cancelling job %s",
               llorch_http_request_queued_bytes(st->req), st->job->id);
      st->cancelled = true;
      worker_sched_cancel(w->sched, st->job);
    }
    if (e->kind == WORKER_EV_END || e->kind == WORKER_EV_ERROR) stream_free(w, st);
    worker_event_free(e);
  }
  worker_metrics_refresh(w);
}
