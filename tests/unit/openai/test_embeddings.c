/*
 * The OpenAI layer's embeddings (src/openai/embeddings.c): every input shape
 * OpenAI accepts parses, every wrong one gets a 400 naming the field and
 * what was expected, the forwarded body keeps what was validated, and the
 * answer's vectors come out normalised, truncated, as float numbers or as
 * base64 of little-endian float32 that decodes to the same values.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llorch/openai.h"

static cJSON *parse_ok(const char *json, llorch_openai_embed_request *r) {
  cJSON *body = cJSON_Parse(json);
  assert_non_null(body);
  llorch_openai_error err = {0};
  if (llorch_openai_embed_parse(body, r, &err) < 0)
    fail_msg("%s: refused: %d %s (%s)", json, err.status, err.message, err.param);
  return body;
}

static void expect_400(const char *json, const char *param, const char *needle) {
  cJSON *body = cJSON_Parse(json);
  assert_non_null(body);
  llorch_openai_embed_request r;
  llorch_openai_error err = {0};
  assert_int_equal(llorch_openai_embed_parse(body, &r, &err), LLORCH_EINVAL);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.type, "invalid_request_error");
  if (strcmp(err.param, param) != 0) fail_msg("%s: param '%s', expected '%s'", json, err.param, param);
  if (!strstr(err.message, needle))
    fail_msg("%s: message \"%s\" lacks \"%s\"", json, err.message, needle);
  cJSON_Delete(body);
}

static void test_input_shapes(void **state) {
  (void)state;
  llorch_openai_embed_request r;
  const char *text;
  const cJSON *ids;

  cJSON *b = parse_ok("{\"model\":\"m\",\"input\":\"hello\"}", &r);
  assert_int_equal(r.n_inputs, 1);
  assert_false(r.ids);
  assert_string_equal(r.model, "m");
  assert_int_equal(r.encoding, LLORCH_EMBED_FLOAT);
  assert_int_equal(r.dimensions, 0);
  llorch_openai_embed_input(&r, 0, &text, &ids);
  assert_string_equal(text, "hello");
  assert_null(ids);
  cJSON_Delete(b);

  b = parse_ok("{\"input\":[\"a\",\"b\",\"c\"],\"encoding_format\":\"base64\",\"dimensions\":8,"
               "\"user\":\"u-1\"}", &r);
  assert_int_equal(r.n_inputs, 3);
  assert_null(r.model);
  assert_int_equal(r.encoding, LLORCH_EMBED_BASE64);
  assert_int_equal(r.dimensions, 8);
  llorch_openai_embed_input(&r, 2, &text, &ids);
  assert_string_equal(text, "c");
  cJSON_Delete(b);

  b = parse_ok("{\"input\":[1,2,3]}", &r); /* one input as token ids */
  assert_int_equal(r.n_inputs, 1);
  assert_true(r.ids);
  llorch_openai_embed_input(&r, 0, &text, &ids);
  assert_null(text);
  assert_int_equal(cJSON_GetArraySize(ids), 3);
  cJSON_Delete(b);

  b = parse_ok("{\"input\":[[1,2],[3],[4,5,6]],\"encoding_format\":\"float\"}", &r);
  assert_int_equal(r.n_inputs, 3);
  assert_true(r.ids);
  llorch_openai_embed_input(&r, 2, &text, &ids);
  assert_int_equal(cJSON_GetArraySize(ids), 3);
  assert_int_equal(ids->child->valueint, 4);
  cJSON_Delete(b);

  /* null fields are absent fields */
  b = parse_ok("{\"input\":\"x\",\"dimensions\":null,\"encoding_format\":null,\"user\":null}", &r);
  assert_int_equal(r.dimensions, 0);
  cJSON_Delete(b);
}

