/*
 * Scheduler events -> responses. The native SSE events of
 * docs/worker-api.md, or OpenAI chunks / one OpenAI answer written by the
 * shared OpenAI layer (include/llorch/openai.h). Chat output goes through
 * the layer's parser first: content, reasoning and tool calls come out as
 * deltas (worker_stream_on_delta), whichever API the request came by.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llorch/log.h"
#include "worker-impl.h"

/* ---- helpers ---- */

static const char *stream_finish_name(worker_finish f) {
  switch (f) {
  case WORKER_FINISH_STOP: return "stop";
  case WORKER_FINISH_LENGTH: return "length";
  case WORKER_FINISH_CANCELLED: return "cancelled";
  default: return NULL;
  }
}

/* A chat answer that ended by itself after tool calls ended for them. */
static const char *stream_finish_reason(const worker_stream *st, worker_finish f) {
  if (f == WORKER_FINISH_STOP && st->out && llorch_openai_output_n_calls(st->out) > 0)
    return "tool_calls";
  return stream_finish_name(f);
}

/* The bytes of one token id into buf (cap bytes): its logprobs text. */
static llorch_openai_lp_token stream_token(const worker *w, int32_t id, char *buf, size_t cap,
                                           double logprob) {
  int n = llorch_token_piece(w->tok, id, LLORCH_DETOK_RENDER_SPECIAL, buf, cap);
  if (n < 0) n = 0;
  if (n > (int)cap) n = (int)cap; /* pieces are short; a longer one is cut */
  /* Raw bytes: the writer turns invalid UTF-8 into U+FFFD in "token" and
   * keeps the exact values in "bytes". */
  return (llorch_openai_lp_token){.text = buf, .len = (size_t)n, .logprob = logprob};
}

/* Adds token event e's logprobs to lp. */
static void stream_lp_add(const worker *w, llorch_openai_logprobs *lp, const worker_event *e,
                          size_t text_offset) {
  char buf[256], tbuf[WORKER_MAX_TOP_LOGPROBS][256];
  llorch_openai_lp_token top[WORKER_MAX_TOP_LOGPROBS];
  llorch_openai_lp_token tok = stream_token(w, e->token_id, buf, sizeof buf, e->lp.logprob);
  int n_top = e->lp.n_top < WORKER_MAX_TOP_LOGPROBS ? e->lp.n_top : WORKER_MAX_TOP_LOGPROBS;
  for (int q = 0; q < n_top; q++)
    top[q] = stream_token(w, e->lp.top_id[q], tbuf[q], sizeof tbuf[q], e->lp.top_logprob[q]);
  llorch_openai_logprobs_add(lp, &tok, top, n_top, text_offset);
}

/*
 * A PROMPT event as the native "prompt" event's fields after job_id: the
 * echoed text, token_ids, text_bytes (what each token adds to the
 * detokenized text: the completions' text_offset) and, when the job asked
 * for logprobs, the entries (chat-shaped; the first token's logprob null).
 */
static void stream_prompt_fields(const worker_stream *st, const worker_event *e, llorch_jbuf *b) {
  const worker *w = st->w;
  const worker_stream *L = st->lead;
  const worker_job *j = st->job;
  llorch_jbuf_cstr(b, ",\"text\":");
  llorch_jbuf_strn(b, L->echo_text ? L->echo_text : "", L->echo_len);
  llorch_jbuf_cstr(b, ",\"token_ids\":[");
  for (uint32_t i = 0; i < j->n_prompt; i++) {
    if (i) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_int(b, j->prompt[i]);
  }
  llorch_jbuf_cstr(b, "],\"text_bytes\":[");
  for (uint32_t i = 0; i < j->n_prompt; i++) {
    char piece[256];
    int n = llorch_token_piece(w->tok, j->prompt[i], 0, piece, sizeof piece);
    if (i) llorch_jbuf_raw(b, ",", 1);
    llorch_jbuf_int(b, n > 0 ? n : 0);
  }
  llorch_jbuf_raw(b, "]", 1);
  if (!j->want_logprobs) return;
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, true);
  for (uint32_t i = 0; i < e->n_plp && i < j->n_prompt; i++) {
    worker_event te = {.token_id = j->prompt[i], .lp = e->plp[i]};
    stream_lp_add(w, &lp, &te, 0);
  }
  llorch_jbuf_cstr(b, ",\"logprobs\":[");
  llorch_jbuf_raw(b, lp.part[0].data ? lp.part[0].data : "", lp.part[0].len);
  llorch_jbuf_raw(b, "]", 1);
  if (llorch_jbuf_error(&lp.part[0]) < 0) b->err = LLORCH_ENOMEM;
  llorch_openai_logprobs_free(&lp);
}

