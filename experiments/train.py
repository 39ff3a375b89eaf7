"""Trains a session recommender on a processed dataset; resumes from --workdir by default.

  python experiments/train.py --config experiments/configs/default.py \
    --config.dataset_dir data/processed/beauty_paper_valid --workdir runs/srgnn_beauty
"""

import sys
from pathlib import Path

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import multiprocess  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import report, train  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    multiprocess.initialize()
  except ValueError as e:
    sys.exit(f"error: {e}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint step at INFO
  logging.getLogger("llm4sbr_jax").setLevel(logging.INFO)
  try:
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.EXPECTED_ERRORS as e:
    sys.exit(f"error: {e}")
  print(report.results_table(results))
  print(f"\nresults: {Path(_WORKDIR.value) / 'results.json'}")


if __name__ == "__main__":
  app.run(main)
