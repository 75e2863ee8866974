/*
 * The OpenAI API layer, shared by the worker and the orchestrator: one
 * parser/validator of request bodies, one set of writers for responses,
 * stream chunks, usage, logprobs and errors, and the parser that splits
 * generated text into content, reasoning and tool calls.
 *
 * Who uses what:
 *   worker        request -> job (llorch_openai_request_parse), chat context
 *                 for the template (llorch_openai_chat_context), generated
 *                 text -> deltas (llorch_openai_output), deltas -> chunks or
 *                 one response (writers), native token events carry the
 *                 same deltas (llorch_openai_write_delta).
 *   orchestrator  request -> validated struct -> the worker's /v2/execute
 *                 body (llorch_openai_request_native_body); native events'
 *                 deltas -> the same writers.
 * So a field is validated the same way, and a response looks the same,
 * whichever role answers.
 */
#ifndef LLORCH_OPENAI_H
#define LLORCH_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "llorch/error.h"
#include "llorch/http.h"
#include "llorch/json.h"

/* ---- errors ---- */

/* An error answer before a stream started: status + the envelope's fields. */
typedef struct llorch_openai_error {
  int status;
  const char *type;        /* "invalid_request_error", "server_error", ... */
  const char *code;        /* "invalid_value", "model_not_found", ... */
  char param[96];          /* "" = null */
  char message[512];
  int retry_after_s;       /* > 0: Retry-After header */
} llorch_openai_error;

/* Fills err (message from fmt) and returns LLORCH_EINVAL (LLORCH_ENOMEM for
 * status 500 with code "internal_error"). param NULL -> null. */
