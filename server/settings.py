"""Every server-wide knob, from flags, ``DEEPSERVE_*`` environment variables or a .env file.

Precedence: command-line flag > environment variable > .env file > default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    max_inflight: int = Field(
        4096, ge=0, description="Inference requests in flight at once, server-wide (0 = no limit); past it, 503 at once."
    )
    drain_seconds: float = Field(
        5.0, ge=0, description="After SIGTERM: seconds new requests get 503 (not ready, listeners open) so load balancers move away; 0 = none."
    )
    drain_timeout_seconds: float = Field(
        30.0, ge=0, description="After SIGTERM: most seconds (drain period included) requests in flight get; those still running then get 503."
    )
    cpu_threads: int = Field(0, ge=0, description="Cores the runtimes share (0 = all); split across instances.")
    memory_budget_bytes: int = Field(
        0, ge=0, description="Host memory the models may take (RSS measured at load); over it the least recently used idle load-on-demand model is unloaded (0 = no budget)."
    )
    on_demand_load_timeout_seconds: float = Field(
        60.0, gt=0, description="Most seconds a request waits for its load-on-demand model to load; then 503 with Retry-After."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text (readable lines) or json (one JSON object a line, plus one line per request at INFO)."
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer key for inference, metadata and /v1 routes (off when unset; health and /metrics stay open)."
    )
    api_key_file: Path | None = Field(None, description="File of inference keys, one a line (a mounted secret).")
    admin_key: SecretStr | None = Field(
        None, description="Bearer key for repository load / unload / index; also authorizes inference."
    )
    admin_key_file: Path | None = Field(None, description="File of admin keys, one a line (a mounted secret).")
    cors_origins: str | None = Field(
        None, description="Comma-separated origins browsers may call from ('*' for any); CORS is off when unset."
    )
    frontend_processes: int = Field(
        0, ge=0, le=256,
        description="Frontend processes (0 = HTTP and gRPC in the model process); N > 0: N processes share the HTTP and gRPC ports (SO_REUSEPORT) and hand tensors to the model process over shared memory.",
    )
    build_default_repository: bool = Field(
        True, description="Build the default model repository when serving the default path and it is missing."
    )

    @field_validator("api_key", "admin_key", "cors_origins", "api_key_file", "admin_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """``DEEPSERVE_API_KEY=`` (an empty variable, as compose's ``${VAR:-}`` gives) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    def api_keys(self) -> tuple[str, ...]:
        """The inference keys: ``api_key`` and every line of ``api_key_file``."""
        return _keys(self.api_key, self.api_key_file, "api key")

    def admin_keys(self) -> tuple[str, ...]:
        """The admin keys: ``admin_key`` and every line of ``admin_key_file``."""
        return _keys(self.admin_key, self.admin_key_file, "admin key")

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]


def _keys(key: SecretStr | None, path: Path | None, what: str) -> tuple[str, ...]:
    """Keys are visible ASCII (no spaces), as an ``Authorization`` header can carry them.
    A file that cannot be read, or that holds no key, is an error: a server meant to be
    protected must not start open."""
    keys = [key.get_secret_value().strip()] if key is not None else []
    if path is not None:
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the {what} file {path}: {exc}") from None
        file_keys = [line.strip() for line in lines if line.strip()]
        if not file_keys:
            raise ValueError(f"the {what} file {path} holds no key")
        keys += file_keys
    for k in keys:
        if not all("!" <= c <= "~" for c in k):
            raise ValueError(f"an {what} must be visible ASCII characters without spaces")
    return tuple(dict.fromkeys(keys))
