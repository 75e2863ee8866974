/*
 * KV block manager and prefix cache. See kvcache.h.
 */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "llorch/hash.h"

typedef struct kv_block {
  uint64_t hash;         /* chain hash, valid when committed */
  uint64_t parent;       /* chain hash of the block before, 0 for the first */
  int32_t refs;          /* running sequences holding it */
  int32_t prev, next;    /* free/LRU list links (-1 ends) while refs == 0 */
  int32_t hnext;         /* hash bucket chain while committed */
  int32_t pnext;         /* parent bucket chain while committed or partial */
  uint32_t n_tok;        /* tokens it holds: block_tokens when committed, fewer when partial */
  bool committed;        /* full, in the hash index */
  bool partial;          /* a finished request's last, partly filled block (parent index only) */
} kv_block;

struct worker_kv {
  uint32_t n_blocks, bt;
  bool prefix_cache;
  kv_block *b;           /* (n_blocks) */
  int32_t *tokens;       /* (n_blocks, bt) token ids of committed blocks */
  int32_t *bucket;       /* (n_buckets) first block of each hash chain, -1 none */
  int32_t *pbucket;      /* (n_buckets) the same by parent hash: a block's continuations */
  uint32_t n_buckets;    /* power of two */
  /* One list of unreferenced blocks: never-committed ones at the head (taken
   * first), committed ones appended at the tail as they are released, so the
   * head side of the committed run is the least recently used. */
  int32_t head, tail;
  uint32_t n_free;       /* blocks on the list */
  uint32_t n_cached;     /* committed blocks on the list */
  uint64_t evictions;
};

static uint64_t kv_chain_hash(uint64_t parent, const int32_t *tokens, uint32_t n) {
  uint64_t h = llorch_mix64(parent ^ 0x9e3779b97f4a7c15ull);
  for (uint32_t i = 0; i < n; i++) h = llorch_mix64(h ^ (uint32_t)tokens[i]) + i;
  /* 0 means "no parent": never a real hash */
  return h ? h : 1;
}

/* ---- the free/LRU list ---- */

static void kv_list_unlink(worker_kv *kv, int32_t i) {
  kv_block *b = &kv->b[i];
  if (b->prev >= 0) kv->b[b->prev].next = b->next;
  else kv->head = b->next;
  if (b->next >= 0) kv->b[b->next].prev = b->prev;
  else kv->tail = b->prev;
  b->prev = b->next = -1;
  kv->n_free--;
  if (b->committed || b->partial) kv->n_cached--;
}

static void kv_list_push_head(worker_kv *kv, int32_t i) {
  kv_block *b = &kv->b[i];
  b->prev = -1;
  b->next = kv->head;
  if (kv->head >= 0) kv->b[kv->head].prev = i;
  else kv->tail = i;
  kv->head = i;
  kv->n_free++;
}

static void kv_list_push_tail(worker_kv *kv, int32_t i) {
  kv_block *b = &kv->b[i];
  b->next = -1;
  b->prev = kv->tail;
  if (kv->tail >= 0) kv->b[kv->tail].next = i;
  else kv->head = i;
  kv->tail = i;
  kv->n_free++;
  kv->n_cached++;
}

/* ---- the hash index ---- */

/* Takes block i out of both indexes (it is about to hold something else). */
static void kv_index_remove(worker_kv *kv, int32_t i) {
  kv_block *b = &kv->b[i];
  if (b->committed) {
    int32_t *pp = &kv->bucket[b->hash & (kv->n_buckets - 1)];
    while (*pp >= 0 && *pp != i) pp = &kv->b[*pp].hnext;
    if (*pp == i) *pp = b->hnext;
  }
  int32_t *pp = &kv->pbucket[b->parent & (kv->n_buckets - 1)];
  while (*pp >= 0 && *pp != i) pp = &kv->b[*pp].pnext;
  if (*pp == i) *pp = b->pnext;
  b->hnext = b->pnext = -1;
  b->committed = b->partial = false;
  b->n_tok = 0;
}

static void kv_parent_insert(worker_kv *kv, int32_t i) {
  int32_t *head = &kv->pbucket[kv->b[i].parent & (kv->n_buckets - 1)];
  kv->b[i].pnext = *head;
  *head = i;
}

static int32_t kv_index_find(const worker_kv *kv, uint64_t hash, uint64_t parent,
                             const int32_t *tokens) {
  for (int32_t i = kv->bucket[hash & (kv->n_buckets - 1)]; i >= 0; i = kv->b[i].hnext) {
    const kv_block *b = &kv->b[i];
    if (b->hash == hash && b->parent == parent &&
        memcmp(kv->tokens + (size_t)i * kv->bt, tokens, kv->bt * sizeof *tokens) == 0)
      return i;
  }
  return -1;
}

/* ---- public ---- */

