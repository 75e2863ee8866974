/*
 * Sampler tests: each step against values worked out by hand, parameter
 * validation, determinism, and the drawn frequencies against the softmax they
 * should follow (chi-square, fixed seeds, so the outcome is reproducible).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/sampler.h"

/* ---- helpers ---- */

static llorch_sampler *make(const llorch_sampler_params *p, uint32_t n_vocab) {
  llorch_sampler *s = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_sampler_init(&s, p, n_vocab, &em);
  if (rc != 0) fail_msg("llorch_sampler_init: %s", em.text);
  return s;
}

static int32_t draw(llorch_sampler *s, const float *logits, const int32_t *hist, size_t n_hist) {
  llorch_sample_result r;
  llorch_errmsg em = {{0}};
  int rc = llorch_sampler_sample(s, logits, hist, n_hist, &r, &em);
  if (rc != 0) fail_msg("llorch_sampler_sample: %s", em.text);
  return r.token;
}

static llorch_sampler_params greedy(void) {
  llorch_sampler_params p;
  llorch_sampler_params_default(&p);
  return p;
}

static llorch_sampler_params random_t(float t, uint64_t seed) {
  llorch_sampler_params p = greedy();
  p.temperature = t;
  p.seed = seed;
  return p;
}

/* Counts n draws into counts[n_vocab]. */
static void draw_many(llorch_sampler *s, const float *logits, uint32_t n_vocab, int n,
                      int *counts) {
  memset(counts, 0, n_vocab * sizeof *counts);
  for (int i = 0; i < n; i++) counts[draw(s, logits, NULL, 0)]++;
}

/*
 * Chi-square statistic of counts against expected probabilities (tokens with
 * probability 0 must have count 0, checked separately by the caller).
 */
static double chi_square(const int *counts, const double *prob, uint32_t n_vocab, int n) {
  double x2 = 0.0;
  for (uint32_t i = 0; i < n_vocab; i++) {
    if (prob[i] == 0.0) continue;
    double e = prob[i] * n;
    x2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x2;
}

static void softmax(const float *l, uint32_t n, double t, double *out) {
  double m = -INFINITY, z = 0.0;
  for (uint32_t i = 0; i < n; i++) m = l[i] > m ? l[i] : m;
  for (uint32_t i = 0; i < n; i++) z += (out[i] = exp((l[i] - m) / t));
  for (uint32_t i = 0; i < n; i++) out[i] /= z;
}

/* ---- parameters ---- */

static void expect_invalid(llorch_sampler_params p, const char *needle) {
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_sampler_params_validate(&p, &em), LLORCH_EINVAL);
  if (!strstr(em.text, needle)) fail_msg("message '%s' lacks '%s'", em.text, needle);
  llorch_sampler *s = (llorch_sampler *)1;
  assert_int_equal(llorch_sampler_init(&s, &p, 10, NULL), LLORCH_EINVAL);
  assert_null(s);
}

static void test_params_validate(void **state) {
  (void)state;
  llorch_sampler_params p = greedy();
  assert_int_equal(llorch_sampler_params_validate(&p, NULL), 0);
  p = greedy(); p.temperature = -0.1f; expect_invalid(p, "temperature = -0.1");
  p = greedy(); p.temperature = NAN; expect_invalid(p, "temperature");
  p = greedy(); p.top_k = -1; expect_invalid(p, "top_k = -1");
  p = greedy(); p.top_p = 0.0f; expect_invalid(p, "top_p = 0");
  p = greedy(); p.top_p = 1.5f; expect_invalid(p, "top_p = 1.5");
  p = greedy(); p.min_p = -0.5f; expect_invalid(p, "min_p = -0.5");
  p = greedy(); p.min_p = 2.0f; expect_invalid(p, "min_p = 2");
  p = greedy(); p.repetition_penalty = 0.0f; expect_invalid(p, "repetition_penalty = 0");
  p = greedy(); p.repetition_penalty = INFINITY; expect_invalid(p, "repetition_penalty = inf");
  p = greedy(); p.penalty_last_n = -2; expect_invalid(p, "penalty_last_n = -2");
  p = greedy(); p.frequency_penalty = 2.5f; expect_invalid(p, "frequency_penalty = 2.5");
  p = greedy(); p.presence_penalty = -3.0f; expect_invalid(p, "presence_penalty = -3");
  p = greedy(); p.n_logprobs = 21; expect_invalid(p, "n_logprobs = 21");
  p = greedy(); p.n_logprobs = -1; expect_invalid(p, "n_logprobs = -1");
  /* boundaries that are allowed */
  p = greedy(); p.top_p = 1.0f; p.min_p = 1.0f; p.n_logprobs = 20; p.penalty_last_n = -1;
  p.frequency_penalty = -2.0f; p.presence_penalty = 2.0f;
  assert_int_equal(llorch_sampler_params_validate(&p, NULL), 0);
  /* a zero vocabulary */
  llorch_errmsg em = {{0}};
  llorch_sampler *s = NULL;
  p = greedy();
  assert_int_equal(llorch_sampler_init(&s, &p, 0, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "n_vocab = 0"));
}

