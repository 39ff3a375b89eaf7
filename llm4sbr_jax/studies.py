"""The paper's experiments as variant sweeps: Table 2 (every backbone bare and inside LLM4SBR), Figure 4 ablation,
Figure 5 f sweep (both on `config.backbone`).

A study is a base config plus named variants (config overrides). Each variant trains in its own sub-workdir named
after its overrides (a rerun resumes or skips finished variants, and studies sharing a workdir share identical
variants, e.g. the ablation's "whole" is Table 2's LLM4SBR run); the study then writes `<name>.md` (markdown
table), `<name>.csv` and `<name>.png` into the workdir. Metrics are reported twice, labelled: test at the best
validation epoch, and the paper's protocol (best epoch on test, each metric separately).
"""

from __future__ import annotations

import copy
import csv
import json
import os
from typing import Any, Callable

import jax
import numpy as np

from llm4sbr_jax import metrics as metrics_lib
from llm4sbr_jax import plotting, report, train
from llm4sbr_jax.models import registry

# The paper's columns ("P@K" is HR@K).
PAPER_COLUMNS = ("hr@5", "hr@10", "hr@20", "mrr@5", "mrr@10", "mrr@20")
PROTOCOLS = (("selected", "test @ best valid epoch"), ("paper_protocol_best_test", "best epoch on test (paper)"))


def backbone_names(value: Any) -> tuple[str, ...]:
  """`config.backbones` as names: a tuple, or the comma-separated string `--config.backbones=srgnn,gcegnn` gives."""
  parts = value.split(",") if isinstance(value, str) else [p for v in value for p in str(v).split(",")]
  return tuple(p.strip() for p in parts if p.strip())


def variants(study: str, config: Any) -> list[tuple[str, dict[str, Any]]]:
  """(label, overrides) of a study; `config` supplies the values swept (e.g. `config.study_f_values`)."""
  long_short = tuple(config.perspectives)
  backbone = config.backbone
  label = registry.get(backbone).label
  bare = lambda name: {"backbone": name, "llm4sbr": False}
  wrapped = lambda name, **kw: {"backbone": name, "llm4sbr": True, **kw}
  if study == "table2":
    return [row for name in backbone_names(config.get("backbones", (backbone,)))
            for row in ((registry.get(name).label, bare(name)), (f"LLM4SBR({registry.get(name).label})",
                                                                 wrapped(name)))]
  if study == "demo":
    return [(label, bare(backbone)),
            (f"LLM4SBR({label}), LLM intents", wrapped(backbone, **{"intents.source": "llm"})),
            (f"LLM4SBR({label}), item-text intents", wrapped(backbone, **{"intents.source": "item_text"}))]
  if study == "ablation":
    keep = lambda drop: wrapped(backbone, perspectives=tuple(p for p in long_short if p != drop),
                                pairing=tuple(q for p, q in zip(long_short, config.pairing) if p != drop))
    return [("whole", wrapped(backbone)), ("w/o long", keep("long-term")), ("w/o short", keep("short-term"))]
  if study == "fsweep":
    return [(f"f={f}", wrapped(backbone, **{"intents.f": int(f)})) for f in config.study_f_values]
  raise ValueError(f"unknown study {study!r}; expected table2, ablation, fsweep or demo")


def baselines(study: str, config: Any) -> dict[str, str]:
  """{variant label: the label it is compared with}: each LLM4SBR(X) with its bare X (Table 2, demo), each other
  variant with the first (ablation: "whole"; f sweep: the first f)."""
  if study not in ("table2", "demo"):
    labels = [label for label, _ in variants(study, config)]
    return {label: labels[0] for label in labels[1:]}
  out, base = {}, None
  for label, overrides in variants(study, config):
    if overrides["llm4sbr"]:
      out[label] = base
    else:
      base = label
  return out


def intervals(study: str, config: Any, workdir: str, results: dict[str, Any]
              ) -> dict[str, tuple[str, int, dict[str, tuple[float, float]]]]:
  """{variant: (compared-with label, number of test samples, paired-bootstrap 95% interval of the improvement % per
  metric)} from the variants' `test_ranks.npy` (test at the best validation epoch); pairs without ranks are left out."""
  dirs = {label: os.path.join(workdir, variant_dir(overrides)) for label, overrides in variants(study, config)}
  ranks = {}
  for label, r in results.items():
    if r.get("test_ranks"):
      ranks[label] = np.load(os.path.join(dirs[label], r["test_ranks"]), allow_pickle=False)
  return {label: (base, len(ranks[label]), metrics_lib.paired_bootstrap(ranks[base], ranks[label]))
          for label, base in baselines(study, config).items() if label in ranks and base in ranks}


def paper_values(study: str, config: Any, dataset: str) -> dict[str, tuple[float, float]]:
  """{variant label: the paper's (P@20, MRR@20)} for Table 2 variants on a dataset of the paper's Table 2."""
  if study != "table2":
    return {}
  out = {}
  for label, overrides in variants(study, config):
    values = registry.get(overrides["backbone"]).paper.get(dataset, {})
    key = "llm4sbr" if overrides["llm4sbr"] else "bare"
    if key in values:
      out[label] = values[key]
  return out


def variant_config(config: Any, overrides: dict[str, Any]) -> Any:
  c = copy.deepcopy(config)
  with c.unlocked():
    for key, value in overrides.items():
      target = c
      *path, leaf = key.split(".")
      for part in path:
        target = target[part]
      target[leaf] = value
  return c


