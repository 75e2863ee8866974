/*
 * GGUF reader and writer. The reader is tested on files built byte by byte
 * here (not by the writer), with a table of corruptions each expecting its
 * own message fragment, every truncation length, and byte flips; the writer
 * by round trips of every value type through the reader, on disk.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "llorch/gguf.h"
#include "llorch/quant.h"

/* ---- a byte builder for hand-made files ---- */

typedef struct bbuf {
  uint8_t p[4096];
  size_t len;
} bbuf;

static void b_put(bbuf *b, const void *src, size_t n) {
  assert_true(b->len + n <= sizeof b->p);
  memcpy(b->p + b->len, src, n);
  b->len += n;
}
static void b_u32(bbuf *b, uint32_t v) { b_put(b, &v, 4); }
static void b_u64(bbuf *b, uint64_t v) { b_put(b, &v, 8); }
static void b_str(bbuf *b, const char *s) {
  b_u64(b, strlen(s));
  b_put(b, s, strlen(s));
}
static void patch32(bbuf *b, size_t off, uint32_t v) { memcpy(b->p + off, &v, 4); }
static void patch64(bbuf *b, size_t off, uint64_t v) { memcpy(b->p + off, &v, 8); }

typedef struct spec {
  uint32_t version;
  const char *key0;
  const char *kv2_key;
  uint32_t kv2_type;
  uint64_t kv2_val; /* written as 4 or 8 bytes per kv2_type */
  const char *t0_name, *t1_name;
  uint32_t alignment; /* used for offsets and padding only */
} spec;

/* offsets of fields in the built file, for patching and expected messages */
typedef struct layout {
  size_t version, n_tensors, n_kv, key0_len, arr_elem_type, arr_n, kv2_type;
  size_t t0_ndims, t0_ne0, t0_ne1, t0_type, t0_offset, t1_name, t1_offset;
  size_t data_offset; /* file offset of tensor data */
} layout;

static spec spec_default(void) {
  return (spec){3, "general.architecture", "test.u32", 4 /* UINT32 */, 7, "w", "b", 32};
}

/*
 * kv0: key0 = STRING "llama"; kv1: "test.arr" = ARRAY of STRING {"a", "bc"};
 * kv2: kv2_key = kv2_val; tensor "w" Q8_0 {32, 2} (68 bytes) at 0, tensor "b"
 * F32 {4} (16 bytes) at the next aligned offset; data ends at end of file.
 */
static void build(bbuf *b, layout *L, spec s) {
  memset(b, 0, sizeof *b);
  b_u32(b, 0x46554747u);
  L->version = b->len;
  b_u32(b, s.version);
  L->n_tensors = b->len;
  b_u64(b, 2);
  L->n_kv = b->len;
  b_u64(b, 3);
  L->key0_len = b->len;
  b_str(b, s.key0);
  b_u32(b, 8);
  b_str(b, "llama");
  b_str(b, "test.arr");
  b_u32(b, 9);
  L->arr_elem_type = b->len;
  b_u32(b, 8);
  L->arr_n = b->len;
  b_u64(b, 2);
  b_str(b, "a");
  b_str(b, "bc");
  b_str(b, s.kv2_key);
  L->kv2_type = b->len;
  b_u32(b, s.kv2_type);
  if (s.kv2_type == 10 || s.kv2_type == 11 || s.kv2_type == 12)
    b_u64(b, s.kv2_val);
  else
    b_u32(b, (uint32_t)s.kv2_val);
  b_str(b, s.t0_name);
  L->t0_ndims = b->len;
  b_u32(b, 2);
  L->t0_ne0 = b->len;
  b_u64(b, 32);
  L->t0_ne1 = b->len;
  b_u64(b, 2);
  L->t0_type = b->len;
  b_u32(b, LLORCH_TYPE_Q8_0);
  L->t0_offset = b->len;
  b_u64(b, 0);
  uint64_t t1_off = (68 + s.alignment - 1) / s.alignment * s.alignment;
  b_u64(b, strlen(s.t1_name));
  L->t1_name = b->len;
  b_put(b, s.t1_name, strlen(s.t1_name));
  b_u32(b, 1);
  b_u64(b, 4);
  b_u32(b, LLORCH_TYPE_F32);
  L->t1_offset = b->len;
  b_u64(b, t1_off);
  while (b->len % s.alignment) b->p[b->len++] = 0;
  L->data_offset = b->len;
  for (int i = 0; i < 68; i++) b->p[b->len++] = (uint8_t)i; /* tensor w */
  while ((b->len - L->data_offset) < t1_off) b->p[b->len++] = 0;
  const float bias[4] = {1.0f, -2.0f, 0.5f, 4.0f};
  b_put(b, bias, sizeof bias);
}

static int open_buf(const bbuf *b, size_t len, llorch_gguf **g, llorch_errmsg *em) {
  memset(em, 0, sizeof *em);
  return llorch_gguf_open_memory(g, b->p, len, LLORCH_GGUF_OPEN_DEFAULT, em);
}

