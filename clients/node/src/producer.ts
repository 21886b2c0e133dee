// The producer: batches records per partition and pipelines the batches over one
// PublishStream.
//
// A record first takes its size from a byte budget (`maxBufferedBytes`): `send` waits,
// in order, while the budget is spent, which bounds the memory of a fast producer. It
// then joins its partition's open batch. A batch is sealed when it reaches `batchBytes` or
// `batchRecords`, or once it has waited `lingerMs` and its partition is free. Sealed batches
// go out on the stream, at most one per partition and `maxInFlight` in all at a time.
//
// Because a partition never has two batches in flight, a batch that fails with
// UNAVAILABLE (or whose stream breaks) is retried, after a backoff with jitter, before any
// later batch of that partition is sent: a key's records are never reordered.
//
// Idempotence (on by default). Before its first batch the producer asks the broker for an
// identity (InitProducer: a producer id and an epoch). Each batch carries that identity
// and its sequence number in its partition, stamped when the batch is first sent and kept
// for every retry, so a retry of a batch the broker already stored (its reply was lost to
// a broken connection or a broker restart) is answered with the first offsets instead of
// being stored again: each record once, in order. Without it (`idempotent: false`), such
// a retry stores the batch twice (at-least-once).
import * as grpc from '@grpc/grpc-js';
import type { Client } from './client';
import { ClosedError, errorFor, fromGrpc, HeraldError, isRetryable } from './errors';
import { hashReady, keyBytes, partitionForKey } from './hash';
import type { PublishStreamRequest } from './generated/herald/v1/PublishStreamRequest';
import type { PublishStreamResponse__Output } from './generated/herald/v1/PublishStreamResponse';
import type { InitProducerResponse__Output } from './generated/herald/v1/InitProducerResponse';

/** What a batch is stamped with (producer ids are uint64, carried as decimal strings). */
interface ProducerSequence {
  producer_id: string;
  epoch: number;
  base_sequence: number;
}

/** Where an idempotent producer's identity stands. */
type Identity =
  | { state: 'off' }
  /** To be asked for (again) from this time (ms) on. */
  | { state: 'needed'; after: number }
  | { state: 'asking' }
  | { state: 'known'; producerId: string; epoch: number };

/** Header values: strings are sent as UTF-8. */
export type Headers = Record<string, string | Buffer> | [string, string | Buffer][];

/** A record to publish. */
export interface ProducerRecord {
  /** The payload; strings are sent as UTF-8. */
  value: Buffer | Uint8Array | string;
  /** Picks the partition (`xxh64(key) % partitions`, like the broker) and is the unit of ordering. */
  key?: Buffer | Uint8Array | string;
  /** Headers, in order. Names starting with `herald-` are reserved for the broker. */
  headers?: Headers;
  /** Event time, ms since the Unix epoch. Default: the time of `send`. */
  timestampMs?: number;
  /** An explicit partition instead of the key's. */
  partition?: number;
}

/** Where an acknowledged record was stored. */
export interface Acked {
  partition: number;
  offset: bigint;
}

export interface ProducerOptions {
  /** A partition's batch is sealed at this many bytes (default 512 KiB; the broker's limit is 2 MiB). */
  batchBytes?: number;
  /** ...or at this many records (default 10 000). */
  batchRecords?: number;
  /** How long a batch waits for more records (default 5 ms; 0 = send what was queued in the same tick). */
  lingerMs?: number;
  /**
   * Adaptive batching (default true): a batch for a partition with nothing queued or in flight
   * goes at the end of the current tick instead of after `lingerMs`, so a low rate costs a round
   * trip rather than the linger; records arriving while a batch is in flight batch behind it.
   * False: every batch waits `lingerMs` (or fills).
   */
  sendWhenIdle?: boolean;
  /** Bytes of records held (buffered or in flight) at most; `send` waits beyond (default 32 MiB). */
  maxBufferedBytes?: number;
  /** Batches in flight at most, across partitions (default 16); a partition never has more than one. */
  maxInFlight?: number;
  /** Retries of a batch that fails with UNAVAILABLE before its records fail (default 10). */
  maxRetries?: number;
  /** First retry delay, doubled each time up to `retryBackoffMaxMs` (defaults 100 ms and 5 s), with jitter. */
  retryBackoffMs?: number;
  retryBackoffMaxMs?: number;
  /**
   * Idempotent publishing (default true): a batch retried after a lost reply is stored
   * once. False: such a retry may store the batch twice.
   */
  idempotent?: boolean;
  /**
   * Names the producer across restarts (1..=249 characters of `[A-Za-z0-9._-]`): a new
   * producer with the same name fences the older one, whose later sends then fail with
   * FailedPreconditionError. Unset: an anonymous producer, never fenced.
   */
  producerName?: string;
}

