"""The README's benchmark summary is generated from the committed results, never typed.

Runs no benchmark: it re-renders the block from the files named in its start marker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loadtests import readme_summary, report

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _readme() -> str:
    return README.read_text()


def _bench_data() -> dict:
    return json.loads((ROOT / readme_summary.read_sources(_readme()).bench).read_text())


def test_readme_summary_matches_the_results():
    text = _readme()
    regenerated = readme_summary.generate(text, ROOT)
    assert regenerated == text, (
        "README.md's benchmark summary differs from the results it names; "
        "run .venv/bin/python -m loadtests.readme_summary instead of editing it by hand"
    )


def test_readme_sources_are_in_the_repository():
    sources = readme_summary.read_sources(_readme())
    assert sources.bench.startswith("loadtests/results/") and (ROOT / sources.bench).is_file()
    assert (ROOT / sources.grpc).is_file()


def test_benchmarks_page_comes_from_the_same_run():
    """docs/benchmarks.md's Summary table is what loadtests.report gives for the README's results file."""
    data = _bench_data()
    rows, _ = report.summary(report.Figures(data), data.get("configs", {}))
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "\n".join(rows) in page


def test_overhead_row_is_the_batching_figure_and_litserve_range_is_complete():
    fig = report.Figures(_bench_data())
    headline = report.headline(fig)
    block = _readme()
    row = next(line for line in block.splitlines() if "1 client, dynamic batching on" in line)
    assert f"+{headline['over_b']:.3f} ms" in row  # mlp_tiny (batching on), not mlp_tiny_nobatch
    ratios = [report.litserve_ratio(fig, m, c) for m in ("resnet_bench", "mlp_tiny") for c in (1, 8, 32, 64)]
    row = next(line for line in block.splitlines() if "LitServe" in line and line.startswith("| deepserve"))
    shown = [float(x) for x in re.findall(r"(\d+\.\d+)(?=[–x])", row)]
    assert min(shown) == min(ratios) and max(shown) == max(ratios)


def test_readme_model_table_matches_the_model_results():
    from models import summary

    text = _readme()
    assert summary.generate(text) == text, (
        "README.md's default-model table differs from models/results/; run `python -m models.summary`"
    )


def test_models_readme_generation_table_matches_the_results():
    from models import summary

    path = summary.ROOT / "models" / "README.md"
    text = path.read_text()
    assert summary.generate_models_readme(text) == text, (
        "models/README.md's generation table differs from models/results/; run `python -m models.summary`"
    )
