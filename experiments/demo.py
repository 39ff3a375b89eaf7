"""The offline end-to-end demo: toy shop -> stage 1 (SmolLM2 + MiniLM) -> SR-GNN vs LLM4SBR(SR-GNN) -> explain.

  python experiments/demo.py [--workdir runs/demo] [--config experiments/configs/demo.py]

Everything runs offline on CPU. Rerunning resumes: finished stage-1 shards and finished trainings are kept.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from llm4sbr_jax import explain, intents, studies, toyshop  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", str(REPO / "experiments" / "configs" / "demo.py"), "Demo config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
_THREADS = flags.DEFINE_integer("threads", os.cpu_count() or 1, "torch CPU threads for stage 1.")


def _step(title):
  print(f"\n=== {title}", flush=True)
  return time.perf_counter()


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("llm4sbr_jax").setLevel(logging.WARNING)
  config, workdir = _CONFIG.value, Path(_WORKDIR.value)
  data_dir, stage1_dir = workdir / "toyshop", workdir / "stage1"
  start = t = _step(f"1/4 toy shop: {config.toyshop_sessions} sessions (seed {config.toyshop_seed})")
  ds = toyshop.build_toyshop(str(data_dir), seed=config.toyshop_seed, num_sessions=config.toyshop_sessions)
  print(f"{ds.num_items} items; samples " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
        + f"  ({time.perf_counter() - t:.1f}s)")

  t = _step("2/4 stage 1: SmolLM2-135M-Instruct answers + all-MiniLM-L6-v2 embeddings (offline packages)")
  subprocess.run([sys.executable, "-m", "third_party_infer", "--dataset_dir", str(data_dir), "--out_dir",
                  str(stage1_dir), "--offline", "--num_threads", str(_THREADS.value), "--batch_size", "16"],
                 check=True, cwd=REPO)
  print(f"stage 1: {time.perf_counter() - t:.0f}s")

  t = _step("3/4 stage 2: SR-GNN vs LLM4SBR(SR-GNN) (LLM intents; item-text intents as the LLM-free baseline)")
  with config.unlocked():
    config.dataset_dir, config.intents.stage1_dir = str(data_dir), str(stage1_dir)
  studies.run_study("demo", config, str(workdir / "stage2"))
  print((workdir / "stage2" / "demo.md").read_text())
  print(f"stage 2: {time.perf_counter() - t:.0f}s; table, CSV and plot in {workdir / 'stage2'}")

  _step("4/4 what the LLM inferred for one test session")
  s1 = intents.open_stage1(str(stage1_dir), ds)
  print(explain.explain(ds, s1, "test", 0, config.intents.f))
  print(f"\ndemo finished in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  app.run(main)
