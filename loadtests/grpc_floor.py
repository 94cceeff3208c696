"""The floor of Python gRPC on this machine: servicers whose ModelInfer does no work at all.

Measures server CPU per request for a do-nothing ``inference.GRPCInferenceService`` (the
generated classes tritonclient ships) under the client and load of
``loadtests/grpc_vs_http.py`` (tritonclient.grpc.aio, 64 concurrent, one 1x8x8 FP32 image),
for the ways a Python server can take the call:

* ``aio+interceptor``: grpc.aio with a ``grpc.aio.ServerInterceptor`` that wraps every call
  (what deepserve did before: keys, request ids, access lines ran in one);
* ``aio``: grpc.aio with the same per-call work done in the handler itself (what deepserve
  does now: the handlers are wrapped once, at registration);
* ``sync+bridge``: a synchronous ``grpc.server`` with a thread pool whose handler hands the
  call to an asyncio loop in another thread and waits (``run_coroutine_threadsafe``), as a
  sync gRPC front end over deepserve's async service would have to.

What deepserve's gRPC path costs above the floor is deepserve's own; below it no
Python-side change can go. Variants alternate round by round; medians are printed.

    .venv/bin/python -m loadtests.grpc_floor [--rounds 3] [--json loadtests/results/grpc-floor-<date>.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import threading
import time
from concurrent import futures

import numpy as np

from loadtests.grpc_vs_http import _throughput
from loadtests.procs import free_port, tree_cpu_s

REQUESTS, CONCURRENCY = 4000, 64
VARIANTS = ("aio+interceptor", "aio", "sync+bridge")


def _response(pb, request):
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    output = response.outputs.add(name="logits", datatype="FP32")
    output.shape.extend([1, 10])
    response.raw_output_contents.append(bytes(40))
    return response


def _per_call_work(context) -> None:
    """What deepserve does for every call besides the inference: read metadata, set trailing metadata."""
    dict(context.invocation_metadata() or ())
    context.set_trailing_metadata((("x-request-id", "0" * 32),))


def serve(port: int, variant: str) -> None:
    import grpc
    import uvloop
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    if variant == "sync+bridge":
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def answer(request):
            return _response(pb, request)

        class Bridged(service_pb2_grpc.GRPCInferenceServiceServicer):
            def ModelInfer(self, request, context):
                _per_call_work(context)
                return asyncio.run_coroutine_threadsafe(answer(request), loop).result()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 0)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Bridged(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    class Nothing(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            if variant == "aio":
                _per_call_work(context)
            return _response(pb, request)

    class Interceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            inner = handler.unary_unary

            async def wrapped(request, context):
                _per_call_work(context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(wrapped, handler.request_deserializer, handler.response_serializer)

    async def main() -> None:
        interceptors = (Interceptor(),) if variant == "aio+interceptor" else ()
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Nothing(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


async def load(port: int) -> float:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    try:
        return await _throughput(lambda: client.infer("digits", [tensor]), REQUESTS, CONCURRENCY)
    finally:
        await client.close()


def measure(variant: str) -> tuple[float, float]:
    port = free_port()
    server = multiprocessing.Process(target=serve, args=(port, variant), daemon=True)
    server.start()
    time.sleep(2)
    try:
        before = tree_cpu_s(server.pid)
        rps = asyncio.run(load(port))
        return rps, (tree_cpu_s(server.pid) - before) * 1e3 / (REQUESTS + CONCURRENCY)
    finally:
        server.terminate()
        server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args()
    print(f"do-nothing servicers, {CONCURRENCY} clients, {os.cpu_count()} cores, client on the same cores")
    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs[variant].append(measure(variant))
    medians = {v: {"req_s": statistics.median(r for r, _ in rs), "server_cpu_ms_per_request": statistics.median(c for _, c in rs),
                   "rounds": [{"req_s": r, "server_cpu_ms_per_request": c} for r, c in rs]} for v, rs in runs.items()}
    for variant, m in medians.items():
        print(f"  {variant}: {m['req_s']:.0f} req/s, server CPU {m['server_cpu_ms_per_request']:.3f} ms per request")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                       "requests": REQUESTS, "concurrency": CONCURRENCY, "variants": medians}, f, indent=1)


if __name__ == "__main__":
    main()
