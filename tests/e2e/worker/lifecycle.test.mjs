// Pool mode (ready / failed callbacks) and shutdown.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { tempDir, synthModel, synthSlowModel, startWorker, execute, sleep } from './helpers.mjs';

const tmp = tempDir();
after(() => tmp.cleanup());

// A stand-in for the pool's callback endpoint: records each POST; `answers`
// gives the status of each successive attempt (then 200).
async function fakePool(answers = []) {
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      calls.push({ method: req.method, url: req.url, auth: req.headers.authorization, body: JSON.parse(body) });
      res.writeHead(answers.length >= calls.length ? answers[calls.length - 1] : 200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}/v2/workers/callback`;
  return { calls, url, close: () => new Promise((r) => server.close(r)) };
}

async function waitFor(pred, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

test('ready callback reaches the pool with the right fields (after one retry)', async () => {
  const model = synthModel(tmp.dir);
  const pool = await fakePool([503]);
  const w = await startWorker({ model, waitReady: false, args: ['--worker-id', 'w-7', '--pool-callback', pool.url,
    '--spawn-token', 'spawn-xyz', '--token', 'wtok', '--slots', '3', '--ctx', '128'] });
  try {
    assert.ok(await waitFor(() => pool.calls.length >= 2), `callbacks: ${JSON.stringify(pool.calls)}`);
    const [first, second] = pool.calls;
    assert.equal(first.method, 'POST');
    assert.equal(first.url, '/v2/workers/callback');
    assert.deepEqual(first.body, second.body); // the retry sends the same report
    assert.equal(second.auth, 'Bearer spawn-xyz');
    const b = second.body;
    assert.equal(b.event, 'ready');
    assert.equal(b.worker_id, 'w-7');
    assert.equal(typeof b.model, 'string');
    assert.ok(b.model.length > 0);
    assert.equal(b.device, 'cpu');
    assert.ok(b.memory_bytes > 100000, `memory_bytes ${b.memory_bytes}`);
    assert.equal(b.url, w.url);
    assert.equal(b.slots, 3);
    assert.equal(b.context_length, 128);
    assert.equal(b.pid, w.proc.pid);
    // the reported URL serves, with the worker token
    const r = await fetch(`${b.url}/v2/info`, { headers: { authorization: 'Bearer wtok' } });
    const i = await r.json();
    assert.equal(i.worker_id, 'w-7');
    assert.equal(i.state, 'ready');
    // memory_bytes is what the worker measured it holds (its peak resident
    // memory on the CPU); the peak only grows, /v2/info reads it later.
    assert.ok(b.memory_bytes > 0 && b.memory_bytes <= i.memory.held_bytes,
      `callback ${b.memory_bytes}, /v2/info held ${i.memory.held_bytes}`);
    // Under ASan the shadow memory and quarantine inflate the resident set
    // far past what the estimate models: the bound is checked in normal builds.
    if (!process.env.LLORCH_SANITIZED)
      assert.ok(i.memory.estimate.total_bytes >= i.memory.held_bytes,
        `estimate ${i.memory.estimate.total_bytes} < held ${i.memory.held_bytes}`);
    assert.equal(i.memory.weights_location, 'host-mmap');
    // The CPU backend holds host memory by design: nothing to verify as VRAM.
    assert.deepEqual(i.memory.residency,
      { verified: false, allocations_checked: 0, allocations_not_device: 0, verified_at_ms: 0 });
  } finally {
    assert.equal((await w.stop()).code, 0);
    await pool.close();
  }
});

test('a model that fails to load reports failed and exits non-zero', async () => {
  const bad = path.join(tmp.dir, 'broken.gguf');
  writeFileSync(bad, 'this is not a GGUF file at all, just text');
  const pool = await fakePool();
  const w = await startWorker({ model: bad, waitReady: false, args: ['--worker-id', 'w-bad', '--pool-callback', pool.url,
    '--spawn-token', 'sp'] });
  const exit = await w.exitedPromise;
  assert.notEqual(exit.code, 0);
  assert.equal(pool.calls.length, 1);
  const b = pool.calls[0].body;
  assert.equal(b.event, 'failed');
  assert.equal(b.worker_id, 'w-bad');
  assert.match(b.reason, /broken\.gguf/);
  assert.equal(pool.calls[0].auth, 'Bearer sp');
  await pool.close();
});

test('a pool that is gone does not stop the worker from serving', async () => {
  const model = synthModel(tmp.dir);
  const pool = await fakePool();
  const url = pool.url;
  await pool.close(); // nothing listens there any more
  const w = await startWorker({ model, args: ['--worker-id', 'w-lonely', '--pool-callback', url, '--spawn-token', 's'] });
  try {
    const r = await execute(w, { prompt: 'still here', max_tokens: 3 });
    assert.equal(r.status, 200);
    assert.equal(r.events.at(-1).event, 'end');
  } finally {
    assert.equal((await w.stop()).code, 0);
  }
});

test('SIGTERM: the running stream finishes, new work is refused, exit 0', async () => {
  const model = synthModel(tmp.dir);
  const w = await startWorker({ model, args: ['--ctx', '512', '--shutdown-grace', '20s'] });
  let n = 0;
  let signalled = false;
  const run = execute(w, { prompt: 'long', max_tokens: 500, temperature: 0, ignore_eos: true }, {
    onEvent: (ev) => {
      if (ev.event === 'token' && ++n === 3) {
        w.proc.kill('SIGTERM');
        signalled = true;
      }
      return false;
    },
  });
  while (!signalled) await sleep(1);
  await sleep(5);
  // New work: the listener is closed (connection refused) or, on a kept
  // connection, 503.
  const fresh = await fetch(`${w.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify({ prompt: 'new', max_tokens: 2 }),
  }).then((r) => r.status, () => 'refused');
  assert.ok(fresh === 'refused' || fresh === 503, `new request got ${fresh}`);
  const { events } = await run;
  const end = events.at(-1);
  assert.equal(end.event, 'end');
  assert.equal(end.data.finish_reason, 'length');
  assert.equal(end.data.completion_tokens, 500);
  const exit = await w.exitedPromise;
  assert.equal(exit.code, 0);
});