/** Bytes counted per record on top of its key, value and headers (framing, bookkeeping). */
const RECORD_OVERHEAD = 32;

/**
 * One record's place in the producer. Its `acked` promise is made only when the caller
 * asks for it: at 100 k records/s a promise and two closures per record that nobody awaits
 * are most of the garbage a fire-and-forget producer makes.
 */
class Entry {
  private outcome?: { ok: Acked } | { err: Error };
  private waiter?: { resolve: (a: Acked) => void; reject: (e: Error) => void };
  private promise?: Promise<Acked>;

  constructor(readonly size: number) {}

  get acked(): Promise<Acked> {
    if (this.promise) return this.promise;
    const o = this.outcome;
    if (o) {
      this.promise = 'ok' in o ? Promise.resolve(o.ok) : rejected(o.err);
    } else {
      this.promise = new Promise<Acked>((resolve, reject) => (this.waiter = { resolve, reject }));
      // Marked handled: a caller that only awaits flush() still learns of failures there.
      this.promise.catch(() => {});
    }
    return this.promise;
  }

  resolve(a: Acked): void {
    this.outcome = { ok: a };
    this.waiter?.resolve(a);
  }

  reject(e: Error): void {
    this.outcome = { err: e };
    this.waiter?.reject(e);
  }
}

function rejected(e: Error): Promise<never> {
  const p = Promise.reject(e);
  p.catch(() => {});
  return p;
}

interface Batch {
  partition: number;
  records: unknown[];
  entries: Entry[];
  bytes: number;
  openedAt: number;
  attempts: number;
  /** Not before this time (ms), after a retryable failure. */
  notBefore: number;
  /** The identity and sequence the batch was stamped with when first sent; kept for its retries. */
  stamp?: ProducerSequence;
  settled: Promise<HeraldError | undefined>;
  settle: (e: HeraldError | undefined) => void;
}

function toBuffer(v: Buffer | Uint8Array | string): Buffer {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/** Exponential backoff with full jitter in [d/2, d]: retries of many clients spread out. */
/**
 * Whether a unary call's failure says nothing about the request itself: the broker was
 * unreachable, restarting, or the connection broke under the call.
 */
function isTransient(err: HeraldError): boolean {
  return (
    isRetryable(err) ||
    err.code === grpc.status.CANCELLED ||
    err.code === grpc.status.UNKNOWN ||
    err.code === grpc.status.DEADLINE_EXCEEDED
  );
}

export function backoffDelay(attempt: number, minMs: number, maxMs: number): number {
  const d = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1));
  return d / 2 + Math.random() * (d / 2);
}

/** A batching, pipelining producer for one topic; made by `client.producer(topic)`. */
export class Producer {
  readonly topic: string;
  private readonly o: Required<Omit<ProducerOptions, 'producerName'>> & { producerName?: string };
  private partitions?: number;
  private partitionsLookup?: Promise<number>;
  /** The topic's largest record; a larger one is refused at `send`, before it can sink a batch. */
  private maxMessageBytes = Infinity;
  private buffered = 0;
  private readonly budgetWaiters: { size: number; go: () => void; fail: (e: Error) => void }[] = [];
  private readonly open = new Map<number, Batch>();
  private readonly sealed = new Map<number, Batch[]>();
  private readonly busy = new Set<number>();
  private readonly inFlight = new Map<string, Batch>();
  private sticky = 0;
  private sequence = 0n;
  private call?: grpc.ClientDuplexStream<PublishStreamRequest, PublishStreamResponse__Output>;
  private callGeneration = 0;
  private streamFailures = 0;
  private reopenTimer?: NodeJS.Timeout;
  private pumpTimer?: NodeJS.Timeout;
  private pumpTimerAt = Infinity;
  private pumpQueued = false;
  private closing = false;
  private retriesTotal = 0;
  private callEnded?: () => void;
  private identity: Identity;
  /** Failed InitProducer calls in a row, for the backoff. */
  private identityFailures = 0;
  /** The sequence number of each partition's next new batch (idempotence). */
  private readonly nextSequence = new Map<number, number>();

