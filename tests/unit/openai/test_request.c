/*
 * The OpenAI layer's request side (src/openai/request.c): validation errors
 * name the parameter, the worker's execute body carries what the client
 * asked for (and passes the worker's validation), the template context is
 * normalised the way templates expect, and the writers' shapes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/openai.h"

static int parse(const char *json, llorch_openai_api api, llorch_openai_request *r,
                 llorch_openai_error *err, cJSON **body) {
  *body = cJSON_Parse(json);
  assert_non_null(*body);
  return llorch_openai_request_parse(*body, api, NULL, r, err);
}

static void expect_400_api(llorch_openai_api api, const char *json, const char *param,
                           const char *needle) {
  cJSON *body;
  llorch_openai_request r;
  llorch_openai_error err = {0};
  assert_int_equal(parse(json, api, &r, &err, &body), LLORCH_EINVAL);
  assert_int_equal(err.status, 400);
  if (strcmp(err.param, param) != 0) fail_msg("%s: param %s, expected %s", json, err.param, param);
  if (!strstr(err.message, needle)) fail_msg("%s: message \"%s\" lacks \"%s\"", json, err.message, needle);
  cJSON_Delete(body);
}

static void expect_400(const char *json, const char *param, const char *needle) {
  expect_400_api(LLORCH_OPENAI_CHAT, json, param, needle);
}

static void test_errors(void **state) {
  (void)state;
  /* n: past the limit (default 8), below 1, not an integer */
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":9}", "n",
             "'n' = 9 is more than this server allows (request.max_n = 8)");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":0}", "n", "at least 1");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":-3}", "n", "'n' = -3");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2.5}", "n", "n");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":\"3\"}", "n", "n");
  expect_400("{\"messages\":[]}", "messages", "at least 1");
  expect_400("{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role", "robot");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"code\"}]}",
             "tools[0].type", "\"function\"");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
             "\"function\":{\"name\":\"a\"}},{\"type\":\"function\",\"function\":{\"name\":\"a\"}}]}",
             "tools[1].function.name", "same name as tools[0]");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":5}", "tool_choice",
             "got 5");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"tool_calls\":"
             "[{\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"b\",\"content\":\"1\"}]}",
             "messages[2].tool_call_id", "no earlier assistant message");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}",
             "messages[0].tool_calls", "only allowed on assistant");
  expect_400("{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content", "required");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", "top_logprobs",
             "needs 'logprobs'");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":[1]}", "logit_bias",
             "must be an object");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"-1\":5}}",
             "logit_bias", "not a token id");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"07\":5}}",
             "logit_bias", "not a token id");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"7\":101}}",
             "logit_bias", "[-100, 100]");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"7\":\"1\"}}",
             "logit_bias", "[-100, 100]");
}

