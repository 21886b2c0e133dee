// HeraldEmitter: the EventEmitter surface (emit / on / once / off) over Herald topics and
// consumer groups, so an in-process event bus becomes durable, retried and shared across
// processes without changing the code that uses it.
//
// Event names map to topics and a type header: `order:created` is published to topic
// `order` with header `type: order.created`; a name without ':' is its own topic and type.
// A service's listeners of one topic share one consumer in the group named for the
// service; each message goes to the listeners whose event matches its type (`order:*`
// matches every type of topic `order`). A message no listener wants is acked: like an
// EventEmitter, an event nobody listens to is dropped for that service.
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { Client, type ClientOptions } from './client';
import type { Consumer, Message } from './consumer';
import type { Acked, Producer, ProducerOptions } from './producer';
import type { Position } from './admin';

export interface HeraldEmitterOptions {
  /** The service's name: the consumer group of its listeners (required to listen). */
  service?: string;
  /** An existing client, or the address (default $HERALD_ADDR or 127.0.0.1:50051) and options of a new one. */
  client?: Client;
  address?: string;
  clientOptions?: ClientOptions;
  /** Create missing topics (and dead-letter topics) with this many partitions (default 3); false: never create. */
  createTopics?: boolean;
  partitions?: number;
  /** Deliveries before a message goes to the dead-letter topic (default 5). */
  maxAttempts?: number;
  /** The dead-letter topic of a topic (default `<topic>.<service>.dlq`). */
  deadLetterTopic?: (topic: string) => string;
  /** Redelivery backoff after a failed handler: first delay and cap, ms (broker defaults when unset). */
  retryBackoffMinMs?: number;
  retryBackoffMaxMs?: number;
  /** Ack deadline of a delivery, ms (default 30 000; extended automatically while a handler runs). */
  ackDeadlineMs?: number;
  /** Handlers running at once per topic (default 16); a key's events are always handled in order. */
  concurrency?: number;
  /** Where a new group starts (default 'earliest': events emitted before the service first ran are handled too). */
  start?: Position;
  /** Producer settings (batching, buffer, `idempotent`, default true). */
  producer?: ProducerOptions;
  /**
   * Names the emitter's producers (one per topic, named `<producerName>.<topic>`), so a
   * restarted instance fences the one it replaces: the older instance's emits then fail
   * with FailedPreconditionError instead of interleaving with the newer one's. Give each
   * live instance its own name (instances sharing one would fence each other). Unset:
   * anonymous producers, still idempotent.
   */
  producerName?: string;
}

/** Metadata of a received event, the second argument of a listener. */
export interface EventContext {
  /** The event name, e.g. `order:created`. */
  event: string;
  /** The `type` header, e.g. `order.created`. */
  type: string;
  id: string;
  correlationId: string;
  causationId?: string;
  traceparent?: string;
  key?: string;
  headers: Record<string, string>;
  topic: string;
  partition: number;
  offset: bigint;
  /** 1 for the first delivery, 2 for the first retry... */
  attempt: number;
  /** The raw delivery (ack/nack are done for you). */
  message: Message;
}

export type Listener = (payload: any, event: EventContext) => unknown | Promise<unknown>;

export interface EmitOptions {
  /** Orders events with the same key (one partition, handled one at a time per service). */
  key?: string | Buffer;
  headers?: Record<string, string | Buffer>;
}

interface Registration {
  event: string;
  type: string | '*';
  listener: Listener;
  once: boolean;
}

interface Incoming {
  id: string;
  correlationId: string;
  traceparent?: string;
}

/** `order:created` → topic `order`, type `order.created`; `payments` → topic and type `payments`. */
export function eventRoute(event: string): { topic: string; type: string | '*' } {
  const i = event.indexOf(':');
  if (i < 0) return { topic: event, type: event };
  const topic = event.slice(0, i);
  const rest = event.slice(i + 1);
  return { topic, type: rest === '*' ? '*' : `${topic}.${rest.replaceAll(':', '.')}` };
}

const context = new AsyncLocalStorage<Incoming>();

function traceparent(parent?: string): string {
  const m = parent && /^00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})$/.exec(parent);
  const trace = m ? m[1] : randomBytes(16).toString('hex');
  return `00-${trace}-${randomBytes(8).toString('hex')}-${m ? m[2] : '01'}`;
}

/**
 * A durable EventEmitter: `emit` publishes to Herald, `on` / `once` / `off` consume in
 * the consumer group named for the service. A listener that throws or rejects makes the
 * event be retried with backoff and, after `maxAttempts`, go to the dead-letter topic.
 */
