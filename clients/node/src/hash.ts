import xxhash from 'xxhash-wasm';

let h64Raw: ((input: Uint8Array, seed?: bigint) => bigint) | undefined;
let loading: Promise<void> | undefined;

/** Loads the xxHash WebAssembly module once; `partitionForKey` needs it. */
export function hashReady(): Promise<void> {
  loading ??= xxhash().then((h) => {
    h64Raw = h.h64Raw;
  });
  return loading;
}

/** Key bytes as the broker hashes them: strings as UTF-8. */
export function keyBytes(key: string | Uint8Array): Uint8Array {
  return typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
}

/** xxHash64 of `key` with seed 0, as an unsigned 64-bit integer. Call `await hashReady()` first. */
export function xxh64(key: string | Uint8Array): bigint {
  if (!h64Raw) throw new Error('call `await hashReady()` before hashing keys');
  return h64Raw(keyBytes(key), 0n);
}

/**
 * The partition the broker picks for a key: `xxh64(key, seed 0) % partitions`, exactly as
 * `partition_for_key` in the broker's format crate. Call `await hashReady()` first.
 */
export function partitionForKey(key: string | Uint8Array, partitions: number): number {
  return Number(xxh64(key) % BigInt(partitions));
}
