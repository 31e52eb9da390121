//! The outbox store contract over [`KvLog`]: every operation reads the map,
//! decides with the core's shared rules (`outbox_core::rules`), and writes
//! its changes as ONE batch, so it is all or nothing.
//!
//! Keys:
//!
//! | key | value |
//! | --- | --- |
//! | `m/seq` | the next commit sequence number |
//! | `m/epoch` | the last leadership epoch granted |
//! | `m/leader` | the current grant: epoch, expiry, holder |
//! | `s/<actor>` | a state snapshot: version, time, bytes |
//! | `e/<seq>` | an event row: status, then `outbox_core::codec`'s row encoding |
//! | `i/<event id>` | the event's seq |
//! | `x/<consumer, origin, event id>` | an inbox mark: its time |

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use outbox_core::codec::{self, Reader, Writer};
use outbox_core::rules::{self, ClaimEntry, ClaimPlan};
use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, Epoch, Error, EventId, EventStatus, InboxStore, InspectStore, LeaderGrant,
    LeaderStore, Limits, Result, SharedClock, StateSnapshot, StateStore, StoreStats, Timestamp, Version,
    async_trait,
};

use crate::kv::{KvLog, Op};

const SEQ: &[u8] = b"m/seq";
const EPOCH: &[u8] = b"m/epoch";
const LEADER: &[u8] = b"m/leader";
const EVENTS: &[u8] = b"e/";

/// An event's delivery status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Dead { skipped: bool },
    Delivered(Timestamp),
    Discarded(Timestamp),
}

/// One stored event.
#[derive(Clone, Debug)]
struct Row {
    status: Status,
    row: codec::Row,
}

impl Row {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self.status {
            Status::Pending => w.u8(0),
            Status::Dead { skipped: false } => w.u8(1),
            Status::Dead { skipped: true } => w.u8(2),
            Status::Delivered(at) => {
                w.u8(3);
                w.time(at);
            }
            Status::Discarded(at) => {
                w.u8(4);
                w.time(at);
            }
        }
        w.0.extend_from_slice(&codec::encode_row(&self.row));
        w.0
    }

    fn decode(b: &[u8]) -> Result<Row> {
        let mut r = Reader::new(b);
        let status = match r.u8()? {
            0 => Status::Pending,
            1 => Status::Dead { skipped: false },
            2 => Status::Dead { skipped: true },
            3 => Status::Delivered(r.time()?),
            4 => Status::Discarded(r.time()?),
            _ => return Err(codec::corrupt("unknown event status")),
        };
        let tag_len = if matches!(status, Status::Delivered(_) | Status::Discarded(_)) { 9 } else { 1 };
        let row = codec::decode_row(b.get(tag_len..).ok_or_else(|| codec::corrupt("short row"))?)?;
        Ok(Row { status, row })
    }

    fn entry(&self) -> ClaimEntry {
        match self.status {
            Status::Pending => ClaimEntry::Pending {
                lease_until: self.row.lease_until,
                next_attempt_at: self.row.env.next_attempt_at,
            },
            Status::Dead { skipped: false } => ClaimEntry::Dead,
            Status::Dead { skipped: true } => ClaimEntry::Skipped,
            Status::Delivered(_) | Status::Discarded(_) => ClaimEntry::Delivered,
        }
    }
}

fn with_len(key: &mut Vec<u8>, s: &[u8]) {
    key.extend_from_slice(&(s.len() as u32).to_be_bytes());
    key.extend_from_slice(s);
}

fn state_key(actor: &ActorId) -> Vec<u8> {
    [b"s/".as_slice(), actor.as_str().as_bytes()].concat()
}

fn event_key(seq: u64) -> Vec<u8> {
    [EVENTS, &seq.to_be_bytes()].concat()
}

fn id_key(id: EventId) -> Vec<u8> {
    [b"i/".as_slice(), &id.to_bytes()].concat()
}

fn inbox_key(consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Vec<u8> {
    let mut k = b"x/".to_vec();
    with_len(&mut k, consumer.as_str().as_bytes());
    with_len(&mut k, origin.as_str().as_bytes());
    k.extend_from_slice(&id.to_bytes());
    k
}

fn u64_of(b: Option<&[u8]>) -> Result<u64> {
    match b {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(b.try_into().map_err(|_| codec::corrupt("bad counter"))?)),
    }
}

fn encode_grant(g: &LeaderGrant) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u64(g.epoch.0);
    w.time(g.expires_at);
    w.str(&g.holder);
    w.0
}