export class HeraldEmitter {
  readonly client: Client;
  readonly service?: string;
  private readonly ownsClient: boolean;
  private readonly o: HeraldEmitterOptions;
  private readonly registrations = new Map<string, Registration[]>(); // by topic
  private readonly consumers = new Map<string, { consumer: Consumer; started: Promise<void> }>();
  private readonly producers = new Map<string, Promise<Producer>>();
  private readonly topicsReady = new Map<string, Promise<void>>();
  private readonly closingConsumers = new Set<Promise<void>>();
  private readonly errorListeners: ((err: Error) => void)[] = [];
  private closed = false;

  constructor(options: HeraldEmitterOptions = {}) {
    this.o = options;
    this.service = options.service;
    this.ownsClient = !options.client;
    this.client = options.client ?? new Client(options.address, options.clientOptions);
  }

  /**
   * Publishes `payload` (JSON, or raw bytes for a Buffer) as event `event`. Resolves
   * once the broker has stored it. Inside a listener, the new event carries the incoming
   * event's correlation id, the incoming id as causation id, and its trace.
   */
  async emit(event: string, payload: unknown, options: EmitOptions = {}): Promise<Acked> {
    if (this.closed) throw new Error('the emitter is closed');
    const { topic, type } = eventRoute(event);
    if (type === '*') throw new TypeError(`cannot emit the wildcard event "${event}"`);
    const producer = await this.producer(topic);
    const incoming = context.getStore();
    const id = randomUUID();
    const isBytes = Buffer.isBuffer(payload);
    const user = options.headers ?? {};
    const headers: [string, string | Buffer][] = [
      ['type', type],
      ['id', id],
      ['correlation-id', incoming?.correlationId ?? id],
      ['traceparent', traceparent(incoming?.traceparent ?? (user.traceparent as string | undefined))],
      ['content-type', isBytes ? 'application/octet-stream' : 'application/json'],
    ];
    if (incoming) headers.push(['causation-id', incoming.id]);
    for (const [k, v] of Object.entries(user)) if (k !== 'traceparent') headers.push([k, v]);
    const value = isBytes ? (payload as Buffer) : Buffer.from(JSON.stringify(payload ?? null));
    return producer.publish({ value, key: options.key, headers });
  }

  /** Handles every event `event` (or, for `topic:*`, every event of the topic) in this service's group. */
  on(event: string, listener: Listener): this {
    if (event === 'error') {
      this.errorListeners.push(listener as (err: Error) => void);
      return this;
    }
    return this.add(event, listener, false);
  }

  addListener(event: string, listener: Listener): this {
    return this.on(event, listener);
  }

  /** Handles the next event `event` only. */
  once(event: string, listener: Listener): this {
    return this.add(event, listener, true);
  }

  /** Removes a listener; the service leaves a topic's group once no listener of it is left. */
  off(event: string, listener: Listener): this {
    if (event === 'error') {
      const i = this.errorListeners.indexOf(listener as (err: Error) => void);
      if (i >= 0) this.errorListeners.splice(i, 1);
      return this;
    }
    const { topic } = eventRoute(event);
    const regs = this.registrations.get(topic);
    const i = regs?.findIndex((r) => r.event === event && r.listener === listener) ?? -1;
    if (regs && i >= 0) {
      regs.splice(i, 1);
      if (regs.length === 0) this.leave(topic);
    }
    return this;
  }

  removeListener(event: string, listener: Listener): this {
    return this.off(event, listener);
  }

  /** Removes every listener of `event`, or every listener. */
  removeAllListeners(event?: string): this {
    for (const [topic, regs] of [...this.registrations]) {
      const keep = event === undefined ? [] : regs.filter((r) => r.event !== event);
      this.registrations.set(topic, keep);
      if (keep.length === 0) this.leave(topic);
    }
    return this;
  }

  listenerCount(event: string): number {
    return (this.registrations.get(eventRoute(event).topic) ?? []).filter((r) => r.event === event).length;
  }

  eventNames(): string[] {
    return [...new Set([...this.registrations.values()].flat().map((r) => r.event))];
  }

  /** Resolves once the group of every topic listened to has been joined. */
  async ready(): Promise<void> {
    await Promise.all([...this.consumers.values()].map((c) => c.started));
  }

