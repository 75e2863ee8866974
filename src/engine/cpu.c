/*
 * The CPU backend: weights used in place from the mmapped GGUF, a paged F16
 * KV cache (one pool of fixed-size blocks, a block table per sequence; see
 * backend.h), and a forward pass over a batch of (sequence, position, token)
 * entries that follows llama.cpp's graph for llama, qwen2 and qwen3
 * operation by operation (see kernels.h for why the rounding must match).
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
/* Repacked Q4_0/Q4_K weights: the AVX-512 VNNI tiles transpose each tile's
 * rows into a panel first, which pays off over more columns and rows. */
#define CPU_ROW_CHUNK_RP 96
#define CPU_PANEL_BYTES_RP (512u << 10)

typedef struct mm_block {
  int c0, nc;      /* columns [c0, c0 + nc) */
  kern_order order;
} mm_block;

typedef struct cpu_ctx {
  const llorch_model *m;
  llorch_hparams hp;
  const kern_table *kt;
  llorch_threadpool *tp;
  uint32_t n_ctx;        /* most positions of one sequence */
  uint32_t n_ctx_pad;    /* n_ctx rounded up to 4 vectors: attention dots run over padded lengths */
  uint32_t n_seq;
  uint32_t n_batch_max;
  uint32_t kv_dim;       /* n_head_kv * head_dim */
  uint32_t q_dim;        /* n_head * head_dim */
  uint32_t bt;           /* positions per KV block */
  uint32_t n_blocks;     /* blocks in the pool */
  uint32_t bps;          /* most blocks of one sequence: ceil(n_ctx / bt) */
  uint16_t *k_cache;     /* (n_layer, n_blocks, bt, kv_dim) f16 */
  uint16_t *v_cache;     /* (n_layer, n_blocks, kv_dim, bt) f16, transposed within a block */
  int32_t *seq_len;      /* (n_seq) positions cached */
  int32_t *table;        /* (n_seq, bps) block of each block-sized run of positions */
  uint32_t *n_table;     /* (n_seq) valid entries of each table */
  bool managed;          /* tables come from seq_set_blocks (else the fixed slot layout) */
  /* V of the batch's sequences gathered into position order for the
   * weighted sum (see att_gather), per forward: */
  uint16_t *vg;          /* (sum over batch sequences of kv_dim * their n32) f16 */
  size_t vg_cap;         /* elements allocated */
  size_t *vg_off;        /* (n_seq) offset of each batch sequence's rows in vg */
  uint32_t *vg_n32;      /* (n_seq) padded length gathered, 0: not in the batch */
  int32_t *vg_seqs;      /* (n_seq) the distinct sequences of the batch */
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
  int n_blocks, n_rchunks, row_chunk;
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
    const int r0 = (k % j->n_rchunks) * j->row_chunk;
    const int nr = j->n_out - r0 < j->row_chunk ? j->n_out - r0 : j->row_chunk;
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
  int nb_cols = (int)((repacked ? CPU_PANEL_BYTES_RP : CPU_PANEL_BYTES) / arow);
  const int row_chunk = repacked ? CPU_ROW_CHUNK_RP : CPU_ROW_CHUNK;
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
      .n_rchunks = (n_out + row_chunk - 1) / row_chunk,
      .row_chunk = row_chunk,
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
  int n_seqs;           /* distinct sequences of the batch (gather items) */
  atomic_int next;
} att_job;

/* Cache cells of (layer, block): K rows are positions, V rows are dims. */
static inline uint16_t *kv_k_block(const cpu_ctx *c, uint32_t layer, int32_t blk) {
  return c->k_cache + ((size_t)layer * c->n_blocks + (size_t)blk) * c->bt * c->kv_dim;
}
static inline uint16_t *kv_v_block(const cpu_ctx *c, uint32_t layer, int32_t blk) {
  return c->v_cache + ((size_t)layer * c->n_blocks + (size_t)blk) * c->kv_dim * c->bt;
}

/*
 * The weighted sum over positions is ONE dot per output dimension over the
 * padded length, and its rounding depends on how the kernel walks it (lanes
 * over steps of 8 or 32), so it must see the positions contiguously, as in
 * an unpaged cache: each batch sequence's V rows are gathered out of its
 * blocks into position order once per layer, zero-padded to 4 vectors (zeros meet
 * zero probabilities, as the unwritten cells of an unpaged cache did). The
 * K side needs no copy: each score is its own dot, so scores are computed
 * block by block (kernels.h: an element's order never depends on the tile).
 */
