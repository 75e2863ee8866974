// llorch dashboard: the cluster from GET /v2/cluster/events (server-sent
// events read with fetch, so the operator key can travel in the
// Authorization header, which EventSource cannot send), operator actions on
// the /v2 routes, and a playground on /v1/chat/completions. Plain JS, no
// framework: every state snapshot re-renders the sections from scratch.
'use strict';

const KEY_STORE = 'llorch.operatorKey';
const TIMELINE_MAX = 200;
const $ = (id) => document.getElementById(id);

let key = sessionStorage.getItem(KEY_STORE) || '';
let stream = null;          // AbortController of the open event stream
let retryMs = 1000;
let retryTimer = 0;
const timeline = [];        // newest last
let lastSeq = 0;

// ---- small helpers ----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return '?';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${u[i]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return '?';
  if (ms < 0) return 'never';
  if (ms < 1000) return `${ms} ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.round(s / 60);
  return m < 120 ? `${m} min` : `${Math.round(m / 60)} h`;
}

function badge(state, label) {
  return h('span', { class: `badge st-${state}`, text: label || state });
}

// A stable colour per model, so a model's workers look alike on every bar.
function modelColor(name) {
  let x = 0;
  for (const c of name || '') x = (x * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${x % 360} 60% 45%)`;
}

function authHeaders(extra) {
  const hd = { ...(extra || {}) };
  if (key) hd.Authorization = `Bearer ${key}`;
  return hd;
}

function showError(msg) {
  const e = $('error');
  e.textContent = msg;
  e.hidden = !msg;
}

let sayTimer = 0;
// A short-lived note on what an action did (errors go to the alert instead).
function say(msg) {
  $('status').textContent = msg;
  clearTimeout(sayTimer);
  if (msg) sayTimer = setTimeout(() => { $('status').textContent = ''; }, 5000);
}

// The error message of an OpenAI-style envelope, else the status line.
async function errorText(r) {
  let detail = '';
  try {
    const j = await r.json();
    detail = j && j.error && j.error.message ? j.error.message : '';
  } catch { /* not JSON */ }
  return `${r.status} ${r.statusText || ''}${detail ? `: ${detail}` : ''}`.trim();
}

// ---- the event stream ----

function setConn(text, live) {
  const c = $('conn');
  c.textContent = text;
  c.classList.toggle('live', !!live);
}

function connect() {
  if (stream) stream.abort();
  clearTimeout(retryTimer);
  const ctl = new AbortController();
  stream = ctl;
  setConn('connecting…');
  readStream(ctl).catch((err) => {
    if (ctl.signal.aborted) return;
    setConn(`disconnected (${err.message}); retrying`);
    retryTimer = setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  });
}

async function readStream(ctl) {
  const r = await fetch('/v2/cluster/events', { headers: authHeaders(), signal: ctl.signal, cache: 'no-store' });
  if (r.status === 401 || r.status === 403) {
    const why = await errorText(r);
    stream = null;
    setConn('not connected');
    clearViews(); // what an earlier key showed is not shown to this one
    showError(key ? `The operator key was refused (${why}). Enter another one.`
      : `This orchestrator needs an operator key (${why}). Enter it above.`);
    $('key').focus();
    return;
  }
  if (!r.ok) throw new Error(await errorText(r));
  showError('');
  retryMs = 1000;
  setConn('live', true);
  timeline.length = 0;       // the stream replays the recent past
  lastSeq = 0;
  $('timeline').replaceChildren();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error('the stream ended');
    buf += dec.decode(value, { stream: true });
    // Events end with a blank line (the server writes \n line ends).
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let v = c < 0 ? '' : line.slice(c + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) onEvent(event, data.join('\n'));
    }
  }
}

function onEvent(event, data) {
  let j;
  try { j = JSON.parse(data); } catch { return; }
  if (event === 'cluster') {
    render(j);
  } else if (event === 'timeline') {
    if (j.seq <= lastSeq) return;
    lastSeq = j.seq;
    timeline.push(j);
    if (timeline.length > TIMELINE_MAX) timeline.shift();
    renderTimelineEntry(j);
  }
}

