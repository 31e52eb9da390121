// The end-to-end scenarios of the Todo PWA (issue: the Todo PWA, point 5),
// each written once against drivers.js's interface. `ctx` (run.js) gives
// each run its own sync server (a fresh SQLite file), fresh browser
// profiles, and cleans up whatever is left when it ends.
'use strict';

const path = require('node:path');
const { sleep } = require('./drivers');
const A = require('./app');

const { check } = A;

/**
 * 1. Saved while offline, the browser closed, reopened online on the same
 * profile: the list shows the saved items (from IndexedDB), and the server
 * applied each of their events exactly once.
 */
async function offlineCloseReopen(ctx) {
  const profile = ctx.profile('main');
  let s = await ctx.launch(profile);
  let tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await s.setOffline(true);
  await A.waitUntil('data-online=false', async () => (await A.attrs(tab)).online === 'false' || A.attrs(tab));
  await A.add(tab, 'Buy milk');
  await A.add(tab, 'Call the plumber');
  await A.add(tab, 'Water the plants');
  await A.complete(tab, 'Buy milk');
  const expected = [
    { title: 'Buy milk', done: true },
    { title: 'Call the plumber', done: false },
    { title: 'Water the plants', done: false },
  ];
  await A.waitItems(tab, expected);
  const snap = await A.snapshot(tab);
  check(snap.durable === true, 'the commits were durable');
  check(snap.stats.pending === 4, `4 events pending while offline, not ${JSON.stringify(snap.stats)}`);
  await sleep(500);
  const offline = await ctx.server.state();
  check(offline.applied === 0, `the server got events while the browser was offline: ${JSON.stringify(offline.events)}`);
  await s.close();

  s = await ctx.launch(profile);
  tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.waitItems(tab, expected, 10000);
  await A.waitExactlyOnce(ctx.server, { events: 4, expected });
  await A.waitUntil('nothing pending in the tab', async () => {
    const st = (await A.snapshot(tab)).stats;
    return (st.pending === 0 && st.dead === 0) || st;
  });
  const final = await ctx.server.state();
  ctx.note(`4 events saved offline, applied ${final.applied}, duplicates dropped ${final.duplicates}`);
  await s.close();
}

/**
 * 2. The browser SIGKILLed (with its child processes) right after a save
 * was acknowledged in the UI: reopened on the same profile, the
 * acknowledged items are there and the server applied each event once.
 */
async function killedAfterAck(ctx) {
  const profile = ctx.profile('main');
  let s = await ctx.launch(profile);
  let tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.add(tab, 'Saved before the crash');
  // Two saves in a row, the kill as soon as the UI acknowledged the second
  // (the first may well be in flight to the server at that moment).
  await tab.type('#new-title', 'Saved just before the crash');
  const before = (await A.attrs(tab)).commits;
  await tab.click('#add-button');
  const acked = await tab.eval(A.pageCommitsAbove, before);
  const pids = await s.kill();
  ctx.note(`acknowledged commit ${acked}, then SIGKILLed ${pids.length} browser processes`);

  s = await ctx.launch(profile);
  tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  const expected = [
    { title: 'Saved before the crash', done: false },
    { title: 'Saved just before the crash', done: false },
  ];
  await A.waitItems(tab, expected, 10000);
  const state = await A.waitExactlyOnce(ctx.server, { events: 2, expected });
  await A.waitUntil('nothing pending in the tab', async () => {
    const st = (await A.snapshot(tab)).stats;
    return (st.pending === 0 && st.dead === 0) || st;
  });
  ctx.note(`applied ${state.applied}, duplicates dropped ${state.duplicates}`);
  await s.close();
}

/**
 * 3. The server answers 503 to every delivery for a while, several saves
 * meanwhile, then it recovers: everything is delivered, nothing is dead
 * (the panel's counts, the tab's stats, the server's state).
 */
