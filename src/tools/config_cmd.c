/*
 * `llorch config --check FILE [--role R]`: validates a config file the way
 * start-up would, and prints "FILE: ok" or the one error line (exit 2).
 *
 * `llorch config --dump [--config FILE] [--role R] [--show-secrets] [flags]`:
 * prints the effective configuration (defaults < file < flags) as YAML that
 * reads back to the same values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/commands.h"
#include "llorch/config.h"

static void config_cmd_usage(FILE *out) {
  fprintf(out,
          "usage: llorch config --check FILE [--role R]\n"
          "       llorch config --dump [--config FILE] [--role R] [--show-secrets] [flags]\n"
          "       llorch config --reference   (every option as a Markdown table)\n");
}

/* Takes "--name=value" or "--name value" at argv[*i]; NULL if arg is not --name. */
static const char *config_cmd_take(int argc, char **argv, int *i, const char *name, int *missing) {
  size_t n = strlen(name);
  const char *arg = argv[*i];
  if (strncmp(arg, name, n) != 0) return NULL;
  if (arg[n] == '=') return arg + n + 1;
  if (arg[n] != '\0') return NULL;
  if (*i + 1 >= argc) {
    *missing = 1;
    return NULL;
  }
  return argv[++*i];
}

int llorch_cmd_config(int argc, char **argv) {
  const char *check = NULL, *path = NULL, *role_text = NULL;
  int dump = 0, show_secrets = 0, missing = 0, nrest = 0;
  llorch_role role = LLORCH_ROLE_NONE;
  llorch_errmsg em = {{0}};
  llorch_config cfg;
  int status = 2;

  /* argv[0] is "config"; flags that are not ours go to the option table. */
  char **rest = calloc((size_t)argc + 1, sizeof *rest);
  if (!rest) {
    fprintf(stderr, "llorch config: out of memory\n");
    return 1;
  }
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      config_cmd_usage(stdout);
      status = 0;
      goto done;
    } else if (strcmp(argv[i], "--reference") == 0) {
      llorch_config_reference(stdout);
      status = 0;
      goto done;
    } else if (strcmp(argv[i], "--dump") == 0) {
      dump = 1;
    } else if (strcmp(argv[i], "--show-secrets") == 0) {
      show_secrets = 1;
    } else if ((v = config_cmd_take(argc, argv, &i, "--check", &missing))) {
      check = v;
    } else if ((v = config_cmd_take(argc, argv, &i, "--config", &missing))) {
      path = v;
    } else if ((v = config_cmd_take(argc, argv, &i, "--role", &missing))) {
      role_text = v;
    } else if (missing) {
      fprintf(stderr, "llorch config: '%s' needs a value\n", argv[i]);
      config_cmd_usage(stderr);
      goto done;
    } else {
      rest[nrest++] = argv[i];
    }
  }
  if (!check == !dump) {
    fprintf(stderr, "llorch config: give exactly one of --check FILE or --dump\n");
    config_cmd_usage(stderr);
    goto done;
  }
  if (check && (path || nrest > 0 || show_secrets)) {
    fprintf(stderr, "llorch config: --check takes only a file and --role\n");
    config_cmd_usage(stderr);
    goto done;
  }
  if (role_text && llorch_role_parse(role_text, &role) != 0) {
    fprintf(stderr, "llorch config: unknown role '%s' (expected orchestrator|pool|worker|all)\n",
            role_text);
    config_cmd_usage(stderr);
    goto done;
  }

  if (check) {
    /* Only what the file says is checked here, so a worker file need not
     * repeat --model: cross-option rules that need flags apply at start-up. */
    int err = llorch_config_init(&cfg, role);
    if (!err) err = llorch_config_load_file(&cfg, check, &em);
    llorch_config_free(&cfg);
    if (err) {
      fprintf(stderr, "%s\n", em.text[0] ? em.text : llorch_strerror(err));
      status = err == LLORCH_ENOMEM ? 1 : 2;
      goto done;
    }
    printf("%s: ok\n", check);
    status = 0;
    goto done;
  }

  int err = llorch_config_init(&cfg, role);
  if (!err && path) err = llorch_config_load_file(&cfg, path, &em);
  if (!err) err = llorch_config_apply_args(&cfg, nrest, rest, &em);
  /* finish() fills pool.name and advertise_url; a missing --model is not an
   * error for a dump. */
  if (!err && !(role == LLORCH_ROLE_WORKER && !cfg.worker.model))
    err = llorch_config_finish(&cfg, &em);
  if (err) {
    llorch_config_free(&cfg);
    fprintf(stderr, "%s\n", em.text[0] ? em.text : llorch_strerror(err));
    status = err == LLORCH_ENOMEM ? 1 : 2;
    goto done;
  }
  err = llorch_config_dump(&cfg, stdout, show_secrets ? LLORCH_CONFIG_DUMP_SECRETS : 0);
  llorch_config_free(&cfg);
  status = err ? 1 : 0;

done:
  free(rest);
  return status;
}
