/*
 * The Jinja engine (src/template/): jinja2 3.1 semantics as transformers
 * configures them, one expectation per line. Outputs were checked against
 * Python jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
 * lstrip_blocks=True). Also: errors, the render bounds, and provenance of
 * request text.
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

#include "llorch/jinja.h"

typedef struct jcase {
  const char *tmpl;
  const char *ctx; /* JSON object or NULL */
  const char *want; /* output, or "!error substring" */
} jcase;

static const jcase cases[] = {
    /* whitespace control */
    {"{% if true %}\n  x\n{% endif %}\n", NULL, "  x\n"},
    {"  {% if true %}\n  x\n  {% endif %}\n{#c#}\n  {{ 1 }}\n", NULL, "  x\n  1"},
    {"a  {% if true %}b{% endif %}  {%+ if true %}c{% endif %}", NULL, "a  b  c"},
    {"a \n {%- if true -%} \n b {{- ' c ' -}} \n d{% endif %}", NULL, "ab c d"},
    {"{% raw %}{{ x }}{% endraw %}", NULL, "{{ x }}"},
    {"x\r\ny\n", NULL, "x\ny"},
    /* loops */
    {"{% for x in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}|{% endfor %}",
     NULL, "103TrueFalse3|212FalseFalse3|321FalseTrue3|"},
    {"{% for x in 'abc' %}{{ loop.previtem is defined }}{{ loop.nextitem|default('-') }}{{ loop.cycle('o','e') }}{% endfor %}",
     NULL, "FalseboTrueceTrue-o"},
    {"{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty"},
    {"{% for x in [1,2,3,4] if x is even %}{{ x }}{{ loop.length }}{% endfor %}", NULL, "2242"},
    {"{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}"
     "{% endfor %}", NULL, "013"},
    {"{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", NULL, "a=1;b=2;"},
    {"{% set x = 0 %}{% for i in range(3) %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}", NULL, "1110"},
    {"{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}", NULL, "3"},
    /* macros */
    {"{% macro m(a, b=2) %}{{ a }}-{{ b }}{% endmacro %}{{ m(1) }} {{ m(1, b=3) }} {{ m(a=4) }}", NULL, "1-2 1-3 4-2"},
    {"{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}", NULL, "1"},
    {"{% macro w() %}[{{ caller() }}]{% endmacro %}{% call w() %}in{% endcall %}", NULL, "[in]"},
    {"{% macro w() %}[{{ caller(5) }}]{% endmacro %}{% call(n) w() %}{{ n * 2 }}{% endcall %}", NULL, "[10]"},
    {"{% set b %}x{{ 1 }}{% endset %}{{ b }}{{ b|length }}", NULL, "x12"},
    {"{% filter upper %}ab{{ 'c' }}{% endfilter %}", NULL, "ABC"},
    {"{% generation %}g{% endgeneration %}", NULL, "g"},
    /* expressions */
    {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7 / 2 }} {{ 6 / 2 }}", NULL,
     "3 -4 -2 1024 0.5 3.5 3.0"},
    {"{{ 'x' ~ none ~ 1.0 ~ true }}{{ 'ab' in 'cabd' }}{{ 2 in [1, 2] }}{{ 'k' not in {'k': 1} }}", NULL,
     "xNone1.0TrueTrueTrueFalse"},
    {"{{ [1, 2.0, 'a', none, true, {'k': \"v'\"}] }}{{ (1,) }}{{ 1e20 }}{{ 1e-7 }}{{ 0.1 + 0.2 }}", NULL,
     "[1, 2.0, 'a', None, True, {'k': \"v'\"}](1,)1e+20" "1e-070.30000000000000004"},
    {"{{ ['a\\u00a0b', 'zw\\u200bj', 'ok \\u00e9', '\\U000f0000', '\\x85'] }}", NULL,
     "['a\\xa0b', 'zw\\u200bj', 'ok \xc3\xa9', '\\U000f0000', '\\x85']"},
    {"{{ 'abcdef'[1:4] }}{{ 'abcdef'[::-2] }}{{ [1,2,3][-1] }}{{ 'héllo'[1:3] }}{{ 'héllo'|length }}", NULL,
     "bcdfdb3él5"},
    {"{{ 1 if false }}|{{ 'a' if 1 < 2 < 3 else 'b' }}|{{ not 1 == 2 }}", NULL, "|a|True"},
    {"{{ '%s-%d' % ('a', 3) }}{{ '{}+{name}'.format(1, name='n') }}", NULL, "a-3" "1+n"},
    /* filters */
    {"{{ d|tojson }}|{{ d|tojson(indent=2) }}", "{\"d\":{\"b\":[1,2.5,null,true],\"a\":\"é\\\"\\n\"}}",
     "{\"b\": [1, 2.5, null, true], \"a\": \"é\\\"\\n\"}|{\n  \"b\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n"
     "  \"a\": \"é\\\"\\n\"\n}"},
    {"{{ d|tojson(sort_keys=true, separators=(',', ':')) }}", "{\"d\":{\"b\":1,\"a\":{}}}", "{\"a\":{},\"b\":1}"},
    {"[{{ '\\u3000\\xa0 x\\u2003\\x1f'|trim }}|{{ ' \\u00e9 '.strip() }}]", NULL, "[x|\xc3\xa9]"},
    {"{{ '  x  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'ab'|upper }}{{ 'AB'|lower }}{{ 'hello world'|title }}"
     "{{ 'hELLO'|capitalize }}",
     NULL, "x|a|ABabHello WorldHello"},
    {"{{ [1,2]|join(', ') }}|{{ ms|map(attribute='r')|join }}|{{ ms|selectattr('r', 'equalto', 'u')|list|length }}"
     "|{{ ms|rejectattr('r', 'equalto', 'u')|map(attribute='r')|first }}",
     "{\"ms\":[{\"r\":\"s\"},{\"r\":\"u\"},{\"r\":\"u\"}]}", "1, 2|suu|2|s"},
    {"{{ x|default('d') }}{{ ''|default('e', true) }}{{ none|default('f') }}", NULL, "deNone"},
    {"{{ 'aXbXc'|replace('X', '-') }}{{ 'a b'.split() }}{{ 'a,b,c'.rsplit(',', 1) }}{{ 'xyx'.strip('x') }}", NULL,
     "a-b-c['a', 'b']['a,b', 'c']y"},
    {"{{ {'b': 1, 'a': 2}|dictsort }}{{ [3, 1, 2]|sort }}{{ ['b', 'A', 'a']|unique|list }}{{ [1, 2]|reverse|list }}",
     NULL, "[('a', 2), ('b', 1)][1, 2, 3]['b', 'A'][2, 1]"},
    {"{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, first=true) }}", NULL, "a\n  b\n\n  c|  a\n  b"},
    {"{{ [1, 2, 3]|sum }}{{ [3, 1]|min }}{{ [3, 1]|max }}{{ '42'|int + 1 }}{{ '2.5'|float }}{{ 2.567|round(1) }}"
     "{{ -3|abs }}{{ 'a b  c'|wordcount }}",
     NULL, "6134" "32.52.633"},
    {"{{ [1, 2, 3]|batch(2)|list }}{{ {'a': 1}|items|list }}{{ '<a>'|e }}{{ '<a>'|safe }}", NULL,
     "[[1, 2], [3]][('a', 1)]&lt;a&gt;<a>"},
    {"{{ '\\n'|safe + '<x>' }}", NULL, "\n&lt;x&gt;"},
    /* tests */
    {"{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ 1.0 is integer }}{{ {} is mapping }}"
     "{{ [] is iterable }}{{ 'a' is sequence }}{{ true is boolean }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}"
     "{{ 1 is equalto 1 }}{{ 2 is in [2] }}{{ false is false }}",
     NULL, "FalseTrueTrueTrueFalseTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
    /* methods */
    {"{{ d.get('a') }}{{ d.get('z', 0) }}{{ d.keys()|list }}{{ d.values()|list }}{{ 'abc'.startswith(('x', 'a')) }}"
     "{{ 'a-b'.endswith('b') }}{{ 'banana'.count('a') }}{{ 'banana'.find('n') }}{{ ', '.join(['a', 'b']) }}",
     "{\"d\":{\"a\":1}}", "10['a'][1]TrueTrue32a, b"},
    {"{{ strftime_now('%d %b %Y') }}", NULL, "22 Nov 2026"},
    /* errors, as jinja2 names them */
    {"{{ raise_exception('no ' ~ 'way') }}", NULL, "!TemplateError: no way"},
    {"{{ x.y }}", NULL, "!UndefinedError: 'x' is undefined"},
    {"{{ d.a.b }}", "{\"d\":{}}", "!UndefinedError: 'dict object' has no attribute 'a'"},
    {"{% set l = [] %}{{ l.append(1) }}", NULL, "!SecurityError: access to attribute 'append' of 'list' object is unsafe."},
    {"{{ 'a' + {} }}", NULL, "!TypeError: can only concatenate str (not \"dict\") to str"},
    {"{{ [1]|map('string')|tojson }}", NULL, "!not JSON serializable"},
    {"{{ [1]|map('string')|length }}", NULL, "!has no len()"},
    {"{{ 1 / 0 }}", NULL, "!ZeroDivisionError"},
    {"{{ x|nosuchfilter }}", NULL, "!No filter named 'nosuchfilter'"},
    {"{% include 'x' %}", NULL, "!no loader"},
    {"{% for %}", NULL, "!TemplateSyntaxError"},
    {"{{ 1 +", NULL, "!TemplateSyntaxError"},
    {"{{ 'a' 'b' }}{% endif %}", NULL, "!Encountered unknown tag 'endif'"},
    {"{{ range(1000000)|length }}", NULL, "!Range too big"},
    /* bounds: a clear error, never a hang or a crash */
    {"{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}", NULL, "!steps"},
    {"{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}", NULL, "!RecursionError"},
    {"{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", NULL, "!output exceeded"},
};

