// The email service. Before, it did `events.on('order:created', sendEmail)` on an
// in-process EventEmitter; now it is a member of the Herald consumer group "email" on the
// orders topic. Herald delivers each event to one member of the group, and the event is
// done only once acked: if the service crashes before acking, it is delivered again.
'use strict';

const herald = require('./herald');

const TOPIC = process.env.HERALD_TOPIC || 'orders';
const GROUP = 'email';

/** Stands in for the real mailer. */
async function sendEmail(order) {
  await new Promise((resolve) => setTimeout(resolve, 1));
  return `to ${order.email}: your order ${order.id} (total ${order.total}) is confirmed`;
}

/**
 * Consumes order.created events in group `email`: "sends" the email, acks the delivery
 * and calls onEmail({ order, delivery, line }). With `limit`, stops after acking that many
 * deliveries and resolves; otherwise runs until the stream ends or fails. Resolves to the
 * number of deliveries acked.
 */
function runEmail(client, topic, { group = GROUP, limit = Infinity, onEmail = () => {} } = {}) {
  return new Promise((resolve, reject) => {
    const stream = client.Subscribe();
    let acked = 0;
    let finished = false;
    const finish = (err) => {
      if (finished) return;
      finished = true;
      if (err) reject(err);
      else resolve(acked);
    };

    // The first message joins the group. The first Join creates it, here starting at the
    // earliest offset so that orders published before the first start are emailed too.
    stream.write({
      join: {
        topic,
        group,
        client_id: `email-${process.pid}`,
        start_position: { earliest: {} },
      },
    });

    // Deliveries are handled one at a time, in the order they arrive.
    let queue = Promise.resolve();
    stream.on('data', (msg) => {
      if (msg.response === 'joined') {
        console.log(`joined ${topic}/${group} as ${msg.joined.member_id}, partitions [${msg.joined.partitions}]`);
      } else if (msg.response === 'assignment') {
        console.log(`partitions now [${msg.assignment.partitions}]`);
      } else if (msg.response === 'deliveries') {
        for (const delivery of msg.deliveries.deliveries) {
          queue = queue.then(() => handle(delivery)).catch((err) => {
            stream.cancel();
            finish(err);
          });
        }
      }
    });

    async function handle(delivery) {
      if (finished || acked >= limit) return;
      const event = JSON.parse(delivery.value.toString('utf8'));
      if (event.type !== 'order.created') {
        stream.write({ ack: { ack_ids: [delivery.ack_id] } }); // not for us: done
        return;
      }
      const line = await sendEmail(event.order);
      stream.write({ ack: { ack_ids: [delivery.ack_id] } });
      acked++;
      // delivery.offset is a uint64, loaded as a string.
      console.log(`email sent ${line} [p${delivery.partition}@${delivery.offset}]`);
      onEmail({ order: event.order, delivery, line });
      if (acked >= limit) {
        // Closing our side is leaving the group; the acks written before go first.
        stream.end();
      }
    }

    stream.on('error', (err) => {
      // A cancel we asked for after finishing is not a failure.
      if (finished && err.code === herald.grpc.status.CANCELLED) return;
      finish(err);
    });
    stream.on('end', () => queue.then(() => finish()));
  });
}

module.exports = { runEmail, sendEmail };

if (require.main === module) {
  const client = herald.connect();
  herald
    .ensureTopic(client, TOPIC, 3)
    .then(() => runEmail(client, TOPIC))
    .then(() => client.close())
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