static llorch_openai_meta stream_meta(const worker_stream *st) {
  return (llorch_openai_meta){.id = st->resp_id,
                              .created = st->created,
                              .model = st->model_echo,
                              .chat = st->api == LLORCH_OPENAI_CHAT,
                              .index = st->choice};
}

/* Sends one "data: <json>" SSE event (OpenAI streams have no event names);
 * every choice writes to its lead's request. */
static void stream_send_data(worker_stream *st, const llorch_jbuf *b) {
  llorch_http_request *req = st->lead->req;
  if (!req || llorch_jbuf_error(b) < 0) return;
  llorch_http_sse_send(req, NULL, b->data, b->len);
}

static void stream_start_sse(worker_stream *st) {
  worker_stream *L = st->lead;
  if (L->headers_sent || !L->req) return;
  llorch_http_sse_start(L->req);
  L->headers_sent = true;
}

/* This choice's final event is the request's last (n_open is counted down
 * before the event is handled). */
static bool stream_last(const worker_stream *st) { return st->lead->n_open == 0; }

int64_t worker_stream_cancel(worker *w, worker_stream *lead) {
  int n = lead->sibs ? lead->n_choices : 1;
  int64_t sent = 0;
  lead->cancelled = true;
  for (int i = 0; i < n; i++) {
    worker_stream *c = lead->sibs ? lead->sibs[i] : lead;
    worker_sched_cancel(w->sched, c->job);
    sent += c->n_tokens;
  }
  return sent;
}

/* ---- deltas from the output parser ---- */

/* One streamed chat chunk; the current token's logprobs ride on the first. */
static void stream_chat_chunk(worker_stream *st, const llorch_openai_delta *d) {
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, true);
  bool with_lp = st->cur && st->cur->has_logprob && !st->cur_lp_sent;
  if (with_lp) {
    stream_lp_add(st->w, &lp, st->cur, 0);
    st->cur_lp_sent = true;
  }
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_meta m = stream_meta(st);
  llorch_openai_write_chat_chunk(&b, &m, d, false, with_lp ? &lp : NULL, NULL);
  stream_send_data(st, &b);
  llorch_jbuf_free(&b);
  llorch_openai_logprobs_free(&lp);
}

void worker_stream_on_delta(void *user, const llorch_openai_delta *d) {
  worker_stream *st = user;
  if (st->dialect != LLORCH_DIALECT_OPENAI) {
    llorch_openai_dout_add(&st->dout, d);
  } else if (st->api == LLORCH_OPENAI_NATIVE) {
    if (st->deltas.len) llorch_jbuf_raw(&st->deltas, ",", 1);
    llorch_openai_write_delta(&st->deltas, d, false);
  } else if (st->stream) {
    stream_chat_chunk(st, d);
  } else {
    llorch_openai_message_add(&st->msg, d);
  }
}

/* Runs a token event's text (or, at the end, nothing: finish) through the
 * parser; the deltas go out through worker_stream_on_delta. */
