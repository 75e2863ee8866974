// The web dashboard in a real browser: Debian's chromium, headless, driven by
// playwright-core (no browser download), against a real orchestrator and two
// real pools on loopback whose workers are real processes. Each step saves a
// screenshot under $LLORCH_DASHBOARD_ARTIFACTS (build/dashboard-artifacts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, copyFileSync } from 'node:fs';
import path from 'node:path';
import {
  ADMIN_KEY, API_KEY, CLUSTER_TOKEN, cluster, freePort, orchestratorConfig, startRole, synthModel,
  tempDir, waitFor,
} from '../cluster/lib.mjs';

const CHROMIUM = process.env.LLORCH_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.LLORCH_DASHBOARD_ARTIFACTS || path.resolve('dashboard-artifacts');
const HB_MS = 300;
// how long the page may take to show a change (longer for sanitized builds, whose
// workers start and stop several times slower under a loaded ctest -j)
const UI_MS = process.env.LLORCH_E2E_SANITIZED ? 45000 : 15000;

// Loud failures, not skips: scripts/install-deps.sh [--with-npm] installs both.
const { chromium } = await import('playwright-core').catch((e) => {
  throw new Error(`playwright-core is not installed in tests/e2e/dashboard/node_modules: run ` +
    `scripts/install-deps.sh --with-npm (or npm install in tests/e2e/dashboard) (${e.message})`);
});
if (!existsSync(CHROMIUM)) {
  throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium (scripts/install-deps.sh, or ` +
    `apt-get install chromium), or point LLORCH_CHROMIUM at one`);
}
mkdirSync(ARTIFACTS, { recursive: true });

const tmp = tempDir('llorch-dashboard-e2e-');
const procs = [];
let orch;
let browser;
let page;

async function shot(p, name) {
  await p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

before(async () => {
  const src = path.join(tmp.dir, 'src');
  mkdirSync(src);
  synthModel(src, 'tiny');
  const dirs = {};
  for (const name of ['pool-a', 'pool-b']) {
    dirs[name] = path.join(tmp.dir, name);
    mkdirSync(dirs[name]);
    copyFileSync(path.join(src, 'tiny.gguf'), path.join(dirs[name], 'tiny.gguf'));
  }
  const port = await freePort();
  orch = await startRole('orchestrator', orchestratorConfig(port, [
    // keep: always one worker (min_replicas), on pool-b, so a killed one comes back.
    { name: 'keep', file: 'tiny.gguf', ctx: 256, slots: 2, min_replicas: 1, keep_alive: '60s', pins: ['pool-b'] },
    // tiny: none until an operator loads it (pinned so its place is known).
    { name: 'tiny', file: 'tiny.gguf', ctx: 256, slots: 2, keep_alive: '60s', pins: ['pool-a'] },
  ]), { dir: tmp.dir, name: 'orch' });
  procs.push(orch);
  for (const name of ['pool-a', 'pool-b']) {
    const pport = await freePort();
    procs.push(await startRole('pool', {
      listen: `127.0.0.1:${pport}`,
      log: { level: 'info', format: 'json' },
      shutdown_grace: '3s',
      pool: { name, orchestrator: orch.url, cluster_token: CLUSTER_TOKEN, model_dirs: [dirs[name]],
        heartbeat_interval: `${HB_MS}ms`, cpu_memory: '160MiB' }, // small: the bars show the workers
    }, { dir: tmp.dir, name }));
  }
  await waitFor('both pools up', async () => (await cluster(orch)).pools.filter((p) => p.up).length === 2, 20000);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await ctx.newPage();
  page.on('pageerror', (e) => { throw new Error(`page error: ${e.message}`); });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  // A sanitizer report (ASan builds) or a hung process fails the run.
  const errors = [];
  for (const p of procs.reverse()) await p.stop().catch((e) => errors.push(e));
  tmp.cleanup();
  if (errors.length) throw errors[0];
});

test('without a key, and with a wrong key, the page says so', async () => {
  await page.goto(orch.url + '/');
  const alert = page.getByRole('alert');
  await alert.waitFor({ state: 'visible', timeout: UI_MS });
  assert.match(await alert.textContent(), /needs an operator key.*401/);
  await page.getByLabel('Operator key').fill('not-the-key');
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.waitForFunction(() => /refused/.test(document.getElementById('error').textContent), null, { timeout: UI_MS });
  assert.match(await alert.textContent(), /operator key was refused \(401/);
  // A client key is a key of another kind: 403.
  await page.getByLabel('Operator key').fill(API_KEY);
  await page.getByLabel('Operator key').press('Enter');
  await page.waitForFunction(() => /refused \(403/.test(document.getElementById('error').textContent), null, { timeout: UI_MS });
  assert.equal(await page.locator('[data-pool]').count(), 0, 'no cluster data without the key');
  await shot(page, '01-wrong-key');
});

test('with the operator key: both pools, their devices and the kept-up worker', async () => {
  await page.getByLabel('Operator key').fill(ADMIN_KEY);
  await page.getByLabel('Operator key').press('Enter'); // the keyboard submits the form
  for (const name of ['pool-a', 'pool-b']) {
    const card = page.locator(`[data-pool="${name}"]`);
    await card.waitFor({ timeout: UI_MS });
    assert.match(await card.textContent(), /up/);
    await card.locator('[data-device="cpu"] .bar').waitFor({ timeout: UI_MS });
  }
  await page.getByRole('alert').waitFor({ state: 'hidden', timeout: UI_MS });
  await page.locator('#workers tr[data-model="keep"][data-state="ready"]').waitFor({ timeout: 30000 });
  // The worker's memory shows on pool-b's device bar, named in its legend.
  await page.waitForFunction(() => /keep \(worker/.test(document.querySelector('[data-pool="pool-b"] .legend').textContent),
    null, { timeout: UI_MS });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('llorch.operatorKey')), ADMIN_KEY);
  // A reload keeps the key (session storage) and connects without asking again.
  await page.reload();
  await page.locator('[data-pool="pool-a"]').waitFor({ timeout: UI_MS });
  await page.getByText('placed keep on pool-b').first().waitFor({ timeout: UI_MS }); // the timeline replays
  await shot(page, '02-cluster');
});

test('loading a model (by keyboard) makes its worker appear without a reload', async () => {
  let navigations = 0;
  const onNav = (f) => { if (f === page.mainFrame()) navigations++; };
  page.on('framenavigated', onNav);
  const load = page.getByRole('button', { name: 'Load tiny', exact: true });
  await load.focus();
  await page.keyboard.press('Enter');
  const row = page.locator('#workers tr[data-model="tiny"][data-state="ready"]');
  await row.waitFor({ timeout: 30000 });
  await page.locator('#timeline li[data-kind="placed"]', { hasText: 'placed tiny on pool-a' }).waitFor({ timeout: UI_MS });
  await page.locator('#timeline li[data-kind="ready"]', { hasText: 'of tiny is ready' }).waitFor({ timeout: UI_MS });
  assert.match(await page.locator('#models tr[data-model="tiny"]').textContent(), /ready/);
  page.off('framenavigated', onNav);
  assert.equal(navigations, 0, 'the page was not reloaded');
  await shot(page, '03-loaded');
});

test('killing a worker: the page shows it go and a new one come back', async () => {
  const before = (await cluster(orch)).workers.find((w) => w.model === 'keep' && w.state === 'ready');
  assert.ok(before && before.pid > 0);
  process.kill(before.pid, 'SIGKILL');
  await page.waitForFunction((id) => {
    const tr = document.querySelector(`#workers tr[data-worker="${id}"]`);
    return !tr || ['exited', 'failed'].includes(tr.dataset.state);
  }, before.id, { timeout: UI_MS });
  await page.locator('#timeline li[data-kind="exited"]', { hasText: before.id }).waitFor({ timeout: UI_MS });
  await shot(page, '04-killed');
  await page.waitForFunction((id) => [...document.querySelectorAll('#workers tr[data-model="keep"][data-state="ready"]')]
    .some((tr) => tr.dataset.worker !== id), before.id, { timeout: 30000 });
  await shot(page, '05-back');
});

