#!/usr/bin/env python3
"""Issue 9 item 2: safe defaults.

- Every role listens on 127.0.0.1 by default (orchestrator/all :8080, pool
  :8081, worker :8090), read from `llorch config --dump`.
- A role told to listen beyond loopback without its token refuses to start:
  exit 2 and one line naming the flag and the environment variable. (Nothing
  here ever listens beyond loopback: the refusal comes before binding.)
- An empty token or key (flag, file or environment) is a config error, not
  "no authentication".
- Without client API keys beyond loopback the orchestrator warns loudly; this
  is checked on an address that cannot be bound here (TEST-NET-1, 192.0.2.1),
  so the process logs its set-up and then fails to listen.
- A standalone pool without a cluster token serves its cluster routes on
  loopback only, and with one it requires it (the worker token never appears
  in its state document).

usage: auth_defaults_test.py LLORCH_BINARY
"""
import os
import re
import subprocess

import auth_common as A
from auth_common import check


def run(args, env=None, timeout=30):
    e = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    e.update(env or {})
    return subprocess.run([A.BIN, *args], capture_output=True, text=True, env=e, timeout=timeout)


def lines(text):
    return [l for l in text.splitlines() if l.strip()]


def main():
    for role, want in (("orchestrator", "127.0.0.1:8080"), ("all", "127.0.0.1:8080"),
                       ("pool", "127.0.0.1:8081"), ("worker", "127.0.0.1:8090")):
        r = run(["config", "--dump", "--role", role])
        m = re.search(r"^listen: *\"?([^\"\n]+)\"?$", r.stdout, re.M)
        check(r.returncode == 0 and m and m.group(1) == want, "default listen of %s is %s (%s)"
              % (role, want, m.group(1) if m else r.stdout[:200]))

    for role, flag, env, extra in (("orchestrator", "--cluster-token", "LLORCH_ORCHESTRATOR_CLUSTER_TOKEN", []),
                                   ("all", "--cluster-token", "LLORCH_ORCHESTRATOR_CLUSTER_TOKEN", []),
                                   ("pool", "--cluster-token", "LLORCH_POOL_CLUSTER_TOKEN", []),
                                   ("worker", "--token", "LLORCH_WORKER_TOKEN", ["--model", "x.gguf"])):
        for listen in ("0.0.0.0:0", "[::]:0", ":0"):
            r = run(["--role=" + role, "--listen", listen, *extra])
            ls = lines(r.stderr)
            # One line of reason (then the usage line every config error ends with).
            check(r.returncode == 2 and len(ls) == 2 and flag in ls[0] and env in ls[0]
                  and ls[1].startswith("usage:"),
                  "--role=%s --listen %s without a token: exit 2, one line naming %s and %s (%r)"
                  % (role, listen, flag, env, ls[0] if ls else ""))

    # Empty secrets are errors, never "no authentication".
    r = run(["--role=orchestrator", "--cluster-token="])
    check(r.returncode == 2 and "non-empty" in r.stderr, "--cluster-token= (empty): exit 2 (%r)" % r.stderr.strip())
    r = run(["--role=orchestrator"], env={"LLORCH_ORCHESTRATOR_API_KEYS": ""})
    check(r.returncode == 2 and "LLORCH_ORCHESTRATOR_API_KEYS" in r.stderr,
          "LLORCH_ORCHESTRATOR_API_KEYS set but empty: exit 2 (%r)" % r.stderr.strip())
    r = run(["--role=pool"], env={"LLORCH_POOL_CLUSTER_TOKEN": ""})
    check(r.returncode == 2 and "LLORCH_POOL_CLUSTER_TOKEN" in r.stderr,
          "LLORCH_POOL_CLUSTER_TOKEN set but empty: exit 2 (%r)" % r.stderr.strip())
    cfg = os.path.join(A.TMP, "empty.yaml")
    with open(cfg, "w") as f:
        f.write('orchestrator:\n  cluster_token: ""\n')
    r = run(["config", "--check", cfg])
    check(r.returncode == 2 and "cluster_token" in r.stderr, "cluster_token: \"\" in a file: refused (%r)"
          % r.stderr.strip())
    with open(cfg, "w") as f:
        f.write('orchestrator:\n  api_keys: ["k1", ""]\n')
    r = run(["config", "--check", cfg])
    check(r.returncode == 2 and "api_keys" in r.stderr, "an empty item in api_keys: refused (%r)" % r.stderr.strip())

    # Beyond loopback with a cluster token but no client keys: a loud warning.
    r = run(["--role=orchestrator", "--listen", "192.0.2.1:0", "--cluster-token", "t0k", "--log-format", "text"])
    warn = [l for l in r.stderr.splitlines() if "no orchestrator.api_keys" in l]
    check(r.returncode != 0 and warn and " WARN " in warn[0] and "LLORCH_ORCHESTRATOR_API_KEYS" in warn[0],
          "no client keys beyond loopback: a WARN line naming the flag and variable (%r)" % warn[:1])

    # A standalone pool on loopback without a cluster token: open there (and only there).
    models = A.synth_model()
    pool = A.Role("pool", {"pool": {"name": "p1", "model_dirs": [models], "cpu_memory": "2GiB"}}, name="pool-open")
    st, _, _ = pool.request("GET", "/v2/state")
    check(st == 200, "a loopback pool without a token serves /v2/state (%s)" % st)
    check(re.search(r"WARN .*no cluster token", pool.log()) is not None, "... and warns that it is open")
    pool.stop()

    # With a token: required, and the state document carries no worker tokens.
    pool = A.Role("pool", {"pool": {"name": "p2", "model_dirs": [models], "cpu_memory": "2GiB",
                                    "cluster_token": A.CLUSTER_TOKEN}}, name="pool-token")
    st, _, _ = pool.request("GET", "/v2/state")
    check(st == 401, "a pool with a token: GET /v2/state without it: 401 (%s)" % st)
    st, _, _ = pool.request("GET", "/metrics", key="wrong")
    check(st == 401, "... GET /metrics with a wrong token: 401 (%s)" % st)
    st, _, started = pool.request("POST", "/v2/workers", {"model": "tiny", "devices": ["cpu"], "ctx": 128, "slots": 1},
                                  key=A.CLUSTER_TOKEN)
    check(st == 201 and len(started["worker"]["token"] or "") == 64,
          "POST /v2/workers with the token: 201 with the worker's token in the answer")
    wid = started["worker"]["id"]
    check(re.fullmatch(r"w-[0-9a-f]{16}", wid) is not None, "worker ids are random (%s)" % wid)
    A.wait_for("worker ready", lambda: pool.request("GET", "/v2/state", key=A.CLUSTER_TOKEN)[2]["workers"][0]["state"]
               == "ready", timeout=60)
    st, _, doc = pool.request("GET", "/v2/state", key=A.CLUSTER_TOKEN)
    check(doc["workers"][0]["token"] is None and started["worker"]["token"] not in str(doc),
          "the ready worker's token is not in the state document")
    check(pool.stop() == 0, "the pool exits cleanly")


if __name__ == "__main__":
    A.run_main(main)