static void expect_error(const bbuf *b, size_t len, int code, const char *fragment) {
  llorch_gguf *g = (llorch_gguf *)0x1;
  llorch_errmsg em;
  int rc = open_buf(b, len, &g, &em);
  if (rc != code || strstr(em.text, fragment) == NULL) {
    print_error("rc %d (want %d), message '%s' (want '%s')\n", rc, code, em.text, fragment);
    fail();
  }
  assert_null(g);
}

/* ---- the valid file ---- */

static void test_valid_file(void **state) {
  (void)state;
  bbuf b;
  layout L;
  build(&b, &L, spec_default());
  llorch_gguf *g;
  llorch_errmsg em;
  assert_int_equal(open_buf(&b, b.len, &g, &em), 0);
  assert_int_equal(llorch_gguf_version(g), 3);
  assert_int_equal(llorch_gguf_alignment(g), 32);
  assert_int_equal(llorch_gguf_data_offset(g), L.data_offset);
  assert_int_equal(llorch_gguf_file_size(g), b.len);
  assert_int_equal(llorch_gguf_n_kv(g), 3);
  assert_int_equal(llorch_gguf_n_tensors(g), 2);

  llorch_gguf_str s;
  assert_int_equal(llorch_gguf_get_str(g, "general.architecture", &s, &em), 0);
  assert_int_equal(s.len, 5);
  assert_memory_equal(s.ptr, "llama", 5);
  const llorch_gguf_kv *arr;
  assert_int_equal(llorch_gguf_get_arr(g, "test.arr", LLORCH_GGUF_STRING, &arr, &em), 0);
  assert_int_equal(arr->arr_n, 2);
  uint64_t cur = 0;
  s = llorch_gguf_arr_str(arr, 0, &cur);
  assert_true(s.len == 1 && s.ptr[0] == 'a');
  s = llorch_gguf_arr_str(arr, 1, &cur);
  assert_true(s.len == 2 && memcmp(s.ptr, "bc", 2) == 0);
  s = llorch_gguf_arr_str(arr, 1, NULL); /* random access */
  assert_true(s.len == 2 && memcmp(s.ptr, "bc", 2) == 0);
  assert_null(llorch_gguf_arr_str(arr, 2, NULL).ptr);

  uint32_t u32;
  uint64_t u64;
  int64_t i64;
  float f;
  bool bo;
  assert_int_equal(llorch_gguf_get_u32(g, "test.u32", &u32, &em), 0);
  assert_int_equal(u32, 7);
  assert_int_equal(llorch_gguf_get_u64(g, "test.u32", &u64, &em), 0);
  assert_int_equal(u64, 7);
  assert_int_equal(llorch_gguf_get_i64(g, "test.u32", &i64, &em), 0);
  assert_int_equal(i64, 7);
  assert_int_equal(llorch_gguf_get_f32(g, "test.u32", &f, &em), 0);
  assert_true(f == 7.0f);
  assert_int_equal(llorch_gguf_get_bool(g, "test.u32", &bo, &em), LLORCH_EFORMAT);
  assert_string_equal(em.text, "key 'test.u32' has type UINT32, expected BOOL");
  assert_int_equal(llorch_gguf_get_str(g, "test.u32", &s, &em), LLORCH_EFORMAT);
  assert_int_equal(llorch_gguf_get_u32(g, "general.architecture", &u32, &em), LLORCH_EFORMAT);
  assert_non_null(strstr(em.text, "has type STRING, expected an integer"));
  assert_int_equal(llorch_gguf_get_u32(g, "no.such.key", &u32, &em), LLORCH_ENOTFOUND);
  assert_int_equal(llorch_gguf_get_arr(g, "test.arr", LLORCH_GGUF_INT32, &arr, &em), LLORCH_EFORMAT);
  assert_string_equal(em.text, "key 'test.arr' is an ARRAY of STRING, expected ARRAY of INT32");
  assert_int_equal(llorch_gguf_get_arr(g, "test.u32", LLORCH_GGUF_INT32, &arr, &em), LLORCH_EFORMAT);

  const llorch_gguf_tensor *w = llorch_gguf_find_tensor(g, "w");
  assert_non_null(w);
  assert_int_equal(w->n_dims, 2);
  assert_int_equal(w->ne[0], 32);
  assert_int_equal(w->ne[1], 2);
  assert_int_equal(w->ne[2], 1);
  assert_int_equal(w->type, LLORCH_TYPE_Q8_0);
  assert_int_equal(w->nbytes, 68);
  assert_ptr_equal(w->data, b.p + L.data_offset);
  const llorch_gguf_tensor *bt = llorch_gguf_find_tensor(g, "b");
  assert_non_null(bt);
  assert_int_equal(bt->offset, 96);
  float bias[4];
  memcpy(bias, bt->data, 16);
  assert_true(bias[1] == -2.0f && bias[3] == 4.0f);
  assert_null(llorch_gguf_find_tensor(g, "nope"));
  assert_ptr_equal(llorch_gguf_tensor_at(g, 1), bt);
  assert_null(llorch_gguf_tensor_at(g, 2));
  assert_null(llorch_gguf_kv_at(g, 3));
  llorch_gguf_close(g);

  /* header-only: same table, no data pointers */
  assert_int_equal(llorch_gguf_open_memory(&g, b.p, b.len, LLORCH_GGUF_OPEN_HEADER_ONLY, &em), 0);
  assert_null(llorch_gguf_find_tensor(g, "w")->data);
  assert_int_equal(llorch_gguf_find_tensor(g, "b")->offset, 96);
  llorch_gguf_close(g);

  /* version 2 has the same layout and is accepted */
  patch32(&b, L.version, 2);
  assert_int_equal(open_buf(&b, b.len, &g, &em), 0);
  assert_int_equal(llorch_gguf_version(g), 2);
  llorch_gguf_close(g);
}