static void test_cases(void **state) {
  (void)state;
  llorch_jinja_render_opts o = {.bos_token = "<s>", .eos_token = "</s>", .now = 1795374120 /* 2026-11-22 19:02 */};
  o.limits.max_steps = 2000000;
  o.limits.max_output = 1 << 20;
  int failed = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const jcase *t = &cases[i];
    llorch_jinja *j = NULL;
    llorch_errmsg em = {{0}};
    llorch_jinja_output out = {0};
    int rc = llorch_jinja_compile(&j, t->tmpl, strlen(t->tmpl), &em);
    cJSON *ctx = t->ctx ? cJSON_Parse(t->ctx) : NULL;
    if (t->ctx && !ctx) fail_msg("case %zu: bad JSON", i);
    if (rc == 0) rc = llorch_jinja_render(j, ctx, &o, &out, &em);
    bool want_err = t->want[0] == '!';
    if (want_err ? (rc == 0 || !strstr(em.text, t->want + 1)) : (rc != 0 || strcmp(out.text, t->want) != 0)) {
      print_error("case %zu: %s\n  want: [%s]\n  got:  [%s] (rc %d)\n", i, t->tmpl, t->want, rc == 0 ? out.text : em.text,
                  rc);
      failed++;
    }
    llorch_jinja_output_free(&out);
    llorch_jinja_free(j);
    cJSON_Delete(ctx);
  }
  if (failed) fail_msg("%d of %zu cases failed", failed, sizeof cases / sizeof cases[0]);
}

