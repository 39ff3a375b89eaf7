"""Recommendations for live sessions from a trained workdir (any backbone, bare or LLM4SBR).

`load_run` reads a training workdir: `results.json` or, while it trains, `run.json` (the run's config, dataset
fingerprint; the best validation epoch so far from `metrics.jsonl`), the orbax checkpoint of the chosen epoch
(read-only; the best one by default) and the processed dataset.
`Recommender` turns sessions given as raw item ids or item names (`Catalog`) into top-K items with names and scores:

* the scores are the offline evaluation's (`task.terms(params, batch, train=False)`, the function the evaluation
  step runs), on batches packed by `graphs.pack` into fixed *buckets* of 1, 8, 64 ... sessions with node / edge /
  position budgets from the dataset (`graphs.compute_budget`, at least one session of `max_length` clicks). Each
  bucket is compiled once, ahead of time, when the `Scorer` is built; a batch that a bucket's budgets cannot hold
  is cut (`graphs.take_fitting`) and the rest goes into the next call, so no request ever compiles
  (`Scorer.traces` counts the traces; the compiled executables reject any other shape instead of recompiling).
* an LLM4SBR model's intents for a live session come from the source it was trained with:
  `ItemTextIntents` (item-name embeddings: mean of the session for long-term, last click for short-term; no LLM)
  or `LLMIntents` (a stage-1 call on the session, e.g. `third_party_infer.live.LiveStage1`, localized with the
  run's top-f as in training). `explain` reports each perspective's intent as its top-f catalog items with their
  softmax weights (paper eq. 3-4; for item-text intents these are the nearest items of the vector the model uses).

Nothing here imports torch: the LLM path takes any object with the `Answerer` interface.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import json
import os
from typing import Any, Optional, Protocol, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from llm4sbr_jax import dataset as dataset_lib
from llm4sbr_jax import graphs as graphs_lib
from llm4sbr_jax import intents as intents_lib
from llm4sbr_jax import metrics as metrics_lib
from llm4sbr_jax import parallel, scoring, tasks, train

DEFAULT_BUCKETS = (1, 8, 64)
DEFAULT_MAX_K = 100


class ServingError(ValueError):
  """A request or a workdir that cannot be served; `field` names the offending part of a request, if any."""

  def __init__(self, message: str, field: Optional[str] = None):
    super().__init__(f"{field}: {message}" if field else message)
    self.field = field


# ----------------------------------------------------------------------------------------------------------------
# The trained run.


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained workdir, ready to score.

  Attributes:
    workdir: the training workdir.
    config: the run's config (from results.json), with `dataset_dir` and `intents.stage1_dir` as resolved here.
    dataset: the processed dataset it was trained on (fingerprint checked).
    task: the model and loss terms (`tasks.build_task`).
    params: the restored parameters (host numpy).
    epoch: the restored epoch.
    best_epoch: the epoch with the best validation metric (the selected one).
    label: "SR-GNN", "LLM4SBR(SR-GNN)", ...
  """

  workdir: str
  config: Any
  dataset: dataset_lib.ProcessedDataset
  task: tasks.Task
  params: Any
  epoch: int
  best_epoch: int
  label: str


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except OSError as e:
    raise ServingError(f"{path}: cannot read ({e.strerror}); is this a training workdir?") from e
  except json.JSONDecodeError as e:
    raise ServingError(f"{path}: not valid JSON ({e})") from e


def best_epoch(workdir: str, results: dict) -> int:
  """The epoch `train.py` selects: best validation `select_metric` (best test metric without a validation split);
  from the epoch history when training went on after `results` (a run still training, or extended)."""
  path = os.path.join(workdir, "metrics.jsonl")
  try:
    with open(path, encoding="utf-8") as f:
      history = [json.loads(line) for line in f if line.strip()]
  except OSError:
    history = None
  except json.JSONDecodeError as e:
    raise ServingError(f"{path}: cannot read the epoch history ({e})") from e
  if "selected" in results and (history is None or results.get("epochs_run") == len(history)):
    return int(results["selected"]["epoch"])
  if history is None:
    raise ServingError(f"{path}: cannot read the epoch history")
  split, metric = results["selection_split"], results["config"]["select_metric"]
  if not history:
    raise ServingError(f"{path}: no finished epoch")
  return int(max(history, key=lambda h: h[split][metric])["epoch"])  # the first best, as training keeps it