fn decode_grant(b: &[u8]) -> Result<LeaderGrant> {
    let mut r = Reader::new(b);
    let epoch = Epoch(r.u64()?);
    let expires_at = r.time()?;
    let holder = r.string()?;
    r.end()?;
    Ok(LeaderGrant { holder, epoch, expires_at })
}

fn encode_state(s: &StateSnapshot) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.u64(s.version.0);
    w.time(s.updated_at);
    w.bytes(&s.bytes);
    w.0
}

fn decode_state(b: &[u8]) -> Result<StateSnapshot> {
    let mut r = Reader::new(b);
    let version = Version(r.u64()?);
    let updated_at = r.time()?;
    let bytes = r.bytes()?.to_vec();
    r.end()?;
    Ok(StateSnapshot { version, bytes, updated_at })
}

/// The outbox store on a [`KvLog`] file.
#[derive(Debug)]
pub struct KvStore {
    kv: Mutex<KvLog>,
    path: PathBuf,
    clock: SharedClock,
    limits: Limits,
}

impl KvStore {
    /// Opens (or creates) the store in the log file at `path`.
    pub fn open(path: impl AsRef<Path>, clock: SharedClock) -> Result<KvStore> {
        let path = path.as_ref().to_path_buf();
        let kv = KvLog::open(&path)?;
        Ok(KvStore { kv: Mutex::new(kv), path, clock, limits: Limits::default() })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, KvLog> {
        // Every operation decides first and writes one batch last, so a
        // panic while holding the lock leaves nothing half-applied.
        self.kv.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Reads under the lock, shared by the operations.
struct View<'a>(&'a KvLog);

impl View<'_> {
    fn rows(&self) -> impl Iterator<Item = Result<(u64, Row)>> + '_ {
        self.0.scan(EVENTS).map(|(k, v)| {
            let seq = u64_of(k.get(EVENTS.len()..))?;
            Ok((seq, Row::decode(v)?))
        })
    }

    fn seq_of(&self, id: EventId) -> Result<Option<u64>> {
        self.0.get(&id_key(id)).map(|b| u64_of(Some(b))).transpose()
    }

    fn row(&self, seq: u64) -> Result<Option<Row>> {
        self.0.get(&event_key(seq)).map(Row::decode).transpose()
    }

    fn leader(&self) -> Result<Option<LeaderGrant>> {
        self.0.get(LEADER).map(decode_grant).transpose()
    }

    fn check_fence(&self, grant: &LeaderGrant) -> Result<()> {
        rules::check_fence(grant, self.leader()?.map(|g| g.epoch))
    }

    /// The pending rows `grant` may settle; `Fenced` if one is held by
    /// another claim. Delivered, dead and unknown ids are skipped.
    fn settleable(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<(u64, Row)>> {
        self.check_fence(grant)?;
        let mut out = Vec::new();
        for &id in ids {
            let Some(seq) = self.seq_of(id)? else { continue };
            let Some(row) = self.row(seq)? else { continue };
            if row.status != Status::Pending {
                continue;
            }
            rules::check_claim_holder(grant, row.row.claimed_by.map(Epoch))?;
            out.push((seq, row));
        }
        Ok(out)
    }

    /// The dead rows among `ids`.
    fn dead(&self, ids: &[EventId]) -> Result<Vec<(u64, Row)>> {
        let mut out = Vec::new();
        for &id in ids {
            let Some(seq) = self.seq_of(id)? else { continue };
            if let Some(row) = self.row(seq)?
                && matches!(row.status, Status::Dead { .. })
            {
                out.push((seq, row));
            }
        }
        Ok(out)
    }
}

fn put_row(ops: &mut Vec<Op>, seq: u64, row: &Row) {
    ops.push(Op::Put(event_key(seq), row.encode()));
}

#[async_trait]
impl StateStore for KvStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.limits)?;
        let now = self.clock.now();
        let mut kv = self.lock();
        let view = View(&kv);
        // Check everything first; then write one batch.
        let mut ops = Vec::new();
        let mut version = None;
        if let Some(s) = &commit.state {
            let actual = match kv.get(&state_key(&s.actor)) {
                Some(b) => decode_state(b)?.version,
                None => Version::NONE,
            };
            if actual != s.expected_version {
                return Err(Error::Conflict { actor: s.actor.clone(), expected: s.expected_version, actual });
            }
            let v = s.expected_version.next();
            let snapshot = StateSnapshot { version: v, bytes: s.snapshot.clone(), updated_at: now };
            ops.push(Op::Put(state_key(&s.actor), encode_state(&snapshot)));
            version = Some(v);
        }
        let mut seen = HashSet::new();
        for e in &commit.events {
            if view.seq_of(e.id)?.is_some() || !seen.insert(e.id) {
                return Err(Error::DuplicateEvent { id: e.id });
            }
        }
        for m in &commit.inbox {
            if kv.get(&inbox_key(&m.consumer, &m.origin, m.event_id)).is_some() {
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
            ops.push(Op::Put(inbox_key(&m.consumer, &m.origin, m.event_id), codec::time_bytes(now).to_vec()));
        }
        let mut seq = u64_of(kv.get(SEQ))?;
        for e in commit.events {
            let id = e.id;
            let row = Row {
                status: Status::Pending,
                row: codec::Row {
                    env: Envelope::committed(e, now),
                    status: codec::Status::Pending,
                    claimed_by: None,
                    lease_until: None,
                },
            };
            put_row(&mut ops, seq, &row);
            ops.push(Op::Put(id_key(id), seq.to_be_bytes().to_vec()));
            seq += 1;
        }
        ops.push(Op::Put(SEQ.to_vec(), seq.to_be_bytes().to_vec()));
        kv.write(ops)?;
        Ok(CommitReceipt { version, committed_at: now, durable: true })
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        self.lock().get(&state_key(actor)).map(decode_state).transpose()
    }
}

