/*
 * libFuzzer target for src/grammar: the GBNF parser and the JSON Schema
 * compiler. The first byte picks the input kind (even: GBNF text, odd: a
 * JSON Schema, strict when bit 1 is set); the rest is the input. Whatever
 * the input, compiling returns 0 or an error with a one-line message; a
 * grammar that compiles is then walked: its masks over a vocabulary of the
 * 256 single bytes and a few multi-byte tokens, random accepted tokens
 * (driven by the input bytes), and a match of the input itself. Never a
 * crash, leak or out-of-bounds read, and the matcher never reaches a state
 * where nothing is allowed unless the output is complete.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static llorch_grammar_vocab *fuzz_vocab;
#define FUZZ_NV 260

static void fuzz_vocab_init(void) {
  static char singles[256];
  static const char *texts[FUZZ_NV];
  static size_t lens[FUZZ_NV];
  static bool eog[FUZZ_NV];
  for (int i = 0; i < 256; i++) {
    singles[i] = (char)i;
    texts[i] = &singles[i];
    lens[i] = 1;
  }
  static const char *const multi[] = {"\"a", "\": ", "{\"", ""};
  for (int i = 0; i < 4; i++) {
    texts[256 + i] = multi[i];
    lens[256 + i] = strlen(multi[i]);
  }
  eog[259] = true;
  llorch_errmsg em;
  if (llorch_grammar_vocab_init_texts(&fuzz_vocab, texts, lens, eog, FUZZ_NV, &em) != 0) abort();
}

static void fuzz_walk(llorch_grammar *g, const uint8_t *drive, size_t n) {
  llorch_grammar_state *st = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_grammar_state_init(&st, g, fuzz_vocab, &em) != 0) return;
  uint32_t mask[(FUZZ_NV + 31) / 32];
  for (size_t step = 0; step < 64; step++) {
    int allowed = llorch_grammar_state_mask(st, mask, &em);
    if (allowed < 0) break; /* a limit: fine, with a message */
    if (allowed == 0) {
      /* every byte is a token, so only a finished output allows nothing */
      if (!llorch_grammar_state_finished(st)) abort();
      break;
    }
    /* the (drive[step])-th allowed token */
    int want = (int)(n ? drive[step % n] : 0) % allowed, id = -1;
    for (int i = 0; i < FUZZ_NV && id < 0; i++)
      if ((mask[i / 32] >> (i % 32)) & 1) {
        if (want == 0) id = i;
        want--;
      }
    if (llorch_grammar_state_accept(st, id, &em) != 0) abort(); /* allowed means accepted */
    if (llorch_grammar_state_finished(st)) break;
  }
  llorch_grammar_state_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!fuzz_vocab) fuzz_vocab_init();
  if (size < 1) return 0;
  uint8_t mode = data[0];
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  llorch_grammar_limits lim;
  llorch_grammar_limits_default(&lim);
  lim.max_rules = 5000;
  lim.max_states = 2048;
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  int rc;
  if (!(mode & 1)) {
    rc = llorch_grammar_from_gbnf(&g, text, len, &lim, &em);
  } else {
    cJSON *s = cJSON_ParseWithLength(text, len);
    if (!s) return 0;
    char warning[256];
    rc = llorch_grammar_from_schema(&g, s, (mode & 2) ? LLORCH_SCHEMA_STRICT : 0, &lim, warning,
                                    sizeof warning, &em);
    cJSON_Delete(s);
  }
  if (rc != 0) {
    if (em.text[0] == '\0' || strchr(em.text, '\n')) abort();
    return 0;
  }
  bool complete, prefix;
  llorch_grammar_match(g, text, len, &complete, &prefix, &em);
  fuzz_walk(g, data, size);
  llorch_grammar_free(g);
  return 0;
}
