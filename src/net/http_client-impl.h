/*
 * Internals of the HTTP client exposed for tests and fuzzing only.
 */
#ifndef LLORCH_NET_HTTP_CLIENT_IMPL_H
#define LLORCH_NET_HTTP_CLIENT_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "llorch/sse.h"

/*
 * Runs bytes through the client's response parser as if they arrived on one
 * connection that then closed: headers, body (SSE-parsed when sse is true
 * and the status is 2xx, calling on_event), limits of 8 KiB of headers and
 * 1 MiB of buffered body. head: the request was a HEAD (no body expected).
 * Returns the status (>= 100) of a complete response, 0 when the bytes ended
 * before its headers did, LLORCH_ECLOSED when they ended in its body, or
 * LLORCH_EPROTO for a malformed response or an oversized part.
 */
int llorch_http_client_parse_response(const void *data, size_t len, bool sse, bool head,
                                      void (*on_event)(const llorch_sse_event *ev, void *user),
                                      void *user);

#endif /* LLORCH_NET_HTTP_CLIENT_IMPL_H */