/* Which output bytes came from the request survives slicing, replace,
 * strip, split/join and case changes; the template's own text never does. */
static void test_provenance(void **state) {
  (void)state;
  static const char tmpl[] = "<m>{{ (c|trim)[1:] }}</m>{{ c.replace('x', '<y>') }}{{ '|'.join(c.split('x')) }}"
                             "{{ c|upper }}{{ bos_token }}";
  llorch_jinja *j = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_jinja_compile(&j, tmpl, strlen(tmpl), &em), 0);
  cJSON *ctx = cJSON_Parse("{\"c\":\" axb \"}");
  llorch_jinja_render_opts o = {.bos_token = "<s>"};
  llorch_jinja_output out = {0};
  assert_int_equal(llorch_jinja_render(j, ctx, &o, &out, &em), 0);
  assert_string_equal(out.text, "<m>xb</m> a<y>b  a|b  AXB <s>");
  /*                             template:  <m> </m> <y> | <s>  request: the rest */
  static const char want[] = "00011000011000111101111111000";
  assert_int_equal(out.len, strlen(want));
  for (size_t i = 0; i < out.len; i++)
    if (out.from_request[i] != (want[i] == '1')) fail_msg("byte %zu ('%c') has provenance %d", i, out.text[i], out.from_request[i]);
  llorch_jinja_output_free(&out);
  cJSON_Delete(ctx);
  llorch_jinja_free(j);
}

/* Templates nested 5000 deep are refused at compile time, not by the C stack. */
static void test_nesting(void **state) {
  (void)state;
  size_t n = 5000;
  char *src = malloc(n * 24 + 16), *p = src;
  for (size_t i = 0; i < n; i++) p += sprintf(p, "{%% if true %%}");
  for (size_t i = 0; i < n; i++) p += sprintf(p, "{%% endif %%}");
  llorch_jinja *j = NULL;
  llorch_errmsg em = {{0}};
  assert_int_equal(llorch_jinja_compile(&j, src, strlen(src), &em), LLORCH_ELIMIT);
  assert_non_null(strstr(em.text, "nested"));
  p = src;
  for (size_t i = 0; i < n; i++) p += sprintf(p, "not ");
  char *expr = malloc(strlen(src) + 16);
  sprintf(expr, "{{ %s1 }}", src);
  assert_int_equal(llorch_jinja_compile(&j, expr, strlen(expr), &em), LLORCH_ELIMIT);
  free(expr);
  free(src);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cases),
      cmocka_unit_test(test_provenance),
      cmocka_unit_test(test_nesting),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
