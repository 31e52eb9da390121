//! The commit: state, events and inbox marks in one `readwrite`
//! transaction; and reading state back.

use indexed_db_futures::prelude::*;
use js_sys::Array;
use outbox_core::codec::encode_pending;
use outbox_core::{
    ActorId, Commit, CommitReceipt, Envelope, Error, EventId, InboxMark, Limits, Result, StateSnapshot,
    Timestamp, Version,
};
use wasm_bindgen::JsValue;

use crate::codec::{
    Event, bytes_js, decode_state, encode_state, id_js, inbox_js, js_bytes, js_u64, num, seq_js,
};
use crate::error::{is, map};
use crate::schema::{EVENTS, IDS, INBOX, INBOX_AT, META, NEXT_SEQ, PENDING, STATE};
use crate::tx::{Db, finish, get, put, store};

/// Commits `commit` at `now` in one transaction: the version check and
/// the sequence read first, then every write. A duplicate event id or
/// inbox mark fails its `add` request and the dropped transaction aborts,
/// taking every earlier write of the commit with it.
pub(crate) async fn commit(
    db: &Db,
    now: Timestamp,
    limits: &Limits,
    commit: Commit,
) -> Result<CommitReceipt> {
    commit.validate(limits)?;
    // Everything is encoded before the transaction opens.
    let state = commit.state.as_ref().map(|s| {
        let version = s.expected_version.next();
        let snap = StateSnapshot { version, bytes: s.snapshot.clone(), updated_at: now };
        (s.actor.clone(), s.expected_version, version, bytes_js(&encode_state(&snap)))
    });
    let events: Vec<(EventId, JsValue, JsValue)> = commit
        .events
        .iter()
        .map(|e| {
            let row = Event::pending(Envelope::committed(e.clone(), now));
            (e.id, bytes_js(&row.encode()), bytes_js(&encode_pending(&row.pending_entry())))
        })
        .collect();
    let marks: Vec<(&InboxMark, JsValue)> =
        commit.inbox.iter().map(|m| (m, inbox_js(&m.consumer, &m.origin, m.event_id))).collect();
    let at = num(now.as_millis() as f64);

    let what = "commit";
    // The transaction spans only the object stores this commit writes.
    let mut scope = vec![META, EVENTS, IDS, PENDING];
    if state.is_some() {
        scope.push(STATE);
    }
    if !marks.is_empty() {
        scope.extend([INBOX, INBOX_AT]);
    }
    let tx = db.tx(&scope, true)?;
    let (meta, ev) = (store(&tx, META, what)?, store(&tx, EVENTS, what)?);
    let (ids, pending) = (store(&tx, IDS, what)?, store(&tx, PENDING, what)?);
    let state_st = match &state {
        Some(_) => Some(store(&tx, STATE, what)?),
        None => None,
    };
    let inboxes = match marks.is_empty() {
        true => None,
        false => Some((store(&tx, INBOX, what)?, store(&tx, INBOX_AT, what)?)),
    };

    // Reads first: the version check, the next seq.
    // Both reads sent before either is awaited: one round trip.
    let next_req =
        meta.get::<JsValue, JsValue, JsValue>(NEXT_SEQ.into()).primitive().map_err(|e| map(what, e))?;
    let state_req = match (&state, &state_st) {
        (Some((actor, ..)), Some(state_st)) => Some(
            state_st
                .get::<JsValue, JsValue, JsValue>(actor.as_str().into())
                .primitive()
                .map_err(|e| map(what, e))?,
        ),
        _ => None,
    };
    let next = match next_req.await.map_err(|e| map("read next seq", e))? {
        Some(v) => js_u64(&v, "next seq")?,
        None => 1,
    };
    if let (Some((actor, expected, _, _)), Some(req)) = (&state, state_req) {
        let actual = match req.await.map_err(|e| map("read state", e))? {
            Some(v) => decode_state(&js_bytes(&v, "state")?)?.version,
            None => Version::NONE,
        };
        if actual != *expected {
            // Dropping the transaction aborts it.
            return Err(Error::Conflict { actor: actor.clone(), expected: *expected, actual });
        }
    }
    // Then the writes.
    if let (Some((actor, _, _, bytes)), Some(state_st)) = (&state, &state_st) {
        put(state_st, actor.as_str().into(), bytes.clone(), what)?;
    }
    let mut adds = Vec::with_capacity(events.len() + marks.len());
    for (i, (id, row, entry)) in events.iter().enumerate() {
        let seq = seq_js(next + i as u64);
        let add = ids.add(seq.clone()).with_key(id_js(*id)).primitive().map_err(|e| map(what, e))?;
        adds.push((Some(*id), None, add));
        put(&ev, seq.clone(), row.clone(), what)?;
        put(&pending, seq, entry.clone(), what)?;
    }
    for ((m, key), (inbox, inbox_at)) in marks.iter().zip(std::iter::repeat(&inboxes).flatten()) {
        let add = inbox.add(at.clone()).with_key(key.clone()).primitive().map_err(|e| map(what, e))?;
        adds.push((None, Some(*m), add));
        let by_time: JsValue =
            Array::of4(&at, &m.consumer.as_str().into(), &m.origin.as_str().into(), &id_js(m.event_id))
                .into();
        put(inbox_at, by_time, num(0.0), what)?;
    }
    if !events.is_empty() {
        put(&meta, NEXT_SEQ.into(), seq_js(next + events.len() as u64), what)?;
    }
    for (id, mark, add) in adds {
        match add.await {
            Ok(_) => {}
            Err(e) if is(&e, "ConstraintError") => {
                return Err(match (id, mark) {
                    (Some(id), _) => Error::DuplicateEvent { id },
                    (None, Some(m)) => Error::AlreadyProcessed {
                        consumer: m.consumer.clone(),
                        origin: m.origin.clone(),
                        id: m.event_id,
                    },
                    (None, None) => map(what, e),
                });
            }
            Err(e) => return Err(map(what, e)),
        }
    }
    finish(tx, what).await?;
    Ok(CommitReceipt { version: state.map(|(_, _, v, _)| v), committed_at: now, durable: true })
}

/// The snapshot of `actor`, if it has one.
pub(crate) async fn load_state(db: &Db, actor: &ActorId) -> Result<Option<StateSnapshot>> {
    let tx = db.tx(&[STATE], false)?;
    let st = store(&tx, STATE, "load state")?;
    match get(&st, actor.as_str().into(), "load state").await? {
        Some(v) => Ok(Some(decode_state(&js_bytes(&v, "state")?)?)),
        None => Ok(None),
    }
}
