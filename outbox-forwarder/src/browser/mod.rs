//! The forwarder in the browser (`wasm32`): [`TabForwarder`] runs one
//! forwarder across every tab and worker of an origin, elected by a Web
//! Lock, woken by the store's commit channel, the `online` event and the
//! page becoming visible.
//!
//! The store it drains is any [`DurableStore`]; the names the tabs meet
//! under come from the store (for `outbox-store-idb`: its
//! `channel_name(db)` for the commit channel, and [`lock_name`] here for
//! the lock).

mod platform;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use futures::FutureExt;
use outbox_core::{DurableStore, Result, Sink};
use tokio_util::sync::CancellationToken;

use crate::{Forwarder, ForwarderConfig, Wake, mono};
use platform::{Channel, GlobalListener, acquire_lock, lock_manager};

/// What a [`TabForwarder`] is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TabRole {
    /// Waiting for the origin-wide lock: another tab or worker forwards.
    Follower,
    /// Holding the lock and running the forwarder.
    Leader,
    /// No lock manager here (`navigator.locks` missing): running a
    /// forwarder that contends through the store's leadership lease, so
    /// still one forwards at a time, with takeover after the lease ttl.
    LeaseContender,
    /// Stopped.
    Stopped,
}

/// The name of the Web Lock, and of the store's leadership holder, that
/// every tab of the outbox database `db` shares.
pub fn lock_name(db: &str) -> String {
    format!("outbox-forwarder:{db}")
}

/// Runs the outbox forwarder in exactly one tab (or worker) of the origin
/// at a time; every tab still commits durably to the shared store.
///
/// - **Election:** an exclusive Web Lock (`navigator.locks`) named `lock`
///   (see [`lock_name`]). Tabs that do not hold it wait in the browser's
///   queue and take over the moment the holder stops, closes or crashes.
/// - **Fencing:** the lock holder acquires the store's leadership under
///   the holder name `lock`, which every tab shares, so the new leader's
///   grant supersedes the old one at once: a stale leader (a frozen tab
///   that wakes up after losing the lock) gets
///   [`Fenced`](outbox_core::Error::Fenced) on its next claim or ack and
///   changes nothing. A store that voids an unreleased grant's leases on
///   takeover by the same holder name (the IndexedDB store does) makes the
///   batch a closed tab had in flight claimable at once.
/// - **Without Web Locks** (old browsers, insecure contexts) each tab runs
///   a forwarder with its own holder name (`cfg.holder`) and the store's
///   lease elects one ([`TabRole::LeaseContender`]); takeover then waits
///   for the lease ttl.
/// - **Wake-ups:** the leader listens on the `BroadcastChannel` named
///   `commits`, where the store posts after each commit with events in any
///   tab; it also wakes on the `online` event (making every backed-off
///   event due and closing its circuit breaker to a probe) and when its
///   page becomes visible, instead of waiting for its next tick. While the
///   browser says it is offline (`navigator.onLine`, the `offline` event),
///   failed attempts do not count toward an opt-in attempt limit.
#[derive(Debug)]
pub struct TabForwarder {
    cancel: CancellationToken,
    wake: Wake,
    role: Rc<Cell<TabRole>>,
    roles: tokio::sync::watch::Receiver<TabRole>,
    done: futures::future::Shared<futures::channel::oneshot::Receiver<()>>,
}

impl TabForwarder {
    /// Starts contending for the forwarder role of `store` under the Web
    /// Lock `lock`, and forwarding to `sink` once it holds it, woken by
    /// messages on the `BroadcastChannel` `commits`.
    ///
    /// For `outbox-store-idb`:
    /// `TabForwarder::start(store.clone(), sink, cfg, &lock_name(store.name()), &channel_name(store.name()))`.
    pub fn start<S>(
        store: Arc<S>,
        sink: Arc<dyn Sink>,
        mut cfg: ForwarderConfig,
        lock: &str,
        commits: &str,
    ) -> TabForwarder
    where
        S: DurableStore + ?Sized + 'static,
    {
        let cancel = CancellationToken::new();
        let role = Rc::new(Cell::new(TabRole::Follower));
        let (role_tx, roles) = tokio::sync::watch::channel(TabRole::Follower);
        let (lock, commits) = (lock.to_owned(), commits.to_owned());
        let locks = lock_manager();
        if locks.is_some() {
            // It forwards only while it holds the origin's exclusive lock.
            cfg.holder = lock.clone();
            cfg.exclusive = true;
        }
        let fwd = Forwarder::new(store, sink, cfg);
        let wake = fwd.waker();
        let (done_tx, done_rx) = futures::channel::oneshot::channel();
        let (task_cancel, task_role, task_wake) = (cancel.clone(), role.clone(), wake.clone());
        let set_role = move |r: TabRole| {
            task_role.set(r);
            role_tx.send_replace(r);
        };
        wasm_bindgen_futures::spawn_local(async move {
            let held = match &locks {
                Some(l) => {
                    let acquire = Box::pin(acquire_lock(l, &lock, false));
                    let stop = Box::pin(task_cancel.cancelled());
                    match futures::future::select(acquire, stop).await {
                        futures::future::Either::Left((Ok(Some(held)), _)) => Some(held),
                        _ => {
                            set_role(TabRole::Stopped);
                            let _ = done_tx.send(());
                            return;
                        }
                    }
                }
                None => None,
            };
            set_role(if held.is_some() { TabRole::Leader } else { TabRole::LeaseContender });
            let w = task_wake.clone();
            let _commits = Channel::listen(&commits, move |_| w.wake());
            let w = task_wake.clone();
            let _online = GlobalListener::on("online", move |_| w.notify_online());
            let w = task_wake.clone();
            let _offline = GlobalListener::on("offline", move |_| w.notify_offline());
            if platform::navigator_offline() {
                task_wake.notify_offline();
            }
            let w = task_wake;
            let _visible = GlobalListener::on("visibilitychange", move |_| w.wake());
            fwd.run(task_cancel).await;
            drop(held);
            set_role(TabRole::Stopped);
            let _ = done_tx.send(());
        });
        TabForwarder { cancel, wake, role, roles, done: done_rx.shared() }
    }

