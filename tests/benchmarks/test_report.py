"""`python -m benchmarks`' chart: every label (tick, value, title, axis) lies inside the image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from benchmarks.__main__ import collect_ratios, figure  # noqa: E402

REPORT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.json"


def test_every_label_of_the_committed_report_fits_in_the_image():
    report = json.loads(REPORT.read_text(encoding="utf-8"))
    ratios = {stage: collect_ratios(entry["result"]) for stage, entry in report["stages"].items()}
    ratios["extreme"] = {"a_very_long_key_name_that_goes_on.speedup_vs_something_else": 12345.6}
    fig = figure(ratios, "lmfast vs baselines")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = [*ax.get_yticklabels(), ax.title, ax.xaxis.label, *ax.texts]
    assert len(ax.texts) == sum(1 for r in ratios.values() for v in r.values() if v > 0 and v != 1.0)
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0, text.get_text()
        assert box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, text.get_text()
    plot_area = ax.get_window_extent(renderer)
    for value_label in ax.texts:  # the "1055.30x" labels stay inside the axes' frame too
        assert value_label.get_window_extent(renderer).x1 <= plot_area.x1, value_label.get_text()
