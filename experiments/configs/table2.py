"""Table 2 pair: SR-GNN vs LLM4SBR(SR-GNN) on one dataset, same split and settings; P@K (= HR@K) and MRR@K.

Command:
  python experiments/paper.py --config experiments/configs/table2.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty_items \
    --config.intents.source item_text --workdir runs/table2_beauty_item_text
Writes table2.md / table2.csv / table2.png in the workdir. Paper (Beauty): SR-GNN P@20 14.86, MRR@20 3.99;
LLM4SBR(SR-GNN) 16.30 / 5.00. See README "Results" for ours.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.study = "table2"
  return c
