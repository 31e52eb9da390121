#!/usr/bin/env python3
"""Proves the conformance suite can fail: breaks the memory store, or the
store logic every store shares (outbox-core's `rules`), in the way each
property checks, one mutation at a time, and expects the named tests to
fail (for `rules`, in each store that calls it). Runs in a scratch copy of the repo; the work tree is never
touched.

Usage: python3 scripts/mutants.py   (exit 0 only if every mutation is caught)
"""
import os
import shutil
import subprocess
import sys
import tempfile

MEMORY = "outbox-store-memory/src/store.rs"
OPTIONS = "outbox-store-memory/src/options.rs"
# The store logic every key-value store shares (outbox-core's `rules`): a
# mutation there must be caught by each store that calls it.
RULES = "outbox-core/src/rules.rs"
STORES = ["outbox-store-memory"]
SHARED = ["outbox-store-memory", "outbox-store-sled"]

# (file, packages whose conformance tests run, tests that must fail,
#  [(old, new), ...]) -- each `old` must occur exactly once in `file`.
MUTANTS = [
    (MEMORY, STORES, ["commit_then_load"],
     [("bytes: s.snapshot, updated_at", "bytes: Vec::new(), updated_at")]),
    (MEMORY, STORES, ["version_conflict_writes_nothing", "concurrent_commits_on_one_version_admit_one"],
     [("if actual != s.expected_version {", "if false && actual != s.expected_version {")]),
    (MEMORY, STORES, ["commit_is_atomic_under_mid_commit_failure"],
     # Detect the duplicate id only while writing: the state and the earlier
     # events are already in by then.
     [("find(|e| inner.by_id.contains_key(&e.id))", "find(|e| false && inner.by_id.contains_key(&e.id))"),
      ("inner.by_id.insert(e.id, seq);",
       "if inner.by_id.insert(e.id, seq).is_some() { return Err(Refused::Duplicate(e.id).into()); }")]),
    (MEMORY, STORES, ["bad_input_rejected_and_nothing_written"],
     [("commit.validate(&self.limits)?;", "")]),
    (MEMORY, STORES, ["events_of_one_key_claimed_in_commit_order"],
     [("inner.events.iter_mut() {", "inner.events.iter_mut().rev() {")]),
    (RULES, SHARED, ["key_waits_for_its_leased_or_retrying_predecessor"],
     [("""                    self.hold(key, seq);
                    return false;""", """                    return false;""")]),
    (RULES, SHARED, ["claims_exclusive_while_leased"],
     [("if lease_until.is_some_and(|t| t > self.now) || next_attempt_at", "if next_attempt_at")]),
    (RULES, SHARED, ["expired_lease_claimable_again"],
     [("lease_until.is_some_and(|t| t > self.now)",
       "lease_until.is_some_and(|t| t > self.now.saturating_sub(std::time::Duration::from_secs(1_000_000)))")]),
    # Only stores that scan delivered rows meet ClaimEntry::Delivered (sled
    # scans its pending index alone).
    (RULES, STORES, ["ack_is_idempotent"],
     [("ClaimEntry::Delivered | ClaimEntry::Skipped => false,",
       "ClaimEntry::Delivered => { self.taken += 1; true } ClaimEntry::Skipped => false,")]),
    (MEMORY, STORES, ["release_returns_claims_unattempted"],
     [("""                row.env.attempts = row.env.attempts.saturating_sub(1);
                row.lease_until = None;""", """                row.lease_until = None;""")]),
    (MEMORY, STORES, ["retry_later_uncounted_takes_the_attempt_back"],
     [("if attempt == Attempt::Uncounted && row.lease_until.is_some() {", "if false {")]),
    (MEMORY, STORES, ["retry_now_makes_backed_off_events_due"],
     [("""                row.env.next_attempt_at = now;
                n += 1;""", """                n += 1;""")]),
    (MEMORY, STORES, ["requeue_one_keeps_key_order"],
     [("""                row.env.next_attempt_at = now;
                row.claimed_by = None;""", """                row.env.next_attempt_at = now.saturating_add(std::time::Duration::from_secs(3600));
                row.claimed_by = None;""")]),
    (MEMORY, STORES, ["discard_one_lets_its_key_flow"],
     [("row.status = Status::Discarded(now);", "row.status = Status::Dead { skipped: true };")]),
    (MEMORY, STORES, ["skip_one_lets_its_key_flow_and_stays_dead"],
     [("row.status = Status::Dead { skipped: true };", "row.status = Status::Dead { skipped: false };")]),
    (MEMORY, STORES, ["parked_keys_count_unskipped_dead_keys"],
     [("""                    if !skipped {
                        parked.insert(&row.env.key);""", """                    if !skipped || skipped {
                        parked.insert(&row.env.key);""")]),
    (MEMORY, STORES, ["retry_later_not_claimable_before_its_time"],
     [("row.env.next_attempt_at = at;", "let _ = at;")]),
    (RULES, SHARED, ["not_before_delays_first_delivery"],
     [("|| next_attempt_at > self.now {", "{")]),
    (MEMORY, STORES, ["dead_letters_never_claimed_listed_and_requeueable"],
     [("row.status = Status::Dead { skipped: false };", "row.status = Status::Pending;")]),
    (RULES, SHARED, ["dead_letter_parks_its_key_when_asked"],
     [("if self.park_dead_keys {", "if false && self.park_dead_keys {")]),
    (MEMORY, STORES, ["prune_removes_only_delivered_past_retention"],
     [("""if at < before))
            .take(limit)""", """if at < before))""")]),
    (MEMORY, STORES, ["stats_count_by_status"],
     [("s.in_flight += 1;", "")]),
    (MEMORY, STORES, ["inbox_mark_atomic_with_state"],
     [("inner.inbox.insert((m.consumer, m.origin, m.event_id), now);", "let _ = m;")]),
    (MEMORY, STORES, ["duplicate_inbox_mark_detected"],
     [("if inner.inbox.contains_key(&(m.consumer.clone()", "if false && inner.inbox.contains_key(&(m.consumer.clone()")]),
    (MEMORY, STORES, ["inbox_prune_removes_only_old_marks"],
     [("filter(|(_, at)| **at < before)", "filter(|(_, at)| **at <= before || true)")]),
    (RULES, SHARED, ["stale_leader_ack_rejected"],
     [("if current != Some(grant.epoch) {", "if false && current != Some(grant.epoch) {"),
      ("if claimed_by != Some(grant.epoch) {", "if false && claimed_by != Some(grant.epoch) {")]),
    (MEMORY, STORES, ["leadership_is_exclusive"],
     [("&& cur.expires_at > now", "&& false")]),
    (OPTIONS, STORES, ["reopen_keeps_everything_committed"],
     [("MemoryStore { inner: backing.0.clone(), reopenable: true", "MemoryStore { inner: Arc::default(), reopenable: true")]),
    (MEMORY, STORES, ["fault_wrapper_passes_through_and_fails_on_cue"],
     [("if actual != s.expected_version {", "if false && actual != s.expected_version {"),
      ("find(|e| inner.by_id.contains_key(&e.id))", "find(|e| false && inner.by_id.contains_key(&e.id))")]),
    (MEMORY, STORES, ["model_matches_reference"],
     [("row.env.attempts = row.env.attempts.saturating_add(1);", "row.env.attempts = 1;")]),
]


