"""Figure 5 f sweep: intent localization top-f in {0, 1, 3, 5} (0 = raw LLM answer embedding). Localization runs in
stage 2 and is cached per f, so the sweep never reruns the LLM.

Command:
  python experiments/paper.py --config experiments/configs/fsweep.py \
    --config.dataset_dir data/processed/beauty_llm_subset --config.intents.stage1_dir runs/stage1_beauty_subset \
    --workdir runs/fsweep_beauty_llm
Writes fsweep.md / .csv / .png.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.llm4sbr = True
  c.study = "fsweep"
  c.study_f_values = (0, 1, 3, 5)
  return c
