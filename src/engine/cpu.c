/*
 * The CPU backend: weights used in place from the mmapped GGUF, an F16 KV
 * cache per sequence slot, and a forward pass over a batch of (sequence,
 * position, token) entries that follows llama.cpp's graph for llama, qwen2
 * and qwen3 operation by operation (see kernels.h for why the rounding must
 * match).
 *
 * Batch invariance: every reduction's order is fixed per output element by
 * its own row, column and a per-sequence order flag (kernels.h); the flag
 * depends only on how many entries that sequence has in the batch, which is
 * also what llama.cpp's own choice between its GEMM and GEMV paths depends
 * on when it runs one sequence. So a sequence gives bit-identical logits
 * alone or batched with others.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "llorch/backend.h"
#include "llorch/log.h"
#include "llorch/quant.h"
#include "llorch/threadpool.h"

#define CPU_ROW_CHUNK 48   /* output rows per work item (multiple of the 3-row tiles) */
#define CPU_PANEL_BYTES (160u << 10) /* prepared activations per column block (L2) */

typedef struct mm_block {
  int c0, nc;      /* columns [c0, c0 + nc) */
  kern_order order;
} mm_block;

typedef struct cpu_ctx {
  const llorch_model *m;
  llorch_hparams hp;
  const kern_table *kt;
  llorch_threadpool *tp;
  uint32_t n_ctx;        /* positions per slot */
  uint32_t n_ctx_pad;    /* n_ctx rounded up to 4 vectors: attention dots run over padded lengths */
  uint32_t n_seq;
  uint32_t n_batch_max;
  uint32_t kv_dim;       /* n_head_kv * head_dim */
  uint32_t q_dim;        /* n_head * head_dim */
  uint16_t *k_cache;     /* (n_layer, n_seq, n_ctx, kv_dim) f16 */
  uint16_t *v_cache;     /* (n_layer, n_seq, kv_dim, n_ctx_pad) f16, transposed: the
                            weighted sum over positions is a contiguous dot */
  int32_t *seq_len;      /* (n_seq) positions cached */
  /* scratch, sized for n_batch_max entries */
  float *x;              /* (B, n_embd) residual stream */
  float *xn;             /* (B, max(n_embd, q_dim)) normed input / attention output */
  float *q;              /* (B, q_dim) */
  float *k;              /* (B, kv_dim) */
  float *v;              /* (B, kv_dim) */
  float *gate;           /* (B, n_ff) */
  float *up;             /* (B, n_ff) */
  void *act;             /* (B, prepared row bytes) activations for the current matmul */
  size_t act_row_max;    /* bytes per prepared row */
  float *att_scratch;    /* (n_threads, 3 * n_ctx_pad + head_dim) per-thread attention */
  float *rope_ff;        /* (n_rot/2) rope frequency factors, or NULL */
  uint8_t *order_all;    /* (B) kern_order of each entry for full-batch stages */
  uint8_t *order_out;    /* (B) kern_order of each output entry for output stages */
  uint8_t *order_all_rp; /* (B) the same for repacked weights (groups of 4, see kernels.h) */
  uint8_t *order_out_rp; /* (B) */
  int32_t *seq_rank;     /* (n_seq) running count while ranking entries */
  int32_t *out_idx;      /* (B) entries that want logits, in entry order */
  int32_t *seq_count;    /* (n_seq) entries per sequence in the current batch */
  int32_t *seq_outs;     /* (n_seq) output entries per sequence */
  mm_block *mm_blocks;   /* (B + 1) column panels of the current matmul */
} cpu_ctx;

/* ---- matmul over the thread pool ---- */

typedef struct mm_job {
  cpu_ctx *c;
  kern_tile_fn tile;
  int n_in, n_out;
  const char *w;        /* row 0 of the weight matrix */
  size_t w_stride;      /* bytes per weight row */
  const char *act;      /* prepared activations */
  size_t act_stride;    /* bytes per prepared column */
  float *y;             /* y[col * ldy + row] */
  size_t ldy;
  mm_block *blocks;
  int n_blocks, n_rchunks;
  atomic_int next;
} mm_job;

