//! Transactions over the object stores and the requests inside them.
//!
//! Every request of a transaction is an IndexedDB request: values are
//! encoded before the transaction opens, so it never awaits anything else
//! (which would let the browser auto-commit it half done). On any request
//! error the transaction is dropped, which aborts it: nothing of a failed
//! operation is written.

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use indexed_db_futures::object_store::ObjectStore;
use indexed_db_futures::prelude::*;
use indexed_db_futures::transaction::{
    Transaction, TransactionDurability, TransactionMode, TransactionOptions,
};
use outbox_core::Result;
use outbox_core::codec::{PendingEntry, corrupt, decode_pending};
use wasm_bindgen::{JsCast, JsValue};

use crate::codec::{js_bytes, js_u64, seq_js};
use crate::error::{from_dom, map};
use crate::options::Durability;
use crate::quarantine::{Healing, at};

pub(crate) type Tx<'a> = Transaction<'a>;

/// The open database and the durability hint of its writing
/// transactions.
#[derive(Debug)]
pub(crate) struct Db {
    pub(crate) db: Database,
    pub(crate) durability: Durability,
}

impl Db {
    /// Begins a transaction over `stores`, `readwrite` (with the
    /// durability hint) when `write`.
    pub(crate) fn tx(&self, stores: &[&str], write: bool) -> Result<Tx<'_>> {
        let b = self.db.transaction(stores);
        let r = if write {
            let mut opts = TransactionOptions::new();
            match self.durability {
                Durability::Strict => {
                    opts.set_durability(TransactionDurability::Strict);
                }
                Durability::Relaxed => {
                    opts.set_durability(TransactionDurability::Relaxed);
                }
                Durability::BrowserDefault => {}
            }
            b.with_mode(TransactionMode::Readwrite).with_options(opts).build()
        } else {
            b.build()
        };
        r.map_err(|e| map("begin transaction", e))
    }
}

/// Commits `tx`, mapping a failure (a quota abort shows up here). The
/// browser refuses a commit that does not fit the origin's quota by
/// aborting the transaction, which `indexed_db_futures` reports as a bare
/// "transaction aborted": the reason (`QuotaExceededError`, ...) is the
/// transaction's `error`, so that is what is classified.
pub(crate) async fn finish(tx: Tx<'_>, what: &str) -> Result<()> {
    let raw: web_sys::IdbTransaction = tx.as_sys().unchecked_ref::<web_sys::IdbTransaction>().clone();
    tx.commit().await.map_err(|e| match raw.error() {
        Some(dom) => from_dom(&dom.name(), &dom.message(), what),
        None => map(what, e),
    })
}

/// The object store `name` of `tx`.
pub(crate) fn store<'a>(tx: &'a Tx<'_>, name: &str, what: &str) -> Result<ObjectStore<'a>> {
    tx.object_store(name).map_err(|e| map(what, e))
}

pub(crate) async fn get(st: &ObjectStore<'_>, key: JsValue, what: &str) -> Result<Option<JsValue>> {
    let req = st.get::<JsValue, JsValue, JsValue>(key).primitive().map_err(|e| map(what, e))?;
    req.await.map_err(|e| map(what, e))
}

/// Issues a put (not awaited: requests of a transaction run in order, and
/// the transaction's commit reports the first failure).
/// The values at `keys` in `st`, in order: every request is issued
/// before the first is awaited, so the browser serves them back to back
/// instead of one per round trip (a request that finished before it is
/// awaited is read at once).
pub(crate) async fn get_many(
    st: &ObjectStore<'_>,
    keys: impl IntoIterator<Item = JsValue>,
    what: &str,
) -> Result<Vec<Option<JsValue>>> {
    let mut reqs = Vec::new();
    for key in keys {
        reqs.push(st.get::<JsValue, JsValue, JsValue>(key).primitive().map_err(|e| map(what, e))?);
    }
    let mut out = Vec::with_capacity(reqs.len());
    for req in reqs {
        out.push(req.await.map_err(|e| map(what, e))?);
    }
    Ok(out)
}

/// The keys (seqs) and values of `st` from `lo` to `hi` inclusive, in
/// key order: two requests, however many records.
pub(crate) async fn seq_range(
    st: &ObjectStore<'_>,
    lo: u64,
    hi: u64,
    what: &str,
) -> Result<Vec<(u64, JsValue)>> {
    let range = || indexed_db_futures::KeyRange::Bound(seq_js(lo), false, seq_js(hi), false);
    let keys = st.get_all_keys::<JsValue>().with_query::<JsValue, _>(range()).primitive();
    let keys = keys.map_err(|e| map(what, e))?;
    let values = st.get_all::<JsValue>().with_query::<JsValue, _>(range()).primitive();
    let values = values.map_err(|e| map(what, e))?;
    let keys = keys.await.map_err(|e| map(what, e))?;
    let values = values.await.map_err(|e| map(what, e))?;
    let mut out = Vec::new();
    for (k, v) in keys.zip(values) {
        let (k, v) = (k.map_err(|e| map(what, e))?, v.map_err(|e| map(what, e))?);
        out.push((js_u64(&k, what)?, v));
    }
    Ok(out)
}

