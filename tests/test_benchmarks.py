"""The README's benchmark table is the JSON's, and the scaling fit says what it should."""

import os

import numpy as np
import pytest

from benchmarks import demo_figures, scaling, summary

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_block(start: str, end: str) -> str:
    """The README's generated block between its ``start`` and ``end`` markers, both included."""
    with open(README) as f:
        text = f.read()
    return text[text.index(start) : text.index(end) + len(end)]


def test_readme_table_matches_the_results_files():
    results = summary.load()
    assert {"ingest_throughput", "palette_decode", "iou_metric", "serving_latency"} <= set(results)
    block = _readme_block(summary.START, summary.END)
    assert block == summary.render(
        results
    ), "README is stale: run `python -m benchmarks.summary --write README.md`"


def test_readme_demo_figures_match_the_committed_demo_run():
    figures = demo_figures.load()
    assert figures["benchmark"] == "demo" and figures["decision"]["blessed"] is True
    block = _readme_block(demo_figures.START, demo_figures.END)
    assert block == demo_figures.render(
        figures
    ), "README is stale: run `python -m benchmarks.demo_figures --write README.md --from demo/figures.json`"
    assert f"**{figures['evaluation']['mean_iou']:.4f}**" in block


def test_fit_recovers_a_line_and_flags_growth_that_is_not_one():
    sizes = [250, 500, 1000, 2000]
    line = scaling.fit(sizes, [3.0 + 0.01 * n for n in sizes])
    assert line["slope_seconds_per_image"] == pytest.approx(0.01)
    assert line["intercept_seconds"] == pytest.approx(3.0)
    assert line["r_squared"] == 1.0 and line["linear"]
    quadratic = scaling.fit(sizes, [1e-5 * n * n for n in sizes])
    assert not quadratic["linear"] and quadratic["largest_residual_fraction"] > 0.1
    np.testing.assert_array_less(quadratic["r_squared"], 1.0)
