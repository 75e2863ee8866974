/*
 * The OpenAI layer's other APIs (src/openai/anthropic.c, responses.c,
 * dialect.c): Anthropic Messages and Responses bodies become the chat body
 * they mean (and that body passes chat validation), wrong fields get a 400
 * naming them, and the deltas come back out as each API's blocks/items and
 * SSE events in the order their SDKs expect.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/openai.h"

/* body (JSON text) of dialect d -> chat body text (compact), validated as chat */
static char *to_chat(llorch_openai_dialect d, const char *json) {
  cJSON *body = cJSON_Parse(json);
  assert_non_null(body);
  cJSON *chat = NULL;
  llorch_openai_error err = {0};
  int rc = llorch_openai_dialect_to_chat(d, body, NULL, &chat, &err);
  if (rc < 0) fail_msg("%s: %d %s (%s)", json, err.status, err.message, err.param);
  llorch_openai_request r;
  if (llorch_openai_request_parse(chat, LLORCH_OPENAI_CHAT, NULL, &r, &err) < 0)
    fail_msg("%s: the chat body is refused: %s", json, err.message);
  char *text = cJSON_PrintUnformatted(chat);
  cJSON_Delete(chat);
  cJSON_Delete(body);
  return text;
}

static void expect_same(llorch_openai_dialect d, const char *json, const char *want) {
  char *got = to_chat(d, json);
  /* compare as values: key order is the translation's */
  cJSON *a = cJSON_Parse(got), *b = cJSON_Parse(want);
  assert_non_null(b);
  if (!cJSON_Compare(a, b, true)) fail_msg("%s\n  got  %s\n  want %s", json, got, want);
  cJSON_Delete(a);
  cJSON_Delete(b);
  free(got);
}

static void expect_400(llorch_openai_dialect d, const char *json, const char *param,
                       const char *needle) {
  cJSON *body = cJSON_Parse(json);
  assert_non_null(body);
  cJSON *chat = NULL;
  llorch_openai_error err = {0};
  assert_int_equal(llorch_openai_dialect_to_chat(d, body, NULL, &chat, &err), LLORCH_EINVAL);
  assert_null(chat);
  assert_int_equal(err.status, 400);
  if (strcmp(err.param, param) != 0) fail_msg("%s: param %s, expected %s", json, err.param, param);
  if (!strstr(err.message, needle)) fail_msg("%s: message \"%s\" lacks \"%s\"", json, err.message, needle);
  cJSON_Delete(body);
}

/* ---- Anthropic ---- */

static void test_anthropic_translation(void **state) {
  (void)state;
  expect_same(LLORCH_DIALECT_ANTHROPIC,
              "{\"model\":\"m\",\"max_tokens\":9,\"system\":\"sys\",\"stop_sequences\":[\"END\"],"
              "\"temperature\":0.5,\"top_k\":3,\"stream\":true,\"metadata\":{\"user_id\":\"u\"},"
              "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
              "{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\","
              "\"content\":\"hi\"}],\"model\":\"m\",\"stream\":true,\"temperature\":0.5,\"top_k\":3,"
              "\"max_tokens\":9,\"stop\":[\"END\"]}");
  /* tool_use -> tool_calls (input printed as the arguments string), tool_result -> a tool
   * message before the turn's text, thinking dropped, tools and tool_choice */
  expect_same(LLORCH_DIALECT_ANTHROPIC,
              "{\"max_tokens\":9,\"system\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\","
              "\"text\":\"b\"}],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
              "\"text\":\"q\"}]},{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\","
              "\"thinking\":\"t\",\"signature\":\"\"},{\"type\":\"tool_use\",\"id\":\"tu1\",\"name\":"
              "\"f\",\"input\":{\"x\":1}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
              "\"tool_use_id\":\"tu1\",\"content\":[{\"type\":\"text\",\"text\":\"r\"}]},{\"type\":"
              "\"text\",\"text\":\"more\"}]}],\"tools\":[{\"name\":\"f\",\"description\":\"d\","
              "\"input_schema\":{\"type\":\"object\"}}],\"tool_choice\":{\"type\":\"tool\",\"name\":"
              "\"f\",\"disable_parallel_tool_use\":true},\"thinking\":{\"type\":\"disabled\"}}",
              "{\"messages\":[{\"role\":\"system\",\"content\":\"a\\nb\"},{\"role\":\"user\","
              "\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
              "\"tu1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
              "\"{\\\"x\\\":1}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"tu1\",\"content\":\"r\"},"
              "{\"role\":\"user\",\"content\":\"more\"}],\"max_tokens\":9,\"chat_template_kwargs\":"
              "{\"enable_thinking\":false},\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
              "\"f\",\"description\":\"d\",\"parameters\":{\"type\":\"object\"}}}],\"tool_choice\":"
              "{\"type\":\"function\",\"function\":{\"name\":\"f\"}},\"parallel_tool_calls\":false}");
  /* only tool results: no empty user message after them */
  expect_same(LLORCH_DIALECT_ANTHROPIC,
              "{\"max_tokens\":9,\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":"
              "\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"let me see\"},{\"type\":"
              "\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":{}}]},{\"role\":\"user\",\"content\":"
              "[{\"type\":\"tool_result\",\"tool_use_id\":\"a\",\"content\":\"1\"}]}],\"tool_choice\":"
              "{\"type\":\"any\"},\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]}",
              "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
              "\"content\":\"let me see\",\"tool_calls\":[{\"id\":\"a\",\"type\":\"function\","
              "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\","
              "\"tool_call_id\":\"a\",\"content\":\"1\"}],\"max_tokens\":9,\"tools\":[{\"type\":"
              "\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],\"tool_choice\":"
              "\"required\"}");
}