int worker_kv_init(worker_kv **out, uint32_t n_blocks, uint32_t block_tokens, bool prefix_cache,
                   llorch_errmsg *em) {
  *out = NULL;
  if (!n_blocks || !block_tokens || n_blocks > INT32_MAX / 2)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "kv cache: %u blocks of %u tokens (need >= 1 each)",
                             n_blocks, block_tokens);
  worker_kv *kv = calloc(1, sizeof *kv);
  if (!kv) return llorch_errmsg_set(em, LLORCH_ENOMEM, "kv cache: out of memory");
  kv->n_blocks = n_blocks;
  kv->bt = block_tokens;
  kv->prefix_cache = prefix_cache;
  kv->n_buckets = 16;
  while (kv->n_buckets < n_blocks) kv->n_buckets <<= 1;
  kv->b = calloc(n_blocks, sizeof *kv->b);
  kv->tokens = prefix_cache ? malloc((size_t)n_blocks * block_tokens * sizeof *kv->tokens) : NULL;
  kv->bucket = malloc(kv->n_buckets * sizeof *kv->bucket);
  kv->pbucket = malloc(kv->n_buckets * sizeof *kv->pbucket);
  if (!kv->b || (prefix_cache && !kv->tokens) || !kv->bucket || !kv->pbucket) {
    worker_kv_free(kv);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "kv cache: out of memory for %u blocks", n_blocks);
  }
  for (uint32_t i = 0; i < kv->n_buckets; i++) kv->bucket[i] = kv->pbucket[i] = -1;
  kv->head = kv->tail = -1;
  for (uint32_t i = n_blocks; i-- > 0;) {
    kv->b[i].hnext = kv->b[i].pnext = -1;
    kv_list_push_head(kv, (int32_t)i);
  }
  *out = kv;
  return 0;
}

void worker_kv_free(worker_kv *kv) {
  if (!kv) return;
  free(kv->b);
  free(kv->tokens);
  free(kv->bucket);
  free(kv->pbucket);
  free(kv);
}

uint32_t worker_kv_block_tokens(const worker_kv *kv) { return kv->bt; }

uint32_t worker_kv_available(const worker_kv *kv) { return kv->n_free; }

int32_t worker_kv_alloc(worker_kv *kv) {
  int32_t i = kv->head;
  if (i < 0) return -1;
  kv_list_unlink(kv, i);
  if (kv->b[i].committed || kv->b[i].partial) {
    kv_index_remove(kv, i);
    kv->evictions++;
  }
  kv->b[i].refs = 1;
  return i;
}

void worker_kv_release(worker_kv *kv, int32_t i) {
  if (i < 0 || (uint32_t)i >= kv->n_blocks || kv->b[i].refs <= 0) return;
  if (--kv->b[i].refs > 0) return;
  if (kv->b[i].committed || kv->b[i].partial) kv_list_push_tail(kv, i);
  else kv_list_push_head(kv, i);
}

uint32_t worker_kv_match(worker_kv *kv, const int32_t *tokens, uint32_t n, int32_t *blocks,
                         uint64_t *hashes, uint32_t max) {
  if (!kv->prefix_cache) return 0;
  uint32_t k = 0;
  uint64_t parent = 0;
  while (k < max && (uint64_t)(k + 1) * kv->bt <= n) {
    const int32_t *t = tokens + (size_t)k * kv->bt;
    const uint64_t h = kv_chain_hash(parent, t, kv->bt);
    const int32_t i = kv_index_find(kv, h, parent, t);
    if (i < 0) break;
    if (kv->b[i].refs++ == 0) kv_list_unlink(kv, i);
    blocks[k] = i;
    hashes[k] = h;
    parent = h;
    k++;
  }
  return k;
}

uint64_t worker_kv_commit(worker_kv *kv, int32_t i, uint64_t parent, const int32_t *tokens) {
  const uint64_t h = kv_chain_hash(parent, tokens, kv->bt);
  if (!kv->prefix_cache || i < 0 || (uint32_t)i >= kv->n_blocks || kv->b[i].committed) return h;
  if (kv_index_find(kv, h, parent, tokens) >= 0) return h; /* an equal block is cached already */
  kv_block *b = &kv->b[i];
  b->hash = h;
  b->parent = parent;
  b->committed = true;
  b->n_tok = kv->bt;
  memcpy(kv->tokens + (size_t)i * kv->bt, tokens, kv->bt * sizeof *tokens);
  int32_t *head = &kv->bucket[h & (kv->n_buckets - 1)];
  b->hnext = *head;
  *head = i;
  kv_parent_insert(kv, i);
  return h;
}

void worker_kv_commit_partial(worker_kv *kv, int32_t i, uint64_t parent, const int32_t *tokens,
                              uint32_t n) {
  if (!kv->prefix_cache || i < 0 || (uint32_t)i >= kv->n_blocks || !n || n >= kv->bt) return;
  kv_block *b = &kv->b[i];
  if (b->committed || b->partial || b->refs != 1) return; /* shared or already registered */
  b->parent = parent;
  b->partial = true;
  b->n_tok = n;
  memcpy(kv->tokens + (size_t)i * kv->bt, tokens, n * sizeof *tokens);
  kv_parent_insert(kv, i);
}

uint32_t worker_kv_match_partial(worker_kv *kv, uint64_t parent, const int32_t *tokens, uint32_t n,
                                 int32_t *block) {
  if (!kv->prefix_cache || !n) return 0;
  uint32_t best = 0;
  int32_t best_i = -1;
  for (int32_t i = kv->pbucket[parent & (kv->n_buckets - 1)]; i >= 0; i = kv->b[i].pnext) {
    const kv_block *b = &kv->b[i];
    if (b->parent != parent) continue;
    const int32_t *t = kv->tokens + (size_t)i * kv->bt;
    uint32_t c = 0;
    while (c < b->n_tok && c < n && t[c] == tokens[c]) c++;
    if (c > best) {
      best = c;
      best_i = i;
    }
  }
  if (!best) return 0;
  if (kv->b[best_i].refs++ == 0) kv_list_unlink(kv, best_i);
  *block = best_i;
  return best;
}

void worker_kv_stats_get(const worker_kv *kv, worker_kv_stats *out) {
  out->blocks_total = kv->n_blocks;
  out->blocks_used = kv->n_blocks - kv->n_free;
  out->blocks_cached = kv->n_cached;
  out->evictions = kv->evictions;
}
