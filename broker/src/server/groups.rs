//! The consumer-group RPCs: Subscribe and the group admin calls, on top of
//! [`crate::groups`]. Converts between the proto types and the group driver, resolves
//! positions through the partition readers, and checks settings as groups.proto documents.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::stream::{Stream, StreamExt};
use herald_proto::v1::{self, position::Kind as PositionKind};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Status, Streaming};

use super::auth::Access;
use super::request_limit::Oversized;

use crate::auth::{Operation, Resource};
use crate::cluster::NodeId;
use crate::cluster::coordinator::{Coordinator, Route};
use crate::error::BrokerError;
use crate::group::{
    AckId, DEFAULT_MEMBER_IN_FLIGHT_BYTES, DEFAULT_MEMBER_IN_FLIGHT_MESSAGES, GroupSettings,
    MemberOptions, OrderingMode, PendingState,
};
use crate::groups::{
    AckRange, Group, GroupConfig, GroupRegistry, MEMBER_QUEUE, MemberItem, MemberTx, NackTarget,
    OutDeliveries, Outgoing,
};
use crate::registry::Registry;
use crate::topic::{Topic, validate_name};
use herald_proto::peer::forwarded_group_call::Call;
use herald_proto::peer::group_call_reply::Reply;

type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Longest client id kept for DescribeGroup.
const MAX_CLIENT_ID_BYTES: usize = 256;

fn invalid_settings(message: impl Into<String>) -> BrokerError {
    BrokerError::InvalidSettings(message.into())
}

fn invalid_request(message: impl Into<String>) -> BrokerError {
    BrokerError::InvalidRequest(message.into())
}

/// The settings in force, every field set.
pub fn settings_proto(config: &GroupConfig) -> v1::GroupSettings {
    let s = &config.settings;
    let clamp = |v: u64| v.min(u64::from(u32::MAX)) as u32;
    v1::GroupSettings {
        ack_deadline_ms: Some(clamp(s.ack_deadline_ms)),
        retry_backoff_min_ms: Some(clamp(s.retry_backoff_min_ms)),
        retry_backoff_max_ms: Some(clamp(s.retry_backoff_max_ms)),
        max_delivery_attempts: Some(s.max_delivery_attempts),
        dead_letter_topic: Some(config.dead_letter_topic.clone().unwrap_or_default()),
        ordering: match s.ordering {
            OrderingMode::Key => v1::OrderingMode::Key,
            OrderingMode::Partition => v1::OrderingMode::Partition,
            OrderingMode::None => v1::OrderingMode::None,
        } as i32,
    }
}

/// Applies the set fields of `proto` over `base` (the defaults when creating) and checks
/// the result: INVALID_ARGUMENT for bad values, NOT_FOUND for a missing dead-letter topic.
fn resolve_config(
    registry: &Registry,
    topic: &str,
    base: Option<&GroupConfig>,
    proto: Option<v1::GroupSettings>,
) -> Result<GroupConfig, BrokerError> {
    let creating = base.is_none();
    let mut config = base.cloned().unwrap_or(GroupConfig {
        settings: GroupSettings::default(),
        dead_letter_topic: None,
    });
    if let Some(p) = proto {
        let s = &mut config.settings;
        if let Some(v) = p.ack_deadline_ms {
            if v == 0 {
                return Err(invalid_settings("ack_deadline_ms must be at least 1"));
            }
            s.ack_deadline_ms = u64::from(v);
        }
        if let Some(v) = p.retry_backoff_min_ms {
            s.retry_backoff_min_ms = u64::from(v);
            // A new minimum above the default maximum lifts the maximum with it.
            if creating && p.retry_backoff_max_ms.is_none() {
                s.retry_backoff_max_ms = s.retry_backoff_max_ms.max(u64::from(v));
            }
        }
        if let Some(v) = p.retry_backoff_max_ms {
            s.retry_backoff_max_ms = u64::from(v);
        }
        if let Some(v) = p.max_delivery_attempts {
            s.max_delivery_attempts = v;
        }
        match v1::OrderingMode::try_from(p.ordering) {
            Ok(v1::OrderingMode::Unspecified) => {}
            Ok(v1::OrderingMode::Key) => s.ordering = OrderingMode::Key,
            Ok(v1::OrderingMode::Partition) => s.ordering = OrderingMode::Partition,
            Ok(v1::OrderingMode::None) => s.ordering = OrderingMode::None,
            Err(_) => {
                return Err(invalid_settings(format!(
                    "unknown ordering mode {}",
                    p.ordering
                )));
            }
        }
        match p.dead_letter_topic {
            None => {}
            Some(name) if name.is_empty() => config.dead_letter_topic = None,
            Some(name) => {
                validate_name("topic", &name)?;
                if name == topic {
                    return Err(invalid_settings(
                        "dead_letter_topic must differ from the group's topic",
                    ));
                }
                registry
                    .get(&name)
                    .map_err(|_| BrokerError::DeadLetterTopicNotFound {
                        topic: name.clone(),
                    })?;
                config.dead_letter_topic = Some(name);
            }
        }
    }
    if config.settings.max_delivery_attempts > 0 && config.dead_letter_topic.is_none() {
        return Err(invalid_settings(
            "max_delivery_attempts above 0 requires a dead_letter_topic",
        ));
    }
    config.settings = config.settings.validated()?;
    Ok(config)
}

