// The service worker: keeps the app shell (HTML, JS glue, wasm, styles,
// manifest, icons) in a cache filled at install, and serves it cache
// first, so the app starts with the network off. The API (/events,
// /state, /admin) and every non-GET request go to the network untouched:
// the outbox's forwarder, not this worker, decides when events are sent.
//
// Delivery with no tab open (Background Sync, Chromium): a tab that
// commits offline, or is hidden or closed, registers the sync
// `outbox:todo-pwa`; this worker answers it with the outbox's drain
// (the worker bundle, loaded on first use from the cache): it takes the
// forwarder lock once no tab's worker holds it, delivers what is due, and
// rejects when delivery failed so the browser fires the sync again later.
//
// build.sh replaces __BUILD__ with a hash of the built files: a new build
// is a new cache, and the old one is deleted when the new worker activates.
const CACHE = 'todo-pwa-__BUILD__';
const SHELL = [
  '/',
  '/index.html',
  '/main.js',
  '/app.css',
  '/manifest.webmanifest',
  '/pkg/todo_pwa.js',
  '/pkg/todo_pwa_bg.wasm',
  '/outbox-worker.js',
  '/worker/todo_pwa_worker.js',
  '/worker/todo_pwa_worker_bg.wasm',
  '/icons/icon-192.png',
  '/icons/icon-512.png',
  '/icons/icon-maskable-512.png',
  '/icons/apple-touch-icon.png',
];
const API = ['/events', '/state', '/admin/'];

importScripts('/worker/todo_pwa_worker.js');
let outbox = null;
function outboxReady() {
  if (!outbox) {
    const wasm = '/worker/todo_pwa_worker_bg.wasm';
    const module = caches.match(wasm).then((hit) => hit || fetch(wasm));
    outbox = wasm_bindgen({ module_or_path: module }).catch((e) => {
      outbox = null;
      throw e;
    });
  }
  return outbox;
}

self.addEventListener('sync', (event) => {
  if (event.tag.startsWith('outbox:')) {
    event.waitUntil(outboxReady().then(() => wasm_bindgen.drain()));
  }
});

self.addEventListener('install', (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { cache: 'reload' }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith('todo-pwa-') && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || API.some((p) => url.pathname.startsWith(p))) return;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => {
      // `/?list=work` is the shell too: match without the query.
      const hit = await cache.match(request, { ignoreSearch: request.mode === 'navigate' });
      if (hit) return hit;
      try {
        return await fetch(request);
      } catch (e) {
        if (request.mode === 'navigate') {
          const shell = await cache.match('/index.html');
          if (shell) return shell;
        }
        throw e;
      }
    }),
  );
});