static void att_gather(cpu_ctx *c, uint32_t layer, int32_t s) {
  const uint32_t n32 = c->vg_n32[s], n_kv = (uint32_t)c->seq_len[s];
  uint16_t *dst = c->vg + c->vg_off[s];
  const int32_t *tb = c->table + (size_t)s * c->bps;
  for (uint32_t d = 0; d < c->kv_dim; d++) {
    uint16_t *row = dst + (size_t)d * n32;
    for (uint32_t t0 = 0; t0 < n_kv; t0 += c->bt) {
      const uint32_t nt = n_kv - t0 < c->bt ? n_kv - t0 : c->bt;
      memcpy(row + t0, kv_v_block(c, layer, tb[t0 / c->bt]) + (size_t)d * c->bt,
             nt * sizeof(uint16_t));
    }
    memset(row + n_kv, 0, (n32 - n_kv) * sizeof(uint16_t));
  }
}

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
  const int32_t *tb = c->table + (size_t)s * c->bps;
  const uint32_t n32s = c->vg_n32[s];
  const uint16_t *vc = c->vg + c->vg_off[s] + (size_t)kvh * hd * n32s;
  float *q16 = scr;                     /* (hd) */
  float *sc = scr + hd;                 /* (n_ctx_pad) scores */
  float *pr = sc + c->n_ctx_pad;        /* (n_ctx_pad) probabilities */
  const float *qv = c->q + (size_t)i * c->q_dim + (size_t)h * hd;
  c->kt->round_f16(hd, q16, qv); /* F16C where the CPU has it: the same bits */
  const int n_kv = p + 1;
  const kern_tile_fn tile_f16 = c->kt->tile[LLORCH_TYPE_F16];
  /* scores[t] = K[t] . q for t <= p: per block a tile of its rows x 1 column */
  for (int t0 = 0; t0 < n_kv; t0 += (int)c->bt) {
    const int nt = n_kv - t0 < (int)c->bt ? n_kv - t0 : (int)c->bt;
    const uint16_t *kc = kv_k_block(c, layer, tb[t0 / (int)c->bt]) + (size_t)kvh * hd;
    tile_f16(hd, kc, (size_t)c->kv_dim * sizeof(uint16_t), nt, q16, 0, 1, sc + t0, 0, ord);
  }
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
  for (int t = 0; t < n_sm; t++) pr[t] = pr[t] * inv;
  c->kt->round_f16(n_sm, pr, pr);
  for (int t = n_sm; t < n_v; t++) pr[t] = 0.0f;
  /* out[d] = V^T[d] . probs: a tile of hd rows x 1 column over n_v */
  float *out = c->xn + (size_t)i * c->q_dim + (size_t)h * hd;
  tile_f16(n_v, vc, (size_t)n32s * sizeof(uint16_t), hd, pr, 0, 1, out, 0, ord);
}

static void att_gather_worker(void *arg, int ith, int nth) {
  (void)ith;
  (void)nth;
  att_job *j = arg;
  for (;;) {
    int k = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (k >= j->n_seqs) break;
    att_gather(j->c, j->layer, j->c->vg_seqs[k]);
  }
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
    if ((uint32_t)p / c->bt >= c->n_table[s])
      return llorch_errmsg_set(em, LLORCH_ELIMIT,
                               "forward: entry %d: sequence %d has %u KV blocks of %u positions, "
                               "none for position %d", i, s, c->n_table[s], c->bt, p);
    next[s] = p + 1;
  }
  return 0;
}

/*
 * Sizes the V gather area for this batch: each distinct sequence gets
 * kv_dim rows of its final length (after the batch) padded to 32. Called
 * after the lengths are advanced past the batch's entries.
 */
static int cpu_gather_plan(cpu_ctx *c, const llorch_batch *b, int *n_seqs, llorch_errmsg *em) {
  int n = 0;
  size_t total = 0;
  /* vg_n32 is 0 for every sequence between forwards: it marks the seen ones */
  for (int i = 0; i < b->n_tokens; i++) {
    const int32_t s = b->seq[i];
    if (c->vg_n32[s]) continue;
    const uint32_t pad = 4u * (uint32_t)c->kt->lanes; /* the weighted sum's padded length */
    c->vg_n32[s] = ((uint32_t)c->seq_len[s] + pad - 1) / pad * pad;
    c->vg_off[s] = total;
    total += (size_t)c->kv_dim * c->vg_n32[s];
    c->vg_seqs[n++] = s;
  }
  *n_seqs = n;
  if (total > c->vg_cap) {
    uint16_t *g = realloc(c->vg, total * sizeof(uint16_t));
    if (!g) {
      for (int k = 0; k < n; k++) c->vg_n32[c->vg_seqs[k]] = 0;
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "forward: out of memory for attention (%zu KiB)",
                               (total * sizeof(uint16_t)) >> 10);
    }
    c->vg = g;
    c->vg_cap = total;
  }
  return 0;
}

