/*
 * Host-side planning of the CUDA backend, in plain C (no CUDA call here, so
 * it builds and is unit-tested without nvcc or a GPU, and the memory
 * estimate of include/llorch/memory.h is checked against it): where each
 * layer lives, how many bytes each GPU needs and whether it has them, the
 * scratch layout, the allocation table and its residency check, and the
 * chunked upload.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/backend_cuda.h"
#include "llorch/memory.h"
#include "llorch/quant.h"

#define MIB(x) ((double)(x) / (1024.0 * 1024.0))

static uint64_t plan_align(uint64_t n) {
  return (n + LLORCH_CUDA_ALIGN - 1) / LLORCH_CUDA_ALIGN * LLORCH_CUDA_ALIGN;
}

/* ---- what the kernels can run ---- */

bool llorch_cuda_type_supported(llorch_ggml_type t) {
  switch (t) {
  case LLORCH_TYPE_F32:
  case LLORCH_TYPE_F16:
  case LLORCH_TYPE_BF16:
  case LLORCH_TYPE_Q8_0:
  case LLORCH_TYPE_Q4_0:
  case LLORCH_TYPE_Q4_K:
  case LLORCH_TYPE_Q6_K: return true;
  default: return false;
  }
}

uint64_t llorch_cuda_tensor_bytes(const llorch_gguf_tensor *t) {
  return t ? plan_align(t->nbytes) : 0;
}

uint64_t llorch_cuda_layer_weight_bytes(const llorch_model *m, uint32_t il) {
  const llorch_layer *L = &m->layers[il];
  const llorch_gguf_tensor *ts[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->bq, L->bk,
                                    L->bv, L->q_norm, L->k_norm, L->ffn_norm, L->w_gate,
                                    L->w_up, L->w_down};
  uint64_t n = 0;
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) n += llorch_cuda_tensor_bytes(ts[i]);
  return n;
}

/* A matrix the kernels will read: supported type, rows a multiple of 32 elements. */
static int plan_check_matrix(const llorch_gguf_tensor *t, llorch_errmsg *em) {
  if (!llorch_cuda_type_supported(t->type))
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "cuda backend: tensor '%s' has type %s; the CUDA kernels read F32, "
                             "F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K",
                             t->name, llorch_type_name(t->type));
  if (t->ne[0] % 32 != 0)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "cuda backend: tensor '%s' has rows of %llu elements; the CUDA "
                             "kernels need a multiple of 32",
                             t->name, (unsigned long long)t->ne[0]);
  return 0;
}

static int plan_check_model(const llorch_model *m, llorch_errmsg *em) {
  const llorch_hparams *hp = &m->hp;
  if (hp->head_dim == 0 || hp->head_dim % 2 || hp->head_dim > 256)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "cuda backend: head_dim %u (the kernels take an even size up to 256)",
                             hp->head_dim);
  if (hp->n_rot > hp->head_dim || hp->n_rot % 2)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED, "cuda backend: rope dimension %u for head_dim %u",
                             hp->n_rot, hp->head_dim);
  if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED, "cuda backend: %u query heads over %u KV heads",
                             hp->n_head, hp->n_head_kv);
  if (hp->n_head / hp->n_head_kv > LLORCH_CUDA_MAX_GROUP)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "cuda backend: %u query heads per KV head (the attention kernel takes "
                             "up to %d)",
                             hp->n_head / hp->n_head_kv, LLORCH_CUDA_MAX_GROUP);
  if (hp->n_embd % 32 || hp->n_ff % 32)
    return llorch_errmsg_set(em, LLORCH_EUNSUPPORTED,
                             "cuda backend: n_embd %u / n_ff %u not multiples of 32", hp->n_embd,
                             hp->n_ff);
  int rc = plan_check_matrix(m->tok_embd, em);
  if (!rc) rc = plan_check_matrix(m->output, em);
  for (uint32_t il = 0; !rc && il < hp->n_layer; il++) {
    const llorch_layer *L = &m->layers[il];
    const llorch_gguf_tensor *mats[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    for (size_t i = 0; !rc && i < sizeof mats / sizeof mats[0]; i++)
      rc = plan_check_matrix(mats[i], em);
  }
  return rc;
}

/* ---- scratch ---- */

