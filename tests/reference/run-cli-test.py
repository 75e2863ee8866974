#!/usr/bin/env python3
"""`llorch run` end to end on a small synthesized model (ctest run_cli).

Checks the JSON stream's shape, max-tokens, seeded determinism, stop strings
that cut the text (also across tokens), that text mode prints the same text
as the JSON stream, and clear errors for bad flags and files.

    run-cli-test.py LLORCH_BIN
"""
import json
import os
import subprocess
import sys
import tempfile

BIN = sys.argv[1]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def llorch(*args, ok=True):
    r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300)
    if ok and r.returncode != 0:
        raise SystemExit(f"llorch {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def run_json(model, *args):
    out = llorch("run", "--model", model, "--json", "--threads", "2", *args).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    return lines[0], [l for l in lines[1:-1]], lines[-1]


with tempfile.TemporaryDirectory() as d:
    model = os.path.join(d, "m.gguf")
    llorch("synth", "--arch", "qwen2", "--layers", "2", "--embd", "128", "--ff", "256",
           "--heads", "4", "--kv-heads", "2", "--type", "f16", "--seed", "3", "-o", model)
    prompt = "Once upon a time"

    # ---- JSON stream shape and max tokens ----
    head, toks, done = run_json(model, "--prompt", prompt, "--temp", "0", "--max-tokens", "12",
                                "--ignore-eos", "--logprobs", "3")
    check(isinstance(head.get("prompt"), list) and len(head["prompt"]) > 0, "first line carries the prompt ids")
    real = [t for t in toks if t["id"] >= 0]
    check(len(real) == 12, f"--max-tokens 12 gives 12 tokens (got {len(real)})")
    check(done.get("done") is True and done.get("reason") == "length" and done.get("n_gen") == 12,
          f"last line says done, reason length, n_gen 12 ({done})")
    check(all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 3 for t in real),
          "every token has logprob <= 0 and 3 alternatives")
    # greedy: the chosen token is the most likely one, and its logprob is the top one's
    check(all(t["top_logprobs"][0]["id"] == t["id"] and abs(t["top_logprobs"][0]["logprob"] - t["logprob"]) < 1e-6
              for t in real), "greedy picks the top alternative")
    check(all(a["logprob"] >= b["logprob"] for t in real for a, b in zip(t["top_logprobs"], t["top_logprobs"][1:])),
          "alternatives are sorted by logprob")
    greedy_ids = [t["id"] for t in real]

    # ---- every line is valid UTF-8 JSON, even when alternatives are byte tokens ----
    raw = subprocess.run([BIN, "run", "--model", model, "--prompt", prompt, "--temp", "1.2", "--seed", "1",
                          "--max-tokens", "48", "--ignore-eos", "--json", "--logprobs", "20"],
                         capture_output=True, timeout=300).stdout
    try:
        [json.loads(l) for l in raw.decode("utf-8", errors="strict").splitlines() if l.strip()]
        ok_utf8 = True
    except (UnicodeDecodeError, ValueError) as e:
        ok_utf8 = False
        print(e)
    check(ok_utf8, "--json --logprobs 20 output is valid UTF-8 JSON")
    json_text = "".join(t["text"] for t in toks)

    # ---- text mode prints the same text ----
    r = llorch("run", "--model", model, "--prompt", prompt, "--temp", "0", "--max-tokens", "12",
               "--ignore-eos", "--threads", "2")
    check(r.stdout.rstrip("\n") == json_text, "text mode prints what the JSON stream released")
    check("generated" in r.stderr, "text mode prints a summary on stderr")

    # ---- the same ids when given as --prompt-ids ----
    _, toks2, _ = run_json(model, "--prompt-ids", " ".join(map(str, head["prompt"])), "--temp", "0",
                           "--max-tokens", "12", "--ignore-eos")
    check([t["id"] for t in toks2 if t["id"] >= 0] == greedy_ids, "--prompt-ids gives the same continuation")

    # ---- seeded sampling is deterministic ----
    def sampled(seed):
        _, t, _ = run_json(model, "--prompt", prompt, "--temp", "1.5", "--top-k", "0", "--top-p", "1",
                           "--min-p", "0", "--seed", str(seed), "--max-tokens", "24", "--ignore-eos")
        return [x["id"] for x in t if x["id"] >= 0]
    a, b, c = sampled(5), sampled(5), sampled(6)
    check(a == b, "same seed, same tokens")
    check(a != c, "another seed, other tokens")
    check(a != greedy_ids[:len(a)], "temperature 1.5 is not greedy")

    # ---- stop strings ----
    full = llorch("run", "--model", model, "--prompt", prompt, "--temp", "0", "--max-tokens", "40",
                  "--ignore-eos", "--threads", "2").stdout.rstrip("\n")
    if len(full) >= 8:
        # a stop string from the middle of the text, long enough to span tokens
        stop = full[len(full) // 2: len(full) // 2 + 5]
        _, st, sd = run_json(model, "--prompt", prompt, "--temp", "0", "--max-tokens", "40",
                             "--ignore-eos", "--stop", stop)
        text = "".join(t["text"] for t in st)
        check(sd.get("reason") == "stop", f"stop string {stop!r} ends generation (reason {sd.get('reason')})")
        check(text == full[:full.index(stop)], "the text stops right before the stop string")
    else:
        check(False, f"model generated too little text to test stop strings: {full!r}")

    # ---- --chat: the synth vocabulary's own (ChatML) template, its special tokens parsed ----
    want = [int(x) for x in llorch("tokenize", "--model", model, "--special", "--text",
                                  f"<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
                                  "<|im_start|>assistant\n").stdout.split()]
    chead, _, _ = run_json(model, "--prompt", prompt, "--chat", "--system", "Be brief", "--max-tokens", "1")
    check(chead["prompt"] == want, f"--chat --system renders ChatML and parses its special tokens ({chead['prompt'][:6]}...)")

    # ---- errors ----
    for args, needle in [
        (["--prompt", "x", "--temp", "-1"], "temperature"),
        (["--prompt", "x", "--top-p", "1.5"], "top_p"),
        (["--prompt", "x", "--max-tokens", "abc"], "--max-tokens"),
        (["--prompt", "x", "--logprobs", "21"], "--logprobs"),
        (["--prompt-ids", "1 2 99999999"], "--prompt-ids"),
        (["--prompt", "x", "--bogus", "1"], "--bogus"),
        (["--prompt", "x", "--chat", "--chat-template", "/nonesuch/t.jinja"], "/nonesuch/t.jinja"),
        (["--prompt", "x", "--system", "s"], "--chat"),
    ]:
        r = llorch("run", "--model", model, *args, ok=False)
        check(r.returncode != 0 and needle in r.stderr, f"{' '.join(args)}: error naming {needle} ({r.stderr.strip()})")
    r = llorch("run", "--model", os.path.join(d, "missing.gguf"), "--prompt", "x", ok=False)
    check(r.returncode == 1 and "missing.gguf" in r.stderr, f"a missing file is named ({r.stderr.strip()})")
    r = llorch("run", "--prompt", "x", ok=False)
    check(r.returncode == 2 and "--model" in r.stderr, "no --model is a usage error")

print(f"\n{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