  /** Waits for running listeners, leaves the groups, flushes what was emitted, and closes the client it made. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const topic of [...this.consumers.keys()]) this.leave(topic);
    await Promise.all([...this.closingConsumers]);
    const producers = await Promise.allSettled([...this.producers.values()]);
    await Promise.all(
      producers.map((p) => (p.status === 'fulfilled' ? p.value.close().catch((e) => this.fail(e)) : undefined)),
    );
    if (this.ownsClient) this.client.close();
  }

  private add(event: string, listener: Listener, once: boolean): this {
    if (this.closed) throw new Error('the emitter is closed');
    if (!this.service) throw new Error('set `service` (the consumer group) to listen to events');
    const { topic, type } = eventRoute(event);
    let regs = this.registrations.get(topic);
    if (!regs) this.registrations.set(topic, (regs = []));
    regs.push({ event, type, listener, once });
    if (!this.consumers.has(topic)) this.join(topic);
    return this;
  }

  private fail(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.errorListeners.length === 0) console.error('HeraldEmitter:', error);
    for (const l of this.errorListeners) l(error);
  }

  private ensureTopic(topic: string): Promise<void> {
    if (this.o.createTopics === false) return Promise.resolve();
    let p = this.topicsReady.get(topic);
    if (!p) {
      p = this.client
        .admin()
        .ensureTopic(topic, this.o.partitions ?? 3)
        .then(() => undefined);
      p.catch(() => this.topicsReady.delete(topic));
      this.topicsReady.set(topic, p);
    }
    return p;
  }

  private producer(topic: string): Promise<Producer> {
    let p = this.producers.get(topic);
    if (!p) {
      const name = this.o.producerName ?? this.o.producer?.producerName;
      const options = { lingerMs: 1, ...this.o.producer, producerName: name && producerNameFor(name, topic) };
      p = this.ensureTopic(topic).then(() => this.client.producer(topic, options));
      p.catch(() => this.producers.delete(topic));
      this.producers.set(topic, p);
    }
    return p;
  }

  private join(topic: string): void {
    const service = this.service!;
    const deadLetter = (this.o.deadLetterTopic ?? ((t: string) => `${t}.${service}.dlq`))(topic);
    const maxAttempts = this.o.maxAttempts ?? 5;
    const consumer = this.client.consumer(topic, service, {
      clientId: `${service}-${process.pid}`,
      concurrency: this.o.concurrency,
      start: this.o.start ?? 'earliest',
      settings: {
        maxDeliveryAttempts: maxAttempts,
        deadLetterTopic: maxAttempts > 0 ? deadLetter : undefined,
        retryBackoffMinMs: this.o.retryBackoffMinMs,
        retryBackoffMaxMs: this.o.retryBackoffMaxMs,
        ackDeadlineMs: this.o.ackDeadlineMs,
      },
    });
    const started = (async () => {
      await this.ensureTopic(topic);
      if (maxAttempts > 0) await this.ensureTopic(deadLetter);
      const running = consumer.run((m) => this.deliver(topic, m));
      running.catch((err) => this.fail(err));
      await consumer.joined();
    })();
    started.catch((err) => this.fail(err));
    this.consumers.set(topic, { consumer, started });
  }

  private leave(topic: string): void {
    const entry = this.consumers.get(topic);
    if (!entry) return;
    this.consumers.delete(topic);
    this.registrations.delete(topic);
    const closing = entry.started
      .catch(() => {})
      .then(() => entry.consumer.close())
      .finally(() => this.closingConsumers.delete(closing));
    this.closingConsumers.add(closing);
  }

  private async deliver(topic: string, m: Message): Promise<void> {
    const type = m.header('type') ?? topic;
    const regs = (this.registrations.get(topic) ?? []).filter((r) => r.type === '*' || r.type === type);
    if (regs.length === 0) return; // nobody here listens to it: done for this service
    for (const r of regs) {
      if (r.once) this.off(r.event, r.listener);
    }
    const headers: Record<string, string> = {};
    for (const h of m.headers) if (!(h.key in headers)) headers[h.key] = h.value.toString('utf8');
    const id = headers['id'] ?? `${topic}/${m.partition}/${m.offset}`;
    const ctx: EventContext = {
      event: type === topic ? topic : `${topic}:${type.startsWith(`${topic}.`) ? type.slice(topic.length + 1).replaceAll('.', ':') : type}`,
      type,
      id,
      correlationId: headers['correlation-id'] ?? id,
      causationId: headers['causation-id'],
      traceparent: headers['traceparent'],
      key: m.key?.toString('utf8'),
      headers,
      topic,
      partition: m.partition,
      offset: m.offset,
      attempt: m.attempt,
      message: m,
    };
    const payload = headers['content-type'] === 'application/octet-stream' ? m.value : JSON.parse(m.value.toString('utf8'));
    await context.run({ id, correlationId: ctx.correlationId, traceparent: ctx.traceparent }, () =>
      Promise.all(regs.map((r) => r.listener(payload, ctx))),
    );
  }
}

/** Producer names are at most 249 characters: a longer `<name>.<topic>` keeps its start and a digest of the whole. */
function producerNameFor(name: string, topic: string): string {
  const full = `${name}.${topic}`;
  if (full.length <= 249) return full;
  return `${full.slice(0, 208)}.${createHash('sha256').update(full).digest('hex').slice(0, 40)}`;
}
