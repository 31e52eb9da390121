// What the scenarios read from and do to the Todo PWA, through the hooks
// its README lists (#app's data-* attributes, data-testids, the panel's
// testids, window.todoPwa.snapshot()), and to its sync server (/state,
// /admin/fail, /admin/recover).
'use strict';

const { sleep } = require('./drivers');

/** Polls `probe` until it returns `true`; anything else is what it saw, shown on timeout. */
async function waitUntil(what, probe, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let seen = 'nothing yet';
  for (;;) {
    try {
      const r = await probe();
      if (r === true) return;
      seen = r;
    } catch (e) {
      seen = `error: ${e.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}; last seen: ${typeof seen === 'string' ? seen : JSON.stringify(seen)}`);
    }
    await sleep(100);
  }
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// ---- in the page (these functions are serialized: self-contained)

const pageAttrs = () => {
  const app = document.getElementById('app');
  if (!app) return null;
  const d = app.dataset;
  return {
    ready: d.ready,
    commits: Number(d.commits),
    errors: Number(d.errors),
    durable: d.durable,
    online: d.online,
    forwarding: d.forwarding,
    list: d.list,
    status: (document.getElementById('status') || {}).textContent,
    durableBadge: (document.getElementById('durable-badge') || { dataset: {} }).dataset.durable,
  };
};

const pageItems = () =>
  [...document.querySelectorAll('#items li[data-testid=item]')].map((li) => ({
    id: Number(li.dataset.id),
    title: li.dataset.title,
    done: li.dataset.done === 'true',
  }));

const pagePanel = () => {
  const q = (t) => document.querySelector(`[data-testid="${t}"]`);
  const root = q('outbox-panel-root');
  if (!root) return null;
  const counts = q('outbox-panel-counts');
  return {
    open: root.dataset.open,
    leader: (q('outbox-panel-leader') || { dataset: {} }).dataset.leader,
    durable: (q('outbox-panel-storage') || { dataset: {} }).dataset.durable,
    pending: counts ? Number(counts.dataset.pending) : null,
    dead: counts ? Number(counts.dataset.dead) : null,
    delivered: counts ? Number(counts.dataset.delivered) : null,
  };
};

const pageSnapshot = () => window.todoPwa.snapshot().then((s) => JSON.parse(s));

/** Resolves with data-commits once it exceeds `n` (a MutationObserver: no polling delay). */
const pageCommitsAbove = (n) =>
  new Promise((resolve) => {
    const app = document.getElementById('app');
    const now = () => Number(app.dataset.commits);
    if (now() > n) return resolve(now());
    const mo = new MutationObserver(() => {
      if (now() > n) {
        mo.disconnect();
        resolve(now());
      }
    });
    mo.observe(app, { attributes: true, attributeFilter: ['data-commits'] });
  });

/** One small IndexedDB write on this origin (its own database): 'ok' or the abort's DOMException name. */
const pageProbeWrite = () =>
  new Promise((resolve) => {
    const open = indexedDB.open('e2e-quota-probe', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('s');
    open.onerror = () => resolve(`open: ${open.error && open.error.name}`);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction('s', 'readwrite');
      tx.objectStore('s').put('x'.repeat(100), Date.now());
      tx.oncomplete = () => {
        db.close();
        resolve('ok');
      };
      tx.onabort = () => {
        db.close();
        resolve(tx.error ? tx.error.name : 'aborted');
      };
    };
  });

const pageServiceWorkerControls = () =>
  'serviceWorker' in navigator
    ? navigator.serviceWorker.ready.then((r) => (navigator.serviceWorker.controller && r.active ? true : 'registered, not controlling yet'))
    : 'no navigator.serviceWorker';

// ---- from Node

const attrs = (tab) => tab.eval(pageAttrs);
const items = (tab) => tab.eval(pageItems);
const panel = (tab) => tab.eval(pagePanel);
const snapshot = (tab) => tab.eval(pageSnapshot);