def main() -> int:
    root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target", "mutants"))
    scratch = tempfile.mkdtemp(prefix="outbox-mutants-")
    try:
        files = subprocess.check_output(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, text=True).split()
        for f in files:
            dst = os.path.join(scratch, f)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(root, f), dst)
        env = dict(os.environ, CARGO_TARGET_DIR=target, PROPTEST_CASES="256")
        caught = 0
        problems = []
        for file, packages, tests, edits in MUTANTS:
            path = os.path.join(scratch, file)
            pristine = open(path).read()
            src = pristine
            for old, new in edits:
                n = src.count(old)
                if n != 1:
                    problems.append(f"{tests[0]}: pattern found {n} times in {file}: {old[:60]!r}")
                    break
                src = src.replace(old, new)
            else:
                open(path, "w").write(src)
                for package in packages:
                    for t in tests:
                        r = subprocess.run(
                            ["cargo", "test", "-q", "-p", package, "--test", "conformance", "--", "--exact", t],
                            cwd=scratch, env=env, capture_output=True, text=True)
                        failed = r.returncode != 0 and "test result: FAILED" in r.stdout
                        if failed:
                            caught += 1
                            print(f"caught   {package} {t}")
                        else:
                            problems.append(f"{package} {t}: mutation survived (exit {r.returncode})\n{r.stderr[-2000:]}")
                            print(f"SURVIVED {package} {t}")
            open(path, "w").write(pristine)
        total = sum(len(t) * len(p) for _, p, t, _ in MUTANTS)
        print(f"mutants: {caught} caught of {total}")
        for p in problems:
            print("problem:", p)
        return 0 if not problems and caught == total else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