static void test_alignment_key(void **state) {
  (void)state;
  bbuf b;
  layout L;
  spec s = spec_default();
  s.kv2_key = "general.alignment";
  s.kv2_val = 64;
  s.alignment = 64;
  build(&b, &L, s);
  llorch_gguf *g;
  llorch_errmsg em;
  assert_int_equal(open_buf(&b, b.len, &g, &em), 0);
  assert_int_equal(llorch_gguf_alignment(g), 64);
  assert_int_equal(llorch_gguf_data_offset(g) % 64, 0);
  assert_int_equal(llorch_gguf_find_tensor(g, "b")->offset, 128);
  llorch_gguf_close(g);

  s.kv2_val = 48;
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "general.alignment is 48, expected a power of two");
  s.kv2_val = 0;
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "general.alignment is 0, expected a power of two");
  s.kv2_val = 64;
  s.kv2_type = 5; /* INT32 */
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "general.alignment has type INT32, expected UINT32");
  /* a tensor offset that is 32- but not 64-aligned */
  s.kv2_type = 4;
  build(&b, &L, s);
  patch64(&b, L.t1_offset, 96);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'b': data offset 96 is not a multiple of the alignment 64");
}

static void test_int_getter_ranges(void **state) {
  (void)state;
  bbuf b;
  layout L;
  llorch_gguf *g;
  llorch_errmsg em;
  uint32_t u32;
  uint64_t u64;
  int64_t i64;
  spec s = spec_default();
  s.kv2_type = 5; /* INT32 -5 */
  s.kv2_val = (uint32_t)-5;
  build(&b, &L, s);
  assert_int_equal(open_buf(&b, b.len, &g, &em), 0);
  assert_int_equal(llorch_gguf_get_u32(g, "test.u32", &u32, &em), LLORCH_EFORMAT);
  assert_string_equal(em.text, "key 'test.u32' is -5, expected 0..4294967295");
  assert_int_equal(llorch_gguf_get_u64(g, "test.u32", &u64, &em), LLORCH_EFORMAT);
  assert_int_equal(llorch_gguf_get_i64(g, "test.u32", &i64, &em), 0);
  assert_int_equal(i64, -5);
  llorch_gguf_close(g);

  s.kv2_type = 10; /* UINT64 2^40 */
  s.kv2_val = 1ull << 40;
  build(&b, &L, s);
  assert_int_equal(open_buf(&b, b.len, &g, &em), 0);
  assert_int_equal(llorch_gguf_get_u32(g, "test.u32", &u32, &em), LLORCH_EFORMAT);
  assert_int_equal(llorch_gguf_get_u64(g, "test.u32", &u64, &em), 0);
  assert_int_equal(u64, 1ull << 40);
  llorch_gguf_close(g);
}

/* ---- corruptions ---- */

