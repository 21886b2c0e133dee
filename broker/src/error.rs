//! The broker layer's error type. Each variant says which gRPC status it becomes; the
//! conversion itself lives in `server::status`, the only place that knows tonic.

use thiserror::Error;

use crate::storage::StorageError;

#[derive(Debug, Error)]
pub enum BrokerError {
    /// Malformed input: a bad name, bad settings, a malformed batch.
    #[error("{0}")]
    InvalidArgument(String),
    /// A topic or partition that does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// An offset outside the log.
    #[error("{0}")]
    OutOfRange(String),
    /// A size or count limit, or backpressure.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request names something the broker holds but cannot serve in its current
    /// state: something the operator must fix first, e.g. a topic or group whose files are
    /// damaged and were not loaded.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The broker is shutting down.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl BrokerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io {
            context: context.into(),
            cause: source,
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
