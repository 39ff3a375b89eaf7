"""Readable result tables (markdown) from results dicts."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

COLUMNS = ("hr@5", "hr@10", "hr@20", "mrr@5", "mrr@10", "mrr@20", "ndcg@5", "ndcg@10", "ndcg@20")


def markdown_table(rows: Sequence[tuple[str, Mapping[str, float]]], columns: Sequence[str] = COLUMNS) -> str:
  """A markdown table: one row per (label, metrics), metrics in percent with 2 decimals (blank when absent)."""
  head = "| | " + " | ".join(c.upper() for c in columns) + " |"
  sep = "|---|" + "---:|" * len(columns)
  body = ["| " + label + " | " + " | ".join(f"{m[c]:.2f}" if c in m else "" for c in columns) + " |" for label, m in rows]
  return "\n".join([head, sep] + body)


def results_table(results: Mapping[str, Any]) -> str:
  """The two result rows of a run: validation-selected test metrics and the paper's best-epoch-on-test."""
  rows = []
  if "selected" in results:
    rows.append((f"test @ best valid epoch ({results['selected']['epoch']})", results["selected"]["test"]))
  if "paper_protocol_best_test" in results:
    rows.append(("paper protocol: best epoch on test", results["paper_protocol_best_test"]["metrics"]))
  return markdown_table(rows)
