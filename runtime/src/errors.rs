//! Errors of the actor operations: ask, tell, start.
//!
//! A call has two ways to fail, and [`AskError`] keeps them apart:
//!
//! - [`AskError::Rejected`]: the actor ran the command and said no, with its own error type `E`.
//!   Nothing was stored.
//! - [`AskError::Failed`]: the call failed on the way, with a [`CallError`]. `CallError` does not
//!   depend on the actor's type; it is what a tell returns, and it is the very value a remote
//!   node sends back in its reply frame (see `docs/wire.md`), so a failure reads the same
//!   whether the actor lives in this process or on another node.
//!
//! Store and name errors live with [their](crate::store::StoreError)
//! [modules](crate::names::NameError). Every call error answers the question a caller has to
//! decide on — *may I retry, and how?* — through [`CallError::retry_safety`] (and
//! [`AskError::retry_safety`], which adds that a rejection is final):
//!
//! | error | was the command applied? | retry |
//! |---|---|---|
//! | [`Rejected`](AskError::Rejected) | no, the actor said no | pointless until something changes |
//! | [`VersionConflict`](CallError::VersionConflict) | no | safe |
//! | [`Timeout`](CallError::Timeout) | no, it never reached the actor | safe |
//! | [`OutcomeUnknown`](CallError::OutcomeUnknown) | maybe | only with the same command id |
//! | [`Unavailable`](CallError::Unavailable) | no | safe, after a pause |
//! | [`Deadlock`](CallError::Deadlock) | no | safe, once the other command is done |
//! | [`MailboxFull`](CallError::MailboxFull) | no (a tell was dropped) | safe, after a pause |
//! | [`ActivationFailed`](CallError::ActivationFailed) | no: the actor's history is damaged | pointless until repaired |
//! | [`StoreRefused`](CallError::StoreRefused) | no | pointless: the store cannot do it as configured |
//! | the others | no | pointless: fix the input or the code |
//!
//! A turn that asked (or told) other actors and then failed — for any reason but its own
//! rejection — has changed them already: its error is
//! [`OutcomeUnknown`](CallError::OutcomeUnknown) — retry only with the same command id, so the
//! children are deduplicated. (A handler that rejects after asking made that choice itself; its
//! `Rejected` stands.) Even then the retried handler decides again on the state it finds; to
//! change several actors atomically with one decision, use durable effects
//! ([`Effect::send`](crate::Effect::send)).
//!
//! ```
//! use aether_runtime::{AskError, CallError, RetrySafety};
//!
//! fn should_retry<E>(error: &AskError<E>) -> bool {
//!     match error {
//!         AskError::Rejected(_) => false,
//!         AskError::Failed(CallError::OutcomeUnknown { .. }) => true, // with the same command id
//!         AskError::Failed(call) => call.retry_safety() == RetrySafety::Safe,
//!     }
//! }
//! # let timeout: AskError<String> = CallError::Timeout { after: std::time::Duration::ZERO }.into();
//! # assert!(should_retry(&timeout));
//! # assert!(!should_retry(&AskError::Rejected("no".to_owned())));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{ActorKey, NameError};
use crate::store::StoreError;
use crate::wire::{CodecError, CommandId};

/// How a caller may retry after an [`AskError`] or a [`CallError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing was applied; retrying (with any command id) cannot duplicate.
    Safe,
    /// The command may have been applied; retry only with the same command id, which the actor
    /// deduplicates and answers with the original reply.
    SameCommandId,
    /// Nothing was applied, and the same command will fail the same way.
    Pointless,
}

/// Why an ask did not produce a reply: the actor said no, or the call failed on the way.
/// `E` is the actor's own error type.
#[derive(Debug, thiserror::Error)]
pub enum AskError<E> {
    /// The actor rejected the command (its handler returned an error). Nothing was stored.
    #[error("rejected: {0}")]
    Rejected(E),
    /// The call failed before the actor could answer (or its answer was lost).
    #[error(transparent)]
    Failed(#[from] CallError),
}

impl<E> AskError<E> {
    /// How the caller may retry. See the [module table](self).
    pub fn retry_safety(&self) -> RetrySafety {
        match self {
            AskError::Rejected(_) => RetrySafety::Pointless,
            AskError::Failed(e) => e.retry_safety(),
        }
    }

    /// The actor's own error, if this is a rejection.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            AskError::Rejected(e) => Some(e),
            AskError::Failed(_) => None,
        }
    }

    /// The call failure, if this is not a rejection.
    pub fn call_error(&self) -> Option<&CallError> {
        match self {
            AskError::Rejected(_) => None,
            AskError::Failed(e) => Some(e),
        }
    }

    /// Maps the actor error type (used when one actor forwards another's failure).
    pub fn map_rejection<F>(self, f: impl FnOnce(E) -> F) -> AskError<F> {
        match self {
            AskError::Rejected(e) => AskError::Rejected(f(e)),
            AskError::Failed(e) => AskError::Failed(e),
        }
    }
}

