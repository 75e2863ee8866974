/*
 * GGUF v3 model files: a validating reader over mmap, and a writer.
 *
 * The reader checks everything before anything is used (magic, version,
 * counts, string and array lengths against the file size, unique tensor
 * names, dimensions and byte sizes without overflow, alignment, offsets inside
 * the file, known tensor types). A hostile or truncated file gets a negative
 * error code and one line in the llorch_errmsg naming what is wrong; it never
 * crashes. Weights are never copied: tensor data pointers point into the map.
 *
 * Layout of a file (all little-endian):
 *   u32 magic "GGUF", u32 version (3), u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 value_type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
 *   padding to general.alignment (default 32), tensor data.
 * A string is u64 length + bytes (no NUL). An array is u32 elem_type, u64 n, elems.
 */
#ifndef LLORCH_GGUF_H
#define LLORCH_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/error.h"

/* ---- value types of metadata ---- */
typedef enum llorch_gguf_vtype {
  LLORCH_GGUF_UINT8 = 0,
  LLORCH_GGUF_INT8 = 1,
  LLORCH_GGUF_UINT16 = 2,
  LLORCH_GGUF_INT16 = 3,
  LLORCH_GGUF_UINT32 = 4,
  LLORCH_GGUF_INT32 = 5,
  LLORCH_GGUF_FLOAT32 = 6,
  LLORCH_GGUF_BOOL = 7,
  LLORCH_GGUF_STRING = 8,
  LLORCH_GGUF_ARRAY = 9,
  LLORCH_GGUF_UINT64 = 10,
  LLORCH_GGUF_INT64 = 11,
  LLORCH_GGUF_FLOAT64 = 12,
  LLORCH_GGUF_VTYPE_COUNT
} llorch_gguf_vtype;

/* ---- tensor element types (ggml's numbering, which GGUF files store) ---- */
typedef enum llorch_ggml_type {
  LLORCH_TYPE_F32 = 0,
  LLORCH_TYPE_F16 = 1,
  LLORCH_TYPE_Q4_0 = 2,
  LLORCH_TYPE_Q4_1 = 3,
  LLORCH_TYPE_Q5_0 = 6,
  LLORCH_TYPE_Q5_1 = 7,
  LLORCH_TYPE_Q8_0 = 8,
  LLORCH_TYPE_Q8_1 = 9,
  LLORCH_TYPE_Q2_K = 10,
  LLORCH_TYPE_Q3_K = 11,
  LLORCH_TYPE_Q4_K = 12,
  LLORCH_TYPE_Q5_K = 13,
  LLORCH_TYPE_Q6_K = 14,
  LLORCH_TYPE_Q8_K = 15,
  LLORCH_TYPE_BF16 = 30,
  LLORCH_TYPE_COUNT = 40
} llorch_ggml_type;

/*
 * Block geometry of a type: a row of ne0 elements takes
 * ne0 / block_elems * block_bytes bytes (ne0 must be a multiple of
 * block_elems). Returns false for types llorch does not know the layout of.
 * Known: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K (layouts are
 * needed to validate sizes even of types the engine cannot run).
 */
bool llorch_type_geometry(llorch_ggml_type t, size_t *block_elems, size_t *block_bytes);
/* "F16", "Q4_K", ...; "?" for unknown. */
const char *llorch_type_name(llorch_ggml_type t);
/* Case-insensitive "f16", "q4_k", ...; returns 0 or LLORCH_EINVAL. */
int llorch_type_parse(const char *s, llorch_ggml_type *out);

/* ---- the reader ---- */

#define LLORCH_GGUF_MAX_DIMS 4

typedef struct llorch_gguf_str {
  const char *ptr; /* into the map: NOT NUL-terminated */
  uint64_t len;    /* bytes */
} llorch_gguf_str;

typedef struct llorch_gguf_tensor {
  const char *name;        /* NUL-terminated copy owned by the llorch_gguf */
  uint32_t n_dims;
  uint64_t ne[LLORCH_GGUF_MAX_DIMS]; /* elements per dim, ne[0] fastest; unused = 1 */
  llorch_ggml_type type;
  uint64_t offset;         /* bytes from the start of the data section */
  uint64_t nbytes;         /* bytes of data */
  const void *data;        /* into the map, or NULL for a vocab-only/header-only open */
} llorch_gguf_tensor;

