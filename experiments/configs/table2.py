"""Table 2: every backbone bare and inside LLM4SBR on one dataset, same split and settings; P@K (= HR@K) and MRR@K.

Command:
  python experiments/paper.py --config experiments/configs/table2.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty_items \
    --config.intents.source item_text --workdir runs/table2_beauty_item_text
  # a subset of the backbones: --config.backbones=srgnn,gcegnn
  # MovieLens: the same command on data/processed/ml100k_paper_valid (or ml-1m once ratings.dat is at hand)
Writes table2.md / table2.csv / table2.png in the workdir, with the improvement of each LLM4SBR(X) over X. Each
backbone trains with its official settings (registry `official`: GCE-GNN patience 3; S2-DHCN no weight decay, no
lr schedule). Paper (Beauty, P@20 / MRR@20): SR-GNN 14.86 / 3.99 -> 16.30 / 5.00; TAGNN 15.23 / 3.97 -> 16.76 /
5.05; GCE-GNN 12.38 / 4.54 -> 18.08 / 4.80; S2-DHCN 17.54 / 3.99 -> 17.48 / 5.15. See docs/results.md for ours.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.study = "table2"
  c.backbones = ("srgnn", "tagnn", "gcegnn", "s2dhcn")
  return c
