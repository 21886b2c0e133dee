//! Topic and consumer group administration.

use std::time::Duration;

use herald_proto::v1;

use crate::{Client, Error, Offset, Partition, Result};

/// How often a topic's log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every publish is acknowledged.
    Always,
    /// Every `fsync_interval_ms`.
    Interval,
    /// Never explicitly (the OS decides).
    Never,
}

/// A topic's settings. Every field is optional: `None` means the broker's default when
/// creating a topic. [`Admin::describe_topic`] returns every field set.
///
/// ```
/// use herald_client::TopicConfig;
/// let config = TopicConfig {
///     retention_ms: Some(7 * 24 * 3600 * 1000),
///     ..TopicConfig::default()
/// };
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Records older than this (ms) are removed.
    pub retention_ms: Option<u64>,
    /// A partition's log is trimmed to about this many bytes.
    pub retention_bytes: Option<u64>,
    /// Size at which a segment file is rolled.
    pub segment_bytes: Option<u64>,
    /// The fsync policy.
    pub fsync_policy: Option<FsyncPolicy>,
    /// The interval of [`FsyncPolicy::Interval`], in ms.
    pub fsync_interval_ms: Option<u32>,
    /// Largest record accepted, in bytes.
    pub max_message_bytes: Option<u32>,
    /// How long a publish's `herald-msg-id` is remembered, in ms (0: off).
    pub dedup_window_ms: Option<u64>,
}

impl TopicConfig {
    fn into_proto(self) -> v1::TopicConfig {
        v1::TopicConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: self.segment_bytes,
            fsync_policy: match self.fsync_policy {
                None => v1::FsyncPolicy::Unspecified,
                Some(FsyncPolicy::Always) => v1::FsyncPolicy::Always,
                Some(FsyncPolicy::Interval) => v1::FsyncPolicy::Interval,
                Some(FsyncPolicy::Never) => v1::FsyncPolicy::Never,
            } as i32,
            fsync_interval_ms: self.fsync_interval_ms,
            max_message_bytes: self.max_message_bytes,
            dedup_window_ms: self.dedup_window_ms,
        }
    }

    fn from_proto(config: v1::TopicConfig) -> TopicConfig {
        TopicConfig {
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
            fsync_policy: match v1::FsyncPolicy::try_from(config.fsync_policy) {
                Ok(v1::FsyncPolicy::Always) => Some(FsyncPolicy::Always),
                Ok(v1::FsyncPolicy::Interval) => Some(FsyncPolicy::Interval),
                Ok(v1::FsyncPolicy::Never) => Some(FsyncPolicy::Never),
                _ => None,
            },
            fsync_interval_ms: config.fsync_interval_ms,
            max_message_bytes: config.max_message_bytes,
            dedup_window_ms: config.dedup_window_ms,
        }
    }
}

/// What [`Admin::alter_topic`] changes on a live topic; `None` leaves a setting as it is.
///
/// ```
/// use herald_client::TopicAlter;
/// // Keep a day of records, and grow to 16 partitions.
/// let change = TopicAlter {
///     retention_ms: Some(24 * 3600 * 1000),
///     partitions: Some(16),
///     ..TopicAlter::default()
/// };
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicAlter {
    /// New retention by age, in ms (0: none); applied within 10 s.
    pub retention_ms: Option<u64>,
    /// New retention by size per partition, in bytes (0: none); applied within 10 s.
    pub retention_bytes: Option<u64>,
    /// New largest record, in bytes.
    pub max_message_bytes: Option<u32>,
    /// New partition count, at least the current one. Most keys move to another partition:
    /// a [`Producer`](crate::Producer) reads the count once, so create producers again
    /// after adding partitions.
    pub partitions: Option<u32>,
}

/// One line of [`Admin::list_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// The topic's name.
    pub name: String,
    /// Its number of partitions.
    pub partition_count: u32,
}

