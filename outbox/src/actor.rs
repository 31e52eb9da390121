//! The actor runtime: state + handler in, atomic commits and watchable
//! state out.

use std::fmt;
use std::sync::Arc;

use outbox_core::event::TraceParent;
use outbox_core::{ActorId, Commit, Error, ErrorKind, MaybeSendSync, NewEvent, Version, async_trait};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::runtime::Outbox;

/// What a handler gets besides the state: who it is, and
/// [`Context::emit`], the one way to announce what happened.
#[derive(Debug)]
pub struct Context {
    actor: ActorId,
    events: Vec<NewEvent>,
    /// The first payload that failed to serialize: the commit is refused.
    refused: Option<Error>,
}

impl Context {
    /// The actor's id (the origin of what it emits).
    pub fn actor_id(&self) -> &ActorId {
        &self.actor
    }

    /// Emits an event of `event_type` with `payload` as JSON, from this
    /// actor, keyed by the actor (its events are delivered in order). It
    /// is committed with the state when the handler returns `Ok`.
    ///
    /// A payload that cannot be serialized fails the message with
    /// [`ActorError::Store`] of kind
    /// [`Serialization`](outbox_core::ErrorKind::Serialization), and
    /// nothing is committed.
    pub fn emit<T: Serialize + ?Sized>(&mut self, event_type: &str, payload: &T) {
        match NewEvent::json(self.actor.clone(), event_type, payload) {
            Ok(e) => self.events.push(e),
            Err(e) => {
                self.refused.get_or_insert(e);
            }
        }
    }

    /// Emits a ready-made event (another ordering key, headers, bytes, a
    /// `not_before` time).
    pub fn emit_event(&mut self, event: NewEvent) {
        self.events.push(event);
    }
}

/// An actor: a serde-serializable state (a state-machine enum is the usual
/// case) and an `async` message handler. That is all the developer writes.
///
/// The handler gets a *draft* of the state and a [`Context`]; it changes
/// the draft and emits events, and may `await` (a backend call, a file
/// read) on the way. If it returns `Ok`, the new state and every event
/// commit atomically; only then do watchers see the new state and the
/// forwarder wake. If it returns `Err`, or the commit fails, the draft and
/// the events are discarded.
///
/// # The single-writer rule
///
/// An actor id should be driven by one running actor at a time: the
/// runtime holds its state in memory between messages. If another process
/// (or another actor value with the same id) commits it in between, the
/// commit fails with a version conflict; the runtime then reloads the
/// state and runs the handler again on it, up to
/// [`OutboxConfig::conflict_retries`](crate::OutboxConfig::conflict_retries)
/// times (default 3), before reporting the conflict. A handler that may be
/// rerun should keep what it does outside the draft idempotent.
///
/// ```
/// use outbox::{Actor, Context, async_trait};
///
/// struct Backend;
/// impl Backend {
///     async fn save(&self, _data: &str) -> Result<(), std::io::Error> { Ok(()) }
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// enum FormError {
///     #[error("the backend refused the form")]
///     Backend(#[from] std::io::Error),
///     #[error("nothing to save")]
///     Empty,
/// }
///
/// struct Form { backend: Backend }
///
/// #[async_trait]
/// impl Actor for Form {
///     type State = Option<String>;
///     type Message = String;
///     type Error = FormError;
///
///     async fn handle(&mut self, draft: &mut Option<String>, data: String, ctx: &mut Context) -> Result<(), FormError> {
///         if data.is_empty() {
///             return Err(FormError::Empty);
///         }
///         self.backend.save(&data).await?;
///         ctx.emit("FORM_SAVED", &data);
///         *draft = Some(data);
///         Ok(())
///     }
/// }
/// ```
///
/// [`outbox::async_trait`](crate::async_trait) is `async_trait` with the
/// target's `Send`-ness, so the same `impl` compiles natively (futures are
/// `Send`; actors run on the Tokio runtime) and on `wasm32` (nothing needs
/// to be `Send`; actors run on the page's event loop).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Actor: MaybeSendSync + 'static {
    /// The state.
    type State: Serialize + DeserializeOwned + Default + Clone + MaybeSendSync + 'static;
    /// The messages it handles. `Clone`, so that a message can be handled
    /// again after a version conflict.
    type Message: Clone + MaybeSendSync + 'static;
    /// The handler's own error, returned to the sender inside
    /// [`ActorError::Handler`] (and as its [`source`](std::error::Error::source)).
    type Error: std::error::Error + MaybeSendSync + 'static;

    /// Handles one message on a draft of the state.
    async fn handle(
        &mut self,
        state: &mut Self::State,
        message: Self::Message,
        ctx: &mut Context,
    ) -> Result<(), Self::Error>;
}

