#!/usr/bin/env python3
"""The memory estimate against what a real worker holds (include/llorch/memory.h).

For every architecture (llama, qwen2, qwen3) and weight type (F32, F16, BF16,
Q8_0, Q4_0, Q4_K, Q6_K): synthesize a model, start a real CPU worker on
loopback, fill every slot to the end of its context (so all of the KV cache,
the weights and the scratch have been touched), and compare the worker's
/v2/info figures:

  held   = the process's peak resident memory (what the worker reports to its
           pool as memory_bytes)
  model  = held - baseline (the process's resident memory before loading)
  est    = the estimate's total, and est - overhead (its per-process allowance)

and assert, for each:
  1. held <= est: the estimate the pool and orchestrator plan with never
     undercounts what the worker really holds;
  2. |model - (est - overhead)| <= MARGIN_FRAC * (est - overhead) + MARGIN_BYTES:
     the parts the estimate computes (weights, KV, scratch, tokenizer) are
     within the stated margin of what loading and serving the model added;
  3. baseline <= overhead: the per-process allowance covers the process itself.

Prints one line per model with the figures (MiB).

usage: test_memory_calibration.py LLORCH_BINARY
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

MARGIN_FRAC = 0.10
MARGIN_BYTES = 4 << 20
ARCHS = ["llama", "qwen2", "qwen3"]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"]
CTX = 256
SLOTS = 2
THREADS = 2


def mib(n):
    return n / (1 << 20)


def http(port, method, path, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Worker:
    def __init__(self, binary, model, tmp):
        self.log_path = os.path.join(tmp, os.path.basename(model) + ".log")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [binary, "--role=worker", "--model", model, "--ctx", str(CTX), "--slots", str(SLOTS),
             "--threads", str(THREADS), "--listen", "127.0.0.1:0", "--log-format", "text"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.log.seek(0)
            m = re.search(r"listening on (?:http://)?127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if not self.port:
            raise RuntimeError("worker did not start: " + open(self.log_path).read()[-2000:])
        while time.monotonic() < deadline:
            try:
                if http(self.port, "GET", "/v2/info")["state"] == "ready":
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("worker not ready: " + open(self.log_path).read()[-2000:])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def fill(port):
    """Every slot generates to the end of its context at once."""
    errors = []

    def one():
        try:
            http(port, "POST", "/v1/completions",
                 {"prompt": "Once upon a time", "ignore_eos": True, "temperature": 0})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=one) for _ in range(SLOTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    if errors:
        raise errors[0]


def main():
    binary = sys.argv[1]
    if os.environ.get("LLORCH_SANITIZED"):
        # ASan's shadow memory and quarantine are resident memory the
        # estimate does not (and should not) model.
        print("SKIPPED: sanitizer build; resident memory is not comparable (run in a plain build)")
        return 77
    failures = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="llorch-memcal-") as tmp:
        for arch in ARCHS:
            for typ in TYPES:
                model = os.path.join(tmp, "%s-%s.gguf" % (arch, typ))
                subprocess.run([binary, "synth", "--arch", arch, "--layers", "4", "--embd", "256",
                                "--ff", "768", "--heads", "8", "--kv-heads", "4", "--ctx", str(CTX),
                                "--type", typ, "-o", model], check=True, capture_output=True,
                               timeout=120)
                w = Worker(binary, model, tmp)
                try:
                    fill(w.port)
                    info = http(w.port, "GET", "/v2/info")
                finally:
                    w.stop()
                mem = info["memory"]
                est, proc = mem["estimate"], mem["process"]
                held = mem["held_bytes"]
                base = proc["baseline_bytes"]
                model_b = held - base
                est_model = est["total_bytes"] - est["overhead_bytes"]
                diff = model_b - est_model
                rows.append("%-6s %-5s held %7.2f  baseline %5.2f  model %7.2f  estimate %7.2f "
                            "(parts %7.2f: weights %6.2f kv %5.2f scratch %5.2f)  diff %+6.2f MiB "
                            "(%+.1f%%)" % (arch, typ, mib(held), mib(base), mib(model_b),
                                           mib(est["total_bytes"]), mib(est_model),
                                           mib(est["weights_bytes"]), mib(est["kv_bytes"]),
                                           mib(est["scratch_bytes"]), mib(diff),
                                           100.0 * diff / est_model))
                name = "%s %s" % (arch, typ)
                if held > est["total_bytes"]:
                    failures.append("%s: holds %d bytes, more than its estimate %d" %
                                    (name, held, est["total_bytes"]))
                if abs(diff) > MARGIN_FRAC * est_model + MARGIN_BYTES:
                    failures.append("%s: loading and serving added %d bytes; the estimate's parts "
                                    "are %d (margin %.0f%% + %d)" %
                                    (name, model_b, est_model, 100 * MARGIN_FRAC, MARGIN_BYTES))
                if base > est["overhead_bytes"]:
                    failures.append("%s: the process alone holds %d bytes, more than the allowance "
                                    "%d" % (name, base, est["overhead_bytes"]))
    print("\n".join(rows))
    if failures:
        print("FAIL\n" + "\n".join(failures))
        return 1
    print("ok: %d models, estimate within %.0f%% + %.0f MiB of what the workers hold" %
          (len(rows), 100 * MARGIN_FRAC, mib(MARGIN_BYTES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