static void test_corruptions(void **state) {
  (void)state;
  bbuf b;
  layout L;
  spec s = spec_default();
  char want[256];

  build(&b, &L, s);
  b.p[0] = 'G', b.p[1] = 'G', b.p[2] = 'M', b.p[3] = 'L';
  expect_error(&b, b.len, LLORCH_EFORMAT, "bad magic 0x4c4d4747 ('GGML'), expected 'GGUF'");

  build(&b, &L, s);
  patch32(&b, L.version, 1);
  expect_error(&b, b.len, LLORCH_EFORMAT, "unsupported GGUF version 1 (expected 2 or 3)");
  patch32(&b, L.version, 4);
  expect_error(&b, b.len, LLORCH_EFORMAT, "unsupported GGUF version 4");
  patch32(&b, L.version, 0x03000000);
  expect_error(&b, b.len, LLORCH_EFORMAT, "big-endian");

  expect_error(&b, 10, LLORCH_EFORMAT, "file is 10 bytes, too small for a GGUF header");

  build(&b, &L, s);
  patch64(&b, L.n_kv, 1ull << 40);
  expect_error(&b, b.len, LLORCH_EFORMAT, "kv count 1099511627776 cannot fit in the file");
  build(&b, &L, s);
  patch64(&b, L.n_tensors, UINT64_MAX);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor count 18446744073709551615 cannot fit");
  /* a tensor count that fits the file but not the data: garbage parses as a 3rd tensor */
  build(&b, &L, s);
  patch64(&b, L.n_tensors, 3);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 2");

  build(&b, &L, s);
  patch64(&b, L.key0_len, 1000000);
  snprintf(want, sizeof want, "kv 0: key length 1000000 at offset %zu runs past end of file (size %zu)",
           L.key0_len, b.len);
  expect_error(&b, b.len, LLORCH_EFORMAT, want);
  patch64(&b, L.key0_len, UINT64_MAX); /* no overflow in pos + len */
  expect_error(&b, b.len, LLORCH_EFORMAT, "key length 18446744073709551615");
  patch64(&b, L.key0_len, 0);
  expect_error(&b, b.len, LLORCH_EFORMAT, "kv 0: empty key");

  build(&b, &L, s);
  patch32(&b, L.kv2_type, 99);
  expect_error(&b, b.len, LLORCH_EFORMAT, "kv 2 'test.u32': unknown value type 99 (expected 0..12)");
  build(&b, &L, s);
  patch32(&b, L.arr_elem_type, 9);
  expect_error(&b, b.len, LLORCH_EFORMAT, "kv 1 'test.arr': nested arrays are not supported");
  patch32(&b, L.arr_elem_type, 13);
  expect_error(&b, b.len, LLORCH_EFORMAT, "unknown array element type 13");
  build(&b, &L, s);
  patch64(&b, L.arr_n, 1ull << 62);
  expect_error(&b, b.len, LLORCH_EFORMAT, "array of 4611686018427387904 STRING");
  /* fits the count bound: the 3rd "string" swallows the next key, and the
   * value type that follows is read as that key's length */
  patch64(&b, L.arr_n, 3);
  expect_error(&b, b.len, LLORCH_EFORMAT, "kv 2: key length 30064771076");

  s.kv2_key = "test.arr"; /* same length as test.u32 */
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "duplicate key 'test.arr' (kv 1 and kv 2)");
  s = spec_default();
  s.t1_name = "w";
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "duplicate tensor name 'w' (tensors 0 and 1)");
  s = spec_default();
  build(&b, &L, s);
  b.p[L.t1_name] = '\0';
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 1: name contains a NUL byte");
  b.p[L.t1_name] = '\n'; /* would break the one-line error messages that quote names */
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 1: name contains control character 0x0a at byte 0");
  s.t0_name = "a_name_that_is_sixty_four_bytes_long_which_ggml_cannot_hold_xxxx";
  assert_int_equal(strlen(s.t0_name), 64);
  build(&b, &L, s);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 0: name of 64 bytes (at most 63 allowed)");

  s = spec_default();
  build(&b, &L, s);
  patch32(&b, L.t0_ndims, 5);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': n_dims is 5, expected 1..4");
  patch32(&b, L.t0_ndims, 0);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': n_dims is 0");
  build(&b, &L, s);
  patch64(&b, L.t0_ne1, 0);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': ne[1] is 0");
  patch64(&b, L.t0_ne1, 1ull << 62);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': element count overflows at ne[1] = 4611686018427387904");
  patch64(&b, L.t0_ne1, 1ull << 57); /* 2^62 elements: counts fit, data is far past the end */
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': data [offset");
  build(&b, &L, s);
  patch64(&b, L.t0_ne0, 33);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': ne[0] = 33 is not a multiple of the Q8_0 block size 32");
  build(&b, &L, s);
  patch32(&b, L.t0_type, 99);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': unknown tensor type 99");
  patch32(&b, L.t0_type, 4); /* Q4_2, removed from ggml */
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'w': unknown tensor type 4");
  build(&b, &L, s);
  patch64(&b, L.t1_offset, 97);
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'b': data offset 97 is not a multiple of the alignment 32");
  patch64(&b, L.t1_offset, UINT64_MAX - 31); /* aligned, and pos + offset would overflow */
  expect_error(&b, b.len, LLORCH_EFORMAT, "tensor 'b': data [offset");

  /* one byte short: the last tensor's data runs past the end */
  build(&b, &L, s);
  snprintf(want, sizeof want, "tensor 'b': data [offset %zu, 16 bytes] runs past end of file (size %zu)",
           L.data_offset + 96, b.len - 1);
  expect_error(&b, b.len - 1, LLORCH_EFORMAT, want);
}

static void test_every_truncation(void **state) {
  (void)state;
  bbuf b;
  layout L;
  build(&b, &L, spec_default());
  for (size_t len = 0; len < b.len; len++) {
    /* a copy of exactly len bytes, so ASan catches any read past it */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, b.p, len);
    for (unsigned flags = 0; flags < 2; flags++) {
      llorch_gguf *g = NULL;
      llorch_errmsg em = {{0}};
      int rc = llorch_gguf_open_memory(&g, copy, len, flags, &em);
      if (rc != LLORCH_EFORMAT || em.text[0] == '\0') {
        print_error("truncated at %zu: rc %d '%s'\n", len, rc, em.text);
        fail();
      }
      assert_null(g);
    }
    free(copy);
  }
}