impl<E> From<CodecError> for AskError<E> {
    fn from(e: CodecError) -> Self {
        AskError::Failed(e.into())
    }
}

impl<E> From<NameError> for AskError<E> {
    fn from(e: NameError) -> Self {
        AskError::Failed(CallError::InvalidName(e))
    }
}

/// Why a call (an ask or a tell) failed on the way, whatever the actor's type. A remote node
/// sends this value back as is in its reply frame (`{"Err": <CallError>}`, see `docs/wire.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// Another activation of the actor wrote first, twice in a row. Nothing was stored.
    #[error("version conflict on {actor}: expected version {expected}, actual {actual}")]
    VersionConflict {
        /// The actor.
        actor: ActorKey,
        /// The version this activation was at.
        expected: u64,
        /// The version found in the store.
        actual: u64,
    },
    /// The deadline passed before the command reached the actor. Nothing was applied.
    #[error("timed out after {after:?} before the command reached the actor")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The command reached the actor but no reply came before the deadline (or the connection
    /// was lost). It may or may not have been applied: retry with `command_id`.
    #[error("outcome unknown for command {command_id}: {reason}")]
    OutcomeUnknown {
        /// The command's id; reuse it to retry safely.
        command_id: CommandId,
        /// What happened.
        reason: String,
    },
    /// The store, NATS, or the node owning the actor cannot be reached (or is shutting down).
    /// Nothing was applied.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// A command, event, reply or frame could not be encoded or decoded.
    #[error("codec: {what}: {reason}")]
    Codec {
        /// What was being encoded or decoded (`"reply"`, `"request frame"`, ...).
        what: String,
        /// Why.
        reason: String,
    },
    /// A name in the request is invalid.
    #[error(transparent)]
    InvalidName(NameError),
    /// The actor's kind is not registered with the runtime that received the command.
    #[error("actor kind {kind:?} is not registered in this runtime")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
    },
    /// The request names another namespace than the runtime that received it serves.
    #[error("the request is for namespace {found:?}, the receiver serves {expected:?}")]
    WrongNamespace {
        /// The receiver's namespace.
        expected: String,
        /// The request's.
        found: String,
    },
    /// The actor's handler panicked. Nothing was stored; the panic failed the activation's
    /// ractor actor, and the runtime's root started a fresh activation, with the state from
    /// the store, for the commands queued behind it.
    #[error("handler of {actor} panicked: {message}")]
    HandlerPanicked {
        /// The actor.
        actor: ActorKey,
        /// The panic message.
        message: String,
    },
    /// The actor could not be brought to life: its history is damaged or does not decode.
    /// Nothing was applied; retrying will fail the same way until the history is repaired.
    #[error("activation of {actor} failed: {reason}")]
    ActivationFailed {
        /// The actor.
        actor: ActorKey,
        /// Why.
        reason: String,
    },
    /// The ask would wait on an actor that is already waiting on this chain: a deadlock.
    #[error("call cycle: {chain} would wait on itself")]
    CallCycle {
        /// The chain of actors, `a -> b -> a`.
        chain: String,
    },
    /// The actor is in a turn waiting on one of the actors that wait on this command: two
    /// turns asked each other's actors (A's turn waits on B while B's turn asks A). The ask was
    /// refused at once instead of both waiting out their deadlines. Nothing was applied; a
    /// retry succeeds once the other turn is done.
    #[error("deadlock refused: {chain}")]
    Deadlock {
        /// The cycle, `b -> a (waiting on b)`.
        chain: String,
    },
    /// The commit is larger than the store accepts, or the command's frame larger than the
    /// NATS server's maximum payload. Nothing was stored or sent.
    #[error("{size} bytes are more than the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The actor's mailbox is full; a tell was dropped (an ask waits for room instead).
    #[error("mailbox of {actor} is full")]
    MailboxFull {
        /// The actor.
        actor: ActorKey,
    },
    /// The `ActorRef` belongs to no runtime in this process (or to several); bind it with
    /// `Runtime::bind`.
    #[error("actor ref {actor} is not bound to a runtime: {reason}")]
    Unbound {
        /// The actor.
        actor: ActorKey,
        /// Why no runtime could be chosen.
        reason: String,
    },
    /// The store refused for a reason a retry will not fix (the operation is not supported by
    /// this store, the server is too old, a record is damaged). Nothing was applied.
    #[error("store refused: {reason}")]
    StoreRefused {
        /// Why.
        reason: String,
    },
    /// The caller's own runtime is shutting down. (A remote node that is shutting down answers
    /// [`Unavailable`](CallError::Unavailable): its shards move on, and a retry finds them.)
    #[error("runtime is shut down")]
    Shutdown,
}

