#include "llorch/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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