// ---- rendering ----

function clearViews() {
  render({ pools: [], workers: [], pending_starts: [], models: [],
    queue: { interactive: 0, batch: 0, total: 0, max_total: 0, timeout_ms: 0 },
    stats: { active_requests: 0, admitted: 0, rejected: 0, timed_out: 0, retries: 0, evictions: 0, starts: 0, start_failures: 0 } });
  $('queue').replaceChildren();
  $('timeline').replaceChildren();
  timeline.length = 0;
  lastSeq = 0;
}

// Keeps keyboard focus on the control with the same id across a re-render.
function keepFocus(fn) {
  const id = document.activeElement && document.activeElement.id;
  fn();
  if (id && document.activeElement !== $(id) && $(id)) $(id).focus();
}

function render(s) {
  keepFocus(() => {
    renderPools(s);
    renderModels(s);
    renderWorkers(s);
    renderQueue(s);
    renderPlayModels(s);
  });
}

function deviceBar(s, pool, dev) {
  const total = dev.memory_total || 1;
  const parts = [];
  let held = 0;
  for (const w of s.workers) {
    if (w.pool !== pool.name || !w.devices.includes(dev.id)) continue;
    if (w.state === 'exited' || w.state === 'failed') continue;
    const b = Math.round((w.memory_bytes || 0) / Math.max(1, w.devices.length));
    held += b;
    parts.push({ cls: 'worker', bytes: b, color: modelColor(w.model), label: `${w.model} (worker ${w.id}, ${w.state})` });
  }
  for (const ps of s.pending_starts || []) {
    if (ps.pool !== pool.name || ps.device !== dev.id) continue;
    held += ps.need_bytes;
    parts.push({ cls: 'starting', bytes: ps.need_bytes, legend: 'var(--start)', label: `${ps.model} (starting, reserved)` });
  }
  // What the device reports used beyond the workers: other processes, the OS.
  const other = Math.max(0, (dev.memory_total - dev.memory_free) - held);
  if (other > 0) parts.push({ cls: 'other', bytes: other, label: 'other use' });
  const bar = h('div', {
    class: 'bar', role: 'img',
    'aria-label': `${dev.id}: ${bytes(dev.memory_free)} free of ${bytes(dev.memory_total)}; ` +
      parts.map((p) => `${p.label} ${bytes(p.bytes)}`).join('; '),
  });
  for (const p of parts) {
    const seg = h('span', { class: p.cls, title: `${p.label}: ${bytes(p.bytes)}` });
    seg.style.width = `${Math.min(100, (100 * p.bytes) / total)}%`;
    if (p.color) seg.style.background = p.color;
    bar.append(seg);
  }
  const legend = h('ul', { class: 'legend' },
    parts.filter((p) => p.cls !== 'other').map((p) => {
      const li = h('li', { text: `${p.label}: ${bytes(p.bytes)}` });
      if (p.color || p.legend) li.style.setProperty('--c', p.color || p.legend);
      return li;
    }));
  const extra = [];
  if (dev.utilization !== null && dev.utilization !== undefined) extra.push(`${dev.utilization}% busy`);
  if (dev.temperature !== null && dev.temperature !== undefined) extra.push(`${dev.temperature} °C`);
  return h('div', { class: 'device', 'data-device': dev.id },
    h('div', { class: 'name' },
      h('strong', { text: `${dev.id}${dev.name ? ` · ${dev.name}` : ''}` }),
      h('span', { text: `${bytes(dev.memory_free)} free of ${bytes(dev.memory_total)}${extra.length ? ` · ${extra.join(' · ')}` : ''}` })),
    bar, legend);
}

function renderPools(s) {
  const box = $('pools');
  box.replaceChildren();
  if (!s.pools.length) {
    box.append(h('p', { class: 'empty', text: 'No pool has registered yet.' }));
    return;
  }
  for (const p of s.pools) {
    box.append(h('article', { class: 'pool', 'data-pool': p.name, 'aria-label': `pool ${p.name}` },
      h('h3', {}, p.name, badge(p.up ? 'up' : 'down')),
      h('p', { class: 'meta', text: `${p.url} · last heartbeat ${duration(p.last_heartbeat_ms_ago)} ago · ${p.models.length} model files` }),
      p.devices.map((d) => deviceBar(s, p, d))));
  }
}

