// HeraldEmitter: the EventEmitter surface over a real broker.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { Client, FailedPreconditionError, HeraldEmitter, eventRoute } = require('..');
const { startBroker, eventually } = require('./broker');

let broker;
let client;

test.before(async () => {
  broker = await startBroker();
  client = new Client(broker.addr);
});

test.after(async () => {
  client?.close();
  await broker?.destroy();
});

/** A topic prefix of its own per test, so tests share no topic or group. */
const fresh = () => `t${randomUUID().slice(0, 8)}`;

test('event names map to a topic and a type header', () => {
  assert.deepEqual(eventRoute('order:created'), { topic: 'order', type: 'order.created' });
  assert.deepEqual(eventRoute('order:item:added'), { topic: 'order', type: 'order.item.added' });
  assert.deepEqual(eventRoute('order:*'), { topic: 'order', type: '*' });
  assert.deepEqual(eventRoute('payments'), { topic: 'payments', type: 'payments' });
});

test('emit reaches on() in another service, by type; order:* gets every type', async () => {
  const t = fresh();
  const orders = new HeraldEmitter({ client, service: 'orders' });
  const email = new HeraldEmitter({ client, service: 'email' });
  const audit = new HeraldEmitter({ client, service: 'audit' });
  const created = [];
  const all = [];
  email.on(`${t}:created`, (order, event) => {
    created.push({ order, event });
  });
  audit.on(`${t}:*`, (payload, event) => {
    all.push(event.event);
  });
  await Promise.all([email.ready(), audit.ready()]);

  const acked = await orders.emit(`${t}:created`, { id: 'o-1', total: 42 }, { key: 'o-1' });
  assert.equal(typeof acked.offset, 'bigint');
  await orders.emit(`${t}:shipped`, { id: 'o-1' }, { key: 'o-1' });

  await eventually(() => created.length === 1 && all.length === 2, 10_000, 'events handled');
  const { order, event } = created[0];
  assert.deepEqual(order, { id: 'o-1', total: 42 });
  assert.equal(event.event, `${t}:created`);
  assert.equal(event.type, `${t}.created`);
  assert.equal(event.topic, t);
  assert.equal(event.key, 'o-1');
  assert.equal(event.correlationId, event.id, 'an event emitted outside a handler starts a correlation');
  assert.equal(event.causationId, undefined);
  assert.match(event.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.deepEqual(all, [`${t}:created`, `${t}:shipped`], 'a key keeps its order');

  await Promise.all([orders.close(), email.close(), audit.close()]);
  const g = await client.admin().describeGroup(t, 'email');
  assert.equal(g.members.length, 0, 'close() left the group');
});

test('correlation and causation ids and the trace ride from a handled event to the events it emits', async () => {
  const t = fresh();
  const shop = new HeraldEmitter({ client, service: 'shop' });
  const inventory = new HeraldEmitter({ client, service: 'inventory' });
  const billing = new HeraldEmitter({ client, service: 'billing' });
  inventory.on(`${t}:created`, async (order) => {
    await inventory.emit(`${t}-stock:reserved`, { order: order.id });
  });
  let reserved;
  billing.on(`${t}-stock:reserved`, (payload, event) => {
    reserved = { payload, event };
  });
  await Promise.all([inventory.ready(), billing.ready()]);
  const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  await shop.emit(`${t}:created`, { id: 'o-9' }, { key: 'o-9', headers: { traceparent, tenant: 'acme' } });
  await eventually(() => reserved, 10_000, 'the caused event');

  const first = await readFirst(`${t}`);
  assert.equal(first.header('traceparent').split('-')[1], '0af7651916cd43dd8448eb211c80319c');
  assert.equal(first.header('tenant'), 'acme');
  const { event } = reserved;
  assert.deepEqual(reserved.payload, { order: 'o-9' });
  assert.equal(event.correlationId, first.header('id'), 'same correlation as the first event');
  assert.equal(event.causationId, first.header('id'), 'caused by the first event');
  assert.notEqual(event.id, first.header('id'));
  assert.equal(event.traceparent.split('-')[1], '0af7651916cd43dd8448eb211c80319c', 'same trace');
  assert.notEqual(event.traceparent, first.header('traceparent'), 'a new span');
  await Promise.all([shop.close(), inventory.close(), billing.close()]);
});

/** The first record of a topic, through a throwaway group. */
async function readFirst(topic) {
  const consumer = client.consumer(topic, `peek-${randomUUID().slice(0, 8)}`);
  for await (const m of consumer) {
    m.ack();
    await consumer.close();
    return m;
  }
  throw new Error('no record');
}

test('a throwing listener: retried with backoff, then dead-lettered after maxAttempts', async () => {
  const t = fresh();
  const producer = new HeraldEmitter({ client });
  const worker = new HeraldEmitter({
    client,
    service: 'worker',
    maxAttempts: 3,
    retryBackoffMinMs: 50,
    retryBackoffMaxMs: 100,
  });
  const attempts = [];
  worker.on(`${t}:job`, async (payload, event) => {
    attempts.push(event.attempt);
    if (payload.fail) throw new Error(`job ${payload.n} failed`);
  });
  await worker.ready();
  await producer.emit(`${t}:job`, { n: 1, fail: true }, { key: 'a' });
  await producer.emit(`${t}:job`, { n: 2, fail: false }, { key: 'b' });
  await eventually(() => attempts.length === 4, 10_000, 'three attempts and one success');
  assert.deepEqual(attempts.filter((a) => a > 1), [2, 3]);

  const letter = await readFirst(`${t}.worker.dlq`);
  assert.deepEqual(JSON.parse(letter.value.toString()), { n: 1, fail: true });
  assert.equal(letter.header('herald-dlq-reason'), 'job 1 failed');
  assert.equal(letter.header('type'), `${t}.job`);
  await Promise.all([producer.close(), worker.close()]);
});

test('once() handles one event; off() removes the listener and leaves the group', async () => {
  const t = fresh();
  const bus = new HeraldEmitter({ client, service: 'one-shot', concurrency: 1 });
  const got = [];
  const listener = (p) => got.push(p.n);
  bus.once(`${t}:tick`, listener);
  assert.equal(bus.listenerCount(`${t}:tick`), 1);
  await bus.ready();
  await bus.emit(`${t}:tick`, { n: 1 }, { key: 'k' });
  await bus.emit(`${t}:tick`, { n: 2 }, { key: 'k' });
  await eventually(() => got.length === 1, 10_000, 'the one event');
  assert.equal(bus.listenerCount(`${t}:tick`), 0);
  await eventually(async () => (await client.admin().describeGroup(t, 'one-shot')).members.length === 0, 10_000, 'the group left');
  assert.deepEqual(got, [1]);
  await bus.close();
});

test('100 orders, a 50 ms listener and a 1 s ack deadline: 100 emails, none twice', async () => {
  const t = fresh();
  const orders = new HeraldEmitter({ client });
  // Two listeners at a time: 100 × 50 ms takes 2.5 s, well past the deadline of the
  // events waiting their turn, which are extended while they wait.
  const email = new HeraldEmitter({ client, service: 'email', ackDeadlineMs: 1_000, concurrency: 2 });
  const sent = new Map();
  email.on(`${t}:created`, async (order) => {
    await new Promise((r) => setTimeout(r, 50));
    sent.set(order.id, (sent.get(order.id) ?? 0) + 1);
  });
  await email.ready();
  await Promise.all(Array.from({ length: 100 }, (_, i) => orders.emit(`${t}:created`, { id: `o-${i}` }, { key: `o-${i}` })));
  await eventually(() => sent.size === 100, 20_000, 'all emails');
  await email.close();
  assert.equal([...sent.values()].reduce((a, b) => a + b, 0), 100, 'no email sent twice');
  const g = await client.admin().describeGroup(t, 'email');
  assert.ok(g.partitions.every((p) => p.redelivered === 0n && p.lag === 0n));
  await orders.close();
});

test('producerName: a restarted instance fences the one it replaces, topic by topic', async () => {
  const t = fresh();
  const producerName = `orders-${randomUUID().slice(0, 8)}`;
  const older = new HeraldEmitter({ client, producerName });
  // One name, two topics: the emitter's own producers do not fence each other.
  await older.emit(`${t}a:created`, { n: 1 });
  await older.emit(`${t}b:created`, { n: 1 });
  const newer = new HeraldEmitter({ client, producerName });
  await newer.emit(`${t}a:created`, { n: 2 });
  await assert.rejects(older.emit(`${t}a:created`, { n: 3 }), FailedPreconditionError);
  // The other topic's producer has no newer instance yet.
  await older.emit(`${t}b:created`, { n: 3 });
  await older.close();
  await newer.close();
  const described = await client.admin().describeTopic(`${t}a`);
  assert.equal(described.partitions.reduce((n, p) => n + p.endOffset, 0n), 2n);
});
