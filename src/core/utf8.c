/*
 * UTF-8 well-formedness by Unicode's table 3-7 (well-formed byte
 * sequences): the second byte's range depends on the lead (E0 A0..BF,
 * ED 80..9F, F0 90..BF, F4 80..8F), which rules out overlongs, surrogates
 * and code points past U+10FFFF at the first byte where they show.
 */
#include "llorch/utf8.h"

size_t llorch_utf8_next(const unsigned char *s, size_t avail, size_t *bad, bool *incomplete) {
  unsigned char c = s[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;
  *bad = 1;
  *incomplete = false;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0; /* continuation, C0, C1, F5..FF: never start a character */
  }
  for (size_t i = 1; i < n; i++) {
    if (i >= avail) {
      *bad = i;
      *incomplete = true;
      return 0;
    }
    unsigned char b = s[i];
    if (i == 1 ? (b < lo || b > hi) : (b & 0xc0) != 0x80) {
      *bad = i; /* the lead and the continuations that fit so far */
      return 0;
    }
  }
  return n;
}
