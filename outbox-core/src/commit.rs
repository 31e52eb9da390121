//! What one atomic commit writes: an optional state change, events, and
//! consumer inbox marks.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::event::{Envelope, NewEvent};
use crate::id::{ActorId, ConsumerId, EventId};
use crate::state::Version;

/// A state change: the actor, the version it is based on, the new snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateWrite {
    /// Whose state.
    pub actor: ActorId,
    /// The version the change was made from ([`Version::NONE`] for the
    /// first). The commit fails with [`Error::Conflict`] if the store holds
    /// another.
    pub expected_version: Version,
    /// The new snapshot.
    pub snapshot: Vec<u8>,
}

/// "Consumer `consumer` has processed event (`origin`, `event_id`)": an
/// inbox entry, written in the same commit as the consumer's own state
/// change, so doing the work and remembering it cannot come apart.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InboxMark {
    /// The consumer.
    pub consumer: ConsumerId,
    /// The processed event's origin.
    pub origin: ActorId,
    /// The processed event's id.
    pub event_id: EventId,
}

impl InboxMark {
    /// The mark for `consumer` having processed `envelope`.
    pub fn for_envelope(consumer: ConsumerId, envelope: &Envelope) -> Self {
        InboxMark { consumer, origin: envelope.origin.clone(), event_id: envelope.id }
    }
}

/// One atomic write: everything in it is stored, or nothing is.
///
/// Build it with [`Commit::state`] (a state change, possibly with events)
/// or [`Commit::events_only`], then add events and inbox marks.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Commit {
    /// The state change, if any.
    pub state: Option<StateWrite>,
    /// Events to put in the outbox, in the order they are to be delivered.
    pub events: Vec<NewEvent>,
    /// Inbox marks; a mark that is already stored fails the whole commit
    /// with [`Error::AlreadyProcessed`].
    pub inbox: Vec<InboxMark>,
}

impl Commit {
    /// A commit that changes `actor`'s state from `expected_version` to
    /// `snapshot`.
    pub fn state(actor: ActorId, expected_version: Version, snapshot: impl Into<Vec<u8>>) -> Self {
        Commit {
            state: Some(StateWrite { actor, expected_version, snapshot: snapshot.into() }),
            events: Vec::new(),
            inbox: Vec::new(),
        }
    }

    /// A commit with no state change.
    pub fn events_only() -> Self {
        Commit::default()
    }

    /// Adds an event.
    pub fn event(mut self, event: NewEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Adds events.
    pub fn events(mut self, events: impl IntoIterator<Item = NewEvent>) -> Self {
        self.events.extend(events);
        self
    }

    /// Marks `envelope` as processed by `consumer` in this commit.
    pub fn mark_processed(mut self, consumer: ConsumerId, envelope: &Envelope) -> Self {
        self.inbox.push(InboxMark::for_envelope(consumer, envelope));
        self
    }

    /// Adds an inbox mark.
    pub fn inbox_mark(mut self, mark: InboxMark) -> Self {
        self.inbox.push(mark);
        self
    }

    /// Checks the commit against `limits` without touching a store. Every
    /// store calls this first, so bad input is refused the same way
    /// everywhere: [`Error::InvalidInput`] for an empty commit, an empty
    /// event type, an oversized payload / snapshot / header set, too many
    /// events, or an id or inbox mark repeated inside the commit.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.state.is_none() && self.events.is_empty() && self.inbox.is_empty() {
            return Err(Error::invalid_input("empty commit: no state, events or inbox marks"));
        }
        if let Some(s) = &self.state
            && s.snapshot.len() > limits.max_snapshot_bytes
        {
            return Err(Error::invalid_input(format!(
                "snapshot of {} bytes exceeds the limit of {}",
                s.snapshot.len(),
                limits.max_snapshot_bytes
            )));
        }
        if self.events.len() > limits.max_events_per_commit {
            return Err(Error::invalid_input(format!(
                "{} events in one commit exceed the limit of {}",
                self.events.len(),
                limits.max_events_per_commit
            )));
        }
        for e in &self.events {
            if e.event_type.is_empty() || e.event_type.len() > limits.max_event_type_bytes {
                return Err(Error::invalid_input(format!(
                    "event type must be 1..={} bytes, got {}",
                    limits.max_event_type_bytes,
                    e.event_type.len()
                )));
            }
            if e.payload.len() > limits.max_payload_bytes {
                return Err(Error::invalid_input(format!(
                    "payload of event {} is {} bytes, more than the limit of {}",
                    e.id,
                    e.payload.len(),
                    limits.max_payload_bytes
                )));
            }
            let header_bytes: usize = e.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            if header_bytes > limits.max_header_bytes {
                return Err(Error::invalid_input(format!(
                    "headers of event {} take {header_bytes} bytes, more than the limit of {}",
                    e.id, limits.max_header_bytes
                )));
            }
        }
        let mut ids = HashSet::with_capacity(self.events.len());
        if let Some(e) = self.events.iter().find(|e| !ids.insert(e.id)) {
            return Err(Error::invalid_input(format!("event id {} repeated in one commit", e.id)));
        }
        let mut marks = HashSet::with_capacity(self.inbox.len());
        if let Some(m) = self.inbox.iter().find(|m| !marks.insert((&m.consumer, m.event_id))) {
            return Err(Error::invalid_input(format!(
                "inbox mark for {} / {} repeated in one commit",
                m.consumer, m.event_id
            )));
        }
        Ok(())
    }
}