int llorch_openai_fail(llorch_openai_error *err, int status, const char *type, const char *code,
                       const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Answers err on req: {"error":{message,type,param,code}}, Retry-After when set. */
void llorch_openai_respond_error(llorch_http_request *req, const llorch_openai_error *err);

/* ---- requests ---- */

typedef enum llorch_openai_api {
  LLORCH_OPENAI_CHAT = 0,       /* /v1/chat/completions */
  LLORCH_OPENAI_COMPLETION = 1, /* /v1/completions */
  LLORCH_OPENAI_NATIVE = 2,     /* the worker's /v2/execute: messages or prompt, job_id,
                                   logprobs as for chat, always streamed */
} llorch_openai_api;

typedef enum llorch_openai_tool_choice {
  LLORCH_OPENAI_TOOL_CHOICE_AUTO = 0,
  LLORCH_OPENAI_TOOL_CHOICE_NONE = 1,     /* tools removed from the prompt, no parsing */
  LLORCH_OPENAI_TOOL_CHOICE_REQUIRED = 2,
  LLORCH_OPENAI_TOOL_CHOICE_NAMED = 3,    /* tool_choice_name */
} llorch_openai_tool_choice;

typedef enum llorch_reasoning_format {
  LLORCH_REASONING_UNSET = 0,             /* the request did not say: the model's default */
  LLORCH_REASONING_CONTENT = 1,           /* thinking -> reasoning_content */
  LLORCH_REASONING_NONE = 2,              /* thinking stays inline in content */
} llorch_reasoning_format;

/* "reasoning_content" / "none" -> format; LLORCH_EINVAL otherwise. */
int llorch_reasoning_format_parse(const char *s, llorch_reasoning_format *out);
const char *llorch_reasoning_format_name(llorch_reasoning_format f);

#define LLORCH_OPENAI_MAX_STOP 16 /* request.max_stop may not exceed it */
#define LLORCH_OPENAI_MAX_TOP_LOGPROBS 20
#define LLORCH_OPENAI_MAX_TOOLS 128
#define LLORCH_OPENAI_MAX_LOGIT_BIAS 1024 /* entries of logit_bias (OpenAI allows 300) */
#define LLORCH_OPENAI_MAX_N 128   /* request.max_n may not exceed it */

/* Bounds on a request's lists, so that validating and rendering stay cheap
 * (the operator's request.* options where the roles have them). */
typedef struct llorch_openai_limits {
  int max_messages;        /* messages */
  int max_content_parts;   /* content parts over all messages */
  int max_stop;            /* stop strings, <= LLORCH_OPENAI_MAX_STOP */
  int max_tools;           /* tools, <= LLORCH_OPENAI_MAX_TOOLS; also tool_calls per message */
  int max_n;               /* choices per request (n), <= LLORCH_OPENAI_MAX_N */
} llorch_openai_limits;

/* The defaults used when no limits are given. */
#define LLORCH_OPENAI_LIMITS_DEFAULT {100000, 100000, 4, LLORCH_OPENAI_MAX_TOOLS, 8}

struct llorch_config;
/* The operator's request.* options as limits (both roles read them so). */
llorch_openai_limits llorch_openai_limits_from_config(const struct llorch_config *cfg);

/*
 * A validated request. Pointers point into the parsed body, which must
 * outlive the struct.
 */
typedef struct llorch_openai_request {
  llorch_openai_api api;
  const char *model;                   /* NULL when absent (allowed on a worker) */
  bool stream, include_usage;
  int n;                               /* choices (1..lim->max_n): siblings of one prompt */
  bool chat;                           /* a messages request (chat, or native with messages) */
  const cJSON *messages;               /* chat: the array as sent */
  const char *prompt;                  /* completion/native: the prompt */
  const char *job_id;                  /* native: NULL = generate one */
  uint32_t max_tokens;                 /* 0 = all that fits */
  bool echo;                           /* prompts: the answer starts with the prompt (and, with
                                          logprobs, the prompt tokens' logprobs) */
  bool prompt_only;                    /* echo with max_tokens 0: nothing is generated */
  const char *suffix;                  /* prompts: fill-in-the-middle's text after the gap, or NULL */
  bool ignore_eos;
  const char *stop[LLORCH_OPENAI_MAX_STOP];
  int n_stop;
  double temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
  int64_t top_k;
  bool has_seed;
  int64_t seed;
  bool logprobs;                       /* chat/native: per-token logprobs; completion: any */
  int top_logprobs;                    /* alternatives per token */
  /* tools (chat) */
  const cJSON *tools;                  /* validated array, NULL when none */
  llorch_openai_tool_choice tool_choice;
  const char *tool_choice_name;        /* NAMED */
  bool parallel_tool_calls;            /* default true */
  const cJSON *chat_template_kwargs;   /* object or NULL: extra template variables */
  const cJSON *response_format;        /* passed through untouched (constrained decoding) */
  const cJSON *grammar;                /* GBNF text (llama-server's field), passed through the same way */
  const cJSON *logit_bias;             /* {"<id>": bias}, checked: decimal ids, biases in [-100, 100] */
  llorch_reasoning_format reasoning_format;
} llorch_openai_request;

/*
 * Validates body (a JSON object) for api into out, within lim (NULL =
 * LLORCH_OPENAI_LIMITS_DEFAULT). Every wrong field gets a 400 naming it
 * (param) with the value and what was expected (n past lim->max_n too). Returns 0 or LLORCH_EINVAL with err. The model
 * name is not checked against anything here. Touches nothing but its
 * arguments: callable from any thread.
 */
int llorch_openai_request_parse(const cJSON *body, llorch_openai_api api,
                                const llorch_openai_limits *lim, llorch_openai_request *out,
                                llorch_openai_error *err);

/*
 * The worker's /v2/execute body for a validated client request, as a
 * malloc'ed JSON object text: messages or prompt, sampling, limits, stop,
 * logprobs, tools, tool_choice, parallel_tool_calls, chat_template_kwargs,
 * response_format, grammar, logit_bias and reasoning_format (the request's, else
 * default_reasoning unless that is UNSET), n when > 1, plus job_id when not NULL.
 * NULL when out of memory.
 */
char *llorch_openai_request_native_body(const llorch_openai_request *r, const char *job_id,
                                        llorch_reasoning_format default_reasoning);

/*
 * The context a chat template is rendered with (a new cJSON object, free
 * with cJSON_Delete): {messages, tools?, add_generation_prompt: true, and
 * chat_template_kwargs' keys}, as transformers builds it (the renderer adds
 * the model's bos_token and eos_token). Messages are normalised the way templates
 * expect: content parts joined into one string, "developer" -> "system",
 * tool_calls' JSON-string arguments parsed into objects. tools is left out
 * when there are none or tool_choice is "none"; a chat_template_kwargs key
 * that names one of the context's own keys (or bos_token/eos_token) is
 * ignored. A message's absent content stays absent.
 * NULL when out of memory.
 */
cJSON *llorch_openai_chat_context(const llorch_openai_request *r);

/* ---- embeddings (POST /v1/embeddings) ---- */

#define LLORCH_OPENAI_MAX_EMBED_INPUTS 2048     /* items of a list input (OpenAI's limit) */
#define LLORCH_OPENAI_MAX_EMBED_TOKENS 1048576  /* token ids of one id-list input */
#define LLORCH_OPENAI_MAX_EMBED_DIMENSIONS 65536

typedef enum llorch_openai_embed_encoding {
  LLORCH_EMBED_FLOAT = 0,  /* arrays of numbers */
  LLORCH_EMBED_BASE64 = 1, /* base64 of the little-endian float32 values, as OpenAI */
} llorch_openai_embed_encoding;

/* A validated embeddings request; pointers point into the parsed body. */
typedef struct llorch_openai_embed_request {
  const char *model;                   /* NULL when absent (allowed on a worker) */
  const cJSON *input;                  /* the input as sent: a string, or an array */
  int n_inputs;                        /* inputs: 1 for a string or one list of ids */
  bool ids;                            /* the inputs are token ids (one list, or lists) */
  llorch_openai_embed_encoding encoding;
  uint32_t dimensions;                 /* 0: the model's; else truncate to this many and renormalise */
} llorch_openai_embed_request;

/*
 * Validates an embeddings body: input (a non-empty string, a list of 1 to
 * LLORCH_OPENAI_MAX_EMBED_INPUTS non-empty strings, a non-empty list of
 * token ids, or a list of such lists; ids integers in [0, 2^31), at most
 * LLORCH_OPENAI_MAX_EMBED_TOKENS per input), encoding_format "float" or
 * "base64", dimensions (an integer in [1, LLORCH_OPENAI_MAX_EMBED_DIMENSIONS];
 * the worker checks it against the model's width), model (a string), user
 * (a string, ignored). Unknown fields are ignored, as for chat. Each wrong
 * field gets a 400 naming it ("input[3]", "input[1][7]") with the value and
 * what was expected. 0 or LLORCH_EINVAL with err. Callable from any thread.
 */
int llorch_openai_embed_parse(const cJSON *body, llorch_openai_embed_request *out,
                              llorch_openai_error *err);

/* Input i (< r->n_inputs): its text (*ids NULL) or its array of ids (*text NULL). */
void llorch_openai_embed_input(const llorch_openai_embed_request *r, int i, const char **text,
                               const cJSON **ids);

/*
 * The body the orchestrator forwards to a worker's /v1/embeddings: the
 * validated fields without model (the worker serves one model and may know
 * it by another name). malloc'ed JSON text, NULL when out of memory.
 */
char *llorch_openai_embed_body(const llorch_openai_embed_request *r);

/*
 * Turns a pooled hidden state (n floats) into the vector an embedding
 * answer carries: the first dims values (dims <= n; 0 = all), L2-normalised
 * when normalize (a zero vector stays zero). In place; returns the length.
 */
uint32_t llorch_openai_embed_finish_vector(float *v, uint32_t n, uint32_t dims, bool normalize);

/*
 * {"object":"list","model":..,"usage":{"prompt_tokens","total_tokens"},
 * "data":[{"object":"embedding","index":i,"embedding":..}]}: vecs[i] has dim
 * floats, written as numbers (the float32's shortest form) or as base64 of
 * their little-endian bytes. data comes last (see below).
 */
void llorch_openai_write_embeddings(llorch_jbuf *b, const char *model, const float *const *vecs,
                                    int n, uint32_t dim, llorch_openai_embed_encoding enc,
                                    uint32_t prompt_tokens);

/*
 * The orchestrator's copy of a worker's answer with "model" as the client
 * named it: body must be what llorch_openai_write_embeddings wrote; its
 * head (object, model, usage) is written again into out with model, the
 * rest (data, megabytes for large requests) copied as it is, without
 * parsing it. *prompt_tokens gets usage.prompt_tokens. 0, LLORCH_EFORMAT
 * when the head is not as written (nothing useful in out), LLORCH_ENOMEM.
 */
int llorch_openai_embeddings_rename(const char *body, size_t len, const char *model,
                                    llorch_jbuf *out, uint32_t *prompt_tokens);

/* ---- response metadata and deltas ---- */

typedef struct llorch_openai_meta {
  const char *id;          /* chatcmpl-... / cmpl-... */
  int64_t created;         /* unix seconds */
  const char *model;       /* as the client named it */
  bool chat;               /* chat.completion(.chunk), else text_completion */
  uint32_t cached_tokens;  /* prompt tokens served from the prefix cache (usage.prompt_tokens_details) */
  int index;               /* chunks: the choice they belong to (n > 1), from 0 */
} llorch_openai_meta;

/*
 * One piece of generated output, as OpenAI streams it: content, reasoning
 * content, or one fragment of a tool call (the first fragment of call
 * `tool_index` has its id and name, later ones argument text).
 */
typedef struct llorch_openai_delta {
  const char *content;     /* NULL = none */
  size_t content_len;
  const char *reasoning;   /* NULL = none */
  size_t reasoning_len;
  int tool_index;          /* -1 = no tool-call fragment */
  const char *tool_id;     /* first fragment only, else NULL */
  const char *tool_name;   /* first fragment only, else NULL */
  const char *tool_args;   /* argument text (may be "") */
  size_t tool_args_len;
} llorch_openai_delta;

#define LLORCH_OPENAI_DELTA_INIT {NULL, 0, NULL, 0, -1, NULL, NULL, NULL, 0}

/* Writes d as an OpenAI delta object ({"content":..} / {"reasoning_content":..} /
 * {"tool_calls":[{index, id, type, function:{name, arguments}}]}); role adds
 * "role":"assistant". */
void llorch_openai_write_delta(llorch_jbuf *b, const llorch_openai_delta *d, bool role);
/* Reads a delta object written by llorch_openai_write_delta back (pointers
 * into o). LLORCH_EINVAL when it is not one. */
int llorch_openai_delta_from_json(const cJSON *o, llorch_openai_delta *d);

/* ---- logprobs ---- */

/* One token's logprob with its alternatives, for either logprobs shape. */
typedef struct llorch_openai_lp_token {
  const char *text;        /* may hold invalid UTF-8 (written as U+FFFD) */
  size_t len;
  const uint8_t *bytes;    /* the exact bytes, NULL = text's */
  size_t n_bytes;
  double logprob;
} llorch_openai_lp_token;

/*
 * Logprobs collected over a response: chat's {"content":[entries]} and
 * completions' {"tokens","token_logprobs","top_logprobs","text_offset"}.
 */
typedef struct llorch_openai_logprobs {
  bool chat;
  int n;                   /* tokens added */
  llorch_jbuf part[4];     /* chat: part[0] = entries; completions: the four arrays' items */
} llorch_openai_logprobs;

void llorch_openai_logprobs_init(llorch_openai_logprobs *lp, bool chat);
void llorch_openai_logprobs_free(llorch_openai_logprobs *lp);
void llorch_openai_logprobs_reset(llorch_openai_logprobs *lp);
/* Adds one token with n_top alternatives; text_offset is the completions'
 * offset of the token in the generated text. */
void llorch_openai_logprobs_add(llorch_openai_logprobs *lp, const llorch_openai_lp_token *tok,
                                const llorch_openai_lp_token *top, int n_top, size_t text_offset);
/* Adds chat-shaped entries ({token, logprob, bytes, top_logprobs}) parsed
 * from JSON (the worker's native token events). */
void llorch_openai_logprobs_add_json(llorch_openai_logprobs *lp, const cJSON *entries,
                                     size_t text_offset);
/*
 * echo: adds a prompt's entries (chat-shaped, as the worker's native
 * "prompt" event carries them: the first with logprob null, which becomes
 * null in token_logprobs and top_logprobs) to lp, entry i at the offset of
 * the prompt text (text_len bytes) that text_bytes[0..i) cover (what each
 * token adds to the detokenized text; special tokens such as BOS add 0),
 * capped at text_len.
 */
void llorch_openai_logprobs_add_prompt(llorch_openai_logprobs *lp, const cJSON *entries,
                                       const cJSON *text_bytes, size_t text_len);
/* Writes the collected logprobs object (or null when lp is NULL). */
void llorch_openai_write_logprobs(llorch_jbuf *b, const llorch_openai_logprobs *lp);
/* One chat logprobs entry {token, logprob, bytes, top_logprobs?}. */
void llorch_openai_write_lp_entry(llorch_jbuf *b, const llorch_openai_lp_token *tok,
                                  const llorch_openai_lp_token *top, int n_top, bool with_top);

/* ---- the assembled message (non-streaming) ---- */

typedef struct llorch_openai_tool_call {
  char id[48];
  char *name;
  llorch_jbuf args;        /* the arguments JSON text */
} llorch_openai_tool_call;

typedef struct llorch_openai_message {
  llorch_jbuf content;
  llorch_jbuf reasoning;
  llorch_openai_tool_call *calls; /* (n_calls) */
  int n_calls;
  int err;                 /* LLORCH_ENOMEM once something could not be kept */
} llorch_openai_message;

void llorch_openai_message_init(llorch_openai_message *m);
void llorch_openai_message_free(llorch_openai_message *m);
void llorch_openai_message_reset(llorch_openai_message *m);
/* Adds one delta (content, reasoning, or a tool-call fragment by index). */
void llorch_openai_message_add(llorch_openai_message *m, const llorch_openai_delta *d);

/* ---- writers ---- */

/* A chat chunk: one choice with delta d (NULL = {}), role, logprobs (NULL =
 * null) and finish_reason (NULL = null). */
void llorch_openai_write_chat_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                    const llorch_openai_delta *d, bool role,
                                    const llorch_openai_logprobs *lp, const char *finish);
