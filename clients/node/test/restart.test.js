// A broker restart in the middle of publishing and consuming: nothing acknowledged is lost,
// the consumer rejoins by itself, and the group is left with exactly one member of it.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('..');
const { startBroker, eventually, sleep } = require('./broker');

test('broker restart mid-stream loses nothing and leaves one member', { timeout: 90_000 }, async (t) => {
  const broker = await startBroker();
  const client = new Client(broker.addr);
  const admin = client.admin();
  let consumer;
  try {
    const topic = 'restart';
    await admin.createTopic(topic, 3);
    const producer = client.producer(topic, { lingerMs: 2, retryBackoffMs: 50, retryBackoffMaxMs: 500, maxRetries: 50 });
    consumer = client.consumer(topic, 'survivor', {
      concurrency: 4,
      reconnectBackoffMs: 50,
      reconnectBackoffMaxMs: 500,
    });
    const received = new Map(); // value -> deliveries
    const run = consumer.run(async (m) => {
      const v = m.value.toString();
      received.set(v, (received.get(v) ?? 0) + 1);
      await sleep(1);
    });
    await consumer.joined();

    // Three publishers in the background, each awaiting every record like a service
    // would, across the restart: the producer retries what the dead broker did not
    // acknowledge.
    const TOTAL = 450;
    const stored = [];
    const publishing = Promise.all(
      [0, 1, 2].map(async (w) => {
        for (let i = w; i < TOTAL; i += 3) {
          stored.push(await producer.publish({ key: `order-${i % 20}`, value: `event-${i}` }));
        }
      }),
    );

    await eventually(() => stored.length >= 150, 30_000, 'publishes before the restart');
    await broker.stop('SIGKILL');
    // A call made while the broker is down waits for it (wait-for-ready) instead of
    // failing at once with UNAVAILABLE.
    const describedDuringRestart = admin.describeTopic(topic);
    await sleep(300);
    await broker.start();
    assert.equal((await describedDuringRestart).partitionCount, 3);
    await publishing;
    await producer.close();
    assert.equal(stored.length, TOTAL, 'every publish eventually succeeded');
    t.diagnostic(`batches retried across the restart: ${producer.retries}`);

    await eventually(() => received.size === TOTAL, 30_000, `all ${TOTAL} events consumed (have ${received.size})`);
    for (let i = 0; i < TOTAL; i++) assert.ok(received.has(`event-${i}`), `event-${i} consumed`);
    assert.ok(consumer.joins >= 2, 'the consumer rejoined');

    const group = await eventually(async () => {
      const g = await admin.describeGroup(topic, 'survivor');
      return g.partitions.every((p) => p.lag === 0n) && g;
    }, 15_000, 'the group to catch up');
    assert.equal(group.members.length, 1, `one member: ${JSON.stringify(group.members)}`);
    assert.equal(group.members[0].memberId, consumer.memberId);
    await consumer.close();
    await run;
    assert.equal((await admin.describeGroup(topic, 'survivor')).members.length, 0);
  } finally {
    await consumer?.close();
    client.close();
    await broker.destroy();
  }
});
