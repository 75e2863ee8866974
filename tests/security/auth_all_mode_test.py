#!/usr/bin/env python3
"""Issue 9 items 1, 5 and 7: nobody takes over an all-mode process, and keys reach only their routes.

Attacks (each must fail now), against `llorch --role=all` with client API keys
and no cluster token, as the README once set it up:
  - read GET /v2/state (worker tokens), start or kill workers (POST /v2/workers,
    DELETE /v2/workers/{id}), register a fake pool (POST /v2/pools/register),
    read /metrics, all without a credential and with a client key;
  - read /v2/cluster or unload a model with a client key;
  - make the server buffer a large body before it says no: an 8 MB
    Content-Length without a credential (or to a route that does not exist)
    must get its 401/403/404/405 at once, the connection closed, no body read.
Then the same process with admin keys and a cluster token: operator keys reach
/v2/*, the cluster token reaches /metrics and the pool protocol, client keys
reach /v1/* only, and the state document never carries a worker token.

usage: auth_all_mode_test.py LLORCH_BINARY
"""
import sys
import time

import auth_common as A
from auth_common import check


def start_all(extra_orch=None):
    models = A.synth_model()
    orch = {"api_keys": [A.API_KEY],
            "models": [{"name": "tiny", "file": "tiny.gguf", "ctx": 256, "slots": 2, "keep_alive": -1,
                        "min_replicas": 1}]}
    orch.update(extra_orch or {})
    role = A.Role("all", {"pool": {"model_dirs": [models], "heartbeat_interval": "300ms",
                                   "cpu_memory": "2GiB"},
                          "orchestrator": orch}, name="all")
    m = role.wait_log(r"worker (w-[0-9a-f]+) ready", timeout=60)
    if not m:
        A.fail("the all-mode process did not start its worker")
    return role, m.group(1)


def attacks_without_cluster_token():
    role, wid = start_all()
    p = role.port
    # The client still works (nothing below may break it).
    st, _, body = role.request("POST", "/v1/chat/completions", A.chat_body(), key=A.API_KEY)
    check(st == 200, "a client with its key is served (%s)" % st)

    for key, want, who in ((None, 401, "no credential"), (A.API_KEY, 403, "a client key")):
        st, _, body = role.request("GET", "/v2/state", key=key)
        check(st == want and "workers" not in str(body), "GET /v2/state with %s: %d, no state" % (who, st))
        st, _, _ = role.request("DELETE", "/v2/workers/" + wid, key=key)
        check(st == want, "DELETE /v2/workers/%s with %s: %d" % (wid, who, st))
        st, _, _ = role.request("POST", "/v2/workers", {"model": "tiny", "devices": ["cpu"]}, key=key)
        check(st == want, "POST /v2/workers with %s: %d" % (who, st))
        fake = A.state_doc("evil", "http://127.0.0.1:9", workers=[A.worker_obj("w-1", "http://127.0.0.1:9", "x")])
        st, _, _ = role.request("POST", "/v2/pools/register", fake, key=key)
        check(st == want, "POST /v2/pools/register (a fake pool) with %s: %d" % (who, st))
        st, _, _ = role.request("GET", "/metrics", key=key)
        check(st == want, "GET /metrics with %s: %d" % (who, st))
    st, _, body = role.request("GET", "/v2/cluster", key=A.API_KEY)
    check(st == 403, "GET /v2/cluster with a client key: 403 (%s)" % st)
    st, _, _ = role.request("POST", "/v2/models/tiny/unload", {}, key=A.API_KEY)
    check(st == 403, "POST /v2/models/tiny/unload with a client key: 403 (%s)" % st)
    st, _, _ = role.request("GET", "/v2/cluster")
    check(st == 401, "GET /v2/cluster without a key: 401 (%s)" % st)
    # The worker is still alive and serves.
    check(role.log().count("worker %s" % wid) >= 1 and "DELETE from" not in role.log(),
          "the worker was never told to stop")
    st, _, body = role.request("POST", "/v1/chat/completions", A.chat_body(), key=A.API_KEY)
    check(st == 200, "the client is still served after the attacks (%s)" % st)

    # Decided at the headers: a large declared body gets its 401/403 (or, for no
    # route at all, its 404/405) before any of it is read.
    for path, key, want in (("/v2/pools/register", None, b" 401 "), ("/v1/chat/completions", None, b" 401 "),
                            ("/v2/pools/register", A.API_KEY, b" 403 "),
                            ("/v2/no-such-route", None, b" 404 "), ("/v1/models", None, b" 405 ")):
        head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 8000000\r\n%s\r\n" % (path, "Authorization: Bearer %s\r\n" % key if key else ""))
        got, closed, secs = A.raw_exchange(p, head.encode(), timeout=5)
        first = got.split(b"\r\n", 1)[0]
        check(want in first and closed and secs < 2.0,
              "POST %s, 8 MB declared, %s, no body sent: %r in %.2f s, connection closed=%s"
              % (path, "client key" if key else "no key", first.decode(errors="replace"), secs, closed))
    check(role.stop() == 0, "all-mode exits cleanly")