/// The offset `kind` names in one partition; offsets are clamped into its range.
fn resolve_position(topic: &Topic, partition: u32, kind: &PositionKind) -> Result<u64> {
    let partition = topic.partition(partition)?;
    let reader = partition.reader();
    let (start, end) = (reader.start_offset(), reader.high_watermark());
    Ok(match kind {
        PositionKind::Earliest(_) => start,
        PositionKind::Latest(_) => end,
        PositionKind::Offset(offset) => (*offset).clamp(start, end),
        PositionKind::TimestampMs(ts) => reader
            .offset_for_timestamp(*ts)?
            .unwrap_or(end)
            .clamp(start, end),
    })
}

/// Start offsets of a new group: Latest when unset.
fn start_offsets(topic: &Topic, position: Option<v1::Position>) -> Result<Vec<u64>> {
    let kind = match position {
        None => PositionKind::Latest(v1::Latest {}),
        Some(v1::Position { kind: None }) => {
            return Err(invalid_request(
                "`start_position` is set but holds no position: set earliest, latest, offset or timestamp_ms",
            ));
        }
        Some(v1::Position { kind: Some(kind) }) => kind,
    };
    (0..topic.partition_count())
        .map(|p| resolve_position(topic, p, &kind))
        .collect()
}

fn describe(group: &Group) -> v1::GroupDescription {
    let (description, config, clients) = group.describe();
    v1::GroupDescription {
        topic: group.topic_name.clone(),
        group: group.name.clone(),
        settings: Some(settings_proto(&config)),
        members: description
            .members
            .iter()
            .map(|m| v1::GroupMember {
                member_id: m.member.0.to_string(),
                client_id: clients.get(&m.member.0).cloned().unwrap_or_default(),
                partitions: m.partitions.iter().map(|p| p.0).collect(),
            })
            .collect(),
        coordinator: 0,
        partitions: description
            .partitions
            .iter()
            .map(|p| {
                let (start, end) = group
                    .topic
                    .partition(p.partition.0)
                    .map(|part| {
                        let r = part.reader();
                        (r.start_offset(), r.high_watermark())
                    })
                    .unwrap_or((0, 0));
                let committed = p.committed.0.max(start);
                v1::GroupPartition {
                    partition: p.partition.0,
                    committed_offset: committed,
                    end_offset: end,
                    lag: end.saturating_sub(committed),
                    in_flight_count: p.in_flight.min(u32::MAX as usize) as u32,
                    redelivered_count: p.redelivered_count,
                    dead_lettered_count: p.dead_lettered_count,
                    member_id: p.owner().map(|m| m.0.to_string()).unwrap_or_default(),
                }
            })
            .collect(),
    }
}

pub async fn create_group(
    groups: &Arc<GroupRegistry>,
    access: &Access,
    r: v1::CreateGroupRequest,
) -> Result<v1::CreateGroupResponse> {
    access.authorize(Operation::Create, Resource::group(&r.group))?;
    let topic = groups.registry().get(&r.topic)?;
    validate_name("group", &r.group)?;
    let config = resolve_config(groups.registry(), &r.topic, None, r.settings)?;
    let offsets = start_offsets(&topic, r.start_position)?;
    let group = groups
        .create(topic, &r.group, config, offsets, false)
        .await?;
    Ok(v1::CreateGroupResponse {
        group: Some(describe(&group)),
    })
}

async fn update_group(
    groups: &Arc<GroupRegistry>,
    r: v1::UpdateGroupRequest,
) -> Result<v1::UpdateGroupResponse> {
    let group = groups.get(&r.topic, &r.group).await?;
    let config = resolve_config(
        groups.registry(),
        &r.topic,
        Some(&group.config()),
        r.settings,
    )?;
    let updater = group.clone();
    tokio::task::spawn_blocking(move || updater.update(config))
        .await
        .map_err(|cause| BrokerError::TaskFailed {
            what: "update task failed",
            cause,
        })??;
    Ok(v1::UpdateGroupResponse {
        group: Some(describe(&group)),
    })
}

