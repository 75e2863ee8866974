/*
 * Request ids: validation of client-supplied ids and generation of new ones.
 */
#include "llorch/reqid.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

bool llorch_reqid_valid(const char *s, size_t len) {
  if (s == NULL || len == 0 || len > LLORCH_REQID_MAX) return false;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '-';
    if (!ok) return false;
  }
  return true;
}

/* ---- generation ---- */

/*
 * A 64-bit random prefix drawn once per process plus a counter mixed through
 * a bijective finaliser: ids never repeat within a process (the counter), and
 * processes on different hosts start from unrelated prefixes.
 */
static atomic_uint_fast64_t reqid_counter;
static atomic_uint_fast64_t reqid_prefix;

static uint64_t reqid_mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

static uint64_t reqid_get_prefix(void) {
  uint64_t p = atomic_load(&reqid_prefix);
  if (p != 0) return p;
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
    /* No entropy yet (early boot): time and pid still differ between processes. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r = reqid_mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                  ((uint64_t)getpid() << 40));
  }
  if (r == 0) r = 1;
  uint64_t expected = 0;
  /* Two threads racing here both keep whichever prefix won. */
  if (!atomic_compare_exchange_strong(&reqid_prefix, &expected, r)) return expected;
  return r;
}

void llorch_reqid_generate(char out[LLORCH_REQID_MAX + 1]) {
  uint64_t prefix = reqid_get_prefix();
  uint64_t n = atomic_fetch_add(&reqid_counter, 1) + 1;
  snprintf(out, LLORCH_REQID_MAX + 1, "%016llx%016llx", (unsigned long long)prefix,
           (unsigned long long)reqid_mix(n ^ prefix));
}
