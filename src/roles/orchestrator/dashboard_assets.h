/*
 * The dashboard's files (src/roles/orchestrator/dashboard/), compiled in:
 * dashboard_assets.c is generated at build time by cmake/EmbedFiles.cmake.
 */
#ifndef LLORCH_ORCH_DASHBOARD_ASSETS_H
#define LLORCH_ORCH_DASHBOARD_ASSETS_H

#include <stddef.h>

typedef struct orch_asset {
  const char *name;             /* file name, "index.html" */
  const char *content_type;     /* from its extension */
  const unsigned char *data;    /* (len) bytes */
  size_t len;
} orch_asset;

extern const orch_asset orch_assets[];
extern const size_t orch_n_assets;

#endif /* LLORCH_ORCH_DASHBOARD_ASSETS_H */
