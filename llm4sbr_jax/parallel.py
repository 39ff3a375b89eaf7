"""Data-parallel jitted steps: one per-device function with named-axis collectives, run under shard_map or pmap.

The step is written for one device's shard of the batch. Loss terms come back from the task as (sum, count) pairs;
the per-device objective divides each sum by the *global* count (psum of a stop-gradient value), so the psum of the
per-device gradients is exactly the gradient of the global-batch loss, whatever the number of devices. Log-mean terms
(uniformity) use `sum / stop_gradient(global_sum)`, whose gradient summed over devices is that of `log(global mean)`.
Parameters are replicated; the batch carries a leading device axis [D, ...].

Multi-process (`jax.distributed`, shard_map only): the mesh spans every device of every process; each process
passes only its own devices' rows of the batch [D_local, ...] (`graphs.iterate_batches(local=runner.local)`), and
the per-sample evaluation values are gathered over all devices, so every process sees the whole global batch's.

Randomness (dropout): every step's key is `fold_in(PRNGKey(seed), step)`, the same on every device; backbones draw
per-sample masks from it (keyed by the sample's row), so a step is the same for any number of devices.

Item-table sharding (`shard_items`, shard_map only): every item table (the params named `ITEM_TABLE`, each
backbone's item embedding) and its Adam moments are stored split over the devices on the item axis (rows padded to a
multiple of the device count); each step all-gathers the table for the forward pass and reduce-scatters its gradient,
so each device keeps 1/D of the table's parameters and optimiser state between steps (ZeRO / FSDP style; the scores
of the device's own sessions are still computed against all items, with `score_chunk` bounding their memory). With
`shard_scores` the table is never gathered: the model sees each table as a `scoring.ShardedTable` (sharded lookups,
each device scoring its own rows for the sessions of all devices), so the split table's gradient is already complete
on each device and is not summed. The host sees the unpadded tables (`replicate` / `unreplicate`), so checkpoints
do not depend on it.

Optimiser: torch `Adam(weight_decay=wd)` semantics (coupled L2: decayed weights added to the gradient before Adam),
the learning rate passed to every step so the epoch schedule needs no recompilation.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llm4sbr_jax import scoring

AXIS = "data"
ITEM_TABLE = "embedding"  # the param name of every backbone's item table (the leaves `shard_items` splits)
MAX_IN_FLIGHT = 2  # dispatched but unfinished steps per Runner
# Number of times each step function was traced (a test asserts one compile per run).
TRACE_COUNTS: collections.Counter = collections.Counter()

# terms(params, batch, train, rng) -> (scores [G, n] (evaluation: maybe scoring.PaddedScores), {name: (sum, count)});
# spec: {name: (weight, is_log_mean)}.
TermsFn = Callable[[Any, Any, bool, Any], tuple[jax.Array, Mapping[str, tuple[jax.Array, jax.Array]]]]


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array


def make_optimizer(weight_decay: float) -> optax.GradientTransformation:
  """Adam with coupled L2 (torch `weight_decay`); the caller scales by -lr."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam())


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def _objective_and_report(terms, spec):
  """Per-device objective (see module docstring) and the global value of every term."""
  objective, report = 0.0, {}
  for name, (s, c) in terms.items():
    weight, is_log = spec[name]
    s_all = jax.lax.psum(jax.lax.stop_gradient(s), AXIS)
    c_all = jax.lax.psum(jax.lax.stop_gradient(c), AXIS)
    if is_log:
      objective += weight * s / jnp.maximum(s_all, 1e-30)
      # log of the mean over pairs; 0 when there is no pair (fewer than two real rows), as in `uniformity_log`
      report[name] = jnp.where(c_all > 0, jnp.log(jnp.maximum(s_all, 1e-30) / jnp.maximum(c_all, 1.0)), 0.0)
    else:
      objective += weight * s / jnp.maximum(c_all, 1.0)
      report[name] = s_all / jnp.maximum(c_all, 1.0)
  report["loss"] = sum(spec[k][0] * v for k, v in report.items())
  return objective, report


def _is_table(path) -> bool:
  return bool(path) and getattr(path[-1], "key", None) == ITEM_TABLE