/// Why a message did not take effect. Nothing of it was committed.
#[derive(Debug, thiserror::Error)]
pub enum ActorError<E: std::error::Error + 'static> {
    /// The handler returned its own error.
    #[error("the actor's handler returned an error")]
    Handler(#[source] E),
    /// The commit failed (the store's error kind says why), or an emitted
    /// payload could not be serialized.
    #[error("the commit failed")]
    Store(#[source] Error),
    /// The actor has stopped.
    #[error("the actor has stopped")]
    Stopped,
}

impl<E: std::error::Error + 'static> ActorError<E> {
    /// The store error's kind, for a failed commit.
    pub fn store_kind(&self) -> Option<ErrorKind> {
        match self {
            ActorError::Store(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The handler's error, if that is what failed.
    pub fn handler_error(&self) -> Option<&E> {
        match self {
            ActorError::Handler(e) => Some(e),
            _ => None,
        }
    }
}

/// What [`ActorRef::send`] reports of a message that took effect.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Sent {
    /// The actor's new state version.
    pub version: Version,
    /// Whether the commit is in the durable store. `false` when only
    /// memory holds it: the durable store was full and the outbox fell
    /// back to memory ([`OnQuota::Fallback`](crate::OnQuota::Fallback);
    /// it is moved to the durable store once that has room, and lost if
    /// the process ends before), or the outbox is not durable at all
    /// ([`Durability::Memory`](crate::Durability::Memory) or `Off`).
    pub durable: bool,
}

type Reply<A> = oneshot::Sender<Result<Sent, ActorError<<A as Actor>::Error>>>;

/// A message in an actor's mailbox: the message, the trace context it is
/// handled in, and where the result goes.
type Mail<A> = (<A as Actor>::Message, TraceParent, Reply<A>);

/// A handle to a running actor: send it messages, watch its state.
pub struct ActorRef<A: Actor> {
    id: ActorId,
    tx: mpsc::Sender<Mail<A>>,
    state: watch::Receiver<Arc<A::State>>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef { id: self.id.clone(), tx: self.tx.clone(), state: self.state.clone() }
    }
}

impl<A: Actor> fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorRef").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<A: Actor> ActorRef<A> {
    /// The actor's id.
    pub fn id(&self) -> &ActorId {
        &self.id
    }

    /// Sends `message` and waits until it is committed (the new version,
    /// and whether the commit is durable: see [`Sent::durable`]) or
    /// discarded.
    ///
    /// The message is handled in the trace current here
    /// ([`trace::current`](crate::trace::current)), or in a new trace if
    /// there is none; the events it emits carry it in their `traceparent`
    /// header (see [`trace`](crate::trace)).
    pub async fn send(&self, message: A::Message) -> Result<Sent, ActorError<A::Error>> {
        let trace = TraceParent::current().map_or_else(TraceParent::new_trace, |t| t.child());
        let (reply, rx) = oneshot::channel();
        self.tx.send((message, trace, reply)).await.map_err(|_| ActorError::Stopped)?;
        rx.await.map_err(|_| ActorError::Stopped)?
    }

    /// The last committed state.
    pub fn state(&self) -> Arc<A::State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every committed state (never a draft): for a UI
    /// to follow.
    pub fn watch(&self) -> watch::Receiver<Arc<A::State>> {
        self.state.clone()
    }
}

/// One actor's loop: its mailbox, its committed state and version.
struct Running<A: Actor> {
    outbox: Outbox,
    id: ActorId,
    actor: A,
    version: Version,
    state: watch::Sender<Arc<A::State>>,
}