async function operatorPost(path, what) {
  say(`${what}…`);
  try {
    const r = await fetch(path, { method: 'POST', headers: authHeaders() });
    if (!r.ok) {
      const why = await errorText(r);
      showError(`${what} failed: ${why}`);
      say('');
      return;
    }
    showError('');
    say(`${what}: accepted`);
  } catch (err) {
    showError(`${what} failed: ${err.message}`);
    say('');
  }
}

function renderModels(s) {
  const tb = $('models').tBodies[0];
  tb.replaceChildren();
  for (const m of s.models) {
    const enc = encodeURIComponent(m.name);
    tb.append(h('tr', { 'data-model': m.name },
      h('th', { scope: 'row', text: m.name }),
      h('td', {}, badge(m.state)),
      h('td', { text: `${m.replicas} (min ${m.min_replicas}, max ${m.max_replicas || '∞'})` }),
      h('td', { text: m.queued }),
      h('td', { text: m.running }),
      h('td', { text: m.keep_alive_ms < 0 ? 'forever' : duration(m.keep_alive_ms) }),
      h('td', { class: 'reason', text: m.pending_reason || '' }),
      h('td', { class: 'actions' },
        h('button', { type: 'button', id: `load-${m.name}`, 'aria-label': `Load ${m.name}`,
          onclick: () => operatorPost(`/v2/models/${enc}/load`, `Load ${m.name}`) }, 'Load'),
        h('button', { type: 'button', class: 'secondary', id: `unload-${m.name}`, 'aria-label': `Unload ${m.name}`,
          onclick: () => operatorPost(`/v2/models/${enc}/unload`, `Unload ${m.name}`) }, 'Unload'))));
  }
}

function workerState(w) {
  if (w.draining && w.state === 'ready') return 'draining';
  if (w.broken) return 'broken';
  if (w.stopping && w.state === 'ready') return 'stopping';
  return w.state;
}

function renderWorkers(s) {
  const tb = $('workers').tBodies[0];
  tb.replaceChildren();
  const live = s.workers.filter((w) => w.state !== 'exited' && w.state !== 'failed');
  if (!live.length) {
    tb.append(h('tr', {}, h('td', { colspan: 8, class: 'empty', text: 'No worker is running.' })));
  }
  for (const w of s.workers) {
    const st = workerState(w);
    const canDrain = (w.state === 'ready' || w.state === 'starting') && !w.draining && !w.stopping;
    tb.append(h('tr', { 'data-worker': w.id, 'data-state': st, 'data-model': w.model },
      h('th', { scope: 'row', text: w.id }),
      h('td', { text: w.model }),
      h('td', {}, badge(st)),
      h('td', { text: `${w.busy} / ${w.slots}` }),
      h('td', { text: w.busy ? 'busy' : duration(w.idle_ms) }),
      h('td', { text: `${w.pool} ${w.devices.join(',')}${w.pid ? ` (pid ${w.pid})` : ''}` }),
      h('td', { text: bytes(w.memory_bytes) }),
      h('td', { class: 'actions' }, canDrain
        ? h('button', { type: 'button', class: 'secondary', id: `drain-${w.pool}-${w.id}`,
          'aria-label': `Drain worker ${w.id} of ${w.model}`,
          onclick: () => operatorPost(`/v2/cluster/workers/${encodeURIComponent(w.pool)}/${encodeURIComponent(w.id)}/drain`,
            `Drain ${w.id}`) }, 'Drain')
        : '')));
  }
}

function renderQueue(s) {
  const q = s.queue;
  const st = s.stats;
  const rows = [
    ['interactive', q.interactive], ['batch', q.batch], ['total', `${q.total} of ${q.max_total}`],
    ['timeout', duration(q.timeout_ms)], ['active requests', st.active_requests],
    ['admitted', st.admitted], ['rejected', st.rejected], ['timed out', st.timed_out],
    ['retries', st.retries], ['evictions', st.evictions], ['starts (failed)', `${st.starts} (${st.start_failures})`],
  ];
  $('queue').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
}

