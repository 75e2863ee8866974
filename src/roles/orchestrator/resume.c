/*
 * Resumable streams (README "Resumable streams"): a streaming request sent
 * with `X-Llorch-Resumable: true` gets a record here that owns its client
 * connection. Every SSE event of the answer is numbered (`id: 1`, `2`, ...),
 * written to the client while one is attached, and kept (bounded per stream
 * and in total). When the client goes away the generation goes on; a
 * client that comes back within orchestrator.resume.window with
 * GET /v2/streams/{id} and `Last-Event-ID: n` gets events n+1.. and then
 * the live ones. Past the window (or past the per-stream bound while nobody
 * is attached) the generation is cancelled on the worker, as a disconnect
 * without the header cancels it at once.
 *
 * A stream belongs to the credential that opened it: only a request with the
 * same client key (Authorization bearer or x-api-key; its SHA-256 is kept,
 * not the key) can resume it; any other gets the 404 of an unknown id, so
 * one client cannot read another's answer even when both hold valid keys.
 *
 * The record outlives its request (req_free only unlinks it): an ended
 * stream stays fetchable for the window. Ended records go first when the
 * total bound needs room. Everything runs on the loop thread.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/auth.h"
#include "llorch/http.h"
#include "llorch/log.h"
#include "llorch/sha256.h"
#include "llorch/sse.h"
#include "orchestrator-impl.h"

typedef struct resume_ev {
  char *text;                  /* "id: N\n" + the event's SSE text */
  size_t len;
} resume_ev;

struct orch_resume {
  orch *o;
  char id[48];                 /* the response's id: GET /v2/streams/{id} */
  uint8_t owner[LLORCH_SHA256_BYTES]; /* SHA-256 of the opening request's client key (all 0: none) */
  orch_req *r;                 /* the request while it lives, else NULL */
  llorch_http_request *http;   /* the attached client, or NULL */
  resume_ev *ev;               /* (n_ev) kept events, oldest first */
  size_t n_ev, cap_ev;
  uint64_t first_seq;          /* id of ev[0] */
  uint64_t next_seq;           /* id of the next event (from 1) */
  size_t bytes;                /* kept */
  bool done;                   /* the stream's last event is in */
  bool overflowed;             /* past a bound with nobody attached: generation stopped */
  int64_t expires_ms;          /* freed after this (nobody attached); 0 = attached and running */
  orch_resume *prev, *next;    /* o->resumes */
};

static uint64_t resume_max_stream(const orch *o) { return o->cfg->orchestrator.resume.max_stream_bytes; }
static uint64_t resume_max_total(const orch *o) { return o->cfg->orchestrator.resume.max_bytes; }

static void resume_drop_oldest(orch_resume *s) {
  if (!s->n_ev) return;
  s->bytes -= s->ev[0].len;
  s->o->resume_bytes -= s->ev[0].len;
  free(s->ev[0].text);
  memmove(s->ev, s->ev + 1, (s->n_ev - 1) * sizeof *s->ev);
  s->n_ev--;
  s->first_seq++;
}

static void resume_free(orch_resume *s) {
  orch *o = s->o;
  if (s->prev) s->prev->next = s->next;
  else o->resumes = s->next;
  if (s->next) s->next->prev = s->prev;
  if (s->http) {
    llorch_http_request_set_data(s->http, NULL, NULL);
    llorch_http_sse_end(s->http);
  }
  if (s->r) s->r->resume = NULL;
  while (s->n_ev) resume_drop_oldest(s);
  free(s->ev);
  free(s);
}

/* The client is gone (closed, or not reading): the generation goes on for the window. */
static void resume_detach(orch_resume *s, const char *why) {
  orch *o = s->o;
  s->http = NULL;
  s->expires_ms = orch_now_ms(o) + o->cfg->orchestrator.resume.window_ms;
  LOG_INFO("orch", s->r ? s->r->rid : NULL, "resumable stream %s: %s; kept for %" PRId64 " ms", s->id, why,
           o->cfg->orchestrator.resume.window_ms);
}

static void resume_on_close(llorch_http_request *http, void *data) {
  (void)http;
  resume_detach(data, "the client went away");
}

/* SHA-256 of the request's client key, or all zero bytes when it sent none. */
static void resume_owner_of(const llorch_http_request *req, uint8_t out[LLORCH_SHA256_BYTES]) {
  const char *key = NULL;
  size_t len = 0;
  memset(out, 0, LLORCH_SHA256_BYTES);
  if (llorch_http_request_api_key(req, &key, &len) < 0) return;
  llorch_sha256 c;
  llorch_sha256_init(&c);
  llorch_sha256_update(&c, key, len);
  llorch_sha256_final(&c, out);
}