static void mm_worker(void *arg, int ith, int nth) {
  (void)ith;
  (void)nth;
  mm_job *j = arg;
  const int total = j->n_blocks * j->n_rchunks;
  for (;;) {
    int k = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (k >= total) break;
    const mm_block *b = &j->blocks[k / j->n_rchunks];
    const int r0 = (k % j->n_rchunks) * CPU_ROW_CHUNK;
    const int nr = j->n_out - r0 < CPU_ROW_CHUNK ? j->n_out - r0 : CPU_ROW_CHUNK;
    j->tile(j->n_in, j->w + (size_t)r0 * j->w_stride, j->w_stride, nr,
            j->act + (size_t)b->c0 * j->act_stride, j->act_stride, b->nc,
            j->y + (size_t)b->c0 * j->ldy + r0, j->ldy, b->order);
  }
}

/* Preparing the activations (F16 rounding, Q8_0/Q8_K quantization) is per
 * row and independent, so rows split over the pool give the same bytes as
 * one thread: during prefill it was a serial stretch before every matmul. */
typedef struct act_job {
  cpu_ctx *c;
  kern_act a;
  int n_in;
  const float *x;   /* first input row */
  size_t x_stride;  /* floats between input rows */
  size_t arow;      /* bytes per prepared row */
  int n_cols;       /* rows to prepare */
} act_job;

static void act_worker(void *arg, int ith, int nth) {
  const act_job *j = arg;
  const cpu_ctx *c = j->c;
  /* contiguous ranges: neighbouring threads do not share cache lines */
  const int per = (j->n_cols + nth - 1) / nth;
  const int i0 = ith * per, i1 = i0 + per < j->n_cols ? i0 + per : j->n_cols;
  for (int i = i0; i < i1; i++) {
    void *dst = (char *)c->act + (size_t)i * j->arow;
    const float *src = j->x + (size_t)i * j->x_stride;
    if (j->a == KERN_ACT_F16) c->kt->round_f16(j->n_in, dst, src);
    else if (j->a == KERN_ACT_Q8_0) c->kt->quantize_q8_0(src, dst, j->n_in);
    else kern_act_prepare(j->a, src, dst, j->n_in);
  }
}

/*
 * y (n_cols rows of ldy floats) = W x for the n_cols input rows of x (each
 * n_in floats, x_stride floats apart). Each column's reduction order comes
 * from the batch's order arrays: those of all entries, or (outputs) those
 * of the entries that want logits.
 */
static void cpu_matmul(cpu_ctx *c, const llorch_gguf_tensor *w, const float *x, size_t x_stride,
                       int n_cols, bool outputs, float *y, size_t ldy) {
  const int n_in = (int)w->ne[0], n_out = (int)w->ne[1];
  const bool repacked = w != c->m->tok_embd && kern_is_repacked(w->type, w->ne[1]);
  const uint8_t *orders = outputs ? (repacked ? c->order_out_rp : c->order_out)
                                  : (repacked ? c->order_all_rp : c->order_all);
  kern_act a;
  if (!kern_act_for_type(w->type, &a)) LLORCH_ASSERT(!"weight type validated at load");
  const size_t arow = kern_act_row_bytes(a, n_in);
  act_job aj = {.c = c, .a = a, .n_in = n_in, .x = x, .x_stride = x_stride, .arow = arow,
                .n_cols = n_cols};
  if (n_cols > 1) llorch_threadpool_run(c->tp, act_worker, &aj);
  else act_worker(&aj, 0, 1);
  /* columns in runs of one order, cut into panels that stay in L2 */
  int nb_cols = (int)(CPU_PANEL_BYTES / arow);
  nb_cols = nb_cols < 4 ? 4 : nb_cols / 4 * 4;
  mm_block *blocks = c->mm_blocks; /* n_cols <= B panels at most */
  int nblk = 0;
  for (int i = 0; i < n_cols;) {
    int e = i;
    while (e < n_cols && orders[e] == orders[i] && e - i < nb_cols) e++;
    blocks[nblk++] = (mm_block){i, e - i, (kern_order)orders[i]};
    i = e;
  }
  mm_job job = {
      .c = c,
      .tile = repacked ? c->kt->tile_repacked[w->type] : c->kt->tile[w->type],
      .n_in = n_in,
      .n_out = n_out,
      .w = w->data,
      .w_stride = llorch_row_size(w->type, n_in),
      .act = c->act,
      .act_stride = arow,
      .y = y,
      .ldy = ldy,
      .blocks = blocks,
      .n_blocks = nblk,
      .n_rchunks = (n_out + CPU_ROW_CHUNK - 1) / CPU_ROW_CHUNK,
  };
  atomic_init(&job.next, 0);
  llorch_threadpool_run(c->tp, mm_worker, &job);
}

