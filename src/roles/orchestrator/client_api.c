/*
 * The client API: OpenAI POST /v1/chat/completions, POST /v1/completions and
 * GET /v1/models.
 *
 * A request's life: API key -> queue-full check (429 before any parsing, so
 * a refused request costs nothing) -> validation (400/404 with the worker's
 * error envelope) -> admission (sched_submit) -> the scheduler assigns it to
 * a worker (orch_req_assign) -> POST /v2/execute on that worker, whose SSE
 * events (started, token, end, error) are relayed as OpenAI chunks as they
 * arrive, or collected into one JSON answer.
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

#include "llorch/log.h"
#include "orchestrator-impl.h"

/* ---- small helpers ---- */

static const char *const role_names[] = {"system", "user", "assistant", "tool", "developer", NULL};

static void req_free(orch_req *r) {
  if (!r) return;
  r->o->n_active--;
  r->o->held_bytes -= r->held_bytes;
  free(r->exec_body);
  free(r->model_name);
  llorch_jbuf_free(&r->text);
  llorch_jbuf_free(&r->lp);
  free(r);
}

static void respond_error(llorch_http_request *http, int status, const char *type, const char *msg,
                          const char *param, const char *code) {
  llorch_http_respond_error(http, status, type, msg, param, code);
}

/* ---- validation and the execute body ---- */

/* Copies obj[key] into dst when present and not null. */
static void copy_field(cJSON *dst, const cJSON *obj, const char *key, const char *as) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return;
  cJSON *dup = cJSON_Duplicate(v, true);
  if (dup) cJSON_AddItemToObject(dst, as ? as : key, dup);
}

/*
 * Every loop over a client's arrays walks the cJSON list once
 * (cJSON_ArrayForEach): cJSON_GetArrayItem(i) walks from the head, and in a
 * loop that made 100k tiny messages cost seconds of the event loop.
 */
static int validate_messages(const cJSON *body, const llorch_config *cfg, llorch_errmsg *em) {
  const cJSON *msgs = NULL;
  int rc = llorch_json_get_array(body, "", "messages", true, 1, &msgs, em);
  if (rc < 0) return rc;
  int n = cJSON_GetArraySize(msgs);
  if (n > cfg->request.max_messages)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'messages' has %d items, at most %d (request.max_messages)",
                             n, cfg->request.max_messages);
  char where[64];
  int i = -1, n_parts = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, msgs) {
    i++;
    snprintf(where, sizeof where, "messages[%d]", i);
    if (!cJSON_IsObject(m))
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be an object", where);
    int role;
    if ((rc = llorch_json_get_enum(m, where, "role", true, role_names, &role, em)) < 0) return rc;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsString(c) || (cJSON_IsNull(c) && role == 2)) continue;
    if (cJSON_IsArray(c)) {
      int k = -1;
      const cJSON *part;
      cJSON_ArrayForEach(part, c) {
        k++;
        if (++n_parts > cfg->request.max_content_parts)
          return llorch_errmsg_set(em, LLORCH_EINVAL, "the messages have more than %d content parts "
                                   "in all (request.max_content_parts)", cfg->request.max_content_parts);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t))
          return llorch_errmsg_set(em, LLORCH_EINVAL,
                                   "'%s.content[%d]' must be {\"type\":\"text\",\"text\":...}", where, k);
      }
      continue;
    }
    char desc[64];
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s.content' must be a string or an array of text parts, got %s",
                             where, c ? llorch_json_describe(c, desc, sizeof desc) : "nothing");
  }
  return 0;
}

/* stop: a string or a list of at most request.max_stop non-empty strings. */
static int validate_stop(const cJSON *body, const llorch_config *cfg, llorch_errmsg *em) {
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
  int max = cfg->request.max_stop;
  if (!st || cJSON_IsNull(st) || cJSON_IsString(st)) return 0;
  if (cJSON_IsArray(st) && cJSON_GetArraySize(st) <= max) {
    int i = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, st) {
      if (!cJSON_IsString(s) || !s->valuestring[0])
        return llorch_errmsg_set(em, LLORCH_EINVAL, "'stop[%d]' must be a non-empty string", i);
      i++;
    }
    return 0;
  }
  return llorch_errmsg_set(em, LLORCH_EINVAL,
                           "'stop' must be a string or a list of at most %d strings (request.max_stop)", max);
}

