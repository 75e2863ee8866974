/*
 * GGUF reader: parses and validates the whole header before anything is
 * handed out, over a mmap of the file (weights are used in place) or, for
 * HEADER_ONLY opens, over a buffer read with pread so that scanning a model
 * directory never maps or touches tensor data.
 *
 * Every length and count read from the file is checked against the bytes
 * that remain before it is used, with overflow-free arithmetic (a length is
 * compared with "file_size - pos", never added to pos first). Errors name the
 * item (kv key or tensor name), the value seen and what was expected.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "llorch/gguf.h"

/* ---- limits (real files are far below them; they bound hostile ones) ---- */

#define GGUF_MAGIC 0x46554747u          /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_ITEMS (1u << 24)       /* kvs or tensors in one file */
#define GGUF_MAX_KEY_LEN 4096u          /* bytes */
#define GGUF_MAX_NAME_LEN 63u           /* ggml's GGML_MAX_NAME (64) minus the NUL */
#define GGUF_HEADER_READ_FIRST (1u << 20) /* HEADER_ONLY: first pread size */
#define GGUF_NEED_MORE 1                /* internal: header continues past the buffer */

/* ---- the handle ---- */

typedef struct gguf_name_block {
  struct gguf_name_block *next;
  size_t used, cap;
  char data[];
} gguf_name_block;

struct llorch_gguf {
  const uint8_t *base;  /* file bytes: the whole map, or the header buffer */
  uint64_t avail;       /* bytes readable at base */
  uint64_t file_size;   /* bytes */
  void *map;            /* mmap of the whole file, or NULL */
  uint8_t *header_buf;  /* HEADER_ONLY: malloc'd header bytes, or NULL */
  bool header_only;

  uint32_t version;
  uint64_t alignment;   /* bytes */
  uint64_t data_offset; /* bytes from file start */

  uint64_t n_kv;
  llorch_gguf_kv *kvs;         /* (n_kv) */
  uint64_t n_tensors;
  llorch_gguf_tensor *tensors; /* (n_tensors) */
  uint32_t *kv_index;          /* open addressing: kv index + 1, 0 = empty */
  uint32_t *tensor_index;      /* same for tensors */
  uint64_t kv_index_cap, tensor_index_cap; /* slots, powers of two */
  gguf_name_block *names;      /* NUL-terminated copies of keys and tensor names */
};

/* ---- small helpers ---- */

static const char *const vtype_names[LLORCH_GGUF_VTYPE_COUNT] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};

static const uint8_t vtype_sizes[LLORCH_GGUF_VTYPE_COUNT] = {
    1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static const char *gguf_vtype_name(uint32_t t) {
  return t < LLORCH_GGUF_VTYPE_COUNT ? vtype_names[t] : "?";
}

static uint64_t gguf_hash(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)s[i];
    h *= 1099511628211ull;
  }
  return h;
}

static const char *gguf_name_copy(llorch_gguf *g, const uint8_t *s, size_t len) {
  gguf_name_block *b = g->names;
  if (b == NULL || b->cap - b->used < len + 1) {
    size_t cap = len + 1 > 65536 ? len + 1 : 65536;
    b = malloc(sizeof *b + cap);
    if (b == NULL) return NULL;
    b->next = g->names;
    b->used = 0;
    b->cap = cap;
    g->names = b;
  }
  char *p = b->data + b->used;
  memcpy(p, s, len);
  p[len] = '\0';
  b->used += len + 1;
  return p;
}

static uint64_t gguf_index_cap_for(uint64_t n) {
  uint64_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  return cap;
}

/*
 * Inserts item i (whose name is names_of(i)) into an open-addressing index;
 * returns the index of an existing item of the same name, or -1 once added.
 */
static int64_t gguf_index_insert(uint32_t *index, uint64_t cap, const char *name,
                                 const char *(*name_of)(const llorch_gguf *, uint32_t),
                                 const llorch_gguf *g, uint32_t i) {
  uint64_t slot = gguf_hash(name, strlen(name)) & (cap - 1);
  while (index[slot] != 0) {
    uint32_t other = index[slot] - 1;
    if (strcmp(name_of(g, other), name) == 0) return other;
    slot = (slot + 1) & (cap - 1);
  }
  index[slot] = i + 1;
  return -1;
}

static const char *gguf_kv_name_of(const llorch_gguf *g, uint32_t i) {
  return g->kvs[i].key;
}

static const char *gguf_tensor_name_of(const llorch_gguf *g, uint32_t i) {
  return g->tensors[i].name;
}