static void test_byte_flips(void **state) {
  (void)state;
  bbuf b, m;
  layout L;
  build(&b, &L, spec_default());
  const uint8_t values[] = {0x00, 0xff, 0x7f, 0x80, 0x01, 0x40};
  for (size_t i = 0; i < L.data_offset; i++) {
    for (size_t v = 0; v < sizeof values; v++) {
      m = b;
      m.p[i] = values[v];
      uint8_t *copy = malloc(m.len);
      memcpy(copy, m.p, m.len);
      llorch_gguf *g = NULL;
      llorch_errmsg em = {{0}};
      int rc = llorch_gguf_open_memory(&g, copy, m.len, 0, &em);
      if (rc == 0) { /* still valid: every accessor must stay in bounds */
        for (uint64_t k = 0; k < llorch_gguf_n_kv(g); k++) {
          const llorch_gguf_kv *kv = llorch_gguf_kv_at(g, k);
          if (kv->type == LLORCH_GGUF_ARRAY && kv->arr_type == LLORCH_GGUF_STRING) {
            uint64_t cur = 0;
            for (uint64_t j = 0; j < kv->arr_n; j++) llorch_gguf_arr_str(kv, j, &cur);
          }
        }
        for (uint64_t t = 0; t < llorch_gguf_n_tensors(g); t++) {
          const llorch_gguf_tensor *tt = llorch_gguf_tensor_at(g, t);
          volatile uint8_t sink = 0;
          for (uint64_t x = 0; x < tt->nbytes; x++) sink ^= ((const uint8_t *)tt->data)[x];
          (void)sink;
        }
        llorch_gguf_close(g);
      } else {
        assert_true(rc == LLORCH_EFORMAT && em.text[0] != '\0');
      }
      free(copy);
    }
  }
}

/* ---- the writer ---- */

static char tmpdir[256];