static void stream_parse(worker_stream *st, const worker_event *e, bool finish) {
  st->cur = e;
  st->cur_lp_sent = false;
  int rc = 0;
  if (e && e->text_len) rc = llorch_openai_output_feed(st->out, e->text, e->text_len);
  if (finish && rc == 0) rc = llorch_openai_output_finish(st->out);
  if (rc < 0)
    LOG_WARN("worker", st->request_id, "job %s: the output parser failed: %s", st->job->id,
             llorch_strerror(rc));
}

/* ---- events: native API ---- */

static void stream_native_event(worker_stream *st, const worker_event *e) {
  worker *w = st->w;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  const char *name = NULL;
  llorch_jbuf_reset(&st->deltas);
  if (st->out && e->kind == WORKER_EV_TOKEN) stream_parse(st, e, false);
  if (st->out && e->kind == WORKER_EV_END) stream_parse(st, NULL, true);
  st->cur = NULL; /* e is freed after dispatch */
  worker_stream *L = st->lead;
  llorch_jbuf_raw(&b, "{", 1);
  llorch_jbuf_key(&b, "job_id");
  llorch_jbuf_str(&b, st->job->id);
  if (L->n_choices > 1) { /* n > 1: which choice the event belongs to */
    llorch_jbuf_cstr(&b, ",\"choice\":");
    llorch_jbuf_int(&b, st->choice);
  }
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
      llorch_openai_logprobs lp;
      llorch_openai_logprobs_init(&lp, true);
      stream_lp_add(w, &lp, e, 0);
      llorch_jbuf_cstr(&b, ",\"logprobs\":[");
      llorch_jbuf_raw(&b, lp.part[0].data ? lp.part[0].data : "", lp.part[0].len);
      llorch_jbuf_raw(&b, "]", 1);
      llorch_openai_logprobs_free(&lp);
    }
    break;
  case WORKER_EV_END:
    name = "end";
    llorch_jbuf_cstr(&b, ",\"finish_reason\":");
    llorch_jbuf_str(&b, stream_finish_reason(st, e->finish));
    llorch_jbuf_cstr(&b, ",\"prompt_tokens\":");
    llorch_jbuf_int(&b, e->prompt_tokens);
    llorch_jbuf_cstr(&b, ",\"completion_tokens\":");
    llorch_jbuf_int(&b, e->completion_tokens);
    llorch_jbuf_cstr(&b, ",\"cached_tokens\":");
    llorch_jbuf_int(&b, e->cached_tokens);
    if (st->job->stop_hit >= 0 && st->job->stop_hit < st->job->n_stop) {
      /* which stop string ended it (Anthropic's stop_sequence) */
      llorch_jbuf_cstr(&b, ",\"stop_sequence\":");
      llorch_jbuf_str(&b, st->job->stop[st->job->stop_hit]);
    }
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
  case WORKER_EV_PROMPT:
    name = "prompt";
    stream_prompt_fields(st, e, &b);
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
  /* Chat: the parsed output of this event (what a client shows). */
  if (st->out && (e->kind == WORKER_EV_TOKEN || e->kind == WORKER_EV_END)) {
    llorch_jbuf_cstr(&b, ",\"deltas\":[");
    llorch_jbuf_raw(&b, st->deltas.data ? st->deltas.data : "", st->deltas.len);
    llorch_jbuf_raw(&b, "]", 1);
  }
  llorch_jbuf_raw(&b, "}", 1);
  if (L->req && llorch_jbuf_error(&b) == 0 && llorch_jbuf_error(&st->deltas) == 0)
    llorch_http_sse_send(L->req, name, b.data, b.len);
  llorch_jbuf_free(&b);
  /* The stream ends after the last choice's end, or at the first error
   * (the other choices are cancelled then). */
  if (((e->kind == WORKER_EV_END && stream_last(st)) || e->kind == WORKER_EV_ERROR) && L->req) {
    llorch_http_sse_end(L->req);
    L->req = NULL;
    if (e->kind == WORKER_EV_ERROR && !stream_last(st)) worker_stream_cancel(w, L);
  }
}