pub async fn delete_group(
    groups: &Arc<GroupRegistry>,
    access: &Access,
    r: v1::DeleteGroupRequest,
) -> Result<v1::DeleteGroupResponse> {
    access.authorize(Operation::Delete, Resource::group(&r.group))?;
    // Through `get`, so a group of a deleted topic is NOT_FOUND; a damaged group (not
    // loaded) can be deleted, which is how an operator starts it again.
    if !groups.is_damaged(&r.topic, &r.group) {
        groups.get(&r.topic, &r.group).await?;
    }
    groups.delete(&r.topic, &r.group).await?;
    Ok(v1::DeleteGroupResponse {})
}

async fn describe_group(
    groups: &Arc<GroupRegistry>,
    r: v1::DescribeGroupRequest,
) -> Result<v1::DescribeGroupResponse> {
    let group = groups.get(&r.topic, &r.group).await?;
    Ok(v1::DescribeGroupResponse {
        group: Some(describe(&group)),
    })
}

pub async fn list_groups(
    groups: &Arc<GroupRegistry>,
    coordinator: Option<&Coordinator>,
    access: &Access,
    r: v1::ListGroupsRequest,
) -> Result<v1::ListGroupsResponse> {
    if let Access::Unmarked = access {
        access.authorize(Operation::Describe, Resource::cluster())?;
    }
    // This node's groups, except those of replicated topics, which the cluster lists
    // wherever they run (member counts as of their last checkpoint).
    let managed = |topic: &str| coordinator.is_some_and(|c| c.manages(topic));
    let mut summaries: Vec<v1::GroupSummary> = groups
        .list(r.topic.as_deref())
        .iter()
        .filter(|g| !managed(&g.topic_name))
        .map(|g| v1::GroupSummary {
            topic: g.topic_name.clone(),
            group: g.name.clone(),
            member_count: g.member_count() as u32,
        })
        .collect();
    if let Some(coordinator) = coordinator {
        summaries.extend(coordinator.records(r.topic.as_deref()).into_iter().map(
            |(topic, group, members)| v1::GroupSummary {
                topic,
                group,
                member_count: members,
            },
        ));
        summaries.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
    }
    // Only the groups the caller may describe, on topics it may describe.
    summaries.retain(|g| {
        access.may(Operation::Describe, Resource::group(&g.group))
            && access.may(Operation::Describe, Resource::topic(&g.topic))
    });
    Ok(v1::ListGroupsResponse { groups: summaries })
}

async fn seek(groups: &Arc<GroupRegistry>, r: v1::SeekRequest) -> Result<v1::SeekResponse> {
    let group = groups.get(&r.topic, &r.group).await?;
    let kind = match r.position {
        None | Some(v1::Position { kind: None }) => {
            return Err(invalid_request(
                "`position` is required: set earliest, latest, offset or timestamp_ms",
            ));
        }
        Some(v1::Position { kind: Some(kind) }) => kind,
    };
    let topic = &group.topic;
    let targets = match r.partition {
        Some(partition) => {
            let log = topic.partition(partition)?;
            let reader = log.reader();
            if let PositionKind::Offset(offset) = kind {
                let (start, end) = (reader.start_offset(), reader.high_watermark());
                if offset < start || offset > end {
                    return Err(BrokerError::OffsetOutOfRange {
                        offset,
                        start,
                        end,
                        partition: Some(partition),
                    });
                }
            }
            vec![(partition, resolve_position(topic, partition, &kind)?)]
        }
        None => (0..topic.partition_count())
            .map(|p| Ok((p, resolve_position(topic, p, &kind)?)))
            .collect::<Result<Vec<_>>>()?,
    };
    let moved = group.seek(&targets)?;
    Ok(v1::SeekResponse {
        partitions: moved
            .into_iter()
            .map(|(partition, offset)| v1::PartitionOffset { partition, offset })
            .collect(),
    })
}

async fn list_pending(
    groups: &Arc<GroupRegistry>,
    r: v1::ListPendingRequest,
) -> Result<v1::ListPendingResponse> {
    let group = groups.get(&r.topic, &r.group).await?;
    if let Some(partition) = r.partition {
        group.topic.partition(partition)?;
    }
    let reader = group.clone();
    let (messages, truncated) = tokio::task::spawn_blocking(move || {
        reader.pending(r.partition, r.key.as_deref(), r.limit as usize)
    })
    .await
    .map_err(|cause| BrokerError::TaskFailed {
        what: "list task failed",
        cause,
    })??;
    Ok(v1::ListPendingResponse {
        messages: messages
            .into_iter()
            .filter_map(|(m, key)| {
                let (state, deadline_ms, member_id) = match m.state {
                    PendingState::InFlight {
                        member,
                        deadline_ms,
                    } => (
                        v1::PendingState::InFlight,
                        deadline_ms,
                        member.0.to_string(),
                    ),
                    PendingState::Backoff { due_ms } => {
                        (v1::PendingState::Backoff, due_ms, String::new())
                    }
                    // Being written to the dead-letter topic: about to be done.
                    PendingState::DeadLettering => return None,
                };
                Some(v1::PendingMessage {
                    partition: m.partition.0,
                    offset: m.offset.0,
                    key,
                    delivery_attempt: m.attempts,
                    deadline_ms: deadline_ms.min(i64::MAX as u64) as i64,
                    state: state as i32,
                    member_id,
                })
            })
            .collect(),
        truncated,
    })
}