/* A completions chunk with text. */
void llorch_openai_write_completion_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                          const char *text, size_t len,
                                          const llorch_openai_logprobs *lp, const char *finish);
/* The last chunk of stream_options.include_usage: "choices":[] and usage. */
void llorch_openai_write_usage_chunk(llorch_jbuf *b, const llorch_openai_meta *m,
                                     uint32_t prompt_tokens, uint32_t completion_tokens);
/* "usage":{prompt_tokens, completion_tokens, total_tokens,
 * prompt_tokens_details:{cached_tokens}} (with the key). */
void llorch_openai_write_usage(llorch_jbuf *b, uint32_t prompt_tokens, uint32_t completion_tokens,
                               uint32_t cached_tokens);
/* One choice of a non-streaming answer: chat's message, or completions' text. */
typedef struct llorch_openai_choice {
  const llorch_openai_message *msg; /* chat */
  const char *text;                 /* completions */
  size_t len;
  const llorch_openai_logprobs *lp; /* NULL = null */
  const char *finish;
} llorch_openai_choice;

/* The whole non-streaming answer with n choices (index 0..n-1, m->chat
 * says which kind); usage counts the prompt once and every choice's
 * completion tokens (completion_tokens is their sum), as OpenAI does. */
void llorch_openai_write_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                  const llorch_openai_choice *choices, int n,
                                  uint32_t prompt_tokens, uint32_t completion_tokens);