static uint64_t plan_max_quant_tile(const llorch_model *m) {
  /* the widest F16 copy of a quantized matrix, capped: cuBLAS gets it tile by tile */
  uint64_t best = 0;
  const llorch_hparams *hp = &m->hp;
  for (uint32_t il = 0; il < hp->n_layer; il++) {
    const llorch_layer *L = &m->layers[il];
    const llorch_gguf_tensor *mats[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
      const llorch_gguf_tensor *t = mats[i];
      if (t->type == LLORCH_TYPE_F32 || t->type == LLORCH_TYPE_F16 || t->type == LLORCH_TYPE_BF16)
        continue;
      uint64_t b = t->ne[0] * t->ne[1] * 2;
      if (b > best) best = b;
    }
  }
  const llorch_gguf_tensor *o = m->output;
  if (o->type != LLORCH_TYPE_F32 && o->type != LLORCH_TYPE_F16 && o->type != LLORCH_TYPE_BF16) {
    uint64_t b = o->ne[0] * o->ne[1] * 2;
    if (b > best) best = b;
  }
  if (best > LLORCH_CUDA_GEMM_TILE_BYTES) best = LLORCH_CUDA_GEMM_TILE_BYTES;
  return best;
}

void llorch_cuda_scratch_plan(const llorch_hparams *hp, uint32_t n_ctx,
                                         uint32_t n_batch_max, uint64_t gemm_tile,
                                         bool has_output, llorch_cuda_scratch_layout *out) {
  memset(out, 0, sizeof *out);
  out->gemm_tile = gemm_tile;
  const uint64_t B = n_batch_max, E = hp->n_embd, F = hp->n_ff, HD = hp->head_dim;
  const uint64_t QD = (uint64_t)hp->n_head * HD, KD = (uint64_t)hp->n_head_kv * HD;
  const uint64_t XW = E > QD ? E : QD;
  uint64_t HW = XW > F ? XW : F;
  /* flash-decoding spans: enough blocks to fill the GPU at batch 1, whole tiles each */
  uint32_t tiles = (n_ctx + LLORCH_CUDA_ATT_TILE - 1) / LLORCH_CUDA_ATT_TILE;
  if (tiles == 0) tiles = 1;
  uint32_t splits = tiles < LLORCH_CUDA_ATT_MAX_SPLITS ? tiles : LLORCH_CUDA_ATT_MAX_SPLITS;
  const uint32_t tiles_per = (tiles + splits - 1) / splits;
  out->split_len = tiles_per * LLORCH_CUDA_ATT_TILE;
  out->n_splits = (n_ctx + out->split_len - 1) / out->split_len;
  if (out->n_splits == 0) out->n_splits = 1;
  uint64_t off = 0;
#define PLACE(field, bytes)     \
  do {                          \
    out->field = off;           \
    off += plan_align(bytes);   \
  } while (0)
  PLACE(x, B * E * 4);
  PLACE(xn, B * XW * 4);
  PLACE(q, B * QD * 4);
  PLACE(k, B * KD * 4);
  PLACE(v, B * KD * 4);
  PLACE(att, B * QD * 4);
  PLACE(ao, B * E * 4);
  PLACE(gate, B * F * 4);
  PLACE(up, B * F * 4);
  PLACE(part, B * hp->n_head * (uint64_t)out->n_splits * (HD + 2) * 4);
  PLACE(xh, B * HW * 2);
  PLACE(wtile, out->gemm_tile);
  PLACE(blas_ws, LLORCH_CUDA_BLAS_WORKSPACE);
  PLACE(logits, has_output ? B * (uint64_t)hp->n_vocab * 4 : 0);
  PLACE(meta, 5 * B * 4);
#undef PLACE
  out->total = off;
}

/* ---- the plan ---- */

