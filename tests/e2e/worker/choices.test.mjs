// n > 1 through the real worker with the official openai client: n choices
// with index 0..n-1 (streamed chunks carry their choice's index), usage with
// the prompt counted once and the completion tokens summed, greedy choices
// identical, n past request.max_n a 400 naming 'n'; and the siblings share
// the prompt: with the prefix cache on, choices 1..n-1 take the prompt's
// blocks that choice 0 computed (their native end events report them as
// cached_tokens), with it off nothing is cached and the tokens are the same.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';

import { tempDir, synthModel, startWorker, execute, collectChoices, info, waitInfo } from './helpers.mjs';

let tmp, on, off, client;

before(async () => {
  tmp = tempDir();
  const model = synthModel(tmp.dir);
  const args = ['--slots', '4', '--ctx', '512', '--queue-max', '16'];
  // request.max_n has no flag: a config file lowers it to 4 on this worker
  const cfg = path.join(tmp.dir, 'max-n.yaml');
  writeFileSync(cfg, 'request:\n  max_n: 4\n');
  on = await startWorker({ model, args: ['--config', cfg, ...args] });
  off = await startWorker({ model, args: [...args, '--prefix-cache', 'false'] });
  client = new OpenAI({ baseURL: `${on.url}/v1`, apiKey: 'none', maxRetries: 0 });
});

after(async () => {
  if (on) assert.equal((await on.stop()).code, 0);
  if (off) assert.equal((await off.stop()).code, 0);
  tmp?.cleanup();
});

const MESSAGES = [{ role: 'user', content: 'Tell me about the sea.' }];

test('chat n=3, not streamed: three identical greedy choices, usage counts the prompt once', async () => {
  const one = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0 });
  const r = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0, n: 3 });
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of r.choices) {
    assert.equal(c.message.role, 'assistant');
    assert.equal(c.message.content, one.choices[0].message.content);
    assert.equal(c.finish_reason, one.choices[0].finish_reason);
  }
  assert.equal(r.usage.prompt_tokens, one.usage.prompt_tokens);
  assert.equal(r.usage.completion_tokens, 3 * one.usage.completion_tokens);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat n=3, streamed: every chunk names its choice, each choice is whole', async () => {
  const ref = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0 });
  const stream = await client.chat.completions.create({
    model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 0, n: 3, stream: true,
    stream_options: { include_usage: true },
  });
  const { text, finish, roles, usage } = await collectChoices(stream, 3);
  assert.deepEqual(roles, [1, 1, 1]);
  for (let i = 0; i < 3; i++) {
    assert.equal(text[i], ref.choices[0].message.content, `choice ${i}`);
    assert.equal(finish[i], ref.choices[0].finish_reason);
  }
  assert.ok(usage, 'no usage chunk');
  assert.equal(usage.prompt_tokens, ref.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, 3 * ref.usage.completion_tokens);
});

