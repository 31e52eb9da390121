//! Reading a whole database raw, after checking that every index agrees
//! with the event rows (for crash tests and debugging).

use std::path::Path;

use outbox_core::{ActorId, Envelope, Result, StateSnapshot};

use crate::codec::{PendingEntry, Status, corrupt, decode_pending, decode_row};
use crate::error::map;
use crate::options::{SledOptions, open_waiting};
use crate::schema::{DEAD, DELIVERED, EVENTS, IDS, PENDING, STATE, seq_of, time_seq_key};
use crate::worker::Worker;

/// Everything in a database, read raw after checking that its indexes
/// agree with its rows (for crash tests and debugging; see
/// [`dump`](crate::debug::dump)).
#[derive(Debug, Default)]
pub struct Contents {
    /// Every actor's state.
    pub states: Vec<(ActorId, StateSnapshot)>,
    /// Every stored event in commit order, with whether it is delivered.
    pub events: Vec<(Envelope, bool)>,
}

pub(crate) fn dump(path: &Path) -> Result<Contents> {
    let o = SledOptions::new(path);
    let db = open_waiting(&sled::Config::new().path(path), path, o.lock_timeout)?;
    let w = Worker::new(db, &o)?;
    let mut c = Contents::default();
    for item in w.all[STATE].iter() {
        let (k, _) = item.map_err(|e| map("scan state", e))?;
        let actor = ActorId::new(String::from_utf8_lossy(&k).into_owned())?;
        let snap = w.load_state(&actor)?.ok_or_else(|| corrupt("state vanished"))?;
        c.states.push((actor, snap));
    }
    let (mut pending, mut dead, mut delivered) = (0usize, 0usize, 0usize);
    for item in w.all[EVENTS].iter() {
        let (k, v) = item.map_err(|e| map("scan events", e))?;
        let seq = seq_of(&k)?;
        let row = decode_row(&v)?;
        let id_seq = w.all[IDS].get(row.env.id.to_bytes()).map_err(|e| map("read id", e))?;
        if id_seq.as_deref() != Some(&k[..]) {
            return Err(corrupt(&format!("event {} is missing from the id index", row.env.id)));
        }
        let in_pending = w.all[PENDING].get(&k).map_err(|e| map("read pending", e))?;
        let in_dead = w.all[DEAD].contains_key(&k).map_err(|e| map("read dead", e))?;
        let ok = match row.status {
            Status::Pending => {
                pending += 1;
                in_pending.map(|p| decode_pending(&p)).transpose()? == Some(PendingEntry::of(&row))
                    && !in_dead
            }
            Status::Dead => {
                dead += 1;
                in_pending.is_none() && in_dead
            }
            Status::Delivered(at) => {
                delivered += 1;
                in_pending.is_none()
                    && !in_dead
                    && w.all[DELIVERED]
                        .contains_key(time_seq_key(at, seq))
                        .map_err(|e| map("read delivered", e))?
            }
        };
        if !ok {
            return Err(corrupt(&format!(
                "event {} ({:?}) disagrees with the indexes",
                row.env.id, row.status
            )));
        }
        c.events.push((row.env, matches!(row.status, Status::Delivered(_))));
    }
    if w.all[PENDING].len() != pending
        || w.all[DEAD].len() != dead
        || w.all[DELIVERED].len() != delivered
        || w.all[IDS].len() != c.events.len()
    {
        return Err(corrupt("an index names events that do not exist"));
    }
    Ok(c)
}
