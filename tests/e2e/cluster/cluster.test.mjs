// The cluster end to end with real processes on loopback: one
// `llorch --role=orchestrator`, two `llorch --role=pool` with CPU devices,
// and the `llorch --role=worker` processes the pools spawn, driven by the
// official openai client. Small synthesized models and short heartbeat
// intervals keep it to a few minutes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import {
  ADMIN_KEY, API_KEY, CLUSTER_TOKEN, cluster, freePort, orchestratorConfig, postJson, sleep, startRole,
  synthModel, tempDir, waitFor,
} from './lib.mjs';

const MiB = 1024 * 1024;
const HB_MS = 300;
const tmp = tempDir('llorch-cluster-e2e-');
const procs = [];
after(async () => {
  for (const p of procs.reverse()) await p.stop().catch(() => {});
  tmp.cleanup();
});

// Models: tiny (fast), and slow (bigger, so a long answer takes seconds).
let dirA;
let dirB;
before(() => {
  const src = path.join(tmp.dir, 'src');
  mkdirSync(src);
  synthModel(src, 'tiny');
  synthModel(src, 'slow', ['--layers', '4', '--embd', '256', '--ff', '512', '--heads', '8', '--kv-heads', '4']);
  dirA = path.join(tmp.dir, 'models-a');
  dirB = path.join(tmp.dir, 'models-b');
  for (const d of [dirA, dirB]) {
    mkdirSync(d);
    for (const f of ['tiny.gguf', 'slow.gguf']) copyFileSync(path.join(src, f), path.join(d, f));
  }
});

