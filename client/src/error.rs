//! The client's error type.

use tonic::Code;

/// A shorthand for `Result<T, herald_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a client call.
///
/// Errors that come from the broker keep the gRPC status code (see [`Error::code`]) and
/// the broker's message. The most common codes have their own variant so they can be
/// matched directly; any other code is [`Error::Status`].
///
/// ```
/// use herald_client::Error;
///
/// let error = Error::from(tonic::Status::not_found("topic \"orders\" does not exist"));
/// assert!(matches!(error, Error::NotFound(_)));
/// assert_eq!(error.code(), Some(tonic::Code::NotFound));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `INVALID_ARGUMENT`: a bad name, a bad setting or a malformed batch.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `NOT_FOUND`: the topic, partition or group does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// `ALREADY_EXISTS`: the topic or group already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// `OUT_OF_RANGE`: an offset outside a partition.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// `RESOURCE_EXHAUSTED`: a size limit or backpressure.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// `FAILED_PRECONDITION`: a valid request the current state does not allow.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// `UNAVAILABLE`: the broker is shutting down or cannot be reached. The producer
    /// retries these itself before reporting them.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// `UNAUTHENTICATED`: the broker has authentication on and the call carried no
    /// credential it accepts (see [`crate::ClientBuilder::token`]).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// `PERMISSION_DENIED`: the caller's principal may not do this; the message names the
    /// operation and the resource.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Any other gRPC status.
    #[error("broker error ({code:?}): {message}")]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// The connection could not be set up (bad address, refused, TLS...).
    #[error("transport error: {0}")]
    Transport(String),
    /// A call did not finish within the client's request timeout.
    #[error("request timed out")]
    Timeout,
    /// The producer was closed, or the consumer's subscription ended (or their background
    /// task ended), before the call finished.
    #[error("the producer or subscription is closed")]
    Closed,
    /// The broker sent a reply this client does not understand.
    #[error("unexpected reply from the broker: {0}")]
    Protocol(String),
}

impl Error {
    /// The gRPC status code of an error that came from (or stands for) a gRPC status;
    /// `None` for client-side errors such as [`Error::Closed`].
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Status { code, .. } => *code,
            Error::Timeout => Code::DeadlineExceeded,
            Error::Transport(_) | Error::Closed | Error::Protocol(_) => return None,
        })
    }

    /// The canonical name of [`Error::code`] (e.g. `"NOT_FOUND"`), for messages and logs
    /// that show codes as gRPC tools do; `None` when [`Error::code`] is `None`.
    ///
    /// ```
    /// use herald_client::Error;
    /// let error = Error::from(tonic::Status::out_of_range("offset 99 is out of range"));
    /// assert_eq!(error.code_name(), Some("OUT_OF_RANGE"));
    /// assert_eq!(error.message(), "offset 99 is out of range");
    /// ```
    pub fn code_name(&self) -> Option<&'static str> {
        self.code().map(code_name)
    }

    /// The error's message without its kind: the broker's status message for an error
    /// that came from the broker, else the client's own description.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(message)
            | Error::NotFound(message)
            | Error::AlreadyExists(message)
            | Error::OutOfRange(message)
            | Error::ResourceExhausted(message)
            | Error::FailedPrecondition(message)
            | Error::Unavailable(message)
            | Error::Unauthenticated(message)
            | Error::PermissionDenied(message)
            | Error::Status { message, .. }
            | Error::Transport(message)
            | Error::Protocol(message) => message,
            Error::Timeout => "request timed out",
            Error::Closed => "the producer or subscription is closed",
        }
    }

    /// Whether retrying the same request later may succeed (`UNAVAILABLE`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// Builds an error from a gRPC status code number and message, as carried in a
    /// streamed reply's `Error`.
    pub fn from_code(code: i32, message: impl Into<String>) -> Error {
        Error::from(tonic::Status::new(Code::from(code), message.into()))
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Error {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::OutOfRange => Error::OutOfRange(message),
            Code::ResourceExhausted => Error::ResourceExhausted(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            code => Error::Status { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Error {
        // The transport error's Display is terse; its source chain says what failed.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Transport(message)
    }
}

/// The canonical name of a gRPC status code, as the gRPC specification spells it
/// (`NOT_FOUND`, `RESOURCE_EXHAUSTED`...).
///
/// ```
/// assert_eq!(herald_client::code_name(tonic::Code::NotFound), "NOT_FOUND");
/// ```
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