async function waitReady(tab, timeout = 30000) {
  await waitUntil(
    '#app[data-ready=true]',
    async () => {
      const a = await attrs(tab);
      if (a && a.ready === 'error') throw new Error(`the app could not start: ${a.status}`);
      return (a && a.ready === 'true') || a;
    },
    timeout,
  );
}

/** Adds an item through the form; resolves once the UI acknowledged the commit (data-commits went up). */
async function add(tab, title) {
  const before = (await attrs(tab)).commits;
  await tab.type('#new-title', title);
  await tab.click('#add-button');
  const after = await tab.eval(pageCommitsAbove, before);
  return after;
}

/** Completes the item titled `title` (its checkbox). */
async function complete(tab, title) {
  const before = (await attrs(tab)).commits;
  const id = (await items(tab)).find((i) => i.title === title).id;
  await tab.click(`li[data-testid=item][data-id="${id}"] [data-testid=item-complete]`);
  return tab.eval(pageCommitsAbove, before);
}

async function remove(tab, title) {
  const before = (await attrs(tab)).commits;
  const id = (await items(tab)).find((i) => i.title === title).id;
  await tab.click(`li[data-testid=item][data-id="${id}"] [data-testid=item-delete]`);
  return tab.eval(pageCommitsAbove, before);
}

async function openPanel(tab) {
  const p = await panel(tab);
  if (!p || p.open !== 'true') await tab.click('[data-testid=outbox-panel-toggle]');
  await waitUntil('the panel open', async () => ((await panel(tab)) || {}).open === 'true' || panel(tab), 5000);
}

async function waitItems(tab, expected, timeout = 20000) {
  const want = JSON.stringify(expected);
  await waitUntil(
    `the list to show ${want}`,
    async () => {
      const got = (await items(tab)).map((i) => ({ title: i.title, done: i.done }));
      return JSON.stringify(got) === want || got;
    },
    timeout,
  );
}

// ---- the sync server

function serverApi(url) {
  const base = url.replace(/\/$/, '');
  return {
    url: `${base}/`,
    origin: base,
    async state() {
      const r = await fetch(`${base}/state`);
      check(r.ok, `GET /state: ${r.status}`);
      return r.json();
    },
    async fail(query) {
      const r = await fetch(`${base}/admin/fail?${query}`, { method: 'POST' });
      check(r.ok, `POST /admin/fail?${query}: ${r.status} ${await r.text()}`);
    },
    async recover() {
      const r = await fetch(`${base}/admin/recover`, { method: 'POST' });
      check(r.ok, `POST /admin/recover: ${r.status}`);
    },
  };
}

/**
 * The server applied each event exactly once and holds the list `list`
 * as the tab does: `applied` equals the number of events, each id once,
 * and the list's items equal `expected` (the tab's committed items).
 * Returns the duplicates the server dropped (redeliveries).
 */
async function waitExactlyOnce(server, { list = 'inbox', events, expected, timeout = 30000 }) {
  let state;
  await waitUntil(
    `the server to apply ${events} events`,
    async () => {
      state = await server.state();
      const got = ((state.lists[list] || {}).items || []).map((i) => ({ title: i.title, done: i.done }));
      if (state.applied >= events && JSON.stringify(got) === JSON.stringify(expected)) return true;
      return { applied: state.applied, duplicates: state.duplicates, rejected: state.rejected, items: got };
    },
    timeout,
  );
  // Let a late redelivery land before judging "exactly once".
  await sleep(300);
  state = await server.state();
  const ids = state.events.map((e) => e.id);
  check(new Set(ids).size === ids.length, `an event id applied twice: ${JSON.stringify(ids)}`);
  check(state.applied === events, `applied ${state.applied} events, expected exactly ${events}: ${JSON.stringify(state.events)}`);
  check(ids.length === events, `the server lists ${ids.length} events, expected ${events}`);
  return state;
}

module.exports = {
  waitUntil,
  check,
  attrs,
  items,
  panel,
  snapshot,
  waitReady,
  add,
  complete,
  remove,
  openPanel,
  waitItems,
  serverApi,
  waitExactlyOnce,
  pageCommitsAbove,
  pageProbeWrite,
  pageServiceWorkerControls,
};
