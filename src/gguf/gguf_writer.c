/*
 * GGUF writer: collects kvs and tensor descriptions, then writes the file in
 * one pass to "<path>.tmp.<pid>" and renames it into place, so a reader never
 * sees a half-written model. Tensor bytes come either from a copy made at
 * add time or from a fill callback called chunk by chunk at write time, so a
 * multi-gigabyte synthesized model is never in memory whole.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llorch/buf.h"
#include "llorch/gguf.h"
#include "llorch/quant.h"

#define WRITER_CHUNK_BYTES (16u << 20) /* fill callback granularity, about */
#define WRITER_MAX_NAME_LEN 63u        /* ggml's GGML_MAX_NAME minus the NUL */

typedef struct writer_kv {
  char *key;
  uint8_t *val; /* u32 type + value, serialized as in the file */
  size_t val_len; /* bytes */
} writer_kv;

typedef struct writer_tensor {
  char *name;
  llorch_ggml_type type;
  uint32_t n_dims;
  uint64_t ne[LLORCH_GGUF_MAX_DIMS];
  uint64_t nbytes;        /* bytes of data */
  uint64_t row_bytes;     /* bytes of one row of ne[0] elements */
  uint64_t offset;        /* bytes from the data section start, set at write */
  void *data;             /* owned copy, or NULL when fill is used */
  llorch_gguf_fill_fn fill;
  void *fill_ctx;
} writer_tensor;

struct llorch_gguf_writer {
  uint32_t alignment; /* bytes, power of two */
  writer_kv *kvs;
  size_t n_kv, cap_kv;
  writer_tensor *tensors;
  size_t n_tensors, cap_tensors;
};

/* ---- byte buffer ---- */

/* Serialized bytes (binary: the buffer's trailing NUL is never written out);
 * the first failed append sticks, so a run of puts is checked once. */
typedef struct wbuf {
  llorch_buf bytes;
  bool oom;
} wbuf;

static void wbuf_put(wbuf *b, const void *src, size_t n) {
  if (b->oom || n == 0) return;
  if (llorch_buf_append(&b->bytes, src, n) != 0) b->oom = true;
}

static void wbuf_u32(wbuf *b, uint32_t v) { wbuf_put(b, &v, 4); }
static void wbuf_u64(wbuf *b, uint64_t v) { wbuf_put(b, &v, 8); }

static void wbuf_str(wbuf *b, const char *s, uint64_t len) {
  wbuf_u64(b, len);
  wbuf_put(b, s, (size_t)len);
}

/* ---- init / free ---- */

int llorch_gguf_writer_init(llorch_gguf_writer **out, uint32_t alignment) {
  *out = NULL;
  if (alignment == 0) alignment = 32;
  if ((alignment & (alignment - 1)) != 0) return LLORCH_EINVAL;
  llorch_gguf_writer *w = calloc(1, sizeof *w);
  if (w == NULL) return LLORCH_ENOMEM;
  w->alignment = alignment;
  *out = w;
  return 0;
}

void llorch_gguf_writer_free(llorch_gguf_writer *w) {
  if (w == NULL) return;
  for (size_t i = 0; i < w->n_kv; i++) {
    free(w->kvs[i].key);
    free(w->kvs[i].val);
  }
  for (size_t i = 0; i < w->n_tensors; i++) {
    free(w->tensors[i].name);
    free(w->tensors[i].data);
  }
  free(w->kvs);
  free(w->tensors);
  free(w);
}

/* ---- kvs ---- */

static writer_kv *writer_find_kv(llorch_gguf_writer *w, const char *key) {
  for (size_t i = 0; i < w->n_kv; i++)
    if (strcmp(w->kvs[i].key, key) == 0) return &w->kvs[i];
  return NULL;
}

int llorch_gguf_writer_remove_kv(llorch_gguf_writer *w, const char *key) {
  writer_kv *kv = key ? writer_find_kv(w, key) : NULL;
  if (kv == NULL) return LLORCH_ENOTFOUND;
  free(kv->key);
  free(kv->val);
  size_t i = (size_t)(kv - w->kvs);
  memmove(&w->kvs[i], &w->kvs[i + 1], (w->n_kv - i - 1) * sizeof *w->kvs);
  w->n_kv--;
  return 0;
}