int llorch_cuda_plan_compute(const llorch_model *m, const llorch_backend_params *p,
                                        const uint64_t *free_bytes, llorch_cuda_plan *out,
                                        llorch_errmsg *em) {
  memset(out, 0, sizeof *out);
  const llorch_hparams *hp = &m->hp;
  const int nd = p->n_devices;
  if (nd < 1 || nd > LLORCH_CUDA_MAX_DEVICES)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda backend: %d devices (allowed 1..%d)", nd,
                             LLORCH_CUDA_MAX_DEVICES);
  if ((uint32_t)nd > hp->n_layer)
    return llorch_errmsg_set(em, LLORCH_EINVAL,
                             "cuda backend: %d GPUs listed for a model of %u layers (each GPU "
                             "needs at least one layer)",
                             nd, hp->n_layer);
  if (p->n_seq == 0 || p->n_seq > 4096)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda backend: n_seq %u (allowed 1..4096)", p->n_seq);
  /* entries are a grid dimension of the attention kernel (at most 65535) */
  if (p->n_batch_max == 0 || p->n_batch_max > 65535)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda backend: n_batch_max %u (allowed 1..65535)",
                             p->n_batch_max);
  int rc = plan_check_model(m, em);
  if (rc) return rc;
  uint32_t n_ctx = p->n_ctx ? p->n_ctx : hp->n_ctx_train;
  if (n_ctx > hp->n_ctx_train) n_ctx = hp->n_ctx_train;
  out->n_dev = nd;
  out->n_ctx = n_ctx;
  out->n_seq = p->n_seq;
  out->n_batch_max = p->n_batch_max;

  const uint64_t kv_layer = 2ull * p->n_seq * n_ctx * hp->n_head_kv * (uint64_t)hp->head_dim * 2ull;
  const uint64_t gemm_tile = plan_max_quant_tile(m);
  /* what each device holds besides its layers */
  uint64_t fixed[LLORCH_CUDA_MAX_DEVICES], avail[LLORCH_CUDA_MAX_DEVICES], avail_sum = 0;
  for (int d = 0; d < nd; d++) {
    llorch_cuda_dev_plan *dp = &out->dev[d];
    dp->device = p->devices[d];
    dp->free_bytes = free_bytes[d];
    dp->has_embd = d == 0;
    dp->has_output = d == nd - 1;
    llorch_cuda_scratch_plan(hp, n_ctx, p->n_batch_max, gemm_tile, dp->has_output, &dp->scratch);
    dp->scratch_bytes = dp->scratch.total;
    dp->overhead_bytes = LLORCH_MEM_CUDA_RUNTIME_BYTES;
    uint64_t w = llorch_cuda_tensor_bytes(m->rope_freqs);
    if (dp->has_embd) w += llorch_cuda_tensor_bytes(m->tok_embd);
    if (dp->has_output) {
      w += llorch_cuda_tensor_bytes(m->output_norm);
      /* tied: the embedding matrix is already here when one GPU has both ends */
      if (!(m->output == m->tok_embd && dp->has_embd)) w += llorch_cuda_tensor_bytes(m->output);
    }
    dp->weights_bytes = w;
    fixed[d] = w + dp->scratch_bytes + dp->overhead_bytes;
    avail[d] = free_bytes[d] > fixed[d] ? free_bytes[d] - fixed[d] : 0;
    avail_sum += avail[d];
  }

  /* layers in order, each device up to its share of the total layer cost */
  uint64_t cost_sum = 0;
  for (uint32_t il = 0; il < hp->n_layer; il++) cost_sum += llorch_cuda_layer_weight_bytes(m, il) + kv_layer;
  uint32_t il = 0;
  double share_acc = 0.0, cost_acc = 0.0;
  for (int d = 0; d < nd; d++) {
    llorch_cuda_dev_plan *dp = &out->dev[d];
    dp->layer_begin = il;
    share_acc += avail_sum ? (double)avail[d] / (double)avail_sum : 1.0 / nd;
    const double target = share_acc * (double)cost_sum;
    const uint32_t left_for_rest = (uint32_t)(nd - 1 - d);
    if (d == nd - 1) {
      il = hp->n_layer;
    } else {
      /* at least one layer here, at least one for each later device */
      do {
        cost_acc += (double)(llorch_cuda_layer_weight_bytes(m, il) + kv_layer);
        il++;
      } while (il < hp->n_layer - left_for_rest &&
               cost_acc + (double)(llorch_cuda_layer_weight_bytes(m, il) + kv_layer) / 2 <= target);
    }
    dp->layer_end = il;
    for (uint32_t l = dp->layer_begin; l < dp->layer_end; l++)
      dp->weights_bytes += llorch_cuda_layer_weight_bytes(m, l);
    dp->kv_bytes = kv_layer * (dp->layer_end - dp->layer_begin);
    dp->need_bytes = dp->weights_bytes + dp->kv_bytes + dp->scratch_bytes + dp->overhead_bytes;
  }
  for (int d = 0; d < nd; d++) {
    const llorch_cuda_dev_plan *dp = &out->dev[d];
    if (dp->need_bytes > dp->free_bytes)
      return llorch_errmsg_set(
          em, LLORCH_EINSUFFICIENT_VRAM,
          "cuda:%d needs %.1f MiB (weights %.1f MiB for layers %u..%u + KV cache %.1f MiB for %u "
          "x %u tokens + scratch %.1f MiB + runtime %.1f MiB) but has %.1f MiB free",
          dp->device, MIB(dp->need_bytes), MIB(dp->weights_bytes), dp->layer_begin,
          dp->layer_end - 1, MIB(dp->kv_bytes), p->n_seq, n_ctx, MIB(dp->scratch_bytes),
          MIB(dp->overhead_bytes), MIB(dp->free_bytes));
  }
  return 0;
}