    /// What this tab is doing now.
    pub fn role(&self) -> TabRole {
        self.role.get()
    }

    /// A receiver that sees [`TabForwarder::role`] change (say, to tell
    /// the page that started this worker when it leads).
    pub fn watch_role(&self) -> tokio::sync::watch::Receiver<TabRole> {
        self.roles.clone()
    }

    /// Whether this tab forwards now (holds the lock, or contends by lease
    /// where there are no locks).
    pub fn is_forwarding(&self) -> bool {
        matches!(self.role(), TabRole::Leader | TabRole::LeaseContender)
    }

    /// The forwarder's wake-up handle (commits in any tab reach it through
    /// the channel already; call it for other signals).
    pub fn waker(&self) -> &Wake {
        &self.wake
    }

    /// Stops: the batch in flight finishes, leadership is released, the
    /// lock goes to the next tab in line. Resolves when done.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.done.clone().await;
    }
}

/// What one [`drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Another tab or worker kept the forwarder lock for the whole wait:
    /// it forwards (a commit wakes it), so this drain did nothing.
    Busy,
    /// Held the lock and forwarded until nothing was due: `delivered`
    /// events delivered, `pending` still pending (backed off after a
    /// failure, or committed meanwhile).
    Done {
        /// Events delivered and acked by this drain.
        delivered: u64,
        /// Pending events left in the store when it stopped (backed off,
        /// parked behind a dead letter, or committed meanwhile).
        pending: u64,
        /// Whether it stopped because a delivery failed (the sink is
        /// still unreachable): the events it attempted are backed off.
        failed: bool,
    },
}

impl Drained {
    /// Whether to try again later: a delivery failed and events are
    /// left pending. A service worker's `sync` handler rejects then, so
    /// the browser fires the sync again with its own back-off.
    pub fn retry_later(&self) -> bool {
        matches!(self, Drained::Done { pending, failed: true, .. } if *pending > 0)
    }
}

/// Forwards once, for a service worker's `sync` (Background Sync) or
/// `message` event, where nothing may run after the event's promise
/// settles: waits up to `wait` for the origin's forwarder lock `lock`
/// (a tab that is closing releases it), then runs forwarder cycles until
/// a claim finds nothing due, releases leadership and the lock, and
/// reports what is left. When another tab or worker keeps the lock for
/// all of `wait`, it forwards: returns [`Drained::Busy`] having done
/// nothing.
///
/// Without Web Locks it contends by the store's leadership lease as
/// [`TabForwarder`] does.
pub async fn drain<S>(
    store: Arc<S>,
    sink: Arc<dyn Sink>,
    mut cfg: ForwarderConfig,
    lock: &str,
    wait: std::time::Duration,
) -> Result<Drained>
where
    S: DurableStore + ?Sized + 'static,
{
    let locks = lock_manager();
    let held = match &locks {
        Some(l) => {
            let acquire = Box::pin(acquire_lock(l, lock, false));
            let timeout = Box::pin(mono::sleep(wait));
            match futures::future::select(acquire, timeout).await {
                futures::future::Either::Left((Ok(Some(held)), _)) => Some(held),
                futures::future::Either::Left((Ok(None) | Err(_), _)) | futures::future::Either::Right(_) => {
                    return Ok(Drained::Busy);
                }
            }
        }
        None => None,
    };
    if held.is_some() {
        cfg.holder = lock.to_owned();
        cfg.exclusive = true;
    }
    let mut fwd = Forwarder::new(store.clone(), sink, cfg);
    if platform::navigator_offline() {
        fwd.waker().notify_offline();
    } else {
        // A sync fires when the browser is back online: whatever backed
        // off during the outage is due now.
        fwd.waker().notify_online();
    }
    let mut delivered = 0u64;
    let mut failed = false;
    let outcome = loop {
        match fwd.run_once().await {
            Ok(r) => {
                delivered += r.delivered as u64;
                failed = r.retried > 0 || matches!(r.circuit, crate::BreakerState::Open { .. });
                if !r.leader || r.claimed == 0 || failed || r.fenced {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    fwd.step_down().await;
    drop(held);
    outcome?;
    let pending = store.stats().await?.pending;
    Ok(Drained::Done { delivered, pending, failed })
}
