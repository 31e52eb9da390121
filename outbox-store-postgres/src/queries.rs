//! The SQL text of the store's statements (the schema's DDL is in
//! `schema.rs`). Statements run on every commit or claim are prepared once
//! per pooled connection (see `pool.rs`).

/// `outbox_events.status` of an event waiting for delivery.
pub(crate) const STATUS_PENDING: i16 = 0;
/// `outbox_events.status` of a dead-lettered event (skipped or not; a
/// skipped one has `skipped` set and does not park its key).
pub(crate) const STATUS_DEAD: i16 = 1;
// Status 2 is a delivered event and 3 a discarded dead letter: both are
// settled, never claimed, never park their key, and have their settled-at
// time (ack or discard) in `delivered_at`. The SQL below spells them as
// literals.

/// Creates an actor's state row at version 1 (a commit expecting no
/// state); no row when one exists.
pub(crate) const SQL_INSERT_STATE: &str =
    "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES ($1, 1, $2, $3)
     ON CONFLICT (actor) DO NOTHING";
/// Moves an actor's state row from version `$5` to `$4`; no row on a
/// version conflict.
pub(crate) const SQL_UPDATE_STATE: &str =
    "UPDATE outbox_state SET version = $4, snapshot = $2, updated_at = $3
     WHERE actor = $1 AND version = $5";
/// One of the ids `$1` that is already stored, if any.
pub(crate) const SQL_FIND_IDS: &str = "SELECT id FROM outbox_events WHERE id = ANY($1) LIMIT 1";
/// Inserts the commit's events, their ordering keys locked first.
///
/// The keys are locked with a transaction-level advisory lock each
/// (namespaced by schema), taken in one fixed order so two commits never
/// deadlock, by the `WHERE` clause's subquery: it runs once, before the
/// first row (and its sequence number) is made. Commits sharing a key
/// serialize here, so its sequence numbers follow commit order, and a
/// claimer skips a key with a commit in flight. (Schema 1 upserted a row
/// per key instead: a new row version per commit, about 20% of the
/// commit's cost.) An id already stored (or given twice) fails the insert
/// on the id's unique index (see [`is_duplicate_id`](crate::error::is_duplicate_id)); a plain insert, as
/// `ON CONFLICT DO NOTHING` costs a speculative insertion and an extra WAL
/// record per event.
pub(crate) const SQL_INSERT_EVENTS: &str =
    "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                 schema_version, created_at, next_attempt_at)
     SELECT id, origin, key, event_type, kind, payload, headers, sv, $9, due
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
                 $7::text[], $8::int4[], $10::int8[])
          WITH ORDINALITY AS t(id, origin, key, event_type, kind, payload, headers, sv, due, n)
     WHERE (SELECT count(pg_advisory_xact_lock(hashtext(current_schema()), h))
            FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($3::text[]) AS k ORDER BY 1) AS s) >= 0
     ORDER BY n";
/// Marks an event processed by a consumer; no row if it already was.
pub(crate) const SQL_INSERT_MARK: &str =
    "INSERT INTO outbox_inbox (consumer, origin, event_id, processed_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING";

/// Moves event `$1`, a row that breaks the envelope's rules, to the dead
/// letters as its quarantine stores it (see `rows.rs`): valid origin `$2`,
/// key `$3`, payload kind `$4` and headers `$5`, `last_error` `$6`; its
/// payload bytes are kept as they are.
/// A dead letter quarantined by a schema upgrade stays skipped if it was.
pub(crate) const SQL_QUARANTINE: &str = "UPDATE outbox_events
     SET status = 1, skipped = (status = 1 AND skipped), lease_until = NULL,
         origin = $2, key = $3, payload_kind = $4, headers = $5, last_error = $6
     WHERE id = $1";

/// Hands back claimed events `$1` within the claim that leased them (a
/// claim that quarantined an earlier event of their key, which now parks
/// it): the attempt uncounted, the lease dropped, as `release` does.
pub(crate) const SQL_UNCLAIM: &str =
    "UPDATE outbox_events SET attempts = greatest(attempts - 1, 0), lease_until = NULL WHERE id = ANY($1)";

