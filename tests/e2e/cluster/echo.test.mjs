// Completions' echo (with the prompt's logprobs) and suffix (fill-in-the-middle)
// with the official openai client, against a worker alone and through the
// orchestrator (--role=all: orchestrator, local pool, real workers), on
// synthesized models: "tiny" (no FIM tokens) and "fim" (llorch synth --fim:
// Qwen2.5-Coder's <|fim_prefix|>/<|fim_suffix|>/<|fim_middle|>).
//
// echo + logprobs + max_tokens 0 is lm-evaluation-harness' loglikelihood
// path: the text is the prompt, choices[].logprobs covers every prompt token
// (the first with a null logprob), nothing is generated. The prompt logprobs
// are checked against the model itself: the logprob of the token greedy
// decoding picks after a prefix equals that token's prompt logprob when the
// prefix plus it is echoed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import OpenAI from 'openai';
import { ADMIN_KEY, API_KEY, freePort, startRole, synthModel, tempDir, waitFor } from './lib.mjs';
import { startWorker } from '../worker/helpers.mjs';

let tmp, all, worker, fimWorker;
const targets = {};

before(async () => {
  tmp = tempDir('llorch-echo-e2e-');
  const models = path.join(tmp.dir, 'models');
  mkdirSync(models, { recursive: true });
  const tiny = synthModel(models, 'tiny');
  const fim = synthModel(models, 'fim', ['--fim']);
  worker = await startWorker({ model: tiny, args: ['--slots', '2', '--ctx', '512'] });
  fimWorker = await startWorker({ model: fim, args: ['--slots', '1', '--ctx', '512'] });
  const port = await freePort();
  all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [models], heartbeat_interval: '300ms', cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      admin_keys: [ADMIN_KEY],
      models: [
        { name: 'tiny', file: 'tiny.gguf', ctx: 512, slots: 2, keep_alive: -1 },
        { name: 'fim', file: 'fim.gguf', ctx: 512, slots: 1, keep_alive: -1 },
      ],
    },
  }, { dir: tmp.dir, name: 'all' });
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  const opts = { apiKey: API_KEY, maxRetries: 0, timeout: 60000 };
  targets.worker = { tiny: new OpenAI({ ...opts, baseURL: `${worker.url}/v1` }),
    fim: new OpenAI({ ...opts, baseURL: `${fimWorker.url}/v1` }) };
  const orch = new OpenAI({ ...opts, baseURL: `${all.url}/v1` });
  targets.orchestrator = { tiny: orch, fim: orch };
});

after(async () => {
  if (all) await all.stop();
  if (worker) assert.equal((await worker.stop()).code, 0);
  if (fimWorker) assert.equal((await fimWorker.stop()).code, 0);
  tmp?.cleanup();
});

const PROMPT = 'The quick brown fox jumps over the lazy dog.';

function checkPromptLogprobs(lp, prompt, n, topN) {
  assert.equal(lp.tokens.length, n);
  assert.equal(lp.token_logprobs.length, n);
  assert.equal(lp.top_logprobs.length, n);
  assert.equal(lp.text_offset.length, n);
  assert.equal(lp.tokens.join(''), prompt, 'the tokens spell the prompt (byte-level vocabulary)');
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  let off = 0;
  for (let i = 0; i < n; i++) {
    assert.equal(lp.text_offset[i], off, `text_offset[${i}]`);
    off += Buffer.byteLength(lp.tokens[i]);
    if (i === 0) continue;
    const l = lp.token_logprobs[i];
    assert.ok(Number.isFinite(l) && l <= 0, `token_logprobs[${i}] = ${l}`);
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(top.length >= 1 && top.length <= topN, `top_logprobs[${i}] has ${top.length}`);
    // the best alternative is at least as likely as the prompt's token
    assert.ok(Math.max(...top) >= l - 1e-6, `top_logprobs[${i}] below the token's own`);
  }
}

