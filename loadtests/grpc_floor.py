"""The floor of grpc.aio on this machine: a servicer whose ModelInfer does no work at all.

Measures server CPU per request for a do-nothing ``inference.GRPCInferenceService`` (the
generated classes tritonclient ships) under the client and load of
``loadtests/grpc_vs_http.py`` (tritonclient.grpc.aio, 64 concurrent, one 1x8x8 FP32 image),
on uvloop and on the standard asyncio loop. What deepserve's gRPC path costs above this
is deepserve's; below it no Python-side change can go.

    .venv/bin/python -m loadtests.grpc_floor
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import numpy as np

from loadtests.grpc_vs_http import _throughput
from loadtests.procs import free_port, tree_cpu_s

REQUESTS, CONCURRENCY = 4000, 64


def serve(port: int, use_uvloop: bool) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    class Nothing(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            output = response.outputs.add(name="logits", datatype="FP32")
            output.shape.extend([1, 10])
            response.raw_output_contents.append(bytes(40))
            return response

    async def main() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Nothing(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


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


def main() -> None:
    print(f"do-nothing grpc.aio servicer, {CONCURRENCY} clients, {os.cpu_count()} cores, client on the same cores")
    for use_uvloop in (True, False):
        port = free_port()
        server = multiprocessing.Process(target=serve, args=(port, use_uvloop), daemon=True)
        server.start()
        time.sleep(2)
        before = tree_cpu_s(server.pid)
        rps = asyncio.run(load(port))
        cpu_ms = (tree_cpu_s(server.pid) - before) * 1e3 / (REQUESTS + CONCURRENCY)
        print(f"  {'uvloop' if use_uvloop else 'asyncio'}: {rps:.0f} req/s, server CPU {cpu_ms:.3f} ms per request")
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
