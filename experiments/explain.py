"""Shows what stage 1 inferred for one sample: the session, each perspective's LLM answer, and its localized items.

  python experiments/explain.py --dataset_dir data/processed/beauty_paper \
    --stage1_dir data/stage1/beauty_smol_test200 --split test --index 17 --f 5

--index is the split's sample index (it must be covered by the stage-1 output); repeat it for several samples.
--summary prints, per perspective, the share of answers that exactly name a catalog item and ten example answers.
"""

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import explain, intents

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset directory.")
_STAGE1_DIR = flags.DEFINE_string("stage1_dir", None, "Stage-1 output directory.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the sample.")
_INDEX = flags.DEFINE_multi_integer("index", [0], "Sample index in the split (repeatable).")
_F = flags.DEFINE_integer("f", 5, "Localization top-f.")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print answer statistics and examples per perspective.")
flags.mark_flags_as_required(["dataset_dir", "stage1_dir"])


def main(argv):
  del argv
  ds = dataset_lib.load_dataset(_DATASET_DIR.value)
  s1 = intents.open_stage1(_STAGE1_DIR.value, ds)
  if _SUMMARY.value:
    print(explain.summary(ds, s1, _SPLIT.value))
  for index in _INDEX.value:
    print(explain.explain(ds, s1, _SPLIT.value, index, _F.value))


if __name__ == "__main__":
  app.run(main)
