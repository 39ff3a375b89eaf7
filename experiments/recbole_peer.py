"""Times RecBole-GNN's own SR-GNN / TAGNN / GCE-GNN (PyTorch) on a processed dataset: the peer of benchmark.py.

RecBole-GNN is the PyTorch library a user would pick instead of this one. This script runs in its own virtual
environment (RecBole and RecBole-GNN are not dependencies of llm4sbr-jax; it imports neither jax nor this package)
and prints one JSON line per model, to set beside `experiments/benchmark.py`'s figures run on the same machine:

  python3.11 -m venv ../recbole_venv
  ../recbole_venv/bin/pip install torch==2.13.0 torch_geometric numpy scipy pandas tqdm colorlog colorama pyyaml \
    texttable psutil thop tensorboard tabulate
  git clone https://github.com/RUCAIBox/RecBole ../RecBole          # measured at 7b02be5
  git clone https://github.com/RUCAIBox/RecBole-GNN ../RecBole-GNN  # measured at 632ef88
  ../recbole_venv/bin/python experiments/recbole_peer.py --recbole_dir ../RecBole --recbole_gnn_dir ../RecBole-GNN \
    --dataset_dir data/processed/beauty_paper_valid --models srgnn,tagnn,gcegnn --train_batches 100

What is timed, per batch of 100 (after `--warmup` untimed batches), mirroring RecBole's trainer with its loader,
logging and evaluator left out (all in RecBole-GNN's favour):
  * training: the dataset rows + RecBole-GNN's `SessionGraph` collate, `.to(device)`, `zero_grad`,
    `model.calculate_loss`, `backward`, Adam (lr 1e-3, RecBole's default weight decay 0);
  * evaluation: the collate, `full_sort_predict` under `no_grad`, the padding item's column set to -inf, top-20.
Set-up (untimed): the split's train prefixes (training) and test prefixes (evaluation) in RecBole's sequential layout
(`item_id_list` right-padded to MAX_ITEM_LIST_LENGTH = 50, RecBole's default, keeping each prefix's last 50 clicks),
session graphs built once by RecBole-GNN's own `SessionGraphDataset.session_graph_construction` (GCE-GNN: its
`reverse_session` first, and its global graph by its own `construct_global_graph` over the whole train split),
for the rows the seeded batches use (`--all_graphs`: every row, as its dataset does; same graphs, slower set-up).
Models: embedding 100, step 1, CE loss; GCE-GNN with its `GCEGNN.yaml` values. `torch_sparse` (a compiled
extension without a wheel for every torch) is replaced by a stub when missing: RecBole-GNN imports it but these
three models never call it. Each model runs in a fresh process, so `peak_rss_gb` is its own.
argparse, not absl: the script runs under RecBole's environment, not ours.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
import types

os.environ.setdefault("TQDM_DISABLE", "1")  # RecBole-GNN's per-row progress bars

MODELS = ("srgnn", "tagnn", "gcegnn")
MAX_LEN = 50  # RecBole's default MAX_ITEM_LIST_LENGTH
BATCH = 100
TOPK = 20
ITEM_LIST, ITEM_LEN = "item_id_list", "item_length"


def _commit(path: str) -> str:
  """The tree's own git commit (a clone), or its COMMIT file (an exported tree), else 'unknown'. Only the tree's own
  .git is asked: `git -C` on an exported tree would report whatever repository encloses it."""
  marker = os.path.join(path, "COMMIT")
  if os.path.isdir(os.path.join(path, ".git")):
    try:
      return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      pass
  return open(marker).read().strip() if os.path.isfile(marker) else "unknown"


def _import_recbole(recbole_dir: str, recbole_gnn_dir: str):
  """Puts both source trees first on sys.path (stubbing torch_sparse if absent) and imports what is timed."""
  for d, package in ((recbole_dir, "recbole"), (recbole_gnn_dir, "recbole_gnn")):
    if not os.path.isdir(os.path.join(d, package)):
      raise SystemExit(f"--{package}_dir {d!r}: no {package}/ package inside (a clone of RUCAIBox/"
                       f"{'RecBole' if package == 'recbole' else 'RecBole-GNN'} is expected)")
    sys.path.insert(0, os.path.abspath(d))
  try:
    import torch_sparse  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    stub = types.ModuleType("torch_sparse")

    def unavailable(*args, **kwargs):
      raise NotImplementedError("torch_sparse is stubbed by recbole_peer.py (not installed)")

    stub.SparseTensor, stub.matmul, stub.__version__ = unavailable, unavailable, "0+stub"
    sys.modules["torch_sparse"] = stub
  # pylint: disable=import-outside-toplevel
  from recbole.data.interaction import Interaction
  from recbole_gnn.data.dataset import GCEGNNDataset, SessionGraphDataset
  from recbole_gnn.data.transform import SessionGraph
  from recbole_gnn.model.sequential_recommender import GCEGNN, SRGNN, TAGNN
  return types.SimpleNamespace(Interaction=Interaction, GCEGNNDataset=GCEGNNDataset,
                               SessionGraphDataset=SessionGraphDataset, SessionGraph=SessionGraph,
                               classes={"srgnn": SRGNN, "tagnn": TAGNN, "gcegnn": GCEGNN})


def model_config(name: str, device) -> dict:
  """The config keys the three constructors and the SessionGraph transform read."""
  cfg = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
         "ITEM_LIST_LENGTH_FIELD": ITEM_LEN, "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": MAX_LEN,
         "device": device, "gnn_transform": "sess_graph", "embedding_size": 100, "loss_type": "CE",
         "learning_rate": 1e-3}
  if name == "gcegnn":  # GCEGNN.yaml
    cfg.update({"leakyrelu_alpha": 0.2, "dropout_local": 0.0, "dropout_global": 0.5, "dropout_gcn": 0.0,
                "build_global_graph": True, "sample_num": 12, "hop": 1})
  else:
    cfg["step"] = 1
  return cfg


def mini_dataset(rb, gce: bool, inter, n_items: int):
  """The attributes of a RecBole SequentialDataset that RecBole-GNN's graph construction, transform and model
  constructors read, with RecBole-GNN's own (unmodified) methods."""
  base = rb.GCEGNNDataset if gce else rb.SessionGraphDataset
  methods = {"session_graph_construction": base.session_graph_construction}
  if gce:
    methods.update(reverse_session=base.reverse_session, bidirectional_edge=base.bidirectional_edge)
  cls = type("MiniDataset", (), dict(methods, num=lambda self, field: self._n_items,
                                     __getitem__=lambda self, index: self.inter_feat[index]))
  ds = cls()
  ds.logger, ds.inter_feat, ds._n_items = logging.getLogger(), inter, n_items  # pylint: disable=protected-access
  ds.item_id_list_field, ds.item_list_length_field, ds.iid_field = ITEM_LIST, ITEM_LEN, "item_id"
  ds.field2seqlen = {ITEM_LIST: MAX_LEN}
  return ds