static void test_bad_inputs(void **state) {
  (void)state;
  expect_400("{}", "input", "'input' is required");
  expect_400("{\"input\":null}", "input", "'input' is required");
  expect_400("{\"input\":\"\"}", "input", "empty string");
  expect_400("{\"input\":[]}", "input", "empty list");
  expect_400("{\"input\":42}", "input", "must be a string, a list of strings");
  expect_400("{\"input\":{\"a\":1}}", "input", "got an object");
  expect_400("{\"input\":[\"a\",2]}", "input[1]", "must be a string like the other items");
  expect_400("{\"input\":[\"a\",\"\"]}", "input[1]", "empty string");
  expect_400("{\"input\":[[1,2],\"a\"]}", "input[1]", "must be a list of token ids");
  expect_400("{\"input\":[[1,2],[]]}", "input[1]", "empty list of token ids");
  expect_400("{\"input\":[1,-2]}", "input[1]", "must be a token id");
  expect_400("{\"input\":[1,2.5]}", "input[1]", "got 2.5");
  expect_400("{\"input\":[1,\"x\"]}", "input[1]", "must be a token id");
  expect_400("{\"input\":[[1],[2,3e10]]}", "input[1][1]", "must be a token id");
  expect_400("{\"input\":\"a\",\"encoding_format\":\"int8\"}", "encoding_format",
             "must be \"float\" or \"base64\", got \"int8\"");
  expect_400("{\"input\":\"a\",\"encoding_format\":1}", "encoding_format", "got 1");
  expect_400("{\"input\":\"a\",\"dimensions\":0}", "dimensions", "an integer from 1");
  expect_400("{\"input\":\"a\",\"dimensions\":-3}", "dimensions", "got -3");
  expect_400("{\"input\":\"a\",\"dimensions\":1.5}", "dimensions", "got 1.5");
  expect_400("{\"input\":\"a\",\"dimensions\":\"8\"}", "dimensions", "got \"8\"");
  expect_400("{\"input\":\"a\",\"model\":7}", "model", "'model' must be a string");
  expect_400("{\"input\":\"a\",\"user\":[]}", "user", "'user' must be a string");

  /* bounds: the count of inputs, named with the limit */
  cJSON *body = cJSON_CreateObject();
  cJSON *in = cJSON_AddArrayToObject(body, "input");
  for (int i = 0; i < LLORCH_OPENAI_MAX_EMBED_INPUTS + 1; i++) cJSON_AddItemToArray(in, cJSON_CreateString("x"));
  llorch_openai_embed_request r;
  llorch_openai_error err = {0};
  assert_int_equal(llorch_openai_embed_parse(body, &r, &err), LLORCH_EINVAL);
  assert_string_equal(err.param, "input");
  assert_non_null(strstr(err.message, "at most 2048"));
  /* exactly the limit is fine */
  cJSON_DeleteItemFromArray(in, 0);
  assert_int_equal(llorch_openai_embed_parse(body, &r, &err), 0);
  assert_int_equal(r.n_inputs, LLORCH_OPENAI_MAX_EMBED_INPUTS);
  cJSON_Delete(body);
}

static void test_forwarded_body(void **state) {
  (void)state;
  llorch_openai_embed_request r;
  cJSON *b = parse_ok("{\"model\":\"m\",\"input\":[[1,2],[3]],\"encoding_format\":\"base64\","
                      "\"dimensions\":4,\"user\":\"x\",\"extra\":1}", &r);
  char *fwd = llorch_openai_embed_body(&r);
  assert_non_null(fwd);
  cJSON *f = cJSON_Parse(fwd);
  cJSON *want = cJSON_Parse("{\"input\":[[1,2],[3]],\"encoding_format\":\"base64\",\"dimensions\":4}");
  if (!cJSON_Compare(f, want, true)) fail_msg("forwarded %s", fwd);
  /* and the worker accepts it as it is */
  llorch_openai_embed_request r2;
  llorch_openai_error err = {0};
  assert_int_equal(llorch_openai_embed_parse(f, &r2, &err), 0);
  assert_int_equal(r2.dimensions, 4);
  assert_null(r2.model);
  cJSON_Delete(want);
  cJSON_Delete(f);
  free(fwd);
  cJSON_Delete(b);
}

static void test_finish_vector(void **state) {
  (void)state;
  float v[4] = {3, 4, 12, 0};
  assert_int_equal(llorch_openai_embed_finish_vector(v, 4, 0, true), 4);
  assert_float_equal(v[0], 3.0 / 13, 1e-7);
  assert_float_equal(v[2], 12.0 / 13, 1e-7);
  float w[4] = {3, 4, 12, 0};
  assert_int_equal(llorch_openai_embed_finish_vector(w, 4, 2, true), 2); /* truncate, renormalise */
  assert_float_equal(w[0], 0.6, 1e-7);
  assert_float_equal(w[1], 0.8, 1e-7);
  float z[3] = {0, 0, 0};
  assert_int_equal(llorch_openai_embed_finish_vector(z, 3, 0, true), 3);
  assert_true(z[0] == 0 && !isnan(z[1]));
}

static int b64_val(char c) {
  const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const char *p = strchr(tab, c);
  return p && c ? (int)(p - tab) : -1;
}