  constructor(private readonly client: Client, topic: string, options: ProducerOptions = {}) {
    this.topic = topic;
    this.o = {
      batchBytes: options.batchBytes ?? 512 * 1024,
      batchRecords: options.batchRecords ?? 10_000,
      lingerMs: options.lingerMs ?? 5,
      sendWhenIdle: options.sendWhenIdle ?? true,
      maxBufferedBytes: options.maxBufferedBytes ?? 32 * 1024 * 1024,
      maxInFlight: options.maxInFlight ?? 16,
      maxRetries: options.maxRetries ?? 10,
      retryBackoffMs: options.retryBackoffMs ?? 100,
      retryBackoffMaxMs: options.retryBackoffMaxMs ?? 5_000,
      idempotent: options.idempotent ?? true,
      producerName: options.producerName,
    };
    this.identity = this.o.idempotent ? { state: 'needed', after: 0 } : { state: 'off' };
  }

  /** Bytes of records currently held (buffered or in flight); never above `maxBufferedBytes` but for one record. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Batch retries so far (after UNAVAILABLE or a broken stream). */
  get retries(): number {
    return this.retriesTotal;
  }

  /** The topic's partition count, looked up once. */
  partitionCount(): Promise<number> {
    if (this.partitions !== undefined) return Promise.resolve(this.partitions);
    this.partitionsLookup ??= Promise.all([
      hashReady(),
      this.client.unary<unknown, { topic: { partition_count: number; config?: { max_message_bytes?: number } } }>(
        'DescribeTopic',
        { name: this.topic },
      ),
    ]).then(
      ([, reply]) => {
        this.maxMessageBytes = reply.topic.config?.max_message_bytes || Infinity;
        return (this.partitions = reply.topic.partition_count);
      },
      (err) => {
        this.partitionsLookup = undefined;
        throw err;
      },
    );
    return this.partitionsLookup;
  }

  /**
   * Queues a record. Resolves once it is buffered, which waits only while
   * `maxBufferedBytes` are held; `acked` then resolves when the broker has stored it.
   */
  async send(record: ProducerRecord): Promise<{ readonly acked: Promise<Acked> }> {
    if (this.closing) throw new ClosedError('the producer is closed');
    const partitions = this.partitions ?? (await this.partitionCount());
    const value = toBuffer(record.value);
    const key = record.key === undefined ? undefined : toBuffer(record.key);
    const headers: { key: string; value: Buffer }[] = [];
    let size = RECORD_OVERHEAD + value.length + (key?.length ?? 0);
    if (record.headers) {
      const list = Array.isArray(record.headers) ? record.headers : Object.entries(record.headers);
      for (const [k, v] of list) {
        const b = toBuffer(v);
        headers.push({ key: k, value: b });
        size += k.length + b.length;
      }
    }
    // The broker counts key, value and header names and values, and refuses the whole
    // batch holding a larger record: refused here alone, it takes no other record down.
    const brokerSize = size - RECORD_OVERHEAD;
    if (brokerSize > this.maxMessageBytes) {
      throw errorFor(
        grpc.status.RESOURCE_EXHAUSTED,
        `record of ${brokerSize} bytes exceeds the ${this.maxMessageBytes}-byte limit of topic "${this.topic}"`,
      );
    }
    let partition: number;
    if (record.partition !== undefined) {
      if (!Number.isInteger(record.partition) || record.partition < 0 || record.partition >= partitions) {
        throw errorFor(grpc.status.NOT_FOUND, `partition ${record.partition} of topic "${this.topic}" (which has ${partitions})`);
      }
      partition = record.partition;
    } else if (key !== undefined) {
      partition = partitionForKey(keyBytes(key), partitions);
    } else {
      partition = this.sticky % partitions;
    }
    if (this.buffered + size > this.o.maxBufferedBytes && (this.buffered > 0 || this.budgetWaiters.length > 0)) {
      await new Promise<void>((go, fail) => this.budgetWaiters.push({ size, go, fail }));
    } else {
      this.buffered += size;
    }
    if (this.closing) {
      this.release(size);
      throw new ClosedError('the producer is closed');
    }
    const entry = new Entry(size);
    this.append(partition, { key, value, headers, timestamp_ms: record.timestampMs ?? Date.now() }, entry);
    return entry;
  }

