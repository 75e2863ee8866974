/*
 * Structured outputs: grammars enforced while decoding.
 *
 *   GBNF text (llama.cpp's syntax, as llama-server's `grammar` field) --+
 *   JSON Schema (OpenAI response_format) -> GBNF text (schema.c) -------+-> llorch_grammar
 *   llorch_grammar + llorch_grammar_vocab (a tokenizer's byte trie) -> llorch_grammar_state
 *   per sequence: mask (which tokens may come next) -> sample -> accept
 *
 * A grammar is compiled to rules over BYTES: a character class over code
 * points becomes the alternatives of its UTF-8 encodings, so a token that
 * ends inside a multi-byte character is handled like any other prefix. The
 * matcher is a pushdown automaton whose configurations (sets of stacks, the
 * stacks interned so that equal stacks are one id) are turned lazily into
 * DFA states with a 256-entry transition row each; a token mask is a walk
 * of the vocabulary's byte trie through those rows, pruned at the first
 * dead byte, and cached per DFA state. Inside a JSON string almost every
 * token is allowed and the state is the same after every token, so the walk
 * happens once and later steps copy the cached mask.
 *
 * GBNF as llama.cpp reads it: `name ::= alternatives`, "literals" with
 * \n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH escapes, [character classes]
 * with ranges and ^, `.` (any character), ( groups ), postfix * + ? {m}
 * {m,} {m,n}, # comments; the start rule is `root`. A newline ends a rule
 * except inside parentheses or after `|`. Left recursion is an error (the
 * stack matcher would never terminate on it), as in llama.cpp.
 *
 * Threads: a grammar caches DFA states and masks as it is used, so a grammar
 * and every state made from it must be used from one thread at a time. A
 * vocabulary is immutable once built and may be shared by any number of
 * grammars and threads.
 */
#ifndef LLORCH_GRAMMAR_H
#define LLORCH_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "llorch/error.h"
#include "llorch/json.h"
#include "llorch/tokenizer.h"

/* Bounds on what one grammar may cost (a request chooses the grammar). */
typedef struct llorch_grammar_limits {
  uint32_t max_text_bytes;  /* GBNF text, also the GBNF a schema compiles to */
  uint32_t max_rules;       /* rules after expanding repetitions and character classes */
  uint32_t max_states;      /* DFA states cached per grammar (each 1 KiB + a mask) */
} llorch_grammar_limits;

/* 1 MiB of text, 100000 rules, 16384 states. */
void llorch_grammar_limits_default(llorch_grammar_limits *lim);

typedef struct llorch_grammar llorch_grammar;

/*
 * Compiles GBNF text (len bytes, need not be NUL-terminated). Errors (em
 * names the line and column, 1-based, and what was expected):
 *   LLORCH_EINVAL  syntax error, undefined rule, no `root`, left recursion,
 *                  a rule that can match nothing
 *   LLORCH_ELIMIT  over lim (NULL = defaults)
 *   LLORCH_ENOMEM
 */
int llorch_grammar_from_gbnf(llorch_grammar **out, const char *text, size_t len,
                             const llorch_grammar_limits *lim, llorch_errmsg *em);

/* The JSON Schema translation (schema.c). */
typedef enum llorch_schema_flags {
  LLORCH_SCHEMA_STRICT = 1, /* an unsupported keyword is an error, not a warning */
} llorch_schema_flags;

