// Helpers for the cluster's end-to-end tests: start the real llorch binary in
// its roles (orchestrator, pool) on loopback, wait for them, read
// /v2/cluster, and stop them.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.LLORCH_BIN || path.resolve(here, '../../../build/llorch');
export const API_KEY = 'e2e-client-key';
export const CLUSTER_TOKEN = 'e2e-cluster-token';
export const ADMIN_KEY = 'e2e-admin-key';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function tempDir(prefix = 'llorch-cluster-e2e-') {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// A free loopback port (closed again; good enough on a quiet test machine).
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

// A tiny qwen2-shaped model (the synthetic vocabulary has a chat template).
export function synthModel(dir, name = 'tiny', extra = []) {
  const file = path.join(dir, `${name}.gguf`);
  if (!existsSync(file)) {
    execFileSync(BIN, ['synth', '--arch', 'qwen2', '--layers', '2', '--embd', '64', '--ff', '128',
      '--heads', '4', '--kv-heads', '2', '--vocab', '512', '--ctx', '512', '--type', 'f32',
      ...extra, '-o', file], { stdio: 'pipe' });
  }
  return file;
}

// Minimal YAML writer for the config files these tests need (maps, lists, scalars).
export function toYaml(v, indent = '') {
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return v.map((x) => {
      if (x && typeof x === 'object') {
        const inner = toYaml(x, indent + '  ').replace(/^\s+/, '');
        return `\n${indent}- ${inner}`;
      }
      return `\n${indent}- ${JSON.stringify(x)}`;
    }).join('');
  }
  if (v && typeof v === 'object') {
    return Object.entries(v).map(([k, x]) => {
      if (x && typeof x === 'object' && !(Array.isArray(x) && x.length === 0)) {
        return `\n${indent}${k}:${toYaml(x, indent + '  ')}`;
      }
      return `\n${indent}${k}: ${Array.isArray(x) ? '[]' : JSON.stringify(x)}`;
    }).join('');
  }
  return JSON.stringify(v);
}

// Starts `llorch --role=<role>` with a config object; resolves once it listens.
export async function startRole(role, config, { dir, name = role, env = {}, args = [], timeoutMs = 20000 } = {}) {
  const cfgPath = path.join(dir, `${name}.yaml`);
  writeFileSync(cfgPath, toYaml(config).trimStart() + '\n');
  const proc = spawn(BIN, [`--role=${role}`, '--config', cfgPath, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  const p = { role, name, proc, logs: [], exited: null, port: 0, url: '', cfgPath };
  p.exitedPromise = new Promise((resolve) => proc.on('exit', (code, signal) => {
    p.exited = { code, signal };
    resolve(p.exited);
  }));
  let buf = '';
  const onData = (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      p.logs.push(line);
      if (process.env.LLORCH_E2E_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
      const m = /listening on http:\/\/[^:]+:(\d+)/.exec(line);
      if (m && !p.port) p.port = Number(m[1]);
    }
  };
  proc.stderr.on('data', onData);
  proc.stdout.on('data', onData);
  const deadline = Date.now() + timeoutMs;
  while (!p.port) {
    if (p.exited) throw new Error(`${name} exited (${JSON.stringify(p.exited)}) before listening:\n${p.logs.join('\n')}`);
    if (Date.now() > deadline) throw new Error(`${name} did not listen in time:\n${p.logs.join('\n')}`);
    await sleep(20);
  }
  p.url = `http://127.0.0.1:${p.port}`;
  p.stop = async (signal = 'SIGTERM') => {
    if (p.exited) return p.exited;
    try { proc.kill(signal); } catch { /* gone */ }
    const t = setTimeout(() => { try { proc.kill('SIGKILL'); } catch { /* gone */ } }, 10000);
    const e = await p.exitedPromise;
    clearTimeout(t);
    // An ASan/UBSan build reports on stderr (and LeakSanitizer at exit): a
    // report fails the test that stops the process.
    const bad = p.logs.filter((l) => /Sanitizer|runtime error:/.test(l));
    if (bad.length) throw new Error(`${name}: sanitizer report:\n${p.logs.join('\n')}`);
    return e;
  };
  return p;
}

export async function getJson(url, key = API_KEY) {
  const r = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
  return { status: r.status, headers: r.headers, body: await r.json().catch(() => null) };
}

export async function postJson(url, body, key = API_KEY, headers = {}) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: r.status, headers: r.headers, body: await r.json().catch(() => null) };
}

export async function cluster(orch) {
  const r = await getJson(`${orch.url}/v2/cluster`, ADMIN_KEY);
  if (r.status !== 200) throw new Error(`/v2/cluster answered ${r.status}`);
  return r.body;
}

// Polls fn (async, returns truthy when done) every 25 ms until timeoutMs.
export async function waitFor(what, fn, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export function orchestratorConfig(port, models, extra = {}) {
  return {
    listen: `127.0.0.1:${port}`,
    log: { level: process.env.LLORCH_E2E_LOG_LEVEL || 'info', format: 'json' },
    shutdown_grace: '2s',
    orchestrator: {
      api_keys: [API_KEY],
      admin_keys: [ADMIN_KEY],
      cluster_token: CLUSTER_TOKEN,
      queue: { max_total: 64, timeout: '20s', ...(extra.queue || {}) },
      heartbeat_miss_limit: 3,
      retry_max: 2,
      ...(extra.orchestrator || {}),
      models,
    },
  };
}