  /** Sends a record and resolves when the broker has stored it. */
  async publish(record: ProducerRecord): Promise<Acked> {
    return (await this.send(record)).acked;
  }

  /**
   * Sends what is buffered without waiting for linger, and resolves once every record
   * sent before the call is acked; rejects with the first failure among them.
   */
  async flush(): Promise<void> {
    const waits: Promise<HeraldError | undefined>[] = [];
    for (const [partition, batch] of this.open) {
      this.seal(partition, batch);
    }
    for (const queue of this.sealed.values()) for (const b of queue) waits.push(b.settled);
    for (const b of this.inFlight.values()) waits.push(b.settled);
    this.pump();
    const errors = (await Promise.all(waits)).filter((e) => e !== undefined);
    if (errors.length > 0) throw errors[0];
  }

  /** Flushes, then ends the stream. Later sends fail with ClosedError. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const w of this.budgetWaiters.splice(0)) w.fail(new ClosedError('the producer is closed'));
    let error: unknown;
    try {
      await this.flush();
    } catch (err) {
      error = err;
    }
    clearTimeout(this.reopenTimer);
    clearTimeout(this.pumpTimer);
    const call = this.call;
    if (call) {
      const ended = new Promise<void>((resolve) => (this.callEnded = resolve));
      call.end();
      const timer = setTimeout(() => call.cancel(), 5_000);
      await ended;
      clearTimeout(timer);
    }
    if (error) throw error;
  }

  private release(size: number): void {
    this.buffered -= size;
    while (this.budgetWaiters.length > 0) {
      const w = this.budgetWaiters[0];
      if (this.buffered + w.size > this.o.maxBufferedBytes && this.buffered > 0) break;
      this.budgetWaiters.shift();
      this.buffered += w.size;
      w.go();
    }
  }

  private append(partition: number, record: unknown, entry: Entry): void {
    let batch = this.open.get(partition);
    if (!batch) {
      let settle!: (e: HeraldError | undefined) => void;
      const settled = new Promise<HeraldError | undefined>((r) => (settle = r));
      batch = { partition, records: [], entries: [], bytes: 0, openedAt: Date.now(), attempts: 0, notBefore: 0, settled, settle };
      this.open.set(partition, batch);
      this.schedulePump(this.o.sendWhenIdle && this.idle(partition) ? 0 : this.o.lingerMs);
    }
    batch.records.push(record);
    batch.entries.push(entry);
    batch.bytes += entry.size;
    if (batch.bytes >= this.o.batchBytes || batch.records.length >= this.o.batchRecords) {
      this.seal(partition, batch);
      this.pump();
    }
  }

  private seal(partition: number, batch: Batch): void {
    this.open.delete(partition);
    let queue = this.sealed.get(partition);
    if (!queue) this.sealed.set(partition, (queue = []));
    queue.push(batch);
    // Keyless records stick to one partition per batch, so they form full batches.
    if (partition === this.sticky % (this.partitions ?? 1)) this.sticky++;
  }

  /** Nothing of `partition` is queued or in flight. */
  private idle(partition: number): boolean {
    return !this.busy.has(partition) && !this.sealed.get(partition)?.length;
  }

  /** Runs `pump` after `ms` (coalesced: the earliest request wins). */
  private schedulePump(ms: number): void {
    if (ms <= 0) {
      if (!this.pumpQueued) {
        this.pumpQueued = true;
        setImmediate(() => {
          this.pumpQueued = false;
          this.pump();
        });
      }
      return;
    }
    const at = Date.now() + ms;
    if (this.pumpTimer && this.pumpTimerAt <= at) return;
    clearTimeout(this.pumpTimer);
    this.pumpTimerAt = at;
    this.pumpTimer = setTimeout(() => {
      this.pumpTimer = undefined;
      this.pumpTimerAt = Infinity;
      this.pump();
    }, ms);
  }