static void test_native_body_and_context(void **state) {
  (void)state;
  cJSON *body;
  llorch_openai_request r;
  llorch_openai_error err = {0};
  assert_int_equal(
      parse("{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":[{\"type\":\"text\","
            "\"text\":\"be \"},{\"type\":\"text\",\"text\":\"brief\"}]},{\"role\":\"user\",\"content\":"
            "\"w?\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":"
            "\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Oslo"
            "\\\"}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"5\"}],\"tools\":[{\"type\":"
            "\"function\",\"function\":{\"name\":\"get_weather\"}}],\"tool_choice\":\"none\","
            "\"chat_template_kwargs\":{\"enable_thinking\":false},\"seed\":9007199254740992,"
            "\"max_completion_tokens\":7,\"response_format\":{\"type\":\"json_object\"}}",
            LLORCH_OPENAI_CHAT, &r, &err, &body),
      0);
  assert_int_equal(r.tool_choice, LLORCH_OPENAI_TOOL_CHOICE_NONE);
  assert_int_equal(r.max_tokens, 7);
  char *native = llorch_openai_request_native_body(&r, "j-1", LLORCH_REASONING_NONE);
  assert_non_null(native);
  /* a large seed keeps its digits (no exponent form) */
  assert_non_null(strstr(native, "\"seed\":9007199254740992"));
  cJSON *nb = cJSON_Parse(native);
  llorch_openai_request r2;
  assert_int_equal(llorch_openai_request_parse(nb, LLORCH_OPENAI_NATIVE, NULL, &r2, &err), 0);
  assert_true(r2.chat);
  assert_string_equal(r2.job_id, "j-1");
  assert_int_equal(r2.reasoning_format, LLORCH_REASONING_NONE);
  assert_int_equal(r2.tool_choice, LLORCH_OPENAI_TOOL_CHOICE_NONE);
  assert_int_equal(r2.max_tokens, 7);
  assert_non_null(r2.response_format);
  assert_non_null(r2.chat_template_kwargs);

  cJSON *ctx = llorch_openai_chat_context(&r);
  assert_non_null(ctx);
  char *text = cJSON_PrintUnformatted(ctx);
  /* developer -> system, parts joined, arguments an object, tools left out for "none" */
  assert_non_null(strstr(text, "{\"role\":\"system\",\"content\":\"be brief\"}"));
  assert_non_null(strstr(text, "\"arguments\":{\"city\":\"Oslo\"}"));
  assert_null(strstr(text, "\"tools\""));
  assert_non_null(strstr(text, "\"add_generation_prompt\":true,\"enable_thinking\":false}"));
  assert_null(strstr(text, "\"kwargs\""));
  assert_null(strstr(text, "\"bos_token\""));
  free(text);
  cJSON_Delete(ctx);
  cJSON_Delete(nb);
  free(native);
  cJSON_Delete(body);
}

/* n: accepted within the limits (the operator's, clamped to the hard one),
 * carried into the worker's body only when > 1, read back by the worker. */
static void test_n(void **state) {
  (void)state;
  llorch_openai_limits lim = LLORCH_OPENAI_LIMITS_DEFAULT;
  llorch_openai_request r;
  llorch_openai_error err = {0};
  cJSON *body = cJSON_Parse("{\"model\":\"m\",\"prompt\":\"p\",\"n\":3,\"temperature\":0}");
  assert_int_equal(llorch_openai_request_parse(body, LLORCH_OPENAI_COMPLETION, &lim, &r, &err), 0);
  assert_int_equal(r.n, 3);
  char *native = llorch_openai_request_native_body(&r, "j", LLORCH_REASONING_UNSET);
  assert_non_null(strstr(native, "\"n\":3"));
  cJSON *nb = cJSON_Parse(native);
  llorch_openai_request r2;
  assert_int_equal(llorch_openai_request_parse(nb, LLORCH_OPENAI_NATIVE, &lim, &r2, &err), 0);
  assert_int_equal(r2.n, 3);
  cJSON_Delete(nb);
  free(native);
  /* the operator's bound */
  lim.max_n = 2;
  assert_int_equal(llorch_openai_request_parse(body, LLORCH_OPENAI_COMPLETION, &lim, &r, &err),
                   LLORCH_EINVAL);
  assert_string_equal(err.param, "n");
  assert_non_null(strstr(err.message, "request.max_n = 2"));
  cJSON_Delete(body);
  /* absent: 1, and not in the worker's body */
  body = cJSON_Parse("{\"model\":\"m\",\"prompt\":\"p\"}");
  assert_int_equal(llorch_openai_request_parse(body, LLORCH_OPENAI_COMPLETION, &lim, &r, &err), 0);
  assert_int_equal(r.n, 1);
  native = llorch_openai_request_native_body(&r, NULL, LLORCH_REASONING_UNSET);
  assert_null(strstr(native, "\"n\""));
  free(native);
  cJSON_Delete(body);
  /* a configured bound past the hard one is clamped to it */
  lim.max_n = 100000;
  body = cJSON_Parse("{\"model\":\"m\",\"prompt\":\"p\",\"n\":129}");
  assert_int_equal(llorch_openai_request_parse(body, LLORCH_OPENAI_COMPLETION, &lim, &r, &err),
                   LLORCH_EINVAL);
  assert_non_null(strstr(err.message, "request.max_n = 128"));
  cJSON_Delete(body);
}

static void test_writers(void **state) {
  (void)state;
  llorch_openai_meta m = {.id = "chatcmpl-1", .created = 5, .model = "m", .chat = true, .cached_tokens = 2};
  llorch_openai_message msg;
  llorch_openai_message_init(&msg);
  llorch_openai_delta d = LLORCH_OPENAI_DELTA_INIT;
  d.reasoning = "hmm";
  d.reasoning_len = 3;
  llorch_openai_message_add(&msg, &d);
  d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = 0;
  d.tool_id = "call_a";
  d.tool_name = "f";
  d.tool_args = "";
  llorch_openai_message_add(&msg, &d);
  d.tool_id = d.tool_name = NULL;
  d.tool_args = "{\"x\":1}";
  d.tool_args_len = 7;
  llorch_openai_message_add(&msg, &d);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_write_chat_response(&b, &m, &msg, NULL, "tool_calls", 3, 4);
  assert_string_equal(
      b.data,
      "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":5,\"model\":\"m\","
      "\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
      "\"content\":null,\"reasoning_content\":\"hmm\",\"tool_calls\":[{\"id\":\"call_a\",\"type\":"
      "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]},\"logprobs\":null,"
      "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,"
      "\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":2}}}");
  /* n choices: index 0..n-1, usage once with the completion tokens summed */
  llorch_jbuf_reset(&b);
  llorch_openai_meta cm = {.id = "cmpl-1", .created = 5, .model = "m", .chat = false};
  const llorch_openai_choice ch[2] = {{.text = "ab", .len = 2, .finish = "stop"},
                                      {.text = "c", .len = 1, .finish = "length"}};
  llorch_openai_write_response(&b, &cm, ch, 2, 3, 5);
  assert_string_equal(
      b.data,
      "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":5,\"model\":\"m\","
      "\"system_fingerprint\":null,\"choices\":[{\"index\":0,\"text\":\"ab\",\"logprobs\":null,"
      "\"finish_reason\":\"stop\"},{\"index\":1,\"text\":\"c\",\"logprobs\":null,\"finish_reason\":"
      "\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8,"
      "\"prompt_tokens_details\":{\"cached_tokens\":0}}}");
  /* a chunk carries its choice's index */
  llorch_jbuf_reset(&b);
  cm.index = 2;
  llorch_openai_write_completion_chunk(&b, &cm, "x", 1, NULL, NULL);
  assert_non_null(strstr(b.data, "\"choices\":[{\"index\":2,\"text\":\"x\""));
  llorch_jbuf_reset(&b);
  m.index = 1;
  llorch_openai_write_chat_chunk(&b, &m, NULL, false, NULL, "stop");
  assert_non_null(strstr(b.data, "\"choices\":[{\"index\":1,\"delta\":{}"));
  /* a delta written and read back is the same delta */
  llorch_jbuf_reset(&b);
  d = (llorch_openai_delta)LLORCH_OPENAI_DELTA_INIT;
  d.tool_index = 2;
  d.tool_id = "call_b";
  d.tool_name = "g";
  d.tool_args = "";
  llorch_openai_write_delta(&b, &d, false);
  cJSON *o = cJSON_Parse(b.data);
  llorch_openai_delta back;
  assert_int_equal(llorch_openai_delta_from_json(o, &back), 0);
  assert_int_equal(back.tool_index, 2);
  assert_string_equal(back.tool_id, "call_b");
  assert_string_equal(back.tool_name, "g");
  cJSON_Delete(o);
  llorch_jbuf_free(&b);
  llorch_openai_message_free(&msg);
}