/* ---- events: Anthropic Messages and Responses ---- */

static void stream_dialect_send(void *user, const char *event, const char *data, size_t len) {
  worker_stream *st = user;
  if (st->req) llorch_http_sse_send(st->req, event, data, len);
}

/* The answer in the request's API (openai.h llorch_openai_dout): the final
 * events, or the whole object. The dialects have no n: st is its own lead. */
static void stream_dialect_end(worker_stream *st, const worker_event *e) {
  const worker_job *j = st->job;
  const char *stop_seq = j->stop_hit >= 0 && j->stop_hit < j->n_stop ? j->stop[j->stop_hit] : NULL;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_dout_finish(&st->dout, stream_finish_reason(st, e->finish), stop_seq,
                            e->prompt_tokens, e->completion_tokens, st->stream ? NULL : &b);
  if (st->req && st->stream) {
    llorch_http_sse_end(st->req);
  } else if (st->req) {
    if (llorch_jbuf_error(&b) == 0 && st->dout.err == 0)
      llorch_http_respond_json(st->req, 200, b.data);
    else
      llorch_http_respond_error(st->req, 500, "server_error", "out of memory", NULL,
                                "internal_error");
  }
  st->req = NULL;
  llorch_jbuf_free(&b);
}

/* ---- events: OpenAI ---- */

/* The complete non-streaming answer, every choice in it (L is the lead;
 * called when the last choice ended). */
static void stream_openai_respond(worker_stream *L) {
  llorch_openai_choice ch[LLORCH_OPENAI_MAX_N];
  int n = L->sibs ? L->n_choices : 1;
  bool oom = false;
  for (int i = 0; i < n; i++) {
    const worker_stream *c = L->sibs ? L->sibs[i] : L;
    ch[i] = (llorch_openai_choice){.msg = &c->msg,
                                   .text = c->text.data,
                                   .len = c->text.len,
                                   .lp = c->job->want_logprobs ? &c->lp : NULL,
                                   .finish = c->end_finish};
    if (c->msg.err || llorch_jbuf_error(&c->text) < 0) oom = true;
  }
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_meta m = stream_meta(L);
  m.cached_tokens = L->end_cached_tokens;
  /* usage: the prompt once, every choice's completion tokens */
  llorch_openai_write_response(&b, &m, ch, n, L->end_prompt_tokens, L->completion_sum);
  if (L->req) {
    if (llorch_jbuf_error(&b) == 0 && !oom) {
      llorch_http_respond_json(L->req, 200, b.data);
    } else {
      llorch_http_respond_error(L->req, 500, "server_error", "out of memory", NULL,
                                "internal_error");
    }
    L->req = NULL;
  }
  llorch_jbuf_free(&b);
}

static void stream_openai_token(worker_stream *st, const worker_event *e) {
  worker *w = st->w;
  /* End-of-generation tokens are not part of an OpenAI completion. */
  if (llorch_tokenizer_is_eog(w->tok, e->token_id) && !e->text_len) return;
  bool chat = st->api == LLORCH_OPENAI_CHAT;
  if (!st->stream) {
    if (e->has_logprob) stream_lp_add(w, &st->lp, e, st->text_offset);
    if (chat) stream_parse(st, e, false);
    else if (e->text_len) llorch_jbuf_raw(&st->text, e->text, e->text_len);
  } else if (chat) {
    stream_parse(st, e, false);
    /* A token whose text is held back (a marker may be starting) still
     * shows its logprobs. */
    if (e->has_logprob && !st->cur_lp_sent && st->dialect == LLORCH_DIALECT_OPENAI)
      stream_chat_chunk(st, NULL);
  } else if (e->text_len || e->has_logprob) {
    llorch_openai_logprobs lp;
    llorch_openai_logprobs_init(&lp, false);
    if (e->has_logprob) stream_lp_add(w, &lp, e, st->text_offset);
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_openai_meta m = stream_meta(st);
    llorch_openai_write_completion_chunk(&b, &m, e->text, e->text_len,
                                         e->has_logprob ? &lp : NULL, NULL);
    stream_send_data(st, &b);
    llorch_jbuf_free(&b);
    llorch_openai_logprobs_free(&lp);
  }
  st->cur = NULL;
  st->text_offset += e->text_len;
}