/* The whole non-streaming chat answer: message (content null when empty and
 * there are tool calls; reasoning_content when any; tool_calls when any). */
void llorch_openai_write_chat_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                       const llorch_openai_message *msg,
                                       const llorch_openai_logprobs *lp, const char *finish,
                                       uint32_t prompt_tokens, uint32_t completion_tokens);
/* The whole non-streaming completions answer. */
void llorch_openai_write_completion_response(llorch_jbuf *b, const llorch_openai_meta *m,
                                             const char *text, size_t len,
                                             const llorch_openai_logprobs *lp, const char *finish,
                                             uint32_t prompt_tokens, uint32_t completion_tokens);

/* ---- other APIs: Anthropic Messages and OpenAI Responses ---- */

/*
 * The APIs translated onto chat completions. A request of either is turned
 * into the equivalent chat completions body (llorch_openai_dialect_to_chat)
 * and validated by llorch_openai_request_parse like any chat request; the
 * output (the same deltas) is written back in the API's own shape by a
 * llorch_openai_dout. So both roles serve them with the code they run for
 * chat, and the orchestrator forwards the usual /v2/execute body.
 */
typedef enum llorch_openai_dialect {
  LLORCH_DIALECT_OPENAI = 0,    /* chat completions / completions as they are */
  LLORCH_DIALECT_ANTHROPIC = 1, /* POST /v1/messages */
  LLORCH_DIALECT_RESPONSES = 2, /* POST /v1/responses (stateless) */
} llorch_openai_dialect;

