//! Where the forwarder's metrics go: the `metrics` crate's recorder with
//! the `metrics` feature (on by default), nowhere without it (a browser
//! bundle that reports no metrics does not carry the recorder plumbing,
//! and the forwarder skips the store reads that only feed gauges).

#[cfg(feature = "metrics")]
pub(crate) fn counter(name: &'static str, n: u64) {
    ::metrics::counter!(name).increment(n);
}

#[cfg(feature = "metrics")]
pub(crate) fn gauge(name: &'static str, v: f64) {
    ::metrics::gauge!(name).set(v);
}

#[cfg(feature = "metrics")]
pub(crate) fn histogram(name: &'static str, v: f64) {
    ::metrics::histogram!(name).record(v);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn counter(_: &'static str, _: u64) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn histogram(_: &'static str, _: f64) {}
