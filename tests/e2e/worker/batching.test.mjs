// Continuous batching: concurrent greedy streams are token-identical to each
// request run alone; cancellation (call or client disconnect) frees the slot;
// a full queue answers 503 with Retry-After.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { tempDir, synthModel, startWorker, execute, info, waitInfo, sleep } from './helpers.mjs';

let tmp, model, w;

before(async () => {
  tmp = tempDir();
  model = synthModel(tmp.dir);
  w = await startWorker({ model, args: ['--slots', '4', '--ctx', '512', '--queue-max', '8'] });
});

after(async () => {
  if (w) assert.equal((await w.stop()).code, 0);
  tmp?.cleanup();
});

const PROMPTS = [
  'The weather today', 'Once upon a time there was', 'a', 'List three colours:',
  'In the beginning the universe was created. This has made a lot of people very angry',
  'x y z', 'Numbers: 1 2 3 4 5 6 7 8 9 10 11 12', 'Hello',
];

function tokensOf(events) {
  const end = events.find((e) => e.event === 'end');
  assert.ok(end, `no end event: ${JSON.stringify(events.slice(-2))}`);
  return { ids: events.filter((e) => e.event === 'token').flatMap((e) => e.data.token_ids), end: end.data };
}

test('8 concurrent greedy streams equal each run alone', async () => {
  const body = (p) => ({ prompt: p, max_tokens: 24, temperature: 0, ignore_eos: true });
  const alone = [];
  for (const p of PROMPTS) alone.push(tokensOf((await execute(w, body(p))).events));
  const steps0 = (await info(w)).steps;
  const together = await Promise.all(PROMPTS.map((p) => execute(w, body(p))));
  for (let i = 0; i < PROMPTS.length; i++) {
    const t = tokensOf(together[i].events);
    assert.equal(t.ids.length, 24);
    assert.deepEqual(t.ids, alone[i].ids, `prompt ${i} differs when batched`);
    assert.equal(t.end.finish_reason, 'length');
  }
  // They really shared steps: 8 x 24 tokens alone would need >= 8 x 24 steps.
  const steps = (await info(w)).steps - steps0;
  assert.ok(steps < 8 * 24, `took ${steps} steps: requests were not batched`);
});

test('the OpenAI client sees the same text batched as alone', async () => {
  const client = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const req = (p) => ({ model: 'tiny', prompt: p, max_tokens: 16, temperature: 0 });
  const alone = [];
  for (const p of PROMPTS) alone.push((await client.completions.create(req(p))).choices[0].text);
  const streams = await Promise.all(PROMPTS.map(async (p) => {
    let text = '';
    for await (const c of await client.completions.create({ ...req(p), stream: true })) text += c.choices[0]?.text ?? '';
    return text;
  }));
  assert.deepEqual(streams, alone);
});

test('cancel call frees the slot within a step and ends the stream as cancelled', async () => {
  // The tiny model makes 400 tokens in well under a second: on a loaded machine
  // the job can finish between the third token and the cancel. That run proves
  // nothing either way, so it is tried again (3 tries); a cancel that does not
  // cancel a running job still fails every try.
  let tries = 0;
  for (;;) {
    tries++;
    const id = `cancel-me-${tries}`;
    let sawTokens = 0;
    const run = execute(w, { job_id: id, prompt: 'go on', max_tokens: 400, temperature: 0, ignore_eos: true }, {
      onEvent: (ev) => {
        if (ev.event === 'token') sawTokens++;
        return false;
      },
    });
    while (sawTokens < 3) await sleep(2);
    const busy = await info(w);
    const r1 = await fetch(`${w.url}/v2/jobs/${id}/cancel`, { method: 'POST' });
    assert.equal(r1.status, 200);
    const c = await r1.json();
    const { events } = await run;
    if (c.state === 'finished' && tries < 3) {
      await waitInfo(w, (i) => i.slots.busy === 0);
      continue; // it ended before the cancel arrived: try again
    }
    assert.equal(busy.slots.busy, 1);
    assert.equal(c.state, 'cancelled', `try ${tries}: the cancel found the job ${c.state}`);
    const end = events.at(-1);
    assert.equal(end.event, 'end');
    assert.equal(end.data.finish_reason, 'cancelled');
    assert.ok(end.data.completion_tokens < 400);
    // No token went out after the cancel was answered.
    assert.equal(events.filter((e) => e.event === 'token').length, c.tokens_sent);
    const after = await waitInfo(w, (i) => i.slots.busy === 0);
    assert.equal(after.slots.busy, 0);
    // Idempotent: again, and an unknown id, are both 200.
    const r2 = await fetch(`${w.url}/v2/jobs/${id}/cancel`, { method: 'POST' });
    assert.equal(r2.status, 200);
    assert.equal((await r2.json()).state, 'finished');
    const r3 = await fetch(`${w.url}/v2/jobs/never-seen/cancel`, { method: 'POST' });
    assert.equal((await r3.json()).state, 'unknown');
    break;
  }
});

test('a client that disconnects frees its slot', async () => {
  const client = new OpenAI({ baseURL: `${w.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const before = (await info(w)).requests.cancelled;
  const stream = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'talk forever' }], max_tokens: 450,
    temperature: 0, stream: true, ignore_eos: true,
  });
  let n = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content !== undefined && ++n >= 3) break; // closes the connection
  }
  const i = await waitInfo(w, (x) => x.slots.busy === 0 && x.requests.cancelled === before + 1);
  assert.equal(i.slots.busy, 0);
  assert.equal(i.requests.cancelled, before + 1);
});

test('a full queue answers 503 with Retry-After', async () => {
  // 4 slots + queue_max 8 = 12 accepted; the 13th and later are refused.
  const ctrl = new AbortController();
  const long = { prompt: 'fill', max_tokens: 400, temperature: 0, ignore_eos: true };
  const running = [];
  for (let i = 0; i < 12; i++) running.push(execute(w, { ...long, job_id: `fill-${i}` }, { signal: ctrl.signal }).catch(() => null));
  await waitInfo(w, (x) => x.slots.busy + x.slots.queued === 12);
  const r = await fetch(`${w.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'one more', max_tokens: 1 }),
  });
  assert.equal(r.status, 503);
  assert.ok(Number(r.headers.get('retry-after')) >= 1);
  assert.equal((await r.json()).error.code, 'overloaded');
  ctrl.abort();
  await Promise.all(running);
  const i = await waitInfo(w, (x) => x.slots.busy === 0 && x.slots.queued === 0, { timeoutMs: 10000 });
  assert.equal(i.slots.busy + i.slots.queued, 0);
});

test('a huge prompt is tokenized off the event loop: a small request is not held up', async () => {
  const post = (body) => fetch(`${w.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const t0 = performance.now();
  let bigDone = 0;
  const big = post({ prompt: 'hello world this is a long text '.repeat(60000), max_tokens: 1 })
    .then(async (r) => { bigDone = performance.now() - t0; return { status: r.status, body: await r.json() }; });
  await sleep(30);
  const r = await post({ prompt: 'small', max_tokens: 1, temperature: 0 });
  const smallDone = performance.now() - t0;
  assert.equal(r.status, 200);
  const b = await big;
  assert.equal(b.status, 400);
  assert.equal(b.body.error.code, 'context_length_exceeded');
  assert.ok(smallDone < bigDone, `small finished at ${smallDone.toFixed(0)} ms, big at ${bigDone.toFixed(0)} ms`);
});
