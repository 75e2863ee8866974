"""Shared helpers for the limits_/stall_/mem_ security tests.

They start the real llorch binary in its roles on 127.0.0.1 (port 0: the
kernel picks a free port, read back from the "listening on" log line), talk
to it with plain sockets and http.client, and stop it at the end. Python
stdlib only. Every wait is bounded in time.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

API_KEY = "sec-client-key"
CLUSTER_TOKEN = "sec-cluster-token"


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
    print("ok: " + msg, flush=True)


def to_yaml(v, indent=""):
    """Minimal YAML writer for the configs these tests need (maps, lists, scalars)."""
    if isinstance(v, dict):
        out = []
        for k, x in v.items():
            if isinstance(x, (dict, list)) and x:
                out.append("%s%s:\n%s" % (indent, k, to_yaml(x, indent + "  ")))
            else:
                out.append("%s%s: %s" % (indent, k, json.dumps(x)))
        return "\n".join(out)
    if isinstance(v, list):
        out = []
        for x in v:
            if isinstance(x, dict):
                inner = to_yaml(x, indent + "  ").lstrip()
                out.append("%s- %s" % (indent, inner))
            else:
                out.append("%s- %s" % (indent, json.dumps(x)))
        return "\n".join(out)
    return json.dumps(v)


class Role:
    """One `llorch --role=ROLE` process; logs are collected by a thread."""

    def __init__(self, binary, role, config, tmp, name=None, args=()):
        self.name = name or role
        path = os.path.join(tmp, self.name + ".yaml")
        with open(path, "w") as f:
            f.write(to_yaml(config) + "\n")
        self.proc = subprocess.Popen([binary, "--role=" + role, "--config", path, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.logs = []
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.time() + 30
        while not self.port:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                fail("%s exited before listening:\n%s" % (self.name, "\n".join(self.logs)))
            if time.time() > deadline:
                fail("%s did not listen in time:\n%s" % (self.name, "\n".join(self.logs)))
            time.sleep(0.02)
        self.url = "http://127.0.0.1:%d" % self.port

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.logs.append(line)
            if os.environ.get("LLORCH_TEST_VERBOSE"):
                sys.stderr.write("[%s] %s\n" % (self.name, line))
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m and not self.port:
                self.port = int(m.group(1))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        bad = [l for l in self.logs if "Sanitizer" in l or "runtime error:" in l]
        if bad:
            fail("%s: sanitizer report:\n%s" % (self.name, "\n".join(self.logs[-80:])))


def request(port, method, path, body=None, headers=None, timeout=30):
    """One request on its own connection: (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def bearer(token):
    return {"Authorization": "Bearer " + token}


def percentile(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


class HealthProbe:
    """GET /health/live every interval on a fresh connection; keeps latencies (ms).

    Runs in a child process so that the attack threads of the test (and
    Python's GIL) do not add their own delays to the figures.
    """

    def __init__(self, port, interval=0.01):
        self.port = port
        self.interval = interval
        self.lat = []
        self.errors = []
        self._proc = None

    def start(self):
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "probe",
                                       str(self.port), str(self.interval)],
                                      stdout=subprocess.PIPE)
        return self

    def stop(self):
        self._proc.send_signal(signal.SIGTERM)
        out, _ = self._proc.communicate(timeout=30)
        res = json.loads(out.decode() or "{}")
        self.lat = res.get("lat", [])
        self.errors = res.get("errors", [])

    def summary(self):
        return "n=%d p50=%.1f ms p99=%.1f ms max=%.1f ms errors=%d" % (
            len(self.lat), percentile(self.lat, 50), percentile(self.lat, 99),
            max(self.lat) if self.lat else float("nan"), len(self.errors))


def _probe_main(port, interval):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lat, errors = [], []
    deadline = time.time() + 600
    while not stop.is_set() and time.time() < deadline:
        t0 = time.perf_counter()
        try:
            st, _, _ = request(port, "GET", "/health/live", timeout=10)
            if st != 200:
                errors.append("status %d" % st)
        except Exception as e:  # noqa: BLE001 - any failure is a failed probe
            errors.append(repr(e))
        lat.append((time.perf_counter() - t0) * 1000.0)
        stop.wait(interval)
    sys.stdout.write(json.dumps({"lat": lat, "errors": errors[:20]}))


def synth_model(binary, tmp, name="tiny"):
    path = os.path.join(tmp, name + ".gguf")
    if not os.path.exists(path):
        subprocess.run([binary, "synth", "--arch", "qwen2", "--layers", "2", "--embd", "64",
                        "--ff", "128", "--heads", "4", "--kv-heads", "2", "--vocab", "512",
                        "--ctx", "512", "--type", "f32", "-o", path],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return path


def tempdir():
    return tempfile.TemporaryDirectory(prefix="llorch-sec-")


def send_all(sock, data):
    view = memoryview(data)
    while view:
        n = sock.send(view)
        view = view[n:]


def raw_connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "probe":
    _probe_main(int(sys.argv[2]), float(sys.argv[3]))