/* ---- elementwise pieces (ggml's operation order) ---- */

/* ggml_rms_norm then ggml_mul: sum of squares in double, scale in float,
 * y = (x * scale) * w. */
static void cpu_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
  double sum = 0.0;
  for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
  const float mean = (float)(sum / n);
  const float scale = 1.0f / sqrtf(mean + eps);
  for (int i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

/*
 * ggml_rope_cache_init + rope_yarn (ext_factor 0, attn_factor 1): theta
 * starts at pos and is multiplied by theta_scale once per pair, so the
 * rounding of each angle is ggml's; frequency factors divide it.
 */
static void cpu_rope_cache(const cpu_ctx *c, int32_t pos, float *cs /* (n_rot) cos,sin pairs */) {
  const int n_rot = (int)c->hp.n_rot;
  const float theta_scale = powf(c->hp.rope_freq_base, -2.0f / (float)n_rot);
  float theta = (float)pos;
  for (int i0 = 0; i0 < n_rot; i0 += 2) {
    const float ff = c->rope_ff ? c->rope_ff[i0 / 2] : 1.0f;
    const float th = c->hp.rope_freq_scale * (theta / ff);
    cs[i0] = cosf(th);
    cs[i0 + 1] = sinf(th);
    theta *= theta_scale;
  }
}

/*
 * The rotation as llama.cpp's prebuilt CPU binaries compute it: the compiler
 * contracted x0*cos - x1*sin into fma(x0, cos, -(x1*sin)) and x0*sin + x1*cos
 * into fma(x0, sin, x1*cos) (ggml's C++ is built with FP contraction on).
 * A 1-ulp difference here rarely survives the F16 rounding of Q and K, which
 * is why only deep models showed it; with the plain expression a 24-layer
 * model's logits drifted from llama.cpp's, with these they are identical.
 */
static inline float rope_rot0(float x0, float x1, float c, float sn) { return fmaf(x0, c, -(x1 * sn)); }
static inline float rope_rot1(float x0, float x1, float c, float sn) { return fmaf(x0, sn, x1 * c); }

static void cpu_rope_apply(const cpu_ctx *c, float *x, const float *cs) {
  const int n_rot = (int)c->hp.n_rot;
  if (c->hp.rope_type == LLORCH_ROPE_NORM) {
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
      const float x0 = x[i0], x1 = x[i0 + 1];
      x[i0] = rope_rot0(x0, x1, cs[i0], cs[i0 + 1]);
      x[i0 + 1] = rope_rot1(x0, x1, cs[i0], cs[i0 + 1]);
    }
  } else {
    const int half = n_rot / 2;
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
      const int ic = i0 / 2;
      const float x0 = x[ic], x1 = x[ic + half];
      x[ic] = rope_rot0(x0, x1, cs[i0], cs[i0 + 1]);
      x[ic + half] = rope_rot1(x0, x1, cs[i0], cs[i0 + 1]);
    }
  }
}

/* ---- elementwise work split over the pool (prefill: rows x n_ff SiLUs) ---- */

typedef struct swiglu_job {
  cpu_ctx *c;
  int rows, n;
} swiglu_job;

static void swiglu_worker(void *arg, int ith, int nth) {
  swiglu_job *j = arg;
  for (int r = ith; r < j->rows; r += nth) {
    float *g = j->c->gate + (size_t)r * j->n;
    j->c->kt->swiglu(j->n, g, g, j->c->up + (size_t)r * j->n);
  }
}

/* ---- attention ---- */

typedef struct att_job {
  cpu_ctx *c;
  const llorch_batch *b;
  uint32_t layer;
  atomic_int next;
} att_job;

