// Loads the herald.v1 service definition from the .proto files shipped next to the
// compiled code (the build copies them to dist/proto).
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType } from './generated/herald';

// The options must match the type generator's in scripts/build.mjs.
const packageDefinition = protoLoader.loadSync('herald/v1/herald.proto', {
  includeDirs: [path.join(__dirname, 'proto')],
  keepCase: true,
  // uint64 offsets do not fit a JS number: the wire objects carry strings, which the
  // client turns into bigint.
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

export const v1 = (grpc.loadPackageDefinition(packageDefinition) as unknown as ProtoGrpcType).herald.v1;
