"""Prepares a processed dataset directory from raw data and prints its Table-1-style statistics.

  # Paper table (Beauty: 158,139 train / 18,000 test / 12,101 items), local raw files:
  python experiments/prepare_data.py --dataset beauty --raw_dir ../shared/data/beauty \
    --protocol paper --test_size 18000 --valid_size 0 --out_dir data/processed/beauty_paper
  # Downloads the official files to data/raw/ml-1m, 10% random test, 10% of train as validation:
  python experiments/prepare_data.py --dataset ml-1m --out_dir data/processed/ml-1m_paper_valid
  # Paper table (ML-1M: one last-click sample per 10-minute session, 47,808 train / 5,313 test):
  python experiments/prepare_data.py --dataset ml-1m --protocol paper --valid_size 0 \
    --out_dir data/processed/ml-1m_paper
  # Users' own data (TSV session_or_user_id, item_id, timestamp; optional TSV item_id, name):
  python experiments/prepare_data.py --dataset generic --interactions my.tsv --item_names names.tsv \
    --protocol temporal --out_dir data/processed/mine
  # RecBole atomic files (session_id or user_id, item_id, timestamp; optional .item with a name column):
  python experiments/prepare_data.py --dataset recbole --inter my.inter --item my.item --item_name_field title \
    --out_dir data/processed/mine_recbole
  # A standard benchmark as SR-GNN / GCE-GNN's scripts prepare it (diginetica, yoochoose1_64, yoochoose1_4, tmall,
  # nowplaying; the raw file from --raw_dir, see docs/data.md):
  python experiments/prepare_data.py --dataset diginetica --protocol reference \
    --raw_dir ../shared/data/diginetica-sample --valid_size 0 --out_dir data/processed/diginetica_sample_reference

See docs/data.md for the protocols.
"""

import sys
import time
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset, preprocess, raw, reference  # pylint: disable=g-import-not-at-top

# Per-dataset defaults: session gap (None: one session per user) and the paper's test size.
DEFAULTS = {"beauty": {"gap": None, "paper_test_size": 18000}, "ml-1m": {"gap": 10.0, "paper_test_size": 0.1},
            "ml-100k": {"gap": 10.0, "paper_test_size": 0.1}, "generic": {"gap": None, "paper_test_size": 0.1},
            "recbole": {"gap": None, "paper_test_size": 0.1}}
# The paper protocol's sample construction where it is not `all` (Table 1's ML-1M row adds up only with one
# last-click sample per session; ML-100K is not in the paper and keeps `all`, see docs/data.md).
PAPER_SAMPLES = {"ml-1m": "last"}

# The standard benchmarks take their filters and split from the official scripts (--protocol reference only).
DEFAULTS.update({k: {"gap": None, "paper_test_size": None} for k in reference.DATASETS})

_DATASET = flags.DEFINE_enum("dataset", None, list(DEFAULTS), "Which raw dataset to prepare.")
_RAW_DIR = flags.DEFINE_string("raw_dir", None, "Directory holding the raw files (nothing is downloaded); "
                               "default: download the official files to data/raw/<dataset>.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Processed dataset directory; default "
                               "data/processed/<dataset>_<protocol>.")
_PROTOCOL = flags.DEFINE_enum("protocol", "paper", list(preprocess.PROTOCOLS) + ["reference"],
                              "paper: seeded random split of the prefix samples; temporal: latest samples held out; "
                              "reference: the official SR-GNN / GCE-GNN preprocessing of a standard benchmark.")
_TEST_SIZE = flags.DEFINE_string("test_size", None, "Test samples: an integer count or a fraction in [0, 1); "
                                 "default: the paper's (Beauty 18000, else 0.1) for paper, 0.1 for temporal.")
_VALID_SIZE = flags.DEFINE_string("valid_size", "0.1", "Validation samples carved from train by the same protocol: "
                                  "an integer count or a fraction of train; 0 = no validation split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the paper protocol's random split.")
_GAP = flags.DEFINE_string("session_gap_minutes", None, "Split a user's clicks at gaps longer than this many minutes; "
                           "'none' = one session per key. Default: 10 for MovieLens, none otherwise.")
_MIN_COUNT = flags.DEFINE_integer("min_item_count", 5, "Drop items seen fewer times.")
_INTERACTIONS = flags.DEFINE_string("interactions", None, "generic: TSV session_or_user_id<TAB>item_id<TAB>timestamp. "
                                    "A reference benchmark: its raw file (instead of --raw_dir).")
_ITEM_NAMES = flags.DEFINE_string("item_names", None, "generic (optional): TSV item_id<TAB>name.")
_NAME = flags.DEFINE_string("name", None, "Dataset name stored in dataset.json (default: --dataset).")
_SAMPLES = flags.DEFINE_enum("samples", None, list(preprocess.SAMPLES), "all: every prefix of a session is a sample; "
                             "last: one sample per session (its last click the target). Default: the paper's for "
                             "--protocol paper (ML-1M last, else all), all otherwise.")
_INTER = flags.DEFINE_string("inter", None, "recbole: the .inter file (typed header session_id:token or "
                             "user_id:token, item_id:token, timestamp:float).")
_ITEM = flags.DEFINE_string("item", None, "recbole (optional): the .item file with item_id:token and a name column.")
_ITEM_NAME_FIELD = flags.DEFINE_string("item_name_field", None, "recbole: the .item column holding the names "
                                       "(default: its first token/token_seq column other than item_id).")
