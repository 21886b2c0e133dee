// Idempotent publishing through the package: the wire contract (a resent batch is stored
// once), a producer whose replies are cut off by a TCP proxy (every record stored once and
// in order per key; the same faults without idempotence store duplicates, so the check
// can fail), and fencing of an older instance of a named producer.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { Client, FailedPreconditionError, HeraldError, status } = require('..');
const { startBroker, sleep, uniqueName: name } = require('./broker');

let broker;
let client;
let admin;

test.before(async () => {
  broker = await startBroker();
  client = new Client(broker.addr);
  admin = client.admin();
});

test.after(async () => {
  client?.close();
  await broker?.destroy();
});

/** Connections the proxy cuts while the records are published. */
const CUTS = 30;


/** Every record of a partition, read with Fetch from the start to the current end. */
function fetchPartition(c, topic, partition) {
  return new Promise((resolve, reject) => {
    const records = [];
    const call = c.raw.Fetch({ topic, partition, start: { earliest: {} } }, c.metadata());
    call.on('data', (r) => records.push(...(r.records ?? [])));
    call.on('error', reject);
    call.on('end', () => resolve(records));
  });
}

/**
 * A TCP proxy in front of the broker. When armed, it cuts the next established connection
 * on which the broker sends something, after passing on half of that chunk: the replies
 * in the rest never reach the client, although the broker has done what they answer.
 * A connection's first chunks (the HTTP/2 handshake) are never cut: cutting every
 * reconnection would only stall the client.
 */
class CuttingProxy {
  constructor(upstream) {
    this.upstream = upstream;
    this.armed = false;
    this.cuts = 0;
    this.sockets = new Set();
    this.server = net.createServer((down) => {
      const [host, port] = this.upstream.split(':');
      const up = net.connect(Number(port), host);
      const pair = [down, up];
      for (const s of pair) {
        this.sockets.add(s);
        s.setNoDelay(true);
        s.on('error', () => {});
        s.on('close', () => {
          this.sockets.delete(s);
          for (const o of pair) o.destroy();
        });
      }
      down.pipe(up);
      let chunks = 0;
      up.on('data', (chunk) => {
        if (this.armed && ++chunks > 2) {
          this.armed = false;
          this.cuts++;
          down.write(chunk.subarray(0, chunk.length >> 1));
          down.destroy();
          up.destroy();
          return;
        }
        down.write(chunk);
      });
    });
  }

