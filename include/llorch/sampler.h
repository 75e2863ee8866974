/*
 * Token sampling: one llorch_sampler per sequence, turning a row of logits
 * into the next token id, its logprob and the top-n alternatives.
 *
 * Steps, in llama.cpp's default order (common_sampler: penalties -> top-k ->
 * top-p -> min-p -> temperature -> draw), so a given set of parameters means
 * what it means in llama.cpp:
 *   1. penalties over the last penalty_last_n tokens of the history:
 *        repetition (once per distinct token): logit > 0 ? logit / r : logit * r
 *        then logit -= count * frequency_penalty + (count > 0) * presence_penalty
 *   2. temperature == 0: greedy - the highest penalized logit; among exact
 *      ties the LOWEST token id wins (a fixed rule, so every run and every
 *      backend that produces the same logits picks the same token). Steps 3-6
 *      are skipped.
 *   3. top-k: keep the k highest logits (0 = off).
 *   4. top-p: keep the smallest set of highest-probability tokens whose
 *      probabilities (softmax of the penalized logits, BEFORE temperature, as
 *      llama.cpp) sum to >= top_p (1 = off).
 *   5. min-p: keep tokens with probability >= min_p * max probability, i.e.
 *      logit >= max_logit + log(min_p) (0 = off).
 *   6. draw from softmax(logit / temperature) over what is left, with the
 *      sampler's own PRNG (xoshiro256** seeded by splitmix64(seed)): same
 *      seed, logits and history -> same token, whatever other sequences do.
 *
 * Ordering among equal logits is always by token id, so the selection steps
 * are deterministic too. The reported logprob of the chosen token, and the
 * top-n alternatives, are log-softmax values of the ORIGINAL logits (before
 * penalties and temperature), as OpenAI reports them.
 *
 * A 152k vocabulary is handled without a full sort per token: top-k is a
 * quickselect, top-p pops from a heap built in O(n) until the mass is
 * reached, min-p is one linear filter, the top-n logprobs a bounded insertion.
 */
#ifndef LLORCH_SAMPLER_H
#define LLORCH_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "llorch/error.h"

/* Most alternatives a result can carry (OpenAI's top_logprobs limit). */
#define LLORCH_SAMPLER_MAX_LOGPROBS 20

/* One entry of OpenAI's logit_bias: added to the token's logit before
 * anything else (-100 all but bans it, +100 all but forces it). */
typedef struct llorch_logit_bias {
  int32_t id;
  float bias;
} llorch_logit_bias;

typedef struct llorch_sampler_params {
  float temperature;        /* >= 0; 0 = greedy */
  int32_t top_k;            /* >= 0; 0 = off */
  float top_p;              /* (0, 1]; 1 = off */
  float min_p;              /* [0, 1]; 0 = off */
  float repetition_penalty; /* > 0; 1 = off */
  int32_t penalty_last_n;   /* tokens of history the three penalties look at
                               (llama.cpp's penalty_last_n); -1 = all, 0 = none */
  float frequency_penalty;  /* [-2, 2]; 0 = off */
  float presence_penalty;   /* [-2, 2]; 0 = off */
  uint64_t seed;            /* PRNG seed; the same seed gives the same draws */
  int32_t n_logprobs;       /* 0..LLORCH_SAMPLER_MAX_LOGPROBS alternatives to report */
  const llorch_logit_bias *logit_bias; /* (n_logit_bias) ids < n_vocab, bias in [-100, 100];
                                          copied by llorch_sampler_init */
  uint32_t n_logit_bias;
} llorch_sampler_params;

/* Greedy with nothing else on: temperature 0, top_k 0, top_p 1, min_p 0,
 * repetition_penalty 1, penalty_last_n 64 (llama.cpp's default), frequency and
 * presence 0, seed 0, n_logprobs 0. */
void llorch_sampler_params_default(llorch_sampler_params *p);

/*
 * Checks every field against the ranges above (and that floats are finite).
 * Returns 0, or LLORCH_EINVAL with em naming the parameter, the value and the
 * range expected, e.g. "top_p = 1.5: expected a number in (0, 1]".
 */
int llorch_sampler_params_validate(const llorch_sampler_params *p, llorch_errmsg *em);

typedef struct llorch_token_logprob {
  int32_t id;    /* token id */
  float logprob; /* natural log of its probability under the original logits */
} llorch_token_logprob;

typedef struct llorch_sample_result {
  int32_t token;   /* the chosen token id */
  float logprob;   /* log-softmax of the original logits at token */
  int32_t n_top;   /* entries in top (== params.n_logprobs, or n_vocab if smaller) */
  llorch_token_logprob top[LLORCH_SAMPLER_MAX_LOGPROBS]; /* by logprob descending,
                                                            then id ascending */
} llorch_sample_result;

/* Per-sequence state: parameters, PRNG and scratch sized for the vocabulary
 * (16 bytes per token). Not thread-safe; one per sequence. */
typedef struct llorch_sampler llorch_sampler;

/*
 * Validates p (as llorch_sampler_params_validate) and allocates a sampler for
 * a vocabulary of n_vocab tokens (>= 1). Returns 0, LLORCH_EINVAL (with em)
 * or LLORCH_ENOMEM.
 */
int llorch_sampler_init(llorch_sampler **out, const llorch_sampler_params *p, uint32_t n_vocab,
                        llorch_errmsg *em);
void llorch_sampler_free(llorch_sampler *s);

/* Restarts the PRNG from seed, as if the sampler had just been made with it. */
void llorch_sampler_reseed(llorch_sampler *s, uint64_t seed);

/*
 * Samples the next token from logits (n_vocab floats, not modified). history
 * holds the sequence's tokens so far (n_history of them; may be NULL when 0);
 * the penalties look at its last penalty_last_n entries. llorch run passes
 * the prompt and the generated tokens, as llama.cpp does.
 *
 * -inf logits are allowed (masked tokens). Returns 0; LLORCH_EINVAL with em
 * when a logit is NaN or +inf, when every logit is -inf (also after
 * penalties), or when a history id is outside [0, n_vocab).
 */
int llorch_sampler_sample(llorch_sampler *s, const float *logits, const int32_t *history,
                          size_t n_history, llorch_sample_result *out, llorch_errmsg *em);

/*
 * As llorch_sampler_sample, with mask (ceil(n_vocab / 32) words, bit i of
 * word i / 32 set = token i allowed; NULL = all) applied after the penalties
 * and before every selection step: a grammar's allowed tokens (grammar.h).
 * The reported logprobs stay those of the original logits. LLORCH_EINVAL
 * when no allowed token has a finite logit.
 */
int llorch_sampler_sample_masked(llorch_sampler *s, const float *logits, const uint32_t *mask,
                                 const int32_t *history, size_t n_history,
                                 llorch_sample_result *out, llorch_errmsg *em);

/*
 * Scores a given token instead of sampling one: out gets token, the
 * log-softmax of logits at it, and the n_top (0..LLORCH_SAMPLER_MAX_LOGPROBS)
 * best alternatives, with the same numbers a sample result reports (prompt
 * logprobs of echo). LLORCH_EINVAL with em for a token outside [0, n_vocab),
 * NaN/+inf logits or all -inf.
 */
int llorch_sampler_logprob_of(const float *logits, uint32_t n_vocab, int32_t token, int32_t n_top,
                              llorch_sample_result *out, llorch_errmsg *em);

#endif /* LLORCH_SAMPLER_H */
