"""Training and evaluation loop: epochs, evaluation, early stopping, checkpoints, resume, logs and results.

Outputs in the workdir: `run.json` (config and dataset, at the start), `metrics.jsonl` (one line per epoch),
`results.json` (`run.json`'s fields plus the metrics), `curves.png`, `test_ranks.npy` (the rank of every test target
at the best validation epoch, for paired significance tests), orbax checkpoints under `checkpoints/` (the last two
epochs, and the selected one, which `serving.py` loads). Rerunning the same command resumes from the latest
checkpoint; `metrics.jsonl` is rewritten from the checkpoint's history so a kill never duplicates or drops an epoch
line.

Multi-process runs (`jax.distributed` initialised by the launcher): one mesh over every process's devices, each
process packs only its devices' part of every global batch, all of them save and restore the checkpoints together
(orbax), and only process 0 writes the logs, results, ranks and plots.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import logging
from tqdm import tqdm

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import graphs as graphs_lib
from llm4sbr_jax import metrics as metrics_lib
from llm4sbr_jax import hostmem, intents, parallel, plotting, tasks
from llm4sbr_jax.models import registry

log = logging.getLogger(__name__)

SELECTION_NOTE = "test metrics at the epoch with the best validation {metric}"
# Evaluation batches are the same every epoch: a split whose placed batches fit this many bytes keeps them on the
# devices after its first evaluation (Beauty: 4.1 and 4.6 MB; packing + transfer were ~0.5 of 3 ms a batch).
EVAL_CACHE_BYTES = 256 << 20


class DivergedError(RuntimeError):
  """An epoch's training loss is not finite: nothing of that epoch is saved (the workdir keeps the one before)."""


# What a launcher reports in one line, without a traceback (a stage-1 dir of another dataset, an unknown backbone).
EXPECTED_ERRORS = (dataset_lib.DatasetError, intents.IntentsError, registry.ConfigError, DivergedError)
RUN_FILE = "run.json"  # written when training starts: the config and dataset (serving a run still training)
RANKS_FILE = "test_ranks.npy"  # int32 [test samples]: 1-based target ranks at the selected (best validation) epoch
PAPER_NOTE = ("paper protocol: each metric's best value over epochs on the TEST split, chosen separately "
              "(as the official SR-GNN / LLM4SBR code reports); optimistic, not a model-selection result")


def model_label(config: Any) -> str:
  """"SR-GNN" or "LLM4SBR(SR-GNN)" for a config."""
  label = registry.get(config.backbone).label
  return f"LLM4SBR({label})" if config.llm4sbr else label