/* tools: not run here, but the worker gets the body: a huge list is refused first. */
static int validate_tools(const cJSON *body, const llorch_config *cfg, llorch_errmsg *em) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(body, "tools");
  if (!cJSON_IsArray(t)) return 0;
  int n = cJSON_GetArraySize(t);
  if (n > cfg->request.max_tools)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'tools' has %d items, at most %d (request.max_tools)", n,
                             cfg->request.max_tools);
  return 0;
}

/*
 * Checks the client's body and builds the worker's /v2/execute body (without
 * job_id). Returns 0 or LLORCH_EINVAL with em; *param names the field.
 */
int orch_req_build_exec_body(orch_req *r, const cJSON *body, const llorch_config *cfg,
                             llorch_errmsg *em) {
  int rc;
  int64_t iv;
  double dv;
  bool bv;
  cJSON *ex = cJSON_CreateObject();
  if (!ex) return LLORCH_ENOMEM;
  if (r->chat) {
    if ((rc = validate_messages(body, cfg, em)) < 0) goto fail;
    copy_field(ex, body, "messages", NULL);
  } else {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(p) && p->child && !p->child->next && cJSON_IsString(p->child)) {
      cJSON_AddStringToObject(ex, "prompt", p->child->valuestring);
    } else if (cJSON_IsString(p)) {
      cJSON_AddStringToObject(ex, "prompt", p->valuestring);
    } else {
      rc = llorch_errmsg_set(em, LLORCH_EINVAL, p ? "'prompt' must be a string or a list of one string"
                                                  : "'prompt' is required");
      goto fail;
    }
  }
  bv = false;
  if ((rc = llorch_json_get_bool(body, "", "stream", false, &bv, em)) < 0) goto fail;
  r->stream = bv;
  const cJSON *so = NULL;
  if ((rc = llorch_json_get_object(body, "", "stream_options", false, &so, em)) < 0) goto fail;
  if (so) {
    bv = false;
    if ((rc = llorch_json_get_bool(so, "stream_options", "include_usage", false, &bv, em)) < 0) goto fail;
    r->include_usage = bv;
  }
  iv = 1;
  if ((rc = llorch_json_get_int(body, "", "n", false, 1, 1, &iv, em)) < 0) goto fail;
  static const char *const int_fields[] = {"max_tokens", "max_completion_tokens"};
  for (int i = 0; i < (r->chat ? 2 : 1); i++) {
    iv = 0;
    if ((rc = llorch_json_get_int(body, "", int_fields[i], false, 1, 1 << 30, &iv, em)) < 0) goto fail;
    if (iv > 0 && !cJSON_GetObjectItemCaseSensitive(ex, "max_tokens"))
      cJSON_AddNumberToObject(ex, "max_tokens", (double)iv);
  }
  if ((rc = llorch_json_get_number(body, "", "temperature", false, 0, 2, &dv, em)) < 0) goto fail;
  if ((rc = llorch_json_get_number(body, "", "top_p", false, 0, 1, &dv, em)) < 0) goto fail;
  if ((rc = llorch_json_get_int(body, "", "top_k", false, 0, 1 << 20, &iv, em)) < 0) goto fail;
  if ((rc = llorch_json_get_int(body, "", "seed", false, INT64_MIN, INT64_MAX, &iv, em)) < 0) goto fail;
  if ((rc = llorch_json_get_number(body, "", "presence_penalty", false, -2, 2, &dv, em)) < 0) goto fail;
  if ((rc = llorch_json_get_number(body, "", "frequency_penalty", false, -2, 2, &dv, em)) < 0) goto fail;
  if ((rc = validate_stop(body, cfg, em)) < 0) goto fail;
  if ((rc = validate_tools(body, cfg, em)) < 0) goto fail;
  if (r->chat) {
    bv = false;
    if ((rc = llorch_json_get_bool(body, "", "logprobs", false, &bv, em)) < 0) goto fail;
    iv = 0;
    if ((rc = llorch_json_get_int(body, "", "top_logprobs", false, 0, 20, &iv, em)) < 0) goto fail;
    r->logprobs = bv;
    r->top_logprobs = (int)iv;
  } else {
    iv = 0;
    if ((rc = llorch_json_get_int(body, "", "logprobs", false, 0, 5, &iv, em)) < 0) goto fail;
    r->logprobs = iv > 0 || cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(body, "logprobs"));
    r->top_logprobs = (int)iv;
  }
  if (r->logprobs) {
    cJSON_AddBoolToObject(ex, "logprobs", 1);
    if (r->top_logprobs > 0) cJSON_AddNumberToObject(ex, "top_logprobs", r->top_logprobs);
  }
  static const char *const pass[] = {"temperature", "top_p", "top_k", "seed", "presence_penalty",
                                     "frequency_penalty", "stop", "ignore_eos"};
  for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++) copy_field(ex, body, pass[i], NULL);
  r->exec_body = llorch_json_print(ex);
  cJSON_Delete(ex);
  return r->exec_body ? 0 : LLORCH_ENOMEM;
