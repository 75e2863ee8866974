#!/usr/bin/env python3
"""Issue 9 item 8: the smaller ones.

Against a real orchestrator (with a scripted pool and worker in this process)
and a real pool:
  - a 400 names the field of this request, never one left over from an
    earlier request (before: 'prompt' errors said param "presence_penalty");
  - NUL in a string field (escaped or raw) is a 400 naming the field: a model
    or file name "tiny.gguf\\u0000.x" never reaches a file path;
  - invalid UTF-8 is a 400 naming the field; a lone surrogate gets a message
    that says so (not "not valid JSON");
  - a pool event's model name with a newline cannot forge a log line;
  - the worker callback answers nothing but 401 before its token is checked;
    worker ids are random; a DELETE is logged with the caller's address;
  - a client-facing 502 carries no worker URL (details go to the log);
  - a client that stops reading a stream has its job cancelled once 8 MiB are
    queued on the orchestrator's relay.

usage: auth_inputs_test.py LLORCH_BINARY
"""
import http.server
import json
import re
import socket
import threading
import time

import auth_common as A
from auth_common import check

FORGED = "2026-01-01T00:00:00.000Z ERROR orch         FORGED LINE"


class FakeWorker(http.server.BaseHTTPRequestHandler):
    """/v2/execute streams big token events until cancelled; /v2/jobs/{id}/cancel is recorded."""
    protocol_version = "HTTP/1.1"
    cancels = []
    executes = []
    sent_tokens = [0]
    TOKEN_TEXT = "y" * 60000
    MAX_TOKENS = 1000

    def log_message(self, *a):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        m = re.fullmatch(r"/v2/jobs/([^/]+)/cancel", self.path)
        if m:
            FakeWorker.cancels.append((m.group(1), time.monotonic()))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        job = json.loads(body)["job_id"]
        FakeWorker.executes.append(job)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ev = lambda name, d: self.chunk(("event: %s\ndata: %s\n\n" % (name, json.dumps(d))).encode())
        try:
            ev("started", {"job_id": job, "slot": 0, "prompt_tokens": 5, "max_tokens": self.MAX_TOKENS,
                           "queue_ms": 0})
            finish = "length"
            for i in range(self.MAX_TOKENS):
                if any(j == job for j, _ in FakeWorker.cancels):
                    finish = "cancelled"
                    break
                ev("token", {"job_id": job, "index": i, "text": self.TOKEN_TEXT, "token_ids": [i + 10]})
                FakeWorker.sent_tokens[0] += 1
            ev("end", {"job_id": job, "finish_reason": finish, "prompt_tokens": 5, "completion_tokens": i})
            self.chunk(b"")
        except OSError:
            pass


