/*
 * Bearer tokens: parsing the Authorization header and comparing tokens in
 * constant time.
 */
#include "llorch/auth.h"

#include <strings.h>

#include "llorch/error.h"

int llorch_auth_parse_bearer(const char *header, const char **token, size_t *len) {
  if (header == NULL) return LLORCH_EAUTH;
  while (*header == ' ' || *header == '\t') header++;
  if (strncasecmp(header, "Bearer", 6) != 0) return LLORCH_EAUTH;
  const char *p = header + 6;
  if (*p != ' ' && *p != '\t') return LLORCH_EAUTH;
  while (*p == ' ' || *p == '\t') p++;
  const char *start = p;
  while (*p != '\0' && *p != ' ' && *p != '\t') p++;
  const char *end = p;
  while (*p == ' ' || *p == '\t') p++;
  if (end == start || *p != '\0') return LLORCH_EAUTH;
  *token = start;
  *len = (size_t)(end - start);
  return 0;
}

bool llorch_auth_token_equal(const char *a, size_t alen, const char *b, size_t blen) {
  /*
   * Walk the whole of b whatever a holds, folding differences with OR, so the
   * time depends on blen only, never on where the first mismatch is. The
   * volatile keeps the compiler from turning it back into an early exit.
   */
  volatile unsigned char diff = (unsigned char)(alen != blen);
  for (size_t i = 0; i < blen; i++) {
    unsigned char ca = (unsigned char)(i < alen ? a[i] : 0);
    diff |= (unsigned char)(ca ^ (unsigned char)b[i]);
  }
  return diff == 0;
}

int llorch_auth_check(const char *authorization, const char *const *tokens, size_t n) {
  if (n == 0) return 0;
  const char *tok;
  size_t len;
  if (llorch_auth_parse_bearer(authorization, &tok, &len) < 0) return LLORCH_EAUTH;
  return llorch_auth_check_token(tok, len, tokens, n);
}

int llorch_auth_check_token(const char *tok, size_t len, const char *const *tokens, size_t n) {
  if (n == 0) return 0;
  if (tok == NULL) return LLORCH_EAUTH;
  bool ok = false;
  for (size_t i = 0; i < n; i++) {
    size_t tl = 0;
    while (tokens[i][tl] != '\0') tl++;
    /* No short-circuit: every accepted token is compared. */
    ok |= llorch_auth_token_equal(tok, len, tokens[i], tl);
  }
  return ok ? 0 : LLORCH_EAUTH;
}
