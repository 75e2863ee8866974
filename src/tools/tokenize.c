/*
 * `llorch tokenize --model FILE [--text T | --file F] [--special] [--bos] [--verbose]`
 *
 * Prints the token ids of a text on one line, separated by spaces. By
 * default the text is plain text (special-token text such as "<|im_end|>"
 * is not turned into its token) and nothing is added, which is how the
 * shared tokenizer vectors are written. Only the tokenizer metadata is read,
 * so vocab-only GGUF files work.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/commands.h"
#include "llorch/error.h"
#include "llorch/file.h"
#include "llorch/tokenizer.h"

#define TOKENIZE_USAGE                                                                            \
  "usage: llorch tokenize --model FILE [--text TEXT | --file FILE] [--special] [--bos] [--verbose]\n" \
  "  --model FILE   GGUF file with tokenizer.* metadata (weights not needed)\n"                   \
  "  --text TEXT    text to tokenize\n"                                                            \
  "  --file FILE    read the text from FILE ('-' for stdin); default: stdin\n"                     \
  "  --special      parse special-token text (e.g. <|im_start|>) into its token\n"                \
  "  --bos          add the BOS token first (if the vocabulary has one)\n"                         \
  "  --verbose      one line per token: the id and its text\n"

/* Writes a piece with C-style escapes for control bytes, quotes and backslashes. */
static void tokenize_print_escaped(const char *s, size_t n) {
  putchar('\'');
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '\n': fputs("\\n", stdout); break;
    case '\r': fputs("\\r", stdout); break;
    case '\t': fputs("\\t", stdout); break;
    case '\\': fputs("\\\\", stdout); break;
    case '\'': fputs("\\'", stdout); break;
    default:
      if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
      else putchar(c);
    }
  }
  putchar('\'');
}

int llorch_cmd_tokenize(int argc, char **argv) {
  const char *model = NULL, *text = NULL, *file = NULL;
  unsigned flags = LLORCH_TOKENIZE_DEFAULT;
  bool verbose = false;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(TOKENIZE_USAGE, stdout);
      return 0;
    } else if (strcmp(a, "--special") == 0) {
      flags |= LLORCH_TOKENIZE_PARSE_SPECIAL;
    } else if (strcmp(a, "--bos") == 0) {
      flags |= LLORCH_TOKENIZE_ADD_BOS;
    } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      verbose = true;
    } else if (strcmp(a, "--model") == 0 || strcmp(a, "--text") == 0 || strcmp(a, "--file") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "llorch tokenize: %s needs a value\n%s", a, TOKENIZE_USAGE);
        return 2;
      }
      const char **dst = a[2] == 'm' ? &model : a[2] == 't' ? &text : &file;
      *dst = argv[++i];
    } else {
      fprintf(stderr, "llorch tokenize: unknown argument '%s'\n%s", a, TOKENIZE_USAGE);
      return 2;
    }
  }
  if (!model) {
    fprintf(stderr, "llorch tokenize: --model is required\n%s", TOKENIZE_USAGE);
    return 2;
  }
  if (text && file) {
    fprintf(stderr, "llorch tokenize: give --text or --file, not both\n");
    return 2;
  }

  char *buf = NULL;
  size_t len = 0;
  if (text) {
    len = strlen(text);
  } else {
    const char *path = file ? file : "-";
    llorch_errmsg rem = {{0}};
    if (llorch_file_read(path, "text file", (size_t)1 << 30, &buf, &len, &rem) != 0) {
      fprintf(stderr, "llorch tokenize: %s\n", rem.text);
      return 1;
    }
    text = buf;
  }

  llorch_errmsg em = {{0}};
  llorch_tokenizer *t = NULL;
  int rc = llorch_tokenizer_load_file(&t, model, &em);
  if (rc != 0) {
    fprintf(stderr, "llorch tokenize: %s: %s\n", model, em.text[0] ? em.text : llorch_strerror(rc));
    free(buf);
    return 1;
  }
  llorch_tokens ids = {0};
  rc = llorch_tokenize(t, text, len, flags, &ids, &em);
  if (rc != 0) {
    fprintf(stderr, "llorch tokenize: %s\n", em.text[0] ? em.text : llorch_strerror(rc));
    llorch_tokenizer_free(t);
    free(buf);
    return 1;
  }

  if (verbose) {
    char piece[512];
    for (size_t i = 0; i < ids.n; i++) {
      int n = llorch_token_piece(t, ids.ids[i], LLORCH_DETOK_RENDER_SPECIAL, piece, sizeof(piece));
      printf("%d ", ids.ids[i]);
      tokenize_print_escaped(piece, n < 0 ? 0 : (size_t)n > sizeof(piece) ? sizeof(piece) : (size_t)n);
      putchar('\n');
    }
  } else {
    for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.ids[i]);
    putchar('\n');
  }
  int status = fflush(stdout) == 0 ? 0 : 1;
  llorch_tokens_free(&ids);
  llorch_tokenizer_free(t);
  free(buf);
  return status;
}