/* hidden_out NULL: b->hidden is ignored (the plain forward). */
static int cpu_forward_impl(cpu_ctx *c, const llorch_batch *b, float *logits, float *hidden_out,
                            llorch_errmsg *em) {
  int rc = cpu_check_batch(c, b, em);
  if (rc) return rc;
  const llorch_hparams *hp = &c->hp;
  const int T = b->n_tokens;
  const int E = (int)hp->n_embd, F = (int)hp->n_ff, HD = (int)hp->head_dim;
  const int QD = (int)c->q_dim, KD = (int)c->kv_dim;

  /* per-sequence counts pick each entry's reduction order (see top) */
  memset(c->seq_count, 0, sizeof(int32_t) * c->n_seq);
  memset(c->seq_outs, 0, sizeof(int32_t) * c->n_seq);
  const int8_t *hid = hidden_out ? b->hidden : NULL;
  int n_out = 0, n_logits = 0;
  for (int i = 0; i < T; i++) {
    c->seq_count[b->seq[i]]++;
    const bool wants_logits = b->logits && b->logits[i];
    n_logits += wants_logits;
    if (wants_logits || (hid && hid[i])) {
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

  /* The lengths after this batch: the gather copies every position the
   * batch writes (each layer writes them before its attention runs). */
  for (int i = 0; i < T; i++) c->seq_len[b->seq[i]] = b->pos[i] + 1;
  int n_seqs = 0;
  rc = cpu_gather_plan(c, b, &n_seqs, em);
  if (rc) {
    for (int i = 0; i < T; i++) /* undo: the cache was not touched */
      if (b->pos[i] < c->seq_len[b->seq[i]]) c->seq_len[b->seq[i]] = b->pos[i];
    return rc;
  }

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
      const uint32_t p = (uint32_t)b->pos[i], off = p % c->bt;
      const int32_t blk = c->table[(size_t)b->seq[i] * c->bps + p / c->bt];
      uint16_t *kc = kv_k_block(c, il, blk) + (size_t)off * KD;
      for (int d = 0; d < KD; d++) kc[d] = llorch_fp32_to_fp16(k[d]);
      uint16_t *vc = kv_v_block(c, il, blk) + off;
      for (int d = 0; d < KD; d++) vc[(size_t)d * c->bt] = llorch_fp32_to_fp16(v[d]);
    }
    att_job aj = {.c = c, .b = b, .layer = il, .n_seqs = n_seqs};
    atomic_init(&aj.next, 0);
    if (n_seqs > 1) llorch_threadpool_run(c->tp, att_gather_worker, &aj);
    else att_gather_worker(&aj, 0, 1);
    atomic_store(&aj.next, 0);
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
  for (int k = 0; k < n_seqs; k++) c->vg_n32[c->vg_seqs[k]] = 0;
  if (n_out == 0) return 0;
  for (int r = 0; r < n_out; r++)
    cpu_rmsnorm(c->xn + (size_t)r * E, c->x + (size_t)r * E, c->m->output_norm->data, E, hp->rms_eps);
  if (n_logits < n_out) {
    /* Hidden states out, then the rows that want logits moved together
     * (in order, so a row only moves down) with their reduction orders: the
     * output matmul runs over exactly those rows, as in a batch without
     * the hidden-only entries. */
    int nh = 0, nl = 0;
    for (int r = 0; r < n_out; r++) {
      const int i = c->out_idx[r];
      if (hid && hid[i])
        memcpy(hidden_out + (size_t)nh++ * E, c->xn + (size_t)r * E, (size_t)E * sizeof(float));
      if (!(b->logits && b->logits[i])) continue;
      if (nl != r) {
        memmove(c->xn + (size_t)nl * E, c->xn + (size_t)r * E, (size_t)E * sizeof(float));
        c->order_out[nl] = c->order_out[r];
        c->order_out_rp[nl] = c->order_out_rp[r];
      }
      nl++;
    }
  } else if (hid) {
    int nh = 0;
    for (int r = 0; r < n_out; r++)
      if (hid[c->out_idx[r]])
        memcpy(hidden_out + (size_t)nh++ * E, c->xn + (size_t)r * E, (size_t)E * sizeof(float));
  }
  if (n_logits) cpu_matmul(c, c->m->output, c->xn, E, n_logits, true, logits, hp->n_vocab);
  return 0;
}

static int cpu_forward(void *ctx, const llorch_batch *b, float *logits, llorch_errmsg *em) {
  return cpu_forward_impl(ctx, b, logits, NULL, em);
}

static int cpu_forward_hidden(void *ctx, const llorch_batch *b, float *logits, float *hidden_out,
                              llorch_errmsg *em) {
  return cpu_forward_impl(ctx, b, logits, hidden_out, em);
}

/* ---- lifecycle ---- */

static void cpu_free(void *ctx) {
  cpu_ctx *c = ctx;
  if (!c) return;
  llorch_threadpool_free(c->tp);
  free(c->k_cache);
  free(c->v_cache);
  free(c->seq_len);
  free(c->table);
  free(c->n_table);
  free(c->vg);
  free(c->vg_off);
  free(c->vg_n32);
  free(c->vg_seqs);
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
  c->bt = p->kv_block_tokens ? p->kv_block_tokens : 16;
  c->bps = (n_ctx + c->bt - 1) / c->bt;
  int rc = 0;
  if (c->bt > 4096 || (p->n_kv_blocks == 0 && (uint64_t)c->bps * c->n_seq > INT32_MAX) ||
      p->n_kv_blocks > INT32_MAX) {
    rc = llorch_errmsg_set(em, LLORCH_EINVAL,
                           "cpu backend: KV blocks of %u positions x %u blocks (allowed 1..4096 "
                           "positions, fewer than 2^31 blocks)", c->bt, p->n_kv_blocks);
    goto fail;
  }
  c->n_blocks = p->n_kv_blocks ? p->n_kv_blocks : c->bps * c->n_seq;
  rc = llorch_threadpool_init(&c->tp, p->n_threads);
  if (rc) {
    llorch_errmsg_set(em, rc, "cpu backend: cannot start %d threads", p->n_threads);
    goto fail;
  }
  const size_t B = p->n_batch_max, E = hp->n_embd, F = hp->n_ff;
  const size_t XW = E > c->q_dim ? E : c->q_dim;
  const size_t QW = c->q_dim > E ? c->q_dim : E;
  const size_t kv_cells = (size_t)hp->n_layer * c->n_blocks * c->bt * c->kv_dim;
  /* calloc: a block handed out before it was written must hold finite values */
  c->k_cache = calloc(kv_cells, sizeof(uint16_t));
  c->v_cache = calloc(kv_cells, sizeof(uint16_t));
  c->seq_len = calloc(c->n_seq, sizeof(int32_t));
  c->table = malloc((size_t)c->n_seq * c->bps * sizeof(int32_t));
  c->n_table = calloc(c->n_seq, sizeof(uint32_t));
  c->vg_off = calloc(c->n_seq, sizeof(size_t));
  c->vg_n32 = calloc(c->n_seq, sizeof(uint32_t));
  c->vg_seqs = calloc(c->n_seq, sizeof(int32_t));
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
  if (!c->k_cache || !c->v_cache || !c->seq_len || !c->table || !c->n_table || !c->vg_off ||
      !c->vg_n32 || !c->vg_seqs || !c->x || !c->xn || !c->q || !c->k || !c->v ||
      !c->gate || !c->up || !c->act || !c->att_scratch || !c->order_all || !c->order_out ||
      !c->order_all_rp || !c->order_out_rp || !c->seq_rank ||
      !c->out_idx || !c->seq_count || !c->seq_outs || !c->mm_blocks) {
    rc = llorch_errmsg_set(em, LLORCH_EINSUFFICIENT_MEMORY,
                           "cpu backend: cannot allocate KV cache (%zu MiB: %u blocks of %u "
                           "positions) and scratch for %u sequences of up to %u positions",
                           (kv_cells * 4) >> 20, c->n_blocks, c->bt, c->n_seq, c->n_ctx);
    goto fail;
  }
  /* the slot layout until a caller manages tables: s owns [s * bps, ...) */
  for (uint32_t s = 0; s < c->n_seq; s++) {
    const uint32_t first = s * c->bps;
    const uint32_t have = first >= c->n_blocks ? 0 : c->n_blocks - first;
    c->n_table[s] = have < c->bps ? have : c->bps;
    for (uint32_t k = 0; k < c->n_table[s]; k++) c->table[(size_t)s * c->bps + k] = (int32_t)(first + k);
  }
  if (m->rope_freqs) {
    c->rope_ff = malloc(hp->n_rot / 2 * sizeof(float));
    if (!c->rope_ff) {
      rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "cpu backend: out of memory");
      goto fail;
    }
    memcpy(c->rope_ff, m->rope_freqs->data, hp->n_rot / 2 * sizeof(float));
  }
  LOG_DEBUG("engine", NULL,
            "cpu backend: %s kernels, %d threads, %u sequences of up to %u positions, KV pool %u "
            "blocks of %u", c->kt->name, p->n_threads, c->n_seq, c->n_ctx, c->n_blocks, c->bt);
  *out = c;
  return 0;
fail:
  cpu_free(c);
  return rc;
}