/*
 * One (entry, head): KQ in F16 (Q rounded to F16 like ggml's vec_dot_type
 * conversion), scale, softmax through ggml_v_expf over a length padded to
 * the vector width L with -inf (llama.cpp's masked cells: its KV length is
 * padded to 256), probabilities rounded to F16, then the dot with the
 * transposed V rows over a length padded to the GEMV step 4L with zeros.
 */
static void att_one(cpu_ctx *c, const llorch_batch *b, uint32_t layer, int i, int h, float *scr) {
  const int hd = (int)c->hp.head_dim;
  const int s = b->seq[i], p = b->pos[i];
  const int kvh = h / (int)(c->hp.n_head / c->hp.n_head_kv);
  const kern_order ord = (kern_order)c->order_all[i];
  const size_t slot = (size_t)layer * c->n_seq + (size_t)s;
  const uint16_t *kc = c->k_cache + slot * c->n_ctx * c->kv_dim + (size_t)kvh * hd;
  const uint16_t *vc = c->v_cache + (slot * c->kv_dim + (size_t)kvh * hd) * c->n_ctx_pad;
  float *q16 = scr;                     /* (hd) */
  float *sc = scr + hd;                 /* (n_ctx_pad) scores */
  float *pr = sc + c->n_ctx_pad;        /* (n_ctx_pad) probabilities */
  const float *qv = c->q + (size_t)i * c->q_dim + (size_t)h * hd;
  for (int d = 0; d < hd; d++) q16[d] = kern_round_f16(qv[d]);
  const int n_kv = p + 1;
  const kern_tile_fn tile_f16 = c->kt->tile[LLORCH_TYPE_F16];
  /* scores[t] = K[t] . q for t <= p: a tile of n_kv rows x 1 column */
  tile_f16(hd, kc, (size_t)c->kv_dim * sizeof(uint16_t), n_kv, q16, 0, 1, sc, 0, ord);
  const float scale = 1.0f / sqrtf((float)hd);
  const int L = c->kt->lanes;
  const int n_sm = (n_kv + L - 1) / L * L;
  float max = -INFINITY;
  for (int t = 0; t < n_kv; t++) {
    sc[t] *= scale;
    if (sc[t] > max) max = sc[t];
  }
  for (int t = n_kv; t < n_sm; t++) sc[t] = -INFINITY;
  const double sum = c->kt->softmax_exp(n_sm, pr, sc, max);
  const float inv = (float)(1.0 / sum);
  const int n_v = (n_kv + 4 * L - 1) / (4 * L) * (4 * L);
  for (int t = 0; t < n_sm; t++) pr[t] = kern_round_f16(pr[t] * inv);
  for (int t = n_sm; t < n_v; t++) pr[t] = 0.0f;
  /* out[d] = V^T[d] . probs: a tile of hd rows x 1 column over n_v */
  float *out = c->xn + (size_t)i * c->q_dim + (size_t)h * hd;
  tile_f16(n_v, vc, (size_t)c->n_ctx_pad * sizeof(uint16_t), hd, pr, 0, 1, out, 0, ord);
}

static void att_worker(void *arg, int ith, int nth) {
  (void)nth;
  att_job *j = arg;
  cpu_ctx *c = j->c;
  float *scr = c->att_scratch + (size_t)ith * (3 * c->n_ctx_pad + c->hp.head_dim);
  const int n_head = (int)c->hp.n_head;
  const int total = j->b->n_tokens * n_head;
  for (;;) {
    int k = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (k >= total) break;
    att_one(c, j->b, j->layer, k / n_head, k % n_head, scr);
  }
}

/* ---- the forward pass ---- */

