/*
 * Bearer-token authentication (Authorization: Bearer <token>).
 *
 * Token comparison takes the same time whatever the position of the first
 * differing byte, so response timing does not leak a token prefix.
 */
#ifndef LLORCH_AUTH_H
#define LLORCH_AUTH_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Extracts the token from an Authorization header value: scheme "Bearer"
 * (case-insensitive), one or more spaces, a non-empty token without spaces;
 * trailing spaces are ignored. Returns 0 with *token and *len pointing into
 * header, or LLORCH_EAUTH (NULL, other scheme, empty token).
 */
int llorch_auth_parse_bearer(const char *header, const char **token, size_t *len);

/* Constant-time equality of a[0..alen) and b[0..blen) (time depends on lengths only). */
bool llorch_auth_token_equal(const char *a, size_t alen, const char *b, size_t blen);

/*
 * Checks an Authorization header value against n accepted tokens (all of
 * them are compared, whichever matches). n == 0 means authentication is off:
 * returns 0. Returns 0 or LLORCH_EAUTH.
 */
int llorch_auth_check(const char *authorization, const char *const *tokens, size_t n);
/* The same check for a token already taken from a request (NULL = none). */
int llorch_auth_check_token(const char *tok, size_t len, const char *const *tokens, size_t n);

#endif /* LLORCH_AUTH_H */