fail:
  cJSON_Delete(ex);
  return rc;
}

/* ---- OpenAI output ---- */

static void chunk_head(orch_req *r, llorch_jbuf *b) {
  llorch_jbuf_cstr(b, "{\"id\":");
  llorch_jbuf_str(b, r->id);
  llorch_jbuf_cstr(b, r->chat ? ",\"object\":\"chat.completion.chunk\",\"created\":"
                              : ",\"object\":\"text_completion\",\"created\":");
  llorch_jbuf_int(b, r->created);
  llorch_jbuf_cstr(b, ",\"model\":");
  llorch_jbuf_str(b, r->model_name);
  llorch_jbuf_cstr(b, ",\"system_fingerprint\":null,\"choices\":[");
}

static void usage_json(orch_req *r, llorch_jbuf *b) {
  llorch_jbuf_cstr(b, "{\"prompt_tokens\":");
  llorch_jbuf_int(b, r->prompt_tokens);
  llorch_jbuf_cstr(b, ",\"completion_tokens\":");
  llorch_jbuf_int(b, r->completion_tokens);
  llorch_jbuf_cstr(b, ",\"total_tokens\":");
  llorch_jbuf_int(b, (int64_t)r->prompt_tokens + r->completion_tokens);
  llorch_jbuf_cstr(b, "}");
}

static void sse_send_buf(orch_req *r, llorch_jbuf *b) {
  if (!r->http || llorch_jbuf_error(b)) return;
  llorch_http_sse_send(r->http, NULL, b->data, b->len);
}

static void stream_start(orch_req *r) {
  if (r->sse_started || !r->http) return;
  if (llorch_http_sse_start(r->http) < 0) return;
  r->sse_started = true;
  if (!r->chat) return;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  chunk_head(r, &b);
  llorch_jbuf_cstr(&b, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                       "\"logprobs\":null,\"finish_reason\":null}]}");
  sse_send_buf(r, &b);
  llorch_jbuf_free(&b);
}

/*
 * Completions-style logprobs for one token event: {"tokens":[...],
 * "token_logprobs":[...],"top_logprobs":[{tok:lp}],"text_offset":[...]}.
 */
