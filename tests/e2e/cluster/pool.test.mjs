// The real pool manager (llorch --role=pool) against a scripted orchestrator
// written here (a node http server that records what the pool sends and
// answers as the protocol says), with real worker processes spawned by the
// pool on a `llorch synth` model: registration, heartbeats with devices and
// models, start/ready/stop, the INSUFFICIENT_MEMORY preflight, a worker
// killed with -9, re-registration after an orchestrator restart, and SIGTERM
// leaving no worker behind.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  CLUSTER_TOKEN, freePort, sleep, startRole, synthModel, tempDir, waitFor,
} from './lib.mjs';

const MiB = 1024 * 1024;
const tmp = tempDir('llorch-pool-e2e-');
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
  tmp.cleanup();
});

// ---- a scripted orchestrator ----

class FakeOrchestrator {
  constructor(port) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.id = `orch-${Math.random().toString(16).slice(2, 10)}`;
    this.registers = [];
    this.heartbeats = [];
    this.events = [];      // {type, worker, seq, boot_id}
    this.badAuth = 0;
    this.known = new Set();
  }

  start() {
    this.server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => this.handle(req, res, body));
    });
    return new Promise((resolve) => this.server.listen(this.port, '127.0.0.1', resolve));
  }

  reply(res, status, obj) {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(obj));
  }

  handle(req, res, body) {
    if (req.headers.authorization !== `Bearer ${CLUSTER_TOKEN}`) {
      this.badAuth++;
      return this.reply(res, 401, { error: { message: 'bad token', type: 'authentication_error', code: 'UNAUTHORIZED' } });
    }
    const doc = JSON.parse(body);
    if (req.method === 'POST' && req.url === '/v2/pools/register') {
      this.registers.push({ at: Date.now(), doc });
      this.known.add(doc.pool);
      const adopted = doc.workers.filter((w) => w.state === 'ready' || w.state === 'starting').map((w) => w.id);
      return this.reply(res, 200, { orchestrator_id: this.id, pool: doc.pool, adopted });
    }
    let m = /^\/v2\/pools\/([^/]+)\/heartbeat$/.exec(req.url);
    if (req.method === 'POST' && m) {
      if (!this.known.has(m[1])) {
        return this.reply(res, 404, { error: { message: 'unknown pool', type: 'invalid_request_error', code: 'POOL_UNKNOWN' } });
      }
      this.heartbeats.push({ at: Date.now(), doc });
      return this.reply(res, 200, { orchestrator_id: this.id });
    }
    m = /^\/v2\/pools\/([^/]+)\/events$/.exec(req.url);
    if (req.method === 'POST' && m) {
      for (const ev of doc.events) this.events.push({ ...ev, seq: doc.seq, boot_id: doc.boot_id });
      return this.reply(res, 200, {});
    }
    return this.reply(res, 404, { error: { message: 'no route', code: 'not_found' } });
  }

  // Forgets every pool, as a restarted orchestrator would.
  restart() {
    this.known.clear();
    this.id = `orch-${Math.random().toString(16).slice(2, 10)}`;
  }

  event(type, id) {
    return this.events.find((e) => e.type === type && e.worker.id === id);
  }

  lastDoc() {
    const all = [...this.registers, ...this.heartbeats].sort((a, b) => a.doc.seq - b.doc.seq);
    return all.length ? all[all.length - 1].doc : null;
  }

  close() {
    return new Promise((resolve) => {
      this.server.closeAllConnections?.();
      this.server.close(() => resolve());
    });
  }
}

// ---- helpers ----

function alive(pid) {
  // A zombie (exited, not yet reaped by whoever inherited it) is not running.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function poolCall(pool, method, p, body, token = CLUSTER_TOKEN) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(`${pool.url}${p}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, body: await r.json().catch(() => null) };
}

