/*
 * Tokenizers read from GGUF metadata (tokenizer.ggml.*), token-exact with
 * llama.cpp on the same file.
 *
 *   tokenizer.ggml.model = "gpt2"   byte-level BPE; the pre-tokenizer split
 *                                   regexes are chosen by tokenizer.ggml.pre
 *                                   ("qwen2", "llama-bpe", default GPT-2)
 *   tokenizer.ggml.model = "llama"  SentencePiece: merge by score, byte
 *                                   fallback <0xXX>, space -> U+2581
 *
 * Plain text is plain text: CONTROL-token text such as "<|im_end|>" in the
 * input is only turned into its token when LLORCH_TOKENIZE_PARSE_SPECIAL is
 * given (chat templates render text that must be tokenized that way).
 * USER_DEFINED tokens are matched in any text, as llama.cpp and Hugging Face
 * tokenizers do. Like llama.cpp, some tokens are made CONTROL (and end of
 * generation) by their text whatever token_type says: "<|im_end|>",
 * "<|eot_id|>", "<|endoftext|>", "</s>", "<end_of_turn>", FIM tokens, ...
 *
 * Token-exact with llama.cpp: the shared vectors, and a differential test
 * (tests/unit/tokenizer/diff_llamacpp.sh) over several hundred awkward strings
 * on seven vocabulary/pre-tokenizer combinations, plain and special.
 *
 * A loaded tokenizer is immutable and owns copies of everything it needs, so
 * the GGUF handle may be closed after load, and one tokenizer may be used from
 * several threads at once.
 */
#ifndef LLORCH_TOKENIZER_H
#define LLORCH_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/error.h"
#include "llorch/gguf.h"

typedef struct llorch_tokenizer llorch_tokenizer;

/* tokenizer.ggml.model */
typedef enum llorch_tokenizer_kind {
  LLORCH_TOKENIZER_BPE = 0, /* "gpt2": byte-level BPE */
  LLORCH_TOKENIZER_SPM = 1, /* "llama": SentencePiece */
} llorch_tokenizer_kind;

/* tokenizer.ggml.token_type values (llama.cpp's numbering) */
typedef enum llorch_token_attr {
  LLORCH_TOKEN_UNDEFINED = 0,
  LLORCH_TOKEN_NORMAL = 1,
  LLORCH_TOKEN_UNKNOWN = 2,
  LLORCH_TOKEN_CONTROL = 3,
  LLORCH_TOKEN_USER_DEFINED = 4,
  LLORCH_TOKEN_UNUSED = 5,
  LLORCH_TOKEN_BYTE = 6,
} llorch_token_attr;

/* ---- loading ---- */

/*
 * Reads every tokenizer.* key from g and validates them: the model kind and
 * pre-tokenizer are known, tokens/scores/token_type have equal lengths and
 * the right element types, tokens are unique, token types are 0..6 (BYTE
 * tokens of the form <0xXX>), every merge is "left right", special ids are in
 * range, add_bos/add_eos have a token to add. Works on vocab-only
 * files (no tensors needed). A bad file gets LLORCH_EFORMAT (or
 * LLORCH_EUNSUPPORTED for an unknown model/pre-tokenizer) and em names the key,
 * the value and what was expected.
 */
int llorch_tokenizer_load(llorch_tokenizer **out, const llorch_gguf *g, llorch_errmsg *em);
/* Opens path (header only) and loads its tokenizer. */
int llorch_tokenizer_load_file(llorch_tokenizer **out, const char *path, llorch_errmsg *em);
void llorch_tokenizer_free(llorch_tokenizer *t);

/* ---- vocabulary facts ---- */

llorch_tokenizer_kind llorch_tokenizer_kind_of(const llorch_tokenizer *t);
/* "qwen2", "llama-bpe", "default", ... (tokenizer.ggml.pre, "default" if absent) */
const char *llorch_tokenizer_pre_name(const llorch_tokenizer *t);
int32_t llorch_tokenizer_n_vocab(const llorch_tokenizer *t);
/* Special ids, -1 when the vocabulary has none. Defaults when the keys are
 * absent follow llama.cpp for SentencePiece (BOS 1, EOS 2); for byte-level
 * BPE llorch reports none (llama.cpp would invent id 11). EOT, when its key
 * is absent, is found by text (<|eot_id|>, <|im_end|>, <|end|>, ...). */
