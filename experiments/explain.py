"""Shows what stage 1 inferred for one sample: the session, each perspective's LLM answer, and its localized items.

  python experiments/explain.py --dataset_dir data/processed/beauty_paper \
    --stage1_dir data/stage1/beauty_smol_test200 --split test --index 17 --f 5

--index is the split's sample index (it must be covered by the stage-1 output); repeat it for several samples.
--summary prints, per perspective, the share of answers that exactly name a catalog item and ten example answers.
"""

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import intents

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset directory.")
_STAGE1_DIR = flags.DEFINE_string("stage1_dir", None, "Stage-1 output directory.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the sample.")
_INDEX = flags.DEFINE_multi_integer("index", [0], "Sample index in the split (repeatable).")
_F = flags.DEFINE_integer("f", 5, "Localization top-f.")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print answer statistics and examples per perspective.")
flags.mark_flags_as_required(["dataset_dir", "stage1_dir"])


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


def main(argv):
  del argv
  ds = dataset_lib.load_dataset(_DATASET_DIR.value)
  s1 = intents.open_stage1(_STAGE1_DIR.value, ds)
  if _SUMMARY.value:
    print(summary(ds, s1, _SPLIT.value))
  for index in _INDEX.value:
    print(explain(ds, s1, _SPLIT.value, index, _F.value))


if __name__ == "__main__":
  app.run(main)
