/*
 * The CUDA backend's host-side glue: llorch_backend_cuda_ops.
 *
 * Init: free VRAM is measured on every listed GPU, the plan (plan.cu) splits
 * the layers and checks the need against it (LLORCH_EINSUFFICIENT_VRAM
 * before anything is allocated), then each GPU gets exactly three cudaMalloc
 * allocations (weights, KV cache, scratch), the weights stream from the
 * mmapped file through a small pinned staging buffer, and residency is
 * verified before init returns. Nothing is allocated after init, so a
 * forward pass cannot run out of memory half-way: a failed request is a
 * launch or driver error, returned as LLORCH_EDEVICE for that request.
 *
 * Forward: the host checks the batch exactly as the CPU backend does, orders
 * it (entries of multi-entry sequences first, so prefill columns are
 * contiguous for cuBLAS and decode columns always take the matvec kernels),
 * copies the per-entry arrays to each GPU and runs the stages in order, the
 * residual stream passing device to device between them. Only the logits of
 * entries that ask for them come back.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda-impl.cuh"

#define STAGING_SLOT_BYTES (16ull << 20) /* two pinned slots: the only host buffer of an upload */
#define CUDA_VERIFY_EVERY_MS 60000       /* forward re-checks residency at least this often */

static int64_t cuda_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cuda_fail(llorch_errmsg *em, int code, cudaError_t e, const char *what, int dev) {
  (void)cudaGetLastError();
  return llorch_errmsg_set(em, code, "cuda:%d: %s: %s", dev, what, cudaGetErrorString(e));
}

/* ---- devices ---- */

extern "C" int llorch_cuda_device_count(llorch_errmsg *em) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    llorch_errmsg_set(em, LLORCH_EDEVICE, "no CUDA device usable: %s", cudaGetErrorString(e));
    return 0;
  }
  if (n == 0) llorch_errmsg_set(em, LLORCH_EDEVICE, "the CUDA runtime sees no device");
  return n;
}

static int cuda_ptr_query(void *ud, const void *ptr, bool *is_device, int *device) {
  (void)ud;
  cudaPointerAttributes a;
  cudaError_t e = cudaPointerGetAttributes(&a, ptr);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return LLORCH_EDEVICE;
  }
  *is_device = a.type == cudaMemoryTypeDevice;
  *device = a.device;
  return 0;
}

/* ---- weight upload ---- */

typedef struct upload_ctx {
  cudaStream_t stream;
  cudaEvent_t ev[2];
  uint8_t *staging[2];
  int slot;
  cudaError_t err;
} upload_ctx;

static int upload_wait(void *ud, int slot) {
  upload_ctx *u = (upload_ctx *)ud;
  cudaError_t e = cudaEventSynchronize(u->ev[slot]);
  if (e != cudaSuccess) u->err = e;
  return e == cudaSuccess ? 0 : LLORCH_EDEVICE;
}

static int upload_copy(void *ud, int slot, void *dst, uint64_t len) {
  upload_ctx *u = (upload_ctx *)ud;
  cudaError_t e = cudaMemcpyAsync(dst, u->staging[slot], len, cudaMemcpyHostToDevice, u->stream);
  if (e == cudaSuccess) e = cudaEventRecord(u->ev[slot], u->stream);
  if (e != cudaSuccess) u->err = e;
  return e == cudaSuccess ? 0 : LLORCH_EDEVICE;
}

static const llorch_cuda_copy_ops upload_ops = {upload_wait, upload_copy};

typedef struct arena {
  uint8_t *base;
  uint64_t off, size;
} arena;

/* Places tensor t in the device's weight arena and streams its bytes there. */
static int put_tensor(arena *a, upload_ctx *u, const llorch_gguf_tensor *t, const void **out,
                      int dev, llorch_errmsg *em) {
  *out = nullptr;
  if (!t) return 0;
  const uint64_t need = llorch_cuda_tensor_bytes(t);
  if (a->off + need > a->size)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda:%d: weight arena too small at tensor '%s' (plan bug)",
                             dev, t->name);
  if (!t->data)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda:%d: tensor '%s' has no data (header-only model)",
                             dev, t->name);
  uint8_t *dst = a->base + a->off;
  int rc = llorch_cuda_upload(dst, t->data, t->nbytes, u->staging, STAGING_SLOT_BYTES, &upload_ops,
                              u, &u->slot);
  if (rc)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "cuda:%d: copying tensor '%s' to the GPU: %s", dev,
                             t->name, cudaGetErrorString(u->err));
  a->off += need;
  *out = dst;
  return 0;
}