static void test_bad_inputs(void **state) {
  (void)state;
  llorch_sampler_params p = greedy();
  llorch_sampler *s = make(&p, 4);
  llorch_sample_result r;
  llorch_errmsg em = {{0}};
  float nan_l[4] = {0, NAN, 1, 2};
  assert_int_equal(llorch_sampler_sample(s, nan_l, NULL, 0, &r, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "token 1"));
  float inf_l[4] = {0, 1, INFINITY, 2};
  assert_int_equal(llorch_sampler_sample(s, inf_l, NULL, 0, &r, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "token 2"));
  float masked[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  assert_int_equal(llorch_sampler_sample(s, masked, NULL, 0, &r, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "-inf"));
  float ok[4] = {0, 1, 2, 3};
  int32_t hist[3] = {1, 4, 2};
  assert_int_equal(llorch_sampler_sample(s, ok, hist, 3, &r, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "history[1] = 4"));
  int32_t neg[1] = {-1};
  assert_int_equal(llorch_sampler_sample(s, ok, neg, 1, &r, &em), LLORCH_EINVAL);
  /* masked tokens are never chosen, even at high temperature */
  llorch_sampler_free(s);
  p = random_t(5.0f, 1);
  s = make(&p, 4);
  float some[4] = {-INFINITY, 0.0f, -INFINITY, 0.0f};
  for (int i = 0; i < 200; i++) {
    int32_t t = draw(s, some, NULL, 0);
    assert_true(t == 1 || t == 3);
  }
  llorch_sampler_free(s);
}

/* ---- greedy and logprobs ---- */

static void test_greedy_and_ties(void **state) {
  (void)state;
  llorch_sampler_params p = greedy();
  llorch_sampler *s = make(&p, 6);
  float l[6] = {0.5f, 2.0f, -1.0f, 2.5f, 2.5f, 1.0f};
  assert_int_equal(draw(s, l, NULL, 0), 3); /* exact tie 3 and 4: lowest id */
  float l2[6] = {7.0f, 7.0f, 7.0f, 7.0f, 7.0f, 7.0f};
  assert_int_equal(draw(s, l2, NULL, 0), 0);
  float l3[6] = {-INFINITY, -3.0f, -2.0f, -2.0f, -INFINITY, -5.0f};
  assert_int_equal(draw(s, l3, NULL, 0), 2);
  llorch_sampler_free(s);
  /* top_k = 1 at any temperature is greedy, with the same tie rule */
  p = random_t(1.5f, 42);
  p.top_k = 1;
  s = make(&p, 6);
  for (int i = 0; i < 50; i++) assert_int_equal(draw(s, l, NULL, 0), 3);
  llorch_sampler_free(s);
}

static void test_logprobs(void **state) {
  (void)state;
  llorch_sampler_params p = greedy();
  p.n_logprobs = 2;
  llorch_sampler *s = make(&p, 3);
  float l[3] = {1.0f, 2.0f, 3.0f};
  llorch_sample_result r;
  assert_int_equal(llorch_sampler_sample(s, l, NULL, 0, &r, NULL), 0);
  /* lse = 3 + ln(1 + e^-1 + e^-2) = 3.4076059644 */
  assert_int_equal(r.token, 2);
  assert_float_equal(r.logprob, -0.4076059644, 1e-5);
  assert_int_equal(r.n_top, 2);
  assert_int_equal(r.top[0].id, 2);
  assert_float_equal(r.top[0].logprob, -0.4076059644, 1e-5);
  assert_int_equal(r.top[1].id, 1);
  assert_float_equal(r.top[1].logprob, -1.4076059644, 1e-5);
  llorch_sampler_free(s);

  /* n_logprobs larger than the vocabulary; ties ordered by id; the logprob is
   * of the ORIGINAL logits even when a penalty changes the choice. */
  p = greedy();
  p.n_logprobs = 20;
  p.repetition_penalty = 4.0f;
  s = make(&p, 4);
  float l4[4] = {2.0f, 1.0f, 1.0f, 0.0f};
  int32_t hist[1] = {0};
  assert_int_equal(llorch_sampler_sample(s, l4, hist, 1, &r, NULL), 0);
  /* penalized: {0.5, 1, 1, 0} -> token 1 (tie with 2, lowest id) */
  assert_int_equal(r.token, 1);
  /* lse = 2 + ln(1 + 2e^-1 + e^-2) = 2.6265137 */
  assert_float_equal(r.logprob, 1.0 - 2.6265137, 1e-5);
  assert_int_equal(r.n_top, 4);
  int32_t want_ids[4] = {0, 1, 2, 3};
  double want_lp[4] = {2.0 - 2.6265137, 1.0 - 2.6265137, 1.0 - 2.6265137, -2.6265137};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(r.top[i].id, want_ids[i]);
    assert_float_equal(r.top[i].logprob, want_lp[i], 1e-5);
  }
  /* the chosen token penalized but still best: {6, 1, 1, 0} -> {1.5, 1, 1, 0};
   * its logprob is of the original 6: -ln(1 + 2e^-5 + e^-6) */
  float l6[4] = {6.0f, 1.0f, 1.0f, 0.0f};
  assert_int_equal(llorch_sampler_sample(s, l6, hist, 1, &r, NULL), 0);
  assert_int_equal(r.token, 0);
  assert_float_equal(r.logprob, -log(1.0 + 2.0 * exp(-5.0) + exp(-6.0)), 1e-6);
  llorch_sampler_free(s);

  /* top-n over a larger vocabulary: the 5 best of a shuffled ramp */
  p = greedy();
  p.n_logprobs = 5;
  enum { NV = 1000 };
  float *big = malloc(NV * sizeof *big);
  for (int i = 0; i < NV; i++) big[i] = (float)((i * 379) % NV) * 0.01f; /* a permutation */
  s = make(&p, NV);
  assert_int_equal(llorch_sampler_sample(s, big, NULL, 0, &r, NULL), 0);
  for (int i = 0; i < 5; i++) {
    assert_float_equal(big[r.top[i].id], (NV - 1 - i) * 0.01f, 1e-4);
    if (i > 0) assert_true(r.top[i].logprob < r.top[i - 1].logprob);
  }
  assert_int_equal(r.token, r.top[0].id);
  free(big);
  llorch_sampler_free(s);
}

