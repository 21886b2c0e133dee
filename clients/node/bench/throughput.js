// Publish and consume throughput of the Node.js client against a running broker.
//
//   node bench/throughput.js [--addr 127.0.0.1:50051] [--records 1000000] [--size 100]
//                            [--partitions 4] [--keys 1000] [--concurrency 256]
//                            [--idempotent on|off|compare] [--rounds 3]
//
// Creates a fresh topic (fsync never, so the disk does not hide the client's cost),
// publishes --records records of --size bytes keyed over --keys keys with one Producer
// (default batching, idempotent unless --idempotent off), then consumes them in a new
// group with the handler form (a no-op handler, so each message is acked), and prints
// records/s and MB/s of both. The Rust client's figures on the same broker come from
// herald-load (see README.md).
//
// --idempotent compare measures publishing only: --rounds times, idempotence on and off
// (in alternating order, each run on a fresh topic), and prints the median of each and
// their ratio.
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
  const idempotent = arg('idempotent', 'on');
  const rounds = Number(arg('rounds', 3));
  const client = new Client(addr);
  const admin = client.admin();
  const value = Buffer.alloc(size, 120);
  const keyList = Array.from({ length: keys }, (_, i) => `k${i}`);

  /** Publishes `records` records to a fresh topic; returns the topic and the seconds taken. */
  async function publish(idem) {
    const topic = `node-bench-${Date.now()}`;
    await admin.createTopic(topic, partitions, { fsyncPolicy: 'never' });
    const producer = client.producer(topic, { idempotent: idem });
    // The first record pays for the identity and the topic lookup outside the timing.
    await producer.publish({ key: keyList[0], value });
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < records; i++) {
      await producer.send({ key: keyList[i % keys], value });
    }
    await producer.flush();
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    await producer.close();
    return { topic, secs };
  }

  if (idempotent === 'compare') {
    const rates = { on: [], off: [] };
    for (let round = 1; round <= rounds; round++) {
      // The order flips each round, so a drift (JIT warm-up, a busy machine) favours neither.
      for (const mode of round % 2 ? ['on', 'off'] : ['off', 'on']) {
        const { topic, secs } = await publish(mode === 'on');
        await admin.deleteTopic(topic);
        rates[mode].push(records / secs);
        report(`publish, idempotence ${mode} (round ${round})`, records, size, secs);
      }
    }
    const on = median(rates.on);
    const off = median(rates.off);
    console.log(
      `median publish: idempotence on ${Math.round(on).toLocaleString('en')} records/s, ` +
        `off ${Math.round(off).toLocaleString('en')} records/s, on/off ${(on / off).toFixed(3)}`,
    );
    client.close();
    return;
  }

  const { topic, secs: publishSecs } = await publish(idempotent !== 'off');
  report('publish', records, size, publishSecs);

  const consumer = client.consumer(topic, 'bench', { concurrency, maxInFlightMessages: concurrency * 4 });
  let received = 0;
  let done;
  const all = new Promise((r) => (done = r));
  const t0 = process.hrtime.bigint();
  // The warm-up record of the publish counts too.
  const run = consumer.run(() => {
    if (++received === records + 1) done();
  });
  await all;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  await consumer.close();
  await run;
  report('consume', records, size, secs);
  await admin.deleteTopic(topic);
  client.close();
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
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