static void cpu_seq_reset(void *ctx, int32_t seq) {
  cpu_ctx *c = ctx;
  if (seq < 0 || (uint32_t)seq >= c->n_seq) return;
  c->seq_len[seq] = 0;
  if (c->managed) c->n_table[seq] = 0;
}

static int cpu_seq_set_blocks(void *ctx, int32_t seq, const int32_t *blocks, uint32_t n_blocks,
                              uint32_t n_past, llorch_errmsg *em) {
  cpu_ctx *c = ctx;
  if (seq < 0 || (uint32_t)seq >= c->n_seq)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "seq_set_blocks: sequence %d outside 0..%u", seq,
                             c->n_seq - 1);
  if (n_blocks > c->bps)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "seq_set_blocks: %u blocks, a sequence of up to %u positions needs "
                             "at most %u", n_blocks, c->n_ctx, c->bps);
  if ((uint64_t)n_past > (uint64_t)n_blocks * c->bt)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "seq_set_blocks: length %u is beyond %u blocks of %u positions", n_past,
                             n_blocks, c->bt);
  for (uint32_t k = 0; k < n_blocks; k++)
    if (blocks[k] < 0 || (uint32_t)blocks[k] >= c->n_blocks)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "seq_set_blocks: block %d outside 0..%u",
                               blocks[k], c->n_blocks - 1);
  if (!c->managed) {
    /* the fixed layout ends for every sequence at once: no two tables may
     * alias by accident afterwards */
    c->managed = true;
    memset(c->n_table, 0, c->n_seq * sizeof *c->n_table);
  }
  memcpy(c->table + (size_t)seq * c->bps, blocks, n_blocks * sizeof *blocks);
  c->n_table[seq] = n_blocks;
  c->seq_len[seq] = (int32_t)n_past;
  return 0;
}

