//! Leadership in the `meta` object store: the current grant and the last
//! epoch, and the fence every delivery transaction checks.

use std::time::Duration;

use indexed_db_futures::object_store::ObjectStore;
use outbox_core::codec::{PendingEntry, encode_pending};
use outbox_core::rules::check_fence;
use outbox_core::{Epoch, LeaderGrant, Result, Timestamp};

use crate::codec::{bytes_js, decode_grant, encode_grant, js_bytes, js_u64, seq_js};
use crate::quarantine::{Healing, healing, pending_row};
use crate::schema::{EVENTS, LAST_EPOCH, LEADER, META, PENDING, QUARANTINE};
use crate::tx::{Db, delete, finish, get, pending_entries, put, store};

/// The epoch of the current grant (read in the transaction that writes
/// under it), `None` when nobody leads.
pub(crate) async fn current_epoch(meta: &ObjectStore<'_>) -> Result<Option<Epoch>> {
    match get(meta, LEADER.into(), "read leader").await? {
        Some(v) => Ok(Some(decode_grant(&js_bytes(&v, "leader")?)?.epoch)),
        None => Ok(None),
    }
}

/// Grants leadership to `holder` for `ttl` unless another holder's grant
/// is unexpired. `granted` is the epoch of the last grant this handle
/// made (0: none).
pub(crate) async fn acquire(
    db: &Db,
    now: Timestamp,
    holder: &str,
    ttl: Duration,
    granted: u64,
) -> Result<Option<LeaderGrant>> {
    healing(db, now, || acquire_once(db, now, holder, ttl, granted)).await
}

async fn acquire_once(
    db: &Db,
    now: Timestamp,
    holder: &str,
    ttl: Duration,
    granted: u64,
) -> Healing<Option<LeaderGrant>> {
    let what = "acquire leadership";
    let tx = db.tx(&[META, PENDING, EVENTS, QUARANTINE], true)?;
    let meta = store(&tx, META, what)?;
    if let Some(v) = get(&meta, LEADER.into(), "read leader").await? {
        let cur = decode_grant(&js_bytes(&v, "leader")?)?;
        if cur.holder != holder && cur.expires_at > now {
            return Ok(None);
        }
        // An unreleased grant under the same holder name made by another
        // handle: with Web Locks the name is the lock's, and holding the
        // lock means its previous holder is gone (a tab closed or crashed
        // mid-batch). The leases of the rows it claimed are voided, so the
        // batch it had in flight is claimable at once, not after the
        // lease; the lost attempt stays counted. Released grants' leases
        // stand.
        if cur.holder == holder && cur.epoch.0 != granted {
            let (pending, ev) = (store(&tx, PENDING, what)?, store(&tx, EVENTS, what)?);
            let q = store(&tx, QUARANTINE, what)?;
            let mut voided = Vec::new();
            for (seq, entry) in pending_entries(&pending).await? {
                if entry.lease_until.is_none() {
                    continue;
                }
                let row = pending_row(&ev, &q, seq).await?;
                if row.claimed_by() == Some(cur.epoch.0) {
                    voided.push((seq, entry, row));
                }
            }
            for (seq, entry, mut row) in voided {
                row.end_lease();
                put(&ev, seq_js(seq), bytes_js(&row.encode()), what)?;
                let entry = PendingEntry { lease_until: None, ..entry };
                put(&pending, seq_js(seq), bytes_js(&encode_pending(&entry)), what)?;
            }
        }
    }
    let last = match get(&meta, LAST_EPOCH.into(), "read epoch").await? {
        Some(v) => js_u64(&v, "last epoch")?,
        None => 0,
    };
    let grant = LeaderGrant {
        holder: holder.to_owned(),
        epoch: Epoch(last + 1),
        expires_at: now.saturating_add(ttl),
    };
    put(&meta, LAST_EPOCH.into(), seq_js(last + 1), what)?;
    put(&meta, LEADER.into(), bytes_js(&encode_grant(&grant)), what)?;
    finish(tx, what).await?;
    Ok(Some(grant))
}

/// Extends the current grant to `now + ttl`.
pub(crate) async fn renew(
    db: &Db,
    now: Timestamp,
    grant: &LeaderGrant,
    ttl: Duration,
) -> Result<LeaderGrant> {
    let what = "renew leadership";
    let tx = db.tx(&[META], true)?;
    let meta = store(&tx, META, what)?;
    check_fence(grant, current_epoch(&meta).await?)?;
    let renewed = LeaderGrant { expires_at: now.saturating_add(ttl), ..grant.clone() };
    put(&meta, LEADER.into(), bytes_js(&encode_grant(&renewed)), what)?;
    finish(tx, what).await?;
    Ok(renewed)
}

/// Gives the grant up, if it is still the current one.
pub(crate) async fn release(db: &Db, grant: &LeaderGrant) -> Result<()> {
    let what = "release leadership";
    let tx = db.tx(&[META], true)?;
    let meta = store(&tx, META, what)?;
    if current_epoch(&meta).await.is_ok_and(|current| check_fence(grant, current).is_ok()) {
        delete(&meta, LEADER.into(), what)?;
    }
    finish(tx, what).await
}
