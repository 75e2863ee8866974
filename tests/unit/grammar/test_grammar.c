/*
 * Grammar tests: the GBNF parser (sentences in and out, errors with line and
 * column), JSON Schema -> grammar for every supported keyword (strings that
 * must and must not match), the matcher on UTF-8 and escapes, token masks
 * over a small vocabulary (end-of-generation only when complete), and a
 * random walk under the mask that must always produce accepted text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/grammar.h"

/* ---- helpers ---- */

static llorch_grammar *gbnf(const char *text) {
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_grammar_from_gbnf(&g, text, strlen(text), NULL, &em);
  if (rc != 0) fail_msg("grammar %s: %s", text, em.text);
  return g;
}

static bool matches(llorch_grammar *g, const char *s) {
  bool complete = false;
  llorch_errmsg em = {{0}};
  int rc = llorch_grammar_match(g, s, strlen(s), &complete, NULL, &em);
  if (rc != 0) fail_msg("match: %s", em.text);
  return complete;
}

static void expect_gbnf(const char *text, const char *const *yes, const char *const *no) {
  llorch_grammar *g = gbnf(text);
  for (; yes && *yes; yes++)
    if (!matches(g, *yes)) fail_msg("grammar %s: expected \"%s\" to match", text, *yes);
  for (; no && *no; no++)
    if (matches(g, *no)) fail_msg("grammar %s: expected \"%s\" NOT to match", text, *no);
  llorch_grammar_free(g);
}

static void expect_gbnf_error(const char *text, const char *needle) {
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_grammar_from_gbnf(&g, text, strlen(text), NULL, &em);
  if (rc == 0) fail_msg("grammar %s: expected an error containing '%s'", text, needle);
  if (!strstr(em.text, needle)) fail_msg("grammar %s: error '%s' lacks '%s'", text, em.text, needle);
  assert_null(g);
}

static llorch_grammar *schema(const char *json, unsigned flags) {
  cJSON *s = cJSON_Parse(json);
  if (!s) fail_msg("bad test JSON: %s", json);
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  char warn[256];
  int rc = llorch_grammar_from_schema(&g, s, flags, NULL, warn, sizeof warn, &em);
  cJSON_Delete(s);
  if (rc != 0) fail_msg("schema %s: %s", json, em.text);
  return g;
}

static void expect_schema(const char *json, const char *const *yes, const char *const *no) {
  llorch_grammar *g = schema(json, LLORCH_SCHEMA_STRICT);
  for (; yes && *yes; yes++)
    if (!matches(g, *yes)) {
      llorch_jbuf b;
      llorch_jbuf_init(&b);
      cJSON *s = cJSON_Parse(json);
      llorch_schema_to_gbnf(s, LLORCH_SCHEMA_STRICT, &b, NULL, 0, NULL);
      cJSON_Delete(s);
      fail_msg("schema %s: expected %s to match; grammar:\n%s", json, *yes, b.data);
    }
  for (; no && *no; no++)
    if (matches(g, *no)) fail_msg("schema %s: expected %s NOT to match", json, *no);
  llorch_grammar_free(g);
}

