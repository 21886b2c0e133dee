//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::error::BrokerError;
use crate::storage::StorageError;

/// Longest status message sent, in bytes. Messages name the input they refuse, cut to a
/// prefix where they are written (`topic::shown`); this is the backstop for any that is
/// not, as the message travels in an HTTP/2 header that clients cap (tonic at 8 KiB of
/// headers, grpc-go at 16 KiB).
const MESSAGE_MAX_BYTES: usize = 1024;

impl From<BrokerError> for Status {
    fn from(error: BrokerError) -> Status {
        let status = status_of(error);
        if status.message().len() <= MESSAGE_MAX_BYTES {
            return status;
        }
        let message = status.message();
        let mut cut = MESSAGE_MAX_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        Status::new(
            status.code(),
            format!(
                "{}... (message cut from {} bytes)",
                &message[..cut],
                message.len()
            ),
        )
    }
}

fn status_of(error: BrokerError) -> Status {
    {
        match error {
            BrokerError::InvalidArgument(m) => Status::invalid_argument(m),
            BrokerError::NotFound(m) => Status::not_found(m),
            BrokerError::AlreadyExists(m) => Status::already_exists(m),
            BrokerError::OutOfRange(m) => Status::out_of_range(m),
            BrokerError::ResourceExhausted(m) => Status::resource_exhausted(m),
            BrokerError::FailedPrecondition(m) => Status::failed_precondition(m),
            BrokerError::Unavailable(m) => Status::unavailable(m),
            BrokerError::Storage(e) => storage_status(e),
            e @ BrokerError::Io { .. } => {
                tracing::error!(error = %e, "I/O error serving a request");
                Status::internal(e.to_string())
            }
        }
    }
}

fn storage_status(error: StorageError) -> Status {
    let message = error.to_string();
    match error {
        StorageError::InvalidBatch(_) | StorageError::InvalidConfig(_) => {
            Status::invalid_argument(message)
        }
        StorageError::BatchTooLarge { .. }
        | StorageError::QueueFull
        | StorageError::DiskFull { .. } => Status::resource_exhausted(message),
        StorageError::OffsetOutOfRange { .. } => Status::out_of_range(message),
        StorageError::WriterStopped => Status::unavailable(message),
        // ABORTED is gRPC's code for a failed sequencer check: the client renumbers.
        StorageError::OutOfOrderSequence { .. } => Status::aborted(message),
        StorageError::ProducerFenced { .. } => Status::failed_precondition(message),
        StorageError::Corrupt { .. } | StorageError::DamagedBatch { .. } => {
            tracing::error!(%message, "corrupt log");
            Status::data_loss(message)
        }
        StorageError::Poisoned { .. }
        | StorageError::Io { .. }
        | StorageError::NotADirectory { .. }
        | StorageError::NotAPartitionLog { .. } => {
            tracing::error!(%message, "storage error serving a request");
            Status::internal(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let mut cases: Vec<(BrokerError, Code)> = vec![
            (BrokerError::NotFound("t".into()), Code::NotFound),
            (StorageError::QueueFull.into(), Code::ResourceExhausted),
            (StorageError::WriterStopped.into(), Code::Unavailable),
            (
                StorageError::OffsetOutOfRange {
                    offset: 9,
                    start: 0,
                    end: 1,
                }
                .into(),
                Code::OutOfRange,
            ),
            (
                StorageError::InvalidBatch(crate::storage::BatchError::Empty).into(),
                Code::InvalidArgument,
            ),
        ];
        cases.push((
            StorageError::DamagedBatch {
                log: "topic t partition 0".into(),
                offset: 7,
                path: "/d/t/0/00000000000000000000.log".into(),
                position: 40,
                reason: "CRC mismatch".into(),
            }
            .into(),
            Code::DataLoss,
        ));
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let status = Status::from(BrokerError::NotFound("ü".repeat(5000)));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().len() < MESSAGE_MAX_BYTES + 64);
        assert!(status.message().ends_with("(message cut from 10000 bytes)"));
    }
}
