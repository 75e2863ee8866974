// A scripted pool manager and its workers, in this Node process, speaking
// docs/cluster-protocol.md and the worker's native API (docs/worker-api.md).
// The orchestrator under test is the real binary; the fake peers let the
// tests decide exactly when a worker dies, how fast tokens come, and observe
// what the orchestrator asked for (starts, stops, cancels) and when.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { CLUSTER_TOKEN, sleep } from './lib.mjs';

const GiB = 1024 ** 3;

function readBody(req) {
  return new Promise((resolve) => {
    let b = '';
    req.on('data', (d) => { b += d; });
    req.on('end', () => resolve(b));
  });
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

// One fake worker: /v2/execute streams `behavior.tokens` tokens, one every
// behavior.delayMs; behavior.die = 'before_first' | 'after:<n>' kills the
// connection (as a crashed process would).
export class FakeWorker {
  constructor(pool, { id, model, file, device, ctx, slots }) {
    Object.assign(this, { pool, id, model, file, device, ctx, slots });
    this.state = 'starting';
    this.token = randomBytes(8).toString('hex');
    this.jobs = new Map();        // job_id -> { cancelledAt, res }
    this.cancels = [];            // { job_id, at }
    this.executes = [];           // { job_id, at, requestId, body }
    this.sockets = new Set();
    this.behavior = { ...pool.behavior };
  }

  async start() {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
    this.port = await listen(this.server);
    this.url = `http://127.0.0.1:${this.port}`;
  }

  json() {
    return {
      id: this.id, model: this.model, file: this.file, devices: [this.device], ctx: this.ctx,
      slots: this.slots, state: this.state, url: this.state === 'starting' ? null : this.url,
      token: this.state === 'starting' ? null : this.token, pid: 1000, memory_bytes: this.pool.workerBytes,
      started_at_ms: Date.now(), exit: this.exit || null,
    };
  }

  busy() { let n = 0; for (const j of this.jobs.values()) if (!j.done) n++; return n; }

  async handle(req, res) {
    const body = await readBody(req);
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      res.writeHead(401, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'bad token', type: 'authentication_error', param: null, code: 'invalid_api_key' } }));
      return;
    }
    const m = /^\/v2\/jobs\/([^/]+)\/cancel$/.exec(req.url);
    if (req.method === 'POST' && m) {
      const job = this.jobs.get(m[1]);
      this.cancels.push({ job_id: m[1], at: Date.now() });
      if (job && !job.done) { job.cancelledAt = Date.now(); }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ job_id: m[1], state: job ? 'cancelled' : 'unknown' }));
      return;
    }
    if (req.method !== 'POST' || req.url !== '/v2/execute') {
      res.writeHead(404);
      res.end('{}');
      return;
    }
    const b = JSON.parse(body);
    this.executes.push({ job_id: b.job_id, at: Date.now(), requestId: req.headers['x-request-id'], body: b });
    const job = { done: false, res };
    this.jobs.set(b.job_id, job);
    req.on('close', () => { if (!job.done) { job.closedAt = Date.now(); job.done = true; } });
    res.on('close', () => { if (!job.done) { job.closedAt = Date.now(); job.done = true; } });
    const beh = this.behavior;
    if (beh.die === 'before_first') {
      await sleep(20);
      req.socket.destroy();
      job.done = true;
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    const send = (ev, data) => res.write(`event: ${ev}\ndata: ${JSON.stringify(data)}\n\n`);
    send('started', { job_id: b.job_id, slot: 0, prompt_tokens: 5, max_tokens: beh.tokens, queue_ms: 0 });
    const dieAfter = /^after:(\d+)$/.exec(beh.die || '');
    for (let i = 0; i < beh.tokens; i++) {
      await sleep(beh.delayMs);
      if (job.done) return; // client (orchestrator) went away
      if (job.cancelledAt) {
        send('end', { job_id: b.job_id, finish_reason: 'cancelled', prompt_tokens: 5, completion_tokens: i });
        res.end();
        job.done = true;
        return;
      }
      if (dieAfter && i === Number(dieAfter[1])) {
        req.socket.destroy();
        job.done = true;
        this.kill('SIGKILL');
        return;
      }
      send('token', { job_id: b.job_id, index: i, text: `t${i} `, token_ids: [i + 10] });
    }
    send('end', { job_id: b.job_id, finish_reason: 'length', prompt_tokens: 5, completion_tokens: beh.tokens,
      cached_tokens: 3 });
    res.end();
    job.done = true;
  }

  // The process "dies": connections reset, the pool reports it exited.
  kill(signal = 'SIGKILL') {
    if (this.state === 'exited') return;
    this.state = 'exited';
    this.exit = { code: null, signal, reason: `killed by ${signal}`, stderr_tail: [] };
    for (const s of this.sockets) s.destroy();
    this.server.close();
    this.pool.event('worker_exited', this);
  }
}

export class FakePool {
  // devices: [{ id: 'cpu', kind: 'cpu', free: bytes }]; files: ['tiny.gguf']
  constructor({ name, orchestrator, intervalMs = 400, devices, files, workerBytes = GiB,
    estimate = { fixed_bytes: GiB, per_token_bytes: 0 }, behavior = {} }) {
    Object.assign(this, { name, orchestrator, intervalMs, files, workerBytes, estimate });
    this.devices = devices || [{ id: 'cpu', kind: 'cpu', free: 8 * GiB }];
    this.behavior = { tokens: 5, delayMs: 20, die: null, readyDelayMs: 50, ...behavior };
    this.bootId = randomBytes(4).toString('hex');
    this.seq = 0;
    this.workers = new Map();
    this.starts = [];   // bodies of POST /v2/workers
    this.stops = [];    // worker ids of DELETE /v2/workers/{id}
    this.nextId = 1;
    this.paused = false;
    this.registrations = 0;
  }