static void test_anthropic_errors(void **state) {
  (void)state;
  const llorch_openai_dialect A = LLORCH_DIALECT_ANTHROPIC;
  expect_400(A, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "max_tokens", "required");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[]}", "messages", "non-empty array");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}",
             "messages[0].role", "system");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]}",
             "messages[0].content[0].type", "text only");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\","
                "\"id\":\"a\",\"name\":\"f\",\"input\":{}}]}]}",
             "messages[0].content[0].type", "only assistant messages");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":"
                "\"tool_use\",\"id\":\"a\",\"name\":\"f\",\"input\":[1]}]}]}",
             "messages[0].content[0].input", "must be an object");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"video\"}]}]}",
             "messages[0].content[0].type", "\"video\"");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":"
                "[{\"type\":\"bash_20250124\",\"name\":\"bash\"}]}",
             "tools[0].type", "only client tools");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":"
                "[{\"name\":\"f\"}]}",
             "tools[0].input_schema", "JSON Schema object");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"stop_sequences\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}",
             "stop_sequences", "more than 4");
  expect_400(A, "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"tool_choice\":{\"type\":\"tool\"}}",
             "tool_choice.name", "required");
}

/* ---- Responses ---- */

static void test_responses_translation(void **state) {
  (void)state;
  expect_same(LLORCH_DIALECT_RESPONSES,
              "{\"model\":\"m\",\"input\":\"hi\",\"instructions\":\"sys\",\"max_output_tokens\":7,"
              "\"store\":false,\"reasoning\":{\"effort\":\"low\"},\"text\":{\"format\":{\"type\":"
              "\"json_schema\",\"name\":\"x\",\"schema\":{\"type\":\"object\"},\"strict\":true}}}",
              "{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\","
              "\"content\":\"hi\"}],\"model\":\"m\",\"max_tokens\":7,\"response_format\":{\"type\":"
              "\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\"},"
              "\"strict\":true}}}");
  /* items: messages with parts, a function_call joining the assistant turn, its output, a
   * reasoning item dropped */
  expect_same(LLORCH_DIALECT_RESPONSES,
              "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"q\"}]},"
              "{\"type\":\"reasoning\",\"id\":\"rs\",\"summary\":[]},{\"type\":\"message\",\"role\":"
              "\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"checking\"}]},{\"type\":"
              "\"function_call\",\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},{\"type\":"
              "\"function_call_output\",\"call_id\":\"c1\",\"output\":\"r\"}],\"tools\":[{\"type\":"
              "\"function\",\"name\":\"f\",\"parameters\":{\"type\":\"object\"},\"strict\":false}],"
              "\"tool_choice\":\"required\",\"parallel_tool_calls\":false}",
              "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":"
              "\"checking\",\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":"
              "\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":"
              "\"c1\"}],\"parallel_tool_calls\":false,\"tools\":[{\"type\":\"function\",\"function\":"
              "{\"name\":\"f\",\"parameters\":{\"type\":\"object\"},\"strict\":false}}],\"tool_choice\":"
              "\"required\"}");
}