static int put_matrix(arena *a, upload_ctx *u, const llorch_gguf_tensor *t, cuda_mat *out, int dev,
                      llorch_errmsg *em) {
  const void *p;
  int rc = put_tensor(a, u, t, &p, dev, em);
  if (rc) return rc;
  out->d = (const uint8_t *)p;
  out->type = t->type;
  out->n_in = (int)t->ne[0];
  out->n_out = (int)t->ne[1];
  out->row_bytes = llorch_row_size(t->type, (int64_t)t->ne[0]);
  return 0;
}

static int put_vec(arena *a, upload_ctx *u, const llorch_gguf_tensor *t, const float **out, int dev,
                   llorch_errmsg *em) {
  const void *p;
  int rc = put_tensor(a, u, t, &p, dev, em);
  *out = (const float *)p;
  return rc;
}

static int cuda_upload_device(cuda_ctx *c, int d, upload_ctx *u, llorch_errmsg *em) {
  cuda_dev *dv = &c->dev[d];
  const llorch_model *m = c->m;
  const llorch_cuda_dev_plan *dp = &c->plan.dev[d];
  arena a = {dv->weights, 0, dp->weights_bytes};
  int rc = put_vec(&a, u, m->rope_freqs, &dv->rope_ff, dv->ordinal, em);
  if (!rc && dp->has_embd) rc = put_matrix(&a, u, m->tok_embd, &dv->tok_embd, dv->ordinal, em);
  if (!rc && dp->has_output) {
    rc = put_vec(&a, u, m->output_norm, &dv->output_norm, dv->ordinal, em);
    if (!rc && m->output == m->tok_embd && dp->has_embd) dv->output = dv->tok_embd;
    else if (!rc) rc = put_matrix(&a, u, m->output, &dv->output, dv->ordinal, em);
  }
  const size_t kv_layer = (size_t)c->plan.n_seq * c->plan.n_ctx * c->sh.kv_dim; /* f16 cells */
  for (uint32_t il = dp->layer_begin; !rc && il < dp->layer_end; il++) {
    const llorch_layer *L = &m->layers[il];
    cuda_layer *CL = &c->layers[il];
    const int o = dv->ordinal;
    if (!rc) rc = put_vec(&a, u, L->attn_norm, &CL->attn_norm, o, em);
    if (!rc) rc = put_matrix(&a, u, L->wq, &CL->wq, o, em);
    if (!rc) rc = put_matrix(&a, u, L->wk, &CL->wk, o, em);
    if (!rc) rc = put_matrix(&a, u, L->wv, &CL->wv, o, em);
    if (!rc) rc = put_matrix(&a, u, L->wo, &CL->wo, o, em);
    if (!rc) rc = put_vec(&a, u, L->bq, &CL->bq, o, em);
    if (!rc) rc = put_vec(&a, u, L->bk, &CL->bk, o, em);
    if (!rc) rc = put_vec(&a, u, L->bv, &CL->bv, o, em);
    if (!rc) rc = put_vec(&a, u, L->q_norm, &CL->q_norm, o, em);
    if (!rc) rc = put_vec(&a, u, L->k_norm, &CL->k_norm, o, em);
    if (!rc) rc = put_vec(&a, u, L->ffn_norm, &CL->ffn_norm, o, em);
    if (!rc) rc = put_matrix(&a, u, L->w_gate, &CL->gate, o, em);
    if (!rc) rc = put_matrix(&a, u, L->w_up, &CL->up, o, em);
    if (!rc) rc = put_matrix(&a, u, L->w_down, &CL->down, o, em);
    uint16_t *kv = (uint16_t *)dv->kv + (size_t)(il - dp->layer_begin) * 2 * kv_layer;
    CL->k_cache = kv;
    CL->v_cache = kv + kv_layer;
  }
  if (rc) return rc;
  cudaError_t e = cudaStreamSynchronize(dv->stream);
  if (e != cudaSuccess) return cuda_fail(em, LLORCH_EDEVICE, e, "weight upload", dv->ordinal);
  return 0;
}

/* ---- lifecycle ---- */

static void cuda_free_ctx(void *ctx) {
  cuda_ctx *c = (cuda_ctx *)ctx;
  if (!c) return;
  cuda_graph_free(c);
  for (int d = 0; d < c->n_dev; d++) {
    cuda_dev *dv = &c->dev[d];
    cudaSetDevice(dv->ordinal);
    if (dv->stream) cudaStreamSynchronize(dv->stream);
    if (dv->blas) cublasDestroy(dv->blas);
    if (dv->stage_done) cudaEventDestroy(dv->stage_done);
    if (dv->stream) cudaStreamDestroy(dv->stream);
    cudaFree(dv->weights);
    cudaFree(dv->kv);
    cudaFree(dv->scratch);
  }
  if (c->h_meta) cudaFreeHost(c->h_meta);
  (void)cudaGetLastError();
  llorch_cuda_alloc_table_free(&c->allocs);
  pthread_mutex_destroy(&c->mem_lock);
  free(c->layers);
  free(c->seq_len);
  free(c->seq_count);
  free(c->perm);
  free(c->out_dst);
  free(c);
}

