// Client, Admin, Producer and Consumer against a real broker (one per file).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {
  Client,
  AlreadyExistsError,
  NotFoundError,
  ResourceExhaustedError,
  HeraldError,
  partitionForKey,
  status,
} = require('..');
const { startBroker, sleep, uniqueName: name, drained: groupDrained } = require('./broker');

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


test('admin: topics and groups, with typed errors carrying the gRPC code', async () => {
  const topic = name('admin');
  const created = await admin.createTopic(topic, 4);
  assert.equal(created.partitionCount, 4);
  assert.equal(created.partitions[3].endOffset, 0n);
  await assert.rejects(admin.createTopic(topic, 4), (err) => {
    assert.ok(err instanceof AlreadyExistsError && err instanceof HeraldError);
    assert.equal(err.code, status.ALREADY_EXISTS);
    assert.equal(err.codeName, 'ALREADY_EXISTS');
    return true;
  });
  assert.equal(await admin.ensureTopic(topic, 4), false);
  assert.ok((await admin.listTopics()).some((t) => t.name === topic && t.partitionCount === 4));

  const group = await admin.createGroup(topic, 'billing', {
    settings: { ackDeadlineMs: 5_000, ordering: 'partition' },
    start: 'earliest',
  });
  assert.equal(group.settings.ordering, 'partition');
  assert.equal(group.settings.ackDeadlineMs, 5_000);
  const updated = await admin.updateGroup(topic, 'billing', { ackDeadlineMs: 7_000 });
  assert.equal(updated.settings.ackDeadlineMs, 7_000);
  assert.equal(updated.settings.ordering, 'partition');
  assert.deepEqual(await admin.listGroups(topic), [{ topic, group: 'billing' }]);

  const producer = client.producer(topic);
  for (let i = 0; i < 10; i++) await producer.send({ key: `k${i}`, value: `v${i}` });
  await producer.close();
  const moved = await admin.seek(topic, 'billing', 'latest');
  assert.equal([...moved.values()].reduce((a, b) => a + b, 0n), 10n);
  const pending = await admin.listPending(topic, 'billing');
  assert.deepEqual(pending.messages, []);

  await assert.rejects(admin.describeGroup(topic, 'nobody'), NotFoundError);
  await admin.deleteGroup(topic, 'billing');
  await admin.deleteTopic(topic);
  await assert.rejects(admin.describeTopic(topic), (err) => err instanceof NotFoundError && err.code === status.NOT_FOUND);
});

test('publish and consume round trip: keys, headers, bigint offsets, placement by key hash', async () => {
  const topic = name('roundtrip');
  await admin.createTopic(topic, 3);
  const producer = client.producer(topic, { lingerMs: 2 });
  const sent = [];
  for (let i = 0; i < 300; i++) {
    const { acked } = await producer.send({
      key: `key-${i % 7}`,
      value: JSON.stringify({ i }),
      headers: { 'content-type': 'application/json', seq: String(i) },
    });
    sent.push(acked);
  }
  const keyless = await producer.publish({ value: 'no key' });
  await producer.flush();
  const acks = await Promise.all(sent);
  acks.forEach((a, i) => {
    assert.equal(typeof a.offset, 'bigint');
    assert.equal(a.partition, partitionForKey(`key-${i % 7}`, 3), 'placed like the broker places keys');
  });
  await producer.close();
  await assert.rejects(producer.send({ value: 'late' }), (err) => err.code === status.CANCELLED);

  const consumer = client.consumer(topic, 'reader', { start: 'earliest' });
  const seen = new Map();
  let sawKeyless = false;
  for await (const m of consumer) {
    if (m.key === undefined) {
      assert.equal(m.value.toString(), 'no key');
      assert.equal(m.partition, keyless.partition);
      assert.equal(m.offset, keyless.offset);
      sawKeyless = true;
    } else {
      const { i } = JSON.parse(m.value.toString());
      assert.equal(m.key.toString(), `key-${i % 7}`);
      assert.equal(m.header('seq'), String(i));
      assert.equal(m.header('content-type'), 'application/json');
      assert.equal(m.offset, acks[i].offset);
      assert.equal(m.partition, acks[i].partition);
      assert.equal(m.attempt, 1);
      seen.set(i, (seen.get(i) ?? 0) + 1);
    }
    m.ack();
    if (seen.size === 300 && sawKeyless) break;
  }
  await consumer.close();
  assert.equal(seen.size, 300);
  assert.ok([...seen.values()].every((n) => n === 1));
  const group = await groupDrained(admin, topic, 'reader');
  assert.equal(group.members.length, 0, 'closing left the group');
});

