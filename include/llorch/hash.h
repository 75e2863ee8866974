/*
 * Small non-cryptographic hashes shared by every module that needs one
 * (prefix-cache block ids, routing keys, seeded generators): one definition
 * each, so that two places meant to agree cannot drift apart.
 */
#ifndef LLORCH_HASH_H
#define LLORCH_HASH_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64's finalizer: a bijection in which every input bit reaches
 * every output bit. */
static inline uint64_t llorch_mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* FNV-1a over a NUL-terminated string. */
static inline uint64_t llorch_fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
  return h;
}

#endif /* LLORCH_HASH_H */
