/*
 * Streaming text release with UTF-8 hold-back and stop strings.
 */
#include "textout.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"

/* ---- UTF-8 ---- */

/* Length of a valid UTF-8 sequence starting at p (n bytes available): 1..4,
 * 0 when the bytes are invalid, -k when valid so far but k more are needed. */
static int utf8_seq_len(const unsigned char *p, size_t n) {
  unsigned c = p[0];
  int need;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) need = 1, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) need = 2, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) need = 3, min = 0x10000;
  else return 0;
  uint32_t cp = c & (0x3F >> need);
  for (int k = 1; k <= need; k++) {
    if ((size_t)k >= n) return -(need + 1 - k);
    if ((p[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[k] & 0x3F);
    /* Reject overlong forms and surrogates as soon as the second byte shows. */
    if (k == 1 && need == 2 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F))) return 0;
    if (k == 1 && need == 3 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F))) return 0;
  }
  return cp >= min ? need + 1 : 0;
}

/* Bytes at the end of b[0..n) that start a valid but incomplete sequence. */
static size_t utf8_incomplete_tail(const char *b, size_t n) {
  for (size_t back = 1; back <= 3 && back <= n; back++) {
    const unsigned char *p = (const unsigned char *)b + n - back;
    if ((*p & 0xC0) == 0x80) continue; /* continuation: look further back */
    return utf8_seq_len(p, back) < 0 ? back : 0;
  }
  return 0;
}

char *worker_utf8_sanitize(const char *bytes, size_t n, size_t *out_len) {
  /* Each invalid byte becomes 3 bytes (U+FFFD). */
  char *out = malloc(n * 3 + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    int len = utf8_seq_len((const unsigned char *)bytes + i, n - i);
    if (len > 0) {
      memcpy(out + o, bytes + i, (size_t)len);
      o += (size_t)len;
      i += (size_t)len;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i++;
    }
  }
  out[o] = 0;
  if (out_len) *out_len = o;
  return out;
}

/* ---- stop strings ---- */

void worker_textout_init(worker_textout *t, char *const *stop, int n_stop) {
  memset(t, 0, sizeof *t);
  t->stop = stop;
  t->n_stop = n_stop;
}

void worker_textout_free(worker_textout *t) {
  free(t->held);
  memset(t, 0, sizeof *t);
}

/* Earliest position of any stop string in b, or SIZE_MAX. */
static size_t textout_find_stop(const worker_textout *t, const char *b, size_t n) {
  size_t best = SIZE_MAX;
  for (int k = 0; k < t->n_stop; k++) {
    size_t sl = strlen(t->stop[k]);
    if (!sl || sl > n) continue;
    for (size_t i = 0; i + sl <= n && i < best; i++)
      if (memcmp(b + i, t->stop[k], sl) == 0) {
        best = i;
        break;
      }
  }
  return best;
}

/* Longest tail of b that is a proper prefix of some stop string. */
static size_t textout_stop_prefix_tail(const worker_textout *t, const char *b, size_t n) {
  size_t best = 0;
  for (int k = 0; k < t->n_stop; k++) {
    size_t sl = strlen(t->stop[k]);
    for (size_t len = sl - 1 < n ? sl - 1 : n; len > best; len--)
      if (memcmp(b + n - len, t->stop[k], len) == 0) {
        best = len;
        break;
      }
  }
  return best;
}

/* Releases held[0..n) and keeps the rest. */
static int textout_release(worker_textout *t, size_t n, char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (n) {
    *out = worker_utf8_sanitize(t->held, n, out_len);
    if (!*out) return LLORCH_ENOMEM;
  }
  memmove(t->held, t->held + n, t->n_held - n);
  t->n_held -= n;
  return 0;
}

int worker_textout_push(worker_textout *t, const char *bytes, size_t n, char **out,
                        size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (t->stopped) return 0;
  if (t->n_held + n + 1 > t->cap_held) {
    size_t cap = (t->n_held + n + 1) * 2;
    char *h = realloc(t->held, cap);
    if (!h) return LLORCH_ENOMEM;
    t->held = h;
    t->cap_held = cap;
  }
  memcpy(t->held + t->n_held, bytes, n);
  t->n_held += n;

  size_t at = textout_find_stop(t, t->held, t->n_held);
  if (at != SIZE_MAX) {
    t->stopped = true;
    t->n_held = at; /* drop the stop string and whatever followed it */
    return textout_release(t, at, out, out_len);
  }
  size_t hold = textout_stop_prefix_tail(t, t->held, t->n_held);
  size_t hold_utf8 = utf8_incomplete_tail(t->held, t->n_held);
  if (hold_utf8 > hold) hold = hold_utf8;
  return textout_release(t, t->n_held - hold, out, out_len);
}

int worker_textout_flush(worker_textout *t, char **out, size_t *out_len) {
  return textout_release(t, t->n_held, out, out_len);
}
