"""Exports a processed dataset in the official backbones' format: pickled `(seqs, labels)` per split (SR-GNN, TAGNN,
GCE-GNN, S2-DHCN) and `all_train_seq.txt` (GCE-GNN's `build_graph.py`).

  python experiments/export_srgnn.py --dataset_dir data/processed/beauty_paper --out_dir data/srgnn/beauty
  # then, in the official SR-GNN checkout: copy train.txt/test.txt to datasets/<name>/ and set n_node to the printed
  # value (num_items + 1).

Pickle is written only here, for the official PyTorch code (see llm4sbr_jax/export.py); the project never reads it.
"""

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset, export  # pylint: disable=g-import-not-at-top

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset directory (experiments/prepare_data.py).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write train.txt, test.txt (and valid.txt).")
flags.mark_flags_as_required(["dataset_dir", "out_dir"])


def main(argv):
  del argv
  ds = dataset.load_dataset(_DATASET_DIR.value, verify=True)
  for path in export.export_srgnn(ds, _OUT_DIR.value):
    print(path)
  print(f"n_node = {ds.num_items + 1} (items + padding; S2-DHCN: {ds.num_items}); fingerprint {ds.fingerprint[:12]}")


if __name__ == "__main__":
  app.run(main)