/* echo: the prompt (and its logprobs) before the generated text, in the
 * answer or as the first chunk. */
static void stream_openai_prompt(worker_stream *st, const worker_event *e) {
  const worker_stream *L = st->lead;
  const char *text = L->echo_text ? L->echo_text : "";
  llorch_jbuf f;
  llorch_jbuf_init(&f);
  llorch_jbuf_raw(&f, "{\"x\":0", 6);
  stream_prompt_fields(st, e, &f);
  llorch_jbuf_raw(&f, "}", 1);
  cJSON *d = llorch_jbuf_error(&f) == 0 ? cJSON_ParseWithLength(f.data, f.len) : NULL;
  llorch_jbuf_free(&f);
  const cJSON *entries = cJSON_GetObjectItemCaseSensitive(d, "logprobs");
  const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(d, "text_bytes");
  if (!st->stream) {
    llorch_jbuf_raw(&st->text, text, L->echo_len);
    if (st->job->want_logprobs) {
      if (!d) st->text.err = LLORCH_ENOMEM; /* the answer becomes a 500 */
      llorch_openai_logprobs_add_prompt(&st->lp, entries, bytes, L->echo_len);
    }
  } else {
    llorch_openai_logprobs lp;
    llorch_openai_logprobs_init(&lp, false);
    if (st->job->want_logprobs) llorch_openai_logprobs_add_prompt(&lp, entries, bytes, L->echo_len);
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    llorch_openai_meta m = stream_meta(st);
    llorch_openai_write_completion_chunk(&b, &m, text, L->echo_len,
                                         st->job->want_logprobs ? &lp : NULL, NULL);
    stream_send_data(st, &b);
    llorch_jbuf_free(&b);
    llorch_openai_logprobs_free(&lp);
  }
  cJSON_Delete(d);
  st->text_offset += L->echo_len;
}

