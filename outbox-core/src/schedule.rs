//! Per-key scheduling: events of one key strictly one after another in
//! order, different keys in parallel up to a bound, and a parked key never
//! holds up the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Hands out work items so that at most one item per key is in flight, at
/// most `max_concurrency` items are in flight in all, and items of a key
/// come out in the order they were pushed.
///
/// Pure bookkeeping: the forwarder pushes a claimed batch, takes items with
/// [`KeyScheduler::take_next`], and reports each result with
/// [`KeyScheduler::complete`] or [`KeyScheduler::park`].
#[derive(Debug)]
pub struct KeyScheduler<K, T> {
    max_concurrency: usize,
    queues: HashMap<K, VecDeque<T>>,
    /// Keys whose head item may start, oldest first.
    ready: VecDeque<K>,
    in_flight: HashSet<K>,
    parked: HashSet<K>,
}

impl<K: Eq + Hash + Clone, T> KeyScheduler<K, T> {
    /// A scheduler running at most `max_concurrency` items at once (at
    /// least one).
    pub fn new(max_concurrency: usize) -> Self {
        KeyScheduler {
            max_concurrency: max_concurrency.max(1),
            queues: HashMap::new(),
            ready: VecDeque::new(),
            in_flight: HashSet::new(),
            parked: HashSet::new(),
        }
    }

    /// Queues `item` behind the other items of `key`. An item of a parked
    /// key is handed back (`Err`), not queued.
    pub fn push(&mut self, key: K, item: T) -> Result<(), T> {
        if self.parked.contains(&key) {
            return Err(item);
        }
        let queue = self.queues.entry(key.clone()).or_default();
        let was_empty = queue.is_empty();
        queue.push_back(item);
        if was_empty && !self.in_flight.contains(&key) {
            self.ready.push_back(key);
        }
        Ok(())
    }

    /// The next item that may start, if any: its key has nothing in flight
    /// and is not parked, and fewer than `max_concurrency` items run.
    pub fn take_next(&mut self) -> Option<(K, T)> {
        if self.in_flight.len() >= self.max_concurrency {
            return None;
        }
        let key = self.ready.pop_front()?;
        let queue = self.queues.get_mut(&key)?;
        let item = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        self.in_flight.insert(key.clone());
        Some((key, item))
    }

    /// The in-flight item of `key` finished; the key's next item may start.
    pub fn complete(&mut self, key: &K) {
        if self.in_flight.remove(key) && self.queues.contains_key(key) {
            self.ready.push_back(key.clone());
        }
    }

    /// The in-flight item of `key` failed for good: the key is parked until
    /// [`KeyScheduler::unpark`], and its queued items are handed back in
    /// order so the caller can release them.
    pub fn park(&mut self, key: &K) -> Vec<T> {
        self.in_flight.remove(key);
        self.parked.insert(key.clone());
        self.ready.retain(|k| k != key);
        self.queues.remove(key).map(Vec::from).unwrap_or_default()
    }

    /// Removes and returns every queued (not started) item, oldest key
    /// first, each key's items in order: for abandoning a batch (say, when
    /// the sink's circuit opens). In-flight items stay in flight.
    pub fn drain_queued(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.queued());
        let keys: Vec<K> = self.ready.drain(..).collect();
        for k in keys {
            if let Some(q) = self.queues.remove(&k) {
                out.extend(q);
            }
        }
        // Keys waiting behind an in-flight item are not in `ready`.
        for (_, q) in self.queues.drain() {
            out.extend(q);
        }
        out
    }

    /// Lets a parked key take items again.
    pub fn unpark(&mut self, key: &K) {
        self.parked.remove(key);
    }

    /// Whether `key` is parked.
    pub fn is_parked(&self, key: &K) -> bool {
        self.parked.contains(key)
    }

    /// Number of parked keys.
    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Items running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Items queued and not started.
    pub fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Nothing queued and nothing running.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.queues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_in_order_one_at_a_time() {
        let mut s = KeyScheduler::new(8);
        for i in 0..3 {
            s.push("a", i).unwrap();
        }
        assert_eq!(s.take_next(), Some(("a", 0)));
        assert_eq!(s.take_next(), None, "second item of a key waits for the first");
        s.complete(&"a");
        assert_eq!(s.take_next(), Some(("a", 1)));
        s.complete(&"a");
        assert_eq!(s.take_next(), Some(("a", 2)));
        s.complete(&"a");
        assert!(s.is_idle());
    }

    #[test]
    fn different_keys_run_in_parallel_up_to_the_bound() {
        let mut s = KeyScheduler::new(2);
        for k in ["a", "b", "c"] {
            s.push(k, k).unwrap();
        }
        let first = s.take_next().unwrap();
        let second = s.take_next().unwrap();
        assert_ne!(first.0, second.0);
        assert_eq!(s.take_next(), None, "bound of 2 reached");
        assert_eq!(s.in_flight(), 2);
        s.complete(&first.0);
        assert_eq!(s.take_next().unwrap().0, "c");
    }

    #[test]
    fn a_parked_key_does_not_block_others() {
        let mut s = KeyScheduler::new(1);
        s.push("bad", 1).unwrap();
        s.push("bad", 2).unwrap();
        s.push("good", 10).unwrap();
        s.push("good", 11).unwrap();
        assert_eq!(s.take_next(), Some(("bad", 1)));
        assert_eq!(s.park(&"bad"), vec![2], "queued items of the parked key come back");
        assert_eq!(s.push("bad", 3), Err(3), "a parked key takes no new items");
        assert_eq!(s.take_next(), Some(("good", 10)));
        s.complete(&"good");
        assert_eq!(s.take_next(), Some(("good", 11)));
        s.complete(&"good");
        assert!(s.is_idle());
        assert!(s.is_parked(&"bad"));
        s.unpark(&"bad");
        s.push("bad", 3).unwrap();
        assert_eq!(s.take_next(), Some(("bad", 3)));
    }

    #[test]
    fn drain_queued_returns_everything_not_started() {
        let mut s = KeyScheduler::new(1);
        s.push("a", 1).unwrap();
        s.push("a", 2).unwrap();
        s.push("b", 3).unwrap();
        assert_eq!(s.take_next(), Some(("a", 1)));
        let mut rest = s.drain_queued();
        rest.sort();
        assert_eq!(rest, vec![2, 3]);
        assert_eq!(s.queued(), 0);
        assert_eq!(s.in_flight(), 1);
        s.complete(&"a");
        assert!(s.is_idle());
    }

    #[test]
    fn completing_an_unknown_key_is_harmless() {
        let mut s: KeyScheduler<&str, u8> = KeyScheduler::new(1);
        s.complete(&"nope");
        assert!(s.is_idle());
        assert_eq!(s.queued(), 0);
    }
}
