"""A backbone (default SR-GNN) with the paper's settings (section 4.1.3) on a processed dataset.

`--config.backbone` picks the backbone (srgnn, tagnn, gcegnn, s2dhcn; llm4sbr_jax/models/registry.py) and
`--config.llm4sbr=True` wraps it in LLM4SBR.

Command:
  python experiments/train.py --config experiments/configs/default.py \
    --config.dataset_dir data/processed/beauty_paper_valid --workdir runs/srgnn_beauty_paper
Expected (SR-GNN on Beauty, paper split with a validation split): HR@20 about 16, MRR@20 about 5 (docs/results.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset_dir = ""  # a processed dataset dir (experiments/prepare_data.py)
  c.backbone = "srgnn"  # a name in llm4sbr_jax/models/registry.py
  c.llm4sbr = False  # True: LLM4SBR around the backbone
  c.hidden = 100
  c.gnn_steps = 1
  c.batch_size = 100  # global batch, split over the local devices
  c.num_epochs = 30
  c.patience = 10  # epochs without a better validation `select_metric`
  c.select_metric = "hr@20"
  c.lr = 1e-3
  c.lr_decay = 0.1
  c.lr_decay_every = 3
  c.weight_decay = 1e-5  # coupled L2, like torch Adam(weight_decay)
  c.official_settings = True  # apply the backbone's official training settings (registry `official`) over these
  c.seed = 0
  c.parallel = "shard_map"  # or "pmap"
  c.budget_std = 4.0  # batch budgets: mean + budget_std * std per batch
  c.max_train_samples = 0  # 0 = all; >0 keeps the first N train samples (quick runs)
  c.progress = True
  c.score_chunk = 0  # > 0: loss and ranks over the items in chunks of this many (large catalogues; llm4sbr_jax/scoring)
  c.shard_items = False  # True: item tables and their Adam moments split over the devices (llm4sbr_jax/parallel)
  c.shard_scores = False  # with shard_items: each device scores its own item rows, no whole table (llm4sbr_jax/scoring)
  c.score_dtype = "float32"  # "bfloat16": the item-scoring product's operands (mixed precision; f32 params and loss)
  # Backbone settings (official defaults); each backbone reads its own group.
  c.tagnn = ml_collections.ConfigDict()
  c.tagnn.item_chunk = 0  # items per chunk of the target-aware scores (0 = auto: bounded [positions, chunk])
  c.gcegnn = ml_collections.ConfigDict()
  c.gcegnn.hop = 1
  c.gcegnn.sample_num = 12  # global neighbours per item
  c.gcegnn.epsilon = 3  # global graph: pairs within this distance
  c.gcegnn.dropout_local = 0.0
  c.gcegnn.dropout_global = 0.5
  c.gcegnn.dropout_gcn = 0.0
  c.s2dhcn = ml_collections.ConfigDict()
  c.s2dhcn.layers = 3  # hypergraph and line-graph layers
  c.s2dhcn.beta = 0.01  # SSL weight (official README: 0.01 Diginetica, 0.02 Tmall)
  c.s2dhcn.form = "auto"  # hypergraph product: "matrix", "factored" or "auto" (fewer gathered rows)
  c.s2dhcn.kernel = "auto"  # CSR kernel: "native" (llm4sbr_jax/cpu_kernels.py), "bcsr" (jax.experimental.sparse), "auto"
  # LLM4SBR (llm4sbr = True); ignored by a bare backbone.
  c.perspectives = ("long-term", "short-term")
  c.pairing = ("global", "local")  # official pairing: long-term <-> global, short-term <-> local
  c.fusion = "concat"  # paper eq. 9; "gate" = the official code
  c.tau = 0.1
  c.intents = ml_collections.ConfigDict()
  c.intents.source = "llm"  # "llm" (stage-1 answers) or "item_text" (item-name embeddings, no LLM)
  c.intents.stage1_dir = ""  # third_party_infer output directory
  c.intents.f = 5  # localization top-f (0 = raw answer embedding)
  return c
