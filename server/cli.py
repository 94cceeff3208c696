"""The ``deepserve`` command: serve, models, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from server.bench.cli import bench_app
from server.settings import DEFAULT_REPOSITORY, Settings

app = typer.Typer(help="deepserve: a model-serving inference server.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """deepserve: a model-serving inference server."""


app.add_typer(bench_app, name="bench", help="Load-test a model (perf_analyzer-style sweep): throughput, latency percentiles, queue / compute split.")


def _opt(help_text: str, env: str):
    return typer.Option(help=f"{help_text} (env: DEEPSERVE_{env})", show_default=False)


@app.command()
def serve(
    model_repository: Annotated[Optional[Path], _opt("Model repository folder (default: ./model_repository, built if missing).", "MODEL_REPOSITORY")] = None,
    host: Annotated[Optional[str], _opt("Bind address (default 0.0.0.0).", "HOST")] = None,
    http_port: Annotated[Optional[int], _opt("HTTP port (default 8000).", "HTTP_PORT")] = None,
    grpc_port: Annotated[Optional[int], _opt("gRPC port (default 8001).", "GRPC_PORT")] = None,
    metrics_port: Annotated[Optional[int], _opt("Also serve /metrics on this port (off by default).", "METRICS_PORT")] = None,
    grpc: Annotated[Optional[bool], typer.Option("--grpc/--no-grpc", help="Serve gRPC too (default on). (env: DEEPSERVE_GRPC_ENABLED)", show_default=False)] = None,
    max_request_bytes: Annotated[Optional[int], _opt("Largest request body in bytes (default 64 MiB).", "MAX_REQUEST_BYTES")] = None,
    grpc_max_message_bytes: Annotated[Optional[int], _opt("Largest gRPC message in bytes (default: --max-request-bytes).", "GRPC_MAX_MESSAGE_BYTES")] = None,
    strict_readiness: Annotated[Optional[bool], typer.Option("--strict-readiness/--no-strict-readiness", help="Ready only when every model is ready (default on). (env: DEEPSERVE_STRICT_READINESS)", show_default=False)] = None,
    default_max_batch_size: Annotated[Optional[int], _opt("max_batch_size for config-less ONNX models (default 4).", "DEFAULT_MAX_BATCH_SIZE")] = None,
    default_max_queue_size: Annotated[Optional[int], _opt("Queue bound where a config sets none (default 1024).", "DEFAULT_MAX_QUEUE_SIZE")] = None,
    max_inflight: Annotated[Optional[int], _opt("Inference requests in flight server-wide, 0 = no limit (default 4096).", "MAX_INFLIGHT")] = None,
    drain_seconds: Annotated[Optional[float], _opt("After SIGTERM, seconds new requests get 503 while load balancers move away (default 5; 0 = none).", "DRAIN_SECONDS")] = None,
    drain_timeout_seconds: Annotated[Optional[float], _opt("After SIGTERM, most seconds (drain period included) requests in flight get to finish; the rest get 503 (default 30).", "DRAIN_TIMEOUT_SECONDS")] = None,
    cpu_threads: Annotated[Optional[int], _opt("Cores the runtimes share (default all).", "CPU_THREADS")] = None,
    memory_budget_bytes: Annotated[Optional[int], _opt("Host memory budget for models in bytes; loading over it unloads the least recently used idle load-on-demand model (default 0 = none).", "MEMORY_BUDGET_BYTES")] = None,
    on_demand_load_timeout_seconds: Annotated[Optional[float], _opt("Most seconds a request waits for a load-on-demand model to load, then 503 (default 60).", "ON_DEMAND_LOAD_TIMEOUT_SECONDS")] = None,
    log_level: Annotated[Optional[str], _opt("debug, info, warning, error (default info).", "LOG_LEVEL")] = None,
    log_format: Annotated[Optional[str], _opt("text or json: one JSON object a line, plus a line per request (default text).", "LOG_FORMAT")] = None,
    api_key: Annotated[Optional[str], _opt("Require 'Authorization: Bearer KEY' on inference, metadata and /v1 routes (default off; health and /metrics stay open).", "API_KEY")] = None,
    api_key_file: Annotated[Optional[Path], _opt("File of inference keys, one a line (a mounted secret).", "API_KEY_FILE")] = None,
    admin_key: Annotated[Optional[str], _opt("Key for repository load / unload / index (also valid for inference; default: the API key).", "ADMIN_KEY")] = None,
    admin_key_file: Annotated[Optional[Path], _opt("File of admin keys, one a line.", "ADMIN_KEY_FILE")] = None,
    cors_origins: Annotated[Optional[str], _opt("Comma-separated origins allowed by CORS, or '*' (default off).", "CORS_ORIGINS")] = None,
    frontend_processes: Annotated[Optional[int], _opt("Frontend processes sharing the HTTP and gRPC ports, handing tensors to the model process over shared memory (default 0 = both in the model process).", "FRONTEND_PROCESSES")] = None,
) -> None:
    """Serve a model repository over HTTP (v2, /metrics) and gRPC."""
    given = {
        "model_repository": model_repository, "host": host, "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "grpc_enabled": grpc, "max_request_bytes": max_request_bytes,
        "grpc_max_message_bytes": grpc_max_message_bytes, "strict_readiness": strict_readiness,
        "default_max_batch_size": default_max_batch_size, "default_max_queue_size": default_max_queue_size,
        "max_inflight": max_inflight,
        "drain_seconds": drain_seconds, "drain_timeout_seconds": drain_timeout_seconds,
        "cpu_threads": cpu_threads, "memory_budget_bytes": memory_budget_bytes,
        "on_demand_load_timeout_seconds": on_demand_load_timeout_seconds, "log_level": log_level, "log_format": log_format,
        "api_key": api_key, "api_key_file": api_key_file, "admin_key": admin_key, "admin_key_file": admin_key_file,
        "cors_origins": cors_origins, "frontend_processes": frontend_processes,
    }
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
        settings.api_keys(), settings.admin_keys()  # an unreadable key file stops here, not after loading
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if settings.model_repository == DEFAULT_REPOSITORY and settings.build_default_repository:
        _ensure_default_repository(settings.model_repository)
    from server.serve import run

    run(settings)


def _ensure_default_repository(path: Path) -> None:
    if path.is_dir() and any(path.iterdir()):
        return
    try:
        from export.default_repository import build_default_repository
    except ImportError as exc:
        raise typer.BadParameter(
            f"{path} does not exist and cannot be built here ({exc}); install the export extra "
            "(pip install -e '.[export]') or pass --model-repository"
        ) from None
    typer.echo(f"building the default model repository in {path} ...")
    build_default_repository(path)


def _mount_optional() -> None:
    """`deepserve export ...` and `deepserve models ...` come from the export package
    (torch and friends), which a serving-only install does not have."""
    try:
        from export.cli import app as export_app
        from export.cli import models_app
    except ImportError:
        return
    app.add_typer(export_app, name="export", help="Export torch models to ONNX / TensorRT, quantize, prune.")
    app.add_typer(models_app, name="models", help="Build the default and benchmark model repositories.")


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