async fn redrive(
    groups: &Arc<GroupRegistry>,
    r: v1::RedriveRequest,
) -> Result<v1::RedriveResponse> {
    let group = groups.get(&r.topic, &r.group).await?;
    let redriven_count = groups.redrive(&group, r.max_messages).await?;
    Ok(v1::RedriveResponse { redriven_count })
}

// ---- Admin calls that run where the group runs ----

/// The topic and group a group admin call names.
pub fn call_names(call: &Call) -> (&str, &str) {
    match call {
        Call::Describe(r) => (&r.topic, &r.group),
        Call::Update(r) => (&r.topic, &r.group),
        Call::Seek(r) => (&r.topic, &r.group),
        Call::Pending(r) => (&r.topic, &r.group),
        Call::Redrive(r) => (&r.topic, &r.group),
    }
}

/// The rights a group admin call takes. Checked by the node the client called: a call
/// sent on to the group's coordinator is not checked again.
pub fn authorize_call(access: &Access, call: &Call) -> Result<()> {
    match call {
        // A group's description shows its topic's partitions, offsets and lag: it takes
        // the right to describe both.
        Call::Describe(r) => {
            access.authorize(Operation::Describe, Resource::group(&r.group))?;
            access.authorize(Operation::Describe, Resource::topic(&r.topic))
        }
        Call::Update(r) => access.authorize(Operation::Alter, Resource::group(&r.group)),
        Call::Seek(r) => access.authorize(Operation::Seek, Resource::group(&r.group)),
        Call::Pending(r) => access.authorize(Operation::Describe, Resource::group(&r.group)),
        // Redrive reads the group's dead letters and writes them back to its topic: the
        // right on both.
        Call::Redrive(r) => {
            access.authorize(Operation::Redrive, Resource::group(&r.group))?;
            access.authorize(Operation::Redrive, Resource::topic(&r.topic))
        }
    }
}

/// Whether a call changes the group's durable state or settings (so a cluster
/// checkpoints the group before it answers).
pub fn call_changes(call: &Call) -> bool {
    matches!(call, Call::Update(_) | Call::Seek(_) | Call::Redrive(_))
}

/// Runs an (authorized) group admin call on this node's group.
pub async fn run_call(groups: &Arc<GroupRegistry>, call: Call) -> Result<Reply> {
    Ok(match call {
        Call::Describe(r) => Reply::Describe(describe_group(groups, r).await?),
        Call::Update(r) => Reply::Update(update_group(groups, r).await?),
        Call::Seek(r) => Reply::Seek(seek(groups, r).await?),
        Call::Pending(r) => Reply::Pending(list_pending(groups, r).await?),
        Call::Redrive(r) => Reply::Redrive(redrive(groups, r).await?),
    })
}

/// CreateGroup of a replicated topic's group: created through the cluster, then run by
/// the node that claims it first (this one, if it holds every partition).
pub async fn create_managed_group(
    groups: &Arc<GroupRegistry>,
    coordinator: &Coordinator,
    access: &Access,
    r: v1::CreateGroupRequest,
) -> Result<()> {
    access.authorize(Operation::Create, Resource::group(&r.group))?;
    let topic = groups.registry().get(&r.topic)?;
    validate_name("group", &r.group)?;
    let config = resolve_config(groups.registry(), &r.topic, None, r.settings)?;
    let offsets = start_offsets(&topic, r.start_position)?;
    coordinator
        .create(&r.topic, &r.group, config, offsets, false)
        .await
}

/// DeleteGroup of a replicated topic's group: deleted through the cluster.
pub async fn delete_managed_group(
    coordinator: &Coordinator,
    access: &Access,
    r: v1::DeleteGroupRequest,
) -> Result<v1::DeleteGroupResponse> {
    access.authorize(Operation::Delete, Resource::group(&r.group))?;
    coordinator.delete(&r.topic, &r.group).await?;
    Ok(v1::DeleteGroupResponse {})
}

// ---- Subscribe ----

/// The response stream of a Subscribe call: the member's queue. Each response taken wakes
/// the group's driver (the queue has room again); dropping it ends the member.
struct MemberStream {
    rx: mpsc::Receiver<MemberItem>,
    /// Responses of the group's coordinator on another node, when the stream was sent on
    /// to it.
    forwarded: mpsc::Receiver<Result<v1::SubscribeResponse, Status>>,
    group: Arc<OnceLock<Arc<Group>>>,
    _gone: oneshot::Sender<()>,
}

