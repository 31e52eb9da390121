//! The browser transport: `fetch` through `web-sys`, the timeout an
//! `AbortController` fired by `setTimeout`, both reached through the global
//! object so the sink works in a window and in a worker. It only fetches;
//! what an answer means is [`crate::mapping`]'s.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use js_sys::{Function, Promise, Uint8Array};
use outbox_core::{Error, Outcome, Result};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, Headers, Request, RequestInit, RequestMode, RequestRedirect, Response, ResponseType,
};

use crate::mapping;

#[wasm_bindgen]
extern "C" {
    /// `globalThis`: a `Window` or a `WorkerGlobalScope`, which both have
    /// `fetch`, `setTimeout` and `clearTimeout`.
    type Global;

    #[wasm_bindgen(method, js_name = fetch)]
    fn fetch_request(this: &Global, request: &Request) -> Promise;

    #[wasm_bindgen(method, catch, js_name = setTimeout)]
    fn set_timeout(this: &Global, handler: &Function, ms: i32) -> Result<JsValue, JsValue>;

    #[wasm_bindgen(method, js_name = clearTimeout)]
    fn clear_timeout(this: &Global, id: &JsValue);
}

/// The URL, checked by the browser's own parser.
pub(crate) struct Transport {
    url: String,
}

impl Transport {
    /// Checks `url` with the browser's URL parser.
    pub(crate) fn new(url: &str, _timeout: Duration) -> Result<Self> {
        web_sys::Url::new(url).map_err(|e| Error::InvalidInput {
            message: format!("HTTP sink URL {url:?}: {}", describe(&e)),
        })?;
        Ok(Transport { url: url.to_owned() })
    }

    /// POSTs `body` with `headers` (already checked) and maps the answer.
    /// The response body is never read (a 2xx is a success however large
    /// its body is); redirects are not followed.
    pub(crate) async fn post(
        &self,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Outcome {
        match self.try_post(headers, body, timeout).await {
            Ok(outcome) => outcome,
            Err(e) => mapping::network_error(&describe(&e)),
        }
    }

    async fn try_post(
        &self,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Outcome, JsValue> {
        let global: Global = js_sys::global().unchecked_into();
        let init = RequestInit::new();
        init.set_method("POST");
        init.set_mode(RequestMode::Cors);
        init.set_redirect(RequestRedirect::Manual);
        let list = Headers::new()?;
        for (name, value) in headers {
            list.append(name, value)?;
        }
        init.set_headers(&list);
        init.set_body(&Uint8Array::from(body.as_slice()));
        let controller = AbortController::new()?;
        init.set_signal(Some(&controller.signal()));
        let request = Request::new_with_str_and_init(&self.url, &init)?;

        let fired = Rc::new(Cell::new(false));
        let on_timeout = {
            let fired = fired.clone();
            let controller = controller.clone();
            Closure::<dyn FnMut()>::new(move || {
                fired.set(true);
                controller.abort();
            })
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let timer = global.set_timeout(on_timeout.as_ref().unchecked_ref(), ms)?;
        // Clears the timer and aborts whatever is left of the exchange (the
        // unread body) however this function ends, cancelled included.
        let deadline = Deadline { global, timer, controller, _on_timeout: on_timeout };

        let response = match JsFuture::from(deadline.global.fetch_request(&request)).await {
            Ok(response) => response,
            Err(_) if fired.get() => return Ok(mapping::timed_out(timeout)),
            Err(e) => return Ok(mapping::network_error(&describe(&e))),
        };
        let response: Response = response.dyn_into()?;
        if response.type_() == ResponseType::Opaqueredirect {
            return Ok(mapping::redirect_not_followed());
        }
        let retry_after = response.headers().get("Retry-After").ok().flatten();
        Ok(mapping::outcome_for_status(response.status(), retry_after.as_deref(), crate::now()))
    }
}

/// The pending timeout of one request.
struct Deadline {
    global: Global,
    timer: JsValue,
    controller: AbortController,
    _on_timeout: Closure<dyn FnMut()>,
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.global.clear_timeout(&self.timer);
        self.controller.abort();
    }
}

/// A JavaScript error as text: an `Error`'s name and message, or the value.
fn describe(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => format!("{}: {}", String::from(err.name()), String::from(err.message())),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}
