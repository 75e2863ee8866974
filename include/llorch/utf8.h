/*
 * UTF-8 well-formedness, the one decoder every writer of text uses to
 * replace what is not UTF-8 (JSON strings, the streamed text of a job).
 *
 * Ill-formed input is replaced the way Unicode recommends ("substitution of
 * maximal subparts", chapter 3.9; what Python, Node and browsers do): one
 * U+FFFD for each maximal subpart, that is the longest start of a
 * well-formed sequence (E2 82 before 'A' is one), and one for every other
 * bad byte (a lone continuation, C0, C1, F5..FF).
 */
#ifndef LLORCH_UTF8_H
#define LLORCH_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/*
 * The character at s[0..avail) (avail >= 1): its length 1..4 when it is
 * well-formed. Otherwise 0, with *bad = the bytes one U+FFFD stands for
 * (the maximal subpart, at least 1) and *incomplete = true when that
 * subpart runs to the end of the input, so that more bytes could still
 * complete it (a streamed token cut inside a character).
 */
size_t llorch_utf8_next(const unsigned char *s, size_t avail, size_t *bad, bool *incomplete);

#endif /* LLORCH_UTF8_H */