impl Stream for MemberStream {
    type Item = Result<v1::SubscribeResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let forwarded_done = match this.forwarded.poll_recv(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let Some(group) = this.group.get() {
                    group.wake();
                }
                Poll::Ready(Some(item.map(response).map_err(Status::from)))
            }
            // Both senders are gone once the member's task ended.
            Poll::Ready(None) if forwarded_done => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// The proto response for one message of the driver.
fn response(message: Outgoing) -> v1::SubscribeResponse {
    use v1::subscribe_response::Response;
    let response = match message {
        Outgoing::Joined {
            member,
            partitions,
            config,
        } => Response::Joined(v1::Joined {
            member_id: member.0.to_string(),
            partitions: partitions.iter().map(|p| p.0).collect(),
            settings: Some(settings_proto(&config)),
        }),
        Outgoing::Deliveries(OutDeliveries { singles, runs }) => {
            // Every ack id of the response in one buffer, each delivery's a slice of it:
            // one allocation per response instead of one per delivery.
            let mut ids = BytesMut::with_capacity(singles.len() * AckId::ENCODED_LEN);
            for out in &singles {
                ids.extend_from_slice(&out.delivery.ack_id.encode());
            }
            let mut ids = ids.freeze();
            Response::Deliveries(v1::Deliveries {
                runs: runs
                    .into_iter()
                    .map(|run| v1::DeliveryRun {
                        partition: run.partition.0,
                        first_offset: run.first_offset,
                        count: run.count,
                        first_delivery: run.first_delivery,
                        delivery_attempt: run.attempt,
                        deadline_ms: run.deadline_ms.min(i64::MAX as u64) as i64,
                        base_offset: run.base_offset,
                        first_timestamp_ms: run.first_timestamp,
                        records: run.records,
                    })
                    .collect(),
                deliveries: singles
                    .into_iter()
                    .map(|out| {
                        let (d, record) = (out.delivery, out.record);
                        v1::Delivery {
                            partition: d.partition.0,
                            offset: d.offset.0,
                            key: record.key,
                            value: record.value,
                            headers: record
                                .headers
                                .into_iter()
                                .map(|(key, value)| v1::Header { key, value })
                                .collect(),
                            timestamp_ms: record.timestamp,
                            delivery_attempt: d.attempt,
                            ack_id: ids.split_to(AckId::ENCODED_LEN),
                            deadline_ms: d.deadline_ms.min(i64::MAX as u64) as i64,
                        }
                    })
                    .collect(),
            })
        }
        Outgoing::Assignment(change) => Response::Assignment(v1::AssignmentChange {
            added: change.added.iter().map(|p| p.0).collect(),
            revoked: change.revoked.iter().map(|p| p.0).collect(),
            partitions: change.partitions.iter().map(|p| p.0).collect(),
        }),
    };
    v1::SubscribeResponse {
        response: Some(response),
    }
}

/// What a member's stream needs of the broker besides its group registry.
pub struct MemberContext<S> {
    /// Held until the member's task ends (the stream's place in the connection limits).
    pub slot: S,
    pub malformed_ack_ids: prometheus::IntCounter,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub coordinator: Option<Arc<Coordinator>>,
    pub access: Access,
    /// Sent on by another node: served here or refused, never sent on again.
    pub forwarded: bool,
}

/// Starts a Subscribe stream. `context.slot` is held until the stream's task ends.
pub fn subscribe<S: Send + 'static>(
    groups: Arc<GroupRegistry>,
    inbound: Streaming<v1::SubscribeRequest>,
    shutdown: watch::Receiver<bool>,
    context: MemberContext<S>,
) -> Pin<Box<dyn Stream<Item = Result<v1::SubscribeResponse, Status>> + Send>> {
    let (tx, rx) = mpsc::channel(MEMBER_QUEUE);
    let (forwarded_tx, forwarded) = mpsc::channel(MEMBER_QUEUE);
    let (gone_tx, gone_rx) = oneshot::channel();
    let group = Arc::new(OnceLock::new());
    tokio::spawn(run_member(
        groups,
        inbound,
        (tx, forwarded_tx),
        shutdown,
        gone_rx,
        group.clone(),
        context,
    ));
    Box::pin(MemberStream {
        rx,
        forwarded,
        group,
        _gone: gone_tx,
    })
}