/*
 * Anthropic Messages body -> chat completions body (a new object; free with
 * cJSON_Delete; it shares nothing with body): system -> a system message,
 * text / tool_use / tool_result blocks -> content, assistant tool_calls and
 * tool messages, tools' input_schema -> function tools, tool_choice
 * auto/any/tool/none, max_tokens (required), stop_sequences (at most lim->max_stop), temperature,
 * top_p, top_k, stream; thinking {type:enabled|disabled} -> the template's
 * enable_thinking. Every wrong field gets a 400 naming it (param) with the
 * value and what was expected. Returns 0 or LLORCH_EINVAL / LLORCH_ENOMEM
 * with err.
 */
int llorch_anthropic_to_chat(const cJSON *body, const llorch_openai_limits *lim, cJSON **out,
                             llorch_openai_error *err);

/*
 * OpenAI Responses body -> chat completions body (as above): input as text
 * or items (messages with input_text/output_text parts, function_call,
 * function_call_output; reasoning items dropped), instructions -> a system
 * message, function tools, tool_choice, max_output_tokens, text.format ->
 * response_format, temperature, top_p, parallel_tool_calls, stream.
 * Stateless: previous_response_id, store: true, conversation and
 * background: true get a 400 saying so.
 */
int llorch_responses_to_chat(const cJSON *body, const llorch_openai_limits *lim, cJSON **out,
                             llorch_openai_error *err);