def with_admin_and_cluster_token():
    role, wid = start_all({"admin_keys": [A.ADMIN_KEY], "cluster_token": A.CLUSTER_TOKEN})
    st, _, c = role.request("GET", "/v2/cluster", key=A.ADMIN_KEY)
    check(st == 200 and len(c["workers"]) == 1, "GET /v2/cluster with an operator key: 200")
    st, _, _ = role.request("GET", "/v2/cluster", key=A.CLUSTER_TOKEN)
    check(st == 403, "GET /v2/cluster with the cluster token: 403 (%s)" % st)
    st, _, _ = role.request("GET", "/v2/cluster", key=A.API_KEY)
    check(st == 403, "GET /v2/cluster with a client key: 403 (%s)" % st)
    for key, who in ((A.ADMIN_KEY, "an operator key"), (A.CLUSTER_TOKEN, "the cluster token")):
        st, _, text = role.request("GET", "/metrics", key=key)
        check(st == 200 and "llorch_orch_requests_total" in text, "GET /metrics with %s: 200" % who)
    st, _, _ = role.request("GET", "/metrics", key=A.API_KEY)
    check(st == 403, "GET /metrics with a client key: 403 (%s)" % st)
    st, _, _ = role.request("GET", "/v1/models", key=A.ADMIN_KEY)
    check(st == 200, "an operator key also reaches /v1/models (%s)" % st)
    st, _, doc = role.request("GET", "/v2/state", key=A.CLUSTER_TOKEN)
    check(st == 200 and doc["workers"] and all(w["token"] is None for w in doc["workers"]),
          "GET /v2/state with the cluster token: no worker token in the state document")
    st, _, one = role.request("GET", "/v2/workers/" + wid, key=A.CLUSTER_TOKEN)
    check(st == 200 and len(one["worker"]["token"] or "") == 64,
          "GET /v2/workers/{id} with the cluster token: the one worker's token")
    st, _, _ = role.request("POST", "/v2/models/tiny/load", {}, key=A.ADMIN_KEY)
    check(st == 202, "POST /v2/models/tiny/load with an operator key: 202 (%s)" % st)
    st, _, _ = role.request("POST", "/v2/models/tiny/load", {}, key=A.API_KEY)
    check(st == 403, "... with a client key: 403 (%s)" % st)
    st, _, body = role.request("POST", "/v1/chat/completions", A.chat_body(), key=A.API_KEY)
    check(st == 200, "the client is served (%s)" % st)
    check(role.stop() == 0, "all-mode exits cleanly")


def main():
    attacks_without_cluster_token()
    with_admin_and_cluster_token()


if __name__ == "__main__":
    A.run_main(main)
