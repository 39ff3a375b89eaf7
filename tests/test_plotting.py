"""Plots: each writes a readable PNG of the expected size; empty input writes nothing."""

import matplotlib.image
import pytest

from llm4sbr_jax import plotting


def _history(n):
  return [{"epoch": e, "train": {"loss": 5.0 - e}, "valid": {"hr@20": 1.0 + e, "mrr@20": 0.5 + e},
           "test": {"hr@20": 1.5 + e, "mrr@20": 0.7 + e}} for e in range(n)]


def test_curves_png(tmp_path):
  path = tmp_path / "curves.png"
  plotting.plot_curves(_history(3), str(path), title="t")
  assert matplotlib.image.imread(path).shape[:2] == (360, 1350)  # 3 panels of 4.5 x 3.6 in at 100 dpi
  plotting.plot_curves([], str(tmp_path / "none.png"))
  assert not (tmp_path / "none.png").exists()


def test_bars_png(tmp_path):
  rows = [("whole", {"hr@20": 17.3, "mrr@20": 6.2}), ("w/o long", {"hr@20": 17.2, "mrr@20": 6.1})]
  plotting.plot_bars(rows, ("hr@20", "mrr@20"), str(tmp_path / "bars.png"))
  assert matplotlib.image.imread(tmp_path / "bars.png").shape[:2] == (360, 900)


@pytest.mark.parametrize("key", ["peak_host_rss_mb", "peak_device_mb"])
def test_overhead_png(tmp_path, key):
  best = {"srgnn": {"step_ms": 19.6, key: 580.0, "intent_bytes": 0},
          "llm4sbr": {"step_ms": 18.8, key: 1038.0, "intent_bytes": 516 * 2**20}}
  plotting.plot_overhead(best, key, str(tmp_path / "overhead.png"))
  assert matplotlib.image.imread(tmp_path / "overhead.png").shape[:2] == (360, 900)


def test_scaling_png(tmp_path):
  series = {"srgnn": [(12101, {"step_ms": 14.0, "peak_rss_mb": 700.0}),
                      (1e6, {"step_ms": 900.0, "peak_rss_mb": 3600.0})],
            "srgnn@score_chunk=16384": [(12101, {"step_ms": 15.0, "peak_rss_mb": 690.0}),
                                        (5e6, {"step_ms": 5000.0})]}  # no RSS for a run that did not fit
  plotting.plot_scaling(series, {"step_ms": "step (ms)", "peak_rss_mb": "peak RSS (MB)"}, str(tmp_path / "s.png"))
  assert matplotlib.image.imread(tmp_path / "s.png").shape[:2] == (380, 1000)  # 2 panels of 5 x 3.8 in
