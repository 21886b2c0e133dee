import { status as Status } from '@grpc/grpc-js';

/** gRPC status code names, by number. */
const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Status)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
);

/**
 * Every error the client reports. `code` is the gRPC status code (a number, see
 * `status` of @grpc/grpc-js): the broker's own for errors it sent, or the code that stands
 * for a client-side failure (`CANCELLED` for a closed producer or consumer,
 * `DEADLINE_EXCEEDED` for a timeout).
 */
export class HeraldError extends Error {
  readonly code: number;
  readonly details: string;

  constructor(code: number, details: string, options?: { cause?: unknown }) {
    super(`${CODE_NAMES[code] ?? `code ${code}`}: ${details}`, options);
    this.code = code;
    this.details = details;
    this.name = new.target.name;
  }

  /** The status code's name, e.g. `NOT_FOUND`. */
  get codeName(): string {
    return CODE_NAMES[this.code] ?? String(this.code);
  }
}

/** INVALID_ARGUMENT: a bad name, a bad setting or a malformed batch. */
export class InvalidArgumentError extends HeraldError {}
/** NOT_FOUND: the topic, partition or group does not exist. */
export class NotFoundError extends HeraldError {}
/** ALREADY_EXISTS: the topic or group already exists. */
export class AlreadyExistsError extends HeraldError {}
/** OUT_OF_RANGE: an offset outside a partition. */
export class OutOfRangeError extends HeraldError {}
/** RESOURCE_EXHAUSTED: a size limit, too many streams, or backpressure. */
export class ResourceExhaustedError extends HeraldError {}
/** FAILED_PRECONDITION: a valid request the broker's current state does not allow. */
export class FailedPreconditionError extends HeraldError {}
/** UNAVAILABLE: the broker is shutting down or cannot be reached (retried by the client). */
export class UnavailableError extends HeraldError {}
/** DEADLINE_EXCEEDED: a call did not finish within its deadline. */
export class TimeoutError extends HeraldError {}
/** CANCELLED: the producer or consumer was closed before the call finished. */
export class ClosedError extends HeraldError {
  constructor(details = 'closed') {
    super(Status.CANCELLED, details);
  }
}

const CLASSES: Record<number, new (code: number, details: string, o?: { cause?: unknown }) => HeraldError> = {
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.ALREADY_EXISTS]: AlreadyExistsError,
  [Status.OUT_OF_RANGE]: OutOfRangeError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.DEADLINE_EXCEEDED]: TimeoutError,
};

/** The typed error for a status code and message. */
export function errorFor(code: number, details: string, cause?: unknown): HeraldError {
  if (code === Status.CANCELLED) {
    const e = new ClosedError(details);
    if (cause !== undefined) (e as { cause?: unknown }).cause = cause;
    return e;
  }
  const Class = CLASSES[code] ?? HeraldError;
  return new Class(code, details, cause === undefined ? undefined : { cause });
}

/** Converts whatever a grpc-js call failed with into a typed error. */
export function fromGrpc(err: unknown): HeraldError {
  if (err instanceof HeraldError) return err;
  const e = err as { code?: unknown; details?: unknown; message?: unknown };
  if (typeof e?.code === 'number') {
    return errorFor(e.code, String(e.details || e.message || ''), err);
  }
  return new HeraldError(Status.UNKNOWN, String(e?.message ?? err), { cause: err });
}

/** Whether a failure is worth retrying on a new call: the broker or the link went away. */
export function isRetryable(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (code === Status.UNAVAILABLE) return true;
  // A connection torn down mid-call (the broker killed) can surface as INTERNAL with the
  // HTTP/2 reason rather than as UNAVAILABLE.
  return code === Status.INTERNAL && /RST_STREAM|GOAWAY/i.test(String((err as Error)?.message));
}
