// The order service. Before, it did `events.emit('order:created', order)` on an
// in-process EventEmitter; now it publishes an `order.created` event to a Herald topic,
// keyed by order id so that all events of one order land in one partition, in order.
'use strict';

const { randomUUID } = require('node:crypto');
const herald = require('./herald');

const TOPIC = process.env.HERALD_TOPIC || 'orders';

/** Publishes one order.created event; resolves to { partition, base_offset, ... }. */
function publishOrderCreated(client, topic, order) {
  const event = { type: 'order.created', order };
  return herald.call(client, 'Publish', {
    topic,
    // The plain per-record form; the first record's key picks the partition.
    records: {
      records: [
        {
          key: Buffer.from(order.id),
          value: Buffer.from(JSON.stringify(event)),
          headers: [{ key: 'content-type', value: Buffer.from('application/json') }],
        },
      ],
    },
  });
}

/** Creates `count` orders and publishes an event for each; returns the orders. */
async function runOrders(client, topic, count) {
  const orders = [];
  for (let i = 0; i < count; i++) {
    const order = {
      id: `order-${randomUUID()}`,
      email: `customer${i}@example.com`,
      total: 10 + i,
    };
    const reply = await publishOrderCreated(client, topic, order);
    // Offsets are uint64, loaded as strings (see herald.js).
    console.log(`order ${order.id} -> partition ${reply.partition} offset ${reply.base_offset}`);
    orders.push(order);
  }
  return orders;
}

module.exports = { publishOrderCreated, runOrders };

if (require.main === module) {
  const count = Number(process.argv[2] || 5);
  const client = herald.connect();
  herald
    .ensureTopic(client, TOPIC, 3)
    .then(() => runOrders(client, TOPIC, count))
    .then(() => client.close())
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