static void completion_logprobs(llorch_jbuf *b, const cJSON *lps, int text_offset) {
  static const char *const parts[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
  llorch_jbuf_cstr(b, "{");
  for (int p = 0; p < 4; p++) {
    if (p) llorch_jbuf_cstr(b, ",");
    llorch_jbuf_key(b, parts[p]);
    llorch_jbuf_cstr(b, "[");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, lps) {
      const cJSON *tok = cJSON_GetObjectItemCaseSensitive(e, "token");
      const cJSON *lp = cJSON_GetObjectItemCaseSensitive(e, "logprob");
      if (i++) llorch_jbuf_cstr(b, ",");
      if (p == 0) llorch_jbuf_str(b, cJSON_IsString(tok) ? tok->valuestring : "");
      else if (p == 1) llorch_jbuf_num(b, cJSON_IsNumber(lp) ? lp->valuedouble : 0);
      else if (p == 3) llorch_jbuf_int(b, text_offset);
      else {
        llorch_jbuf_cstr(b, "{");
        const cJSON *tops = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
        int k = 0;
        const cJSON *t;
        cJSON_ArrayForEach(t, tops) {
          const cJSON *tt = cJSON_GetObjectItemCaseSensitive(t, "token");
          const cJSON *tl = cJSON_GetObjectItemCaseSensitive(t, "logprob");
          if (k++) llorch_jbuf_cstr(b, ",");
          llorch_jbuf_key(b, cJSON_IsString(tt) ? tt->valuestring : "");
          llorch_jbuf_num(b, cJSON_IsNumber(tl) ? tl->valuedouble : 0);
        }
        llorch_jbuf_cstr(b, "}");
      }
    }
    llorch_jbuf_cstr(b, "]");
  }
  llorch_jbuf_cstr(b, "}");
}

/* One worker token event -> one chunk (streaming) or the accumulators. */
static void relay_token(orch_req *r, const cJSON *ev) {
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(ev, "text");
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(ev, "token_ids");
  const cJSON *lps = cJSON_GetObjectItemCaseSensitive(ev, "logprobs");
  const char *t = cJSON_IsString(text) ? text->valuestring : "";
  int n_ids = cJSON_IsArray(ids) ? cJSON_GetArraySize(ids) : 1;
  r->completion_tokens += n_ids > 0 ? n_ids : 1;
  bool has_lp = r->logprobs && cJSON_IsArray(lps) && cJSON_GetArraySize(lps) > 0;
  if (!r->stream) {
    int offset = (int)r->text.len;
    llorch_jbuf_cstr(&r->text, t);
    if (has_lp) {
      if (r->chat) {
        const cJSON *e;
        cJSON_ArrayForEach(e, lps) {
          char *s = llorch_json_print(e);
          if (!s) continue;
          if (r->n_lp++) llorch_jbuf_cstr(&r->lp, ",");
          llorch_jbuf_cstr(&r->lp, s);
          free(s);
        }
      } else {
        /* Kept per event; merged into the four arrays when answering. */
        if (r->n_lp++) llorch_jbuf_cstr(&r->lp, "\x1e");
        completion_logprobs(&r->lp, lps, offset);
      }
    }
    return;
  }
  if (!t[0] && !has_lp) return; /* held-back text: nothing to show yet */
  stream_start(r);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  chunk_head(r, &b);
  if (r->chat) {
    llorch_jbuf_cstr(&b, "{\"index\":0,\"delta\":{\"content\":");
    llorch_jbuf_str(&b, t);
    llorch_jbuf_cstr(&b, "},\"logprobs\":");
    if (has_lp) {
      char *s = llorch_json_print(lps);
      llorch_jbuf_cstr(&b, "{\"content\":");
      llorch_jbuf_cstr(&b, s ? s : "[]");
      llorch_jbuf_cstr(&b, "}");
      free(s);
    } else {
      llorch_jbuf_cstr(&b, "null");
    }
  } else {
    llorch_jbuf_cstr(&b, "{\"index\":0,\"text\":");
    llorch_jbuf_str(&b, t);
    llorch_jbuf_cstr(&b, ",\"logprobs\":");
    if (has_lp) completion_logprobs(&b, lps, 0);
    else llorch_jbuf_cstr(&b, "null");
  }
  llorch_jbuf_cstr(&b, ",\"finish_reason\":null}]}");
  sse_send_buf(r, &b);
  llorch_jbuf_free(&b);
  r->sent_tokens = true;
}