/* ---- penalties ---- */

static void test_repetition_penalty(void **state) {
  (void)state;
  llorch_sampler_params p = greedy();
  p.repetition_penalty = 2.0f;
  llorch_sampler *s = make(&p, 3);
  /* {2, -1, 0.5} with 0 and 1 seen, r = 2: {1, -2, 0.5} -> 0 */
  float l[3] = {2.0f, -1.0f, 0.5f};
  int32_t h[2] = {0, 1};
  assert_int_equal(draw(s, l, h, 2), 0);
  llorch_sampler_free(s);
  /* r = 5: {0.4, -5, 0.5} -> 2 */
  p.repetition_penalty = 5.0f;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 2), 2);
  llorch_sampler_free(s);
  /* applied once per distinct token, not per occurrence: {4, 1.9} with 0 seen
   * three times, r = 2 -> {2, 1.9} -> 0 (per occurrence it would be 0.5) */
  p.repetition_penalty = 2.0f;
  s = make(&p, 2);
  float l2[2] = {4.0f, 1.9f};
  int32_t h3[3] = {0, 0, 0};
  assert_int_equal(draw(s, l2, h3, 3), 0);
  /* negative logits are multiplied: {-1, -1.5} with 0 seen -> {-2, -1.5} -> 1 */
  float l3[2] = {-1.0f, -1.5f};
  assert_int_equal(draw(s, l3, h3, 1), 1);
  /* r < 1 rewards repeats: {1, 1.5}, r = 0.5, 0 seen -> {2, 1.5} -> 0 */
  llorch_sampler_free(s);
  p.repetition_penalty = 0.5f;
  s = make(&p, 2);
  float l4[2] = {1.0f, 1.5f};
  assert_int_equal(draw(s, l4, h3, 1), 0);
  llorch_sampler_free(s);
}