test('key order under concurrency: a key is never handled twice at once, and in offset order', async () => {
  const topic = name('order');
  await admin.createTopic(topic, 3);
  const producer = client.producer(topic);
  const KEYS = 12;
  const PER_KEY = 25;
  for (let n = 0; n < PER_KEY; n++) {
    for (let k = 0; k < KEYS; k++) await producer.send({ key: `k${k}`, value: String(n) });
  }
  await producer.close();

  const consumer = client.consumer(topic, 'workers', { concurrency: 8 });
  const next = new Map();
  const active = new Set();
  let maxRunning = 0;
  let running = 0;
  let done = 0;
  let finished;
  const all = new Promise((r) => (finished = r));
  const run = consumer.run(async (m) => {
    const key = m.key.toString();
    assert.ok(!active.has(key), `key ${key} handled twice at once`);
    active.add(key);
    running++;
    maxRunning = Math.max(maxRunning, running);
    await sleep(Math.random() * 4);
    assert.equal(Number(m.value.toString()), next.get(key) ?? 0, `key ${key} out of order`);
    next.set(key, (next.get(key) ?? 0) + 1);
    running--;
    active.delete(key);
    if (++done === KEYS * PER_KEY) finished();
  });
  await all;
  await consumer.close();
  await run;
  assert.ok(maxRunning > 1, `handlers ran concurrently (at most ${maxRunning})`);
  assert.ok(maxRunning <= 8);
  for (let k = 0; k < KEYS; k++) assert.equal(next.get(`k${k}`), PER_KEY);
  await groupDrained(admin, topic, 'workers');
});

test('a failing handler: nack, redelivery after backoff, then the dead-letter topic', async () => {
  const topic = name('failing');
  const dlq = `${topic}.dlq`;
  await admin.createTopic(topic, 1);
  await admin.createTopic(dlq, 1);
  const producer = client.producer(topic);
  await producer.publish({ key: 'poison', value: 'bad' });
  await producer.close();

  const consumer = client.consumer(topic, 'strict', {
    settings: { maxDeliveryAttempts: 3, deadLetterTopic: dlq, retryBackoffMinMs: 100, retryBackoffMaxMs: 200 },
  });
  const attempts = [];
  const run = consumer.run(async (m) => {
    attempts.push({ attempt: m.attempt, at: Date.now() });
    throw new Error('cannot process');
  });
  const dead = client.consumer(dlq, 'inspect');
  let letter;
  for await (const m of dead) {
    letter = m;
    m.ack();
    break;
  }
  await dead.close();
  await consumer.close();
  await run;
  assert.deepEqual(attempts.map((a) => a.attempt), [1, 2, 3]);
  assert.ok(attempts[1].at - attempts[0].at >= 90, 'redelivered after the backoff, not at once');
  assert.equal(letter.value.toString(), 'bad');
  assert.equal(letter.key.toString(), 'poison');
  assert.equal(letter.header('herald-dlq-topic'), topic);
  assert.equal(letter.header('herald-dlq-attempts'), '3');
  assert.equal(letter.header('herald-dlq-reason'), 'cannot process');
  const g = await groupDrained(admin, topic, 'strict');
  assert.equal(g.partitions[0].deadLettered, 1n);

  // Redrive gives the dead letter another chance: it comes back to the group.
  assert.equal(await admin.redrive(topic, 'strict'), 1n);
  const again = client.consumer(topic, 'strict');
  for await (const m of again) {
    assert.equal(m.value.toString(), 'bad');
    assert.equal(m.header('herald-dlq-reason'), undefined, 'the dead-letter headers are gone');
    m.ack();
    break;
  }
  await again.close();
});

