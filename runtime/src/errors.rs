//! Errors of the actor operations: ask, tell, start.
//!
//! Each operation family has its own type; store and name errors live with
//! [their](crate::store::StoreError) [modules](crate::names::NameError). Every ask error answers
//! the question a caller has to decide on — *may I retry, and how?* — through
//! [`AskError::retry_safety`]:
//!
//! | error | was the command applied? | retry |
//! |---|---|---|
//! | [`Rejected`](AskError::Rejected) | no, the actor said no | pointless until something changes |
//! | [`VersionConflict`](AskError::VersionConflict) | no | safe |
//! | [`Timeout`](AskError::Timeout) | no, it never reached the actor | safe |
//! | [`OutcomeUnknown`](AskError::OutcomeUnknown) | maybe | only with the same command id |
//! | [`Unavailable`](AskError::Unavailable) | no | safe, after a pause |
//! | [`Deadlock`](AskError::Deadlock) | no | safe, once the other command is done |
//! | [`ActivationFailed`](AskError::ActivationFailed) | no: the actor's history is damaged | pointless until repaired |
//! | [`StoreRefused`](AskError::StoreRefused) | no | pointless: the store cannot do it as configured |
//! | the others | no | pointless: fix the input or the code |
//!
//! A turn that asked (or told) other actors and then failed — for any reason but its own
//! rejection — has changed them already: its error is [`OutcomeUnknown`](AskError::OutcomeUnknown)
//! — retry only with the same command id, so the children are deduplicated. (A handler that
//! rejects after asking made that choice itself; its `Rejected` stands.) Even then the retried handler decides again on the state
//! it finds; to change several actors atomically with one decision, use durable effects
//! ([`Effect::send`](crate::Effect::send)).

use std::time::Duration;

use crate::names::{ActorKey, NameError};
use crate::store::StoreError;
use crate::wire::{CodecError, CommandId};

/// How a caller may retry after an [`AskError`].
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

/// Why an ask did not produce a reply. `E` is the actor's own error type.
#[derive(Debug, thiserror::Error)]
pub enum AskError<E> {
    /// The actor rejected the command (its handler returned an error). Nothing was stored.
    #[error("rejected: {0}")]
    Rejected(E),
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
    /// The store (or, in a cluster, NATS) cannot be reached. Nothing was applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A command, event or reply could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// A name in the request is invalid.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The actor's kind is not registered with the runtime that received the command.
    #[error("actor kind {kind:?} is not registered in this runtime")]
    UnknownKind {
        /// The kind asked for.
        kind: String,
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
    /// The commit is larger than the store accepts. Nothing was stored.
    #[error("commit of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
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
    /// The runtime is shutting down.
    #[error("runtime is shut down")]
    Shutdown,
}

impl<E> AskError<E> {
    /// How the caller may retry. See the [module table](self).
    pub fn retry_safety(&self) -> RetrySafety {
        match self {
            AskError::VersionConflict { .. }
            | AskError::Timeout { .. }
            | AskError::Unavailable(_)
            | AskError::Deadlock { .. } => RetrySafety::Safe,
            AskError::OutcomeUnknown { .. } => RetrySafety::SameCommandId,
            AskError::Rejected(_)
            | AskError::Codec(_)
            | AskError::InvalidName(_)
            | AskError::UnknownKind { .. }
            | AskError::HandlerPanicked { .. }
            | AskError::ActivationFailed { .. }
            | AskError::StoreRefused { .. }
            | AskError::CallCycle { .. }
            | AskError::TooLarge { .. }
            | AskError::Unbound { .. }
            | AskError::Shutdown => RetrySafety::Pointless,
        }
    }

    /// The actor's own error, if this is a rejection.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            AskError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Maps the actor error type (used when one actor forwards another's failure).
    pub fn map_rejection<F>(self, f: impl FnOnce(E) -> F) -> AskError<F> {
        match self {
            AskError::Rejected(e) => AskError::Rejected(f(e)),
            AskError::VersionConflict {
                actor,
                expected,
                actual,
            } => AskError::VersionConflict {
                actor,
                expected,
                actual,
            },
            AskError::Timeout { after } => AskError::Timeout { after },
            AskError::OutcomeUnknown { command_id, reason } => {
                AskError::OutcomeUnknown { command_id, reason }
            }
            AskError::Unavailable(s) => AskError::Unavailable(s),
            AskError::Codec(e) => AskError::Codec(e),
            AskError::InvalidName(e) => AskError::InvalidName(e),
            AskError::UnknownKind { kind } => AskError::UnknownKind { kind },
            AskError::HandlerPanicked { actor, message } => {
                AskError::HandlerPanicked { actor, message }
            }
            AskError::ActivationFailed { actor, reason } => {
                AskError::ActivationFailed { actor, reason }
            }
            AskError::CallCycle { chain } => AskError::CallCycle { chain },
            AskError::Deadlock { chain } => AskError::Deadlock { chain },
            AskError::TooLarge { size, limit } => AskError::TooLarge { size, limit },
            AskError::Unbound { actor, reason } => AskError::Unbound { actor, reason },
            AskError::StoreRefused { reason } => AskError::StoreRefused { reason },
            AskError::Shutdown => AskError::Shutdown,
        }
    }

