//! Store logic every backend shares, written once: which due events a
//! claim takes ([`ClaimPlan`]), the fencing checks ([`check_fence`],
//! [`check_claim_holder`]) and request validation ([`check_lease`],
//! [`check_ttl`]).
//!
//! Pure code: a store reads its rows its own way and asks these functions
//! what the contract says about them, so the memory, sled, IndexedDB and
//! SQLite stores cannot drift apart on it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::Epoch;
use crate::store::{ClaimRequest, LeaderGrant};
use crate::time::Timestamp;

/// One event as a claim scan meets it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClaimEntry {
    /// Waiting for delivery: leased until `lease_until` (if set), and not
    /// to be tried before `next_attempt_at`.
    Pending {
        /// End of the current lease, if the event was claimed.
        lease_until: Option<Timestamp>,
        /// Earliest time of the next attempt.
        next_attempt_at: Timestamp,
    },
    /// Dead-lettered (and not skipped): parks its key when the claim
    /// parks dead keys.
    Dead,
    /// Dead-lettered and skipped ([`InspectStore::skip_dead`](crate::InspectStore::skip_dead)):
    /// never claimed, never parks its key.
    Skipped,
    /// Delivered (acked) or discarded.
    Delivered,
}

/// Decides which events a claim takes, as the store contract says
/// ([`DeliveryStore::claim`](crate::DeliveryStore::claim)): due events in
/// commit order, at most `limit`, and per ordering key only a run from the
/// key's head: a key whose earliest pending event is leased or not yet
/// due, or (when parking) whose earlier event is dead, gives nothing past
/// that point.
///
/// A store feeds the plan its events in commit order (`seq` ascending)
/// with [`ClaimPlan::offer`]; a store that keeps dead events in an index
/// of their own reports them first with [`ClaimPlan::dead`].
///
/// ```
/// use std::time::Duration;
/// use outbox_core::{ClaimRequest, Timestamp};
/// use outbox_core::rules::{ClaimEntry, ClaimPlan};
///
/// let now = Timestamp::from_millis(1_000);
/// let mut plan = ClaimPlan::new(&ClaimRequest::new(10, Duration::from_secs(30)), now);
/// let due = ClaimEntry::Pending { lease_until: None, next_attempt_at: now };
/// let later = ClaimEntry::Pending { lease_until: None, next_attempt_at: Timestamp::from_millis(5_000) };
/// assert!(!plan.offer(&"a", 1, later));  // not due: holds key "a" back
/// assert!(!plan.offer(&"a", 2, due));    // behind its key's head
/// assert!(plan.offer(&"b", 3, due));     // another key flows
/// ```
#[derive(Debug)]
pub struct ClaimPlan<K> {
    now: Timestamp,
    limit: usize,
    park_dead_keys: bool,
    taken: usize,
    /// Per key, the seq from which its events are held back.
    held_from: HashMap<K, u64>,
}

impl<K: Eq + Hash + Clone> ClaimPlan<K> {
    /// A plan for `request` at time `now`.
    pub fn new(request: &ClaimRequest, now: Timestamp) -> Self {
        ClaimPlan {
            now,
            limit: request.limit,
            park_dead_keys: request.park_dead_keys,
            taken: 0,
            held_from: HashMap::new(),
        }
    }

    /// A dead event of `key` at `seq`, reported apart from the scan: when
    /// the request parks dead keys, the key's later events are held.
    pub fn dead(&mut self, key: &K, seq: u64) {
        if self.park_dead_keys {
            self.hold(key, seq);
        }
    }

    fn hold(&mut self, key: &K, seq: u64) {
        match self.held_from.get_mut(key) {
            Some(from) => *from = (*from).min(seq),
            None => {
                self.held_from.insert(key.clone(), seq);
            }
        }
    }

    /// The event of `key` at `seq`, met in commit order. Returns whether
    /// the claim takes it (always `false` once [`ClaimPlan::is_full`]).
    /// A pending event that is leased or not yet due holds its key's later
    /// events back; so does a dead one when parking.
    pub fn offer(&mut self, key: &K, seq: u64, entry: ClaimEntry) -> bool {
        if self.is_full() || self.held_from.get(key).is_some_and(|&from| from < seq) {
            return false;
        }
        match entry {
            ClaimEntry::Delivered | ClaimEntry::Skipped => false,
            ClaimEntry::Dead => {
                self.dead(key, seq);
                false
            }
            ClaimEntry::Pending { lease_until, next_attempt_at } => {
                if lease_until.is_some_and(|t| t > self.now) || next_attempt_at > self.now {
                    self.hold(key, seq);
                    return false;
                }
                self.taken += 1;
                true
            }
        }
    }

    /// Whether the claim has taken `limit` events: a scan may stop.
    pub fn is_full(&self) -> bool {
        self.taken >= self.limit
    }

