#!/usr/bin/env python3
"""Smoke test of Herald's gRPC API from Python, with no Herald SDK.

Generates Python stubs from proto/proto/herald/v1/*.proto at run time with grpc_tools.protoc,
then, against the broker at the address given as argv[1] (host:port):
  - creates a topic with 3 partitions;
  - publishes keyed and keyless records in the plain `records` form, with headers, and checks
    each reply: a keyed request lands on xxh64(first key, seed=0) % 3, keyless requests go
    round-robin, an explicit partition wins, offsets are dense per partition;
  - fetches every partition back with Fetch (decoded records) and compares offsets, keys
    (including "no key" versus an empty key), values, headers and timestamps;
  - checks the statuses of a missing topic (NOT_FOUND) and a few other errors;
  - describes the topic and checks its end offsets.

Prints one summary line and exits 0 on success; exits 1 listing every mismatch otherwise,
2 on bad usage and 3 when a Python package is missing (install tests/python/requirements.txt,
which ./scripts/test does).

Usage: python3 tests/python/herald_smoke.py 127.0.0.1:PORT
"""

import importlib
import importlib.resources
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3

try:
    import grpc
    import xxhash
    from grpc_tools import protoc
except ImportError as e:
    print(
        f"herald_smoke: missing Python package: {e}. Install tests/python/requirements.txt "
        "(run ./scripts/test, which does it: "
        "python3 -m pip install -r tests/python/requirements.txt).",
        file=sys.stderr,
    )
    sys.exit(EXIT_MISSING_DEPENDENCY)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto" / "proto"
PARTITIONS = 3
# Unique per run, so the script can also be pointed at a long-lived broker more than once.
TOPIC = f"py-smoke.{int(time.time())}-{os.getpid()}"
RPC_TIMEOUT_S = 10


class Fatal(Exception):
    """A failure after which the remaining checks make no sense."""


def generate_stubs(out_dir: Path):
    """Runs protoc on every herald/v1 file into out_dir and imports the modules.

    The files import each other as "herald/v1/x.proto", so protoc writes herald/v1/x_pb2.py
    and the generated code does `from herald.v1 import x_pb2`: out_dir must be on sys.path
    and herald/, herald/v1/ must be packages.
    """
    protos = sorted(PROTO_ROOT.glob("herald/v1/*.proto"))
    if not protos:
        raise Fatal(f"no .proto files under {PROTO_ROOT / 'herald' / 'v1'}")
    # The google/protobuf/*.proto files bundled with grpcio-tools, in case a file uses them.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise Fatal(f"protoc failed on {[p.name for p in protos]}")
    for package in (out_dir / "herald", out_dir / "herald" / "v1"):
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    names = ["common_pb2", "topics_pb2", "publish_pb2", "fetch_pb2", "herald_pb2_grpc"]
    return {n: importlib.import_module(f"herald.v1.{n}") for n in names}


def xxh64_partition(key: bytes, partitions: int) -> int:
    """The documented rule: xxh64(key, seed=0), unsigned 64-bit, modulo the partition count."""
    return xxhash.xxh64_intdigest(key, seed=0) % partitions


