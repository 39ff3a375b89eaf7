"""Readable explanations of stage 1: the session, each perspective's LLM answer and its top-f localized items (or
the item the answer names by its id, which stage 2 uses as the intent)."""

from __future__ import annotations

import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import intents


def explain(ds: dataset_lib.ProcessedDataset, s1: intents.Stage1, split: str, index: int, f: int) -> str:
  """A readable report of sample `index` of `split`."""
  s = ds.splits[split]
  lines = [f"== {split} sample {index} ({s.lengths[index]} items; next item: "
           f"{ds.item_names[s.targets[index]]} [{ds.raw_item_ids[s.targets[index]]}])"]
  lines += [f"  {k}. {ds.item_names[i]} [{ds.raw_item_ids[i]}]" for k, i in enumerate(s.prefix(index), 1)]
  items = s1.item_embeddings()
  for p in s1.perspectives:
    pos = np.flatnonzero(s1.rows(split, p) == index)
    if not pos.size:
      raise intents.IntentsError(f"{split} sample {index} is not covered by {s1.directory}")
    pos = int(pos[0])
    answer = s1.answer_records(split, p)[index]["answer"]
    lines.append(f"  [{p}] LLM answer: {answer!r}")
    named = int(s1.named_items(split, p)[pos])
    if named:  # stage 1 matched the answer to this item exactly: it is the intent, for every f
      lines.append(f"      names item  w=1.000  {ds.item_names[named]} [{ds.raw_item_ids[named]}]")
      continue
    ids, weights, _ = intents.top_f(s1.answers(split, p)[pos:pos + 1], items, f)
    for rank, (i, w) in enumerate(zip(ids[0], weights[0]), 1):
      lines.append(f"      top-{rank}  w={w:.3f}  {ds.item_names[i]} [{ds.raw_item_ids[i]}]")
  return "\n".join(lines)


def summary(ds: dataset_lib.ProcessedDataset, s1: intents.Stage1, split: str, examples: int = 10) -> str:
  """Per perspective: how many answers name a catalog item (exactly, ignoring case, or its start), and examples."""
  names = set(ds.item_names[1:])
  lower = {n.lower() for n in names}
  lines = []
  for p in s1.perspectives:
    answers = [r["answer"] for _, r in sorted(s1.answer_records(split, p).items())]
    exact = sum(a in names for a in answers)
    nocase = sum(a.lower() in lower for a in answers)
    # A cut answer (max_new_tokens) may still start a catalog name.
    prefix = sum(bool(a) and any(n.startswith(a) for n in names) for a in answers)
    lines.append(f"[{p}] {len(answers)} answers, {len(set(answers))} distinct; exact catalog name: {exact} "
                 f"({exact / len(answers):.1%}); ignoring case: {nocase} ({nocase / len(answers):.1%}); "
                 f"start of a catalog name: {prefix} ({prefix / len(answers):.1%}); "
                 f"empty: {sum(not a for a in answers)}")
    lines += [f"    {a!r}" for a in answers[:examples]]
  return "\n".join(lines)