static void test_frequency_presence(void **state) {
  (void)state;
  float l[3] = {3.0f, 2.5f, 0.0f};
  int32_t h[3] = {0, 0, 0};
  /* frequency 0.1: 3 - 3*0.1 = 2.7 > 2.5 -> 0; frequency 0.2: 2.4 -> 1 */
  llorch_sampler_params p = greedy();
  p.frequency_penalty = 0.1f;
  llorch_sampler *s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 3), 0);
  llorch_sampler_free(s);
  p.frequency_penalty = 0.2f;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 3), 1);
  llorch_sampler_free(s);
  /* presence is once: 0.4 -> 2.6 -> 0; 0.6 -> 2.4 -> 1 */
  p = greedy();
  p.presence_penalty = 0.4f;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 3), 0);
  llorch_sampler_free(s);
  p.presence_penalty = 0.6f;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 3), 1);
  llorch_sampler_free(s);
  /* negative frequency rewards: {2.5, 3} with 0 seen twice, freq -0.3 -> 3.1 -> 0 */
  p = greedy();
  p.frequency_penalty = -0.3f;
  s = make(&p, 3);
  float l2[3] = {2.5f, 3.0f, 0.0f};
  assert_int_equal(draw(s, l2, h, 2), 0);
  llorch_sampler_free(s);
  /* all three together, in llama.cpp's order: {3, 2.5} 0 seen 2x,
   * r = 1.2 -> 2.5, then - 2*0.05 - 0.1 -> 2.3 -> 1 */
  p = greedy();
  p.repetition_penalty = 1.2f;
  p.frequency_penalty = 0.05f;
  p.presence_penalty = 0.1f;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 2), 1);
  llorch_sampler_free(s);
}

static void test_penalty_window(void **state) {
  (void)state;
  float l[3] = {3.0f, 2.9f, 0.0f};
  int32_t h[4] = {0, 2, 2, 2};
  llorch_sampler_params p = greedy();
  p.presence_penalty = 0.5f;
  /* window of the last 3: 0 not in it -> 0 stays best */
  p.penalty_last_n = 3;
  llorch_sampler *s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 4), 0);
  llorch_sampler_free(s);
  /* window 4 (and -1 = all): 0 penalized -> 1 */
  p.penalty_last_n = 4;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 4), 1);
  llorch_sampler_free(s);
  p.penalty_last_n = -1;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 4), 1);
  /* the counts are cleared between calls: the same call again gives the same */
  assert_int_equal(draw(s, l, h, 4), 1);
  assert_int_equal(draw(s, l, h + 1, 3), 0);
  llorch_sampler_free(s);
  /* window 0: no penalty at all */
  p.penalty_last_n = 0;
  s = make(&p, 3);
  assert_int_equal(draw(s, l, h, 4), 0);
  llorch_sampler_free(s);
}

/* ---- filters ---- */

/* probabilities 0.5, 0.3, 0.15, 0.05 */
static void four_logits(float *l) {
  l[0] = logf(0.5f);
  l[1] = logf(0.3f);
  l[2] = logf(0.15f);
  l[3] = logf(0.05f);
}

static void seen_set(llorch_sampler *s, const float *l, uint32_t nv, int n, int *counts) {
  draw_many(s, l, nv, n, counts);
}