/// A row if epoch `$1` was granted and not released.
pub(crate) const SQL_GRANT_LIVE: &str = "SELECT 1 FROM outbox_leaders WHERE epoch = $1 AND NOT released";

// Statements that pick rows by id test `status + 0`, not `status`: a bare
// `status = 0` matches the pending partial index, and with statistics gone
// stale (a backlog that grew since the last ANALYZE) the planner reads the
// whole backlog through it (measured: 18,746 rows for a 256-id ack) instead
// of looking the ids up in their unique index.
/// Locks the pending rows of the ids `$1`, each with the epoch that
/// claimed it last.
pub(crate) const SQL_LOCK_EVENTS: &str = "SELECT id, claimed_epoch FROM outbox_events WHERE id = ANY($1) AND status + 0 = 0 ORDER BY seq FOR UPDATE";
/// Marks delivered the ids `$1` still pending under a claim of epoch `$3`.
pub(crate) const SQL_ACK: &str = "UPDATE outbox_events SET status = 2, delivered_at = $2, lease_until = NULL
     WHERE id = ANY($1) AND status + 0 = 0 AND claimed_epoch = $3";
/// The first `$2` claimable key heads (a key's first event that holds it
/// back: pending, or, when `$3` parks dead keys, dead and not skipped; due
/// and not leased), in commit order, their keys' advisory locks taken (the
/// `CASE` makes the lock the last test, so only heads are locked); keys
/// held by another claim or a commit in flight are skipped and the scan
/// goes on.
///
/// "Is `e` its key's head" is a scalar subquery (`LIMIT 1` on the by-key
/// index), not `NOT EXISTS`, and the claim runs under [`SQL_CLAIM_PLAN`]:
/// with statistics gone stale (a backlog that grew since the last ANALYZE)
/// the planner otherwise reads the whole backlog through a bitmap scan or
/// a hash anti-join and sorts it, measured at 100-170 ms per claim against
/// 2-3 ms for walking the pending index in order and stopping at `$2`.
///
/// Each head comes with its id and the sequence number of its key's next
/// pending or dead event (`NULL` if none), which tells the claim
/// (`claim.rs`) whether a key can add more than its head to the batch.
/// Discarded events (status 3) stay in the by-key index (its predicate is
/// `status <> 2`) until pruned; these lookups pass over them.
pub(crate) const SQL_CLAIM_KEYS: &str = "SELECT e.key, e.seq, e.id,
            (SELECT p.seq FROM outbox_events p WHERE p.key = e.key AND p.status <> 2 AND p.status <> 3
                                               AND p.seq > e.seq
             ORDER BY p.key, p.seq LIMIT 1)
     FROM outbox_events e
     WHERE e.status = 0
       AND CASE WHEN e.next_attempt_at <= $1 AND (e.lease_until IS NULL OR e.lease_until <= $1)
                     AND e.seq = (SELECT p.seq FROM outbox_events p
                                  WHERE p.key = e.key AND p.status <> 2
                                    AND (p.status = 0 OR ($3 AND p.status = 1 AND NOT p.skipped))
                                  ORDER BY p.key, p.seq LIMIT 1)
                THEN pg_try_advisory_xact_lock(hashtext(current_schema()), hashtext(e.key))
                ELSE false END
     ORDER BY e.seq LIMIT $2";
