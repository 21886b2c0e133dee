import * as grpc from '@grpc/grpc-js';
import { v1 } from './proto';
import type { HeraldClient } from './generated/herald/v1/Herald';
import { fromGrpc, isRetryable } from './errors';
import { Admin } from './admin';
import { backoffDelay, Producer, type ProducerOptions } from './producer';
import { Consumer, type ConsumerOptions } from './consumer';

/**
 * Methods whose retry cannot change the outcome: reads, and writes that set a value.
 * Create, delete and redrive are not retried (a retry after a lost reply would report
 * ALREADY_EXISTS or NOT_FOUND, or redrive twice).
 */
const IDEMPOTENT = new Set([
  'DescribeTopic', 'ListTopics', 'DescribeGroup', 'ListGroups', 'ListPending', 'UpdateGroup', 'Seek',
]);

/** Largest gRPC message sent or accepted: above the broker's own limits, so its clear errors apply. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** TLS settings (PEM bytes), for a broker behind TLS. */
export interface TlsOptions {
  /** CA certificates to trust; the system's when unset. */
  rootCerts?: Buffer;
  /** Client certificate chain and key, for mutual TLS. */
  certChain?: Buffer;
  privateKey?: Buffer;
}

export interface ClientOptions {
  /**
   * TLS: `true` for the system's CAs, or explicit certificates. An `https://` address
   * turns it on too. Default: plaintext, like the broker's default listener.
   */
  tls?: boolean | TlsOptions;
  /**
   * A bearer token sent as `authorization: Bearer <token>` on every call; a function is
   * called per call, so a refreshed token is picked up.
   */
  token?: string | (() => string);
  /** Deadline of unary calls (admin, describe), in ms. Default 30 000. */
  requestTimeoutMs?: number;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
}

/**
 * One connection (one HTTP/2 channel) to a broker. Everything made from it (admin,
 * producers, consumers) shares the channel. `close()` closes it.
 */
export class Client {
  readonly address: string;
  /** The generated gRPC stub, for calls the client has no method for. */
  readonly raw: HeraldClient;
  readonly requestTimeoutMs: number;
  private readonly token?: string | (() => string);
  private closed = false;

  constructor(address: string = process.env.HERALD_ADDR || '127.0.0.1:50051', options: ClientOptions = {}) {
    let target = address;
    let tls = options.tls;
    if (target.startsWith('https://')) {
      target = target.slice('https://'.length);
      tls ??= true;
    } else if (target.startsWith('http://')) {
      target = target.slice('http://'.length);
    }
    this.address = target;
    this.token = options.token;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    const credentials = tls
      ? grpc.credentials.createSsl(
          tls === true ? null : (tls.rootCerts ?? null),
          tls === true ? null : (tls.privateKey ?? null),
          tls === true ? null : (tls.certChain ?? null),
        )
      : grpc.credentials.createInsecure();
    this.raw = new v1.Herald(target, credentials, {
      // grpc-js honours http_proxy even for 127.0.0.1; a broker is reached directly.
      'grpc.enable_http_proxy': 0,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      // Reconnect quickly after a broker restart (grpc-js backs off up to 120 s by default).
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2_000,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...options.channelOptions,
    }) as unknown as HeraldClient;
  }

  /** Topic and group administration. */
  admin(): Admin {
    return new Admin(this);
  }

  /** A batching, pipelining producer for `topic`. */
  producer(topic: string, options: ProducerOptions = {}): Producer {
    return new Producer(this, topic, options);
  }

  /** A member of group `group` on `topic` (joins when iterated or run). */
  consumer(topic: string, group: string, options: ConsumerOptions = {}): Consumer {
    return new Consumer(this, topic, group, options);
  }

  /**
   * Metadata for one call: the token, when there is one, and wait-for-ready. grpc-js
   * reads wait-for-ready from the metadata's options, not from the call options (where
   * it is silently ignored): without it a call made while the broker restarts fails at
   * once with UNAVAILABLE instead of waiting for the connection.
   */
  metadata(): grpc.Metadata {
    const md = new grpc.Metadata({ waitForReady: true });
    if (this.token !== undefined) {
      const token = typeof this.token === 'function' ? this.token() : this.token;
      md.set('authorization', `Bearer ${token}`);
    }
    return md;
  }

  /**
   * Calls a unary method. Waits for the broker to be reachable (wait-for-ready) within
   * the request timeout, so a call made while the broker restarts succeeds once it is
   * back instead of failing at once. A call caught on a connection that drops (the
   * channel has not noticed yet that the broker is gone) fails with UNAVAILABLE; the
   * idempotent methods are then retried, with backoff, within the same timeout.
   */
  async unary<Req, Res>(method: string, request: Req, timeoutMs = this.requestTimeoutMs): Promise<Res> {
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.unaryOnce<Req, Res>(method, request, deadline);
      } catch (err) {
        const delay = backoffDelay(attempt, 50, 1_000);
        if (!IDEMPOTENT.has(method) || !isRetryable(err) || Date.now() + delay >= deadline) throw err;
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  private unaryOnce<Req, Res>(method: string, request: Req, deadline: number): Promise<Res> {
    const stub = this.raw as unknown as Record<string, Function>;
    return new Promise((resolve, reject) => {
      stub[method].call(
        this.raw,
        request,
        this.metadata(),
        { deadline },
        (err: unknown, reply: Res) => (err ? reject(fromGrpc(err)) : resolve(reply)),
      );
    });
  }

  /** Waits until the channel is connected (or fails after `timeoutMs`). */
  waitForReady(timeoutMs = this.requestTimeoutMs): Promise<void> {
    return new Promise((resolve, reject) => {
      (this.raw as unknown as grpc.Client).waitForReady(Date.now() + timeoutMs, (err) =>
        err ? reject(fromGrpc({ code: grpc.status.UNAVAILABLE, details: err.message })) : resolve(),
      );
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Closes the channel. Close producers and consumers first, so they can drain. */
  close(): void {
    this.closed = true;
    (this.raw as unknown as grpc.Client).close();
  }
}
