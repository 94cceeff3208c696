"""The peers' plots: throughput and p99 against client count, every server on one plot.

    /work/peer-venvs/plots/bin/python loadtests/plots.py loadtests/results/bench-latest.json \
        --out-dir docs/img

Writes ``peers-<model>.png`` per model (left: req/s, right: p99 in ms, log scale). Runs in
the ``plots`` venv (``.venv/bin/python -m loadtests.peers setup plots``): matplotlib is no
dependency of deepserve. This module imports only the standard library at the top, so
``loadtests.report`` uses the same choice of points (``series``) for the peers' table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONCURRENCY = (1, 8, 32, 64)
MODELS = ("resnet_bench", "mlp_tiny")
# (server as recorded by loadtests.bench, label, the body formats measured for it). Each point of
# a peer is its fastest format at that model and client count; deepserve is always v2-binary on the
# batched model (max_batch_size 64, max_queue_delay 500 us).
SERVERS = (
    ("deepserve", "deepserve", ("v2-binary",)),
    ("fastapi-naive+ds-opts", "FastAPI (no batching)", ("raw-bytes", "json-list")),
    ("litserve", "LitServe", ("json-list", "json-b64")),
    ("kserve", "KServe (no batching)", ("v2-json", "v2-binary")),
    ("rayserve", "Ray Serve", ("json-list",)),
)
LABELS = {server: label for server, label, _ in SERVERS}


def _usable(p: dict) -> bool:
    return not p.get("profiled") and "failed" not in p and p.get("rps") is not None


def series(data: dict) -> dict[str, dict[str, dict[int, dict]]]:
    """model -> server -> concurrency -> the point (the server's fastest format there)."""
    out: dict[str, dict[str, dict[int, dict]]] = {m: {s: {} for s, _, _ in SERVERS} for m in MODELS}
    formats = {server: fmts for server, _, fmts in SERVERS}
    for p in data.get("points", []):
        if not _usable(p) or p["model"] not in out or p["server"] not in formats:
            continue
        if p["format"] not in formats[p["server"]] or p["concurrency"] not in CONCURRENCY:
            continue
        cell = out[p["model"]][p["server"]]
        best = cell.get(p["concurrency"])
        if best is None or p["rps"] > best["rps"]:
            cell[p["concurrency"]] = p
    return out


def image_name(model: str) -> str:
    return f"peers-{model}.png"


def write_pngs(data: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    styles = {"deepserve": dict(color="black", linewidth=2.5, marker="o")}
    for model, servers in series(data).items():
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for server, points in servers.items():
            cs = sorted(points)
            if not cs:
                continue
            style = styles.get(server, dict(marker="s", linewidth=1.5))
            left.plot(cs, [points[c]["rps"] for c in cs], label=LABELS[server], **style)
            right.plot(cs, [points[c]["p99_ms"] for c in cs], label=LABELS[server], **style)
        for ax, title in ((left, "throughput (req/s, higher is better)"), (right, "p99 latency (ms, lower is better)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
            ax.set_xlabel("concurrent clients (closed loop, 1 row per request)")
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
        right.set_yscale("log")
        left.set_ylim(bottom=0)
        left.legend(fontsize=8)
        meta = data.get("meta", {})
        fig.suptitle(f"{model}: deepserve and its peers, {meta.get('cores', '?')} cores, CPU only "
                     f"({meta.get('date', '')}, commit {meta.get('commit', '?')})", fontsize=11)
        fig.tight_layout()
        path = out_dir / image_name(model)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    data = json.loads(args.json_path.read_text())
    for path in write_pngs(data, args.out_dir):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
