"""Reference (one prompt at a time) vs batched generation on the same prompts, plus what the cost cuts buy.

  python -m third_party_infer.benchmark --dataset_dir data/processed/beauty_paper --offline --num_prompts 64

Reference: like the official LLM4SBR code (`model.chat(tokenizer, prompt)` per prompt), every prompt goes through
the chat template and one `generate` call of batch 1. Batched: `LLMRunner.generate` (deduplicated, length-sorted,
left-padded batches within a token budget), without and with the shared-prefix KV cache (families = sessions: one
session's prefix samples and perspectives). With `--rows contiguous` the prompts are consecutive samples (whole
sessions), as a full job processes them; `--rows random` samples rows as a subset job does.
All greedy, same model and settings. Also reported:
  - prefill share: time of the shared-prefix batched run with max_new_tokens=1, over the full run;
  - prompt tokens with a per-session prefix cache over the whole dataset (all splits, all perspectives), relative
    to encoding every prompt in full (an estimate from per-item token counts);
  - padding share of the batches with and without length sorting;
  - duplicate prompts in the whole dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from llm4sbr_jax import dataset as dataset_lib
from third_party_infer import llm as llm_lib
from third_party_infer import models
from third_party_infer import prompts as prompts_lib
from third_party_infer import run


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
  """Share of padding tokens when prompts of `lengths` are generated in `batches` (lists of indices)."""
  real = sum(lengths)
  padded = sum(max(lengths[k] for k in b) * len(b) for b in batches)
  return 1 - real / padded


def dataset_prefix_stats(ds: dataset_lib.ProcessedDataset, runner: llm_lib.LLMRunner,
                         prompt: prompts_lib.PromptConfig) -> dict:
  """Duplicate prompts and prefill tokens with a per-session prefix cache, over every split."""
  tok = runner.tokenizer
  count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
  # Item lines are costed without their number ("k. "), which adds about the same few tokens to every line.
  item_tokens = np.array([0] + [count(f"{n}_{i}\n") for n, i in zip(ds.item_names[1:], ds.raw_item_ids[1:])])
  head = count(runner.chat_text(prompt.background)) - count(runner.chat_text(""))
  frame = count(runner.chat_text(""))
  tasks = [count(prompt.task.format(qualifier=q)) for q in prompt.perspectives.values()]
  full = samples = 0
  distinct, longest = set(), {}
  for split in dataset_lib.SPLITS:
    s = ds.splits[split]
    if not len(s):
      continue
    items, offsets = np.asarray(s.items), np.asarray(s.offsets)
    per_sample = np.add.reduceat(item_tokens[items], offsets[:-1])
    full += sum(int(per_sample.sum()) + len(s) * (frame + head + t) for t in tasks)
    samples += len(s)
    distinct.update(items[offsets[r]:offsets[r + 1]].tobytes() for r in range(len(s)))
    for sess, tokens in zip(np.asarray(s.sessions).tolist(), per_sample.tolist()):
      longest[sess] = max(longest.get(sess, 0), tokens)
  # With a prefix cache, each session's longest prefix (with the chat frame and background) is encoded once and
  # shared by its shorter prefixes and all perspectives; only the task lines remain per prompt.
  cached = sum(longest.values()) + len(longest) * (frame + head) + samples * sum(tasks)
  return {"samples": samples, "distinct_item_sequences": len(distinct),
          "duplicate_prompt_share": 1 - len(distinct) / samples, "prompt_tokens_full": full,
          "prompt_tokens_with_session_prefix_cache": cached, "prefix_cache_token_ratio": cached / full}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset_dir", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--num_prompts", type=int, default=64, help="prompts (half per perspective)")
  p.add_argument("--rows", choices=("random", "contiguous"), default="random",
                 help="random samples, or consecutive ones (whole sessions' prefix samples, as a full job sees them)")
  p.add_argument("--seed", type=int, default=1)
  p.add_argument("--llm", default=models.OFFLINE_LLM)
  p.add_argument("--offline", action="store_true", help=f"use {models.OFFLINE_LLM}")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--max_batch_tokens", type=int, default=8192)
  p.add_argument("--max_new_tokens", type=int, default=24)
  p.add_argument("--dtype", default="auto")
  p.add_argument("--device", default="cpu")
  p.add_argument("--num_threads", type=int, default=1)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  torch.set_num_threads(args.num_threads)
  ds = dataset_lib.load_dataset(args.dataset_dir)
  prompt = prompts_lib.PromptConfig()
  s = ds.splits[args.split]
  num_rows = args.num_prompts // len(prompt.perspectives)
  if args.rows == "random":
    rows = run.select_rows(len(s), num_rows, "random", args.seed)
  else:
    first = int(np.random.default_rng(args.seed).integers(len(s) - num_rows))
    rows = np.arange(first, first + num_rows)
  texts, groups = [], []
  for persp in prompt.perspectives:
    for r in rows:
      prefix = s.prefix(int(r))
      texts.append(prompt.build([ds.item_names[i] for i in prefix], [ds.raw_item_ids[i] for i in prefix], persp))
      groups.append(int(s.sessions[r]))
  runner = llm_lib.LLMRunner(models.OFFLINE_LLM if args.offline else args.llm,
                             llm_lib.GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                        batch_size=args.batch_size,
                                                        max_batch_tokens=args.max_batch_tokens),
                             dtype=args.dtype, device=args.device)
  runner.generate(texts[:2], progress=False)  # warm-up
  start = time.perf_counter()
  reference = [runner.generate_one(t) for t in texts]
  ref_s = time.perf_counter() - start
  runs = {}
  for share in (False, True):
    runner.settings = dataclasses.replace(runner.settings, share_prefix=share)
    runs[share] = runner.generate(texts, groups=groups)
  runner.generation_config.max_new_tokens = 1
  prefill = runner.generate(texts, groups=groups, progress=False)[1]
  lengths = [len(runner.tokenizer(runner.chat_text(t), add_special_tokens=False)["input_ids"]) for t in texts]
  sorted_batches = runner._batches([1] * len(lengths), lengths)  # pylint: disable=protected-access
  result = {
      "model": runner.info["model"], "dtype": runner.info["dtype"], "device": args.device,
      "num_threads": args.num_threads, "split": args.split, "rows": args.rows, "sessions": len(set(groups)),
      "prompts": len(texts), "batch_size": args.batch_size,
      "max_batch_tokens": args.max_batch_tokens, "max_new_tokens": args.max_new_tokens,
      "mean_prompt_tokens": float(np.mean(lengths)),
      "reference_seconds": ref_s, "reference_prompts_per_s": len(texts) / ref_s,
  }
  for share, name in ((False, "batched"), (True, "batched_shared_prefix")):
    answers, stats = runs[share]
    result.update({f"{name}_seconds": stats["seconds"], f"{name}_prompts_per_s": stats["prompts_per_s"],
                   f"{name}_speedup": ref_s / stats["seconds"],
                   f"{name}_prompt_tokens_computed": stats["prompt_tokens_computed"],
                   f"{name}_same_answer_share": float(np.mean([a == b for a, b in zip(reference, answers)])),
                   f"{name}_same_clean_answer_share": float(np.mean([
                       llm_lib.clean_answer(a) == llm_lib.clean_answer(b) for a, b in zip(reference, answers)]))})
  result.update({
      "prefill_share_of_batched_shared_prefix": prefill["seconds"] / runs[True][1]["seconds"],
      "padding_share_sorted": padding_share(lengths, sorted_batches),
      "padding_share_unsorted": padding_share(lengths, [list(range(len(lengths)))[b:b + args.batch_size]
                                                        for b in range(0, len(lengths), args.batch_size)]),
      "dataset": dataset_prefix_stats(ds, runner, prompt),
  })
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
