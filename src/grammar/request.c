/*
 * The OpenAI request fields that ask for structured output (response_format,
 * grammar), and grammars for tool calls. One implementation for every role
 * (see llorch_grammar_from_request in include/llorch/grammar.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/grammar.h"

static int rq_fail(char *param, size_t param_size, const char *name, llorch_errmsg *em, int rc,
                   const char *what) {
  if (param && param_size) snprintf(param, param_size, "%s", name);
  return llorch_errmsg_set(em, rc, "'%s' %s", name, what);
}

int llorch_grammar_from_request(const cJSON *body, const llorch_grammar_limits *lim,
                                llorch_grammar **out, char *param, size_t param_size,
                                char *warning, size_t warning_size, llorch_errmsg *em) {
  *out = NULL;
  if (warning && warning_size) warning[0] = 0;
  if (param && param_size) param[0] = 0;
  const cJSON *rf = cJSON_GetObjectItemCaseSensitive(body, "response_format");
  const cJSON *gr = cJSON_GetObjectItemCaseSensitive(body, "grammar");
  if (rf && cJSON_IsNull(rf)) rf = NULL;
  if (gr && cJSON_IsNull(gr)) gr = NULL;
  int kind = 0; /* 0 text, 1 json_object, 2 json_schema */
  const cJSON *js = NULL;
  if (rf) {
    if (!cJSON_IsObject(rf))
      return rq_fail(param, param_size, "response_format", em, LLORCH_EINVAL,
                     "must be an object such as {\"type\": \"json_schema\", \"json_schema\": {...}}");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsString(type))
      return rq_fail(param, param_size, "response_format.type", em, LLORCH_EINVAL,
                     "is required: one of text, json_object, json_schema");
    if (strcmp(type->valuestring, "text") == 0) kind = 0;
    else if (strcmp(type->valuestring, "json_object") == 0) kind = 1;
    else if (strcmp(type->valuestring, "json_schema") == 0) kind = 2;
    else {
      if (param && param_size) snprintf(param, param_size, "response_format.type");
      return llorch_errmsg_set(em, LLORCH_EINVAL,
                               "'response_format.type' must be one of text, json_object, "
                               "json_schema, got \"%.60s\"", type->valuestring);
    }
    if (kind == 2) {
      js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
      if (!cJSON_IsObject(js))
        return rq_fail(param, param_size, "response_format.json_schema", em, LLORCH_EINVAL,
                       "is required with type json_schema: {\"name\": ..., \"schema\": {...}, "
                       "\"strict\": true|false}");
      const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
      if (name && !cJSON_IsString(name))
        return rq_fail(param, param_size, "response_format.json_schema.name", em, LLORCH_EINVAL,
                       "must be a string");
      const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
      if (strict && !cJSON_IsNull(strict) && !cJSON_IsBool(strict))
        return rq_fail(param, param_size, "response_format.json_schema.strict", em,
                       LLORCH_EINVAL, "must be true or false");
      const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
      if (!schema || (!cJSON_IsObject(schema) && !cJSON_IsBool(schema)))
        return rq_fail(param, param_size, "response_format.json_schema.schema", em,
                       LLORCH_EINVAL, "is required: a JSON Schema object");
    }
  }
  if (gr && kind != 0)
    return rq_fail(param, param_size, "grammar", em, LLORCH_EINVAL,
                   "cannot be combined with a json_object or json_schema response_format");
  int rc = 0;
  if (gr) {
    if (!cJSON_IsString(gr))
      return rq_fail(param, param_size, "grammar", em, LLORCH_EINVAL, "must be a string of GBNF");
    llorch_errmsg inner = {{0}};
    rc = llorch_grammar_from_gbnf(out, gr->valuestring, strlen(gr->valuestring), lim, &inner);
    if (rc < 0) {
      if (param && param_size) snprintf(param, param_size, "grammar");
      return llorch_errmsg_set(em, rc, "'grammar': %s", inner.text);
    }
    return 0;
  }
  if (kind == 1) return llorch_grammar_json_object(out, em);
  if (kind == 2) {
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
    bool strict = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(js, "strict"));
    llorch_errmsg inner = {{0}};
    rc = llorch_grammar_from_schema(out, schema, strict ? LLORCH_SCHEMA_STRICT : 0, lim, warning,
                                    warning_size, &inner);
    if (rc < 0) {
      if (param && param_size) snprintf(param, param_size, "response_format.json_schema.schema");
      return llorch_errmsg_set(em, rc, "'response_format.json_schema.schema': %s", inner.text);
    }
  }
  return 0;
}