/* One of the two above by dialect (LLORCH_DIALECT_OPENAI: a copy of body).
 * lim (NULL = LLORCH_OPENAI_LIMITS_DEFAULT) bounds what is counted in the
 * dialect's own fields (stop_sequences, input items), so the error names them. */
int llorch_openai_dialect_to_chat(llorch_openai_dialect d, const cJSON *body,
                                  const llorch_openai_limits *lim, cJSON **out,
                                  llorch_openai_error *err);
/* The id prefix of the dialect's responses: "msg_", "resp_", "chatcmpl-". */
const char *llorch_openai_dialect_id_prefix(llorch_openai_dialect d);

/* An SSE event out: name (never NULL) and its JSON data. */
typedef void (*llorch_openai_event_fn)(void *user, const char *event, const char *data,
                                       size_t len);

typedef enum llorch_openai_block_kind {
  LLORCH_BLOCK_TEXT = 0,
  LLORCH_BLOCK_REASONING = 1,
  LLORCH_BLOCK_TOOL = 2,
} llorch_openai_block_kind;

/* One content block (Anthropic) / output item (Responses). */
typedef struct llorch_openai_block {
  llorch_openai_block_kind kind;
  llorch_jbuf text;        /* the text, the reasoning, or the call's arguments JSON */
  char id[64];             /* tool: the call id; Responses: also every item's id below */
  char item_id[80];        /* Responses: "msg_..", "rs_..", "fc_.." */
  char *name;              /* tool: the function's name */
  int call_index;          /* tool: the deltas' tool_index */
} llorch_openai_block;

