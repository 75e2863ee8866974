/*
 * Streaming detokenizer: partial UTF-8 held across tokens, stop strings
 * spanning tokens, false starts released, flush at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testdata.h"
#include "llorch/textstream.h"
#include "llorch/tokenizer.h"

static const char *testdata_dir(void) {
  static char dir[900];
  return testdata_path(dir, sizeof dir, "tokenizer");
}

static llorch_tokenizer *load_vocab(const char *name) {
  char path[1024];
  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  snprintf(path, sizeof(path), "%s/%s", testdata_dir(), name);
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("load %s: %s", path, em.text);
  return t;
}

/* Feeds text pieces; collects everything released and the stop index. */
typedef struct collected {
  char text[1024];
  size_t len;
  int stop;
  int calls_with_stop;
} collected;

static void collect(collected *c, const llorch_textstream_out *o) {
  assert_true(c->len + o->len < sizeof(c->text));
  memcpy(c->text + c->len, o->text, o->len);
  c->len += o->len;
  c->text[c->len] = 0;
  if (o->stop >= 0) {
    c->stop = o->stop;
    c->calls_with_stop++;
  }
}

static void feed_all(llorch_textstream *ts, const char *const *pieces, size_t n, collected *c, bool flush) {
  llorch_textstream_out o;
  c->len = 0;
  c->text[0] = 0;
  c->stop = -1;
  c->calls_with_stop = 0;
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(llorch_textstream_feed_text(ts, pieces[i], strlen(pieces[i]), &o), 0);
    collect(c, &o);
  }
  if (flush) {
    assert_int_equal(llorch_textstream_flush(ts, &o), 0);
    collect(c, &o);
  }
}

static void test_utf8_held_across_pieces(void **state) {
  llorch_textstream *ts;
  llorch_textstream_out o;
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, NULL, 0, NULL), 0);
  /* U+1F999 (4 bytes) arriving one byte at a time after "a" */
  assert_int_equal(llorch_textstream_feed_text(ts, "a\xf0", 2, &o), 0);
  assert_int_equal(o.len, 1);
  assert_memory_equal(o.text, "a", 1);
  assert_int_equal(llorch_textstream_pending(ts), 1);
  assert_int_equal(llorch_textstream_feed_text(ts, "\x9f", 1, &o), 0);
  assert_int_equal(o.len, 0);
  assert_int_equal(llorch_textstream_feed_text(ts, "\xa6", 1, &o), 0);
  assert_int_equal(o.len, 0);
  assert_int_equal(llorch_textstream_feed_text(ts, "\x99!", 2, &o), 0);
  assert_int_equal(o.len, 5);
  assert_memory_equal(o.text, "\xf0\x9f\xa6\x99!", 5);
  assert_int_equal(llorch_textstream_pending(ts), 0);
  /* invalid bytes become U+FFFD; a dangling lead byte is replaced at flush */
  assert_int_equal(llorch_textstream_feed_text(ts, "x\xff\xc3", 3, &o), 0);
  assert_int_equal(o.len, 4);
  assert_memory_equal(o.text, "x\xef\xbf\xbd", 4);
  assert_int_equal(llorch_textstream_flush(ts, &o), 0);
  assert_int_equal(o.len, 3);
  assert_memory_equal(o.text, "\xef\xbf\xbd", 3);
  /* a lead byte followed by a non-continuation is bad at once, not held */
  assert_int_equal(llorch_textstream_feed_text(ts, "\xe2z", 2, &o), 0);
  assert_int_equal(o.len, 4);
  assert_memory_equal(o.text, "\xef\xbf\xbdz", 4);
  /* One U+FFFD per maximal subpart (Unicode 3.9, as Python, Node and
   * browsers): a token ending in the first two bytes of a three-byte
   * character (E2 82 of U+20AC), then a token that does not finish it, is
   * one replacement, not two; a bad second byte ends the subpart before it
   * (E0 80: two), and lone continuations are one each. */
  assert_int_equal(llorch_textstream_feed_text(ts, "a\xe2\x82", 3, &o), 0);
  assert_int_equal(o.len, 1);
  assert_int_equal(llorch_textstream_feed_text(ts, "b", 1, &o), 0);
  assert_int_equal(o.len, 4);
  assert_memory_equal(o.text, "\xef\xbf\xbd" "b", 4);
  assert_int_equal(llorch_textstream_feed_text(ts, "\xf0\x9f\xa6z\xe0\x80\x80\xbfy", 9, &o), 0);
  assert_int_equal(o.len, 3 + 1 + 4 * 3 + 1);
  assert_memory_equal(o.text, "\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdy", 17);
  llorch_textstream_free(ts);
}

