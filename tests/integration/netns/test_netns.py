#!/usr/bin/env python3
"""The cluster across network namespaces (root only).

The orchestrator and two pool managers run in three network namespaces of
their own, joined by veth pairs to a bridge in a fourth, with their own
10.77.0.x addresses; nothing is configured in the caller's namespace. The
test serves a request, cuts the link of the pool that serves it, checks
that the orchestrator marks that pool down within 3 heartbeat intervals and
that the next request is served on the other pool, restores the link and
checks the pool (and its still-running worker) come back.

usage: test_netns.py LLORCH_BIN
Exit 0 pass, 1 fail, 77 skipped (not root, or `ip netns` unavailable).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77
HB_MS = 300
CLUSTER_TOKEN = "netns-cluster-token"
API_KEY = "netns-client-key"
ADMIN_KEY = "netns-admin-key"
TAG = "llo%d" % (os.getpid() % 100000)
NS = {"orch": TAG + "-o", "pool-a": TAG + "-a", "pool-b": TAG + "-b", "br": TAG + "-br"}
ADDR = {"orch": "10.77.0.1", "pool-a": "10.77.0.2", "pool-b": "10.77.0.3"}
VETH = {"orch": TAG + "o", "pool-a": TAG + "a", "pool-b": TAG + "b"}  # bridge-side ends


def skip(why):
    print("SKIP: %s" % why, flush=True)
    sys.exit(SKIP)


def sh(*args, check=True):
    r = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args), r.stderr.strip()))
    return r


def http(method, path, body=None, key=API_KEY, timeout=30):
    """curl inside the orchestrator's namespace (the only place it is reachable)."""
    cmd = ["ip", "netns", "exec", NS["orch"], "curl", "-s", "-m", str(timeout), "-X", method,
           "-H", "Authorization: Bearer " + key, "-w", "\n%{http_code}",
           "http://%s:8080%s" % (ADDR["orch"], path)]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    r = sh(*cmd, check=False)
    text, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), json.loads(text) if text else None
    except ValueError:
        return int(code or 0), text


def cluster():
    code, c = http("GET", "/v2/cluster", key=ADMIN_KEY, timeout=5)
    assert code == 200, "GET /v2/cluster: %s %s" % (code, c)
    return c


def wait_for(what, fn, timeout_s):
    deadline = time.time() + timeout_s
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def pool_up(name):
    for p in cluster()["pools"]:
        if p["name"] == name:
            return p["up"]
    return False


def ask():
    return http("POST", "/v1/chat/completions",
                {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})


def write_yaml(path, text):
    with open(path, "w") as f:
        f.write(text)


def setup_net():
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", NS["br"], "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", NS["br"], "link", "set", "br0", "up")
    for role in ("orch", "pool-a", "pool-b"):
        sh("ip", "-n", NS["br"], "link", "add", VETH[role], "type", "veth", "peer", "name", "eth0",
           "netns", NS[role])
        sh("ip", "-n", NS["br"], "link", "set", VETH[role], "master", "br0")
        sh("ip", "-n", NS["br"], "link", "set", VETH[role], "up")
        sh("ip", "-n", NS[role], "addr", "add", ADDR[role] + "/24", "dev", "eth0")
        sh("ip", "-n", NS[role], "link", "set", "eth0", "up")