static int64_t gguf_index_find(const uint32_t *index, uint64_t cap, const char *name,
                               const char *(*name_of)(const llorch_gguf *, uint32_t),
                               const llorch_gguf *g) {
  if (index == NULL || name == NULL) return -1;
  uint64_t slot = gguf_hash(name, strlen(name)) & (cap - 1);
  while (index[slot] != 0) {
    uint32_t i = index[slot] - 1;
    if (strcmp(name_of(g, i), name) == 0) return i;
    slot = (slot + 1) & (cap - 1);
  }
  return -1;
}

/* ---- the cursor: bounds-checked reads ---- */

typedef struct gguf_cursor {
  llorch_gguf *g;
  uint64_t pos;          /* bytes from file start */
  uint64_t need;         /* GGUF_NEED_MORE: bytes of header needed at least */
  char what[160];        /* the item being parsed, for messages */
  llorch_errmsg *em;
} gguf_cursor;

/* n more bytes at pos: 0, EFORMAT past end of file, NEED_MORE past the buffer. */
static int cur_want(gguf_cursor *c, uint64_t n, const char *field) {
  const llorch_gguf *g = c->g;
  if (n > g->file_size - c->pos)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                             "%s: %s at offset %" PRIu64 " (%" PRIu64
                             " bytes) runs past end of file (size %" PRIu64 ")",
                             c->what, field, c->pos, n, g->file_size);
  if (n > g->avail - c->pos) {
    c->need = c->pos + n;
    return GGUF_NEED_MORE;
  }
  return 0;
}

static int cur_u32(gguf_cursor *c, uint32_t *v, const char *field) {
  int rc = cur_want(c, 4, field);
  if (rc != 0) return rc;
  memcpy(v, c->g->base + c->pos, 4);
  c->pos += 4;
  return 0;
}

static int cur_u64(gguf_cursor *c, uint64_t *v, const char *field) {
  int rc = cur_want(c, 8, field);
  if (rc != 0) return rc;
  memcpy(v, c->g->base + c->pos, 8);
  c->pos += 8;
  return 0;
}

/* A string: u64 length then the bytes; *s points into the buffer. */
static int cur_str(gguf_cursor *c, const uint8_t **s, uint64_t *len, const char *field) {
  int rc = cur_u64(c, len, field);
  if (rc != 0) return rc;
  if (*len > c->g->file_size - c->pos)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                             "%s: %s length %" PRIu64 " at offset %" PRIu64
                             " runs past end of file (size %" PRIu64 ")",
                             c->what, field, *len, c->pos - 8, c->g->file_size);
  rc = cur_want(c, *len, field);
  if (rc != 0) return rc;
  *s = c->g->base + c->pos;
  c->pos += *len;
  return 0;
}

/* Key or tensor name: non-empty, bounded, no NUL inside (copies are C strings). */
static int cur_name(gguf_cursor *c, const char **out, uint64_t max_len, const char *field) {
  const uint8_t *s = NULL;
  uint64_t len = 0;
  int rc = cur_str(c, &s, &len, field);
  if (rc != 0) return rc;
  if (len == 0) return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: empty %s", c->what, field);
  if (len > max_len)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: %s of %" PRIu64 " bytes (at most %" PRIu64
                             " allowed)", c->what, field, len, max_len);
  /* names go into C strings and error lines: no NUL, no control characters */
  for (uint64_t i = 0; i < len; i++) {
    if (s[i] == 0)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: %s contains a NUL byte", c->what, field);
    if (s[i] < 0x20 || s[i] == 0x7f)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: %s contains control character 0x%02x at byte %"
                               PRIu64, c->what, field, s[i], i);
  }
  *out = gguf_name_copy(c->g, s, len);
  if (*out == NULL) return llorch_errmsg_set(c->em, LLORCH_ENOMEM, "out of memory copying a %s", field);
  return 0;
}

/* ---- parsing ---- */