static void test_top_k(void **state) {
  (void)state;
  float l[4];
  four_logits(l);
  int c[4];
  llorch_sampler_params p = random_t(1.0f, 7);
  p.top_k = 2;
  llorch_sampler *s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_int_equal(c[2] + c[3], 0);
  /* renormalised over {0, 1}: 0.625 / 0.375 */
  double prob[4] = {0.625, 0.375, 0, 0};
  assert_true(chi_square(c, prob, 4, 4000) < 10.83); /* df 1, p = 0.001 */
  llorch_sampler_free(s);
  /* top_k >= n_vocab is the whole vocabulary */
  p.top_k = 10;
  s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_true(c[3] > 0);
  llorch_sampler_free(s);
}

static void test_top_p(void **state) {
  (void)state;
  float l[4];
  four_logits(l);
  int c[4];
  llorch_sampler_params p = random_t(1.0f, 11);
  p.top_p = 0.75f; /* 0.5 < 0.75 <= 0.8: keeps {0, 1} */
  llorch_sampler *s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_int_equal(c[2] + c[3], 0);
  assert_true(c[0] > 0 && c[1] > 0);
  double prob[4] = {0.625, 0.375, 0, 0};
  assert_true(chi_square(c, prob, 4, 4000) < 10.83);
  llorch_sampler_free(s);
  p.top_p = 0.45f; /* the first token alone */
  s = make(&p, 4);
  seen_set(s, l, 4, 500, c);
  assert_int_equal(c[0], 500);
  llorch_sampler_free(s);
  p.top_p = 0.9f; /* {0, 1, 2}: 0.95 >= 0.9 */
  s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_int_equal(c[3], 0);
  assert_true(c[2] > 0);
  llorch_sampler_free(s);
  /* llama.cpp order: top-p is decided BEFORE temperature, so a hot
   * temperature does not widen the set */
  p = random_t(5.0f, 12);
  p.top_p = 0.75f;
  s = make(&p, 4);
  seen_set(s, l, 4, 2000, c);
  assert_int_equal(c[2] + c[3], 0);
  llorch_sampler_free(s);
}

static void test_min_p(void **state) {
  (void)state;
  float l[4];
  four_logits(l);
  int c[4];
  llorch_sampler_params p = random_t(1.0f, 13);
  p.min_p = 0.35f; /* floor 0.175: keeps {0, 1} */
  llorch_sampler *s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_int_equal(c[2] + c[3], 0);
  assert_true(c[1] > 0);
  llorch_sampler_free(s);
  p.min_p = 0.2f; /* floor 0.1: keeps {0, 1, 2} */
  s = make(&p, 4);
  seen_set(s, l, 4, 4000, c);
  assert_int_equal(c[3], 0);
  assert_true(c[2] > 0);
  double prob[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
  assert_true(chi_square(c, prob, 4, 4000) < 13.82); /* df 2, p = 0.001 */
  llorch_sampler_free(s);
}

/* ---- distribution and determinism ---- */

static void test_distribution(void **state) {
  (void)state;
  enum { NV = 6, N = 30000 };
  float l[NV] = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f};
  double prob[NV];
  int c[NV];
  const float temps[3] = {1.0f, 0.5f, 2.0f};
  for (int t = 0; t < 3; t++) {
    llorch_sampler_params p = random_t(temps[t], 1234 + (uint64_t)t);
    llorch_sampler *s = make(&p, NV);
    draw_many(s, l, NV, N, c);
    softmax(l, NV, temps[t], prob);
    double x2 = chi_square(c, prob, NV, N);
    /* df 5: p = 0.001 at 20.52. A wrong temperature (e.g. T applied twice)
     * gives x2 in the hundreds at this N. */
    if (x2 >= 20.52) fail_msg("T = %g: chi-square %g >= 20.52", temps[t], x2);
    /* and the wrong temperature must be rejected by the same check */
    double wrong[NV];
    softmax(l, NV, temps[t] * 1.5, wrong);
    assert_true(chi_square(c, wrong, NV, N) > 20.52);
    llorch_sampler_free(s);
  }
}

