// The consumer: a member of a consumer group over one Subscribe stream.
//
// One stream at a time. Its end is handled in one place (the call's 'status' event, which
// grpc-js emits exactly once per call, after 'error'), so a broken stream is replaced by
// exactly one new one and the group never keeps a second member of this consumer. The
// messages of a dead stream are stale: their ack ids mean nothing on the new stream, so
// settling them does nothing and the broker delivers them again.
//
// Every unsettled message of the current stream, queued or being handled, has its
// deadline extended before it expires, so a slow handler is never raced by a redelivery
// of its own message. The broker's in-flight window (`maxInFlightMessages`) bounds what is
// held; it defaults to a few times the handler concurrency rather than the broker's 4096.
//
// Several of a key at once (`maxInFlightPerKey` > 1, `key` ordering): the broker may have
// up to N unacked messages of a key with this member, in offset order, and `run()` queues
// the later ones behind the one being handled (one handler per key at a time). When a
// message of the key fails, the broker takes the key's later unacked messages back: they
// come again after the failed one, and acks for the deliveries it took back are ignored.
// So a nack drops the key's later messages still queued here: handing them to the
// handler would process them before the failed message's redelivery, for nothing (see
// `dropTakenBack`).
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { Client } from './client';
import { ClosedError, errorFor, fromGrpc, HeraldError, isRetryable } from './errors';
import { groupSettingsFromWire, groupSettingsToWire, positionToWire, type GroupSettings, type OrderingMode, type Position } from './admin';
import { backoffDelay } from './producer';
import type { SubscribeRequest } from './generated/herald/v1/SubscribeRequest';
import type { SubscribeResponse__Output } from './generated/herald/v1/SubscribeResponse';
import type { Delivery__Output } from './generated/herald/v1/Delivery';

/** The broker's largest `max_in_flight_per_key` (it clamps larger values to it). */
const MAX_IN_FLIGHT_PER_KEY = 65_536;

export interface ConsumerOptions {
  /** A label shown by DescribeGroup (default `node-<pid>`). */
  clientId?: string;
  /** Handlers running at once in `run()` (default 16). */
  concurrency?: number;
  /** Most messages held unacked (default 4 × concurrency). */
  maxInFlightMessages?: number;
  /** Most bytes held unacked (default: the broker's). */
  maxInFlightBytes?: number;
  /**
   * Most messages of one key held unacked at once, when the group's ordering is `key`: an
   * integer from 1 to 65536 (default: unset, the broker's default of 1, strict key order).
   * Above 1 the broker sends up to that many of a busy key, in offset order, without
   * waiting for each ack; `run()` still handles a key's messages one after another, in
   * the order received. When one of them fails (nacked, its deadline expired, this
   * consumer left, dead-lettered), the broker takes the key's later unacked messages back:
   * they are delivered again after the failed one, acks for the taken-back deliveries are
   * ignored, and the take-back does not count toward `maxDeliveryAttempts`. `run()` drops
   * the key's later messages it still queued when it nacks one; a later one the broker sent
   * before it saw the nack but which arrives after it may still be handled, and then comes
   * again after the failed one. Either way a key's messages are processed again in offset
   * order from the failed one on. With the iterator, after nacking a message, ack or skip
   * the key's later messages already received: they come again either way.
   */
  maxInFlightPerKey?: number;
  /** Where the group starts if this consumer creates it (default 'earliest'). */
  start?: Position;
  /** The group's settings if this consumer creates it. */
  settings?: GroupSettings;
  /** Extend the deadline of held messages before it expires (default true). */
  autoExtend?: boolean;
  /** Delay of the redelivery after a handler fails; default the group's exponential backoff. */
  nackDelayMs?: number;
  /** Rejoin backoff after a broken stream: first delay, and cap (defaults 100 ms, 5 s), with jitter. */
  reconnectBackoffMs?: number;
  reconnectBackoffMaxMs?: number;
}

/** A handler of the `run()` form: resolving acks the message, throwing or rejecting nacks it. */
export type Handler = (message: Message) => unknown | Promise<unknown>;

