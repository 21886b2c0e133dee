#!/usr/bin/env python3
"""The README's Python snippet for a secured broker: TLS with the broker's CA and a bearer
token, with stubs generated from the .proto files (as herald_smoke.py does).

Against the broker at argv[1] (localhost:PORT), with the CA certificate file in
HERALD_TLS_CA and the token in HERALD_TOKEN: creates a topic, publishes a record and
lists topics over TLS with the token; checks that a call without the token is
UNAUTHENTICATED and one outside the principal's rights is PERMISSION_DENIED.

Exits 0 on success, 1 on a mismatch, 3 when a Python package is missing.
"""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import herald_smoke  # noqa: E402  (exits 3 itself when grpcio is missing)

import grpc  # noqa: E402


def main(argv) -> int:
    address = argv[1]
    with tempfile.TemporaryDirectory(prefix="herald-py-secure-") as tmp:
        pb = herald_smoke.generate_stubs(Path(tmp))
        topics, common = pb["topics_pb2"], pb["common_pb2"]
        publish = pb["publish_pb2"]

        # --- README snippet ---
        ca = Path(os.environ["HERALD_TLS_CA"]).read_bytes()
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=ca),
            # Sent as `authorization: Bearer <token>` on every call.
            grpc.access_token_call_credentials(os.environ["HERALD_TOKEN"]),
        )
        channel = grpc.secure_channel(address, credentials)
        stub = pb["herald_pb2_grpc"].HeraldStub(channel)
        # ---

        failures = []
        stub.CreateTopic(topics.CreateTopicRequest(name="py.secure", partitions=1), timeout=10)
        reply = stub.Publish(
            publish.PublishRequest(
                topic="py.secure",
                records=publish.Records(records=[common.Record(value=b"over tls")]),
            ),
            timeout=10,
        )
        listed = [t.name for t in stub.ListTopics(topics.ListTopicsRequest(), timeout=10).topics]
        if listed != ["py.secure"]:
            failures.append(f"ListTopics: {listed}")
        try:
            stub.CreateTopic(topics.CreateTopicRequest(name="elsewhere", partitions=1), timeout=10)
            failures.append("CreateTopic outside the ACL succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.PERMISSION_DENIED or "create on topic" not in e.details():
                failures.append(f"outside the ACL: {e.code()} {e.details()}")
        channel.close()

        tls_only = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca))
        try:
            pb["herald_pb2_grpc"].HeraldStub(tls_only).ListTopics(topics.ListTopicsRequest(), timeout=10)
            failures.append("ListTopics without a token succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAUTHENTICATED:
                failures.append(f"without a token: {e.code()} {e.details()}")
        tls_only.close()

    if failures:
        print("herald_secure: FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"herald_secure: OK: {address}: TLS and token; published at {reply}".replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