function renderTimelineEntry(e) {
  const ol = $('timeline');
  const t = new Date(e.time_ms);
  ol.prepend(h('li', { 'data-kind': e.kind },
    h('time', { datetime: t.toISOString(), text: t.toLocaleTimeString() }),
    h('span', { class: `badge k-${e.kind}`, text: e.kind }),
    h('span', { class: 'msg', text: e.message })));
  while (ol.children.length > TIMELINE_MAX) ol.lastElementChild.remove();
}

function renderPlayModels(s) {
  const sel = $('play-model');
  const names = s.models.map((m) => m.name);
  const have = [...sel.options].map((o) => o.value);
  if (names.join('\n') === have.join('\n')) return;
  const cur = sel.value;
  sel.replaceChildren(...names.map((n) => h('option', { value: n, text: n })));
  if (names.includes(cur)) sel.value = cur;
}

// ---- playground ----

let play = null;

async function runPlayground(ev) {
  ev.preventDefault();
  if (play) return;
  const model = $('play-model').value;
  const content = $('play-prompt').value;
  const maxTokens = Number($('play-max').value) || 64;
  const out = $('play-out');
  const stats = $('play-stats');
  out.textContent = '';
  stats.replaceChildren();
  const ctl = new AbortController();
  play = ctl;
  $('play-send').disabled = true;
  $('play-stop').disabled = false;
  const t0 = performance.now();
  let tFirst = 0;
  let tLast = 0;
  let chunks = 0;
  let usage = null;
  let finish = '';
  try {
    const r = await fetch('/v1/chat/completions', {
      method: 'POST', signal: ctl.signal,
      headers: authHeaders({ 'Content-Type': 'application/json' }),
      body: JSON.stringify({ model, messages: [{ role: 'user', content }], max_tokens: maxTokens,
        stream: true, stream_options: { include_usage: true } }),
    });
    if (!r.ok) throw new Error(await errorText(r));
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    let done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') { done = true; break; }
        const j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message || 'the stream failed');
        if (j.usage) usage = j.usage;
        const c = j.choices && j.choices[0];
        if (c && c.delta && c.delta.content) {
          if (!tFirst) tFirst = performance.now();
          tLast = performance.now();
          chunks++;
          out.textContent += c.delta.content;
        }
        if (c && c.finish_reason) finish = c.finish_reason;
      }
    }
    showError('');
  } catch (err) {
    if (!ctl.signal.aborted) showError(`Playground: ${err.message}`);
  } finally {
    play = null;
    $('play-send').disabled = false;
    $('play-stop').disabled = true;
  }
  const gen = usage ? usage.completion_tokens : chunks;
  const rows = [['time to first token', tFirst ? `${(tFirst - t0).toFixed(0)} ms` : '—']];
  // Decode rate: the tokens after the first over the time they took (TTFT is shown apart).
  if (tFirst && tLast > tFirst && gen > 1) rows.push(['tokens/s', ((gen - 1) / ((tLast - tFirst) / 1000)).toFixed(1)]);
  else rows.push(['tokens/s', '—']);
  if (usage) {
    rows.push(['prompt tokens', usage.prompt_tokens], ['completion tokens', usage.completion_tokens],
      ['total tokens', usage.total_tokens]);
  }
  if (finish) rows.push(['finish reason', finish]);
  rows.push(['total time', `${(performance.now() - t0).toFixed(0)} ms`]);
  stats.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
}

// ---- start ----

function init() {
  $('key').value = key;
  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    key = $('key').value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    showError('');
    connect();
  });
  $('forget').addEventListener('click', () => {
    key = '';
    $('key').value = '';
    sessionStorage.removeItem(KEY_STORE);
    if (stream) stream.abort();
    stream = null;
    setConn('not connected');
    clearViews();
    say('key forgotten');
  });
  $('play-form').addEventListener('submit', runPlayground);
  $('play-stop').addEventListener('click', () => { if (play) play.abort(); });
  connect();
}

init();