orch_resume *orch_resume_open(orch *o, orch_req *r, llorch_http_request *req) {
  orch_resume *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->o = o;
  s->r = r;
  snprintf(s->id, sizeof s->id, "%s", r->id);
  resume_owner_of(req, s->owner);
  s->first_seq = s->next_seq = 1;
  llorch_http_response_header(req, "X-Llorch-Stream-Id", s->id);
  if (llorch_http_sse_start(req) < 0) {
    free(s);
    return NULL;
  }
  s->http = req;
  llorch_http_request_set_data(req, s, resume_on_close);
  s->next = o->resumes;
  if (o->resumes) o->resumes->prev = s;
  o->resumes = s;
  return s;
}

/* Room in the total bound: ended streams nobody reads, oldest first (the list is newest first). */
static void resume_make_room(orch *o, const orch_resume *keep, size_t len) {
  orch_resume *last = o->resumes;
  while (last && last->next) last = last->next;
  for (orch_resume *s = last, *p; s && o->resume_bytes + len > resume_max_total(o); s = p) {
    p = s->prev;
    if (s != keep && s->done && !s->http) resume_free(s);
  }
}

void orch_resume_event(orch_resume *s, const char *event, const char *data, size_t len) {
  orch *o = s->o;
  if (s->overflowed || s->done) return;
  size_t n = 0;
  char *body = llorch_sse_format(event, data ? data : "", data ? len : 0, &n);
  char head[32];
  int h = snprintf(head, sizeof head, "id: %" PRIu64 "\n", s->next_seq);
  char *text = body ? malloc((size_t)h + n) : NULL;
  if (!text) {
    free(body);
    /* a lost event would make a resumed stream wrong: treat it as full */
    if (!s->http) s->overflowed = true;
    return;
  }
  memcpy(text, head, (size_t)h);
  memcpy(text + h, body, n);
  free(body);
  n += (size_t)h;
  s->next_seq++;
  if (s->http) {
    llorch_http_response_write(s->http, text, n);
    /* not reading: treated as gone (it may come back for the rest) */
    if (llorch_http_request_queued_bytes(s->http) > LLORCH_OPENAI_MAX_QUEUED_BYTES) {
      llorch_http_request *old = s->http;
      llorch_http_request_set_data(old, NULL, NULL);
      resume_detach(s, "the client is not reading");
      llorch_http_sse_end(old);
    }
  }
  resume_make_room(o, s, n);
  if (s->bytes + n > resume_max_stream(o) || o->resume_bytes + n > resume_max_total(o)) {
    if (!s->http) {
      /* Nobody got this event and it cannot be kept: the stream cannot be
       * resumed whole. The tick stops the generation (not from here: this
       * runs inside the request's own event handling). */
      free(text);
      s->overflowed = true;
      LOG_WARN("orch", s->r ? s->r->rid : NULL,
               "resumable stream %s: its client is away and its buffer is full (%zu bytes kept); "
               "stopping its generation", s->id, s->bytes);
      return;
    }
    /* An attached client was sent it: the oldest events make room. */
    while (s->n_ev && (s->bytes + n > resume_max_stream(o) || o->resume_bytes + n > resume_max_total(o)))
      resume_drop_oldest(s);
    if (s->bytes + n > resume_max_stream(o) || o->resume_bytes + n > resume_max_total(o)) {
      free(text);
      s->first_seq = s->next_seq; /* nothing kept: a resume from before is refused */
      return;
    }
  }
  if (s->n_ev == s->cap_ev) {
    size_t cap = s->cap_ev ? s->cap_ev * 2 : 64;
    resume_ev *ev = realloc(s->ev, cap * sizeof *ev);
    if (!ev) {
      free(text);
      if (!s->http) s->overflowed = true;
      return;
    }
    s->ev = ev;
    s->cap_ev = cap;
  }
  if (!s->n_ev) s->first_seq = s->next_seq - 1;
  s->ev[s->n_ev++] = (resume_ev){text, n};
  s->bytes += n;
  o->resume_bytes += n;
}

void orch_resume_end(orch_resume *s) {
  s->done = true;
  s->expires_ms = orch_now_ms(s->o) + s->o->cfg->orchestrator.resume.window_ms;
  if (s->http) {
    llorch_http_request_set_data(s->http, NULL, NULL);
    llorch_http_sse_end(s->http);
    s->http = NULL;
  }
}

void orch_resume_release(orch_resume *s) {
  s->r = NULL;
  if (!s->done) {
    /* the request ended without its last event (shutdown): nothing more comes */
    orch_resume_end(s);
  }
}

