// Benchmark (not a test): what the orchestrator adds to time to first token
// and to per-token latency, at 1, 100 and 1000 concurrent streams, against
// talking to the same worker directly; the orchestrator's RSS at that load;
// and how many concurrent streams it holds.
//
//   node tests/e2e/cluster/bench-latency.mjs [--levels 1,100,1000] [--tokens 16] [--hold 4000] [--hold-direct N] [--shape tiny|medium]
//
// Real processes: one `llorch --role=worker` (tiny synthesized model, 256
// slots) and one `llorch --role=orchestrator`; the worker is registered with
// the orchestrator by a scripted pool (fake-pool.mjs), so the orchestrator
// path is exactly: client -> orchestrator (admission, dispatch, OpenAI <->
// /v2/execute translation, SSE relay) -> worker. The client is the same code
// for both paths (raw node http, keep-alive, SSE parsing), so the difference
// is the orchestrator.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { FakePool } from './fake-pool.mjs';
import { API_KEY, freePort, orchestratorConfig, sleep, startRole, synthModel, tempDir, BIN } from './lib.mjs';
import { spawn } from 'node:child_process';

const args = Object.fromEntries(process.argv.slice(2).map((a, i, all) => (a.startsWith('--') ? [a.slice(2), all[i + 1]] : null)).filter(Boolean));
const LEVELS = (args.levels || '1,100,1000').split(',').map(Number);
const TOKENS = Number(args.tokens || 16);
const HOLD = Number(args.hold || 4000);
// tiny: tokens come faster than the client reads them (per-token gaps ~0);
// medium: a few ms per decode step, so inter-token latency is measurable.
const SHAPES = {
  tiny: [],
  medium: ['--layers', '8', '--embd', '512', '--ff', '1408', '--heads', '8', '--kv-heads', '4'],
};
const SHAPE = args.shape || 'tiny';
const WORKER_TOKEN = 'bench-worker-token';

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

