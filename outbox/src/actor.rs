//! The actor runtime: state + handler in, atomic commits and watchable
//! state out.

use std::fmt;
use std::sync::Arc;

use outbox_core::{ActorId, Commit, Error, ErrorKind, NewEvent, Version};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use crate::runtime::Outbox;

/// What a handler gets besides the state: who it is, and `emit`.
#[derive(Debug)]
pub struct Context {
    actor: ActorId,
    events: Vec<NewEvent>,
}

impl Context {
    /// The actor's id (the origin of what it emits).
    pub fn actor_id(&self) -> &ActorId {
        &self.actor
    }

    /// Emits an event of `event_type` with `payload` as JSON, from this
    /// actor. A payload that cannot be serialized is an
    /// [`Error::Serialization`] (return it from the handler).
    pub fn emit<T: Serialize + ?Sized>(&mut self, event_type: &str, payload: &T) -> Result<(), Error> {
        self.events.push(NewEvent::json(self.actor.clone(), event_type, payload)?);
        Ok(())
    }

    /// Emits a ready-made event.
    pub fn emit_event(&mut self, event: NewEvent) {
        self.events.push(event);
    }
}

/// An actor: a serde-serializable state (a state-machine enum is the usual
/// case) and a message handler. That is all the developer writes.
///
/// The handler gets a *draft* of the state and a [`Context`]; it changes
/// the draft, emits events (or returns them). If it returns `Ok`, the new
/// state and every event commit atomically; only then do watchers see the
/// new state and the forwarder wake. If it returns `Err`, or the commit
/// fails, the draft and the events are discarded.
pub trait Actor: Send + 'static {
    /// The state.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;
    /// The messages it handles.
    type Message: Send + 'static;
    /// The handler's error.
    type Error: fmt::Display + Send + 'static;

    /// Handles one message on a draft of the state; may return events as
    /// well as emit them.
    fn handle(
        &mut self,
        state: &mut Self::State,
        message: Self::Message,
        ctx: &mut Context,
    ) -> Result<Vec<NewEvent>, Self::Error>;
}

/// Why a message did not take effect. Nothing of it was committed.
#[derive(Debug)]
pub enum ActorError {
    /// The handler returned an error.
    Handler(String),
    /// The commit failed (the store's error kind says why).
    Store(Error),
    /// The actor has stopped.
    Stopped,
}

impl ActorError {
    /// The store error's kind, for a failed commit.
    pub fn store_kind(&self) -> Option<ErrorKind> {
        match self {
            ActorError::Store(e) => Some(e.kind()),
            _ => None,
        }
    }
}

impl fmt::Display for ActorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorError::Handler(m) => write!(f, "handler failed: {m}"),
            ActorError::Store(e) => write!(f, "commit failed: {e}"),
            ActorError::Stopped => f.write_str("actor stopped"),
        }
    }
}

impl std::error::Error for ActorError {}

type Reply = oneshot::Sender<Result<Version, ActorError>>;

/// A handle to a running actor: send it messages, watch its state.
pub struct ActorRef<A: Actor> {
    id: ActorId,
    tx: mpsc::Sender<(A::Message, Reply)>,
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

    /// Sends `message` and waits until it is committed (the new version)
    /// or discarded.
    pub async fn send(&self, message: A::Message) -> Result<Version, ActorError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((message, reply)).await.map_err(|_| ActorError::Stopped)?;
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

impl Outbox {
    /// Starts `actor` as `id` on the current Tokio runtime, restoring its
    /// last committed state (or `State::default()`). It handles one message
    /// at a time; many actors run concurrently.
    pub async fn spawn_actor<A: Actor>(&self, id: ActorId, actor: A) -> Result<ActorRef<A>, Error> {
        let (state, version) = load::<A>(self, &id).await?;
        let (tx, mut rx) = mpsc::channel::<(A::Message, Reply)>(64);
        let (state_tx, state_rx) = watch::channel(Arc::new(state));
        let outbox = self.clone();
        let actor_id = id.clone();
        tokio::spawn(async move {
            let mut actor = actor;
            let mut version = version;
            while let Some((message, reply)) = rx.recv().await {
                let mut draft: A::State = (**state_tx.borrow()).clone();
                let mut ctx = Context { actor: actor_id.clone(), events: Vec::new() };
                let result = match actor.handle(&mut draft, message, &mut ctx) {
                    Err(e) => Err(ActorError::Handler(e.to_string())),
                    Ok(returned) => {
                        ctx.events.extend(returned);
                        commit(&outbox, &actor_id, version, &draft, ctx.events).await
                    }
                };
                match result {
                    Ok(v) => {
                        version = v;
                        state_tx.send_replace(Arc::new(draft));
                        let _ = reply.send(Ok(v));
                    }
                    Err(e) => {
                        // Someone else committed this actor (another
                        // process): pick up what they committed.
                        if e.store_kind() == Some(ErrorKind::Conflict)
                            && let Ok((s, v)) = load::<A>(&outbox, &actor_id).await
                        {
                            version = v;
                            state_tx.send_replace(Arc::new(s));
                        }
                        let _ = reply.send(Err(e));
                    }
                }
            }
        });
        Ok(ActorRef { id, tx, state: state_rx })
    }
}

async fn load<A: Actor>(outbox: &Outbox, id: &ActorId) -> Result<(A::State, Version), Error> {
    match outbox.store().load_state(id).await? {
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
) -> Result<Version, ActorError> {
    let snapshot = serde_json::to_vec(draft).map_err(|e| ActorError::Store(e.into()))?;
    let receipt = outbox
        .commit(Commit::state(id.clone(), version, snapshot).events(events))
        .await
        .map_err(ActorError::Store)?;
    receipt.version.ok_or_else(|| ActorError::Store(Error::internal("a state commit returned no version")))
}
