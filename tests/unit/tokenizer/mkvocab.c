/*
 * Test helper for diff_llamacpp.sh: writes a vocab-only GGUF file.
 *
 *   mkvocab IN.gguf OUT.gguf PRE   IN's metadata with tokenizer.ggml.pre = PRE
 *                                  ("-": without the key, i.e. llama.cpp's default)
 *   mkvocab - OUT.gguf synth       the synthetic vocabulary of `llorch synth`
 */
#include <stdio.h>
#include <string.h>

#include "llorch/gguf.h"
#include "llorch/tokenizer.h"

int main(int argc, char **argv) {
  llorch_errmsg em = {{0}};
  llorch_gguf_writer *w = NULL;
  llorch_gguf *g = NULL;
  int rc;
  if (argc != 4) {
    fprintf(stderr, "usage: mkvocab IN.gguf OUT.gguf PRE | mkvocab - OUT.gguf synth\n");
    return 2;
  }
  if ((rc = llorch_gguf_writer_init(&w, 32)) != 0) goto fail;
  if (strcmp(argv[3], "synth") == 0) {
    uint32_t n;
    if ((rc = llorch_tokenizer_synth_vocab(w, 0, false, &n, &em)) != 0) goto fail;
    /* llama.cpp wants the hyper-parameters even for a vocab-only load */
    if ((rc = llorch_gguf_writer_set_str(w, "general.architecture", "qwen2")) != 0 ||
        (rc = llorch_gguf_writer_set_u32(w, "qwen2.context_length", 4096)) != 0 ||
        (rc = llorch_gguf_writer_set_u32(w, "qwen2.embedding_length", 64)) != 0 ||
        (rc = llorch_gguf_writer_set_u32(w, "qwen2.block_count", 1)) != 0 ||
        (rc = llorch_gguf_writer_set_u32(w, "qwen2.feed_forward_length", 128)) != 0 ||
        (rc = llorch_gguf_writer_set_u32(w, "qwen2.attention.head_count", 4)) != 0 ||
        (rc = llorch_gguf_writer_set_f32(w, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f)) != 0)
      goto fail;
  } else {
    if ((rc = llorch_gguf_open(&g, argv[1], LLORCH_GGUF_OPEN_HEADER_ONLY, &em)) != 0) goto fail;
    for (uint64_t i = 0; i < llorch_gguf_n_kv(g); i++) {
      const llorch_gguf_kv *kv = llorch_gguf_kv_at(g, i);
      if (strcmp(kv->key, "tokenizer.ggml.pre") == 0) continue;
      if ((rc = llorch_gguf_writer_copy_kv(w, kv)) != 0) goto fail;
    }
    if (strcmp(argv[3], "-") != 0 && (rc = llorch_gguf_writer_set_str(w, "tokenizer.ggml.pre", argv[3])) != 0)
      goto fail;
  }
  if ((rc = llorch_gguf_writer_write_file(w, argv[2], &em)) != 0) goto fail;
  llorch_gguf_close(g);
  llorch_gguf_writer_free(w);
  return 0;
fail:
  fprintf(stderr, "mkvocab: %s\n", em.text[0] ? em.text : llorch_strerror(rc));
  llorch_gguf_close(g);
  llorch_gguf_writer_free(w);
  return 1;
}
