"""Studies: variants, shared variant runs, and the table / CSV / PNG outputs."""

import csv
import os

import numpy as np
import pytest

from experiments.configs import ablation, fsweep, table2
from llm4sbr_jax import studies


def _fake_results(hr):
  metrics = {c: hr + i for i, c in enumerate(studies.PAPER_COLUMNS)}
  return {"selected": {"epoch": 1, "test": metrics}, "paper_protocol_best_test": {"metrics": metrics},
          "epochs_run": 2, "dataset": "beauty"}


def test_table2_and_ablation_share_the_llm4sbr_run(tmp_path):
  calls = []

  def run(config, workdir):
    calls.append(workdir)
    base = {"srgnn": 10.0, "tagnn": 20.0, "gcegnn": 40.0, "s2dhcn": 30.0}[config.backbone]
    os.makedirs(workdir, exist_ok=True)
    ranks = np.random.default_rng(0).integers(1, 40, 500)
    np.save(os.path.join(workdir, "test_ranks.npy"), np.maximum(1, ranks - 5) if config.llm4sbr else ranks)
    return {**_fake_results(base * 1.2 if config.llm4sbr else base), "test_ranks": "test_ranks.npy",
            "stopped_early": config.backbone != "tagnn", "config": {"num_epochs": 4}}

  studies.run_study("table2", table2.get_config(), str(tmp_path), run)
  text = (tmp_path / "table2.md").read_text()
  for label in ("SR-GNN", "TAGNN", "GCE-GNN", "S2-DHCN"):  # each LLM4SBR(X) against its own bare X
    assert f"improvement % (LLM4SBR({label}) vs {label}) | +20.00 |" in text
  assert "| LLM4SBR(GCE-GNN) | 18.08 | 4.80 |" in text  # the paper's Beauty values beside ours
  assert "| LLM4SBR(S2-DHCN) | 17.48 | 5.15 |" in text
  assert "| SR-GNN | 2 | 1 | early stopping (patience) |" in text  # how each variant's training ended
  assert "| TAGNN | 2 | 1 | **epoch cap** (num_epochs 4) |" in text
  assert "paired bootstrap 95% interval" in text and "| LLM4SBR(TAGNN) vs TAGNN | 500 | [+" in text
  rows = list(csv.DictReader(open(tmp_path / "table2.csv")))
  assert {r["variant"] for r in rows} == {"SR-GNN", "LLM4SBR(SR-GNN)", "TAGNN", "LLM4SBR(TAGNN)", "GCE-GNN",
                                          "LLM4SBR(GCE-GNN)", "S2-DHCN", "LLM4SBR(S2-DHCN)"} and len(rows) == 16
  assert (tmp_path / "table2.png").stat().st_size > 1000
  studies.run_study("ablation", ablation.get_config(), str(tmp_path), run)
  dirs = [p.split("/")[-1] for p in calls]
  assert dirs.count("backbone=srgnn__llm4sbr=True") == 2  # same directory: the real runner resumes the finished run
  assert "backbone=srgnn__llm4sbr=True__pairing=local__perspectives=short-term" in dirs


def test_ablation_and_fsweep_take_any_backbone():
  c = ablation.get_config()
  c.backbone = "gcegnn"
  assert all(o["backbone"] == "gcegnn" and o["llm4sbr"] for _, o in studies.variants("ablation", c))
  c.backbone = "dcn"
  with pytest.raises(ValueError, match="registered: gcegnn, s2dhcn, srgnn, tagnn"):
    studies.variants("fsweep", c)


def test_variants_follow_the_config():
  c = fsweep.get_config()
  assert [label for label, _ in studies.variants("fsweep", c)] == ["f=0", "f=1", "f=3", "f=5"]
  v = dict(studies.variants("ablation", ablation.get_config()))
  assert v["w/o long"] == {"backbone": "srgnn", "llm4sbr": True, "perspectives": ("short-term",),
                           "pairing": ("local",)}
  assert studies.variant_config(c, {"intents.f": 3}).intents.f == 3
  with pytest.raises(ValueError, match="unknown study"):
    studies.variants("table9", c)


def test_backbone_subsets_parse_from_the_command_line():
  assert studies.backbone_names(("srgnn,gcegnn",)) == ("srgnn", "gcegnn")  # what --config.backbones=srgnn,gcegnn gives
  assert studies.backbone_names("tagnn, s2dhcn") == ("tagnn", "s2dhcn")
  assert studies.backbone_names(("srgnn", "tagnn")) == ("srgnn", "tagnn")
