/*
 * Token sampling (see include/llorch/sampler.h for the steps and their order).
 *
 * Everything works on a candidate array of (logit, id) pairs with one total
 * order - higher logit first, lower id first among equal logits - so that
 * every selection step gives the same answer on every run whatever the
 * partitioning happened to do.
 */
#include "llorch/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/hash.h"

typedef struct sampler_cand {
  float logit; /* penalized logit */
  int32_t id;  /* token id */
} sampler_cand;

struct llorch_sampler {
  llorch_sampler_params p;
  uint32_t n_vocab;
  uint64_t rng[4];      /* xoshiro256** state */
  float *work;          /* (n_vocab) logits after penalties */
  sampler_cand *cand;   /* (n_vocab) candidates still in the running */
  uint32_t *counts;     /* (n_vocab) occurrences in the penalty window; kept all-zero between calls */
  llorch_logit_bias *bias; /* (p.n_logit_bias) the sampler's own copy */
};

/* ---- parameters ---- */

void llorch_sampler_params_default(llorch_sampler_params *p) {
  memset(p, 0, sizeof *p);
  p->temperature = 0.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
  p->min_p = 0.0f;
  p->repetition_penalty = 1.0f;
  p->penalty_last_n = 64;
  p->frequency_penalty = 0.0f;
  p->presence_penalty = 0.0f;
  p->seed = 0;
  p->n_logprobs = 0;
}

int llorch_sampler_params_validate(const llorch_sampler_params *p, llorch_errmsg *em) {
  if (!isfinite(p->temperature) || p->temperature < 0.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "temperature = %g: expected a finite number >= 0 (0 = greedy)",
                             (double)p->temperature);
  if (p->top_k < 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "top_k = %d: expected an integer >= 0 (0 = off)",
                             (int)p->top_k);
  if (!isfinite(p->top_p) || p->top_p <= 0.0f || p->top_p > 1.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "top_p = %g: expected a number in (0, 1]",
                             (double)p->top_p);
  if (!isfinite(p->min_p) || p->min_p < 0.0f || p->min_p > 1.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "min_p = %g: expected a number in [0, 1]",
                             (double)p->min_p);
  if (!isfinite(p->repetition_penalty) || p->repetition_penalty <= 0.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "repetition_penalty = %g: expected a finite number > 0 (1 = off)",
                             (double)p->repetition_penalty);
  if (p->penalty_last_n < -1)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "penalty_last_n = %d: expected -1 (whole history) or an integer >= 0",
                             (int)p->penalty_last_n);
  if (!isfinite(p->frequency_penalty) || p->frequency_penalty < -2.0f ||
      p->frequency_penalty > 2.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "frequency_penalty = %g: expected a number in [-2, 2]",
                             (double)p->frequency_penalty);
  if (!isfinite(p->presence_penalty) || p->presence_penalty < -2.0f || p->presence_penalty > 2.0f)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "presence_penalty = %g: expected a number in [-2, 2]",
                             (double)p->presence_penalty);
  if (p->n_logprobs < 0 || p->n_logprobs > LLORCH_SAMPLER_MAX_LOGPROBS)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "n_logprobs = %d: expected an integer in [0, %d]",
                             (int)p->n_logprobs, LLORCH_SAMPLER_MAX_LOGPROBS);
  return 0;
}

/* ---- PRNG: xoshiro256** seeded through splitmix64 ---- */

static uint64_t sampler_splitmix64(uint64_t *x) { return llorch_mix64(*x += 0x9e3779b97f4a7c15ULL); }

