#!/usr/bin/env python3
"""HTTP conformance: a real server process (http_testd, built on llorch_net)
on loopback, driven with curl and raw sockets.

usage: test_http_conformance.py PATH/TO/http_testd

Checks: malformed request line -> 400; declared oversized body -> 413 without
the body being sent; too many / too large headers -> 431; header trickle ->
408 and close after the header timeout; pipelined requests answered in order;
chunked request bodies; SSE framing; client disconnect mid-SSE noticed by the
handler; request ids; /metrics; SIGTERM drains an in-flight request, exit 0.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HEADER_TIMEOUT_MS = 600
failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)


def start_server(binary, *extra):
    log = tempfile.NamedTemporaryFile(prefix="http_testd-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "--header-timeout-ms", str(HEADER_TIMEOUT_MS), "--max-body", "1000",
         "--max-headers", "20", "--max-header-bytes", "2048", "--sse-keepalive-ms", "100",
         "--grace-ms", "5000", *extra],
        stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    m = re.match(r"PORT (\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"http_testd did not start: {line!r}; log in {log.name}")
    return proc, int(m.group(1)), log.name


def curl(port, path, *args):
    """Returns (status, headers text, body)."""
    out = subprocess.run(
        ["curl", "-s", "-S", "--max-time", "10", "-D", "-", "-o", "-", *args,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True)
    text = out.stdout.decode("utf-8", "replace")
    # Skip "100 Continue" blocks.
    while text.startswith("HTTP/1.1 100"):
        text = text.split("\r\n\r\n", 1)[1]
    head, _, body = text.partition("\r\n\r\n")
    m = re.match(r"HTTP/1\.[01] (\d+)", head)
    return (int(m.group(1)) if m else 0), head, body


def raw(port, data, until_close=True, timeout=10.0):
    """Sends data, reads until the server closes (or timeout). Returns bytes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    if data:
        s.sendall(data)
    chunks = []
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
            if not until_close:
                break
    except socket.timeout:
        pass
    s.close()
    return b"".join(chunks)


def stats(port):
    _, _, body = curl(port, "/stats")
    return json.loads(body)


