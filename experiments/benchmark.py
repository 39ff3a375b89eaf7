"""SR-GNN speed benchmark: llm4sbr-jax vs a PyTorch SR-GNN built like the official code, side by side, one run.

  python experiments/benchmark.py                        # both shapes, both frameworks
  python experiments/benchmark.py --shapes=beauty --torch_batches=10

Data: synthetic sessions shaped like Beauty (12,101 items, mean prefix length 8.7) and ML-1M (3,416 items, mean
prefix length 17.6, max 200) at batch 100 / hidden 100. Each (framework, shape) runs in its own child process so
peak RSS is its own. Reported: training and evaluation sessions/s (the first step, which compiles, timed apart as
compile time), peak RSS, and the JAX / PyTorch ratios. The PyTorch side builds every batch the official way (per-sample
Python loop, padding to the split's longest prefix, dense adjacency) and runs torch with `--torch_threads` threads.
Runs unchanged on a GPU (JAX picks it up; torch uses CUDA when available). Writes a markdown table and JSON.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import hostmem  # pylint: disable=wrong-import-position  (stdlib only: no jax/torch import)

_SHAPES = flags.DEFINE_list("shapes", ["beauty", "ml-1m"], "Dataset shapes (llm4sbr_jax.synthetic.SHAPES).")
_SAMPLES = flags.DEFINE_integer("samples", 30000, "Synthetic prefix samples per shape.")
_JAX_BATCHES = flags.DEFINE_integer("jax_batches", 100, "Timed JAX training batches.")
_TORCH_BATCHES = flags.DEFINE_integer("torch_batches", 15, "Timed PyTorch training batches.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the baseline.")
_OUT = flags.DEFINE_string("out", "runs/benchmark", "Output directory (benchmark.json, benchmark.md).")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one 'framework:shape' measurement and print JSON.")
BATCH, HIDDEN = 100, 100


def _data(shape):
  from llm4sbr_jax import synthetic  # pylint: disable=g-import-not-at-top
  num_items, mean_len, max_len = synthetic.SHAPES[shape]
  ds = synthetic.make_dataset(num_items, _SAMPLES.value, mean_len, max_len, seed=0, valid_fraction=0.0)
  return ds, num_items


def measure_jax(shape):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from llm4sbr_jax import graphs, metrics, parallel, tasks  # pylint: disable=g-import-not-at-top
  ds, _ = _data(shape)
  train, test = ds.splits["train"], ds.splits["test"]
  t = time.perf_counter()
  g_train, g_test = graphs.build_session_graphs(train), graphs.build_session_graphs(test)
  graph_seconds = time.perf_counter() - t
  devices = jax.local_devices()
  budget = graphs.compute_budget([g_train, g_test], BATCH // len(devices))
  config = default.get_config()
  config.hidden = HIDDEN
  task = tasks.build_task(config, ds)  # the bare SR-GNN, as experiments/train.py builds it
  tx = parallel.make_optimizer(config.weight_decay)
  runner = parallel.Runner("shard_map", task.terms, task.spec, tx, metrics.batch_metric_sums, devices)
  order = np.random.default_rng(0).permutation(len(train))
  batches = graphs.iterate_batches(g_train, order, budget, len(devices))
  first, real = next(batches)
  params = jax.device_get(task.init(jax.random.PRNGKey(0), jax.tree_util.tree_map(lambda x: x[0], first)))
  state = runner.replicate(parallel.init_state(params, tx))
  t = time.perf_counter()
  state, report = runner.train_step(state, first, 1e-3)
  jax.block_until_ready(report)
  compile_train = time.perf_counter() - t
  sessions, t = 0, time.perf_counter()
  for _ in range(_JAX_BATCHES.value):
    batch, real = next(batches)
    state, report = runner.train_step(state, batch, 1e-3)
    sessions += real
  jax.block_until_ready(report)
  train_rate = sessions / (time.perf_counter() - t)
  eval_batches = graphs.iterate_batches(g_test, np.arange(len(test)), budget, len(devices))
  first, _ = next(eval_batches)
  t = time.perf_counter()
  jax.block_until_ready(runner.eval_step(state.params, first))
  compile_eval = time.perf_counter() - t
  sessions, t = 0, time.perf_counter()
  for batch, real in eval_batches:
    out = runner.eval_step(state.params, batch)
    sessions += real
  jax.block_until_ready(out)
  return {"train_sessions_per_s": train_rate, "eval_sessions_per_s": sessions / (time.perf_counter() - t),
          "compile_train_s": compile_train, "compile_eval_s": compile_eval, "graph_build_s": graph_seconds,
          "budget": vars(budget), "mean_prefix_len": float(train.lengths.mean()),
          "max_prefix_len": int(train.lengths.max()), "device": str(devices[0].device_kind),
          "num_devices": len(devices), "peak_rss_mb": hostmem.peak_rss_mb()}


def measure_torch(shape):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from experiments.torch_srgnn import TorchSRGNN, reference_batch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(_TORCH_THREADS.value)
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  ds, num_items = _data(shape)
  train, test = ds.splits["train"], ds.splits["test"]
  len_max = int(max(train.lengths.max(), test.lengths.max()))  # the official Data pads to the split's longest
  model = TorchSRGNN(num_items + 1, HIDDEN).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
  order = np.random.default_rng(0).permutation(len(train))

  def step(idx):
    b = reference_batch([train.prefix(i).tolist() for i in idx], len_max)
    b = {k: v.to(device) for k, v in b.items()}
    targets = torch.tensor(np.asarray(train.targets)[idx] - 1, dtype=torch.long, device=device)
    loss = torch.nn.functional.cross_entropy(model(b), targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss

  t = time.perf_counter()
  step(order[:BATCH]).item()
  first_step = time.perf_counter() - t
  t = time.perf_counter()
  for i in range(1, _TORCH_BATCHES.value + 1):
    loss = step(order[i * BATCH:(i + 1) * BATCH])
  loss.item()
  train_rate = _TORCH_BATCHES.value * BATCH / (time.perf_counter() - t)
  t, n_eval = time.perf_counter(), min(len(test), _TORCH_BATCHES.value * BATCH)
  with torch.no_grad():
    for s in range(0, n_eval, BATCH):
      b = reference_batch([test.prefix(i).tolist() for i in range(s, min(s + BATCH, n_eval))], len_max)
      model({k: v.to(device) for k, v in b.items()}).topk(20)
  return {"train_sessions_per_s": train_rate, "eval_sessions_per_s": n_eval / (time.perf_counter() - t),
          "first_step_s": first_step, "len_max": len_max, "threads": torch.get_num_threads(), "device": device,
          "peak_rss_mb": hostmem.peak_rss_mb()}


def _table(results):
  lines = ["| shape | framework | train sess/s | eval sess/s | compile / first step (s) | peak RSS (MB) |",
           "|---|---|---:|---:|---:|---:|"]
  for shape, r in results.items():
    for fw in ("jax", "torch"):
      if fw in r:
        m = r[fw]
        first = m.get("compile_train_s", m.get("first_step_s"))
        lines.append(f"| {shape} | {fw} | {m['train_sessions_per_s']:.0f} | {m['eval_sessions_per_s']:.0f} | "
                     f"{first:.2f} | {m['peak_rss_mb']:.0f} |")
    if "jax" in r and "torch" in r:
      lines.append(f"| {shape} | **jax / torch** | **{r['train_ratio']:.1f}x** | **{r['eval_ratio']:.1f}x** | | |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _CHILD.value:
    fw, shape = _CHILD.value.split(":")
    print("RESULT " + json.dumps(measure_jax(shape) if fw == "jax" else measure_torch(shape)))
    return
  results = {}
  for shape in _SHAPES.value:
    results[shape] = {}
    for fw in ("jax", "torch"):
      cmd = [sys.executable, __file__, f"--child={fw}:{shape}", f"--samples={_SAMPLES.value}",
             f"--jax_batches={_JAX_BATCHES.value}", f"--torch_batches={_TORCH_BATCHES.value}",
             f"--torch_threads={_TORCH_THREADS.value}"]
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        raise RuntimeError(f"{fw} on {shape} failed:\n{proc.stderr[-3000:]}")
      results[shape][fw] = json.loads(line[0][7:])
      print(f"{shape} {fw}: {results[shape][fw]['train_sessions_per_s']:.0f} train sess/s", flush=True)
    r = results[shape]
    r["train_ratio"] = r["jax"]["train_sessions_per_s"] / r["torch"]["train_sessions_per_s"]
    r["eval_ratio"] = r["jax"]["eval_sessions_per_s"] / r["torch"]["eval_sessions_per_s"]
  os.makedirs(_OUT.value, exist_ok=True)
  table = _table(results)
  print(table)
  Path(_OUT.value, "benchmark.md").write_text(table + "\n")
  Path(_OUT.value, "benchmark.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