static int cpu_check_batch(cpu_ctx *c, const llorch_batch *b, llorch_errmsg *em) {
  if (b->n_tokens <= 0 || (uint32_t)b->n_tokens > c->n_batch_max)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: batch of %d entries (allowed 1..%u)",
                             b->n_tokens, c->n_batch_max);
  if (!b->token || !b->pos || !b->seq)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: batch token/pos/seq arrays missing");
  /* expected next position per sequence, starting at its cached length */
  int32_t *next = c->seq_count; /* reused: reset below */
  for (uint32_t s = 0; s < c->n_seq; s++) next[s] = c->seq_len[s];
  for (int i = 0; i < b->n_tokens; i++) {
    const int32_t s = b->seq[i], p = b->pos[i], t = b->token[i];
    if (s < 0 || (uint32_t)s >= c->n_seq)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: entry %d: sequence %d outside 0..%u", i,
                               s, c->n_seq - 1);
    if (t < 0 || (uint32_t)t >= c->hp.n_vocab)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: entry %d: token %d outside 0..%u", i, t,
                               c->hp.n_vocab - 1);
    if (p != next[s])
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "forward: entry %d: sequence %d position %d, expected %d (positions "
                               "must continue the cached ones, in order)",
                               i, s, p, next[s]);
    if ((uint32_t)p >= c->n_ctx)
      return llorch_errmsg_set(em, LLORCH_ELIMIT,
                               "forward: entry %d: position %d is past the context of %u tokens", i,
                               p, c->n_ctx);
    next[s] = p + 1;
  }
  return 0;
}

