/*
 * Chat templates: detection from template text, and each family rendered
 * against the string its reference Jinja template produces (worked out by
 * hand from the template definitions quoted in src/tokenizer/chat.c).
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
#include "llorch/chat.h"
#include "llorch/tokenizer.h"

static const char *testdata_dir(void) {
  static char dir[900];
  return testdata_path(dir, sizeof dir, "tokenizer");
}

/* Reference templates (abridged where the rest does not change the output). */
static const char T_LLAMA3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
static const char T_LLAMA31[] =
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}";
static const char T_LLAMA2[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() "
    "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif "
    "%}{% endfor %}";
static const char T_MISTRAL[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}";
static const char T_PHI3[] =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif "
    "message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% "
    "endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}";
static const char T_GEMMA[] =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + "
    "'\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = \"\" %}{% set "
    "loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'assistant') "
    "%}{% set role = \"model\" %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + "
    "'\\n' + (first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% "
    "endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";
static const char T_QWEN25[] =
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- "
    "messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' "
    "}}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
    "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by "
    "Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}...";

static const llorch_chat_message conv[] = {
    {"system", "Be brief."},
    {"user", "  Hi there!  "},
    {"assistant", "Hello. "},
    {"user", "2+2?"},
};

static void expect_render(llorch_chat *c, const llorch_chat_message *m, size_t n, bool gen, const char *want) {
  char *out = NULL;
  size_t len = 0;
  llorch_errmsg em = {{0}};
  int rc = llorch_chat_render(c, m, n, gen, &out, &len, &em);
  if (rc != 0) fail_msg("render: %s", em.text);
  if (strcmp(out, want) != 0) fail_msg("rendered:\n[%s]\nexpected:\n[%s]", out, want);
  assert_int_equal(len, strlen(want));
  free(out);
}

static llorch_chat *chat_new(const char *tmpl, const char *family, const char *eos) {
  llorch_chat *c = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_chat_init(&c, tmpl, family, eos, &em) != 0) fail_msg("init: %s", em.text);
  return c;
}

static void test_detect(void **state) {
  assert_int_equal(llorch_chat_detect(T_LLAMA3), LLORCH_CHAT_LLAMA3);
  assert_int_equal(llorch_chat_detect(T_LLAMA31), LLORCH_CHAT_LLAMA3);
  assert_int_equal(llorch_chat_detect(T_LLAMA2), LLORCH_CHAT_LLAMA2);
  assert_int_equal(llorch_chat_detect(T_MISTRAL), LLORCH_CHAT_MISTRAL);
  assert_int_equal(llorch_chat_detect(T_PHI3), LLORCH_CHAT_PHI3);
  assert_int_equal(llorch_chat_detect(T_GEMMA), LLORCH_CHAT_GEMMA);
  assert_int_equal(llorch_chat_detect(T_QWEN25), LLORCH_CHAT_CHATML);
  assert_int_equal(llorch_chat_detect("{{ messages }}"), LLORCH_CHAT_UNKNOWN);
  assert_int_equal(llorch_chat_detect("<|im_start|>x<|im_sep|>"), LLORCH_CHAT_UNKNOWN); /* phi-4 */
  assert_int_equal(llorch_chat_detect(NULL), LLORCH_CHAT_UNKNOWN);

  llorch_chat *c = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_chat_init(&c, "{{ messages }}", NULL, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "no supported family"));
  /* the template's text is quoted on one line */
  assert_int_equal(llorch_chat_init(&c, "{% for m in messages %}\n{{ m }}\n", NULL, NULL, &em), LLORCH_EINVAL);
  assert_null(strchr(em.text, '\n'));
  assert_int_equal(llorch_chat_init(&c, NULL, NULL, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "no tokenizer.chat_template"));
  assert_int_equal(llorch_chat_init(&c, NULL, "vicuna", NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "'vicuna'"));
  /* a named family overrides whatever the template looks like */
  c = chat_new("{{ messages }}", "gemma", NULL);
  assert_int_equal(llorch_chat_family_of(c), LLORCH_CHAT_GEMMA);
  llorch_chat_free(c);
  c = chat_new(NULL, "qwen", NULL);
  assert_int_equal(llorch_chat_family_of(c), LLORCH_CHAT_CHATML);
  assert_null(llorch_chat_default_system(c));
  llorch_chat_free(c);
}