async function startPool(orchUrl, { name = 'pool-e2e', cpuMemory = '512MiB', modelDir, gpus, env = {}, host = '127.0.0.1', advertise, portBase } = {}) {
  const port = await freePort();
  const cfg = {
    listen: `${host}:${port}`,
    log: { level: 'info', format: 'json' },
    shutdown_grace: '1s',
    pool: {
      name,
      orchestrator: orchUrl,
      cluster_token: CLUSTER_TOKEN,
      model_dirs: [modelDir],
      heartbeat_interval: '200ms',
      cpu_memory: cpuMemory,
      stop_grace: '2s',
      ...(gpus ? { gpus } : {}),
      ...(advertise ? { advertise_url: advertise(port) } : {}),
      ...(portBase ? { worker_port_base: portBase } : {}),
    },
  };
  const pool = await startRole('pool', cfg, { dir: tmp.dir, name: `${name}-${port}`, env });
  cleanups.push(() => pool.stop().catch(() => {}));
  return pool;
}

const modelDir = path.join(tmp.dir, 'models');
let synthesized = false;
function synthOnce() {
  if (synthesized) return;
  mkdirSync(modelDir, { recursive: true });
  synthModel(modelDir, 'tiny');
  writeFileSync(path.join(modelDir, 'broken.gguf'), 'GGUF? no');
  writeFileSync(path.join(modelDir, 'readme.txt'), 'not a model');
  synthesized = true;
}

const startBody = (over = {}) => ({ model: 'tiny', file: 'tiny.gguf', devices: ['cpu'], ctx: 256, slots: 2, ...over });

// ---- tests ----

test('registers, then heartbeats its devices and models with the cluster token', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });

  await waitFor('registration', () => orch.registers.length >= 1);
  await waitFor('two heartbeats', () => orch.heartbeats.length >= 2, 5000);
  assert.equal(orch.badAuth, 0);
  const reg = orch.registers[0].doc;
  assert.equal(reg.protocol, 1);
  assert.equal(reg.pool, 'pool-e2e');
  assert.equal(reg.url, pool.url, 'advertises where it really listens');
  assert.match(reg.boot_id, /^[0-9a-f]{16}$/);
  assert.equal(reg.heartbeat_interval_ms, 200);
  assert.equal(reg.devices.length, 1);
  const cpu = reg.devices[0];
  assert.equal(cpu.id, 'cpu');
  assert.equal(cpu.kind, 'cpu');
  assert.equal(cpu.memory_total, 512 * MiB, 'sized from pool.cpu_memory');
  assert.equal(cpu.utilization, null);
  assert.deepEqual(reg.models.map((m) => m.file), ['tiny.gguf'], 'only the model whose header parses');
  const m = reg.models[0];
  assert.equal(m.name, 'tiny');
  assert.equal(m.arch, 'qwen2');
  assert.equal(m.ctx, 512);
  assert.equal(m.quant, 'F32');
  assert.ok(m.params > 100000);
  assert.equal(m.tensor_bytes, m.params * 4);
  assert.ok(m.file_bytes > m.tensor_bytes);
  assert.ok(m.estimate.cpu.fixed_bytes > m.tensor_bytes);
  assert.ok(m.estimate.cpu.per_token_bytes > 0);
  assert.ok(m.estimate.cuda.fixed_bytes > m.estimate.cpu.fixed_bytes);
  assert.deepEqual(reg.workers, []);

  const hb = orch.heartbeats.map((h) => h.doc);
  assert.equal(hb[0].boot_id, reg.boot_id);
  assert.ok(hb[0].seq > reg.seq && hb[1].seq > hb[0].seq, 'seq increases');
  const gap = orch.heartbeats[1].at - orch.heartbeats[0].at;
  assert.ok(gap >= 150 && gap < 1000, `heartbeat interval ~200 ms, got ${gap}`);
  assert.equal(hb[1].models.length, 1);

  // The pool's own endpoints want the cluster token (except /health).
  assert.equal((await poolCall(pool, 'GET', '/v2/state', null, null)).status, 401);
  assert.equal((await poolCall(pool, 'GET', '/v2/state', null, 'wrong')).status, 401);
  assert.equal((await poolCall(pool, 'POST', '/v2/workers', startBody(), 'wrong')).status, 401);
  assert.equal((await fetch(`${pool.url}/health/live`)).status, 200);
  assert.equal((await fetch(`${pool.url}/metrics`)).status, 401);
  const metrics = await fetch(`${pool.url}/metrics`, { headers: { Authorization: `Bearer ${CLUSTER_TOKEN}` } });
  assert.equal(metrics.status, 200);
  assert.match(await metrics.text(), /llorch_pool_workers\{state="ready"\} 0/);
  const st = await poolCall(pool, 'GET', '/v2/state');
  assert.equal(st.status, 200);
  assert.equal(st.body.boot_id, reg.boot_id);

  await pool.stop();
  await orch.close();
});