test('a handler slower than the ack deadline is not redelivered while it runs', async () => {
  const topic = name('slow');
  await admin.createTopic(topic, 2);
  const producer = client.producer(topic);
  const COUNT = 6;
  for (let i = 0; i < COUNT; i++) await producer.send({ key: `order-${i}`, value: String(i) });
  await producer.close();

  const consumer = client.consumer(topic, 'email', {
    concurrency: 3,
    settings: { ackDeadlineMs: 1_000 },
  });
  const handled = [];
  let finished;
  const all = new Promise((r) => (finished = r));
  const run = consumer.run(async (m) => {
    handled.push({ i: m.value.toString(), attempt: m.attempt });
    await sleep(2_000); // two deadlines; the three waiting their turn wait as long
    if (handled.length === COUNT) finished();
  });
  await all;
  await consumer.close();
  await run;
  assert.equal(handled.length, COUNT, `each message handled once: ${JSON.stringify(handled)}`);
  assert.ok(handled.every((h) => h.attempt === 1));
  const g = await groupDrained(admin, topic, 'email');
  assert.ok(g.partitions.every((p) => p.redelivered === 0n), 'nothing redelivered');
});

test('backpressure: the producer holds at most maxBufferedBytes, and the consumer at most its window', async () => {
  const topic = name('pressure');
  await admin.createTopic(topic, 2);
  const MAX = 256 * 1024;
  const producer = client.producer(topic, { maxBufferedBytes: MAX, batchBytes: 32 * 1024, maxInFlight: 2 });
  const value = Buffer.alloc(4_000, 7);
  const acks = [];
  let peak = 0;
  let waited = 0;
  for (let i = 0; i < 2_000; i++) {
    const before = producer.bufferedBytes;
    const { acked } = await producer.send({ key: `k${i % 10}`, value });
    if (producer.bufferedBytes <= before) waited++; // the send had to wait for acks
    peak = Math.max(peak, producer.bufferedBytes);
    acks.push(acked);
  }
  await producer.close();
  await Promise.all(acks);
  assert.ok(peak <= MAX, `buffered at most ${MAX} bytes (peak ${peak})`);
  assert.ok(waited > 0, 'sends waited for room');
  assert.equal(producer.bufferedBytes, 0);

  const consumer = client.consumer(topic, 'slowpoke', { concurrency: 2, maxInFlightMessages: 10 });
  let peakHeld = 0;
  let handled = 0;
  let finished;
  const enough = new Promise((r) => (finished = r));
  const run = consumer.run(async () => {
    await sleep(5);
    const g = await admin.listPending(topic, 'slowpoke', { limit: 1000 });
    peakHeld = Math.max(peakHeld, g.messages.filter((m) => m.state === 'in_flight').length);
    if (++handled === 100) finished();
  });
  await enough;
  await consumer.close();
  await run;
  assert.ok(peakHeld <= 10, `at most 10 messages held (peak ${peakHeld})`);
});

