"""Output layout of a stage-1 job, atomic writes, and the final manifest.

Layout of an output directory::

    job.json                        the job's settings; a rerun with other settings is refused
    item_embeddings.npy             float [num_items + 1, dim]; row i = item i, row 0 = zeros (padding)
    shards/<split>/<k:05d>/         one finished shard (written as <k:05d>.tmp/, renamed when complete)
        rows.npy                    int64 [m]  the split's sample indices held by the shard, increasing
        answers.jsonl               one line per row and perspective: row, perspective, prompt, raw, answer, item
        <perspective>.npy           float [m, dim] answer embeddings, row-aligned with rows.npy
        <perspective>.items.npy     int32 [m] the item an answer names exactly (raw id or name_rawid), 0 if none
        meta.json                   sha256 of every file above plus timing statistics
    manifest.json                   written last, after checking that every shard is there (see `finalize`)
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax.raw import file_digest

FORMAT_VERSION = 1
ITEM_EMBEDDINGS = "item_embeddings.npy"


class Stage1Error(RuntimeError):
  """A stage-1 output directory is inconsistent or incomplete."""


def sha256_file(path: str) -> str:
  return file_digest(path, "sha256")


def write_json(path: str, obj: Any) -> None:
  """Writes JSON to `path` atomically (temporary sibling, then rename)."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
  os.replace(path + ".tmp", path)


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


save_npy = dataset_lib.save_npy  # atomic, no pickle


def shard_dir(out_dir: str, split: str, index: int) -> str:
  return os.path.join(out_dir, "shards", split, f"{index:05d}")


def perspective_file(perspective: str) -> str:
  return f"{perspective}.npy"


def named_items_file(perspective: str) -> str:
  return f"{perspective}.items.npy"


def finalize(out_dir: str, plan: dict[str, list[np.ndarray]]) -> dict:
  """Checks that every planned shard and the item embeddings are complete, then writes `manifest.json`.

  Args:
    out_dir: the job's output directory (holding `job.json`).
    plan: split -> list of each shard's rows, as the job planned them.

  Returns:
    The manifest.

  Raises:
    Stage1Error: a shard or file is missing, or does not match its checksum or the plan.
  """
  job = read_json(os.path.join(out_dir, "job.json"))
  items_path = os.path.join(out_dir, ITEM_EMBEDDINGS)
  # The item embeddings are written by the process with --shard_index 0.
  missing = [] if os.path.isfile(items_path) else [ITEM_EMBEDDINGS]
  shards, metas = [], []
  for split, shard_rows in plan.items():
    for k, rows in enumerate(shard_rows):
      d = shard_dir(out_dir, split, k)
      if not os.path.isfile(os.path.join(d, "meta.json")):
        missing.append(os.path.relpath(d, out_dir))
        continue
      meta = read_json(os.path.join(d, "meta.json"))
      for name, digest in meta["sha256"].items():
        if sha256_file(os.path.join(d, name)) != digest:
          raise Stage1Error(f"{d}/{name}: checksum mismatch; delete {d} and rerun")
      if not np.array_equal(np.load(os.path.join(d, "rows.npy"), allow_pickle=False), rows):
        raise Stage1Error(f"{d}/rows.npy: rows differ from the job's plan; delete {d} and rerun")
      rel = os.path.relpath(d, out_dir)
      for p in job["prompt"]["perspectives"]:
        shards.append({"split": split, "perspective": p, "file": f"{rel}/{perspective_file(p)}",
                       "sha256": meta["sha256"][perspective_file(p)], "rows_file": f"{rel}/rows.npy",
                       "rows_sha256": meta["sha256"]["rows.npy"], "answers_file": f"{rel}/answers.jsonl",
                       "row_start": int(rows[0]), "row_end": int(rows[-1]) + 1, "num_rows": len(rows)})
        if named_items_file(p) in meta["sha256"]:  # shards written before the id-answer matching have none
          shards[-1].update(items_file=f"{rel}/{named_items_file(p)}", items_sha256=meta["sha256"][named_items_file(p)])
      metas.append(meta)
  if missing:
    raise Stage1Error(f"{out_dir}: {len(missing)} output(s) not finished yet, e.g. {missing[:3]}; run the remaining "
                      "--shard_index values, then --finalize_only")
  items = np.load(items_path, mmap_mode="r", allow_pickle=False)
  manifest = {
      "format_version": FORMAT_VERSION,
      "dataset": job["dataset"],
      "dataset_fingerprint": job["dataset"]["fingerprint"],
      "splits": list(plan),
      "coverage": job["coverage"],
      "perspectives": list(job["prompt"]["perspectives"]) if not job["items_only"] else [],
      "prompt": job["prompt"],
      "llm": {**job["llm"], **(metas[0]["llm"] if metas else {})} if not job["items_only"] else None,
      "encoder": job["encoder"],
      "dim": int(items.shape[1]),
      "dtype": str(items.dtype),
      "item_embeddings": {"file": ITEM_EMBEDDINGS, "sha256": sha256_file(items_path), "shape": list(items.shape)},
      "shards": shards,
      "stats": _total_stats(metas),
  }
  write_json(os.path.join(out_dir, "manifest.json"), manifest)
  return manifest


def _total_stats(metas: list[dict]) -> dict:
  """Sums the shards' timing statistics."""
  if not metas:
    return {}
  keys = ("prompts", "unique_prompts", "prompt_tokens", "prompt_tokens_computed", "generate_seconds", "texts",
          "unique_texts", "encode_seconds")
  total = {k: sum(m["stats"][k] for m in metas) for k in keys if all(k in m["stats"] for m in metas)}
  if all("named_item_answers" in m["stats"] for m in metas):  # answers that are exactly an item's id, per perspective
    total["named_item_answers"] = {p: sum(m["stats"]["named_item_answers"][p] for m in metas)
                                   for p in metas[0]["stats"]["named_item_answers"]}
  total["prompts_per_s"] = total["prompts"] / max(total["generate_seconds"], 1e-9)
  total["encoded_texts_per_s"] = total["unique_texts"] / max(total["encode_seconds"], 1e-9)
  return total