/* One device's streams, handles and its three allocations. */
static int cuda_dev_init(cuda_ctx *c, int d, llorch_errmsg *em) {
  cuda_dev *dv = &c->dev[d];
  const llorch_cuda_dev_plan *dp = &c->plan.dev[d];
  dv->ordinal = dp->device;
  dv->layer_begin = dp->layer_begin;
  dv->layer_end = dp->layer_end;
  dv->lay = dp->scratch;
  cudaError_t e = cudaSetDevice(dv->ordinal);
  if (e != cudaSuccess) return cuda_fail(em, LLORCH_EDEVICE, e, "cudaSetDevice", dv->ordinal);
  e = cudaStreamCreateWithFlags(&dv->stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaEventCreateWithFlags(&dv->stage_done, cudaEventDisableTiming);
  if (e != cudaSuccess) return cuda_fail(em, LLORCH_EDEVICE, e, "stream setup", dv->ordinal);
  struct {
    uint8_t **p;
    uint64_t bytes;
    const char *what;
  } allocs[3] = {{&dv->weights, dp->weights_bytes, "weights"},
                 {&dv->kv, dp->kv_bytes, "kv"},
                 {&dv->scratch, dp->scratch_bytes, "scratch"}};
  for (int i = 0; i < 3; i++) {
    /* cudaMalloc only: no managed, host-mapped or zero-copy memory */
    e = cudaMalloc((void **)allocs[i].p, allocs[i].bytes ? allocs[i].bytes : LLORCH_CUDA_ALIGN);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return llorch_errmsg_set(em, LLORCH_EINSUFFICIENT_VRAM,
                               "cuda:%d: cudaMalloc of %.1f MiB for %s failed: %s", dv->ordinal,
                               (double)allocs[i].bytes / 1048576.0, allocs[i].what,
                               cudaGetErrorString(e));
    }
    if (llorch_cuda_alloc_table_add(&c->allocs, *allocs[i].p, allocs[i].bytes, dv->ordinal,
                                    allocs[i].what))
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "cuda backend: out of host memory");
  }
  /* an empty KV cache is zeros, as on the CPU (cells past a position are never read) */
  e = cudaMemsetAsync(dv->kv, 0, dp->kv_bytes, dv->stream);
  if (e != cudaSuccess) return cuda_fail(em, LLORCH_EDEVICE, e, "clearing the KV cache", dv->ordinal);
  if (cublasCreate(&dv->blas) != CUBLAS_STATUS_SUCCESS)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "cuda:%d: cublasCreate failed", dv->ordinal);
  const llorch_cuda_scratch_layout *L = &dv->lay;
  uint8_t *s = dv->scratch;
  dv->x = (float *)(s + L->x);
  dv->xn = (float *)(s + L->xn);
  dv->q = (float *)(s + L->q);
  dv->k = (float *)(s + L->k);
  dv->v = (float *)(s + L->v);
  dv->att = (float *)(s + L->att);
  dv->ao = (float *)(s + L->ao);
  dv->gate = (float *)(s + L->gate);
  dv->up = (float *)(s + L->up);
  dv->part = (float *)(s + L->part);
  dv->xh = s + L->xh;
  dv->wtile = s + L->wtile;
  dv->blas_ws = s + L->blas_ws;
  dv->logits = dp->has_output ? (float *)(s + L->logits) : nullptr;
  const size_t B = c->plan.n_batch_max;
  int32_t *meta = (int32_t *)(s + L->meta);
  dv->meta = cuda_meta{meta, meta + B, meta + 2 * B, meta + 3 * B};
  /* our workspace: cuBLAS then allocates nothing per call (graph-safe, checked) */
  if (cublasSetWorkspace(dv->blas, dv->blas_ws, LLORCH_CUDA_BLAS_WORKSPACE) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(dv->blas, dv->stream) != CUBLAS_STATUS_SUCCESS)
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "cuda:%d: cuBLAS setup failed", dv->ordinal);
  return 0;
}

static int cuda_resolve_devices(const char *device, const llorch_backend_params *p, int *devs,
                                int *n, llorch_errmsg *em) {
  if (p->n_devices > 0) {
    *n = p->n_devices;
    memcpy(devs, p->devices, sizeof(int) * (size_t)*n);
  } else {
    bool is_cuda = false;
    int rc = llorch_device_parse(device, &is_cuda, devs, n, em);
    if (rc) return rc;
    if (!is_cuda || *n == 0)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "cuda backend: device '%.64s' is not cuda:N[,M]",
                               device ? device : "(null)");
  }
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "device '%.64s': no usable CUDA driver or GPU: %s",
                             device ? device : "cuda", cudaGetErrorString(e));
  }
  for (int i = 0; i < *n; i++)
    if (devs[i] >= count)
      return llorch_errmsg_set(em, LLORCH_EDEVICE, "device '%.64s': GPU %d does not exist (%d visible)",
                               device ? device : "cuda", devs[i], count);
  return 0;
}

