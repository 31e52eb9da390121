//! The claim, in two steps in one transaction: lock the keys of the first
//! claimable key heads ([`SQL_CLAIM_KEYS`]), then lease the heads or, where
//! a locked key has more due events, the claimable run of each key
//! ([`SQL_CLAIM`]).
//!
//! A claimed row that breaks the envelope's rules is quarantined in the
//! same transaction (moved to the dead letters, see `rows.rs`) and left
//! out of the batch; the rest of the batch is claimed as usual.
//!
//! Which events a claim takes is decided by these statements inside
//! PostgreSQL (keys try-locked with `pg_try_advisory_xact_lock`), not by
//! scanning rows in Rust, so `outbox_core::rules::ClaimPlan` does not
//! apply here; the conformance suite checks that both agree with the
//! contract.

use std::collections::HashMap;

use outbox_core::{ClaimRequest, Envelope, LeaderGrant, OrderingKey, Result, Timestamp};
use tokio_postgres::{Row, Statement, Transaction};
use uuid::Uuid;

use crate::error::map;
use crate::fence::{epoch, require_live};
use crate::pool::Conn;
use crate::queries::{
    SQL_CLAIM, SQL_CLAIM_HEADS, SQL_CLAIM_HEADS_OF, SQL_CLAIM_KEYS, SQL_CLAIM_PLAN, SQL_CLAIM_REPLAN,
    SQL_GRANT_LIVE, SQL_UNCLAIM,
};
use crate::rows::{Decoded, decode_at, limit_i64, millis, quarantine, uuid};

/// What one claim transaction did.
pub(crate) struct Claimed {
    /// The events claimed, in commit order.
    pub(crate) events: Vec<Envelope>,
    /// How many claimed rows were quarantined instead.
    pub(crate) quarantined: usize,
}

/// Claims up to `request.limit` events (at least one) for `grant` at time
/// `now`, leased until `until`; returns them in commit order, with the
/// number of rows quarantined on the way.
pub(crate) async fn claim(
    conn: &mut Conn<'_>,
    grant: &LeaderGrant,
    request: &ClaimRequest,
    keys_of: Option<&[OrderingKey]>,
    now: Timestamp,
    until: Timestamp,
) -> Result<Claimed> {
    let now = millis(now);
    let until = millis(until);
    let limit = limit_i64(request.limit);
    let epoch = epoch(grant);
    let [grant_live, plan, claim_keys, replan, claim, heads, claim_heads_of] = conn
        .prepare([
            SQL_GRANT_LIVE,
            SQL_CLAIM_PLAN,
            SQL_CLAIM_KEYS,
            SQL_CLAIM_REPLAN,
            SQL_CLAIM.as_str(),
            SQL_CLAIM_HEADS.as_str(),
            SQL_CLAIM_HEADS_OF.as_str(),
        ])
        .await?;
    let keys_of: Option<Vec<&str>> = keys_of.map(|ks| ks.iter().map(|k| k.as_str()).collect());
    let tx = conn.client().transaction().await.map_err(|e| map("begin", e))?;
    // 1. (pipelined with the grant check) Either the heads of the given
    //    keys, locked and leased in one statement; or the keys of the
    //    first `limit` claimable key heads, in commit order, locked (keys
    //    another forwarder or a commit in flight holds, or whose head is
    //    leased or not yet due, are passed over). A grant found not live
    //    drops the transaction (rolled back): nothing stays leased.
    let (live, planned, rows, replanned) = tokio::join!(
        biased;
        async { tx.query_opt(&grant_live, &[&epoch]).await },
        async { tx.query_one(&plan, &[]).await },
        async {
            match &keys_of {
                None => tx.query(&claim_keys, &[&now, &limit, &request.park_dead_keys]).await,
                Some(keys) => {
                    tx.query(&claim_heads_of, &[&now, keys, &request.park_dead_keys, &limit, &epoch, &until])
                        .await
                }
            }
        },
        async { tx.query_one(&replan, &[]).await },
    );
    planned.map_err(|e| map("set claim plan", e))?;
    replanned.map_err(|e| map("reset claim plan", e))?;
    require_live(grant, live.map_err(|e| map("check grant", e))?)?;
    let rows = rows.map_err(|e| map("claim", e))?;
    if rows.is_empty() {
        return Ok(Claimed { events: Vec::new(), quarantined: 0 });
    }
    let rows = if keys_of.is_some() {
        rows
    } else {
        lease(&tx, rows, limit, request, [&claim, &heads], (now, epoch, until)).await?
    };
    let mut out: Vec<(i64, Envelope)> = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    // The first quarantined row of each key (by the key as stored).
    let mut bad_heads: HashMap<String, i64> = HashMap::new();
    for r in &rows {
        let seq: i64 = r.get(0);
        match decode_at(r, 1)? {
            Decoded::Event(e) => out.push((seq, e)),
            Decoded::Corrupted(q) => {
                let head = bad_heads.entry(r.get(3)).or_insert(seq);
                *head = (*head).min(seq);
                bad.push(q);
            }
        }
    }
    if !bad.is_empty() {
        quarantine(&tx, &bad).await?;
        if request.park_dead_keys {
            // The new dead letter parks its key: what the batch took after
            // it on that key is handed back (as `release` does).
            let parked = |(seq, e): &(i64, Envelope)| bad_heads.get(e.key.as_str()).is_some_and(|h| seq > h);
            let back: Vec<Uuid> = out.iter().filter(|x| parked(x)).map(|(_, e)| uuid(e.id)).collect();
            if !back.is_empty() {
                out.retain(|x| !parked(x));
                tx.execute(SQL_UNCLAIM, &[&back]).await.map_err(|e| map("hand back parked events", e))?;
            }
        }
    }
    tx.commit().await.map_err(|e| map("commit claim", e))?;
    out.sort_by_key(|(seq, _)| *seq);
    Ok(Claimed { events: out.into_iter().map(|(_, e)| e).collect(), quarantined: bad.len() })
}

/// Step 2 of a claim in commit order, given the locked heads `rows` of
/// [`SQL_CLAIM_KEYS`], in a fresh snapshot (READ COMMITTED): if no locked
/// key has a second pending or dead event within the bound, the batch is
/// the heads ([`SQL_CLAIM_HEADS`]); otherwise, within the locked keys, the
/// prefix of each key's pending events (and, when parking, dead events
/// not skipped) that is claimable now ([`SQL_CLAIM`]). (A key's later
/// commits take sequence numbers after its earlier ones, since committers
/// hold the key's lock, so an event committed since the heads walk can
/// only extend a key's run, never precede its head.)
async fn lease(
    tx: &Transaction<'_>,
    rows: Vec<Row>,
    limit: i64,
    request: &ClaimRequest,
    [runs, heads]: [&Statement; 2],
    (now, epoch, until): (i64, i64, i64),
) -> Result<Vec<Row>> {
    // With `limit` heads in hand (each claimable), nothing past the
    // last of them can be among the `limit` first claimable events.
    let bound: i64 = if rows.len() as i64 >= limit {
        rows.iter().map(|r| r.get::<_, i64>(1)).max().unwrap_or(i64::MAX)
    } else {
        i64::MAX
    };
    let heads_only = rows.iter().all(|r| r.get::<_, Option<i64>>(3).is_none_or(|next| next > bound));
    if heads_only {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.get(2)).collect();
        tx.query(heads, &[&now, &epoch, &until, &ids]).await
    } else {
        let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        tx.query(runs, &[&now, &keys, &request.park_dead_keys, &limit, &epoch, &until, &bound]).await
    }
    .map_err(|e| map("claim", e))
}