/// Size limits a store enforces on every commit (see [`Commit::validate`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest payload of one event, in bytes.
    pub max_payload_bytes: usize,
    /// Largest state snapshot, in bytes.
    pub max_snapshot_bytes: usize,
    /// Most events in one commit.
    pub max_events_per_commit: usize,
    /// Longest event type, in bytes.
    pub max_event_type_bytes: usize,
    /// Most header bytes (names + values) on one event.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    /// 1 MiB payloads, 16 MiB snapshots, 10,000 events per commit, 256-byte
    /// event types, 16 KiB of headers.
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_snapshot_bytes: 16 << 20,
            max_events_per_commit: 10_000,
            max_event_type_bytes: 256,
            max_header_bytes: 16 << 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::event::Payload;

    fn actor() -> ActorId {
        ActorId::new("a").unwrap()
    }

    #[test]
    fn validation_refuses_bad_input() {
        let l = Limits::default();
        assert_eq!(Commit::events_only().validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);

        let big = NewEvent::new(actor(), "T", Payload::bytes(vec![0; l.max_payload_bytes + 1]));
        let c = Commit::events_only().event(big);
        assert_eq!(c.validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);

        let e = NewEvent::json(actor(), "T", &1).unwrap();
        let c = Commit::events_only().event(e.clone()).event(e);
        assert_eq!(c.validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);

        let c = Commit::events_only().event(NewEvent::json(actor(), "", &1).unwrap());
        assert_eq!(c.validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);

        let c = Commit::state(actor(), Version::NONE, vec![0; l.max_snapshot_bytes + 1]);
        assert_eq!(c.validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);

        // Inbox marks repeat per (consumer, event id); an event id shared
        // by a mark and an event, or by two consumers' marks, is fine.
        let env = Envelope::committed(NewEvent::json(actor(), "T", &1).unwrap(), crate::Timestamp::EPOCH);
        let (c1, c2) = (ConsumerId::new("c1").unwrap(), ConsumerId::new("c2").unwrap());
        let twice = Commit::events_only()
            .mark_processed(c1.clone(), &env)
            .mark_processed(c2.clone(), &env)
            .mark_processed(c1.clone(), &env);
        assert_eq!(twice.validate(&l).unwrap_err().kind(), ErrorKind::InvalidInput);
        let shared = Commit::events_only()
            .mark_processed(c1, &env)
            .mark_processed(c2, &env)
            .event(NewEvent::json(actor(), "T", &1).unwrap().with_id(env.id));
        shared.validate(&l).unwrap();

        let ok = Commit::state(actor(), Version::NONE, b"s".to_vec())
            .event(NewEvent::json(actor(), "T", &1).unwrap());
        ok.validate(&l).unwrap();
    }
}
