// The dedicated worker each tab starts (outbox::browser::configure_page):
// loads the worker bundle (todo-pwa-worker, built with wasm-bindgen
// --target no-modules) and runs the outbox forwarder. One worker of the
// origin leads under a Web Lock; the others wait for it.
importScripts('/worker/todo_pwa_worker.js');
wasm_bindgen({ module_or_path: '/worker/todo_pwa_worker_bg.wasm' })
  .then(() => wasm_bindgen.serve())
  .catch((e) => console.error('outbox worker failed to start:', e));
