"""Every server-wide knob, from flags, ``DEEPSERVE_*`` environment variables or a .env file.

Precedence: command-line flag > environment variable > .env file > default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REPOSITORY = Path("model_repository")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_", env_file=".env", extra="ignore")

    model_repository: Path = Field(DEFAULT_REPOSITORY, description="Folder of models in Triton's layout.")
    host: str = Field("0.0.0.0", description="Address the HTTP and gRPC servers bind to.")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (v2, task, OpenAI routes, /metrics).")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (inference.GRPCInferenceService).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Also serve /metrics on this port (Triton serves it on 8002)."
    )
    grpc_enabled: bool = Field(True, description="Serve gRPC as well as HTTP.")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body accepted (after decompression); larger gets 413."
    )
    grpc_max_message_bytes: int | None = Field(
        None, gt=0, description="Largest gRPC message received or sent; larger gets RESOURCE_EXHAUSTED (default: max_request_bytes)."
    )
    strict_readiness: bool = Field(
        True, description="Server ready only when every model is ready (Triton's default); false: ready once serving."
    )
    default_max_batch_size: int = Field(
        4, ge=0, description="max_batch_size given to ONNX models without a config whose axes are all dynamic."
    )
    default_max_queue_size: int = Field(
        1024, gt=0, description="Queue bound for models whose config sets none; a full queue answers 503."
    )
    drain_seconds: float = Field(
        5.0, ge=0, description="After SIGTERM: seconds new requests get 503 (not ready, listeners open) so load balancers move away; 0 = none."
    )
    drain_timeout_seconds: float = Field(
        30.0, ge=0, description="After SIGTERM: most seconds (drain period included) requests in flight get; those still running then get 503."
    )
    cpu_threads: int = Field(0, ge=0, description="Cores the runtimes share (0 = all); split across instances.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    build_default_repository: bool = Field(
        True, description="Build the default model repository when serving the default path and it is missing."
    )