test('starts a worker on command, reports started and ready, stops it on DELETE', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });
  await waitFor('registration', () => orch.registers.length >= 1);

  const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const w = r.body.worker;
  assert.match(w.id, /^[A-Za-z0-9._-]{1,63}$/);
  assert.equal(w.state, 'starting');
  assert.equal(w.model, 'tiny');
  assert.deepEqual(w.devices, ['cpu']);
  assert.equal(w.ctx, 256);
  assert.equal(w.slots, 2);
  // The worker's token travels only in this authenticated answer, never in state documents.
  assert.match(w.token, /^[0-9a-f]{64}$/);
  assert.ok(w.pid > 0 && alive(w.pid));

  await waitFor('worker_started event', () => orch.event('worker_started', w.id));
  const ready = await waitFor('worker_ready event', () => orch.event('worker_ready', w.id), 20000);
  assert.equal(ready.worker.state, 'ready');
  assert.match(ready.worker.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(ready.worker.token, null);
  assert.ok(ready.worker.memory_bytes > 0);
  assert.ok(ready.seq > orch.event('worker_started', w.id).seq);
  // Its tokens travel in its environment, not on a command line every local user can read.
  const cmdline = readFileSync(`/proc/${w.pid}/cmdline`, 'utf8');
  assert.ok(!cmdline.includes(w.token), 'worker token on the command line');
  assert.ok(!cmdline.includes('--token') && !cmdline.includes('--spawn-token'), cmdline);
  const environ = readFileSync(`/proc/${w.pid}/environ`, 'utf8').split('\0');
  assert.ok(environ.includes(`LLORCH_WORKER_TOKEN=${w.token}`));
  assert.ok(environ.some((e) => /^LLORCH_WORKER_SPAWN_TOKEN=[0-9a-f]{64}$/.test(e)));

  // The worker really serves, behind the token the pool gave it.
  const info = await fetch(`${ready.worker.url}/v2/info`, { headers: { Authorization: `Bearer ${w.token}` } });
  assert.equal(info.status, 200);
  assert.equal((await info.json()).worker_id, w.id);
  assert.equal((await fetch(`${ready.worker.url}/v2/info`)).status, 401);

  // Heartbeats now carry it, and the CPU device counts what it holds.
  const hb = await waitFor('heartbeat with the worker', () => {
    const d = orch.lastDoc();
    return d && d.workers.find((x) => x.id === w.id && x.state === 'ready') ? d : null;
  });
  assert.ok(hb.devices[0].memory_free < 512 * MiB);
  assert.equal(hb.devices[0].memory_used, 512 * MiB - hb.devices[0].memory_free);

  const del = await poolCall(pool, 'DELETE', `/v2/workers/${w.id}`);
  assert.equal(del.status, 202);
  assert.equal(del.body.worker.state, 'stopping');
  // Again while stopping: the same answer; or, if it is already gone and
  // reported, 404 (which the orchestrator takes as gone).
  const again = await poolCall(pool, 'DELETE', `/v2/workers/${w.id}`);
  assert.ok(again.status === 202 || again.body.error.code === 'WORKER_NOT_FOUND', JSON.stringify(again.body));
  const exited = await waitFor('worker_exited event', () => orch.event('worker_exited', w.id), 10000);
  assert.equal(exited.worker.state, 'exited');
  assert.equal(exited.worker.exit.code, 0);
  assert.equal(exited.worker.exit.signal, null);
  assert.match(exited.worker.exit.reason, /stopped/);
  assert.ok(!alive(w.pid), 'the process is gone');
  // Once a document carrying the exit was acknowledged, the worker is dropped.
  await waitFor('worker dropped from heartbeats', () => {
    const d = orch.lastDoc();
    return d && d.seq > exited.seq && !d.workers.find((x) => x.id === w.id);
  });
  assert.equal((await poolCall(pool, 'DELETE', `/v2/workers/${w.id}`)).body.error.code, 'WORKER_NOT_FOUND');
  assert.equal((await poolCall(pool, 'DELETE', '/v2/workers/w-nope')).status, 404);

  await pool.stop();
  await orch.close();
});