test('close() drains: running handlers finish and are acked, buffered records are sent', async () => {
  const topic = name('drain');
  await admin.createTopic(topic, 3);
  const producer = client.producer(topic, { lingerMs: 200 });
  const acks = [];
  for (let i = 0; i < 50; i++) acks.push((await producer.send({ key: `k${i}`, value: String(i) })).acked);
  await producer.close(); // well before the linger: close sends them
  const stored = await Promise.all(acks);
  assert.equal(stored.length, 50);

  const consumer = client.consumer(topic, 'drainer', { concurrency: 5, maxInFlightMessages: 5 });
  let started = 0;
  let completed = 0;
  const firstStarted = new Promise((resolve) => {
    consumer.run(async () => {
      started++;
      resolve();
      await sleep(300);
      completed++;
    });
  });
  await firstStarted;
  await sleep(50);
  await consumer.close();
  assert.ok(started > 0);
  assert.equal(completed, started, 'every handler that started finished before close() returned');
  const g = await admin.describeGroup(topic, 'drainer');
  assert.equal(g.members.length, 0);
  const committed = g.partitions.reduce((sum, p) => sum + p.committedOffset, 0n);
  const inFlight = g.partitions.reduce((sum, p) => sum + p.inFlight, 0);
  assert.equal(inFlight, 0, 'nothing left in flight');
  assert.ok(committed >= 1n, 'the handled messages were acked');
  assert.ok(committed <= BigInt(started), 'only handled messages were acked');
});

test('close({ timeoutMs }) gives up on a stuck handler; its message goes to the next member', async () => {
  const topic = name('stuck');
  await admin.createTopic(topic, 1);
  const producer = client.producer(topic);
  await producer.publish({ key: 'k', value: 'stuck' });
  await producer.close();
  const first = client.consumer(topic, 'g', { settings: { ackDeadlineMs: 60_000 } });
  let entered;
  const inHandler = new Promise((r) => (entered = r));
  first.run(() => {
    entered();
    return new Promise(() => {}); // never settles
  });
  await inHandler;
  const started = Date.now();
  await first.close({ timeoutMs: 200 });
  assert.ok(Date.now() - started < 5_000, 'close returned after its timeout');
  const second = client.consumer(topic, 'g');
  for await (const m of second) {
    assert.equal(m.value.toString(), 'stuck');
    assert.equal(m.attempt, 2, 'delivered again once the first member left');
    m.ack();
    break;
  }
  await second.close();
});

test('a record over the topic limit is refused alone, without failing its batch', async () => {
  const topic = name('limit');
  await admin.createTopic(topic, 1, { maxMessageBytes: 1024 });
  const producer = client.producer(topic, { lingerMs: 50 });
  const before = await producer.send({ key: 'k', value: 'small' });
  await assert.rejects(producer.send({ key: 'k', value: Buffer.alloc(2048) }), (err) => {
    assert.ok(err instanceof ResourceExhaustedError);
    assert.equal(err.code, status.RESOURCE_EXHAUSTED);
    return true;
  });
  const after = await producer.send({ key: 'k', value: 'small too' });
  await producer.close();
  assert.equal((await before.acked).offset, 0n);
  assert.equal((await after.acked).offset, 1n);
});

test('adaptive batching: a record for an idle partition goes at once, whatever the linger', async () => {
  const topic = name('adaptive');
  await admin.createTopic(topic, 1);
  // A linger far beyond the test's bound: a record that waited for it would fail the test.
  const producer = client.producer(topic, { lingerMs: 600_000 });
  for (let i = 0; i < 3; i++) {
    const { acked: ack } = await producer.send({ value: `r${i}` });
    const acked = await Promise.race([
      ack,
      sleep(30_000).then(() => assert.fail('the record waited for the linger')),
    ]);
    assert.equal(acked.offset, BigInt(i));
  }
  // Records sent together while a batch is in flight are batched behind it and all acked,
  // in order, without a flush.
  const sent = [];
  for (let i = 0; i < 2_000; i++) sent.push((await producer.send({ value: `b${i}` })).acked);
  const acks = await Promise.all(sent);
  acks.forEach((a, i) => assert.equal(a.offset, BigInt(3 + i)));
  await producer.close();

  const fixed = client.producer(topic, { lingerMs: 600_000, sendWhenIdle: false });
  let acked = false;
  const pending = (await fixed.send({ value: 'waits' })).acked.then(() => (acked = true));
  await sleep(300);
  assert.equal(acked, false, 'a fixed linger holds the record');
  await fixed.flush();
  await pending;
  await fixed.close();
});
