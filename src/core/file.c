/*
 * llorch_file_read: grows one buffer while reading, so standard input and
 * pipes (whose size is unknown) read the same way as regular files.
 */
#include "llorch/file.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int llorch_file_read(const char *path, const char *what, size_t max_bytes, char **out, size_t *len,
                     llorch_errmsg *em) {
  *out = NULL;
  if (len) *len = 0;
  bool use_stdin = strcmp(path, "-") == 0;
  FILE *f = use_stdin ? stdin : fopen(path, "rb");
  if (!f)
    return llorch_errmsg_set(em, errno == ENOENT ? LLORCH_ENOENT : LLORCH_EIO, "%s: cannot open %s: %s", path,
                             what, strerror(errno));
  int rc = 0;
  size_t cap = 0, n = 0;
  char *buf = NULL;
  for (;;) {
    if (n + 1 >= cap) {
      if (cap > max_bytes) {
        rc = llorch_errmsg_set(em, LLORCH_ELIMIT, "%s: %s larger than %zu bytes", path, what, max_bytes);
        goto out;
      }
      size_t grown_cap = cap ? cap * 2 : 4096;
      char *grown = realloc(buf, grown_cap);
      if (!grown) {
        rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "%s: out of memory reading %s", path, what);
        goto out;
      }
      buf = grown;
      cap = grown_cap;
    }
    size_t k = fread(buf + n, 1, cap - n - 1, f);
    n += k;
    if (k == 0) break;
  }
  if (ferror(f)) {
    rc = llorch_errmsg_set(em, LLORCH_EIO, "%s: cannot read %s: %s", path, what, strerror(errno));
    goto out;
  }
  if (n > max_bytes) {
    rc = llorch_errmsg_set(em, LLORCH_ELIMIT, "%s: %s larger than %zu bytes", path, what, max_bytes);
    goto out;
  }
  buf[n] = '\0';
  *out = buf;
  buf = NULL;
  if (len) *len = n;
out:
  free(buf);
  if (!use_stdin) fclose(f);
  return rc;
}
