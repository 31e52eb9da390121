#!/usr/bin/env python3
"""Proves the conformance suite can fail: breaks the memory store in the
way each property checks, one mutation at a time, and expects the named
tests to fail. Runs in a scratch copy of the repo; the work tree is never
touched.

Usage: python3 scripts/mutants.py   (exit 0 only if every mutation is caught)
"""
import os
import shutil
import subprocess
import sys
import tempfile

STORE = "outbox-store-memory/src/store.rs"

# (tests that must fail, [(old, new), ...]) -- each `old` must occur exactly once.
MUTANTS = [
    (["commit_then_load"],
     [("bytes: s.snapshot, updated_at", "bytes: Vec::new(), updated_at")]),
    (["version_conflict_writes_nothing", "concurrent_commits_on_one_version_admit_one"],
     [("if actual != s.expected_version {", "if false && actual != s.expected_version {")]),
    (["commit_is_atomic_under_mid_commit_failure"],
     # Detect the duplicate id only while writing: the state and the earlier
     # events are already in by then.
     [("find(|e| inner.by_id.contains_key(&e.id))", "find(|e| false && inner.by_id.contains_key(&e.id))"),
      ("inner.by_id.insert(e.id, seq);",
       "if inner.by_id.insert(e.id, seq).is_some() { return Err(Error::DuplicateEvent { id: e.id }); }")]),
    (["bad_input_rejected_and_nothing_written"],
     [("commit.validate(&self.limits)?;", "")]),
    (["events_of_one_key_claimed_in_commit_order"],
     [("for row in inner.events.values_mut() {", "for row in inner.events.values_mut().rev() {")]),
    (["key_waits_for_its_leased_or_retrying_predecessor"],
     [("""            if row.leased_at(now) || row.env.next_attempt_at > now {
                blocked.insert(row.env.key.clone());""",
       """            if row.leased_at(now) || row.env.next_attempt_at > now {""")]),
    (["claims_exclusive_while_leased"],
     [("if row.leased_at(now) || row.env", "if row.env")]),
    (["expired_lease_claimable_again"],
     [("self.lease_until.is_some_and(|t| t > now)", "self.lease_until.is_some_and(|t| t > now - 1_000_000_000)"
       .replace("now - 1_000_000_000", "now.saturating_sub(std::time::Duration::from_secs(1_000_000))"))]),
    (["ack_is_idempotent"],
     [("Status::Delivered(_) => continue,", "Status::Delivered(_) => {}")]),
    (["release_returns_claims_unattempted"],
     [("row.env.attempts = row.env.attempts.saturating_sub(1);", "")]),
    (["retry_later_not_claimable_before_its_time"],
     [("row.env.next_attempt_at = at;", "let _ = at;")]),
    (["not_before_delays_first_delivery"],
     [("|| row.env.next_attempt_at > now {", "{")]),
    (["dead_letters_never_claimed_listed_and_requeueable"],
     [("row.status = Status::Dead;", "row.status = Status::Pending;")]),
    (["dead_letter_parks_its_key_when_asked"],
     [("if request.park_dead_keys {", "if false && request.park_dead_keys {")]),
    (["prune_removes_only_delivered_past_retention"],
     [("""if at < before))
            .take(limit)""", """if at < before))""")]),
    (["stats_count_by_status"],
     [("s.in_flight += 1;", "")]),
    (["inbox_mark_atomic_with_state"],
     [("inner.inbox.insert((m.consumer, m.origin, m.event_id), now);", "let _ = m;")]),
    (["duplicate_inbox_mark_detected"],
     [("if inner.inbox.contains_key(&(m.consumer.clone()", "if false && inner.inbox.contains_key(&(m.consumer.clone()")]),
    (["inbox_prune_removes_only_old_marks"],
     [("filter(|(_, at)| **at < before)", "filter(|(_, at)| **at <= before || true)")]),
    (["stale_leader_ack_rejected"],
     [("if current != Some(grant.epoch) {", "if false && current != Some(grant.epoch) {"),
      ("if row.claimed_by != Some(grant.epoch) {", "if false && row.claimed_by != Some(grant.epoch) {")]),
    (["leadership_is_exclusive"],
     [("&& cur.expires_at > now", "&& false")]),
    (["reopen_keeps_everything_committed"],
     [("MemoryStore { inner: backing.0.clone(), reopenable: true", "MemoryStore { inner: Arc::default(), reopenable: true")]),
    (["fault_wrapper_passes_through_and_fails_on_cue"],
     [("if actual != s.expected_version {", "if false && actual != s.expected_version {"),
      ("find(|e| inner.by_id.contains_key(&e.id))", "find(|e| false && inner.by_id.contains_key(&e.id))")]),
    (["model_matches_reference"],
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
        path = os.path.join(scratch, STORE)
        pristine = open(path).read()
        env = dict(os.environ, CARGO_TARGET_DIR=target, PROPTEST_CASES="256")
        caught = 0
        problems = []
        for tests, edits in MUTANTS:
            src = pristine
            for old, new in edits:
                n = src.count(old)
                if n != 1:
                    problems.append(f"{tests[0]}: pattern found {n} times: {old[:60]!r}")
                    break
                src = src.replace(old, new)
            else:
                open(path, "w").write(src)
                for t in tests:
                    r = subprocess.run(
                        ["cargo", "test", "-q", "-p", "outbox-store-memory", "--test", "conformance", "--", "--exact", t],
                        cwd=scratch, env=env, capture_output=True, text=True)
                    failed = r.returncode != 0 and "test result: FAILED" in r.stdout
                    if failed:
                        caught += 1
                        print(f"caught   {t}")
                    else:
                        problems.append(f"{t}: mutation survived (exit {r.returncode})\n{r.stderr[-2000:]}")
                        print(f"SURVIVED {t}")
            open(path, "w").write(pristine)
        total = sum(len(t) for t, _ in MUTANTS)
        print(f"mutants: {caught} caught of {total}")
        for p in problems:
            print("problem:", p)
        return 0 if not problems and caught == total else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
