"""Writes the samples of N randomly chosen sessions (users) of a processed dataset as a new processed dataset.

  python experiments/subset_data.py --dataset_dir data/processed/beauty_paper_valid --num_sessions 100 \
    --out_dir data/processed/beauty_subset100

Splits and item ids are those of the parent; `dataset.json` records the parent fingerprint and the session ids.
For stage-1 runs that cannot cover a whole dataset: train and compare every model on the same subset.
"""

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset, preprocess  # pylint: disable=g-import-not-at-top

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Parent processed dataset directory.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory.")
_NUM = flags.DEFINE_integer("num_sessions", None, "Number of sessions to keep.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the session draw.")
flags.mark_flags_as_required(["dataset_dir", "out_dir", "num_sessions"])


def main(argv):
  del argv
  sub = preprocess.subset_sessions(dataset.load_dataset(_DATASET_DIR.value), _NUM.value, _SEED.value)
  fp = dataset.save_dataset(sub, _OUT_DIR.value)
  sizes = ", ".join(f"{k} {len(s)}" for k, s in sub.splits.items())
  print(f"{_OUT_DIR.value}: {_NUM.value} sessions, samples {sizes}; fingerprint {fp[:12]}")


if __name__ == "__main__":
  app.run(main)