static int cuda_verify(void *ctx, llorch_errmsg *em);

static int cuda_init(void **out, const llorch_model *m, const char *device,
                     const llorch_backend_params *p, llorch_errmsg *em) {
  *out = nullptr;
  llorch_backend_params params = *p;
  int rc = cuda_resolve_devices(device, p, params.devices, &params.n_devices, em);
  if (rc) return rc;
  /* free memory first: the plan must fit before anything is allocated */
  uint64_t free_b[LLORCH_CUDA_MAX_DEVICES] = {0};
  for (int d = 0; d < params.n_devices; d++) {
    size_t fr = 0, total = 0;
    cudaError_t e = cudaSetDevice(params.devices[d]);
    if (e == cudaSuccess) e = cudaMemGetInfo(&fr, &total);
    if (e != cudaSuccess) return cuda_fail(em, LLORCH_EDEVICE, e, "cudaMemGetInfo", params.devices[d]);
    free_b[d] = fr;
  }
  cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
  if (!c) return llorch_errmsg_set(em, LLORCH_ENOMEM, "cuda backend: out of memory");
  pthread_mutex_init(&c->mem_lock, nullptr);
  c->m = m;
  rc = llorch_cuda_plan_compute(m, &params, free_b, &c->plan, em);
  if (rc) goto fail;
  {
    const llorch_hparams *hp = &m->hp;
    c->sh = cuda_shape{(int)hp->n_embd, (int)hp->n_ff, (int)hp->n_head, (int)hp->n_head_kv,
                       (int)hp->head_dim, (int)hp->n_rot, (int)hp->n_vocab,
                       (int)(hp->n_head * hp->head_dim), (int)(hp->n_head_kv * hp->head_dim),
                       (int)c->plan.n_ctx, (int)c->plan.n_seq, hp->rms_eps, hp->rope_freq_base,
                       hp->rope_freq_scale, hp->rope_type};
    const size_t B = c->plan.n_batch_max;
    c->layers = (cuda_layer *)calloc(hp->n_layer, sizeof *c->layers);
    c->seq_len = (int32_t *)calloc(c->plan.n_seq, sizeof(int32_t));
    c->seq_count = (int32_t *)calloc(c->plan.n_seq, sizeof(int32_t));
    c->perm = (int32_t *)calloc(B, sizeof(int32_t));
    c->out_dst = (int32_t *)calloc(B, sizeof(int32_t));
    if (!c->layers || !c->seq_len || !c->seq_count || !c->perm || !c->out_dst) {
      rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "cuda backend: out of host memory");
      goto fail;
    }
    /* the per-step batch arrays go up through a small pinned buffer (not device memory's
     * substitute: nothing the kernels read lives there) */
    cudaError_t e = cudaHostAlloc((void **)&c->h_meta, 4 * B * sizeof(int32_t), cudaHostAllocPortable);
    if (e != cudaSuccess) {
      rc = cuda_fail(em, LLORCH_ENOMEM, e, "pinned batch buffer", params.devices[0]);
      goto fail;
    }
  }
  c->n_dev = c->plan.n_dev;
  for (int d = 0; d < c->n_dev; d++) {
    rc = cuda_dev_init(c, d, em);
    if (rc) {
      c->n_dev = d + 1; /* free what this device got */
      goto fail;
    }
  }
  /* neighbouring stages copy activations directly when the GPUs can reach each other */
  for (int d = 1; d < c->n_dev; d++) {
    int can = 0;
    cudaDeviceCanAccessPeer(&can, c->dev[d].ordinal, c->dev[d - 1].ordinal);
    if (can) {
      cudaSetDevice(c->dev[d].ordinal);
      cudaDeviceEnablePeerAccess(c->dev[d - 1].ordinal, 0);
      cudaSetDevice(c->dev[d - 1].ordinal);
      cudaDeviceEnablePeerAccess(c->dev[d].ordinal, 0);
    }
    (void)cudaGetLastError(); /* "already enabled" is fine */
  }
  {
    upload_ctx u = {};
    cudaError_t e = cudaHostAlloc((void **)&u.staging[0], 2 * STAGING_SLOT_BYTES, cudaHostAllocPortable);
    if (e != cudaSuccess) {
      rc = cuda_fail(em, LLORCH_ENOMEM, e, "pinned staging buffer", c->dev[0].ordinal);
      goto fail;
    }
    u.staging[1] = u.staging[0] + STAGING_SLOT_BYTES;
    for (int d = 0; !rc && d < c->n_dev; d++) {
      cudaSetDevice(c->dev[d].ordinal);
      u.stream = c->dev[d].stream;
      u.slot = 0;
      if (cudaEventCreateWithFlags(&u.ev[0], cudaEventDisableTiming) != cudaSuccess ||
          cudaEventCreateWithFlags(&u.ev[1], cudaEventDisableTiming) != cudaSuccess) {
        rc = cuda_fail(em, LLORCH_EDEVICE, cudaGetLastError(), "upload events", c->dev[d].ordinal);
      } else {
        /* both slots start free */
        cudaEventRecord(u.ev[0], u.stream);
        cudaEventRecord(u.ev[1], u.stream);
        rc = cuda_upload_device(c, d, &u, em);
      }
      if (u.ev[0]) cudaEventDestroy(u.ev[0]);
      if (u.ev[1]) cudaEventDestroy(u.ev[1]);
      u.ev[0] = u.ev[1] = nullptr;
    }
    cudaFreeHost(u.staging[0]);
    if (rc) goto fail;
  }
  for (int d = 0; d < c->n_dev; d++) {
    const llorch_cuda_dev_plan *dp = &c->plan.dev[d];
    c->weights_bytes += dp->weights_bytes;
    c->kv_bytes += dp->kv_bytes;
    c->scratch_bytes += dp->scratch_bytes;
  }
  {
    size_t off = (size_t)snprintf(c->location, sizeof c->location, "cuda:%d", c->dev[0].ordinal);
    for (int d = 1; d < c->n_dev && off < sizeof c->location; d++)
      off += (size_t)snprintf(c->location + off, sizeof c->location - off, ",%d", c->dev[d].ordinal);
  }
  {
    const char *g = getenv("LLORCH_CUDA_GRAPHS");
    c->graphs_enabled = c->n_dev == 1 && !(g && strcmp(g, "0") == 0);
    const char *fz = getenv("LLORCH_CUDA_FUSED");
    c->fused = !(fz && strcmp(fz, "0") == 0);
  }
  rc = cuda_verify(c, em);
  if (rc) goto fail;
  for (int d = 0; d < c->n_dev; d++)
    LOG_INFO("cuda", NULL,
             "cuda:%d: layers %u..%u, weights %.1f MiB, KV %.1f MiB, scratch %.1f MiB (free before: "
             "%.1f MiB)",
             c->dev[d].ordinal, c->plan.dev[d].layer_begin, c->plan.dev[d].layer_end - 1,
             c->plan.dev[d].weights_bytes / 1048576.0, c->plan.dev[d].kv_bytes / 1048576.0,
             c->plan.dev[d].scratch_bytes / 1048576.0, c->plan.dev[d].free_bytes / 1048576.0);
  *out = c;
  return 0;