/*
 * The output of one response in a dialect: the deltas grouped into blocks
 * (a new one whenever the kind or the call changes) and, when streaming,
 * the dialect's SSE events written as they happen. Anthropic:
 * message_start, content_block_start/delta/stop (text_delta,
 * thinking_delta, input_json_delta), message_delta (stop_reason end_turn,
 * max_tokens, stop_sequence, tool_use), message_stop. Responses:
 * response.created, response.in_progress, response.output_item.added,
 * response.content_part.added, response.output_text.delta,
 * response.reasoning_text.delta, response.function_call_arguments.delta,
 * the matching .done events, response.output_item.done, then
 * response.completed (response.incomplete when cut by max_output_tokens).
 */
typedef struct llorch_openai_dout {
  llorch_openai_dialect dialect;
  char id[64];             /* the response's id */
  char model[128];
  int64_t created;         /* unix seconds */
  llorch_openai_event_fn send; /* NULL: not streaming, only collected */
  void *user;
  llorch_openai_block *blocks; /* (n_blocks) */
  int n_blocks;
  bool open;               /* streaming: the last block has been started and not stopped */
  bool started;            /* the opening events went out */
  int64_t seq;             /* Responses: sequence_number */
  uint32_t prompt_tokens;
  int err;                 /* LLORCH_ENOMEM once something could not be kept */
} llorch_openai_dout;

/* A zeroed dout is valid (and free does nothing with it). */
void llorch_openai_dout_init(llorch_openai_dout *o, llorch_openai_dialect dialect, const char *id,
                             const char *model, int64_t created, llorch_openai_event_fn send,
                             void *user);
void llorch_openai_dout_free(llorch_openai_dout *o);
/* Drops the blocks (an attempt that is retried); what was sent stays sent. */
void llorch_openai_dout_reset(llorch_openai_dout *o);
/* Streaming: the opening events (once). */
void llorch_openai_dout_start(llorch_openai_dout *o, uint32_t prompt_tokens);
/* One delta (empty ones are ignored). */
void llorch_openai_dout_add(llorch_openai_dout *o, const llorch_openai_delta *d);
/*
 * The end. finish is the chat finish_reason ("stop", "length",
 * "tool_calls", ...), stop_sequence the stop string that ended the output
 * (NULL if none). Streaming: closes the open block and sends the final
 * events; then (streaming or not) body, if not NULL, gets the whole answer
 * object.
 */
void llorch_openai_dout_finish(llorch_openai_dout *o, const char *finish, const char *stop_sequence,
                               uint32_t prompt_tokens, uint32_t completion_tokens,
                               llorch_jbuf *body);
/* Streaming: an error after the stream started, as the dialect's error event. */
void llorch_openai_dout_fail(llorch_openai_dout *o, const char *code, const char *message);

