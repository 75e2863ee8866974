#!/usr/bin/env python3
"""Issue 9 item 3: no client touches another's request through its id.

Attacks (each must fail now), against `llorch --role=all`:
  - a second client sends the victim's X-Request-Id and resets its connection
    mid-stream: the victim's stream must still run to its end (before, the
    job id on the worker was the request id + ".N", so this cancelled it);
  - a client claims an id first and holds it: a later client with the same
    id must be served, not refused with 409;
  - completion ids and job ids never contain the client's label, and ids the
    server makes are not predictable from one's own (128 random bits each);
  - a label that is not ^[A-Za-z0-9._:-]{1,64}$ is a 400 naming the header.

usage: ids_request_id_test.py LLORCH_BINARY
"""
import json
import re
import socket
import struct
import threading
import time

import auth_common as A
from auth_common import check

N_TOKENS = 200


def open_stream(port, rid, n_tokens=N_TOKENS):
    """Starts a streaming chat request on a raw socket; returns the socket after the response head."""
    body = json.dumps(A.chat_body("Tell me a story", max_tokens=n_tokens, stream=True, ignore_eos=True)).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (A.API_KEY, len(body), "X-Request-Id: %s\r\n" % rid if rid else ""))
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head.encode() + body)
    return s


def read_until(s, pred, timeout=60):
    buf = b""
    deadline = time.monotonic() + timeout
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        if pred(buf):
            return buf
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
    return buf


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def content_chunks(buf):
    n, finish = 0, None
    for line in buf.decode(errors="replace").splitlines():
        if not line.startswith("data: {"):
            continue
        d = json.loads(line[6:])
        if "error" in d:
            return n, "error: " + d["error"]["message"]
        ch = d["choices"][0] if d.get("choices") else None
        if ch and ch.get("delta", {}).get("content"):
            n += 1
        if ch and ch.get("finish_reason"):
            finish = ch["finish_reason"]
    return n, finish


def victim_survives(role, victim_rid, attacker_rid):
    victim = open_stream(role.port, victim_rid)
    first = read_until(victim, lambda b: b.count(b"data: {") >= 3)
    check(b" 200 " in first.split(b"\r\n", 1)[0], "victim's stream started")
    # The attacker sends the victim's id and resets its connection while its
    # own request is in flight (before it could be refused), at several delays.
    for delay in (0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05):
        att = open_stream(role.port, attacker_rid, n_tokens=50)
        time.sleep(delay)
        reset(att)
        time.sleep(0.1)
    rest = read_until(victim, lambda b: b"data: [DONE]" in b, timeout=120)
    victim.close()
    n, finish = content_chunks(first + rest)
    return n, finish


def main():
    models = A.synth_model()
    role = A.Role("all", {
        "log": {"level": "debug", "format": "text"},
        "pool": {"model_dirs": [models], "heartbeat_interval": "300ms", "cpu_memory": "2GiB"},
        "orchestrator": {"api_keys": [A.API_KEY],
                         "models": [{"name": "tiny", "file": "tiny.gguf", "ctx": 512, "slots": 4,
                                     "keep_alive": -1, "min_replicas": 1}]}}, name="all")
    if not role.wait_log(r"worker w-[0-9a-f]+ ready", timeout=60):
        A.fail("no worker")

    n, finish = victim_survives(role, "victim-1", "victim-1")
    check(finish == "length" and n > 20,
          "a second client with the victim's X-Request-Id resetting 7 times: the victim's stream ends "
          "normally (%d chunks, finish %s)" % (n, finish))
    # Ids the server makes must not be predictable from one's own (before: a
    # fixed per-process prefix and an invertible counter mix).
    ids = []
    for _ in range(8):
        st, hdrs, _ = role.request("GET", "/v1/models", key=A.API_KEY)
        ids.append(hdrs.get("x-request-id", ""))
    check(all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and
          len({i[:8] for i in ids}) == len(ids) and len({i[-8:] for i in ids}) == len(ids),
          "server-made request ids share no prefix or suffix (%s, %s, ...)" % (ids[0], ids[1]))

    # Claiming an id first does not lock others out.
    holder = open_stream(role.port, "claimed-7", n_tokens=100)
    read_until(holder, lambda b: b.count(b"data: {") >= 2)
    st, hdrs, body = role.request("POST", "/v1/chat/completions", A.chat_body(max_tokens=4), key=A.API_KEY,
                                  headers={"X-Request-Id": "claimed-7"})
    check(st == 200, "a later client with an id another client holds is served (%s %s)" % (st, str(body)[:200]))
    check(hdrs.get("x-request-id") == "claimed-7", "its label is echoed back")
    check("claimed-7" not in body["id"] and re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body["id"]),
          "the completion id is random, not the label (%s)" % body["id"])
    reset(holder)

    jobs = re.findall(r"\[([^\]]+)\] assigned to \S+ \(job (\S+),", role.log())
    check(jobs and all(rid not in job for rid, job in jobs) and
          all(re.fullmatch(r"[0-9a-f]{32}", job) for _, job in jobs),
          "job ids on the worker are random and never contain the request id (%d seen)" % len(jobs))
    check(len({job for _, job in jobs}) == len(jobs), "no job id was used twice")

    for bad in ("a b", "x" * 65, "semi;colon", "caf\u00e9", "new\u2028line"):
        try:
            st, _, body = role.request("GET", "/v1/models", key=A.API_KEY, headers={"X-Request-Id": bad})
        except UnicodeEncodeError:
            st, body = None, None
            raw = ("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nX-Request-Id: " % A.API_KEY
                   ).encode() + bad.encode() + b"\r\n\r\n"
            got, _, _ = A.raw_exchange(role.port, raw, timeout=3)
            st = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else None
            body = got.decode(errors="replace")
        check(st == 400 and "X-Request-Id" in str(body), "X-Request-Id %r: 400 naming the header" % bad[:20])
    st, _, _ = role.request("GET", "/v1/models", key=A.API_KEY, headers={"X-Request-Id": "trace.1:span_2-x"})
    check(st == 200, "a label of [A-Za-z0-9._:-] is accepted (%s)" % st)
    check(role.stop() == 0, "exits cleanly")


if __name__ == "__main__":
    A.run_main(main)