async fn join_group(
    groups: &Arc<GroupRegistry>,
    join: v1::Join,
    tx: MemberTx,
    create_here: bool,
) -> Result<(Arc<Group>, crate::group::MemberId), BrokerError> {
    let topic = groups.registry().get(&join.topic)?;
    validate_name("group", &join.group)?;
    let group = match groups.get(&join.topic, &join.group).await {
        Ok(group) => group,
        // A cluster's group runs where the cluster says; this node just gave it up.
        Err(BrokerError::GroupNotFound { .. }) if !create_here => {
            return Err(BrokerError::ClusterUnavailable(format!(
                "group {:?} moved to another node while joining; join again",
                join.group
            )));
        }
        Err(BrokerError::GroupNotFound { .. }) => {
            let config = resolve_config(groups.registry(), &join.topic, None, join.settings)?;
            let offsets = start_offsets(&topic, join.start_position)?;
            groups
                .create(topic, &join.group, config, offsets, true)
                .await?
        }
        Err(e) => return Err(e),
    };
    let member = groups.member_id();
    let options = MemberOptions {
        max_in_flight_messages: match join.max_in_flight_messages {
            0 => DEFAULT_MEMBER_IN_FLIGHT_MESSAGES,
            n => n,
        },
        max_in_flight_bytes: match join.max_in_flight_bytes {
            0 => DEFAULT_MEMBER_IN_FLIGHT_BYTES,
            n => n,
        },
        credit_flow_control: join.credit_flow_control,
        max_in_flight_per_key: join.max_in_flight_per_key.max(1),
    };
    let mut client_id = join.client_id;
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        let mut end = MAX_CLIENT_ID_BYTES;
        while !client_id.is_char_boundary(end) {
            end -= 1;
        }
        client_id.truncate(end);
    }
    group.join(member, client_id, options, join.batched_deliveries, tx)?;
    Ok((group, member))
}

/// Sends responses of a stream sent on to another node.
type ForwardedTx = mpsc::Sender<Result<v1::SubscribeResponse, Status>>;