  listen() {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve(this)));
  }

  get addr() {
    return `127.0.0.1:${this.server.address().port}`;
  }

  close() {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

test('wire contract: a batch sent again with its stamp gets its first offsets and is stored once', async () => {
  const topic = name('idem-wire');
  await admin.createTopic(topic, 2);
  const identity = await client.unary('InitProducer', {});
  assert.notEqual(identity.producer_id, '0');
  const publish = (base, values) =>
    client.unary('Publish', {
      topic,
      partition: 1,
      records: { records: values.map((v) => ({ value: Buffer.from(v) })) },
      producer: { producer_id: identity.producer_id, epoch: identity.epoch, base_sequence: base },
    });
  const first = await publish(0, ['a', 'b']);
  const again = await publish(0, ['a', 'b']);
  assert.equal(again.base_offset, first.base_offset);
  assert.equal(again.last_offset, first.last_offset);
  const next = await publish(2, ['c']);
  assert.equal(next.base_offset, '2');
  // A gap in the sequence is refused with ABORTED and stores nothing.
  await assert.rejects(publish(7, ['x']), (err) => err instanceof HeraldError && err.code === status.ABORTED);
  const stored = await fetchPartition(client, topic, 1);
  assert.deepEqual(stored.map((r) => r.value.toString()), ['a', 'b', 'c']);
  await admin.deleteTopic(topic);
});

/**
 * Publishes `total` records over `keys` keys through a proxy that cuts a connection every
 * few ms while replies flow; returns per key the record numbers found in the log, in log
 * order, and how many connections were cut.
 */
async function publishThroughCuts(idempotent) {
  const topic = name(idempotent ? 'idem-cuts' : 'dup-cuts');
  await admin.createTopic(topic, 3);
  const proxy = await new CuttingProxy(broker.addr).listen();
  const viaProxy = new Client(proxy.addr);
  const keys = 12;
  const total = 3000;
  try {
    const producer = viaProxy.producer(topic, {
      idempotent,
      batchBytes: 2 * 1024,
      lingerMs: 1,
      maxRetries: 1000,
      retryBackoffMs: 5,
      retryBackoffMaxMs: 50,
    });
    // The set-up calls (DescribeTopic, InitProducer) go through before the cuts start.
    await producer.publish({ key: 'key-0', value: 'key-0:-1' });
    let acked = false;
    const cutting = (async () => {
      while (proxy.cuts < CUTS && !acked) {
        await sleep(10);
        proxy.armed = true;
      }
      proxy.armed = false;
    })();
    const acks = [];
    for (let i = 0; i < total; i++) {
      const key = `key-${i % keys}`;
      acks.push((await producer.send({ key, value: `${key}:${i}` })).acked);
      // Paced, so that the cuts fall among the batches rather than after the last one.
      if (i % 50 === 49) await sleep(5);
    }
    await Promise.all(acks);
    acked = true;
    await cutting;
    await producer.close();
    const byKey = new Map();
    for (let p = 0; p < 3; p++) {
      for (const r of await fetchPartition(client, topic, p)) {
        const [key, n] = r.value.toString().split(':');
        if (Number(n) < 0) continue;
        if (!byKey.has(key)) byKey.set(key, []);
        byKey.get(key).push(Number(n));
      }
    }
    return { byKey, cuts: proxy.cuts, retries: producer.retries, keys, total };
  } finally {
    viaProxy.close();
    await proxy.close();
    await admin.deleteTopic(topic).catch(() => {});
  }
}

test('lost replies: an idempotent producer stores every record once, each key in order', { timeout: 120_000 }, async (t) => {
  const { byKey, cuts, retries, keys, total } = await publishThroughCuts(true);
  t.diagnostic(`connections cut: ${cuts}, batches retried: ${retries}`);
  assert.ok(cuts >= 10, `the proxy cut only ${cuts} connections`);
  assert.ok(retries > 0, 'batches were retried');
  for (let k = 0; k < keys; k++) {
    const expected = [];
    for (let i = k; i < total; i += keys) expected.push(i);
    assert.deepEqual(byKey.get(`key-${k}`), expected, `key-${k}: each record once, in order`);
  }
});

test('lost replies without idempotence: the same faults store duplicates', { timeout: 120_000 }, async (t) => {
  const { byKey, cuts, total } = await publishThroughCuts(false);
  const stored = [...byKey.values()].reduce((n, l) => n + l.length, 0);
  t.diagnostic(`connections cut: ${cuts}, records stored: ${stored} of ${total}`);
  assert.ok(cuts >= 10, `the proxy cut only ${cuts} connections`);
  const distinct = new Set([...byKey.values()].flat());
  assert.equal(distinct.size, total, 'every record stored at least once');
  assert.ok(stored > total, 'retries after lost replies stored duplicates');
});

test('a newer instance of a named producer fences the older one', async () => {
  const topic = name('idem-fence');
  await admin.createTopic(topic, 2);
  const producerName = name('billing');
  const older = client.producer(topic, { producerName, lingerMs: 0 });
  await older.publish({ key: 'k', value: 'from the older' });
  const newer = client.producer(topic, { producerName, lingerMs: 0 });
  await newer.publish({ key: 'k', value: 'from the newer' });
  for (const key of ['k', 'another key']) {
    await assert.rejects(older.publish({ key, value: 'late' }), (err) => {
      assert.ok(err instanceof FailedPreconditionError, String(err));
      assert.equal(err.code, status.FAILED_PRECONDITION);
      assert.match(err.details, /is fenced/);
      return true;
    });
  }
  await newer.publish({ key: 'k', value: 'newer again' });
  await newer.close();
  await older.close().catch(() => {});
  const values = [];
  for (let p = 0; p < 2; p++) values.push(...(await fetchPartition(client, topic, p)).map((r) => r.value.toString()));
  assert.deepEqual(values.sort(), ['from the newer', 'from the older', 'newer again']);
  await admin.deleteTopic(topic);
});
