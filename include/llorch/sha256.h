/*
 * SHA-256 (FIPS 180-4): the checksum pools use to prove a model file copied
 * from another pool is the file the source holds (docs/cluster-protocol.md,
 * "Model files"). Written here because nothing the binary links (libuv,
 * llhttp, cJSON, libyaml) provides one, and OpenSSL would be a new runtime
 * dependency for one function. Tested against the FIPS 180-2 vectors
 * (tests/unit/core/test_sha256.c).
 */
#ifndef LLORCH_SHA256_H
#define LLORCH_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define LLORCH_SHA256_BYTES 32
#define LLORCH_SHA256_HEX (2 * LLORCH_SHA256_BYTES + 1) /* 64 lower-case hex digits and NUL */

typedef struct llorch_sha256 {
  uint32_t h[8];          /* the chaining state */
  uint64_t n_bytes;       /* message bytes fed so far */
  uint8_t block[64];      /* a partial block waiting for its end */
  size_t block_len;       /* bytes in block */
} llorch_sha256;

/* Starts a digest. */
void llorch_sha256_init(llorch_sha256 *c);
/* Feeds len bytes (any split gives the same digest). */
void llorch_sha256_update(llorch_sha256 *c, const void *data, size_t len);
/* Pads, writes the 32-byte digest into out; c must be initialised again before reuse. */
void llorch_sha256_final(llorch_sha256 *c, uint8_t out[LLORCH_SHA256_BYTES]);
/* Writes a digest as 64 lower-case hex digits and NUL. */
void llorch_sha256_hex(const uint8_t digest[LLORCH_SHA256_BYTES], char out[LLORCH_SHA256_HEX]);
/* True when s is exactly 64 lower-case hex digits (the only form the protocol accepts). */
int llorch_sha256_hex_valid(const char *s);

#endif /* LLORCH_SHA256_H */
