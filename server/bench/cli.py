"""``deepserve bench``: a perf_analyzer-style sweep (see docs/bench.md).

    deepserve bench -m simple --concurrency 1,2,4,8 --duration 5
    deepserve bench -m simple -i grpc --request-rate 100,200,400 --requests 500
    deepserve bench -m textgen --endpoint chat --concurrency 1,4 --max-tokens 32
    deepserve bench --compare runs/a.json runs/b.json -o runs
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

bench_app = typer.Typer(help="Load-test a model: throughput, latency percentiles, the server's queue / compute split.")

ENDPOINTS = ("v2", "chat", "completions", "classify", "transcribe")


def _fail(message: str) -> None:
    raise typer.BadParameter(message)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _metadata_http(url: str, model: str, version: str, headers: dict[str, str], timeout_s: float) -> dict:
    import httpx

    from server.bench.load import base_url

    path = f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"
    try:
        response = httpx.get(base_url(url) + path, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code != 200:
        _fail(f"GET {path}: HTTP {response.status_code} {response.text[:200]}")
    return response.json()


def _metadata_grpc(url: str, model: str, version: str, headers: dict[str, str], timeout_s: float) -> dict:
    import grpc
    from google.protobuf.json_format import MessageToDict
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(url.split("://", 1)[-1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            response = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model, version=version), timeout=timeout_s,
                                          metadata=tuple(headers.items()) or None)
        except grpc.RpcError as exc:
            _fail(f"ModelMetadata({model}) at {url}: {exc.code().name} {exc.details()}")
    meta = MessageToDict(response, preserving_proto_field_name=True)
    for spec in meta.get("inputs", []):
        spec["shape"] = [int(d) for d in spec.get("shape", [])]
    return meta


def _levels(concurrency: str | None, request_rate: str | None):
    from server.bench.load import Level, parse_levels

    if concurrency and request_rate:
        _fail("give --concurrency or --request-rate, not both")
    try:
        if request_rate:
            return [Level("rate", v) for v in parse_levels(request_rate, integer=False)]
        return [Level("concurrency", v) for v in parse_levels(concurrency or "1")]
    except ValueError as exc:
        _fail(str(exc))


def _progress_factory(enabled: bool, levels, duration_s: float, requests: int | None):
    """A rich progress bar (rich comes with typer) on stderr: one bar per level."""
    if not enabled:
        return None, None
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:  # typer-slim installs: no bar
        return None, None

    bar = Progress(TextColumn("{task.description:>18}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=False)

    def for_level(level):
        task = bar.add_task(level.label, total=1.0, info="")

        def update(fraction: float, ok: int, errors: int) -> None:
            bar.update(task, completed=fraction, info=f"{ok} ok, {errors} errors")

        return update

    return bar, for_level


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "bench"


@bench_app.callback(invoke_without_command=True)
def bench(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name (v2 and chat / completions; for classify / transcribe: the model to ask for, and whose statistics to read).")] = None,
    url: Annotated[Optional[str], typer.Option("--url", "-u", help="Server address (default 127.0.0.1:8000 for HTTP, 127.0.0.1:8001 for gRPC).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", "-i", help="http or grpc (v2 endpoint only).")] = "http",
    tensors: Annotated[str, typer.Option("--tensors", help="HTTP tensor encoding: binary or json.")] = "binary",
    endpoint: Annotated[str, typer.Option("--endpoint", help="v2, chat, completions, classify or transcribe.")] = "v2",
    model_version: Annotated[str, typer.Option("--model-version", "-x", help="Model version (default: the server's choice).")] = "",
    concurrency: Annotated[Optional[str], typer.Option("--concurrency", "-c", help="Closed-loop levels: 1,2,4,8 or start:end[:step] (default 1).")] = None,
    request_rate: Annotated[Optional[str], typer.Option("--request-rate", "-r", help="Open-loop levels in requests/s, Poisson arrivals: 50,100,200 or start:end[:step].")] = None,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Measured seconds per level.")] = 5.0,
    requests: Annotated[Optional[int], typer.Option("--requests", "-n", help="Measure this many answers per level instead of --duration.")] = None,
    warmup: Annotated[float, typer.Option("--warmup", "-w", help="Seconds of load before each level's window (not counted).")] = 1.0,
    shape: Annotated[Optional[list[str]], typer.Option("--shape", help="NAME:d1,d2,... for an input with -1 dimensions (repeatable; others become 1).")] = None,
    input_data: Annotated[Optional[Path], typer.Option("--input-data", help="perf_analyzer-style JSON ({\"data\": [...]}) or .npz (one array per input).")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Image file for --endpoint classify.")] = None,
    audio: Annotated[Optional[Path], typer.Option("--audio", help="Audio file for --endpoint transcribe.")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt for chat / completions.")] = "Write a short story about a robot.",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="max_tokens for chat / completions.")] = 32,
    max_inflight: Annotated[int, typer.Option("--max-inflight", help="Open loop: most requests outstanding (more count as errors).")] = 1000,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 60.0,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="DEEPSERVE_API_KEY", help="Sent as 'Authorization: Bearer KEY'.")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where NAME.json, NAME.csv and the PNGs go.")] = Path("bench_results"),
    name: Annotated[Optional[str], typer.Option("--name", help="Run label and file name (default MODEL_ENDPOINT_PROTOCOL).")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw PNG plots (matplotlib).")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")] = True,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option("--compare", help="Plot two earlier runs' JSON together (no load is sent).")] = None,
) -> None:
    """Sweep load levels against one model; print a table, write JSON, CSV and PNG plots."""
    from server.bench import report

    if compare:
        try:
            text, paths = report.compare(list(compare), output_dir, name or "compare")
        except ImportError:
            _fail("--compare draws with matplotlib, which is not installed (pip install 'deepserve[bench]')")
        except (OSError, ValueError) as exc:
            _fail(str(exc))
        typer.echo(text)
        for p in paths:
            typer.echo(f"wrote {p}")
        return

    if endpoint not in ENDPOINTS:
        _fail(f"--endpoint must be one of {', '.join(ENDPOINTS)}")
    if protocol not in ("http", "grpc"):
        _fail("--protocol must be http or grpc")
    if tensors not in ("binary", "json"):
        _fail("--tensors must be binary or json")
    if protocol == "grpc" and endpoint != "v2":
        _fail("--protocol grpc drives the v2 endpoint only")
    if duration <= 0 or warmup < 0 or (requests is not None and requests <= 0):
        _fail("--duration and --requests must be > 0, --warmup >= 0")
    if endpoint in ("v2", "chat", "completions") and not model:
        _fail(f"--endpoint {endpoint} needs --model")
    levels = _levels(concurrency, request_rate)
    url = url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000")
    headers = _headers(api_key)
    target, info = _target(endpoint, protocol, tensors, url, model or "", model_version, shape or [], input_data,
                           image, audio, prompt, max_tokens, headers, timeout)

    from server.bench.load import sweep

    bar, for_level = _progress_factory(progress, levels, duration, requests)
    if bar is not None:
        bar.start()
    try:
        rows = asyncio.run(sweep(target, levels, duration, requests, warmup, max_inflight, progress=for_level))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if bar is not None:
            bar.stop()

    label = name or _slug(f"{model or endpoint}_{endpoint}_{protocol if endpoint == 'v2' else 'http'}"
                          + (f"_{tensors}" if endpoint == "v2" and protocol == "http" else ""))
    meta = {"name": label, "model": model, "model_version": model_version, "endpoint": endpoint, "protocol": protocol,
            "tensors": tensors if endpoint == "v2" and protocol == "http" else None, "url": url,
            "mode": levels[0].mode, "duration_s": duration, "requests_per_level": requests, "warmup_s": warmup,
            **info}
    typer.echo(f"{label}: {endpoint} at {url}" + (f", inputs {info['inputs']}" if info.get("inputs") else ""))
    typer.echo(report.table(rows))
    paths = report.write_all(meta, rows, output_dir, _slug(label), plots=False)
    if plots and rows:
        try:
            paths += report.plot([{"meta": meta, "levels": rows}], output_dir, _slug(label))
        except ImportError:
            typer.echo("no plots: matplotlib is not installed (pip install 'deepserve[bench]')", err=True)
    for p in paths:
        typer.echo(f"wrote {p}")
    if any(r["errors"] for r in rows):
        errors: dict[str, int] = {}
        for r in rows:
            for k, v in r["errors_by_status"].items():
                errors[k] = errors.get(k, 0) + v
        typer.echo(f"errors: {json.dumps(errors)}", err=True)


def _target(endpoint, protocol, tensors, url, model, version, shape, input_data, image, audio, prompt, max_tokens,
            headers, timeout_s) -> tuple[Any, dict]:
    from server.bench import inputs as inp
    from server.bench import load

    if endpoint in ("chat", "completions"):
        return load.Stream(url, model, endpoint == "chat", prompt, max_tokens, headers=headers, timeout_s=timeout_s), {
            "max_tokens": max_tokens}
    if endpoint in ("classify", "transcribe"):
        file = image if endpoint == "classify" else audio
        if file is None or not file.is_file():
            _fail(f"--endpoint {endpoint} needs {'--image' if endpoint == 'classify' else '--audio'} FILE")
        path = "/v1/classify" if endpoint == "classify" else "/v1/audio/transcriptions"
        fields = {"model": model} if model else {}
        return load.Upload(url, path, file, fields, stats_model=model, headers=headers, timeout_s=timeout_s), {
            "file": str(file)}

    fetch = _metadata_grpc if protocol == "grpc" else _metadata_http
    metadata = fetch(url, model, version, headers, timeout_s)
    try:
        overrides = inp.parse_shapes(shape)
        if input_data is not None:
            batches = inp.load_input_data(input_data, metadata, overrides)
        else:
            batches = [inp.synthesize(metadata, overrides)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(str(exc))
    described = {t.name: f"{t.datatype}{t.shape}" for t in batches[0]}
    if protocol == "grpc":
        target = load.GrpcV2(url, model, [inp.grpc_request(model, version, b) for b in batches], version,
                             headers=headers, timeout_s=timeout_s)
    else:
        bodies = [inp.http_body(b, tensors == "binary", metadata.get("outputs", [])) for b in batches]
        target = load.HttpV2(url, model, bodies, version, headers=headers, timeout_s=timeout_s)
    return target, {"inputs": described, "input_sets": len(batches)}


def main() -> None:  # python -m server.bench.cli
    bench_app(sys.argv[1:])


if __name__ == "__main__":
    main()