/* The real Qwen2 template in the shared vocabulary, default system prompt included. */
static void test_chatml_qwen2(void **state) {
  char path[1024];
  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  snprintf(path, sizeof(path), "%s/ggml-vocab-qwen2.gguf", testdata_dir());
  if (llorch_tokenizer_load_file(&t, path, &em) != 0) fail_msg("%s", em.text);
  llorch_chat *c = NULL;
  assert_int_equal(llorch_chat_init_tokenizer(&c, t, NULL, &em), 0);
  assert_int_equal(llorch_chat_family_of(c), LLORCH_CHAT_CHATML);
  assert_string_equal(llorch_chat_default_system(c), "You are a helpful assistant");
  expect_render(c, conv + 1, 1, true,
                "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                "<|im_start|>user\n  Hi there!  <|im_end|>\n"
                "<|im_start|>assistant\n");
  expect_render(c, conv, 4, false,
                "<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\n  Hi there!  <|im_end|>\n"
                "<|im_start|>assistant\nHello. <|im_end|>\n"
                "<|im_start|>user\n2+2?<|im_end|>\n");
  /* the rendered text tokenizes into the special tokens */
  char *text;
  size_t len;
  assert_int_equal(llorch_chat_render(c, conv + 1, 1, true, &text, &len, &em), 0);
  llorch_tokens v = {0};
  assert_int_equal(llorch_tokenize(t, text, len, LLORCH_TOKENIZE_ADD_SPECIAL | LLORCH_TOKENIZE_PARSE_SPECIAL, &v, &em),
                   0);
  assert_int_equal(v.ids[0], 151644);                /* <|im_start|>, no BOS for qwen2 */
  assert_int_equal(v.ids[v.n - 1], 198);             /* "\n" */
  assert_int_equal(v.ids[v.n - 3], 151644);          /* <|im_start|> assistant \n */
  llorch_tokens_free(&v);
  free(text);
  llorch_chat_free(c);
  llorch_tokenizer_free(t);

  /* Qwen2.5 spells the default differently; both are found */
  c = chat_new(T_QWEN25, NULL, NULL);
  assert_string_equal(llorch_chat_default_system(c), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  llorch_chat_free(c);
}

static void test_llama3(void **state) {
  llorch_chat *c = chat_new(T_LLAMA3, NULL, NULL);
  expect_render(c, conv, 4, true,
                "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n");
  llorch_chat_free(c);
  c = chat_new(T_LLAMA31, NULL, NULL);
  expect_render(c, conv, 2, true,
                "<|start_header_id|>system<|end_header_id|>\n\n"
                "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n");
  assert_int_equal(llorch_chat_set_date(c, "01 Jan 2026"), 0);
  expect_render(c, conv + 1, 1, false,
                "<|start_header_id|>system<|end_header_id|>\n\n"
                "Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2026\n\n<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>");
  llorch_chat_free(c);
}

static void test_llama2(void **state) {
  llorch_chat *c = chat_new(T_LLAMA2, NULL, "</s>");
  expect_render(c, conv, 4, true,
                "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n  Hi there! [/INST] Hello. </s>"
                "<s>[INST] 2+2? [/INST]");
  expect_render(c, conv + 1, 1, true, "[INST] Hi there! [/INST]");
  llorch_chat_free(c);
}

static void test_mistral(void **state) {
  llorch_chat *c = chat_new(T_MISTRAL, NULL, "</s>");
  expect_render(c, conv + 1, 3, true, "[INST]   Hi there!   [/INST]Hello. </s>[INST] 2+2? [/INST]");
  expect_render(c, conv, 2, true, "[INST] Be brief.\n\n  Hi there!   [/INST]");
  llorch_chat_free(c);
}

static void test_phi3(void **state) {
  llorch_chat *c = chat_new(T_PHI3, NULL, "<|endoftext|>");
  expect_render(c, conv, 3, true,
                "<|system|>\nBe brief.<|end|>\n<|user|>\n  Hi there!  <|end|>\n<|assistant|>\nHello. <|end|>\n"
                "<|assistant|>\n");
  expect_render(c, conv + 1, 1, false, "<|user|>\n  Hi there!  <|end|>\n<|endoftext|>");
  llorch_chat_free(c);
}

static void test_gemma(void **state) {
  llorch_chat *c = chat_new(T_GEMMA, NULL, NULL);
  expect_render(c, conv, 4, true,
                "<start_of_turn>user\nBe brief.\n\nHi there!<end_of_turn>\n"
                "<start_of_turn>model\nHello.<end_of_turn>\n"
                "<start_of_turn>user\n2+2?<end_of_turn>\n"
                "<start_of_turn>model\n");
  expect_render(c, conv + 1, 1, false, "<start_of_turn>user\nHi there!<end_of_turn>\n");
  llorch_chat_free(c);
}

static void test_roles(void **state) {
  char *out;
  llorch_errmsg em = {{0}};
  static const llorch_chat_message bad_role[] = {{"user", "a"}, {"tool", "b"}};
  static const llorch_chat_message two_users[] = {{"user", "a"}, {"user", "b"}};
  static const llorch_chat_message late_system[] = {{"user", "a"}, {"assistant", "b"}, {"system", "c"}};
  static const llorch_chat_message no_content[] = {{"user", NULL}};
  llorch_chat *chatml = chat_new(NULL, "chatml", NULL), *gemma = chat_new(NULL, "gemma", NULL);
  assert_int_equal(llorch_chat_render(chatml, bad_role, 2, true, &out, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "messages[1].role is 'tool'"));
  assert_int_equal(llorch_chat_render(chatml, no_content, 1, true, &out, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "messages[0].content"));
  /* ChatML takes any order; the alternating families do not */
  assert_int_equal(llorch_chat_render(chatml, two_users, 2, true, &out, NULL, &em), 0);
  free(out);
  assert_int_equal(llorch_chat_render(gemma, two_users, 2, true, &out, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "messages[1].role is 'user', expected 'assistant'"));
  assert_int_equal(llorch_chat_render(gemma, late_system, 3, true, &out, NULL, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "messages[2] is a system message"));
  /* no messages: just the generation prompt */
  assert_int_equal(llorch_chat_render(gemma, NULL, 0, true, &out, NULL, &em), 0);
  assert_string_equal(out, "<start_of_turn>model\n");
  free(out);
  llorch_chat_free(chatml);
  llorch_chat_free(gemma);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_detect),  cmocka_unit_test(test_chatml_qwen2), cmocka_unit_test(test_llama3),
      cmocka_unit_test(test_llama2),  cmocka_unit_test(test_mistral),      cmocka_unit_test(test_phi3),
      cmocka_unit_test(test_gemma),   cmocka_unit_test(test_roles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