def orchestrator_part():
    fw, fw_port = A.serve(FakeWorker)
    dead = A.free_port()
    orch = A.Role("orchestrator", {
        "log": {"level": "info", "format": "text"},
        "orchestrator": {"api_keys": [A.API_KEY], "admin_keys": [A.ADMIN_KEY], "cluster_token": A.CLUSTER_TOKEN,
                         "retry_max": 0, "queue": {"timeout": "3s"},
                         "models": [{"name": "tiny", "file": "tiny.gguf", "keep_alive": -1},
                                    {"name": "big", "file": "big.gguf", "keep_alive": -1}]}}, name="orch")

    # ---- the error param is this request's ----
    st, _, b = orch.request("POST", "/v1/chat/completions", A.chat_body(presence_penalty=5), key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "presence_penalty", "a bad presence_penalty names it (%s)"
          % b["error"]["param"])
    st, _, b = orch.request("POST", "/v1/completions", {"model": "tiny", "prompt": 5}, key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "prompt",
          "the next request's bad prompt names 'prompt', not the earlier field (%s)" % b["error"]["param"])
    st, _, b = orch.request("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 3}]},
                            key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "messages[0].content", "a bad content names messages[0].content (%s)"
          % b["error"]["param"])

    # ---- NUL, UTF-8, surrogates ----
    raw = b'{"model":"tiny","messages":[{"role":"user","content":"a\\u0000b"}]}'
    st, _, b = orch.request("POST", "/v1/chat/completions", raw, key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "messages[0].content" and "NUL" in b["error"]["message"],
          "\\u0000 in content: 400 naming messages[0].content (%s)" % b["error"]["message"])
    raw = b'{"model":"tiny\\u0000.x","messages":[{"role":"user","content":"a"}]}'
    st, _, b = orch.request("POST", "/v1/chat/completions", raw, key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "model", "\\u0000 in model: 400 naming model (%s %s)"
          % (st, b["error"]["message"]))
    raw = b'{"model":"tiny","messages":[{"role":"user","content":"a\x00b"}]}'
    st, _, b = orch.request("POST", "/v1/chat/completions", raw, key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "messages[0].content", "a raw NUL byte in content: 400 naming it")
    raw = b'{"model":"tiny","messages":[{"role":"user","content":"caf\xc3\xa9 \xff\xfe"}]}'
    st, _, b = orch.request("POST", "/v1/chat/completions", raw, key=A.API_KEY)
    check(st == 400 and b["error"]["param"] == "messages[0].content" and "UTF-8" in b["error"]["message"],
          "invalid UTF-8 in content: 400 naming it (%s)" % b["error"]["message"])
    raw = b'{"model":"tiny","prompt":"x\\ud800y"}'
    st, _, b = orch.request("POST", "/v1/completions", raw, key=A.API_KEY)
    check(st == 400 and "surrogate" in b["error"]["message"] and "not valid JSON" not in b["error"]["message"]
          and b["error"]["param"] == "prompt", "a lone surrogate: a clear message (%s)" % b["error"]["message"])
    raw = b'{"model":"tiny","prompt":"\\ud83d\\ude00 ok"}'
    st, _, b = orch.request("POST", "/v1/completions", raw, key=A.API_KEY, timeout=10)
    check(st != 400, "a surrogate pair is fine (%s)" % st)

    # ---- a pool event cannot forge a log line ----
    fp_url = "http://127.0.0.1:%d" % A.free_port()
    st, _, _ = orch.request("POST", "/v2/pools/register", A.state_doc("fp", fp_url, workers=[
        A.worker_obj("w-dead", "http://127.0.0.1:%d" % dead, "tok")]), key=A.CLUSTER_TOKEN)
    check(st == 200, "a scripted pool registers with the cluster token (%s)" % st)
    evil = A.worker_obj("w-evil", "http://127.0.0.1:%d" % dead, None, model="x\n" + FORGED, state="starting")
    st, _, _ = orch.request("POST", "/v2/pools/fp/events",
                            {"boot_id": "b00t", "seq": 2, "events": [{"type": "worker_started", "worker": evil}]},
                            key=A.CLUSTER_TOKEN)
    check(st == 200, "an event with a newline in the model name is accepted (%s)" % st)
    orch.wait_log(r"worker w-evil", timeout=5)
    forged = [l for l in orch.log().splitlines() if l.startswith(FORGED[:30])]
    check(not forged and "\\n" + FORGED[:24] in orch.log(),
          "the newline is escaped in the text log: no forged line (%d found)" % len(forged))

    # ---- a client-facing 502 names no worker URL ----
    st, _, b = orch.request("POST", "/v1/chat/completions", A.chat_body(), key=A.API_KEY, timeout=20)
    msg = str(b)
    check(st == 502 and "127.0.0.1" not in msg and str(dead) not in msg and "request id" in msg,
          "a dead worker: 502 without its URL (%s)" % msg[:200])
    check(re.search(r"request failed on fp/w-dead: .*127\.0\.0\.1:%d" % dead, orch.log()) is not None,
          "... the details are in the log")

    # ---- a client that stops reading: its job is cancelled at 8 MiB queued ----
    st, _, _ = orch.request("POST", "/v2/pools/register", A.state_doc("fw", fp_url, boot="b2", models=("big",), workers=[
        A.worker_obj("w-big", "http://127.0.0.1:%d" % fw_port, "tok", model="big")]), key=A.CLUSTER_TOKEN)
    check(st == 200, "a scripted pool with a fast worker registers (%s)" % st)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", orch.port))
    body = json.dumps(A.chat_body(model="big", max_tokens=1000, stream=True)).encode()
    s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (A.API_KEY, len(body))).encode() + body)
    head = s.recv(256)  # the response head, then this client reads nothing more
    check(head.startswith(b"HTTP/1.1 200"), "the slow client's stream started")
    t0 = time.monotonic()
    A.wait_for("the cancel of the slow client's job", lambda: FakeWorker.cancels, timeout=30)
    sent = FakeWorker.sent_tokens[0]
    check(FakeWorker.cancels and sent < FakeWorker.MAX_TOKENS,
          "the orchestrator cancelled the job of a client that stopped reading after %d tokens of 60 kB "
          "(%.1f s)" % (sent, time.monotonic() - t0))
    check(re.search(r"is not reading \(\d+ bytes queued\)", orch.log()) is not None, "... and logged why")
    s.close()
    fw.shutdown()
    check(orch.stop() == 0, "the orchestrator exits cleanly")