static uint64_t sampler_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t sampler_next_u64(llorch_sampler *s) {
  uint64_t *r = s->rng;
  uint64_t result = sampler_rotl(r[1] * 5, 7) * 9;
  uint64_t t = r[1] << 17;
  r[2] ^= r[0];
  r[3] ^= r[1];
  r[1] ^= r[2];
  r[0] ^= r[3];
  r[2] ^= t;
  r[3] = sampler_rotl(r[3], 45);
  return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double sampler_next_unit(llorch_sampler *s) {
  return (double)(sampler_next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
}

void llorch_sampler_reseed(llorch_sampler *s, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) s->rng[i] = sampler_splitmix64(&x);
}

/* ---- life cycle ---- */

int llorch_sampler_init(llorch_sampler **out, const llorch_sampler_params *p, uint32_t n_vocab,
                        llorch_errmsg *em) {
  *out = NULL;
  int rc = llorch_sampler_params_validate(p, em);
  if (rc < 0) return rc;
  if (n_vocab == 0)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "n_vocab = 0: expected a vocabulary of >= 1 token");

  for (uint32_t i = 0; i < p->n_logit_bias; i++) {
    const llorch_logit_bias *b = &p->logit_bias[i];
    if (b->id < 0 || (uint32_t)b->id >= n_vocab)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "logit_bias token %d: expected a token id in [0, %u)",
                               (int)b->id, n_vocab);
    if (!(b->bias >= -100.0f && b->bias <= 100.0f))
      return llorch_errmsg_set(em, LLORCH_EINVAL, "logit_bias of token %d = %g: expected a number in [-100, 100]",
                               (int)b->id, (double)b->bias);
  }

  llorch_sampler *s = calloc(1, sizeof *s);
  if (!s) goto fail_alloc;
  s->p = *p;
  if (p->n_logit_bias) {
    s->bias = malloc(p->n_logit_bias * sizeof *s->bias);
    if (!s->bias) goto fail_bias;
    memcpy(s->bias, p->logit_bias, p->n_logit_bias * sizeof *s->bias);
  }
  s->p.logit_bias = s->bias;
  s->n_vocab = n_vocab;
  s->work = malloc((size_t)n_vocab * sizeof *s->work);
  if (!s->work) goto fail_work;
  s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
  if (!s->cand) goto fail_cand;
  s->counts = calloc(n_vocab, sizeof *s->counts);
  if (!s->counts) goto fail_counts;
  llorch_sampler_reseed(s, p->seed);
  *out = s;
  return 0;

fail_counts:
  free(s->cand);
fail_cand:
  free(s->work);
fail_work:
  free(s->bias);
fail_bias:
  free(s);
fail_alloc:
  return llorch_errmsg_set(em, LLORCH_ENOMEM, "sampler for %u tokens: out of memory", n_vocab);
}

void llorch_sampler_free(llorch_sampler *s) {
  if (!s) return;
  free(s->counts);
  free(s->cand);
  free(s->work);
  free(s->bias);
  free(s);
}

/* ---- candidate order and selection ---- */

/* The one total order: higher logit first, then lower id. */
static inline bool sampler_cand_better(const sampler_cand *a, const sampler_cand *b) {
  return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static inline void sampler_cand_swap(sampler_cand *a, sampler_cand *b) {
  sampler_cand t = *a;
  *a = *b;
  *b = t;
}

/*
 * Rearranges c[0..n) so that c[0..k) are the k best candidates (in no
 * particular order): quickselect, O(n) on average. Because the order is total
 * (ids are distinct), partitions always shrink.
 */
static void sampler_select_top_k(sampler_cand *c, size_t n, size_t k) {
  size_t lo = 0, hi = n; /* the k-th best lies in [lo, hi) */
  while (hi - lo > 1) {
    /* median of three as the pivot, moved to hi - 1 */
    size_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (sampler_cand_better(&c[mid], &c[lo])) sampler_cand_swap(&c[mid], &c[lo]);
    if (sampler_cand_better(&c[last], &c[lo])) sampler_cand_swap(&c[last], &c[lo]);
    if (sampler_cand_better(&c[mid], &c[last])) sampler_cand_swap(&c[mid], &c[last]);
    sampler_cand pivot = c[last];
    size_t store = lo;
    for (size_t i = lo; i < last; i++)
      if (sampler_cand_better(&c[i], &pivot)) sampler_cand_swap(&c[i], &c[store++]);
    sampler_cand_swap(&c[store], &c[last]);
    /* c[lo..store) beat the pivot, c[store] is the pivot, the rest are worse */
    if (store == k || store + 1 == k) return;
    if (store > k) hi = store;
    else lo = store + 1;
  }
}

/* Max-heap on the total order (best at c[0]). */
static void sampler_heap_sift_down(sampler_cand *c, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, best = i;
    if (l < n && sampler_cand_better(&c[l], &c[best])) best = l;
    if (l + 1 < n && sampler_cand_better(&c[l + 1], &c[best])) best = l + 1;
    if (best == i) return;
    sampler_cand_swap(&c[i], &c[best]);
    i = best;
  }
}

/*
 * top-p over c[0..n): keeps the fewest best candidates whose probabilities
 * (softmax of the logits) reach p, moved to c[0..kept). Builds a heap in O(n)
 * and pops only as many as the mass needs, instead of sorting everything.
 */