def variant_dir(overrides: dict[str, Any]) -> str:
  """A sub-workdir name derived from the overrides, so studies sharing a workdir share identical variants."""
  text = "__".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(overrides.items()))
  return "".join(ch if ch.isalnum() or ch in "=,_-" else "_" for ch in text)


def run_study(study: str, config: Any, workdir: str,
              run: Callable[[Any, str], dict[str, Any]] = train.train_and_evaluate) -> dict[str, Any]:
  """Trains every variant (resuming) and writes the study's table, CSV and plot; returns {label: results}."""
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for label, overrides in variants(study, config):
    results[label] = run(variant_config(config, overrides), os.path.join(workdir, variant_dir(overrides)))
  dataset = next((r.get("dataset") for r in results.values() if r.get("dataset")), "")
  if jax.process_index() == 0:  # multi-process runs: one writer
    write_outputs(study, results, workdir, baselines(study, config), paper_values(study, config, dataset),
                  intervals(study, config, workdir, results))
  return results


def _rows(results: dict[str, Any], key: str) -> list[tuple[str, dict[str, float]]]:
  return [(label, r[key]["test"] if key == "selected" else r[key]["metrics"]) for label, r in results.items()
          if key in r]


def write_outputs(study: str, results: dict[str, Any], workdir: str, bases: dict[str, str] | None = None,
                  paper: dict[str, tuple[float, float]] | None = None,
                  cis: dict[str, tuple[str, int, dict[str, tuple[float, float]]]] | None = None) -> str:
  """`<study>.md`, `<study>.csv`, `<study>.png` from the variants' results; returns the markdown.

  `bases` maps a variant to the variant its improvement % is computed against; `paper` gives the paper's (P@20,
  MRR@20) of a variant, printed beside ours; `cis` the paired-bootstrap intervals of `intervals`.
  """
  sections, csv_rows = [], []
  for key, title in PROTOCOLS:
    rows = _rows(results, key)
    if not rows:
      continue
    md = report.markdown_table(rows, PAPER_COLUMNS)
    found = dict(rows)
    for label, base_label in (bases or {}).items():
      if label in found and base_label in found:
        m, base = found[label], found[base_label]
        gain = [f"{100.0 * (m[c] - base[c]) / base[c]:+.2f}" if base[c] > 0 else "n/a" for c in PAPER_COLUMNS]
        md += f"\n| improvement % ({label} vs {base_label}) | " + " | ".join(gain) + " |"
    sections.append(f"**{title}** (HR@K is the paper's P@K; percent)\n\n{md}")
    csv_rows += [{"protocol": key, "variant": label, **{c: m[c] for c in PAPER_COLUMNS}} for label, m in rows]
  trained = {label: r for label, r in results.items() if "epochs_run" in r}
  if trained:
    lines = ["| | epochs run | selected epoch | how training ended |", "|---|---:|---:|---|"]
    for label, r in trained.items():
      ended = ("early stopping (patience)" if r.get("stopped_early")
               else f"**epoch cap** (num_epochs {r.get('config', {}).get('num_epochs', '?')})")
      lines.append(f"| {label} | {r['epochs_run']} | {r.get('selected', {}).get('epoch', '')} | {ended} |")
    sections.append("**training** (epochs from 0; the selected epoch is the best on validation)\n\n"
                    + "\n".join(lines))
  if cis:
    lines = ["| | test samples | " + " | ".join(c.upper() for c in PAPER_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(PAPER_COLUMNS)]
    for label, (base, n, ci) in cis.items():
      lines.append(f"| {label} vs {base} | {n} | " + " | ".join(
          f"[{ci[c][0]:+.1f}, {ci[c][1]:+.1f}]" if np.isfinite(ci[c][0]) else "n/a" for c in PAPER_COLUMNS) + " |")
    sections.append("**improvement %, paired bootstrap 95% interval** over the test samples (test @ best valid "
                    "epoch, 1000 resamples; an interval containing 0 is not a significant difference; n/a: the "
                    "compared-with variant scores 0 in some resample)\n\n"
                    + "\n".join(lines))
  if paper:
    lines = ["| | paper P@20 | paper MRR@20 |", "|---|---:|---:|"]
    lines += [f"| {label} | {p20:.2f} | {mrr20:.2f} |" for label, (p20, mrr20) in paper.items()]
    sections.append("**the paper's Table 2** (LLM intents, best epoch on test; ours above use the intents named "
                    "by the config)\n\n" + "\n".join(lines))
  text = f"## {study}\n\n" + "\n\n".join(sections) + "\n"
  with open(os.path.join(workdir, f"{study}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(workdir, f"{study}.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["protocol", "variant", *PAPER_COLUMNS])
    writer.writeheader()
    writer.writerows(csv_rows)
  key = "selected" if any("selected" in r for r in results.values()) else "paper_protocol_best_test"
  plotting.plot_bars(_rows(results, key), ("hr@20", "mrr@20"), os.path.join(workdir, f"{study}.png"),
                     title=f"{study}: {dict(PROTOCOLS)[key]}")
  with open(os.path.join(workdir, f"{study}.json"), "w") as f:
    json.dump({label: {k: r.get(k) for k in ("selected", "paper_protocol_best_test", "epochs_run")}
               for label, r in results.items()}, f, indent=2)
  return text
