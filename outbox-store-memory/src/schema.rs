//! The memory store's layout: what one store holds, kept apart from any
//! one handle ([`MemoryBacking`]) so a reopen finds it, as a file would.
//! Events are kept by commit sequence; indexes by id, and the inbox marks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use outbox_core::rules::{self, ClaimEntry};
use outbox_core::{
    ActorId, ConsumerId, Envelope, Epoch, EventId, LeaderGrant, Result, StateSnapshot, Timestamp,
};

/// The data of a memory store, kept apart from any one handle: a store
/// opened over the same backing after another was dropped finds everything
/// the first committed, like a file reopened. Lost with the process.
#[derive(Debug, Default, Clone)]
pub struct MemoryBacking(pub(crate) Arc<Mutex<Inner>>);

impl MemoryBacking {
    /// A new, empty backing.
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) next_seq: u64,
    pub(crate) states: HashMap<ActorId, StateSnapshot>,
    /// Events by commit sequence.
    pub(crate) events: BTreeMap<u64, Row>,
    pub(crate) by_id: HashMap<EventId, u64>,
    pub(crate) inbox: HashMap<(ConsumerId, ActorId, EventId), Timestamp>,
    pub(crate) leader: Option<LeaderGrant>,
    pub(crate) last_epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Pending,
    /// Dead-lettered; `skipped`: no longer parks its key.
    Dead {
        skipped: bool,
    },
    Delivered(Timestamp),
    /// Given up on by an operator, at the time given.
    Discarded(Timestamp),
}

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) env: Envelope,
    pub(crate) status: Status,
    /// The epoch of the last claim, kept after the lease lapses.
    pub(crate) claimed_by: Option<Epoch>,
    pub(crate) lease_until: Option<Timestamp>,
}

impl Row {
    pub(crate) fn leased_at(&self, now: Timestamp) -> bool {
        self.lease_until.is_some_and(|t| t > now)
    }

    /// What a claim scan sees of this row.
    pub(crate) fn entry(&self) -> ClaimEntry {
        match self.status {
            Status::Pending => ClaimEntry::Pending {
                lease_until: self.lease_until,
                next_attempt_at: self.env.next_attempt_at,
            },
            Status::Dead { skipped: false } => ClaimEntry::Dead,
            Status::Dead { skipped: true } => ClaimEntry::Skipped,
            Status::Delivered(_) | Status::Discarded(_) => ClaimEntry::Delivered,
        }
    }
}

impl Inner {
    /// The row of event `id` if it is dead.
    pub(crate) fn dead_mut(&mut self, id: &EventId) -> Option<&mut Row> {
        let seq = *self.by_id.get(id)?;
        self.events.get_mut(&seq).filter(|r| matches!(r.status, Status::Dead { .. }))
    }

    pub(crate) fn check_fence(&self, grant: &LeaderGrant) -> Result<()> {
        rules::check_fence(grant, self.leader.as_ref().map(|g| g.epoch))
    }

    /// The rows `grant` may settle; `Fenced` if any id is held by another
    /// claim. Delivered, dead and unknown ids are skipped.
    pub(crate) fn settleable(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<u64>> {
        self.check_fence(grant)?;
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(&seq) = self.by_id.get(id) else { continue };
            let row = &self.events[&seq];
            if row.status != Status::Pending {
                continue;
            }
            rules::check_claim_holder(grant, row.claimed_by)?;
            seqs.push(seq);
        }
        Ok(seqs)
    }
}
