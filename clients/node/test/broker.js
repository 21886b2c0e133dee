// Test harness: runs a real `herald serve` process on 127.0.0.1 with a temporary data
// directory, and can stop and restart it on the same port.
//
// The binary is $HERALD_BIN (cli/tests/node_client.rs sets it to the one cargo built),
// else target/debug/herald of the workspace (or of $CARGO_TARGET_DIR).
'use strict';

const { spawn } = require('node:child_process');
const { randomUUID } = require('node:crypto');
const { mkdtempSync, rmSync, existsSync } = require('node:fs');
const { tmpdir } = require('node:os');
const path = require('node:path');

const START_TIMEOUT_MS = 15_000;

function heraldBin() {
  const candidates = [
    process.env.HERALD_BIN,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug', 'herald'),
    path.join(__dirname, '..', '..', '..', 'target', 'debug', 'herald'),
  ].filter(Boolean);
  const bin = candidates.find((c) => existsSync(c));
  if (!bin) {
    throw new Error(
      `no herald binary (tried ${candidates.join(', ')}): build it with ` +
        '`cargo build -p herald-cli` or set HERALD_BIN',
    );
  }
  return bin;
}

/** The environment of the broker: info logs, and none of the user's HERALD_* settings. */
function brokerEnv() {
  const env = { ...process.env, RUST_LOG: 'info' };
  for (const k of Object.keys(env)) if (k.startsWith('HERALD_')) delete env[k];
  return env;
}

class Broker {
  /** `args`: more `herald serve` flags (e.g. TLS and a config file). */
  constructor(args = []) {
    this.bin = heraldBin();
    this.args = args;
    this.dataDir = mkdtempSync(path.join(tmpdir(), 'herald-node-'));
    this.port = 0;
    this.child = undefined;
    this.log = [];
  }

  /** host:port of the gRPC listener. */
  get addr() {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts the broker (on the port it had before, after a stop) and waits until it serves. */
  start() {
    return new Promise((resolve, reject) => {
      const child = spawn(
        this.bin,
        [
          'serve', '--log-json', '--data-dir', this.dataDir,
          '--listen', `127.0.0.1:${this.port}`, '--metrics-listen', '127.0.0.1:0',
          // Small segments: recovery after a kill scans the open segment, which in a
          // debug build takes seconds for the default 256 MiB.
          '--segment-bytes', String(4 * 1024 * 1024),
          ...this.args,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'], env: brokerEnv() },
      );
      this.child = child;
      live.add(child);
      child.once('exit', () => live.delete(child));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`herald did not start within ${START_TIMEOUT_MS} ms:\n${this.log.join('\n')}`));
      }, START_TIMEOUT_MS);
      let rest = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        rest += chunk;
        const lines = rest.split('\n');
        rest = lines.pop();
        for (const line of lines) {
          this.log.push(line);
          if (this.log.length > 2000) this.log.shift();
          try {
            const entry = JSON.parse(line);
            if (entry.fields?.message === 'herald is serving') {
              this.port = Number(String(entry.fields.addr).split(':').pop());
              clearTimeout(timer);
              resolve(this);
            }
          } catch {
            // not a JSON log line
          }
        }
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`herald exited (${code ?? signal}) before serving:\n${this.log.join('\n')}`));
      });
    });
  }

  /** Stops the process with `signal` and waits for it to exit. */
  stop(signal = 'SIGTERM') {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), START_TIMEOUT_MS);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill(signal);
    });
  }

  /** Stops and deletes the data directory. */
  async destroy() {
    await this.stop('SIGKILL');
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

// Brokers still running when the test process exits (a failed or timed-out test) are
// killed with it, so nothing is left behind.
const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A started broker. */
async function startBroker(args = []) {
  const broker = new Broker(args);
  await broker.start();
  return broker;
}

/** Polls `check` (async, truthy when done) every 25 ms until it holds or `timeoutMs` passes. */
async function eventually(check, timeoutMs = 10_000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A name unique to this run: `prefix-` and 8 random hex digits. */
function uniqueName(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** Waits until `group` on `topic` has no lag and nothing in flight; returns its description. */
function drained(admin, topic, group) {
  return eventually(async () => {
    const g = await admin.describeGroup(topic, group);
    return g.partitions.every((p) => p.lag === 0n && p.inFlight === 0) && g;
  }, 15_000, `group ${group} to drain`);
}

module.exports = { startBroker, Broker, eventually, sleep, uniqueName, drained };