static int cpu_forward(void *ctx, const llorch_batch *b, float *logits, llorch_errmsg *em) {
  cpu_ctx *c = ctx;
  int rc = cpu_check_batch(c, b, em);
  if (rc) return rc;
  const llorch_hparams *hp = &c->hp;
  const int T = b->n_tokens;
  const int E = (int)hp->n_embd, F = (int)hp->n_ff, HD = (int)hp->head_dim;
  const int QD = (int)c->q_dim, KD = (int)c->kv_dim;

  /* per-sequence counts pick each entry's reduction order (see top) */
  memset(c->seq_count, 0, sizeof(int32_t) * c->n_seq);
  memset(c->seq_outs, 0, sizeof(int32_t) * c->n_seq);
  int n_out = 0;
  for (int i = 0; i < T; i++) {
    c->seq_count[b->seq[i]]++;
    if (b->logits && b->logits[i]) {
      c->seq_outs[b->seq[i]]++;
      c->out_idx[n_out++] = i;
    }
  }
  for (int i = 0; i < T; i++)
    c->order_all[i] = c->seq_count[b->seq[i]] >= 2 ? KERN_ORDER_GEMM : KERN_ORDER_GEMV;
  for (int o = 0; o < n_out; o++)
    c->order_out[o] = c->seq_outs[b->seq[c->out_idx[o]]] >= 2 ? KERN_ORDER_GEMM : KERN_ORDER_GEMV;
  /* repacked weights: an entry is in a GEMM group when its rank within its
   * sequence falls in the sequence's whole groups of 4 */
  memset(c->seq_rank, 0, sizeof(int32_t) * c->n_seq);
  for (int i = 0; i < T; i++) {
    const int32_t s = b->seq[i];
    c->order_all_rp[i] = c->seq_rank[s]++ < c->seq_count[s] / 4 * 4 ? KERN_ORDER_GEMM : KERN_ORDER_GEMV;
  }
  memset(c->seq_rank, 0, sizeof(int32_t) * c->n_seq);
  for (int o = 0; o < n_out; o++) {
    const int32_t s = b->seq[c->out_idx[o]];
    c->order_out_rp[o] = c->seq_rank[s]++ < c->seq_outs[s] / 4 * 4 ? KERN_ORDER_GEMM : KERN_ORDER_GEMV;
  }

  /* token embeddings (ggml_get_rows: the reference dequantizer) */
  const llorch_gguf_tensor *te = c->m->tok_embd;
  const size_t te_row = llorch_row_size(te->type, E);
  for (int i = 0; i < T; i++)
    llorch_dequantize_row(te->type, (const char *)te->data + (size_t)b->token[i] * te_row,
                          c->x + (size_t)i * E, E);

  float cs[1024];
  for (uint32_t il = 0; il < hp->n_layer; il++) {
    const llorch_layer *L = &c->m->layers[il];
    const bool last = il + 1 == hp->n_layer;
    for (int i = 0; i < T; i++)
      cpu_rmsnorm(c->xn + (size_t)i * E, c->x + (size_t)i * E, L->attn_norm->data, E, hp->rms_eps);
    cpu_matmul(c, L->wq, c->xn, E, T, false, c->q, QD);
    cpu_matmul(c, L->wk, c->xn, E, T, false, c->k, KD);
    cpu_matmul(c, L->wv, c->xn, E, T, false, c->v, KD);
    for (int i = 0; i < T; i++) {
      float *q = c->q + (size_t)i * QD, *k = c->k + (size_t)i * KD, *v = c->v + (size_t)i * KD;
      if (hp->has_qkv_bias) {
        const float *bq = L->bq->data, *bk = L->bk->data, *bv = L->bv->data;
        for (int d = 0; d < QD; d++) q[d] = q[d] + bq[d];
        for (int d = 0; d < KD; d++) k[d] = k[d] + bk[d];
        for (int d = 0; d < KD; d++) v[d] = v[d] + bv[d];
      }
      if (hp->has_qk_norm) {
        for (uint32_t h = 0; h < hp->n_head; h++)
          cpu_rmsnorm(q + h * HD, q + h * HD, L->q_norm->data, HD, hp->rms_eps);
        for (uint32_t h = 0; h < hp->n_head_kv; h++)
          cpu_rmsnorm(k + h * HD, k + h * HD, L->k_norm->data, HD, hp->rms_eps);
      }
      cpu_rope_cache(c, b->pos[i], cs);
      for (uint32_t h = 0; h < hp->n_head; h++) cpu_rope_apply(c, q + h * HD, cs);
      for (uint32_t h = 0; h < hp->n_head_kv; h++) cpu_rope_apply(c, k + h * HD, cs);
      /* cache write: K and V rounded to F16 (ggml_cpy into the F16 cache) */
      const size_t slot = (size_t)il * c->n_seq + (size_t)b->seq[i];
      uint16_t *kc = c->k_cache + (slot * c->n_ctx + (size_t)b->pos[i]) * KD;
      for (int d = 0; d < KD; d++) kc[d] = llorch_fp32_to_fp16(k[d]);
      uint16_t *vc = c->v_cache + slot * KD * c->n_ctx_pad + (size_t)b->pos[i];
      for (int d = 0; d < KD; d++) vc[(size_t)d * c->n_ctx_pad] = llorch_fp32_to_fp16(v[d]);
    }
    att_job aj = {.c = c, .b = b, .layer = il};
    atomic_init(&aj.next, 0);
    llorch_threadpool_run(c->tp, att_worker, &aj);
    /* attention output (in xn) through wo, into q as scratch */
    cpu_matmul(c, L->wo, c->xn, QD, T, false, c->q, E);
    /* llama.cpp drops the rows nobody reads before the last FFN
     * (inp_out_ids): only output entries continue from here */
    const int R = last ? n_out : T;
    for (int r = 0; r < R; r++) {
      const int i = last ? c->out_idx[r] : r;
      float *xr = c->x + (size_t)r * E;
      const float *xi = c->x + (size_t)i * E, *ao = c->q + (size_t)i * E;
      for (int d = 0; d < E; d++) xr[d] = ao[d] + xi[d];
    }
    if (R == 0) break;
    for (int r = 0; r < R; r++)
      cpu_rmsnorm(c->xn + (size_t)r * E, c->x + (size_t)r * E, L->ffn_norm->data, E, hp->rms_eps);
    cpu_matmul(c, L->w_gate, c->xn, E, R, last, c->gate, F);
    cpu_matmul(c, L->w_up, c->xn, E, R, last, c->up, F);
    swiglu_job sj = {.c = c, .rows = R, .n = F};
    if (R > 1) llorch_threadpool_run(c->tp, swiglu_worker, &sj);
    else swiglu_worker(&sj, 0, 1);
    cpu_matmul(c, L->w_down, c->gate, F, R, last, c->q, E);
    for (int r = 0; r < R; r++) {
      float *xr = c->x + (size_t)r * E;
      const float *fo = c->q + (size_t)r * E;
      for (int d = 0; d < E; d++) xr[d] = fo[d] + xr[d];
    }
  }
  for (int i = 0; i < T; i++) c->seq_len[b->seq[i]] = b->pos[i] + 1;
  if (n_out == 0) return 0;
  for (int r = 0; r < n_out; r++)
    cpu_rmsnorm(c->xn + (size_t)r * E, c->x + (size_t)r * E, c->m->output_norm->data, E, hp->rms_eps);
  cpu_matmul(c, c->m->output, c->xn, E, n_out, true, logits, hp->n_vocab);
  return 0;
}

