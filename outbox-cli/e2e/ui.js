// The web view (`outbox ui`) in headless Chromium, through Playwright
// (playwright-core on Debian's /usr/bin/chromium; scripts/ui-e2e.sh sets
// it up and runs this).
//
//   node ui.js --outbox BIN --fixture BIN --out DIR [--screenshot PATH]
//
// Starts the fixture (a live application whose sink refuses one payment
// event for good: one dead letter, one event parked behind it), serves its
// SQLite file with `outbox ui`, and runs the scenarios against the page.
// Every wait is on a real event (a line printed, a page state) with a
// bounded timeout. Ends with one line "ui-e2e scenarios: P passed, F failed".
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const WAIT = 30_000;

function arg(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

/** Spawns `cmd`, resolving with the child and its first stdout line matching `re`. */
function spawnUntil(cmd, args, re, log) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const timer = setTimeout(() => reject(new Error(`${path.basename(cmd)}: no line matching ${re} within ${WAIT} ms`)), WAIT);
    child.stderr.on('data', (d) => fs.appendFileSync(log, d));
    child.on('exit', (code) => reject(new Error(`${path.basename(cmd)} exited (${code}) before printing ${re}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      fs.appendFileSync(log, line + '\n');
      const m = line.match(re);
      if (m) {
        clearTimeout(timer);
        resolve({ child, match: m });
      }
    });
  });
}

async function main() {
  const outboxBin = arg('--outbox');
  const fixtureBin = arg('--fixture');
  const out = arg('--out');
  const screenshot = arg('--screenshot');
  fs.mkdirSync(out, { recursive: true });
  const db = path.join(out, 'app.db');
  for (const f of fs.readdirSync(out)) if (f.startsWith('app.db')) fs.rmSync(path.join(out, f));
  const log = path.join(out, 'processes.log');
  fs.writeFileSync(log, '');

  const children = [];
  let browser;
  let passed = 0;
  let failed = 0;
  const scenario = async (name, fn) => {
    try {
      await fn();
      passed++;
      console.log(`ok   ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    }
  };

  try {
    const fixture = await spawnUntil(fixtureBin, [db], /^ready$/, log);
    children.push(fixture.child);
    const ui = await spawnUntil(outboxBin, ['ui', db], /(http:\/\/127\.0\.0\.1:\d+\/\?t=[0-9a-f]{32})/, log);
    children.push(ui.child);
    const url = ui.match[1];
    const origin = new URL(url).origin;

    const { chromium } = require('playwright-core');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    const page = await browser.newPage({ viewport: { width: 1440, height: 820 } });
    page.setDefaultTimeout(WAIT);
    const text = (sel) => page.textContent(sel).then((t) => (t || '').trim());

    await scenario('the API refuses requests without the token', async () => {
      for (const p of ['/', '/api/stats', '/api/events?status=dead']) {
        const r = await page.request.get(origin + p);
        if (r.status() !== 403) throw new Error(`${p}: ${r.status()}, expected 403`);
      }
      const r = await page.request.post(origin + '/api/event/01a235f2-986e-705a-b394-1b734e022bba/requeue');
      if (r.status() !== 403) throw new Error(`POST without the token: ${r.status()}`);
    });

    await scenario('the page shows the counts, the lists and a chart', async () => {
      await page.goto(url);
      await page.waitForFunction(() => document.querySelector('#count-dead').textContent.trim() === '1');
      if ((await text('#count-delivered')) !== '3') throw new Error('delivered count');
      if ((await text('#count-pending')) !== '3') throw new Error('pending count');
      await page.waitForSelector('#events tbody tr[data-status="pending"]');
      // The chart needs two samples (one a second).
      await page.waitForSelector('#chart polyline', { state: 'attached' });
      // Filters: only the report events.
      await page.fill('input[name="key"]', 'report');
      await page.click('#filters button[type="submit"]');
      await page.waitForFunction(() => document.querySelectorAll('#events tbody tr[data-status="pending"]').length === 2);
      await page.click('#filters button[type="reset"]');
      await page.waitForFunction(() => document.querySelectorAll('#events tbody tr[data-status="pending"]').length === 3);
    });

    await scenario('requeue a dead event from the page: it is delivered, and its key flows', async () => {
      await page.click('#tab-dead');
      const row = await page.waitForSelector('#events tbody tr[data-status="dead"]');
      const id = await row.getAttribute('data-id');
      await page.click(`#events tbody tr[data-id="${id}"] td.id a`);
      await page.waitForFunction((i) => document.querySelector('#detail dd') && document.querySelector('#detail dd').textContent === i, id);
      if ((await text('#detail-status')) !== 'dead') throw new Error('the detail shows it dead');
      const payload = JSON.parse(await text('#detail-payload'));
      if (payload.cart !== 7) throw new Error(`payload ${JSON.stringify(payload)}`);
      if (screenshot) {
        // A few seconds of history in the chart first.
        await page.waitForFunction(() => (document.querySelector('#chart polyline')?.getAttribute('points') || '').split(' ').length >= 6);
        await page.screenshot({ path: screenshot });
      }
      await page.click(`#events tbody tr[data-id="${id}"] button[data-action="requeue"]`);
      // The fixture's forwarder delivers it (and the event parked behind it).
      await page.waitForFunction(() => document.querySelector('#detail-status') && document.querySelector('#detail-status').textContent === 'delivered');
      await page.waitForFunction(() => document.querySelector('#count-delivered').textContent.trim() === '5');
      if ((await text('#count-dead')) !== '0') throw new Error('dead count after the requeue');
      await page.click('#tab-delivered');
      await page.waitForSelector(`#events tbody tr[data-id="${id}"][data-status="delivered"]`);
    });
  } catch (e) {
    failed++;
    console.log(`FAIL setup: ${e && e.stack ? e.stack : e}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    for (const c of children) c.kill('SIGTERM');
  }
  console.log(`ui-e2e scenarios: ${passed} passed, ${failed} failed`);
  process.exitCode = failed > 0 ? 1 : 0;
}

main();