static void test_stop_spanning_pieces(void **state) {
  static const char *const stops[] = {"STOP", "\n\nUser:"};
  llorch_textstream *ts;
  collected c;
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, stops, 2, NULL), 0);
  static const char *const p1[] = {"Hel", "lo S", "T", "OP and more", "ignored"};
  feed_all(ts, p1, 5, &c, true);
  assert_string_equal(c.text, "Hello ");
  assert_int_equal(c.stop, 0);
  assert_int_equal(c.calls_with_stop, 1);
  assert_true(llorch_textstream_stopped(ts));
  llorch_textstream_free(ts);

  /* a false start is released once it cannot be a stop any more */
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, stops, 2, NULL), 0);
  llorch_textstream_out o;
  assert_int_equal(llorch_textstream_feed_text(ts, "a ST", 4, &o), 0);
  assert_int_equal(o.len, 2); /* "ST" held */
  assert_int_equal(llorch_textstream_feed_text(ts, "ART", 3, &o), 0);
  assert_int_equal(o.len, 5);
  assert_memory_equal(o.text, "START", 5);
  assert_int_equal(llorch_textstream_pending(ts), 0);
  /* second stop string, spread over three pieces */
  static const char *const p2[] = {"fine.\n", "\nUs", "er: hi"};
  feed_all(ts, p2, 3, &c, false);
  assert_string_equal(c.text, "fine.");
  assert_int_equal(c.stop, 1);
  llorch_textstream_free(ts);

  /* the earliest stop wins; a held prefix is plain text at flush */
  static const char *const stops2[] = {"world", "o w"};
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, stops2, 2, NULL), 0);
  static const char *const p3[] = {"hello world"};
  feed_all(ts, p3, 1, &c, true);
  assert_string_equal(c.text, "hell");
  assert_int_equal(c.stop, 1);
  llorch_textstream_free(ts);
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, stops2, 2, NULL), 0);
  static const char *const p4[] = {"say wor"};
  feed_all(ts, p4, 1, &c, true);
  assert_string_equal(c.text, "say wor");
  assert_int_equal(c.stop, -1);
  llorch_textstream_free(ts);

  static const char *const bad[] = {"ok", ""};
  llorch_errmsg em;
  assert_int_equal(llorch_textstream_init(&ts, NULL, 0, bad, 2, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "stop string 1"));
}