#[async_trait]
impl LeaderStore for KvStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        rules::check_ttl(ttl)?;
        let now = self.clock.now();
        let mut kv = self.lock();
        if let Some(cur) = View(&kv).leader()?
            && cur.holder != holder
            && cur.expires_at > now
        {
            return Ok(None);
        }
        let epoch = u64_of(kv.get(EPOCH))? + 1;
        let grant = LeaderGrant {
            holder: holder.to_owned(),
            epoch: Epoch(epoch),
            expires_at: now.saturating_add(ttl),
        };
        kv.write(vec![
            Op::Put(EPOCH.to_vec(), epoch.to_be_bytes().to_vec()),
            Op::Put(LEADER.to_vec(), encode_grant(&grant)),
        ])?;
        Ok(Some(grant))
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        rules::check_ttl(ttl)?;
        let now = self.clock.now();
        let mut kv = self.lock();
        View(&kv).check_fence(grant)?;
        let renewed = LeaderGrant { expires_at: now.saturating_add(ttl), ..grant.clone() };
        kv.write(vec![Op::Put(LEADER.to_vec(), encode_grant(&renewed))])?;
        Ok(renewed)
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let mut kv = self.lock();
        if View(&kv).leader()?.is_some_and(|g| g.epoch == grant.epoch) {
            kv.write(vec![Op::Delete(LEADER.to_vec())])?;
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for KvStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        rules::check_lease(&request)?;
        let now = self.clock.now();
        let mut kv = self.lock();
        let view = View(&kv);
        view.check_fence(grant)?;
        let lease_until = now.saturating_add(request.lease);
        let mut plan = ClaimPlan::new(&request, now);
        let (mut ops, mut out) = (Vec::new(), Vec::new());
        for item in view.rows() {
            if plan.is_full() {
                break;
            }
            let (seq, mut row) = item?;
            if !plan.offer(&row.row.env.key, seq, row.entry()) {
                continue;
            }
            row.row.env.attempts = row.row.env.attempts.saturating_add(1);
            row.row.claimed_by = Some(grant.epoch.0);
            row.row.lease_until = Some(lease_until);
            put_row(&mut ops, seq, &row);
            out.push(row.row.env);
        }
        kv.write(ops)?;
        Ok(out)
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.clock.now();
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).settleable(grant, ids)? {
            row.status = Status::Delivered(now);
            row.row.lease_until = None;
            put_row(&mut ops, seq, &row);
        }
        kv.write(ops)
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).settleable(grant, ids)? {
            if row.row.lease_until.is_some() {
                row.row.env.attempts = row.row.env.attempts.saturating_sub(1);
                row.row.lease_until = None;
                put_row(&mut ops, seq, &row);
            }
        }
        kv.write(ops)
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).settleable(grant, &[id])? {
            if attempt == Attempt::Uncounted && row.row.lease_until.is_some() {
                row.row.env.attempts = row.row.env.attempts.saturating_sub(1);
            }
            row.row.env.next_attempt_at = at;
            row.row.env.last_error = Some(error.to_owned());
            row.row.lease_until = None;
            put_row(&mut ops, seq, &row);
        }
        kv.write(ops)
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let now = self.clock.now();
        let mut kv = self.lock();
        let view = View(&kv);
        view.check_fence(grant)?;
        let mut ops = Vec::new();
        for item in view.rows() {
            let (seq, mut row) = item?;
            if row.status == Status::Pending
                && row.row.env.last_error.is_some()
                && row.row.env.next_attempt_at > now
            {
                row.row.env.next_attempt_at = now;
                put_row(&mut ops, seq, &row);
            }
        }
        let n = ops.len() as u64;
        kv.write(ops)?;
        Ok(n)
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).settleable(grant, &[id])? {
            row.status = Status::Dead { skipped: false };
            row.row.env.last_error = Some(error.to_owned());
            row.row.lease_until = None;
            put_row(&mut ops, seq, &row);
        }
        kv.write(ops)
    }
}

