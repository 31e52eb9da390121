//! Reading a whole database raw, after checking that every index agrees
//! with the event rows (for crash tests and debugging).

use std::path::Path;

use outbox_core::{ActorId, Envelope, Result, StateSnapshot};

use crate::codec::{
    Quarantined, Status, corrupt, decode_quarantined, decode_row, derived_seq, quarantined_envelope,
};
use crate::error::map;
use crate::options::{SledOptions, open_waiting};
use crate::schema::{
    DEAD, DELIVERED, DISCARDED, EVENTS, IDS, PENDING, QUARANTINE, SKIPPED, STATE, TREE_COUNT, seq_key, seq_of,
};
use crate::worker::{Worker, index_key, index_value};

/// Everything in a database, read raw after checking that its indexes
/// agree with its rows (for crash tests and debugging; see
/// [`dump`](crate::debug::dump)).
#[derive(Debug, Default)]
pub struct Contents {
    /// Every actor's state.
    pub states: Vec<(ActorId, StateSnapshot)>,
    /// Every stored event in commit order, with whether it is delivered
    /// (acked; a discarded event is not); a quarantined row as it is
    /// listed (its bytes as the payload), after the others when it is
    /// missing.
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
    // How many rows each index should hold, and the id index.
    let mut counts = [0usize; TREE_COUNT];
    let mut ids = 0usize;
    for item in w.all[EVENTS].iter() {
        let (k, v) = item.map_err(|e| map("scan events", e))?;
        let seq = seq_of(&k)?;
        if let Some(q) = w.quarantined(seq)? {
            c.events.push((check_quarantined(&w, seq, &q, Some(&v), &mut counts, &mut ids)?, false));
            continue;
        }
        let row = decode_row(&v)?;
        let id_seq = w.all[IDS].get(row.env.id.to_bytes()).map_err(|e| map("read id", e))?;
        if id_seq.as_deref() != Some(&k[..]) {
            return Err(corrupt(&format!("event {} is missing from the id index", row.env.id)));
        }
        ids += 1;
        // In the index its status names, with the right value, and in no
        // other seq-keyed index (the time-keyed ones are checked by count).
        let (index, key) = index_key(seq, row.status);
        counts[index] += 1;
        let in_own = w.all[index].get(&key).map_err(|e| map("read index", e))?;
        let mut ok = in_own.as_deref() == Some(&index_value(&row)[..]);
        for other in [PENDING, DEAD, SKIPPED] {
            if other != index && w.all[other].contains_key(&k).map_err(|e| map("read index", e))? {
                ok = false;
            }
        }
        if !ok {
            return Err(corrupt(&format!(
                "event {} ({:?}) disagrees with the indexes",
                row.env.id, row.status
            )));
        }
        c.events.push((row.env, matches!(row.status, Status::Delivered(_))));
    }
    // Quarantined rows that are missing (an index named them).
    for item in w.all[QUARANTINE].iter() {
        let (k, v) = item.map_err(|e| map("scan quarantine", e))?;
        if !w.all[EVENTS].contains_key(&k).map_err(|e| map("read event", e))? {
            let q = decode_quarantined(&v)?;
            c.events.push((check_quarantined(&w, seq_of(&k)?, &q, None, &mut counts, &mut ids)?, false));
        }
    }
    let indexes_match = [PENDING, DEAD, SKIPPED, DELIVERED, DISCARDED]
        .into_iter()
        .all(|index| w.all[index].len() == counts[index]);
    if !indexes_match || w.all[IDS].len() != ids {
        return Err(corrupt("an index names events that do not exist"));
    }
    Ok(c)
}

/// Checks the indexes of the quarantined row at `seq` (in `dead` with its
/// key, `skipped`, or else counted as discarded; in the id index unless
/// its id is derived) and returns how it is listed (`raw`: its bytes).
fn check_quarantined(
    w: &Worker,
    seq: u64,
    q: &Quarantined,
    raw: Option<&[u8]>,
    counts: &mut [usize; TREE_COUNT],
    ids: &mut usize,
) -> Result<Envelope> {
    let k = seq_key(seq);
    let bad = || corrupt(&format!("quarantined event {} disagrees with the indexes", q.id));
    let get = |t: usize| w.all[t].get(k).map_err(|e| map("read index", e));
    if get(PENDING)?.is_some() {
        return Err(bad());
    }
    match (get(DEAD)?, get(SKIPPED)?) {
        (Some(v), None) if q.key.as_ref().map(|k| k.as_str().as_bytes()) == Some(&v[..]) => counts[DEAD] += 1,
        (None, Some(_)) => counts[SKIPPED] += 1,
        (None, None) => counts[DISCARDED] += 1,
        _ => return Err(bad()),
    }
    match w.all[IDS].get(q.id.to_bytes()).map_err(|e| map("read id", e))? {
        Some(s) if s.as_ref() == k => *ids += 1,
        None if derived_seq(q.id) == Some(seq) => {}
        _ => return Err(bad()),
    }
    Ok(quarantined_envelope(q, raw))
}