static int gguf_parse_kv_value(gguf_cursor *c, llorch_gguf_kv *kv) {
  int rc;
  const uint8_t *p;
  switch (kv->type) {
  case LLORCH_GGUF_STRING: {
    const uint8_t *s;
    uint64_t len;
    if ((rc = cur_str(c, &s, &len, "string value")) != 0) return rc;
    kv->v.str.ptr = (const char *)s;
    kv->v.str.len = len;
    return 0;
  }
  case LLORCH_GGUF_ARRAY: {
    uint32_t et;
    uint64_t n;
    if ((rc = cur_u32(c, &et, "array element type")) != 0) return rc;
    if (et == LLORCH_GGUF_ARRAY)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: nested arrays are not supported", c->what);
    if (et >= LLORCH_GGUF_VTYPE_COUNT)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                               "%s: unknown array element type %" PRIu32 " (expected 0..12)", c->what, et);
    if ((rc = cur_u64(c, &n, "array length")) != 0) return rc;
    kv->arr_type = (llorch_gguf_vtype)et;
    kv->arr_n = n;
    uint64_t remain = c->g->file_size - c->pos;
    uint64_t min_elem = et == LLORCH_GGUF_STRING ? 8 : vtype_sizes[et];
    if (n > remain / min_elem)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                               "%s: array of %" PRIu64 " %s at offset %" PRIu64
                               " cannot fit in the rest of the file (%" PRIu64 " bytes)",
                               c->what, n, vtype_names[et], c->pos, remain);
    kv->arr_data = c->g->base + c->pos;
    if (et != LLORCH_GGUF_STRING) {
      if ((rc = cur_want(c, n * min_elem, "array data")) != 0) return rc;
      c->pos += n * min_elem;
      return 0;
    }
    /* every string of the array is checked here so llorch_gguf_arr_str cannot fail */
    for (uint64_t i = 0; i < n; i++) {
      const uint8_t *s;
      uint64_t len;
      rc = cur_str(c, &s, &len, "array string");
      if (rc < 0) {
        char tail[64];
        snprintf(tail, sizeof tail, " (element %" PRIu64 " of %" PRIu64 ")", i, n);
        size_t l = strlen(c->em ? c->em->text : "");
        if (c->em && l + strlen(tail) < sizeof c->em->text) strcat(c->em->text, tail);
      }
      if (rc != 0) return rc;
    }
    return 0;
  }
  default: {
    uint8_t size = vtype_sizes[kv->type];
    if ((rc = cur_want(c, size, "value")) != 0) return rc;
    p = c->g->base + c->pos;
    c->pos += size;
    switch (kv->type) {
    case LLORCH_GGUF_UINT8: kv->v.u64 = p[0]; break;
    case LLORCH_GGUF_BOOL: kv->v.u64 = p[0] != 0; break;
    case LLORCH_GGUF_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case LLORCH_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u64 = x; break; }
    case LLORCH_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i64 = x; break; }
    case LLORCH_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); kv->v.u64 = x; break; }
    case LLORCH_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i64 = x; break; }
    case LLORCH_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f64 = x; break; }
    case LLORCH_GGUF_UINT64: memcpy(&kv->v.u64, p, 8); break;
    case LLORCH_GGUF_INT64: memcpy(&kv->v.i64, p, 8); break;
    case LLORCH_GGUF_FLOAT64: memcpy(&kv->v.f64, p, 8); break;
    default: break;
    }
    return 0;
  }
  }
}

static int gguf_parse_kvs(gguf_cursor *c) {
  llorch_gguf *g = c->g;
  int rc;
  g->kv_index_cap = gguf_index_cap_for(g->n_kv);
  g->kv_index = calloc(g->kv_index_cap, sizeof *g->kv_index);
  g->kvs = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kvs);
  if (g->kv_index == NULL || g->kvs == NULL)
    return llorch_errmsg_set(c->em, LLORCH_ENOMEM, "out of memory for %" PRIu64 " kvs", g->n_kv);
  for (uint64_t i = 0; i < g->n_kv; i++) {
    llorch_gguf_kv *kv = &g->kvs[i];
    uint32_t type;
    snprintf(c->what, sizeof c->what, "kv %" PRIu64, i);
    if ((rc = cur_name(c, &kv->key, GGUF_MAX_KEY_LEN, "key")) != 0) return rc;
    snprintf(c->what, sizeof c->what, "kv %" PRIu64 " '%.100s'", i, kv->key);
    if ((rc = cur_u32(c, &type, "value type")) != 0) return rc;
    if (type >= LLORCH_GGUF_VTYPE_COUNT)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                               "%s: unknown value type %" PRIu32 " (expected 0..12)", c->what, type);
    kv->type = (llorch_gguf_vtype)type;
    if ((rc = gguf_parse_kv_value(c, kv)) != 0) return rc;
    int64_t dup = gguf_index_insert(g->kv_index, g->kv_index_cap, kv->key, gguf_kv_name_of, g,
                                    (uint32_t)i);
    if (dup >= 0)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "duplicate key '%.100s' (kv %" PRId64
                               " and kv %" PRIu64 ")", kv->key, dup, i);
  }
  /* general.alignment decides where tensor data starts, so check it now */
  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  int64_t ai = gguf_index_find(g->kv_index, g->kv_index_cap, "general.alignment", gguf_kv_name_of, g);
  if (ai >= 0) {
    const llorch_gguf_kv *kv = &g->kvs[ai];
    if (kv->type != LLORCH_GGUF_UINT32)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                               "general.alignment has type %s, expected UINT32", vtype_names[kv->type]);
    if (kv->v.u64 == 0 || (kv->v.u64 & (kv->v.u64 - 1)) != 0)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT,
                               "general.alignment is %" PRIu64 ", expected a power of two", kv->v.u64);
    g->alignment = kv->v.u64;
  }
  return 0;
}

