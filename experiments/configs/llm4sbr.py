"""LLM4SBR(SR-GNN) with the paper's settings (tau 0.1, f 5, concat fusion, both perspectives).

Command (LLM intents from a stage-1 run over the same processed dataset):
  python experiments/train.py --config experiments/configs/llm4sbr.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty \
    --workdir runs/llm4sbr_beauty
LLM-free item-text intents instead: add --config.intents.source=item_text (stage 1 run with --items_only).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.llm4sbr = True
  return c