static void test_responses_errors(void **state) {
  (void)state;
  const llorch_openai_dialect R = LLORCH_DIALECT_RESPONSES;
  expect_400(R, "{\"input\":\"x\",\"previous_response_id\":\"resp_1\"}", "previous_response_id",
             "stateless");
  expect_400(R, "{\"input\":\"x\",\"store\":true}", "store", "stateless");
  expect_400(R, "{\"input\":\"x\",\"conversation\":\"c\"}", "conversation", "stateless");
  expect_400(R, "{\"input\":\"x\",\"background\":true}", "background", "not supported");
  expect_400(R, "{\"input\":5}", "input", "got 5");
  expect_400(R, "{}", "input", "got nothing");
  expect_400(R, "{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", "input[0].type", "stateless");
  expect_400(R, "{\"input\":[{\"type\":\"web_search_call\"}]}", "input[0].type", "\"web_search_call\"");
  expect_400(R, "{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_file\"}]}]}",
             "input[0].content[0].type", "text only");
  expect_400(R, "{\"input\":[{\"type\":\"function_call\",\"name\":\"f\",\"arguments\":\"{}\"}]}",
             "input[0].call_id", "required");
  expect_400(R, "{\"input\":\"x\",\"tools\":[{\"type\":\"file_search\"}]}", "tools[0].type",
             "only function tools");
  expect_400(R, "{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"yaml\"}}}", "text.format.type",
             "\"yaml\"");
  expect_400(R, "{\"input\":[{\"type\":\"reasoning\",\"summary\":[]}]}", "input", "no message");
  /* too many items, counted against request.max_messages under their own name */
  llorch_openai_limits lim = LLORCH_OPENAI_LIMITS_DEFAULT;
  lim.max_messages = 2;
  cJSON *body = cJSON_Parse("{\"input\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":"
                            "\"user\",\"content\":\"b\"},{\"role\":\"user\",\"content\":\"c\"}]}");
  cJSON *chat = NULL;
  llorch_openai_error err = {0};
  assert_int_equal(llorch_openai_dialect_to_chat(R, body, &lim, &chat, &err), LLORCH_EINVAL);
  assert_string_equal(err.param, "input");
  assert_non_null(strstr(err.message, "'input' has 3 items; at most 2"));
  cJSON_Delete(body);
}

/* ---- output ---- */

typedef struct captured {
  char names[64][48];
  int n;
  llorch_jbuf all; /* every data, one per line */
} captured;

static void capture(void *user, const char *event, const char *data, size_t len) {
  captured *c = user;
  if (c->n < 64) snprintf(c->names[c->n++], sizeof c->names[0], "%s", event);
  llorch_jbuf_raw(&c->all, data, len);
  llorch_jbuf_raw(&c->all, "\n", 1);
  /* every event's data is one JSON object */
  cJSON *v = cJSON_ParseWithLength(data, len);
  if (!cJSON_IsObject(v)) fail_msg("event %s: not a JSON object: %.*s", event, (int)len, data);
  cJSON_Delete(v);
}

/* reasoning, two content pieces, then a call in two fragments */
static void feed(llorch_openai_dout *o) {
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.reasoning = "hmm";
  d.reasoning_len = 3;
  llorch_openai_dout_add(o, &d);
  d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  d.content = "";
  llorch_openai_dout_add(o, &d); /* empty: nothing */
  d.content = "Hi ";
  d.content_len = 3;
  llorch_openai_dout_add(o, &d);
  d.content = "there";
  d.content_len = 5;
  llorch_openai_dout_add(o, &d);
  d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = 0;
  d.tool_id = "call_x";
  d.tool_name = "f";
  d.tool_args = "{\"a\":";
  d.tool_args_len = 5;
  llorch_openai_dout_add(o, &d);
  d.tool_id = d.tool_name = NULL;
  d.tool_args = "1}";
  d.tool_args_len = 2;
  llorch_openai_dout_add(o, &d);
}

static void expect_names(const captured *c, const char *const *want) {
  int i = 0;
  for (; want[i]; i++) {
    if (i >= c->n) fail_msg("event %d: none, expected %s", i, want[i]);
    if (strcmp(c->names[i], want[i]) != 0) fail_msg("event %d: %s, expected %s", i, c->names[i], want[i]);
  }
  assert_int_equal(c->n, i);
}

