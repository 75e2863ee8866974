#!/usr/bin/env python3
"""Issue 9 item 5: slow and large clients cannot hold memory or descriptors.

Against real processes on 127.0.0.1:
  - a body trickled 1 byte per second (within http.body_timeout) is cut by
    http.body_deadline with 408 (was: open indefinitely);
  - headers trickled are cut by http.header_timeout with 408;
  - 300 slow connections against http.max_connections = 64 (and
    max_connections_per_peer = 48): the descriptors stay bounded, every
    /health/live from a new connection is answered (the oldest unfinished
    connections make room), and requests already with the handler (queued
    chat requests) are not closed;
  - queued request bytes: 7 MB chat requests from an authenticated client are
    admitted until orchestrator.queue.max_bytes, then 429 with Retry-After;
    the RSS per queued request is printed (the issue measured ~15 MB);
  - the worker's worker.queue_max_bytes: 429 with Retry-After past it;
  - 15 unauthenticated connections sending 8 MiB bodies slowly: the RSS is
    printed (refusing them before the body is authorization's part of the
    issue, done elsewhere).

usage: mem_slow_test.py LLORCH_BINARY
"""
import json
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from limits_harness import (API_KEY, CLUSTER_TOKEN, Role, bearer, check, raw_connect,  # noqa: E402
                            request, send_all, synth_model, tempdir)

MIB = 1 << 20


