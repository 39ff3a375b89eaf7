"""Figure 4 ablation: LLM4SBR whole vs w/o long-term vs w/o short-term perspective (each removes its parameters and
loss terms).

Command:
  python experiments/paper.py --config experiments/configs/ablation.py \
    --config.dataset_dir data/processed/beauty_paper_valid --config.intents.stage1_dir runs/stage1_beauty_items \
    --config.intents.source item_text --workdir runs/ablation_beauty_item_text
Writes ablation.md / .csv / .png. The paper finds both perspectives help, short-term more on Beauty.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.llm4sbr = True
  c.study = "ablation"
  return c
