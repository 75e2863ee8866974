/*
 * libFuzzer target for the tokenizers: arbitrary bytes tokenized with the
 * qwen2 (byte-level BPE) and llama-spm (SentencePiece) vocabularies from
 * $LLORCH_TESTDATA/tokenizer (tests/common/testdata.h), with and without
 * special-token parsing, then decoded and streamed through a textstream with
 * stop strings taken from the input. Whatever the input: no crash, leak or
 * out-of-bounds access; every id is in the vocabulary; valid UTF-8 comes back
 * unchanged from the byte-level vocabulary; streamed output is valid UTF-8.
 *
 * An input whose first byte is 0xFF is a GGUF file instead: its tokenizer
 * metadata is loaded (and, if accepted, used on a short text), so broken
 * tokenizer.* keys are fuzzed too (seeds: small vocab-only files).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "testdata.h"
#include "llorch/chat.h"
#include "llorch/gguf.h"
#include "llorch/textstream.h"
#include "llorch/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static llorch_tokenizer *vocab[2]; /* qwen2, llama-spm */

static llorch_tokenizer *fuzz_load(const char *name) {
  char path[1024], rel[256];
  snprintf(rel, sizeof rel, "tokenizer/%s", name);
  testdata_path(path, sizeof path, rel);
  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) {
    fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, em.text);
    abort();
  }
  return t;
}

static bool utf8_valid(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t k;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c < 0x80) k = 1;
    else if (c >= 0xc2 && c <= 0xdf) k = 2;
    else if (c >= 0xe0 && c <= 0xef) {
      k = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      k = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else
      return false;
    if (i + k > n) return false;
    for (size_t j = 1; j < k; j++) {
      uint8_t b = s[i + j];
      if (j == 1 ? (b < lo || b > hi) : (b & 0xc0) != 0x80) return false;
    }
    i += k;
  }
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!vocab[0]) {
    vocab[0] = fuzz_load("ggml-vocab-qwen2.gguf");
    vocab[1] = fuzz_load("ggml-vocab-llama-spm.gguf");
  }
  if (size < 1) return 0;
  if (data[0] == 0xff) {
    llorch_gguf *g = NULL;
    llorch_tokenizer *t = NULL;
    llorch_errmsg em = {{0}};
    if (llorch_gguf_open_memory(&g, data + 1, size - 1, LLORCH_GGUF_OPEN_HEADER_ONLY, &em) != 0) return 0;
    int rc = llorch_tokenizer_load(&t, g, &em);
    if (rc != 0) {
      if (em.text[0] == 0 || strchr(em.text, '\n')) abort(); /* every refusal explains itself */
    } else {
      static const char sample[] = "Hello <|im_start|> w\xc3\xb6rld 123 \xf0\x9f\xa6\x99</s>";
      llorch_tokens ids = {0};
      if (llorch_tokenize(t, sample, sizeof(sample) - 1, LLORCH_TOKENIZE_PARSE_SPECIAL | LLORCH_TOKENIZE_ADD_SPECIAL,
                          &ids, &em) == 0) {
        char *dec = NULL;
        for (size_t i = 0; i < ids.n; i++)
          if (ids.ids[i] < 0 || ids.ids[i] >= llorch_tokenizer_n_vocab(t)) abort();
        if (llorch_detokenize(t, ids.ids, ids.n, LLORCH_DETOK_RENDER_SPECIAL, &dec, NULL, &em) != 0) abort();
        free(dec);
      }
      llorch_tokens_free(&ids);
      llorch_tokenizer_free(t);
    }
    llorch_gguf_close(g);
    return 0;
  }
  uint8_t mode = data[0];
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  llorch_tokenizer *t = vocab[mode & 1];
  unsigned flags = (mode & 2) ? LLORCH_TOKENIZE_PARSE_SPECIAL : 0;
  if (mode & 4) flags |= LLORCH_TOKENIZE_ADD_SPECIAL;

  llorch_tokens ids = {0};
  llorch_errmsg em = {{0}};
  if (llorch_tokenize(t, text, len, flags, &ids, &em) != 0) {
    if (em.text[0] == 0 || strchr(em.text, '\n')) abort();
    return 0;
  }
  for (size_t i = 0; i < ids.n; i++)
    if (ids.ids[i] < 0 || ids.ids[i] >= llorch_tokenizer_n_vocab(t)) abort();

  char *dec = NULL;
  size_t dlen = 0;
  if (llorch_detokenize(t, ids.ids, ids.n, flags & LLORCH_TOKENIZE_PARSE_SPECIAL ? LLORCH_DETOK_RENDER_SPECIAL : 0,
                        &dec, &dlen, &em) != 0)
    abort();
  /* byte-level BPE gives valid UTF-8 back byte for byte (plain text, or
   * special text rendered back as itself) */
  if ((mode & 1) == 0 && !(mode & 4) && utf8_valid((const uint8_t *)text, len) &&
      (dlen != len || memcmp(dec, text, len) != 0))
    abort();
  free(dec);

  /* stream the ids with a stop string cut from the input */
  size_t stop_len = len > 0 ? (size_t)(mode >> 4) % (len < 8 ? len : 8) + 1 : 0;
  char stop[9] = {0};
  if (stop_len) memcpy(stop, text + len - stop_len, stop_len);
  const char *stops[1] = {stop};
  llorch_textstream *ts = NULL;
  if (llorch_textstream_init(&ts, t, 0, stops, stop[0] ? 1 : 0, &em) == 0) {
    llorch_textstream_out o;
    for (size_t i = 0; i < ids.n; i++) {
      if (llorch_textstream_feed(ts, ids.ids[i], &o) != 0) abort();
      if (!utf8_valid((const uint8_t *)o.text, o.len)) abort();
    }
    if (llorch_textstream_flush(ts, &o) != 0 || !utf8_valid((const uint8_t *)o.text, o.len)) abort();
    llorch_textstream_free(ts);
  }

  /* the input as a chat message content (ChatML) and as a template */
  char *content = malloc(len + 1);
  if (content) {
    memcpy(content, text, len);
    content[len] = 0;
    cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages"), *msg = cJSON_CreateObject();
    cJSON_AddItemToArray(msgs, msg);
    cJSON_AddStringToObject(msg, "role", "user");
    cJSON_AddStringToObject(msg, "content", content);
    cJSON_AddTrueToObject(ctx, "add_generation_prompt");
    for (int k = 0; k < 2; k++) {
      llorch_chat *c = NULL;
      const char *tmpl = k == 0 ? llorch_chat_chatml_template : content;
      if (llorch_chat_init(&c, tmpl, NULL, "<s>", "</s>", &em) != 0) {
        if (em.text[0] == 0) abort(); /* a refused template explains itself */
        continue;
      }
      llorch_jinja_output r = {0};
      if (llorch_chat_render(c, ctx, 1795374120, &r, &em) == 0) {
        llorch_tokens v = {0};
        if (llorch_chat_tokenize(t, &r, &v, &em) == 0) {
          for (size_t i = 0; i < v.n; i++)
            if (v.ids[i] < 0 || v.ids[i] >= llorch_tokenizer_n_vocab(t)) abort();
        }
        llorch_tokens_free(&v);
        llorch_jinja_output_free(&r);
      } else if (em.text[0] == 0) {
        abort();
      }
      llorch_chat_free(c);
    }
    cJSON_Delete(ctx);
    free(content);
  }
  llorch_tokens_free(&ids);
  return 0;
}
