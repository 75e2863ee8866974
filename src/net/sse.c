/*
 * Server-Sent Events: formatting an event, and an incremental parser for
 * event streams (WHATWG HTML "event stream interpretation").
 */
#include "llorch/sse.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/buf.h"

/* ---- formatting ---- */

char *llorch_sse_format(const char *event, const char *data, size_t len, size_t *out_len) {
  llorch_buf b = {0};
  int rc = 0;
  if (event != NULL) {
    rc |= llorch_buf_append(&b, "event: ", 7);
    /* A newline in the name would end the field early: cut it there. */
    rc |= llorch_buf_append(&b, event, strcspn(event, "\r\n"));
    rc |= llorch_buf_append(&b, "\n", 1);
  }
  /* One data line per line of data; "a\n" gives "a" and "" so the receiver's join is "a\n". */
  size_t i = 0;
  for (;;) {
    size_t j = i;
    while (j < len && data[j] != '\n' && data[j] != '\r') j++;
    rc |= llorch_buf_append(&b, "data: ", 6);
    rc |= llorch_buf_append(&b, data + i, j - i);
    rc |= llorch_buf_append(&b, "\n", 1);
    if (j == len) break;
    if (data[j] == '\r' && j + 1 < len && data[j + 1] == '\n') j++;
    i = j + 1;
  }
  rc |= llorch_buf_append(&b, "\n", 1);
  if (rc != 0) {
    llorch_buf_free(&b);
    return NULL;
  }
  if (out_len != NULL) *out_len = b.len;
  return b.data;
}

/* ---- parsing ---- */

struct llorch_sse_parser {
  llorch_sse_event_fn cb;
  void *user;
  size_t max_event_bytes;
  llorch_buf line;        /* the current, incomplete line */
  llorch_buf data;        /* data lines of the current event, joined with \n */
  llorch_buf event;       /* event name of the current event */
  llorch_buf id;          /* last event id (persists across events) */
  bool have_data;
  bool skip_lf;        /* the previous piece ended in \r: a leading \n belongs to it */
  bool started;        /* past the optional BOM */
  bool broken;         /* over the limit: refuse further input */
  long retry;
};

int llorch_sse_parser_init(llorch_sse_parser **out, size_t max_event_bytes,
                           llorch_sse_event_fn cb, void *user) {
  llorch_sse_parser *p = calloc(1, sizeof *p);
  if (p == NULL) return LLORCH_ENOMEM;
  p->cb = cb;
  p->user = user;
  p->max_event_bytes = max_event_bytes ? max_event_bytes : (16u << 20);
  p->retry = -1;
  if (llorch_buf_append(&p->id, "", 0) < 0) {
    free(p);
    return LLORCH_ENOMEM;
  }
  *out = p;
  return 0;
}

void llorch_sse_parser_free(llorch_sse_parser *p) {
  if (p == NULL) return;
  llorch_buf_free(&p->line);
  llorch_buf_free(&p->data);
  llorch_buf_free(&p->event);
  llorch_buf_free(&p->id);
  free(p);
}

long llorch_sse_parser_retry(const llorch_sse_parser *p) { return p->retry; }

static int sse_dispatch(llorch_sse_parser *p) {
  int rc = 0;
  if (p->have_data) {
    if (llorch_buf_append(&p->data, "", 0) < 0 || llorch_buf_append(&p->event, "", 0) < 0)
      return LLORCH_ENOMEM;
    llorch_sse_event ev = {
        .event = p->event.len ? p->event.data : "message",
        .data = p->data.data,
        .data_len = p->data.len,
        .id = p->id.data,
    };
    rc = p->cb(&ev, p->user);
  }
  llorch_buf_reset(&p->data);
  llorch_buf_reset(&p->event);
  p->have_data = false;
  return rc;
}

