/*
 * Streaming detokenization with stop strings.
 *
 * Generated tokens arrive one at a time; a token's piece may be only part of
 * a UTF-8 character (byte tokens) and a stop string may be spread over
 * several tokens. A textstream turns the token ids into text that is safe to
 * send at once:
 *   - only complete, valid UTF-8 is released (a partial sequence is held
 *     until the bytes that complete it arrive; an invalid sequence becomes
 *     U+FFFD, so the output is always valid UTF-8, ready for JSON);
 *   - text that could be the beginning of a stop string is held back until
 *     it is known not to be one;
 *   - when a stop string appears, the text before it is released, the stop
 *     string and everything after it are dropped, and the caller is told
 *     which stop string matched. The stream then releases nothing more.
 *
 * One textstream per generated sequence; not thread-safe (one owner).
 */
#ifndef LLORCH_TEXTSTREAM_H
#define LLORCH_TEXTSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llorch/error.h"
#include "llorch/tokenizer.h"

typedef struct llorch_textstream llorch_textstream;

/* What one call released. */
typedef struct llorch_textstream_out {
  const char *text; /* released bytes (valid UTF-8); valid until the next call on the stream */
  size_t len;       /* bytes */
  int stop;         /* index into the stop strings of the one found by this call, or -1 */
} llorch_textstream_out;

/*
 * t may be NULL when only llorch_textstream_feed_text is used. detok_flags
 * are llorch_detok_flags for the pieces (e.g. LLORCH_DETOK_RENDER_SPECIAL).
 * The n_stops stop strings (NUL-terminated, non-empty) are copied. Returns 0,
 * LLORCH_EINVAL (an empty stop string; em names which) or LLORCH_ENOMEM.
 */
int llorch_textstream_init(llorch_textstream **out, const llorch_tokenizer *t, unsigned detok_flags,
                           const char *const *stops, size_t n_stops, llorch_errmsg *em);
void llorch_textstream_free(llorch_textstream *ts);

/* Feeds one generated token. Returns 0, LLORCH_ERANGE (id not in the
 * vocabulary), LLORCH_EINVAL (no tokenizer) or LLORCH_ENOMEM. */
int llorch_textstream_feed(llorch_textstream *ts, int32_t id, llorch_textstream_out *out);
/* Feeds raw bytes (what a token's piece would be). */
int llorch_textstream_feed_text(llorch_textstream *ts, const char *bytes, size_t len,
                                llorch_textstream_out *out);
/*
 * End of generation (EOS, max tokens): releases everything still held. A
 * partial stop-string match is plain text after all; a trailing incomplete
 * UTF-8 sequence becomes U+FFFD.
 */
int llorch_textstream_flush(llorch_textstream *ts, llorch_textstream_out *out);

/* True once a stop string has been found. */
bool llorch_textstream_stopped(const llorch_textstream *ts);
/* Bytes held back right now (partial character or possible stop prefix). */
size_t llorch_textstream_pending(const llorch_textstream *ts);

#endif /* LLORCH_TEXTSTREAM_H */
