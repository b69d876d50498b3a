#!/usr/bin/env python3
"""An OTLP ProfilesService (profiles/v1development) gRPC receiver built from
the official opentelemetry-proto stubs and grpcio, for smolder's tests.

usage: otlp_receiver.py --out DIR [--port N] [--fail-first N]

Listens on 127.0.0.1 only. Prints one JSON line {"port": N} once listening,
then one JSON line per Export call: {"seq", "status", "resources",
"samples", "bytes", "metadata"}. Each accepted request is written as
DIR/request-<seq>.bin (a serialized ExportProfilesServiceRequest) for
otlp_check.py. The first N calls (--fail-first) are refused with
UNAVAILABLE. Runs until killed (SIGTERM or SIGINT stop it cleanly).
"""
import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)


class Receiver(profiles_service_pb2_grpc.ProfilesServiceServicer):
    def __init__(self, out, fail_first):
        self.out = out
        self.fail_first = fail_first
        self.calls = 0
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            seq = self.calls
            self.calls += 1
        refuse = seq < self.fail_first
        samples = sum(
            len(p.samples)
            for rp in request.resource_profiles
            for sp in rp.scope_profiles
            for p in sp.profiles
        )
        line = {
            "seq": seq,
            "status": "UNAVAILABLE" if refuse else "OK",
            "resources": len(request.resource_profiles),
            "samples": samples,
            "bytes": request.ByteSize(),
            "metadata": {k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
        }
        if not refuse:
            path = os.path.join(self.out, f"request-{seq:05d}.bin")
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(request.SerializeToString())
            os.rename(tmp, path)
        print(json.dumps(line, sort_keys=True), flush=True)
        if refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver warming up (test)")
        return profiles_service_pb2.ExportProfilesServiceResponse()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fail-first", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
        Receiver(args.out, args.fail_first), server
    )
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(json.dumps({"port": port}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