/* Takes ownership of b's bytes; setting an existing key replaces its value. */
static int writer_put_kv(llorch_gguf_writer *w, const char *key, wbuf *b) {
  if (b->oom) {
    llorch_buf_free(&b->bytes);
    return LLORCH_ENOMEM;
  }
  writer_kv *kv = writer_find_kv(w, key);
  if (kv != NULL) {
    free(kv->val);
    kv->val = (uint8_t *)b->bytes.data;
    kv->val_len = b->bytes.len;
    return 0;
  }
  if (w->n_kv == w->cap_kv) {
    size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
    writer_kv *kvs = realloc(w->kvs, cap * sizeof *kvs);
    if (kvs == NULL) goto fail;
    w->kvs = kvs;
    w->cap_kv = cap;
  }
  char *k = strdup(key);
  if (k == NULL) goto fail;
  w->kvs[w->n_kv++] = (writer_kv){k, (uint8_t *)b->bytes.data, b->bytes.len};
  return 0;
fail:
  llorch_buf_free(&b->bytes);
  return LLORCH_ENOMEM;
}

static int writer_set_scalar(llorch_gguf_writer *w, const char *key, llorch_gguf_vtype t,
                             const void *v, size_t size) {
  if (key == NULL || key[0] == '\0') return LLORCH_EINVAL;
  wbuf b = {0};
  wbuf_u32(&b, t);
  wbuf_put(&b, v, size);
  return writer_put_kv(w, key, &b);
}

int llorch_gguf_writer_set_u32(llorch_gguf_writer *w, const char *key, uint32_t v) {
  return writer_set_scalar(w, key, LLORCH_GGUF_UINT32, &v, 4);
}

int llorch_gguf_writer_set_i32(llorch_gguf_writer *w, const char *key, int32_t v) {
  return writer_set_scalar(w, key, LLORCH_GGUF_INT32, &v, 4);
}

int llorch_gguf_writer_set_u64(llorch_gguf_writer *w, const char *key, uint64_t v) {
  return writer_set_scalar(w, key, LLORCH_GGUF_UINT64, &v, 8);
}

int llorch_gguf_writer_set_f32(llorch_gguf_writer *w, const char *key, float v) {
  return writer_set_scalar(w, key, LLORCH_GGUF_FLOAT32, &v, 4);
}

int llorch_gguf_writer_set_bool(llorch_gguf_writer *w, const char *key, bool v) {
  uint8_t b = v ? 1 : 0;
  return writer_set_scalar(w, key, LLORCH_GGUF_BOOL, &b, 1);
}