/** One delivery of one message. Settle it once: `ack()` or `nack()`. */
export class Message {
  readonly topic: string;
  readonly partition: number;
  readonly offset: bigint;
  /** The key; undefined when the record has none. */
  readonly key?: Buffer;
  readonly value: Buffer;
  /** Headers in published order (names may repeat). */
  readonly headers: { key: string; value: Buffer }[];
  readonly timestampMs: number;
  /** 1 for the first delivery, 2 for the first redelivery... */
  readonly attempt: number;
  /** @internal */ readonly ackId: Buffer;
  /** @internal */ readonly generation: number;
  /** @internal */ localDeadline: number;
  private done = false;

  /** @internal */
  constructor(private readonly consumer: Consumer, d: Delivery__Output, generation: number, ackDeadlineMs: number) {
    this.topic = consumer.topic;
    this.partition = d.partition;
    this.offset = BigInt(d.offset);
    this.key = d.key ?? undefined;
    this.value = d.value;
    this.headers = d.headers;
    this.timestampMs = Number(d.timestamp_ms);
    this.attempt = d.delivery_attempt;
    this.ackId = d.ack_id;
    this.generation = generation;
    this.localDeadline = Date.now() + ackDeadlineMs;
  }

  /** The value of the first header named `name`, as a string (or undefined). */
  header(name: string): string | undefined {
    return this.headers.find((h) => h.key === name)?.value.toString('utf8');
  }

  /** Whether it was acked or nacked already. */
  get settled(): boolean {
    return this.done;
  }

  /** Done: the group will not deliver it again. */
  ack(): void {
    if (this.done) return;
    this.done = true;
    this.consumer._settle(this, { ack: true });
  }

  /** Failed: delivered again after `delayMs` (default: the group's exponential backoff), or dead-lettered after the group's max attempts. */
  nack(options: { delayMs?: number; reason?: string } = {}): void {
    if (this.done) return;
    this.done = true;
    this.consumer._settle(this, { ack: false, ...options });
  }

  /** Pushes the deadline to now + `ms` (default the group's ack deadline). Automatic unless `autoExtend: false`. */
  extend(ms?: number): void {
    if (!this.done) this.consumer._extend([this], ms);
  }
}

/**
 * A member of a consumer group; made by `client.consumer(topic, group)`. Consume with
 * `for await (const m of consumer)` (then ack or nack each message), or with
 * `run(handler)`. Emits 'joined' ({memberId, partitions}), 'assignment' (partitions) and
 * 'reconnecting' (error, delayMs).
 */
export class Consumer extends EventEmitter {
  readonly topic: string;
  readonly group: string;
  /** The member id of the current stream. */
  memberId = '';
  /** The partitions this member owns now. */
  partitions: number[] = [];
  /** The group's ordering mode and ack deadline, as the broker reported them on joining. */
  ordering: OrderingMode = 'key';
  ackDeadlineMs = 30_000;
  /** Streams joined so far (1 + rejoins). */
  joins = 0;

  private readonly o: {
    clientId: string;
    concurrency: number;
    maxInFlightMessages: number;
    maxInFlightBytes: number;
    /** 0: unset, the broker's default (1). */
    maxInFlightPerKey: number;
    start: Position;
    settings: GroupSettings;
    autoExtend: boolean;
    nackDelayMs?: number;
    reconnectBackoffMs: number;
    reconnectBackoffMaxMs: number;
  };
  private call?: grpc.ClientDuplexStream<SubscribeRequest, SubscribeResponse__Output>;
  private generation = 0;
  private started = false;
  private closing = false;
  private ended = false;
  private failure?: HeraldError;
  private failures = 0;
  private rejoinTimer?: NodeJS.Timeout;
  private extendTimer?: NodeJS.Timeout;
  private readonly unsettled = new Set<Message>();
  private pendingAcks: Buffer[] = [];
  private flushQueued = false;
  // The iterator form's buffer, and the reader waiting on it.
  private readonly buffer: Message[] = [];
  private wake?: () => void;
  // The handler form.
  private handler?: Handler;
  private readonly waiting: Message[] = [];
  private readonly activeLanes = new Set<string>();
  private readonly running = new Set<Promise<void>>();
  private joinedWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private streamEnded?: () => void;
  private endWaiters: (() => void)[] = [];

