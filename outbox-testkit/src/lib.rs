#![doc = include_str!("../README.md")]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod conformance;
#[cfg(not(target_arch = "wasm32"))]
pub mod crash;
mod factory;
mod faulty;
#[cfg(not(target_arch = "wasm32"))]
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod power_loss;

pub use factory::StoreFactory;
pub use faulty::{FaultMode, FaultyStore};

/// Runs a future to completion on a fresh Tokio runtime (native only): what
/// the generated tests use, so backends need no runtime of their own.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => panic!("cannot start a Tokio runtime for the test: {e}"),
    }
}

#[doc(hidden)]
pub mod __private {
    pub use outbox_core::LeadershipMode;
    #[cfg(not(target_arch = "wasm32"))]
    pub use proptest;
    #[cfg(target_arch = "wasm32")]
    pub use wasm_bindgen_test;
}

/// Expands to one `#[test]` per conformance property, each running
/// `outbox_testkit::conformance::<property>(&factory)`.
///
/// ```ignore
/// // tests/conformance.rs of a backend
/// outbox_testkit::conformance_tests!(my_store::tests::Factory::default());
/// // a store whose forwarders share leadership (leases), on a server:
/// outbox_testkit::conformance_tests!(Pg, requires = "OUTBOX_PG_URL", leadership = shared);
/// ```
///
/// `cargo test -- --list` then shows `commit_then_load`,
/// `version_conflict_writes_nothing`, ... one line each, and a failure
/// names the property it broke.
///
/// Capabilities a store may lack are declared, never skipped at run time:
/// `leadership = shared` (default `exclusive`) and `reopen = no` (default
/// `yes`). The property a declared lack rules out is registered as an
/// ignored test (the harness reports it as ignored, with the reason), and
/// `capabilities_are_as_declared` checks the store's
/// [`Capabilities`](outbox_core::Capabilities) against the declaration, so
/// a wrong declaration fails.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(, requires = $var:expr)? $(, leadership = $lead:ident)? $(, reopen = $reopen:ident)? $(,)?) => {
        $crate::__conformance_tests!(@names $factory; $crate::__requires!($($var)?));
        $crate::__conformance_leadership!($factory; $crate::__requires!($($var)?); $($lead)?);
        $crate::__conformance_reopen!($factory; $crate::__requires!($($var)?); $($reopen)?);
        $crate::__conformance_declared!(
            $factory;
            $crate::__requires!($($var)?);
            $crate::__leadership_mode!($($lead)?);
            $crate::__survives_reopen!($($reopen)?)
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __requires {
    () => {
        ::core::option::Option::<&str>::None
    };
    ($var:expr) => {
        ::core::option::Option::Some($var)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __leadership_mode {
    () => {
        $crate::__private::LeadershipMode::Exclusive
    };
    (exclusive) => {
        $crate::__private::LeadershipMode::Exclusive
    };
    (shared) => {
        $crate::__private::LeadershipMode::Shared
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __survives_reopen {
    () => {
        true
    };
    (yes) => {
        true
    };
    (no) => {
        false
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_leadership {
    ($factory:expr; $req:expr; ) => {
        $crate::__conformance_test_fns!($factory; $req; leadership_is_exclusive);
    };
    ($factory:expr; $req:expr; exclusive) => {
        $crate::__conformance_test_fns!($factory; $req; leadership_is_exclusive);
    };
    ($factory:expr; $req:expr; shared) => {
        $crate::__conformance_ignored_fn!(
            $factory;
            leadership_is_exclusive;
            "declared `leadership = shared`: many forwarders hold leases at once"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_reopen {
    ($factory:expr; $req:expr; ) => {
        $crate::__conformance_test_fns!($factory; $req; reopen_keeps_everything_committed);
    };
    ($factory:expr; $req:expr; yes) => {
        $crate::__conformance_test_fns!($factory; $req; reopen_keeps_everything_committed);
    };
    ($factory:expr; $req:expr; no) => {
        $crate::__conformance_ignored_fn!(
            $factory;
            reopen_keeps_everything_committed;
            "declared `reopen = no`: the store does not survive a reopen"
        );
    };
}

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_declared {
    ($factory:expr; $req:expr; $lead:expr; $reopen:expr) => {
        #[test]
        fn capabilities_are_as_declared() {
            if !$crate::required($req, "capabilities_are_as_declared") {
                return;
            }
            let factory = $factory;
            $crate::block_on($crate::conformance::capabilities_are_as_declared(&factory, $lead, $reopen));
        }
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_declared {
    ($factory:expr; $req:expr; $lead:expr; $reopen:expr) => {
        #[$crate::__private::wasm_bindgen_test::wasm_bindgen_test(crate = $crate::__private::wasm_bindgen_test)]
        async fn capabilities_are_as_declared() {
            let factory = $factory;
            $crate::conformance::capabilities_are_as_declared(&factory, $lead, $reopen).await;
        }
    };
}

/// A property the store declared it lacks: registered, ignored with the
/// reason, and failing if run anyway (`--include-ignored`), since the
/// property asserts the capability first.
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_ignored_fn {
    ($factory:expr; $name:ident; $why:literal) => {
        #[test]
        #[ignore = $why]
        fn $name() {
            let factory = $factory;
            $crate::block_on($crate::conformance::$name(&factory));
        }
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_ignored_fn {
    ($factory:expr; $name:ident; $why:literal) => {
        #[$crate::__private::wasm_bindgen_test::wasm_bindgen_test(crate = $crate::__private::wasm_bindgen_test)]
        #[ignore = $why]
        async fn $name() {
            let factory = $factory;
            $crate::conformance::$name(&factory).await;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (@names $factory:expr; $req:expr) => {
        $crate::__conformance_tests!(
            $factory; $req;
            commit_then_load,
            version_conflict_writes_nothing,
            commit_is_atomic_under_mid_commit_failure,
            concurrent_commits_on_one_version_admit_one,
            bad_input_rejected_and_nothing_written,
            events_of_one_key_claimed_in_commit_order,
            key_waits_for_its_leased_or_retrying_predecessor,
            claim_heads_of_keeps_key_order,
            claims_exclusive_while_leased,
            expired_lease_claimable_again,
            ack_is_idempotent,
            release_returns_claims_unattempted,
            retry_later_not_claimable_before_its_time,
            retry_later_uncounted_takes_the_attempt_back,
            retry_now_makes_backed_off_events_due,
            exclusive_claims_keep_the_contract,
            ack_leaves_interleaved_events_pending,
            not_before_delays_first_delivery,
            dead_letters_never_claimed_listed_and_requeueable,
            dead_letter_parks_its_key_when_asked,
            requeue_one_keeps_key_order,
            discard_one_lets_its_key_flow,
            skip_one_lets_its_key_flow_and_stays_dead,
            parked_keys_count_unskipped_dead_keys,
            prune_removes_only_delivered_past_retention,
            stats_count_by_status,
            list_by_status_lists_each_status,
            delivery_info_shows_lease_epoch_and_skip,
            inbox_mark_atomic_with_state,
            duplicate_inbox_mark_detected,
            inbox_prune_removes_only_old_marks,
            stale_leader_ack_rejected,
            fault_wrapper_passes_through_and_fails_on_cue,
        );
    };
    ($factory:expr; $req:expr; $($name:ident),+ $(,)?) => {
        $crate::__conformance_test_fns!($factory; $req; $($name),+);
    };
}

#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($factory:expr; $req:expr; $($name:ident),+) => {
        $(
            #[test]
            fn $name() {
                if !$crate::required($req, stringify!($name)) {
                    return;
                }
                let factory = $factory;
                $crate::block_on($crate::conformance::$name(&factory));
            }
        )+
    };
}

/// On `wasm32`: one `#[wasm_bindgen_test]` per property, run in the
/// browser by `wasm-bindgen-test-runner` (the crate under test configures
/// `wasm_bindgen_test_configure!(run_in_browser)`).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($factory:expr; $req:expr; $($name:ident),+) => {
        $(
            #[$crate::__private::wasm_bindgen_test::wasm_bindgen_test(crate = $crate::__private::wasm_bindgen_test)]
            async fn $name() {
                let factory = $factory;
                $crate::conformance::$name(&factory).await;
            }
        )+
    };
}

/// Whether a server-backed test can run: `var` (if any) is set. If not,
/// says loudly on stdout that `test` was skipped and how to run it.
#[doc(hidden)]
pub fn required(var: Option<&str>, test: &str) -> bool {
    match var {
        Some(v) if std::env::var_os(v).is_none() => {
            // Straight to the stderr handle, past libtest's output capture,
            // so a plain `cargo test` shows it.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {v} is not set (start the servers: scripts/servers.sh start)"
            );
            false
        }
        _ => true,
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Expands to a proptest `#[test]` named `model_matches_reference`: random
/// sequences of commit / claim / ack / retry / dead-letter / requeue /
/// prune / time / leadership operations against the store and a simple
/// reference model, compared after every step.
///
/// `cases` is the number of random sequences (the `PROPTEST_CASES`
/// environment variable overrides it).
#[macro_export]
macro_rules! model_tests {
    ($factory:expr) => {
        $crate::model_tests!($factory, cases = 64);
    };
    ($factory:expr, cases = $cases:expr) => {
        $crate::__private::proptest::proptest! {
            #![proptest_config($crate::model::config($cases))]
            #[test]
            fn model_matches_reference(ops in $crate::model::ops_strategy()) {
                let factory = $factory;
                $crate::block_on($crate::model::run(&factory, ops));
            }
        }
    };
    ($factory:expr, cases = $cases:expr, requires = $var:expr) => {
        #[test]
        fn model_matches_reference() {
            if !$crate::required(::core::option::Option::Some($var), "model_matches_reference") {
                return;
            }
            let config = $crate::model::config($cases);
            let mut runner = $crate::__private::proptest::test_runner::TestRunner::new(config);
            let result = runner.run(&$crate::model::ops_strategy(), |ops| {
                let factory = $factory;
                $crate::block_on($crate::model::run(&factory, ops));
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
        }
    };
}