  /** Sends every batch that may go now, and schedules the next look. */
  private pump(): void {
    const now = Date.now();
    let next = Infinity;
    // An open batch whose linger is over is sealed once its partition is free, so a busy
    // partition keeps filling its batch instead of queueing small ones.
    for (const [partition, batch] of this.open) {
      const due = batch.openedAt + this.o.lingerMs;
      if (due <= now || this.closing || (this.o.sendWhenIdle && this.idle(partition))) {
        if (this.idle(partition)) this.seal(partition, batch);
      } else {
        next = Math.min(next, due);
      }
    }
    if (this.sealed.size > 0 && !this.call && this.reopenTimer === undefined) this.openStream();
    const identity = this.identity;
    if (identity.state === 'needed' && this.sealed.size > 0) {
      if (identity.after <= now) this.askIdentity();
      else next = Math.min(next, identity.after);
    }
    if (this.call && (identity.state === 'off' || identity.state === 'known')) {
      for (const [partition, queue] of this.sealed) {
        if (this.inFlight.size >= this.o.maxInFlight) break;
        if (this.busy.has(partition)) continue;
        const batch = queue[0];
        if (batch.notBefore > now) {
          next = Math.min(next, batch.notBefore);
          continue;
        }
        queue.shift();
        if (queue.length === 0) this.sealed.delete(partition);
        this.write(batch);
      }
    }
    if (next !== Infinity) this.schedulePump(Math.max(1, next - now));
  }

  private write(batch: Batch): void {
    const identity = this.identity;
    if (identity.state === 'known' && !batch.stamp) {
      const base = this.nextSequence.get(batch.partition) ?? 0;
      batch.stamp = { producer_id: identity.producerId, epoch: identity.epoch, base_sequence: base };
      this.nextSequence.set(batch.partition, (base + batch.records.length) >>> 0);
    }
    const sequence = (this.sequence++).toString();
    this.busy.add(batch.partition);
    this.inFlight.set(sequence, batch);
    // The partition is always named: the producer places records itself, and an
    // idempotent batch must not be scattered by the broker's round-robin.
    this.call!.write({
      sequence,
      publish: {
        topic: this.topic,
        partition: batch.partition,
        records: { records: batch.records },
        producer: batch.stamp ?? null,
      },
    } as PublishStreamRequest);
  }

  /** Asks the broker for this producer's identity; batches wait for the answer. */
  private askIdentity(): void {
    this.identity = { state: 'asking' };
    this.client
      .unary<unknown, InitProducerResponse__Output>('InitProducer', { producer_name: this.o.producerName ?? '' })
      .then(
        (reply) => {
          this.identityFailures = 0;
          this.identity = { state: 'known', producerId: String(reply.producer_id), epoch: reply.epoch };
          // A new identity starts every partition's sequence afresh.
          this.nextSequence.clear();
        },
        (err) => {
          const error = fromGrpc(err);
          if (isTransient(error) && this.identityFailures < this.o.maxRetries && !this.closedUnder(error)) {
            this.identityFailures++;
            const delay = backoffDelay(this.identityFailures, this.o.retryBackoffMs, this.o.retryBackoffMaxMs);
            this.identity = { state: 'needed', after: Date.now() + delay };
            return;
          }
          // Nothing can be sent without an identity: every waiting batch fails, and the
          // next record asks again.
          this.identityFailures = 0;
          this.identity = { state: 'needed', after: 0 };
          const waiting = [...this.sealed.values()].flat();
          this.sealed.clear();
          for (const b of waiting) {
            for (const e of b.entries) e.reject(error);
            this.finish(b, error);
          }
        },
      )
      .finally(() => this.pump());
  }

  /** Whether a failure came from the client's own channel having been closed. */
  private closedUnder(error: HeraldError): boolean {
    return this.client.isClosed && error.code !== grpc.status.UNAVAILABLE;
  }

  private openStream(): void {
    const generation = ++this.callGeneration;
    // waitForReady: a stream opened while the broker restarts waits for it instead of
    // failing at once; the retry backoff covers the rest.
    let call: grpc.ClientDuplexStream<PublishStreamRequest, PublishStreamResponse__Output>;
    try {
      call = this.client.raw.PublishStream(this.client.metadata());
    } catch (err) {
      // The channel was closed under the producer: what is buffered cannot be sent.
      const closed = new ClosedError(`cannot publish: ${(err as Error).message}`);
      for (const [partition, batch] of this.open) this.seal(partition, batch);
      for (const queue of this.sealed.values()) for (const b of queue) this.retryOrFail(b, closed);
      this.sealed.clear();
      return;
    }
    this.call = call;
    call.on('data', (reply: PublishStreamResponse__Output) => {
      if (generation === this.callGeneration) this.onReply(reply);
    });
    // 'status' comes exactly once per call, after 'error' if there is one: the one place
    // a stream's end is handled.
    call.on('error', () => {});
    call.on('status', (status: grpc.StatusObject) => {
      if (generation !== this.callGeneration) return;
      this.onStreamEnd(status);
    });
  }