static int cpu_kv_copy_block(void *ctx, int32_t dst, int32_t src, uint32_t n_pos, llorch_errmsg *em) {
  cpu_ctx *c = ctx;
  if (dst < 0 || src < 0 || (uint32_t)dst >= c->n_blocks || (uint32_t)src >= c->n_blocks ||
      n_pos > c->bt)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "kv_copy_block: blocks %d <- %d, %u positions (blocks 0..%u, up to %u "
                             "positions)", dst, src, n_pos, c->n_blocks - 1, c->bt);
  if (dst == src) return 0;
  for (uint32_t il = 0; il < c->hp.n_layer; il++) {
    memcpy(kv_k_block(c, il, dst), kv_k_block(c, il, src), (size_t)n_pos * c->kv_dim * sizeof(uint16_t));
    const uint16_t *vs = kv_v_block(c, il, src);
    uint16_t *vd = kv_v_block(c, il, dst);
    for (uint32_t d = 0; d < c->kv_dim; d++)
      memcpy(vd + (size_t)d * c->bt, vs + (size_t)d * c->bt, n_pos * sizeof(uint16_t));
  }
  return 0;
}

static void cpu_memory(void *ctx, llorch_backend_memory *out) {
  cpu_ctx *c = ctx;
  memset(out, 0, sizeof *out);
  out->weights_bytes = c->m->weight_bytes;
  out->kv_bytes = 2ull * c->hp.n_layer * c->n_blocks * c->bt * c->kv_dim * sizeof(uint16_t);
  out->kv_block_tokens = c->bt;
  out->kv_blocks = c->n_blocks;
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
    .seq_set_blocks = cpu_seq_set_blocks,
    .kv_copy_block = cpu_kv_copy_block,
    .forward_hidden = cpu_forward_hidden,
};
