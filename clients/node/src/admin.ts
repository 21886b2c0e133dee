import type { Client } from './client';
import type { Position as WirePosition } from './generated/herald/v1/Position';
import type { GroupSettings__Output } from './generated/herald/v1/GroupSettings';
import type { GroupDescription__Output } from './generated/herald/v1/GroupDescription';
import type { TopicDescription__Output } from './generated/herald/v1/TopicDescription';

/**
 * A position in a partition: the oldest record still stored, the end (only records
 * published from now on), an exact offset, or the first record at or after a time.
 */
export type Position = 'earliest' | 'latest' | { offset: bigint } | { timestamp: number | Date };

export type OrderingMode = 'key' | 'partition' | 'none';
export type FsyncPolicy = 'always' | 'interval' | 'never';

/** Settings of a topic; unset fields take the broker's defaults. */
export interface TopicConfig {
  retentionMs?: bigint;
  retentionBytes?: bigint;
  segmentBytes?: bigint;
  fsyncPolicy?: FsyncPolicy;
  fsyncIntervalMs?: number;
  maxMessageBytes?: number;
}

/** Settings of a consumer group; unset fields take defaults (create) or stay (update). */
export interface GroupSettings {
  ackDeadlineMs?: number;
  retryBackoffMinMs?: number;
  retryBackoffMaxMs?: number;
  /** Deliveries after which a message goes to `deadLetterTopic`; 0 = retry forever. */
  maxDeliveryAttempts?: number;
  deadLetterTopic?: string;
  ordering?: OrderingMode;
}

export interface PartitionInfo {
  partition: number;
  startOffset: bigint;
  endOffset: bigint;
  sizeBytes: bigint;
  segmentCount: number;
}

export interface TopicInfo {
  name: string;
  partitionCount: number;
  config: Required<TopicConfig>;
  partitions: PartitionInfo[];
}

export interface GroupInfo {
  topic: string;
  group: string;
  settings: Required<GroupSettings>;
  members: { memberId: string; clientId: string; partitions: number[] }[];
  partitions: {
    partition: number;
    committedOffset: bigint;
    endOffset: bigint;
    lag: bigint;
    inFlight: number;
    redelivered: bigint;
    deadLettered: bigint;
  }[];
}

export interface PendingMessage {
  partition: number;
  offset: bigint;
  key?: Buffer;
  deliveryAttempt: number;
  deadlineMs: number;
  state: 'in_flight' | 'backoff';
  memberId: string;
}

const ORDERING_TO_WIRE = { key: 'ORDERING_MODE_KEY', partition: 'ORDERING_MODE_PARTITION', none: 'ORDERING_MODE_NONE' } as const;
const FSYNC_TO_WIRE = { always: 'FSYNC_POLICY_ALWAYS', interval: 'FSYNC_POLICY_INTERVAL', never: 'FSYNC_POLICY_NEVER' } as const;

export function positionToWire(p: Position): WirePosition {
  if (p === 'earliest') return { earliest: {} };
  if (p === 'latest') return { latest: {} };
  if ('offset' in p) return { offset: p.offset.toString() };
  const t = p.timestamp instanceof Date ? p.timestamp.getTime() : p.timestamp;
  return { timestamp_ms: String(t) };
}

export function groupSettingsToWire(s: GroupSettings = {}): Record<string, unknown> {
  return {
    ack_deadline_ms: s.ackDeadlineMs,
    retry_backoff_min_ms: s.retryBackoffMinMs,
    retry_backoff_max_ms: s.retryBackoffMaxMs,
    max_delivery_attempts: s.maxDeliveryAttempts,
    dead_letter_topic: s.deadLetterTopic,
    ordering: s.ordering ? ORDERING_TO_WIRE[s.ordering] : 'ORDERING_MODE_UNSPECIFIED',
  };
}

export function groupSettingsFromWire(s: GroupSettings__Output | null | undefined): Required<GroupSettings> {
  const ordering = String(s?.ordering ?? 'ORDERING_MODE_KEY').replace('ORDERING_MODE_', '').toLowerCase();
  return {
    ackDeadlineMs: s?.ack_deadline_ms ?? 30_000,
    retryBackoffMinMs: s?.retry_backoff_min_ms ?? 0,
    retryBackoffMaxMs: s?.retry_backoff_max_ms ?? 0,
    maxDeliveryAttempts: s?.max_delivery_attempts ?? 0,
    deadLetterTopic: s?.dead_letter_topic ?? '',
    ordering: (ordering === 'unspecified' ? 'key' : ordering) as OrderingMode,
  };
}

function topicFromWire(t: TopicDescription__Output): TopicInfo {
  const c = t.config;
  return {
    name: t.name,
    partitionCount: t.partition_count,
    config: {
      retentionMs: BigInt(c?.retention_ms ?? 0),
      retentionBytes: BigInt(c?.retention_bytes ?? 0),
      segmentBytes: BigInt(c?.segment_bytes ?? 0),
      fsyncPolicy: String(c?.fsync_policy ?? '').replace('FSYNC_POLICY_', '').toLowerCase() as FsyncPolicy,
      fsyncIntervalMs: c?.fsync_interval_ms ?? 0,
      maxMessageBytes: c?.max_message_bytes ?? 0,
    },
    partitions: t.partitions.map((p) => ({
      partition: p.partition,
      startOffset: BigInt(p.start_offset),
      endOffset: BigInt(p.end_offset),
      sizeBytes: BigInt(p.size_bytes),
      segmentCount: p.segment_count,
    })),
  };
}

