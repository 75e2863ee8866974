/*
 * Request ids: carried in X-Request-Id, echoed in responses, written into
 * every log line about the request. A client's id is accepted when it matches
 * ^[A-Za-z0-9-]{1,64}$ (so it is safe in logs and headers); otherwise the
 * server makes one.
 */
#ifndef LLORCH_REQID_H
#define LLORCH_REQID_H

#include <stdbool.h>
#include <stddef.h>

#define LLORCH_REQID_MAX 64 /* characters, without the NUL */

/* True when s[0..len) matches ^[A-Za-z0-9-]{1,64}$. s may be NULL (false). */
bool llorch_reqid_valid(const char *s, size_t len);

/*
 * Writes a new id (32 lowercase hex characters, random per process plus a
 * counter, so unique within a process and unlikely to collide across hosts)
 * and a NUL into out. Thread-safe.
 */
void llorch_reqid_generate(char out[LLORCH_REQID_MAX + 1]);

#endif /* LLORCH_REQID_H */
