"""Exports a processed dataset for other code: the official backbones' files and RecBole atomic files.

  python experiments/export_data.py --dataset_dir data/processed/beauty_paper --out_dir data/export/beauty_paper
  # official: pickled (seqs, labels) per split (SR-GNN, TAGNN, GCE-GNN, S2-DHCN) and all_train_seq.txt (GCE-GNN's
  # build_graph.py); copy them to datasets/<name>/ of the official checkout and set n_node to the printed value.
  # recbole: beauty_paper.inter/.item and beauty_paper.{train,valid,test}.inter (our exact split) with the settings
  # beauty_paper.yaml; RecBole reads them as data_path=data/export, dataset=beauty_paper.
  python experiments/export_data.py --dataset_dir data/processed/beauty_paper --out_dir data/export/beauty_paper \
    --format recbole

Pickle is written only for the official PyTorch code (see llm4sbr_jax/export.py); the project never reads it.
See docs/data.md ("Export").
"""

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset, export  # pylint: disable=g-import-not-at-top

_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset directory (experiments/prepare_data.py).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the files; RecBole files are named after its last "
                               "path component.")
_FORMAT = flags.DEFINE_list("format", list(export.FORMATS), f"Formats to write, comma-separated: {export.FORMATS}.")
flags.mark_flags_as_required(["dataset_dir", "out_dir"])
flags.register_validator("format", lambda v: bool(v) and set(v) <= set(export.FORMATS),
                         f"--format: expected a comma-separated subset of {export.FORMATS}")


def main(argv):
  del argv
  try:
    ds = dataset.load_dataset(_DATASET_DIR.value, verify=True)
    paths = ((export.export_official(ds, _OUT_DIR.value) if "official" in _FORMAT.value else []) +
             (export.export_recbole(ds, _OUT_DIR.value) if "recbole" in _FORMAT.value else []))
  except (dataset.DatasetError, export.ExportError) as e:  # A located message is all the user needs; no traceback.
    sys.exit(f"error: {e}")
  for path in paths:
    print(path)
  if "official" in _FORMAT.value:
    print(f"official: n_node = {ds.num_items + 1} (items + padding; S2-DHCN: {ds.num_items})")
  if "recbole" in _FORMAT.value:
    out = Path(_OUT_DIR.value).resolve()
    print(f"recbole: data_path={out.parent}, dataset={out.name}, config_file_list=[{out / (out.name + '.yaml')}]")
  print(f"fingerprint {ds.fingerprint[:12]}")


if __name__ == "__main__":
  app.run(main)