static void test_determinism(void **state) {
  (void)state;
  enum { NV = 50, STEPS = 300 };
  float l[NV];
  for (int i = 0; i < NV; i++) l[i] = sinf((float)i * 0.7f) * 2.0f;
  llorch_sampler_params p = random_t(1.0f, 99);
  p.top_k = 30;
  p.top_p = 0.95f;
  p.repetition_penalty = 1.1f;
  int32_t a[STEPS], b[STEPS], c[STEPS];
  llorch_sampler *s1 = make(&p, NV), *s2 = make(&p, NV);
  p.seed = 100;
  llorch_sampler *s3 = make(&p, NV);
  /* s1 and s2 interleaved with s3 steps between: sequences do not share state */
  for (int i = 0; i < STEPS; i++) {
    a[i] = draw(s1, l, a, (size_t)i);
    c[i] = draw(s3, l, c, (size_t)i);
  }
  for (int i = 0; i < STEPS; i++) b[i] = draw(s2, l, b, (size_t)i);
  assert_memory_equal(a, b, sizeof a);
  assert_true(memcmp(a, c, sizeof a) != 0);
  /* reseed replays */
  llorch_sampler_reseed(s2, 99);
  for (int i = 0; i < STEPS; i++) b[i] = draw(s2, l, b, (size_t)i);
  assert_memory_equal(a, b, sizeof a);
  llorch_sampler_free(s1);
  llorch_sampler_free(s2);
  llorch_sampler_free(s3);
}

/*
 * A Qwen-sized vocabulary: the selection structures (quickselect, heap)
 * against a brute-force full sort of the same candidates.
 */
static int cmp_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

static void test_large_vocab_sets(void **state) {
  (void)state;
  enum { NV = 152064 };
  float *l = malloc(NV * sizeof *l), *sorted = malloc(NV * sizeof *l);
  assert_non_null(l);
  assert_non_null(sorted);
  uint64_t x = 12345;
  for (int i = 0; i < NV; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    l[i] = (float)((x >> 40) % 100000) / 10000.0f - 5.0f; /* [-5, 5), 1e-4 steps: ties exist */
  }
  memcpy(sorted, l, NV * sizeof *l);
  qsort(sorted, NV, sizeof *sorted, cmp_desc);

  /* top-k = 40: every draw is >= the 40th best logit */
  llorch_sampler_params p = random_t(1.0f, 5);
  p.top_k = 40;
  llorch_sampler *s = make(&p, NV);
  for (int i = 0; i < 150; i++) assert_true(l[draw(s, l, NULL, 0)] >= sorted[39]);
  llorch_sampler_free(s);

  /* top-p = 0.3: the set is the sorted prefix whose mass reaches 0.3 */
  double z = 0.0;
  for (int i = 0; i < NV; i++) z += exp((double)sorted[i] - sorted[0]);
  double cum = 0.0;
  int kept = 0;
  while (cum < 0.3) cum += exp((double)sorted[kept++] - sorted[0]) / z;
  float floor_logit = sorted[kept - 1];
  p = random_t(1.0f, 6);
  p.top_p = 0.3f;
  s = make(&p, NV);
  int below = 0, at_floor_or_above = 0;
  for (int i = 0; i < 150; i++) {
    float v = l[draw(s, l, NULL, 0)];
    if (v < floor_logit) below++;
    else at_floor_or_above++;
  }
  assert_int_equal(below, 0);
  assert_int_equal(at_floor_or_above, 150);
  llorch_sampler_free(s);

  /* min_p = 0.9 with top-k 1000: only logits within ln(0.9) of the max */
  p = random_t(1.0f, 8);
  p.top_k = 1000;
  p.min_p = 0.9f;
  s = make(&p, NV);
  for (int i = 0; i < 150; i++)
    assert_true(l[draw(s, l, NULL, 0)] >= sorted[0] + logf(0.9f) - 1e-6f);
  llorch_sampler_free(s);

  /* greedy = the max, lowest id among equals */
  p = greedy();
  s = make(&p, NV);
  int32_t g = draw(s, l, NULL, 0);
  assert_true(l[g] == sorted[0]);
  for (int i = 0; i < g; i++) assert_true(l[i] < sorted[0]);
  llorch_sampler_free(s);
  free(l);
  free(sorted);
}

