// Shared Herald client set-up: loads the .proto files straight from the repository with
// @grpc/proto-loader (no code generation step) and connects to the broker.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The files import each other as "herald/v1/<file>.proto", so proto/proto is the include
// path.
const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto', 'proto');

const packageDefinition = protoLoader.loadSync('herald/v1/herald.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the .proto files: base_offset, ack_ids...
  longs: String, // uint64 offsets do not fit a JS number in general: keep them exact
  enums: String,
  bytes: Buffer, // keys, values and ack ids as Buffers
  defaults: true, // unset scalars read as their default (0, '', empty Buffer)
  oneofs: true, // a oneof's name tells which field is set, e.g. response.response
});
const v1 = grpc.loadPackageDefinition(packageDefinition).herald.v1;

/** The broker address: $HERALD_ADDR, else the broker's default 127.0.0.1:50051. */
function brokerAddr() {
  return process.env.HERALD_ADDR || '127.0.0.1:50051';
}

/** A client of the Herald service (plaintext, like the broker's default listener). */
function connect(addr = brokerAddr()) {
  return new v1.Herald(addr, grpc.credentials.createInsecure(), {
    // Like gRPC Python, grpc-js honours http_proxy even for 127.0.0.1; a broker is
    // reached directly.
    'grpc.enable_http_proxy': 0,
  });
}

/** Calls a unary method and returns a promise of its reply. */
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

/** Creates a topic; an existing one is fine (ALREADY_EXISTS). */
async function ensureTopic(client, name, partitions) {
  try {
    await call(client, 'CreateTopic', { name, partitions });
  } catch (err) {
    if (err.code !== grpc.status.ALREADY_EXISTS) throw err;
  }
}

module.exports = { grpc, v1, brokerAddr, connect, call, ensureTopic };
