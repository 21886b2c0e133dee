//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::error::BrokerError;
use crate::group::GroupError;
use crate::storage::StorageError;

/// Longest status message sent, in bytes. Messages name the input they refuse, cut to a
/// prefix where they are written (`error::shown`); this is the backstop for any that is
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

/// The status a stream ends with when its responses simply ran out.
pub(super) fn stream_done() -> Status {
    Status::ok("")
}

fn status_of(error: BrokerError) -> Status {
    let message = error.to_string();
    match error {
        BrokerError::TopicNotFound { .. }
        | BrokerError::PartitionNotFound { .. }
        | BrokerError::GroupNotFound { .. }
        | BrokerError::DeadLetterTopicNotFound { .. }
        | BrokerError::TopicDeleted { .. }
        | BrokerError::GroupDeleted { .. } => Status::not_found(message),
        BrokerError::TopicExists { .. } | BrokerError::GroupExists { .. } => {
            Status::already_exists(message)
        }
        BrokerError::InvalidName { .. }
        | BrokerError::InvalidSettings(_)
        | BrokerError::Config(_)
        | BrokerError::InvalidRequest(_)
        | BrokerError::MalformedBatch(_)
        | BrokerError::UnbuildableBatch(_)
        | BrokerError::NoJoin { .. } => Status::invalid_argument(message),
        BrokerError::OffsetOutOfRange { .. } => Status::out_of_range(message),
        BrokerError::LimitExceeded { .. } => Status::resource_exhausted(message),
        BrokerError::TopicDamaged { .. }
        | BrokerError::GroupDamaged { .. }
        | BrokerError::TopicDirectoryExists { .. }
        | BrokerError::NoDeadLetterTopic { .. }
        | BrokerError::ProducersDamaged { .. }
        | BrokerError::NotPartitionHome { .. } => Status::failed_precondition(message),
        BrokerError::ClusterUnavailable(_)
        | BrokerError::ShuttingDown
        | BrokerError::PartitionClosing
        | BrokerError::GroupRestarted { .. } => Status::unavailable(message),
        BrokerError::PublishStreamIdle { .. } => Status::deadline_exceeded(message),
        BrokerError::CompressionUnsupported { .. } => Status::unimplemented(message),
        BrokerError::Unauthenticated { .. } => Status::unauthenticated(message),
        BrokerError::PermissionDenied { .. } => Status::permission_denied(message),
        BrokerError::Group(e) => group_status(e, message),
        BrokerError::Storage(e) => storage_status(e),
        BrokerError::TaskFailed { .. } | BrokerError::Io { .. } => {
            tracing::error!(error = %message, "broker error serving a request");
            Status::internal(message)
        }
    }
}

