#include "llorch/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *llorch_strerror(int err) {
  switch (err) {
    case LLORCH_OK: return "success";
#define XX(name, value, msg) case LLORCH_##name: return msg;
    LLORCH_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *llorch_err_name(int err) {
  switch (err) {
    case LLORCH_OK: return "OK";
#define XX(name, value, msg) case LLORCH_##name: return #name;
    LLORCH_ERRNO_MAP(XX)
#undef XX
  }
  return "UNKNOWN";
}

int llorch_errmsg_set(llorch_errmsg *em, int err, const char *fmt, ...) {
  if (em != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(em->text, sizeof em->text, fmt, ap);
    va_end(ap);
  }
  return err;
}

void llorch_assert_fail(const char *file, int line, const char *expr) {
  fprintf(stderr, "%s:%d: LLORCH_ASSERT(%s) failed\n", file, line, expr);
  fflush(stderr);
  abort();
}

void llorch_str_oneline(char *s) {
  for (; s && *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

const char *llorch_str_show(char *buf, size_t cap, const char *s, size_t n, size_t max) {
  size_t k = n < max ? n : max;
  if (k + 4 > cap) k = cap - 4;
  /* not inside a UTF-8 sequence: back off continuation bytes */
  while (k < n && k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
  for (size_t i = 0; i < k; i++) buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  if (k < n) memcpy(buf + k, "...", 3), k += 3;
  buf[k] = '\0';
  return buf;
}