/* Completions' echo and suffix: parsing, the native body, and the prompt's
 * logprobs as the completions shape writes them. */
static void expect_400_completion(const char *json, const char *param, const char *needle) {
  expect_400_api(LLORCH_OPENAI_COMPLETION, json, param, needle);
}

static void test_echo_suffix(void **state) {
  (void)state;
  cJSON *body;
  llorch_openai_request r;
  llorch_openai_error err = {0};
  /* echo with max_tokens 0: the prompt only */
  assert_int_equal(parse("{\"prompt\":\"ab\",\"echo\":true,\"logprobs\":2,\"max_tokens\":0}",
                         LLORCH_OPENAI_COMPLETION, &r, &err, &body), 0);
  assert_true(r.echo);
  assert_true(r.prompt_only);
  assert_int_equal(r.max_tokens, 0);
  assert_true(r.logprobs);
  assert_int_equal(r.top_logprobs, 2);
  char *nb = llorch_openai_request_native_body(&r, NULL, LLORCH_REASONING_UNSET);
  assert_non_null(nb);
  cJSON *n = cJSON_Parse(nb);
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(n, "echo")));
  assert_int_equal(cJSON_GetObjectItem(n, "max_tokens")->valueint, 0);
  /* the native body parses back to the same request (the worker reads it) */
  llorch_openai_request r2;
  assert_int_equal(llorch_openai_request_parse(n, LLORCH_OPENAI_NATIVE, NULL, &r2, &err), 0);
  assert_true(r2.echo && r2.prompt_only && r2.logprobs && r2.top_logprobs == 2);
  cJSON_Delete(n);
  free(nb);
  cJSON_Delete(body);
  /* suffix travels too */
  assert_int_equal(parse("{\"prompt\":\"def f(\",\"suffix\":\"\\n  return x\"}",
                         LLORCH_OPENAI_COMPLETION, &r, &err, &body), 0);
  assert_string_equal(r.suffix, "\n  return x");
  assert_false(r.echo);
  nb = llorch_openai_request_native_body(&r, NULL, LLORCH_REASONING_UNSET);
  n = cJSON_Parse(nb);
  assert_string_equal(cJSON_GetObjectItem(n, "suffix")->valuestring, "\n  return x");
  assert_null(cJSON_GetObjectItem(n, "echo"));
  cJSON_Delete(n);
  free(nb);
  cJSON_Delete(body);
  /* bad input names the field */
  expect_400_completion("{\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens", "");
  expect_400_completion("{\"prompt\":\"a\",\"echo\":\"yes\"}", "echo", "");
  expect_400_completion("{\"prompt\":\"a\",\"echo\":true,\"max_tokens\":-1}", "max_tokens", "");
  expect_400_completion("{\"prompt\":\"a\",\"echo\":true,\"logprobs\":6}", "logprobs", "");
  expect_400_completion("{\"prompt\":\"a\",\"suffix\":3}", "suffix", "");
  expect_400_completion("{\"prompt\":\"a\",\"suffix\":\"b\",\"echo\":true}", "suffix", "echo");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", "echo", "prompt");
  expect_400("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"suffix\":\"s\"}", "suffix", "prompt");

  /* the writer: the first token's logprob and alternatives are null, the
   * offsets follow the tokens' bytes, capped at the text */
  cJSON *ev = cJSON_Parse(
      "{\"text\":\"ab\",\"text_bytes\":[0,1,1],\"logprobs\":["
      "{\"token\":\"<s>\",\"logprob\":null,\"bytes\":[60,115,62],\"top_logprobs\":[]},"
      "{\"token\":\"a\",\"logprob\":-1.5,\"bytes\":[97],\"top_logprobs\":[{\"token\":\"a\",\"logprob\":-1.5,\"bytes\":[97]}]},"
      "{\"token\":\"b\",\"logprob\":-0.25,\"bytes\":[98],\"top_logprobs\":[{\"token\":\"c\",\"logprob\":-0.125,\"bytes\":[99]}]}]}");
  assert_non_null(ev);
  llorch_openai_logprobs lp;
  llorch_openai_logprobs_init(&lp, false);
  llorch_openai_logprobs_add_prompt(&lp, cJSON_GetObjectItem(ev, "logprobs"),
                                    cJSON_GetObjectItem(ev, "text_bytes"), 2);
  llorch_openai_lp_token gen = {.text = "c", .len = 1, .logprob = -2.0};
  llorch_openai_logprobs_add(&lp, &gen, NULL, 0, 2);
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_openai_write_logprobs(&b, &lp);
  assert_string_equal(b.data,
                      "{\"tokens\":[\"<s>\",\"a\",\"b\",\"c\"],\"token_logprobs\":[null,-1.5,-0.25,-2],"
                      "\"top_logprobs\":[null,{\"a\":-1.5},{\"c\":-0.125},{}],\"text_offset\":[0,0,1,2]}");
  llorch_jbuf_free(&b);
  llorch_openai_logprobs_free(&lp);
  cJSON_Delete(ev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_native_body_and_context),
      cmocka_unit_test(test_n),
      cmocka_unit_test(test_writers),
      cmocka_unit_test(test_echo_suffix),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
