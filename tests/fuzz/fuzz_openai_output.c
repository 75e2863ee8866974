/*
 * libFuzzer target for the parser of generated text (src/openai/output.c):
 * the first byte picks the tool-call format and options, the rest is the
 * model's output, fed in pieces whose lengths the data also decides. Fed
 * whole or in pieces, the parser must produce the same content, reasoning
 * and calls; nothing may crash, leak or hang.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_delta(void *user, const llorch_openai_delta *d) {
  llorch_openai_message_add(user, d);
}

static void run(const llorch_openai_output_opts *o, const char *text, size_t n, size_t step,
                llorch_openai_message *m) {
  llorch_openai_message_init(m);
  llorch_openai_output *p = llorch_openai_output_new(o, on_delta, m);
  if (!p) abort();
  for (size_t at = 0; at < n; at += step) {
    size_t k = n - at < step ? n - at : step;
    if (llorch_openai_output_feed(p, text + at, k) < 0) abort();
  }
  if (llorch_openai_output_finish(p) < 0) abort();
  llorch_openai_output_free(p);
}

static int same(const llorch_jbuf *a, const llorch_jbuf *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static cJSON *tools;
  if (!tools)
    tools = cJSON_Parse("[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                        "\"parameters\":{\"properties\":{\"n\":{\"type\":\"integer\"}}}}}]");
  if (size < 2) return 0;
  llorch_openai_output_opts o = {0};
  o.format = (llorch_tool_format)(data[0] % 8);
  o.reasoning = data[0] & 8;
  o.start_in_reasoning = data[0] & 16;
  o.start_in_recipient = data[0] & 32;
  o.tool_list = tools;
  o.id_seed = 7;
  size_t step = (size_t)data[1] % 7 + 1;
  const char *text = (const char *)data + 2;
  size_t n = size - 2;
  llorch_openai_message whole, pieces;
  run(&o, text, n, n ? n : 1, &whole);
  run(&o, text, n, step, &pieces);
  if (!same(&whole.content, &pieces.content) || !same(&whole.reasoning, &pieces.reasoning) ||
      whole.n_calls != pieces.n_calls)
    abort();
  for (int i = 0; i < whole.n_calls; i++)
    if (!same(&whole.calls[i].args, &pieces.calls[i].args)) abort();
  llorch_openai_message_free(&whole);
  llorch_openai_message_free(&pieces);
  return 0;
}