/* ---- lifecycle ---- */

static void cpu_free(void *ctx) {
  cpu_ctx *c = ctx;
  if (!c) return;
  llorch_threadpool_free(c->tp);
  free(c->k_cache);
  free(c->v_cache);
  free(c->seq_len);
  free(c->x);
  free(c->xn);
  free(c->q);
  free(c->k);
  free(c->v);
  free(c->gate);
  free(c->up);
  free(c->act);
  free(c->att_scratch);
  free(c->rope_ff);
  free(c->order_all);
  free(c->order_out);
  free(c->order_all_rp);
  free(c->order_out_rp);
  free(c->seq_rank);
  free(c->out_idx);
  free(c->seq_count);
  free(c->mm_blocks);
  free(c->seq_outs);
  free(c);
}

static int cpu_init(void **out, const llorch_model *m, const char *device,
                    const llorch_backend_params *p, llorch_errmsg *em) {
  (void)device;
  const llorch_hparams *hp = &m->hp;
  if (p->n_seq == 0 || p->n_seq > 4096)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cpu backend: n_seq %u (allowed 1..4096)", p->n_seq);
  if (p->n_batch_max == 0 || p->n_batch_max > 65536)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cpu backend: n_batch_max %u (allowed 1..65536)",
                             p->n_batch_max);
  if (p->n_threads < 1 || p->n_threads > 1024)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cpu backend: n_threads %d (allowed 1..1024)",
                             p->n_threads);
  uint32_t n_ctx = p->n_ctx ? p->n_ctx : hp->n_ctx_train;
  if (n_ctx > hp->n_ctx_train) n_ctx = hp->n_ctx_train;
  if (hp->n_rot > 1024)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED, "cpu backend: rope dimension %u > 1024", hp->n_rot);
  const char *isa_err = NULL;
  const kern_table *kt = kern_select(&isa_err);
  if (!kt)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cpu backend: LLORCH_CPU_ISA '%s': %s",
                             getenv("LLORCH_CPU_ISA"), isa_err);
  cpu_ctx *c = calloc(1, sizeof *c);
  if (!c) return llorch_errmsg_set(em, LLORCH_ENOMEM, "cpu backend: out of memory");
  c->m = m;
  c->hp = *hp;
  c->kt = kt;
  c->n_ctx = n_ctx;
  /* V rows padded to the GEMV step (4 vectors), see att_one */
  const uint32_t vstep = 4u * (uint32_t)kt->lanes;
  c->n_ctx_pad = (n_ctx + vstep - 1) / vstep * vstep;
  c->n_seq = p->n_seq;
  c->n_batch_max = p->n_batch_max;
  c->kv_dim = hp->n_head_kv * hp->head_dim;
  c->q_dim = hp->n_head * hp->head_dim;
  int rc = llorch_threadpool_init(&c->tp, p->n_threads);
  if (rc) {
    llorch_errmsg_set(em, rc, "cpu backend: cannot start %d threads", p->n_threads);
    goto fail;
  }
  const size_t B = p->n_batch_max, E = hp->n_embd, F = hp->n_ff;
  const size_t XW = E > c->q_dim ? E : c->q_dim;
  const size_t QW = c->q_dim > E ? c->q_dim : E;
  const size_t kv_cells = (size_t)hp->n_layer * c->n_seq * c->kv_dim;
  /* calloc: untouched V cells must be finite (they meet zero probabilities) */
  c->k_cache = calloc(kv_cells * c->n_ctx, sizeof(uint16_t));
  c->v_cache = calloc(kv_cells * c->n_ctx_pad, sizeof(uint16_t));
  c->seq_len = calloc(c->n_seq, sizeof(int32_t));
  c->x = malloc(B * E * sizeof(float));
  c->xn = malloc(B * XW * sizeof(float));
  c->q = malloc(B * QW * sizeof(float));
  c->k = malloc(B * c->kv_dim * sizeof(float));
  c->v = malloc(B * c->kv_dim * sizeof(float));
  c->gate = malloc(B * F * sizeof(float));
  c->up = malloc(B * F * sizeof(float));
  size_t arow = 0;
  const size_t widths[3] = {E, c->q_dim, F};
  for (int i = 0; i < 3; i++) {
    size_t r = widths[i] * sizeof(float); /* float activations are the widest form */
    if (r > arow) arow = r;
  }
  c->act_row_max = arow;
  c->act = malloc(B * arow);
  c->att_scratch = malloc((size_t)p->n_threads * (3 * c->n_ctx_pad + hp->head_dim) * sizeof(float));
  c->order_all = malloc(B);
  c->order_out = malloc(B);
  c->order_all_rp = malloc(B);
  c->order_out_rp = malloc(B);
  c->seq_rank = malloc(c->n_seq * sizeof(int32_t));
  c->out_idx = malloc(B * sizeof(int32_t));
  c->seq_count = malloc(c->n_seq * sizeof(int32_t));
  c->seq_outs = malloc(c->n_seq * sizeof(int32_t));
  c->mm_blocks = malloc((B + 1) * sizeof *c->mm_blocks);
  if (!c->k_cache || !c->v_cache || !c->seq_len || !c->x || !c->xn || !c->q || !c->k || !c->v ||
      !c->gate || !c->up || !c->act || !c->att_scratch || !c->order_all || !c->order_out ||
      !c->order_all_rp || !c->order_out_rp || !c->seq_rank ||
      !c->out_idx || !c->seq_count || !c->seq_outs || !c->mm_blocks) {
    rc = llorch_errmsg_set(em, LLORCH_EINSUFFICIENT_MEMORY,
                           "cpu backend: cannot allocate KV cache (%zu MiB) and scratch for %u x %u",
                           (kv_cells * (c->n_ctx + c->n_ctx_pad) * 2) >> 20, c->n_seq, c->n_ctx);
    goto fail;
  }
  if (m->rope_freqs) {
    c->rope_ff = malloc(hp->n_rot / 2 * sizeof(float));
    if (!c->rope_ff) {
      rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "cpu backend: out of memory");
      goto fail;
    }
    memcpy(c->rope_ff, m->rope_freqs->data, hp->n_rot / 2 * sizeof(float));
  }
  LOG_DEBUG("engine", NULL, "cpu backend: %s kernels, %d threads, %u x %u context", c->kt->name,
            p->n_threads, c->n_seq, c->n_ctx);
  *out = c;
  return 0;