impl<A: Actor> Running<A> {
    /// Handles each message in the trace it was sent in (current while the
    /// handler runs and when the events are committed, which stamps them),
    /// inside an `outbox.handle` span.
    async fn run(mut self, mut rx: mpsc::Receiver<Mail<A>>) {
        while let Some((message, trace, reply)) = rx.recv().await {
            let span = tracing::debug_span!(target: "outbox", "outbox.handle",
                actor = %self.id,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            if !span.is_disabled() {
                span.record("trace_id", trace.trace_id_hex().as_str());
                span.record("span_id", trace.span_id_hex().as_str());
            }
            let result = trace.scope(self.handle(message)).instrument(span).await;
            let _ = reply.send(result);
        }
    }

    /// Handles `message`, rerunning it on the reloaded state after a
    /// version conflict, up to the configured number of times.
    async fn handle(&mut self, message: A::Message) -> Result<Sent, ActorError<A::Error>> {
        let mut retries = self.outbox.conflict_retries();
        loop {
            let mut draft: A::State = (**self.state.borrow()).clone();
            let mut ctx = Context { actor: self.id.clone(), events: Vec::new(), refused: None };
            self.actor.handle(&mut draft, message.clone(), &mut ctx).await.map_err(ActorError::Handler)?;
            if let Some(e) = ctx.refused {
                return Err(ActorError::Store(e));
            }
            match commit(&self.outbox, &self.id, self.version, &draft, ctx.events).await {
                Ok(sent) => {
                    self.version = sent.version;
                    self.state.send_replace(Arc::new(draft));
                    return Ok(sent);
                }
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    // Someone else committed this actor (another process):
                    // pick up what they committed, then try again.
                    let (s, v) = load::<A>(&self.outbox, &self.id).await.map_err(ActorError::Store)?;
                    self.version = v;
                    self.state.send_replace(Arc::new(s));
                    if retries == 0 {
                        return Err(ActorError::Store(e));
                    }
                    retries -= 1;
                    tracing::debug!(target: "outbox", actor = %self.id, "version conflict: handling the message again on the reloaded state");
                }
                Err(e) => return Err(ActorError::Store(e)),
            }
        }
    }
}

impl Outbox {
    /// Starts `actor` as `id`, restoring its last committed state (or
    /// `State::default()`): on the current Tokio runtime natively, on the
    /// page's event loop on `wasm32`. It handles one message at a time;
    /// many actors run concurrently.
    pub async fn spawn_actor<A: Actor>(&self, id: ActorId, actor: A) -> Result<ActorRef<A>, Error> {
        let (state, version) = load::<A>(self, &id).await?;
        let (tx, rx) = mpsc::channel::<Mail<A>>(64);
        let (state_tx, state_rx) = watch::channel(Arc::new(state));
        let running = Running { outbox: self.clone(), id: id.clone(), actor, version, state: state_tx };
        #[cfg(not(target_arch = "wasm32"))]
        tokio::spawn(running.run(rx));
        #[cfg(target_arch = "wasm32")]
        wasm_bindgen_futures::spawn_local(running.run(rx));
        Ok(ActorRef { id, tx, state: state_rx })
    }
}

async fn load<A: Actor>(outbox: &Outbox, id: &ActorId) -> Result<(A::State, Version), Error> {
    match outbox.load_state(id).await? {
        Some(s) => Ok((serde_json::from_slice(&s.bytes)?, s.version)),
        None => Ok((A::State::default(), Version::NONE)),
    }
}

async fn commit<S: Serialize>(
    outbox: &Outbox,
    id: &ActorId,
    version: Version,
    draft: &S,
    events: Vec<NewEvent>,
) -> Result<Sent, Error> {
    let snapshot = serde_json::to_vec(draft)?;
    let receipt = outbox.commit(Commit::state(id.clone(), version, snapshot).events(events)).await?;
    let version = receipt.version.ok_or_else(|| Error::internal("a state commit returned no version"))?;
    Ok(Sent { version, durable: receipt.durable })
}