async fn run_member<S>(
    groups: Arc<GroupRegistry>,
    mut inbound: Streaming<v1::SubscribeRequest>,
    (tx, forwarded_tx): (MemberTx, ForwardedTx),
    mut shutdown: watch::Receiver<bool>,
    mut gone: oneshot::Receiver<()>,
    shared: Arc<OnceLock<Arc<Group>>>,
    context: MemberContext<S>,
) {
    let MemberContext {
        slot: _slot,
        malformed_ack_ids,
        cluster,
        coordinator,
        access,
        forwarded,
    } = context;
    use v1::subscribe_request::Request;
    let idle = groups.registry().config().idle_stream_timeout();
    let first = tokio::select! {
        first = tokio::time::timeout(idle, inbound.next()) => first,
        _ = &mut gone => return,
        _ = shutdown.wait_for(|s| *s) => {
            let _ = tx.try_send(Err(BrokerError::ShuttingDown));
            return;
        }
    };
    let join = match first {
        Ok(Some(Ok(v1::SubscribeRequest {
            request: Some(Request::Join(join)),
        }))) => join,
        Ok(Some(Ok(_))) => {
            let _ = tx.try_send(Err(invalid_request(
                "the first message of a Subscribe stream must be a Join",
            )));
            return;
        }
        Ok(Some(Err(status))) => {
            if let Some(oversized) = Oversized::of(&status) {
                let _ = tx.try_send(Err(oversized.into()));
            }
            return;
        }
        Ok(None) => return,
        Err(_) => {
            let _ = tx.try_send(Err(BrokerError::NoJoin { idle }));
            return;
        }
    };
    // Consuming takes the right on the topic and on the group (a group made by this Join
    // needs no more). Dead letters are then written by the broker on the group's behalf:
    // members need no right on the dead-letter topic.
    let allowed = access
        .authorize(Operation::Consume, Resource::topic(&join.topic))
        .and_then(|()| access.authorize(Operation::Consume, Resource::group(&join.group)));
    if let Err(denied) = allowed {
        let _ = tx.try_send(Err(denied));
        return;
    }
    // A group of a replicated topic runs on one node of the cluster at a time: here, or
    // the stream goes on to that node.
    let managed = coordinator
        .as_ref()
        .filter(|c| c.manages(&join.topic))
        .cloned();
    if let (Some(coordinator), Some(cluster)) = (&managed, &cluster) {
        let joining = Joining {
            coordinator: coordinator.clone(),
            cluster: cluster.clone(),
            groups: groups.clone(),
            forwarded,
        };
        let routed = tokio::select! {
            routed = joining.route(join.clone()) => routed,
            _ = &mut gone => return,
        };
        match routed {
            Ok(None) => {}
            Ok(Some(node)) => {
                let exchange = Exchange {
                    inbound,
                    forwarded_tx: forwarded_tx.clone(),
                    gone,
                    shutdown,
                };
                match exchange.run(joining, node, join.clone()).await {
                    Ok(None) => return,
                    // The group came to this node meanwhile: the member is served here.
                    Ok(Some(back)) => {
                        inbound = back.inbound;
                        gone = back.gone;
                        shutdown = back.shutdown;
                    }
                    Err(error) => {
                        let _ = forwarded_tx.send(Err(Status::from(error))).await;
                        return;
                    }
                }
            }
            Err(error) => {
                let _ = tx.try_send(Err(error));
                return;
            }
        }
    } else if let Some(Err(error)) = cluster.map(|c| c.check_topic(&join.topic)) {
        // A group of a one-copy topic reads this node's logs: it must serve every
        // partition.
        let _ = tx.try_send(Err(error));
        return;
    }
    let create_here = managed.is_none();
    let (group, member) = match join_group(&groups, join, tx.clone(), create_here).await {
        Ok(joined) => joined,
        Err(error) => {
            let _ = tx.try_send(Err(error));
            return;
        }
    };
    let _ = shared.set(group.clone());
    let mut stopped = group.stopped();
    loop {
        let next = tokio::select! {
            next = inbound.next() => next,
            _ = &mut gone => break,
            _ = shutdown.wait_for(|s| *s) => {
                let _ = tx.try_send(Err(BrokerError::ShuttingDown));
                break;
            }
            // Deleted: the driver already ended the stream with NOT_FOUND.
            _ = stopped.wait_for(|s| *s) => break,
        };
        let request = match next {
            None => break,
            // A request refused before decoding (over the size limit) ends the stream
            // with that reason, not with OK.
            Some(Err(status)) => {
                if let Some(oversized) = Oversized::of(&status) {
                    let _ = tx.try_send(Err(oversized.into()));
                }
                break;
            }
            Some(Ok(request)) => request,
        };
        let handled = match request.request {
            // subscribe.proto: ack ids that name no current delivery are ignored; a
            // malformed one names none either, so it is ignored too (and counted), rather
            // than ending the member's stream and moving its partitions.
            Some(Request::Ack(ack)) => group.ack(
                member,
                &well_formed(&ack.ack_ids, &malformed_ack_ids),
                &ranges(&ack.ranges),
            ),
            Some(Request::Nack(nack))
                if nack.range.is_none()
                    && !nack.ack_id.is_empty()
                    && AckId::decode(&nack.ack_id).is_err() =>
            {
                malformed_ack_ids.inc();
                Ok(())
            }
            Some(Request::Nack(nack)) => match (nack.range, nack.ack_id.is_empty()) {
                (Some(range), true) => group.nack(
                    member,
                    NackTarget::Range(ack_range(&range)),
                    nack.delay_ms,
                    &nack.reason,
                ),
                (None, false) => group.nack(
                    member,
                    NackTarget::Id(&nack.ack_id),
                    nack.delay_ms,
                    &nack.reason,
                ),
                _ => Err(invalid_request(
                    "a Nack sets exactly one of ack_id and range",
                )),
            },
            Some(Request::Extend(extend)) => group.extend(
                member,
                &well_formed(&extend.ack_ids, &malformed_ack_ids),
                &ranges(&extend.ranges),
                extend.extra_ms,
            ),
            Some(Request::Credit(credit)) => {
                group.credit(member, credit.messages, credit.bytes);
                Ok(())
            }
            Some(Request::Join(_)) => Err(invalid_request(
                "only the first message of a Subscribe stream may be a Join",
            )),
            None => Err(invalid_request(
                "the request sets none of join, ack, nack, extend, credit",
            )),
        };
        if let Err(error) = handled {
            let _ = tx.try_send(Err(error));
            break;
        }
    }
    group.leave(member);
}

/// A Join of a group of a replicated topic, on its way to the group's coordinator.
struct Joining {
    coordinator: Arc<Coordinator>,
    cluster: Arc<crate::cluster::Cluster>,
    groups: Arc<GroupRegistry>,
    forwarded: bool,
}

impl Joining {
    /// Creates the group if the Join may and it is missing, then finds its coordinator:
    /// `None` when it is this node (the group now runs here), else the node to send the
    /// stream on to.
    async fn route(&self, join: v1::Join) -> Result<Option<NodeId>, BrokerError> {
        validate_name("group", &join.group)?;
        if self.coordinator.record(&join.topic, &join.group).is_none() && !self.forwarded {
            let topic = self.groups.registry().get(&join.topic)?;
            let config = resolve_config(self.groups.registry(), &join.topic, None, join.settings)?;
            let offsets = start_offsets(&topic, join.start_position)?;
            self.coordinator
                .create(&join.topic, &join.group, config, offsets, true)
                .await?;
        }
        match self
            .coordinator
            .route(&join.topic, &join.group, self.forwarded)
            .await?
        {
            Route::Local(_) => Ok(None),
            Route::Remote(node) => Ok(Some(node)),
        }
    }
}

