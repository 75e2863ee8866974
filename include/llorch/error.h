/*
 * llorch error codes.
 *
 * Functions that can fail return 0 on success or a negative LLORCH_E* code,
 * as libuv does. The codes, their names and their messages come from one
 * X-macro list so that llorch_strerror() and llorch_err_name() can never drift
 * from the enum.
 *
 * Where a failure needs more than a code to be useful (a config file line, a
 * GGUF field, a request parameter), the function also takes an llorch_errmsg
 * that it fills with one human-readable line naming what was wrong, the value
 * seen and what was expected. The errmsg pointer may be NULL.
 */
#ifndef LLORCH_ERROR_H
#define LLORCH_ERROR_H

#include <stddef.h>

#define LLORCH_ERRNO_MAP(XX)                                                  \
  XX(EINVAL, -1, "invalid argument")                                          \
  XX(ENOMEM, -2, "out of memory")                                             \
  XX(EIO, -3, "input/output error")                                           \
  XX(ENOENT, -4, "no such file or directory")                                 \
  XX(EFORMAT, -5, "malformed input")                                          \
  XX(EUNSUPPORTED, -6, "not supported")                                       \
  XX(ERANGE, -7, "value out of range")                                        \
  XX(ETIMEDOUT, -8, "timed out")                                              \
  XX(ECONNREFUSED, -9, "connection refused")                                  \
  XX(EUNREACH, -10, "host unreachable")                                       \
  XX(ECLOSED, -11, "connection closed")                                       \
  XX(ECANCELED, -12, "operation canceled")                                    \
  XX(EBUSY, -13, "resource busy")                                             \
  XX(ELIMIT, -14, "limit exceeded")                                           \
  XX(EAUTH, -15, "authentication failed")                                     \
  XX(ENOTFOUND, -16, "not found")                                             \
  XX(EPROTO, -17, "protocol error")                                           \
  XX(EINSUFFICIENT_MEMORY, -18, "insufficient memory")                        \
  XX(EINSUFFICIENT_VRAM, -19, "insufficient VRAM")                            \
  XX(EDEVICE, -20, "device error")                                            \
  XX(ERESOLVE, -21, "name resolution failed")                                 \
  XX(EEXIST, -22, "already exists")                                           \
  XX(ESTATE, -23, "invalid state for this operation")

typedef enum llorch_errno {
  LLORCH_OK = 0,
#define XX(name, value, msg) LLORCH_##name = value,
  LLORCH_ERRNO_MAP(XX)
#undef XX
} llorch_errno;

/* "invalid argument" for LLORCH_EINVAL; "unknown error" for anything else. */
const char *llorch_strerror(int err);
/* "EINVAL" for LLORCH_EINVAL; "UNKNOWN" for anything else. */
const char *llorch_err_name(int err);

/* One line of detail about a failure, filled by the function that failed. */
typedef struct llorch_errmsg {
  char text[512];
} llorch_errmsg;

/*
 * Formats the detail line into em (if em is not NULL) and returns err, so a
 * failure path can read:  return llorch_errmsg_set(em, LLORCH_EFORMAT, "...", ...);
 */
int llorch_errmsg_set(llorch_errmsg *em, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Text from outside in a message that must stay one printable line: the
 * one implementation of "make it printable".
 *   llorch_str_oneline   control bytes (< 0x20, 0x7f) of s become '?', in place.
 *   llorch_str_show      at most max bytes of s[0..n) into buf (cap > 4),
 *                        cut on a UTF-8 boundary, control bytes as '?', and
 *                        "..." when cut; returns buf.
 */
void llorch_str_oneline(char *s);
const char *llorch_str_show(char *buf, size_t cap, const char *s, size_t n, size_t max);

/* Programming errors only: never for anything that comes from outside. */
#define LLORCH_ASSERT(x)                                                      \
  do {                                                                        \
    if (!(x)) llorch_assert_fail(__FILE__, __LINE__, #x);                     \
  } while (0)
_Noreturn void llorch_assert_fail(const char *file, int line, const char *expr);

#endif /* LLORCH_ERROR_H */