static size_t sampler_apply_top_p(sampler_cand *c, size_t n, float p) {
  float max = -INFINITY;
  for (size_t i = 0; i < n; i++)
    if (c[i].logit > max) max = c[i].logit;
  double z = 0.0;
  for (size_t i = 0; i < n; i++) z += exp((double)c[i].logit - max);

  for (size_t i = n / 2; i-- > 0;) sampler_heap_sift_down(c, n, i);
  /* Popped candidates go to the end of the array, best first from n - 1. */
  double cum = 0.0;
  size_t heap_n = n;
  while (heap_n > 0) {
    sampler_cand top = c[0];
    c[0] = c[heap_n - 1];
    c[heap_n - 1] = top;
    heap_n--;
    sampler_heap_sift_down(c, heap_n, 0);
    cum += exp((double)top.logit - max) / z;
    if (cum >= (double)p) break;
  }
  size_t kept = n - heap_n;
  /* Move the kept ones (c[heap_n..n), best last) to the front, best first. */
  for (size_t i = 0; i < kept; i++) {
    if (n - 1 - i <= i) break;
    sampler_cand_swap(&c[i], &c[n - 1 - i]);
  }
  return kept;
}

/* ---- penalties ---- */

/*
 * llama.cpp's penalties over the last penalty_last_n history tokens: each
 * distinct token is penalized once for repetition and by its count for
 * frequency. counts[] is used and then cleared again, O(window).
 */
static void sampler_apply_penalties(llorch_sampler *s, const int32_t *history, size_t n_history) {
  const llorch_sampler_params *p = &s->p;
  if (p->repetition_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f)
    return;
  size_t window = p->penalty_last_n < 0 ? n_history
                  : ((size_t)p->penalty_last_n < n_history ? (size_t)p->penalty_last_n : n_history);
  const int32_t *h = history + (n_history - window);
  for (size_t i = 0; i < window; i++) s->counts[h[i]]++;
  for (size_t i = 0; i < window; i++) {
    uint32_t count = s->counts[h[i]];
    if (count == 0) continue; /* already done for this token */
    float *l = &s->work[h[i]];
    *l = *l > 0.0f ? *l / p->repetition_penalty : *l * p->repetition_penalty;
    *l -= (float)count * p->frequency_penalty + p->presence_penalty;
    s->counts[h[i]] = 0;
  }
}

/* ---- reporting ---- */

/* The n best of the original logits, best first (bounded insertion). */
static int32_t sampler_top_logprobs(const float *logits, uint32_t n_vocab, int32_t n, float lse,
                                    llorch_token_logprob *top) {
  if ((uint32_t)n > n_vocab) n = (int32_t)n_vocab;
  sampler_cand best[LLORCH_SAMPLER_MAX_LOGPROBS];
  int32_t have = 0;
  for (uint32_t i = 0; i < n_vocab && n > 0; i++) {
    sampler_cand c = {logits[i], (int32_t)i};
    if (have == n && !sampler_cand_better(&c, &best[n - 1])) continue;
    int32_t j = have < n ? have++ : n - 1;
    while (j > 0 && sampler_cand_better(&c, &best[j - 1])) {
      best[j] = best[j - 1];
      j--;
    }
    best[j] = c;
  }
  for (int32_t i = 0; i < have; i++) {
    top[i].id = best[i].id;
    top[i].logprob = best[i].logit - lse;
  }
  return have;
}

/* Checks logits (no NaN or +inf, not all -inf) and takes their log-sum-exp. */
static int sampler_log_sum_exp(const float *logits, uint32_t nv, float *lse, llorch_errmsg *em) {
  float max = -INFINITY;
  for (uint32_t i = 0; i < nv; i++) {
    float l = logits[i];
    if (isnan(l) || l == INFINITY)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "logit of token %u is %g: expected a number or -inf",
                               i, (double)l);
    if (l > max) max = l;
  }
  if (max == -INFINITY)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "all %u logits are -inf: nothing to sample", nv);
  /* expf, not exp: this pass runs over the whole vocabulary every token. */
  double z = 0.0;
  for (uint32_t i = 0; i < nv; i++) z += expf(logits[i] - max);
  *lse = (float)((double)max + log(z));
  return 0;
}

int llorch_sampler_logprob_of(const float *logits, uint32_t n_vocab, int32_t token, int32_t n_top,
                              llorch_sample_result *out, llorch_errmsg *em) {
  if (token < 0 || (uint32_t)token >= n_vocab)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "token %d: expected an id in [0, %u)", (int)token,
                             n_vocab);
  if (n_top < 0 || n_top > LLORCH_SAMPLER_MAX_LOGPROBS)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "n_top %d: expected 0..%d", (int)n_top,
                             LLORCH_SAMPLER_MAX_LOGPROBS);
  float lse = 0.0f;
  int rc = sampler_log_sum_exp(logits, n_vocab, &lse, em);
  if (rc < 0) return rc;
  out->token = token;
  out->logprob = logits[token] - lse;
  out->n_top = sampler_top_logprobs(logits, n_vocab, n_top, lse, out->top);
  return 0;
}