  async start() {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.port = await listen(this.server);
    this.url = `http://127.0.0.1:${this.port}`;
    await this.register();
    this.timer = setInterval(() => this.heartbeat(), this.intervalMs);
  }

  async close() {
    clearInterval(this.timer);
    for (const w of this.workers.values()) {
      for (const s of w.sockets) s.destroy();
      w.server.close();
    }
    this.server.closeAllConnections?.();
    await new Promise((r) => this.server.close(r));
  }

  memUsed(dev) {
    let used = 0;
    for (const w of this.workers.values()) if (w.device === dev && w.state !== 'exited' && w.state !== 'failed') used += this.workerBytes;
    return used;
  }

  state() {
    return {
      protocol: 1, pool: this.name, url: this.url, boot_id: this.bootId, seq: ++this.seq,
      heartbeat_interval_ms: this.intervalMs, version: 'fake',
      devices: this.devices.map((d, i) => ({
        id: d.id, kind: d.kind, index: i, uuid: null, name: d.id,
        memory_total: d.free, memory_used: this.memUsed(d.id),
        memory_free: Math.max(0, d.free - this.memUsed(d.id)), utilization: null, temperature: null,
      })),
      models: this.files.map((f) => ({
        name: f.replace(/\.gguf$/, ''), file: f, arch: 'qwen2', params: 1000, quant: 'F32', ctx: 512,
        file_bytes: 1000, tensor_bytes: 1000, estimate: { cpu: this.estimate, cuda: this.estimate },
      })),
      workers: [...this.workers.values()].map((w) => w.json()),
    };
  }

  async post(path, body) {
    try {
      const r = await fetch(`${this.orchestrator}${path}`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${CLUSTER_TOKEN}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { status: r.status, body: await r.json().catch(() => null) };
    } catch (e) {
      return { status: 0, error: e };
    }
  }

  async register() {
    const r = await this.post('/v2/pools/register', this.state());
    if (r.status === 200) this.registrations++;
    this.lastRegister = r;
    return r;
  }

  async heartbeat() {
    if (this.paused) return;
    const gone = [...this.workers.values()].filter((w) => w.state === 'exited' || w.state === 'failed');
    const r = await this.post(`/v2/pools/${this.name}/heartbeat`, this.state());
    if (r.status === 404) await this.register();
    // Reported and acknowledged: a pool forgets its dead workers (protocol section 2).
    if (r.status === 200) for (const w of gone) this.workers.delete(w.id);
  }

  event(type, w) {
    if (this.paused) return;
    this.post(`/v2/pools/${this.name}/events`, { boot_id: this.bootId, seq: ++this.seq, events: [{ type, at_ms: Date.now(), worker: w.json() }] });
  }

  // Adds a worker that is already running (as after an orchestrator restart).
  async addReadyWorker(model, file, device = this.devices[0].id, slots = 2) {
    const w = new FakeWorker(this, { id: `w${this.nextId++}`, model, file, device, ctx: 512, slots });
    await w.start();
    w.state = 'ready';
    this.workers.set(w.id, w);
    return w;
  }

  async handle(req, res) {
    const body = await readBody(req);
    if (req.headers.authorization !== `Bearer ${CLUSTER_TOKEN}`) {
      res.writeHead(401);
      res.end('{}');
      return;
    }
    if (req.method === 'POST' && req.url === '/v2/workers') {
      const b = JSON.parse(body);
      this.starts.push({ ...b, at: Date.now() });
      const dev = this.devices.find((d) => d.id === b.devices[0]);
      const free = dev ? dev.free - this.memUsed(dev.id) : 0;
      if (!dev || free < this.workerBytes) {
        res.writeHead(507, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'INSUFFICIENT_MEMORY', type: 'insufficient_memory', param: null, message: `needs ${this.workerBytes}; ${b.devices[0]} has ${free} free`, need_bytes: this.workerBytes, free_bytes: free, device: b.devices[0] } }));
        return;
      }
      const w = new FakeWorker(this, { id: `w${this.nextId++}`, model: b.model, file: b.file, device: b.devices[0], ctx: b.ctx, slots: b.slots });
      await w.start();
      this.workers.set(w.id, w);
      res.writeHead(201, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ worker: w.json() }));
      this.event('worker_started', w);
      setTimeout(() => {
        if (w.state !== 'starting') return;
        w.state = 'ready';
        this.event('worker_ready', w);
      }, this.behavior.readyDelayMs);
      return;
    }
    const m = /^\/v2\/workers\/([^/]+)$/.exec(req.url);
    if (req.method === 'DELETE' && m) {
      this.stops.push(m[1]);
      const w = this.workers.get(m[1]);
      if (!w) {
        res.writeHead(404);
        res.end(JSON.stringify({ error: { code: 'WORKER_NOT_FOUND', message: 'no such worker' } }));
        return;
      }
      w.state = 'stopping';
      res.writeHead(202, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ worker: w.json() }));
      setTimeout(() => {
        w.state = 'exited';
        w.exit = { code: 0, signal: null, reason: 'stopped', stderr_tail: [] };
        for (const s of w.sockets) s.destroy();
        w.server.close();
        this.event('worker_exited', w);
      }, 30);
      return;
    }
    if (req.method === 'GET' && req.url === '/v2/state') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(this.state()));
      return;
    }
    res.writeHead(404);
    res.end('{}');
  }
}
