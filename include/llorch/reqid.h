/*
 * Request ids: carried in X-Request-Id, echoed in responses, written into
 * every log line about the request. A client's id is a correlation label
 * only: accepted when it matches ^[A-Za-z0-9._:-]{1,64}$ (so it is safe in
 * logs and headers; the HTTP server answers 400 otherwise), never a key
 * (job and completion ids are made with llorch_reqid_generate).
 */
#ifndef LLORCH_REQID_H
#define LLORCH_REQID_H

#include <stdbool.h>
#include <stddef.h>

#define LLORCH_REQID_MAX 64 /* characters, without the NUL */

/* True when s[0..len) matches ^[A-Za-z0-9._:-]{1,64}$. s may be NULL (false). */
bool llorch_reqid_valid(const char *s, size_t len);

/*
 * Writes a new id, 32 lowercase hex characters of 128 random bits
 * (getrandom), and a NUL into out. Thread-safe.
 */
void llorch_reqid_generate(char out[LLORCH_REQID_MAX + 1]);

/*
 * Writes 2 * bytes lowercase hex characters of random bytes (getrandom) and
 * a NUL into out (bytes <= 64). For tokens and ids. Returns 0, LLORCH_EINVAL
 * or LLORCH_EIO (no random source).
 */
int llorch_random_hex(char *out, size_t bytes);

#endif /* LLORCH_REQID_H */