/* ---- allocations and residency ---- */

int llorch_cuda_alloc_table_add(llorch_cuda_alloc_table *t, void *ptr, uint64_t bytes,
                                           int device, const char *what) {
  if (t->n == t->cap) {
    uint32_t cap = t->cap ? t->cap * 2 : 16;
    llorch_cuda_alloc *a = realloc(t->a, sizeof *a * cap);
    if (!a) return LLORCH_ENOMEM;
    t->a = a;
    t->cap = cap;
  }
  llorch_cuda_alloc *e = &t->a[t->n++];
  e->ptr = ptr;
  e->bytes = bytes;
  e->device = device;
  snprintf(e->what, sizeof e->what, "%s", what ? what : "?");
  return 0;
}

void llorch_cuda_alloc_table_free(llorch_cuda_alloc_table *t) {
  free(t->a);
  memset(t, 0, sizeof *t);
}

int llorch_cuda_residency_check(const llorch_cuda_alloc_table *t,
                                           llorch_cuda_ptr_query_fn query, void *ud,
                                           int64_t now_ms, llorch_backend_memory *mem,
                                           llorch_errmsg *em) {
  uint32_t bad = 0;
  int first_bad = -1, first_rc = 0, first_dev = -1;
  bool first_is_dev = false;
  for (uint32_t i = 0; i < t->n; i++) {
    bool is_dev = false;
    int dev = -1;
    int rc = query(ud, t->a[i].ptr, &is_dev, &dev);
    if (rc || !is_dev || dev != t->a[i].device) {
      if (first_bad < 0) {
        first_bad = (int)i;
        first_rc = rc;
        first_dev = dev;
        first_is_dev = is_dev;
      }
      bad++;
    }
  }
  mem->allocations_checked = t->n;
  mem->allocations_not_device = bad;
  mem->residency_verified = t->n > 0 && bad == 0;
  mem->verified_at_ms = now_ms;
  if (t->n == 0)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "cuda residency: no allocation to check");
  if (bad == 0) return 0;
  const llorch_cuda_alloc *a = &t->a[first_bad];
  if (first_rc)
    return llorch_errmsg_set(em, LLORCH_EDEVICE,
                             "cuda residency: %u of %u allocations not verified; the driver could "
                             "not say what %s (%llu bytes on cuda:%d) is",
                             bad, t->n, a->what, (unsigned long long)a->bytes, a->device);
  if (!first_is_dev)
    return llorch_errmsg_set(em, LLORCH_EDEVICE,
                             "cuda residency: %u of %u allocations not device memory; first: %s "
                             "(%llu bytes, expected on cuda:%d)",
                             bad, t->n, a->what, (unsigned long long)a->bytes, a->device);
  return llorch_errmsg_set(em, LLORCH_EDEVICE,
                           "cuda residency: %u of %u allocations on the wrong GPU; first: %s on "
                           "cuda:%d, expected cuda:%d",
                           bad, t->n, a->what, first_dev, a->device);
}

/* ---- chunked upload ---- */

int llorch_cuda_upload(void *dst, const void *src, uint64_t n,
                                  uint8_t *const staging[2], uint64_t slot_bytes,
                                  const llorch_cuda_copy_ops *ops, void *ud, int *slot) {
  if (slot_bytes == 0) return LLORCH_EINVAL;
  for (uint64_t off = 0; off < n;) {
    const uint64_t len = n - off < slot_bytes ? n - off : slot_bytes;
    const int s = *slot;
    int rc = ops->wait_slot(ud, s); /* the slot's previous transfer must be done */
    if (rc) return rc;
    memcpy(staging[s], (const uint8_t *)src + off, len); /* page faults of the map happen here */
    rc = ops->copy_async(ud, s, (uint8_t *)dst + off, len);
    if (rc) return rc;
    *slot = s ^ 1;
    off += len;
  }
  return 0;
}