static void expect_schema_error(const char *json, unsigned flags, const char *needle) {
  cJSON *s = cJSON_Parse(json);
  assert_non_null(s);
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  int rc = llorch_grammar_from_schema(&g, s, flags, NULL, NULL, 0, &em);
  cJSON_Delete(s);
  if (rc == 0) fail_msg("schema %s: expected an error containing '%s'", json, needle);
  if (!strstr(em.text, needle)) fail_msg("schema %s: error '%s' lacks '%s'", json, em.text, needle);
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- GBNF ---- */

static void test_gbnf_basics(void **state) {
  (void)state;
  expect_gbnf("root ::= \"a\" | \"bc\"", L("a", "bc"), L("", "b", "abc", "ab"));
  expect_gbnf("root ::= x y\nx ::= [a-c]+\ny ::= \"!\"?", L("a", "abc!", "cc"), L("", "!", "ad"));
  expect_gbnf("root ::= (\"ab\")* \"c\"", L("c", "abc", "ababc"), L("abac", "ab"));
  expect_gbnf("root ::= [0-9]{2,3}", L("12", "123"), L("1", "1234", "ab"));
  expect_gbnf("root ::= [0-9]{2}", L("12"), L("1", "123"));
  expect_gbnf("root ::= [0-9]{2,}", L("12", "12345"), L("1"));
  expect_gbnf("root ::= \"x\"{0,2} \"y\"", L("y", "xy", "xxy"), L("xxxy"));
  expect_gbnf("root ::= [^a-z]", L("A", "0", "\xc3\xa9"), L("a", "z", "AB"));
  /* comments, newlines after | and inside parentheses */
  expect_gbnf("# a comment\nroot ::= \"a\" | # more\n  \"b\"\n", L("a", "b"), L("ab"));
  expect_gbnf("root ::= (\n  \"a\"\n  | \"b\"\n)", L("a", "b"), L(""));
  /* escapes */
  expect_gbnf("root ::= \"\\n\\t\\\\\\\"\\x41\\u00e9\"", L("\n\t\\\"A\xc3\xa9"), L("\n"));
  expect_gbnf("root ::= [\\]\\[]", L("]", "["), L("a"));
  /* recursion (right and nested) */
  expect_gbnf("root ::= \"(\" root \")\" | \"\"", L("", "()", "((()))"), L("(", "())"));
}

static void test_gbnf_utf8(void **state) {
  (void)state;
  /* a multi-byte class matches whole characters only */
  expect_gbnf("root ::= [\\u00e0-\\u00ff\\u4e00-\\u9fff\\U0001F600-\\U0001F64F]+",
              L("\xc3\xa9", "\xe4\xb8\xad\xe6\x96\x87", "\xf0\x9f\x98\x80"),
              L("\xc3", "a", "\xe4\xb8", "\xc2\xa9"));
  /* any character, but not a lone continuation byte or a surrogate encoding */
  expect_gbnf("root ::= .", L("a", "\xc3\xa9", "\xf4\x8f\xbf\xbf", "\n"),
              L("\x80", "\xed\xa0\x80", "\xc0\xaf", "ab"));
  expect_gbnf("root ::= \"\xc3\xa9t\xc3\xa9\"", L("\xc3\xa9t\xc3\xa9"), L("ete"));
}

static void test_gbnf_errors(void **state) {
  (void)state;
  expect_gbnf_error("root ::= \"a", "line 1, column 10: unterminated literal");
  expect_gbnf_error("root ::= \"a\"\nx ::= [a-", "line 2, column 7: unterminated character class");
  expect_gbnf_error("root ::= foo", "line 1, column 10: rule 'foo' is used but not defined");
  expect_gbnf_error("x ::= \"a\"", "no 'root' rule");
  expect_gbnf_error("root ::= root \"a\" | \"b\"", "left recursion");
  expect_gbnf_error("root ::= x\nx ::= y \"a\"\ny ::= \"\" | x", "left recursion");
  expect_gbnf_error("root ::= \"a\"\nroot ::= \"b\"", "line 2, column 1: rule 'root' is defined twice");
  expect_gbnf_error("root = \"a\"", "line 1, column 6: expected '::='");
  expect_gbnf_error("root ::= \"a\" )", "line 1, column 14: unexpected ')'");
  expect_gbnf_error("root ::= ( \"a\"", "line 1, column 10: unclosed '('");
  expect_gbnf_error("root ::= *", "line 1, column 10: '*' must follow something");
  expect_gbnf_error("root ::= \"a\"{3,2}", "max below min");
  expect_gbnf_error("root ::= \"\\q\"", "unknown escape");
  expect_gbnf_error("root ::= [z-a]", "below its start");
  expect_gbnf_error("root ::= x\nx ::= \"a\" x", "matches nothing");
  expect_gbnf_error("root ::= [^\\x00-\\U0010FFFF]", "matches nothing");
  /* limits */
  llorch_grammar_limits lim;
  llorch_grammar_limits_default(&lim);
  lim.max_rules = 50;
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  const char *big = "root ::= \"a\"{0,100}";
  assert_int_equal(llorch_grammar_from_gbnf(&g, big, strlen(big), &lim, &em), LLORCH_ELIMIT);
  assert_non_null(strstr(em.text, "more than 50 rules"));
  lim.max_text_bytes = 4;
  assert_int_equal(llorch_grammar_from_gbnf(&g, big, strlen(big), &lim, &em), LLORCH_ELIMIT);
}

/* ---- JSON Schema ---- */

static void test_schema_types(void **state) {
  (void)state;
  expect_schema("{\"type\":\"string\"}", L("\"\"", "\"abc\"", "\"a\\\"b\\\\c\\n\\u00e9\"", "\"\xc3\xa9\""),
                L("abc", "\"a", "\"\n\"", "\"\\x\"", "\"\\ud800\"", "1"));
  expect_schema("{\"type\":\"integer\"}", L("0", "-12", "1234567890123456"),
                L("01", "1.5", "-", "12345678901234567", "\"1\""));
  expect_schema("{\"type\":\"number\"}", L("0", "-1.5", "2e10", "3.25E-2"), L(".5", "1.", "1e", "--1"));
  expect_schema("{\"type\":\"boolean\"}", L("true", "false"), L("1", "null"));
  expect_schema("{\"type\":\"null\"}", L("null"), L("nul", "\"null\""));
  expect_schema("{\"type\":[\"string\",\"null\"]}", L("\"a\"", "null"), L("1"));
  expect_schema("{\"type\":\"string\",\"nullable\":true}", L("\"a\"", "null"), L("1"));
  expect_schema("{}", L("1", "\"x\"", "{\"a\":[1,{\"b\":null}]}", "[]"), L("{a:1}"));
  expect_schema("{\"type\":\"object\"}", L("{}", "{\"a\": 1}", "{ \"a\" : [true] , \"b\":{}}"),
                L("[]", "{\"a\"}", "{,}"));
  expect_schema("{\"type\":\"array\"}", L("[]", "[1, \"a\", null]"), L("[,]", "{}"));
}

static void test_schema_strings(void **state) {
  (void)state;
  expect_schema("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
                L("\"ab\"", "\"abc\"", "\"\\n\\t\"", "\"\xc3\xa9\xc3\xa9\""),
                L("\"a\"", "\"abcd\""));
  expect_schema("{\"type\":\"string\",\"pattern\":\"^[a-z]+-\\\\d{2,3}$\"}",
                L("\"abc-12\"", "\"x-123\""), L("\"abc-1\"", "\"ABC-12\"", "\"abc12\""));
  expect_schema("{\"type\":\"string\",\"pattern\":\"(ab|cd)*\\\\.x?\"}",
                L("\".\"", "\"abcd.x\""), L("\"ac.\""));
  /* characters that must be escaped in JSON come out escaped */
  expect_schema("{\"type\":\"string\",\"pattern\":\"^[\\\"\\\\\\\\\\n]$\"}",
                L("\"\\\"\"", "\"\\\\\"", "\"\\n\""), L("\"\"\"", "\"\n\""));
  expect_schema("{\"type\":\"string\",\"pattern\":\"^.$\"}", L("\"a\"", "\"\xc3\xa9\""), L("\"\\n\"", "\"ab\""));
  expect_schema("{\"type\":\"string\",\"format\":\"date\"}", L("\"2024-02-28\"", "\"1999-12-31\""),
                L("\"2024-02-30\"", "\"2024-13-01\"", "\"2024-04-31\"", "\"24-01-01\""));
  expect_schema("{\"type\":\"string\",\"format\":\"time\"}", L("\"23:59:59Z\"", "\"00:00:00.123+05:30\""),
                L("\"24:00:00Z\"", "\"12:00:00\"", "\"12:60:00Z\""));
  expect_schema("{\"type\":\"string\",\"format\":\"date-time\"}", L("\"2024-01-02T03:04:05Z\""),
                L("\"2024-01-02 03:04:05Z\""));
  expect_schema("{\"type\":\"string\",\"format\":\"uuid\"}",
                L("\"123e4567-e89b-12d3-a456-426614174000\""), L("\"123e4567e89b12d3a456426614174000\""));
  expect_schema("{\"type\":\"string\",\"format\":\"email\"}", L("\"a.b@example.com\"", "\"x@y.co\""),
                L("\"@x.com\"", "\"a@b\"", "\"a..b@x.com\""));
  expect_schema("{\"enum\":[\"a\",1,null,{\"k\":[true]}]}", L("\"a\"", "1", "null", "{\"k\":[true]}"),
                L("\"b\"", "2", "{\"k\": [true]}"));
  expect_schema("{\"const\":\"x\\\"y\"}", L("\"x\\\"y\""), L("\"xy\""));
}

static void test_schema_integers(void **state) {
  (void)state;
  expect_schema("{\"type\":\"integer\",\"minimum\":5,\"maximum\":123}",
                L("5", "9", "10", "99", "100", "119", "120", "123"), L("4", "124", "0", "-5", "200", "05"));
  expect_schema("{\"type\":\"integer\",\"minimum\":-20,\"maximum\":-3}", L("-20", "-3", "-15"),
                L("-2", "-21", "0", "3"));
  expect_schema("{\"type\":\"integer\",\"minimum\":-7,\"exclusiveMaximum\":10}", L("-7", "0", "9"),
                L("10", "-8"));
  expect_schema("{\"type\":\"integer\",\"exclusiveMinimum\":0}", L("1", "999999"), L("0", "-1"));
  expect_schema("{\"type\":\"integer\",\"maximum\":0}", L("0", "-5"), L("1"));
  expect_schema("{\"type\":\"integer\",\"minimum\":1000,\"maximum\":1000}", L("1000"), L("100", "1001"));
  /* every value of a small range, and its neighbours */
  for (int lo = -13; lo <= 13; lo += 13)
    for (int hi = lo; hi <= 130; hi += 37) {
      char js[128];
      snprintf(js, sizeof js, "{\"type\":\"integer\",\"minimum\":%d,\"maximum\":%d}", lo, hi);
      llorch_grammar *g = schema(js, LLORCH_SCHEMA_STRICT);
      for (int v = lo - 20; v <= hi + 20; v++) {
        char t[16];
        snprintf(t, sizeof t, "%d", v);
        bool want = v >= lo && v <= hi;
        if (matches(g, t) != want) fail_msg("%s: %d %s", js, v, want ? "rejected" : "accepted");
      }
      llorch_grammar_free(g);
    }
}

static void test_schema_objects(void **state) {
  (void)state;
  const char *s = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":"
                  "{\"type\":\"string\"},\"c\":{\"type\":\"boolean\"}},\"required\":[\"b\"],"
                  "\"additionalProperties\":false}";
  expect_schema(s, L("{\"b\":\"x\"}", "{\"a\":1,\"b\":\"x\"}", "{\"a\": 1, \"b\": \"x\", \"c\": true}",
                     "{\"b\":\"x\",\"c\":false}", "{\n  \"b\": \"\"\n}"),
                L("{}", "{\"a\":1}", "{\"b\":1}", "{\"b\":\"x\",\"d\":1}", "{\"b\":\"x\",}",
                  "{\"b\":\"x\"                           }"));
  /* additional properties with a schema: never a declared name */
  expect_schema("{\"type\":\"object\",\"properties\":{\"ab\":{\"type\":\"integer\"}},"
                "\"additionalProperties\":{\"type\":\"string\"}}",
                L("{}", "{\"ab\":1}", "{\"a\":\"x\"}", "{\"abc\":\"x\"}", "{\"ab\":1,\"b\":\"y\",\"zz\":\"\"}"),
                L("{\"ab\":\"x\"}", "{\"a\":1}"));
  /* required but not declared */
  expect_schema("{\"type\":\"object\",\"required\":[\"k\"]}", L("{\"k\":[1]}"), L("{}"));
  /* allOf of objects */
  expect_schema("{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
                "\"required\":[\"a\"]},{\"properties\":{\"b\":{\"type\":\"null\"}},\"required\":[\"b\"]}]}",
                L("{\"a\":1,\"b\":null}"), L("{\"a\":1}", "{\"b\":null}"));
  expect_schema("{\"allOf\":[{\"properties\":{\"a\":{\"type\":\"integer\"}},\"additionalProperties\":false},"
                "{\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"null\"}}}]}",
                L("{\"a\":1}", "{}"), L("{\"a\":1,\"b\":null}"));
}

static void test_schema_arrays(void **state) {
  (void)state;
  expect_schema("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}",
                L("[1]", "[1, 2,3]"), L("[]", "[1,2,3,4]", "[\"a\"]", "[1,]"));
  expect_schema("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2}",
                L("[1,2]", "[1,2,3,4,5]"), L("[1]"));
  expect_schema("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],"
                "\"items\":false}",
                L("[]", "[\"a\"]", "[\"a\",1]"), L("[1]", "[\"a\",1,2]"));
  expect_schema("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}],\"items\":"
                "{\"type\":\"null\"},\"minItems\":2}",
                L("[\"a\",null]", "[\"a\",null,null]"), L("[\"a\"]", "[\"a\",1]"));
  expect_schema("{\"type\":\"array\",\"maxItems\":0}", L("[]"), L("[1]"));
}

static void test_schema_refs_and_anyof(void **state) {
  (void)state;
  const char *tree =
      "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
      "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"],"
      "\"additionalProperties\":false}},\"$ref\":\"#/$defs/node\"}";
  expect_schema(tree, L("{\"v\":1}", "{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[{\"v\":3}]},{\"v\":4}]}"),
                L("{\"v\":1,\"kids\":[{}]}", "{\"kids\":[]}"));
  expect_schema("{\"definitions\":{\"a\":{\"type\":\"integer\"}},\"type\":\"array\",\"items\":"
                "{\"$ref\":\"#/definitions/a\"}}", L("[1,2]"), L("[\"1\"]"));
  expect_schema("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}",
                L("1", "\"a\""), L("\"ab\"", "null"));
  expect_schema("{\"oneOf\":[{\"type\":\"boolean\"},{\"type\":\"null\"}]}", L("true", "null"), L("1"));
  /* a branch that matches nothing is dropped */
  expect_schema("{\"anyOf\":[false,{\"type\":\"null\"}]}", L("null"), L("1"));
  /* recursion through the root */
  expect_schema("{\"type\":\"array\",\"items\":{\"$ref\":\"#\"},\"maxItems\":2}", L("[]", "[[],[[]]]"),
                L("[1]"));
}