def learning_rate(config: Any, epoch: int) -> float:
  """lr x decay every `lr_decay_every` epochs, epochs 0..lr_decay_every-1 at the base rate (the paper's schedule)."""
  return float(config.lr * config.lr_decay ** (epoch // config.lr_decay_every))


class Experiment:
  """Everything a run needs, built once from a config: data, graphs, budgets, task and compiled steps.

  Order matters for peak memory: the steps are compiled (on a template batch with zero side data) before the
  intent arrays are loaded, and freed heap memory is handed back after each, so compilation's transient memory
  never stacks on top of the intents.
  """

  def __init__(self, config: Any):
    self.config = config = registry.official_config(config)
    self.dataset = dataset_lib.load_dataset(config.dataset_dir)
    self.task = tasks.build_task(config, self.dataset)
    self.splits = {k: v for k, v in self.dataset.splits.items() if len(v)}
    if "train" not in self.splits or not {"valid", "test"} & set(self.splits):
      raise ValueError(f"{config.dataset_dir}: needs train samples and valid or test samples to evaluate on; "
                       f"has {({k: len(v) for k, v in self.dataset.splits.items()})}")
    keep = min(config.get("max_train_samples", 0) or len(self.splits["train"]), len(self.splits["train"]))
    if keep < len(self.splits["train"]):
      self.splits["train"] = self.splits["train"].subset(np.arange(keep))
    self.graphs = {k: graphs_lib.build_session_graphs(v) for k, v in self.splits.items()}
    devices = jax.devices()
    if config.batch_size % len(devices):
      raise ValueError(f"batch_size {config.batch_size} is not divisible by the {len(devices)} devices")
    # Training batches: a budget a random batch rarely exceeds (from every split, as before evaluation had its
    # own). Evaluation: balanced orders and the exact budget they need (graphs.evaluation_plan).
    self.budget = graphs_lib.compute_budget(list(self.graphs.values()), config.batch_size // len(devices),
                                            config.budget_std)
    self.eval_orders, self.eval_budget = graphs_lib.evaluation_plan(
        {k: g for k, g in self.graphs.items() if k != "train"}, config.batch_size // len(devices))
    self._placed_eval: dict[str, tuple[np.ndarray, list]] = {}  # split -> (its order, placed batches)
    self.tx = parallel.make_optimizer(config.weight_decay)
    self.runner = parallel.Runner(config.parallel, self.task.terms, self.task.spec, self.tx,
                                  metrics_lib.batch_metric_sums, devices, seed=config.seed,
                                  per_sample_fn=metrics_lib.batch_ranks, shard_items=config.get("shard_items", False),
                                  shard_scores=config.get("shard_scores", False))
    t = time.perf_counter()
    template_side = None if self.task.side_shape is None else np.zeros((1,) + self.task.side_shape, np.float32)
    self._template, eval_template = (  # one sample of a split each budget is sized for (any of them fits)
        next(graphs_lib.iterate_batches(self.graphs[split], np.arange(1), budget, self.runner.num_devices,
                                        template_side, self.task.node_tables, self.runner.local))[0]
        for split, budget in (("train", self.budget), (next(iter(self.eval_orders)), self.eval_budget)))
    self._init = jax.jit(self.task.init)
    self.runner.compile(self.runner.replicate(self.init_state()), self._template, eval_template)
    self.compile_seconds = time.perf_counter() - t
    hostmem.release_free_memory()
    self.side = dict(self.task.load_side()) if self.task.load_side else {}
    if "train" in self.side and keep < len(self.side["train"]):
      self.side["train"] = self.side["train"][:keep].copy()  # a copy, so the dropped rows are freed
    hostmem.release_free_memory()

  def batches(self, split: str, order: np.ndarray, budget: Optional[graphs_lib.Budget] = None):
    return graphs_lib.iterate_batches(self.graphs[split], order, budget or self.budget, self.runner.num_devices,
                                      self.side.get(split), self.task.node_tables, self.runner.local)

  def eval_batches(self, split: str):
    """`split`'s evaluation batches: its balanced order in the evaluation budget."""
    return self.batches(split, self.eval_orders[split], self.eval_budget)

  def init_state(self) -> parallel.TrainState:
    """Fresh parameters and optimiser state (host copy: the device state gets donated)."""
    sample = jax.tree_util.tree_map(lambda x: x[0], self._template)  # shapes only; init ignores the values
    params = self._init(jax.random.PRNGKey(self.config.seed), sample)
    return jax.device_get(parallel.init_state(params, self.tx))

  def _placed_eval_batches(self, split: str):
    """`split`'s evaluation batches on the devices: packed and placed once (per order), kept under
    EVAL_CACHE_BYTES."""
    order = self.eval_orders[split]
    if split in self._placed_eval and self._placed_eval[split][0] is order:
      yield from self._placed_eval[split][1]
      return
    kept, size = [], 0
    for batch, _ in self.eval_batches(split):
      batch = self.runner.put_batch(batch)
      if kept is not None:
        size += sum(x.nbytes for x in jax.tree_util.tree_leaves(batch))
        if size > EVAL_CACHE_BYTES:
          kept = None  # too large to keep: this split streams every time
        else:
          kept.append(batch)
      yield batch
    if kept is not None:
      self._placed_eval[split] = (order, kept)

  def evaluate(self, params: Any, split: str) -> tuple[dict[str, float], np.ndarray]:
    """(metrics in percent, the 1-based rank of every sample's target [N], int32)."""
    outputs = [self.runner.eval_step(params, batch) for batch in self._placed_eval_batches(split)]
    outputs = jax.device_get(outputs)  # summed on the host: no per-batch dispatches of tiny adds
    ranks = np.zeros(len(self.splits[split]), np.int32)
    for _, samples in outputs:
      real = samples["index"] >= 0
      ranks[samples["index"][real]] = samples["rank"][real]
    return metrics_lib.finalize(_sum_dicts([sums for sums, _ in outputs])), ranks

  def train_epoch(self, state: parallel.TrainState, epoch: int, progress: bool = True):
    """One pass over the shuffled training samples; returns (state, mean loss terms, timing).

    Timing: `sessions_per_s` excludes the first step, whose time (`first_step_s`) includes any compilation.
    """
    n = len(self.splits["train"])
    order = np.random.default_rng([self.config.seed, epoch]).permutation(n)
    lr = learning_rate(self.config, epoch)
    reports = []
    bar = tqdm(total=n, unit="sess", desc=f"epoch {epoch}", disable=not progress, mininterval=2.0, leave=False)
    start, first_seconds, first_real = time.perf_counter(), 0.0, 0
    for batch, real in self.batches("train", order):
      state, report = self.runner.train_step(state, batch, lr)
      if not reports:  # the first step may compile: timed apart from the throughput
        jax.block_until_ready(report)
        first_seconds, first_real = time.perf_counter() - start, real
      reports.append(report)
      bar.update(real)
    sums = _sum_dicts(jax.device_get(reports))
    seconds = time.perf_counter() - start - first_seconds
    bar.close()
    losses = {k: v / max(len(reports), 1) for k, v in sums.items()}
    return state, losses, {"sessions_per_s": (n - first_real) / max(seconds, 1e-9), "first_step_s": first_seconds}


def _sum_dicts(rows: list[Mapping[str, Any]]) -> dict[str, float]:
  """Key-wise float64 sums of host dicts of scalars (per-step loss terms or metric sums)."""
  return {k: float(np.sum([r[k] for r in rows], dtype=np.float64)) for k in (rows[0] if rows else {})}


def _better(a: dict, b: Optional[dict], metric: str) -> bool:
  return b is None or a[metric] > b[metric]


def summarize(history: list[dict], select_metric: str) -> dict[str, Any]:
  """results.json content from the per-epoch history."""
  out: dict[str, Any] = {"epochs_run": len(history)}
  if history and "valid" in history[0]:
    best = max(history, key=lambda h: h["valid"][select_metric])
    out["selected"] = {"note": SELECTION_NOTE.format(metric=select_metric), "epoch": best["epoch"],
                       "valid": best["valid"], "test": best["test"]}
  if history and "test" in history[0]:
    keys = history[0]["test"].keys()
    out["paper_protocol_best_test"] = {
        "note": PAPER_NOTE,
        "metrics": {k: max(h["test"][k] for h in history) for k in keys},
        "epoch_of": {k: max(history, key=lambda h: h["test"][k])["epoch"] for k in keys}}
  return out


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the results dict."""
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0  # the one process that writes files (orbax coordinates the checkpoints)
  t0 = time.perf_counter()
  exp = Experiment(config)
  config = exp.config  # with the backbone's official settings
  select_split = "valid" if "valid" in exp.splits else "test"
  log.info("dataset %s: %s; budget per device batch %s; devices %d (%s)", exp.dataset.name,
               {k: len(v) for k, v in exp.splits.items()}, exp.budget, exp.runner.num_devices, config.parallel)
  host_state = exp.init_state()
  keep = ocp.checkpoint_managers.AnyPreservationPolicy([  # the last two (resume) and the selected epoch (serving)
      ocp.checkpoint_managers.LatestN(n=2),
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: (m["select"], -m["epoch"]), n=1)])  # ties: earliest
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                  options=ocp.CheckpointManagerOptions(preservation_policy=keep, create=True))
  meta = {"history": [], "bad_epochs": 0, "fingerprint": exp.dataset.fingerprint}
  if manager.latest_step() is not None:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree_util.tree_map(np.asarray, host_state)),
        meta=ocp.args.JsonRestore()))
    host_state, meta = restored["state"], restored["meta"]
    if meta["fingerprint"] != exp.dataset.fingerprint:
      raise ValueError(f"{workdir}: its checkpoints were made from dataset {meta['fingerprint'][:12]}, but "
                       f"{config.dataset_dir} is {exp.dataset.fingerprint[:12]}; use a new --workdir")
    log.info("resumed from %s after epoch %d", manager.directory, manager.latest_step())
  history = meta["history"]
  run = {"dataset": exp.dataset.name, "fingerprint": exp.dataset.fingerprint, "model": model_label(config),
         "selection_split": select_split, "config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
  if primary:
    _write_json(os.path.join(workdir, RUN_FILE), run)
    _write_jsonl(os.path.join(workdir, "metrics.jsonl"), history)
  state = exp.runner.replicate(host_state)
  setup_seconds = time.perf_counter() - t0
  best = max((h[select_split] for h in history), key=lambda m: m[config.select_metric], default=None)
  epoch = len(history)
  while epoch < config.num_epochs and meta["bad_epochs"] < config.patience:
    state, losses, timing = exp.train_epoch(state, epoch, config.get("progress", True))
    if not all(np.isfinite(v) for v in losses.values()):
      manager.close()
      raise DivergedError(f"{workdir}: epoch {epoch}'s training loss is not finite ({losses}); nothing of that epoch "
                          f"was saved, the workdir keeps epoch {epoch - 1} (lower the lr or change the seed)")
    t = time.perf_counter()
    record = {"epoch": epoch, "lr": learning_rate(config, epoch), "train": losses, **timing}
    ranks = {}
    for split in ("valid", "test"):
      if split in exp.splits:
        record[split], ranks[split] = exp.evaluate(state.params, split)
    record["eval_seconds"] = time.perf_counter() - t
    history.append(record)
    improved = _better(record[select_split], best, config.select_metric)
    best = record[select_split] if improved else best
    if primary and improved and "test" in ranks:  # the selected epoch's test ranks (paired bootstrap intervals)
      dataset_lib.save_npy(os.path.join(workdir, RANKS_FILE), ranks["test"])
    meta["bad_epochs"] = 0 if improved else meta["bad_epochs"] + 1
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(exp.runner.unreplicate(state)),
                                                meta=ocp.args.JsonSave(meta)),
                 metrics={"select": record[select_split][config.select_metric], "epoch": epoch})
    manager.wait_until_finished()
    if primary:
      _write_jsonl(os.path.join(workdir, "metrics.jsonl"), history)
    log.info("epoch %d: loss %.4f, %.0f sess/s, %s %s", epoch, losses["loss"], timing["sessions_per_s"], select_split,
                 {k: round(v, 2) for k, v in record[select_split].items() if k.endswith("@20")})
    epoch += 1
  manager.close()
  results = summarize(history, config.select_metric)
  results.update({**run, "stopped_early": meta["bad_epochs"] >= config.patience, "setup_seconds": setup_seconds,
                  "peak_rss_mb": hostmem.peak_rss_mb(),
                  "test_ranks": RANKS_FILE if os.path.exists(os.path.join(workdir, RANKS_FILE)) else None})
  if primary:
    _write_json(os.path.join(workdir, "results.json"), results)
    plotting.plot_curves(history, os.path.join(workdir, "curves.png"),
                         title=f"{model_label(config)} on {exp.dataset.name}")
  return results


def _write_json(path: str, value: Any) -> None:
  dataset_lib.write_atomic(path, json.dumps(value, indent=2).encode("utf-8"))


def _write_jsonl(path: str, rows: list[dict]) -> None:
  dataset_lib.write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8"))
