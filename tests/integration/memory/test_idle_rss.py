#!/usr/bin/env python3
"""Roles that never touch a GPU stay small, in CUDA builds too.

Starts the real binary as orchestrator, pool (CPU device) and --role=all on
loopback, lets them idle, and asserts for each: no CUDA runtime or cuBLAS
library mapped (/proc/PID/maps), and resident memory (VmRSS) under
LIMIT_BYTES. In a CUDA build the CUDA backend is libllorch_cuda.so, opened
only by workers given --device cuda:N (docs/cuda.md); before that split these
roles idled at about 155 MiB, nearly all of it the CUDA libraries.

usage: test_idle_rss.py LLORCH_BINARY
"""
import os
import re
import subprocess
import sys
import tempfile
import time

LIMIT_BYTES = 20 << 20
CUDA_LIBS = re.compile(r"lib(cudart|cublas|cublasLt|cuda)\.so")


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start(binary, tmp, name, *args):
    log = open(os.path.join(tmp, name + ".log"), "w+")
    p = subprocess.Popen([binary, *args, "--listen", "127.0.0.1:0", "--log-format", "text"],
                         stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"listening on (?:http://)?127\.0\.0\.1:(\d+)", log.read())
        if m:
            return p, log, int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    raise RuntimeError("%s did not start: %s" % (name, log.read()[-2000:]))


def main():
    binary = sys.argv[1]
    failures = []
    procs = []
    with tempfile.TemporaryDirectory(prefix="llorch-idle-") as tmp:
        try:
            orch, _, port = start(binary, tmp, "orchestrator", "--role=orchestrator",
                                  "--cluster-token", "t0k")
            procs.append(("orchestrator", orch))
            pool, _, _ = start(binary, tmp, "pool", "--role=pool", "--name", "p1",
                               "--orchestrator", "http://127.0.0.1:%d" % port,
                               "--cluster-token", "t0k", "--cpu-memory", "1GiB",
                               "--model-dir", tmp)
            procs.append(("pool", pool))
            both, _, _ = start(binary, tmp, "all", "--role=all", "--cpu-memory", "1GiB",
                               "--model-dir", tmp)
            procs.append(("all", both))
            time.sleep(2)  # registration, a few heartbeats
            for name, p in procs:
                if p.poll() is not None:
                    failures.append("%s exited early (%s)" % (name, p.returncode))
                    continue
                rss = rss_bytes(p.pid)
                with open("/proc/%d/maps" % p.pid) as f:
                    libs = sorted({m.group(0) for m in CUDA_LIBS.finditer(f.read())})
                print("%-12s VmRSS %6.2f MiB  CUDA libraries mapped: %s" %
                      (name, rss / (1 << 20), ", ".join(libs) or "none"))
                if libs:
                    failures.append("%s maps %s" % (name, ", ".join(libs)))
                # ASan's shadow memory and quarantine make any RSS figure
                # meaningless; the mapping check above still holds there.
                if rss >= LIMIT_BYTES and not os.environ.get("LLORCH_SANITIZED"):
                    failures.append("%s holds %d bytes resident (limit %d)" % (name, rss, LIMIT_BYTES))
        finally:
            for _, p in procs:
                p.terminate()
            for _, p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    if failures:
        print("FAIL\n" + "\n".join(failures))
        return 1
    if os.environ.get("LLORCH_SANITIZED"):
        print("ok: no CUDA library mapped (sanitizer build: the %d MiB limit is not checked)" %
              (LIMIT_BYTES >> 20))
    else:
        print("ok: idle roles under %d MiB with no CUDA library mapped" % (LIMIT_BYTES >> 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