async function startOrch(models, extra = {}, port) {
  port = port || await freePort();
  const o = await startRole('orchestrator', orchestratorConfig(port, models, extra), { dir: tmp.dir, name: `orch-${port}` });
  procs.push(o);
  o.client = new OpenAI({ baseURL: `${o.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
  o.port = port;
  return o;
}

async function startPool(name, orch, modelDir, extra = {}) {
  const port = await freePort();
  const p = await startRole('pool', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: {
      name, orchestrator: orch.url, cluster_token: CLUSTER_TOKEN, model_dirs: [modelDir],
      heartbeat_interval: `${HB_MS}ms`, cpu_memory: '2GiB', ...extra,
    },
  }, { dir: tmp.dir, name });
  procs.push(p);
  await waitFor(`${name} registered`, async () => {
    const c = await cluster(orch);
    return c.pools.some((x) => x.name === name && x.up);
  });
  return p;
}

async function poolState(pool) {
  const r = await fetch(`${pool.url}/v2/state`, { headers: { Authorization: `Bearer ${CLUSTER_TOKEN}` } });
  return r.json();
}

const ask = (client, model, extra = {}) => client.chat.completions.create({
  model, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, ...extra,
});

test('chat through orchestrator and two pools: streaming, non-streaming, pinned placement', async () => {
  const orch = await startOrch([
    { name: 'tiny', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: '60s' },
    { name: 'tiny-b', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: '60s', pins: ['pool-b'] },
  ]);
  await startPool('pool-a', orch, dirA);
  await startPool('pool-b', orch, dirB);

  const r = await ask(orch.client, 'tiny');
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));

  const stream = await orch.client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  let usage = null;
  for await (const c of stream) {
    if (c.usage) usage = c.usage;
    if (c.choices.length) chunks++;
  }
  assert.ok(chunks >= 2);
  assert.ok(usage && usage.completion_tokens >= 1);

  await ask(orch.client, 'tiny-b');
  const c = await cluster(orch);
  const wb = c.workers.filter((w) => w.model === 'tiny-b');
  assert.equal(wb.length, 1);
  assert.equal(wb[0].pool, 'pool-b', 'the pinned model runs on its pool');
  assert.equal(wb[0].state, 'ready');
});

test('a model that does not fit next to another evicts the idle one', async () => {
  const orch = await startOrch([
    { name: 'm1', file: 'slow.gguf', ctx: 512, slots: 4, keep_alive: '60s', pins: ['pool-small'] },
    { name: 'm2', file: 'tiny.gguf', ctx: 512, slots: 4, keep_alive: '60s', pins: ['pool-small'] },
  ]);
  // Size the pool's CPU device from the pool's own estimates: room for the
  // bigger of the two, not for both.
  const probe = await startPool('pool-probe', orch, dirA, { cpu_memory: '64GiB' });
  const st = await poolState(probe);
  await probe.stop();
  const need = (file) => {
    const m = st.models.find((x) => x.file === file);
    return m.estimate.cpu.fixed_bytes + m.estimate.cpu.per_token_bytes * 512 * 4;
  };
  const n1 = need('slow.gguf');
  const n2 = need('tiny.gguf');
  const mem = Math.max(n1, n2) + Math.floor(Math.min(n1, n2) / 2);
  await startPool('pool-small', orch, dirA, { cpu_memory: mem });
  await ask(orch.client, 'm1');
  let c = await cluster(orch);
  const w1 = c.workers.find((w) => w.model === 'm1' && w.state === 'ready');
  assert.ok(w1);
  try {
    await ask(orch.client, 'm2');
  } catch (e) {
    const small = (await cluster(orch)).pools.find((p) => p.name === 'pool-small');
    throw new Error(`${e.message}; pool-small as the orchestrator sees it: ${JSON.stringify(small)}`);
  }
  c = await cluster(orch);
  assert.equal(c.stats.evictions, 1, 'one eviction');
  assert.ok(!c.workers.some((w) => w.id === w1.id && w.state === 'ready'), 'm1 worker evicted');
  assert.ok(c.workers.some((w) => w.model === 'm2' && w.state === 'ready'));
});

test('a full queue answers 429', async () => {
  const orch = await startOrch([{ name: 'slow', file: 'slow.gguf', ctx: 512, slots: 1, max_replicas: 1, keep_alive: '60s' }],
    { queue: { max_total: 1 } });
  await startPool('pool-q', orch, dirA);
  await ask(orch.client, 'slow'); // worker up
  const long = { max_tokens: 400, ignore_eos: true };
  const running = ask(orch.client, 'slow', long);
  await waitFor('running', async () => (await cluster(orch)).models[0].running === 1);
  const queued = ask(orch.client, 'slow', long);
  await waitFor('queued', async () => (await cluster(orch)).queue.total === 1);
  const r = await postJson(`${orch.url}/v1/chat/completions`, { model: 'slow', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.status, 429);
  assert.ok(Number(r.headers.get('retry-after')) >= 1);
  await Promise.all([running, queued]);
});

test('kill -9 a worker with requests on it and queued: they complete elsewhere', async () => {
  const orch = await startOrch([{ name: 'slow', file: 'slow.gguf', ctx: 512, slots: 1, max_replicas: 2, keep_alive: '60s' }]);
  await startPool('pool-k1', orch, dirA);
  await startPool('pool-k2', orch, dirB);
  const long = { max_tokens: 200, ignore_eos: true };
  const reqs = [1, 2, 3, 4].map(() => ask(orch.client, 'slow', long));
  const victim = await waitFor('two workers busy', async () => {
    const c = await cluster(orch);
    const ws = c.workers.filter((w) => w.state === 'ready' && w.busy > 0);
    return ws.length === 2 && c.queue.total >= 1 ? ws[0] : null;
  }, 30000);
  process.kill(victim.pid, 'SIGKILL');
  const rs = await Promise.all(reqs);
  for (const r of rs) assert.ok(r.usage.completion_tokens >= 1);
  const c = await cluster(orch);
  assert.ok(c.stats.retries >= 1, 'the request on the killed worker was retried');
});

test('kill a worker mid-stream: error chunk and a clean end', async () => {
  const orch = await startOrch([{ name: 'slow', file: 'slow.gguf', ctx: 512, slots: 1, keep_alive: '60s' }]);
  await startPool('pool-m', orch, dirA);
  await ask(orch.client, 'slow');
  const stream = await orch.client.chat.completions.create({
    model: 'slow', messages: [{ role: 'user', content: 'x' }], max_tokens: 400, ignore_eos: true, stream: true,
  });
  let n = 0;
  const t0 = Date.now();
  await assert.rejects(async () => {
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) n++;
      if (n === 3) {
        const w = (await cluster(orch)).workers.find((x) => x.busy > 0);
        process.kill(w.pid, 'SIGKILL');
      }
    }
  });
  assert.ok(n >= 3);
  assert.ok(Date.now() - t0 < 30000, 'no hang');
});

test('a stopped pool is marked down within 3 heartbeat intervals and comes back', async () => {
  const orch = await startOrch([{ name: 'tiny', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: '60s' }]);
  const pa = await startPool('pool-s1', orch, dirA);
  await startPool('pool-s2', orch, dirB);
  pa.proc.kill('SIGSTOP');
  const t0 = Date.now();
  await waitFor('pool-s1 down', async () => !(await cluster(orch)).pools.find((p) => p.name === 'pool-s1').up, 5000);
  const dt = Date.now() - t0;
  assert.ok(dt <= 3 * HB_MS + 400, `down after ${dt} ms`);
  const r = await ask(orch.client, 'tiny');
  assert.ok(r.usage.completion_tokens >= 1);
  assert.equal((await cluster(orch)).workers.find((w) => w.state === 'ready').pool, 'pool-s2', 'traffic moved');
  pa.proc.kill('SIGCONT');
  await waitFor('pool-s1 up', async () => (await cluster(orch)).pools.find((p) => p.name === 'pool-s1').up, 5000);
});

test('a restarted orchestrator adopts the running workers (none restarted)', async () => {
  const models = [{ name: 'tiny', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: '60s' }];
  const orch = await startOrch(models);
  const pa = await startPool('pool-r', orch, dirA);
  await ask(orch.client, 'tiny');
  const before = (await cluster(orch)).workers.find((w) => w.state === 'ready');
  await orch.stop();
  const orch2 = await startOrch(models, {}, orch.port);
  await waitFor('re-registered', async () => (await cluster(orch2)).workers.some((w) => w.state === 'ready'), 10000);
  const after2 = (await cluster(orch2)).workers.find((w) => w.state === 'ready');
  assert.equal(after2.id, before.id);
  assert.equal(after2.pid, before.pid, 'same process');
  assert.equal(after2.adopted, true);
  const r = await ask(orch2.client, 'tiny');
  assert.ok(r.usage.completion_tokens >= 1);
  const st = await poolState(pa);
  assert.equal(st.workers.filter((w) => w.state !== 'exited').length, 1, 'no second worker');
});

test('a client that disconnects frees the worker slot', async () => {
  const orch = await startOrch([{ name: 'slow', file: 'slow.gguf', ctx: 512, slots: 1, keep_alive: '60s' }]);
  const pa = await startPool('pool-d', orch, dirA);
  await ask(orch.client, 'slow');
  const ac = new AbortController();
  const p = fetch(`${orch.url}/v1/chat/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'slow', messages: [{ role: 'user', content: 'x' }], max_tokens: 500, ignore_eos: true, stream: true }),
  }).then(async (r) => { const rd = r.body.getReader(); for (;;) { const { done } = await rd.read(); if (done) break; } }).catch(() => null);
  const st = await poolState(pa);
  const w = st.workers.find((x) => x.state === 'ready');
  // State documents carry no worker tokens; the pool tells the cluster-token holder about one worker.
  assert.equal(w.token, null);
  const one = await (await fetch(`${pa.url}/v2/workers/${w.id}`, { headers: { Authorization: `Bearer ${CLUSTER_TOKEN}` } })).json();
  const info = async () => (await (await fetch(`${w.url}/v2/info`, { headers: { Authorization: `Bearer ${one.worker.token}` } })).json()).slots;
  await waitFor('worker busy', async () => (await info()).busy === 1, 10000);
  await sleep(100);
  ac.abort();
  await p;
  const t0 = Date.now();
  await waitFor('worker slot free', async () => (await info()).busy === 0, 2000);
  assert.ok(Date.now() - t0 < 1000);
  assert.equal((await cluster(orch)).workers[0].busy, 0);
});

test('--role=all: orchestrator and a local pool in one process serve the openai client', async () => {
  const port = await freePort();
  const all = await startRole('all', {
    listen: `127.0.0.1:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '3s',
    pool: { model_dirs: [dirA], heartbeat_interval: `${HB_MS}ms`, cpu_memory: '2GiB' },
    orchestrator: {
      api_keys: [API_KEY],
      admin_keys: [ADMIN_KEY],
      models: [{ name: 'demo', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: -1 }],
    },
  }, { dir: tmp.dir, name: 'all' });
  procs.push(all);
  await waitFor('local pool up', async () => (await fetch(`${all.url}/health/ready`)).status === 200);
  const client = new OpenAI({ baseURL: `${all.url}/v1`, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
  const stream = await client.chat.completions.create({
    model: 'demo', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, stream: true,
  });
  let n = 0;
  for await (const c of stream) if (c.choices[0]?.delta?.content !== undefined) n++;
  assert.ok(n >= 1);
  const c = await cluster(all);
  assert.equal(c.pools.length, 1);
  assert.equal(c.workers.filter((w) => w.state === 'ready').length, 1);
  const e = await all.stop();
  assert.equal(e.code, 0, 'clean exit, workers stopped');
});
