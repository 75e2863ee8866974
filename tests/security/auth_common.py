"""Shared helpers for the auth_/ids_ security tests (who may do what).

They start the real llorch binary in its real roles on 127.0.0.1 (port 0:
the kernel picks a free port, read back from the "listening on" log line),
attack it with http.client and raw sockets, and stop it at the end. Python
stdlib only; every wait is bounded in time. A test prints one "ok:" line per
check and exits 0, or prints "FAIL: ..." (with the role logs) and exits 1.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

API_KEY = "auth-client-key"
ADMIN_KEY = "auth-admin-key"
CLUSTER_TOKEN = "auth-cluster-token"

BIN = None
TMP = None
ROLES = []


def setup(argv):
    """Reads the binary from argv[1], makes the temp dir; returns the binary."""
    global BIN, TMP
    if len(argv) < 2:
        print("usage: %s LLORCH_BINARY" % argv[0])
        sys.exit(2)
    BIN = os.path.abspath(argv[1])
    TMP = tempfile.mkdtemp(prefix="llorch-sec-auth-")
    return BIN


def teardown():
    for r in ROLES:
        r.kill()
    if TMP:
        shutil.rmtree(TMP, ignore_errors=True)


def fail(msg):
    print("FAIL: " + msg, flush=True)
    for r in ROLES:
        print("---- log of %s ----\n%s" % (r.name, r.log()[-6000:]), flush=True)
    teardown()
    sys.exit(1)


FAILED = []


def check(cond, msg):
    """One check. LLORCH_SEC_CONTINUE=1 (for comparing builds by hand) records a
    failure and goes on instead of stopping; the test still exits 1."""
    if not cond:
        if os.environ.get("LLORCH_SEC_CONTINUE"):
            FAILED.append(msg)
            print("NOT OK: " + msg, flush=True)
            return
        fail(msg)
    print("ok: " + msg, flush=True)


def run_main(fn):
    setup(sys.argv)
    try:
        fn()
    except SystemExit:
        raise
    except BaseException as e:  # an exception is a failure with the logs, never a silent pass
        import traceback
        traceback.print_exc()
        fail("%s: %s" % (type(e).__name__, e))
    teardown()
    if FAILED:
        print("FAIL: %d check(s) failed" % len(FAILED), flush=True)
        sys.exit(1)
    print("PASS", flush=True)
    sys.exit(0)


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
                out.append("%s- %s" % (indent, to_yaml(x, indent + "  ").lstrip()))
            else:
                out.append("%s- %s" % (indent, json.dumps(x)))
        return "\n".join(out)
    return json.dumps(v)


def synth_model(name="tiny"):
    """A tiny qwen2-shaped model (the synthetic vocabulary has a chat template)."""
    d = os.path.join(TMP, "models")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name + ".gguf")
    if not os.path.exists(path):
        subprocess.run([BIN, "synth", "--arch", "qwen2", "--layers", "2", "--embd", "64", "--ff", "128",
                        "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--ctx", "512", "--type", "f32",
                        "-o", path], check=True, capture_output=True, timeout=120)
    return d


class Role:
    """`llorch --role=R` with a config dict, on 127.0.0.1:0 unless the config says otherwise."""

    def __init__(self, role, config, name=None, args=(), env=None, expect_listen=True):
        self.name = name or role
        cfg = dict(config)
        cfg.setdefault("listen", "127.0.0.1:0")
        cfg.setdefault("log", {"level": "info", "format": "text"})
        cfg.setdefault("shutdown_grace", "2s")
        self.cfg_path = os.path.join(TMP, "%s-%d.yaml" % (self.name, time.monotonic_ns()))
        with open(self.cfg_path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        self.log_path = self.cfg_path[:-5] + ".log"
        self.log_file = open(self.log_path, "w+")
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("LLORCH_"):
                del e[k]
        e.update(env or {})
        self.proc = subprocess.Popen([BIN, "--role=" + role, "--config", self.cfg_path, *args],
                                     stdout=self.log_file, stderr=self.log_file, env=e)
        ROLES.append(self)
        self.port = None
        if not expect_listen:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        fail("%s did not start listening" % self.name)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.05)
        return None

    def wait_exit(self, timeout=20):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # An ASan/UBSan build reports on stderr (LeakSanitizer at exit): a report is a failure.
        if re.search(r"Sanitizer|runtime error:", self.log()):
            fail("%s: sanitizer report in its log" % self.name)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log_file.closed:
            self.log_file.close()

    def request(self, method, path, body=None, key=None, headers=None, timeout=30):
        return request(self.port, method, path, body, key, headers, timeout)


def request(port, method, path, body=None, key=None, headers=None, timeout=30):
    """One request on a fresh connection: (status, headers dict lowercased, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    if key:
        h["Authorization"] = "Bearer " + key
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    raw = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    try:
        return r.status, hdrs, json.loads(raw)
    except ValueError:
        return r.status, hdrs, raw.decode(errors="replace")


def wait_for(what, fn, timeout=20, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            fail("timed out waiting for " + what)
        time.sleep(interval)


def raw_exchange(port, data, timeout=5.0):
    """Sends raw bytes, reads until the server closes or timeout; (bytes read, closed?, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    s.sendall(data)
    got = b""
    closed = False
    s.settimeout(0.2)
    while time.monotonic() - t0 < timeout:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    s.close()
    return got, closed, time.monotonic() - t0


def chat_body(content="Hello", max_tokens=8, stream=False, model="tiny", **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
         "stream": stream}
    b.update(extra)
    return b


def state_doc(pool, url, boot="b00t", seq=1, workers=(), models=("tiny",)):
    """A pool state document (docs/cluster-protocol.md section 2)."""
    return {
        "protocol": 1, "pool": pool, "url": url, "boot_id": boot, "seq": seq,
        "heartbeat_interval_ms": 60000,
        "devices": [{"id": "cpu", "kind": "cpu", "index": 0, "uuid": "cpu-x", "name": "CPU",
                     "memory_total": 8 << 30, "memory_used": 0, "memory_free": 8 << 30,
                     "utilization": None, "temperature": None}],
        "models": [{"name": m, "file": m + ".gguf", "arch": "qwen2", "params": 1000, "quant": "F32",
                    "ctx": 512, "file_bytes": 1 << 20, "tensor_bytes": 1 << 20,
                    "estimate": {"cpu": {"fixed_bytes": 1 << 20, "per_token_bytes": 1024},
                                 "cuda": {"fixed_bytes": 1 << 20, "per_token_bytes": 1024}}}
                   for m in models],
        "workers": list(workers),
    }


def worker_obj(wid, url, token, model="tiny", state="ready"):
    return {"id": wid, "model": model, "file": model + ".gguf", "devices": ["cpu"], "ctx": 512, "slots": 4,
            "state": state, "url": url, "token": token, "pid": 1, "memory_bytes": 1 << 20,
            "started_at_ms": int(time.time() * 1000), "exit": None}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def serve(handler_cls):
    """A threaded HTTP server on 127.0.0.1:0 (a fake worker or pool); returns (server, port)."""
    import http.server
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a peer that resets is part of these tests

    srv = Server(("127.0.0.1", 0), handler_cls)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]
