// End-to-end test of the example against a running broker: node --test test.js
// HERALD_ADDR names the broker (tests/node_example.rs starts one and sets it).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Client, HeraldEmitter } = require('herald-broker-client');
const { createOrder } = require('./orders');
const { startEmail } = require('./email');
const { startInventory, stock } = require('./inventory');

const ORDERS = 20;

test('every order gets one email and one stock reservation, caused by it', { timeout: 60_000 }, async () => {
  assert.ok(process.env.HERALD_ADDR, 'set HERALD_ADDR to the broker address (host:port)');
  const client = new Client(process.env.HERALD_ADDR);
  const orders = new HeraldEmitter({ client, service: 'orders' });
  const email = new HeraldEmitter({ client, service: 'email' });
  const inventory = new HeraldEmitter({ client, service: 'inventory' });
  const audit = new HeraldEmitter({ client, service: 'audit' });
  try {
    const emailed = new Map(); // order id -> emails
    startEmail(email, async (order) => {
      emailed.set(order.id, (emailed.get(order.id) || 0) + 1);
    });
    startInventory(inventory);
    const reserved = [];
    audit.on('inventory:reserved', (payload, event) => reserved.push({ payload, event }));
    await Promise.all([email.ready(), inventory.ready(), audit.ready()]);

    const created = [];
    for (let i = 0; i < ORDERS; i++) created.push(await createOrder(orders, `c${i}@example.com`, 10 + i));

    const deadline = Date.now() + 20_000;
    while ((emailed.size < ORDERS || reserved.length < ORDERS) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    for (const order of created) {
      assert.equal(emailed.get(order.id), 1, `order ${order.id} emailed once`);
      assert.ok(stock.get(order.id), `stock reserved for ${order.id}`);
    }
    assert.equal(reserved.length, ORDERS);
    for (const { payload, event } of reserved) {
      assert.ok(created.some((o) => o.id === payload.orderId));
      assert.ok(event.causationId, 'the reservation names the order event that caused it');
      assert.equal(event.correlationId, event.causationId, 'and shares its correlation id');
    }

    // Every event was acked: no lag in the groups of the order topic. Acks travel after
    // the handler returns, so poll briefly.
    const admin = client.admin();
    for (const group of ['email', 'inventory']) {
      let g;
      const until = Date.now() + 10_000;
      do {
        g = await admin.describeGroup('order', group);
      } while (g.partitions.some((p) => p.lag > 0n) && Date.now() < until);
      const lag = g.partitions.reduce((sum, p) => sum + p.lag, 0n);
      assert.equal(lag, 0n, `group ${group} has no lag`);
      assert.equal(g.partitions.reduce((sum, p) => sum + p.endOffset, 0n), BigInt(ORDERS));
    }
  } finally {
    await Promise.all([orders.close(), email.close(), inventory.close(), audit.close()]);
    client.close();
  }
});