  private onReply(reply: PublishStreamResponse__Output): void {
    const batch = this.inFlight.get(reply.sequence);
    if (!batch) return;
    this.inFlight.delete(reply.sequence);
    this.busy.delete(batch.partition);
    if (reply.published) {
      this.streamFailures = 0;
      const base = BigInt(reply.published.base_offset);
      const partition = reply.published.partition;
      batch.entries.forEach((e, i) => e.resolve({ partition, offset: base + BigInt(i) }));
      this.finish(batch, undefined);
    } else {
      const err = errorFor(reply.error?.code ?? grpc.status.UNKNOWN, reply.error?.message ?? 'publish failed');
      this.retryOrFail(batch, err);
    }
    this.pump();
  }

  private onStreamEnd(status: grpc.StatusObject): void {
    this.call = undefined;
    this.callEnded?.();
    const err = status.code === grpc.status.OK
      ? errorFor(grpc.status.UNAVAILABLE, 'the publish stream ended')
      : fromGrpc(status);
    // Every batch still in flight goes back to the head of its partition's queue (or
    // fails, when the error is final), so nothing of a partition overtakes it.
    const orphans = [...this.inFlight.values()];
    this.inFlight.clear();
    this.busy.clear();
    for (const batch of orphans) this.retryOrFail(batch, err);
    if (this.sealed.size > 0 || this.open.size > 0) {
      this.streamFailures++;
      const delay = backoffDelay(this.streamFailures, this.o.retryBackoffMs, this.o.retryBackoffMaxMs);
      this.reopenTimer = setTimeout(() => {
        this.reopenTimer = undefined;
        this.pump();
      }, delay);
    }
  }

  private retryOrFail(batch: Batch, err: HeraldError): void {
    const identity = this.identity;
    const stamp = batch.stamp;
    const stampedNow =
      stamp !== undefined &&
      identity.state === 'known' &&
      stamp.producer_id === identity.producerId &&
      stamp.epoch === identity.epoch;
    // ABORTED: the batch's sequence does not follow what the partition stored (a batch
    // given up on after its retries may or may not have landed). It was not stored, so it
    // is numbered afresh under a new identity, which restarts every partition at 0.
    // Likewise a batch fenced by a newer epoch of this same producer. Fenced by another
    // instance (the batch carries the current epoch), it fails below.
    const renumber =
      stamp !== undefined &&
      batch.attempts < this.o.maxRetries &&
      (err.code === grpc.status.ABORTED ||
        (err.code === grpc.status.FAILED_PRECONDITION && !stampedNow && err.details.includes('is fenced')));
    if (renumber) {
      batch.attempts++;
      this.retriesTotal++;
      batch.stamp = undefined;
      batch.notBefore = 0;
      if (stampedNow && err.code === grpc.status.ABORTED) this.identity = { state: 'needed', after: 0 };
      this.requeue(batch);
      return;
    }
    if (stampedNow && !isRetryable(err)) {
      // Refused before it was stored: its sequence numbers are free again. (A batch given
      // up on after UNAVAILABLE keeps them used: it may have landed.)
      this.nextSequence.set(batch.partition, stamp.base_sequence);
    }
    if (isRetryable(err) && batch.attempts < this.o.maxRetries) {
      batch.attempts++;
      this.retriesTotal++;
      batch.notBefore = Date.now() + backoffDelay(batch.attempts, this.o.retryBackoffMs, this.o.retryBackoffMaxMs);
      this.requeue(batch);
      return;
    }
    for (const e of batch.entries) e.reject(err);
    this.finish(batch, err);
  }

  /** Puts a batch back at the head of its partition's queue, before anything later. */
  private requeue(batch: Batch): void {
    let queue = this.sealed.get(batch.partition);
    if (!queue) this.sealed.set(batch.partition, (queue = []));
    queue.unshift(batch);
  }

  private finish(batch: Batch, err: HeraldError | undefined): void {
    let size = 0;
    for (const e of batch.entries) size += e.size;
    this.release(size);
    batch.settle(err);
  }
}