/*
 * Translates a JSON Schema into GBNF text appended to out (rule `root`).
 * Supported: type (the seven names and lists of them), properties, required,
 * additionalProperties (false, true or a schema), items, prefixItems,
 * minItems/maxItems, enum, const, anyOf, oneOf (treated as anyOf: the
 * output validates when the branches are disjoint), allOf of object schemas,
 * $ref to "#", "#/$defs/..", "#/definitions/.." or any JSON pointer into the
 * document (recursion allowed), $defs/definitions, minLength/maxLength,
 * pattern (regex subset: literals, escapes \d \w \s \D \W \S \. etc.,
 * classes, groups, |, * + ? {m} {m,} {m,n}, ^ and $ at the ends; matched as
 * anchored, which is stricter than JSON Schema's search, so the output still
 * validates), format (date, time, date-time, uuid, email), minimum/maximum
 * and exclusiveMinimum/exclusiveMaximum on integers, nullable (OpenAPI),
 * and annotations (title, description, default, examples, $schema, $id,
 * $comment, deprecated, readOnly, writeOnly) which are ignored.
 *
 * What the output looks like: object properties in the order of
 * `properties`; extra properties only when additionalProperties is true or
 * a schema (keys then never equal a declared name); whitespace between
 * tokens at most one space or one newline and 20 spaces/tabs; integers
 * at most 16 digits, numbers at most 16 integer and 16 fraction digits and a
 * two-digit exponent.
 *
 * An unsupported keyword (or keyword value) is an error with its JSON
 * pointer when flags has LLORCH_SCHEMA_STRICT; otherwise it is ignored and
 * described in warning (first one, "" when none; warning may be NULL). A
 * schema that can match nothing is an error naming where.
 * Returns 0, LLORCH_EINVAL or LLORCH_EUNSUPPORTED (em set), LLORCH_ENOMEM.
 */
int llorch_schema_to_gbnf(const cJSON *schema, unsigned flags, llorch_jbuf *out, char *warning,
                          size_t warning_size, llorch_errmsg *em);

/* llorch_schema_to_gbnf then llorch_grammar_from_gbnf. */
int llorch_grammar_from_schema(llorch_grammar **out, const cJSON *schema, unsigned flags,
                               const llorch_grammar_limits *lim, char *warning,
                               size_t warning_size, llorch_errmsg *em);

/* Any JSON object (response_format {"type": "json_object"}). */
int llorch_grammar_json_object(llorch_grammar **out, llorch_errmsg *em);

/* Grammars are reference-counted: _ref adds one, _free drops one and frees
 * the grammar at zero. Not atomic: one thread. */
llorch_grammar *llorch_grammar_ref(llorch_grammar *g);
void llorch_grammar_free(llorch_grammar *g);

/* Rules and DFA states so far (tests, the bench). */
typedef struct llorch_grammar_stats {
  uint32_t n_rules;
  uint32_t n_stacks;        /* interned stack nodes */
  uint32_t n_states;        /* DFA states */
  uint32_t n_masks;         /* masks cached */
  uint64_t n_mask_walks;    /* masks computed by a trie walk */
  uint64_t n_mask_hits;     /* masks copied from the cache */
} llorch_grammar_stats;
void llorch_grammar_stats_get(const llorch_grammar *g, llorch_grammar_stats *out);

/* ---- matching bytes (no vocabulary) ---- */

/*
 * True when text[0..len) is a complete sentence of the grammar (*prefix, when
 * not NULL, gets whether it is at least a viable prefix). Uses and fills the
 * grammar's caches. LLORCH_ELIMIT when the state limit is reached.
 */
int llorch_grammar_match(llorch_grammar *g, const char *text, size_t len, bool *complete,
                         bool *prefix, llorch_errmsg *em);

/* ---- a vocabulary: token texts as a byte trie ---- */

typedef struct llorch_grammar_vocab llorch_grammar_vocab;

/*
 * Builds the trie of every token's decoded bytes (llorch_token_piece).
 * Tokens that decode to nothing (control tokens) are never allowed by a
 * grammar, except end-of-generation tokens (llorch_tokenizer_is_eog), which
 * are allowed exactly when the output is complete.
 */
int llorch_grammar_vocab_init(llorch_grammar_vocab **out, const llorch_tokenizer *t,
                              llorch_errmsg *em);
/* The same from explicit token texts (tests): texts[i] is lens[i] bytes,
 * eog[i] marks end-of-generation tokens (eog may be NULL). */
int llorch_grammar_vocab_init_texts(llorch_grammar_vocab **out, const char *const *texts,
                                    const size_t *lens, const bool *eog, uint32_t n_vocab,
                                    llorch_errmsg *em);
