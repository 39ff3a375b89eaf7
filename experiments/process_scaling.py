"""One process over D devices vs D processes over one device each: sessions/s, step time, and what crossing
process boundaries costs per step (the gradient all-reduce over gloo on CPU, NCCL on GPUs).

  python experiments/process_scaling.py --dataset_dir data/processed/beauty_paper_valid --max_train_samples 60000

Each layout trains one epoch of the same global batches with `experiments/train.py` (fresh workdirs under --out;
processes talk over 127.0.0.1). On one machine the layouts share the same cores, so the difference in step time is
the communication overhead, not a speed-up. Also reported: the bytes each step all-reduces (every parameter's
gradient, float32; item tables split with `shard_items` move differently and are not covered here). Writes
process_scaling.md / .json in --out.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset.")
_BACKBONE = flags.DEFINE_string("backbone", "srgnn", "Backbone (models/registry.py).")
_MAX_TRAIN = flags.DEFINE_integer("max_train_samples", 60000, "Training samples of the one epoch (0 = all).")
_DEVICES = flags.DEFINE_integer("devices", 2, "Devices in all (one process of D, or D processes of 1).")
_OUT = flags.DEFINE_string("out", "runs/process_scaling", "Output directory.")
flags.mark_flags_as_required(["dataset_dir"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(workdir: Path, processes: int, devices_each: int) -> dict:
  """One epoch in `processes` local processes of `devices_each` CPU devices; process 0's epoch record."""
  shutil.rmtree(workdir, ignore_errors=True)
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}"}
  cmd = [sys.executable, str(REPO / "experiments" / "train.py"), "--config",
         str(REPO / "experiments" / "configs" / "default.py"), f"--config.dataset_dir={_DATASET_DIR.value}",
         f"--config.backbone={_BACKBONE.value}", f"--config.max_train_samples={_MAX_TRAIN.value}",
         "--config.num_epochs=1", "--config.progress=False", f"--workdir={workdir}"]
  port = _free_port()
  multi = lambda i: ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                      f"--process_id={i}"] if processes > 1 else [])
  t = time.perf_counter()
  procs = [subprocess.Popen(cmd + multi(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  outs = [p.communicate()[0] for p in procs]
  for p, out in zip(procs, outs):
    if p.returncode:
      sys.exit(f"{processes} x {devices_each}: train.py failed:\n{out[-3000:]}")
  record = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  return {"processes": processes, "devices_per_process": devices_each, "wall_s": time.perf_counter() - t,
          "sessions_per_s": record["sessions_per_s"], "first_step_s": record["first_step_s"]}


def _gradient_bytes(workdir: Path) -> int:
  """float32 bytes of every parameter (what the step's gradient psum moves), from the run's saved checkpoint."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
  params = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]["params"]
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))) * 4


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  d = _DEVICES.value
  rows = [_run(out / f"p1_d{d}", 1, d), _run(out / f"p{d}_d1", d, 1)]
  batch = 100  # the default global batch
  for r in rows:
    r["step_ms"] = 1000.0 * batch / r["sessions_per_s"]
  overhead = rows[1]["step_ms"] - rows[0]["step_ms"]
  grad_bytes = _gradient_bytes(out / f"p1_d{d}")
  lines = [f"{_BACKBONE.value} on {_DATASET_DIR.value}, global batch {batch}, one epoch of "
           f"{_MAX_TRAIN.value or 'all'} training samples", "",
           "| layout | train sess/s | step (ms) | first step (s) | wall (s) |", "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['processes']} process(es) x {r['devices_per_process']} device(s) | {r['sessions_per_s']:.0f} "
                 f"| {r['step_ms']:.2f} | {r['first_step_s']:.2f} | {r['wall_s']:.1f} |")
  lines += ["", f"Cross-process overhead per step: {overhead:+.2f} ms ({100 * overhead / rows[0]['step_ms']:+.1f}%); "
            f"gradient all-reduced per step: {grad_bytes / 2**20:.2f} MB (float32, every parameter)."]
  text = "\n".join(lines)
  print(text)
  (out / "process_scaling.md").write_text(text + "\n")
  (out / "process_scaling.json").write_text(json.dumps({"rows": rows, "overhead_ms": overhead,
                                                        "gradient_bytes": grad_bytes}, indent=2))


if __name__ == "__main__":
  app.run(main)