  constructor(private readonly client: Client, topic: string, group: string, options: ConsumerOptions = {}) {
    super();
    this.topic = topic;
    this.group = group;
    const concurrency = options.concurrency ?? 16;
    const perKey = options.maxInFlightPerKey;
    if (perKey !== undefined && (!Number.isInteger(perKey) || perKey < 1 || perKey > MAX_IN_FLIGHT_PER_KEY)) {
      throw errorFor(
        grpc.status.INVALID_ARGUMENT,
        `maxInFlightPerKey must be an integer from 1 to ${MAX_IN_FLIGHT_PER_KEY}, not ${String(perKey)}`,
      );
    }
    this.o = {
      clientId: options.clientId ?? `node-${process.pid}`,
      concurrency,
      maxInFlightMessages: options.maxInFlightMessages ?? concurrency * 4,
      maxInFlightBytes: options.maxInFlightBytes ?? 0,
      maxInFlightPerKey: perKey ?? 0,
      start: options.start ?? 'earliest',
      settings: options.settings ?? {},
      autoExtend: options.autoExtend ?? true,
      nackDelayMs: options.nackDelayMs,
      reconnectBackoffMs: options.reconnectBackoffMs ?? 100,
      reconnectBackoffMaxMs: options.reconnectBackoffMaxMs ?? 5_000,
    };
  }