static int gguf_parse_tensor(gguf_cursor *c, uint64_t i) {
  llorch_gguf *g = c->g;
  llorch_gguf_tensor *t = &g->tensors[i];
  int rc;
  snprintf(c->what, sizeof c->what, "tensor %" PRIu64, i);
  if ((rc = cur_name(c, &t->name, GGUF_MAX_NAME_LEN, "name")) != 0) return rc;
  snprintf(c->what, sizeof c->what, "tensor '%s'", t->name);
  if ((rc = cur_u32(c, &t->n_dims, "n_dims")) != 0) return rc;
  if (t->n_dims < 1 || t->n_dims > LLORCH_GGUF_MAX_DIMS)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: n_dims is %" PRIu32 ", expected 1..%d",
                             c->what, t->n_dims, LLORCH_GGUF_MAX_DIMS);
  uint64_t n_elems = 1;
  for (uint32_t d = 0; d < LLORCH_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < t->n_dims; d++) {
    if ((rc = cur_u64(c, &t->ne[d], "dimension")) != 0) return rc;
    if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: ne[%" PRIu32 "] is %" PRIu64
                               ", expected 1..2^63-1", c->what, d, t->ne[d]);
    if (__builtin_mul_overflow(n_elems, t->ne[d], &n_elems) || n_elems > (uint64_t)INT64_MAX)
      return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: element count overflows at ne[%" PRIu32
                               "] = %" PRIu64, c->what, d, t->ne[d]);
  }
  uint32_t type;
  if ((rc = cur_u32(c, &type, "type")) != 0) return rc;
  size_t be, bb;
  if (!llorch_type_geometry((llorch_ggml_type)type, &be, &bb))
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: unknown tensor type %" PRIu32, c->what, type);
  t->type = (llorch_ggml_type)type;
  if (t->ne[0] % be != 0)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: ne[0] = %" PRIu64
                             " is not a multiple of the %s block size %zu",
                             c->what, t->ne[0], llorch_type_name(t->type), be);
  if (__builtin_mul_overflow(n_elems / be, (uint64_t)bb, &t->nbytes))
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: byte size overflows", c->what);
  if ((rc = cur_u64(c, &t->offset, "data offset")) != 0) return rc;
  if (t->offset % g->alignment != 0)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "%s: data offset %" PRIu64
                             " is not a multiple of the alignment %" PRIu64,
                             c->what, t->offset, g->alignment);
  int64_t dup = gguf_index_insert(g->tensor_index, g->tensor_index_cap, t->name,
                                  gguf_tensor_name_of, g, (uint32_t)i);
  if (dup >= 0)
    return llorch_errmsg_set(c->em, LLORCH_EFORMAT, "duplicate tensor name '%s' (tensors %" PRId64
                             " and %" PRIu64 ")", t->name, dup, i);
  return 0;
}

static void gguf_parse_reset(llorch_gguf *g) {
  free(g->kvs);
  free(g->tensors);
  free(g->kv_index);
  free(g->tensor_index);
  g->kvs = NULL;
  g->tensors = NULL;
  g->kv_index = g->tensor_index = NULL;
  while (g->names) {
    gguf_name_block *next = g->names->next;
    free(g->names);
    g->names = next;
  }
}