int llorch_gguf_writer_set_value(llorch_gguf_writer *w, const char *key, llorch_gguf_vtype t,
                                 const void *v) {
  static const uint8_t sizes[LLORCH_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  if ((unsigned)t >= LLORCH_GGUF_VTYPE_COUNT || sizes[t] == 0 || v == NULL) return LLORCH_EINVAL;
  return writer_set_scalar(w, key, t, v, sizes[t]);
}

int llorch_gguf_writer_set_str(llorch_gguf_writer *w, const char *key, const char *v) {
  if (key == NULL || key[0] == '\0' || v == NULL) return LLORCH_EINVAL;
  wbuf b = {0};
  wbuf_u32(&b, LLORCH_GGUF_STRING);
  wbuf_str(&b, v, strlen(v));
  return writer_put_kv(w, key, &b);
}

static size_t writer_vtype_size(llorch_gguf_vtype t) {
  static const uint8_t sizes[LLORCH_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
  return (unsigned)t < LLORCH_GGUF_VTYPE_COUNT ? sizes[t] : 0;
}

int llorch_gguf_writer_set_arr(llorch_gguf_writer *w, const char *key, llorch_gguf_vtype elem_type,
                               const void *data, uint64_t n) {
  size_t size = writer_vtype_size(elem_type);
  if (key == NULL || key[0] == '\0' || size == 0 || (n > 0 && data == NULL) ||
      n > SIZE_MAX / size)
    return LLORCH_EINVAL;
  wbuf b = {0};
  wbuf_u32(&b, LLORCH_GGUF_ARRAY);
  wbuf_u32(&b, elem_type);
  wbuf_u64(&b, n);
  wbuf_put(&b, data, (size_t)n * size);
  return writer_put_kv(w, key, &b);
}

int llorch_gguf_writer_set_arr_str(llorch_gguf_writer *w, const char *key,
                                   const char *const *strs, uint64_t n) {
  if (key == NULL || key[0] == '\0' || (n > 0 && strs == NULL)) return LLORCH_EINVAL;
  wbuf b = {0};
  wbuf_u32(&b, LLORCH_GGUF_ARRAY);
  wbuf_u32(&b, LLORCH_GGUF_STRING);
  wbuf_u64(&b, n);
  for (uint64_t i = 0; i < n; i++) {
    if (strs[i] == NULL) {
      llorch_buf_free(&b.bytes);
      return LLORCH_EINVAL;
    }
    wbuf_str(&b, strs[i], strlen(strs[i]));
  }
  return writer_put_kv(w, key, &b);
}

int llorch_gguf_writer_copy_kv(llorch_gguf_writer *w, const llorch_gguf_kv *kv) {
  if (kv == NULL || kv->key == NULL) return LLORCH_EINVAL;
  wbuf b = {0};
  wbuf_u32(&b, kv->type);
  switch (kv->type) {
  case LLORCH_GGUF_STRING:
    wbuf_str(&b, kv->v.str.ptr, kv->v.str.len);
    break;
  case LLORCH_GGUF_ARRAY: {
    wbuf_u32(&b, kv->arr_type);
    wbuf_u64(&b, kv->arr_n);
    size_t bytes;
    if (kv->arr_type == LLORCH_GGUF_STRING) {
      /* the reader validated every element, so the walk stays in the file */
      uint64_t cursor = 0;
      for (uint64_t i = 0; i < kv->arr_n; i++) llorch_gguf_arr_str(kv, i, &cursor);
      bytes = (size_t)cursor;
    } else {
      bytes = (size_t)kv->arr_n * writer_vtype_size(kv->arr_type);
    }
    wbuf_put(&b, kv->arr_data, bytes);
    break;
  }
  case LLORCH_GGUF_UINT8: case LLORCH_GGUF_BOOL: { uint8_t v = (uint8_t)kv->v.u64; wbuf_put(&b, &v, 1); break; }
  case LLORCH_GGUF_INT8: { int8_t v = (int8_t)kv->v.i64; wbuf_put(&b, &v, 1); break; }
  case LLORCH_GGUF_UINT16: { uint16_t v = (uint16_t)kv->v.u64; wbuf_put(&b, &v, 2); break; }
  case LLORCH_GGUF_INT16: { int16_t v = (int16_t)kv->v.i64; wbuf_put(&b, &v, 2); break; }
  case LLORCH_GGUF_UINT32: { uint32_t v = (uint32_t)kv->v.u64; wbuf_put(&b, &v, 4); break; }
  case LLORCH_GGUF_INT32: { int32_t v = (int32_t)kv->v.i64; wbuf_put(&b, &v, 4); break; }
  case LLORCH_GGUF_FLOAT32: { float v = (float)kv->v.f64; wbuf_put(&b, &v, 4); break; }
  case LLORCH_GGUF_UINT64: wbuf_put(&b, &kv->v.u64, 8); break;
  case LLORCH_GGUF_INT64: wbuf_put(&b, &kv->v.i64, 8); break;
  case LLORCH_GGUF_FLOAT64: wbuf_put(&b, &kv->v.f64, 8); break;
  default:
    llorch_buf_free(&b.bytes);
    return LLORCH_EINVAL;
  }
  return writer_put_kv(w, kv->key, &b);
}

/* ---- tensors ---- */

static int writer_new_tensor(llorch_gguf_writer *w, const char *name, llorch_ggml_type type,
                             uint32_t n_dims, const uint64_t *ne, writer_tensor **out) {
  size_t be, bb;
  if (name == NULL || name[0] == '\0' || strlen(name) > WRITER_MAX_NAME_LEN) return LLORCH_EINVAL;
  if (!llorch_type_geometry(type, &be, &bb)) return LLORCH_EINVAL;
  if (n_dims < 1 || n_dims > LLORCH_GGUF_MAX_DIMS || ne == NULL) return LLORCH_EINVAL;
  uint64_t n = 1;
  for (uint32_t d = 0; d < n_dims; d++)
    if (ne[d] == 0 || __builtin_mul_overflow(n, ne[d], &n) || n > (uint64_t)INT64_MAX)
      return LLORCH_EINVAL;
  if (ne[0] % be != 0) return LLORCH_EINVAL;
  for (size_t i = 0; i < w->n_tensors; i++)
    if (strcmp(w->tensors[i].name, name) == 0) return LLORCH_EEXIST;
  if (w->n_tensors == w->cap_tensors) {
    size_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
    writer_tensor *ts = realloc(w->tensors, cap * sizeof *ts);
    if (ts == NULL) return LLORCH_ENOMEM;
    w->tensors = ts;
    w->cap_tensors = cap;
  }
  writer_tensor *t = &w->tensors[w->n_tensors];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  if (t->name == NULL) return LLORCH_ENOMEM;
  t->type = type;
  t->n_dims = n_dims;
  for (uint32_t d = 0; d < LLORCH_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
  t->row_bytes = ne[0] / be * bb;
  t->nbytes = n / be * bb;
  w->n_tensors++;
  *out = t;
  return 0;
}

int llorch_gguf_writer_add_tensor(llorch_gguf_writer *w, const char *name, llorch_ggml_type type,
                                  uint32_t n_dims, const uint64_t *ne, const void *data) {
  writer_tensor *t;
  if (data == NULL) return LLORCH_EINVAL;
  int rc = writer_new_tensor(w, name, type, n_dims, ne, &t);
  if (rc != 0) return rc;
  t->data = malloc(t->nbytes ? (size_t)t->nbytes : 1);
  if (t->data == NULL) {
    free(t->name);
    w->n_tensors--;
    return LLORCH_ENOMEM;
  }
  memcpy(t->data, data, (size_t)t->nbytes);
  return 0;
}

int llorch_gguf_writer_add_tensor_fill(llorch_gguf_writer *w, const char *name,
                                       llorch_ggml_type type, uint32_t n_dims,
                                       const uint64_t *ne, llorch_gguf_fill_fn fill,
                                       void *ctx) {
  writer_tensor *t;
  if (fill == NULL) return LLORCH_EINVAL;
  int rc = writer_new_tensor(w, name, type, n_dims, ne, &t);
  if (rc != 0) return rc;
  t->fill = fill;
  t->fill_ctx = ctx;
  return 0;
}

/* ---- writing ---- */

static uint64_t writer_pad(uint64_t n, uint64_t align) {
  return (align - n % align) % align;
}

static int writer_check_alignment_kv(llorch_gguf_writer *w, llorch_errmsg *em) {
  writer_kv *kv = writer_find_kv(w, "general.alignment");
  if (kv == NULL) {
    /* readers assume 32 without the key; anything else must be said */
    if (w->alignment == 32) return 0;
    return llorch_gguf_writer_set_u32(w, "general.alignment", w->alignment);
  }
  uint32_t type, v;
  memcpy(&type, kv->val, 4);
  if (type != LLORCH_GGUF_UINT32 || kv->val_len != 8)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "general.alignment must be a UINT32");
  memcpy(&v, kv->val + 4, 4);
  if (v != w->alignment)
    return llorch_errmsg_set(em, LLORCH_EINVAL, "general.alignment is %" PRIu32
                             " but the writer aligns to %" PRIu32, v, w->alignment);
  return 0;
}

static int writer_fwrite(FILE *f, const void *p, size_t n, const char *tmp, llorch_errmsg *em) {
  if (n > 0 && fwrite(p, 1, n, f) != n)
    return llorch_errmsg_set(em, LLORCH_EIO, "cannot write '%s': %s", tmp, strerror(errno));
  return 0;
}

static int writer_zeros(FILE *f, uint64_t n, const char *tmp, llorch_errmsg *em) {
  static const uint8_t zeros[256];
  while (n > 0) {
    size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
    int rc = writer_fwrite(f, zeros, k, tmp, em);
    if (rc != 0) return rc;
    n -= k;
  }
  return 0;
}

static int writer_emit_tensor(const writer_tensor *t, FILE *f, uint8_t **chunk, size_t *chunk_cap,
                              const char *tmp, llorch_errmsg *em) {
  if (t->data != NULL) return writer_fwrite(f, t->data, (size_t)t->nbytes, tmp, em);
  /* whole rows per call, so fill can quantize block by block */
  uint64_t rows = WRITER_CHUNK_BYTES / t->row_bytes;
  if (rows == 0) rows = 1;
  uint64_t step = rows * t->row_bytes;
  if (step > t->nbytes) step = t->nbytes;
  if (*chunk_cap < step) {
    free(*chunk);
    size_t cap = (size_t)((step + 63) / 64 * 64); /* aligned_alloc wants a multiple */
    *chunk = aligned_alloc(64, cap);
    *chunk_cap = *chunk ? cap : 0;
    if (*chunk == NULL)
      return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for a %" PRIu64 "-byte chunk", step);
  }
  for (uint64_t off = 0; off < t->nbytes; off += step) {
    uint64_t n = t->nbytes - off < step ? t->nbytes - off : step;
    int rc = t->fill(t->fill_ctx, t->name, off, *chunk, n);
    if (rc != 0)
      return llorch_errmsg_set(em, rc < 0 ? rc : LLORCH_EIO, "filling tensor '%s' at byte %" PRIu64
                               " failed: %s", t->name, off, llorch_strerror(rc));
    if ((rc = writer_fwrite(f, *chunk, (size_t)n, tmp, em)) != 0) return rc;
  }
  return 0;
}

int llorch_gguf_writer_write_file(llorch_gguf_writer *w, const char *path, llorch_errmsg *em) {
  int rc = writer_check_alignment_kv(w, em);
  if (rc != 0) return rc;

  wbuf h = {0};
  wbuf_u32(&h, 0x46554747u); /* "GGUF" */
  wbuf_u32(&h, 3);
  wbuf_u64(&h, w->n_tensors);
  wbuf_u64(&h, w->n_kv);
  for (size_t i = 0; i < w->n_kv; i++) {
    wbuf_str(&h, w->kvs[i].key, strlen(w->kvs[i].key));
    wbuf_put(&h, w->kvs[i].val, w->kvs[i].val_len);
  }
  uint64_t off = 0;
  for (size_t i = 0; i < w->n_tensors; i++) {
    writer_tensor *t = &w->tensors[i];
    t->offset = off;
    wbuf_str(&h, t->name, strlen(t->name));
    wbuf_u32(&h, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims; d++) wbuf_u64(&h, t->ne[d]);
    wbuf_u32(&h, t->type);
    wbuf_u64(&h, t->offset);
    off += t->nbytes + writer_pad(t->nbytes, w->alignment);
  }
  if (h.oom) {
    llorch_buf_free(&h.bytes);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory building the GGUF header");
  }

  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp) {
    llorch_buf_free(&h.bytes);
    return llorch_errmsg_set(em, LLORCH_EINVAL, "output path too long");
  }
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) {
    rc = llorch_errmsg_set(em, errno == ENOENT ? LLORCH_ENOENT : LLORCH_EIO, "cannot create '%s': %s",
                           tmp, strerror(errno));
    llorch_buf_free(&h.bytes);
    return rc;
  }
  setvbuf(f, NULL, _IOFBF, 1 << 20);
  uint8_t *chunk = NULL;
  size_t chunk_cap = 0;
  if ((rc = writer_fwrite(f, h.bytes.data, h.bytes.len, tmp, em)) != 0) goto fail;
  if ((rc = writer_zeros(f, writer_pad(h.bytes.len, w->alignment), tmp, em)) != 0) goto fail;
  for (size_t i = 0; i < w->n_tensors; i++) {
    const writer_tensor *t = &w->tensors[i];
    if ((rc = writer_emit_tensor(t, f, &chunk, &chunk_cap, tmp, em)) != 0) goto fail;
    if ((rc = writer_zeros(f, writer_pad(t->nbytes, w->alignment), tmp, em)) != 0) goto fail;
  }
  /* durable before visible: fsync the data, then rename over the target */
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
    rc = llorch_errmsg_set(em, LLORCH_EIO, "cannot write '%s': %s", tmp, strerror(errno));
    goto fail;
  }
  if (fclose(f) != 0) {
    f = NULL;
    rc = llorch_errmsg_set(em, LLORCH_EIO, "cannot write '%s': %s", tmp, strerror(errno));
    goto fail;
  }
  f = NULL;
  if (rename(tmp, path) != 0) {
    rc = llorch_errmsg_set(em, LLORCH_EIO, "cannot rename '%s' to '%s': %s", tmp, path,
                           strerror(errno));
    goto fail;
  }
  free(chunk);
  llorch_buf_free(&h.bytes);
  return 0;

fail:
  if (f != NULL) fclose(f);
  unlink(tmp);
  free(chunk);
  llorch_buf_free(&h.bytes);
  return rc;
}