/* ---- tool calls ---- */

int llorch_grammar_for_tools(const cJSON *tools, const char *const *names, size_t n_names,
                             const char *prefix, const char *suffix,
                             const llorch_grammar_limits *lim, llorch_grammar **out,
                             llorch_errmsg *em) {
  *out = NULL;
  if (!cJSON_IsArray(tools))
    return llorch_errmsg_set(em, LLORCH_EINVAL, "'tools' must be an array of function tools");
  cJSON *schema = cJSON_CreateObject();
  cJSON *any = cJSON_AddArrayToObject(schema, "anyOf");
  if (!schema || !any) {
    cJSON_Delete(schema);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  }
  int i = 0, kept = 0;
  for (const cJSON *t = tools->child; t; t = t->next, i++) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    if (!cJSON_IsString(name)) {
      cJSON_Delete(schema);
      return llorch_errmsg_set(em, LLORCH_EINVAL, "'tools[%d].function.name' must be a string", i);
    }
    bool wanted = names == NULL;
    for (size_t k = 0; k < n_names && !wanted; k++) wanted = strcmp(names[k], name->valuestring) == 0;
    if (!wanted) continue;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    cJSON *alt = cJSON_CreateObject();
    cJSON *props = cJSON_AddObjectToObject(alt, "properties");
    cJSON *nm = cJSON_AddObjectToObject(props, "name");
    cJSON_AddStringToObject(nm, "const", name->valuestring);
    cJSON_AddItemToObject(props, "arguments",
                          params ? cJSON_Duplicate(params, true) : cJSON_CreateObject());
    cJSON *req = cJSON_AddArrayToObject(alt, "required");
    cJSON_AddItemToArray(req, cJSON_CreateString("name"));
    cJSON_AddItemToArray(req, cJSON_CreateString("arguments"));
    cJSON_AddFalseToObject(alt, "additionalProperties");
    cJSON_AddStringToObject(alt, "type", "object");
    cJSON_AddItemToArray(any, alt);
    kept++;
  }
  if (!kept) {
    cJSON_Delete(schema);
    return llorch_errmsg_set(em, LLORCH_EINVAL, "no tool matches the requested name(s)");
  }
  llorch_jbuf g;
  llorch_jbuf_init(&g);
  /* the $refs inside each tool's parameters point into that tool's schema:
   * compile against the combined document as is (tools rarely use $ref) */
  int rc = llorch_schema_to_gbnf(schema, 0, &g, NULL, 0, em);
  cJSON_Delete(schema);
  if (rc < 0) {
    llorch_jbuf_free(&g);
    return rc;
  }
  /* the schema's root becomes tool-json; root adds the call syntax */
  llorch_jbuf full;
  llorch_jbuf_init(&full);
  const char *root = strstr(g.data, "\nroot ::= ");
  size_t head = root ? (size_t)(root - g.data) + 1 : 0;
  llorch_jbuf_raw(&full, g.data, head);
  llorch_jbuf_cstr(&full, "tool-json ::= ");
  llorch_jbuf_cstr(&full, g.data + head + strlen("root ::= "));
  llorch_jbuf_cstr(&full, "root ::= ");
  for (int part = 0; part < 2; part++) {
    const char *s = part ? suffix : prefix;
    if (part) llorch_jbuf_cstr(&full, " ");
    if (s && s[0]) {
      llorch_jbuf_cstr(&full, "\"");
      for (const char *c = s; *c; c++) {
        char t[8];
        unsigned char ch = (unsigned char)*c;
        if (ch == '"' || ch == '\\') snprintf(t, sizeof t, "\\%c", ch);
        else if (ch < 0x20) snprintf(t, sizeof t, "\\x%02X", ch);
        else snprintf(t, sizeof t, "%c", ch);
        llorch_jbuf_cstr(&full, t);
      }
      llorch_jbuf_cstr(&full, "\" ");
    }
    if (!part) llorch_jbuf_cstr(&full, "tool-json");
  }
  llorch_jbuf_cstr(&full, "\n");
  llorch_jbuf_free(&g);
  if (llorch_jbuf_error(&full) < 0) {
    llorch_jbuf_free(&full);
    return llorch_errmsg_set(em, LLORCH_ENOMEM, "out of memory");
  }
  rc = llorch_grammar_from_gbnf(out, full.data, full.len, lim, em);
  llorch_jbuf_free(&full);
  return rc;
}
