/*
 * Prefix-aware routing memory. See prefix_route.h.
 */
#include "prefix_route.h"

#include <stdlib.h>
#include <string.h>

#include "llorch/error.h"
#include "llorch/hash.h"

typedef struct pr_entry {
  uint64_t key;     /* mix(chunk chain hash, worker hash); 0 = empty */
  int64_t seen_ms;  /* last record */
} pr_entry;

struct prefix_route {
  pr_entry *e;      /* (n_sets * PREFIX_ROUTE_WAYS) */
  uint32_t n_sets;  /* power of two */
  int64_t ttl_ms;
};

static uint64_t pr_worker_hash(const char *id) { return llorch_mix64(llorch_fnv1a(id)); }

static uint64_t pr_key(uint64_t chunk, uint64_t worker) {
  uint64_t k = llorch_mix64(chunk ^ (worker * 0x9e3779b97f4a7c15ull));
  return k ? k : 1;
}

int prefix_route_init(prefix_route **out, uint32_t entries, int64_t ttl_ms) {
  *out = NULL;
  prefix_route *pr = calloc(1, sizeof *pr);
  if (!pr) return LLORCH_ENOMEM;
  pr->n_sets = 1;
  while (pr->n_sets * PREFIX_ROUTE_WAYS < entries && pr->n_sets < (1u << 24)) pr->n_sets <<= 1;
  pr->ttl_ms = ttl_ms;
  pr->e = calloc((size_t)pr->n_sets * PREFIX_ROUTE_WAYS, sizeof *pr->e);
  if (!pr->e) {
    free(pr);
    return LLORCH_ENOMEM;
  }
  *out = pr;
  return 0;
}

void prefix_route_free(prefix_route *pr) {
  if (!pr) return;
  free(pr->e);
  free(pr);
}

uint32_t prefix_route_hash(const char *text, size_t len, uint64_t *out, uint32_t max) {
  uint32_t n = 0;
  uint64_t h = 0;
  for (size_t off = 0; n < max && off + PREFIX_ROUTE_CHUNK <= len; off += PREFIX_ROUTE_CHUNK) {
    uint64_t c = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < PREFIX_ROUTE_CHUNK; i++) c = (c ^ (unsigned char)text[off + i]) * 0x100000001b3ull;
    h = llorch_mix64(h ^ c) + n;
    out[n++] = h;
  }
  return n;
}

static pr_entry *pr_set(const prefix_route *pr, uint64_t key) {
  return pr->e + (size_t)(key & (pr->n_sets - 1)) * PREFIX_ROUTE_WAYS;
}

static const pr_entry *pr_find(const prefix_route *pr, uint64_t key, int64_t now_ms) {
  const pr_entry *set = pr_set(pr, key);
  for (int w = 0; w < PREFIX_ROUTE_WAYS; w++)
    if (set[w].key == key && now_ms - set[w].seen_ms <= pr->ttl_ms) return &set[w];
  return NULL;
}

uint32_t prefix_route_match(const prefix_route *pr, const char *worker_id, const uint64_t *h,
                            uint32_t n, int64_t now_ms) {
  const uint64_t wh = pr_worker_hash(worker_id);
  uint32_t k = 0;
  while (k < n && pr_find(pr, pr_key(h[k], wh), now_ms)) k++;
  return k;
}

void prefix_route_record(prefix_route *pr, const char *worker_id, const uint64_t *h, uint32_t n,
                         int64_t now_ms) {
  const uint64_t wh = pr_worker_hash(worker_id);
  for (uint32_t i = 0; i < n; i++) {
    const uint64_t key = pr_key(h[i], wh);
    pr_entry *set = pr_set(pr, key), *victim = &set[0];
    for (int w = 0; w < PREFIX_ROUTE_WAYS; w++) {
      if (set[w].key == key) {
        victim = &set[w];
        break;
      }
      /* an empty way, else the oldest */
      if (victim->key && (!set[w].key || set[w].seen_ms < victim->seen_ms)) victim = &set[w];
    }
    victim->key = key;
    victim->seen_ms = now_ms;
  }
}