/* A grammar mask removes tokens before every step: greedy picks the best
 * allowed one, sampling never draws a masked one, and all-masked is an error. */
static void test_logit_bias(void **state) {
  (void)state;
  float l[6] = {0.5f, 2.0f, -1.0f, 2.5f, 2.4f, 1.0f};
  /* -100 takes the greedy pick out; the bias array is the sampler's own copy */
  llorch_logit_bias ban[1] = {{3, -100.0f}};
  llorch_sampler_params p = greedy();
  p.logit_bias = ban;
  p.n_logit_bias = 1;
  llorch_sampler *s = make(&p, 6);
  ban[0].id = 0; /* changing the caller's array later changes nothing */
  assert_int_equal(draw(s, l, NULL, 0), 4);
  llorch_sampler_free(s);
  /* +100 forces a token at temperature 1.5, every draw */
  llorch_logit_bias force[2] = {{2, 100.0f}, {5, -3.0f}};
  p = random_t(1.5f, 7);
  p.logit_bias = force;
  p.n_logit_bias = 2;
  s = make(&p, 6);
  for (int i = 0; i < 100; i++) assert_int_equal(draw(s, l, NULL, 0), 2);
  llorch_sampler_free(s);
  /* an id past the vocabulary or a bias out of range: EINVAL naming it */
  llorch_errmsg em = {{0}};
  llorch_logit_bias bad[1] = {{6, 1.0f}};
  p = greedy();
  p.logit_bias = bad;
  p.n_logit_bias = 1;
  assert_int_equal(llorch_sampler_init(&s, &p, 6, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "logit_bias token 6"));
  bad[0] = (llorch_logit_bias){1, 101.0f};
  assert_int_equal(llorch_sampler_init(&s, &p, 6, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "[-100, 100]"));
}

static void test_mask(void **state) {
  (void)state;
  float logits[40];
  for (int i = 0; i < 40; i++) logits[i] = (float)(40 - i); /* token 0 best */
  uint32_t mask[2] = {0, 0};
  mask[0] |= 1u << 7;
  mask[1] |= 1u << (33 - 32);
  logits[33] = logits[7] - 0.5f; /* close enough to be drawn */
  llorch_sampler_params p = greedy();
  llorch_sampler *s = make(&p, 40);
  llorch_sample_result r;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_sampler_sample_masked(s, logits, mask, NULL, 0, &r, &em), 0);
  assert_int_equal(r.token, 7);
  llorch_sampler_free(s);
  p.temperature = 1.5f;
  p.top_k = 1; /* top-k acts on allowed tokens: still 7 */
  s = make(&p, 40);
  for (int k = 0; k < 50; k++) {
    assert_int_equal(llorch_sampler_sample_masked(s, logits, mask, NULL, 0, &r, &em), 0);
    assert_int_equal(r.token, 7);
  }
  llorch_sampler_free(s);
  p.top_k = 0;
  s = make(&p, 40);
  int seen33 = 0;
  for (int k = 0; k < 2000; k++) {
    assert_int_equal(llorch_sampler_sample_masked(s, logits, mask, NULL, 0, &r, &em), 0);
    assert_true(r.token == 7 || r.token == 33);
    seen33 += r.token == 33;
  }
  assert_true(seen33 > 0);
  mask[0] = mask[1] = 0;
  assert_int_equal(llorch_sampler_sample_masked(s, logits, mask, NULL, 0, &r, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "mask"));
  llorch_sampler_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_params_validate),    cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_greedy_and_ties),    cmocka_unit_test(test_logprobs),
      cmocka_unit_test(test_repetition_penalty), cmocka_unit_test(test_frequency_presence),
      cmocka_unit_test(test_penalty_window),     cmocka_unit_test(test_top_k),
      cmocka_unit_test(test_top_p),              cmocka_unit_test(test_min_p),
      cmocka_unit_test(test_distribution),       cmocka_unit_test(test_determinism),
      cmocka_unit_test(test_large_vocab_sets), cmocka_unit_test(test_mask),
      cmocka_unit_test(test_logit_bias),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
