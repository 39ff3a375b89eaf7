"""Runs one of the paper's experiments (a study config) and writes its markdown table, CSV and PNG.

  python experiments/paper.py --config experiments/configs/table2.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty_items \
    --config.intents.source item_text --workdir runs/table2_beauty_item_text

Each variant trains in `<workdir>/<variant>/` and resumes there on a rerun.
"""

import logging
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import multiprocess  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import studies, train  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "A study config (table2, ablation, fsweep).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory of the study.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    multiprocess.initialize()
  except ValueError as e:
    sys.exit(f"error: {e}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("llm4sbr_jax").setLevel(logging.INFO)
  config = _CONFIG.value
  try:
    studies.run_study(config.study, config, _WORKDIR.value)
  except train.EXPECTED_ERRORS as e:
    sys.exit(f"error: {e}")
  print((Path(_WORKDIR.value) / f"{config.study}.md").read_text())


if __name__ == "__main__":
  app.run(main)