def _model_tables(params: Any, rows: Optional[Any], view: bool) -> Any:
  """The item tables as the model sees them, where `rows` [leaf: true rows, 0 = not split]: all-gathered whole
  (padding dropped), or with `view` boxed as `scoring.ShardedTable`s of this device's rows."""
  if rows is None:
    return params
  split = lambda x, r: scoring.ShardedRows(x, r, AXIS) if view else jax.lax.all_gather(x, AXIS, tiled=True)[:r]
  return jax.tree_util.tree_map(lambda x, r: split(x, r) if r else x, params, rows)


def _call_terms(terms_fn: TermsFn, params: Any, view: bool, *args: Any):
  """terms_fn(params, *args); with `view`, an error while tracing that comes from using a `ShardedTable` as an
  array (e.g. S2-DHCN convolving the whole table) is re-raised naming the option."""
  try:
    return terms_fn(params, *args)
  except (TypeError, ValueError) as e:
    used_as_array = "__jax_array__" in str(e) or "ShardedTable" in str(e)
    if not view or "shard_scores" in str(e) or not used_as_array:
      raise
    raise TypeError(f"config.shard_scores: the model used its row-sharded item table as a whole ({e}); only "
                    "backbones that look items up and score them support it; use shard_scores=False") from e


def _sum_grads(grads: Any, rows: Optional[Any]) -> Any:
  """psum of every gradient but a split table's: differentiating through `_model_tables` already reduce-scattered
  it (the transpose of the all-gather) or left it complete on its owner (`ShardedTable`'s collectives). On one
  device the sum is the gradients themselves, and XLA:CPU would still copy them (0.4 ms a SR-GNN step on Beauty)."""
  if jax.lax.axis_size(AXIS) == 1:
    return grads
  if rows is None:
    return jax.lax.psum(grads, AXIS)
  return jax.tree_util.tree_map(lambda g, r: g if r else jax.lax.psum(g, AXIS), grads, rows)


def per_device_train_step(state: TrainState, batch: Any, lr: jax.Array, *, terms_fn: TermsFn,
                          spec: Mapping[str, tuple[float, bool]], tx: optax.GradientTransformation, seed: int = 0,
                          rows: Optional[Any] = None, view: bool = False
                          ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on this device's shard; gradients and reports are summed over AXIS.

  `rows` (item-table sharding): per param leaf, the true rows of a table stored split over the devices, else 0;
  `view`: the model sees those tables as `scoring.ShardedTable`s instead of all-gathered (`shard_scores`).
  """
  TRACE_COUNTS["train"] += 1
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)

  def objective(params):
    _, terms = _call_terms(terms_fn, _model_tables(params, rows, view), view, batch, True, rng)
    return _objective_and_report(terms, spec)

  grads, report = jax.grad(objective, has_aux=True)(state.params)
  grads = _sum_grads(grads, rows)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
  return TrainState(params, opt_state, state.step + 1), report


def per_device_eval_step(params: Any, batch: Any, *, terms_fn: TermsFn,
                         metrics_fn: Callable[[jax.Array, Any], dict[str, jax.Array]],
                         per_sample_fn: Optional[Callable[[jax.Array, Any], dict[str, jax.Array]]] = None,
                         rows: Optional[Any] = None, view: bool = False
                         ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Metric sums of the global batch, and the per-graph-slot values of all devices ([D * G] each, or {})."""
  TRACE_COUNTS["eval"] += 1
  scores, _ = _call_terms(terms_fn, _model_tables(params, rows, view), view, batch, False, None)
  per_sample = {} if per_sample_fn is None else per_sample_fn(scores, batch)
  gathered = jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, AXIS, tiled=True), per_sample)
  return jax.lax.psum(metrics_fn(scores, batch), AXIS), gathered


