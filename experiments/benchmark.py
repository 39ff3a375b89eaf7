"""Speed benchmark of every backbone: llm4sbr-jax vs a PyTorch reference built like the official code, one run.

  python experiments/benchmark.py --dataset_dir data/processed/beauty_paper_valid   # real Beauty + the ML-1M shape
  python experiments/benchmark.py --backbones=gcegnn --shapes=ml-1m --torch_batches=5
  python experiments/benchmark.py --backbones=s2dhcn@s2dhcn.form=matrix,s2dhcn@s2dhcn.form=factored --frameworks=jax
  python experiments/benchmark.py --shapes=catalog-1m --backbones=srgnn,srgnn@score_chunk=16384 --frameworks=jax
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/benchmark.py --shapes=catalog-1m \
    --backbones=srgnn@score_chunk=16384,srgnn@score_chunk=16384@shard_items=True --frameworks=jax  # 4 CPU devices
  make benchmark            # synthetic Beauty and ML-1M shapes, every backbone: the table to paste from a GPU / TPU

Data: the processed dataset given by `--dataset_dir` (shape "real": its train and test splits, e.g. real Beauty), and
synthetic sessions shaped like Beauty (12,101 items, mean prefix length 8.7) and ML-1M (3,416 items, mean prefix
length 17.6, max 200) at batch 100 / hidden 100. Each (backbone, framework, shape) runs in its own child process so
peak RSS is its own. Reported: training and evaluation sessions/s (the first step, which compiles, timed apart as
compile time), peak RSS, XLA's temporary memory of the compiled training step (`memory_analysis`, any device) and the
device's peak memory where it reports one (`memory_stats`: GPU / TPU), the JAX / PyTorch ratios, and the host-side
build time of the task: what the backbone needs beyond the session graphs (GCE-GNN's global graph, S2-DHCN's
hypergraph). A backbone may carry config overrides for the JAX side (`name@key=value@key=value`). Both sides train
with the backbone's official objective and optimiser (S2-DHCN: CE + beta * SSL, no weight decay: the reference's
`training_loss` and `weight_decay`). The PyTorch side builds every batch the official way (per-sample Python loop,
padding to the split's longest prefix, dense adjacency; `build_baseline` in each `experiments/torch_<backbone>.py`)
and runs torch with `--torch_threads` threads. Runs unchanged on a GPU (JAX picks it up; torch uses CUDA when
available).
Writes benchmark.md and benchmark.json, and scaling.png (step time and memory against the catalogue size) when
a backbone ran on several catalogue sizes, e.g. `--shapes=beauty,catalog-100k,catalog-1m,catalog-5m`. A
measurement that fails (e.g. out of memory) is recorded in the table and the others go on; the exit status is 1.
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

_SHAPES = flags.DEFINE_list("shapes", ["real", "ml-1m"], "'real' (--dataset_dir) and/or llm4sbr_jax.synthetic.SHAPES.")
_DATASET_DIR = flags.DEFINE_string("dataset_dir", "", "Processed dataset for the 'real' shape.")
_BACKBONES = flags.DEFINE_list("backbones", ["srgnn", "tagnn", "gcegnn", "s2dhcn"],
                               "Backbones (models/registry.py), each optionally `name@key=value@...` (JAX config).")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "Which sides to run (ratios need both).")
_SAMPLES = flags.DEFINE_integer("samples", 30000, "Synthetic prefix samples per shape.")
_JAX_BATCHES = flags.DEFINE_integer("jax_batches", 100, "Timed JAX training batches.")
_TORCH_BATCHES = flags.DEFINE_integer("torch_batches", 15, "Timed PyTorch training batches.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for the baseline.")
_OUT = flags.DEFINE_string("out", "runs/benchmark", "Output directory (benchmark.json, benchmark.md).")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one 'framework:shape' measurement and print JSON.")
BATCH, HIDDEN = 100, 100


def _data(shape):
  from llm4sbr_jax import dataset, synthetic  # pylint: disable=g-import-not-at-top
  if shape == "real":
    if not _DATASET_DIR.value:
      raise ValueError("the 'real' shape needs --dataset_dir (a processed dataset)")
    ds = dataset.load_dataset(_DATASET_DIR.value)
    return ds, ds.num_items
  num_items, mean_len, max_len = synthetic.SHAPES[shape]
  ds = synthetic.make_dataset(num_items, _SAMPLES.value, mean_len, max_len, seed=0, valid_fraction=0.0)
  return ds, num_items


def _parse(backbone):
  """'name@key=value@...' -> (name, {key: value}) with values parsed as Python literals where they are ones."""
  import ast  # pylint: disable=g-import-not-at-top
  name, *pairs = backbone.split("@")
  overrides = {}
  for pair in pairs:
    key, _, value = pair.partition("=")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return name, overrides


def measure_jax(shape, backbone):
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
  from llm4sbr_jax.models import registry  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.hidden, (config.backbone, overrides) = HIDDEN, _parse(backbone)  # no dataset_dir: graphs built (timed)
  for key, value in overrides.items():
    group, _, leaf = key.rpartition(".")
    (config[group] if group else config)[leaf] = value
  config = registry.official_config(config)
  budget = graphs.compute_budget([g_train, g_test], BATCH // len(devices), config.budget_std)
  t = time.perf_counter()
  task = tasks.build_task(config, ds)  # the bare backbone, as experiments/train.py builds it
  tables_seconds = time.perf_counter() - t
  tx = parallel.make_optimizer(config.weight_decay)
  runner = parallel.Runner("shard_map", task.terms, task.spec, tx, metrics.batch_metric_sums, devices,
                           shard_items=config.shard_items, shard_scores=config.shard_scores)
  order = np.random.default_rng(0).permutation(len(train))
  batches = graphs.iterate_batches(g_train, order, budget, len(devices), node_tables=task.node_tables)
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
  orders, eval_budget = graphs.evaluation_plan({"test": g_test}, BATCH // len(devices))  # as experiments/train.py
  eval_batches = graphs.iterate_batches(g_test, orders["test"], eval_budget, len(devices),
                                        node_tables=task.node_tables)
  first, _ = next(eval_batches)
  t = time.perf_counter()
  jax.block_until_ready(runner.eval_step(state.params, first)[0])
  compile_eval = time.perf_counter() - t
  sessions, t = 0, time.perf_counter()
  for batch, real in eval_batches:
    out, _ = runner.eval_step(state.params, batch)
    sessions += real
  jax.block_until_ready(out)
  stats = devices[0].memory_stats() or {}
  return {"train_sessions_per_s": train_rate, "eval_sessions_per_s": sessions / (time.perf_counter() - t),
          "train_step_temp_mb": runner.temp_bytes("train") / 2**20,
          "device_peak_mb": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None,
          "compile_train_s": compile_train, "compile_eval_s": compile_eval, "graph_build_s": graph_seconds,
          "task_build_s": tables_seconds,
          "budget": vars(budget), "eval_budget": vars(eval_budget), "mean_prefix_len": float(train.lengths.mean()),
          "max_prefix_len": int(train.lengths.max()), "device": str(devices[0].device_kind),
          "num_devices": len(devices), "num_items": ds.num_items, "peak_rss_mb": hostmem.peak_rss_mb()}


def measure_torch(shape, backbone):
  import importlib  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(_TORCH_THREADS.value)
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  ds, num_items = _data(shape)
  train, test = ds.splits["train"], ds.splits["test"]
  reference = importlib.import_module(f"experiments.torch_{_parse(backbone)[0]}")
  model, make_batch = reference.build_baseline(train, num_items, HIDDEN)
  model = model.to(device)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=getattr(model, "weight_decay", 1e-5))
  objective = getattr(model, "training_loss", lambda b, t: torch.nn.functional.cross_entropy(model(b), t))
  order = np.random.default_rng(0).permutation(len(train))

  def batch_of(split, idx):
    len_max = int(split.lengths.max())  # the official loaders pad to the split's longest prefix
    return {k: v.to(device) for k, v in make_batch([split.prefix(i).tolist() for i in idx], len_max).items()}

  def step(idx):
    model.train()
    targets = torch.tensor(np.asarray(train.targets)[idx] - 1, dtype=torch.long, device=device)
    loss = objective(batch_of(train, idx), targets)
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
  model.eval()
  t, n_eval = time.perf_counter(), min(len(test), _TORCH_BATCHES.value * BATCH)
  with torch.no_grad():
    for s in range(0, n_eval, BATCH):
      model(batch_of(test, range(s, min(s + BATCH, n_eval)))).topk(20)
  return {"train_sessions_per_s": train_rate, "eval_sessions_per_s": n_eval / (time.perf_counter() - t),
          "first_step_s": first_step, "len_max": int(train.lengths.max()), "threads": torch.get_num_threads(),
          "device": device, "peak_rss_mb": hostmem.peak_rss_mb()}


def _table(results):
  lines = ["| backbone | shape | framework | train sess/s | train step (ms) | eval sess/s | compile / first step (s) | "
           "host build (s) | peak RSS (MB) | step temp (MB) | device peak (MB) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  mb = lambda v: "" if v is None else f"{v:.0f}"
  for key, r in results.items():
    backbone, shape = key.rsplit(":", 1)
    for fw in ("jax", "torch"):
      if fw in r:
        m = r[fw]
        first = m.get("compile_train_s", m.get("first_step_s"))
        build = f"{m['task_build_s']:.2f}" if "task_build_s" in m else ""
        lines.append(f"| {backbone} | {shape} | {fw} | {m['train_sessions_per_s']:.0f} | "
                     f"{m['train_step_ms']:.1f} | "
                     f"{m['eval_sessions_per_s']:.0f} | {first:.2f} | {build} | {m['peak_rss_mb']:.0f} | "
                     f"{mb(m.get('train_step_temp_mb'))} | {mb(m.get('device_peak_mb'))} |")
    if "jax" in r and "torch" in r:
      lines.append(f"| {backbone} | {shape} | **jax / torch** | **{r['train_ratio']:.1f}x** | | "
                   f"**{r['eval_ratio']:.1f}x** | | | | | |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _CHILD.value:
    fw, backbone, shape = _CHILD.value.split(":")  # backbone may hold '@' overrides, never ':'
    measure = measure_jax if fw == "jax" else measure_torch
    print("RESULT " + json.dumps(measure(shape, backbone)))
    return
  results, failed = {}, []
  for backbone in _BACKBONES.value:
    for shape in _SHAPES.value:
      r = results[f"{backbone}:{shape}"] = {}
      for fw in _FRAMEWORKS.value:
        cmd = [sys.executable, __file__, f"--child={fw}:{backbone}:{shape}", f"--samples={_SAMPLES.value}",
               f"--jax_batches={_JAX_BATCHES.value}", f"--torch_batches={_TORCH_BATCHES.value}",
               f"--torch_threads={_TORCH_THREADS.value}", f"--dataset_dir={_DATASET_DIR.value}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:  # recorded and reported; the other measurements go on
          why = "killed (out of memory?)" if proc.returncode == -9 else (proc.stderr.strip().splitlines() or ["?"])[-1]
          failed.append(f"{fw} {backbone} on {shape}: {why}")
          print(f"FAILED {failed[-1]}\n{proc.stderr[-3000:]}", flush=True)
          continue
        r[fw] = json.loads(line[0][7:])
        r[fw]["train_step_ms"] = 1000.0 * BATCH / r[fw]["train_sessions_per_s"]
        print(f"{backbone} {shape} {fw}: {r[fw]['train_sessions_per_s']:.0f} train sess/s", flush=True)
      if "jax" in r and "torch" in r:
        r["train_ratio"] = r["jax"]["train_sessions_per_s"] / r["torch"]["train_sessions_per_s"]
        r["eval_ratio"] = r["jax"]["eval_sessions_per_s"] / r["torch"]["eval_sessions_per_s"]
  os.makedirs(_OUT.value, exist_ok=True)
  table = _table(results)
  print(table)
  if failed:
    table += "\n\nDid not run to the end:\n" + "\n".join(f"- {f}" for f in failed)
  Path(_OUT.value, "benchmark.md").write_text(table + "\n")
  Path(_OUT.value, "benchmark.json").write_text(json.dumps({**results, "failed": failed}, indent=2))
  _plot_scaling(results, Path(_OUT.value, "scaling.png"))
  if failed:
    sys.exit(f"{len(failed)} measurement(s) failed: " + "; ".join(failed))


def _plot_scaling(results, path):
  """scaling.png: JAX step time, peak RSS and step temp memory against the catalogue size, one line per backbone
  variant (when the run measured a variant on at least two catalogue sizes)."""
  series = {}
  for key, r in results.items():
    if "jax" in r:
      series.setdefault(key.split(":")[0], []).append((r["jax"]["num_items"], r["jax"]))
  series = {k: v for k, v in series.items() if len({x for x, _ in v}) > 1}
  if series:
    from llm4sbr_jax import plotting  # pylint: disable=g-import-not-at-top
    plotting.plot_scaling(series, {"train_step_ms": "training step (ms)", "peak_rss_mb": "peak RSS (MB)",
                                   "train_step_temp_mb": "XLA step temp memory (MB)"}, str(path),
                          title=f"batch {BATCH}, d {HIDDEN}", xlabel="items in the catalogue")


if __name__ == "__main__":
  app.run(main)