def load_split(rb, directory: str, split: str, rows=None):
  """RecBole's sequential layout of `rows` of one split (each prefix's last MAX_LEN clicks, right-padded)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  path = lambda f: os.path.join(directory, split, f + ".npy")
  if not os.path.isfile(path("targets")):
    raise SystemExit(f"{path('targets')}: missing; --dataset_dir must be a processed dataset "
                     "(experiments/prepare_data.py)")
  items, offsets, targets, sessions = (np.load(path(f), allow_pickle=False)
                                       for f in ("items", "offsets", "targets", "sessions"))
  rows = np.arange(len(targets)) if rows is None else rows
  ends = offsets[rows + 1]
  lens = np.minimum(ends - offsets[rows], MAX_LEN)
  seq = np.zeros((len(rows), MAX_LEN), np.int64)
  for k, (end, n) in enumerate(zip(ends, lens)):
    seq[k, :n] = items[end - n:end]
  return rb.Interaction({"user_id": torch.from_numpy(sessions[rows].astype(np.int64)),
                         "item_id": torch.from_numpy(targets[rows].astype(np.int64)),
                         ITEM_LIST: torch.from_numpy(seq), ITEM_LEN: torch.from_numpy(lens.astype(np.int64))})


def run_model(args) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  rb = _import_recbole(args.recbole_dir, args.recbole_gnn_dir)
  name, gce = args.models, args.models == "gcegnn"
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  meta = json.load(open(os.path.join(args.dataset_dir, "dataset.json")))
  n_items = meta["num_items"] + 1  # RecBole's item count includes [PAD] = 0

  def batches(split: str, count: int) -> list:
    n = meta["splits"][split]
    perm = np.concatenate([rng.permutation(n) for _ in range(-(-count * BATCH // n))])
    return [perm[i * BATCH:(i + 1) * BATCH] for i in range(count)]

  def graph_dataset(split: str, order: list, reversed_full=None):
    """Graphs for the rows `order` uses (or all); `order` re-indexed into that dataset."""
    n = meta["splits"][split]
    rows = np.arange(n) if args.all_graphs else np.unique(np.concatenate(order))
    if reversed_full is not None:
      ds = mini_dataset(rb, gce, reversed_full[torch.from_numpy(rows)], n_items)
    else:
      ds = mini_dataset(rb, gce, load_split(rb, args.dataset_dir, split, rows), n_items)
      if gce:
        ds.reverse_session()
    ds.session_graph_construction()
    where = np.searchsorted(rows, np.arange(n))
    return ds, [where[b] for b in order]

  train_order, eval_order = batches("train", args.warmup + args.train_batches), batches("test", args.warmup +
                                                                                         args.eval_batches)
  cfg = model_config(name, torch.device("cpu"))
  t0 = time.perf_counter()
  full = None
  if gce:  # GCE-GNN's global graph is built in the model's constructor from the whole (reversed) train split
    full = mini_dataset(rb, True, load_split(rb, args.dataset_dir, "train"), n_items)
    full.reverse_session()
  train_ds, train_order = graph_dataset("train", train_order, full.inter_feat if gce else None)
  test_ds, eval_order = graph_dataset("test", eval_order)
  model = rb.classes[name](cfg, full if gce else train_ds)
  del full
  setup_s = time.perf_counter() - t0
  optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])
  transform = rb.SessionGraph(cfg)
  collate = lambda ds, index: transform(ds, ds[np.asarray(index)]).to(cfg["device"])

  model.train()
  losses = []
  for i, index in enumerate(train_order):
    if i == args.warmup:
      t_train = time.perf_counter()
    inter = collate(train_ds, index)
    optimizer.zero_grad()
    loss = model.calculate_loss(inter)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  train_s = time.perf_counter() - t_train

  model.eval()
  hits = 0
  with torch.no_grad():
    for i, index in enumerate(eval_order):
      if i == args.warmup:
        t_eval = time.perf_counter()
      scores = model.full_sort_predict(collate(test_ds, index)).view(-1, n_items)
      scores[:, 0] = -np.inf
      top = torch.topk(scores, TOPK, dim=-1).indices
      hits += (top == test_ds.inter_feat["item_id"][torch.from_numpy(np.asarray(index))][:, None]).any(1).sum().item()
  eval_s = time.perf_counter() - t_eval

  return {"model": name, "train_sess_per_s": round(args.train_batches * BATCH / train_s, 1),
          "eval_sess_per_s": round(args.eval_batches * BATCH / eval_s, 1),
          "train_ms_per_batch": round(1000 * train_s / args.train_batches, 2),
          "eval_ms_per_batch": round(1000 * eval_s / args.eval_batches, 2),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
          "setup_s": round(setup_s, 1), "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
          "eval_hit20": round(hits / (len(eval_order) * BATCH), 4), "threads": args.threads,
          "graphs": "all" if args.all_graphs else "used rows", "torch": torch.__version__,
          "recbole": _commit(args.recbole_dir), "recbole_gnn": _commit(args.recbole_gnn_dir)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--recbole_dir", required=True, help="a RecBole source tree (holds recbole/)")
  p.add_argument("--recbole_gnn_dir", required=True, help="a RecBole-GNN source tree (holds recbole_gnn/)")
  p.add_argument("--dataset_dir", default="data/processed/beauty_paper_valid")
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
  p.add_argument("--train_batches", type=int, default=50)
  p.add_argument("--eval_batches", type=int, default=50)
  p.add_argument("--warmup", type=int, default=2, help="untimed training and evaluation batches first")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--all_graphs", action="store_true", help="build every row's session graph (slower set-up)")
  args = p.parse_args()
  models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(models) - set(MODELS))
  if unknown or args.train_batches < 1 or args.eval_batches < 1:
    p.error(f"unknown models {unknown} (choose from {MODELS})" if unknown else "batch counts must be >= 1")
  if len(models) == 1:
    args.models = models[0]
    print(json.dumps(run_model(args)), flush=True)
    return
  rc = 0
  for m in models:  # one process per model: peak RSS is its own
    argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("models", "all_graphs")]
    argv += ["--all_graphs"] * args.all_graphs + [f"--models={m}"]
    rc = subprocess.call([sys.executable, os.path.abspath(__file__), *argv]) or rc
  sys.exit(rc)


if __name__ == "__main__":
  main()