/* Response bytes a stream may have waiting for a slow client before it is
 * given up (the worker cancels the job, the orchestrator the relay). */
#define LLORCH_OPENAI_MAX_QUEUED_BYTES (8u << 20)

/* ---- generated text -> content, reasoning, tool calls ---- */

/* How a model writes tool calls (recognised from its chat template). */
typedef enum llorch_tool_format {
  LLORCH_TOOL_FORMAT_NONE = 0,     /* no parsing */
  LLORCH_TOOL_FORMAT_JSON,         /* generic: the whole output is {"tool_call(s)":..}/{"name",..} */
  LLORCH_TOOL_FORMAT_HERMES,       /* <tool_call>{"name":..,"arguments":..}</tool_call> (Qwen 2.5/3) */
  LLORCH_TOOL_FORMAT_LLAMA3,       /* {"name":..,"parameters":..} / <|python_tag|>... */
  LLORCH_TOOL_FORMAT_MISTRAL,      /* [TOOL_CALLS][{..}] or [TOOL_CALLS]name[ARGS]{..} */
  LLORCH_TOOL_FORMAT_QWEN3_CODER,  /* <tool_call><function=N><parameter=P>v</parameter>.. */
  LLORCH_TOOL_FORMAT_DEEPSEEK,     /* <｜tool▁calls▁begin｜> blocks (R1 and V3.x) */
  LLORCH_TOOL_FORMAT_FUNCTIONARY,  /* >>>name\n{args} / >>>all\ntext (v3.2) */
} llorch_tool_format;

/* "auto" is not a format; names: none json hermes llama3 mistral qwen3_coder
 * deepseek functionary. */
const char *llorch_tool_format_name(llorch_tool_format f);
int llorch_tool_format_parse(const char *s, llorch_tool_format *out);
/* The format a chat template's text writes tool calls in; JSON when it has no
 * recognisable one (NULL template too). */
llorch_tool_format llorch_tool_format_detect(const char *template_text);

typedef struct llorch_openai_output_opts {
  llorch_tool_format format;       /* NONE: no tool parsing (no tools, or tool_choice none) */
  bool reasoning;                  /* split <think>..</think> into reasoning deltas */
  bool start_in_reasoning;         /* the prompt ends inside an open <think> */
  bool start_in_recipient;         /* functionary: the prompt ends with ">>>" */
  const char *think_open;          /* NULL = "<think>" */
  const char *think_close;         /* NULL = "</think>" */
  const cJSON *tool_list;          /* the request's validated tools: names known to the
                                      JSON fallback, parameter types for XML values */
  uint64_t id_seed;                /* tool-call ids; 0 = from the clock */
} llorch_openai_output_opts;

typedef void (*llorch_openai_emit_fn)(void *user, const llorch_openai_delta *d);

typedef struct llorch_openai_output llorch_openai_output;

/* A parser for one response; deltas go to emit as soon as they are certain.
 * NULL when out of memory. */
llorch_openai_output *llorch_openai_output_new(const llorch_openai_output_opts *o,
                                               llorch_openai_emit_fn emit, void *user);
void llorch_openai_output_free(llorch_openai_output *p);
/*
 * Feeds generated text. Text that may still become a marker (a prefix of
 * "<tool_call>", a tool call's body until it ends) is held back; text that
 * turns out not to be a call is emitted as content unchanged.
 * LLORCH_ENOMEM on allocation failure (the parser is then unusable).
 */
int llorch_openai_output_feed(llorch_openai_output *p, const char *text, size_t len);
/* The output ended: releases what was held (an unterminated call whose body
 * parses is still a call). */
int llorch_openai_output_finish(llorch_openai_output *p);
/* Tool calls emitted so far. */
int llorch_openai_output_n_calls(const llorch_openai_output *p);

#endif /* LLORCH_OPENAI_H */