static void test_schema_errors(void **state) {
  (void)state;
  expect_schema_error("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"minProperties\":1}}}",
                      LLORCH_SCHEMA_STRICT, "unsupported keyword 'minProperties' at /properties/a");
  expect_schema_error("{\"type\":\"string\",\"format\":\"ipv4\"}", LLORCH_SCHEMA_STRICT,
                      "unsupported keyword 'format' at /format");
  expect_schema_error("{\"type\":\"string\",\"pattern\":\"(?=a)\"}", LLORCH_SCHEMA_STRICT,
                      "unsupported keyword 'pattern' at /pattern");
  expect_schema_error("{\"type\":\"string\",\"minLength\":3,\"maxLength\":2}", 0,
                      "can match nothing: at /: minLength 3 > maxLength 2");
  expect_schema_error("{\"type\":\"object\",\"properties\":{\"a\":false},\"required\":[\"a\"]}", 0,
                      "can match nothing: at /properties/a: the schema is false");
  expect_schema_error("{\"enum\":[]}", 0, "the enum is empty");
  expect_schema_error("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", 0, "can match nothing");
  expect_schema_error("{\"type\":\"array\",\"items\":false,\"minItems\":1}", 0, "can match nothing");
  expect_schema_error("{\"type\":\"object\",\"properties\":{\"x\":{\"$ref\":\"#\"}},\"required\":[\"x\"]}",
                      0, "can match nothing");
  expect_schema_error("{\"$ref\":\"http://example.com/s.json\"}", 0, "does not point into this schema");
  expect_schema_error("{\"type\":\"strin\"}", 0, "'type' at /type must be one of");
  expect_schema_error("[1]", 0, "must be an object or a boolean");
  /* not strict: the keyword is ignored with a warning */
  cJSON *s = cJSON_Parse("{\"type\":\"string\",\"format\":\"ipv4\",\"uniqueItems\":true}");
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  char warn[256] = "x";
  assert_int_equal(llorch_grammar_from_schema(&g, s, 0, NULL, warn, sizeof warn, &em), 0);
  assert_non_null(strstr(warn, "'uniqueItems' at /"));
  assert_true(matches(g, "\"1.2.3.4\""));
  llorch_grammar_free(g);
  cJSON_Delete(s);
}