fail:
  cuda_free_ctx(c);
  return rc;
}

/* ---- residency ---- */

static int cuda_verify(void *ctx, llorch_errmsg *em) {
  cuda_ctx *c = (cuda_ctx *)ctx;
  llorch_backend_memory r;
  memset(&r, 0, sizeof r);
  int rc = llorch_cuda_residency_check(&c->allocs, cuda_ptr_query, nullptr, cuda_now_ms(), &r, em);
  pthread_mutex_lock(&c->mem_lock);
  c->residency = r;
  pthread_mutex_unlock(&c->mem_lock);
  return rc;
}

static void cuda_memory(void *ctx, llorch_backend_memory *out) {
  cuda_ctx *c = (cuda_ctx *)ctx;
  pthread_mutex_lock(&c->mem_lock);
  *out = c->residency;
  pthread_mutex_unlock(&c->mem_lock);
  out->weights_bytes = c->weights_bytes;
  out->kv_bytes = c->kv_bytes;
  out->scratch_bytes = c->scratch_bytes;
  snprintf(out->weights_location, sizeof out->weights_location, "%s", c->location);
  snprintf(out->kv_location, sizeof out->kv_location, "%s", c->location);
}

static void cuda_seq_reset(void *ctx, int32_t seq) {
  cuda_ctx *c = (cuda_ctx *)ctx;
  if (seq >= 0 && (uint32_t)seq < c->plan.n_seq) c->seq_len[seq] = 0;
}

/* ---- the forward pass ---- */