typedef struct llorch_gguf_kv {
  const char *key;         /* NUL-terminated copy owned by the llorch_gguf */
  llorch_gguf_vtype type;
  /* for ARRAY: element type and count; arr_data points at the first element in
   * the map (strings: a sequence of u64 len + bytes, use llorch_gguf_arr_str) */
  llorch_gguf_vtype arr_type;
  uint64_t arr_n;
  const uint8_t *arr_data;
  union {
    uint64_t u64; /* all unsigned ints and bool widened */
    int64_t i64;  /* all signed ints widened */
    double f64;   /* FLOAT32 and FLOAT64 widened */
    llorch_gguf_str str;
  } v;
} llorch_gguf_kv;

typedef struct llorch_gguf llorch_gguf;

typedef enum llorch_gguf_open_flags {
  LLORCH_GGUF_OPEN_DEFAULT = 0,
  /* Only the header is read (pool managers scanning model directories): the
   * tensor table is validated against the file size, data pointers are NULL
   * and the data section is never touched. */
  LLORCH_GGUF_OPEN_HEADER_ONLY = 1,
} llorch_gguf_open_flags;

/*
 * Opens and validates path (mmap, read-only, shared; HEADER_ONLY: pread of the
 * header only). Returns 0 with *out set, or LLORCH_ENOENT / LLORCH_EIO (cannot
 * open, stat, read or map), LLORCH_EFORMAT (anything wrong in the file) or
 * LLORCH_ENOMEM, with *out NULL and em = "<path>: <what is wrong>". Keys and
 * tensor names must be non-empty without NUL or control characters (tensor
 * names at most 63 bytes, as ggml); at most 2^24 kvs and 2^24 tensors.
 */
int llorch_gguf_open(llorch_gguf **out, const char *path, unsigned flags,
                     llorch_errmsg *em);
/* Same validation over a caller-owned buffer (fuzzing, tests). The buffer
 * must outlive the handle. */
int llorch_gguf_open_memory(llorch_gguf **out, const void *buf, size_t len,
                            unsigned flags, llorch_errmsg *em);
void llorch_gguf_close(llorch_gguf *g);

uint32_t llorch_gguf_version(const llorch_gguf *g);
uint64_t llorch_gguf_file_size(const llorch_gguf *g);       /* bytes */
uint64_t llorch_gguf_alignment(const llorch_gguf *g);       /* bytes */
uint64_t llorch_gguf_data_offset(const llorch_gguf *g);     /* bytes from file start */

uint64_t llorch_gguf_n_kv(const llorch_gguf *g);
const llorch_gguf_kv *llorch_gguf_kv_at(const llorch_gguf *g, uint64_t i);
const llorch_gguf_kv *llorch_gguf_find_kv(const llorch_gguf *g, const char *key);

/*
 * Typed getters. Each returns 0, LLORCH_ENOTFOUND when the key is absent, or
 * LLORCH_EFORMAT (with em naming the key, the type found and the type
 * expected) when present with a type that cannot be converted. Integer getters
 * accept any integer type whose value fits.
 */
int llorch_gguf_get_u32(const llorch_gguf *g, const char *key, uint32_t *out, llorch_errmsg *em);
int llorch_gguf_get_u64(const llorch_gguf *g, const char *key, uint64_t *out, llorch_errmsg *em);
int llorch_gguf_get_i64(const llorch_gguf *g, const char *key, int64_t *out, llorch_errmsg *em);
int llorch_gguf_get_f32(const llorch_gguf *g, const char *key, float *out, llorch_errmsg *em);
int llorch_gguf_get_bool(const llorch_gguf *g, const char *key, bool *out, llorch_errmsg *em);
int llorch_gguf_get_str(const llorch_gguf *g, const char *key, llorch_gguf_str *out, llorch_errmsg *em);
/* Array getter: checks the element type; *out is the kv (arr_n, arr_data). */
int llorch_gguf_get_arr(const llorch_gguf *g, const char *key, llorch_gguf_vtype elem_type,
                        const llorch_gguf_kv **out, llorch_errmsg *em);

/*
 * Iterates the strings of a string array: *cursor starts at 0 and is advanced
 * past the returned element (index is then only range-checked). With a NULL
 * cursor, element index is found by walking from the start (O(index)).
 * Validation at open guarantees every element is inside the file, so this
 * cannot fail for an array returned by the reader; a non-string kv or an
 * index out of range gives {NULL, 0}.
 */