/* Parses the header at g->base; 0, a negative code, or NEED_MORE (c->need). */
static int gguf_parse(llorch_gguf *g, uint64_t *need, llorch_errmsg *em) {
  gguf_cursor c = {.g = g, .em = em};
  int rc;
  uint32_t magic;
  snprintf(c.what, sizeof c.what, "header");
  if (g->file_size < 24)
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "file is %" PRIu64 " bytes, too small for a GGUF header (24 bytes)",
                             g->file_size);
  if ((rc = cur_u32(&c, &magic, "magic")) != 0) goto out;
  if (magic != GGUF_MAGIC) {
    char m[5];
    for (int i = 0; i < 4; i++) {
      char ch = (char)((magic >> (8 * i)) & 0xff);
      m[i] = ch >= 0x20 && ch < 0x7f ? ch : '.';
    }
    m[4] = '\0';
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "bad magic 0x%08" PRIx32 " ('%s'), expected 'GGUF': not a GGUF file",
                             magic, m);
  }
  if ((rc = cur_u32(&c, &g->version, "version")) != 0) goto out;
  if (g->version != 2 && g->version != 3) {
    if (g->version >= 0x10000u)
      return llorch_errmsg_set(em, LLORCH_EFORMAT, "GGUF version 0x%08" PRIx32
                               " looks byte-swapped: big-endian files are not supported", g->version);
    return llorch_errmsg_set(em, LLORCH_EFORMAT,
                             "unsupported GGUF version %" PRIu32 " (expected 2 or 3)", g->version);
  }
  if ((rc = cur_u64(&c, &g->n_tensors, "tensor count")) != 0) goto out;
  if ((rc = cur_u64(&c, &g->n_kv, "kv count")) != 0) goto out;
  /* bound the counts before allocating: the smallest kv takes 14 bytes (8 key
   * length, 1 key byte, 4 type, 1 value byte), the smallest tensor info 33 */
  uint64_t remain = g->file_size - c.pos;
  if (g->n_kv > GGUF_MAX_ITEMS || g->n_kv > remain / 14)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "kv count %" PRIu64
                             " cannot fit in the file (size %" PRIu64 ")", g->n_kv, g->file_size);
  if (g->n_tensors > GGUF_MAX_ITEMS || g->n_tensors > remain / 33)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "tensor count %" PRIu64
                             " cannot fit in the file (size %" PRIu64 ")", g->n_tensors, g->file_size);
  if ((rc = gguf_parse_kvs(&c)) != 0) goto out;

  g->tensor_index_cap = gguf_index_cap_for(g->n_tensors);
  g->tensor_index = calloc(g->tensor_index_cap, sizeof *g->tensor_index);
  g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
  if (g->tensor_index == NULL || g->tensors == NULL)
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory for %" PRIu64 " tensors", g->n_tensors);
  for (uint64_t i = 0; i < g->n_tensors; i++)
    if ((rc = gguf_parse_tensor(&c, i)) != 0) goto out;

  /* tensor data starts at the next multiple of the alignment */
  uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
  g->data_offset = c.pos + pad; /* cannot overflow: pos <= file_size < 2^63 */
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    llorch_gguf_tensor *t = &g->tensors[i];
    uint64_t room = g->file_size > g->data_offset ? g->file_size - g->data_offset : 0;
    if (t->offset > room || t->nbytes > room - t->offset)
      return llorch_errmsg_set(em, LLORCH_EFORMAT,
                               "tensor '%s': data [offset %" PRIu64 ", %" PRIu64
                               " bytes] runs past end of file (size %" PRIu64 ")",
                               t->name, g->data_offset + t->offset, t->nbytes, g->file_size);
    t->data = g->header_only ? NULL : g->base + g->data_offset + t->offset;
  }
  return 0;
out:
  if (rc == GGUF_NEED_MORE) *need = c.need;
  return rc;
}

/* ---- opening and closing ---- */

static int gguf_open_common(llorch_gguf *g, llorch_errmsg *em) {
  uint64_t need = 0;
  int rc = gguf_parse(g, &need, em);
  if (rc == GGUF_NEED_MORE) /* only the pread path can run short of bytes */
    rc = llorch_errmsg_set(em, LLORCH_EIO, "internal: header needs %" PRIu64 " bytes", need);
  return rc;
}