async function serverDown(ctx) {
  const s = await ctx.launch(ctx.profile('main'));
  const tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.openPanel(tab);
  await ctx.server.fail('status=503');
  await A.add(tab, 'Buy milk');
  await A.add(tab, 'Call the plumber');
  await A.add(tab, 'Water the plants');
  await A.complete(tab, 'Call the plumber');
  await A.add(tab, 'File the tax return');
  // Down for a while: several refused attempts, the events still pending.
  await A.waitUntil('the server to refuse at least 3 deliveries', async () => {
    const st = await ctx.server.state();
    return st.rejected >= 3 || { rejected: st.rejected };
  });
  const p = await A.panel(tab);
  check(p.pending > 0 && p.dead === 0, `the panel shows the events pending, none dead: ${JSON.stringify(p)}`);
  await sleep(1000);
  const down = await ctx.server.state();
  check(down.applied === 0, `applied while down: ${down.applied}`);
  await ctx.server.recover();
  const expected = [
    { title: 'Buy milk', done: false },
    { title: 'Call the plumber', done: true },
    { title: 'Water the plants', done: false },
    { title: 'File the tax return', done: false },
  ];
  const state = await A.waitExactlyOnce(ctx.server, { events: 5, expected, timeout: 40000 });
  await A.waitUntil('the panel to count 0 pending, 0 dead, 5 delivered', async () => {
    const q = await A.panel(tab);
    return (q.pending === 0 && q.dead === 0 && q.delivered === 5) || q;
  });
  const snap = await A.snapshot(tab);
  check(snap.stats.dead === 0 && snap.stats.pending === 0, `the tab's stats: ${JSON.stringify(snap.stats)}`);
  ctx.note(`${down.rejected} deliveries refused while down; then applied ${state.applied}, duplicates ${state.duplicates}, dead 0`);
  await s.close();
}

/**
 * 4. Two tabs of one profile: both save (to the same list), both saves
 * are delivered, and the panels show exactly one forwarding leader.
 */
async function twoTabs(ctx) {
  const s = await ctx.launch(ctx.profile('main'));
  const a = await s.open(ctx.server.url);
  await A.waitReady(a);
  const b = await s.newTab(ctx.server.url);
  await A.waitReady(b);
  await A.openPanel(a);
  await A.openPanel(b);
  await A.add(a, 'From tab A');
  await A.add(b, 'From tab B');
  await A.add(a, 'From tab A again');
  const expected = [
    { title: 'From tab A', done: false },
    { title: 'From tab B', done: false },
    { title: 'From tab A again', done: false },
  ];
  await A.waitItems(a, expected);
  await A.waitItems(b, expected);
  const state = await A.waitExactlyOnce(ctx.server, { events: 3, expected });
  const leaders = async () => [(await A.panel(a)).leader, (await A.panel(b)).leader];
  await A.waitUntil('exactly one leader across the two tabs', async () => {
    const l = await leaders();
    return (l.filter((x) => x === 'true').length === 1 && l.filter((x) => x === 'false').length === 1) || l;
  });
  // And it stays that way (the panels refresh every second).
  for (let i = 0; i < 6; i++) {
    await sleep(250);
    const l = await leaders();
    check(l.filter((x) => x === 'true').length === 1, `leaders (tab A, tab B): ${JSON.stringify(l)}`);
  }
  const l = await leaders();
  ctx.note(`leader: tab ${l[0] === 'true' ? 'A' : 'B'}; applied ${state.applied}, duplicates ${state.duplicates}`);
  await s.close();
}

/**
 * 5. (Chromium: the DevTools protocol lowers the origin's quota.) Storage
 * full: saves are still acknowledged, in memory; #app[data-durable],
 * #durable-badge and the panel say so; on_error fired (data-errors).
 * The quota restored: durable again, the held commits moved back to
 * IndexedDB (they survive a reload) and delivered.
 *
 * Chromium lets an open IndexedDB bucket write against the quota it last
 * read for up to 30 s (BucketContext::kBucketSpaceCacheTimeLimit), so a
 * lowered quota bites once the origin's databases closed: the page leaves
 * (about:blank) while the quota is lowered, a probe write on the origin
 * confirms IndexedDB now refuses, and the app comes back to a full disk.
 */
