// The real orchestrator against scripted pools and workers (fake-pool.mjs):
// relay, retries, cancellation timing, admission, placement, eviction, pool
// liveness and adoption, each observable exactly from the fake peers' side.
// The same behaviours with real pool and worker processes are in
// cluster.test.mjs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { FakePool } from './fake-pool.mjs';
import {
  ADMIN_KEY, API_KEY, cluster, freePort, getJson, orchestratorConfig, postJson, sleep, startRole, tempDir, waitFor,
} from './lib.mjs';

const GiB = 1024 ** 3;
const tmp = tempDir('llorch-orch-e2e-');
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
  tmp.cleanup();
});

async function setup({ models, pools, extra = {}, port } = {}) {
  port = port || await freePort();
  const orch = await startRole('orchestrator', orchestratorConfig(port, models, extra), { dir: tmp.dir, name: `orch-${port}` });
  cleanups.push(() => orch.stop());
  const fakes = [];
  for (const p of pools) {
    const fp = new FakePool({ orchestrator: orch.url, ...p });
    await fp.start();
    cleanups.push(() => fp.close());
    fakes.push(fp);
  }
  const client = new OpenAI({ baseURL: `${orch.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 20000 });
  return { orch, pools: fakes, client, port };
}

const tinyModel = (over = {}) => ({ name: 'tiny', file: 'tiny.gguf', slots: 2, keep_alive: '60s', ...over });

test('chat streaming and non-streaming are relayed; request id reaches the worker', async () => {
  const { orch, pools: [pa], client } = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], behavior: { tokens: 4, delayMs: 10 } }],
  });
  const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.content, 't0 t1 t2 t3 ');
  assert.equal(r.choices[0].finish_reason, 'length');
  // cached_tokens: the worker's prefix-cache hit, relayed
  assert.deepEqual(r.usage, { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9,
    prompt_tokens_details: { cached_tokens: 3 } });
  assert.equal(pa.starts.length, 1, 'one worker started on demand');

  const stream = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content || '';
      finish = chunk.choices[0].finish_reason || finish;
    }
  }
  assert.equal(text, 't0 t1 t2 t3 ');
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 4);

  // The client's X-Request-Id goes to the worker.
  const rid = 'e2e-request-id-1234';
  const resp = await fetch(`${orch.url}/v1/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', 'X-Request-Id': rid },
    body: JSON.stringify({ model: 'tiny', prompt: 'once' }),
  });
  assert.equal(resp.status, 200);
  assert.equal((await resp.json()).choices[0].text, 't0 t1 t2 t3 ');
  const w = [...pa.workers.values()][0];
  assert.ok(w.executes.some((e) => e.requestId === rid), 'X-Request-Id forwarded');
  assert.equal(pa.starts.length, 1, 'the ready worker was reused');

  const models = await getJson(`${orch.url}/v1/models`);
  assert.equal(models.body.data[0].id, 'tiny');
  assert.equal(models.body.data[0].state, 'ready');
  // Errors in the OpenAI envelope.
  const bad = await postJson(`${orch.url}/v1/chat/completions`, { model: 'tiny', messages: [], temperature: 9 });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.type, 'invalid_request_error');
  const unknown = await postJson(`${orch.url}/v1/chat/completions`, { model: 'nope', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.body.error.code, 'model_not_found');
  const noKey = await postJson(`${orch.url}/v1/chat/completions`, { model: 'tiny', messages: [] }, 'wrong');
  assert.equal(noKey.status, 401);
  // only /health/ stays open when API keys are configured
  assert.equal((await fetch(`${orch.url}/health/live`)).status, 200);
  assert.equal((await fetch(`${orch.url}/metrics`)).status, 401);
  // A client key does not read /metrics (403); an operator key does.
  assert.equal((await fetch(`${orch.url}/metrics`, { headers: { authorization: `Bearer ${API_KEY}` } })).status, 403);
  const m = await fetch(`${orch.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(m.status, 200);
});

test('a pinned model is started on its pool; others go where memory is', async () => {
  const { pools: [pa, pb], client } = await setup({
    models: [tinyModel({ pins: ['pool-b'] }), { name: 'free', file: 'tiny.gguf', slots: 1 }],
    pools: [
      { name: 'pool-a', files: ['tiny.gguf'], devices: [{ id: 'cpu', kind: 'cpu', free: 16 * GiB }] },
      { name: 'pool-b', files: ['tiny.gguf'], devices: [{ id: 'cpu', kind: 'cpu', free: 4 * GiB }] },
    ],
  });
  await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(pb.starts.length, 1);
  assert.equal(pa.starts.length, 0);
  assert.equal(pb.starts[0].model, 'tiny');
  await client.chat.completions.create({ model: 'free', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(pa.starts.length, 1, 'unpinned model goes to the pool with most free memory');
});

test('a model that does not fit evicts the idle one', async () => {
  const { orch, pools: [pa], client } = await setup({
    models: [tinyModel({ name: 'a' }), tinyModel({ name: 'b' })],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], devices: [{ id: 'cpu', kind: 'cpu', free: 1.5 * GiB }] }],
  });
  await client.chat.completions.create({ model: 'a', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(pa.starts.length, 1);
  // b needs 1 GiB; 0.5 GiB free next to a's idle worker.
  const before = await cluster(orch);
  const r = await client.chat.completions.create({ model: 'b', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.choices[0].message.content, 't0 t1 t2 t3 t4 ');
  assert.equal(pa.stops.length, 1, 'the idle worker of a was stopped');
  assert.equal(pa.stops[0], before.workers.find((w) => w.model === 'a').id);
  assert.equal(pa.starts.filter((st) => st.model === 'b').length, 1, 'b started once, after the eviction');
  assert.ok(pa.starts.find((st) => st.model === 'b').at > pa.starts[0].at);
  const c = await cluster(orch);
  assert.equal(c.stats.evictions, 1);
});

test('nothing fits: requests wait and /v2/cluster says why', async () => {
  const { orch } = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-b', files: ['tiny.gguf'], devices: [{ id: 'gpu1', kind: 'cuda', free: 0.5 * GiB }],
      estimate: { fixed_bytes: 2 * GiB, per_token_bytes: 0 } }],
    extra: { queue: { timeout: '1s' } },
  });
  const pending = postJson(`${orch.url}/v1/chat/completions`, { model: 'tiny', messages: [{ role: 'user', content: 'x' }] });
  const c = await waitFor('pending reason', async () => {
    const c1 = await cluster(orch);
    return c1.models[0].pending_reason ? c1 : null;
  });
  assert.equal(c.models[0].pending_reason, 'needs 2.0 GiB; largest free is 512.0 MiB on pool-b gpu1');
  const r = await pending;
  assert.equal(r.status, 503, 'queue timeout');
  assert.match(r.body.error.message, /needs 2\.0 GiB/);
});

test('queue full answers 429 with Retry-After at once', async () => {
  const { orch, pools: [pa] } = await setup({
    models: [tinyModel({ slots: 1, max_replicas: 1 })],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], behavior: { tokens: 50, delayMs: 40 } }],
    extra: { queue: { max_total: 2 } },
  });
  const body = { model: 'tiny', messages: [{ role: 'user', content: 'x' }] };
  const running = [postJson(`${orch.url}/v1/chat/completions`, body)];
  await waitFor('one running', async () => (await cluster(orch)).models[0].running === 1);
  running.push(postJson(`${orch.url}/v1/chat/completions`, body), postJson(`${orch.url}/v1/chat/completions`, body));
  await waitFor('two queued', async () => (await cluster(orch)).queue.total === 2);
  const t0 = Date.now();
  const r = await postJson(`${orch.url}/v1/chat/completions`, body);
  assert.equal(r.status, 429);
  assert.ok(Date.now() - t0 < 500, 'answered at once');
  assert.ok(Number(r.headers.get('retry-after')) >= 1);
  assert.equal(r.body.error.code, 'queue_full');
  for (const p of running) assert.equal((await p).status, 200);
  assert.equal(pa.starts.length, 1);
});

test('a worker that dies before its first token: the request is retried on another', async () => {
  const { orch, pools: [pa, pb], client } = await setup({
    models: [tinyModel({ slots: 4, min_replicas: 0, max_replicas: 1 })],
    pools: [
      { name: 'pool-a', files: ['tiny.gguf'] },
      { name: 'pool-b', files: ['tiny.gguf'] },
    ],
  });
  // One ready worker on each pool; the one on pool-a crashes on every job.
  const bad = await pa.addReadyWorker('tiny', 'tiny.gguf', 'cpu', 4);
  bad.behavior.die = 'before_first';
  await pa.register();
  await pb.addReadyWorker('tiny', 'tiny.gguf', 'cpu', 4);
  await pb.register();
  const rs = await Promise.all([1, 2, 3, 4].map(() =>
    client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }] })));
  for (const r of rs) assert.equal(r.choices[0].message.content, 't0 t1 t2 t3 t4 ');
  assert.ok(bad.executes.length >= 1, 'the crashing worker got work');
  const c = await cluster(orch);
  assert.ok(c.stats.retries >= 1);
  assert.equal(c.workers.find((w) => w.pool === 'pool-a').routable, false, 'the crashed worker left routing');
});

test('a worker that dies mid-stream: error chunk and a clean end', async () => {
  const { client } = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], behavior: { tokens: 10, delayMs: 20, die: 'after:3' } }],
  });
  const stream = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], stream: true });
  let text = '';
  const t0 = Date.now();
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || '';
  }, (e) => /failed/.test(String(e.message)));
  assert.equal(text, 't0 t1 t2 ', 'tokens before the crash were delivered');
  assert.ok(Date.now() - t0 < 5000, 'no hang');
});

// The 100 ms bound is checked in the normal build. Under ASan/UBSan (ctest sets
// LLORCH_E2E_SANITIZED) every process runs several times slower on two shared
// cores, so there the bound only has to show that the cancel is prompt.
const CANCEL_BOUND_MS = process.env.LLORCH_E2E_SANITIZED ? 500 : 100;

test('a client that disconnects is cancelled on the worker within 100 ms', async () => {
  const { orch, pools: [pa] } = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], behavior: { tokens: 200, delayMs: 50 } }],
  });
  // One disconnect, measured: how long until the worker got the cancel call
  // and until the execute stream closed.
  async function disconnectOnce(streaming) {
    const ac = new AbortController();
    const resp = fetch(`${orch.url}/v1/chat/completions`, {
      method: 'POST', signal: ac.signal,
      headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], stream: streaming }),
    }).catch(() => null);
    const w = await waitFor('a job running', async () => {
      const wk = [...pa.workers.values()].find((x) => x.busy() > 0);
      return wk || null;
    });
    await sleep(120);
    const job = [...w.jobs.values()].find((j) => !j.done);
    const t0 = Date.now();
    ac.abort();
    await resp;
    await waitFor('worker saw the cancel', async () => job.done, 2000);
    const cancel = w.cancels[w.cancels.length - 1];
    await waitFor('slot free', async () => (await cluster(orch)).workers[0].busy === 0, 2000);
    return { cancelMs: cancel ? cancel.at - t0 : Infinity, closeMs: job.closedAt - t0 };
  }
  // A latency bound on a shared 2-core machine: the best of up to 3 tries
  // must meet it (a cancel that waits for something - a token, a timer -
  // misses it every time; a scheduling hiccup does not fail the test).
  for (const streaming of [true, false]) {
    let best = { cancelMs: Infinity, closeMs: Infinity };
    for (let attempt = 0; attempt < 3; attempt++) {
      const m = await disconnectOnce(streaming);
      if (Math.max(m.cancelMs, m.closeMs) < Math.max(best.cancelMs, best.closeMs)) best = m;
      if (best.cancelMs <= CANCEL_BOUND_MS && best.closeMs <= CANCEL_BOUND_MS) break;
    }
    assert.ok(best.cancelMs <= CANCEL_BOUND_MS,
      `cancel call within ${CANCEL_BOUND_MS} ms (streaming ${streaming}): ${best.cancelMs} ms`);
    assert.ok(best.closeMs <= CANCEL_BOUND_MS,
      `execute stream closed within ${CANCEL_BOUND_MS} ms (streaming ${streaming}): ${best.closeMs} ms`);
  }
});

test('a client that disconnects while queued leaves the queue and never reaches a worker', async () => {
  const { orch, pools: [pa] } = await setup({
    models: [tinyModel({ slots: 1, max_replicas: 1 })],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], behavior: { tokens: 20, delayMs: 50 } }],
  });
  const body = { model: 'tiny', messages: [{ role: 'user', content: 'x' }] };
  const running = postJson(`${orch.url}/v1/chat/completions`, body);
  await waitFor('one running', async () => (await cluster(orch)).models[0].running === 1);
  const ac = new AbortController();
  const queued = fetch(`${orch.url}/v1/chat/completions`, {
    method: 'POST', signal: ac.signal, headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json', 'X-Request-Id': 'queued-then-gone' },
    body: JSON.stringify(body),
  }).catch(() => null);
  await waitFor('one queued', async () => (await cluster(orch)).queue.total === 1);
  ac.abort();
  await queued;
  await waitFor('queue empty', async () => (await cluster(orch)).queue.total === 0, 2000);
  assert.equal((await running).status, 200);
  await sleep(200);
  const w = [...pa.workers.values()][0];
  assert.ok(!w.executes.some((e) => e.requestId === 'queued-then-gone'), 'the worker never saw it');
  const m = await (await fetch(`${orch.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).text();
  assert.match(m, /llorch_orch_requests_total\{outcome="cancelled"\} 1/);
});

