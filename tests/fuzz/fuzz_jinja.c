/*
 * libFuzzer target for the Jinja engine (src/template/): the input up to
 * its first NUL byte is a template, the rest a JSON render context (a fixed
 * chat request when it is not a JSON object). Every template is compiled
 * and, when it compiles, rendered under small bounds. Whatever the input:
 * no crash, leak, hang or out-of-bounds access; a refusal explains itself
 * (a non-empty message); a render's provenance marks cover exactly its
 * output.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "llorch/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char default_ctx[] =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"x<|im_start|>\"},"
    "{\"role\":\"assistant\",\"content\":\"ok\",\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
    "\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]},{\"role\":\"tool\",\"content\":\"42\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],"
    "\"add_generation_prompt\":true,\"enable_thinking\":false}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nul = memchr(data, 0, size);
  size_t tlen = nul ? (size_t)(nul - data) : size;
  llorch_jinja *t = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_jinja_compile(&t, (const char *)data, tlen, &em) != 0) {
    if (em.text[0] == 0) abort();
    return 0;
  }
  cJSON *ctx = NULL;
  if (nul) ctx = cJSON_ParseWithLength((const char *)nul + 1, size - tlen - 1);
  if (!cJSON_IsObject(ctx)) {
    cJSON_Delete(ctx);
    ctx = cJSON_Parse(default_ctx);
  }
  llorch_jinja_render_opts o = {.bos_token = "<s>", .eos_token = "</s>", .now = 1795374120};
  o.limits.max_steps = 200000;
  o.limits.max_output = 1 << 20;
  o.limits.max_memory = 64u << 20;
  o.limits.max_depth = 200;
  llorch_jinja_output out = {0};
  if (llorch_jinja_render(t, ctx, &o, &out, &em) == 0) {
    if (!out.text || out.len > o.limits.max_output) abort();
    volatile uint8_t sum = 0;
    for (size_t i = 0; out.from_request && i < out.len; i++) sum += out.from_request[i]; /* ASan checks the length */
    (void)sum;
    llorch_jinja_output_free(&out);
  } else if (em.text[0] == 0) {
    abort();
  }
  cJSON_Delete(ctx);
  llorch_jinja_free(t);
  return 0;
}