/// A topic as [`Admin::describe_topic`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Its number of partitions.
    pub partition_count: u32,
    /// The settings in force.
    pub config: TopicConfig,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// One partition of a [`TopicInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition id.
    pub partition: Partition,
    /// The oldest offset still stored.
    pub start_offset: Offset,
    /// The next offset to be written (the high watermark).
    pub end_offset: Offset,
    /// Bytes of record batches stored.
    pub size_bytes: u64,
    /// Number of segment files.
    pub segment_count: u32,
    /// Bytes of disk allocated to the partition's files (at least `size_bytes`: files are
    /// allocated ahead of the data).
    pub allocated_bytes: u64,
}

impl TopicInfo {
    fn from_proto(topic: v1::TopicDescription) -> TopicInfo {
        TopicInfo {
            name: topic.name,
            partition_count: topic.partition_count,
            config: TopicConfig::from_proto(topic.config.unwrap_or_default()),
            partitions: topic
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: Partition(p.partition),
                    start_offset: Offset(p.start_offset),
                    end_offset: Offset(p.end_offset),
                    size_bytes: p.size_bytes,
                    segment_count: p.segment_count,
                    allocated_bytes: p.allocated_bytes,
                })
                .collect(),
        }
    }
}

/// A position in a partition: where a group starts or is moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The oldest record still stored.
    Earliest,
    /// The end of the partition: only records published from now on.
    Latest,
    /// An exact offset.
    Offset(u64),
    /// The first record at or after this time, in ms since the Unix epoch.
    Timestamp(i64),
}

impl Position {
    pub(crate) fn into_proto(self) -> v1::Position {
        use v1::position::Kind;
        v1::Position {
            kind: Some(match self {
                Position::Earliest => Kind::Earliest(v1::Earliest {}),
                Position::Latest => Kind::Latest(v1::Latest {}),
                Position::Offset(offset) => Kind::Offset(offset),
                Position::Timestamp(ms) => Kind::TimestampMs(ms),
            }),
        }
    }
}

/// How a group orders deliveries within a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderingMode {
    /// One unacked message per key at a time (the default).
    Key,
    /// One unacked message per partition at a time.
    Partition,
    /// No ordering.
    None,
}

/// A group's delivery settings. `None` means the default when creating a group and
/// "unchanged" when updating one; [`Admin::describe_group`] returns every field set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// Time a member has to ack a delivery.
    pub ack_deadline: Option<Duration>,
    /// First redelivery delay.
    pub retry_backoff_min: Option<Duration>,
    /// Largest redelivery delay.
    pub retry_backoff_max: Option<Duration>,
    /// Deliveries after which a message is dead-lettered (0: never).
    pub max_delivery_attempts: Option<u32>,
    /// The topic that receives dead letters (empty: none).
    pub dead_letter_topic: Option<String>,
    /// The ordering mode.
    pub ordering: Option<OrderingMode>,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl GroupSettings {
    pub(crate) fn into_proto(self) -> v1::GroupSettings {
        v1::GroupSettings {
            ack_deadline_ms: self.ack_deadline.map(ms),
            retry_backoff_min_ms: self.retry_backoff_min.map(ms),
            retry_backoff_max_ms: self.retry_backoff_max.map(ms),
            max_delivery_attempts: self.max_delivery_attempts,
            dead_letter_topic: self.dead_letter_topic,
            ordering: match self.ordering {
                None => v1::OrderingMode::Unspecified,
                Some(OrderingMode::Key) => v1::OrderingMode::Key,
                Some(OrderingMode::Partition) => v1::OrderingMode::Partition,
                Some(OrderingMode::None) => v1::OrderingMode::None,
            } as i32,
        }
    }

    fn from_proto(s: v1::GroupSettings) -> GroupSettings {
        let dur = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
        GroupSettings {
            ack_deadline: dur(s.ack_deadline_ms),
            retry_backoff_min: dur(s.retry_backoff_min_ms),
            retry_backoff_max: dur(s.retry_backoff_max_ms),
            max_delivery_attempts: s.max_delivery_attempts,
            dead_letter_topic: s.dead_letter_topic,
            ordering: match v1::OrderingMode::try_from(s.ordering) {
                Ok(v1::OrderingMode::Key) => Some(OrderingMode::Key),
                Ok(v1::OrderingMode::Partition) => Some(OrderingMode::Partition),
                Ok(v1::OrderingMode::None) => Some(OrderingMode::None),
                _ => None,
            },
        }
    }
}

