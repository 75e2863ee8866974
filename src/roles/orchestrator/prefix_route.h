/*
 * Prefix-aware routing memory (internal to src/roles/orchestrator; pure: no
 * I/O, no clock - every call takes now_ms).
 *
 * A worker reuses the KV cache of a prompt's longest cached prefix, in
 * blocks of token ids chain-hashed from the start. The orchestrator has no
 * tokenizer, so it approximates: it chain-hashes the request's text (the
 * messages' roles and contents, or the prompt) in fixed chunks of
 * PREFIX_ROUTE_CHUNK bytes, and remembers per worker the chunk hashes of
 * what it sent there. Two requests that share k leading chunks share about
 * k * PREFIX_ROUTE_CHUNK bytes of prompt text, so about that much of their
 * token prefix: the worker that holds the longest match is the one most
 * likely to serve the request from its cache.
 *
 * Memory is bounded and expiring: a fixed table of PREFIX_ROUTE_WAYS-way
 * sets; a record replaces an expired entry of its set or the oldest one,
 * and entries older than ttl_ms do not match (a worker's LRU cache will
 * have evicted them too, under load).
 */
#ifndef LLORCH_ORCH_PREFIX_ROUTE_H
#define LLORCH_ORCH_PREFIX_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#define PREFIX_ROUTE_CHUNK 64      /* bytes of text per chunk (~16 tokens) */
#define PREFIX_ROUTE_MAX_CHUNKS 2048 /* chunks hashed per request (128 KiB of text) */
#define PREFIX_ROUTE_WAYS 4

typedef struct prefix_route prefix_route;

/* entries: table size (rounded up to a power of two, at least the ways). */
int prefix_route_init(prefix_route **out, uint32_t entries, int64_t ttl_ms);
void prefix_route_free(prefix_route *pr);

/* Chain hashes of the whole chunks of text[0..len) into out (at most max);
 * returns how many. */
uint32_t prefix_route_hash(const char *text, size_t len, uint64_t *out, uint32_t max);

/* Leading chunks of h[0..n) recorded for the worker named worker_id. */
uint32_t prefix_route_match(const prefix_route *pr, const char *worker_id, const uint64_t *h,
                            uint32_t n, int64_t now_ms);

/* Remembers that h[0..n) went to worker_id (refreshes entries that exist). */
void prefix_route_record(prefix_route *pr, const char *worker_id, const uint64_t *h, uint32_t n,
                         int64_t now_ms);

#endif /* LLORCH_ORCH_PREFIX_ROUTE_H */
