"""``deepserve export ...`` (``app``) and ``deepserve models ...`` (``models_app``).

The lead's ``server/cli.py`` mounts both; ``python -m export.cli`` runs them standalone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(help="Export networks to ONNX / TensorRT, quantize, prune, verify, report.", no_args_is_help=True)
models_app = typer.Typer(help="Build the model repositories deepserve ships.", no_args_is_help=True)


@models_app.command("build-default")
def build_default(
    out: Path = typer.Option(..., "--out", help="model repository folder to write into"),
    force: bool = typer.Option(False, "--force", help="rebuild even when up to date"),
) -> None:
    """Write the default repository (the trained ``digits`` classifier)."""
    from export.default_repository import build_default_repository

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_default_repository(out, force=force)
    typer.echo(f"default repository ready in {out}")


@models_app.command("build-bench")
def build_bench(
    out: Path = typer.Option(..., "--out", help="model repository folder to write into"),
    force: bool = typer.Option(False, "--force", help="rebuild even when up to date"),
) -> None:
    """Write the benchmark repository (resnet_bench, mlp_tiny, and *_nobatch twins)."""
    from export.default_repository import build_benchmark_repository

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_benchmark_repository(out, force=force)
    typer.echo(f"benchmark repository ready in {out}")


@app.command("families")
def families() -> None:
    """List the model families ``export`` knows."""
    from export.families import FAMILIES

    for name in FAMILIES:
        typer.echo(name)


root = typer.Typer(no_args_is_help=True)
root.add_typer(app, name="export")
root.add_typer(models_app, name="models")

if __name__ == "__main__":
    root()