/// A member's stream sent on to the node that coordinates its group: requests go there,
/// responses come back, unchanged.
struct Exchange {
    inbound: Streaming<v1::SubscribeRequest>,
    forwarded_tx: ForwardedTx,
    gone: oneshot::Receiver<()>,
    shutdown: watch::Receiver<bool>,
}

impl Exchange {
    /// Runs the exchange until either side ends. Until the coordinator has answered the
    /// Join, a refusal that means "not here (any more)" (UNAVAILABLE: it died, or gave the
    /// group up) sends the Join again wherever the group is then, for up to
    /// `coordinator::ROUTE_WAIT`; if that is this node now, the exchange is handed back
    /// (`Some`) and the member is served here.
    async fn run(
        mut self,
        joining: Joining,
        mut node: NodeId,
        join: v1::Join,
    ) -> Result<Option<Exchange>, BrokerError> {
        use crate::cluster::coordinator::ROUTE_WAIT;
        let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
        loop {
            let (requests_tx, requests_rx) = mpsc::channel::<v1::SubscribeRequest>(MEMBER_QUEUE);
            let _ = requests_tx
                .send(v1::SubscribeRequest {
                    request: Some(v1::subscribe_request::Request::Join(join.clone())),
                })
                .await;
            let requests = tokio_stream::wrappers::ReceiverStream::new(requests_rx);
            let opened = joining.cluster.forward_subscribe(node, requests).await;
            let mut responses = match opened {
                Ok(responses) => responses,
                Err(error) if tokio::time::Instant::now() < deadline && again(&error) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    node = match joining.route(join.clone()).await? {
                        None => return Ok(Some(self)),
                        Some(node) => node,
                    };
                    continue;
                }
                Err(error) => return Err(error),
            };
            let mut answered = false;
            let mut requests_tx = Some(requests_tx);
            loop {
                enum Next {
                    Request(Option<Result<v1::SubscribeRequest, Status>>),
                    Response(Option<Result<v1::SubscribeResponse, Status>>),
                    Gone,
                    ShuttingDown,
                }
                let next = tokio::select! {
                    request = self.inbound.next(), if requests_tx.is_some() => Next::Request(request),
                    response = responses.next() => Next::Response(response),
                    _ = &mut self.gone => Next::Gone,
                    () = async { let _ = self.shutdown.wait_for(|s| *s).await; } => Next::ShuttingDown,
                };
                match next {
                    Next::Request(Some(Ok(request))) => {
                        if let Some(sender) = requests_tx.clone()
                            && sender.send(request).await.is_err()
                        {
                            requests_tx = None;
                        }
                    }
                    // The member half-closed (or sent something unreadable): the
                    // coordinator sees the end of its stream and ends the member.
                    Next::Request(_) => requests_tx = None,
                    Next::Response(Some(Ok(response))) => {
                        answered = true;
                        if self.forwarded_tx.send(Ok(response)).await.is_err() {
                            return Ok(None);
                        }
                    }
                    Next::Response(Some(Err(status)))
                        if !answered
                            && status.code() == tonic::Code::Unavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        break;
                    }
                    Next::Response(Some(Err(status))) => {
                        let _ = self.forwarded_tx.send(Err(status)).await;
                        return Ok(None);
                    }
                    Next::Response(None) | Next::Gone => return Ok(None),
                    Next::ShuttingDown => return Err(BrokerError::ShuttingDown),
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            node = match joining.route(join.clone()).await? {
                None => return Ok(Some(self)),
                Some(node) => node,
            };
        }
    }
}

/// Whether a failed forward is worth sending again once the group's coordinator is found
/// anew: the node was unreachable, or no longer coordinates.
fn again(error: &BrokerError) -> bool {
    crate::cluster::retry_elsewhere(error)
}

/// `ids` without the malformed ones, which are counted; borrowed when all are well formed.
fn well_formed<'a>(
    ids: &'a [Bytes],
    malformed: &prometheus::IntCounter,
) -> std::borrow::Cow<'a, [Bytes]> {
    if ids.iter().all(|id| AckId::decode(id).is_ok()) {
        return std::borrow::Cow::Borrowed(ids);
    }
    let kept: Vec<Bytes> = ids
        .iter()
        .filter(|id| AckId::decode(id).is_ok())
        .cloned()
        .collect();
    malformed.inc_by((ids.len() - kept.len()) as u64);
    std::borrow::Cow::Owned(kept)
}

fn ack_range(range: &v1::AckRange) -> AckRange {
    AckRange {
        partition: range.partition,
        first_offset: range.first_offset,
        count: range.count,
        first_delivery: range.first_delivery,
    }
}

fn ranges(ranges: &[v1::AckRange]) -> Vec<AckRange> {
    ranges.iter().map(ack_range).collect()
}