def teardown_net():
    for ns in NS.values():
        sh("ip", "netns", "del", ns, check=False)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    binary = os.path.abspath(sys.argv[1])
    if os.geteuid() != 0:
        skip("needs root to create network namespaces (ip netns); run as root to exercise it")
    if not shutil.which("ip") or not shutil.which("curl"):
        skip("needs the ip (iproute2) and curl commands")
    probe = TAG + "-probe"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        skip("ip netns is not available here: " + r.stderr.strip())
    sh("ip", "netns", "del", probe, check=False)

    tmp = tempfile.mkdtemp(prefix="llorch-netns-")
    procs = {}
    ok = False
    try:
        setup_net()
        models = os.path.join(tmp, "models")
        os.mkdir(models)
        sh(binary, "synth", "--arch", "qwen2", "--layers", "2", "--embd", "64", "--ff", "128", "--heads", "4",
           "--kv-heads", "2", "--vocab", "512", "--ctx", "512", "--type", "f32",
           "-o", os.path.join(models, "tiny.gguf"))
        write_yaml(os.path.join(tmp, "orch.yaml"), """listen: %s:8080
log: {level: info, format: json}
orchestrator:
  api_keys: [%s]
  admin_keys: [%s]
  cluster_token: %s
  heartbeat_miss_limit: 3
  queue: {max_total: 16, timeout: 20s}
  models:
    - {name: tiny, file: tiny.gguf, ctx: 256, slots: 2, max_replicas: 1, keep_alive: 60s}
""" % (ADDR["orch"], API_KEY, ADMIN_KEY, CLUSTER_TOKEN))
        for name in ("pool-a", "pool-b"):
            # Wildcard listen + advertise URL: the pool hands its workers a
            # loopback callback URL, which a specific listen address would refuse.
            write_yaml(os.path.join(tmp, name + ".yaml"), """listen: 0.0.0.0:8101
log: {level: info, format: json}
shutdown_grace: 2s
pool:
  name: %s
  advertise_url: http://%s:8101
  orchestrator: http://%s:8080
  cluster_token: %s
  model_dirs: [%s]
  heartbeat_interval: %dms
  cpu_memory: 2GiB
""" % (name, ADDR[name], ADDR["orch"], CLUSTER_TOKEN, models, HB_MS))
        for name, role, ns in (("orch", "orchestrator", NS["orch"]), ("pool-a", "pool", NS["pool-a"]),
                               ("pool-b", "pool", NS["pool-b"])):
            log = open(os.path.join(tmp, name + ".log"), "w")
            procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, binary, "--role=" + role, "--config",
                                            os.path.join(tmp, name + ".yaml")], stdout=log, stderr=log)
            if name == "orch":
                wait_for("orchestrator", lambda: http("GET", "/health/live", timeout=1)[0] == 200, 10)
        wait_for("both pools up", lambda: pool_up("pool-a") and pool_up("pool-b"), 10)

        code, r = ask()
        assert code == 200, "first request: %s %s" % (code, r)
        serving = [w for w in cluster()["workers"] if w["state"] == "ready"]
        assert len(serving) == 1, serving
        cut = serving[0]["pool"]
        other = "pool-b" if cut == "pool-a" else "pool-a"
        print("request served by %s; cutting its link" % cut, flush=True)

        sh("ip", "-n", NS["br"], "link", "set", VETH[cut], "down")
        t0 = time.time()
        wait_for(cut + " down", lambda: not pool_up(cut), 5)
        dt = (time.time() - t0) * 1000
        print("%s marked down after %.0f ms (limit 3 x %d ms)" % (cut, dt, HB_MS), flush=True)
        assert dt <= 3 * HB_MS + 500, "down after %.0f ms" % dt

        code, r = ask()
        assert code == 200, "request after the cut: %s %s" % (code, r)
        c = cluster()
        routable = [w for w in c["workers"] if w["routable"]]
        assert len(routable) == 1 and routable[0]["pool"] == other, \
            "traffic should have moved to %s: %s" % (other, c["workers"])
        print("request after the cut served on %s" % other, flush=True)

        sh("ip", "-n", NS["br"], "link", "set", VETH[cut], "up")
        wait_for(cut + " up again", lambda: pool_up(cut), 10)
        c = cluster()
        back = [w for w in c["workers"] if w["pool"] == cut]
        assert back and back[0]["state"] == "ready", "the worker on %s should still be there: %s" % (cut, back)
        print("%s is up again with its worker %s still running" % (cut, back[0]["id"]), flush=True)
        ok = True
    except Exception as e:  # report, then clean up
        print("FAIL: %s" % e, flush=True)
        for name in procs:
            path = os.path.join(tmp, name + ".log")
            if os.path.exists(path):
                print("---- %s log (last 20 lines)" % name)
                print("".join(open(path).readlines()[-20:]))
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        teardown_net()
        # An ASan/UBSan build reports on stderr (LeakSanitizer at exit).
        for name in procs:
            path = os.path.join(tmp, name + ".log")
            lines = open(path).readlines() if os.path.exists(path) else []
            bad = [l for l in lines if "Sanitizer" in l or "runtime error:" in l]
            if bad:
                print("FAIL: sanitizer report in %s:\n%s" % (name, "".join(lines[-40:])), flush=True)
                ok = False
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