void orch_resume_tick(orch *o, int64_t now_ms) {
  for (orch_resume *s = o->resumes, *n; s; s = n) {
    n = s->next;
    if (s->http) continue;
    if (s->r && (s->overflowed || (s->expires_ms && now_ms >= s->expires_ms))) {
      orch_req *r = s->r;
      s->r = NULL;
      LOG_INFO("orch", r->rid, "resumable stream %s: %s; cancelling its generation", s->id,
               s->overflowed ? "buffer full with the client away" : "nobody came back within the window");
      /* may free r (and unlink it from s): s itself stays */
      orch_req_abandon(r);
      s->done = true;
    }
    if (s->expires_ms && now_ms >= s->expires_ms) resume_free(s);
  }
}

void orch_resume_stop(orch *o) {
  /* Shutdown: attached clients get the end of their response now; records stay until free_all. */
  for (orch_resume *s = o->resumes; s; s = s->next) {
    if (!s->http) continue;
    llorch_http_request_set_data(s->http, NULL, NULL);
    llorch_http_sse_end(s->http);
    s->http = NULL;
  }
}

void orch_resume_free_all(orch *o) {
  while (o->resumes) resume_free(o->resumes);
}

/* ---- GET /v2/streams/{id} ---- */

static orch_resume *resume_find(orch *o, const char *id) {
  for (orch_resume *s = o->resumes; s; s = s->next)
    if (strcmp(s->id, id) == 0) return s;
  return NULL;
}

void orch_on_stream(llorch_http_request *req, void *user) {
  orch *o = user;
  const char *id = llorch_http_request_path(req) + strlen("/v2/streams/");
  orch_resume *s = strchr(id, '/') ? NULL : resume_find(o, id);
  if (s) {
    uint8_t who[LLORCH_SHA256_BYTES];
    resume_owner_of(req, who);
    if (!llorch_auth_token_equal((const char *)who, sizeof who, (const char *)s->owner, sizeof s->owner))
      s = NULL; /* another client's stream: as unknown as a wrong id */
  }
  if (!s) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "no resumable stream '%.80s': unknown, not sent with X-Llorch-Resumable: true, or "
             "expired (orchestrator.resume.window)",
             id);
    llorch_http_respond_error(req, 404, "invalid_request_error", msg, NULL, "stream_not_found");
    return;
  }
  uint64_t last = 0;
  const char *h = llorch_http_request_header(req, "Last-Event-ID");
  if (h && h[0]) {
    char *end = NULL;
    unsigned long long v = strtoull(h, &end, 10);
    if (*end || h[0] < '0' || h[0] > '9') {
      char msg[200];
      snprintf(msg, sizeof msg, "Last-Event-ID '%.40s' is not an event id (a decimal number)", h);
      llorch_http_respond_error(req, 400, "invalid_request_error", msg, "Last-Event-ID", "invalid_value");
      return;
    }
    last = v;
  }
  if (last >= s->next_seq) {
    char msg[200];
    snprintf(msg, sizeof msg, "Last-Event-ID %" PRIu64 " is past the stream's last event (%" PRIu64 ")",
             last, s->next_seq - 1);
    llorch_http_respond_error(req, 400, "invalid_request_error", msg, "Last-Event-ID", "invalid_value");
    return;
  }
  if (last + 1 < s->first_seq) {
    char msg[300];
    snprintf(msg, sizeof msg,
             "events %" PRIu64 "..%" PRIu64 " of stream %s are no longer kept "
             "(orchestrator.resume.max_stream_bytes / max_bytes)",
             last + 1, s->first_seq - 1, s->id);
    llorch_http_respond_error(req, 410, "invalid_request_error", msg, "Last-Event-ID", "events_dropped");
    return;
  }
  if (s->http) {
    /* a new connection takes the stream over (the old one may be dead without our knowing) */
    llorch_http_request *old = s->http;
    llorch_http_request_set_data(old, NULL, NULL);
    s->http = NULL;
    llorch_http_sse_end(old);
  }
  llorch_http_response_header(req, "X-Llorch-Stream-Id", s->id);
  if (llorch_http_sse_start(req) < 0) return;
  for (size_t i = 0; i < s->n_ev; i++)
    if (s->first_seq + i > last) llorch_http_response_write(req, s->ev[i].text, s->ev[i].len);
  if (s->overflowed) {
    char *env = llorch_json_error_envelope(
        "the stream's events did not fit orchestrator.resume.max_stream_bytes while the client was "
        "away; its generation was stopped",
        "server_error", NULL, "resume_buffer_full");
    if (env) llorch_http_sse_send(req, NULL, env, strlen(env));
    free(env);
    llorch_http_sse_send(req, NULL, "[DONE]", 6);
    llorch_http_sse_end(req);
    return;
  }
  if (s->done) {
    llorch_http_sse_end(req);
    return;
  }
  s->http = req;
  s->expires_ms = 0;
  llorch_http_request_set_data(req, s, resume_on_close);
  LOG_INFO("orch", s->r ? s->r->rid : NULL, "resumable stream %s: resumed after event %" PRIu64, s->id, last);
}