int llorch_gguf_open_memory(llorch_gguf **out, const void *buf, size_t len, unsigned flags,
                            llorch_errmsg *em) {
  *out = NULL;
  llorch_gguf *g = calloc(1, sizeof *g);
  if (g == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  g->base = buf;
  g->avail = g->file_size = len;
  g->header_only = (flags & LLORCH_GGUF_OPEN_HEADER_ONLY) != 0;
  int rc = gguf_open_common(g, em);
  if (rc != 0) {
    llorch_gguf_close(g);
    return rc;
  }
  *out = g;
  return 0;
}

/* HEADER_ONLY: pread a growing prefix until the whole header parses. */
static int gguf_read_header(llorch_gguf *g, int fd, const char *path, llorch_errmsg *em) {
  uint64_t want = g->file_size < GGUF_HEADER_READ_FIRST ? g->file_size : GGUF_HEADER_READ_FIRST;
  for (;;) {
    uint8_t *buf = realloc(g->header_buf, want ? want : 1);
    if (buf == NULL) return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory reading the header");
    g->header_buf = buf;
    uint64_t got = 0;
    while (got < want) {
      ssize_t r = pread(fd, buf + got, want - got, (off_t)got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return llorch_errmsg_set(em, LLORCH_EIO, "cannot read '%s': %s", path, strerror(errno));
      if (r == 0) break; /* shrank under us: parse what is there */
      got += (uint64_t)r;
    }
    g->base = buf;
    g->avail = got;
    if (got < want) g->file_size = got;
    uint64_t need = 0;
    int rc = gguf_parse(g, &need, em);
    if (rc != GGUF_NEED_MORE) return rc;
    gguf_parse_reset(g);
    /* grow geometrically so a long vocabulary costs a few reads, not many */
    uint64_t next = want * 2 > need ? want * 2 : need;
    want = next < g->file_size ? next : g->file_size;
  }
}

int llorch_gguf_open(llorch_gguf **out, const char *path, unsigned flags, llorch_errmsg *em) {
  *out = NULL;
  int rc;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return llorch_errmsg_set(em, errno == ENOENT ? LLORCH_ENOENT : LLORCH_EIO,
                             "cannot open '%s': %s", path, strerror(errno));
  llorch_gguf *g = calloc(1, sizeof *g);
  if (g == NULL) {
    rc = llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
    goto fail_alloc;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = llorch_errmsg_set(em, LLORCH_EIO, "cannot stat '%s': %s", path, strerror(errno));
    goto fail_parse;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = llorch_errmsg_set(em, LLORCH_EFORMAT, "'%s' is not a regular file", path);
    goto fail_parse;
  }
  g->file_size = (uint64_t)st.st_size;
  g->header_only = (flags & LLORCH_GGUF_OPEN_HEADER_ONLY) != 0;
  if (g->header_only) {
    rc = gguf_read_header(g, fd, path, em);
  } else if (g->file_size < 24) {
    rc = gguf_open_common(g, em); /* reports "too small" without mapping */
  } else {
    g->map = mmap(NULL, (size_t)g->file_size, PROT_READ, MAP_SHARED, fd, 0);
    if (g->map == MAP_FAILED) {
      g->map = NULL;
      rc = llorch_errmsg_set(em, LLORCH_EIO, "cannot mmap '%s' (%" PRIu64 " bytes): %s", path,
                             g->file_size, strerror(errno));
      goto fail_parse;
    }
    g->base = g->map;
    g->avail = g->file_size;
    rc = gguf_open_common(g, em);
  }
  if (rc != 0) goto fail_parse;
  close(fd);
  *out = g;
  return 0;

fail_parse:
  if (em && rc != 0) { /* say which file: "model.gguf: tensor 'x': ..." */
    char tmp[sizeof em->text];
    if (strstr(em->text, path) == NULL) {
      /* truncation of an over-long line is acceptable here */
      int n = snprintf(tmp, sizeof tmp, "%.200s: ", path);
      size_t l = strlen(em->text);
      if (n > 0 && (size_t)n + l < sizeof tmp) {
        memcpy(tmp + n, em->text, l + 1);
        memcpy(em->text, tmp, sizeof tmp);
      }
    }
  }
  llorch_gguf_close(g);
fail_alloc:
  close(fd);
  return rc;
}

void llorch_gguf_close(llorch_gguf *g) {
  if (g == NULL) return;
  gguf_parse_reset(g);
  if (g->map) munmap(g->map, (size_t)g->file_size);
  free(g->header_buf);
  free(g);
}

/* ---- accessors ---- */

uint32_t llorch_gguf_version(const llorch_gguf *g) { return g->version; }
uint64_t llorch_gguf_file_size(const llorch_gguf *g) { return g->file_size; }
uint64_t llorch_gguf_alignment(const llorch_gguf *g) { return g->alignment; }
uint64_t llorch_gguf_data_offset(const llorch_gguf *g) { return g->data_offset; }
uint64_t llorch_gguf_n_kv(const llorch_gguf *g) { return g->n_kv; }
uint64_t llorch_gguf_n_tensors(const llorch_gguf *g) { return g->n_tensors; }

const llorch_gguf_kv *llorch_gguf_kv_at(const llorch_gguf *g, uint64_t i) {
  return i < g->n_kv ? &g->kvs[i] : NULL;
}

const llorch_gguf_kv *llorch_gguf_find_kv(const llorch_gguf *g, const char *key) {
  int64_t i = gguf_index_find(g->kv_index, g->kv_index_cap, key, gguf_kv_name_of, g);
  return i >= 0 ? &g->kvs[i] : NULL;
}

const llorch_gguf_tensor *llorch_gguf_tensor_at(const llorch_gguf *g, uint64_t i) {
  return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const llorch_gguf_tensor *llorch_gguf_find_tensor(const llorch_gguf *g, const char *name) {
  int64_t i = gguf_index_find(g->tensor_index, g->tensor_index_cap, name, gguf_tensor_name_of, g);
  return i >= 0 ? &g->tensors[i] : NULL;
}

/* ---- typed getters ---- */

static bool gguf_vtype_unsigned(llorch_gguf_vtype t) {
  return t == LLORCH_GGUF_UINT8 || t == LLORCH_GGUF_UINT16 || t == LLORCH_GGUF_UINT32 ||
         t == LLORCH_GGUF_UINT64;
}

static bool gguf_vtype_signed(llorch_gguf_vtype t) {
  return t == LLORCH_GGUF_INT8 || t == LLORCH_GGUF_INT16 || t == LLORCH_GGUF_INT32 ||
         t == LLORCH_GGUF_INT64;
}

static int gguf_find_typed(const llorch_gguf *g, const char *key, const llorch_gguf_kv **kv,
                           llorch_errmsg *em) {
  *kv = llorch_gguf_find_kv(g, key);
  if (*kv == NULL) return llorch_errmsg_set(em, LLORCH_ENOTFOUND, "key '%s' not found", key);
  return 0;
}

static int gguf_type_error(const llorch_gguf_kv *kv, const char *expected, llorch_errmsg *em) {
  return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' has type %s, expected %s", kv->key,
                           vtype_names[kv->type], expected);
}

/* Any integer kv as a (negative flag, magnitude) pair so all ranges check alike. */
static int gguf_get_int(const llorch_gguf *g, const char *key, const llorch_gguf_kv **kv,
                        bool *neg, uint64_t *mag, llorch_errmsg *em) {
  int rc = gguf_find_typed(g, key, kv, em);
  if (rc != 0) return rc;
  if (gguf_vtype_unsigned((*kv)->type)) {
    *neg = false;
    *mag = (*kv)->v.u64;
  } else if (gguf_vtype_signed((*kv)->type)) {
    *neg = (*kv)->v.i64 < 0;
    *mag = *neg ? (uint64_t)0 - (uint64_t)(*kv)->v.i64 : (uint64_t)(*kv)->v.i64;
  } else {
    return gguf_type_error(*kv, "an integer", em);
  }
  return 0;
}

int llorch_gguf_get_u32(const llorch_gguf *g, const char *key, uint32_t *out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv = NULL;
  bool neg = false;
  uint64_t mag = 0;
  int rc = gguf_get_int(g, key, &kv, &neg, &mag, em);
  if (rc != 0) return rc;
  if (neg || mag > UINT32_MAX)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' is %s%" PRIu64 ", expected 0..%" PRIu32,
                             key, neg ? "-" : "", mag, UINT32_MAX);
  *out = (uint32_t)mag;
  return 0;
}

int llorch_gguf_get_u64(const llorch_gguf *g, const char *key, uint64_t *out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv = NULL;
  bool neg = false;
  uint64_t mag = 0;
  int rc = gguf_get_int(g, key, &kv, &neg, &mag, em);
  if (rc != 0) return rc;
  if (neg)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' is -%" PRIu64 ", expected >= 0", key, mag);
  *out = mag;
  return 0;
}

int llorch_gguf_get_i64(const llorch_gguf *g, const char *key, int64_t *out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv = NULL;
  bool neg = false;
  uint64_t mag = 0;
  int rc = gguf_get_int(g, key, &kv, &neg, &mag, em);
  if (rc != 0) return rc;
  if (!neg && mag > (uint64_t)INT64_MAX)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' is %" PRIu64 ", expected at most %" PRId64,
                             key, mag, INT64_MAX);
  *out = neg ? kv->v.i64 : (int64_t)mag;
  return 0;
}