static void test_anthropic_output(void **state) {
  (void)state;
  captured c = {0};
  llorch_jbuf_init(&c.all);
  llorch_openai_dout o;
  llorch_openai_dout_init(&o, LLORCH_DIALECT_ANTHROPIC, "msg_1", "m", 5, capture, &c);
  llorch_openai_dout_start(&o, 11);
  feed(&o);
  llorch_openai_dout_finish(&o, "tool_calls", NULL, 11, 6, NULL);
  static const char *const want[] = {
      "message_start", "content_block_start", "content_block_delta", "content_block_stop",
      "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
      "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
      "message_delta", "message_stop", NULL};
  expect_names(&c, want);
  const char *all = c.all.data;
  assert_non_null(strstr(all, "\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\""));
  assert_non_null(strstr(all, "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}"));
  assert_non_null(strstr(all, "\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}"));
  assert_non_null(strstr(all, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_x\",\"name\":\"f\",\"input\":{}}"));
  assert_non_null(strstr(all, "{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}"));
  assert_non_null(strstr(all, "\"stop_reason\":\"tool_use\""));
  assert_non_null(strstr(all, "\"usage\":{\"input_tokens\":11,\"output_tokens\":0}"));
  llorch_openai_dout_free(&o);
  llorch_jbuf_free(&c.all);

  /* not streamed: the message object; a stop string -> stop_sequence */
  llorch_openai_dout_init(&o, LLORCH_DIALECT_ANTHROPIC, "msg_2", "m", 5, NULL, NULL);
  feed(&o);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_dout_finish(&o, "stop", "END", 11, 6, &b);
  cJSON *m = cJSON_Parse(b.data);
  assert_non_null(m);
  cJSON *want_m = cJSON_Parse(
      "{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":["
      "{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"\"},{\"type\":\"text\",\"text\":"
      "\"Hi there\"},{\"type\":\"tool_use\",\"id\":\"call_x\",\"name\":\"f\",\"input\":{\"a\":1}}],"
      "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\",\"usage\":{\"input_tokens\":11,"
      "\"output_tokens\":6}}");
  if (!cJSON_Compare(m, want_m, true)) fail_msg("got %s", b.data);
  cJSON_Delete(m);
  cJSON_Delete(want_m);
  llorch_jbuf_reset(&b);
  llorch_openai_dout_finish(&o, "length", NULL, 1, 2, &b);
  assert_non_null(strstr(b.data, "\"stop_reason\":\"max_tokens\""));
  llorch_jbuf_free(&b);
  llorch_openai_dout_free(&o);
}

static void test_responses_output(void **state) {
  (void)state;
  captured c = {0};
  llorch_jbuf_init(&c.all);
  llorch_openai_dout o;
  llorch_openai_dout_init(&o, LLORCH_DIALECT_RESPONSES, "resp_1", "m", 5, capture, &c);
  llorch_openai_dout_start(&o, 11);
  llorch_openai_dout_start(&o, 11); /* once only */
  feed(&o);
  llorch_openai_dout_finish(&o, "tool_calls", NULL, 11, 6, NULL);
  static const char *const want[] = {
      "response.created", "response.in_progress",
      "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
      "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
      "response.output_item.added", "response.content_part.added", "response.output_text.delta",
      "response.output_text.delta", "response.output_text.done", "response.content_part.done",
      "response.output_item.done",
      "response.output_item.added", "response.function_call_arguments.delta",
      "response.function_call_arguments.delta", "response.function_call_arguments.done",
      "response.output_item.done", "response.completed", NULL};
  expect_names(&c, want);
  const char *all = c.all.data;
  /* sequence numbers run 0.. without gaps */
  char seq[48];
  for (int i = 0; i < c.n; i++) {
    snprintf(seq, sizeof seq, "\"sequence_number\":%d,", i);
    if (!strstr(all, seq)) fail_msg("no event with %s", seq);
  }
  assert_non_null(strstr(all, "\"type\":\"response.output_text.done\",\"sequence_number\":12,"
                              "\"item_id\":\"msg_1_1\",\"output_index\":1,\"content_index\":0,"
                              "\"text\":\"Hi there\""));
  assert_non_null(strstr(all, "\"type\":\"response.function_call_arguments.done\",\"sequence_number\":18,"
                              "\"item_id\":\"fc_1_2\",\"output_index\":2,\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\""));
  assert_non_null(strstr(all, "\"status\":\"completed\""));
  llorch_openai_dout_free(&o);
  llorch_jbuf_free(&c.all);

  llorch_openai_dout_init(&o, LLORCH_DIALECT_RESPONSES, "resp_2", "m", 5, NULL, NULL);
  feed(&o);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_dout_finish(&o, "length", NULL, 11, 6, &b);
  cJSON *r = cJSON_Parse(b.data);
  assert_non_null(r);
  assert_string_equal(cJSON_GetObjectItem(r, "status")->valuestring, "incomplete");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "incomplete_details"), "reason")->valuestring,
                      "max_output_tokens");
  cJSON *out = cJSON_GetObjectItem(r, "output");
  assert_int_equal(cJSON_GetArraySize(out), 3);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(out, 0), "type")->valuestring, "reasoning");
  cJSON *msg = cJSON_GetArrayItem(out, 1);
  assert_string_equal(
      cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "content"), 0), "text")->valuestring,
      "Hi there");
  cJSON *fc = cJSON_GetArrayItem(out, 2);
  assert_string_equal(cJSON_GetObjectItem(fc, "call_id")->valuestring, "call_x");
  assert_string_equal(cJSON_GetObjectItem(fc, "arguments")->valuestring, "{\"a\":1}");
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "usage"), "total_tokens")->valueint, 17);
  cJSON_Delete(r);
  llorch_jbuf_free(&b);
  llorch_openai_dout_free(&o);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_anthropic_translation), cmocka_unit_test(test_anthropic_errors),
      cmocka_unit_test(test_responses_translation), cmocka_unit_test(test_responses_errors),
      cmocka_unit_test(test_anthropic_output),      cmocka_unit_test(test_responses_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
