/*
 * libFuzzer target for the GGUF reader (src/gguf/gguf.c): arbitrary bytes as
 * a model file, opened both fully and header-only. Whatever the input, the
 * reader returns 0 or LLORCH_EFORMAT with one line of explanation; it never
 * crashes or reads out of bounds. A file it accepts is walked completely
 * (every kv through every getter, every string of every array, every byte
 * of every tensor), and its kvs are copied through the writer, since all of
 * that is what the loader and `synth --vocab-from` do with real files.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_walk(const llorch_gguf *g) {
  llorch_errmsg em;
  llorch_gguf_writer *w = NULL;
  if (llorch_gguf_writer_init(&w, 0) != 0) abort();
  for (uint64_t i = 0; i < llorch_gguf_n_kv(g); i++) {
    const llorch_gguf_kv *kv = llorch_gguf_kv_at(g, i);
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    llorch_gguf_str s;
    const llorch_gguf_kv *arr;
    llorch_gguf_get_u32(g, kv->key, &u32, &em);
    llorch_gguf_get_u64(g, kv->key, &u64, &em);
    llorch_gguf_get_i64(g, kv->key, &i64, &em);
    llorch_gguf_get_f32(g, kv->key, &f, &em);
    llorch_gguf_get_bool(g, kv->key, &b, &em);
    if (llorch_gguf_get_str(g, kv->key, &s, &em) == 0 && s.len > 0) {
      volatile char c = s.ptr[s.len - 1];
      (void)c;
    }
    if (llorch_gguf_find_kv(g, kv->key) != kv) abort(); /* keys are unique */
    if (kv->type == LLORCH_GGUF_ARRAY) {
      if (llorch_gguf_get_arr(g, kv->key, kv->arr_type, &arr, &em) != 0) abort();
      if (kv->arr_type == LLORCH_GGUF_STRING) {
        uint64_t cur = 0;
        for (uint64_t j = 0; j < kv->arr_n; j++) {
          s = llorch_gguf_arr_str(kv, j, &cur);
          if (s.len > 0) {
            volatile char c = s.ptr[s.len - 1];
            (void)c;
          }
        }
      } else {
        for (uint64_t j = 0; j < kv->arr_n && j < 64; j++) {
          volatile double d = llorch_gguf_arr_f64(kv, j);
          volatile int64_t x = llorch_gguf_arr_i64(kv, j);
          (void)d;
          (void)x;
        }
      }
    }
    if (llorch_gguf_writer_copy_kv(w, kv) != 0) abort();
  }
  for (uint64_t i = 0; i < llorch_gguf_n_tensors(g); i++) {
    const llorch_gguf_tensor *t = llorch_gguf_tensor_at(g, i);
    if (llorch_gguf_find_tensor(g, t->name) != t) abort(); /* names are unique */
    if (t->data != NULL) {
      volatile uint8_t sum = 0;
      for (uint64_t x = 0; x < t->nbytes; x++) sum ^= ((const uint8_t *)t->data)[x];
      (void)sum;
    }
  }
  llorch_gguf_writer_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* an exact-size copy, so reading one byte past the input is caught */
  uint8_t *copy = malloc(size ? size : 1);
  if (copy == NULL) return 0;
  memcpy(copy, data, size);
  for (unsigned flags = 0; flags < 2; flags++) {
    llorch_gguf *g = NULL;
    llorch_errmsg em = {{0}};
    int rc = llorch_gguf_open_memory(&g, copy, size, flags, &em);
    if (rc == 0) {
      fuzz_walk(g);
      llorch_gguf_close(g);
    } else if (rc != LLORCH_EFORMAT || em.text[0] == '\0' || strchr(em.text, '\n') || g != NULL) {
      abort(); /* every failure of outside input is EFORMAT with one line */
    }
  }
  free(copy);
  return 0;
}