test('completions n=3, streamed and not, sampled with a seed: reproducible, each choice whole', async () => {
  const body = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 10, temperature: 1, seed: 7, n: 3 };
  const a = await client.completions.create(body);
  const b = await client.completions.create(body);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  const text = ['', '', ''];
  const finish = [null, null, null];
  for await (const chunk of await client.completions.create({ ...body, stream: true })) {
    for (const c of chunk.choices) {
      text[c.index] += c.text;
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  assert.deepEqual(text, a.choices.map((c) => c.text));
  assert.deepEqual(finish, a.choices.map((c) => c.finish_reason));
  // the choices' seeds differ (seed + index): choice 0 is the n=1 answer
  const one = await client.completions.create({ ...body, n: 1 });
  assert.equal(one.choices[0].text, a.choices[0].text);
});

test('n past request.max_n, or below 1, is a 400 naming n', async () => {
  for (const n of [5, 0]) {
    await assert.rejects(
      client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 2, n }),
      (e) => e.status === 400 && e.error?.param === 'n' && /'n' = /.test(e.error.message));
  }
  // the default bound (8) on the other worker
  const r = await fetch(`${off.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 1, n: 9 }),
  });
  assert.equal(r.status, 400);
  const e = (await r.json()).error;
  assert.equal(e.param, 'n');
  assert.match(e.message, /request\.max_n = 8/);
});

// A prompt no earlier request shares (the cache must not serve choice 0).
const LONG = 'Choices share one prompt. ' + Array.from({ length: 12 }, (_, i) => `clause ${i} of a long prompt.`).join(' ');

async function native(w, n) {
  const r = await execute(w, { prompt: LONG, max_tokens: 8, temperature: 0, ignore_eos: true, n });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const ids = Array.from({ length: n }, () => []);
  const ends = [];
  for (const e of r.events) {
    const c = e.data.choice ?? 0;
    if (n > 1) assert.ok(Number.isInteger(e.data.choice), `event ${e.event} without a choice`);
    if (e.event === 'token') ids[c].push(...e.data.token_ids);
    if (e.event === 'end') ends[c] = e.data;
  }
  return { ids, ends };
}

test('native n=3: the siblings take the prompt from the prefix cache, and generate the same', async () => {
  const alone = await native(off, 1);
  const shared = await native(on, 3);
  const uncached = await native(off, 3);
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(shared.ids[i], alone.ids[0], `choice ${i} with the cache`);
    assert.deepEqual(uncached.ids[i], alone.ids[0], `choice ${i} without the cache`);
    assert.equal(uncached.ends[i].cached_tokens, 0);
  }
  const p = shared.ends[0].prompt_tokens;
  assert.equal(shared.ends[0].cached_tokens, 0, 'choice 0 computes the prompt');
  for (const i of [1, 2]) {
    // all but the prompt's last tokens (a fresh prompt computes at least 2)
    assert.ok(shared.ends[i].cached_tokens >= p - 16 && shared.ends[i].cached_tokens < p,
      `choice ${i}: ${shared.ends[i].cached_tokens} of ${p} prompt tokens cached`);
  }
});

test('n=3: a client that goes away cancels every choice; cancelling the job id cancels them all', async () => {
  const before = (await info(on)).requests;
  const ac = new AbortController();
  const r = await fetch(`${on.url}/v1/completions`, {
    method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 400, ignore_eos: true, stream: true, n: 3 }),
  });
  const reader = r.body.getReader();
  await reader.read();
  ac.abort();
  const after = await waitInfo(on, (i) => i.requests.running === 0 && i.slots.busy === 0 && i.slots.queued === 0);
  assert.equal(after.requests.running, 0, 'choices still running after the client left');
  assert.equal(after.slots.busy, 0);
  assert.equal(after.requests.cancelled, before.cancelled + 1, 'one request, cancelled once');

  // the native job id names every choice
  const events = [];
  const run = execute(on, { job_id: 'n3-cancel', prompt: 'x', max_tokens: 400, ignore_eos: true, n: 3 }, {
    onEvent: (ev) => { events.push(ev); return false; },
  });
  await waitInfo(on, () => events.some((e) => e.event === 'token'));
  const c = await (await fetch(`${on.url}/v2/jobs/n3-cancel/cancel`, { method: 'POST', body: '{}' })).json();
  assert.equal(c.state, 'cancelled');
  const done = await run;
  const ends = done.events.filter((e) => e.event === 'end');
  assert.deepEqual(ends.map((e) => e.data.choice).sort(), [0, 1, 2]);
  for (const e of ends) assert.equal(e.data.finish_reason, 'cancelled');
  const tokens = done.events.filter((e) => e.event === 'token').length;
  assert.equal(c.tokens_sent, tokens, 'tokens_sent counts every choice\'s token events');
});

test('a worker refuses X-Llorch-Resumable: true (resumable streams are the orchestrator\'s)', async () => {
  const r = await fetch(`${on.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-llorch-resumable': 'true' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 1, stream: true }),
  });
  assert.equal(r.status, 400);
  const e = (await r.json()).error;
  assert.equal(e.param, 'X-Llorch-Resumable');
  assert.match(e.message, /orchestrator/);
});