async function quotaExceeded(ctx) {
  const s = await ctx.launch(ctx.profile('main'));
  const tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.add(tab, 'Saved on disk');
  check((await A.attrs(tab)).durable === 'true', 'durable before the quota is lowered');
  const cdp = await s.cdp(tab);
  const origin = ctx.server.origin;
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: 1 });
  let refused = 'not tried';
  for (let i = 0; i < 6 && refused !== 'QuotaExceededError'; i++) {
    await tab.goto('about:blank');
    await sleep(2500);
    await tab.goto(`${origin}/icons/icon-192.png`);
    refused = await tab.eval(A.pageProbeWrite);
  }
  check(refused === 'QuotaExceededError', `IndexedDB still takes writes under the lowered quota: ${refused}`);

  await tab.goto(ctx.server.url);
  await A.waitReady(tab);
  await A.openPanel(tab);
  await A.waitItems(tab, [{ title: 'Saved on disk', done: false }]);
  const errorsBefore = (await A.attrs(tab)).errors;
  await A.add(tab, 'Saved in memory 1');
  await A.add(tab, 'Saved in memory 2');
  await A.waitUntil('non-durable everywhere (data-durable, #durable-badge, the panel, the snapshot)', async () => {
    const a = await A.attrs(tab);
    const p = await A.panel(tab);
    const snap = await A.snapshot(tab);
    const ok = a.durable === 'false' && a.durableBadge === 'false' && p.durable === 'false' && snap.durable === false;
    return ok || { attrs: a, panel: p.durable, snapshot: snap.durable };
  });
  const full = await A.attrs(tab);
  check(full.errors > errorsBefore, `on_error fired (data-errors ${errorsBefore} -> ${full.errors})`);
  check(/memory only/i.test(full.status), `the status line says memory only: ${full.status}`);
  check(full.commits === 2, `both saves acknowledged: data-commits ${full.commits}`);
  const expected = [
    { title: 'Saved on disk', done: false },
    { title: 'Saved in memory 1', done: false },
    { title: 'Saved in memory 2', done: false },
  ];
  await A.waitItems(tab, expected);

  await cdp.send('Storage.overrideQuotaForOrigin', { origin });
  await A.waitUntil('durable again', async () => {
    const a = await A.attrs(tab);
    const p = await A.panel(tab);
    return (a.durable === 'true' && a.durableBadge === 'true' && p.durable === 'true') || { attrs: a.durable, panel: p.durable };
  });
  const state = await A.waitExactlyOnce(ctx.server, { events: 3, expected });
  // The held commits were moved back to IndexedDB: a reload restores them.
  await tab.reload();
  await A.waitReady(tab);
  await A.waitItems(tab, expected, 10000);
  ctx.note(`on_error calls ${full.errors}; applied ${state.applied}, duplicates ${state.duplicates}`);
  await s.close();
}

/**
 * 6. The app loads offline from the service worker: loaded once online,
 * then the network off (and the server stopped), a reload starts it.
 */
async function offlineStart(ctx) {
  const s = await ctx.launch(ctx.profile('main'));
  const tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.waitUntil('the service worker to control the page', () => tab.eval(A.pageServiceWorkerControls));
  // The network off: the browser offline (where the driver has a switch)
  // and the server stopped (connection refused).
  const offline = ctx.browser.canGoOffline;
  const how = [];
  if (offline) {
    await s.setOffline(true);
    how.push('browser offline');
  }
  await ctx.stopServer();
  how.push('server stopped');
  await tab.reload();
  await A.waitReady(tab);
  const a = await A.attrs(tab);
  if (offline) check(a.online === 'false', `data-online: ${a.online}`);
  const controlled = await tab.eval(() => !!navigator.serviceWorker.controller);
  check(controlled, 'the page is controlled by the service worker');
  await A.add(tab, 'Written with no network');
  ctx.note(`started from the service worker's cache (${how.join(', ')}) and saved an item`);
  await s.close();
}

/**
 * The README's screenshots (Chromium): the app, and the panel offline
 * with two changes waiting and one event the server refused.
 */
async function screenshots(ctx) {
  const s = await ctx.launch(ctx.profile('main'), { width: 760, height: 600 });
  const tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  for (const t of ['Buy milk', 'Call the plumber', 'Water the plants', 'File the tax return']) await A.add(tab, t);
  await A.complete(tab, 'Buy milk');
  await A.waitUntil('everything delivered', async () => {
    const p = await A.panel(tab);
    return (p.pending === 0 && p.delivered === 5) || p;
  });
  await sleep(300);
  await tab.screenshot(path.join(ctx.screenshots, 'app.png'));

  // One event the server refuses (400: dead-lettered), on another list.
  await ctx.server.fail('status=400&count=1');
  await tab.type('#list-input', 'work');
  await tab.click('#list-button');
  await A.waitUntil('the list "work"', async () => (await A.attrs(tab)).list === 'work' || A.attrs(tab));
  await A.add(tab, 'Book the offsite');
  await A.waitUntil('a dead event', async () => ((await A.panel(tab)).dead === 1) || A.panel(tab));
  await tab.type('#list-input', 'inbox');
  await tab.click('#list-button');
  await A.waitUntil('the list "inbox"', async () => (await A.attrs(tab)).list === 'inbox' || A.attrs(tab));
  await A.waitItems(tab, [
    { title: 'Buy milk', done: true },
    { title: 'Call the plumber', done: false },
    { title: 'Water the plants', done: false },
    { title: 'File the tax return', done: false },
  ]);
  await s.setOffline(true);
  await A.waitUntil('offline', async () => (await A.attrs(tab)).online === 'false' || A.attrs(tab));
  await A.complete(tab, 'Call the plumber');
  await A.remove(tab, 'File the tax return');
  await A.openPanel(tab);
  await A.waitUntil('the panel: 2 pending, 1 dead', async () => {
    const p = await A.panel(tab);
    return (p.pending === 2 && p.dead === 1) || p;
  });
  await tab.eval(() => document.activeElement && document.activeElement.blur());
  await sleep(2000);
  await tab.screenshot(path.join(ctx.screenshots, 'panel.png'));
  ctx.note(`wrote app.png and panel.png in ${ctx.screenshots}`);
  await s.close();
}