llorch_gguf_str llorch_gguf_arr_str(const llorch_gguf_kv *kv, uint64_t index, uint64_t *cursor);
/* Numeric array element i widened (u32/i32/f32 arrays etc.). */
double llorch_gguf_arr_f64(const llorch_gguf_kv *kv, uint64_t i);
int64_t llorch_gguf_arr_i64(const llorch_gguf_kv *kv, uint64_t i);

uint64_t llorch_gguf_n_tensors(const llorch_gguf *g);
const llorch_gguf_tensor *llorch_gguf_tensor_at(const llorch_gguf *g, uint64_t i);
const llorch_gguf_tensor *llorch_gguf_find_tensor(const llorch_gguf *g, const char *name);

/* ---- the writer (llorch synth, tests) ---- */

typedef struct llorch_gguf_writer llorch_gguf_writer;

int llorch_gguf_writer_init(llorch_gguf_writer **out, uint32_t alignment);
void llorch_gguf_writer_free(llorch_gguf_writer *w);

int llorch_gguf_writer_set_u32(llorch_gguf_writer *w, const char *key, uint32_t v);
int llorch_gguf_writer_set_i32(llorch_gguf_writer *w, const char *key, int32_t v);
int llorch_gguf_writer_set_u64(llorch_gguf_writer *w, const char *key, uint64_t v);
int llorch_gguf_writer_set_f32(llorch_gguf_writer *w, const char *key, float v);
int llorch_gguf_writer_set_bool(llorch_gguf_writer *w, const char *key, bool v);
int llorch_gguf_writer_set_str(llorch_gguf_writer *w, const char *key, const char *v);
/* Drops a key set earlier (order of the others kept); LLORCH_ENOTFOUND if none. */
int llorch_gguf_writer_remove_kv(llorch_gguf_writer *w, const char *key);
/* Any fixed-size scalar type (UINT8..FLOAT64, BOOL as one byte); v points at
 * a value of that type's C size. Setting a key that exists replaces it. */
int llorch_gguf_writer_set_value(llorch_gguf_writer *w, const char *key, llorch_gguf_vtype t,
                                 const void *v);
/* Arrays of numbers: elem_type one of the fixed-size vtypes; data is n elements. */
int llorch_gguf_writer_set_arr(llorch_gguf_writer *w, const char *key, llorch_gguf_vtype elem_type,
                               const void *data, uint64_t n);
int llorch_gguf_writer_set_arr_str(llorch_gguf_writer *w, const char *key,
                                   const char *const *strs, uint64_t n);
/* Copies one kv (any type, arrays included) from a reader: --vocab-from. */
int llorch_gguf_writer_copy_kv(llorch_gguf_writer *w, const llorch_gguf_kv *kv);
/*
 * Adds a tensor; data (nbytes per the type geometry) is copied into the writer.
 * Tensor adders return LLORCH_EINVAL for a bad name (empty or over 63 bytes),
 * type, n_dims (1..4) or ne (0, overflow, ne[0] not a block multiple), and
 * LLORCH_EEXIST for a duplicate name. Tensors are written in the order added,
 * each padded to the alignment (as llama.cpp's reader requires).
 */
int llorch_gguf_writer_add_tensor(llorch_gguf_writer *w, const char *name, llorch_ggml_type type,
                                  uint32_t n_dims, const uint64_t *ne, const void *data);
/*
 * Adds a tensor whose bytes are produced at write time by fill(ctx, dst,
 * nbytes), so a multi-gigabyte synthesized model never sits in memory whole.
 * fill may be called several times with consecutive chunks, each a whole
 * number of rows (ne[0] elements); it returns 0 or a negative code that
 * aborts the write.
 */
typedef int (*llorch_gguf_fill_fn)(void *ctx, const char *tensor_name, uint64_t offset,
                                   void *dst, uint64_t nbytes);
int llorch_gguf_writer_add_tensor_fill(llorch_gguf_writer *w, const char *name,
                                       llorch_ggml_type type, uint32_t n_dims,
                                       const uint64_t *ne, llorch_gguf_fill_fn fill,
                                       void *ctx);
/*
 * Writes GGUF v3 to "<path>.tmp.<pid>", fsyncs it and renames it to path (a
 * reader never sees a partial file; on failure the temporary is removed).
 * Adds general.alignment when the alignment is not the default 32.
 */
int llorch_gguf_writer_write_file(llorch_gguf_writer *w, const char *path, llorch_errmsg *em);

#endif /* LLORCH_GGUF_H */
