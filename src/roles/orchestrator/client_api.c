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
#include "prefix_route.h"

/* ---- small helpers ---- */

static const char *const role_names[] = {"system", "user", "assistant", "tool", "developer", NULL};

static void req_free(orch_req *r) {
  if (!r) return;
  r->o->n_active--;
  free(r->exec_body);
  free(r->model_name);
  free(r->prefix);
  llorch_jbuf_free(&r->text);
  llorch_jbuf_free(&r->lp);
  free(r);
}

static void respond_error(llorch_http_request *http, int status, const char *type, const char *msg,
                          const char *param, const char *code) {
  llorch_http_respond_error(http, status, type, msg, param && param[0] ? param : NULL, code);
}

/* A check made without a getter: its message and the field it names (llorch_json_errparam). */
static int field_error(llorch_errmsg *em, const char *param, const char *fmt, const char *a, int i) {
  char name[96];
  snprintf(name, sizeof name, param, a, i);
  llorch_json_set_errparam(name);
  return llorch_errmsg_set(em, LLORCH_EINVAL, fmt, a, i);
}

/* ---- validation and the execute body ---- */

/* Copies obj[key] into dst when present and not null. */
static void copy_field(cJSON *dst, const cJSON *obj, const char *key, const char *as) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return;
  cJSON *dup = cJSON_Duplicate(v, true);
  if (dup) cJSON_AddItemToObject(dst, as ? as : key, dup);
}

static int validate_messages(const cJSON *body, llorch_errmsg *em) {
  const cJSON *msgs = NULL;
  int rc = llorch_json_get_array(body, "", "messages", true, 1, &msgs, em);
  if (rc < 0) return rc;
  char where[64];
  for (int i = 0; i < cJSON_GetArraySize(msgs); i++) {
    const cJSON *m = cJSON_GetArrayItem(msgs, i);
    snprintf(where, sizeof where, "messages[%d]", i);
    if (!cJSON_IsObject(m)) return field_error(em, "%s", "'%s' must be an object", where, 0);
    int role;
    if ((rc = llorch_json_get_enum(m, where, "role", true, role_names, &role, em)) < 0) return rc;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (cJSON_IsString(c) || (cJSON_IsNull(c) && role == 2)) continue;
    if (cJSON_IsArray(c)) {
      for (int k = 0; k < cJSON_GetArraySize(c); k++) {
        const cJSON *part = cJSON_GetArrayItem(c, k);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t))
          return field_error(em, "%s.content[%d]", "'%s.content[%d]' must be {\"type\":\"text\",\"text\":...}",
                             where, k);
      }
      continue;
    }
    char desc[64], field[80];
    snprintf(field, sizeof field, "%s.content", where);
    llorch_json_set_errparam(field);
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s.content' must be a string or an array of text parts, got %s",
                             where, c ? llorch_json_describe(c, desc, sizeof desc) : "nothing");
  }
  return 0;
}