/* y = W x for n columns: cuBLAS for the first p (prefill) when there are enough, matvec for the rest */
static int stage_matmul(cuda_dev *dv, const cuda_mat *w, const float *x, int ldx, int n, int p,
                        float *y, int ldy) {
  int rc = 0;
  int c0 = 0;
  if (p >= LLORCH_CUDA_GEMM_MIN_COLS) {
    rc = cuda_gemm(dv->blas, w, x, ldx, p, y, ldy, dv->xh, dv->wtile, dv->lay.gemm_tile, dv->stream);
    c0 = p;
  }
  if (!rc && n > c0)
    rc = cuda_matvec(w, x + (size_t)c0 * ldx, ldx, n - c0, y + (size_t)c0 * ldy, ldy, dv->stream);
  return rc;
}

/* Q, K, V: cuBLAS for the prefill columns, then one fused matvec launch for the rest
 * (three launches when the fused kernel does not apply). */
static int stage_qkv(const cuda_ctx *c, cuda_dev *dv, const cuda_layer *L, int n, int p) {
  const int E = c->sh.n_embd, QD = c->sh.q_dim, KD = c->sh.kv_dim;
  const int c0 = p >= LLORCH_CUDA_GEMM_MIN_COLS ? p : 0;
  int rc = 0;
  if (c0 > 0) {
    rc = stage_matmul(dv, &L->wq, dv->xn, E, c0, c0, dv->q, QD);
    if (!rc) rc = stage_matmul(dv, &L->wk, dv->xn, E, c0, c0, dv->k, KD);
    if (!rc) rc = stage_matmul(dv, &L->wv, dv->xn, E, c0, c0, dv->v, KD);
  }
  if (rc || n == c0) return rc;
  const float *x = dv->xn + (size_t)c0 * E;
  float *q = dv->q + (size_t)c0 * QD, *k = dv->k + (size_t)c0 * KD, *v = dv->v + (size_t)c0 * KD;
  if (c->fused &&
      cuda_matvec_qkv(&L->wq, &L->wk, &L->wv, x, E, n - c0, q, QD, k, KD, v, KD, dv->stream) == 0)
    return 0;
  rc = cuda_matvec(&L->wq, x, E, n - c0, q, QD, dv->stream);
  if (!rc) rc = cuda_matvec(&L->wk, x, E, n - c0, k, KD, dv->stream);
  if (!rc) rc = cuda_matvec(&L->wv, x, E, n - c0, v, KD, dv->stream);
  return rc;
}

/* gate = silu(W_gate x) * (W_up x): cuBLAS + SwiGLU for the prefill columns, one fused
 * matvec launch for the rest (or matvec, matvec, SwiGLU). */
static int stage_glu(const cuda_ctx *c, cuda_dev *dv, const cuda_layer *L, int n, int p) {
  const int E = c->sh.n_embd, F = c->sh.n_ff;
  const int c0 = p >= LLORCH_CUDA_GEMM_MIN_COLS ? p : 0;
  int rc = 0;
  if (c0 > 0) {
    rc = stage_matmul(dv, &L->gate, dv->xn, E, c0, c0, dv->gate, F);
    if (!rc) rc = stage_matmul(dv, &L->up, dv->xn, E, c0, c0, dv->up, F);
    if (!rc) rc = cuda_swiglu(dv->gate, dv->up, (int64_t)c0 * F, dv->stream);
  }
  if (rc || n == c0) return rc;
  const float *x = dv->xn + (size_t)c0 * E;
  float *g = dv->gate + (size_t)c0 * F, *u = dv->up + (size_t)c0 * F;
  if (c->fused && cuda_matvec_glu(&L->gate, &L->up, x, E, n - c0, g, F, dv->stream) == 0) return 0;
  rc = cuda_matvec(&L->gate, x, E, n - c0, g, F, dv->stream);
  if (!rc) rc = cuda_matvec(&L->up, x, E, n - c0, u, F, dv->stream);
  if (!rc) rc = cuda_swiglu(g, u, (int64_t)(n - c0) * F, dv->stream);
  return rc;
}

