"""Summarise a py-spy ``--format raw --threads`` profile (collapsed stacks) as tables.

Each line of the file is ``thread (TID): NAME;frame;frame;... COUNT`` with frames written
``function (path:line)``. Three views, in samples and in % of all samples:

* per thread (how busy the event loop is vs the runtime's worker thread);
* self time by package of the innermost frame (``uvicorn``, ``fastapi``, ``server/frontends``...);
* inclusive time of our own functions (``server/``; each counted once per stack);
* every sample put in one layer (``_layer``): our handler, FastAPI routing, dependency
  solving, telemetry, other framework code, uvicorn's protocol, the event loop's native code.

    .venv/bin/python -m loadtests.profile_summary /tmp/prof/deepserve-mlp_tiny-c32.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def _package(path: str) -> str:
    if path.startswith("<frozen") or "/" not in path:
        return "stdlib: " + path.split(":")[0] if path.startswith("<") else path
    parts = path.split("/")
    if parts[0] == "server":
        return "/".join(parts[:3]) if len(parts) > 3 else "/".join(parts[:2])
    if parts[0] in ("asyncio", "concurrent", "threading.py", "json", "email", "http", "urllib"):
        return "stdlib: " + parts[0]
    return parts[0]


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text)
    if not match:
        return text, ""
    return match["func"], match["path"]


def summarize(path: Path, top: int = 12) -> dict:
    threads: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        thread, _, frames_text = stack.partition(";")
        thread_name = thread.split(":", 1)[1].strip() if ":" in thread else thread
        frames = [_frame(f) for f in frames_text.split(";") if f]
        total += count
        threads[re.sub(r"_\d+$", "_N", thread_name)] += count
        if frames:
            func, file = frames[-1]
            self_pkg[_package(file)] += count
            self_fn[f"{func} ({file})"] += count
        layers[_layer(thread_name, frames)] += count
        for label in {f"{func} ({file})" for func, file in frames}:
            inclusive[label] += count

    def table(counter: Counter[str]) -> list[tuple[str, int, float]]:
        return [(k, v, round(100.0 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "threads": table(threads),
        "layers": [(k, v, round(100.0 * v / total, 1)) for k, v in layers.most_common()],
        "self_by_package": table(self_pkg),
        "self_by_function": table(self_fn),
        # our own code only: the framework's middleware chain is in every stack
        "inclusive": table(Counter({k: v for k, v in inclusive.items() if "(server/" in k and not _boring(k)})),
    }


def _layer(thread: str, frames: list[tuple[str, str]]) -> str:
    """One bucket per sample; the first rule that matches wins."""
    if not thread.startswith("MainThread"):
        if any(func == "OnnxRuntime.execute" for func, _ in frames):
            return "runtime thread: ONNX Runtime run"
        return "runtime thread: other (thread pool, assemble/split)"
    app = [(f, p) for f, p in frames if p.split(":")[0] not in ("server/cli.py", "server/serve.py")]
    start = next((i for i, (f, _) in enumerate(app) if f == "Runner.run"), -1)
    app = app[start + 1:]
    if not app:
        return "main: event loop native code (uvloop sockets, epoll, callbacks)"
    if any(p.startswith("server/") for _, p in app):
        return "main: deepserve code (server/, with what it calls)"
    if any("solve_dependencies" in f or "request_params_to_args" in f for f, _ in app):
        return "main: FastAPI dependency solving"
    if any("_match" in f or f.endswith("matches") for f, _ in app):
        return "main: FastAPI/Starlette routing"
    # the innermost framework frame says whose work this is (the leaf may be stdlib it called)
    _, path = next(((f, p) for f, p in reversed(app) if p.startswith(_FRAMEWORK)), ("", ""))
    if "telemetry" in path or path.startswith("trace/"):
        return "main: FastAPI telemetry hooks (OpenTelemetry checks)"
    if path.startswith("uvicorn/"):
        return "main: uvicorn HTTP protocol"
    if path:
        return "main: other FastAPI/Starlette (middleware, Request/Response)"
    return "main: other Python (asyncio, stdlib)"


_FRAMEWORK = ("fastapi/", "starlette/", "uvicorn/", "trace/", "opentelemetry/")


def _boring(label: str) -> bool:
    """Frames that every stack has (the entry point, the event loop run)."""
    return any(s in label for s in ("<module>", "runpy", "typer/", "Runner.run", "uvloop/__init__", "server/cli.py",
                                    "server/serve.py", "_bootstrap", "Thread.run", "_worker (concurrent"))


def render(summary: dict) -> str:
    lines = [f"{summary['samples']} samples"]
    for key, title in (("threads", "thread"), ("layers", "layer"), ("self_by_package", "self time by package"),
                       ("self_by_function", "self time by function"), ("inclusive", "inclusive, deepserve code (server/)")):
        lines.append(f"\n| {title} | samples | % |\n|---|---:|---:|")
        lines += [f"| `{k}` | {v} | {p} |" for k, v, p in summary[key]]
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"## {arg}\n")
        print(render(summarize(Path(arg))))
