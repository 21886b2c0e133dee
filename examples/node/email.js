// The email service. Before: `events.on('order:created', sendEmail)` in the same process.
// Now the same call joins the consumer group `email`: each order event reaches one email
// service instance, is retried with backoff if sendEmail throws, and goes to the
// dead-letter topic `order.email.dlq` after 5 attempts.
'use strict';

const { HeraldEmitter } = require('herald-broker-client');

/** Stands in for the real mailer. */
async function sendEmail(order) {
  await new Promise((resolve) => setTimeout(resolve, 50));
  console.log(`email to ${order.email}: your order ${order.id} (total ${order.total}) is confirmed`);
}

function startEmail(events, send = sendEmail) {
  return events.on('order:created', send);
}

module.exports = { startEmail, sendEmail };

if (require.main === module) {
  const events = startEmail(new HeraldEmitter({ service: 'email' }));
  process.once('SIGINT', () => events.close()); // finishes the emails being sent, then leaves
}