/* stop: a string or a list of at most 4 non-empty strings. */
static int validate_stop(const cJSON *body, llorch_errmsg *em) {
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
  if (!st || cJSON_IsNull(st) || cJSON_IsString(st)) return 0;
  if (cJSON_IsArray(st) && cJSON_GetArraySize(st) <= 4) {
    for (int i = 0; i < cJSON_GetArraySize(st); i++) {
      const cJSON *s = cJSON_GetArrayItem(st, i);
      if (!cJSON_IsString(s) || !s->valuestring[0]) {
        char field[32];
        snprintf(field, sizeof field, "stop[%d]", i);
        llorch_json_set_errparam(field);
        return llorch_errmsg_set(em, LLORCH_EINVAL, "'%s' must be a non-empty string", field);
      }
    }
    return 0;
  }
  llorch_json_set_errparam("stop");
  return llorch_errmsg_set(em, LLORCH_EINVAL, "'stop' must be a string or a list of at most 4 strings");
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

/*
 * Checks the client's body and builds the worker's /v2/execute body (without
 * job_id). Returns 0 or LLORCH_EINVAL with em; *param names the field.
 */
static int build_exec_body(orch_req *r, const cJSON *body, llorch_errmsg *em) {
  int rc;
  int64_t iv;
  double dv;
  bool bv;
  cJSON *ex = cJSON_CreateObject();
  if (!ex) return LLORCH_ENOMEM;
  if (r->chat) {
    if ((rc = validate_messages(body, em)) < 0) goto fail;
    copy_field(ex, body, "messages", NULL);
  } else {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0))) {
      cJSON_AddStringToObject(ex, "prompt", cJSON_GetArrayItem(p, 0)->valuestring);
    } else if (cJSON_IsString(p)) {
      cJSON_AddStringToObject(ex, "prompt", p->valuestring);
    } else {
      llorch_json_set_errparam("prompt");
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
  if ((rc = validate_stop(body, em)) < 0) goto fail;
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
  llorch_jbuf_cstr(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
  llorch_jbuf_int(b, r->cached_tokens);
  llorch_jbuf_cstr(b, "}}");
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
    for (int i = 0; i < cJSON_GetArraySize(lps); i++) {
      const cJSON *e = cJSON_GetArrayItem(lps, i);
      const cJSON *tok = cJSON_GetObjectItemCaseSensitive(e, "token");
      const cJSON *lp = cJSON_GetObjectItemCaseSensitive(e, "logprob");
      if (i) llorch_jbuf_cstr(b, ",");
      if (p == 0) llorch_jbuf_str(b, cJSON_IsString(tok) ? tok->valuestring : "");
      else if (p == 1) llorch_jbuf_num(b, cJSON_IsNumber(lp) ? lp->valuedouble : 0);
      else if (p == 3) llorch_jbuf_int(b, text_offset);
      else {
        llorch_jbuf_cstr(b, "{");
        const cJSON *tops = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
        for (int k = 0; k < cJSON_GetArraySize(tops); k++) {
          const cJSON *t = cJSON_GetArrayItem(tops, k);
          const cJSON *tt = cJSON_GetObjectItemCaseSensitive(t, "token");
          const cJSON *tl = cJSON_GetObjectItemCaseSensitive(t, "logprob");
          if (k) llorch_jbuf_cstr(b, ",");
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
        for (int i = 0; i < cJSON_GetArraySize(lps); i++) {
          char *s = llorch_json_print(cJSON_GetArrayItem(lps, i));
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
      for (int i = 0; i < cJSON_GetArraySize(arr); i++) {
        char *v = llorch_json_print(cJSON_GetArrayItem(arr, i));
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
    /* A client that stops reading would make us buffer its tokens without
     * bound: past the limit its job is cancelled on the worker, whose final
     * event still ends the response properly. */
    if (r->http && !r->slow_client && llorch_http_request_queued_bytes(r->http) > ORCH_MAX_QUEUED_BYTES) {
      LOG_WARN("orch", r->rid, "client %s is not reading (%zu bytes queued): cancelling job %s on %s",
               llorch_http_request_peer(r->http), llorch_http_request_queued_bytes(r->http), r->job_id,
               r->worker_name);
      r->slow_client = true;
      worker_cancel_job(r);
    }
  } else if (strcmp(ev->event, "end") == 0) {
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(d, "finish_reason");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(d, "prompt_tokens");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(d, "completion_tokens");
    const cJSON *cached = cJSON_GetObjectItemCaseSensitive(d, "cached_tokens");
    if (cJSON_IsNumber(cached)) r->cached_tokens = cached->valueint;
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
  answer_worker_failed(r, r->err_code[0] ? r->err_code : "worker_failed");
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
    if (!r->http) {
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

static void on_generate(llorch_http_request *req, orch *o, bool chat) {
  const char *rid = llorch_http_request_id(req);
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
  cJSON *body = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_json_parse(text, len, true, &body, &em) < 0) {
    /* A NUL, invalid UTF-8 or a lone surrogate names its field; malformed JSON none. */
    respond_error(req, 400, "invalid_request_error", em.text, llorch_json_errparam(),
                  llorch_json_errparam()[0] ? "invalid_value" : "invalid_json");
    return;
  }
  const char *model = NULL;
  if (llorch_json_get_string(body, "", "model", true, &model, &em) < 0) {
    respond_error(req, 400, "invalid_request_error", em.text, llorch_json_errparam(), "invalid_value");
    cJSON_Delete(body);
    return;
  }
  int mi = sched_model_find(&o->s, model);
  if (mi < 0) {
    char msg[300];
    snprintf(msg, sizeof msg, "The model '%.200s' does not exist", model);
    respond_error(req, 404, "invalid_request_error", msg, "model", "model_not_found");
    cJSON_Delete(body);
    return;
  }
  orch_req *r = calloc(1, sizeof *r);
  if (!r) {
    respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    cJSON_Delete(body);
    return;
  }
  o->n_active++;
  r->o = o;
  r->sr.user = r;
  r->chat = chat;
  r->http = req;
  llorch_jbuf_init(&r->text);
  llorch_jbuf_init(&r->lp);
  snprintf(r->rid, sizeof r->rid, "%s", rid);
  r->model_name = strdup(model);
  int rc = r->model_name ? build_exec_body(r, body, &em) : LLORCH_ENOMEM;
  if (rc == 0 && o->s.prefix) req_prefix_hashes(r, body);
  cJSON_Delete(body);
  if (rc < 0) {
    if (rc == LLORCH_ENOMEM) respond_error(req, 500, "server_error", "out of memory", NULL, "internal_error");
    else respond_error(req, 400, "invalid_request_error", em.text, llorch_json_errparam(), "invalid_value");
    req_free(r);
    return;
  }
  char cid[LLORCH_REQID_MAX + 1];
  llorch_reqid_generate(cid);
  snprintf(r->id, sizeof r->id, "%s-%.32s", chat ? "chatcmpl" : "cmpl", cid);
  r->created = (int64_t)time(NULL);
  r->sr.model = mi;
  r->sr.priority = request_priority(o, req, mi);
  r->t_admit_ns = orch_now_ns();
  int64_t now = orch_now_ms(o);
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
  /* r->model_name, not model: that pointed into the body, deleted above. */
  LOG_DEBUG("orch", r->rid, "admitted for model %s (%s, %d queued)", r->model_name,
            r->sr.priority == LLORCH_PRIORITY_BATCH ? "batch" : "interactive", o->s.total_queued);
  sched_dispatch(&o->s, now);
}

void orch_on_chat(llorch_http_request *req, void *user) { on_generate(req, user, true); }
void orch_on_completions(llorch_http_request *req, void *user) { on_generate(req, user, false); }

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