static int setup_tmpdir(void **state) {
  (void)state;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/llorch-test-gguf-XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmpdir(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

typedef struct fill_log {
  int calls;
  uint64_t next;     /* expected next offset */
  uint64_t row_bytes;
  int fail_at_call;  /* 0: never */
} fill_log;

/* Byte i of the tensor is (i * 7 + 3) & 0xff: checks chunking order. */
static int fill_pattern(void *ctx, const char *name, uint64_t offset, void *dst, uint64_t nbytes) {
  fill_log *log = ctx;
  (void)name;
  log->calls++;
  if (log->fail_at_call && log->calls == log->fail_at_call) return LLORCH_ECANCELED;
  if (offset != log->next || nbytes % log->row_bytes != 0 || offset % log->row_bytes != 0) return LLORCH_EINVAL;
  for (uint64_t i = 0; i < nbytes; i++) ((uint8_t *)dst)[i] = (uint8_t)(((offset + i) * 7 + 3) & 0xff);
  log->next = offset + nbytes;
  return 0;
}

static void path_in_tmp(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", tmpdir, name);
}

static void test_writer_roundtrip(void **state) {
  (void)state;
  llorch_gguf_writer *w;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gguf_writer_init(&w, 0), 0);
  uint8_t u8 = 200;
  int8_t i8 = -100;
  uint16_t u16 = 60000;
  int16_t i16 = -30000;
  int64_t i64 = -(1ll << 50);
  double f64 = 3.141592653589793;
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.u8", LLORCH_GGUF_UINT8, &u8), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.i8", LLORCH_GGUF_INT8, &i8), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.u16", LLORCH_GGUF_UINT16, &u16), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.i16", LLORCH_GGUF_INT16, &i16), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.i64", LLORCH_GGUF_INT64, &i64), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.f64", LLORCH_GGUF_FLOAT64, &f64), 0);
  assert_int_equal(llorch_gguf_writer_set_value(w, "t.bad", LLORCH_GGUF_STRING, &u8), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_set_u32(w, "t.u32", 4000000000u), 0);
  assert_int_equal(llorch_gguf_writer_set_i32(w, "t.i32", -2000000000), 0);
  assert_int_equal(llorch_gguf_writer_set_u64(w, "t.u64", UINT64_MAX), 0);
  assert_int_equal(llorch_gguf_writer_set_f32(w, "t.f32", 0.1f), 0);
  assert_int_equal(llorch_gguf_writer_set_bool(w, "t.bool", true), 0);
  assert_int_equal(llorch_gguf_writer_set_str(w, "t.str", "h\xc3\xa9llo {{ x }}"), 0);
  assert_int_equal(llorch_gguf_writer_set_str(w, "t.empty", ""), 0);
  assert_int_equal(llorch_gguf_writer_set_u32(w, "t.replaced", 1), 0);
  assert_int_equal(llorch_gguf_writer_set_str(w, "t.replaced", "two"), 0);
  const int32_t ai32[3] = {-1, 0, 2147483647};
  const float af32[2] = {1.5f, -0.0f};
  const uint8_t abool[3] = {1, 0, 1};
  const uint64_t au64[1] = {1ull << 63};
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.i32", LLORCH_GGUF_INT32, ai32, 3), 0);
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.f32", LLORCH_GGUF_FLOAT32, af32, 2), 0);
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.bool", LLORCH_GGUF_BOOL, abool, 3), 0);
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.u64", LLORCH_GGUF_UINT64, au64, 1), 0);
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.empty", LLORCH_GGUF_INT8, NULL, 0), 0);
  assert_int_equal(llorch_gguf_writer_set_arr(w, "a.bad", LLORCH_GGUF_ARRAY, ai32, 1), LLORCH_EINVAL);
  const char *strs[3] = {"", "tok\xc4\xa0", "<|im_end|>"};
  assert_int_equal(llorch_gguf_writer_set_arr_str(w, "a.str", strs, 3), 0);

  const float vec[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  uint64_t ne1[1] = {8};
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "vec", LLORCH_TYPE_F32, 1, ne1, vec), 0);
  uint8_t q8[3 * 2 * 34];
  for (size_t i = 0; i < sizeof q8; i++) q8[i] = (uint8_t)(i * 13);
  uint64_t ne2[2] = {64, 3};
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "q8", LLORCH_TYPE_Q8_0, 2, ne2, q8), 0);
  fill_log flog = {.row_bytes = 2 * 32};
  uint64_t ne3[3] = {32, 4, 2};
  assert_int_equal(llorch_gguf_writer_add_tensor_fill(w, "filled", LLORCH_TYPE_F16, 3, ne3, fill_pattern,
                                                      &flog), 0);
  /* invalid tensors are refused */
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "vec", LLORCH_TYPE_F32, 1, ne1, vec), LLORCH_EEXIST);
  uint64_t bad_ne[2] = {33, 1};
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "x", LLORCH_TYPE_Q8_0, 2, bad_ne, q8), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "x", LLORCH_TYPE_F32, 0, ne1, vec), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "x", LLORCH_TYPE_F32, 5, ne3, vec), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "x", (llorch_ggml_type)4, 1, ne1, vec), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_add_tensor(
                       w, "a_name_that_is_sixty_four_bytes_long_which_ggml_cannot_hold_xxxx",
                       LLORCH_TYPE_F32, 1, ne1, vec), LLORCH_EINVAL);

  char path[300];
  path_in_tmp(path, sizeof path, "rt.gguf");
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), 0);
  assert_int_equal(flog.next, 32 * 4 * 2 * 2);
  llorch_gguf_writer_free(w);

  for (unsigned flags = 0; flags < 2; flags++) {
    llorch_gguf *g;
    assert_int_equal(llorch_gguf_open(&g, path, flags, &em), 0);
    assert_int_equal(llorch_gguf_n_kv(g), 20);
    const llorch_gguf_kv *kv;
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.u8"));
    assert_true(kv->type == LLORCH_GGUF_UINT8 && kv->v.u64 == 200);
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.i8"));
    assert_true(kv->type == LLORCH_GGUF_INT8 && kv->v.i64 == -100);
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.u16"));
    assert_true(kv->type == LLORCH_GGUF_UINT16 && kv->v.u64 == 60000);
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.i16"));
    assert_true(kv->type == LLORCH_GGUF_INT16 && kv->v.i64 == -30000);
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.i64"));
    assert_true(kv->type == LLORCH_GGUF_INT64 && kv->v.i64 == -(1ll << 50));
    assert_non_null(kv = llorch_gguf_find_kv(g, "t.f64"));
    assert_true(kv->type == LLORCH_GGUF_FLOAT64 && kv->v.f64 == 3.141592653589793);
    uint32_t u32;
    uint64_t u64;
    int64_t v64;
    float f;
    bool bo;
    llorch_gguf_str s;
    assert_int_equal(llorch_gguf_get_u32(g, "t.u32", &u32, &em), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(llorch_gguf_get_i64(g, "t.i32", &v64, &em), 0);
    assert_int_equal(v64, -2000000000);
    assert_int_equal(llorch_gguf_get_u64(g, "t.u64", &u64, &em), 0);
    assert_true(u64 == UINT64_MAX);
    assert_int_equal(llorch_gguf_get_i64(g, "t.u64", &v64, &em), LLORCH_EFORMAT);
    assert_int_equal(llorch_gguf_get_f32(g, "t.f32", &f, &em), 0);
    assert_true(f == 0.1f);
    assert_int_equal(llorch_gguf_get_bool(g, "t.bool", &bo, &em), 0);
    assert_true(bo);
    assert_int_equal(llorch_gguf_get_str(g, "t.str", &s, &em), 0);
    assert_true(s.len == 14 && memcmp(s.ptr, "h\xc3\xa9llo {{ x }}", 14) == 0);
    assert_int_equal(llorch_gguf_get_str(g, "t.empty", &s, &em), 0);
    assert_int_equal(s.len, 0);
    assert_int_equal(llorch_gguf_get_str(g, "t.replaced", &s, &em), 0);
    assert_true(s.len == 3 && memcmp(s.ptr, "two", 3) == 0);
    const llorch_gguf_kv *a;
    assert_int_equal(llorch_gguf_get_arr(g, "a.i32", LLORCH_GGUF_INT32, &a, &em), 0);
    assert_true(a->arr_n == 3 && llorch_gguf_arr_i64(a, 0) == -1 && llorch_gguf_arr_i64(a, 2) == 2147483647);
    assert_int_equal(llorch_gguf_arr_i64(a, 3), 0); /* out of range */
    assert_int_equal(llorch_gguf_get_arr(g, "a.f32", LLORCH_GGUF_FLOAT32, &a, &em), 0);
    assert_true(llorch_gguf_arr_f64(a, 0) == 1.5 && llorch_gguf_arr_f64(a, 1) == 0.0);
    assert_int_equal(llorch_gguf_get_arr(g, "a.bool", LLORCH_GGUF_BOOL, &a, &em), 0);
    assert_true(llorch_gguf_arr_i64(a, 0) == 1 && llorch_gguf_arr_i64(a, 1) == 0);
    assert_int_equal(llorch_gguf_get_arr(g, "a.u64", LLORCH_GGUF_UINT64, &a, &em), 0);
    assert_true(llorch_gguf_arr_f64(a, 0) == 9223372036854775808.0);
    assert_int_equal(llorch_gguf_get_arr(g, "a.empty", LLORCH_GGUF_INT8, &a, &em), 0);
    assert_int_equal(a->arr_n, 0);
    assert_int_equal(llorch_gguf_get_arr(g, "a.str", LLORCH_GGUF_STRING, &a, &em), 0);
    uint64_t cur = 0;
    for (int i = 0; i < 3; i++) {
      s = llorch_gguf_arr_str(a, (uint64_t)i, &cur);
      assert_int_equal(s.len, strlen(strs[i]));
      assert_memory_equal(s.ptr, strs[i], s.len);
    }

    assert_int_equal(llorch_gguf_n_tensors(g), 3);
    assert_int_equal(llorch_gguf_data_offset(g) % 32, 0);
    const llorch_gguf_tensor *t;
    assert_non_null(t = llorch_gguf_find_tensor(g, "vec"));
    assert_true(t->type == LLORCH_TYPE_F32 && t->n_dims == 1 && t->ne[0] == 8 && t->offset == 0);
    if (flags == 0) assert_memory_equal(t->data, vec, sizeof vec);
    else assert_null(t->data);
    assert_non_null(t = llorch_gguf_find_tensor(g, "q8"));
    assert_true(t->type == LLORCH_TYPE_Q8_0 && t->ne[1] == 3 && t->nbytes == sizeof q8 && t->offset == 32);
    if (flags == 0) assert_memory_equal(t->data, q8, sizeof q8);
    assert_non_null(t = llorch_gguf_find_tensor(g, "filled"));
    assert_true(t->n_dims == 3 && t->ne[2] == 2 && t->nbytes == 512 && t->offset % 32 == 0);
    if (flags == 0)
      for (uint64_t i = 0; i < t->nbytes; i++)
        assert_int_equal(((const uint8_t *)t->data)[i], (uint8_t)((i * 7 + 3) & 0xff));
    llorch_gguf_close(g);
  }

  /* copy_kv reproduces every kv exactly */
  llorch_gguf *g;
  assert_int_equal(llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, &em), 0);
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  for (uint64_t i = 0; i < llorch_gguf_n_kv(g); i++)
    assert_int_equal(llorch_gguf_writer_copy_kv(w, llorch_gguf_kv_at(g, i)), 0);
  char path2[300];
  path_in_tmp(path2, sizeof path2, "copy.gguf");
  assert_int_equal(llorch_gguf_writer_write_file(w, path2, &em), 0);
  llorch_gguf_writer_free(w);
  llorch_gguf *g2;
  assert_int_equal(llorch_gguf_open(&g2, path2, 0, &em), 0);
  assert_int_equal(llorch_gguf_n_kv(g2), llorch_gguf_n_kv(g));
  assert_int_equal(llorch_gguf_n_tensors(g2), 0);
  for (uint64_t i = 0; i < llorch_gguf_n_kv(g); i++) {
    const llorch_gguf_kv *x = llorch_gguf_kv_at(g, i), *y = llorch_gguf_kv_at(g2, i);
    assert_string_equal(x->key, y->key);
    assert_int_equal(x->type, y->type);
    if (x->type == LLORCH_GGUF_STRING) {
      assert_int_equal(x->v.str.len, y->v.str.len);
      assert_memory_equal(x->v.str.ptr, y->v.str.ptr, x->v.str.len);
    } else if (x->type == LLORCH_GGUF_ARRAY) {
      assert_int_equal(x->arr_type, y->arr_type);
      assert_int_equal(x->arr_n, y->arr_n);
    } else {
      assert_memory_equal(&x->v, &y->v, sizeof x->v);
    }
  }
  const llorch_gguf_kv *sa = llorch_gguf_find_kv(g2, "a.str");
  assert_true(llorch_gguf_arr_str(sa, 2, NULL).len == 10);
  llorch_gguf_close(g2);
  llorch_gguf_close(g);
}