/* ---- request fields and tool grammars ---- */

static void test_request_fields(void **state) {
  (void)state;
  struct {
    const char *body, *param, *needle;
  } bad[] = {
      {"{\"response_format\":\"json\"}", "response_format", "must be an object"},
      {"{\"response_format\":{\"type\":\"yaml\"}}", "response_format.type", "got \"yaml\""},
      {"{\"response_format\":{\"type\":\"json_schema\"}}", "response_format.json_schema", "is required"},
      {"{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{},\"strict\":1}}}",
       "response_format.json_schema.strict", "true or false"},
      {"{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"strict\":true,"
       "\"schema\":{\"type\":\"object\",\"patternProperties\":{}}}}}",
       "response_format.json_schema.schema", "unsupported keyword 'patternProperties' at /"},
      {"{\"grammar\":\"root ::= [\"}", "grammar", "line 1, column 10"},
      {"{\"grammar\":5}", "grammar", "must be a string"},
      {"{\"grammar\":\"root ::= \\\"a\\\"\",\"response_format\":{\"type\":\"json_object\"}}", "grammar",
       "cannot be combined"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cJSON *b = cJSON_Parse(bad[i].body);
    if (!b) fail_msg("bad test JSON %s", bad[i].body);
    llorch_grammar *g = NULL;
    char param[96];
    llorch_errmsg em = {{0}};
    int rc = llorch_grammar_from_request(b, NULL, &g, param, sizeof param, NULL, 0, &em);
    cJSON_Delete(b);
    if (rc == 0) fail_msg("%s: accepted", bad[i].body);
    assert_null(g);
    assert_string_equal(param, bad[i].param);
    if (!strstr(em.text, bad[i].needle)) fail_msg("%s: '%s' lacks '%s'", bad[i].body, em.text, bad[i].needle);
  }
  cJSON *b = cJSON_Parse("{\"response_format\":{\"type\":\"text\"}}");
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_grammar_from_request(b, NULL, &g, NULL, 0, NULL, 0, &em), 0);
  assert_null(g);
  cJSON_Delete(b);
  b = cJSON_Parse("{\"response_format\":{\"type\":\"json_object\"}}");
  assert_int_equal(llorch_grammar_from_request(b, NULL, &g, NULL, 0, NULL, 0, &em), 0);
  assert_true(matches(g, "{\"a\": [1, {}]}"));
  assert_false(matches(g, "[1]"));
  llorch_grammar_free(g);
  cJSON_Delete(b);
}