impl CallError {
    /// How the caller may retry. See the [module table](self).
    pub fn retry_safety(&self) -> RetrySafety {
        match self {
            CallError::VersionConflict { .. }
            | CallError::Timeout { .. }
            | CallError::Unavailable { .. }
            | CallError::Deadlock { .. }
            | CallError::MailboxFull { .. } => RetrySafety::Safe,
            CallError::OutcomeUnknown { .. } => RetrySafety::SameCommandId,
            CallError::Codec { .. }
            | CallError::InvalidName(_)
            | CallError::UnknownKind { .. }
            | CallError::WrongNamespace { .. }
            | CallError::HandlerPanicked { .. }
            | CallError::ActivationFailed { .. }
            | CallError::StoreRefused { .. }
            | CallError::CallCycle { .. }
            | CallError::TooLarge { .. }
            | CallError::Unbound { .. }
            | CallError::Shutdown => RetrySafety::Pointless,
        }
    }

    /// `Unavailable` with `reason`.
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        CallError::Unavailable {
            reason: reason.into(),
        }
    }

    /// Converts a store error met while persisting command `command_id`.
    pub(crate) fn from_store(err: StoreError, command_id: CommandId) -> Self {
        match err {
            StoreError::VersionConflict {
                actor,
                expected,
                actual,
            } => CallError::VersionConflict {
                actor,
                expected,
                actual,
            },
            StoreError::Unavailable(reason) => CallError::Unavailable { reason },
            StoreError::Connect(e) => CallError::Unavailable {
                reason: e.to_string(),
            },
            StoreError::Closed => CallError::Shutdown,
            StoreError::OutcomeUnknown(reason) => CallError::OutcomeUnknown { command_id, reason },
            StoreError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
            StoreError::Codec(e) => e.into(),
            StoreError::InvalidName(e) => CallError::InvalidName(e),
            other @ (StoreError::Corrupt { .. }
            | StoreError::WrongNamespace { .. }
            | StoreError::ServerTooOld { .. }
            | StoreError::InvalidCommit(_)
            | StoreError::Unsupported(_)
            | StoreError::HistoryTruncated { .. }
            | StoreError::Failed(_)) => CallError::StoreRefused {
                reason: other.to_string(),
            },
        }
    }
}

impl From<CodecError> for CallError {
    fn from(e: CodecError) -> Self {
        CallError::Codec {
            what: e.what.to_owned(),
            reason: e.reason,
        }
    }
}

impl From<NameError> for CallError {
    fn from(e: NameError) -> Self {
        CallError::InvalidName(e)
    }
}

