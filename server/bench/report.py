"""``deepserve bench`` output: the table on stdout, ``NAME.csv``, ``NAME.json`` and PNG plots.

A run's JSON is ``{"meta": {...}, "levels": [row, ...]}``; a row holds the level
(``mode``: concurrency or rate, ``level``), the measured ``window_s``, ``requests`` (answered
with success in the window), ``errors`` and ``errors_by_status``, ``throughput_rps``, client
latency ``p50_ms`` / ``p90_ms`` / ``p95_ms`` / ``p99_ms`` / ``mean_ms`` / ``max_ms``, the
server's split (``server``: per request ``queue_us``, ``compute_input_us``,
``compute_infer_us``, ``compute_output_us``, ``overhead_us``, ``request_us`` and ``avg_batch``;
null when the statistics extension could not be read) and, for streams, ``ttft_p50_ms``,
``ttft_p99_ms``, ``tokens_per_s`` and ``stream_tokens_per_s``.

matplotlib is imported inside the plotting functions only (with the Agg backend).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SERVER_FIELDS = ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us", "overhead_us",
                 "request_us", "avg_batch")
STREAM_FIELDS = ("ttft_p50_ms", "ttft_p99_ms", "tokens_per_s", "stream_tokens_per_s")
CSV_FIELDS = ("mode", "level", "window_s", "requests", "errors", "throughput_rps", "p50_ms", "p90_ms", "p95_ms",
              "p99_ms", "mean_ms", "max_ms", *STREAM_FIELDS, *(f"server_{f}" for f in SERVER_FIELDS), "errors_by_status")


def flat(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in CSV_FIELDS if not k.startswith("server_") and k != "errors_by_status"}
    server = row.get("server") or {}
    out.update({f"server_{f}": server.get(f) for f in SERVER_FIELDS})
    out["errors_by_status"] = ";".join(f"{k}={v}" for k, v in (row.get("errors_by_status") or {}).items())
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table: one line per level."""
    stream = any("ttft_p50_ms" in r for r in rows)
    mode = rows[0]["mode"] if rows else "concurrency"
    columns = [("concurrency" if mode == "concurrency" else "rate", lambda r: f"{r['level']:g}"),
               ("req/s", lambda r: r["throughput_rps"]),
               ("p50 ms", lambda r: r["p50_ms"]), ("p90 ms", lambda r: r["p90_ms"]),
               ("p95 ms", lambda r: r["p95_ms"]), ("p99 ms", lambda r: r["p99_ms"])]
    if stream:
        columns += [("ttft p50", lambda r: r.get("ttft_p50_ms")), ("ttft p99", lambda r: r.get("ttft_p99_ms")),
                    ("tok/s", lambda r: r.get("tokens_per_s")), ("tok/s/stream", lambda r: r.get("stream_tokens_per_s"))]
    s = lambda r, k: (r.get("server") or {}).get(k)
    columns += [("queue us", lambda r: s(r, "queue_us")), ("c_in us", lambda r: s(r, "compute_input_us")),
                ("c_infer us", lambda r: s(r, "compute_infer_us")), ("c_out us", lambda r: s(r, "compute_output_us")),
                ("batch", lambda r: s(r, "avg_batch")), ("ok", lambda r: r["requests"]),
                ("errors", lambda r: r["errors"] if not r.get("errors_by_status") else
                 f"{r['errors']} ({', '.join(f'{k}: {v}' for k, v in r['errors_by_status'].items())})")]
    cells = [[name for name, _ in columns]] + [[_cell(get(r)) for _, get in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in flat(row).items()})
    return path


def write_json(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    path.write_text(json.dumps({"meta": dict(meta), "levels": list(rows)}, indent=2) + "\n")
    return path


def read_run(path: Path) -> dict[str, Any]:
    run = json.loads(Path(path).read_text())
    if not isinstance(run, dict) or not isinstance(run.get("levels"), list):
        raise ValueError(f"{path}: not a deepserve bench JSON file (no 'levels')")
    run.setdefault("meta", {})
    run["meta"].setdefault("name", Path(path).stem)
    return run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _xlabel(runs: Sequence[Mapping]) -> str:
    modes = {r["mode"] for run in runs for r in run["levels"]}
    return "concurrency" if modes == {"concurrency"} else "offered load (concurrency or req/s)"


def plot(runs: Sequence[Mapping[str, Any]], out_dir: Path, prefix: str) -> list[Path]:
    """``PREFIX_throughput_latency.png`` (throughput against p99 latency, one line per run) and
    ``PREFIX_latency.png`` (p50 / p90 / p95 / p99 against the level; a colour per run)."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        rows = [r for r in run["levels"] if r.get("p99_ms") is not None]
        ax.plot([r["p99_ms"] for r in rows], [r["throughput_rps"] for r in rows], marker="o", label=run["meta"]["name"])
        for r in rows:
            ax.annotate(f"{r['level']:g}", (r["p99_ms"], r["throughput_rps"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title("throughput against p99 latency (labels: level)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}_throughput_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    levels: set[float] = set()
    for n, run in enumerate(runs):
        rows = run["levels"]
        levels.update(r["level"] for r in rows)
        for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p95_ms", "-."), ("p99_ms", ":")):
            pts = [(r["level"], r[key]) for r in rows if r.get(key) is not None]
            label = key.removesuffix("_ms") if len(runs) == 1 else f"{run['meta']['name']} {key.removesuffix('_ms')}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colors[n % len(colors)], label=label)
    if 0 < len(levels) <= 12:
        ax.set_xticks(sorted(levels))
    ax.set_xlabel(_xlabel(runs))
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency percentiles" + (f": {runs[0]['meta']['name']}" if len(runs) == 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{prefix}_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_all(meta: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str,
              plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_json(meta, rows, out_dir / f"{name}.json"), write_csv(rows, out_dir / f"{name}.csv")]
    if plots and rows:
        paths += plot([{"meta": {**meta, "name": meta.get("name", name)}, "levels": list(rows)}], out_dir, name)
    return paths


def compare(paths: Sequence[Path], out_dir: Path, name: str = "compare") -> tuple[str, list[Path]]:
    """Two (or more) runs' JSON on one set of plots; returns a side-by-side text summary too."""
    runs = [read_run(p) for p in paths]
    if len({run["meta"]["name"] for run in runs}) < len(runs):  # same label twice: the file names tell them apart
        for run, path in zip(runs, paths, strict=True):
            run["meta"]["name"] = f"{run['meta']['name']} ({Path(path).stem})"
    lines = []
    for run in runs:
        lines.append(f"== {run['meta']['name']}")
        lines.append(table(run["levels"]))
    return "\n".join(lines), plot(runs, out_dir, name)
