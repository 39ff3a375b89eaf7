"""Where one training or evaluation step's time goes, any backbone: host packing, transfer, device, XLA ops by group.

  python experiments/profile_step.py --config experiments/configs/default.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.backbone=srgnn --out runs/profile_srgnn

Builds the run exactly as experiments/train.py does (same config, budgets, compiled steps), then over `--steps`
training batches times packing a batch on the host (`graphs.pack`), moving it to the devices, the compiled step
alone (on an already transferred batch, blocking) and the loop as training runs it; then traces `--steps` more
steps with `jax.profiler` and sums every XLA op's time by (forward / backward, Flax module path, primitive)
(`llm4sbr_jax/profiling.py`). `--step=eval` does the same for the evaluation step (scores, ranks, metric sums) on
the test split's evaluation batches (balanced order, evaluation budget).
Prints and writes profile.md / profile.json to --out; the trace (TensorBoard / Perfetto) and the compiled step's
HLO (step.hlo.txt, whose instruction names the trace events carry) stay there too.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import profiling, train  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config.")
_OUT = flags.DEFINE_string("out", "runs/profile", "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (and as many traced ones).")
_DEPTH = flags.DEFINE_integer("depth", 2, "Module path components per op group.")
_TOP = flags.DEFINE_integer("top", 25, "Op groups listed.")
_STEP = flags.DEFINE_enum("step", "train", ["train", "eval"], "Which compiled step to profile.")
flags.mark_flags_as_required(["config"])


def _mean_ms(fn, n):
  times = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    times.append(1000 * (time.perf_counter() - t))
  return float(np.mean(times))


def _cycle(exp):
  """Evaluation batches (test, else validation) as evaluation packs them, over and over."""
  split = "test" if "test" in exp.eval_orders else "valid"
  while True:
    yield from exp.eval_batches(split)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("llm4sbr_jax").setLevel(logging.INFO)
  exp = train.Experiment(_CONFIG.value)
  config = exp.config  # with the backbone's official settings
  n, steps = len(exp.splits["train"]), _STEPS.value
  order = np.random.default_rng(0).permutation(n)
  batches = exp.batches("train", order) if _STEP.value == "train" else _cycle(exp)
  state = exp.runner.replicate(exp.init_state())
  host = [next(batches)[0] for _ in range(2 * steps + 1)]
  pack_ms = _mean_ms(lambda: next(batches), steps)
  put_ms = _mean_ms(lambda: jax.block_until_ready(exp.runner.put_batch(host[0])), steps)
  state = {"train": state}
  lr = np.float32(config.lr)
  compiled = exp.runner._compiled  # pylint: disable=protected-access

  def run_compiled(b):  # the compiled step alone, on a batch already on the devices
    if _STEP.value == "eval":
      return compiled["eval"](state["train"].params, b)
    state["train"], report = compiled["train"](state["train"], b, lr)
    return report

  def run_loop(b):  # what training / evaluation does per batch: transfer, dispatch, bounded in flight
    if _STEP.value == "eval":
      return exp.runner.eval_step(state["train"].params, b)
    state["train"], report = exp.runner.train_step(state["train"], b, config.lr)
    return report

  jax.block_until_ready(run_loop(host[0]))  # warm
  on_device = [exp.runner.put_batch(b) for b in host[1:steps + 1]]
  jax.block_until_ready(on_device)
  times = []
  for b in on_device:
    t = time.perf_counter()
    jax.block_until_ready(run_compiled(b))
    times.append(1000 * (time.perf_counter() - t))
  device_ms = float(np.mean(times))
  t = time.perf_counter()
  for b in host[steps + 1:]:  # the real loop: pack-ahead iterator, transfer and step overlapped
    out = run_loop(b)
  jax.block_until_ready(out)
  loop_ms = 1000 * (time.perf_counter() - t) / steps
  trace_dir = os.path.join(_OUT.value, "trace")
  on_device = [exp.runner.put_batch(b) for b in host[1:steps + 1]]
  jax.block_until_ready(on_device)
  jax.profiler.start_trace(trace_dir)
  for b in on_device:
    out = run_compiled(b)
  jax.block_until_ready(out)
  jax.profiler.stop_trace()
  hlo = compiled[_STEP.value].as_text()
  Path(_OUT.value, "step.hlo.txt").write_text(hlo)  # event names in the trace are this module's instructions
  groups = profiling.op_times(profiling.trace_events(trace_dir), profiling.op_names(hlo), _DEPTH.value)
  per_step = {k: v / steps for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
  traced = sum(per_step.values())
  calls = profiling.custom_calls(hlo)
  called = ", ".join(f"{k} x{v}" for k, v in sorted(calls.items())) or "none"
  lines = [f"# Profile: {train.model_label(config)} on {exp.dataset.name}, batch {config.batch_size}, "
           f"{exp.runner.num_devices} x {jax.local_devices()[0].device_kind}", "",
           f"| per {_STEP.value} step | ms |", "|---|---:|",
           f"| host: pack one batch | {pack_ms:.2f} |", f"| host -> device transfer | {put_ms:.2f} |",
           f"| device step alone (batch on device, blocking) | {device_ms:.2f} |",
           f"| {_STEP.value} loop (pack ahead, transfer, step) | {loop_ms:.2f} |",
           f"| sum of traced XLA ops | {traced:.2f} |",
           f"| device step not in the trace (custom calls per step: {called}) | {device_ms - traced:.2f} |", "",
           f"| op group (phase module: primitive) | ms / step | % of ops |", "|---|---:|---:|"]
  for k, v in list(per_step.items())[:_TOP.value]:
    lines.append(f"| {k} | {v:.2f} | {100 * v / max(traced, 1e-9):.1f} |")
  text = "\n".join(lines)
  print(text)
  os.makedirs(_OUT.value, exist_ok=True)
  Path(_OUT.value, "profile.md").write_text(text + "\n")
  Path(_OUT.value, "profile.json").write_text(json.dumps(
      {"pack_ms": pack_ms, "transfer_ms": put_ms, "device_step_ms": device_ms, "loop_step_ms": loop_ms,
       "ops_ms_per_step": per_step, "untraced_ms": device_ms - traced, "custom_calls": calls, "steps": steps,
       "step": _STEP.value, "config": config.to_dict()}, indent=2))


if __name__ == "__main__":
  app.run(main)
