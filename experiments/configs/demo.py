"""The offline demo (`make demo`): SR-GNN vs LLM4SBR(SR-GNN) on the generated toy shop.

Stage 1 runs SmolLM2-135M-Instruct + all-MiniLM-L6-v2 from their PyPI packages; the toy shop's ~300 training samples
make the paper's batch of 100 only three steps an epoch, so the demo uses batch 20 (everything else as the paper).
Command: `make demo` (or `python experiments/demo.py`). Expected: LLM4SBR beats SR-GNN on HR@K and MRR@K
(see docs/results.md "Demo").
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.study = "demo"
  c.batch_size = 20
  c.toyshop_sessions = 100
  c.toyshop_seed = 0
  c.progress = False
  return c