test('a pool that stops heartbeating is down within 3 intervals, and comes back', async () => {
  const { orch, pools: [pa, pb], client } = await setup({
    models: [tinyModel({ max_replicas: 2 })],
    pools: [
      { name: 'pool-a', files: ['tiny.gguf'], intervalMs: 200 },
      { name: 'pool-b', files: ['tiny.gguf'], intervalMs: 200 },
    ],
  });
  await pb.addReadyWorker('tiny', 'tiny.gguf');
  await pb.register();
  pb.paused = true;
  const t0 = Date.now();
  await waitFor('pool-b down', async () => (await cluster(orch)).pools.find((p) => p.name === 'pool-b').up === false, 3000);
  const dt = Date.now() - t0;
  assert.ok(dt <= 3 * 200 + 300, `down after ${dt} ms`);
  // Its worker left routing: a request starts a worker on pool-a.
  const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(pa.starts.length, 1);
  pb.paused = false;
  await waitFor('pool-b up', async () => (await cluster(orch)).pools.find((p) => p.name === 'pool-b').up, 2000);
  const c = await cluster(orch);
  assert.equal(c.workers.find((w) => w.pool === 'pool-b').routable, true, 'its worker is routable again, not restarted');
  assert.equal(pb.starts.length, 0);
});

test('a restarted orchestrator adopts running workers instead of restarting them', async () => {
  const first = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'], intervalMs: 150 }],
  });
  const [pa] = first.pools;
  await first.client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(pa.starts.length, 1);
  await first.orch.stop();
  const regs = pa.registrations;
  const orch2 = await startRole('orchestrator', orchestratorConfig(first.port, [tinyModel()]), { dir: tmp.dir, name: 'orch-restarted' });
  cleanups.push(() => orch2.stop());
  await waitFor('re-registration', async () => pa.registrations > regs, 5000);
  const c = await cluster(orch2);
  assert.equal(c.workers.length, 1);
  assert.equal(c.workers[0].adopted, true);
  assert.equal(c.workers[0].state, 'ready');
  const client = new OpenAI({ baseURL: `${orch2.url}/v1`, apiKey: API_KEY, maxRetries: 0 });
  const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.choices[0].message.content, 't0 t1 t2 t3 t4 ');
  assert.equal(pa.starts.length, 1, 'no worker started after the restart');
});

test('metrics, operators\' load/unload and readiness', async () => {
  const { orch, pools: [pa] } = await setup({
    models: [tinyModel()],
    pools: [{ name: 'pool-a', files: ['tiny.gguf'] }],
  });
  const ready = await fetch(`${orch.url}/health/ready`);
  assert.equal(ready.status, 200);
  const load = await postJson(`${orch.url}/v2/models/tiny/load`, {}, ADMIN_KEY);
  assert.equal(load.status, 202);
  await waitFor('worker ready', async () => (await cluster(orch)).models[0].state === 'ready');
  const unload = await postJson(`${orch.url}/v2/models/tiny/unload`, {}, ADMIN_KEY);
  assert.equal(unload.status, 202);
  assert.equal(unload.body.stopping, 1);
  await waitFor('stopped', async () => pa.stops.length === 1);
  const m = await (await fetch(`${orch.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).text();
  for (const name of ['llorch_orch_queue_depth', 'llorch_orch_requests_total', 'llorch_orch_time_to_first_token_seconds',
    'llorch_orch_workers', 'llorch_orch_pools_up', 'llorch_orch_evictions_total', 'llorch_orch_retries_total']) {
    assert.ok(m.includes(name), `metric ${name}`);
  }
});