static void test_writer_alignment_and_errors(void **state) {
  (void)state;
  llorch_gguf_writer *w;
  llorch_errmsg em = {{0}};
  char path[300];
  assert_int_equal(llorch_gguf_writer_init(&w, 48), LLORCH_EINVAL);
  assert_int_equal(llorch_gguf_writer_init(&w, 64), 0);
  const float v[3] = {1, 2, 3};
  uint64_t ne[1] = {3};
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "a", LLORCH_TYPE_F32, 1, ne, v), 0);
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "b", LLORCH_TYPE_F32, 1, ne, v), 0);
  path_in_tmp(path, sizeof path, "a64.gguf");
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), 0);
  llorch_gguf *g;
  assert_int_equal(llorch_gguf_open(&g, path, 0, &em), 0);
  uint32_t al;
  assert_int_equal(llorch_gguf_get_u32(g, "general.alignment", &al, &em), 0); /* added by the writer */
  assert_int_equal(al, 64);
  assert_int_equal(llorch_gguf_data_offset(g) % 64, 0);
  assert_int_equal(llorch_gguf_find_tensor(g, "b")->offset, 64);
  llorch_gguf_close(g);
  /* a general.alignment kv that disagrees with the writer is refused */
  assert_int_equal(llorch_gguf_writer_set_u32(w, "general.alignment", 32), 0);
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "general.alignment is 32 but the writer aligns to 64"));
  llorch_gguf_writer_free(w);

  /* a failing fill callback aborts the write and leaves nothing behind */
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  fill_log flog = {.row_bytes = 4 * 64, .fail_at_call = 1};
  uint64_t ne2[2] = {64, 4};
  assert_int_equal(llorch_gguf_writer_add_tensor_fill(w, "f", LLORCH_TYPE_F32, 2, ne2, fill_pattern, &flog), 0);
  path_in_tmp(path, sizeof path, "failed.gguf");
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), LLORCH_ECANCELED);
  assert_non_null(strstr(em.text, "filling tensor 'f' at byte 0 failed"));
  struct stat st;
  assert_int_not_equal(stat(path, &st), 0);
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  assert_int_not_equal(stat(tmp, &st), 0);
  /* an unwritable place */
  assert_int_equal(llorch_gguf_writer_write_file(w, "/nonexistent-dir/x.gguf", &em), LLORCH_ENOENT);
  assert_non_null(strstr(em.text, "cannot create '/nonexistent-dir/x.gguf.tmp."));
  llorch_gguf_writer_free(w);
}