    /// Converts a store error met while persisting command `command_id`.
    pub(crate) fn from_store(err: StoreError, command_id: CommandId) -> Self {
        match err {
            StoreError::VersionConflict {
                actor,
                expected,
                actual,
            } => AskError::VersionConflict {
                actor,
                expected,
                actual,
            },
            StoreError::Unavailable(s) => AskError::Unavailable(s),
            StoreError::Closed => AskError::Shutdown,
            StoreError::OutcomeUnknown(reason) => AskError::OutcomeUnknown { command_id, reason },
            StoreError::TooLarge { size, limit } => AskError::TooLarge { size, limit },
            StoreError::Codec(e) => AskError::Codec(e),
            StoreError::InvalidName(e) => AskError::InvalidName(e),
            other @ (StoreError::Corrupt { .. }
            | StoreError::WrongNamespace { .. }
            | StoreError::ServerTooOld { .. }
            | StoreError::InvalidCommit(_)
            | StoreError::Unsupported(_)
            | StoreError::Failed(_)) => AskError::StoreRefused {
                reason: other.to_string(),
            },
        }
    }
}

/// Why a tell was not queued. A tell is fire-and-forget: once queued, its outcome is not
/// reported (at-most-once).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TellError {
    /// The actor's mailbox is full; the command was dropped.
    #[error("mailbox of {actor} is full")]
    MailboxFull {
        /// The actor.
        actor: ActorKey,
    },
    /// The actor's kind is not registered with this runtime.
    #[error("actor kind {kind:?} is not registered in this runtime")]
    UnknownKind {
        /// The kind.
        kind: String,
    },
    /// The ref belongs to no runtime in this process.
    #[error("actor ref {actor} is not bound to a runtime: {reason}")]
    Unbound {
        /// The actor.
        actor: ActorKey,
        /// Why.
        reason: String,
    },
    /// The runtime is shutting down.
    #[error("runtime is shut down")]
    Shutdown,
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
    fn every_variant() -> Vec<(AskError<String>, RetrySafety)> {
        let all = vec![
            AskError::Rejected("no".to_owned()),
            AskError::VersionConflict {
                actor: key(),
                expected: 1,
                actual: 2,
            },
            AskError::Timeout {
                after: Duration::from_secs(1),
            },
            AskError::OutcomeUnknown {
                command_id: CommandId::from_u128(7),
                reason: "lost".into(),
            },
            AskError::Unavailable("down".into()),
            AskError::Codec(CodecError {
                what: "reply",
                reason: "bad".into(),
            }),
            AskError::InvalidName(NameError {
                what: NameKind::ActorId,
                value: String::new(),
                reason: "empty".into(),
            }),
            AskError::UnknownKind {
                kind: "other".into(),
            },
            AskError::HandlerPanicked {
                actor: key(),
                message: "boom".into(),
            },
            AskError::ActivationFailed {
                actor: key(),
                reason: "damaged".into(),
            },
            AskError::CallCycle {
                chain: "a -> b -> a".into(),
            },
            AskError::Deadlock {
                chain: "b -> a".into(),
            },
            AskError::TooLarge { size: 2, limit: 1 },
            AskError::Unbound {
                actor: key(),
                reason: "no runtime".into(),
            },
            AskError::StoreRefused {
                reason: "unsupported".into(),
            },
            AskError::Shutdown,
        ];
        all.into_iter()
            .map(|e| {
                let promised = match &e {
                    // Nothing was applied, and trying again can succeed.
                    AskError::VersionConflict { .. }
                    | AskError::Timeout { .. }
                    | AskError::Unavailable(_)
                    | AskError::Deadlock { .. } => RetrySafety::Safe,
                    // It may have been applied: only the same command id is safe.
                    AskError::OutcomeUnknown { .. } => RetrySafety::SameCommandId,
                    // Nothing was applied, and the same command fails the same way.
                    AskError::Rejected(_)
                    | AskError::Codec(_)
                    | AskError::InvalidName(_)
                    | AskError::UnknownKind { .. }
                    | AskError::HandlerPanicked { .. }
                    | AskError::ActivationFailed { .. }
                    | AskError::CallCycle { .. }
                    | AskError::TooLarge { .. }
                    | AskError::Unbound { .. }
                    | AskError::StoreRefused { .. }
                    | AskError::Shutdown => RetrySafety::Pointless,
                };
                (e, promised)
            })
            .collect()
    }

    #[test]
    fn retry_safety_is_pinned_for_every_variant() {
        let all = every_variant();
        assert_eq!(all.len(), 16, "every variant is listed once");
        for (error, promised) in all {
            assert_eq!(error.retry_safety(), promised, "{error}");
            // Forwarding another actor's failure keeps what a caller may do.
            let mapped = error.map_rejection(|e| e.len());
            assert_eq!(mapped.retry_safety(), promised, "{mapped}");
        }
    }

    #[test]
    fn only_a_rejection_carries_the_actors_error() {
        for (error, _) in every_variant() {
            let is_rejection = matches!(error, AskError::Rejected(_));
            assert_eq!(error.rejection().is_some(), is_rejection, "{error}");
        }
    }
}