int llorch_gguf_get_f32(const llorch_gguf *g, const char *key, float *out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv;
  int rc = gguf_find_typed(g, key, &kv, em);
  if (rc != 0) return rc;
  if (kv->type == LLORCH_GGUF_FLOAT32 || kv->type == LLORCH_GGUF_FLOAT64)
    *out = (float)kv->v.f64;
  else if (gguf_vtype_unsigned(kv->type))
    *out = (float)kv->v.u64;
  else if (gguf_vtype_signed(kv->type))
    *out = (float)kv->v.i64;
  else
    return gguf_type_error(kv, "a number", em);
  return 0;
}

int llorch_gguf_get_bool(const llorch_gguf *g, const char *key, bool *out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv;
  int rc = gguf_find_typed(g, key, &kv, em);
  if (rc != 0) return rc;
  if (kv->type != LLORCH_GGUF_BOOL) return gguf_type_error(kv, "BOOL", em);
  *out = kv->v.u64 != 0;
  return 0;
}

int llorch_gguf_get_str(const llorch_gguf *g, const char *key, llorch_gguf_str *out,
                        llorch_errmsg *em) {
  const llorch_gguf_kv *kv;
  int rc = gguf_find_typed(g, key, &kv, em);
  if (rc != 0) return rc;
  if (kv->type != LLORCH_GGUF_STRING) return gguf_type_error(kv, "STRING", em);
  *out = kv->v.str;
  return 0;
}