test('the playground streams a chat and shows TTFT, tokens/s and usage', async () => {
  await page.getByLabel('Model', { exact: true }).selectOption('tiny');
  await page.getByLabel('Max tokens').fill('12');
  await page.getByLabel('Message').fill('Say something.');
  const resp = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await page.getByRole('button', { name: 'Send' }).click();
  const r = await resp;
  assert.equal(r.status(), 200);
  assert.match(r.headers()['content-type'], /text\/event-stream/);
  await page.waitForFunction(() => /completion tokens/.test(document.getElementById('play-stats').textContent),
    null, { timeout: 30000 });
  assert.ok((await page.locator('#play-out').textContent()).length > 0, 'reply text shown');
  const stats = await page.locator('#play-stats').textContent();
  assert.match(stats, /time to first token\d+ ms/);
  assert.match(stats, /tokens\/s[\d.]+/);
  assert.match(stats, /prompt tokens\d+/);
  await shot(page, '06-playground');
});

test('draining a worker stops it once idle and the timeline says so', async () => {
  const w = (await cluster(orch)).workers.find((x) => x.model === 'tiny' && x.state === 'ready');
  assert.ok(w);
  await page.getByRole('button', { name: `Drain worker ${w.id} of tiny` }).click();
  await page.locator('#timeline li[data-kind="drained"]', { hasText: w.id }).waitFor({ timeout: UI_MS });
  await waitFor('the drained worker gone', async () =>
    !(await cluster(orch)).workers.some((x) => x.id === w.id && x.state === 'ready'), UI_MS);
  await shot(page, '07-drained');
});