/// The claim of the heads of the keys `$2`: each key's first event that
/// holds it back (as in [`SQL_CLAIM_KEYS`]) when it is claimable (due, not
/// leased, not parked), the oldest `$4` of them, each key's advisory lock
/// then taken (only those keys' locks; a key held by another claim or a
/// commit in flight is left out), leased to epoch `$5` until `$6`. The heads are found by
/// their keys' by-key index entries, with no walk over the backlog. The
/// update checks each row again: a head another claim leased, or an ack
/// settled, after this statement's snapshot was taken is left out (the
/// update reads the row's latest version).
pub(crate) static SQL_CLAIM_HEADS_OF: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH h AS MATERIALIZED (
             SELECT c.id
             FROM (SELECT h.key, h.seq, h.id
                   FROM unnest($2::text[]) AS k(key)
                   CROSS JOIN LATERAL (
                       SELECT p.key, p.seq, p.id, p.status, p.next_attempt_at, p.lease_until
                       FROM outbox_events p
                       WHERE p.key = k.key AND p.status <> 2
                         AND (p.status = 0 OR ($3 AND p.status = 1 AND NOT p.skipped))
                       ORDER BY p.key, p.seq LIMIT 1) h
                   WHERE h.status = 0 AND h.next_attempt_at <= $1
                     AND (h.lease_until IS NULL OR h.lease_until <= $1)
                   ORDER BY h.seq LIMIT $4) c
             WHERE pg_try_advisory_xact_lock(hashtext(current_schema()), hashtext(c.key)))
         UPDATE outbox_events e
         SET attempts = e.attempts + 1, claimed_epoch = $5, lease_until = $6
         FROM h
         WHERE e.id = h.id AND e.status + 0 = 0 AND e.next_attempt_at <= $1
           AND (e.lease_until IS NULL OR e.lease_until <= $1)
         RETURNING e.seq, {}",
        returned_cols()
    )
});
/// Transaction-local planner settings for the claim: no sorting or bitmap
/// scans where an ordered index walk exists (see [`SQL_CLAIM_KEYS`]).
///
/// It also commits the claim without waiting for its WAL flush
/// (`synchronous_commit = off`): a claim is a lease, and one lost in a
/// database crash leaves its events claimable again, which at-least-once
/// delivery allows (the broker's dedup window and the consumers' inbox
/// absorb the repeat). Acks and commits stay synchronous.
///
/// And it turns JIT compilation off: the heads walk's estimated cost
/// (the planner cannot know it stops at `$2`) is over `jit_above_cost`,
/// and compiling its expressions took 12 ms of a claim that runs in 2-4.
pub(crate) const SQL_CLAIM_PLAN: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true),
            set_config('synchronous_commit', 'off', true), set_config('jit', 'off', true)";
/// Back to the planner defaults (the pool's connections run with them)
/// for the rest of the claim.
pub(crate) const SQL_CLAIM_REPLAN: &str =
    "SELECT set_config('enable_sort', 'on', true), set_config('enable_bitmapscan', 'on', true)";
pub(crate) static SQL_CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH open AS (
             SELECT o.seq, o.id, o.key, o.ok
             FROM unnest($2::text[]) AS k(key)
             CROSS JOIN LATERAL (
                 SELECT seq, id, key,
                        (status = 0 AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)) AS ok
                 FROM outbox_events
                 WHERE key = k.key AND status <> 2 AND (status = 0 OR ($3 AND status = 1 AND NOT skipped))
                   AND seq <= $7
                 ORDER BY seq LIMIT $4) o),
         runs AS (
             SELECT seq, id, sum(CASE WHEN ok THEN 0 ELSE 1 END) OVER (PARTITION BY key ORDER BY seq) AS bad
             FROM open),
         pick AS (SELECT id FROM runs WHERE bad = 0 ORDER BY seq LIMIT $4)
         UPDATE outbox_events e
         SET attempts = e.attempts + 1, claimed_epoch = $5, lease_until = $6
         FROM pick WHERE e.id = pick.id
         RETURNING e.seq, {}",
        returned_cols()
    )
});
/// The claim when no locked key has more than its head among the first
/// `limit` claimable events: the heads are leased by id, each checked
/// again in this statement's fresh snapshot (a head another claim leased
/// and committed after the heads walk's snapshot was taken is left out).
pub(crate) static SQL_CLAIM_HEADS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE outbox_events e
         SET attempts = e.attempts + 1, claimed_epoch = $2, lease_until = $3
         WHERE e.id = ANY($4) AND e.status + 0 = 0 AND e.next_attempt_at <= $1
           AND (e.lease_until IS NULL OR e.lease_until <= $1)
         RETURNING e.seq, {}",
        returned_cols()
    )
});

/// [`ENVELOPE_COLS`] qualified by the table alias `e`.
fn returned_cols() -> String {
    ENVELOPE_COLS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
}
/// The columns an [`Envelope`](outbox_core::Envelope) is decoded from, in
/// the order `rows.rs` reads them.
pub(crate) const ENVELOPE_COLS: &str = "id, origin, key, event_type, payload_kind, payload, headers, schema_version, created_at, attempts, next_attempt_at, last_error";