static int sse_line(llorch_sse_parser *p, const char *s, size_t n) {
  if (n == 0) return sse_dispatch(p);
  if (s[0] == ':') return 0; /* comment */
  const char *colon = memchr(s, ':', n);
  size_t flen = colon ? (size_t)(colon - s) : n;
  const char *val = colon ? colon + 1 : s + n;
  size_t vlen = colon ? n - flen - 1 : 0;
  if (vlen > 0 && val[0] == ' ') {
    val++;
    vlen--;
  }
  if (flen == 4 && memcmp(s, "data", 4) == 0) {
    int rc = 0;
    if (p->have_data) rc |= llorch_buf_append(&p->data, "\n", 1);
    rc |= llorch_buf_append(&p->data, val, vlen);
    p->have_data = true;
    return rc ? LLORCH_ENOMEM : 0;
  }
  if (flen == 5 && memcmp(s, "event", 5) == 0) {
    llorch_buf_reset(&p->event);
    return llorch_buf_append(&p->event, val, vlen) ? LLORCH_ENOMEM : 0;
  }
  if (flen == 2 && memcmp(s, "id", 2) == 0) {
    if (memchr(val, '\0', vlen) != NULL) return 0; /* ignored per spec */
    llorch_buf_reset(&p->id);
    return llorch_buf_append(&p->id, val, vlen) ? LLORCH_ENOMEM : 0;
  }
  if (flen == 5 && memcmp(s, "retry", 5) == 0) {
    long v = 0;
    size_t i;
    for (i = 0; i < vlen && val[i] >= '0' && val[i] <= '9' && v < 100000000; i++)
      v = v * 10 + (val[i] - '0');
    if (vlen > 0 && i == vlen) p->retry = v;
    return 0;
  }
  return 0; /* unknown fields are ignored */
}

int llorch_sse_parser_feed(llorch_sse_parser *p, const char *data, size_t len) {
  if (p->broken) return LLORCH_ELIMIT;
  size_t i = 0;
  if (!p->started) {
    /* Wait for three bytes to decide about a UTF-8 BOM. */
    if (llorch_buf_append(&p->line, data, len) < 0) return LLORCH_ENOMEM;
    if (p->line.len < 3 && memcmp(p->line.data, "\xEF\xBB\xBF", p->line.len) == 0) return 0;
    p->started = true;
    llorch_buf pre = p->line;
    p->line = (llorch_buf){0};
    size_t skip = pre.len >= 3 && memcmp(pre.data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    int rc = llorch_sse_parser_feed(p, pre.data + skip, pre.len - skip);
    llorch_buf_free(&pre);
    return rc;
  }
  if (p->skip_lf && len > 0) {
    p->skip_lf = false;
    if (data[0] == '\n') i = 1;
  }
  while (i < len) {
    size_t j = i;
    while (j < len && data[j] != '\n' && data[j] != '\r') j++;
    if (j == len) {
      /* Incomplete line: keep it for the next piece. */
      if (p->line.len + (j - i) + p->data.len > p->max_event_bytes) {
        p->broken = true;
        return LLORCH_ELIMIT;
      }
      if (llorch_buf_append(&p->line, data + i, j - i) < 0) return LLORCH_ENOMEM;
      break;
    }
    int rc;
    if (p->line.len > 0) {
      if (p->line.len + (j - i) + p->data.len > p->max_event_bytes) {
        p->broken = true;
        return LLORCH_ELIMIT;
      }
      if (llorch_buf_append(&p->line, data + i, j - i) < 0) return LLORCH_ENOMEM;
      rc = sse_line(p, p->line.data, p->line.len);
      llorch_buf_reset(&p->line);
    } else {
      if ((j - i) + p->data.len > p->max_event_bytes) {
        p->broken = true;
        return LLORCH_ELIMIT;
      }
      rc = sse_line(p, data + i, j - i);
    }
    if (data[j] == '\r') {
      if (j + 1 < len) {
        if (data[j + 1] == '\n') j++;
      } else {
        p->skip_lf = true;
      }
    }
    i = j + 1;
    if (rc != 0) return rc;
  }
  return 0;
}