test('labels and keyboard basics', async () => {
  // Every form control has a label (or aria-label), every button a name.
  const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map((el) => el.id || el.name));
  assert.deepEqual(unlabeled, []);
  const nameless = await page.evaluate(() => [...document.querySelectorAll('button')]
    .filter((b) => !(b.getAttribute('aria-label') || b.textContent.trim())).length);
  assert.equal(nameless, 0);
  // Tab order starts with the skip link, then the key field; the skip link moves focus to the cluster.
  await page.reload(); // focus navigation starts at the top of the page
  await page.locator('[data-pool="pool-a"]').waitFor({ timeout: UI_MS });
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'key');
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash === '#main', null, { timeout: UI_MS });
  // Headings outline the page.
  const h2 = await page.locator('h2').allTextContents();
  for (const t of ['Pools and devices', 'Models', 'Workers', 'Queue', 'Timeline', 'Playground']) assert.ok(h2.includes(t), t);
});

test('usable at 1280x800 and at a phone width (390x844)', async () => {
  for (const [w, hgt, name] of [[1280, 800, '08-desktop'], [390, 844, '09-phone']]) {
    const ctx = await browser.newContext({ viewport: { width: w, height: hgt }, isMobile: w < 600 });
    const p = await ctx.newPage();
    await p.addInitScript((k) => sessionStorage.setItem('llorch.operatorKey', k), ADMIN_KEY);
    await p.goto(orch.url + '/');
    await p.locator('[data-pool="pool-b"] [data-device="cpu"]').waitFor({ timeout: UI_MS });
    await p.locator('#workers tr[data-model="keep"]').first().waitFor({ timeout: UI_MS });
    // Nothing wider than the screen: the page never scrolls sideways (wide tables scroll in their box).
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${w}px: the page is ${overflow}px wider than the screen`);
    // The controls are reachable and big enough to hit.
    const box = await p.getByRole('button', { name: 'Connect' }).boundingBox();
    assert.ok(box && box.width >= 40 && box.height >= 24 && box.x + box.width <= w, `${w}px: Connect button`);
    await p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: w < 600 });
    await ctx.close();
  }
});

test('a wrong key after a good one: the error shows and the cluster is hidden', async () => {
  await page.locator('[data-pool="pool-a"]').waitFor({ timeout: UI_MS });
  await page.getByLabel('Operator key').fill('wrong-again');
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.waitForFunction(() => /refused \(401/.test(document.getElementById('error').textContent), null, { timeout: UI_MS });
  assert.equal(await page.locator('[data-pool]').count(), 0, 'pools hidden');
  assert.equal(await page.locator('#workers tr[data-worker]').count(), 0, 'workers hidden');
  assert.equal(await page.locator('#timeline li').count(), 0, 'timeline hidden');
  await shot(page, '10-wrong-key-after-good');
});