def pool_part():
    models = A.synth_model()
    pool = A.Role("pool", {"pool": {"name": "p1", "model_dirs": [models], "cpu_memory": "2GiB",
                                    "cluster_token": A.CLUSTER_TOKEN}}, name="pool")
    st, _, b = pool.request("POST", "/v2/workers/w-1/ready", {"event": "ready", "url": "http://127.0.0.1:1"})
    check(st == 401 and "no running worker" not in str(b),
          "the worker callback for an unknown id without a token: 401, nothing about which ids exist (%s)" % st)
    raw = b'{"model":"tiny","file":"tiny.gguf\\u0000.x","devices":["cpu"],"ctx":128,"slots":1}'
    st, _, b = pool.request("POST", "/v2/workers", raw, key=A.CLUSTER_TOKEN)
    check(st == 400 and b["error"]["param"] == "file", "a file name with \\u0000: 400 naming 'file' (%s)"
          % b["error"]["message"])
    st, _, doc = pool.request("GET", "/v2/state", key=A.CLUSTER_TOKEN)
    check(st == 200 and doc["workers"] == [], "no worker was started for it")
    st, _, b = pool.request("POST", "/v2/workers", {"model": "tiny", "devices": ["cpu"], "ctx": 128, "slots": 1},
                            key=A.CLUSTER_TOKEN)
    check(st == 201, "a worker starts (%s)" % st)
    wid = b["worker"]["id"]
    check(re.fullmatch(r"w-[0-9a-f]{16}", wid) is not None, "its id is random (%s)" % wid)
    A.wait_for("ready", lambda: pool.request("GET", "/v2/workers/" + wid, key=A.CLUSTER_TOKEN)[2]["worker"]["state"]
               == "ready", timeout=60)
    st, _, _ = pool.request("POST", "/v2/workers/%s/ready" % wid, {"event": "failed", "reason": "x"}, key="wrong")
    check(st == 401, "its callback with a wrong token: 401 (%s)" % st)
    st, _, b = pool.request("GET", "/v2/workers/" + wid, key=A.CLUSTER_TOKEN)
    check(b["worker"]["state"] == "ready", "... and the worker is still ready")
    st, _, _ = pool.request("DELETE", "/v2/workers/" + wid, key=A.CLUSTER_TOKEN)
    check(st == 202, "DELETE with the cluster token: 202 (%s)" % st)
    check(pool.wait_log(r"DELETE from 127\.0\.0\.1:\d+", timeout=5) is not None, "the DELETE is logged with the caller's address")
    check(pool.stop() == 0, "the pool exits cleanly")


def main():
    orchestrator_part()
    pool_part()


if __name__ == "__main__":
    A.run_main(main)
