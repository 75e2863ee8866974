/*
 * A growable byte buffer shared by the net module's files (internal).
 */
#ifndef LLORCH_NET_NETBUF_H
#define LLORCH_NET_NETBUF_H

#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"

typedef struct net_buf {
  char *data;  /* always NUL-terminated once allocated; NULL before */
  size_t len;  /* bytes, without the NUL */
  size_t cap;  /* bytes allocated */
} net_buf;

static inline int net_buf_reserve(net_buf *b, size_t extra) {
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

static inline int net_buf_append(net_buf *b, const void *data, size_t len) {
  if (net_buf_reserve(b, len) < 0) return LLORCH_ENOMEM;
  if (len > 0) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = '\0';
  return 0;
}

static inline int net_buf_append_str(net_buf *b, const char *s) {
  return net_buf_append(b, s, strlen(s));
}

static inline void net_buf_reset(net_buf *b) {
  b->len = 0;
  if (b->data != NULL) b->data[0] = '\0';
}

static inline void net_buf_free(net_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* Drops the first n bytes. */
static inline void net_buf_consume(net_buf *b, size_t n) {
  if (n >= b->len) {
    net_buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

#endif /* LLORCH_NET_NETBUF_H */