/* A multi-byte stop string whose bytes come from byte tokens. */
static void test_tokens_spm_bytes(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-llama-spm.gguf");
  static const char text[] = "Llama \xf0\x9f\xa6\x99 says hi";
  llorch_tokens v = {0};
  llorch_errmsg em;
  assert_int_equal(llorch_tokenize(t, text, sizeof(text) - 1, 0, &v, &em), 0);
  /* the emoji is not in the vocabulary: four <0xXX> byte tokens */
  size_t n_byte = 0;
  for (size_t i = 0; i < v.n; i++) n_byte += llorch_tokenizer_token_attr(t, v.ids[i]) == LLORCH_TOKEN_BYTE;
  assert_int_equal(n_byte, 4);

  llorch_textstream *ts;
  assert_int_equal(llorch_textstream_init(&ts, t, 0, NULL, 0, NULL), 0);
  collected c = {.stop = -1};
  llorch_textstream_out o;
  for (size_t i = 0; i < v.n; i++) {
    assert_int_equal(llorch_textstream_feed(ts, v.ids[i], &o), 0);
    /* every release is whole UTF-8: never a lone part of the emoji */
    for (size_t k = 0; k < o.len; k++)
      if ((uint8_t)o.text[k] == 0xf0) assert_true(k + 3 < o.len);
    collect(&c, &o);
  }
  assert_int_equal(llorch_textstream_flush(ts, &o), 0);
  collect(&c, &o);
  /* pieces keep SentencePiece's leading space (llama.cpp streams it too) */
  assert_string_equal(c.text, " Llama \xf0\x9f\xa6\x99 says hi");
  llorch_textstream_free(ts);

  /* stop string = the emoji itself, assembled from byte tokens */
  static const char *const stops[] = {"\xf0\x9f\xa6\x99"};
  assert_int_equal(llorch_textstream_init(&ts, t, 0, stops, 1, NULL), 0);
  c.len = 0;
  c.stop = -1;
  for (size_t i = 0; i < v.n && !llorch_textstream_stopped(ts); i++) {
    assert_int_equal(llorch_textstream_feed(ts, v.ids[i], &o), 0);
    collect(&c, &o);
  }
  assert_string_equal(c.text, " Llama ");
  assert_int_equal(c.stop, 0);
  llorch_textstream_free(ts);
  llorch_tokens_free(&v);

  assert_int_equal(llorch_textstream_init(&ts, t, 0, NULL, 0, NULL), 0);
  assert_int_equal(llorch_textstream_feed(ts, 32000, &o), LLORCH_ERANGE);
  llorch_textstream_free(ts);
  llorch_tokenizer_free(t);
}

/* Byte-level BPE: a Chinese character split over byte tokens; control tokens. */
static void test_tokens_bpe(void **state) {
  llorch_tokenizer *t = load_vocab("ggml-vocab-qwen2.gguf");
  llorch_textstream *ts;
  llorch_textstream_out o;
  int32_t b[3];
  /* the byte tokens of U+4F60 (E4 BD A0) in GPT-2's unicode form */
  static const char *const mapped[3] = {"\xc3\xa4", "\xc2\xbd", "\xc5\x82"}; /* A0 -> U+0142 */
  for (int i = 0; i < 3; i++) {
    b[i] = llorch_tokenizer_find(t, mapped[i], 2);
    assert_true(b[i] >= 0);
  }
  assert_int_equal(llorch_textstream_init(&ts, t, 0, NULL, 0, NULL), 0);
  assert_int_equal(llorch_textstream_feed(ts, b[0], &o), 0);
  assert_int_equal(o.len, 0);
  assert_int_equal(llorch_textstream_feed(ts, b[1], &o), 0);
  assert_int_equal(o.len, 0);
  assert_int_equal(llorch_textstream_feed(ts, b[2], &o), 0);
  assert_int_equal(o.len, 3);
  assert_memory_equal(o.text, "\xe4\xbd\xa0", 3);
  /* <|im_end|> renders nothing by default */
  assert_int_equal(llorch_textstream_feed(ts, 151645, &o), 0);
  assert_int_equal(o.len, 0);
  llorch_textstream_free(ts);
  assert_int_equal(llorch_textstream_init(&ts, t, LLORCH_DETOK_RENDER_SPECIAL, NULL, 0, NULL), 0);
  assert_int_equal(llorch_textstream_feed(ts, 151645, &o), 0);
  assert_int_equal(o.len, 10);
  llorch_textstream_free(ts);
  llorch_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_utf8_held_across_pieces),
      cmocka_unit_test(test_stop_spanning_pieces),
      cmocka_unit_test(test_tokens_spm_bytes),
      cmocka_unit_test(test_tokens_bpe),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
