/*
 * The worker's KV block manager (internal to src/roles/worker): which of the
 * backend's KV blocks are free, which sequence holds which, and the prefix
 * cache over them. The backend only stores blocks; this decides.
 *
 * Blocks hold block_tokens positions each. A block is referenced by every
 * running sequence whose table contains it (refcount). A FULL block whose
 * positions were all computed is committed under a chain hash,
 *
 *     hash(block k) = mix(hash(block k-1), its block_tokens token ids),
 *
 * so equal hashes mean equal tokens at equal positions from position 0 on:
 * equal KV (up to the rounding note in docs/worker-api.md). A committed block
 * with no references stays in the cache and in an LRU list; allocation takes
 * never-committed free blocks first, then evicts the least recently released
 * committed block. A lookup verifies the tokens and the parent hash of every
 * candidate, so a hash collision costs a miss, never a wrong answer. After
 * the chain of whole blocks, a request may also copy the start of a block
 * that continues it (another request's partly equal block, or a finished
 * request's partly filled last block), so a repeated prompt reuses all but
 * its last tokens.
 *
 * Not thread-safe: the scheduler's inference thread is its only user.
 */
#ifndef LLORCH_WORKER_KVCACHE_H
#define LLORCH_WORKER_KVCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "llorch/error.h"

typedef struct worker_kv worker_kv;

typedef struct worker_kv_stats {
  uint32_t blocks_total;
  uint32_t blocks_used;     /* referenced by a running sequence */
  uint32_t blocks_cached;   /* committed, not referenced (reusable or evictable) */
  uint64_t evictions;       /* committed blocks reused for something else */
} worker_kv_stats;

/* prefix_cache false: nothing is ever committed or matched (plain paging). */
int worker_kv_init(worker_kv **out, uint32_t n_blocks, uint32_t block_tokens, bool prefix_cache,
                   llorch_errmsg *em);
void worker_kv_free(worker_kv *kv);

uint32_t worker_kv_block_tokens(const worker_kv *kv);
/* Blocks an allocation can take now (free plus evictable cached ones). */
uint32_t worker_kv_available(const worker_kv *kv);

/* A free block (refcount 1), evicting the LRU cached one if needed; -1 if none. */
int32_t worker_kv_alloc(worker_kv *kv);
/* Drops one reference; at 0 a committed block goes to the LRU tail, others to the free list. */
void worker_kv_release(worker_kv *kv, int32_t block);

/*
 * The longest chain of committed blocks equal to tokens[0..n) block by
 * block (only whole blocks of tokens are looked at): takes a reference on
 * each, writes them to blocks[] and their hashes to hashes[]; returns how
 * many (at most max). 0 when the prefix cache is off.
 */
uint32_t worker_kv_match(worker_kv *kv, const int32_t *tokens, uint32_t n, int32_t *blocks,
                         uint64_t *hashes, uint32_t max);

/*
 * Commits a full, computed block (held by the caller) as the block after
 * parent (parent_hash; 0 for the first block) holding tokens[0..block_tokens):
 * returns its chain hash. If an equal block is already committed, this one
 * stays private (it is freed, not cached, when released). No-op but the hash
 * when the prefix cache is off.
 */
uint64_t worker_kv_commit(worker_kv *kv, int32_t block, uint64_t parent_hash, const int32_t *tokens);

/*
 * Registers the last, partly filled block of a finishing request (held by
 * it alone): its first n tokens (0 < n < block_tokens) after parent. Such a
 * block is never matched as a whole, only copied from (worker_kv_match_partial).
 */
void worker_kv_commit_partial(worker_kv *kv, int32_t block, uint64_t parent, const int32_t *tokens,
                              uint32_t n);

/*
 * Among the cached blocks that follow parent (full or partial), the one
 * whose tokens share the longest start with tokens[0..n): takes a reference
 * on it, writes it to *block and returns that length (0: none, no
 * reference). The caller copies the positions it uses out of it (the block
 * may be another request's or be handed out once released).
 */
uint32_t worker_kv_match_partial(worker_kv *kv, uint64_t parent, const int32_t *tokens, uint32_t n,
                                 int32_t *block);

void worker_kv_stats_get(const worker_kv *kv, worker_kv_stats *out);

#endif /* LLORCH_WORKER_KVCACHE_H */
