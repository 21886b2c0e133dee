// Publish and consume throughput of the Node.js client against a running broker.
//
//   node bench/throughput.js [--addr 127.0.0.1:50051] [--records 1000000] [--size 100]
//                            [--partitions 4] [--keys 1000] [--concurrency 256]
//
// Creates a fresh topic (fsync never, so the disk does not hide the client's cost),
// publishes --records records of --size bytes keyed over --keys keys with one Producer
// (default batching), then consumes them in a new group with the handler form (a no-op
// handler, so each message is acked), and prints records/s and MB/s of both. The Rust
// client's figures on the same broker come from herald-load (see README.md).
'use strict';

const { Client } = require('..');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const addr = arg('addr', process.env.HERALD_ADDR || '127.0.0.1:50051');
  const records = Number(arg('records', 1_000_000));
  const size = Number(arg('size', 100));
  const partitions = Number(arg('partitions', 4));
  const keys = Number(arg('keys', 1000));
  const concurrency = Number(arg('concurrency', 256));
  const client = new Client(addr);
  const admin = client.admin();
  const topic = `node-bench-${Date.now()}`;
  await admin.createTopic(topic, partitions, { fsyncPolicy: 'never' });

  const value = Buffer.alloc(size, 120);
  const keyList = Array.from({ length: keys }, (_, i) => `k${i}`);
  const producer = client.producer(topic);
  await producer.partitionCount();
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < records; i++) {
    await producer.send({ key: keyList[i % keys], value });
  }
  await producer.flush();
  let secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await producer.close();
  report('publish', records, size, secs);

  const consumer = client.consumer(topic, 'bench', { concurrency, maxInFlightMessages: concurrency * 4 });
  let received = 0;
  let done;
  const all = new Promise((r) => (done = r));
  t0 = process.hrtime.bigint();
  const run = consumer.run(() => {
    if (++received === records) done();
  });
  await all;
  secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await consumer.close();
  await run;
  report('consume', records, size, secs);
  await admin.deleteTopic(topic);
  client.close();
}

function report(what, records, size, secs) {
  const rate = records / secs;
  console.log(
    `${what.padEnd(8)} ${records} records of ${size} B in ${secs.toFixed(2)} s: ` +
      `${Math.round(rate).toLocaleString('en')} records/s, ${((rate * size) / 1e6).toFixed(1)} MB/s`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
