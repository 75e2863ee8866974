/*
 * The one growable byte buffer: HTTP bodies and headers, SSE events, metrics
 * text, the JSON builder's storage, a text stream's pending bytes, a GGUF
 * file being written.
 *
 * The bytes are always followed by a NUL once anything was allocated, so a
 * buffer holding text can be handed to string functions as it is; binary
 * contents (GGUF) simply ignore it. Growth doubles, and a request that
 * would overflow size_t fails with LLORCH_ENOMEM instead of wrapping.
 */
#ifndef LLORCH_BUF_H
#define LLORCH_BUF_H

#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"

typedef struct llorch_buf {
  char *data;  /* NUL-terminated once allocated; NULL before */
  size_t len;  /* bytes, without the NUL */
  size_t cap;  /* bytes allocated */
} llorch_buf;

/* Makes room for `extra` more bytes (and the NUL). 0 or LLORCH_ENOMEM. */
static inline int llorch_buf_reserve(llorch_buf *b, size_t extra) {
  if (extra > ((size_t)-1) / 2 - b->len) return LLORCH_ENOMEM;
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) return LLORCH_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

static inline int llorch_buf_append(llorch_buf *b, const void *data, size_t len) {
  if (llorch_buf_reserve(b, len) < 0) return LLORCH_ENOMEM;
  if (len > 0) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

static inline int llorch_buf_append_str(llorch_buf *b, const char *s) {
  return llorch_buf_append(b, s, strlen(s));
}

/* Empties b, keeping its memory. */
static inline void llorch_buf_reset(llorch_buf *b) {
  b->len = 0;
  if (b->data != NULL) b->data[0] = '\0';
}

static inline void llorch_buf_free(llorch_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* Drops the first n bytes. */
static inline void llorch_buf_consume(llorch_buf *b, size_t n) {
  if (n >= b->len) {
    llorch_buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

#endif /* LLORCH_BUF_H */