/// The keys (seqs) of `st` from `lo` to `hi` inclusive: one request.
pub(crate) async fn seq_keys(st: &ObjectStore<'_>, lo: u64, hi: u64, what: &str) -> Result<Vec<u64>> {
    let range = indexed_db_futures::KeyRange::Bound(seq_js(lo), false, seq_js(hi), false);
    let keys = st.get_all_keys::<JsValue>().with_query::<JsValue, _>(range).primitive();
    let keys = keys.map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    keys.map(|k| js_u64(&k.map_err(|e| map(what, e))?, what)).collect()
}

/// Deletes the records of `st` keyed `seqs` (ascending): one range delete
/// per run of `seqs` with no other key of `st` between its ends (found
/// with one key read), so a batch of consecutive seqs costs two requests,
/// not one per record.
pub(crate) async fn delete_seqs(st: &ObjectStore<'_>, seqs: &[u64], what: &str) -> Result<()> {
    let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else { return Ok(()) };
    if seqs.len() < 4 {
        for seq in seqs {
            delete(st, seq_js(*seq), what)?;
        }
        return Ok(());
    }
    let present = seq_keys(st, lo, hi, what).await?;
    let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    // Runs of present keys that are all wanted.
    let mut run: Option<(u64, u64)> = None;
    let flush = |run: Option<(u64, u64)>| -> Result<()> {
        if let Some((a, b)) = run {
            let range = indexed_db_futures::KeyRange::Bound(seq_js(a), false, seq_js(b), false);
            st.delete::<JsValue, _>(range).primitive().map_err(|e| map(what, e)).map(drop)?;
        }
        Ok(())
    };
    for k in present {
        if wanted.contains(&k) {
            run = Some(run.map_or((k, k), |(a, _)| (a, k)));
        } else {
            flush(run.take())?;
        }
    }
    flush(run)
}

pub(crate) fn put(st: &ObjectStore<'_>, key: JsValue, value: JsValue, what: &str) -> Result<()> {
    st.put(value).with_key(key).primitive().map_err(|e| map(what, e)).map(drop)
}

/// Issues a delete (not awaited, like [`put`]).
pub(crate) fn delete(st: &ObjectStore<'_>, key: JsValue, what: &str) -> Result<()> {
    st.delete::<JsValue, JsValue>(key).primitive().map_err(|e| map(what, e)).map(drop)
}

pub(crate) async fn get_all(st: &ObjectStore<'_>, what: &str) -> Result<Vec<JsValue>> {
    let it =
        st.get_all::<JsValue>().primitive().map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    it.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))
}

pub(crate) async fn get_all_keys(
    st: &ObjectStore<'_>,
    limit: Option<u32>,
    what: &str,
) -> Result<Vec<JsValue>> {
    let it = match limit {
        Some(n) => st.get_all_keys::<JsValue>().with_limit(n).primitive().map_err(|e| map(what, e))?.await,
        None => st.get_all_keys::<JsValue>().primitive().map_err(|e| map(what, e))?.await,
    }
    .map_err(|e| map(what, e))?;
    it.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))
}

pub(crate) async fn count(st: &ObjectStore<'_>, what: &str) -> Result<u64> {
    let n = st.count().primitive().map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    Ok(n as u64)
}

/// Every `(seq, entry)` of the pending index, in seq order; `Bad` at the
/// first entry that does not decode.
pub(crate) async fn pending_entries(st: &ObjectStore<'_>) -> Healing<Vec<(u64, PendingEntry)>> {
    pending_after(st, 0, u32::MAX).await
}

/// Up to `n` `(seq, entry)` of the pending index with a seq above
/// `after`, in seq order; `Bad` at the first entry that does not decode.
pub(crate) async fn pending_after(
    st: &ObjectStore<'_>,
    after: u64,
    n: u32,
) -> Healing<Vec<(u64, PendingEntry)>> {
    let what = "scan pending";
    let range = || indexed_db_futures::KeyRange::LowerBound(seq_js(after), true);
    let keys = st.get_all_keys::<JsValue>().with_query::<JsValue, _>(range()).with_limit(n).primitive();
    let keys = keys.map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    let keys = keys.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))?;
    let values = st.get_all::<JsValue>().with_query::<JsValue, _>(range()).with_limit(n).primitive();
    let values = values.map_err(|e| map(what, e))?.await.map_err(|e| map(what, e))?;
    let values = values.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| map(what, e))?;
    if keys.len() != values.len() {
        return Err(corrupt("pending index changed under a read").into());
    }
    let mut out = Vec::with_capacity(keys.len());
    for (k, v) in keys.iter().zip(&values) {
        let seq = js_u64(k, "pending key")?;
        out.push((seq, at(seq, js_bytes(v, "pending entry").and_then(|b| decode_pending(&b)))?));
    }
    Ok(out)
}