_TIMESTAMP_UNIT = flags.DEFINE_enum("timestamp_unit", "auto", list(raw.TIMESTAMP_UNITS), "recbole: timestamps in "
                                    "seconds, milliseconds, or auto (ms when the largest reaches 1e11).")
flags.mark_flag_as_required("dataset")


def parse_size(text: str) -> int | float:
  """'18000' -> 18000 (a count), '0.1' -> 0.1 (a fraction)."""
  try:
    return int(text)
  except ValueError:
    return float(text)


def _flag(name: str, text: str, parse, expected: str):
  """parse(text), or exit with one `error:` line naming the flag and what it expects."""
  try:
    return parse(text)
  except ValueError:
    sys.exit(f"error: --{name} {text!r}: expected {expected}")


def statistics_table(ds: dataset.ProcessedDataset) -> str:
  """Table-1-style statistics of a processed dataset (markdown)."""
  stats = dataset.statistics(ds)
  lengths = [ds.splits[s].lengths for s in dataset.SPLITS if len(ds.splits[s])]
  columns = {
      "train": f"{stats['train']:,}", "valid": f"{stats['valid']:,}", "test": f"{stats['test']:,}",
      "clicks": f"{stats['clicks']:,}", "items": f"{stats['items']:,}", "sessions": f"{stats['sessions']:,}",
      "avg session len": f"{stats['avg_session_length']:.2f}",
      "avg prefix len": f"{sum(x.sum() for x in lengths) / sum(len(x) for x in lengths):.2f}",
      "max prefix len": f"{max(x.max() for x in lengths)}",
  }
  widths = [max(len(k), len(v)) for k, v in columns.items()]
  row = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
  return "\n".join([row(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", row(columns.values())])


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  name, protocol = _DATASET.value, _PROTOCOL.value
  size = "an integer count or a fraction such as 0.1"
  gap = DEFAULTS[name]["gap"] if _GAP.value is None else (
      None if _GAP.value.lower() == "none" else _flag("session_gap_minutes", _GAP.value, float, "minutes or 'none'"))
  test_size = _flag("test_size", _TEST_SIZE.value, parse_size, size) if _TEST_SIZE.value is not None else (
      DEFAULTS[name]["paper_test_size"] if protocol == "paper" else 0.1)
  valid_size = _flag("valid_size", _VALID_SIZE.value, parse_size, size)
  samples = _SAMPLES.value or (PAPER_SAMPLES.get(name, "all") if protocol == "paper" else "all")
  if (name in reference.DATASETS) != (protocol == "reference"):
    sys.exit(f"error: --dataset {name} --protocol {protocol}: the benchmarks {', '.join(reference.DATASETS)} are "
             "prepared with --protocol reference (the official scripts' filters and date split) and it prepares "
             "only them")
  if protocol == "reference" and _SAMPLES.value is not None:
    sys.exit(f"error: --samples {_SAMPLES.value}: --protocol reference builds the samples as the official scripts "
             "do (every prefix); drop --samples")
  if name == "generic" and not _INTERACTIONS.value:
    raise app.UsageError("--dataset generic needs --interactions (and optionally --item_names)")
  if name == "recbole" and not _INTER.value:
    raise app.UsageError("--dataset recbole needs --inter (and optionally --item, --item_name_field)")
  if _ITEM_NAME_FIELD.value and not _ITEM.value:
    raise app.UsageError("--item_name_field names a column of the --item file; give --item too")
  start = time.perf_counter()
  try:
    if name == "generic":
      data = raw.read_generic(_INTERACTIONS.value, _ITEM_NAMES.value)
    elif name == "recbole":
      data = raw.read_recbole(_INTER.value, _ITEM.value, _ITEM_NAME_FIELD.value, _TIMESTAMP_UNIT.value)
    elif protocol == "reference":
      data = reference.load(name, raw_dir=_RAW_DIR.value, path=_INTERACTIONS.value)
    else:
      data = raw.load(name, raw_dir=_RAW_DIR.value)
    loaded = time.perf_counter()
    if protocol == "reference":
      ds = reference.preprocess(data, _NAME.value or name, reference.DATASETS[name], min_item_count=_MIN_COUNT.value,
                                valid_size=valid_size, seed=_SEED.value, source={"dataset": name})
    else:
      ds = preprocess.preprocess(data, _NAME.value or name, protocol=protocol, test_size=test_size,
                                 valid_size=valid_size, seed=_SEED.value,
                                 session_gap_minutes=gap, min_item_count=_MIN_COUNT.value, samples=samples,
                                 source={"dataset": name})
  except (raw.RawDataError, preprocess.PreprocessError) as e:  # A located message is all the user needs.
    sys.exit(f"error: {e}")
  out_dir = _OUT_DIR.value or str(Path("data") / "processed" / f"{name}_{protocol}")
  fingerprint = dataset.save_dataset(ds, out_dir)
  done = time.perf_counter()
  print(statistics_table(ds))
  print(f"\n{out_dir}  fingerprint {fingerprint[:12]}  protocol {dict(ds.protocol)}")
  print(f"time: read {loaded - start:.1f}s, preprocess+save {done - loaded:.1f}s, total {done - start:.1f}s")


if __name__ == "__main__":
  app.run(main)