/// A consumer group as [`Admin::describe_group`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group's topic.
    pub topic: String,
    /// The group's name.
    pub group: String,
    /// The settings in force.
    pub settings: GroupSettings,
    /// The connected members, oldest first.
    pub members: Vec<GroupMember>,
    /// The group's progress, one entry per partition.
    pub partitions: Vec<GroupPartition>,
    /// In a cluster, the node that runs the group (for a replicated topic); `None` on a
    /// single node.
    pub coordinator: Option<u64>,
}

/// One connected member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Broker-assigned id.
    pub member_id: String,
    /// The label the member gave when joining.
    pub client_id: String,
    /// The partitions it owns.
    pub partitions: Vec<Partition>,
}

/// A group's progress in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartition {
    /// The partition id.
    pub partition: Partition,
    /// The lowest offset not yet acked.
    pub committed_offset: Offset,
    /// The partition's end offset.
    pub end_offset: Offset,
    /// Messages not yet done.
    pub lag: u64,
    /// Messages delivered and awaiting an ack.
    pub in_flight_count: u32,
    /// Redeliveries since the broker started.
    pub redelivered_count: u64,
    /// Dead-lettered messages since the broker started.
    pub dead_lettered_count: u64,
    /// The owning member's id; empty if none.
    pub member_id: String,
}

impl GroupInfo {
    fn from_proto(g: v1::GroupDescription) -> GroupInfo {
        GroupInfo {
            topic: g.topic,
            group: g.group,
            settings: GroupSettings::from_proto(g.settings.unwrap_or_default()),
            members: g
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    partitions: m.partitions.into_iter().map(Partition).collect(),
                })
                .collect(),
            partitions: g
                .partitions
                .into_iter()
                .map(|p| GroupPartition {
                    partition: Partition(p.partition),
                    committed_offset: Offset(p.committed_offset),
                    end_offset: Offset(p.end_offset),
                    lag: p.lag,
                    in_flight_count: p.in_flight_count,
                    redelivered_count: p.redelivered_count,
                    dead_lettered_count: p.dead_lettered_count,
                    member_id: p.member_id,
                })
                .collect(),
            coordinator: (g.coordinator != 0).then_some(g.coordinator),
        }
    }
}

/// One line of [`Admin::list_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's topic.
    pub topic: String,
    /// The group's name.
    pub group: String,
    /// Connected members.
    pub member_count: u32,
}

/// A message a group has delivered and not yet acked, from [`Admin::list_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// Its partition.
    pub partition: Partition,
    /// Its offset.
    pub offset: Offset,
    /// Its key; `None` when the message has none.
    pub key: Option<bytes::Bytes>,
    /// Deliveries so far (1 after the first).
    pub delivery_attempt: u32,
    /// In ms since the Unix epoch: the ack deadline when in flight, or when it is due
    /// again when in backoff.
    pub deadline_ms: i64,
    /// `true`: delivered to `member_id`, waiting for its ack. `false`: nacked or expired,
    /// waiting out its retry backoff.
    pub in_flight: bool,
    /// The member holding it when in flight; empty otherwise.
    pub member_id: String,
}

