// The inventory service: reserves stock for each order and announces it. The event it
// emits from inside the listener carries the order event's correlation id, the order
// event's id as causation id, and its trace (W3C traceparent), with no code for it.
'use strict';

const { HeraldEmitter } = require('herald-broker-client');

const stock = new Map(); // order id -> reserved (stands in for the stock database)

function startInventory(events) {
  return events.on('order:created', async (order) => {
    stock.set(order.id, true); // idempotent: a redelivered order reserves nothing twice
    await events.emit('inventory:reserved', { orderId: order.id }, { key: order.id });
  });
}

module.exports = { startInventory, stock };

if (require.main === module) {
  const events = startInventory(new HeraldEmitter({ service: 'inventory' }));
  process.once('SIGINT', () => events.close());
}