test('a pool on a wildcard address hands out worker URLs with its advertise host', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir, host: '0.0.0.0', advertise: (port) => `http://localhost:${port}` });
  await waitFor('registration', () => orch.registers.length >= 1);
  assert.match(orch.registers[0].doc.url, /^http:\/\/localhost:\d+$/);
  const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const ready = await waitFor('worker_ready', () => orch.event('worker_ready', r.body.worker.id), 20000);
  assert.match(ready.worker.url, /^http:\/\/localhost:\d+$/, 'the advertise host, not 127.0.0.1');
  const info = await fetch(`${ready.worker.url}/v2/info`, { headers: { Authorization: `Bearer ${r.body.worker.token}` } });
  assert.equal(info.status, 200, 'reachable there');
  await pool.stop();
  await orch.close();
});

test('pool.worker_port_base: workers get consecutive ports from the base', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const base = await freePort();
  const pool = await startPool(orch.url, { modelDir, portBase: base });
  await waitFor('registration', () => orch.registers.length >= 1);
  const urls = [];
  for (let i = 0; i < 2; i++) {
    const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
    assert.equal(r.status, 201, JSON.stringify(r.body));
    const ev = await waitFor('worker_ready', () => orch.event('worker_ready', r.body.worker.id), 20000);
    urls.push(ev.worker.url);
  }
  assert.deepEqual(urls, [`http://127.0.0.1:${base}`, `http://127.0.0.1:${base + 1}`]);
  await pool.stop();
  await orch.close();
});

test('bad requests are refused before anything is spawned', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir, cpuMemory: '32MiB' });
  await waitFor('registration', () => orch.registers.length >= 1);

  for (const file of ['../tiny.gguf', '/etc/passwd', 'sub/tiny.gguf', '..gguf']) {
    const r = await poolCall(pool, 'POST', '/v2/workers', startBody({ file }));
    assert.equal(r.status, 400, file);
    assert.equal(r.body.error.code, 'INVALID_REQUEST');
    assert.equal(r.body.error.param, 'file');
  }
  let r = await poolCall(pool, 'POST', '/v2/workers', startBody({ file: 'nothere.gguf' }));
  assert.equal(r.status, 404);
  assert.equal(r.body.error.code, 'MODEL_NOT_FOUND');
  r = await poolCall(pool, 'POST', '/v2/workers', startBody({ devices: ['gpu7'] }));
  assert.equal(r.status, 404);
  assert.equal(r.body.error.code, 'DEVICE_NOT_FOUND');
  r = await poolCall(pool, 'POST', '/v2/workers', startBody({ slots: 0 }));
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /slots/);
  r = await poolCall(pool, 'POST', '/v2/workers', { devices: ['cpu'] });
  assert.equal(r.status, 400);
  assert.match(r.body.error.message, /'model' is required/);

  // The preflight: 256 slots of 512 tokens need far more than 32 MiB.
  r = await poolCall(pool, 'POST', '/v2/workers', startBody({ ctx: 512, slots: 256 }));
  assert.equal(r.status, 507);
  const e = r.body.error;
  assert.equal(e.code, 'INSUFFICIENT_MEMORY');
  assert.equal(e.device, 'cpu');
  assert.ok(e.need_bytes > e.free_bytes);
  assert.ok(e.free_bytes <= 32 * MiB);
  assert.ok(e.message.includes(String(e.need_bytes)) && e.message.includes(String(e.free_bytes)), e.message);

  await sleep(300);
  assert.equal(orch.events.length, 0, 'nothing was started');
  let st = await poolCall(pool, 'GET', '/v2/state');
  assert.deepEqual(st.body.workers, []);

  // What fits is started, and then counts against what is left: the same
  // request that fitted once no longer fits twice over.
  const small = startBody({ ctx: 256, slots: 2 });
  r = await poolCall(pool, 'POST', '/v2/workers', small);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const need = r.body.worker.memory_bytes;
  st = await poolCall(pool, 'GET', '/v2/state');
  assert.equal(st.body.devices[0].memory_free, 32 * MiB - need);
  r = await poolCall(pool, 'POST', '/v2/workers', small);
  assert.equal(r.status, 507, JSON.stringify(r.body));
  assert.equal(r.body.error.free_bytes, 32 * MiB - need);
  await pool.stop();
  await orch.close();
});

