// The order service. Before: `events.emit('order:created', order)` on an in-process
// EventEmitter. Now the same call on a HeraldEmitter publishes the event durably (topic
// `order`, header `type: order.created`), keyed by order id so an order's events stay in
// order.
'use strict';

const { randomUUID } = require('node:crypto');
const { HeraldEmitter } = require('herald-broker-client');

/** Creates an order and announces it; resolves once the broker has stored the event. */
async function createOrder(events, customer, total) {
  const order = { id: `order-${randomUUID()}`, email: customer, total };
  await events.emit('order:created', order, { key: order.id });
  return order;
}

module.exports = { createOrder };

if (require.main === module) {
  const events = new HeraldEmitter({ service: 'orders' });
  (async () => {
    for (let i = 0; i < Number(process.argv[2] || 5); i++) {
      const order = await createOrder(events, `customer${i}@example.com`, 10 + i);
      console.log(`order ${order.id} created`);
    }
    await events.close();
  })().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