int cuda_stage_run(cuda_ctx *c, int d, int n, int p, int n_out, int p_out) {
  cuda_dev *dv = &c->dev[d];
  const cuda_shape *sh = &c->sh;
  const int E = sh->n_embd, F = sh->n_ff, QD = sh->q_dim;
  const float eps = sh->rms_eps;
  cudaStream_t s = dv->stream;
  if (cudaSetDevice(dv->ordinal) != cudaSuccess) return LLORCH_EDEVICE;
  if (d > 0 && cudaStreamWaitEvent(s, c->dev[d - 1].stage_done, 0) != cudaSuccess) return LLORCH_EDEVICE;
  int rc = 0;
  if (c->plan.dev[d].has_embd) rc = cuda_get_rows(&dv->tok_embd, dv->meta.token, n, dv->x, s);
  for (uint32_t il = dv->layer_begin; !rc && il < dv->layer_end; il++) {
    const cuda_layer *L = &c->layers[il];
    /* the previous layer's FFN output joins the residual stream here */
    rc = cuda_add_rmsnorm(dv->x, il == 0 ? nullptr : dv->ao, dv->x, nullptr, L->attn_norm, dv->xn,
                          n, E, eps, s);
    if (!rc) rc = stage_qkv(c, dv, L, n, p);
    if (!rc) rc = cuda_rope_kv(sh, L, &dv->meta, dv->rope_ff, dv->q, dv->k, dv->v, n, s);
    if (!rc)
      rc = cuda_attention(sh, L, &dv->meta, dv->q, dv->part, dv->att, n, dv->lay.n_splits,
                          dv->lay.split_len, s);
    if (!rc) rc = stage_matmul(dv, &L->wo, dv->att, QD, n, p, dv->ao, E);
    if (!rc)
      rc = cuda_add_rmsnorm(dv->x, dv->ao, dv->x, nullptr, L->ffn_norm, dv->xn, n, E, eps, s);
    if (!rc) rc = stage_glu(c, dv, L, n, p);
    if (!rc) rc = stage_matmul(dv, &L->down, dv->gate, F, n, p, dv->ao, E);
  }
  if (rc) return rc;
  if (!c->plan.dev[d].has_output) {
    /* the residual stream and the pending FFN output go on to the next GPU */
    cuda_dev *nx = &c->dev[d + 1];
    const size_t bytes = (size_t)n * E * sizeof(float);
    if (cudaMemcpyPeerAsync(nx->x, nx->ordinal, dv->x, dv->ordinal, bytes, s) != cudaSuccess ||
        cudaMemcpyPeerAsync(nx->ao, nx->ordinal, dv->ao, dv->ordinal, bytes, s) != cudaSuccess ||
        cudaEventRecord(dv->stage_done, s) != cudaSuccess)
      return LLORCH_EDEVICE;
    return 0;
  }
  if (n_out == 0) return 0;
  rc = cuda_add_rmsnorm(dv->x, dv->ao, nullptr, dv->meta.rows, dv->output_norm, dv->xn, n_out, E,
                        eps, s);
  if (!rc) rc = stage_matmul(dv, &dv->output, dv->xn, E, n_out, p_out, dv->logits, sh->n_vocab);
  return rc;
}

static int cuda_check_batch(cuda_ctx *c, const llorch_batch *b, llorch_errmsg *em) {
  if (b->n_tokens <= 0 || (uint32_t)b->n_tokens > c->plan.n_batch_max)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: batch of %d entries (allowed 1..%u)",
                             b->n_tokens, c->plan.n_batch_max);
  if (!b->token || !b->pos || !b->seq)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: batch token/pos/seq arrays missing");
  int32_t *next = c->seq_count; /* reused: counts are rebuilt after */
  for (uint32_t s = 0; s < c->plan.n_seq; s++) next[s] = c->seq_len[s];
  for (int i = 0; i < b->n_tokens; i++) {
    const int32_t s = b->seq[i], p = b->pos[i], t = b->token[i];
    if (s < 0 || (uint32_t)s >= c->plan.n_seq)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: entry %d: sequence %d outside 0..%u", i,
                               s, c->plan.n_seq - 1);
    if (t < 0 || t >= c->sh.n_vocab)
      return llorch_errmsg_set(em, LLORCH_EINVAL, "forward: entry %d: token %d outside 0..%d", i, t,
                               c->sh.n_vocab - 1);
    if (p != next[s])
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "forward: entry %d: sequence %d position %d, expected %d (positions "
                               "must continue the cached ones, in order)",
                               i, s, p, next[s]);
    if ((uint32_t)p >= c->plan.n_ctx)
      return llorch_errmsg_set(em, LLORCH_ELIMIT,
                               "forward: entry %d: position %d is past the context of %u tokens", i,
                               p, c->plan.n_ctx);
    next[s] = p + 1;
  }
  return 0;
}