fail:
  cpu_free(c);
  return rc;
}

static void cpu_seq_reset(void *ctx, int32_t seq) {
  cpu_ctx *c = ctx;
  if (seq >= 0 && (uint32_t)seq < c->n_seq) c->seq_len[seq] = 0;
}

static void cpu_memory(void *ctx, llorch_backend_memory *out) {
  cpu_ctx *c = ctx;
  memset(out, 0, sizeof *out);
  out->weights_bytes = c->m->weight_bytes;
  const size_t kv_cells = (size_t)c->hp.n_layer * c->n_seq * c->kv_dim;
  out->kv_bytes = kv_cells * (c->n_ctx + c->n_ctx_pad) * sizeof(uint16_t);
  const size_t B = c->n_batch_max, E = c->hp.n_embd, F = c->hp.n_ff;
  out->scratch_bytes = B * (E * 2 + c->q_dim * 2 + c->kv_dim * 2 + F * 2) * sizeof(float) +
                       B * c->act_row_max;
  snprintf(out->weights_location, sizeof out->weights_location, "host-mmap");
  snprintf(out->kv_location, sizeof out->kv_location, "host");
}

const llorch_backend_ops llorch_backend_cpu_ops = {
    .name = "cpu",
    .init = cpu_init,
    .free = cpu_free,
    .forward = cpu_forward,
    .seq_reset = cpu_seq_reset,
    .memory = cpu_memory,
    .verify_residency = NULL,
};