static void test_tools(void **state) {
  (void)state;
  cJSON *tools = cJSON_Parse(
      "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
      "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"],"
      "\"additionalProperties\":false}}},{\"type\":\"function\",\"function\":{\"name\":\"now\"}}]");
  llorch_grammar *g = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_grammar_for_tools(tools, NULL, 0, "<tool_call>\n", "\n</tool_call>", NULL,
                                            &g, &em), 0);
  assert_true(matches(g, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"));
  assert_true(matches(g, "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"));
  assert_false(matches(g, "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}\n</tool_call>"));
  assert_false(matches(g, "{\"name\":\"now\",\"arguments\":{}}"));
  llorch_grammar_free(g);
  const char *only[] = {"now"};
  assert_int_equal(llorch_grammar_for_tools(tools, only, 1, NULL, NULL, NULL, &g, &em), 0);
  assert_true(matches(g, "{\"name\":\"now\",\"arguments\":{}}"));
  assert_false(matches(g, "{\"name\":\"get_weather\",\"arguments\":{\"city\":\"x\"}}"));
  llorch_grammar_free(g);
  const char *none[] = {"nope"};
  assert_int_equal(llorch_grammar_for_tools(tools, none, 1, NULL, NULL, NULL, &g, &em), LLORCH_EINVAL);
  cJSON_Delete(tools);
}

/* ---- masks ---- */

/* A toy vocabulary: single bytes, some multi-byte pieces, an EOG token. */
static const char *const toy[] = {"{", "}", "\"", "a", "b", ":", ",", " ", "1", "12", "\"a\"",
                                  "\":", "{\"", "\"}", "\xc3", "\xa9", "\xc3\xa9", "", "<eos>", "\\",
                                  "n", "true", "null", "\n", "[", "]", "[\"", "\",", "1,"};
#define TOY_BASE (sizeof toy / sizeof toy[0])
/* then every printable ASCII character as a token of its own, as byte-level
 * vocabularies have */
#define TOY_N (TOY_BASE + 95)
#define TOY_EOS 18
static char toy_singles[95][2];
static const char *toy_text[TOY_N];

static llorch_grammar_vocab *toy_vocab(void) {
  size_t lens[TOY_N];
  bool eog[TOY_N];
  for (size_t i = 0; i < TOY_N; i++) {
    if (i < TOY_BASE) {
      toy_text[i] = toy[i];
    } else {
      toy_singles[i - TOY_BASE][0] = (char)(0x20 + i - TOY_BASE);
      toy_text[i] = toy_singles[i - TOY_BASE];
    }
    lens[i] = i == TOY_EOS ? 0 : strlen(toy_text[i]);
    eog[i] = i == TOY_EOS;
  }
  llorch_grammar_vocab *v = NULL;
  llorch_errmsg em = {{0}};
  if (llorch_grammar_vocab_init_texts(&v, toy_text, lens, eog, TOY_N, &em) != 0)
    fail_msg("%s", em.text);
  return v;
}

static bool bit(const uint32_t *m, int i) { return (m[i / 32] >> (i % 32)) & 1; }

static void test_mask(void **state) {
  (void)state;
  llorch_grammar_vocab *v = toy_vocab();
  llorch_grammar *g = schema("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},"
                             "\"required\":[\"a\"],\"additionalProperties\":false}", 0);
  llorch_grammar_state *st = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_grammar_state_init(&st, g, v, &em), 0);
  uint32_t mask[(TOY_N + 31) / 32];
  int n = llorch_grammar_state_mask(st, mask, &em);
  assert_true(n > 0);
  assert_true(bit(mask, 0));  /* { */
  assert_true(bit(mask, 12)); /* {" */
  assert_false(bit(mask, 1));
  assert_false(bit(mask, TOY_EOS));
  assert_false(bit(mask, 17)); /* empty text: never */
  const int path[] = {12, 3, 11, 7, 2, 14, 15, 16, 19, 20, 13};
  for (size_t i = 0; i < sizeof path / sizeof path[0]; i++) {
    n = llorch_grammar_state_mask(st, mask, &em);
    if (!bit(mask, path[i])) fail_msg("step %zu: token %d (%s) not allowed", i, path[i], toy_text[path[i]]);
    assert_int_equal(llorch_grammar_state_accept(st, path[i], &em), 0);
  }
  /* {"a": "é\n"} is complete: only EOS */
  assert_true(llorch_grammar_state_complete(st));
  assert_true(llorch_grammar_state_finished(st));
  n = llorch_grammar_state_mask(st, mask, &em);
  assert_int_equal(n, 1); /* only EOS */
  assert_true(bit(mask, TOY_EOS));
  /* a disallowed token leaves the state as it was */
  assert_int_equal(llorch_grammar_state_accept(st, 3, &em), LLORCH_EINVAL);
  assert_int_equal(llorch_grammar_state_accept(st, TOY_EOS, &em), 0);
  llorch_grammar_state_free(st);

  /* EOS before completion is refused */
  assert_int_equal(llorch_grammar_state_init(&st, g, v, &em), 0);
  assert_int_equal(llorch_grammar_state_accept(st, TOY_EOS, &em), LLORCH_EINVAL);
  llorch_grammar_state_free(st);
  llorch_grammar_free(g);
  llorch_grammar_vocab_free(v);
}

