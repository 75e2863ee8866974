/*
 * Streaming detokenizer: complete UTF-8 only, stop strings across tokens.
 * See include/llorch/textstream.h for the contract.
 */
#include <stdlib.h>
#include <string.h>

#include "llorch/buf.h"
#include "llorch/textstream.h"
#include "llorch/utf8.h"

struct llorch_textstream {
  const llorch_tokenizer *tok;
  unsigned detok_flags;
  char **stops;     /* (n_stops) copies */
  size_t *stop_len; /* (n_stops) bytes */
  size_t n_stops;
  llorch_buf pend; /* bytes fed but not released */
  llorch_buf outb; /* what the last call released (sanitised) */
  bool stopped;
};

int llorch_textstream_init(llorch_textstream **out, const llorch_tokenizer *t, unsigned detok_flags,
                           const char *const *stops, size_t n_stops, llorch_errmsg *em) {
  *out = NULL;
  for (size_t i = 0; i < n_stops; i++)
    if (!stops[i] || !stops[i][0]) return llorch_errmsg_set(em, LLORCH_EINVAL, "stop string %zu is empty", i);
  llorch_textstream *ts = calloc(1, sizeof(*ts));
  if (!ts) return LLORCH_ENOMEM;
  ts->tok = t;
  ts->detok_flags = detok_flags;
  if (n_stops) {
    ts->stops = calloc(n_stops, sizeof(*ts->stops));
    ts->stop_len = calloc(n_stops, sizeof(*ts->stop_len));
    if (!ts->stops || !ts->stop_len) goto fail;
    for (size_t i = 0; i < n_stops; i++) {
      ts->stop_len[i] = strlen(stops[i]);
      ts->stops[i] = malloc(ts->stop_len[i] + 1);
      if (!ts->stops[i]) goto fail;
      memcpy(ts->stops[i], stops[i], ts->stop_len[i] + 1);
      ts->n_stops = i + 1;
    }
  }
  *out = ts;
  return 0;
fail:
  llorch_textstream_free(ts);
  return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for %zu stop strings", n_stops);
}

void llorch_textstream_free(llorch_textstream *ts) {
  if (!ts) return;
  for (size_t i = 0; i < ts->n_stops; i++) free(ts->stops[i]);
  free(ts->stops);
  free(ts->stop_len);
  llorch_buf_free(&ts->pend);
  llorch_buf_free(&ts->outb);
  free(ts);
}

bool llorch_textstream_stopped(const llorch_textstream *ts) { return ts->stopped; }
size_t llorch_textstream_pending(const llorch_textstream *ts) { return ts->pend.len; }

/* ---- UTF-8 ---- */

/* Bytes at the end of s[0..len) that begin a UTF-8 sequence still missing bytes. */
static size_t utf8_incomplete_tail(const char *s, size_t len) {
  for (size_t back = 1; back <= 3 && back <= len; back++) {
    uint8_t c = (uint8_t)s[len - back];
    if ((c & 0xc0) == 0x80) continue; /* continuation: keep looking for the lead */
    size_t bad;
    bool incomplete;
    llorch_utf8_next((const unsigned char *)s + len - back, back, &bad, &incomplete);
    return incomplete && bad == back ? back : 0;
  }
  return 0;
}

/* Copies s[0..len) into the output buffer, invalid sequences as U+FFFD. */
static int stream_release(llorch_textstream *ts, const char *s, size_t len, llorch_textstream_out *out) {
  /* at most 3 bytes out per byte in (U+FFFD for a lone invalid byte) */
  llorch_buf_reset(&ts->outb);
  if (llorch_buf_reserve(&ts->outb, 3 * len) != 0) return LLORCH_ENOMEM;
  char *dst = ts->outb.data;
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    size_t bad;
    bool incomplete;
    size_t v = llorch_utf8_next((const unsigned char *)s + i, len - i, &bad, &incomplete);
    if (v > 0) {
      memcpy(dst + o, s + i, v);
      o += v;
      i += v;
    } else {
      /* one U+FFFD per maximal subpart (an incomplete sequence is one too) */
      memcpy(dst + o, "\xef\xbf\xbd", 3);
      o += 3;
      i += bad;
    }
  }
  dst[o] = 0;
  ts->outb.len = o;
  out->text = dst;
  out->len = o;
  return 0;
}

/* ---- feeding ---- */

int llorch_textstream_feed_text(llorch_textstream *ts, const char *bytes, size_t len, llorch_textstream_out *out) {
  out->text = "";
  out->len = 0;
  out->stop = -1;
  if (ts->stopped || ts->pend.len + len == 0) return 0;
  if (llorch_buf_append(&ts->pend, bytes, len) != 0) return LLORCH_ENOMEM;
  const char *pend = ts->pend.data;
  size_t pend_len = ts->pend.len;

  /* the earliest stop string wholly present ends the stream */
  size_t best_at = SIZE_MAX;
  int best = -1;
  for (size_t i = 0; i < ts->n_stops; i++) {
    const char *m = memmem(pend, pend_len, ts->stops[i], ts->stop_len[i]);
    if (m && (size_t)(m - pend) < best_at) {
      best_at = (size_t)(m - pend);
      best = (int)i;
    }
  }
  if (best >= 0) {
    int rc = stream_release(ts, pend, best_at, out);
    if (rc != 0) return rc;
    out->stop = best;
    ts->stopped = true;
    llorch_buf_reset(&ts->pend);
    return 0;
  }

  /* hold back the longest tail that a stop string could still start with */
  size_t hold = utf8_incomplete_tail(pend, pend_len);
  for (size_t i = 0; i < ts->n_stops; i++) {
    size_t k = ts->stop_len[i] - 1 < pend_len ? ts->stop_len[i] - 1 : pend_len;
    for (; k > hold; k--) {
      if (memcmp(pend + pend_len - k, ts->stops[i], k) == 0) {
        hold = k;
        break;
      }
    }
  }
  size_t rel = pend_len - hold;
  int rc = stream_release(ts, pend, rel, out);
  if (rc != 0) return rc;
  llorch_buf_consume(&ts->pend, rel);
  return 0;
}

int llorch_textstream_feed(llorch_textstream *ts, int32_t id, llorch_textstream_out *out) {
  char piece[256];
  out->text = "";
  out->len = 0;
  out->stop = -1;
  if (!ts->tok) return LLORCH_EINVAL;
  int n = llorch_token_piece(ts->tok, id, ts->detok_flags, piece, sizeof(piece));
  if (n < 0) return n;
  if ((size_t)n <= sizeof(piece)) return llorch_textstream_feed_text(ts, piece, (size_t)n, out);
  char *big = malloc((size_t)n);
  if (!big) return LLORCH_ENOMEM;
  llorch_token_piece(ts->tok, id, ts->detok_flags, big, (size_t)n);
  int rc = llorch_textstream_feed_text(ts, big, (size_t)n, out);
  free(big);
  return rc;
}

int llorch_textstream_flush(llorch_textstream *ts, llorch_textstream_out *out) {
  out->text = "";
  out->len = 0;
  out->stop = -1;
  if (ts->stopped || ts->pend.len == 0) return 0;
  int rc = stream_release(ts, ts->pend.data, ts->pend.len, out);
  llorch_buf_reset(&ts->pend);
  return rc;
}