test('SIGTERM with a short grace period ends a long stream with a retriable error, exit 0', async () => {
  const model = synthSlowModel(tmp.dir);
  const w = await startWorker({ model, args: ['--ctx', '1024', '--slots', '1', '--shutdown-grace', '500ms'] });
  let n = 0;
  const t0 = Date.now();
  let tSignal = 0;
  const { events } = await execute(w, { prompt: 'long', max_tokens: 1000, temperature: 0, ignore_eos: true }, {
    onEvent: (ev) => {
      if (ev.event === 'token' && ++n === 3) {
        tSignal = Date.now();
        w.proc.kill('SIGTERM');
      }
      return false;
    },
  });
  const last = events.at(-1);
  assert.equal(last.event, 'error', `last event ${JSON.stringify(last)} after ${Date.now() - t0} ms`);
  assert.equal(last.data.code, 'shutting_down');
  assert.equal(last.data.retriable, true);
  assert.ok(Date.now() - tSignal < 3000);
  assert.equal((await w.exitedPromise).code, 0);
});

test('a request that waits longer than queue_timeout gets 503', async () => {
  const model = synthSlowModel(tmp.dir);
  const w = await startWorker({ model, args: ['--ctx', '1024', '--slots', '1', '--queue-timeout', '200ms'] });
  try {
    const ctrl = new AbortController();
    const long = execute(w, { prompt: 'hold the slot', max_tokens: 1000, temperature: 0, ignore_eos: true },
      { signal: ctrl.signal }).catch(() => null);
    await sleep(50);
    const t0 = Date.now();
    const r = await fetch(`${w.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'waiting', max_tokens: 2 }),
    });
    const waited = Date.now() - t0;
    assert.equal(r.status, 503);
    assert.ok(r.headers.get('retry-after'));
    assert.equal((await r.json()).error.code, 'queue_timeout');
    assert.ok(waited >= 150 && waited < 3000, `waited ${waited} ms`);
    ctrl.abort();
    await long;
  } finally {
    assert.equal((await w.stop()).code, 0);
  }
});