for (const where of ['worker', 'orchestrator']) {
  test(`${where}: echo + logprobs 2 + max_tokens 0: the prompt's logprobs only`, async () => {
    const c = targets[where].tiny;
    const r = await c.completions.create({ model: 'tiny', prompt: PROMPT, echo: true, logprobs: 2, max_tokens: 0 });
    assert.equal(r.choices.length, 1);
    const ch = r.choices[0];
    assert.equal(ch.text, PROMPT);
    assert.equal(ch.finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, 0);
    assert.ok(r.usage.prompt_tokens > 5);
    checkPromptLogprobs(ch.logprobs, PROMPT, r.usage.prompt_tokens, 2);

    // streamed: the first chunk carries the prompt and its logprobs
    const chunks = [];
    for await (const k of await c.completions.create({ model: 'tiny', prompt: PROMPT, echo: true, logprobs: 2,
      max_tokens: 0, stream: true })) chunks.push(k);
    const withText = chunks.filter((k) => k.choices.length && k.choices[0].text);
    assert.equal(withText.length, 1);
    assert.equal(withText[0].choices[0].text, PROMPT);
    assert.deepEqual(withText[0].choices[0].logprobs, ch.logprobs);
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'length');
  });

  test(`${where}: echo with generation: prompt then the same greedy text and logprobs`, async () => {
    const c = targets[where].tiny;
    const plain = await c.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 1 });
    const r = await c.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 1,
      echo: true });
    const ch = r.choices[0], pl = plain.choices[0];
    assert.equal(ch.text, PROMPT + pl.text);
    // a prompt in the prefix cache: a plain request takes it from there,
    // echo computes every position anyway (it needs their logits), with the
    // same result as computed from nothing
    const long = PROMPT.repeat(8);
    const cold = await c.completions.create({ model: 'tiny', prompt: long, echo: true, logprobs: 1, max_tokens: 0 });
    await c.completions.create({ model: 'tiny', prompt: long, max_tokens: 1 });
    const warm = await c.completions.create({ model: 'tiny', prompt: long, max_tokens: 1 });
    assert.ok(warm.usage.prompt_tokens_details.cached_tokens > 0, 'the long prompt was not cached');
    const again = await c.completions.create({ model: 'tiny', prompt: long, echo: true, logprobs: 1, max_tokens: 0 });
    assert.equal(again.usage.prompt_tokens_details?.cached_tokens ?? 0, 0);
    assert.deepEqual(again.choices[0].logprobs, cold.choices[0].logprobs);
    const np = r.usage.prompt_tokens, ng = r.usage.completion_tokens;
    assert.equal(ng, plain.usage.completion_tokens);
    assert.equal(ch.logprobs.tokens.length, np + pl.logprobs.tokens.length);
    assert.deepEqual(ch.logprobs.tokens.slice(np), pl.logprobs.tokens);
    assert.deepEqual(ch.logprobs.text_offset.slice(np), pl.logprobs.text_offset.map((o) => o + PROMPT.length));
    for (let i = 0; i < pl.logprobs.token_logprobs.length; i++)
      assert.ok(Math.abs(ch.logprobs.token_logprobs[np + i] - pl.logprobs.token_logprobs[i]) < 1e-3);

    // the model scores the greedy continuation's first token the same way
    // as a prompt token: echo the prompt plus that token
    const first = pl.logprobs.tokens[0];
    const e = await c.completions.create({ model: 'tiny', prompt: PROMPT + first, echo: true, logprobs: 0, max_tokens: 0 });
    const lp = e.choices[0].logprobs;
    assert.equal(lp.tokens.at(-1), first);
    assert.ok(Math.abs(lp.token_logprobs.at(-1) - pl.logprobs.token_logprobs[0]) < 1e-3,
      `prompt logprob ${lp.token_logprobs.at(-1)} vs generated ${pl.logprobs.token_logprobs[0]}`);

    // streamed echo with generation: the prompt first, then the same text
    let text = '';
    const first2 = [];
    for await (const k of await c.completions.create({ model: 'tiny', prompt: PROMPT, max_tokens: 6, temperature: 0,
      echo: true, stream: true })) {
      if (k.choices.length && k.choices[0].text) { text += k.choices[0].text; first2.push(k.choices[0].text); }
    }
    assert.equal(first2[0], PROMPT);
    assert.equal(text, PROMPT + pl.text);
  });

  test(`${where}: suffix fills the middle on a FIM model; bad echo/suffix input is a 400 naming the field`, async () => {
    const t = targets[where];
    // the FIM prompt is [PRE] prefix [SUF] suffix [MID]: 3 tokens more than
    // prefix and suffix alone
    const count = async (p) => (await t.fim.completions.create({ model: 'fim', prompt: p, echo: true, max_tokens: 0 }))
      .usage.prompt_tokens;
    const pre = 'def add(a, b):\n    ', suf = '\n    return c\n';
    const r = await t.fim.completions.create({ model: 'fim', prompt: pre, suffix: suf, max_tokens: 4, temperature: 0 });
    assert.equal(r.usage.prompt_tokens, (await count(pre)) + (await count(suf)) + 3);
    assert.ok(r.usage.completion_tokens >= 1);

    const bad = async (client, body, param) => {
      await assert.rejects(client.completions.create(body), (e) => {
        assert.equal(e.status, 400, JSON.stringify(e.error));
        assert.equal(e.param ?? e.error?.param, param, JSON.stringify(e.error));
        return true;
      });
    };
    await bad(t.tiny, { model: 'tiny', prompt: pre, suffix: suf }, 'suffix');
    await bad(t.tiny, { model: 'tiny', prompt: pre, max_tokens: 0 }, 'max_tokens');
    await bad(t.tiny, { model: 'tiny', prompt: pre, echo: true, suffix: suf }, 'suffix');
    await bad(t.tiny, { model: 'tiny', prompt: pre, echo: 1 }, 'echo');
    await bad(t.tiny, { model: 'tiny', prompt: pre, echo: true, logprobs: 9, max_tokens: 0 }, 'logprobs');
  });
}