int llorch_gguf_get_arr(const llorch_gguf *g, const char *key, llorch_gguf_vtype elem_type,
                        const llorch_gguf_kv **out, llorch_errmsg *em) {
  const llorch_gguf_kv *kv;
  int rc = gguf_find_typed(g, key, &kv, em);
  if (rc != 0) return rc;
  if (kv->type != LLORCH_GGUF_ARRAY)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' has type %s, expected ARRAY of %s", key,
                             vtype_names[kv->type], gguf_vtype_name(elem_type));
  if (kv->arr_type != elem_type)
    return llorch_errmsg_set(em, LLORCH_EFORMAT, "key '%s' is an ARRAY of %s, expected ARRAY of %s",
                             key, vtype_names[kv->arr_type], gguf_vtype_name(elem_type));
  *out = kv;
  return 0;
}

/* ---- array elements ---- */

llorch_gguf_str llorch_gguf_arr_str(const llorch_gguf_kv *kv, uint64_t index, uint64_t *cursor) {
  llorch_gguf_str s = {NULL, 0};
  if (kv->type != LLORCH_GGUF_ARRAY || kv->arr_type != LLORCH_GGUF_STRING || index >= kv->arr_n)
    return s;
  uint64_t off = 0;
  if (cursor != NULL) {
    off = *cursor;
  } else { /* random access: walk the lengths (validated at open) */
    for (uint64_t i = 0; i < index; i++) {
      uint64_t len;
      memcpy(&len, kv->arr_data + off, 8);
      off += 8 + len;
    }
  }
  memcpy(&s.len, kv->arr_data + off, 8);
  s.ptr = (const char *)kv->arr_data + off + 8;
  if (cursor != NULL) *cursor = off + 8 + s.len;
  return s;
}

static bool gguf_arr_numeric(const llorch_gguf_kv *kv, uint64_t i) {
  return kv->type == LLORCH_GGUF_ARRAY && i < kv->arr_n && kv->arr_type != LLORCH_GGUF_STRING &&
         kv->arr_type != LLORCH_GGUF_ARRAY;
}

int64_t llorch_gguf_arr_i64(const llorch_gguf_kv *kv, uint64_t i) {
  if (!gguf_arr_numeric(kv, i)) return 0;
  const uint8_t *p = kv->arr_data + i * vtype_sizes[kv->arr_type];
  switch (kv->arr_type) {
  case LLORCH_GGUF_UINT8: case LLORCH_GGUF_BOOL: return p[0];
  case LLORCH_GGUF_INT8: return (int8_t)p[0];
  case LLORCH_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); return x; }
  case LLORCH_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); return x; }
  case LLORCH_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); return x; }
  case LLORCH_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); return x; }
  case LLORCH_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); return (int64_t)x; }
  case LLORCH_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); return x; }
  case LLORCH_GGUF_FLOAT32: case LLORCH_GGUF_FLOAT64: {
    double d = llorch_gguf_arr_f64(kv, i); /* out-of-range casts are UB: clamp to 0 */
    return d > -9.2e18 && d < 9.2e18 ? (int64_t)d : 0;
  }
  default: return 0;
  }
}

double llorch_gguf_arr_f64(const llorch_gguf_kv *kv, uint64_t i) {
  if (!gguf_arr_numeric(kv, i)) return 0.0;
  const uint8_t *p = kv->arr_data + i * vtype_sizes[kv->arr_type];
  switch (kv->arr_type) {
  case LLORCH_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); return x; }
  case LLORCH_GGUF_FLOAT64: { double x; memcpy(&x, p, 8); return x; }
  case LLORCH_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); return (double)x; }
  default: return (double)llorch_gguf_arr_i64(kv, i);
  }
}
