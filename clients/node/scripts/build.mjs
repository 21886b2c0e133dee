// Build: generates the TypeScript types of the herald.v1 messages from the repository's
// .proto files, compiles src/ to dist/, and copies the .proto files next to the compiled
// code (the client loads them at run time with @grpc/proto-loader, so dist/ is
// self-contained). Generated code and dist/ are build outputs, never committed.
import { execFileSync } from 'node:child_process';
import { cpSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const protoRoot = join(pkg, '..', '..', 'proto', 'proto');
const bin = (name) => join(pkg, 'node_modules', '.bin', name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: pkg, stdio: 'inherit' });

rmSync(join(pkg, 'src', 'generated'), { recursive: true, force: true });
rmSync(join(pkg, 'dist'), { recursive: true, force: true });
// The options must match the loader's in src/proto.ts, so the types describe the objects
// the loader really produces and accepts.
run(bin('proto-loader-gen-types'), [
  '--keepCase',
  '--longs=String',
  '--enums=String',
  '--defaults',
  '--oneofs',
  '--grpcLib=@grpc/grpc-js',
  '-I', protoRoot,
  '-O', join(pkg, 'src', 'generated'),
  'herald/v1/herald.proto',
]);
run(bin('tsc'), ['-p', join(pkg, 'tsconfig.json')]);
cpSync(protoRoot, join(pkg, 'dist', 'proto'), { recursive: true });