  /** Joins the group (once); resolves when the broker confirmed the first join. */
  joined(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.joins > 0) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.joinedWaiters.push({ resolve, reject }));
    this.startOnce();
    return p;
  }

  /** Messages as they arrive; ack or nack each. Ends after `close()`; throws on a final error. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Message> {
    if (this.handler) throw new Error('this consumer already runs a handler');
    this.startOnce();
    for (;;) {
      const m = this.buffer.shift();
      if (m) {
        if (m.generation === this.generation) yield m;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.closing || this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  /**
   * Runs `handler` for every message, up to `concurrency` at once, in order per key (or
   * per partition) as the group's ordering mode asks. Resolving acks the message; throwing
   * or rejecting nacks it (redelivered after a backoff, dead-lettered after the group's
   * max attempts). Resolves after `close()` has drained; rejects on a final error.
   */
  run(handler: Handler): Promise<void> {
    if (this.handler) throw new Error('this consumer already runs a handler');
    this.handler = handler;
    this.startOnce();
    return new Promise<void>((resolve, reject) => {
      this.endWaiters.push(() => (this.failure ? reject(this.failure) : resolve()));
    });
  }

  /**
   * Leaves the group gracefully: no new handler starts, the running ones finish and their
   * acks are sent, then the stream is closed. Messages received but not started are
   * delivered again to the other members. With `timeoutMs`, handlers still running after
   * that long are abandoned (their messages are delivered again) and the stream closed.
   */
  async close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closing) {
      await new Promise<void>((resolve) => (this.ended ? resolve() : this.endWaiters.push(resolve)));
      return;
    }
    this.closing = true;
    clearTimeout(this.rejoinTimer);
    this.rejoinTimer = undefined;
    this.wake?.();
    this.waiting.length = 0;
    const giveUp = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
    while (this.running.size > 0) {
      const all = Promise.all([...this.running]);
      if (giveUp === undefined) {
        await all;
        continue;
      }
      let timer: NodeJS.Timeout | undefined;
      const late = await Promise.race([
        all.then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), Math.max(0, giveUp - Date.now())))),
      ]);
      clearTimeout(timer);
      if (late) break;
    }
    this.flushAcks();
    const call = this.call;
    if (call) {
      const ended = new Promise<void>((resolve) => (this.streamEnded = resolve));
      call.end();
      const timer = setTimeout(() => call.cancel(), 5_000);
      await ended;
      clearTimeout(timer);
    }
    this.finish();
  }

  /** @internal */
  _settle(m: Message, how: { ack: boolean; delayMs?: number; reason?: string }): void {
    this.unsettled.delete(m);
    if (m.generation !== this.generation || !this.call) return;
    if (how.ack) {
      this.pendingAcks.push(m.ackId);
      if (!this.flushQueued) {
        this.flushQueued = true;
        setImmediate(() => this.flushAcks());
      }
    } else {
      this.flushAcks();
      const delay = how.delayMs ?? this.o.nackDelayMs;
      this.call.write({ nack: { ack_id: m.ackId, delay_ms: delay, reason: how.reason ?? '' } });
      if (this.handler && this.o.maxInFlightPerKey > 1) this.dropTakenBack(m);
    }
  }

  /**
   * After nacking `failed` (with `maxInFlightPerKey` above 1): drops the later messages
   * of its key still queued for the handler. The broker takes a failed message's later
   * in-flight messages of the same key back when it processes the nack; it delivers them
   * again after the failed one and ignores acks for the deliveries it took back. Handling
   * them now would only process them out of order (before the failed message's
   * redelivery) and then again. So they are dropped, as a message of an old stream is:
   * not settled (there is nothing to settle) and no longer extended. Only the messages
   * queued now are dropped: one the broker sent before it read the nack but which arrives
   * after it is still handled, and comes again after the failed one. With 1 (the
   * default) the broker never has a later message of a key out while one is unacked.
   */
  private dropTakenBack(failed: Message): void {
    if (this.ordering !== 'key' || failed.key === undefined) return;
    const lane = this.lane(failed);
    let kept = 0;
    for (const m of this.waiting) {
      const takenBack = m.generation === failed.generation && m.offset > failed.offset && this.lane(m) === lane;
      if (takenBack) this.unsettled.delete(m);
      else this.waiting[kept++] = m;
    }
    this.waiting.length = kept;
  }

  /** @internal */
  _extend(messages: Message[], ms?: number): void {
    const extra = ms ?? this.ackDeadlineMs;
    const ids = messages.filter((m) => m.generation === this.generation && !m.settled).map((m) => m.ackId);
    if (!this.call || ids.length === 0) return;
    const now = Date.now();
    for (const m of messages) m.localDeadline = now + extra;
    for (let i = 0; i < ids.length; i += 1000) {
      this.call.write({ extend: { ack_ids: ids.slice(i, i + 1000), extra_ms: extra } });
    }
  }

  private flushAcks(): void {
    this.flushQueued = false;
    if (this.pendingAcks.length === 0 || !this.call) return;
    const ids = this.pendingAcks;
    this.pendingAcks = [];
    for (let i = 0; i < ids.length; i += 4096) this.call.write({ ack: { ack_ids: ids.slice(i, i + 4096) } });
  }

  private startOnce(): void {
    if (this.started) return;
    this.started = true;
    this.join();
  }

  private join(): void {
    const generation = ++this.generation;
    this.unsettled.clear();
    this.pendingAcks = [];
    this.waiting.length = 0;
    let call: grpc.ClientDuplexStream<SubscribeRequest, SubscribeResponse__Output>;
    try {
      call = this.client.raw.Subscribe(this.client.metadata());
    } catch (err) {
      // The channel was closed under the consumer: nothing to rejoin.
      this.call = undefined;
      this.failure = new ClosedError(`cannot subscribe: ${(err as Error).message}`);
      for (const w of this.joinedWaiters.splice(0)) w.reject(this.failure);
      this.finish();
      return;
    }
    this.call = call;
    call.write({
      join: {
        topic: this.topic,
        group: this.group,
        client_id: this.o.clientId,
        max_in_flight_messages: this.o.maxInFlightMessages,
        max_in_flight_bytes: String(this.o.maxInFlightBytes),
        max_in_flight_per_key: this.o.maxInFlightPerKey,
        settings: groupSettingsToWire(this.o.settings),
        start_position: positionToWire(this.o.start),
      },
    } as SubscribeRequest);
    call.on('data', (r: SubscribeResponse__Output) => {
      if (generation === this.generation) this.onResponse(r, generation);
    });
    call.on('error', () => {});
    call.on('status', (status: grpc.StatusObject) => {
      if (generation === this.generation) this.onStreamEnd(status);
    });
  }

  private onResponse(r: SubscribeResponse__Output, generation: number): void {
    if (r.joined) {
      this.failures = 0;
      this.joins++;
      this.memberId = r.joined.member_id;
      this.partitions = r.joined.partitions;
      const settings = groupSettingsFromWire(r.joined.settings);
      this.ordering = settings.ordering;
      this.ackDeadlineMs = settings.ackDeadlineMs;
      this.scheduleExtend();
      for (const w of this.joinedWaiters.splice(0)) w.resolve();
      this.emit('joined', { memberId: this.memberId, partitions: this.partitions });
    } else if (r.assignment) {
      this.partitions = r.assignment.partitions;
      this.emit('assignment', this.partitions);
    } else if (r.deliveries) {
      for (const d of r.deliveries.deliveries) {
        const m = new Message(this, d, generation, this.ackDeadlineMs);
        this.unsettled.add(m);
        if (this.closing) continue; // redelivered to another member once the stream closes
        if (this.handler) this.waiting.push(m);
        else this.buffer.push(m);
      }
      if (this.handler) this.dispatch();
      else this.wake?.();
    }
  }

  /** The unit of ordering of a message under the group's mode; undefined = unordered. */
  private lane(m: Message): string | undefined {
    if (this.ordering === 'partition') return String(m.partition);
    if (this.ordering === 'key' && m.key !== undefined) return `${m.partition}/${m.key.toString('base64')}`;
    return undefined;
  }

  /** Starts handlers for waiting messages whose lane is free, up to the concurrency. */
  private dispatch(): void {
    if (this.closing) return;
    for (let i = 0; i < this.waiting.length && this.running.size < this.o.concurrency; ) {
      const m = this.waiting[i];
      if (m.generation !== this.generation) {
        this.waiting.splice(i, 1);
        continue;
      }
      const lane = this.lane(m);
      if (lane !== undefined && this.activeLanes.has(lane)) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      if (lane !== undefined) this.activeLanes.add(lane);
      const run = this.handle(m).finally(() => {
        if (lane !== undefined) this.activeLanes.delete(lane);
        this.running.delete(run);
        this.dispatch();
      });
      this.running.add(run);
    }
  }

  private async handle(m: Message): Promise<void> {
    try {
      await this.handler!(m);
      m.ack();
    } catch (err) {
      m.nack({ reason: String((err as Error)?.message ?? err).slice(0, 1000) });
    }
  }

  private scheduleExtend(): void {
    if (!this.o.autoExtend || this.extendTimer) return;
    const tick = () => {
      this.extendTimer = undefined;
      if (this.closing && this.running.size === 0) return;
      const now = Date.now();
      // Extend what would expire within two thirds of a deadline, with a tick every sixth:
      // an event loop stalled for half a deadline still extends in time.
      const due = [...this.unsettled].filter((m) => m.localDeadline - now < (this.ackDeadlineMs * 2) / 3);
      this._extend(due);
      this.extendTimer = setTimeout(tick, Math.max(20, this.ackDeadlineMs / 6));
    };
    this.extendTimer = setTimeout(tick, Math.max(20, this.ackDeadlineMs / 6));
  }

  private onStreamEnd(status: grpc.StatusObject): void {
    this.call = undefined;
    this.unsettled.clear();
    this.streamEnded?.();
    if (this.closing) return;
    const err = status.code === grpc.status.OK
      ? errorFor(grpc.status.UNAVAILABLE, 'the broker ended the subscription')
      : fromGrpc(status);
    if (!isRetryable(err)) {
      this.failure = err;
      for (const w of this.joinedWaiters.splice(0)) w.reject(err);
      this.finish();
      return;
    }
    this.failures++;
    const delay = backoffDelay(this.failures, this.o.reconnectBackoffMs, this.o.reconnectBackoffMaxMs);
    this.emit('reconnecting', err, delay);
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = undefined;
      if (!this.closing) this.join();
    }, delay);
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.extendTimer);
    clearTimeout(this.rejoinTimer);
    this.generation++;
    this.wake?.();
    if (!this.failure && this.joinedWaiters.length > 0) {
      for (const w of this.joinedWaiters.splice(0)) w.reject(new ClosedError('the consumer is closed'));
    }
    for (const w of this.endWaiters.splice(0)) w();
  }
}