/// The group machine's refusals are the client's doing (a bad ack id, bad settings), but
/// for a full group and ids the group does not hold.
fn group_status(error: GroupError, message: String) -> Status {
    match error {
        GroupError::TooManyMembers { .. } => Status::resource_exhausted(message),
        GroupError::UnknownPartition { .. } | GroupError::UnknownMember(_) => {
            Status::not_found(message)
        }
        GroupError::MemberExists(_)
        | GroupError::MalformedAckId
        | GroupError::UnknownAckId
        | GroupError::InvalidSettings(_)
        | GroupError::InvalidLimits(_)
        | GroupError::InvalidPartitionCount { .. }
        | GroupError::OfferGap { .. }
        | GroupError::OfferNotContiguous { .. }
        | GroupError::Snapshot(_) => Status::invalid_argument(message),
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
    use std::path::PathBuf;
    use std::time::Duration;

    use tonic::Code;

    use crate::error::Limit;
    use crate::group::{MemberId, PartitionId, SnapshotError};
    use crate::storage::BatchError;

    /// A `JoinError` as a failed blocking task returns it.
    async fn join_error() -> tokio::task::JoinError {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        task.await.unwrap_err()
    }

    fn io_error() -> std::io::Error {
        std::io::Error::other("boom")
    }

    /// Each variant's place in the table below: a variant added to an enum does not
    /// compile here until the table says its code.
    fn broker_variant(error: &BrokerError) -> usize {
        match error {
            BrokerError::TopicNotFound { .. } => 0,
            BrokerError::PartitionNotFound { .. } => 1,
            BrokerError::GroupNotFound { .. } => 2,
            BrokerError::DeadLetterTopicNotFound { .. } => 3,
            BrokerError::TopicDeleted { .. } => 4,
            BrokerError::GroupDeleted { .. } => 5,
            BrokerError::TopicExists { .. } => 6,
            BrokerError::GroupExists { .. } => 7,
            BrokerError::InvalidName { .. } => 8,
            BrokerError::InvalidSettings(_) => 9,
            BrokerError::Config(_) => 10,
            BrokerError::InvalidRequest(_) => 11,
            BrokerError::MalformedBatch(_) => 12,
            BrokerError::UnbuildableBatch(_) => 13,
            BrokerError::NoJoin { .. } => 14,
            BrokerError::OffsetOutOfRange { .. } => 15,
            BrokerError::LimitExceeded { .. } => 16,
            BrokerError::TopicDamaged { .. } => 17,
            BrokerError::GroupDamaged { .. } => 18,
            BrokerError::TopicDirectoryExists { .. } => 19,
            BrokerError::NoDeadLetterTopic { .. } => 20,
            BrokerError::ShuttingDown => 21,
            BrokerError::PartitionClosing => 22,
            BrokerError::GroupRestarted { .. } => 23,
            BrokerError::PublishStreamIdle { .. } => 24,
            BrokerError::CompressionUnsupported { .. } => 25,
            BrokerError::Group(_) => 26,
            BrokerError::Storage(_) => 27,
            BrokerError::TaskFailed { .. } => 28,
            BrokerError::Io { .. } => 29,
            BrokerError::ProducersDamaged { .. } => 30,
            BrokerError::Unauthenticated { .. } => 31,
            BrokerError::PermissionDenied { .. } => 32,
            BrokerError::NotPartitionHome { .. } => 33,
            BrokerError::ClusterUnavailable(_) => 34,
        }
    }
    const BROKER_VARIANTS: usize = 35;

    fn group_variant(error: &GroupError) -> usize {
        match error {
            GroupError::UnknownMember(_) => 0,
            GroupError::MemberExists(_) => 1,
            GroupError::TooManyMembers { .. } => 2,
            GroupError::UnknownPartition { .. } => 3,
            GroupError::MalformedAckId => 4,
            GroupError::UnknownAckId => 5,
            GroupError::InvalidSettings(_) => 6,
            GroupError::InvalidLimits(_) => 7,
            GroupError::InvalidPartitionCount { .. } => 8,
            GroupError::OfferGap { .. } => 9,
            GroupError::OfferNotContiguous { .. } => 10,
            GroupError::Snapshot(_) => 11,
        }
    }
    const GROUP_VARIANTS: usize = 12;

    fn storage_variant(error: &StorageError) -> usize {
        match error {
            StorageError::Io { .. } => 0,
            StorageError::DiskFull { .. } => 1,
            StorageError::NotADirectory { .. } => 2,
            StorageError::NotAPartitionLog { .. } => 3,
            StorageError::Corrupt { .. } => 4,
            StorageError::DamagedBatch { .. } => 5,
            StorageError::InvalidBatch(_) => 6,
            StorageError::BatchTooLarge { .. } => 7,
            StorageError::OffsetOutOfRange { .. } => 8,
            StorageError::QueueFull => 9,
            StorageError::InvalidConfig(_) => 10,
            StorageError::Poisoned { .. } => 11,
            StorageError::WriterStopped => 12,
            StorageError::OutOfOrderSequence { .. } => 13,
            StorageError::ProducerFenced { .. } => 14,
        }
    }
    const STORAGE_VARIANTS: usize = 15;

    fn topic(name: &str) -> String {
        name.to_owned()
    }

    /// Every error the broker answers with: its code, and for the broker's own variants
    /// the exact message (clients and the integration tests read these).
    async fn table() -> Vec<(BrokerError, Code, Option<String>)> {
        let cancelled = join_error().await;
        let cancelled_message = format!("admin task failed: {cancelled}");
        let limit = |limit, requested, max| BrokerError::LimitExceeded {
            limit,
            requested,
            max,
        };
        let own: Vec<(BrokerError, Code, &str)> = vec![
            (
                BrokerError::TopicNotFound { topic: topic("t") },
                Code::NotFound,
                "topic \"t\" does not exist",
            ),
            (
                BrokerError::PartitionNotFound {
                    topic: topic("t"),
                    partition: 7,
                    partitions: 3,
                },
                Code::NotFound,
                "topic \"t\" has no partition 7 (it has 3)",
            ),
            (
                BrokerError::GroupNotFound {
                    topic: topic("t"),
                    group: "g".into(),
                    topic_deleted: false,
                },
                Code::NotFound,
                "group \"g\" of topic \"t\" does not exist",
            ),
            (
                BrokerError::GroupNotFound {
                    topic: topic("t"),
                    group: "g".into(),
                    topic_deleted: true,
                },
                Code::NotFound,
                "group \"g\" of topic \"t\" does not exist (its topic was deleted)",
            ),
            (
                BrokerError::DeadLetterTopicNotFound { topic: topic("d") },
                Code::NotFound,
                "dead_letter_topic \"d\" does not exist",
            ),
            (
                BrokerError::TopicDeleted { topic: topic("t") },
                Code::NotFound,
                "topic \"t\" was deleted",
            ),
            (
                BrokerError::GroupDeleted {
                    topic: topic("t"),
                    group: "g".into(),
                },
                Code::NotFound,
                "group \"g\" of topic \"t\" was deleted",
            ),
            (
                BrokerError::TopicExists { topic: topic("t") },
                Code::AlreadyExists,
                "topic \"t\" already exists",
            ),
            (
                BrokerError::GroupExists {
                    topic: topic("t"),
                    group: "g".into(),
                },
                Code::AlreadyExists,
                "group \"g\" of topic \"t\" already exists",
            ),
            (
                BrokerError::InvalidName {
                    what: "topic",
                    name: "a/b".into(),
                    reason: "'/' is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')".into(),
                },
                Code::InvalidArgument,
                "invalid topic name \"a/b\": '/' is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')",
            ),
            (
                BrokerError::InvalidSettings("ack_deadline_ms must be at least 1".into()),
                Code::InvalidArgument,
                "ack_deadline_ms must be at least 1",
            ),
            (
                crate::config::ConfigError::Invalid("max_topics must be at least 1".into()).into(),
                Code::InvalidArgument,
                "invalid configuration: max_topics must be at least 1",
            ),
            (
                BrokerError::InvalidRequest("the publish carries no records".into()),
                Code::InvalidArgument,
                "the publish carries no records",
            ),
            (
                BrokerError::MalformedBatch(BatchError::Empty),
                Code::InvalidArgument,
                "malformed storage batch: batch has no records",
            ),
            (
                BrokerError::UnbuildableBatch(BatchError::Empty),
                Code::InvalidArgument,
                "cannot build the batch: batch has no records",
            ),
            (
                BrokerError::NoJoin {
                    idle: Duration::from_secs(300),
                },
                Code::InvalidArgument,
                "no Join within 300000 ms (idle_stream_timeout_ms)",
            ),
            (
                BrokerError::OffsetOutOfRange {
                    offset: 9,
                    start: 2,
                    end: 5,
                    partition: None,
                },
                Code::OutOfRange,
                "offset 9 is out of range: the partition holds offsets 2..5",
            ),
            (
                BrokerError::OffsetOutOfRange {
                    offset: 9,
                    start: 2,
                    end: 5,
                    partition: Some(1),
                },
                Code::OutOfRange,
                "offset 9 is out of range: partition 1 holds offsets 2..5",
            ),
            (
                limit(Limit::BatchBytes, 2000, 1000),
                Code::ResourceExhausted,
                "the batch is 2000 bytes; the limit is 1000 (max_batch_bytes)",
            ),
            (
                limit(Limit::BatchRecords, 20, 10),
                Code::ResourceExhausted,
                "the batch holds 20 records; the limit is 10 (max_batch_records)",
            ),
            (
                limit(Limit::MessageBytes { record: None }, 200, 100),
                Code::ResourceExhausted,
                "a record is 200 bytes; the topic's limit is 100 (max_message_bytes)",
            ),
            (
                limit(Limit::MessageBytes { record: Some(3) }, 200, 100),
                Code::ResourceExhausted,
                "record 3 is 200 bytes; the topic's limit is 100 (max_message_bytes)",
            ),
            (
                limit(Limit::RequestBytes, 300_000, 131_072),
                Code::ResourceExhausted,
                "the request is 300000 bytes; the broker accepts at most 131072 bytes per request message (max_batch_bytes plus 64 KiB)",
            ),
            (
                limit(Limit::StreamsPerConnection, 9, 8),
                Code::ResourceExhausted,
                "this connection already has 8 streams open (max_streams_per_connection)",
            ),
            (
                limit(Limit::Topics, 11, 10),
                Code::ResourceExhausted,
                "the broker already holds its maximum of 10 topics",
            ),
            (
                limit(Limit::Partitions { adding: 4 }, 102, 100),
                Code::ResourceExhausted,
                "4 more partitions would exceed the broker's maximum of 100 (it has 98)",
            ),
            (
                limit(Limit::Groups, 10_001, 10_000),
                Code::ResourceExhausted,
                "the broker already holds its maximum of 10000 groups",
            ),
            (
                limit(Limit::NamedProducers, 100_001, 100_000),
                Code::ResourceExhausted,
                "the broker already keeps its maximum of 100000 named producers; use anonymous producers (no name) for short-lived processes",
            ),
            (
                BrokerError::Unauthenticated {
                    reason: "no bearer token or client certificate".into(),
                },
                Code::Unauthenticated,
                "unauthenticated: no bearer token or client certificate",
            ),
            (
                BrokerError::PermissionDenied {
                    principal: "orders".into(),
                    operation: crate::auth::Operation::Publish,
                    resource: crate::auth::Resource::topic("payments").to_string(),
                },
                Code::PermissionDenied,
                "permission denied: publish on topic \"payments\" for principal \"orders\"",
            ),
            (
                BrokerError::ProducersDamaged {
                    path: PathBuf::from("/d/producers.toml"),
                    reason: "checksum mismatch".into(),
                },
                Code::FailedPrecondition,
                "/d/producers.toml is damaged and was not loaded (checksum mismatch); named producers are refused until it is repaired or removed (removing it lets old instances of named producers publish until they are re-initialised)",
            ),
            (
                BrokerError::TopicDamaged {
                    topic: topic("t"),
                    reason: "/d/topics/t/topic.toml is missing".into(),
                },
                Code::FailedPrecondition,
                "topic \"t\" is not loaded because it is damaged (/d/topics/t/topic.toml is missing); its files are kept until an operator repairs or removes them",
            ),
            (
                BrokerError::GroupDamaged {
                    topic: topic("t"),
                    group: "g".into(),
                    reason: "/d/groups/t/g/state: checksum mismatch".into(),
                },
                Code::FailedPrecondition,
                "group \"g\" of topic \"t\" is not loaded because its files are damaged (/d/groups/t/g/state: checksum mismatch); they are kept: restore them, or delete the group to start it again (see README, \"Consumer groups under failure\")",
            ),
            (
                BrokerError::TopicDirectoryExists {
                    topic: topic("t"),
                    path: PathBuf::from("/d/topics/t"),
                },
                Code::FailedPrecondition,
                "/d/topics/t already exists but is not a loaded topic; move it away to create topic \"t\"",
            ),
            (
                BrokerError::NoDeadLetterTopic {
                    topic: topic("t"),
                    group: "g".into(),
                },
                Code::FailedPrecondition,
                "group \"g\" of topic \"t\" has no dead_letter_topic",
            ),
            (
                BrokerError::NotPartitionHome {
                    topic: topic("t"),
                    partition: 2,
                    node: 3,
                    address: "10.0.0.3:50051".into(),
                    this: 1,
                },
                Code::FailedPrecondition,
                "partition 2 of topic \"t\" is served by node 3 at 10.0.0.3:50051, not by this node (1): send its publishes and reads there",
            ),
            (
                BrokerError::ClusterUnavailable("no metadata leader is known".into()),
                Code::Unavailable,
                "no metadata leader is known",
            ),
            (
                BrokerError::ShuttingDown,
                Code::Unavailable,
                "the broker is shutting down",
            ),
            (
                BrokerError::PartitionClosing,
                Code::Unavailable,
                "the partition is closing",
            ),
            (
                BrokerError::GroupRestarted {
                    topic: topic("t"),
                    group: "g".into(),
                },
                Code::Unavailable,
                "group \"g\" of topic \"t\" restarted after an internal error; join again",
            ),
            (
                BrokerError::PublishStreamIdle {
                    idle: Duration::from_millis(1500),
                },
                Code::DeadlineExceeded,
                "no publish for 1500 ms (idle_stream_timeout_ms)",
            ),
            (
                BrokerError::CompressionUnsupported {
                    encoding: "gzip".into(),
                },
                Code::Unimplemented,
                "Content is compressed with `gzip` which isn't supported",
            ),
            (
                BrokerError::TaskFailed {
                    what: "admin task failed",
                    cause: cancelled,
                },
                Code::Internal,
                &cancelled_message,
            ),
            (
                BrokerError::io("creating /d/topics/t", io_error()),
                Code::Internal,
                "creating /d/topics/t: boom",
            ),
        ];
        let member = MemberId(4);
        let partition = PartitionId(2);
        let group: Vec<(GroupError, Code)> = vec![
            (GroupError::UnknownMember(member), Code::NotFound),
            (GroupError::MemberExists(member), Code::InvalidArgument),
            (
                GroupError::TooManyMembers { limit: 100 },
                Code::ResourceExhausted,
            ),
            (
                GroupError::UnknownPartition {
                    partition,
                    count: 2,
                },
                Code::NotFound,
            ),
            (GroupError::MalformedAckId, Code::InvalidArgument),
            (GroupError::UnknownAckId, Code::InvalidArgument),
            (
                GroupError::InvalidSettings("why".into()),
                Code::InvalidArgument,
            ),
            (
                GroupError::InvalidLimits("why".into()),
                Code::InvalidArgument,
            ),
            (
                GroupError::InvalidPartitionCount {
                    count: 0,
                    max: 4096,
                },
                Code::InvalidArgument,
            ),
            (
                GroupError::OfferGap {
                    partition,
                    expected: 1,
                    got: 3,
                },
                Code::InvalidArgument,
            ),
            (
                GroupError::OfferNotContiguous { partition, at: 3 },
                Code::InvalidArgument,
            ),
            (
                GroupError::Snapshot(SnapshotError::Truncated),
                Code::InvalidArgument,
            ),
        ];
        let path = || PathBuf::from("/d/topics/t/0/00000000000000000000.log");
        let storage: Vec<(StorageError, Code)> = vec![
            (
                StorageError::Io {
                    op: "opening",
                    path: path(),
                    cause: io_error(),
                },
                Code::Internal,
            ),
            (
                StorageError::DiskFull {
                    op: "extend",
                    path: path(),
                    cause: io_error(),
                },
                Code::ResourceExhausted,
            ),
            (StorageError::NotADirectory { path: path() }, Code::Internal),
            (
                StorageError::NotAPartitionLog { path: path() },
                Code::Internal,
            ),
            (
                StorageError::Corrupt {
                    path: path(),
                    position: 40,
                    reason: "CRC mismatch".into(),
                },
                Code::DataLoss,
            ),
            (
                StorageError::DamagedBatch {
                    log: "topic t partition 0".into(),
                    offset: 7,
                    path: path(),
                    position: 40,
                    reason: "CRC mismatch".into(),
                },
                Code::DataLoss,
            ),
            (
                StorageError::InvalidBatch(BatchError::Empty),
                Code::InvalidArgument,
            ),
            (
                StorageError::BatchTooLarge {
                    len: 10,
                    segment_bytes: 5,
                },
                Code::ResourceExhausted,
            ),
            (
                StorageError::OffsetOutOfRange {
                    offset: 9,
                    start: 0,
                    end: 1,
                },
                Code::OutOfRange,
            ),
            (StorageError::QueueFull, Code::ResourceExhausted),
            (
                StorageError::InvalidConfig("why".into()),
                Code::InvalidArgument,
            ),
            (
                StorageError::Poisoned {
                    reason: "fsync failed".into(),
                },
                Code::Internal,
            ),
            (StorageError::WriterStopped, Code::Unavailable),
            (
                StorageError::OutOfOrderSequence {
                    producer_id: 7,
                    epoch: 0,
                    expected: 10,
                    got: 12,
                },
                Code::Aborted,
            ),
            (
                StorageError::ProducerFenced {
                    producer_id: 7,
                    epoch: 0,
                    current_epoch: 1,
                },
                Code::FailedPrecondition,
            ),
        ];

        let mut seen = [false; GROUP_VARIANTS];
        for (error, _) in &group {
            seen[group_variant(error)] = true;
        }
        assert!(seen.iter().all(|s| *s), "a GroupError variant has no row");
        let mut seen = [false; STORAGE_VARIANTS];
        for (error, _) in &storage {
            seen[storage_variant(error)] = true;
        }
        assert!(seen.iter().all(|s| *s), "a StorageError variant has no row");

        let mut table: Vec<(BrokerError, Code, Option<String>)> = own
            .into_iter()
            .map(|(error, code, message)| (error, code, Some(message.to_owned())))
            .collect();
        table.extend(group.into_iter().map(|(e, code)| (e.into(), code, None)));
        table.extend(storage.into_iter().map(|(e, code)| (e.into(), code, None)));
        table
    }

    #[tokio::test]
    async fn every_error_has_its_code_and_message() {
        let table = table().await;
        let mut seen = [false; BROKER_VARIANTS];
        for (error, _, _) in &table {
            seen[broker_variant(error)] = true;
        }
        let missing: Vec<usize> = (0..BROKER_VARIANTS).filter(|i| !seen[*i]).collect();
        assert!(
            missing.is_empty(),
            "BrokerError variants without a row: {missing:?}"
        );
        for (error, code, message) in table {
            let display = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{display}");
            // What a client reads is the error's own text.
            assert_eq!(status.message(), display);
            if let Some(message) = message {
                assert_eq!(display, message);
            }
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let status = Status::from(BrokerError::InvalidSettings("ü".repeat(5000)));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < MESSAGE_MAX_BYTES + 64);
        assert!(status.message().ends_with("(message cut from 10000 bytes)"));
    }

    #[test]
    fn names_are_cut_where_the_message_is_written() {
        let status = Status::from(BrokerError::TopicNotFound {
            topic: "n".repeat(20_000),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().len() < 200, "{}", status.message());
        assert!(status.message().contains("(20000 bytes)"));
    }
}
