"""The peer servers' virtual environments: one per peer, none of them deepserve's.

    .venv/bin/python -m loadtests.peers setup              # every peer (+ the plotting venv)
    .venv/bin/python -m loadtests.peers setup kserve       # one of them
    .venv/bin/python -m loadtests.peers versions           # what is installed, as JSON

Each peer gets ``<root>/<name>`` (default root ``/work/peer-venvs``, ``--root`` to change)
made with this Python's ``venv`` and the pinned packages below, so a rerun installs the
same releases. ONNX Runtime is pinned to the release deepserve's venv has, so that every
server runs the same kernels and the servers differ in the serving layer only.
``plots`` is not a peer: it holds matplotlib for ``loadtests.plots``, which deepserve does
not depend on either.

``loadtests.bench`` finds the interpreters here (``--peers-root``) and records
``versions()`` in its results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("/work/peer-venvs")
ORT = "onnxruntime==1.32.0"
NUMPY = "numpy==2.4.6"

# name -> (packages to install, distributions whose versions are recorded)
PEERS: dict[str, tuple[list[str], list[str]]] = {
    "litserve": (["litserve==0.2.19", ORT, NUMPY], ["litserve", "fastapi", "uvicorn", "onnxruntime", "numpy"]),
    "kserve": (["kserve==0.21.0", ORT, NUMPY], ["kserve", "fastapi", "uvicorn", "onnxruntime", "numpy"]),
    "rayserve": (["ray[serve]==2.60.0", ORT, NUMPY], ["ray", "fastapi", "uvicorn", "starlette", "onnxruntime", "numpy"]),
    "plots": (["matplotlib==3.11.2", NUMPY], ["matplotlib", "numpy"]),
}


def python(name: str, root: Path = ROOT) -> Path:
    return Path(root) / name / "bin" / "python"


def setup(name: str, root: Path = ROOT) -> None:
    packages, _ = PEERS[name]
    venv = Path(root) / name
    if not python(name, root).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    t0 = time.monotonic()
    subprocess.run([str(python(name, root)), "-m", "pip", "install", "--quiet", *packages], check=True)
    print(f"{name}: {' '.join(packages)} in {venv} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)


def versions(name: str, root: Path = ROOT) -> dict[str, str | None] | None:
    """The recorded distributions' versions in that venv; None when the venv is missing."""
    if not python(name, root).exists():
        return None
    _, dists = PEERS[name]
    code = ("import json, importlib.metadata as m\n"
            "def v(d):\n"
            "    try: return m.version(d)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{d: v(d) for d in {dists!r}}}))")
    done = subprocess.run([str(python(name, root)), "-c", code], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("setup", "versions"))
    parser.add_argument("names", nargs="*", help=f"default: all of {', '.join(PEERS)}")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    names = args.names or list(PEERS)
    unknown = set(names) - set(PEERS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if args.command == "setup":
        args.root.mkdir(parents=True, exist_ok=True)
        for name in names:
            setup(name, args.root)
    print(json.dumps({name: versions(name, args.root) for name in names}, indent=1))


if __name__ == "__main__":
    main()