def wait_until(pred, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def main():
    binary = sys.argv[1]
    proc, port, logname = start_server(binary)
    try:
        run_checks(port, logname)
        drain_check(proc, port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    llorch = os.environ.get("LLORCH_BIN")
    if llorch and os.access(llorch, os.X_OK):
        real_binary_checks(llorch)
    else:
        print("skip real llorch binary checks (LLORCH_BIN not built)")
    if failures:
        print(f"\n{len(failures)} check(s) failed; server log: {logname}")
        with open(logname) as f:
            print(f.read()[-4000:])
        sys.exit(1)
    os.unlink(logname)
    print("all HTTP conformance checks passed")


def run_checks(port, logname):
    # -- basics, request ids
    st, head, body = curl(port, "/health")
    check(st == 200 and json.loads(body) == {"status": "ok"}, "GET /health -> 200 JSON")
    rid = re.search(r"X-Request-Id: ([0-9a-f]{32})\r?$", head, re.M)
    check(rid is not None, "generated X-Request-Id on the response")
    _, head, _ = curl(port, "/health", "-H", "X-Request-Id: my-req-7")
    check("X-Request-Id: my-req-7" in head, "valid client X-Request-Id echoed")
    st, head, body = curl(port, "/health", "-H", "X-Request-Id: bad_id!")
    check(st == 400 and "X-Request-Id" in body and "bad_id" not in head
          and re.search(r"X-Request-Id: [0-9a-f]{32}", head),
          "invalid client X-Request-Id: 400 naming the header, a generated id on the response")
    st, _, body = curl(port, "/nowhere")
    check(st == 404 and json.loads(body)["error"]["type"] == "not_found_error",
          "unknown route -> 404 in the OpenAI error envelope")

    # -- JSON helper errors
    st, _, body = curl(port, "/json", "-H", "Content-Type: application/json",
                       "--data-binary", '{"max_tokens":"abc","messages":[{"role":"user"}]}')
    err = json.loads(body)["error"] if st == 400 else {}
    check(st == 400 and err.get("message") == "'max_tokens' must be an integer >= 1, got \"abc\""
          and err.get("param") == "max_tokens", "bad field -> 400 naming the field and why")
    st, _, body = curl(port, "/json", "--data-binary", '{"messages":[{"role":"user"},{"role":"x"}]}')
    check(st == 400 and "'messages[1].role' must be one of system, user, assistant" in body,
          "bad nested field -> 400 with its path")
    st, _, body = curl(port, "/json", "--data-binary", '{"messages": [')
    check(st == 400 and "not valid JSON" in body, "invalid JSON -> 400")

    # -- malformed request line
    resp = raw(port, b"THIS IS NOT HTTP\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 400 ") and b'{"error":{"message":"malformed request' in resp
          and b"Connection: close" in resp, "malformed request line -> 400 JSON, closed")
    resp = raw(port, b"GET / HTTP/1.1\r\nNo-Colon-Here\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 400 "), "malformed header line -> 400")

    # -- 413: declared length over the limit, refused before any body byte is sent
    t0 = time.monotonic()
    resp = raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 413 ") and b"request body too large" in resp
          and time.monotonic() - t0 < 3, "declared oversized Content-Length -> 413 without the body")
    resp = raw(port, b"POST /nowhere HTTP/1.1\r\nContent-Length: 50000\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 413 "), "413 before routing (any path)")
    with tempfile.NamedTemporaryFile() as big:
        big.write(b"x" * 5000)
        big.flush()
        st, _, _ = curl(port, "/echo", "--data-binary", f"@{big.name}")
        check(st == 413, "curl: 5000-byte body over a 1000-byte limit -> 413")
        st, _, _ = curl(port, "/echo", "-H", "Transfer-Encoding: chunked",
                        "--data-binary", f"@{big.name}")
        check(st == 413, "curl: chunked body over the limit -> 413")
    st, _, body = curl(port, "/echo", "--data-binary", "x" * 1000)
    check(st == 200 and body == "x" * 1000, "body exactly at the limit accepted")

    # -- 431
    args = []
    for i in range(30):
        args += ["-H", f"X-H{i}: v"]
    st, _, body = curl(port, "/health", *args)
    check(st == 431 and "too many request headers" in body, "too many headers -> 431")
    st, _, body = curl(port, "/health", "-H", "X-Big: " + "y" * 3000)
    check(st == 431 and "too large" in body, "headers over max bytes -> 431")

    # -- header trickle: headers must complete within the header timeout
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    t0 = time.monotonic()
    s.sendall(b"GET /health HTTP/1.1\r\n")
    got = b""
    closed_at = None
    for i in range(100):
        try:
            s.sendall(b"X-Trickle-%d: 1\r\n" % i)
        except OSError:
            pass
        s.settimeout(0.1)
        try:
            b = s.recv(4096)
            if b:
                got += b
            else:
                closed_at = time.monotonic() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            closed_at = time.monotonic() - t0
            break
    s.close()
    check(closed_at is not None and HEADER_TIMEOUT_MS / 1000 * 0.8 <= closed_at < 3.0
          and got.startswith(b"HTTP/1.1 408 "),
          f"header trickle -> 408 and closed after the header timeout (closed at {closed_at})")

    # -- pipelining: three requests in one packet, the first slow
    resp = raw(port, b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthird")
    i1, i2, i3 = resp.find(b'{"slow":true}'), resp.find(b'{"status":"ok"}'), resp.find(b"third")
    check(resp.count(b"HTTP/1.1 200 OK") == 3 and 0 <= i1 < i2 < i3,
          "pipelined requests answered in order")

    # -- chunked request body
    st, _, body = curl(port, "/echo", "-H", "Transfer-Encoding: chunked",
                       "--data-binary", "hello chunked world")
    check(st == 200 and body == "hello chunked world", "curl: chunked request body")
    resp = raw(port, b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    check(resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"\r\n\r\nabcdefg"),
          "raw: chunked request body de-chunked")
    st, _, body = curl(port, "/chunked")
    check(st == 200 and body == "one two three", "chunked response")

    # -- SSE stream
    st, head, body = curl(port, "/sse?n=3&interval_ms=20", "-N")
    check(st == 200 and "text/event-stream" in head
          and "data: tick 0\n\n" in body and "event: tick\ndata: tick 1\n\n" in body
          and "data: line one of 2\ndata: line two\n\n" in body and body.endswith("data: [DONE]\n\n"),
          "SSE events framed (event name, multi-line data, end)")
    st, head, body = curl(port, "/sse?n=3&interval_ms=150", "-N")
    check(": keep-alive\n\n" in body, "SSE keep-alive comments on the timer")

    # -- client disconnect in the middle of an SSE stream
    before = stats(port)["sse_aborts"]
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.sendall(b"GET /sse?n=0&interval_ms=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while got.count(b"data: ") < 3:
        b = s.recv(4096)
        if not b:
            break
        got += b
    s.close()
    check(wait_until(lambda: stats(port)["sse_aborts"] == before + 1),
          "client disconnect mid-SSE noticed by the handler (on_close)")
    with open(logname) as f:
        log = f.read()
    check("went away during GET /sse" in log, "disconnect logged with the request")

    # -- metrics
    st, head, body = curl(port, "/metrics")
    check(st == 200 and "text/plain; version=0.0.4" in head
          and re.search(r'^llorch_http_requests_total\{code="200"\} \d+$', body, re.M)
          and re.search(r'^llorch_http_client_aborts_total [1-9]', body, re.M)
          and 'llorch_http_request_duration_seconds_bucket{le="+Inf"}' in body,
          "/metrics in Prometheus text format")


def drain_check(proc, port):
    # A slow request in flight when SIGTERM arrives still gets its answer.
    r0 = stats(port)["requests"]
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(b"GET /slow?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n")
    polls = [0]

    def slow_arrived():
        polls[0] += 1
        return stats(port)["requests"] - r0 - polls[0] >= 1

    check(wait_until(slow_arrived), "slow request reached the handler")
    proc.send_signal(signal.SIGTERM)
    got = b""
    while True:
        try:
            b = s.recv(4096)
        except socket.timeout:
            break
        if not b:
            break
        got += b
    s.close()
    check(got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b'{"slow":true}')
          and b"Connection: close" in got, "SIGTERM: in-flight request finished")
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"SIGTERM: server drained and exited 0 (rc={rc})")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        refused = False
    except OSError:
        refused = True
    check(refused, "after shutdown: no longer accepting")


