/*
 * Request ids and other random identifiers: validation of client-supplied
 * ids, and ids drawn from the kernel's random source.
 */
#include "llorch/reqid.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "llorch/error.h"

bool llorch_reqid_valid(const char *s, size_t len) {
  if (s == NULL || len == 0 || len > LLORCH_REQID_MAX) return false;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_' || c == ':';
    if (!ok) return false;
  }
  return true;
}

/* ---- random ---- */

/* n bytes from getrandom (blocks only until the kernel's pool is first
 * seeded, at early boot); /dev/urandom where getrandom is missing. */
static int random_fill(unsigned char *out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  if (got == n) return 0;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return LLORCH_EIO;
  while (got < n) {
    ssize_t r = read(fd, out + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  return got == n ? 0 : LLORCH_EIO;
}

int llorch_random_hex(char *out, size_t bytes) {
  unsigned char raw[64];
  if (bytes > sizeof raw) return LLORCH_EINVAL;
  int rc = random_fill(raw, bytes);
  if (rc < 0) return rc;
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < bytes; i++) {
    out[2 * i] = hex[raw[i] >> 4];
    out[2 * i + 1] = hex[raw[i] & 15];
  }
  out[2 * bytes] = '\0';
  return 0;
}

void llorch_reqid_generate(char out[LLORCH_REQID_MAX + 1]) {
  /*
   * 128 random bits: an id is a key others must not guess (a job id a
   * stranger could cancel). Without any random source at all (no
   * getrandom, no /dev/urandom: nothing else in this program would work
   * either), time and pid still keep ids unique.
   */
  if (llorch_random_hex(out, 16) == 0) return;
  static uint64_t counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(out, LLORCH_REQID_MAX + 1, "%016llx%08x%08x",
           (unsigned long long)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec),
           (unsigned)getpid(), (unsigned)__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
}
