#!/usr/bin/env python3
"""Issue 9 item 4: no request body stalls the orchestrator's loop.

While clients holding valid credentials post 8 MiB bodies of the worst
shapes found (hundreds of thousands of tiny messages, millions of numbers, one
8 MiB string that is admitted and queued, pool documents and event batches
with a valid cluster token), GET /health/live on fresh connections must keep
answering within 50 ms at the 99th percentile (LLORCH_STALL_P99_MS changes
the bound on a slower machine). p50/p99 are printed without and with the
attack.

usage: stall_health_test.py LLORCH_BINARY
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from limits_harness import (API_KEY, CLUSTER_TOKEN, HealthProbe, Role, bearer, check,  # noqa: E402
                            percentile, request, tempdir)

MIB = 1 << 20
BODY_MAX = 8 * MIB


def pad_to(prefix, unit, suffix, size=BODY_MAX - 64, strip=True):
    """prefix + unit * n + suffix up to size; strip drops the last unit's trailing comma."""
    n = max(1, (size - len(prefix) - len(suffix)) // len(unit))
    body = unit * n
    return prefix + (body[:-1] if strip else body) + suffix, n


def shapes():
    out = {}
    # 1. The shape, scaled to 8 MiB: ~290k tiny messages.
    out["chat_tiny_messages"], _ = pad_to(b'{"model":"tiny","messages":[',
                                          b'{"role":"user","content":""},', b"]}")
    # 2. Millions of numbers (one cJSON node each, had they been parsed).
    out["chat_numbers"], _ = pad_to(b'{"model":"tiny","messages":[{"role":"user","content":"x"}],'
                                    b'"stop":[', b"0,", b"]}")
    # 3. Under the value bound but past request.max_messages: parsed, then 400.
    content = b"y" * 380
    out["chat_many_messages"], _ = pad_to(b'{"model":"tiny","messages":[',
                                          b'{"role":"user","content":"' + content + b'"},', b"]}")
    # 4. One 8 MiB string of escapes: valid, copied and re-escaped, admitted and queued.
    out["chat_one_big_string"], _ = pad_to(b'{"model":"tiny","messages":[{"role":"user","content":"',
                                           b"\\n\\u0001", b'"}]}', strip=False)
    # 5. A pool state document with many workers with long strings (cluster token).
    worker = (b'{"id":"w-%d","model":"tiny","file":"tiny.gguf","devices":["cpu"],"ctx":512,'
              b'"slots":1,"state":"exited","url":"http://127.0.0.1:1","exit":{"code":1,'
              b'"reason":"' + b"r" * 3000 + b'"}},')
    head = (b'{"protocol":1,"pool":"p-stall","url":"http://127.0.0.1:1","boot_id":"b1","seq":1,'
            b'"heartbeat_interval_ms":1000,"devices":[],"models":[],"workers":[')
    ws, i = [], 0
    while len(head) + sum(map(len, ws)) + len(worker) + 64 < BODY_MAX:
        ws.append(worker.replace(b"%d", str(i).encode()))
        i += 1
    out["pool_register"] = head + b"".join(ws)[:-1] + b"]}"
    # 6. An events batch of ~100k tiny events.
    out["pool_events"], _ = pad_to(b'{"boot_id":"b1","seq":2,"events":[',
                                   b'{"type":"worker_ready","worker":{}},', b"]}")
    return out


def main():
    binary = sys.argv[1]
    bound = float(os.environ.get("LLORCH_STALL_P99_MS", "50"))
    body_shapes = shapes()
    for name, b in body_shapes.items():
        assert len(b) <= BODY_MAX, (name, len(b))
    with tempdir() as tmp:
        orch = Role(binary, "orchestrator", {
            "listen": "127.0.0.1:0",
            "log": {"level": "info", "format": "text"},
            "orchestrator": {"api_keys": [API_KEY], "cluster_token": CLUSTER_TOKEN,
                             "queue": {"timeout": "1s"},
                             "models": [{"name": "tiny", "file": "tiny.gguf"}]},
        }, tmp)
        try:
            base = HealthProbe(orch.port).start()
            time.sleep(3)
            base.stop()
            print("health without attack: " + base.summary(), flush=True)

            paths = {"pool_register": "/v2/pools/register", "pool_events": "/v2/pools/p-stall/events"}
            results = {name: [] for name in body_shapes}
            stop = threading.Event()

            def attacker(offset):
                names = list(body_shapes)
                k = offset
                while not stop.is_set():
                    name = names[k % len(names)]
                    k += 1
                    path = paths.get(name, "/v1/chat/completions")
                    tok = CLUSTER_TOKEN if name.startswith("pool") else API_KEY
                    t0 = time.perf_counter()
                    try:
                        st, _, _ = request(orch.port, "POST", path, body_shapes[name],
                                           {**bearer(tok), "Content-Type": "application/json"},
                                           timeout=30)
                    except Exception as e:  # noqa: BLE001
                        st = repr(e)
                    results[name].append((st, (time.perf_counter() - t0) * 1000))

            probe = HealthProbe(orch.port).start()
            threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(2)]
            for t in threads:
                t.start()
            # At least LLORCH_STALL_SECONDS, and until every shape went twice (a sanitized
            # build is slow), never past two minutes.
            t0 = time.time()
            min_s = float(os.environ.get("LLORCH_STALL_SECONDS", "15"))
            while time.time() - t0 < 120 and (time.time() - t0 < min_s or
                                               min(len(r) for r in results.values()) < 2):
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            probe.stop()
            print("health during 8 MiB attack bodies: " + probe.summary(), flush=True)
            for name, rs in results.items():
                statuses = sorted({str(s) for s, _ in rs})
                ms = [m for _, m in rs]
                print("  %-22s %3d posts, statuses %s, answer p50 %.0f ms max %.0f ms" % (
                    name, len(rs), ",".join(statuses), percentile(ms, 50), max(ms) if ms else 0),
                    flush=True)

            check(all(rs for rs in results.values()), "every attack shape was posted")
            check(not probe.errors, "/health/live answered 200 every time (%d errors)" % len(probe.errors))
            want = {"chat_tiny_messages": {"413"}, "chat_numbers": {"413"},
                    "chat_many_messages": {"400"}, "chat_one_big_string": {"503", "429"},
                    "pool_register": {"413"}, "pool_events": {"413"}}
            for name, ok in want.items():
                got = {str(s) for s, _ in results[name]}
                check(got <= ok, "%s answered %s (expected %s)" % (name, sorted(got), sorted(ok)))
            p99 = percentile(probe.lat, 99)
            check(p99 <= bound, "/health/live p99 %.1f ms <= %.0f ms during the attack" % (p99, bound))
        finally:
            orch.stop()
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