#[async_trait]
impl InspectStore for KvStore {
    async fn stats(&self) -> Result<StoreStats> {
        let now = self.clock.now();
        let kv = self.lock();
        let mut s = StoreStats::default();
        let mut parked = HashSet::new();
        for item in View(&kv).rows() {
            let (_, row) = item?;
            match row.status {
                Status::Pending => {
                    s.pending += 1;
                    if row.row.lease_until.is_some_and(|t| t > now) {
                        s.in_flight += 1;
                    }
                    let at = row.row.env.created_at;
                    s.oldest_pending_at = Some(s.oldest_pending_at.map_or(at, |o| o.min(at)));
                }
                Status::Dead { skipped } => {
                    s.dead += 1;
                    if !skipped {
                        parked.insert(row.row.env.key.clone());
                    }
                }
                Status::Delivered(_) => s.delivered += 1,
                Status::Discarded(_) => s.discarded += 1,
            }
        }
        s.parked_keys = parked.len() as u64;
        Ok(s)
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list_by_status(EventStatus::Pending, limit).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.list_by_status(EventStatus::Dead, limit).await
    }

    async fn list_by_status(&self, status: EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        let kv = self.lock();
        let mut out = Vec::new();
        for item in View(&kv).rows() {
            if out.len() >= limit {
                break;
            }
            let (_, row) = item?;
            let st = match row.status {
                Status::Pending => EventStatus::Pending,
                Status::Dead { .. } => EventStatus::Dead,
                Status::Delivered(_) => EventStatus::Delivered,
                Status::Discarded(_) => EventStatus::Discarded,
            };
            if st == status {
                out.push(row.row.env);
            }
        }
        Ok(out)
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.clock.now();
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).dead(ids)? {
            row.status = Status::Pending;
            row.row.env.attempts = 0;
            row.row.env.next_attempt_at = now;
            row.row.claimed_by = None;
            row.row.lease_until = None;
            put_row(&mut ops, seq, &row);
        }
        let n = ops.len() as u64;
        kv.write(ops)?;
        Ok(n)
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.clock.now();
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).dead(ids)? {
            row.status = Status::Discarded(now);
            put_row(&mut ops, seq, &row);
        }
        let n = ops.len() as u64;
        kv.write(ops)?;
        Ok(n)
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (seq, mut row) in View(&kv).dead(ids)? {
            if row.status == (Status::Dead { skipped: false }) {
                row.status = Status::Dead { skipped: true };
                put_row(&mut ops, seq, &row);
            }
        }
        let n = ops.len() as u64;
        kv.write(ops)?;
        Ok(n)
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        let mut n = 0;
        for item in View(&kv).rows() {
            if n >= limit {
                break;
            }
            let (seq, row) = item?;
            if matches!(row.status, Status::Delivered(at) | Status::Discarded(at) if at < before) {
                ops.push(Op::Delete(event_key(seq)));
                ops.push(Op::Delete(id_key(row.row.env.id)));
                n += 1;
            }
        }
        kv.write(ops)?;
        Ok(n as u64)
    }
}

#[async_trait]
impl InboxStore for KvStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        Ok(self.lock().get(&inbox_key(consumer, origin, id)).is_some())
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut kv = self.lock();
        let mut ops = Vec::new();
        for (k, v) in kv.scan(b"x/") {
            if ops.len() >= limit {
                break;
            }
            let at: [u8; 8] = v.try_into().map_err(|_| codec::corrupt("bad inbox mark"))?;
            if codec::time_from(at) < before {
                ops.push(Op::Delete(k.to_vec()));
            }
        }
        let n = ops.len() as u64;
        kv.write(ops)?;
        Ok(n)
    }
}

impl DurableStore for KvStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("kv-log", true).limits(self.limits)
    }
}