static int cuda_forward(void *ctx, const llorch_batch *b, float *logits, llorch_errmsg *em) {
  cuda_ctx *c = (cuda_ctx *)ctx;
  int rc = cuda_check_batch(c, b, em);
  if (rc) return rc;
  /* periodic residency check even if nobody calls verify_residency (3 driver queries per GPU) */
  pthread_mutex_lock(&c->mem_lock);
  const int64_t last_check = c->residency.verified_at_ms;
  pthread_mutex_unlock(&c->mem_lock);
  if (cuda_now_ms() - last_check > CUDA_VERIFY_EVERY_MS) {
    rc = cuda_verify(c, em);
    if (rc) return rc;
  }
  const int n = b->n_tokens, B = (int)c->plan.n_batch_max, V = c->sh.n_vocab;
  memset(c->seq_count, 0, sizeof(int32_t) * c->plan.n_seq);
  for (int i = 0; i < n; i++) c->seq_count[b->seq[i]]++;
  /* order: entries of multi-entry sequences (prefill) first, keeping their order */
  int p = 0;
  for (int i = 0; i < n; i++)
    if (c->seq_count[b->seq[i]] >= 2) c->perm[p++] = i;
  int j = p;
  for (int i = 0; i < n; i++)
    if (c->seq_count[b->seq[i]] < 2) c->perm[j++] = i;
  /* caller's logits order is entry order; rank[i] = i's place among entries that want logits */
  int32_t *tok = c->h_meta, *pos = c->h_meta + B, *seq = c->h_meta + 2 * B, *rows = c->h_meta + 3 * B;
  int n_out = 0, p_out = 0;
  bool in_order = true;
  for (j = 0; j < n; j++) {
    const int i = c->perm[j];
    tok[j] = b->token[i];
    pos[j] = b->pos[i];
    seq[j] = b->seq[i];
  }
  for (j = 0; j < n; j++) {
    const int i = c->perm[j];
    if (!(b->logits && b->logits[i])) continue;
    int rank = 0;
    for (int k = 0; k < i; k++) rank += b->logits[k] != 0;
    rows[n_out] = j;
    c->out_dst[n_out] = rank;
    if (rank != n_out) in_order = false;
    if (j < p) p_out++;
    n_out++;
  }
  for (int d = 0; d < c->n_dev; d++) {
    cuda_dev *dv = &c->dev[d];
    cudaSetDevice(dv->ordinal);
    const size_t bytes = (size_t)n * sizeof(int32_t);
    if (cudaMemcpyAsync(dv->meta.token, tok, bytes, cudaMemcpyHostToDevice, dv->stream) != cudaSuccess ||
        cudaMemcpyAsync(dv->meta.pos, pos, bytes, cudaMemcpyHostToDevice, dv->stream) != cudaSuccess ||
        cudaMemcpyAsync(dv->meta.seq, seq, bytes, cudaMemcpyHostToDevice, dv->stream) != cudaSuccess ||
        (n_out > 0 && cudaMemcpyAsync(dv->meta.rows, rows, (size_t)n_out * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, dv->stream) != cudaSuccess)) {
      cudaError_t e = cudaGetLastError();
      return llorch_errmsg_set(em, LLORCH_EDEVICE, "forward: cuda:%d: batch upload: %s", dv->ordinal,
                               cudaGetErrorString(e));
    }
  }
  bool ran = false;
  if (p == 0 && n_out == n) {
    rc = cuda_graph_decode(c, n, &ran);
    if (rc) {
      cudaError_t e = cudaGetLastError();
      return llorch_errmsg_set(em, LLORCH_EDEVICE, "forward: graph launch: %s", cudaGetErrorString(e));
    }
  }
  for (int d = 0; !ran && d < c->n_dev; d++) {
    rc = cuda_stage_run(c, d, n, p, n_out, p_out);
    if (rc) {
      cudaError_t e = cudaGetLastError();
      return llorch_errmsg_set(em, rc, "forward: cuda:%d: %s", c->dev[d].ordinal,
                               rc == LLORCH_EDEVICE ? cudaGetErrorString(e) : llorch_strerror(rc));
    }
  }
  cuda_dev *last = &c->dev[c->n_dev - 1];
  cudaSetDevice(last->ordinal);
  cudaError_t e = cudaSuccess;
  if (n_out > 0 && in_order) {
    e = cudaMemcpyAsync(logits, last->logits, (size_t)n_out * V * sizeof(float),
                        cudaMemcpyDeviceToHost, last->stream);
  } else {
    for (int r = 0; r < n_out && e == cudaSuccess; r++)
      e = cudaMemcpyAsync(logits + (size_t)c->out_dst[r] * V, last->logits + (size_t)r * V,
                          (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, last->stream);
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(last->stream);
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return llorch_errmsg_set(em, LLORCH_EDEVICE, "forward: %s: %s", c->location, cudaGetErrorString(e));
  }
  for (int i = 0; i < n; i++) c->seq_len[b->seq[i]] = b->pos[i] + 1;
  return 0;
}

extern "C" const llorch_backend_ops llorch_backend_cuda_ops = {
    "cuda", cuda_init, cuda_free_ctx, cuda_forward, cuda_seq_reset, cuda_memory, cuda_verify,
    /* not paged: one region of n_ctx positions per slot (the worker then
     * schedules by slots and has no prefix cache) */
    NULL, NULL,
    /* no hidden-state output: the worker answers embeddings with 501 on CUDA */
    NULL,
};
