"""Studies: variants, shared variant runs, and the table / CSV / PNG outputs."""

import csv

import pytest

from experiments.configs import ablation, fsweep, table2
from llm4sbr_jax import studies


def _fake_results(hr):
  metrics = {c: hr + i for i, c in enumerate(studies.PAPER_COLUMNS)}
  return {"selected": {"epoch": 1, "test": metrics}, "paper_protocol_best_test": {"metrics": metrics},
          "epochs_run": 2}


def test_table2_and_ablation_share_the_llm4sbr_run(tmp_path):
  calls = []

  def run(config, workdir):
    calls.append(workdir)
    return _fake_results(10.0 if config.model == "srgnn" else 12.0)

  studies.run_study("table2", table2.get_config(), str(tmp_path), run)
  text = (tmp_path / "table2.md").read_text()
  assert "improvement % (LLM4SBR(SR-GNN))" in text and "+20.00" in text  # (12 - 10) / 10
  rows = list(csv.DictReader(open(tmp_path / "table2.csv")))
  assert {r["variant"] for r in rows} == {"SR-GNN", "LLM4SBR(SR-GNN)"} and len(rows) == 4
  assert (tmp_path / "table2.png").stat().st_size > 1000
  studies.run_study("ablation", ablation.get_config(), str(tmp_path), run)
  dirs = [p.split("/")[-1] for p in calls]
  assert dirs.count("model=llm4sbr") == 2  # same directory: the real runner resumes (skips) the finished run
  assert "model=llm4sbr__pairing=local__perspectives=short-term" in dirs


def test_variants_follow_the_config():
  c = fsweep.get_config()
  assert [label for label, _ in studies.variants("fsweep", c)] == ["f=0", "f=1", "f=3", "f=5"]
  v = dict(studies.variants("ablation", ablation.get_config()))
  assert v["w/o long"] == {"model": "llm4sbr", "perspectives": ("short-term",), "pairing": ("local",)}
  assert studies.variant_config(c, {"intents.f": 3}).intents.f == 3
  with pytest.raises(ValueError, match="unknown study"):
    studies.variants("table9", c)