/* ---- sampling ---- */

int llorch_sampler_sample(llorch_sampler *s, const float *logits, const int32_t *history,
                          size_t n_history, llorch_sample_result *out, llorch_errmsg *em) {
  return llorch_sampler_sample_masked(s, logits, NULL, history, n_history, out, em);
}

int llorch_sampler_sample_masked(llorch_sampler *s, const float *logits, const uint32_t *mask,
                                 const int32_t *history, size_t n_history,
                                 llorch_sample_result *out, llorch_errmsg *em) {
  const llorch_sampler_params *p = &s->p;
  const uint32_t nv = s->n_vocab;

  float lse = 0.0f;
  int rc = sampler_log_sum_exp(logits, nv, &lse, em);
  if (rc < 0) return rc;
  for (size_t i = 0; i < n_history; i++)
    if (history[i] < 0 || (uint32_t)history[i] >= nv)
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "history[%zu] = %d: expected a token id in [0, %u)", i,
                               (int)history[i], nv);

  memcpy(s->work, logits, (size_t)nv * sizeof *s->work);
  for (uint32_t i = 0; i < p->n_logit_bias; i++) s->work[p->logit_bias[i].id] += p->logit_bias[i].bias;
  sampler_apply_penalties(s, history, n_history);
  if (mask) {
    /* a grammar's mask: disallowed tokens leave the running before any
     * selection step, so top-k/top-p/min-p and temperature see valid ones only */
    for (uint32_t w = 0; w < (nv + 31) / 32; w++) {
      uint32_t bits = mask[w];
      if (bits == 0xFFFFFFFFu) continue;
      uint32_t end = w * 32 + 32 < nv ? w * 32 + 32 : nv;
      for (uint32_t i = w * 32; i < end; i++)
        if (!((bits >> (i & 31)) & 1u)) s->work[i] = -INFINITY;
    }
  }

  int32_t token = -1;
  if (p->temperature == 0.0f) {
    /* Greedy: strict > keeps the first, i.e. lowest, id among exact ties. */
    float best = -INFINITY;
    for (uint32_t i = 0; i < nv; i++)
      if (s->work[i] > best) {
        best = s->work[i];
        token = (int32_t)i;
      }
    if (token < 0) goto fail_all_masked;
  } else {
    size_t n = 0;
    for (uint32_t i = 0; i < nv; i++)
      if (s->work[i] != -INFINITY) s->cand[n++] = (sampler_cand){s->work[i], (int32_t)i};

    if (n == 0) goto fail_all_masked;
    if (p->top_k > 0 && (size_t)p->top_k < n) {
      sampler_select_top_k(s->cand, n, (size_t)p->top_k);
      n = (size_t)p->top_k;
    }
    if (p->top_p < 1.0f) n = sampler_apply_top_p(s->cand, n, p->top_p);

    float cmax = -INFINITY;
    for (size_t i = 0; i < n; i++)
      if (s->cand[i].logit > cmax) cmax = s->cand[i].logit;
    if (p->min_p > 0.0f) {
      float floor_logit = cmax + logf(p->min_p);
      size_t kept = 0;
      for (size_t i = 0; i < n; i++)
        if (s->cand[i].logit >= floor_logit) s->cand[kept++] = s->cand[i];
      n = kept;
    }

    /* Draw from softmax(logit / T); weights relative to the max so exp never overflows. */
    double total = 0.0;
    const double inv_t = 1.0 / (double)p->temperature;
    for (size_t i = 0; i < n; i++) total += exp(((double)s->cand[i].logit - cmax) * inv_t);
    double u = sampler_next_unit(s) * total, cum = 0.0;
    token = s->cand[n - 1].id; /* if rounding leaves u beyond the last sum */
    for (size_t i = 0; i < n; i++) {
      cum += exp(((double)s->cand[i].logit - cmax) * inv_t);
      if (u < cum) {
        token = s->cand[i].id;
        break;
      }
    }
  }

  out->token = token;
  out->logprob = logits[token] - lse;
  out->n_top = sampler_top_logprobs(logits, nv, p->n_logprobs, lse, out->top);
  return 0;

fail_all_masked:
  /* Reachable when penalties overflow every remaining logit to -inf, or
   * when a mask allows no token with a finite logit. */
  return llorch_errmsg_set(em, LLORCH_EINVAL,
                           "every token is -inf after penalties (repetition_penalty = %g)%s: "
                           "nothing to sample", (double)p->repetition_penalty,
                           mask ? " and the grammar's mask" : "");
}