function groupFromWire(g: GroupDescription__Output): GroupInfo {
  return {
    topic: g.topic,
    group: g.group,
    settings: groupSettingsFromWire(g.settings),
    members: g.members.map((m) => ({ memberId: m.member_id, clientId: m.client_id, partitions: m.partitions })),
    partitions: g.partitions.map((p) => {
      return {
        partition: p.partition,
        committedOffset: BigInt(p.committed_offset),
        endOffset: BigInt(p.end_offset),
        lag: BigInt(p.lag),
        inFlight: p.in_flight_count,
        redelivered: BigInt(p.redelivered_count),
        deadLettered: BigInt(p.dead_lettered_count),
      };
    }),
  };
}

/** Topic and consumer-group administration; made by `client.admin()`. */
export class Admin {
  constructor(private readonly client: Client) {}

  async createTopic(name: string, partitions: number, config: TopicConfig = {}): Promise<TopicInfo> {
    const reply = await this.client.unary<unknown, { topic: TopicDescription__Output }>('CreateTopic', {
      name,
      partitions,
      config: {
        retention_ms: config.retentionMs?.toString(),
        retention_bytes: config.retentionBytes?.toString(),
        segment_bytes: config.segmentBytes?.toString(),
        fsync_policy: config.fsyncPolicy ? FSYNC_TO_WIRE[config.fsyncPolicy] : 'FSYNC_POLICY_UNSPECIFIED',
        fsync_interval_ms: config.fsyncIntervalMs,
        max_message_bytes: config.maxMessageBytes,
      },
    });
    return topicFromWire(reply.topic);
  }

  /** Creates the topic unless it exists; returns whether it created it. */
  async ensureTopic(name: string, partitions: number, config: TopicConfig = {}): Promise<boolean> {
    try {
      await this.createTopic(name, partitions, config);
      return true;
    } catch (err) {
      if ((err as { codeName?: string }).codeName === 'ALREADY_EXISTS') return false;
      throw err;
    }
  }

  async deleteTopic(name: string): Promise<void> {
    await this.client.unary('DeleteTopic', { name });
  }

  async listTopics(): Promise<{ name: string; partitionCount: number }[]> {
    const reply = await this.client.unary<unknown, { topics: { name: string; partition_count: number }[] }>('ListTopics', {});
    return reply.topics.map((t) => ({ name: t.name, partitionCount: t.partition_count }));
  }

  async describeTopic(name: string): Promise<TopicInfo> {
    const reply = await this.client.unary<unknown, { topic: TopicDescription__Output }>('DescribeTopic', { name });
    return topicFromWire(reply.topic);
  }

  async createGroup(
    topic: string,
    group: string,
    options: { settings?: GroupSettings; start?: Position } = {},
  ): Promise<GroupInfo> {
    const reply = await this.client.unary<unknown, { group: GroupDescription__Output }>('CreateGroup', {
      topic,
      group,
      settings: groupSettingsToWire(options.settings),
      start_position: positionToWire(options.start ?? 'latest'),
    });
    return groupFromWire(reply.group);
  }

  async updateGroup(topic: string, group: string, settings: GroupSettings): Promise<GroupInfo> {
    const reply = await this.client.unary<unknown, { group: GroupDescription__Output }>('UpdateGroup', {
      topic,
      group,
      settings: groupSettingsToWire(settings),
    });
    return groupFromWire(reply.group);
  }

  async deleteGroup(topic: string, group: string): Promise<void> {
    await this.client.unary('DeleteGroup', { topic, group });
  }

  async describeGroup(topic: string, group: string): Promise<GroupInfo> {
    const reply = await this.client.unary<unknown, { group: GroupDescription__Output }>('DescribeGroup', { topic, group });
    return groupFromWire(reply.group);
  }

  /** Groups of one topic, or of every topic. */
  async listGroups(topic?: string): Promise<{ topic: string; group: string }[]> {
    const reply = await this.client.unary<unknown, { groups: { topic: string; group: string }[] }>('ListGroups', {
      topic,
    });
    return reply.groups.map((g) => ({ topic: g.topic, group: g.group }));
  }

  /** Moves the group to `position` in one partition, or in every one; returns the new committed offsets. */
  async seek(topic: string, group: string, position: Position, partition?: number): Promise<Map<number, bigint>> {
    const reply = await this.client.unary<unknown, { partitions: { partition: number; offset: string }[] }>('Seek', {
      topic,
      group,
      partition,
      position: positionToWire(position),
    });
    return new Map(reply.partitions.map((p) => [p.partition, BigInt(p.offset)]));
  }

  /** Messages the group has delivered and not yet acked. */
  async listPending(
    topic: string,
    group: string,
    options: { partition?: number; key?: Buffer | string; limit?: number } = {},
  ): Promise<{ messages: PendingMessage[]; truncated: boolean }> {
    const reply = await this.client.unary<unknown, { messages: Record<string, never>[]; truncated: boolean }>(
      'ListPending',
      {
        topic,
        group,
        partition: options.partition,
        key: typeof options.key === 'string' ? Buffer.from(options.key) : options.key,
        limit: options.limit ?? 0,
      },
    );
    return {
      truncated: reply.truncated,
      messages: reply.messages.map((m: Record<string, any>) => ({
        partition: m.partition,
        offset: BigInt(m.offset),
        key: m.key ?? undefined,
        deliveryAttempt: m.delivery_attempt,
        deadlineMs: Number(m.deadline_ms),
        state: m.state === 'PENDING_STATE_BACKOFF' ? 'backoff' : 'in_flight',
        memberId: m.member_id,
      })),
    };
  }

  /** Republishes the group's dead letters to their source partitions; returns how many. */
  async redrive(topic: string, group: string, maxMessages = 0n): Promise<bigint> {
    const reply = await this.client.unary<unknown, { redriven_count: string }>('Redrive', {
      topic,
      group,
      max_messages: maxMessages.toString(),
    });
    return BigInt(reply.redriven_count);
  }
}
