//! Commits: a run of queued commits checked one by one and written
//! together in one transaction, and reading a state back.

use std::collections::{HashMap, HashSet};

use outbox_core::{
    ActorId, Commit, CommitReceipt, Envelope, Error, EventId, Result, StateSnapshot, Timestamp, Version,
};

use crate::codec::{
    Row, Status, decode_state, encode_pending, encode_row, encode_state, pending_of, time_bytes,
};
use crate::error::{SledError, map};
use crate::schema::{
    EVENTS, IDS, INBOX, INBOX_TIME, META, PENDING, SEQ_KEY, STATE, inbox_key, inbox_time_key, seq_key,
};
use crate::worker::Worker;

/// The encoded writes of one checked commit.
struct Write {
    state: Option<(Vec<u8>, Vec<u8>)>,
    /// (seq, id, row, pending index entry)
    events: Vec<(u64, EventId, Vec<u8>, Vec<u8>)>,
    marks: Vec<Vec<u8>>,
}

fn prepare(commit: &Commit, now: Timestamp, seq0: u64, marks: Vec<Vec<u8>>) -> Write {
    let state = commit.state.as_ref().map(|s| {
        let value = encode_state(s.expected_version.next(), now, &s.snapshot);
        (s.actor.as_str().as_bytes().to_vec(), value)
    });
    let events = commit
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let row = Row {
                env: Envelope::committed(e.clone(), now),
                status: Status::Pending,
                claimed_by: None,
                lease_until: None,
            };
            (seq0 + i as u64, e.id, encode_row(&row), encode_pending(&pending_of(&row)))
        })
        .collect();
    Write { state, events, marks }
}

impl Worker {
    /// Applies a run of queued commits: each is checked on its own (against
    /// the trees and the members before it), and those that pass are
    /// written together in ONE transaction. A member that fails its checks
    /// (a version conflict, a duplicate) fails alone and writes nothing.
    /// Checking outside the transaction is sound because every write to
    /// the database runs on this thread.
    pub(crate) fn commit_group(&mut self, commits: &[Commit]) -> Vec<Result<CommitReceipt>> {
        match self.over_cap() {
            Ok(false) => {}
            Ok(true) => return commits.iter().map(|_| Err(SledError::SizeCap.into())).collect(),
            Err(e) => return commits.iter().map(|_| Err(e.shared_failure())).collect(),
        }
        let now = self.now();
        let mut next_seq = self.next_seq;
        let mut versions: HashMap<&ActorId, Version> = HashMap::new();
        let mut ids: HashSet<EventId> = HashSet::new();
        let mut marks: HashSet<Vec<u8>> = HashSet::new();
        let mut writes: Vec<Write> = Vec::new();
        let mut results: Vec<Result<CommitReceipt>> = Vec::with_capacity(commits.len());
        for commit in commits {
            match self.check(commit, &versions, &ids, &marks) {
                Err(e) => results.push(Err(e)),
                Ok(member_marks) => {
                    let w = prepare(commit, now, next_seq, member_marks);
                    next_seq += commit.events.len() as u64;
                    if let Some(s) = &commit.state {
                        versions.insert(&s.actor, s.expected_version.next());
                    }
                    ids.extend(commit.events.iter().map(|e| e.id));
                    marks.extend(w.marks.iter().cloned());
                    results.push(Ok(CommitReceipt {
                        version: commit.state.as_ref().map(|s| s.expected_version.next()),
                        committed_at: now,
                        durable: true,
                    }));
                    writes.push(w);
                }
            }
        }
        if writes.is_empty() {
            return results;
        }
        let applied = self.tx("commit", |v| {
            for w in &writes {
                if let Some((key, value)) = &w.state {
                    v[STATE].insert(key.as_slice(), value.as_slice())?;
                }
                for (seq, id, row, pending) in &w.events {
                    let seq = seq_key(*seq);
                    v[IDS].insert(&id.to_bytes(), &seq)?;
                    v[EVENTS].insert(&seq, row.as_slice())?;
                    v[PENDING].insert(&seq, pending.as_slice())?;
                }
                for key in &w.marks {
                    v[INBOX].insert(key.as_slice(), &time_bytes(now))?;
                    v[INBOX_TIME].insert(inbox_time_key(now, key), &[])?;
                }
            }
            if next_seq != self.next_seq {
                v[META].insert(SEQ_KEY, &next_seq.to_be_bytes())?;
            }
            Ok(())
        });
        match applied {
            Ok(()) => {
                self.next_seq = next_seq;
                results
            }
            Err(e) => results.into_iter().map(|r| r.and_then(|_| Err(e.shared_failure()))).collect(),
        }
    }

    /// Checks one commit against the trees and the earlier members of its
    /// group; returns its inbox keys.
    fn check(
        &self,
        commit: &Commit,
        versions: &HashMap<&ActorId, Version>,
        ids: &HashSet<EventId>,
        marks: &HashSet<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        if let Some(s) = &commit.state {
            let actual = match versions.get(&s.actor) {
                Some(v) => *v,
                None => self.load_state(&s.actor)?.map_or(Version::NONE, |st| st.version),
            };
            if actual != s.expected_version {
                return Err(Error::Conflict { actor: s.actor.clone(), expected: s.expected_version, actual });
            }
        }
        let mut own = HashSet::new();
        for e in &commit.events {
            if !own.insert(e.id)
                || ids.contains(&e.id)
                || self.all[IDS].contains_key(e.id.to_bytes()).map_err(|e| map("read id", e))?
            {
                return Err(Error::DuplicateEvent { id: e.id });
            }
        }
        let mut keys = Vec::with_capacity(commit.inbox.len());
        for m in &commit.inbox {
            let key = inbox_key(&m.consumer, &m.origin, m.event_id);
            if keys.contains(&key)
                || marks.contains(&key)
                || self.all[INBOX].contains_key(&key).map_err(|e| map("read inbox", e))?
            {
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
            keys.push(key);
        }
        Ok(keys)
    }

    /// The state of `actor`, if it has one.
    pub(crate) fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        match self.all[STATE].get(actor.as_str()).map_err(|e| map("load state", e))? {
            Some(b) => Ok(Some(decode_state(&b)?)),
            None => Ok(None),
        }
    }
}
