#!/usr/bin/env python3
"""Contract test of the deployment files against the code.

  test_deploy_contract.py LLORCH_BIN REPO

deploy/kubernetes/*.yaml (parsed with PyYAML) and the Dockerfile are read,
and for each llorch container the real binary is asked:
  1. `llorch config --dump --role R ARGS` with the container's environment
     (secrets from secret.yaml, the ConfigMap's file mounted where the
     manifest mounts it) must accept every flag, variable and value;
  2. the role is then started for real on 127.0.0.1 (addresses and the
     orchestrator URL rewritten to loopback, as every test here must) and
     each probe path and the Prometheus path must answer (not 404);
  3. ports agree (LLORCH_LISTEN, containerPort, probes, Service targetPort,
     scrape annotation), terminationGracePeriodSeconds >= shutdown_grace,
     every kustomization resource exists, and the Dockerfile's ENTRYPOINT,
     environment and HEALTHCHECK path hold.
"""
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

BIN, REPO = sys.argv[1], sys.argv[2]
KDIR = os.path.join(REPO, "deploy", "kubernetes")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(text))
    assert m, f"unparsable duration {text!r}"
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


# ---- load the manifests ----
kust = yaml.safe_load(open(os.path.join(KDIR, "kustomization.yaml")))
docs = []
for res in kust["resources"]:
    path = os.path.join(KDIR, res)
    check(os.path.isfile(path), f"kustomization resource {res} exists")
    docs += [d for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    check("apiVersion" in d and "kind" in d and d.get("metadata", {}).get("name"),
          f"{d.get('kind')} {d.get('metadata', {}).get('name')}: apiVersion, kind and name")
    by_kind.setdefault(d["kind"], []).append(d)

secrets = {}
for s in by_kind.get("Secret", []):
    for k, v in s.get("stringData", {}).items():
        secrets[(s["metadata"]["name"], k)] = str(v)
configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
services = by_kind.get("Service", [])


# Every LLORCH_* variable must name an option (llorch ignores unknown ones, so
# a misspelt variable would otherwise pass silently).
reference = subprocess.run([BIN, "config", "--reference"], capture_output=True, text=True, check=True).stdout
KNOWN_ENV = {"LLORCH_" + k.replace(".", "_").upper() for k in re.findall(r"^\| `([a-z0-9_.]+)` \|", reference, re.M)}
check(len(KNOWN_ENV) > 20, f"`llorch config --reference` lists the options ({len(KNOWN_ENV)})")


def container_env(c, pod_ip):
    env = {}
    for e in c.get("env", []):
        if e["name"].startswith("LLORCH_"):
            check(e["name"] in KNOWN_ENV, f"{c['name']}: env {e['name']} is an option's variable")
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            check(key in secrets, f"{c['name']}: env {e['name']} refers to secret {key[0]}/{key[1]}")
            env[e["name"]] = secrets.get(key, "x")
        elif "fieldRef" in e.get("valueFrom", {}):
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            env[e["name"]] = {"status.podIP": pod_ip, "spec.nodeName": "node-1"}.get(field, "x")
    return env


def expand(arg, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def mount_config(pod, c, tmp):
    """Writes ConfigMap volumes the container mounts under tmp; returns a path map."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mapping = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "configMap" in v:
            data = configmaps.get(v["configMap"]["name"])
            check(data is not None, f"{c['name']}: ConfigMap {v['configMap']['name']} exists")
            local = os.path.join(tmp, m["name"])
            os.makedirs(local, exist_ok=True)
            for fname, text in (data or {}).items():
                with open(os.path.join(local, fname), "w") as f:
                    f.write(text)
            mapping[m["mountPath"]] = local
        elif "hostPath" in v or "emptyDir" in v:
            local = os.path.join(tmp, m["name"])
            os.makedirs(local, exist_ok=True)
            mapping[m["mountPath"]] = local
    return mapping


def remap(arg, mapping):
    for mount, local in mapping.items():
        arg = arg.replace(mount + "/", local + "/").replace("=" + mount, "=" + local)
    return arg


def http_status(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_status(url, token=None, timeout=20):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = http_status(url, token)
        if st is not None:
            return st
        time.sleep(0.1)
    return st


running = {}  # role -> (proc, base URL)


def run_container(kind, pod, c, tmp):
    name = f"{kind} {c['name']}"
    check(c.get("image") == "llorch", f"{name}: image is llorch (kustomize images: sets the tag)")
    args = c.get("args", [])
    roles = [a.split("=", 1)[1] for a in args if a.startswith("--role=")]
    check(len(roles) == 1, f"{name}: one --role= argument")
    role = roles[0] if roles else "orchestrator"
    env = container_env(c, "127.0.0.1")
    mapping = mount_config(pod, c, tmp)
    rest = [remap(expand(a, env), mapping) for a in args if not a.startswith("--role=")]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    child_env.update(env)

    # 1. the binary accepts every flag, variable and value
    r = subprocess.run([BIN, "config", "--dump", "--role", role] + rest, env=child_env,
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, f"{name}: `llorch config --dump --role {role} {shlex.join(rest)}` "
                             f"accepts the manifest's flags and environment ({r.stderr.strip()[:300]})")

    # 3. ports
    listen = env.get("LLORCH_LISTEN", "")
    port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(port is not None and port in ports.values(),
          f"{name}: LLORCH_LISTEN {listen} is a containerPort {sorted(ports.values())}")
    ann = pod.get("metadata", {}).get("annotations", {}) if "metadata" in pod else {}
    probes = []
    for pname in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = c.get(pname)
        if p:
            hp = p["httpGet"]
            pport = ports.get(hp["port"], hp["port"])
            check(pport == port, f"{name}: {pname} port {hp['port']} is the listen port")
            probes.append((pname, hp["path"]))
    check(any(n == "livenessProbe" for n, _ in probes), f"{name}: has a liveness probe")
    return role, rest, child_env, probes, port


def start(role, rest, child_env, probes, scrape_path, log):
    """Starts the role on loopback and checks its probe and scrape paths."""
    port = free_port()
    env = dict(child_env)
    env["LLORCH_LISTEN"] = f"127.0.0.1:{port}"
    loop_args = []
    for a in rest:
        if a.startswith("--orchestrator="):
            a = "--orchestrator=" + running["orchestrator"][1]
        elif a.startswith("--advertise-url="):
            a = f"--advertise-url=http://127.0.0.1:{port}"
        elif a.startswith("--worker-port-base="):
            a = "--worker-port-base=0"
        loop_args.append(a)
    proc = subprocess.Popen([BIN, f"--role={role}"] + loop_args, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    running[role] = (proc, base)
    first = wait_status(base + "/health/live")
    check(first == 200, f"{role}: /health/live answers 200 on loopback (got {first})")
    for pname, path in probes:
        st = http_status(base + path)
        check(st not in (None, 404, 405), f"{role}: {pname} path {path} exists (got {st})")
    if scrape_path:
        token = env.get("LLORCH_ORCHESTRATOR_ADMIN_KEYS", "").split(",")[0] or \
            env.get("LLORCH_POOL_CLUSTER_TOKEN")
        st = http_status(base + scrape_path, token)
        check(st == 200, f"{role}: scrape path {scrape_path} answers 200 with its credential (got {st})")
        st = http_status(base + scrape_path)
        check(st == 401, f"{role}: scrape path {scrape_path} refuses an anonymous scraper (got {st})")


def grace_of(rest):
    for a in rest:
        if a.startswith("--config="):
            cfg = yaml.safe_load(open(a.split("=", 1)[1])) or {}
            if "shutdown_grace" in cfg:
                return duration_s(cfg["shutdown_grace"])
    return 30.0  # the option table's default


with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "roles.log"), "w") as log:
    try:
        workloads = by_kind.get("Deployment", []) + by_kind.get("DaemonSet", [])
        # the orchestrator first: pools register with it
        workloads.sort(key=lambda w: "--role=orchestrator" not in str(w))
        for w in workloads:
            tpl = w["spec"]["template"]
            pod = dict(tpl["spec"])
            pod["metadata"] = tpl.get("metadata", {})
            check(w["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items(),
                  f"{w['kind']} {w['metadata']['name']}: selector matches the pod labels")
            for c in pod["containers"]:
                role, rest, env, probes, port = run_container(w["kind"], pod, c, tmp)
                grace = grace_of(rest)
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                check(tgps >= grace, f"{role}: terminationGracePeriodSeconds {tgps} >= shutdown_grace {grace}")
                ann = pod["metadata"].get("annotations", {})
                scrape = None
                if ann.get("prometheus.io/scrape") == "true":
                    check(int(ann.get("prometheus.io/port", -1)) == port,
                          f"{role}: prometheus.io/port is the listen port")
                    scrape = ann.get("prometheus.io/path", "/metrics")
                for svc in services:
                    if svc["spec"]["selector"].items() <= pod["metadata"].get("labels", {}).items():
                        for sp in svc["spec"]["ports"]:
                            tp = sp["targetPort"]
                            tp = {p["name"]: p["containerPort"] for p in c["ports"]}.get(tp, tp)
                            check(tp == port, f"Service {svc['metadata']['name']}: targetPort reaches {role}")
                        if role == "orchestrator":
                            url = f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
                            pools = [a for w2 in workloads for c2 in w2["spec"]["template"]["spec"]["containers"]
                                     for a in c2.get("args", []) if a.startswith("--orchestrator=")]
                            check(all(p.split("=", 1)[1] == url for p in pools),
                                  f"pools register through the Service name {url}")
                start(role, rest, env, probes, scrape, log)

        # ---- the Dockerfile ----
        df = open(os.path.join(REPO, "Dockerfile")).read()
        check('ENTRYPOINT ["llorch"]' in df, "Dockerfile: ENTRYPOINT [\"llorch\"]")
        check(re.search(r"^USER (?!root)\S+", df, re.M) is not None, "Dockerfile: runs as a non-root user")
        hc = re.search(r"HEALTHCHECK[^\n]*\n\s*CMD[^\n]*(/health/\w+)", df)
        check(hc is not None and hc.group(1) == "/health/live", "Dockerfile: HEALTHCHECK on /health/live")
        envs = dict(re.findall(r"(LLORCH_\w+)=(\S+)", df.split("\nENV ", 1)[1].split("\nEXPOSE", 1)[0]))
        for k in envs:
            check(k in KNOWN_ENV, f"Dockerfile: ENV {k} is an option's variable")
        for role in ("orchestrator", "pool"):
            e = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
            e.update(envs)
            e["LLORCH_ORCHESTRATOR_CLUSTER_TOKEN"] = e["LLORCH_POOL_CLUSTER_TOKEN"] = "t0ken"
            r = subprocess.run([BIN, "config", "--dump", "--role", role], env=e, capture_output=True,
                               text=True, timeout=30)
            check(r.returncode == 0, f"Dockerfile ENV {sorted(envs)} accepted by --role={role} ({r.stderr.strip()[:200]})")
        exposed = re.findall(r"^EXPOSE (\d+)", df, re.M)
        check(envs.get("LLORCH_LISTEN", "").endswith(":" + (exposed[0] if exposed else "?")),
              "Dockerfile: EXPOSE is LLORCH_LISTEN's port")
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.flush()
        if failures:
            print(open(os.path.join(tmp, "roles.log")).read()[-4000:])

print(f"deploy contract: {len(failures)} check(s) failed" if failures else "deploy contract: all checks passed")
sys.exit(1 if failures else 0)
