"""The one place that names the backbones: name -> how to build the module and what its batches need.

Adding a backbone means one module in `llm4sbr_jax/models/` and one entry in `BACKBONES`. The trainer, tasks,
studies, benchmark and LLM4SBR wrapper look backbones up here and never branch on a name; bare vs LLM4SBR around the
backbone is the separate `config.llm4sbr` choice.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import numpy as np

from llm4sbr_jax.dataset import ProcessedDataset
from llm4sbr_jax.models import gcegnn, s2dhcn, srgnn, tagnn

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """A registered backbone.

  Attributes:
    label: the name tables print ("SR-GNN").
    build: (config, dataset) -> the linen backbone module (named "backbone").
    node_tables: optional (config, dataset) -> {name: [n + 1, ...]} per-item tables whose rows every batch carries
      for its nodes (`SessionBatch.extra`), built on the host once per run.
    losses: optional config -> {name: weight} of the extra loss terms the backbone sows into the `losses`
      collection as (sum, count) during training (S2-DHCN's self-supervised term).
    official: the official code's training settings where they differ from the project defaults (config keys),
      applied by `official_config` unless `config.official_settings` is False.
    paper: the paper's Table 2 P@20 / MRR@20 (bare, LLM4SBR) per dataset, for the reports.
  """

  label: str
  build: Callable[[Any, ProcessedDataset], nn.Module]
  node_tables: Optional[Callable[[Any, ProcessedDataset], Mapping[str, np.ndarray]]] = None
  losses: Optional[Callable[[Any], Mapping[str, float]]] = None
  official: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  paper: Mapping[str, Mapping[str, tuple[float, float]]] = dataclasses.field(default_factory=dict)


def _gcegnn_tables(config: Any, dataset: ProcessedDataset) -> Mapping[str, np.ndarray]:
  c = config.gcegnn
  neighbours, weights = gcegnn.cached_global_graph(dataset, config.get("dataset_dir") or None, c.sample_num,
                                                   c.epsilon)
  sampled = gcegnn.sample_neighbours(neighbours, weights, np.random.default_rng(config.seed))
  return gcegnn.hop_tables(*sampled, c.hop)


BACKBONES: dict[str, BackboneSpec] = {
    "srgnn": BackboneSpec(
        "SR-GNN", lambda c, ds: srgnn.SRGNN(ds.num_items, c.hidden, c.gnn_steps, name="backbone"),
        paper={"beauty": {"bare": (14.86, 3.99), "llm4sbr": (16.30, 5.00)}}),
    "tagnn": BackboneSpec(
        "TAGNN", lambda c, ds: tagnn.TAGNN(ds.num_items, c.hidden, c.gnn_steps, item_chunk=c.tagnn.item_chunk,
                                           name="backbone"),
        paper={"beauty": {"bare": (15.23, 3.97), "llm4sbr": (16.76, 5.05)}}),
    "gcegnn": BackboneSpec(
        "GCE-GNN", lambda c, ds: gcegnn.GCEGNN(
            ds.num_items, c.hidden, positions=max(gcegnn.OFFICIAL_POSITIONS, ds.longest_prefix), hop=c.gcegnn.hop,
            sample_num=c.gcegnn.sample_num, dropout_local=c.gcegnn.dropout_local,
            dropout_global=c.gcegnn.dropout_global, dropout_gcn=c.gcegnn.dropout_gcn, name="backbone"),
        node_tables=_gcegnn_tables, official={"patience": 3},
        paper={"beauty": {"bare": (12.38, 4.54), "llm4sbr": (18.08, 4.80)}}),
    "s2dhcn": BackboneSpec(
        "S2-DHCN", lambda c, ds: s2dhcn.S2DHCN(
            ds.num_items, s2dhcn.build_hypergraph(ds.splits["train"], ds.num_items, c.s2dhcn.form,
                                                c.s2dhcn.get("kernel", "auto")),  # runs saved before the option
            c.hidden,
            layers=c.s2dhcn.layers, positions=max(gcegnn.OFFICIAL_POSITIONS, ds.longest_prefix), name="backbone"),
        losses=lambda c: {"ssl": c.s2dhcn.beta * c.batch_size},  # beta x the official batch SUM
        official={"weight_decay": 0.0, "lr_decay": 1.0},  # Adam without L2 or schedule
        paper={"beauty": {"bare": (17.54, 3.99), "llm4sbr": (17.48, 5.15)}}),
}


class ConfigError(ValueError):
  """A config value that names nothing known (a backbone, an intents source); launchers print it as one line."""


def get(name: str) -> BackboneSpec:
  """The registered backbone `name`; a clear error listing the registered ones otherwise."""
  if name not in BACKBONES:
    raise ConfigError(f"config.backbone: unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name]


def official_config(config: Any) -> Any:
  """`config` with its backbone's official training settings (`BackboneSpec.official`), each change logged.

  Off with `config.official_settings = False` (then the config's own values are used as they are).
  """
  official = get(config.backbone).official
  if not config.get("official_settings", True) or not official:
    return config
  config = config.copy_and_resolve_references()
  for key, value in official.items():
    if config[key] != value:
      log.info("%s official setting: %s %s -> %s (--config.official_settings=False keeps yours)",
               config.backbone, key, config[key], value)
      config[key] = value
  return config
