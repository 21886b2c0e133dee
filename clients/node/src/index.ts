// herald-broker-client: the Node.js client of the Herald event broker.
export { Client, type ClientOptions, type TlsOptions } from './client';
export {
  Admin,
  type Position,
  type OrderingMode,
  type FsyncPolicy,
  type TopicConfig,
  type GroupSettings,
  type TopicInfo,
  type PartitionInfo,
  type GroupInfo,
  type PendingMessage,
} from './admin';
export { Producer, type ProducerOptions, type ProducerRecord, type Acked, type Headers } from './producer';
export { Consumer, Message, type ConsumerOptions, type Handler } from './consumer';
export {
  HeraldEmitter,
  eventRoute,
  type HeraldEmitterOptions,
  type EventContext,
  type Listener,
  type EmitOptions,
} from './emitter';
export {
  HeraldError,
  InvalidArgumentError,
  NotFoundError,
  AlreadyExistsError,
  OutOfRangeError,
  ResourceExhaustedError,
  FailedPreconditionError,
  UnavailableError,
  TimeoutError,
  ClosedError,
} from './errors';
export { hashReady, partitionForKey, xxh64 } from './hash';
export { status } from '@grpc/grpc-js';