/// Why a runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A name (namespace, kind) is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// No namespace was set (only a cluster node takes it from its `ClusterConfig`).
    #[error("no namespace set: call .namespace(...)")]
    NoNamespace,
    /// The builder's namespace differs from the cluster configuration's.
    #[error("the builder's namespace {builder} differs from the cluster's {cluster}")]
    NamespaceMismatch {
        /// The builder's.
        builder: String,
        /// The `ClusterConfig`'s.
        cluster: String,
    },
    /// Two registered actor types share a kind.
    #[error("kind {kind:?} is registered twice")]
    DuplicateKind {
        /// The kind.
        kind: String,
    },
    /// Both `.cluster(...)` and `.cluster_client(...)` were set.
    #[error("a runtime is either a cluster node or a cluster client, not both")]
    NodeAndClient,
    /// The given event store serves another namespace than the runtime.
    #[error("the event store serves namespace {store}, the runtime {runtime}")]
    StoreNamespace {
        /// The store's namespace.
        store: crate::names::Namespace,
        /// The runtime's.
        runtime: crate::names::Namespace,
    },
    /// The runtime's root ractor actor could not be started.
    #[error("cannot start the runtime's root actor: {0}")]
    Supervision(String),
    /// The configuration from the environment does not parse.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A setting holds a value the runtime cannot run with (zero, too large, or inconsistent
    /// with another); the error names the field.
    #[error(transparent)]
    InvalidConfig(#[from] crate::config::InvalidConfig),
    /// The node (or cluster client) could not reach or join its cluster.
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The metrics endpoint could not be served: its address is taken or not local to this
    /// machine, or another `metrics` recorder was installed in this process first.
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why not.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{ActorId, Kind, NameKind, Namespace};

    fn key() -> ActorKey {
        ActorKey::new(
            Namespace::new("ns").expect("name"),
            Kind::new("kind").expect("name"),
            ActorId::new("id").expect("name"),
        )
    }

    /// One value of every variant. The match below has no wildcard: a new variant does not
    /// compile until it is listed here with the retry safety it promises.
    fn every_variant() -> Vec<(CallError, RetrySafety)> {
        let all = vec![
            CallError::VersionConflict {
                actor: key(),
                expected: 1,
                actual: 2,
            },
            CallError::Timeout {
                after: Duration::from_secs(1),
            },
            CallError::OutcomeUnknown {
                command_id: CommandId::from_u128(7),
                reason: "lost".into(),
            },
            CallError::unavailable("down"),
            CallError::Codec {
                what: "reply".into(),
                reason: "bad".into(),
            },
            CallError::InvalidName(NameError {
                what: NameKind::ActorId,
                value: String::new(),
                reason: "empty".into(),
            }),
            CallError::UnknownKind {
                kind: "other".into(),
            },
            CallError::WrongNamespace {
                expected: "a".into(),
                found: "b".into(),
            },
            CallError::HandlerPanicked {
                actor: key(),
                message: "boom".into(),
            },
            CallError::ActivationFailed {
                actor: key(),
                reason: "damaged".into(),
            },
            CallError::CallCycle {
                chain: "a -> b -> a".into(),
            },
            CallError::Deadlock {
                chain: "b -> a".into(),
            },
            CallError::TooLarge { size: 2, limit: 1 },
            CallError::MailboxFull { actor: key() },
            CallError::Unbound {
                actor: key(),
                reason: "no runtime".into(),
            },
            CallError::StoreRefused {
                reason: "unsupported".into(),
            },
            CallError::Shutdown,
        ];
        all.into_iter()
            .map(|e| {
                let promised = match &e {
                    // Nothing was applied, and trying again can succeed.
                    CallError::VersionConflict { .. }
                    | CallError::Timeout { .. }
                    | CallError::Unavailable { .. }
                    | CallError::Deadlock { .. }
                    | CallError::MailboxFull { .. } => RetrySafety::Safe,
                    // It may have been applied: only the same command id is safe.
                    CallError::OutcomeUnknown { .. } => RetrySafety::SameCommandId,
                    // Nothing was applied, and the same command fails the same way.
                    CallError::Codec { .. }
                    | CallError::InvalidName(_)
                    | CallError::UnknownKind { .. }
                    | CallError::WrongNamespace { .. }
                    | CallError::HandlerPanicked { .. }
                    | CallError::ActivationFailed { .. }
                    | CallError::CallCycle { .. }
                    | CallError::TooLarge { .. }
                    | CallError::Unbound { .. }
                    | CallError::StoreRefused { .. }
                    | CallError::Shutdown => RetrySafety::Pointless,
                };
                (e, promised)
            })
            .collect()
    }

    #[test]
    fn retry_safety_is_pinned_for_every_variant() {
        let all = every_variant();
        assert_eq!(all.len(), 17, "every variant is listed once");
        for (error, promised) in all {
            assert_eq!(error.retry_safety(), promised, "{error}");
            // As an ask error, and forwarded as another actor's failure, it promises the same.
            let ask: AskError<String> = error.clone().into();
            assert_eq!(ask.retry_safety(), promised, "{ask}");
            let mapped = ask.map_rejection(|e| e.len());
            assert_eq!(mapped.retry_safety(), promised, "{mapped}");
            assert_eq!(mapped.call_error(), Some(&error));
        }
        let rejected: AskError<String> = AskError::Rejected("no".into());
        assert_eq!(rejected.retry_safety(), RetrySafety::Pointless);
        assert_eq!(rejected.map_rejection(|e| e.len()).rejection(), Some(&2));
    }

    #[test]
    fn every_call_error_travels_over_the_wire_as_is() {
        for (error, _) in every_variant() {
            let bytes = crate::wire::codec::encode("call error", &error).expect("encodes");
            let back: CallError =
                crate::wire::codec::decode("call error", &bytes).expect("decodes");
            assert_eq!(back, error);
        }
    }

    #[test]
    fn only_a_rejection_carries_the_actors_error() {
        let rejected: AskError<String> = AskError::Rejected("no".into());
        assert!(rejected.rejection().is_some() && rejected.call_error().is_none());
        for (error, _) in every_variant() {
            let ask: AskError<String> = error.into();
            assert!(
                ask.rejection().is_none() && ask.call_error().is_some(),
                "{ask}"
            );
        }
    }
}
