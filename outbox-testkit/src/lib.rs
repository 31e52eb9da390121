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
/// ```
///
/// `cargo test -- --list` then shows `commit_then_load`,
/// `version_conflict_writes_nothing`, ... one line each, and a failure
/// names the property it broke.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_tests!(@names $factory; ::core::option::Option::<&str>::None);
    };
    ($factory:expr, requires = $var:expr) => {
        $crate::__conformance_tests!(@names $factory; ::core::option::Option::Some($var));
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
            claims_exclusive_while_leased,
            expired_lease_claimable_again,
            ack_is_idempotent,
            release_returns_claims_unattempted,
            retry_later_not_claimable_before_its_time,
            not_before_delays_first_delivery,
            dead_letters_never_claimed_listed_and_requeueable,
            dead_letter_parks_its_key_when_asked,
            prune_removes_only_delivered_past_retention,
            stats_count_by_status,
            inbox_mark_atomic_with_state,
            duplicate_inbox_mark_detected,
            inbox_prune_removes_only_old_marks,
            stale_leader_ack_rejected,
            leadership_is_exclusive,
            reopen_keeps_everything_committed,
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