/// Which pending messages [`Admin::list_pending`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingFilter {
    /// Only this partition's.
    pub partition: Option<Partition>,
    /// Only messages with exactly this key.
    pub key: Option<bytes::Bytes>,
    /// At most this many (0: the broker's default, 100; it caps at 10,000).
    pub limit: u32,
}

fn missing(what: &str) -> Error {
    Error::Protocol(format!("the reply carries no {what}"))
}

/// Topic and group administration; made by [`Client::admin`]. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> herald_client::Result<()> {
/// use herald_client::{Client, Position, TopicConfig};
/// let admin = Client::connect("http://127.0.0.1:50051").await?.admin();
/// admin.create_topic("orders", 8, TopicConfig::default()).await?;
/// admin.create_group("orders", "billing", Default::default(), Position::Earliest).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partition_count);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Admin {
    client: Client,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Admin {
        Admin { client }
    }

    /// Creates a topic with `partitions` partitions ([`Error::AlreadyExists`] if it
    /// exists).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        self.create_replicated_topic(name, partitions, config, None)
            .await
    }

    /// [`create_topic`](Self::create_topic) with the number of copies of each partition
    /// in cluster mode (`None`: min(3, nodes); above 1 on a single node is
    /// [`Error::InvalidArgument`]).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        replication_factor: Option<u32>,
    ) -> Result<TopicInfo> {
        let mut raw = self.client.raw();
        let request = v1::CreateTopicRequest {
            name: name.to_owned(),
            partitions,
            config: Some(config.into_proto()),
            replication_factor,
        };
        let reply = self.client.unary(raw.create_topic(request)).await?;
        reply
            .topic
            .map(TopicInfo::from_proto)
            .ok_or_else(|| missing("topic"))
    }

    /// Changes a topic's retention and largest record and adds partitions
    /// ([`Error::NotFound`] if absent, [`Error::InvalidArgument`] for fewer partitions than
    /// it has). Returns the topic as it is afterwards.
    pub async fn alter_topic(&self, name: &str, change: TopicAlter) -> Result<TopicInfo> {
        let mut raw = self.client.raw();
        let request = v1::AlterTopicRequest {
            name: name.to_owned(),
            retention_ms: change.retention_ms,
            retention_bytes: change.retention_bytes,
            max_message_bytes: change.max_message_bytes,
            partitions: change.partitions,
        };
        let reply = self.client.unary(raw.alter_topic(request)).await?;
        reply
            .topic
            .map(TopicInfo::from_proto)
            .ok_or_else(|| missing("topic"))
    }

    /// Deletes a topic and its data ([`Error::NotFound`] if absent).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut raw = self.client.raw();
        let request = v1::DeleteTopicRequest {
            name: name.to_owned(),
        };
        self.client.unary(raw.delete_topic(request)).await?;
        Ok(())
    }

    /// Every topic, with its partition count.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let mut raw = self.client.raw();
        let reply = self
            .client
            .unary(raw.list_topics(v1::ListTopicsRequest {}))
            .await?;
        Ok(reply
            .topics
            .into_iter()
            .map(|t| TopicSummary {
                name: t.name,
                partition_count: t.partition_count,
            })
            .collect())
    }

    /// A topic's settings and partitions ([`Error::NotFound`] if absent).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let mut raw = self.client.raw();
        let request = v1::DescribeTopicRequest {
            name: name.to_owned(),
        };
        let reply = self.client.unary(raw.describe_topic(request)).await?;
        reply
            .topic
            .map(TopicInfo::from_proto)
            .ok_or_else(|| missing("topic"))
    }

    /// Creates the consumer group `group` of `topic`, starting at `start` in every
    /// partition.
    pub async fn create_group(
        &self,
        topic: &str,
        group: &str,
        settings: GroupSettings,
        start: Position,
    ) -> Result<GroupInfo> {
        let mut raw = self.client.raw();
        let request = v1::CreateGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            settings: Some(settings.into_proto()),
            start_position: Some(start.into_proto()),
        };
        let reply = self.client.unary(raw.create_group(request)).await?;
        reply
            .group
            .map(GroupInfo::from_proto)
            .ok_or_else(|| missing("group"))
    }

    /// Changes the settings of a group that are `Some` and leaves the others.
    pub async fn update_group(
        &self,
        topic: &str,
        group: &str,
        settings: GroupSettings,
    ) -> Result<GroupInfo> {
        let mut raw = self.client.raw();
        let request = v1::UpdateGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            settings: Some(settings.into_proto()),
        };
        let reply = self.client.unary(raw.update_group(request)).await?;
        reply
            .group
            .map(GroupInfo::from_proto)
            .ok_or_else(|| missing("group"))
    }

    /// A group's settings, members and progress.
    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<GroupInfo> {
        let mut raw = self.client.raw();
        let request = v1::DescribeGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        let reply = self.client.unary(raw.describe_group(request)).await?;
        reply
            .group
            .map(GroupInfo::from_proto)
            .ok_or_else(|| missing("group"))
    }

    /// The groups of `topic`, or of every topic when `topic` is `None`.
    pub async fn list_groups(&self, topic: Option<&str>) -> Result<Vec<GroupSummary>> {
        let mut raw = self.client.raw();
        let request = v1::ListGroupsRequest {
            topic: topic.map(str::to_owned),
        };
        let reply = self.client.unary(raw.list_groups(request)).await?;
        Ok(reply
            .groups
            .into_iter()
            .map(|g| GroupSummary {
                topic: g.topic,
                group: g.group,
                member_count: g.member_count,
            })
            .collect())
    }

    /// Deletes a group.
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let mut raw = self.client.raw();
        let request = v1::DeleteGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
        };
        self.client.unary(raw.delete_group(request)).await?;
        Ok(())
    }

    /// Moves a group's committed offset to `position`, in one partition or (with
    /// `partition` `None`) in all of them. Returns the new committed offsets.
    pub async fn seek(
        &self,
        topic: &str,
        group: &str,
        partition: Option<Partition>,
        position: Position,
    ) -> Result<Vec<(Partition, Offset)>> {
        let mut raw = self.client.raw();
        let request = v1::SeekRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            partition: partition.map(|p| p.0),
            position: Some(position.into_proto()),
        };
        let reply = self.client.unary(raw.seek(request)).await?;
        Ok(reply
            .partitions
            .into_iter()
            .map(|p| (Partition(p.partition), Offset(p.offset)))
            .collect())
    }

    /// The messages a group has delivered and not yet acked, by partition then offset, and
    /// whether more matched than the filter's limit allowed.
    pub async fn list_pending(
        &self,
        topic: &str,
        group: &str,
        filter: PendingFilter,
    ) -> Result<(Vec<PendingMessage>, bool)> {
        let mut raw = self.client.raw();
        let request = v1::ListPendingRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            partition: filter.partition.map(|p| p.0),
            key: filter.key,
            limit: filter.limit,
        };
        let reply = self.client.unary(raw.list_pending(request)).await?;
        let messages = reply
            .messages
            .into_iter()
            .map(|m| PendingMessage {
                partition: Partition(m.partition),
                offset: Offset(m.offset),
                key: m.key,
                delivery_attempt: m.delivery_attempt,
                deadline_ms: m.deadline_ms,
                in_flight: m.state == v1::PendingState::InFlight as i32,
                member_id: m.member_id,
            })
            .collect();
        Ok((messages, reply.truncated))
    }

    /// Republishes up to `max_messages` (0: all) of a group's dead letters to its topic;
    /// returns how many moved.
    pub async fn redrive(&self, topic: &str, group: &str, max_messages: u64) -> Result<u64> {
        let mut raw = self.client.raw();
        let request = v1::RedriveRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            max_messages,
        };
        let reply = self.client.unary(raw.redrive(request)).await?;
        Ok(reply.redriven_count)
    }
}