// One streaming completion; resolves { ttft, gaps[], tokens, ok }.
function stream(base, key) {
  return new Promise((resolve) => {
    const body = JSON.stringify({ model: 'tiny', prompt: 'Hello there', max_tokens: TOKENS, stream: true, ignore_eos: true, temperature: 0 });
    const t0 = process.hrtime.bigint();
    let last = 0n;
    let ttft = null;
    const gaps = [];
    let tokens = 0;
    let buf = '';
    let done = false;
    const req = http.request(`${base}/v1/completions`, {
      method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}`, 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const line = ev.split('\n').find((l) => l.startsWith('data: '));
          if (!line) continue;
          const data = line.slice(6);
          if (data === '[DONE]') { done = true; continue; }
          const j = JSON.parse(data);
          if (!j.choices || !j.choices.length || !j.choices[0].text) continue;
          const now = process.hrtime.bigint();
          if (ttft === null) ttft = Number(now - t0) / 1e6;
          else gaps.push(Number(now - last) / 1e6);
          last = now;
          tokens++;
        }
      });
      res.on('end', () => resolve({ ttft, gaps, tokens, ok: res.statusCode === 200 && done, why: `status ${res.statusCode}${done ? '' : ' no [DONE]'}` }));
      res.on('error', (e) => resolve({ ttft, gaps, tokens, ok: false, why: `response ${e.code || e.message}` }));
    });
    req.on('error', (e) => resolve({ ttft, gaps, tokens, ok: false, why: `request ${e.code || e.message}` }));
    req.end(body);
  });
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

function rssKiB(pid) {
  let st = '';
  try { st = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { /* gone */ }
  const rss = /VmRSS:\s+(\d+)/.exec(st);
  return { rss: rss ? Number(rss[1]) : 0 };
}

async function level(base, key, n, pid) {
  let peak = 0;
  const sampler = pid ? setInterval(() => { peak = Math.max(peak, rssKiB(pid).rss); }, 50) : null;
  const t0 = Date.now();
  let rs;
  if (n === 1) {
    // One stream at a time, 30 times: a single sample says little.
    rs = [];
    for (let i = 0; i < 30; i++) rs.push(await stream(base, key));
  } else {
    rs = await Promise.all(Array.from({ length: n }, () => stream(base, key)));
  }
  const wall = Date.now() - t0;
  if (sampler) clearInterval(sampler);
  // Held-back text (partial UTF-8 of random weights) makes some token events empty;
  // both paths count the chunks that carry text.
  const ok = rs.filter((r) => r.ok && r.tokens > 0);
  const ttft = ok.map((r) => r.ttft);
  const gaps = ok.flatMap((r) => r.gaps);
  const why = {};
  for (const r of rs) if (!ok.includes(r)) why[r.why] = (why[r.why] || 0) + 1;
  if (Object.keys(why).length) console.log(`  ${n} streams: failures ${JSON.stringify(why)}`);
  return { n, ok: ok.length, wall, ttft50: pct(ttft, 50), ttft99: pct(ttft, 99), itl50: pct(gaps, 50), itl99: pct(gaps, 99), peakRss: peak };
}

async function main() {
  const tmp = tempDir('llorch-bench-');
  const model = synthModel(tmp.dir, 'tiny', SHAPES[SHAPE]);
  const wport = await freePort();
  const worker = spawn(BIN, ['--role=worker', '--model', model, '--listen', `127.0.0.1:${wport}`, '--slots', '256', '--ctx', '64',
    '--threads', '1', '--token', WORKER_TOKEN, '--queue-max', '20000', '--queue-timeout', '600s', '--log-level', 'warn'], { stdio: 'inherit' });
  const wurl = `http://127.0.0.1:${wport}`;
  for (;;) {
    const r = await fetch(`${wurl}/health/ready`).catch(() => null);
    if (r && r.status === 200) break;
    await sleep(50);
  }
  const oport = await freePort();
  const orch = await startRole('orchestrator', {
    ...orchestratorConfig(oport, [{ name: 'tiny', file: 'tiny.gguf', slots: 256, ctx: 64, max_replicas: 1, keep_alive: -1 }],
      { queue: { max_total: 100000, timeout: '600s' } }),
    log: { level: 'info', format: 'json' },
  }, { dir: tmp.dir });
  const pool = new FakePool({ name: 'bench', orchestrator: orch.url, files: ['tiny.gguf'], intervalMs: 1000 });
  // The real worker, reported by the scripted pool as one of its own.
  pool.workers.set('w-real', {
    state: 'ready', device: 'cpu', sockets: new Set(), server: { close() {} },
    json: () => ({ id: 'w-real', model: 'tiny', file: 'tiny.gguf', devices: ['cpu'], ctx: 64, slots: 256, state: 'ready',
      url: wurl, token: WORKER_TOKEN, pid: worker.pid, memory_bytes: 1 << 20, started_at_ms: Date.now(), exit: null }),
  });
  await pool.start();
  await sleep(300);

  console.log(`bench: ${TOKENS} tokens per stream, worker 256 slots, ${SHAPE} model, 2-core shared machine`);
  console.log('| streams | path | ok | wall ms | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | inter-token p99 ms | orch peak RSS MiB |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const n of LEVELS) {
    await level(wurl, WORKER_TOKEN, Math.min(n, 8), null); // warm-up
    const d = await level(wurl, WORKER_TOKEN, n, null);
    const o = await level(orch.url, API_KEY, n, orch.proc.pid);
    for (const [name, r] of [['worker direct', d], ['via orchestrator', o]]) {
      console.log(`| ${n} | ${name} | ${r.ok}/${n === 1 ? 30 : n} | ${r.wall} | ${r.ttft50.toFixed(2)} | ${r.ttft99.toFixed(2)} | ${r.itl50.toFixed(2)} | ${r.itl99.toFixed(2)} | ${r.peakRss ? (r.peakRss / 1024).toFixed(1) : '-'} |`);
    }
    console.log(`| ${n} | added by orchestrator | | | ${(o.ttft50 - d.ttft50).toFixed(2)} | ${(o.ttft99 - d.ttft99).toFixed(2)} | ${(o.itl50 - d.itl50).toFixed(2)} | ${(o.itl99 - d.itl99).toFixed(2)} | |`);
  }
  if (args['hold-direct']) {
    const n = Number(args['hold-direct']);
    const h = await level(wurl, WORKER_TOKEN, n, null);
    console.log(`hold-direct: ${h.ok}/${n} concurrent streams completed on the worker directly in ${h.wall} ms`);
  }
  if (HOLD > 0) {
    const idle = rssKiB(orch.proc.pid).rss;
    const h = await level(orch.url, API_KEY, HOLD, orch.proc.pid);
    const errs = orch.logs.filter((l) => /"level":"(warn|error)"|went away|"http"/.test(l));
    if (errs.length) console.log(`orchestrator warnings (${errs.length}), first: ${errs.slice(0, 3).join('\n')}`);
    if (orch.exited) console.log(`orchestrator exited ${JSON.stringify(orch.exited)}:\n${orch.logs.slice(-15).join('\n')}`);
    console.log(`hold: ${h.ok}/${HOLD} concurrent streams completed through the orchestrator in ${h.wall} ms; ` +
      `orchestrator RSS ${(idle / 1024).toFixed(1)} MiB idle, peak ${(h.peakRss / 1024).toFixed(1)} MiB under load`);
  }
  await pool.close();
  await orch.stop();
  worker.kill('SIGTERM');
  await new Promise((r) => worker.on('exit', r));
  agent.destroy();
  tmp.cleanup();
}

main().catch((e) => { console.error(e); process.exit(1); });
