// Loads the wasm module (its start function runs the app) and registers
// the service worker that keeps the app shell for offline starts.
import init, * as app from '/pkg/todo_pwa.js';

if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((e) => {
    console.warn('service worker not registered:', e);
  });
}

init()
  .then(() => {
    // For tests and the console: `await todoPwa.snapshot()` (JSON).
    window.todoPwa = app;
  })
  .catch((e) => {
    document.getElementById('status').textContent = `The app could not start: ${e}`;
    document.getElementById('app').dataset.ready = 'error';
  });
