"""Write the README's benchmark summary from the benchmarks' own results.

    .venv/bin/python -m loadtests.readme_summary [--bench-json loadtests/results/bench-latest.json]
                                                 [--grpc-report docs/benchmarks-grpc.md] [--check]

Rewrites the block of ``README.md`` between ``<!-- bench-summary:start ... -->`` and
``<!-- bench-summary:end -->``. Its sources are named in the start marker, so a plain run
re-renders from the same files; ``--bench-json`` / ``--grpc-report`` switch to others (after
``make bench``: ``--bench-json loadtests/results/bench-latest.json``) and record them there.

* ``--bench-json``: the raw figures ``loadtests.bench`` wrote (``--json``); every serving
  figure is computed from it with ``loadtests.report``'s functions, the ones that render
  ``docs/benchmarks.md`` from the same file.
* ``--grpc-report``: ``docs/benchmarks-grpc.md`` as ``loadtests.grpc_vs_http`` wrote it (that
  script keeps no other record); its table and its throughput ratio are read back.

``--check`` writes nothing and exits 1 when the README's block differs from what the
sources give (``tests/unit/test_readme_figures.py`` asserts the same).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from loadtests import report
from loadtests.report import TARGETS, Figures, _f, _rps, _x

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START_RE = re.compile(r"<!-- bench-summary:start bench=(?P<bench>\S+) grpc=(?P<grpc>\S+) -->\n")
END = "<!-- bench-summary:end -->"
CONCURRENCY = (1, 8, 32, 64)


@dataclass(frozen=True)
class Sources:
    bench: str  # paths relative to the repository root, as written in the start marker
    grpc: str


def read_sources(readme_text: str) -> Sources:
    match = START_RE.search(readme_text)
    if match is None:
        raise ValueError("README.md has no '<!-- bench-summary:start bench=... grpc=... -->' marker")
    return Sources(match["bench"], match["grpc"])


def grpc_figures(text: str) -> dict:
    """Read back what ``loadtests.grpc_vs_http`` wrote: per protocol p50 / p99 / req/s / CPU ms."""
    rows = {}
    for name in ("gRPC", "HTTP binary"):
        m = re.search(rf"^\| {re.escape(name)} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+|n/a) \|$", text, re.M)
        if m is None:
            raise ValueError(f"no '{name}' row in the gRPC report")
        rows[name] = {"p50_ms": float(m[1]), "p99_ms": float(m[2]), "rps": float(m[3]),
                      "server_cpu_ms": None if m[4] == "n/a" else float(m[4])}
    ratio = re.search(r"gRPC / HTTP throughput on `(\w+)` at (\d+) clients: \*\*([\d.]+)x\*\*", text)
    date = re.search(r"\*\*Date:\*\* ([^;]+);", text)
    if ratio is None or date is None:
        raise ValueError("the gRPC report has no throughput ratio or date line")
    return {**rows, "model": ratio[1], "concurrency": int(ratio[2]), "ratio": float(ratio[3]), "date": date[1]}


def _met(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("met" if ok else "**missed**")


def _range(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return "n/a" if not known else f"{min(known):.2f}–{max(known):.2f}x"


def render(data: dict, grpc: dict, sources: Sources) -> str:
    """The block between the markers, markers included."""
    fig = Figures(data)
    h = report.headline(fig)
    meta = data["meta"]
    best, inproc = h["best"], h["mlp_inproc"]
    eff_ok = h["eff"] is not None and h["eff"] >= TARGETS["efficiency"]
    eff_i2_ok = h["eff_i2"] is not None and h["eff_i2"] >= TARGETS["efficiency"]
    over_ok = h["over_b"] is not None and h["over_b"] <= TARGETS["overhead_ms"]
    json_ok = h["r_json"] is not None and h["r_json"] >= TARGETS["fastapi_ratio"]
    raw_ok = h["r_raw"] is not None and h["r_raw"] >= TARGETS["fastapi_ratio"]
    grpc_ok = grpc["ratio"] >= TARGETS["grpc_http_ratio"]
    g, hb = grpc["gRPC"], grpc["HTTP binary"]
    batching = {m: [report.batching_ratio(fig, m, c) for c in CONCURRENCY] for m in ("resnet_bench", "mlp_tiny")}
    litserve = {m: [report.litserve_ratio(fig, m, c) for c in CONCURRENCY] for m in ("resnet_bench", "mlp_tiny")}
    c1 = {m: ratios[0] for m, ratios in batching.items()}

    rows = [
        ("`resnet_bench` (small CNN) at 64 clients / in-process ONNX Runtime at its best batch",
         f"**{_f(h['eff'], 2)}** ({_f(_rps(h['ds64']))} req/s vs {_f(best and best['rows_per_s'])} rows/s "
         f"at batch {best and best['batch']})", f"≥ {TARGETS['efficiency']}", _met(h["eff"], eff_ok)),
        ("same, `resnet_bench_i2` (2 instances × 1 thread)",
         f"{_f(h['eff_i2'], 2)} ({_f(_rps(h['ds64_i2']))} req/s)", f"(≥ {TARGETS['efficiency']})",
         _met(h["eff_i2"], eff_i2_ok)),
        ("`mlp_tiny` p50 at 1 client, dynamic batching on, above in-process p50",
         f"**+{_f(h['over_b'], 3)} ms** ({_f(h['c1_b'] and h['c1_b']['p50_ms'], 3)} vs "
         f"{_f(inproc and inproc['p50_ms'], 3)} ms)", f"≤ +{TARGETS['overhead_ms']} ms", _met(h["over_b"], over_ok)),
        ("same without dynamic batching (`mlp_tiny_nobatch`), for comparison",
         f"+{_f(h['over_nb'], 3)} ms ({_f(h['c1_nb'] and h['c1_nb']['p50_ms'], 3)} ms)", "–", "–"),
        ("`mlp_tiny` at 32 clients vs a hand-written FastAPI endpoint, JSON body",
         f"**{_x(h['r_json'])}** ({_f(_rps(h['ds32']))} vs {_f(_rps(h['fa_json']))} req/s)",
         f"≥ {TARGETS['fastapi_ratio']}x", _met(h["r_json"], json_ok)),
        ("same, raw-bytes body",
         f"**{_x(h['r_raw'])}** ({_f(_rps(h['ds32']))} vs {_f(_rps(h['fa_raw']))} req/s)",
         f"≥ {TARGETS['fastapi_ratio']}x", _met(h["r_raw"], raw_ok)),
        (f"gRPC vs HTTP binary on `{grpc['model']}` at {grpc['concurrency']} clients",
         f"**{grpc['ratio']:.2f}x** ({_f(g['rps'], 0)} vs {_f(hb['rps'], 0)} req/s; server CPU "
         f"{_f(g['server_cpu_ms'], 2)} vs {_f(hb['server_cpu_ms'], 2)} ms per request)",
         f"≥ {TARGETS['grpc_http_ratio']}x", _met(grpc["ratio"], grpc_ok)),
        ("dynamic batching vs none, 8–64 clients (`resnet_bench`, `mlp_tiny`)",
         f"{_range(batching['resnet_bench'][1:])}, {_range(batching['mlp_tiny'][1:])} "
         f"(at 1 client: {_x(c1['resnet_bench'])}, {_x(c1['mlp_tiny'])})", "–", "–"),
        ("deepserve vs LitServe's best body format, 1–64 clients (`resnet_bench`, `mlp_tiny`)",
         f"{_range(litserve['resnet_bench'])}, {_range(litserve['mlp_tiny'])}", "–", "–"),
    ]
    targets = [
        (f"`resnet_bench` efficiency {_f(h['eff'], 2)} (≥ {TARGETS['efficiency']})", eff_ok),
        (f"p50 overhead at 1 client with batching +{_f(h['over_b'], 3)} ms (≤ +{TARGETS['overhead_ms']} ms)", over_ok),
        (f"`mlp_tiny` vs FastAPI, JSON body {_x(h['r_json'])} (≥ {TARGETS['fastapi_ratio']}x)", json_ok),
        (f"`mlp_tiny` vs FastAPI, raw-bytes body {_x(h['r_raw'])} (≥ {TARGETS['fastapi_ratio']}x)", raw_ok),
        (f"gRPC vs HTTP binary {grpc['ratio']:.2f}x (≥ {TARGETS['grpc_http_ratio']}x)", grpc_ok),
    ]
    missed = [name for name, ok in targets if not ok]
    met = [name for name, ok in targets if ok]
    out = [
        f"<!-- bench-summary:start bench={sources.bench} grpc={sources.grpc} -->",
        "<!-- generated by `python -m loadtests.readme_summary`: do not edit by hand -->",
        "",
        (f"From `{sources.bench}` (run of {meta['date']}, commit `{meta['commit']}`, {meta['cores']} cores, "
         f"CPU only; tables in `docs/benchmarks.md`) and `{sources.grpc}` ({grpc['date']}). "
         "Ratios are deepserve's throughput over the other's."),
        "",
        "| figure | measured | target | met? |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"**Targets missed:** {'; '.join(missed) or 'none'}. **Met:** {'; '.join(met) or 'none'}.",
        "",
        END,
    ]
    return "\n".join(out)


def generate(readme_text: str, root: Path, bench: str | None = None, grpc: str | None = None) -> str:
    """``readme_text`` with its summary block re-rendered (from the marker's sources unless given)."""
    current = read_sources(readme_text)
    sources = Sources(bench or current.bench, grpc or current.grpc)
    data = json.loads((root / sources.bench).read_text())
    grpc_data = grpc_figures((root / sources.grpc).read_text())
    start = START_RE.search(readme_text)
    end = readme_text.find(END, start.end())
    if end < 0:
        raise ValueError(f"README.md has no {END} after the start marker")
    return readme_text[: start.start()] + render(data, grpc_data, sources) + readme_text[end + len(END):]


def _relative(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-json", help="loadtests.bench's raw figures (default: the marker's)")
    parser.add_argument("--grpc-report", help="loadtests.grpc_vs_http's report (default: the marker's)")
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's block is out of date")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    new = generate(text, ROOT, _relative(args.bench_json), _relative(args.grpc_report))
    if args.check:
        if new != text:
            print(f"{readme}: the benchmark summary is out of date; run python -m loadtests.readme_summary",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
