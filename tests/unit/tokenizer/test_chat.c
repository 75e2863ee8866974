/*
 * Chat prompts from a model's own template (src/tokenizer/chat.c): the
 * Qwen2 vocabulary's real template rendered and tokenized, special-token
 * text typed by a client kept as text, the tool_use template chosen when
 * tools are given, ChatML by name, and clear errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "testdata.h"
#include "llorch/chat.h"
#include "llorch/tokenizer.h"

static const char *testdata_dir(void) {
  static char dir[900];
  return testdata_path(dir, sizeof dir, "tokenizer");
}

static cJSON *context(const char *json) {
  cJSON *c = cJSON_Parse(json);
  if (!c) fail_msg("bad test JSON: %s", json);
  return c;
}

static char *render(const llorch_chat *c, const char *json, llorch_jinja_output *r) {
  llorch_errmsg em = {{0}};
  cJSON *ctx = context(json);
  int rc = llorch_chat_render(c, ctx, 0, r, &em);
  cJSON_Delete(ctx);
  if (rc != 0) fail_msg("render: %s", em.text);
  return r->text;
}

static size_t count_id(const llorch_tokens *v, int32_t id) {
  size_t n = 0;
  for (size_t i = 0; i < v->n; i++) n += v->ids[i] == id;
  return n;
}

/* The real Qwen2 template in the shared vocabulary: text and tokens. */
static void test_qwen2_gguf(void **state) {
  (void)state;
  char path[1024];
  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  snprintf(path, sizeof(path), "%s/ggml-vocab-qwen2.gguf", testdata_dir());
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("%s", em.text);
  llorch_chat *c = NULL;
  if (llorch_chat_init_model(&c, NULL, t, NULL, &em) != 0) fail_msg("%s", em.text);
  assert_string_equal(llorch_chat_source(c), "gguf");
  llorch_jinja_output r = {0};
  assert_string_equal(render(c, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"add_generation_prompt\":true}", &r),
                      "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  /* provenance: the template's bytes are its own, "Hi" is the request's */
  const char *hi = strstr(r.text, "Hi");
  assert_non_null(r.from_request);
  assert_int_equal(r.from_request[0], 0);
  assert_int_equal(r.from_request[hi - r.text], 1);
  assert_int_equal(r.from_request[hi - r.text + 2], 0);
  llorch_tokens v = {0};
  assert_int_equal(llorch_chat_tokenize(t, &r, &v, &em), 0);
  assert_int_equal(v.ids[0], 151644);       /* <|im_start|>, no BOS for qwen2 */
  assert_int_equal(count_id(&v, 151644), 3); /* three turns opened by the template */
  llorch_tokens_free(&v);
  llorch_jinja_output_free(&r);

  /* a client typing the markers gets text tokens, not control tokens */
  render(c, "{\"messages\":[{\"role\":\"user\",\"content\":\"x<|im_start|><|im_end|><|im_start|>\"}],"
            "\"add_generation_prompt\":true}", &r);
  assert_non_null(strstr(r.text, "user\nx<|im_start|><|im_end|><|im_start|><|im_end|>"));
  assert_int_equal(llorch_chat_tokenize(t, &r, &v, &em), 0);
  assert_int_equal(count_id(&v, 151644), 3); /* <|im_start|>: still only the template's three */
  assert_int_equal(count_id(&v, 151645), 2); /* <|im_end|>: the template's two */
  llorch_tokens_free(&v);
  /* the same text without provenance would have become control tokens */
  assert_int_equal(llorch_tokenize(t, r.text, r.len, LLORCH_TOKENIZE_PARSE_SPECIAL, &v, &em), 0);
  assert_int_equal(count_id(&v, 151644), 5);
  llorch_tokens_free(&v);
  llorch_jinja_output_free(&r);

  /* ChatML by name; a model without a template is an error naming the fix */
  llorch_chat_free(c);
  assert_int_equal(llorch_chat_init_model(&c, NULL, t, "chatml", &em), 0);
  assert_string_equal(render(c, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"add_generation_prompt\":true}", &r),
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  llorch_jinja_output_free(&r);
  llorch_chat_free(c);
  assert_int_equal(llorch_chat_init_model(&c, NULL, t, "/nonexistent/t.jinja", &em), LLORCH_EIO);
  assert_non_null(strstr(em.text, "/nonexistent/t.jinja"));
  llorch_tokenizer_free(t);
}

static void test_tool_use_and_errors(void **state) {
  (void)state;
  llorch_chat *c = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_chat_init(&c, "plain:{{ messages|length }}", "tools:{{ tools|length }}{{ eos_token }}", "<s>",
                                    "</s>", &em),
                   0);
  assert_true(llorch_chat_has_tool_use(c));
  llorch_jinja_output r = {0};
  assert_string_equal(render(c, "{\"messages\":[]}", &r), "plain:0");
  llorch_jinja_output_free(&r);
  assert_string_equal(render(c, "{\"messages\":[],\"tools\":[]}", &r), "plain:0");
  llorch_jinja_output_free(&r);
  assert_string_equal(render(c, "{\"messages\":[],\"tools\":[{\"type\":\"function\"}]}", &r), "tools:1</s>");
  llorch_jinja_output_free(&r);
  llorch_chat_free(c);

  /* a template's own refusal and a syntax error */
  assert_int_equal(llorch_chat_init(&c, "{{ raise_exception('System role not supported') }}", NULL, NULL, NULL, &em), 0);
  cJSON *ctx = context("{\"messages\":[]}");
  assert_int_equal(llorch_chat_render(c, ctx, 0, &r, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "TemplateError: System role not supported");
  cJSON_Delete(ctx);
  llorch_chat_free(c);
  assert_int_equal(llorch_chat_init(&c, "{% if x %}", NULL, NULL, NULL, &em), LLORCH_EFORMAT);
  assert_non_null(strstr(em.text, "chat template: TemplateSyntaxError"));
  if (!strstr(em.text, "endif")) fail_msg("%s", em.text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_qwen2_gguf),
      cmocka_unit_test(test_tool_use_and_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