static void stream_openai_event(worker_stream *st, const worker_event *e) {
  worker_stream *L = st->lead;
  llorch_openai_meta m = stream_meta(st);
  m.cached_tokens = L->end_cached_tokens; /* in the usage chunk of the end */
  switch (e->kind) {
  case WORKER_EV_STARTED:
    if (st->dialect != LLORCH_DIALECT_OPENAI) {
      llorch_openai_dout_init(&st->dout, st->dialect, st->resp_id, st->model_echo, st->created,
                              st->stream ? stream_dialect_send : NULL, st);
      if (st->stream) stream_start_sse(st);
      llorch_openai_dout_start(&st->dout, st->job->n_prompt);
    } else if (st->stream) {
      stream_start_sse(st);
      if (st->api == LLORCH_OPENAI_CHAT) {
        llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
        d.content = "";
        llorch_jbuf b;
        llorch_jbuf_init(&b);
        llorch_openai_write_chat_chunk(&b, &m, &d, true, NULL, NULL);
        stream_send_data(st, &b);
        llorch_jbuf_free(&b);
      }
    }
    break;
  case WORKER_EV_TOKEN:
    stream_openai_token(st, e);
    break;
  case WORKER_EV_PROMPT:
    stream_openai_prompt(st, e);
    break;
  case WORKER_EV_END: {
    if (st->out) stream_parse(st, NULL, true);
    st->cur = NULL;
    st->end_finish = stream_finish_reason(st, e->finish);
    if (st->dialect != LLORCH_DIALECT_OPENAI) {
      stream_dialect_end(st, e);
      break;
    }
    if (!st->stream) {
      if (stream_last(st)) stream_openai_respond(L);
      break;
    }
    /* streaming: each choice's finish chunk; after the last, the usage
     * (the prompt once, every choice's completion tokens) and [DONE] */
    stream_start_sse(st);
    llorch_jbuf b;
    llorch_jbuf_init(&b);
    if (st->api == LLORCH_OPENAI_CHAT)
      llorch_openai_write_chat_chunk(&b, &m, NULL, false, NULL, st->end_finish);
    else
      llorch_openai_write_completion_chunk(&b, &m, "", 0, NULL, st->end_finish);
    stream_send_data(st, &b);
    if (st->include_usage && stream_last(st)) {
      llorch_jbuf_reset(&b);
      m.index = 0;
      llorch_openai_write_usage_chunk(&b, &m, L->end_prompt_tokens, L->completion_sum);
      stream_send_data(st, &b);
    }
    llorch_jbuf_free(&b);
    if (L->req && stream_last(st)) {
      llorch_http_sse_send(L->req, NULL, "[DONE]", 6);
      llorch_http_sse_end(L->req);
      L->req = NULL;
    }
    break;
  }
  case WORKER_EV_ERROR:
    /* One choice failed: the request fails (the other choices are cancelled). */
    if (L->req && !stream_last(st)) worker_stream_cancel(st->w, L);
    if (!L->headers_sent) {
      /* Nothing was sent yet: a proper status. Queue timeouts and shutdown
       * are "try again" (503); engine failures are 500. */
      llorch_openai_error err = {.status = e->retriable ? 503 : 500,
                                 .type = "server_error",
                                 .code = e->code,
                                 .retry_after_s = e->retriable ? 1 : 0};
      snprintf(err.message, sizeof err.message, "%s", e->message);
      if (L->req) llorch_openai_respond_error(L->req, &err);
      L->req = NULL;
      break;
    }
    if (L->req && st->dialect != LLORCH_DIALECT_OPENAI) {
      llorch_openai_dout_fail(&st->dout, e->code, e->message);
      llorch_http_sse_end(L->req);
      L->req = NULL;
    }
    if (L->req) {
      char *env = llorch_json_error_envelope(e->message, "server_error", NULL, e->code);
      if (env) llorch_http_sse_send(L->req, NULL, env, strlen(env));
      free(env);
      llorch_http_sse_send(L->req, NULL, "[DONE]", 6);
      llorch_http_sse_end(L->req);
      L->req = NULL;
    }
    break;
  }
}

/* ---- dispatch ---- */

static void stream_on_client_gone(llorch_http_request *req, void *data) {
  worker_stream *st = data;
  st->req = NULL;
  LOG_INFO("worker", st->request_id, "client went away: cancelling job %s", st->job->id);
  worker_stream_cancel(st->w, st);
}

void worker_stream_attach(worker *w, worker_stream *st) {
  llorch_http_request_set_data(st->req, st, stream_on_client_gone);
  st->prev = NULL;
  st->next = w->streams;
  if (w->streams) w->streams->prev = st;
  w->streams = st;
  if (st->api == LLORCH_OPENAI_NATIVE) stream_start_sse(st);
}

void worker_stream_destroy(worker_stream *st) {
  /* the lead frees the other choices (their jobs may name its job as leader) */
  for (int i = 1; st->sibs && i < st->n_choices; i++)
    if (st->sibs[i]) worker_stream_destroy(st->sibs[i]);
  free(st->sibs);
  worker_job_free(st->job);
  llorch_openai_output_free(st->out);
  cJSON_Delete(st->tools);
  llorch_openai_message_free(&st->msg);
  llorch_openai_dout_free(&st->dout);
  llorch_jbuf_free(&st->text);
  llorch_openai_logprobs_free(&st->lp);
  llorch_jbuf_free(&st->deltas);
  llorch_jbuf_free(&st->prompt_text);
  llorch_jbuf_free(&st->suffix_text);
  free(st->echo_text);
  llorch_jinja_output_free(&st->chat_prompt);
  llorch_tokens_free(&st->toks);
  llorch_tokens_free(&st->script_toks);
  free(st);
}

