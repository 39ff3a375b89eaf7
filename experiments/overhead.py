"""Table 3 memory and LLM4SBR overhead: a backbone bare vs inside LLM4SBR, training steps side by side, one run.

  python experiments/overhead.py --config experiments/configs/llm4sbr.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty_items \
    --config.intents.source item_text --out runs/overhead_beauty        # --config.backbone=gcegnn: another backbone

Each model runs in its own child process (same data, batch and hidden size): compile time (init, train and eval
steps), training step time over `--steps` batches, peak memory (the accelerator's peak bytes in use when there is one, else peak host RSS), and the
bytes of the intent arrays LLM4SBR holds. Reports the step-time ratio (target <= 1.1x) and the memory difference
next to the intent bytes. Writes overhead.md, overhead.csv (every run), overhead.png and overhead.json.
"""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None, "An LLM4SBR config (its llm4sbr field is overridden).")
_STEPS = flags.DEFINE_integer("steps", 200, "Timed training steps per model.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Alternating child runs per model (the best step time is kept).")
_OUT = flags.DEFINE_string("out", "runs/overhead", "Output directory.")
_CHILD = flags.DEFINE_string("child", "", "Internal: measure 'bare' or 'llm4sbr' and print JSON.")
flags.mark_flags_as_required(["config"])


def measure(config):
  """Trains `_STEPS` batches of `config` and returns timings and peak memory."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from llm4sbr_jax import hostmem, train  # pylint: disable=g-import-not-at-top
  model = train.model_label(config)
  t = time.perf_counter()
  exp = train.Experiment(config)
  setup = time.perf_counter() - t
  setup_rss = hostmem.rss_mb()  # compiled, data and intents loaded
  state = exp.runner.replicate(exp.init_state())
  order = np.random.default_rng(0).permutation(len(exp.splits["train"]))
  batches = exp.batches("train", order)
  first, _ = next(batches)
  state, report = exp.runner.train_step(state, first, 1e-3)  # warm-up (already compiled by Experiment)
  jax.block_until_ready(report)
  t, n = time.perf_counter(), 0
  for _ in range(_STEPS.value):
    batch, real = next(batches)
    state, report = exp.runner.train_step(state, batch, 1e-3)
    n += real
  jax.block_until_ready(report)
  seconds = time.perf_counter() - t
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  return {"model": model, "setup_s": setup, "compile_s": exp.compile_seconds, "step_ms": 1000 * seconds / _STEPS.value,
          "sessions_per_s": n / seconds, "intent_bytes": int(sum(a.nbytes for a in exp.side.values())),
          "rss_after_setup_mb": setup_rss, "peak_host_rss_mb": hostmem.peak_rss_mb(),
          "peak_device_mb": stats["peak_bytes_in_use"] / 2**20 if stats else None, "device": device.device_kind}


def main(argv):
  del argv
  config = _CONFIG.value
  if _CHILD.value:
    with config.unlocked():
      config.llm4sbr = _CHILD.value == "llm4sbr"
    print("RESULT " + json.dumps(measure(config)))
    return
  runs = {"bare": [], "llm4sbr": []}
  for _ in range(_REPEATS.value):
    for model in runs:
      cmd = [sys.executable, __file__, *sys.argv[1:], f"--child={model}"]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        raise RuntimeError(f"{model} failed:\n{proc.stderr[-3000:]}")
      runs[model].append(json.loads(line[0][7:]))
  best = {m: min(r, key=lambda x: x["step_ms"]) for m, r in runs.items()}
  base, llm = best["bare"], best["llm4sbr"]
  mem = "peak_device_mb" if base["peak_device_mb"] is not None else "peak_host_rss_mb"
  summary = {"step_ratio": llm["step_ms"] / base["step_ms"], "memory_kind": mem,
             "extra_memory_mb": llm[mem] - base[mem], "intent_mb": llm["intent_bytes"] / 2**20,
             "runs": runs, "best": best}
  lines = ["| model | step (ms) | sessions/s | compile (s) | host RSS after setup (MB) | " + mem +
           " | intent arrays (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in best.values():
    lines.append(f"| {r['model']} | {r['step_ms']:.2f} | {r['sessions_per_s']:.0f} | {r['compile_s']:.2f} | "
                 f"{r['rss_after_setup_mb']:.0f} | {r[mem]:.0f} | {r['intent_bytes'] / 2**20:.1f} |")
  lines.append(f"\n{llm['model']} / {base['model']} step time: **{summary['step_ratio']:.3f}x**; extra memory "
               f"{summary['extra_memory_mb']:.0f} MB vs intent arrays {summary['intent_mb']:.0f} MB "
               f"(batch {config.batch_size}, hidden {config.hidden}, best of {_REPEATS.value} runs each).")
  text = "\n".join(lines)
  print(text)
  os.makedirs(_OUT.value, exist_ok=True)
  Path(_OUT.value, "overhead.md").write_text(text + "\n")
  Path(_OUT.value, "overhead.json").write_text(json.dumps(summary, indent=2))
  with open(Path(_OUT.value, "overhead.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, ["run", *runs["bare"][0]])
    writer.writeheader()
    for m, rs in runs.items():
      writer.writerows({"run": i, **r} for i, r in enumerate(rs))
  from llm4sbr_jax import plotting  # pylint: disable=g-import-not-at-top
  plotting.plot_overhead({r['model']: r for r in best.values()}, mem, str(Path(_OUT.value, "overhead.png")),
                         title=f"LLM4SBR overhead on {Path(config.dataset_dir).name} (batch {config.batch_size})")


if __name__ == "__main__":
  app.run(main)