test('a worker killed with -9 is reported exited with the signal and its last stderr lines', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });
  await waitFor('registration', () => orch.registers.length >= 1);
  const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
  assert.equal(r.status, 201);
  const id = r.body.worker.id;
  await waitFor('worker_ready', () => orch.event('worker_ready', id), 20000);
  process.kill(r.body.worker.pid, 'SIGKILL');
  const ev = await waitFor('worker_exited', () => orch.event('worker_exited', id), 5000);
  assert.equal(ev.worker.exit.signal, 'SIGKILL');
  assert.equal(ev.worker.exit.code, null);
  assert.ok(ev.worker.exit.stderr_tail.length > 0);
  assert.ok(ev.worker.exit.stderr_tail.some((l) => /ready|listening/.test(l)), ev.worker.exit.stderr_tail.join('\n'));
  // Nothing is restarted by the pool itself.
  await sleep(500);
  assert.equal(orch.events.filter((e) => e.type === 'worker_started').length, 1);
  await pool.stop();
  await orch.close();
});

test('orchestrator restart: the pool registers again with its running worker (same process)', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });
  await waitFor('registration', () => orch.registers.length >= 1);
  const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
  const id = r.body.worker.id;
  const pid = r.body.worker.pid;
  await waitFor('worker_ready', () => orch.event('worker_ready', id), 20000);

  // Down for a while (connection refused), then back with no memory of the pool.
  await orch.close();
  await sleep(700);
  orch.restart();
  const n = orch.registers.length;
  await orch.start();
  const reg = await waitFor('re-registration', () => orch.registers[n], 8000);
  const w = reg.doc.workers.find((x) => x.id === id);
  assert.ok(w, 'the running worker is reported');
  assert.equal(w.state, 'ready');
  assert.equal(w.pid, pid);
  assert.ok(alive(pid), 'not restarted');
  assert.equal(reg.doc.boot_id, orch.registers[0].doc.boot_id, 'same pool process');
  await waitFor('heartbeats again', () => orch.heartbeats.some((h) => h.doc.seq > reg.doc.seq));
  await pool.stop();
  await orch.close();
});

test('an unreachable orchestrator is retried until it comes up', async () => {
  synthOnce();
  const port = await freePort();
  const pool = await startPool(`http://127.0.0.1:${port}`, { modelDir });
  await sleep(800);
  const orch = new FakeOrchestrator(port);
  await orch.start();
  cleanups.push(() => orch.close());
  await waitFor('registration after the outage', () => orch.registers.length >= 1, 8000);
  await pool.stop();
  await orch.close();
});

test('SIGTERM stops every worker before the pool exits', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });
  await waitFor('registration', () => orch.registers.length >= 1);
  const pids = [];
  for (let i = 0; i < 2; i++) {
    const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
    assert.equal(r.status, 201);
    pids.push(r.body.worker.pid);
    await waitFor('worker_ready', () => orch.event('worker_ready', r.body.worker.id), 20000);
  }
  // A third one still starting when the signal arrives is stopped too.
  const r3 = await poolCall(pool, 'POST', '/v2/workers', startBody());
  pids.push(r3.body.worker.pid);
  assert.ok(pids.every(alive));
  const t0 = Date.now();
  const exit = await pool.stop('SIGTERM');
  assert.equal(exit.code, 0);
  assert.ok(Date.now() - t0 < 8000);
  for (const pid of pids) assert.ok(!alive(pid), `worker ${pid} left running`);
  assert.ok(pool.logs.some((l) => /stopping \d+ workers? before exiting/.test(l)));
  await orch.close();
});