class Runner:
  """Compiles the per-device steps for `mode` ('shard_map' or 'pmap') over all devices (of all processes).

  `local`: the slice of `devices` this process feeds (all of them in a single-process run). `shard_items`: item
  tables split over the devices (module docstring); the steps are then built when the state is first replicated.
  `shard_scores` (with `shard_items`): the model sees the split tables as `scoring.ShardedTable`s.
  """

  def __init__(self, mode: str, terms_fn: TermsFn, spec: Mapping[str, tuple[float, bool]],
               tx: optax.GradientTransformation, metrics_fn, devices=None, seed: int = 0, per_sample_fn=None,
               shard_items: bool = False, shard_scores: bool = False):
    self.devices = list(devices if devices is not None else jax.devices())
    self.num_devices = len(self.devices)
    mine = [i for i, d in enumerate(self.devices) if d.process_index == jax.process_index()]
    if not mine or mine != list(range(mine[0], mine[-1] + 1)):
      raise ValueError(f"process {jax.process_index()} must own a contiguous, non-empty run of the devices")
    self.local = slice(mine[0], mine[-1] + 1)
    if mode == "pmap" and len(mine) < self.num_devices:
      raise ValueError("parallel mode 'pmap' runs in one process; use 'shard_map' with jax.distributed")
    if shard_items and mode != "shard_map":
      raise ValueError("shard_items needs parallel mode 'shard_map'")
    if shard_scores and not shard_items:
      raise ValueError("shard_scores needs shard_items (it scores the rows each device holds)")
    self.mode = mode
    self.shard_items = shard_items
    self._rows: dict[str, int] = {}  # key path inside the params -> true rows of a table stored split
    self._in_flight: collections.deque = collections.deque()
    self._compiled: dict[str, Any] = {}  # "train" / "eval" -> executable for the run's one batch shape
    self._train = functools.partial(per_device_train_step, terms_fn=terms_fn, spec=spec, tx=tx, seed=seed,
                                    view=shard_scores)
    self._evaluate = functools.partial(per_device_eval_step, terms_fn=terms_fn, metrics_fn=metrics_fn,
                                       per_sample_fn=per_sample_fn, view=shard_scores)
    self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))
    if mode == "shard_map":
      self._steps = None if shard_items else self._shard_map_steps(P(), None)
    elif mode == "pmap":
      train, evaluate = self._train, self._evaluate
      # pmap keeps a leading device axis on the replicated state and on the outputs.
      self._steps = {
          "train": jax.pmap(train, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=0, devices=self.devices),
          "eval": jax.pmap(evaluate, axis_name=AXIS, devices=self.devices)}
    else:
      raise ValueError(f"parallel mode must be 'shard_map' or 'pmap', got {mode!r}")

  def _shard_map_steps(self, state_specs: Any, rows: Optional[Any]) -> dict[str, Any]:
    squeeze = lambda f: lambda s, b, *a: f(s, jax.tree_util.tree_map(lambda x: x[0], b), *a)
    params_specs = state_specs.params if isinstance(state_specs, TrainState) else state_specs
    train = functools.partial(self._train, rows=rows)
    evaluate = functools.partial(self._evaluate, rows=rows)
    # check_vma=False: gradients of replicated params stay per-device (as under pmap); we psum them explicitly.
    return {"train": jax.jit(jax.shard_map(squeeze(train), mesh=self.mesh, in_specs=(state_specs, P(AXIS), P()),
                                           out_specs=(state_specs, P()), check_vma=False), donate_argnums=0),
            "eval": jax.jit(jax.shard_map(squeeze(evaluate), mesh=self.mesh, in_specs=(params_specs, P(AXIS)),
                                          out_specs=(P(), P()), check_vma=False))}

  def replicate(self, tree: Any) -> Any:
    """Host pytree -> on the devices: replicated, item tables split when `shard_items` (module docstring)."""
    if self.mode == "pmap":
      tree = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (self.num_devices,) + np.shape(x)), tree)
      return jax.device_put(tree, self._sharded)
    if not self.shard_items:
      return jax.device_put(tree, self._replicated)
    if self._steps is None and isinstance(tree, TrainState):  # the split leaves are known now
      rows = jax.tree_util.tree_map_with_path(lambda p, x: np.shape(x)[0] if _is_table(p) else 0, tree.params)
      self._rows = {jax.tree_util.keystr(p): r for p, r in jax.tree_util.tree_leaves_with_path(rows) if r}
      specs = jax.tree_util.tree_map_with_path(lambda p, _: P(AXIS) if _is_table(p) else P(), tree)
      self._steps = self._shard_map_steps(specs, rows)

    def put(path, x):
      if not _is_table(path):
        return jax.device_put(x, self._replicated)
      x = np.pad(np.asarray(x), ((0, -len(x) % self.num_devices),) + ((0, 0),) * (np.ndim(x) - 1))
      return jax.device_put(x, self._sharded)

    return jax.tree_util.tree_map_with_path(put, tree)

  def unreplicate(self, tree: Any) -> Any:
    """Replicated pytree -> host numpy pytree (split tables whole again, without their padding rows)."""
    if self.mode == "pmap":
      tree = jax.tree_util.tree_map(lambda x: x[0], tree)
    if jax.process_count() > 1:  # split tables span other processes' devices: gather their rows here
      whole = lambda x: (multihost_utils.process_allgather(x, tiled=True)
                         if isinstance(x, jax.Array) and not x.is_fully_replicated else x)
      tree = jax.tree_util.tree_map(whole, tree)
    tree = jax.device_get(tree)
    if not self._rows:
      return tree

    def true_rows(path, x):  # a table leaf of the params, or of an Adam moment (the same path below `mu` / `nu`)
      key = jax.tree_util.keystr(path)
      return next((r for k, r in self._rows.items() if key.endswith(k)), len(x))

    return jax.tree_util.tree_map_with_path(lambda p, x: x[:true_rows(p, x)] if _is_table(p) else x, tree)

  def put_batch(self, batch: Any) -> Any:
    """This process's rows of a batch [D_local, ...] -> the global batch [D, ...], one shard per device (a batch
    placed by an earlier call is returned as it is)."""
    if isinstance(jax.tree_util.tree_leaves(batch)[0], jax.Array):
      return batch
    if jax.process_count() == 1:  # device_put: ~1 ms a batch faster here
      return jax.device_put(batch, self._sharded)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(self._sharded, x), batch)

  def _bounded(self, out: Any) -> Any:
    """Keeps at most MAX_IN_FLIGHT dispatched steps: the host packs batches far faster than the device consumes
    them, and an unbounded queue would hold a whole epoch of batches in memory. Drops pmap's device axis."""
    if self.mode == "pmap":
      out = jax.tree_util.tree_map(lambda x: x[0], out)
    self._in_flight.append(out)
    if len(self._in_flight) > MAX_IN_FLIGHT:
      jax.block_until_ready(self._in_flight.popleft())
    return out

  def compile(self, state: TrainState, batch: Any, eval_batch: Any = None) -> None:
    """Compiles both steps ahead of time for `state` (replicated), `batch`'s shapes and `eval_batch`'s (default
    `batch`'s) for the evaluation step.

    Every later step must have these shapes (a mismatch raises instead of recompiling). Called before large
    host data is loaded, compilation's transient memory does not stack on top of it.
    """
    self._run("train", state, self.put_batch(batch), jnp.float32(0.0), execute=False)
    self._run("eval", state.params, self.put_batch(batch if eval_batch is None else eval_batch), execute=False)

  def _run(self, name: str, *args: Any, execute: bool = True) -> Any:
    if name not in self._compiled:
      self._compiled[name] = self._steps[name].lower(*args).compile()
    return self._compiled[name](*args) if execute else None

  def temp_bytes(self, name: str) -> Optional[int]:
    """XLA's temporary (activation) memory of the compiled `name` step ('train' / 'eval'), where it reports one."""
    analysis = self._compiled[name].memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)

  def train_step(self, state: TrainState, batch: Any, lr: float) -> tuple[TrainState, dict[str, jax.Array]]:
    state, report = self._run("train", state, self.put_batch(batch), jnp.float32(lr))
    return state, self._bounded(report)

  def eval_step(self, params: Any, batch: Any) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(metric sums of the batch, per-graph-slot values [D * G] of `per_sample_fn`, {} without one)."""
    return self._bounded(self._run("eval", params, self.put_batch(batch)))
