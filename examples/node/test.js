// End-to-end test of the example against a running broker: node --test test.js
// HERALD_ADDR names the broker (tests/node_example.rs starts one and sets it).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');

const herald = require('./herald');
const { runOrders } = require('./orders');
const { runEmail } = require('./email');

const ORDERS = 20;
const PARTITIONS = 3;

test('every order created gets one email, and the group has no lag', { timeout: 60_000 }, async () => {
  assert.ok(process.env.HERALD_ADDR, 'set HERALD_ADDR to the broker address (host:port)');
  const client = herald.connect(process.env.HERALD_ADDR);
  const topic = `orders-${randomUUID()}`;
  try {
    await herald.call(client, 'CreateTopic', { name: topic, partitions: PARTITIONS });

    const orders = await runOrders(client, topic, ORDERS);
    assert.equal(orders.length, ORDERS);

    const received = new Map(); // order id -> times emailed
    const acked = await runEmail(client, topic, {
      group: 'email',
      limit: ORDERS,
      onEmail: ({ order, delivery }) => {
        assert.equal(delivery.key.toString('utf8'), order.id, 'keyed by order id');
        assert.equal(typeof delivery.offset, 'string', 'uint64 offsets load as strings');
        received.set(order.id, (received.get(order.id) || 0) + 1);
      },
    });
    assert.equal(acked, ORDERS);
    for (const order of orders) {
      assert.equal(received.get(order.id), 1, `order ${order.id} emailed exactly once`);
    }
    assert.equal(received.size, ORDERS, 'no email for an unknown order');

    // Every ack reached the broker: the group's lag is 0 in every partition and the
    // committed offsets cover everything published. Acks are applied asynchronously, so
    // poll briefly.
    let group;
    const deadline = Date.now() + 10_000;
    for (;;) {
      ({ group } = await herald.call(client, 'DescribeGroup', { topic, group: 'email' }));
      if (group.partitions.every((p) => BigInt(p.lag) === 0n) || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.equal(group.partitions.length, PARTITIONS);
    for (const p of group.partitions) {
      assert.equal(BigInt(p.lag), 0n, `partition ${p.partition} lag: ${JSON.stringify(p)}`);
      assert.equal(BigInt(p.committed_offset), BigInt(p.end_offset));
      assert.equal(p.in_flight_count, 0);
    }
    const total = group.partitions.reduce((sum, p) => sum + BigInt(p.end_offset), 0n);
    assert.equal(total, BigInt(ORDERS));
  } finally {
    await herald.call(client, 'DeleteTopic', { name: topic }).catch(() => {});
    client.close();
  }
});