static void stream_free(worker *w, worker_stream *st) {
  w->held_bytes -= st->held_bytes;
  if (st->prev) st->prev->next = st->next;
  else w->streams = st->next;
  if (st->next) st->next->prev = st->prev;
  worker_remember_finished(w, st->job->id);
  if (st->req) llorch_http_request_set_data(st->req, NULL, NULL);
  worker_stream_destroy(st);
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
    /* the request's outcome and prompt are counted once, on its first choice */
    if (st == st->lead) {
      const char *outcome = e->finish == WORKER_FINISH_CANCELLED ? "cancelled" : "completed";
      if (e->finish == WORKER_FINISH_CANCELLED) w->n_cancelled++;
      else w->n_completed++;
      llorch_metric_inc(w->m.requests, (const char *[]){outcome}, 1);
      llorch_metric_inc(w->m.prompt_tokens, NULL, e->prompt_tokens);
    }
    LOG_INFO("worker", st->request_id,
             "job %s (choice %d) %s: %u prompt (%u cached) + %u generated tokens, ttft %.1f ms, total %.1f ms",
             st->job->id, st->choice, stream_finish_name(e->finish), e->prompt_tokens,
             e->cached_tokens, e->completion_tokens, e->ttft_ms, e->total_ms);
    break;
  }
  case WORKER_EV_ERROR:
    if (st == st->lead) {
      w->n_failed++;
      llorch_metric_inc(w->m.requests, (const char *[]){"failed"}, 1);
    }
    LOG_WARN("worker", st->request_id, "job %s (choice %d) failed: %s: %s", st->job->id, st->choice,
             e->code, e->message);
    break;
  case WORKER_EV_PROMPT:
    break;
  }
}

void worker_events_dispatch(worker *w) {
  if (!w->sched) return;
  for (worker_event *e = worker_sched_events_take(w->sched), *n; e; e = n) {
    n = e->next;
    if (e->job->pooling) { /* an embedding request's job */
      worker_embed_event(w, e);
      worker_event_free(e);
      continue;
    }
    worker_stream *st = e->job->owner;
    worker_stream *L = st->lead;
    if ((e->kind == WORKER_EV_TOKEN || e->kind == WORKER_EV_PROMPT) && L->cancelled) {
      worker_event_free(e);
      continue;
    }
    stream_observe(w, st, e);
    if (e->kind == WORKER_EV_STARTED) st->started = true;
    bool final = e->kind == WORKER_EV_END || e->kind == WORKER_EV_ERROR;
    if (final) {
      /* counted down first: the handlers see whether this is the last choice */
      L->n_open--;
      if (e->kind == WORKER_EV_END) {
        st->end_prompt_tokens = e->prompt_tokens;
        st->end_cached_tokens = e->cached_tokens;
        st->end_completion_tokens = e->completion_tokens;
        L->completion_sum += e->completion_tokens;
      }
    }
    if (st->api == LLORCH_OPENAI_NATIVE) stream_native_event(st, e);
    else stream_openai_event(st, e);
    /* A client that stops reading would make us buffer its tokens without
     * bound: past the limit its job is cancelled (the final event still
     * ends the response properly). */
    if (L->req && !L->cancelled && e->kind == WORKER_EV_TOKEN &&
        llorch_http_request_queued_bytes(L->req) > LLORCH_OPENAI_MAX_QUEUED_BYTES) {
      LOG_WARN("worker", st->request_id, "client is not reading (%zu bytes queued): cancelling job %s",
               llorch_http_request_queued_bytes(L->req), st->job->id);
      worker_stream_cancel(w, L);
    }
    if (final && L->n_open == 0) stream_free(w, L);
    worker_event_free(e);
  }
  worker_metrics_refresh(w);
}
