"""Model + loss terms (+ per-sample side data) for a config: what the generic training loop optimises.

A task exposes `init(rng, batch) -> params` and `terms(params, batch, train, rng) -> (scores [G, n], {name: (sum,
count)})` with a `spec` {name: (weight, is_log_mean)} telling the parallel step how to combine the terms over
devices; `rng` is the step's key (dropout), None at evaluation (where plain dot-product scores come as
`scoring.PaddedScores`, which `metrics` and `cross_entropy` read). Per-sample side data (LLM4SBR's intent embeddings,
gathered into every batch's `intents`): `side_shape` is one sample's row shape, known up front so the steps compile
before `load_side()` reads the per-split arrays [N, ...]. `node_tables` are the backbone's per-item tables that every
batch carries for its nodes (GCE-GNN's global neighbours). A backbone's own extra loss terms (S2-DHCN's
self-supervised term) are sown into the `losses` collection as (sum, count) and weighted by its registry entry.

Models: `config.backbone` names a registered backbone (`models/registry.py`), and `config.llm4sbr` chooses
  * False: the bare backbone (CE loss);
  * True: LLM4SBR around it: `CE + tau * sum_p [align_p + (unif(h_p) + unif(s_p)) / 2]` (eq. 12), intents from
    `config.intents.source`: `llm` (stage-1 answers localized with top-`f`) or `item_text` (the LLM-free baseline
    from the item-name embeddings; perspectives `long-term` = mean of the prefix items, `short-term` = last).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

from llm4sbr_jax import intents as intents_lib
from llm4sbr_jax.dataset import ProcessedDataset
from llm4sbr_jax.models import llm4sbr as llm4sbr_lib
from llm4sbr_jax.models import registry
from llm4sbr_jax.models.base import Recommender

@dataclasses.dataclass(frozen=True)
class Task:
  init: Callable[[jax.Array, Any], Any]
  terms: Callable[[Any, Any, bool, Any], tuple[jax.Array, Mapping[str, tuple[jax.Array, jax.Array]]]]
  spec: Mapping[str, tuple[float, bool]]
  side_shape: Optional[tuple[int, ...]] = None
  load_side: Optional[Callable[[], Mapping[str, np.ndarray]]] = None
  node_tables: Optional[Mapping[str, np.ndarray]] = None


def _check_source(source: str) -> None:
  if source not in ("llm", "item_text"):
    raise registry.ConfigError(f"config.intents.source: expected 'llm' or 'item_text', got {source!r}")


def intent_arrays(config: Any, dataset: ProcessedDataset) -> dict[str, np.ndarray]:
  """Per-split intent embeddings [N, P, d_text] (float32) for `config.perspectives`."""
  perspectives = tuple(config.perspectives)
  source = config.intents.source
  _check_source(source)
  splits = {k: v for k, v in dataset.splits.items() if len(v)}
  if source == "item_text":
    items = intents_lib.load_item_embeddings(config.intents.stage1_dir, dataset)
    return {k: intents_lib.item_text_intents(items, s, perspectives) for k, s in splits.items()}
  intents_lib.open_stage1(config.intents.stage1_dir, dataset)  # checksums and finiteness once, not per split
  return {k: intents_lib.localized_intents(config.intents.stage1_dir, dataset, k, perspectives, config.intents.f,
                                           verify=False) for k in splits}


def _rngs(rng: Optional[jax.Array]) -> dict[str, jax.Array]:
  return {} if rng is None else {"dropout": rng}


def _apply(model, params, *args, train: bool, rng: Optional[jax.Array]):
  """(output, {name: (sum, count)} of the loss terms the backbone sowed into `losses`)."""
  out, state = model.apply(params, *args, train=train, rngs=_rngs(rng), mutable=["losses"])
  sown = traverse_util.flatten_dict(state.get("losses", {}), is_leaf=lambda _, v: isinstance(v, tuple))
  return out, {path[-1]: value for path, value in sown.items()}


def build_task(config: Any, dataset: ProcessedDataset) -> Task:
  """The bare backbone `config.backbone`, or LLM4SBR around it when `config.llm4sbr`."""
  spec = registry.get(config.backbone)
  backbone = spec.build(config, dataset)
  tables = dict(spec.node_tables(config, dataset)) if spec.node_tables else None
  extra_spec = {name: (weight, False) for name, weight in (spec.losses(config) if spec.losses else {}).items()}
  score_options = dict(score_chunk=config.get("score_chunk", 0), score_dtype=config.get("score_dtype", "float32"),
                       padded_eval=True)
  if not config.llm4sbr:
    model = Recommender(backbone, **score_options)

    def terms(params, batch, train, rng=None):
      scores, named = _apply(model, params, batch, train=train, rng=rng)  # [G, n]
      return scores, {"ce": llm4sbr_lib.cross_entropy(scores, batch.targets, batch.graph_mask), **named}

    return Task(init=lambda rng, batch: model.init(rng, batch, train=False), terms=terms,
                spec={"ce": (1.0, False), **extra_spec}, node_tables=tables)

  perspectives, pairing = tuple(config.perspectives), tuple(config.pairing)
  model = llm4sbr_lib.LLM4SBR(backbone=backbone, hidden=config.hidden, perspectives=perspectives, pairing=pairing,
                              fusion=config.fusion, **score_options)
  paired = [p for p, q in zip(perspectives, pairing) if q != "none"]
  spec = {"ce": (1.0, False), **extra_spec}
  for p in paired:
    spec.update({f"align/{p}": (config.tau, False), f"uniform_intent/{p}": (config.tau / 2, True),
                 f"uniform_session/{p}": (config.tau / 2, True)})

  def terms(params, batch, train, rng=None):
    out, named = _apply(model, params, batch, batch.intents, train=train, rng=rng)
    t = llm4sbr_lib.loss_terms(out, batch.targets, batch.graph_mask)
    named["ce"] = (t.ce_sum, t.count)
    for q, p in enumerate(paired):
      named.update({f"align/{p}": (t.align_sum[q], t.count), f"uniform_intent/{p}": (t.unif_intent_sum[q], t.n_pairs),
                    f"uniform_session/{p}": (t.unif_session_sum[q], t.n_pairs)})
    return out.scores, named

  side = {}
  if perspectives:  # source and manifest (fingerprint, dim) are checked now; the arrays load later
    _check_source(config.intents.source)
    stage1 = intents_lib.open_stage1(config.intents.stage1_dir, dataset, verify=False)
    if config.intents.source == "llm":
      stage1.check_perspectives(perspectives)
    side = dict(side_shape=(len(perspectives), stage1.dim), load_side=lambda: intent_arrays(config, dataset))
  return Task(init=lambda rng, batch: model.init(rng, batch, batch.intents, train=False), terms=terms, spec=spec,
              node_tables=tables, **side)
