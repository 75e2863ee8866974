/* JSON helpers: the sentences a client sees in its 400, and the builder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/json.h"

static cJSON *parse(const char *s) {
  cJSON *v = NULL;
  llorch_errmsg em;
  assert_int_equal(llorch_json_parse(s, strlen(s), true, &v, &em), 0);
  return v;
}

static void test_parse_errors(void **state) {
  cJSON *v;
  llorch_errmsg em;
  assert_int_equal(llorch_json_parse("", 0, true, &v, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "request body is empty");
  assert_int_equal(llorch_json_parse("{\"a\":", 5, true, &v, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "not valid JSON"));
  assert_int_equal(llorch_json_parse("[1,2]", 5, true, &v, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "request body must be a JSON object, got an array");
  assert_int_equal(llorch_json_parse("{} x", 4, true, &v, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "unexpected data at byte 3"));
  /* Not NUL-terminated input is fine: only len bytes are read. */
  assert_int_equal(llorch_json_parse("{\"a\":1}garbage", 7, true, &v, &em), 0);
  cJSON_Delete(v);
}

/* Strings cJSON would silently change are refused, naming the field. */
static void test_parse_refuses_hidden_strings(void **state) {
  cJSON *v = NULL;
  llorch_errmsg em;
  static const struct {
    const char *text;
    const char *param;
    const char *words;
  } cases[] = {
      {"{\"model\":\"m.gguf\\u0000.x\"}", "model", "NUL"},
      {"{\"messages\":[{\"role\":\"user\"},{\"role\":\"user\",\"content\":\"a\\u0000\"}]}",
       "messages[1].content", "NUL"},
      {"{\"a\":{\"b\":[1,[2,\"\xff\"]]}}", "a.b[1][1]", "not valid UTF-8"},
      {"{\"p\":\"\xc0\xaf\"}", "p", "not valid UTF-8"},            /* overlong '/' */
      {"{\"p\":\"\xed\xa0\x80\"}", "p", "not valid UTF-8"},        /* a surrogate in UTF-8 */
      {"{\"p\":\"x\\ud800y\"}", "p", "lone UTF-16 surrogate"},
      {"{\"p\":\"x\\udc00\"}", "p", "lone UTF-16 surrogate"},
      {"{\"p\":\"\\ud800\\u0041\"}", "p", "lone UTF-16 surrogate"},
      {"{\"k\\u0000\":1}", "a key", "NUL"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(llorch_json_parse(cases[i].text, strlen(cases[i].text), true, &v, &em), LLORCH_EINVAL);
    assert_non_null(strstr(em.text, cases[i].words));
    assert_non_null(strstr(llorch_json_errparam(), cases[i].param));
  }
  /* A key with a raw newline still makes a one-line message. */
  const char *nl = "{\"a\nb\":\"\\u0000\"}";
  assert_int_equal(llorch_json_parse(nl, strlen(nl), true, &v, &em), LLORCH_EINVAL);
  assert_null(strchr(em.text, '\n'));
  assert_string_equal(llorch_json_errparam(), "a?b");
  /* A raw NUL byte inside a string (the length covers it). */
  static const char raw[] = "{\"c\":\"a\0b\"}";
  assert_int_equal(llorch_json_parse(raw, sizeof raw - 1, true, &v, &em), LLORCH_EINVAL);
  assert_string_equal(llorch_json_errparam(), "c");
  /* Fine: a surrogate pair, multi-byte UTF-8, escapes; and a new parse clears the last param. */
  const char *ok = "{\"p\":\"\\ud83d\\ude00 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \\\"q\\\" \\n\"}";
  assert_int_equal(llorch_json_parse(ok, strlen(ok), true, &v, &em), 0);
  assert_string_equal(llorch_json_errparam(), "");
  cJSON_Delete(v);
}

static void test_int_messages(void **state) {
  cJSON *o = parse("{\"max_tokens\":\"abc\",\"n\":2.5,\"big\":5000,\"ok\":7}");
  llorch_errmsg em;
  int64_t x = -1;
  assert_int_equal(llorch_json_get_int(o, NULL, "max_tokens", false, 1, INT64_MAX, &x, &em),
                   LLORCH_EINVAL);
  assert_string_equal(em.text, "'max_tokens' must be an integer >= 1, got \"abc\"");
  assert_string_equal(llorch_json_errparam(), "max_tokens");
  assert_int_equal(llorch_json_get_int(o, "", "n", true, 1, 8, &x, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'n' must be an integer between 1 and 8, got 2.5");
  assert_int_equal(llorch_json_get_int(o, NULL, "big", true, INT64_MIN, 4096, &x, &em),
                   LLORCH_EINVAL);
  assert_string_equal(em.text, "'big' must be an integer <= 4096, got 5000");
  assert_int_equal(llorch_json_get_int(o, NULL, "ok", true, 1, 8, &x, &em), 0);
  assert_int_equal(x, 7);
  /* Optional and absent: untouched. Required and absent: named. */
  x = 42;
  assert_int_equal(llorch_json_get_int(o, NULL, "absent", false, 1, 8, &x, &em), 0);
  assert_int_equal(x, 42);
  assert_int_equal(llorch_json_get_int(o, "req", "absent", true, 1, 8, &x, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'req.absent' is required");
  cJSON_Delete(o);
}

static void test_null_is_absent_for_optional(void **state) {
  cJSON *o = parse("{\"temperature\":null}");
  llorch_errmsg em;
  double t = 1.0;
  assert_int_equal(llorch_json_get_number(o, NULL, "temperature", false, 0, 2, &t, &em), 0);
  assert_true(t == 1.0);
  assert_int_equal(llorch_json_get_number(o, NULL, "temperature", true, 0, 2, &t, &em),
                   LLORCH_EINVAL);
  assert_string_equal(em.text, "'temperature' is required");
  cJSON_Delete(o);
}

static void test_number_bool_string_messages(void **state) {
  cJSON *o = parse("{\"temperature\":3.5,\"stream\":\"yes\",\"model\":12,\"top_p\":[1]}");
  llorch_errmsg em;
  double d;
  bool b;
  const char *s;
  assert_int_equal(llorch_json_get_number(o, NULL, "temperature", true, 0, 2, &d, &em),
                   LLORCH_EINVAL);
  assert_string_equal(em.text, "'temperature' must be a number between 0 and 2, got 3.5");
  assert_int_equal(llorch_json_get_number(o, NULL, "top_p", true, 0, 1, &d, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'top_p' must be a number between 0 and 1, got an array");
  assert_int_equal(llorch_json_get_bool(o, NULL, "stream", true, &b, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'stream' must be true or false, got \"yes\"");
  assert_int_equal(llorch_json_get_string(o, NULL, "model", true, &s, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'model' must be a string, got 12");
  cJSON_Delete(o);
}

static void test_nested_enum_and_arrays(void **state) {
  static const char *const roles[] = {"system", "user", "assistant", NULL};
  cJSON *o = parse("{\"messages\":[{\"role\":\"user\"},{\"role\":\"system\"},{\"role\":\"robot\"}],"
                   "\"empty\":[],\"obj\":5}");
  llorch_errmsg em;
  const cJSON *arr = NULL, *obj;
  assert_int_equal(llorch_json_get_array(o, NULL, "messages", true, 1, &arr, &em), 0);
  char where[64];
  int idx = -1;
  llorch_json_path_index(where, sizeof where, NULL, "messages", 1);
  assert_string_equal(where, "messages[1]");
  assert_int_equal(llorch_json_get_enum(cJSON_GetArrayItem(arr, 1), where, "role", true, roles,
                                        &idx, &em), 0);
  assert_int_equal(idx, 0);
  llorch_json_path_index(where, sizeof where, NULL, "messages", 2);
  assert_int_equal(llorch_json_get_enum(cJSON_GetArrayItem(arr, 2), where, "role", true, roles,
                                        &idx, &em), LLORCH_EINVAL);
  assert_string_equal(em.text,
                      "'messages[2].role' must be one of system, user, assistant, got \"robot\"");
  assert_string_equal(llorch_json_errparam(), "messages[2].role");
  assert_int_equal(llorch_json_get_array(o, NULL, "empty", true, 1, &arr, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'empty' must have at least 1 item, got 0");
  assert_int_equal(llorch_json_get_object(o, NULL, "obj", true, &obj, &em), LLORCH_EINVAL);
  assert_string_equal(em.text, "'obj' must be an object, got 5");
  cJSON_Delete(o);
}

static void test_long_string_is_cut(void **state) {
  cJSON *o = parse("{\"x\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}");
  llorch_errmsg em;
  int64_t v;
  assert_int_equal(llorch_json_get_int(o, NULL, "x", true, 0, 1, &v, &em), LLORCH_EINVAL);
  assert_non_null(strstr(em.text, "got \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\""));
  cJSON_Delete(o);
}

static void test_builder_escapes(void **state) {
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_cstr(&b, "{");
  llorch_jbuf_key(&b, "t");
  llorch_jbuf_str(&b, "a\"b\\c\n\x01\xff\xc3\xa9");
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "n");
  llorch_jbuf_num(&b, 0.1);
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "i");
  llorch_jbuf_int(&b, -7);
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_key(&b, "z");
  llorch_jbuf_str(&b, NULL);
  llorch_jbuf_cstr(&b, "}");
  assert_int_equal(llorch_jbuf_error(&b), 0);
  assert_string_equal(b.data,
                      "{\"t\":\"a\\\"b\\\\c\\n\\u0001\xef\xbf\xbd\xc3\xa9\",\"n\":0.1,\"i\":-7,\"z\":null}");
  /* The text parses back. */
  cJSON *v = cJSON_Parse(b.data);
  assert_non_null(v);
  cJSON_Delete(v);
  llorch_jbuf_free(&b);
  /* one U+FFFD per maximal subpart: E2 82 (a cut euro sign) is one, the
   * ED A0 of a surrogate two, a lone continuation one, a cut tail one */
  llorch_jbuf_init(&b);
  llorch_jbuf_strn(&b, "\xe2\x82" "A\xed\xa0\x80" "B\x80" "C\xf0\x9f\xa6", 12);
  assert_string_equal(b.data, "\"\xef\xbf\xbd" "A\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd" "B\xef\xbf\xbd" "C\xef\xbf\xbd\"");
  llorch_jbuf_free(&b);
}

/* Structured writing: commas come by themselves, nesting closes in order,
 * plain appends around it are untouched, misuse is a sticky error. */
static void test_builder_structured(void **state) {
  (void)state;
  llorch_jbuf b;
  llorch_jbuf_init(&b);
  llorch_jbuf_obj(&b);
  llorch_jbuf_kstr(&b, "name", "p\"1");
  llorch_jbuf_kint(&b, "n", 3);
  llorch_jbuf_karr(&b, "empty");
  llorch_jbuf_end(&b);
  llorch_jbuf_karr(&b, "xs");
  llorch_jbuf_str(&b, "a");
  llorch_jbuf_null(&b);
  llorch_jbuf_obj(&b);
  llorch_jbuf_kbool(&b, "ok", true);
  llorch_jbuf_knum(&b, "f", 0.5);
  llorch_jbuf_end(&b);
  llorch_jbuf_value(&b, "[1,2]", 5);
  llorch_jbuf_end(&b);
  llorch_jbuf_kobj(&b, "o");
  llorch_jbuf_end(&b);
  llorch_jbuf_key(&b, "last");
  llorch_jbuf_str(&b, NULL);
  llorch_jbuf_end(&b);
  assert_int_equal(llorch_jbuf_error(&b), 0);
  assert_int_equal(b.depth, 0);
  assert_string_equal(b.data, "{\"name\":\"p\\\"1\",\"n\":3,\"empty\":[],\"xs\":[\"a\",null,"
                              "{\"ok\":true,\"f\":0.5},[1,2]],\"o\":{},\"last\":null}");
  cJSON *parsed = cJSON_Parse(b.data);
  assert_non_null(parsed);
  cJSON_Delete(parsed);

  /* plain text around a structured value: no commas are invented outside it */
  llorch_jbuf_reset(&b);
  llorch_jbuf_cstr(&b, "data: [");
  llorch_jbuf_int(&b, 1);
  llorch_jbuf_cstr(&b, ",");
  llorch_jbuf_obj(&b);
  llorch_jbuf_kint(&b, "a", 1);
  llorch_jbuf_kint(&b, "b", 2);
  llorch_jbuf_end(&b);
  llorch_jbuf_cstr(&b, "]");
  assert_string_equal(b.data, "data: [1,{\"a\":1,\"b\":2}]");

  /* an _end too many, and a key without its value, are errors that stick */
  llorch_jbuf_reset(&b);
  llorch_jbuf_arr(&b);
  llorch_jbuf_end(&b);
  llorch_jbuf_end(&b);
  assert_int_equal(llorch_jbuf_error(&b), LLORCH_EINVAL);
  llorch_jbuf_reset(&b);
  llorch_jbuf_obj(&b);
  llorch_jbuf_key(&b, "k");
  llorch_jbuf_end(&b);
  assert_int_equal(llorch_jbuf_error(&b), LLORCH_EINVAL);
  /* nesting past the bound */
  llorch_jbuf_reset(&b);
  for (int i = 0; i < LLORCH_JBUF_MAX_DEPTH + 1; i++) llorch_jbuf_arr(&b);
  assert_int_equal(llorch_jbuf_error(&b), LLORCH_EINVAL);
  llorch_jbuf_free(&b);
}

static void test_error_envelope(void **state) {
  char *s = llorch_json_error_envelope("bad \"x\"", "invalid_request_error", "x", NULL);
  assert_string_equal(s, "{\"error\":{\"message\":\"bad \\\"x\\\"\",\"type\":\"invalid_request_error\","
                         "\"param\":\"x\",\"code\":null}}");
  free(s);
}

/* The count before parsing equals the values cJSON would build (keys are not values). */
static void test_count_values(void **state) {
  static const struct { const char *text; size_t want; } cases[] = {
      {"{}", 1},
      {"[]", 1},
      {"[ ]", 1},
      {"0", 1},
      {"{\"a\":1,\"b\":[1,2]}", 5},
      {"[[],{},\"x\"]", 4},
      {"{\"s\":\"a,b[c{\\\"d,\"}", 2},       /* commas and brackets inside a string */
      {"[{\"k\":[1,[2,{}]]},3]", 8},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cJSON *v = cJSON_Parse(cases[i].text);
    assert_non_null(v);
    assert_int_equal(llorch_json_count_values(cases[i].text, strlen(cases[i].text), 1000),
                     cases[i].want);
    cJSON_Delete(v);
  }
  /* Past max the count stops early but still says "more". */
  assert_true(llorch_json_count_values("[0,0,0,0,0,0]", 13, 3) > 3);
}

static void test_parse_bounded(void **state) {
  cJSON *v = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_json_parse_bounded("{\"a\":[1,2,3]}", 13, 4, "request.max_json_values", &v,
                                             &em), LLORCH_ELIMIT);
  assert_null(v);
  assert_string_equal(em.text, "request body has more than 4 JSON values (request.max_json_values)");
  assert_int_equal(llorch_json_parse_bounded("{\"a\":[1,2,3]}", 13, 5, "x", &v, &em), 0);
  cJSON_Delete(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_count_values),
      cmocka_unit_test(test_parse_bounded),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_int_messages),
      cmocka_unit_test(test_null_is_absent_for_optional),
      cmocka_unit_test(test_number_bool_string_messages),
      cmocka_unit_test(test_nested_enum_and_arrays),
      cmocka_unit_test(test_long_string_is_cut),
      cmocka_unit_test(test_builder_escapes),
      cmocka_unit_test(test_builder_structured),
      cmocka_unit_test(test_error_envelope),
      cmocka_unit_test(test_parse_refuses_hidden_strings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