class Smoke:
    def __init__(self, address: str, pb):
        self.pb = pb
        self.common = pb["common_pb2"]
        self.topics = pb["topics_pb2"]
        self.publish_pb = pb["publish_pb2"]
        self.fetch_pb = pb["fetch_pb2"]
        # 127.0.0.1 must not go through an http_proxy the environment may set.
        self.channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        try:
            grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise Fatal(f"could not connect to {address} within {RPC_TIMEOUT_S} s") from None
        self.stub = pb["herald_pb2_grpc"].HeraldStub(self.channel)
        self.failures: list[str] = []
        # Per partition, the records expected at offsets 0, 1, 2...: (key, value, headers, ts).
        self.expected: list[list[tuple]] = [[] for _ in range(PARTITIONS)]
        self.requests = 0
        self.keyed_requests = 0
        self.statuses_checked = 0

    # -- helpers ---------------------------------------------------------------------------

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return ok

    def check_eq(self, actual, expected, what: str) -> bool:
        return self.check(actual == expected, f"{what}: got {actual!r}, expected {expected!r}")

    def record(self, key, value: bytes, headers=(), timestamp_ms: int = 0):
        r = self.common.Record(value=value, timestamp_ms=timestamp_ms)
        if key is not None:
            r.key = key  # sets presence; an empty bytes key is still a key
        for name, hvalue in headers:
            r.headers.add(key=name, value=hvalue)
        return r

    def expect_status(self, code, what: str, call):
        """Runs call(), which must fail with gRPC status `code`."""
        self.statuses_checked += 1
        try:
            result = call()
        except grpc.RpcError as e:
            self.check_eq(e.code(), code, f"{what}: status")
            return
        self.failures.append(f"{what}: expected status {code.name}, got success: {result!r}")

    # -- the scenario ----------------------------------------------------------------------

    def create_topic(self):
        reply = self.stub.CreateTopic(
            self.topics.CreateTopicRequest(name=TOPIC, partitions=PARTITIONS),
            timeout=RPC_TIMEOUT_S,
        )
        self.check_eq(reply.topic.name, TOPIC, "CreateTopic: name")
        self.check_eq(reply.topic.partition_count, PARTITIONS, "CreateTopic: partition_count")
        self.check_eq(
            [(p.partition, p.start_offset, p.end_offset) for p in reply.topic.partitions],
            [(i, 0, 0) for i in range(PARTITIONS)],
            "CreateTopic: partitions (id, start, end)",
        )
        self.expect_status(
            grpc.StatusCode.ALREADY_EXISTS,
            "CreateTopic of an existing topic",
            lambda: self.stub.CreateTopic(
                self.topics.CreateTopicRequest(name=TOPIC, partitions=PARTITIONS),
                timeout=RPC_TIMEOUT_S,
            ),
        )

    def publish(self, records: list, partition=None) -> int:
        """Publishes one request; checks the reply's offsets; returns the partition."""
        request = self.publish_pb.PublishRequest(topic=TOPIC)
        if partition is not None:
            request.partition = partition
        request.records.records.extend(records)
        reply = self.stub.Publish(request, timeout=RPC_TIMEOUT_S)
        self.requests += 1
        p = reply.partition
        if not self.check(p < PARTITIONS, f"Publish: reply partition {p} out of range"):
            raise Fatal("cannot track offsets any further")
        base = len(self.expected[p])
        self.check_eq(
            (reply.base_offset, reply.last_offset),
            (base, base + len(records) - 1),
            f"Publish of {len(records)} record(s) to partition {p}: (base_offset, last_offset)",
        )
        for r in records:
            key = r.key if r.HasField("key") else None
            headers = [(h.key, h.value) for h in r.headers]
            self.expected[p].append((key, r.value, headers, r.timestamp_ms))
        return p

    def publish_keyed(self):
        keys = [f"customer-{i}".encode() for i in range(12)]
        keys += [b"", bytes(range(256)), "clé-ключ-鍵".encode(), b"\x00"]
        for i, key in enumerate(keys):
            headers = [
                ("trace-id", f"trace-{i}".encode()),
                ("dup", b"first"),
                ("dup", b"second"),  # a name may repeat; order is kept
                ("empty", b""),
                ("binary", bytes([0, 255, i % 256])),
            ]
            value = f"keyed value {i}".encode() * (i + 1)
            p = self.publish([self.record(key, value, headers)])
            self.keyed_requests += 1
            self.check_eq(p, xxh64_partition(key, PARTITIONS), f"Publish with key {key!r}: partition")

        # A batch: only the FIRST record's key picks the partition. Mixed keys, a keyless
        # record, a publisher timestamp and an empty value ride along.
        first = b"order-42"
        batch = [
            self.record(first, b"created", [("step", b"1")], timestamp_ms=1_700_000_000_123),
            self.record(b"another-key", b"paid", [("step", b"2")]),
            self.record(None, b"", [("step", b"3")]),
            self.record(first, b"shipped", []),
        ]
        p = self.publish(batch)
        self.keyed_requests += 1
        self.check_eq(p, xxh64_partition(first, PARTITIONS), "Publish of a keyed batch: partition")

    def publish_keyless(self):
        partitions = []
        for i in range(2 * PARTITIONS):
            records = [self.record(None, f"keyless {i}.{j}".encode(), [("n", str(j).encode())])
                       for j in range(i % 3 + 1)]
            if i == 1:
                # The first record has no key, so a key further on plays no part.
                records.append(self.record(b"ignored-key", b"keyed but not first"))
            partitions.append(self.publish(records))
        successive = all(b == (a + 1) % PARTITIONS for a, b in zip(partitions, partitions[1:]))
        self.check(successive, f"keyless publishes should go round-robin, went to {partitions}")

    def publish_explicit(self):
        # A key that hashes elsewhere: the explicit partition wins.
        key = next(k for k in (f"pinned-{i}".encode() for i in range(100))
                   if xxh64_partition(k, PARTITIONS) != 1)
        p = self.publish([self.record(key, b"pinned to 1", [("pinned", b"yes")])], partition=1)
        self.check_eq(p, 1, "Publish with partition=1: reply partition")

    def fetch(self, partition: int, start=None, max_bytes: int = 0):
        """Fetches a partition (no follow); returns the responses."""
        request = self.fetch_pb.FetchRequest(topic=TOPIC, partition=partition, max_bytes=max_bytes)
        if start is not None:
            request.start.offset = start
        return list(self.stub.Fetch(request, timeout=RPC_TIMEOUT_S))

    def compare(self, partition: int, fetched, first_offset: int, what: str, before_ms: int):
        expected = self.expected[partition][first_offset:]
        self.check_eq(len(fetched), len(expected), f"{what}: record count")
        now_ms = int(time.time() * 1000)
        for offset, (got, want) in enumerate(zip(fetched, expected), start=first_offset):
            where = f"{what}, offset {offset}"
            key, value, headers, ts = want
            self.check_eq(got.offset, offset, f"{where}: offset")
            got_key = got.key if got.HasField("key") else None
            self.check_eq(got_key, key, f"{where}: key")
            self.check_eq(got.value, value, f"{where}: value")
            self.check_eq([(h.key, h.value) for h in got.headers], headers, f"{where}: headers")
            if ts:
                self.check_eq(got.timestamp_ms, ts, f"{where}: publisher timestamp")
            else:
                self.check(
                    before_ms - 60_000 <= got.timestamp_ms <= now_ms + 60_000,
                    f"{where}: broker-assigned timestamp {got.timestamp_ms} is not about now "
                    f"({now_ms})",
                )

    def fetch_all(self, started_ms: int):
        fetched_total = 0
        for p in range(PARTITIONS):
            end = len(self.expected[p])
            # Start unset means Earliest; default max_bytes.
            responses = self.fetch(p)
            records = [r for resp in responses for r in resp.records]
            fetched_total += len(records)
            self.compare(p, records, 0, f"Fetch partition {p}", started_ms)
            self.check(len(responses) >= 1, f"Fetch partition {p}: no response at all")
            for resp in responses:
                self.check_eq(resp.high_watermark, end, f"Fetch partition {p}: high_watermark")
                self.check_eq(resp.log_start_offset, 0, f"Fetch partition {p}: log_start_offset")
                self.check_eq(len(resp.batches), 0, f"Fetch partition {p}: raw batches")
            if responses:
                self.check_eq(responses[-1].next_offset, end, f"Fetch partition {p}: last next_offset")

            # A tiny max_bytes: at least one whole record per response, and each response
            # continues where the previous one's next_offset said.
            mid = end // 2
            responses = self.fetch(p, start=mid, max_bytes=1)
            at = mid
            for resp in responses:
                if resp.records:
                    self.check_eq(resp.records[0].offset, at,
                                  f"Fetch partition {p} from {mid}, max_bytes=1: first offset")
                    at = resp.records[-1].offset + 1
                self.check_eq(resp.next_offset, at,
                              f"Fetch partition {p} from {mid}, max_bytes=1: next_offset")
            records = [r for resp in responses for r in resp.records]
            self.compare(p, records, mid, f"Fetch partition {p} from {mid}, max_bytes=1", started_ms)
            if end - mid > 1:
                self.check(len(responses) > 1,
                           f"Fetch partition {p} with max_bytes=1 came in one response of "
                           f"{len(records)} records")

            # At the end offset: one empty response that still reports the watermark.
            responses = self.fetch(p, start=end)
            self.check_eq([(len(r.records), r.high_watermark, r.next_offset) for r in responses],
                          [(0, end, end)], f"Fetch partition {p} at its end offset")
        return fetched_total

    def error_statuses(self):
        missing = "py-smoke.no-such-topic"
        not_found = grpc.StatusCode.NOT_FOUND
        self.expect_status(not_found, "DescribeTopic of a missing topic", lambda: self.stub.DescribeTopic(
            self.topics.DescribeTopicRequest(name=missing), timeout=RPC_TIMEOUT_S))
        self.expect_status(not_found, "Publish to a missing topic", lambda: self.stub.Publish(
            self.publish_pb.PublishRequest(
                topic=missing,
                records=self.publish_pb.Records(records=[self.record(b"k", b"v")])),
            timeout=RPC_TIMEOUT_S))
        self.expect_status(not_found, "Fetch of a missing topic", lambda: list(self.stub.Fetch(
            self.fetch_pb.FetchRequest(topic=missing, partition=0), timeout=RPC_TIMEOUT_S)))
        self.expect_status(not_found, "Fetch of a missing partition", lambda: self.fetch(PARTITIONS))
        self.expect_status(not_found, "Publish to a missing partition", lambda: self.stub.Publish(
            self.publish_pb.PublishRequest(
                topic=TOPIC, partition=PARTITIONS,
                records=self.publish_pb.Records(records=[self.record(None, b"v")])),
            timeout=RPC_TIMEOUT_S))
        end = len(self.expected[0])
        self.expect_status(grpc.StatusCode.OUT_OF_RANGE, "Fetch past the end offset",
                           lambda: self.fetch(0, start=end + 1))
        self.expect_status(grpc.StatusCode.INVALID_ARGUMENT, "Publish of zero records",
                           lambda: self.stub.Publish(
                               self.publish_pb.PublishRequest(topic=TOPIC,
                                                              records=self.publish_pb.Records()),
                               timeout=RPC_TIMEOUT_S))
        self.expect_status(grpc.StatusCode.INVALID_ARGUMENT, "CreateTopic with a bad name",
                           lambda: self.stub.CreateTopic(
                               self.topics.CreateTopicRequest(name="bad/name", partitions=1),
                               timeout=RPC_TIMEOUT_S))

    def describe(self):
        topic = self.stub.DescribeTopic(
            self.topics.DescribeTopicRequest(name=TOPIC), timeout=RPC_TIMEOUT_S).topic
        self.check_eq(topic.name, TOPIC, "DescribeTopic: name")
        self.check_eq(topic.partition_count, PARTITIONS, "DescribeTopic: partition_count")
        self.check_eq(
            [(p.partition, p.start_offset, p.end_offset) for p in topic.partitions],
            [(i, 0, len(self.expected[i])) for i in range(PARTITIONS)],
            "DescribeTopic: partitions (id, start_offset, end_offset)",
        )
        for p in topic.partitions:
            if self.expected[p.partition]:
                self.check(p.size_bytes > 0, f"DescribeTopic: partition {p.partition} size_bytes is 0")
            self.check(p.segment_count >= 1,
                       f"DescribeTopic: partition {p.partition} segment_count is {p.segment_count}")
        # "In replies (DescribeTopic) every field is set to the value in force."
        for field in ("retention_ms", "retention_bytes", "segment_bytes", "fsync_interval_ms",
                      "max_message_bytes"):
            self.check(topic.config.HasField(field), f"DescribeTopic: config.{field} is unset")
        self.check(topic.config.fsync_policy != self.topics.FSYNC_POLICY_UNSPECIFIED,
                   "DescribeTopic: config.fsync_policy is UNSPECIFIED")
        listed = self.stub.ListTopics(self.topics.ListTopicsRequest(), timeout=RPC_TIMEOUT_S)
        self.check(
            any(t.name == TOPIC and t.partition_count == PARTITIONS for t in listed.topics),
            f"ListTopics does not list {TOPIC} with {PARTITIONS} partitions: {list(listed.topics)}",
        )

    def run(self) -> int:
        started_ms = int(time.time() * 1000)
        self.create_topic()
        self.publish_keyed()
        self.publish_keyless()
        self.publish_explicit()
        fetched = self.fetch_all(started_ms)
        self.error_statuses()
        self.describe()
        return fetched


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[1]:
        print("usage: herald_smoke.py HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    address = argv[1]
    started = time.monotonic()
    smoke = None
    error = None
    with tempfile.TemporaryDirectory(prefix="herald-py-stubs-") as out:
        try:
            pb = generate_stubs(Path(out))
            smoke = Smoke(address, pb)
            try:
                fetched = smoke.run()
            finally:
                smoke.channel.close()
        except Fatal as e:
            error = str(e)
        except grpc.RpcError as e:
            error = f"unexpected gRPC status {e.code().name}: {e.details()}"
    elapsed = time.monotonic() - started
    failures = smoke.failures if smoke else []
    if error or failures:
        print(f"herald_smoke: FAILED against {address}: "
              f"{error or f'{len(failures)} mismatch(es)'}", file=sys.stderr)
        if failures:
            print("mismatches:\n" + "\n".join(f"  - {f}" for f in failures), file=sys.stderr)
        return EXIT_MISMATCH
    published = sum(len(e) for e in smoke.expected)
    print(
        f"herald_smoke: OK: {address}: topic {TOPIC!r} with {PARTITIONS} partitions; "
        f"{published} records published in {smoke.requests} requests "
        f"({smoke.keyed_requests} keyed, partitions match xxh64 % {PARTITIONS}); "
        f"{fetched} records fetched back intact "
        f"(per partition {[len(e) for e in smoke.expected]}); "
        f"{smoke.statuses_checked} error statuses checked; end offsets match; "
        f"grpcio {grpc.__version__}; {elapsed:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
