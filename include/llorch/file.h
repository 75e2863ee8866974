/*
 * Whole small files (configs, chat templates, request files, schemas, test
 * scripts) read into memory: the one reader every command and role uses,
 * so that every such file gets the same size bound and the same errors.
 */
#ifndef LLORCH_FILE_H
#define LLORCH_FILE_H

#include <stddef.h>

#include "llorch/error.h"

/*
 * Reads path ("-" = standard input) into a malloc'ed, NUL-terminated buffer
 * (*out, free it; *len bytes before the NUL; len may be NULL). what names
 * the file in messages: "PATH: cannot open WHAT: reason". Errors:
 * LLORCH_ENOENT (no such file), LLORCH_EIO (cannot open or read),
 * LLORCH_ELIMIT (more than max_bytes), LLORCH_ENOMEM.
 */
int llorch_file_read(const char *path, const char *what, size_t max_bytes, char **out, size_t *len,
                     llorch_errmsg *em);

#endif /* LLORCH_FILE_H */