// needs: persistent (a profile that survives a relaunch), offline (an
// offline switch), kill (the browser's process id), cdp (Chromium's
// DevTools protocol); only: run in that browser alone.
/**
 * 8. Delivered with no tab open (Background Sync, Chromium): saved while
 * offline, every tab of the app closed, the network back, the sync fired
 * (the DevTools protocol's ServiceWorker.dispatchSyncEvent, as the
 * browser does on reconnecting): the service worker delivers each event
 * exactly once with no page of the app open. An about:blank page hosts
 * the DevTools session (it is not a page of the app's origin).
 */
async function noTabBackgroundSync(ctx) {
  const profile = ctx.profile('main');
  const s = await ctx.launch(profile);
  const tab = await s.open(ctx.server.url);
  await A.waitReady(tab);
  await A.waitUntil('the service worker controls the page', async () =>
    (await tab.eval(() => !!navigator.serviceWorker.controller)) || 'no controller yet',
  );
  await s.setOffline(true);
  await A.waitUntil('data-online=false', async () => (await A.attrs(tab)).online === 'false' || A.attrs(tab));
  await A.add(tab, 'Pay the rent');
  await A.add(tab, 'Book the flights');
  const expected = [
    { title: 'Pay the rent', done: false },
    { title: 'Book the flights', done: false },
  ];
  await A.waitItems(tab, expected);
  const snap = await A.snapshot(tab);
  check(snap.stats.pending === 2, `2 events pending while offline, not ${JSON.stringify(snap.stats)}`);
  const origin = new URL(ctx.server.url).origin;
  const blank = await s.newTab('about:blank');
  await tab.page.close();
  const appPages = () => s.context.pages().filter((p) => p.url().startsWith(origin));
  check(appPages().length === 0, `app pages still open: ${appPages().map((p) => p.url())}`);
  const before = await ctx.server.state();
  check(before.applied === 0, `the server got events while offline: ${JSON.stringify(before.events)}`);

  await s.setOffline(false);
  const cdp = await s.cdp(blank);
  const registration = new Promise((resolve) => {
    cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
      const r = registrations.find((x) => x.scopeURL.startsWith(origin) && !x.isDeleted);
      if (r) resolve(r.registrationId);
    });
  });
  await cdp.send('ServiceWorker.enable');
  const registrationId = await Promise.race([
    registration,
    sleep(10000).then(() => {
      throw new Error('no service worker registration reported by the DevTools protocol');
    }),
  ]);
  // The browser fires the sync itself once it is back online; firing it
  // here does not wait for its schedule.
  await cdp.send('ServiceWorker.dispatchSyncEvent', { origin, registrationId, tag: 'outbox:todo-pwa', lastChance: false });
  const state = await A.waitExactlyOnce(ctx.server, { events: 2, expected });
  check(appPages().length === 0, 'an app page was opened during the drain');
  ctx.note(`2 events saved offline, delivered with no tab open: applied ${state.applied}, duplicates dropped ${state.duplicates}`);
  await s.close();
}

module.exports = [
  { id: 'offline-close-reopen', name: 'saved offline, browser closed, reopened online: items kept, each event applied once', needs: ['persistent', 'offline'], run: offlineCloseReopen },
  { id: 'sigkill-after-ack', name: 'browser SIGKILLed right after an acknowledged save: nothing lost, nothing applied twice', needs: ['persistent', 'kill'], run: killedAfterAck },
  { id: 'server-down', name: 'server down (503) for a while, then up: everything delivered, nothing dead', needs: [], run: serverDown },
  { id: 'two-tabs', name: 'two tabs: both save, both delivered, exactly one leader', needs: [], run: twoTabs },
  { id: 'quota-exceeded', name: 'storage quota exceeded: works in memory, non-durable shown, on_error fired; durable again after', needs: ['cdp'], only: 'chromium', why: "Chromium's DevTools protocol lowers the quota", run: quotaExceeded },
  { id: 'offline-start', name: 'the app loads offline from the service worker', needs: [], run: offlineStart },
  { id: 'no-tab-background-sync', name: 'saved offline, every tab closed, back online: the service worker delivers each event once (Background Sync)', needs: ['cdp'], only: 'chromium', why: 'Background Sync is Chromium-only; the DevTools protocol fires it', run: noTabBackgroundSync },
  { id: 'screenshots', name: "the README's screenshots (app; panel offline with a dead event)", needs: [], only: 'chromium', why: 'taken once, in Chromium', run: screenshots },
];