def read_status(sock, timeout):
    """The status code of the first response on sock, 0 on EOF without one, None on timeout."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return None
    except OSError:
        return 0
    if not data.startswith(b"HTTP/1."):
        return 0
    return int(data.split(b" ", 2)[1])


def trickle_body(port):
    s = raw_connect(port)
    send_all(s, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    t0 = time.time()
    status = None
    while time.time() - t0 < 20:
        try:
            s.send(b" ")
        except OSError:
            break
        r, _, _ = select.select([s], [], [], 1.0)
        if r:
            status = read_status(s, 2)
            break
    s.close()
    return status, time.time() - t0


def trickle_headers(port):
    s = raw_connect(port)
    t0 = time.time()
    status = None
    for ch in b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        try:
            s.send(bytes([ch]))
        except OSError:
            break
        r, _, _ = select.select([s], [], [], 0.5)
        if r:
            status = read_status(s, 2)
            break
    s.close()
    return status, time.time() - t0


def chat_body(size):
    text = "z" * max(1, size - 100)
    return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": text}]}).encode()


def open_request(port, body, token=API_KEY):
    s = raw_connect(port)
    send_all(s, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return s


def still_open(sock):
    """True when the server has neither answered nor closed sock."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def orchestrator_tests(binary, tmp):
    orch = Role(binary, "orchestrator", {
        "listen": "127.0.0.1:0",
        "log": {"level": "info", "format": "text"},
        "http": {"header_timeout": "2s", "body_timeout": "2s", "body_deadline": "4s",
                 "max_connections": 64, "max_connections_per_peer": 48},
        "orchestrator": {"api_keys": [API_KEY], "cluster_token": CLUSTER_TOKEN,
                         "queue": {"timeout": "30s", "max_bytes": "32MiB"},
                         "models": [{"name": "tiny", "file": "tiny.gguf"}]},
    }, tmp)
    port = orch.port
    try:
        # ---- deadlines ----
        st, secs = trickle_body(port)
        print("body trickled 1 byte/s: %s after %.1f s" % (st, secs))
        check(st == 408 and secs < 8, "a trickled body is cut by http.body_deadline (408 after %.1f s)" % secs)
        deadline = time.time() + 5
        while not any("http.body_deadline" in l for l in orch.logs) and time.time() < deadline:
            time.sleep(0.1)
        check(any("http.body_deadline" in l for l in orch.logs), "the log names http.body_deadline")
        st, secs = trickle_headers(port)
        print("headers trickled 2 bytes/s: %s after %.1f s" % (st, secs))
        check(st == 408 and secs < 6, "trickled headers are cut by http.header_timeout (408 after %.1f s)" % secs)

        # ---- connection caps ----
        queued = [open_request(port, chat_body(1000)) for _ in range(5)]
        time.sleep(0.5)
        check(all(still_open(s) for s in queued), "5 small chat requests wait in the queue")
        fds_before = orch.fds()
        flood, refused = [], 0
        ok = 0
        for i in range(300):
            try:
                s = raw_connect(port, timeout=5)
                s.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
                flood.append(s)
            except OSError:
                refused += 1
            if i % 15 == 14:
                st, _, _ = request(port, "GET", "/health/live", timeout=5)
                ok += st == 200
        time.sleep(0.5)
        fds = orch.fds()
        print("300 slow connections: orchestrator descriptors %d before, %d after; "
              "health %d/20 answered" % (fds_before, fds, ok))
        check(ok == 20, "/health/live answered 20/20 during the flood of slow connections")
        check(fds <= fds_before + 64, "descriptors stay bounded by the cap (%d)" % fds)
        alive = sum(still_open(s) for s in flood)
        check(alive <= 48, "at most max_connections_per_peer flood connections stay open (%d)" % alive)
        check(all(still_open(s) for s in queued), "queued requests (with the handler) were not closed")
        for s in flood + queued:
            s.close()
        time.sleep(0.5)

        # ---- queued bytes ----
        rss0 = orch.rss_kib()
        body = chat_body(7 * 1000 * 1000)
        held, status = [], None
        for _ in range(10):
            s = open_request(port, body)
            st = read_status(s, 3)
            if st is not None:
                status = st
                s.close()
                break
            held.append(s)
        time.sleep(1)
        rss1 = orch.rss_kib()
        per = (rss1 - rss0) / 1024.0 / max(1, len(held))
        print("queued 7 MB requests: %d admitted, then %s; RSS %.0f -> %.0f MiB (%.1f MiB per queued request)"
              % (len(held), status, rss0 / 1024.0, rss1 / 1024.0, per))
        check(len(held) == 4 and status == 429, "orchestrator.queue.max_bytes (32 MiB) admits 4 x 7 MB, then 429")
        st, h, data = request(port, "POST", "/v1/chat/completions", body,
                              {**bearer(API_KEY), "Content-Type": "application/json"})
        check(st == 429 and "retry-after" in h and b"orchestrator.queue.max_bytes" in data,
              "the 429 names orchestrator.queue.max_bytes and carries Retry-After")
        if os.environ.get("LLORCH_SANITIZED"):
            print("(sanitized build: its allocator keeps freed memory in quarantine; RSS not checked)")
        else:
            check(per < 12, "a queued 7 MB request costs %.1f MiB (issue: ~15 MiB)" % per)
        for s in held:
            s.close()
        time.sleep(1)

        # ---- unauthenticated 8 MiB bodies, slowly (figures only) ----
        rss0 = orch.rss_kib()
        slow = []
        chunk = b"x" * (256 * 1024)
        for _ in range(15):
            s = raw_connect(port)
            s.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 * MIB))
            slow.append(s)
        t_end = time.time() + 3
        while time.time() < t_end:
            for s in slow:
                try:
                    s.send(chunk)
                except OSError:
                    pass
            time.sleep(0.1)
        rss1 = orch.rss_kib()
        print("15 unauthenticated connections sending 8 MiB bodies slowly: RSS %.0f -> %.0f MiB"
              % (rss0 / 1024.0, rss1 / 1024.0))
        for s in slow:
            s.close()
    finally:
        orch.stop()


def worker_tests(binary, tmp):
    model = synth_model(binary, tmp)
    w = Role(binary, "worker", {
        "listen": "127.0.0.1:0",
        "log": {"level": "info", "format": "text"},
        "worker": {"model": model, "slots": 1, "queue_max_bytes": "64KiB"},
    }, tmp, name="worker")
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            st, _, _ = request(w.port, "GET", "/health/ready")
            if st == 200:
                break
            time.sleep(0.2)
        big = json.dumps({"model": "tiny", "prompt": "x" * 100000, "max_tokens": 1}).encode()
        st, h, data = request(w.port, "POST", "/v1/completions", big, {"Content-Type": "application/json"})
        print("worker, 100 kB prompt with worker.queue_max_bytes 64KiB: %d %s" % (st, data[:160]))
        check(st == 429 and "retry-after" in h and b"worker.queue_max_bytes" in data,
              "the worker refuses past worker.queue_max_bytes with 429 and Retry-After")
        small = json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 2}).encode()
        st, _, _ = request(w.port, "POST", "/v1/completions", small, {"Content-Type": "application/json"})
        check(st == 200, "a small request still runs (%d)" % st)
    finally:
        w.stop()


def main():
    binary = sys.argv[1]
    with tempdir() as tmp:
        orchestrator_tests(binary, tmp)
        worker_tests(binary, tmp)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