def real_binary_checks(llorch):
    """The same limits through the real `llorch --role=orchestrator` (its HTTP
    server comes from src/net, its limits from the config file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write("http:\n  max_body_bytes: 1KiB\n  max_headers: 20\n  max_header_bytes: 2KiB\n"
                  f"  header_timeout: {HEADER_TIMEOUT_MS}ms\nshutdown_grace: 5s\n")
    log = tempfile.NamedTemporaryFile(prefix="llorch-", suffix=".log", delete=False)
    proc = subprocess.Popen([llorch, "--role=orchestrator", "--config", cfg.name,
                             "--listen=127.0.0.1:0", "--log-format=json"],
                            stdout=subprocess.DEVNULL, stderr=log)
    port = None

    def find_port():
        nonlocal port
        with open(log.name) as f:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", f.read())
        if m:
            port = int(m.group(1))
        return port is not None or proc.poll() is not None

    try:
        wait_until(find_port, timeout=10)
        check(port is not None, "llorch --role=orchestrator started on an ephemeral port")
        if port is None:
            return
        st, head, body = curl(port, "/health/live", "-H", "X-Request-Id: real-1")
        check(st == 200 and "X-Request-Id: real-1" in head, "llorch: GET /health/live -> 200, id echoed")
        resp = raw(port, b"NOT HTTP AT ALL\r\n\r\n")
        check(resp.startswith(b"HTTP/1.1 400 ") and b'"error"' in resp, "llorch: malformed request line -> 400")
        resp = raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 50000\r\n\r\n")
        check(resp.startswith(b"HTTP/1.1 413 "), "llorch: declared oversized body -> 413 before the body")
        args = []
        for i in range(30):
            args += ["-H", f"X-H{i}: v"]
        st, _, _ = curl(port, "/health/live", *args)
        check(st == 431, "llorch: too many headers -> 431")
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(b"GET /health/live HTTP/1.1\r\nX-A: 1\r\n")
        got = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except OSError:
            pass
        dt = time.monotonic() - t0
        s.close()
        check(got.startswith(b"HTTP/1.1 408 ") and HEADER_TIMEOUT_MS / 1000 * 0.8 <= dt < 4,
              f"llorch: incomplete headers -> 408 and closed after the header timeout ({dt:.2f}s)")
        resp = raw(port, b"GET /health/live HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n"
                         b"GET /no/such/thing HTTP/1.1\r\nConnection: close\r\n\r\n")
        codes = re.findall(rb"HTTP/1\.1 (\d{3})", resp)
        check(codes == [b"200", b"200", b"404"] and resp.find(b'"status"') < resp.find(b"# TYPE"),
              f"llorch: pipelined requests answered in order ({codes})")
        st, _, body = curl(port, "/metrics")
        check(st == 200 and re.search(r'^llorch_http_requests_total\{code="431"\} 1$', body, re.M),
              "llorch: /metrics counts responses by code")
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"llorch: SIGTERM -> exit 0 (rc={rc})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.unlink(cfg.name)
        if not failures:
            os.unlink(log.name)
        else:
            print(f"llorch log: {log.name}")


if __name__ == "__main__":
    main()
