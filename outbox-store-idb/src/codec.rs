//! Values as IndexedDB stores them: keys (seqs as numbers, ids as bytes,
//! compound keys as arrays) and the byte encodings of snapshots and
//! grants (event rows and pending entries use `outbox_core::codec`).

use js_sys::{Array, Uint8Array};
use outbox_core::codec::{Reader, Writer, corrupt};
use outbox_core::{
    ActorId, ConsumerId, Epoch, EventId, LeaderGrant, Result, StateSnapshot, Timestamp, Version,
};
use wasm_bindgen::{JsCast, JsValue};

pub(crate) fn num(n: f64) -> JsValue {
    JsValue::from_f64(n)
}

pub(crate) fn seq_js(seq: u64) -> JsValue {
    num(seq as f64)
}

pub(crate) fn bytes_js(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

pub(crate) fn js_bytes(v: &JsValue, what: &str) -> Result<Vec<u8>> {
    v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec).ok_or_else(|| corrupt(what))
}

pub(crate) fn js_u64(v: &JsValue, what: &str) -> Result<u64> {
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => Ok(f as u64),
        _ => Err(corrupt(what)),
    }
}

pub(crate) fn id_js(id: EventId) -> JsValue {
    bytes_js(&id.to_bytes())
}

/// `[at, seq]`: a key of the delivered index.
pub(crate) fn time_seq_js(at: Timestamp, seq: u64) -> JsValue {
    Array::of2(&num(at.as_millis() as f64), &seq_js(seq)).into()
}

/// `[consumer, origin, id]`: the key of an inbox mark.
pub(crate) fn inbox_js(consumer: &ConsumerId, origin: &ActorId, id: EventId) -> JsValue {
    Array::of3(&consumer.as_str().into(), &origin.as_str().into(), &id_js(id)).into()
}

pub(crate) fn encode_state(s: &StateSnapshot) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(s.version.0);
    w.time(s.updated_at);
    w.bytes(&s.bytes);
    w.0
}

pub(crate) fn decode_state(b: &[u8]) -> Result<StateSnapshot> {
    let mut r = Reader::new(b);
    let version = Version(r.u64()?);
    let updated_at = r.time()?;
    let bytes = r.bytes()?.to_vec();
    r.end()?;
    Ok(StateSnapshot { version, bytes, updated_at })
}

pub(crate) fn encode_grant(g: &LeaderGrant) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(g.epoch.0);
    w.time(g.expires_at);
    w.str(&g.holder);
    w.0
}

pub(crate) fn decode_grant(b: &[u8]) -> Result<LeaderGrant> {
    let mut r = Reader::new(b);
    let epoch = Epoch(r.u64()?);
    let expires_at = r.time()?;
    let holder = r.string()?;
    r.end()?;
    Ok(LeaderGrant { holder, epoch, expires_at })
}