    /// How many events the claim has taken.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

/// The fence of an exclusive leader: `grant` may write only while it is
/// the store's current grant (`current`, `None` when nobody leads).
///
/// # Errors
///
/// [`Error::Fenced`] when `grant` is not the current grant.
pub fn check_fence(grant: &LeaderGrant, current: Option<Epoch>) -> Result<()> {
    if current != Some(grant.epoch) {
        return Err(Error::Fenced { epoch: grant.epoch, current });
    }
    Ok(())
}

/// The fence of one claimed event: `grant` may settle it only if its last
/// claim (`claimed_by`) was made under `grant`.
///
/// # Errors
///
/// [`Error::Fenced`] when another epoch (or none) claimed the event.
pub fn check_claim_holder(grant: &LeaderGrant, claimed_by: Option<Epoch>) -> Result<()> {
    if claimed_by != Some(grant.epoch) {
        return Err(Error::Fenced { epoch: grant.epoch, current: claimed_by });
    }
    Ok(())
}

/// A claim's lease must be positive.
///
/// # Errors
///
/// [`Error::InvalidInput`] for a zero lease.
pub fn check_lease(request: &ClaimRequest) -> Result<()> {
    if request.lease.is_zero() {
        return Err(Error::invalid_input("claim lease must be positive"));
    }
    Ok(())
}

/// A leadership grant's lifetime must be positive.
///
/// # Errors
///
/// [`Error::InvalidInput`] for a zero ttl.
pub fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid_input("leadership ttl must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    fn due() -> ClaimEntry {
        ClaimEntry::Pending { lease_until: None, next_attempt_at: NOW }
    }

    fn plan(limit: usize, park: bool) -> ClaimPlan<&'static str> {
        ClaimPlan::new(&ClaimRequest::new(limit, Duration::from_secs(1)).park_dead_keys(park), NOW)
    }

    #[test]
    fn takes_due_events_up_to_the_limit() {
        let mut p = plan(2, false);
        assert!(p.offer(&"a", 1, due()));
        assert!(p.offer(&"b", 2, due()));
        assert!(p.is_full());
        assert!(!p.offer(&"c", 3, due()));
        assert_eq!(p.taken(), 2);
    }

    #[test]
    fn a_leased_or_later_head_holds_its_key_only() {
        let mut p = plan(10, false);
        let leased =
            ClaimEntry::Pending { lease_until: Some(Timestamp::from_millis(2_000)), next_attempt_at: NOW };
        assert!(!p.offer(&"a", 1, leased));
        assert!(!p.offer(&"a", 2, due()));
        assert!(p.offer(&"b", 3, due()));
        let lapsed = ClaimEntry::Pending { lease_until: Some(NOW), next_attempt_at: NOW };
        assert!(p.offer(&"c", 4, lapsed), "a lease ending now has lapsed");
    }

    #[test]
    fn dead_events_hold_their_key_only_when_parking() {
        let mut p = plan(10, true);
        assert!(!p.offer(&"a", 1, ClaimEntry::Dead));
        assert!(!p.offer(&"a", 2, due()));
        let mut q = plan(10, false);
        assert!(!q.offer(&"a", 1, ClaimEntry::Dead));
        assert!(q.offer(&"a", 2, due()));
    }

    #[test]
    fn skipped_dead_events_never_hold_their_key() {
        let mut p = plan(10, true);
        assert!(!p.offer(&"a", 1, ClaimEntry::Skipped));
        assert!(p.offer(&"a", 2, due()));
    }

    #[test]
    fn a_dead_index_holds_only_later_events() {
        let mut p = plan(10, true);
        p.dead(&"a", 5);
        p.dead(&"a", 3);
        assert!(p.offer(&"a", 2, due()), "before the first dead event");
        assert!(!p.offer(&"a", 4, due()));
    }

    #[test]
    fn delivered_events_are_passed_over() {
        let mut p = plan(10, true);
        assert!(!p.offer(&"a", 1, ClaimEntry::Delivered));
        assert!(p.offer(&"a", 2, due()));
    }

    #[test]
    fn fences_and_inputs() {
        let g = LeaderGrant { holder: "h".into(), epoch: Epoch(2), expires_at: NOW };
        assert!(check_fence(&g, Some(Epoch(2))).is_ok());
        assert_eq!(check_fence(&g, Some(Epoch(3))).unwrap_err().kind(), ErrorKind::Fenced);
        assert_eq!(check_fence(&g, None).unwrap_err().kind(), ErrorKind::Fenced);
        assert!(check_claim_holder(&g, Some(Epoch(2))).is_ok());
        assert_eq!(check_claim_holder(&g, Some(Epoch(1))).unwrap_err().kind(), ErrorKind::Fenced);
        assert_eq!(
            check_lease(&ClaimRequest::new(1, Duration::ZERO)).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(check_lease(&ClaimRequest::new(1, Duration::from_millis(1))).is_ok());
        assert_eq!(check_ttl(Duration::ZERO).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert!(check_ttl(Duration::from_millis(1)).is_ok());
    }
}
