#!/usr/bin/env python3
"""Herald through gRPC server reflection v1alpha, as generic tools use it: no .proto files.

The client is grpcio-reflection's `ProtoReflectionDescriptorDatabase`, which speaks only
`grpc.reflection.v1alpha.ServerReflection` (the version grpcurl before 1.9, grpc-js and
Python's grpc_requests use). Against the broker at argv[1] (host:port), it:
  - lists the services and finds herald.v1.Herald and grpc.health.v1.Health;
  - loads herald.v1.Herald's schema from the broker into a descriptor pool;
  - builds request messages from those descriptors alone and calls CreateTopic, Publish
    and DescribeTopic with them, checking the replies;
  - asks for an unknown symbol and expects a NOT_FOUND answer.

Prints one summary line and exits 0 on success; 1 on a mismatch, 2 on bad usage, 3 when a
Python package is missing (install tests/python/requirements.txt; ./scripts/test does).

Usage: python3 tests/python/reflection_v1alpha.py 127.0.0.1:PORT
"""

import os
import sys
import time

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3

try:
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as e:
    print(
        f"reflection_v1alpha: missing Python package: {e}. Install "
        "tests/python/requirements.txt (./scripts/test does it).",
        file=sys.stderr,
    )
    sys.exit(EXIT_MISSING_DEPENDENCY)

TOPIC = f"py-reflect.{int(time.time())}-{os.getpid()}"
RPC_TIMEOUT_S = 10


def fail(message):
    print(f"reflection_v1alpha: FAILED: {message}", file=sys.stderr)
    sys.exit(EXIT_MISMATCH)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return EXIT_USAGE
    channel = grpc.insecure_channel(sys.argv[1])
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    for wanted in ("herald.v1.Herald", "grpc.health.v1.Health"):
        if wanted not in services:
            fail(f"{wanted} not among the listed services {sorted(services)}")

    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("herald.v1.Herald")
    methods = {m.name: m for m in service.methods}
    for wanted in ("CreateTopic", "Publish", "Fetch", "Subscribe", "DescribeTopic"):
        if wanted not in methods:
            fail(f"herald.v1.Herald has no {wanted} in {sorted(methods)}")

    def call(rpc_name, **fields):
        method = methods[rpc_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        rpc = channel.unary_unary(
            f"/{service.full_name}/{rpc_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return rpc(request_class(**fields), timeout=RPC_TIMEOUT_S)

    created = call("CreateTopic", name=TOPIC, partitions=2)
    if created.topic.name != TOPIC or created.topic.partition_count != 2:
        fail(f"CreateTopic answered {created}")

    record_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("herald.v1.Record")
    )
    records_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("herald.v1.Records")
    )
    published = call(
        "Publish",
        topic=TOPIC,
        partition=1,
        records=records_class(
            records=[record_class(value=b"one"), record_class(value=b"two")]
        ),
    )
    if (published.partition, published.base_offset, published.last_offset) != (1, 0, 1):
        fail(f"Publish answered {published}")

    described = call("DescribeTopic", name=TOPIC)
    ends = [p.end_offset for p in described.topic.partitions]
    if ends != [0, 2]:
        fail(f"DescribeTopic end offsets {ends}, expected [0, 2]")

    # tonic-reflection ends the stream with NOT_FOUND rather than sending an ErrorResponse
    # message (which the database would turn into KeyError); tools treat both alike.
    try:
        database.FindFileContainingSymbol("herald.v1.NoSuchThing")
        fail("an unknown symbol was found")
    except KeyError:
        pass
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            fail(f"an unknown symbol was answered with {e.code()}: {e.details()}")

    call("DeleteTopic", name=TOPIC)
    print(
        f"reflection_v1alpha: OK ({len(services)} services, {len(methods)} Herald methods, "
        "CreateTopic/Publish/DescribeTopic through reflected descriptors)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
