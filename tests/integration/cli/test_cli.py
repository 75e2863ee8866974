#!/usr/bin/env python3
"""Integration test of llorch's command line and role start-up.

Runs the real binary: --version, --help, usage errors (exit 2 with one line
of reason and the usage line), `llorch config --check` on every file in
config/, a bad file failing with its file:line:column line, `config --dump`
reading back to itself, and each role starting on a loopback listener,
answering GET /health/live and GET /metrics, and exiting 0 on SIGTERM and
SIGINT.

usage: test_cli.py LLORCH_BINARY CONFIG_DIR
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

BIN = None
CONFIG_DIR = None
TMP = None


def run(*args, timeout=30):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)


def lines(text):
    return [l for l in text.splitlines() if l.strip()]


class Role:
    """A role process on 127.0.0.1 with an ephemeral port read from its log."""

    def __init__(self, role, *flags):
        self.stderr_path = os.path.join(TMP, "role-%s-%d.log" % (role, time.monotonic_ns()))
        self.err = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(
            [BIN, "--role=" + role, "--listen", "127.0.0.1:0", "--log-format", "text", *flags],
            stdout=subprocess.DEVNULL, stderr=self.err)
        self.port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError("%s did not start listening:\n%s" % (role, self.log()))

    def log(self):
        with open(self.stderr_path) as f:
            return f.read()

    def get(self, path):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path), timeout=10) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


class TestCommandLine(unittest.TestCase):
    def assert_usage_error(self, r, reason):
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stdout, "")
        ls = lines(r.stderr)
        self.assertEqual(len(ls), 2, r.stderr)
        self.assertEqual(ls[0], "llorch: " + reason)
        self.assertTrue(ls[1].startswith("usage: llorch --role="), ls[1])

    def test_version(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^llorch \d+\.\d+\.\d+\n$")

    def test_help(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for needle in ("usage: llorch --role=", "--config FILE", "--slots N", "--gpus 0,1",
                       "--orchestrator URL", "--api-key KEY", "[worker.slots]", "config "):
            self.assertIn(needle, r.stdout)
        # --help for one role lists only that role's flags.
        r = run("--help", "--role=worker")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--model FILE", r.stdout)
        self.assertNotIn("--gpus 0,1", r.stdout)

    def test_usage_errors(self):
        self.assert_usage_error(run(), "--role is required")
        self.assert_usage_error(run("--role=boss"),
                                "unknown role 'boss' (expected orchestrator, pool, worker or all)")
        self.assert_usage_error(run("--role", "pool", "--bogus=1"), "unknown flag '--bogus'")
        self.assert_usage_error(run("--role=worker", "--model", "m.gguf", "--gpus=0,1"),
                                "flag '--gpus' is not valid for --role=worker")
        self.assert_usage_error(run("--role=pool", "--gpus"), "flag '--gpus' needs a value")
        self.assert_usage_error(run("--role=worker", "--model=m", "--slots", "many"),
                                "--slots ('worker.slots'): expected an integer in 1..256, got \"many\"")
        self.assert_usage_error(run("--role=worker"),
                                "'worker.model' is required for --role=worker (--model FILE)")
        self.assert_usage_error(run("frobnicate"), "unknown command 'frobnicate'")
        self.assert_usage_error(run("--role=pool", "--config"), "flag '--config' needs a value")


class TestConfigFiles(unittest.TestCase):
    def test_examples_pass_check(self):
        files = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        for name in ("orchestrator.yaml", "pool.yaml", "worker.yaml", "all.yaml"):
            self.assertIn(name, files)
        for f in files:
            path = os.path.join(CONFIG_DIR, f)
            r = run("config", "--check", path)
            self.assertEqual(r.returncode, 0, "%s: %s" % (f, r.stderr))
            self.assertEqual(r.stdout, "%s: ok\n" % path)

    def write(self, name, text):
        path = os.path.join(TMP, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_file(self):
        path = self.write("bad.yaml", "listen: 127.0.0.1:0\nworker:\n  model: m.gguf\n"
                                      "  device: cpu\n  slots: many\n")
        want = "%s:5:10: 'worker.slots': expected an integer in 1..256, got \"many\"" % path
        r = run("config", "--check", path)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(lines(r.stderr), [want])
        # Start-up stops with the same single line.
        r = run("--role=worker", "--config", path)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(lines(r.stderr), [want])

    def test_bad_file_kinds(self):
        cases = [
            ("syntax.yaml", "pool:\n  gpus: [0, 1\n",
             "3:1: YAML syntax error: did not find expected ',' or ']' while parsing a flow sequence"),
            ("unknown.yaml", "pool:\n  gpu: [0]\n",
             "2:3: 'pool.gpu': unknown key, expected one of: name, gpus, orchestrator, "
             "cluster_token, model_dirs, advertise_url, heartbeat_interval, stop_grace, "
             "cpu_memory, worker_port_base, fetch_bandwidth"),
            ("range.yaml", "orchestrator:\n  models:\n    - name: a\n      file: a.gguf\n"
                           "    - name: b\n      file: b.gguf\n      slots: 0\n",
             "7:14: 'orchestrator.models[1].slots': expected an integer in 1..256, got \"0\""),
            ("type.yaml", "http:\n  idle_timeout: [1]\n",
             "2:17: 'http.idle_timeout': expected a duration (500ms, 10s, 5m) in 100ms..1d, got a list"),
        ]
        for name, text, tail in cases:
            path = self.write(name, text)
            r = run("config", "--check", path)
            self.assertEqual(r.returncode, 2, name)
            self.assertEqual(lines(r.stderr), ["%s:%s" % (path, tail)], name)
        r = run("config", "--check", os.path.join(TMP, "missing.yaml"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing.yaml: cannot open config file", r.stderr)

    def test_dump_round_trip(self):
        for role, f in (("orchestrator", "orchestrator.yaml"), ("pool", "pool.yaml"),
                        ("worker", "worker.yaml"), ("all", "all.yaml"), (None, "all.yaml")):
            args = ["config", "--dump", "--show-secrets", "--config", os.path.join(CONFIG_DIR, f)]
            if role:
                args += ["--role", role]
            one = run(*args)
            self.assertEqual(one.returncode, 0, one.stderr)
            path = self.write("dump-%s.yaml" % role, one.stdout)
            self.assertEqual(run("config", "--check", path).returncode, 0)
            args2 = ["config", "--dump", "--show-secrets", "--config", path]
            if role:
                args2 += ["--role", role]
            two = run(*args2)
            self.assertEqual(two.stdout, one.stdout)

    def test_dump_precedence(self):
        # flag > file > default
        r = run("config", "--dump", "--role", "worker", "--config",
                os.path.join(CONFIG_DIR, "worker.yaml"), "--slots=7")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\n  slots: 7\n", r.stdout)
        self.assertIn("\n  model: \"models/demo.gguf\"\n", r.stdout)   # from the file
        self.assertIn("\n  max_headers: 100\n", r.stdout)              # default
        self.assertNotIn("pool:", r.stdout)
        r = run("config", "--dump", "--role", "orchestrator", "--config",
                os.path.join(CONFIG_DIR, "orchestrator.yaml"))
        self.assertNotIn("change-me", r.stdout)                         # secrets redacted
        self.assertIn("\"<redacted>\"", r.stdout)


def tiny_model():
    """A small synthesized GGUF for the worker, when `llorch synth` is built."""
    path = os.path.join(TMP, "tiny.gguf")
    r = run("synth", "--arch", "llama", "--layers", "1", "--embd", "64", "--ff", "128",
            "--heads", "2", "--kv-heads", "1", "--type", "f32", "--seed", "1", "-o", path,
            timeout=120)
    return path if r.returncode == 0 and os.path.exists(path) else None


class TestRoles(unittest.TestCase):
    def check_role(self, role, *flags, sig=signal.SIGTERM):
        p = Role(role, *flags)
        try:
            status, headers, body = p.get("/health/live")
            self.assertEqual(status, 200, body)
            self.assertIn('"ok"', body)
            status, headers, body = p.get("/metrics")
            self.assertEqual(status, 200)
            self.assertTrue(headers["Content-Type"].startswith("text/plain"), headers)
            self.assertIn('llorch_build_info{version="', body)
            self.assertIn('role="%s"} 1' % role, body)
            self.assertIn("process_start_time_seconds", body)
            self.assertEqual(p.stop(sig), 0, p.log())
            self.assertIn("shutting down", p.log())
        finally:
            p.kill()

    def test_orchestrator(self):
        self.check_role("orchestrator")

    def test_pool(self):
        self.check_role("pool", "--model-dir", TMP, "--name", "cli-test")

    def test_worker(self):
        model = tiny_model()
        if model is None:
            # The real worker exits when its model does not load, so without
            # `llorch synth` in this build there is nothing it can serve.
            self.skipTest("`llorch synth` is not available in this build")
        self.check_role("worker", "--model", model, "--slots", "1", sig=signal.SIGINT)

    def test_all(self):
        self.check_role("all", "--model-dir", TMP)

    def test_config_file_and_flags(self):
        # The example file's listen is overridden by the flag: the role
        # starts on the ephemeral port, with the file's other values.
        p = Role("all", "--config", os.path.join(CONFIG_DIR, "all.yaml"), "--model-dir", TMP)
        try:
            self.assertEqual(p.get("/health/live")[0], 200)
            status, _, body = p.get("/no/such/path")
            self.assertEqual(status, 404)
            self.assertIn('"error"', body)
            self.assertEqual(p.stop(), 0, p.log())
        finally:
            p.kill()

    def test_listen_in_use(self):
        p = Role("orchestrator")
        try:
            r = run("--role=orchestrator", "--listen", "127.0.0.1:%d" % p.port)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("127.0.0.1:%d" % p.port, r.stderr)
        finally:
            p.stop()
            p.kill()


if __name__ == "__main__":
    BIN = os.path.abspath(sys.argv[1])
    CONFIG_DIR = os.path.abspath(sys.argv[2])
    with tempfile.TemporaryDirectory(prefix="llorch-cli-") as d:
        TMP = d
        prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    sys.exit(0 if prog.result.wasSuccessful() else 1)
