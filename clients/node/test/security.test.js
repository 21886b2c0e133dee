// The README's Node.js snippet for a secured broker: TLS with the broker's CA, and a
// bearer token. Certificates and the token are made by the `herald` binary itself
// (`herald cert init`, `herald auth hash-token`), as the README's setup does.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { mkdtempSync, readFileSync, writeFileSync, rmSync } = require('node:fs');
const { tmpdir } = require('node:os');
const path = require('node:path');
const { Client, HeraldError, status } = require('..');
const { Broker } = require('./broker');

let broker;
let dir;
let token;

test.before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'herald-node-tls-'));
  broker = new Broker();
  execFileSync(broker.bin, ['cert', 'init', '--dir', path.join(dir, 'certs')]);
  const entry = execFileSync(broker.bin, ['auth', 'hash-token', '--principal', 'app'], { encoding: 'utf8' });
  token = entry.split('\n')[1].replace(/^# /, '');
  writeFileSync(path.join(dir, 'acl.toml'), [
    '[[rule]]',
    'principal = "app"',
    'operations = ["all"]',
    'resource = "topic"',
    'name = "app."',
    'pattern = "prefix"',
    '',
  ].join('\n'));
  writeFileSync(path.join(dir, 'herald.toml'), [
    `tls_cert_file = "${path.join(dir, 'certs', 'server.pem')}"`,
    `tls_key_file = "${path.join(dir, 'certs', 'server.key')}"`,
    `acl_file = "${path.join(dir, 'acl.toml')}"`,
    entry.split('\n').filter((l) => !l.startsWith('#')).join('\n'),
  ].join('\n'));
  broker.args = ['--config', path.join(dir, 'herald.toml')];
  await broker.start();
});

test.after(async () => {
  await broker?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('TLS with the broker CA and a bearer token: publish and read back', async () => {
  // --- README snippet ---
  const client = new Client(`localhost:${broker.port}`, {
    tls: { rootCerts: readFileSync(path.join(dir, 'certs', 'ca.pem')) },
    token, // or process.env.HERALD_TOKEN
  });
  // ---
  try {
    const admin = client.admin();
    await admin.createTopic('app.events', 1);
    const topics = await admin.listTopics();
    assert.deepEqual(topics.map((t) => t.name), ['app.events']);
    const producer = client.producer('app.events');
    const stored = await producer.publish({ value: 'hello over tls' });
    assert.equal(stored.offset, 0n);
    await producer.close();
    // An operation outside the ACL: PERMISSION_DENIED naming it.
    await assert.rejects(admin.createTopic('other', 1), (e) => {
      assert.ok(e instanceof HeraldError);
      assert.equal(e.code, status.PERMISSION_DENIED);
      assert.match(e.message, /create on topic "other" for principal "app"/);
      return true;
    });
  } finally {
    client.close();
  }
});

test('no token: UNAUTHENTICATED', async () => {
  const client = new Client(`localhost:${broker.port}`, {
    tls: { rootCerts: readFileSync(path.join(dir, 'certs', 'ca.pem')) },
  });
  try {
    await assert.rejects(client.admin().listTopics(), (e) => e.code === status.UNAUTHENTICATED);
  } finally {
    client.close();
  }
});