void llorch_grammar_vocab_free(llorch_grammar_vocab *v);
uint32_t llorch_grammar_vocab_size(const llorch_grammar_vocab *v);

/* ---- per-sequence state ---- */

typedef struct llorch_grammar_state llorch_grammar_state;

/*
 * A matcher at the start of the grammar for tokens of v. Holds a reference
 * on g; v must outlive the state. One grammar may serve many states (they
 * share its caches) as long as they are used from one thread.
 */
int llorch_grammar_state_init(llorch_grammar_state **out, llorch_grammar *g,
                              const llorch_grammar_vocab *v, llorch_errmsg *em);
void llorch_grammar_state_free(llorch_grammar_state *s);

/*
 * Fills mask (ceil(n_vocab / 32) words, bit i of word i / 32 = token i) with
 * the tokens that may come next: a token is allowed when its bytes continue
 * a valid output, an end-of-generation token when the output is complete.
 * Returns the number of allowed tokens (0 is possible only with a
 * vocabulary that cannot spell what the grammar needs), or LLORCH_ELIMIT
 * (state limit) / LLORCH_ENOMEM with em.
 */
int llorch_grammar_state_mask(llorch_grammar_state *s, uint32_t *mask, llorch_errmsg *em);

/*
 * Advances over token id. LLORCH_EINVAL when the token is not allowed here
 * (the state is unchanged), LLORCH_ELIMIT / LLORCH_ENOMEM.
 */
int llorch_grammar_state_accept(llorch_grammar_state *s, int32_t id, llorch_errmsg *em);

/* True when the output so far is a complete sentence. */
bool llorch_grammar_state_complete(const llorch_grammar_state *s);
/* True when the output is complete and no byte may follow (only an
 * end-of-generation token could): the caller should end the sequence. */
bool llorch_grammar_state_finished(const llorch_grammar_state *s);

/* ---- OpenAI request fields (request.c) ---- */

/*
 * The grammar a chat/completions request asks for, from its body:
 *   response_format {"type":"text"}                         none (*out NULL)
 *   response_format {"type":"json_object"}                  any JSON object
 *   response_format {"type":"json_schema","json_schema":
 *       {"name":..., "schema":{...}, "strict":bool}}        the schema (strict: see above)
 *   grammar "<GBNF text>"                                   llama-server's field
 * Giving both a grammar and a non-text response_format is an error. On
 * success *out is NULL (nothing asked) or a new grammar; warning gets the
 * non-strict warning ("" when none). On failure (LLORCH_EINVAL,
 * LLORCH_EUNSUPPORTED, LLORCH_ELIMIT, LLORCH_ENOMEM) param names the field
 * ("response_format.json_schema.schema", "grammar", ...) and em says what
 * is wrong. Used by the worker (to enforce) and the orchestrator (to
 * validate before queueing).
 */
int llorch_grammar_from_request(const cJSON *body, const llorch_grammar_limits *lim,
                                llorch_grammar **out, char *param, size_t param_size,
                                char *warning, size_t warning_size, llorch_errmsg *em);

/*
 * A grammar for tool calls (for `tool_choice: "required"` or a named
 * function): the output is prefix, then one JSON object
 * {"name": <one of names>, "arguments": <that tool's parameters schema>},
 * then suffix (prefix/suffix are literal text in the model family's call
 * syntax, e.g. "<tool_call>\n" and "\n</tool_call>"; either may be NULL).
 * tools is an OpenAI tools array ([{"type":"function","function":{"name",
 * "parameters"}}]); only names listed in names (NULL = all) are allowed.
 */
int llorch_grammar_for_tools(const cJSON *tools, const char *const *names, size_t n_names,
                             const char *prefix, const char *suffix,
                             const llorch_grammar_limits *lim, llorch_grammar **out,
                             llorch_errmsg *em);

#endif /* LLORCH_GRAMMAR_H */
