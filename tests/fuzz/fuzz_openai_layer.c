/*
 * libFuzzer target for the OpenAI layer's request side (src/openai/request.c), within
 * small limits:
 * arbitrary bytes as a request body for each API. The parser returns 0 or a
 * 400/404 naming a field in one printable line; an accepted request is
 * turned into the worker's execute body (which must parse back and pass the
 * native validation again) and into the chat template context. The same
 * bytes as an Anthropic Messages and a Responses body go through their
 * translations (src/openai/anthropic.c, responses.c): 0 with a chat body,
 * or a 400 naming a field in one printable line; a translated body is
 * validated as chat like any other.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const llorch_openai_limits lim = {64, 64, 4, 8, 8};
  cJSON *body = NULL;
  llorch_errmsg em = {{0}};
  /* the orchestrator's rename of a worker's embeddings answer: any bytes */
  llorch_jbuf ren;
  llorch_jbuf_init(&ren);
  uint32_t pt = 0;
  int rrc = llorch_openai_embeddings_rename((const char *)data, size, "m", &ren, &pt);
  if (rrc != 0 && rrc != LLORCH_EFORMAT && rrc != LLORCH_ENOMEM) abort();
  llorch_jbuf_free(&ren);
  if (llorch_json_parse((const char *)data, size, true, &body, &em) < 0) return 0;
  for (int api = 0; api < 3; api++) {
    llorch_openai_request r;
    llorch_openai_error err = {0};
    if (llorch_openai_request_parse(body, (llorch_openai_api)api, &lim, &r, &err) < 0) {
      if (err.status < 400 || !err.message[0] || strchr(err.message, '\n')) abort();
      continue;
    }
    char *native = llorch_openai_request_native_body(&r, "job-1", LLORCH_REASONING_CONTENT);
    if (!native) abort();
    cJSON *nb = cJSON_Parse(native);
    llorch_openai_request r2;
    /* What the orchestrator forwards, the worker accepts. */
    if (!nb || llorch_openai_request_parse(nb, LLORCH_OPENAI_NATIVE, &lim, &r2, &err) < 0) abort();
    if (r.chat) {
      cJSON *ctx = llorch_openai_chat_context(&r);
      if (!ctx) abort();
      cJSON_Delete(ctx);
    }
    cJSON_Delete(nb);
    free(native);
  }
  for (int d = LLORCH_DIALECT_ANTHROPIC; d <= LLORCH_DIALECT_RESPONSES; d++) {
    cJSON *chat = NULL;
    llorch_openai_error err = {0};
    if (llorch_openai_dialect_to_chat((llorch_openai_dialect)d, body, &lim, &chat, &err) < 0) {
      if (chat || err.status < 400 || !err.message[0] || strchr(err.message, '\n')) abort();
      continue;
    }
    llorch_openai_request r;
    if (llorch_openai_request_parse(chat, LLORCH_OPENAI_CHAT, &lim, &r, &err) < 0 &&
        (err.status < 400 || !err.message[0] || strchr(err.message, '\n')))
      abort();
    cJSON_Delete(chat);
  }
  /* embeddings: what the orchestrator forwards, the worker accepts, with
   * the same inputs; every input is a string or a list of ids */
  llorch_openai_embed_request er;
  llorch_openai_error eerr = {0};
  if (llorch_openai_embed_parse(body, &er, &eerr) < 0) {
    if (eerr.status != 400 || !eerr.message[0] || strchr(eerr.message, '\n')) abort();
  } else {
    char *fwd = llorch_openai_embed_body(&er);
    cJSON *fb = fwd ? cJSON_Parse(fwd) : NULL;
    llorch_openai_embed_request er2;
    if (!fb || llorch_openai_embed_parse(fb, &er2, &eerr) < 0 || er2.n_inputs != er.n_inputs ||
        er2.ids != er.ids || er2.dimensions != er.dimensions || er2.encoding != er.encoding)
      abort();
    for (int i = 0; i < er.n_inputs; i++) {
      const char *text;
      const cJSON *ids;
      llorch_openai_embed_input(&er, i, &text, &ids);
      if (!text == !ids || (text && !text[0]) || (ids && cJSON_GetArraySize(ids) < 1)) abort();
    }
    cJSON_Delete(fb);
    free(fwd);
  }
  cJSON_Delete(body);
  return 0;
}