static void test_write(void **state) {
  (void)state;
  float a[3] = {0.1f, -1.5f, 3.0e-8f}, b[3] = {1.0f / 3.0f, 0.0f, -0.25f};
  const float *vecs[2] = {a, b};
  llorch_jbuf out;
  llorch_jbuf_init(&out);
  llorch_openai_write_embeddings(&out, "my-model", vecs, 2, 3, LLORCH_EMBED_FLOAT, 7);
  cJSON *j = cJSON_Parse(out.data);
  assert_non_null(j);
  assert_string_equal(cJSON_GetObjectItem(j, "object")->valuestring, "list");
  assert_string_equal(cJSON_GetObjectItem(j, "model")->valuestring, "my-model");
  const cJSON *usage = cJSON_GetObjectItem(j, "usage");
  assert_int_equal(cJSON_GetObjectItem(usage, "prompt_tokens")->valueint, 7);
  assert_int_equal(cJSON_GetObjectItem(usage, "total_tokens")->valueint, 7);
  const cJSON *data = cJSON_GetObjectItem(j, "data");
  assert_int_equal(cJSON_GetArraySize(data), 2);
  for (int i = 0; i < 2; i++) {
    const cJSON *d = cJSON_GetArrayItem(data, i);
    assert_string_equal(cJSON_GetObjectItem(d, "object")->valuestring, "embedding");
    assert_int_equal(cJSON_GetObjectItem(d, "index")->valueint, i);
    const cJSON *e = cJSON_GetObjectItem(d, "embedding");
    assert_int_equal(cJSON_GetArraySize(e), 3);
    for (int k = 0; k < 3; k++) /* each number reads back as the same float32 */
      assert_true((float)cJSON_GetArrayItem(e, k)->valuedouble == vecs[i][k]);
  }
  /* the float's shortest form, not the double's */
  assert_non_null(strstr(out.data, "[0.1,-1.5,3e-08]"));
  cJSON_Delete(j);

  llorch_jbuf_reset(&out);
  llorch_openai_write_embeddings(&out, "m", vecs, 2, 3, LLORCH_EMBED_BASE64, 7);
  j = cJSON_Parse(out.data);
  assert_non_null(j);
  data = cJSON_GetObjectItem(j, "data");
  for (int i = 0; i < 2; i++) {
    const char *s = cJSON_GetObjectItem(cJSON_GetArrayItem(data, i), "embedding")->valuestring;
    assert_int_equal(strlen(s), 16); /* 12 bytes -> 16 characters */
    uint8_t bytes[12];
    size_t nb = 0;
    for (size_t q = 0; q < 16; q += 4) {
      uint32_t v = 0;
      for (int k = 0; k < 4; k++) v = v << 6 | (uint32_t)(s[q + k] == '=' ? 0 : b64_val(s[q + k]));
      bytes[nb++] = (uint8_t)(v >> 16);
      bytes[nb++] = (uint8_t)(v >> 8);
      bytes[nb++] = (uint8_t)v;
    }
    for (int k = 0; k < 3; k++) {
      uint32_t bits = (uint32_t)bytes[4 * k] | (uint32_t)bytes[4 * k + 1] << 8 |
                      (uint32_t)bytes[4 * k + 2] << 16 | (uint32_t)bytes[4 * k + 3] << 24;
      float f;
      memcpy(&f, &bits, 4);
      assert_true(f == vecs[i][k]);
    }
  }
  cJSON_Delete(j);
  /* padding: one float is 4 bytes -> "xxxxxx==" */
  llorch_jbuf_reset(&out);
  const float one = 1.0f, *v1[1] = {&one};
  llorch_openai_write_embeddings(&out, "m", v1, 1, 1, LLORCH_EMBED_BASE64, 1);
  assert_non_null(strstr(out.data, "\"AACAPw==\"")); /* 1.0f = 00 00 80 3f */
  llorch_jbuf_free(&out);
}

/* The orchestrator's rename: the head rewritten, the vectors copied. */
static void test_rename(void **state) {
  (void)state;
  float a[2] = {0.5f, -0.25f};
  const float *vecs[1] = {a};
  llorch_jbuf w, out;
  llorch_jbuf_init(&w);
  llorch_jbuf_init(&out);
  llorch_openai_write_embeddings(&w, "worker \"own\" \\ name", vecs, 1, 2, LLORCH_EMBED_FLOAT, 12);
  uint32_t pt = 0;
  assert_int_equal(llorch_openai_embeddings_rename(w.data, w.len, "client-name", &out, &pt), 0);
  assert_int_equal(pt, 12);
  cJSON *x = cJSON_Parse(w.data), *y = cJSON_Parse(out.data);
  assert_non_null(y);
  assert_string_equal(cJSON_GetObjectItem(y, "model")->valuestring, "client-name");
  cJSON_ReplaceItemInObject(x, "model", cJSON_CreateString("client-name"));
  assert_true(cJSON_Compare(x, y, true)); /* nothing else changed */
  cJSON_Delete(x);
  cJSON_Delete(y);
  /* bodies that are not such an answer */
  const char *bad[] = {
      "{}", "{\"error\":{\"message\":\"x\"}}", "{\"object\":\"list\",\"model\":\"m",
      "{\"object\":\"list\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":x,\"total_tokens\":1},\"data\":[]}",
      "{\"object\":\"list\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1},\"data\":[",
      "{\"object\":\"list\",\"data\":[],\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"total_tokens\":1}}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    llorch_jbuf_reset(&out);
    assert_int_equal(llorch_openai_embeddings_rename(bad[i], strlen(bad[i]), "c", &out, &pt), LLORCH_EFORMAT);
  }
  llorch_jbuf_free(&w);
  llorch_jbuf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_input_shapes),
      cmocka_unit_test(test_bad_inputs),
      cmocka_unit_test(test_forwarded_body),
      cmocka_unit_test(test_finish_vector),
      cmocka_unit_test(test_write),
      cmocka_unit_test(test_rename),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
