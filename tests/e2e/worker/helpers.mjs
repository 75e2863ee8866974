// Shared helpers for the worker's end-to-end tests: make a tiny model with
// `llorch synth`, start the real `llorch --role=worker` on a free loopback
// port, talk to it, stop it.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const BIN = process.env.LLORCH_BIN || path.resolve(here, '../../../build/llorch');

export function tempDir() {
  const dir = mkdtempSync(path.join(tmpdir(), 'llorch-worker-e2e-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// A 2-layer qwen2-shaped model with the synthetic ChatML vocabulary.
export function synthModel(dir, name = 'tiny') {
  const file = path.join(dir, `${name}.gguf`);
  if (!existsSync(file)) {
    execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '2', '--embd', '64', '--ff', '128',
      '--heads', '4', '--kv-heads', '2', '--vocab', '512', '--ctx', '512', '--type', 'f32',
      '-o', file], { stdio: 'pipe' });
  }
  return file;
}

// A model slow enough (~100-200 tok/s on one core) that a long generation
// outlasts a short grace period or queue timeout.
export function synthSlowModel(dir) {
  const file = path.join(dir, 'slow.gguf');
  if (!existsSync(file)) {
    execFileSync(BIN, ['synth', '--arch', 'llama', '--layers', '8', '--embd', '512', '--ff', '1408',
      '--heads', '8', '--kv-heads', '4', '--vocab', '1024', '--ctx', '1024', '--type', 'q8_0',
      '-o', file], { stdio: 'pipe' });
  }
  return file;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Starts a worker; resolves once it listens (and, unless waitReady is false,
// once /health/ready says 200). stderr lines are kept in w.logs.
export async function startWorker({ model, args = [], waitReady = true, timeoutMs = 20000 }) {
  const proc = spawn(BIN, ['--role=worker', '--model', model, '--listen', '127.0.0.1:0',
    '--log-format', 'json', '--threads', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const w = { proc, logs: [], exited: null, port: 0, url: '' };
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    w.exited = { code, signal };
    resolve(w.exited);
  }));
  w.exitedPromise = exited;
  let buf = '';
  const listening = new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        w.logs.push(line);
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
        if (m && !w.port) {
          w.port = Number(m[1]);
          w.url = `http://127.0.0.1:${w.port}`;
          resolve();
        }
      }
    });
    exited.then((e) => reject(new Error(`worker exited (${JSON.stringify(e)}) before listening:\n${w.logs.join('\n')}`)));
    setTimeout(() => reject(new Error('worker did not listen in time')), timeoutMs).unref();
  });
  await listening;
  w.stop = async (signal = 'SIGTERM') => {
    if (w.exited) return w.exited;
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
    const e = await exited;
    clearTimeout(t);
    return e;
  };
  if (waitReady) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await fetch(`${w.url}/health/ready`).catch(() => null);
      if (r && r.status === 200) break;
      if (w.exited) throw new Error(`worker exited while loading:\n${w.logs.join('\n')}`);
      if (Date.now() > deadline) throw new Error('worker not ready in time');
      await sleep(20);
    }
  }
  return w;
}

// Reads a text/event-stream response into [{event, data, id}] (data parsed as
// JSON where it is JSON; id a number, null without an id: field).
// onEvent(ev, events so far) may return true to stop reading.
export async function readSSE(response, onEvent) {
  const events = [];
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message', id = null;
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
        else if (line.startsWith('id: ')) id = Number(line.slice(4));
      }
      if (!data.length) continue;
      let parsed = data.join('\n');
      try { parsed = JSON.parse(parsed); } catch { /* [DONE] */ }
      const ev = { event, data: parsed, id };
      events.push(ev);
      if (onEvent && onEvent(ev, events)) {
        await reader.cancel();
        return events;
      }
    }
  }
  return events;
}

// POST /v2/execute and collect its events.
export async function execute(w, body, { token, onEvent, signal } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await fetch(`${w.url}/v2/execute`, { method: 'POST', headers, body: JSON.stringify(body), signal });
  if (r.status !== 200) return { status: r.status, body: await r.json(), events: [] };
  return { status: 200, events: await readSSE(r, onEvent) };
}

export async function info(w, token) {
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  const r = await fetch(`${w.url}/v2/info`, { headers });
  return r.json();
}

// Polls /v2/info until pred(info) holds; returns the last info.
export async function waitInfo(w, pred, { token, timeoutMs = 5000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await info(w, token);
    if (pred(last)) return last;
    if (Date.now() > deadline) return last;
    await sleep(10);
  }
}

export { sleep };

// An openai-client chat stream with n choices, by choice: text, finish
// reasons, role chunks, and the usage chunk. Throws on an index out of
// range or a choice that finishes twice.
export async function collectChoices(stream, n) {
  const text = Array(n).fill(''), finish = Array(n).fill(null), roles = Array(n).fill(0);
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (!(c.index >= 0 && c.index < n)) throw new Error(`chunk for choice ${c.index} of ${n}`);
      if (c.delta.role) roles[c.index]++;
      text[c.index] += c.delta.content ?? '';
      if (c.finish_reason) {
        if (finish[c.index] !== null) throw new Error(`choice ${c.index} finished twice`);
        finish[c.index] = c.finish_reason;
      }
    }
  }
  return { text, finish, roles, usage };
}
