"""Top-K recommendations for sessions, from a trained workdir (any backbone, bare or LLM4SBR).

  # Items by raw id or by name (one --session per session, items separated by --sep):
  python experiments/recommend.py --workdir "runs/beauty/backbone=srgnn__llm4sbr=True" \
    --session "B0000535UX|Jason Thin-To-Thick Extra Volume Shampoo, 8 Ounce" --k 10 --explain
  # A dataset sample (shows the true next item and its rank):
  python experiments/recommend.py --workdir ... --split test --index 17
  # The whole test split through the serving path, checked against the run's offline test_ranks.npy:
  python experiments/recommend.py --workdir ... --verify_split test

An LLM4SBR run gets its live intents the way it was trained: item text (instant), or, for a run trained on LLM
intents, a stage-1 call with the LLM and encoder its stage-1 manifest names (--device, --num_threads; another
--llm / --encoder is refused). --json prints the HTTP service's answer format. experiments/serve.py takes the same
model flags.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm4sbr_jax import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
from llm4sbr_jax import intents, metrics, serving, train
from third_party_infer.manifest import Stage1Error  # pylint: disable=g-import-not-at-top  (no torch)

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (results.json, checkpoints/).")
_EPOCH = flags.DEFINE_string("epoch", "best", "'best' (selected on validation), 'latest', or an epoch number.")
_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "Processed dataset (default: the run's config).")
_STAGE1_DIR = flags.DEFINE_string("stage1_dir", None, "Stage-1 directory of an LLM4SBR run (default: its config).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 0, "Longest session accepted (0: the dataset's longest prefix).")
_MAX_K = flags.DEFINE_integer("max_k", serving.DEFAULT_MAX_K, "Largest K a request may ask for.")
_LLM = flags.DEFINE_string("llm", None, "LLM intents: must equal the stage-1 manifest's LLM (default: it).")
_GGUF = flags.DEFINE_string("gguf_file", None, "LLM intents: must equal the manifest's GGUF file (default: it).")
_ENCODER = flags.DEFINE_string("encoder", None, "LLM intents: must equal the manifest's encoder (default: it).")
_TRUST = flags.DEFINE_bool("trust_remote_code", False, "LLM intents: allow the LLM repository's own code.")
_DEVICE = flags.DEFINE_string("device", "cpu", "LLM intents: torch device.")
_THREADS = flags.DEFINE_integer("num_threads", 0, "LLM intents: torch CPU threads (0: torch's default).")
_VERIFY_STAGE1 = flags.DEFINE_bool("verify_stage1", True, "LLM intents: refuse to start unless the LLM and encoder "
                                   "reproduce a stored stage-1 answer and item embeddings.")

_SESSION = flags.DEFINE_multi_string("session", [], "A session: raw item ids or names separated by --sep.")
_SEP = flags.DEFINE_string("sep", "|", "Item separator in --session.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of --index / --verify_split samples.")
_INDEX = flags.DEFINE_multi_integer("index", [], "A sample of --split as a session (repeatable).")
_K = flags.DEFINE_integer("k", 20, "Items to recommend per session.")
_EXPLAIN = flags.DEFINE_bool("explain", False, "LLM4SBR: print each perspective's intent as top-f catalog items.")
_JSON = flags.DEFINE_bool("json", False, "Print the answer as JSON (the HTTP service's format).")
_VERIFY_SPLIT = flags.DEFINE_string("verify_split", None, "Rank every sample of this split through the serving "
                                    "path; for the test split, compare with the run's offline test_ranks.npy.")
_LIMIT = flags.DEFINE_integer("limit", 0, "--verify_split: only the first N samples (0: all).")

ERRORS = (serving.ServingError, intents.IntentsError, dataset_lib.DatasetError, Stage1Error, FileNotFoundError)


def load_model() -> tuple[serving.Run, serving.LLMIntents | None]:
  """The run the model flags name and, for a run trained on LLM intents, its live stage-1 intent source."""
  run = serving.load_run(_WORKDIR.value, _EPOCH.value, _DATASET_DIR.value, _STAGE1_DIR.value)
  if not (run.config.llm4sbr and run.config.perspectives and run.config.intents.source == "llm"):
    return run, None
  from third_party_infer import live as live_lib  # pylint: disable=g-import-not-at-top  (torch)
  answerer = live_lib.LiveStage1(run.config.intents.stage1_dir, run.dataset.item_names, run.dataset.raw_item_ids,
                                 _LLM.value, _GGUF.value, _ENCODER.value, _TRUST.value, _DEVICE.value,
                                 num_threads=_THREADS.value)
  if _VERIFY_STAGE1.value:
    check = answerer.verify()
    print(f"stage-1 models reproduce stored outputs (item embeddings within {check['max_embedding_diff']:.1e}, "
          f"answer {check['answer']!r}; {check['seconds']:.1f}s)", file=sys.stderr, flush=True)
  return run, serving.make_llm_intents(run, answerer)


def build_recommender(run: serving.Run, live: serving.LLMIntents | None, buckets) -> serving.Recommender:
  """Compiles `buckets` for `run` (prints what it loaded and how long that took)."""
  t = time.perf_counter()
  rec = serving.Recommender(run, live, buckets, _MAX_LENGTH.value or None, _MAX_K.value)
  source = f", {run.config.intents.source} intents" if rec.perspectives else ""
  print(f"{run.label} on {run.dataset.name}: epoch {run.epoch} (best validation epoch {run.best_epoch}){source}; "
        f"buckets {rec.scorer.buckets} compiled in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
  return rec


def _print_rows(rows) -> None:
  for s, row in enumerate(rows):
    print(f"\nsession {s + 1} ({len(row['session'])} items):")
    for k, item in enumerate(row["session"], 1):
      print(f"  {k:3d}. {item['item_id']:<12} {item['name']}")
    if "target" in row:
      print(f"  next item: {row['target']['item_id']} {row['target']['name']} (rank {row['target']['rank']})")
    print(f"top {len(row['items'])}:")
    for item in row["items"]:
      print(f"  {item['rank']:3d}. {item['score']:8.3f}  {item['item_id']:<12} {item['name']}")
    for intent in row.get("intents", []):
      answer = f" LLM answer: {intent['answer']!r}" if "answer" in intent else ""
      print(f"  [{intent['perspective']}]{answer}")
      for item in intent["items"]:
        print(f"      w={item['weight']:.3f}  {item['item_id']:<12} {item['name']}")


def _verify(rec: serving.Recommender, split: str) -> None:
  t = time.perf_counter()
  ranks = serving.evaluate_split(rec, split, _LIMIT.value)
  seconds = time.perf_counter() - t
  m = {k: 100 * v.mean() for k, v in metrics.ranks_metrics(ranks).items()}
  print(f"{split}: {len(ranks)} samples ranked through the serving path in {seconds:.1f}s "
        f"({len(ranks) / seconds:.0f} sessions/s): HR@20 {m['hr@20']:.2f}, MRR@20 {m['mrr@20']:.2f}")
  path = os.path.join(rec.run.workdir, train.RANKS_FILE)
  if split != "test" or not os.path.exists(path):
    return
  if rec.run.epoch != rec.run.best_epoch:
    print(f"({path} holds epoch {rec.run.best_epoch}'s ranks, this is epoch {rec.run.epoch}: not compared)")
    return
  offline = np.load(path, allow_pickle=False)[:len(ranks)]
  same = int(np.sum(offline == ranks))
  print(f"offline evaluation ({path}): {same} of {len(ranks)} ranks equal"
        + ("" if same == len(ranks) else f"; largest difference {int(np.max(np.abs(offline - ranks)))}"))
  if same != len(ranks):
    sys.exit(1)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if not _VERIFY_SPLIT.value and not _SESSION.value and not _INDEX.value:
    sys.exit("error: give --session (raw item ids or names separated by --sep) or --index (a --split sample)")
  try:
    run, live = load_model()
    if _VERIFY_SPLIT.value:
      _verify(build_recommender(run, live, serving.DEFAULT_BUCKETS), _VERIFY_SPLIT.value)
      return
    given = [[t.strip() for t in s.split(_SEP.value) if t.strip()] for s in _SESSION.value]
    max_length = _MAX_LENGTH.value or run.dataset.longest_prefix
    sessions = serving.Catalog(run.dataset).resolve(given, max_length, "--session") if given else []
    split = run.dataset.splits.get(_SPLIT.value)
    if _INDEX.value and (split is None or not len(split)):
      sys.exit(f"error: --split {_SPLIT.value!r}: no such split with samples")
    bad = [i for i in _INDEX.value if not 0 <= i < len(split)]
    if bad:
      sys.exit(f"error: --index {bad[0]}: {_SPLIT.value} has samples 0..{len(split) - 1}")
    # One bucket of exactly this many sessions: a single compile.
    n = len(_SESSION.value) + len(_INDEX.value)
    rec = build_recommender(run, live, [min(n, serving.DEFAULT_BUCKETS[-1])])
    k = rec.check_k(_K.value, "--k")
    explain = rec.check_explain(_EXPLAIN.value, "--explain")
    samples = [split.prefix(i)[-rec.max_length:] for i in _INDEX.value]
    targets = [0] * len(sessions) + [int(split.targets[i]) for i in _INDEX.value]
    t = time.perf_counter()
    rows = rec.recommend(sessions + samples, k, explain, targets)
    seconds = time.perf_counter() - t
  except ERRORS as e:
    sys.exit(f"error: {e}")
  if _JSON.value:
    print(json.dumps({"model": rec.run.label, "k": k, "recommendations": rows}, indent=1, ensure_ascii=False))
  else:
    _print_rows(rows)
  stats = getattr(getattr(rec.intents, "answerer", None), "last_stats", None)
  extra = f" (LLM: {stats['generate_s']:.2f}s generate, {stats['encode_s']:.2f}s encode)" if stats else ""
  print(f"\n{len(rows)} session(s) in {1000 * seconds:.1f} ms{extra}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
