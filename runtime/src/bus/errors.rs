//! Errors of the bus, one type per operation family.

use super::filter::IdPatternError;
use super::pattern::PatternError;
use crate::names::{NameError, Namespace};
use crate::store::StoreError;

/// Why [`Bus::publish`](super::Bus::publish) refused an event. Nothing was delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The envelope belongs to another namespace than the one it was published to.
    #[error("event of namespace {event} published to namespace {target}")]
    NamespaceMismatch {
        /// The namespace given to `publish`.
        target: Namespace,
        /// The envelope's namespace (or its actor's, when they differ).
        event: Namespace,
    },
}

/// Why a live subscription was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The pattern does not parse.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// An id pattern of the filter does not parse.
    #[error(transparent)]
    IdPattern(#[from] IdPatternError),
    /// The pattern's namespace token is a wildcard, and the call did not opt in to seeing
    /// other namespaces.
    #[error(
        "pattern {pattern:?} spans namespaces: name one namespace, or opt in with subscribe_all_namespaces"
    )]
    CrossNamespace {
        /// The pattern.
        pattern: String,
    },
    /// The NATS side of the bus could not subscribe (not connected). Nothing was subscribed.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// [`Bus::connect`](super::Bus::connect) could not connect to NATS.
    #[error(transparent)]
    Connect(#[from] crate::connection::ConnectError),
}

/// Why a durable subscription failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// The pattern does not parse.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The durable name is invalid (same rules as a namespace).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// Durable subscriptions read one namespace's stored events: the pattern must name its
    /// namespace and be able to match `<ns>.events...` topics.
    #[error("pattern {pattern:?} cannot be durable: {reason}")]
    NotDurable {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// This bus has nowhere to keep a durable position: durable subscriptions need the NATS
    /// bus with the namespace's events in JetStream. (Projections work on every store.)
    #[error("durable subscriptions are not supported here: {0}")]
    Unsupported(String),
    /// The namespace has no event stream (`<ns>_events`) in JetStream.
    #[error("no event stream for namespace {namespace} (is its runtime on JetStream?)")]
    NoEventStream {
        /// The namespace.
        namespace: String,
    },
    /// A durable subscription of that name exists with another pattern.
    #[error(
        "durable {name:?} exists with pattern {existing:?}, not {requested:?}; delete it first"
    )]
    Conflict {
        /// The durable name.
        name: String,
        /// Its stored pattern.
        existing: String,
        /// The pattern asked for.
        requested: String,
    },
    /// A stored commit does not decode. The subscription stops at it rather than skip it.
    #[error("stored commit at position {position} is unreadable: {reason}")]
    Corrupt {
        /// Its position.
        position: u64,
        /// Why.
        reason: String,
    },
    /// The store or the server cannot be reached. Nothing was acknowledged.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for DurableError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt {
                actor,
                position,
                reason,
            } => DurableError::Corrupt {
                position,
                reason: format!("{actor}: {reason}"),
            },
            StoreError::Unsupported(reason) => DurableError::Unsupported(reason),
            other => DurableError::Unavailable(other.to_string()),
        }
    }
}

/// Why a projection could not start, or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the events failed (see [`DurableError`]).
    #[error(transparent)]
    Source(#[from] DurableError),
    /// The read model failed (its `offset`, `apply` or `clear` returned an error). The
    /// projection stopped without acknowledging the event; restart it to retry.
    #[error("read model failed: {0}")]
    ReadModel(String),
    /// The projection is not running (stopped, or failed earlier: see its status).
    #[error("projection {0:?} is not running")]
    NotRunning(String),
    /// It did not catch up within the time given.
    #[error("projection did not catch up within {0:?}")]
    Timeout(std::time::Duration),
}

impl From<PatternError> for ProjectionError {
    fn from(e: PatternError) -> Self {
        ProjectionError::Source(DurableError::Pattern(e))
    }
}

impl From<NameError> for ProjectionError {
    fn from(e: NameError) -> Self {
        ProjectionError::Source(DurableError::InvalidName(e))
    }
}