int32_t llorch_tokenizer_bos(const llorch_tokenizer *t);
int32_t llorch_tokenizer_eos(const llorch_tokenizer *t);
int32_t llorch_tokenizer_eot(const llorch_tokenizer *t);
int32_t llorch_tokenizer_pad(const llorch_tokenizer *t);
/* Fill-in-the-middle: ids gets the prefix, suffix and middle tokens
 * (tokenizer.ggml.fim_pre/suf/mid_token_id, else found by text as llama.cpp
 * does: <|fim_prefix|>, <PRE>, <fim_prefix>, ...; -1 = none). True when all
 * three exist. */
bool llorch_tokenizer_fim(const llorch_tokenizer *t, int32_t ids[3]);
/* tokenizer.ggml.add_bos_token / add_eos_token, or llama.cpp's default for the
 * tokenizer when the key is absent (SPM and llama-bpe: BOS yes; qwen2: no). */
bool llorch_tokenizer_add_bos(const llorch_tokenizer *t);
bool llorch_tokenizer_add_eos(const llorch_tokenizer *t);
/* True for EOS, EOT and other end-of-generation tokens (e.g. <|im_end|>,
 * <|eot_id|>, <|endoftext|>, <end_of_turn>) found in the vocabulary. */
bool llorch_tokenizer_is_eog(const llorch_tokenizer *t, int32_t id);
/* True for CONTROL / USER_DEFINED / UNKNOWN tokens (not rendered by default). */
bool llorch_tokenizer_is_special(const llorch_tokenizer *t, int32_t id);
llorch_token_attr llorch_tokenizer_token_attr(const llorch_tokenizer *t, int32_t id);
/* The raw vocabulary string of id (byte-level or U+2581 form, NOT decoded),
 * NUL-terminated; *len (may be NULL) gets its length. NULL if id is out of range. */
const char *llorch_tokenizer_token_text(const llorch_tokenizer *t, int32_t id, size_t *len);
/* Id of a vocabulary string (exact, raw form), or -1. */
int32_t llorch_tokenizer_find(const llorch_tokenizer *t, const char *text, size_t len);
/* tokenizer.chat_template, NUL-terminated, or NULL when the file has none. */
const char *llorch_tokenizer_chat_template(const llorch_tokenizer *t);

/* ---- encoding ---- */

/* A growable list of token ids; zero-initialise, free with llorch_tokens_free. */
typedef struct llorch_tokens {
  int32_t *ids; /* (n) token ids */
  size_t n;     /* tokens in use */
  size_t cap;   /* tokens allocated */
} llorch_tokens;

void llorch_tokens_free(llorch_tokens *v);
int llorch_tokens_push(llorch_tokens *v, int32_t id);

typedef enum llorch_tokenize_flags {
  LLORCH_TOKENIZE_DEFAULT = 0,       /* plain text, nothing added */
  LLORCH_TOKENIZE_ADD_SPECIAL = 1,   /* BOS/EOS as add_bos/add_eos say */
  LLORCH_TOKENIZE_ADD_BOS = 2,       /* BOS whatever add_bos says (if the vocab has one) */
  LLORCH_TOKENIZE_PARSE_SPECIAL = 4, /* CONTROL/USER_DEFINED text becomes its token */
} llorch_tokenize_flags;

/*
 * Tokenizes len bytes of text (need not be NUL-terminated, may hold NULs or
 * invalid UTF-8) and APPENDS the ids to out. Invalid UTF-8 is treated as
 * llama.cpp does: byte-level BPE sees each bad byte as U+FFFD, SentencePiece
 * passes it to byte fallback. Returns 0, LLORCH_ENOMEM, LLORCH_ELIMIT (text
 * over 1 GiB), or LLORCH_EFORMAT when the text cannot be represented (an SPM
 * vocabulary without byte fallback meeting an unknown character and no
 * <unk>). On failure out is left as it was.
 */