/* Merges the per-event completions logprobs objects (separated by 0x1e). */
static void completion_logprobs_merge(llorch_jbuf *out, const char *events) {
  static const char *const parts[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
  llorch_jbuf_cstr(out, "{");
  for (int p = 0; p < 4; p++) {
    if (p) llorch_jbuf_cstr(out, ",");
    llorch_jbuf_key(out, parts[p]);
    llorch_jbuf_cstr(out, "[");
    bool first = true;
    const char *s = events;
    while (s && *s) {
      const char *end = strchr(s, '\x1e');
      size_t len = end ? (size_t)(end - s) : strlen(s);
      cJSON *o = cJSON_ParseWithLength(s, len);
      const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, parts[p]);
      const cJSON *e;
      cJSON_ArrayForEach(e, arr) {
        char *v = llorch_json_print(e);
        if (!v) continue;
        if (!first) llorch_jbuf_cstr(out, ",");
        first = false;
        llorch_jbuf_cstr(out, v);
        free(v);
      }
      cJSON_Delete(o);
      s = end ? end + 1 : NULL;
    }
    llorch_jbuf_cstr(out, "]");
  }
  llorch_jbuf_cstr(out, "}");
}

static void answer_success(orch_req *r) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  if (r->stream) {
    stream_start(r);
    chunk_head(r, &b);
    llorch_jbuf_cstr(&b, r->chat ? "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":"
                                 : "{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":");
    llorch_jbuf_str(&b, r->finish_reason);
    llorch_jbuf_cstr(&b, "}]}");
    sse_send_buf(r, &b);
    if (r->include_usage) {
      llorch_jbuf_reset(&b);
      chunk_head(r, &b);
      llorch_jbuf_cstr(&b, "],\"usage\":");
      usage_json(r, &b);
      /* chunk_head opened "choices":[ ; close the object after usage. */
      llorch_jbuf_cstr(&b, "}");
      sse_send_buf(r, &b);
    }
    if (r->http) {
      llorch_http_sse_send(r->http, NULL, "[DONE]", 6);
      llorch_http_sse_end(r->http);
    }
  } else if (r->http) {
    llorch_jbuf_cstr(&b, "{\"id\":");
    llorch_jbuf_str(&b, r->id);
    llorch_jbuf_cstr(&b, r->chat ? ",\"object\":\"chat.completion\",\"created\":"
                                 : ",\"object\":\"text_completion\",\"created\":");
    llorch_jbuf_int(&b, r->created);
    llorch_jbuf_cstr(&b, ",\"model\":");
    llorch_jbuf_str(&b, r->model_name);
    llorch_jbuf_cstr(&b, ",\"system_fingerprint\":null,\"choices\":[{\"index\":0,");
    if (r->chat) {
      llorch_jbuf_cstr(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
      llorch_jbuf_str(&b, r->text.data ? r->text.data : "");
      llorch_jbuf_cstr(&b, "},\"logprobs\":");
      if (r->logprobs) {
        llorch_jbuf_cstr(&b, "{\"content\":[");
        if (r->lp.data) llorch_jbuf_cstr(&b, r->lp.data);
        llorch_jbuf_cstr(&b, "]}");
      } else {
        llorch_jbuf_cstr(&b, "null");
      }
    } else {
      llorch_jbuf_cstr(&b, "\"text\":");
      llorch_jbuf_str(&b, r->text.data ? r->text.data : "");
      llorch_jbuf_cstr(&b, ",\"logprobs\":");
      if (r->logprobs) completion_logprobs_merge(&b, r->lp.data ? r->lp.data : "");
      else llorch_jbuf_cstr(&b, "null");
    }
    llorch_jbuf_cstr(&b, ",\"finish_reason\":");
    llorch_jbuf_str(&b, r->finish_reason);
    llorch_jbuf_cstr(&b, "}],\"usage\":");
    usage_json(r, &b);
    llorch_jbuf_cstr(&b, "}");
    if (llorch_jbuf_error(&b)) respond_error(r->http, 500, "server_error", "out of memory", NULL, "internal_error");
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
  if (r->http) {
    if (r->sse_started) {
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
  if (!r->http) return; /* client gone: the call is being cancelled */
  cJSON *d = cJSON_ParseWithLength(ev->data, ev->data_len);
  if (!d) {
    LOG_WARN("orch", r->rid, "worker %s sent an event that is not JSON (%s)", r->worker_name, ev->event);
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
    relay_token(r, d);
  } else if (strcmp(ev->event, "end") == 0) {
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(d, "finish_reason");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(d, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(d, "completion_tokens");
    snprintf(r->finish_reason, sizeof r->finish_reason, "%s", cJSON_IsString(fr) ? fr->valuestring : "stop");
    if (cJSON_IsNumber(pt)) r->prompt_tokens = pt->valueint;
    if (cJSON_IsNumber(ct)) r->completion_tokens = ct->valueint;
    r->got_end = true;
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
  r->finish_reason[0] = '\0';
  r->completion_tokens = 0;
  llorch_jbuf_reset(&r->text);
  llorch_jbuf_reset(&r->lp);
  r->n_lp = 0;
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

static void exec_on_done(llorch_http_call *call, int err, const char *errmsg, void *user) {
  orch_req *r = user;
  r->call = NULL;
  if (!r->http) {
    /* Client gone (on_close cancelled this call) or shutdown. */
    req_end(r, "cancelled");
    return;
  }
  char why[600];
  int status = r->exec_status;
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
    if (status >= 400 && status < 500 && status != 401 && status != 408 && status != 429) {
      /* The request itself is wrong (the worker validates more than we do): pass it on. */
      if (r->http) llorch_http_respond(r->http, status, "application/json", body, len);
      r->http = NULL;
      r->finished = true;
      req_end(r, "failed");
      return;
    }
    bool overloaded = (status == 503 || status == 429) && strstr(body, "overloaded");
    snprintf(why, sizeof why, "HTTP %d from /v2/execute: %.300s", status, body);
    if (try_retry(r, !overloaded, why)) return;
  }
  LOG_WARN("orch", r->rid, "request failed on %s: %s", r->worker_name, why);
  char msg[700];
  snprintf(msg, sizeof msg, "the worker serving '%s' failed: %s", r->model_name, why);
  answer_error(r, 502, "server_error", r->err_code[0] ? r->err_code : "worker_failed", msg);
  req_end(r, "failed");
}

static int exec_start(orch_req *r) {
  orch *o = r->o;
  size_t blen = strlen(r->exec_body) + ORCH_JOB_ID_MAX + 32;
  char *body = malloc(blen);
  if (!body) return LLORCH_ENOMEM;
  /* exec_body is an object with at least messages/prompt: splice job_id in. */
  snprintf(body, blen, "{\"job_id\":\"%s\",%s", r->job_id, r->exec_body + 1);
  char url[SCHED_URL_MAX + 16];
  snprintf(url, sizeof url, "%s/v2/execute", r->worker_url);
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
  /* Tokens may be far apart on a slow model, but a silent worker is a dead one. */
  opts.read_timeout_ms = 120000;
  opts.on_headers = exec_on_headers;
  opts.on_sse = exec_on_sse;
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
  snprintf(r->job_id, sizeof r->job_id, "%.56s.%d", r->rid, sr->attempts);
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
    if (!r->http) {
      req_end(r, "cancelled");
      continue;
    }
    char why[SCHED_URL_MAX + sizeof r->err_msg + 32];
    snprintf(why, sizeof why, "cannot call %s: %s", r->worker_url, r->err_msg);
    if (try_retry(r, true, why)) continue;
    answer_error(r, 502, "server_error", "worker_failed", why);
    req_end(r, "failed");
  }
}

void orch_req_fail(void *ud, sched_req *sr, int status, const char *code, const char *msg) {
  orch *o = ud;
  orch_req *r = sr->user;
  LOG_WARN("orch", r->rid, "%s", msg);
  if (r->http) {
    llorch_http_response_header(r->http, "Retry-After", "5");
    respond_error(r->http, status, "server_error", msg, NULL, code);
  }
  r->http = NULL;
  /* sr is already DONE (the scheduler took it out of the queue). */
  orch_count(o, strcmp(code, "queue_timeout") == 0 ? "timed_out" : "failed");
  req_free(r);
}

/* ---- client disconnect ---- */

static void req_on_close(llorch_http_request *http, void *data) {
  (void)http;
  orch_req *r = data;
  r->http = NULL;
  if (r->finished) return;
  if (r->call) {
    worker_cancel_job(r);
    /* Runs exec_on_done (ECANCELED) before returning; it ends r. */
    llorch_http_call_cancel(r->call);
    return;
  }
  if (r->in_deferred) return; /* orch_run_deferred ends it */
  LOG_INFO("orch", r->rid, "client went away while queued");
  req_end(r, "cancelled");
}

void orch_req_abort_all(orch *o) {
  /* Queued requests: answered 503 now; running ones finish within the grace period. */
  for (int p = 0; p < SCHED_N_PRIO; p++) {
    sched_req *q = &o->s.queues[p];
    while (q->next != q) {
      sched_req *sr = q->next;
      orch_req *r = sr->user;
      sched_request_cancel(&o->s, sr, orch_now_ms(o));
      if (r->http) {
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
  const char *text;             /* the request's body: it outlives the parse (see parse_start) */
  size_t len;
  int rc;
  int status;                   /* 400, 413 or 500 when rc < 0 */
  const char *code;
  llorch_errmsg em;
  char param[128];              /* llorch_json_errparam() is per thread: copied here */
} orch_parse;

/* Parses and checks the body; touches nothing but p and p->r (thread-safe). */
static void parse_body(orch_parse *p) {
  orch_req *r = p->r;
  const llorch_config *cfg = r->o->cfg;
  cJSON *body = NULL;
  p->status = 400;
  p->code = "invalid_value";
  p->rc = llorch_json_parse_bounded(p->text, p->len, (size_t)cfg->request.max_json_values,
                                    "request.max_json_values", &body, &p->em);
  if (p->rc < 0) {
    p->status = p->rc == LLORCH_ELIMIT ? 413 : 400;
    p->code = p->rc == LLORCH_ELIMIT ? "request_too_large" : "invalid_json";
    return;
  }
  const char *model = NULL;
  p->rc = llorch_json_get_string(body, "", "model", true, &model, &p->em);
  if (p->rc == 0 && model[strcspn(model, "\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e"
                                   "\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b"
                                   "\x1c\x1d\x1e\x1f\x7f")] != '\0') {
    /* Echoed in messages and logs: a name with line breaks could forge lines. */
    p->rc = llorch_errmsg_set(&p->em, LLORCH_EINVAL, "'model' must not contain control characters");
    snprintf(p->param, sizeof p->param, "model");
    cJSON_Delete(body);
    return;
  }
  if (p->rc == 0) {
    r->model_name = strdup(model);
    p->rc = r->model_name ? orch_req_build_exec_body(r, body, cfg, &p->em) : LLORCH_ENOMEM;
  }
  if (p->rc < 0) snprintf(p->param, sizeof p->param, "%s", llorch_json_errparam());
  if (p->rc == LLORCH_ENOMEM) {
    p->status = 500;
    p->code = "internal_error";
    snprintf(p->em.text, sizeof p->em.text, "out of memory");
  }
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
    respond_error(req, p->status, p->status == 500 ? "server_error" : "invalid_request_error", p->em.text,
                  p->param[0] ? p->param : NULL, p->code);
    req_free(r);
    free(p);
    return;
  }
  free(p);
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
  snprintf(r->id, sizeof r->id, "%s-%.32s", r->chat ? "chatcmpl" : "cmpl", r->rid);
  r->created = (int64_t)time(NULL);
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
  llorch_http_request_set_data(req, r, req_on_close);
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
    p->rc = LLORCH_ECLOSED;
    p->status = 503;
    p->code = "shutting_down";
    snprintf(p->em.text, sizeof p->em.text, "the orchestrator is shutting down");
  }
  parse_finish(p);
}

static void on_generate(llorch_http_request *req, orch *o, bool chat) {
  if (!orch_check_api_key(o, req)) return;
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
  r->http = req;
  llorch_jbuf_init(&r->text);
  llorch_jbuf_init(&r->lp);
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

void orch_on_chat(llorch_http_request *req, void *user) { on_generate(req, user, true); }
void orch_on_completions(llorch_http_request *req, void *user) { on_generate(req, user, false); }

void orch_on_models(llorch_http_request *req, void *user) {
  orch *o = user;
  if (!orch_check_api_key(o, req)) return;
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
