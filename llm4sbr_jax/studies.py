"""The paper's experiments as variant sweeps: Table 2 (every backbone bare and inside LLM4SBR), Figure 4 ablation,
Figure 5 f sweep (both on `config.backbone`).

A study is a base config plus named variants (config overrides). Each variant trains in its own sub-workdir named
after its overrides (a rerun resumes or skips finished variants, and studies sharing a workdir share identical
variants, e.g. the ablation's "whole" is Table 2's LLM4SBR run); the study then writes `<name>.md` (markdown table), `<name>.csv` and
`<name>.png` into the workdir. Metrics are reported twice, labelled: test at the best validation epoch, and the
paper's protocol (best epoch on test, each metric separately).
"""

from __future__ import annotations

import copy
import csv
import json
import os
from typing import Any, Callable

from llm4sbr_jax import plotting, report, train
from llm4sbr_jax.models import registry

# The paper's columns ("P@K" is HR@K).
PAPER_COLUMNS = ("hr@5", "hr@10", "hr@20", "mrr@5", "mrr@10", "mrr@20")
PROTOCOLS = (("selected", "test @ best valid epoch"), ("paper_protocol_best_test", "best epoch on test (paper)"))


def variants(study: str, config: Any) -> list[tuple[str, dict[str, Any]]]:
  """(label, overrides) of a study; `config` supplies the values swept (e.g. `config.study_f_values`)."""
  long_short = tuple(config.perspectives)
  backbone = config.backbone
  label = registry.get(backbone).label
  bare = lambda name: {"backbone": name, "llm4sbr": False}
  wrapped = lambda name, **kw: {"backbone": name, "llm4sbr": True, **kw}
  if study == "table2":
    return [row for name in config.get("backbones", (backbone,))
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
  """{variant label: label of the bare backbone it improves on} for the studies that report improvements."""
  if study not in ("table2", "demo"):
    return {}
  out, base = {}, None
  for label, overrides in variants(study, config):
    if overrides["llm4sbr"]:
      out[label] = base
    else:
      base = label
  return out


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
  write_outputs(study, results, workdir, baselines(study, config), paper_values(study, config, dataset))
  return results


def _rows(results: dict[str, Any], key: str) -> list[tuple[str, dict[str, float]]]:
  return [(label, r[key]["test"] if key == "selected" else r[key]["metrics"]) for label, r in results.items()
          if key in r]


def write_outputs(study: str, results: dict[str, Any], workdir: str, bases: dict[str, str] | None = None,
                  paper: dict[str, tuple[float, float]] | None = None) -> str:
  """`<study>.md`, `<study>.csv`, `<study>.png` from the variants' results; returns the markdown.

  `bases` maps a variant to the bare-backbone variant its improvement % is computed against; `paper` gives the
  paper's (P@20, MRR@20) of a variant, printed beside ours.
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
