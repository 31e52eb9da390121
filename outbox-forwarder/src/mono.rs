//! Monotonic time and sleeping, per target: Tokio's (pausable in tests)
//! on native, `performance.now()` / `setTimeout` in a browser, where
//! `std::time::Instant` panics and Tokio has no timer driver.

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use tokio::time::{Instant, sleep};

#[cfg(target_arch = "wasm32")]
pub(crate) use wasm::{Instant, sleep};

#[cfg(target_arch = "wasm32")]
mod wasm {
    use std::time::Duration;

    /// A point in monotonic time, from `performance.now()` (falling back
    /// to `Date.now()` where there is no `performance`).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Instant(f64);

    fn now_ms() -> f64 {
        let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).ok();
        perf.and_then(|p| {
            let now = js_sys::Reflect::get(&p, &"now".into()).ok()?;
            let f: js_sys::Function = now.dyn_into().ok()?;
            f.call0(&p).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now)
    }

    use wasm_bindgen::JsCast;

    impl Instant {
        pub(crate) fn now() -> Self {
            Instant(now_ms())
        }

        pub(crate) fn elapsed(&self) -> Duration {
            Duration::from_secs_f64(((now_ms() - self.0) / 1e3).max(0.0))
        }
    }

    /// Resolves after `d` (a `setTimeout`, in a window or a worker).
    pub(crate) async fn sleep(d: Duration) {
        gloo_timers::future::sleep(d).await;
    }
}