def _resolve_dir(path: str, what: str, flag: str) -> str:
  if not path or not os.path.isdir(path):
    raise ServingError(f"{what} {path!r} (from the run's config) is not a directory here; pass {flag}")
  return path


def load_run(workdir: str, epoch: str | int = "best", dataset_dir: Optional[str] = None,
             stage1_dir: Optional[str] = None) -> Run:
  """Loads a training workdir (finished, or still training: `run.json` and the kept checkpoints) without writing.

  Args:
    workdir: a directory written by `train.train_and_evaluate` (results.json, metrics.jsonl, checkpoints/).
    epoch: "best" (the epoch selected on validation), "latest", or an epoch number; its checkpoint must be kept.
    dataset_dir: the processed dataset (default: the config's `dataset_dir`, relative to the current directory).
    stage1_dir: an LLM4SBR run's stage-1 directory (default: the config's `intents.stage1_dir`).

  Raises:
    ServingError: a missing or unfinished workdir, a checkpoint that is not kept, another dataset.
  """
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path) and os.path.exists(os.path.join(workdir, train.RUN_FILE)):
    path = os.path.join(workdir, train.RUN_FILE)  # still training (or stopped before its end): the run's start
  results = _read_json(path)
  config = ml_collections.ConfigDict(results["config"])
  config.dataset_dir = _resolve_dir(dataset_dir or config.dataset_dir, "dataset_dir", "--dataset_dir")
  if config.llm4sbr and config.perspectives:
    config.intents.stage1_dir = _resolve_dir(stage1_dir or config.intents.stage1_dir, "intents.stage1_dir",
                                             "--stage1_dir")
  ds = dataset_lib.load_dataset(config.dataset_dir)
  if ds.fingerprint != results["fingerprint"]:
    raise ServingError(f"{config.dataset_dir}: dataset fingerprint {ds.fingerprint[:12]}, but {workdir} was trained "
                       f"on {results['fingerprint'][:12]}; pass the run's dataset with --dataset_dir")
  best = best_epoch(workdir, results)
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  kept = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
  if not kept:
    raise ServingError(f"{ckpt_dir}: no checkpoint")
  chosen = best if epoch == "best" else kept[-1] if epoch == "latest" else int(epoch)
  if chosen not in kept:
    why = "the best validation epoch " if epoch == "best" else "epoch "
    raise ServingError(f"{workdir}: the checkpoint of {why}{chosen} is not kept (kept: {kept}; training keeps the "
                       "last 2); pass --epoch=latest or one of the kept epochs")
  task = tasks.build_task(config, ds)
  template = template_batch(task, graphs_lib.Budget(1, 8, 8, 8))
  abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), template)
  tx = parallel.make_optimizer(config.weight_decay)
  target = parallel.TrainState(params=abstract, opt_state=jax.eval_shape(tx.init, abstract), step=np.int32(0))
  target = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), target)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:  # reads only; the manager would lock
    restored = checkpointer.restore(os.path.join(ckpt_dir, str(chosen)), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  if restored["meta"]["fingerprint"] != ds.fingerprint:
    raise ServingError(f"{ckpt_dir}/{chosen}: made from dataset {restored['meta']['fingerprint'][:12]}, not "
                       f"{ds.fingerprint[:12]}")
  return Run(workdir=workdir, config=config, dataset=ds, task=task, params=restored["state"].params, epoch=chosen,
             best_epoch=best, label=train.model_label(config))


def template_batch(task: tasks.Task, budget: graphs_lib.Budget) -> graphs_lib.SessionBatch:
  """An all-padding batch of `budget`'s shapes with zero side data (for tracing and initialisation)."""
  one = dataset_lib.Split.from_prefixes([[1]], [1], [0], [0])
  side = None if task.side_shape is None else np.zeros((1,) + task.side_shape, np.float32)
  return graphs_lib.pack(graphs_lib.build_session_graphs(one), np.zeros(0, np.int64), budget, side, task.node_tables)


# ----------------------------------------------------------------------------------------------------------------
# The catalog: raw ids and names -> item ids.


class Catalog:
  """Resolves items given as raw ids (exact) or names (exact, then ignoring case) to item ids 1..n."""

  def __init__(self, ds: dataset_lib.ProcessedDataset):
    self.names, self.raw_ids = ds.item_names, ds.raw_item_ids
    self._by_id = {r: i for i, r in enumerate(ds.raw_item_ids) if i and r}
    self._by_name: dict[str, list[int]] = {}
    self._by_lower: dict[str, list[int]] = {}
    for i, name in enumerate(ds.item_names[1:], 1):
      self._by_name.setdefault(name, []).append(i)
      self._by_lower.setdefault(name.lower(), []).append(i)

  def describe(self, item: int) -> dict[str, Any]:
    return {"item_id": self.raw_ids[item], "name": self.names[item]}

  def close_matches(self, text: str, n: int = 5) -> list[str]:
    """Up to n catalog names (or raw ids, for a one-word text) resembling `text` (difflib), best first."""
    pool = list(self._by_name) + (list(self._by_id) if " " not in text.strip() else [])
    return difflib.get_close_matches(text, pool, n=n, cutoff=0.6)

  def resolve_item(self, token: Any, field: str) -> int:
    """The item id of one token: a string (raw id or name) or an integer (a numeric raw id)."""
    if isinstance(token, bool) or not isinstance(token, (str, int)):
      raise ServingError(f"expected an item id or name (a string or an integer), got {type(token).__name__} "
                         f"{json.dumps(token)[:60]}", field)
    text = str(token)
    if text in self._by_id:
      return self._by_id[text]
    ids = self._by_name.get(text) or self._by_lower.get(text.strip().lower())
    if ids and len(ids) == 1:
      return ids[0]
    if ids:
      raise ServingError(f"the name {text!r} belongs to {len(ids)} items (raw ids "
                         f"{', '.join(self.raw_ids[i] for i in ids)}); give a raw id", field)
    close = self.close_matches(text)
    hint = ("close matches: " + "; ".join(f"{c!r}" + (f" [{self.raw_ids[self._by_name[c][0]]}]"
                                                        if c in self._by_name else "") for c in close)
            if close else "no close match")
    raise ServingError(f"unknown item {text!r} (neither a raw item id nor an item name of this catalog); {hint}",
                       field)

  def resolve(self, sessions: Any, max_length: int, field: str = "sessions") -> list[np.ndarray]:
    """Item-id arrays (int32) of `sessions`, a list of lists of raw ids or names, each 1..max_length long."""
    if not isinstance(sessions, list):
      raise ServingError(f"expected a list of sessions, got {type(sessions).__name__}", field)
    if not sessions:
      raise ServingError("no session given", field)
    out = []
    for s, session in enumerate(sessions):
      where = f"{field}[{s}]"
      if not isinstance(session, list):
        raise ServingError(f"expected a list of item ids or names, got {type(session).__name__}", where)
      if not session:
        raise ServingError("empty session: give at least one item", where)
      if len(session) > max_length:
        raise ServingError(f"{len(session)} items; this model takes sessions of at most {max_length}", where)
      out.append(np.asarray([self.resolve_item(t, f"{where}[{i}]") for i, t in enumerate(session)], np.int32))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Intents of live sessions (LLM4SBR).


class Answerer(Protocol):
  """A stage-1 LLM + encoder for live sessions (`third_party_infer.live.LiveStage1`)."""

  def answer(self, names: Sequence[Sequence[str]], raw_ids: Sequence[Sequence[str]], perspectives: Sequence[str]
             ) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """(cleaned answers [B][P], answer embeddings float32 [B, P, d], item named by id int [B, P], 0 = none)."""


@dataclasses.dataclass(frozen=True)
class LiveIntents:
  """Intents of a batch of live sessions.

  Attributes:
    vectors: what the model takes, float32 [B, P, d].
    explained: the vectors `explain` localizes: the raw answer embeddings for LLM intents (localization's input),
      the item-text vectors themselves otherwise.
    answers: the LLM's cleaned answers [B][P], or None.
    named: the item each answer names by its id, int [B, P] (0: none), or None.
  """

  vectors: np.ndarray
  explained: np.ndarray
  answers: Optional[list[list[str]]] = None
  named: Optional[np.ndarray] = None


def _sessions_split(sessions: Sequence[np.ndarray], targets: Optional[np.ndarray] = None) -> dataset_lib.Split:
  n = len(sessions)
  targets = np.ones(n, np.int32) if targets is None else targets
  return dataset_lib.Split.from_prefixes(list(sessions), targets, np.zeros(n), np.zeros(n))


class ItemTextIntents:
  """The LLM-free intents the item-text runs were trained with (`intents.item_text_intents`)."""

  source = "item_text"

  def __init__(self, item_embeddings: np.ndarray, perspectives: Sequence[str]):
    self.items = np.asarray(item_embeddings, np.float32)
    self.perspectives = tuple(perspectives)

  def compute(self, sessions: Sequence[np.ndarray]) -> LiveIntents:
    vectors = intents_lib.item_text_intents(self.items, _sessions_split(sessions), self.perspectives)
    return LiveIntents(vectors, vectors)


class LLMIntents:
  """Stage-1 answers for live sessions, localized as the training run's stored answers were
  (`intents.localized_intents`): top-f (eq. 3-4; f = 0: the raw answer), and an answer that names an item by its
  id takes that item's name embedding."""

  source = "llm"

  def __init__(self, answerer: Answerer, item_embeddings: np.ndarray, perspectives: Sequence[str], f: int,
               catalog: Catalog):
    self.answerer, self.f, self.catalog = answerer, f, catalog
    self.items = np.asarray(item_embeddings, np.float32)
    self.perspectives = tuple(perspectives)

  def compute(self, sessions: Sequence[np.ndarray]) -> LiveIntents:
    names = [[self.catalog.names[i] for i in s] for s in sessions]
    raw_ids = [[self.catalog.raw_ids[i] for i in s] for s in sessions]
    answers, emb, named = self.answerer.answer(names, raw_ids, self.perspectives)
    emb, named = np.asarray(emb, np.float32), np.asarray(named, np.int64)
    vectors = top_f(emb, self.items, self.f)[2] if self.f else emb.copy()
    intents_lib.use_named_items(vectors, named, self.items)
    return LiveIntents(vectors, emb, answers, named)


def top_f(vectors: np.ndarray, items: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`intents.top_f` of vectors [B, P, d]: item ids [B, P, f], weights [B, P, f], localized [B, P, d].

  The rows are padded to a power of two, so localization compiles once per size class, not once per batch size.
  """
  b, p, d = vectors.shape
  rows = 1 << max(b * p - 1, 0).bit_length()
  padded = np.zeros((rows, d), np.float32)
  padded[:b * p] = vectors.reshape(b * p, d)
  ids, weights, localized = intents_lib.top_f(padded, items, f, chunk_size=rows)
  return ids[:b * p].reshape(b, p, f), weights[:b * p].reshape(b, p, f), localized[:b * p].reshape(b, p, d)


def explain_intents(catalog: Catalog, items: np.ndarray, live: LiveIntents, perspectives: Sequence[str],
                    f: int) -> list[list[dict[str, Any]]]:
  """Per session and perspective: the top-f catalog items of the intent with their softmax weights (and the LLM's
  answer); an answer that names an item by its id is that item, with weight 1.

  Args:
    catalog: names and raw ids.
    items: item-name embeddings [n + 1, d].
    live: the sessions' intents (`live.explained` is what gets localized).
    perspectives: names of axis 1.
    f: items per intent.
  """
  ids, weights, _ = top_f(live.explained, items, f)
  out = []
  for s in range(live.explained.shape[0]):
    rows = []
    for k, name in enumerate(perspectives):
      row = {"perspective": name}
      if live.answers is not None:
        row["answer"] = live.answers[s][k]
      if live.named is not None and live.named[s, k]:
        row["items"] = [{**catalog.describe(int(live.named[s, k])), "weight": 1.0}]
      else:
        row["items"] = [{**catalog.describe(int(i)), "weight": float(w)} for i, w in zip(ids[s, k], weights[s, k])]
      rows.append(row)
    out.append(rows)
  return out


# ----------------------------------------------------------------------------------------------------------------
# Scoring in fixed buckets.


def bucket_budgets(graphs: Sequence[graphs_lib.SessionGraphs], buckets: Sequence[int], max_length: int,
                   num_std: float) -> list[graphs_lib.Budget]:
  """One budget per bucket size: `compute_budget` over the dataset's samples, and at least one session of
  `max_length` clicks (max_length nodes and positions, max_length - 1 edges, plus padding)."""
  out = []
  for b in sorted(set(buckets)):
    if b < 1:
      raise ServingError(f"bucket sizes must be >= 1, got {b}")
    budget = graphs_lib.compute_budget(list(graphs), b, num_std)
    single = -(-(max_length + 1) // 8) * 8  # one session of max_length clicks + the padding slot, like the budgets
    out.append(graphs_lib.Budget(b, max(budget.nodes, single), max(budget.edges, single),
                                 max(budget.positions, single)))
  return out


class Scorer:
  """The offline evaluation's scores of live sessions: top `max_k` items and the rank of an optional target.

  Every bucket is compiled when the scorer is built (`traces[bucket] == 1` afterwards) and never again.
  """

  def __init__(self, run: Run, buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: Optional[int] = None,
               max_k: int = DEFAULT_MAX_K):
    self.task, self.num_items = run.task, run.dataset.num_items
    limit = run.dataset.longest_prefix
    self.max_length = max_length or limit
    if not 1 <= self.max_length <= limit:
      raise ServingError(f"max_length {self.max_length}: must lie in 1..{limit} (the longest session this "
                         "dataset's models were built for)")
    self.max_k = min(max_k, self.num_items)
    graphs = [graphs_lib.build_session_graphs(s) for s in run.dataset.splits.values() if len(s)]
    self.budgets = bucket_budgets(graphs, buckets, self.max_length, run.config.budget_std)
    self.params = jax.device_put(run.params)
    terms, max_k_ = self.task.terms, self.max_k
    self.traces: collections.Counter = collections.Counter()  # bucket size -> traces of the scoring function
    traces = self.traces

    def score(params, batch):
      traces[batch.graph_mask.shape[0] - 1] += 1
      scores, _ = terms(params, batch, False, None)  # as the evaluation step computes them
      ranks = metrics_lib.target_ranks(scores, batch.targets)
      if isinstance(scores, scoring.ChunkedScores):  # config.score_chunk: [G, n] is small at serving batch sizes
        scores = scoring.product(scores.session, scores.items[1:], scores.dtype)  # as the unchunked path
      elif isinstance(scores, scoring.PaddedScores):
        scores = scores.dense()
      top_scores, top_index = jax.lax.top_k(scores, max_k_)
      return top_scores, top_index + 1, ranks

    jitted = jax.jit(score)
    self._compiled = [jitted.lower(self.params, template_batch(self.task, b)).compile() for b in self.budgets]

  @property
  def buckets(self) -> list[int]:
    return [b.sessions for b in self.budgets]

  def _bucket(self, count: int) -> int:
    return next((k for k, b in enumerate(self.budgets) if b.sessions >= count), len(self.budgets) - 1)

  def score(self, sessions: Sequence[np.ndarray], intents: Optional[np.ndarray] = None,
            targets: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top items of every session.

    Args:
      sessions: item-id arrays, each 1..max_length long.
      intents: [B, P, d] for an LLM4SBR model (None for a bare one).
      targets: optional [B] item ids whose ranks to return (as the offline evaluation ranks its targets).

    Returns:
      (scores float32 [B, max_k], item ids int32 [B, max_k], target ranks int32 [B], 0 without targets).
    """
    n = len(sessions)
    graphs = graphs_lib.build_session_graphs(_sessions_split(sessions, targets))
    top_s = np.zeros((n, self.max_k), np.float32)
    top_i = np.zeros((n, self.max_k), np.int32)
    ranks = np.zeros(n, np.int32)
    order, start = np.arange(n), 0
    while start < n:
      k = self._bucket(n - start)
      take = graphs_lib.take_fitting(graphs, order[start:], self.budgets[k])
      index = order[start:start + take]
      batch = graphs_lib.pack(graphs, index, self.budgets[k], intents, self.task.node_tables)
      s, i, r = jax.device_get(self._compiled[k](self.params, batch))
      top_s[index], top_i[index], ranks[index] = s[:take], i[:take], r[:take]
      start += take
    return top_s, top_i, ranks if targets is not None else np.zeros(n, np.int32)


# ----------------------------------------------------------------------------------------------------------------
# The service object: resolve, compute intents, score, format.


@dataclasses.dataclass(frozen=True)
class Scored:
  """A scored batch: the sessions, their top max_k scores and item ids [B, max_k], the given targets [B] and their
  ranks [B] (or None), and the intents' explanations per session (or None)."""

  sessions: list[np.ndarray]
  scores: np.ndarray
  ids: np.ndarray
  ranks: Optional[np.ndarray]
  targets: Optional[np.ndarray]
  explained: Optional[list[list[dict[str, Any]]]]


class Recommender:
  """Top-K recommendations (ids, names, scores) for live sessions, with optional intent explanations."""

  def __init__(self, run: Run, intents: Optional[ItemTextIntents | LLMIntents] = None,
               buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: Optional[int] = None,
               max_k: int = DEFAULT_MAX_K):
    """Builds the scorer (compiling every bucket).

    Args:
      run: the loaded workdir.
      intents: the live intent source of an LLM4SBR model, of the kind the run was trained with
        (`make_item_text_intents`, the default for item-text runs; `make_llm_intents`). None for a bare model.
      buckets: batch sizes (sessions) to compile.
      max_length: longest session accepted (default and maximum: the dataset's longest prefix).
      max_k: largest K a request may ask for.
    """
    self.run, self.catalog = run, Catalog(run.dataset)
    cfg = run.config
    self.perspectives = tuple(cfg.perspectives) if cfg.llm4sbr else ()
    if self.perspectives and intents is None and cfg.intents.source == "item_text":
      intents = make_item_text_intents(run)
    if not self.perspectives and intents is not None:
      raise ServingError(f"{run.label} takes no intents")
    if self.perspectives:
      if intents is None:
        raise ServingError(f"{run.label} was trained with LLM intents: pass a stage-1 answerer "
                           "(`make_llm_intents`; experiments/recommend.py builds it from the run's stage-1 manifest)")
      if intents.source != cfg.intents.source:
        raise ServingError(f"{run.label} was trained with {cfg.intents.source!r} intents; serving it with "
                           f"{intents.source!r} intents would feed it inputs it never saw")
    self.intents = intents
    self.scorer = Scorer(run, buckets, max_length, max_k)
    self.explain_f = (cfg.intents.f or 5) if self.perspectives else 0  # f = 0 (raw answers): show 5

  @property
  def max_length(self) -> int:
    return self.scorer.max_length

  @property
  def max_k(self) -> int:
    return self.scorer.max_k

  def check_k(self, k: Any, field: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
      raise ServingError(f"expected an integer, got {type(k).__name__} {json.dumps(k)[:40]}", field)
    if not 1 <= k <= self.max_k:
      raise ServingError(f"{k} is out of range: K must lie in 1..{self.max_k}", field)
    return k

  def check_explain(self, explain: Any, field: str = "explain") -> bool:
    if not isinstance(explain, bool):
      raise ServingError(f"expected true or false, got {json.dumps(explain)[:40]}", field)
    if explain and not self.perspectives:
      raise ServingError(f"{self.run.label} is a bare backbone: it has no intents to explain", field)
    return explain

  def resolve(self, sessions: Any) -> list[np.ndarray]:
    return self.catalog.resolve(sessions, self.max_length)

  def intents_of(self, sessions: Sequence[np.ndarray]) -> Optional[LiveIntents]:
    """The live intents of `sessions` (None for a bare model)."""
    return self.intents.compute(sessions) if self.perspectives else None

  def score(self, sessions: Sequence[np.ndarray], explain: bool = False,
            targets: Optional[Sequence[int]] = None) -> Scored:
    """The model's part of `recommend` (intents, the scorer, explanations), for `rows` to format."""
    live = self.intents_of(sessions)
    given = None if targets is None else np.asarray(targets, np.int32)
    scores, ids, ranks = self.scorer.score(sessions, None if live is None else live.vectors, given)
    explained = (explain_intents(self.catalog, self.intents.items, live, self.perspectives, self.explain_f)
                 if explain else None)
    return Scored(list(sessions), scores, ids, ranks if given is not None else None, given, explained)

  def rows(self, scored: Scored, start: int, stop: int, k: int, explain: bool = True) -> list[dict[str, Any]]:
    """JSON-ready answers of sessions start..stop-1 of `scored`: the session, its top-k items (rank, item_id, name,
    score), the target's rank when one was given, and the intents when explained (and `explain`)."""
    out = []
    for s in range(start, stop):
      row = {"session": [self.catalog.describe(int(i)) for i in scored.sessions[s]],
             "items": [{"rank": r + 1, **self.catalog.describe(int(i)), "score": float(v)}
                       for r, (i, v) in enumerate(zip(scored.ids[s, :k], scored.scores[s, :k]))]}
      if scored.targets is not None and scored.targets[s]:
        row["target"] = {**self.catalog.describe(int(scored.targets[s])), "rank": int(scored.ranks[s])}
      if explain and scored.explained is not None:
        row["intents"] = scored.explained[s]
      out.append(row)
    return out

  def recommend(self, sessions: Sequence[np.ndarray], k: int, explain: bool = False,
                targets: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Top-k items of every (resolved) session.

    Args:
      sessions: item-id arrays (see `resolve`).
      k: items per session (1..max_k).
      explain: add each perspective's intent as top-f catalog items with weights (LLM4SBR).
      targets: optional known next item per session (0: none); its rank is reported as "target".
    """
    return self.rows(self.score(sessions, explain, targets), 0, len(sessions), k)

  def info(self) -> dict[str, Any]:
    cfg = self.run.config
    return {"model": self.run.label, "workdir": self.run.workdir, "dataset": self.run.dataset.name,
            "num_items": self.run.dataset.num_items, "epoch": self.run.epoch, "best_epoch": self.run.best_epoch,
            "intents": cfg.intents.source if self.perspectives else None, "buckets": self.scorer.buckets,
            "max_length": self.max_length, "max_k": self.max_k}


def make_item_text_intents(run: Run) -> ItemTextIntents:
  """The item-text intent source of an LLM4SBR run (its stage-1 item embeddings, checked)."""
  items = intents_lib.load_item_embeddings(run.config.intents.stage1_dir, run.dataset)
  return ItemTextIntents(items, run.config.perspectives)


def make_llm_intents(run: Run, answerer: Answerer) -> LLMIntents:
  """The LLM intent source of an LLM4SBR run trained with `intents.source = llm`."""
  s1 = intents_lib.open_stage1(run.config.intents.stage1_dir, run.dataset)
  s1.check_perspectives(run.config.perspectives)
  return LLMIntents(answerer, s1.item_embeddings(), run.config.perspectives, run.config.intents.f,
                    Catalog(run.dataset))


def evaluate_split(rec: Recommender, split: str, limit: int = 0, progress: bool = True) -> np.ndarray:
  """The 1-based rank of every target of `split` (its first `limit` samples when > 0), through the serving path.

  With the restored epoch = the selected one, these equal the run's `test_ranks.npy` for the test split.
  """
  s = rec.run.dataset.splits.get(split)
  if s is None or not len(s):
    raise ServingError(f"split {split!r}: no such split with samples in {rec.run.config.dataset_dir}")
  n = min(limit, len(s)) if limit > 0 else len(s)
  step = rec.scorer.buckets[-1]
  ranks = np.zeros(n, np.int32)
  for a in tqdm(range(0, n, step), unit="batch", desc=f"rank {split}", disable=not progress, leave=False):
    b = min(a + step, n)
    sessions = [s.prefix(i) for i in range(a, b)]
    live = rec.intents_of(sessions)
    ranks[a:b] = rec.scorer.score(sessions, None if live is None else live.vectors,
                                  np.asarray(s.targets[a:b], np.int32))[2]
  return ranks