/* Random walks under the mask: every output the mask lets through is
 * accepted by the grammar as a whole sentence (when it ended with EOS). */
static void test_mask_random_walk(void **state) {
  (void)state;
  llorch_grammar_vocab *v = toy_vocab();
  llorch_grammar *g = schema("{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"string\","
                             "\"maxLength\":3},{\"type\":\"integer\"},{\"type\":\"null\"}]},"
                             "\"maxItems\":4}", 0);
  uint64_t rng = 42;
  int complete = 0;
  for (int run = 0; run < 300; run++) {
    llorch_grammar_state *st = NULL;
    llorch_errmsg em = {{0}};
    assert_int_equal(llorch_grammar_state_init(&st, g, v, &em), 0);
    char out[512];
    size_t len = 0;
    for (int step = 0; step < 60; step++) {
      uint32_t mask[(TOY_N + 31) / 32];
      int n = llorch_grammar_state_mask(st, mask, &em);
      if (n <= 0) {
        out[len] = 0;
        fail_msg("no token allowed after '%s' (%d)", out, n);
      }
      int allowed[TOY_N], k = 0;
      for (int i = 0; i < (int)TOY_N; i++)
        if (bit(mask, i)) allowed[k++] = i;
      assert_int_equal(k, n);
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      int t = allowed[(rng >> 33) % (uint64_t)k];
      assert_int_equal(llorch_grammar_state_accept(st, t, &em), 0);
      if (t == TOY_EOS) {
        out[len] = 0;
        if (!matches(g, out)) fail_msg("walk produced '%s' which does not match", out);
        complete++;
        break;
      }
      memcpy(out + len, toy_text[t], strlen(toy_text[t]));
      len += strlen(toy_text[t]);
    }
    llorch_grammar_state_free(st);
  }
  assert_true(complete > 30);
  llorch_grammar_stats stats;
  llorch_grammar_stats_get(g, &stats);
  assert_true(stats.n_mask_hits > stats.n_mask_walks); /* the cache is used */
  llorch_grammar_free(g);
  llorch_grammar_vocab_free(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gbnf_basics),     cmocka_unit_test(test_gbnf_utf8),
      cmocka_unit_test(test_gbnf_errors),     cmocka_unit_test(test_schema_types),
      cmocka_unit_test(test_schema_strings),  cmocka_unit_test(test_schema_integers),
      cmocka_unit_test(test_schema_objects),  cmocka_unit_test(test_schema_arrays),
      cmocka_unit_test(test_schema_refs_and_anyof), cmocka_unit_test(test_schema_errors),
      cmocka_unit_test(test_mask),            cmocka_unit_test(test_mask_random_walk),
      cmocka_unit_test(test_request_fields),  cmocka_unit_test(test_tools),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