test('a pool killed with -9 leaves no worker running (parent-death signal)', async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir });
  await waitFor('registration', () => orch.registers.length >= 1);
  const r = await poolCall(pool, 'POST', '/v2/workers', startBody());
  await waitFor('worker_ready', () => orch.event('worker_ready', r.body.worker.id), 20000);
  const pid = r.body.worker.pid;
  pool.proc.kill('SIGKILL');
  await pool.exitedPromise;
  await waitFor('worker gone after its pool', () => !alive(pid), 15000);
  await orch.close();
});

// The GPU path without a GPU: the fake NVML of tests/unit/gpu (two "Fake
// H100"s) stands in for the driver, as LLORCH_NVML_LIBRARY allows.
const fakeNvml = process.env.LLORCH_FAKE_NVML;
test('GPUs from NVML: --gpus limits what is offered; a start gets CUDA_VISIBLE_DEVICES', { skip: !fakeNvml && 'LLORCH_FAKE_NVML not set' }, async () => {
  synthOnce();
  const orch = new FakeOrchestrator(await freePort());
  await orch.start();
  cleanups.push(() => orch.close());
  const pool = await startPool(orch.url, { modelDir, gpus: ['1'], env: { LLORCH_NVML_LIBRARY: fakeNvml } });
  await waitFor('registration', () => orch.registers.length >= 1);
  const devs = orch.registers[0].doc.devices;
  assert.equal(devs.length, 1, 'only gpu1 is offered, no CPU device');
  const g = devs[0];
  assert.equal(g.id, 'gpu1');
  assert.equal(g.kind, 'cuda');
  assert.equal(g.index, 1);
  assert.equal(g.uuid, 'GPU-fake-1');
  assert.equal(g.name, 'Fake H100 #1');
  assert.equal(g.memory_total, 80 * 1024 * MiB);
  assert.equal(g.utilization, 42);
  assert.equal(g.temperature, 55);
  assert.equal(g.memory_free + g.memory_used, g.memory_total);

  let r = await poolCall(pool, 'POST', '/v2/workers', startBody({ devices: ['gpu0'] }));
  assert.equal(r.status, 404);
  assert.equal(r.body.error.code, 'DEVICE_NOT_FOUND');
  r = await poolCall(pool, 'POST', '/v2/workers', startBody({ devices: ['cpu'] }));
  assert.equal(r.status, 404, 'no CPU device next to GPUs');

  r = await poolCall(pool, 'POST', '/v2/workers', startBody({ devices: ['gpu1'] }));
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const w = r.body.worker;
  assert.deepEqual(w.devices, ['gpu1']);
  // The worker sees GPU 1 as its device 0.
  let env = null;
  try { env = readFileSync(`/proc/${w.pid}/environ`, 'utf8').split('\0'); } catch { /* already gone */ }
  if (env) assert.ok(env.includes('CUDA_VISIBLE_DEVICES=1'), env.filter((e) => e.startsWith('CUDA')).join());
  await waitFor('spawn log line', () => pool.logs.some((l) => l.includes(`worker ${w.id}: pid ${w.pid}`) &&
    l.includes('on cuda:0 CUDA_VISIBLE_DEVICES=1')));
  // No real GPU here: the worker fails to load and says so; the pool reports it.
  const ev = await waitFor('worker_failed or worker_ready', () => orch.event('worker_failed', w.id) || orch.event('worker_ready', w.id), 20000);
  if (ev.type === 'worker_failed') {
    assert.equal(ev.worker.state, 'failed');
    assert.ok(ev.worker.exit.reason.length > 0);
  }
  await pool.stop();
  await orch.close();
});
