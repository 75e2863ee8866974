/*
 * llorch: one binary, four roles (orchestrator, pool, worker, all) and a few
 * tools. main() reads the command line once and dispatches once, as nginx's
 * process roles share one entry point:
 *
 *   llorch --role=R [--config FILE] [flags]   run a role (src/roles/<role>/)
 *   llorch <tool> [args]                      run a tool (src/tools/<tool>.c)
 *   llorch --help | --version
 *
 * Exit status: 0 clean exit, 1 failure at run time, 2 bad command line or
 * bad config (one line on stderr saying what and where).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llorch/commands.h"
#include "llorch/config.h"
#include "llorch/log.h"
#include "llorch/roles.h"

#define USAGE_LINE "usage: llorch --role=orchestrator|pool|worker|all [--config FILE] [flags]"

/* ---- tools ---- */

/* Other engineers add their tool here, one line each. */
static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *help;
} tools[] = {
    {"config", llorch_cmd_config, "check a config file or print the effective configuration"},
    {"synth", llorch_cmd_synth, "write a random-weight GGUF model of a real shape"},
    {"tokenize", llorch_cmd_tokenize, "print the token ids of a text (vocab-only GGUF files work)"},
    {"chat-template", llorch_cmd_chat_template, "render a chat request with a Jinja chat template"},
    {"run", llorch_cmd_run, "generate a continuation of a prompt and stream it to stdout"},
    {"bench", llorch_cmd_bench, "measure load time, prompt and generation tok/s, RSS of a model"},
};

/* ---- roles ---- */

static const struct {
  llorch_role role;
  int (*run)(const llorch_config *cfg);
} roles[] = {
    {LLORCH_ROLE_ORCHESTRATOR, llorch_orchestrator_main},
    {LLORCH_ROLE_POOL, llorch_pool_main},
    {LLORCH_ROLE_WORKER, llorch_worker_main},
    {LLORCH_ROLE_ALL, llorch_all_main},
};

static int main_run_role(const llorch_config *cfg) {
  for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
    if (roles[i].role == cfg->role) return roles[i].run(cfg);
  /* the config parser accepts only the four roles above */
  fprintf(stderr, "llorch: no role to run (--role=orchestrator|pool|worker|all)\n");
  return 2;
}

/* ---- command line ---- */

static void main_usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "llorch: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n" USAGE_LINE " (llorch --help)\n");
}

static void main_help(llorch_role role) {
  printf(USAGE_LINE "\n"
         "       llorch <command> [args]\n"
         "       llorch --help [--role=R] | --version\n"
         "\ncommands:\n");
  for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++)
    printf("  %-28s %s\n", tools[i].name, tools[i].help);
  printf("\nroles: orchestrator, pool, worker, all (orchestrator + local pool in one process)\n"
         "  --role=R                     which process to run\n"
         "  --config FILE                YAML config file (see config/*.yaml)\n");
  llorch_config_usage(stdout, role);
}

/* Takes "--name=value" or "--name value" at argv[*i]. Returns the value, or
 * NULL when argv[*i] is not --name; sets *missing when the value is. */
static const char *main_take(int argc, char **argv, int *i, const char *name, int *missing) {
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

int main(int argc, char **argv) {
  if (argc >= 2 && argv[1][0] != '-') {
    for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++)
      if (strcmp(argv[1], tools[i].name) == 0) return tools[i].run(argc - 1, argv + 1);
    main_usage_error("unknown command '%s'", argv[1]);
    return 2;
  }

  const char *role_text = NULL, *path = NULL;
  int help = 0, nrest = 0, missing = 0;
  /* The flags that are not main's own go to the option table. */
  char **rest = calloc((size_t)argc + 1, sizeof *rest);
  if (!rest) return 1;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if (strcmp(argv[i], "--version") == 0) {
      printf("llorch %s\n", LLORCH_VERSION);
      free(rest);
      return 0;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      help = 1;
    } else if ((v = main_take(argc, argv, &i, "--role", &missing))) {
      role_text = v;
    } else if ((v = main_take(argc, argv, &i, "--config", &missing))) {
      path = v;
    } else if (missing) {
      main_usage_error("flag '%s' needs a value", argv[i]);
      free(rest);
      return 2;
    } else {
      rest[nrest++] = argv[i];
    }
  }

  llorch_role role = LLORCH_ROLE_NONE;
  if (role_text && llorch_role_parse(role_text, &role) != 0) {
    main_usage_error("unknown role '%s' (expected orchestrator, pool, worker or all)", role_text);
    free(rest);
    return 2;
  }
  if (help) {
    main_help(role);
    free(rest);
    return 0;
  }
  if (!role_text) {
    main_usage_error("%s", "--role is required");
    free(rest);
    return 2;
  }

  llorch_config cfg;
  llorch_errmsg em = {{0}};
  int err = llorch_config_load(&cfg, role, path, nrest, rest, &em);
  free(rest);
  if (err) {
    if (err == LLORCH_ENOMEM) {
      fprintf(stderr, "llorch: out of memory\n");
      return 1;
    }
    /* Flag errors get the usage line too; file errors are about the file. */
    if (err == LLORCH_EINVAL) main_usage_error("%s", em.text);
    else fprintf(stderr, "%s\n", em.text);
    return 2;
  }
  /* Before the role starts, so its first lines already follow the config. */
  llorch_log_init(cfg.log.level, cfg.log.format, stderr);
  int status = main_run_role(&cfg);
  llorch_config_free(&cfg);
  return status;
}