int llorch_tokenize(const llorch_tokenizer *t, const char *text, size_t len, unsigned flags,
                    llorch_tokens *out, llorch_errmsg *em);
/*
 * llorch_tokenize where some bytes are plain text whatever the flags: with
 * LLORCH_TOKENIZE_PARSE_SPECIAL, CONTROL/UNKNOWN token text becomes its
 * token only when none of its bytes has plain[i] != 0 (plain: len bytes, or
 * NULL for none). Chat prompts mark the bytes that came from a request so a
 * client cannot type a control token (chat.h).
 */
int llorch_tokenize_masked(const llorch_tokenizer *t, const char *text, size_t len, unsigned flags,
                           const uint8_t *plain, llorch_tokens *out, llorch_errmsg *em);

/* ---- decoding ---- */

typedef enum llorch_detok_flags {
  LLORCH_DETOK_DEFAULT = 0,
  LLORCH_DETOK_RENDER_SPECIAL = 1, /* write the text of CONTROL tokens (e.g. "<|im_end|>") */
} llorch_detok_flags;

/*
 * The bytes token id stands for: byte-level BPE pieces unmapped to bytes,
 * SentencePiece U+2581 -> ' ' and <0xXX> -> the byte; CONTROL tokens give ""
 * unless LLORCH_DETOK_RENDER_SPECIAL. A piece may be part of a UTF-8 sequence
 * (see textstream.h for streaming). Writes at most cap bytes (no NUL) and
 * returns the piece's full length, so a return > cap means "buffer too
 * small"; LLORCH_ERANGE for an id out of range.
 */
int llorch_token_piece(const llorch_tokenizer *t, int32_t id, unsigned flags, char *buf,
                       size_t cap);

/*
 * Decodes a whole sequence into a malloc'ed NUL-terminated string (*out,
 * *out_len bytes without the NUL; out_len may be NULL): the pieces joined, as
 * llama.cpp's detokenize with remove_special = false. For an SPM vocabulary
 * that adds a space prefix, one leading space of the first piece is dropped,
 * so decode(encode(text)) == text. llama.cpp's clean_up_tokenization_spaces
 * pass (on for some BPE vocabularies, e.g. Llama 3: " ." -> ".") is NOT
 * applied: it would break decode(encode(text)) == text, and llama.cpp's
 * streamed output (token pieces) does not apply it either. Returns 0,
 * LLORCH_ERANGE (id out of range; em names it) or LLORCH_ENOMEM.
 */
int llorch_detokenize(const llorch_tokenizer *t, const int32_t *ids, size_t n, unsigned flags,
                      char **out, size_t *out_len, llorch_errmsg *em);

/* ---- a synthetic tokenizer for `llorch synth` ---- */

/*
 * Writes all tokenizer.* keys of a small byte-level BPE tokenizer (model
 * "gpt2", pre "qwen2") into w: the 256 byte tokens, merges learned from the
 * corpus the project ships (data/synth-corpus.txt, compiled into the binary)
 * by greedy most-frequent-pair BPE over pre-tokenized words, deterministic,
 * until the vocabulary reaches about n_vocab_hint (0 = 2048; at least 259),
 * then <|endoftext|>, <|im_start|>, <|im_end|> as CONTROL tokens (eos = eot =
 * <|im_end|>, no BOS, add_bos_token false, as Qwen) and a ChatML
 * tokenizer.chat_template; with fim also <|fim_prefix|>, <|fim_suffix|>,
 * <|fim_middle|> as CONTROL tokens and tokenizer.ggml.fim_pre/suf/mid_token_id
 * (as Qwen2.5-Coder). *n_vocab_out gets the exact vocabulary size (the
 * embedding/output row count the model needs). Returns 0 or a negative code.
 */
int llorch_tokenizer_synth_vocab(llorch_gguf_writer *w, uint32_t n_vocab_hint, bool fim,
                                 uint32_t *n_vocab_out, llorch_errmsg *em);

#endif /* LLORCH_TOKENIZER_H */
