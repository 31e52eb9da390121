//! The fencing checks run inside a settling transaction (ack, release,
//! retry, dead letter): the grant is live, and each event is still claimed
//! under it ([`check_claim_holder`]). `retry_now`, which settles no claim,
//! checks the grant only. Shared leadership has no single
//! current epoch to compare with, so the grant check is a query.

use outbox_core::rules::check_claim_holder;
use outbox_core::{Epoch, Error, EventId, LeaderGrant, Result};
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use crate::error::map;
use crate::queries::{SQL_GRANT_LIVE, SQL_LOCK_EVENTS};
use crate::rows::uuid;

/// `grant`'s epoch as the `bigint` columns hold it.
pub(crate) fn epoch(grant: &LeaderGrant) -> i64 {
    grant.epoch.0 as i64
}

/// `Fenced` unless the grant check's row came back (see
/// [`SQL_GRANT_LIVE`]).
pub(crate) fn require_live(grant: &LeaderGrant, live: Option<Row>) -> Result<()> {
    match live {
        Some(_) => Ok(()),
        None => Err(Error::Fenced { epoch: grant.epoch, current: None }),
    }
}

/// `Fenced` unless `grant`'s epoch is live (granted and not released).
pub(crate) async fn check_grant(tx: &Transaction<'_>, grant: &LeaderGrant) -> Result<()> {
    let live = tx.query_opt(SQL_GRANT_LIVE, &[&epoch(grant)]).await.map_err(|e| map("check grant", e))?;
    require_live(grant, live)
}

/// Checks rows of [`SQL_LOCK_EVENTS`] (id, claiming epoch): `Fenced` if
/// one was last claimed under another epoch. Returns their ids.
pub(crate) fn check_holders(grant: &LeaderGrant, rows: &[Row]) -> Result<Vec<Uuid>> {
    rows.iter()
        .map(|r| {
            let claimed: Option<i64> = r.get(1);
            check_claim_holder(grant, claimed.map(|e| Epoch(e as u64)))?;
            Ok(r.get(0))
        })
        .collect()
}

/// Locks the pending rows of `ids` and checks that `grant` may settle each:
/// `Fenced` if the grant is not live or an event is held by another claim.
/// Returns the ids to settle (those still pending).
pub(crate) async fn settleable(
    tx: &Transaction<'_>,
    grant: &LeaderGrant,
    ids: &[EventId],
) -> Result<Vec<Uuid>> {
    check_grant(tx, grant).await?;
    let ids: Vec<Uuid> = ids.iter().map(|i| uuid(*i)).collect();
    let rows = tx.query(SQL_LOCK_EVENTS, &[&ids]).await.map_err(|e| map("lock events", e))?;
    check_holders(grant, &rows)
}