static void test_open_errors(void **state) {
  (void)state;
  llorch_gguf *g = (llorch_gguf *)0x1;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gguf_open(&g, "/nonexistent/model.gguf", 0, &em), LLORCH_ENOENT);
  assert_null(g);
  assert_non_null(strstr(em.text, "cannot open '/nonexistent/model.gguf'"));
  assert_int_equal(llorch_gguf_open(&g, tmpdir, 0, &em), LLORCH_EFORMAT);
  assert_non_null(strstr(em.text, "is not a regular file"));

  /* a truncated file on disk: mmap and header-only opens both name the file and the tensor */
  bbuf b;
  layout L;
  build(&b, &L, spec_default());
  char path[300];
  path_in_tmp(path, sizeof path, "trunc.gguf");
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b.p, 1, b.len - 4, f), b.len - 4);
  fclose(f);
  for (unsigned flags = 0; flags < 2; flags++) {
    assert_int_equal(llorch_gguf_open(&g, path, flags, &em), LLORCH_EFORMAT);
    assert_non_null(strstr(em.text, path));
    assert_non_null(strstr(em.text, "tensor 'b': data ["));
  }
  /* empty file */
  f = fopen(path, "wb");
  fclose(f);
  assert_int_equal(llorch_gguf_open(&g, path, 0, &em), LLORCH_EFORMAT);
  assert_non_null(strstr(em.text, "file is 0 bytes"));
}

/* A header bigger than the first pread (1 MiB) makes HEADER_ONLY grow its buffer. */
static void test_header_only_large_header(void **state) {
  (void)state;
  enum { N = 150000 };
  char **strs = malloc(N * sizeof *strs);
  char *pool = malloc((size_t)N * 16);
  for (int i = 0; i < N; i++) {
    strs[i] = pool + (size_t)i * 16;
    snprintf(strs[i], 16, "token%09d", i);
  }
  llorch_gguf_writer *w;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_gguf_writer_init(&w, 32), 0);
  assert_int_equal(llorch_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)strs, N), 0);
  const float v[4] = {1, 2, 3, 4};
  uint64_t ne[1] = {4};
  assert_int_equal(llorch_gguf_writer_add_tensor(w, "t", LLORCH_TYPE_F32, 1, ne, v), 0);
  char path[300];
  path_in_tmp(path, sizeof path, "big.gguf");
  assert_int_equal(llorch_gguf_writer_write_file(w, path, &em), 0);
  llorch_gguf_writer_free(w);
  llorch_gguf *g;
  assert_int_equal(llorch_gguf_open(&g, path, LLORCH_GGUF_OPEN_HEADER_ONLY, &em), 0);
  const llorch_gguf_kv *a;
  assert_int_equal(llorch_gguf_get_arr(g, "tokenizer.ggml.tokens", LLORCH_GGUF_STRING, &a, &em), 0);
  assert_int_equal(a->arr_n, N);
  llorch_gguf_str s = llorch_gguf_arr_str(a, N - 1, NULL);
  assert_true(s.len == 14 && memcmp(s.ptr, "token000149999", 14) == 0);
  const llorch_gguf_tensor *t = llorch_gguf_find_tensor(g, "t");
  assert_non_null(t);
  assert_null(t->data);
  assert_true(llorch_gguf_data_offset(g) > (1u << 20));
  llorch_gguf_close(g);
  free(pool);
  free(strs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_file),
      cmocka_unit_test(test_alignment_key),
      cmocka_unit_test(test_int_getter_ranges),
      cmocka_unit_test(test_corruptions),
      cmocka_unit_test(test_every_truncation),
      cmocka_unit_test(test_byte_flips),
      cmocka_unit_test(test_writer_roundtrip),
      cmocka_unit_test(test_writer_alignment_and_errors),
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test(test_header_only_large_header),
  };
  return cmocka_run_group_tests(tests, setup_tmpdir, teardown_tmpdir);
}
