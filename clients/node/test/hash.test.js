// The producer places keyed records exactly where the broker would: xxh64(key, seed 0) %
// partitions. Checked against the vectors of the broker's format crate and, when the Rust
// test driver runs this file, against values it computes with the Rust function
// (HERALD_KEY_VECTORS).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { hashReady, xxh64, partitionForKey } = require('..');

test('key hash matches the broker on its documented vectors', async () => {
  await hashReady();
  const vectors = [
    ['', 0xef46db3751d8e999n, 8, 1],
    ['a', 0xd24ec4f1a98c6e5bn, 8, 3],
    ['order-1', 0x3baf4120aa43a0adn, 16, 13],
    ['user:42', 0xdc1fea7da8d2d1c2n, 3, 2],
  ];
  for (const [key, hash, partitions, partition] of vectors) {
    assert.equal(xxh64(key), hash, `xxh64(${JSON.stringify(key)})`);
    assert.equal(partitionForKey(key, partitions), partition);
    assert.equal(partitionForKey(Buffer.from(key), partitions), partition);
  }
});

test('key hash matches values computed by the Rust partition_for_key', async (t) => {
  const raw = process.env.HERALD_KEY_VECTORS;
  if (!raw) {
    t.skip('HERALD_KEY_VECTORS not set (cli/tests/node_client.rs sets it)');
    return;
  }
  await hashReady();
  const vectors = JSON.parse(raw);
  assert.ok(vectors.length >= 10);
  // The moduli go up to 2^32 - 1, so the whole hash is checked, not only its low bits.
  for (const { key_hex: keyHex, partitions, partition } of vectors) {
    const key = Buffer.from(keyHex, 'hex');
    assert.equal(partitionForKey(key, partitions), partition, `partition of ${keyHex} among ${partitions}`);
  }
});
