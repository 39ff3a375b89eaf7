"""Tiny datasets, models and fake stage-1 outputs for the stage-1 and intents tests (no downloads)."""

from __future__ import annotations

import os

import numpy as np

from llm4sbr_jax import dataset as dataset_lib
from third_party_infer import manifest as manifest_lib

COLORS = ["red", "blue", "green", "pink", "black", "white"]
KINDS = ["lipstick", "mascara", "shampoo", "perfume", "nail polish"]


def tiny_dataset(directory: str, num_items: int = 30, num_sessions: int = 12, seed: int = 0):
  """A saved processed dataset with readable item names; returns the loaded `ProcessedDataset`."""
  rng = np.random.default_rng(seed)
  names = [dataset_lib.PAD_NAME] + [f"{COLORS[i % 6].title()} {KINDS[i % 5]} no. {i}" for i in range(1, num_items + 1)]
  raw_ids = [""] + [f"B{i:08d}X" for i in range(1, num_items + 1)]
  samples = {s: ([], [], [], []) for s in dataset_lib.SPLITS}
  for sid in range(num_sessions):
    session = rng.integers(1, num_items + 1, size=int(rng.integers(2, 7))).tolist()
    split = "test" if sid % 3 == 0 else "train"
    for k in range(1, len(session)):
      for part, value in zip(samples[split], (session[:k], session[k], sid, 1000 * sid + k)):
        part.append(value)
  splits = {s: dataset_lib.Split.from_prefixes(*samples[s]) for s in dataset_lib.SPLITS}
  ds = dataset_lib.ProcessedDataset(name="tiny", item_names=names, raw_item_ids=raw_ids, splits=splits,
                                    protocol={"kind": "test"})
  dataset_lib.save_dataset(ds, directory)
  return dataset_lib.load_dataset(directory)


def fake_stage1(out_dir: str, ds, split: str = "test", perspectives=("long-term", "short-term"), dim: int = 8,
                shard_size: int = 4, rows=None, seed: int = 0) -> dict:
  """Writes a stage-1 output with random embeddings through the real manifest code (no torch); returns it."""
  rng = np.random.default_rng(seed)
  rows = np.arange(len(ds.splits[split])) if rows is None else np.asarray(rows, np.int64)
  os.makedirs(out_dir, exist_ok=True)
  manifest_lib.write_json(os.path.join(out_dir, "job.json"), {
      "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "num_items": ds.num_items}, "items_only": False,
      "coverage": {split: {"mode": "all", "num_rows": len(rows)}},
      "prompt": {"perspectives": {p: p for p in perspectives}}, "llm": {"model": "fake"},
      "encoder": {"model": "fake"}})
  items = rng.normal(size=(ds.num_items + 1, dim)).astype(np.float32)
  items[0] = 0
  manifest_lib.save_npy(os.path.join(out_dir, manifest_lib.ITEM_EMBEDDINGS), items)
  plan = {split: [rows[s:s + shard_size] for s in range(0, len(rows), shard_size)]}
  for k, shard_rows in enumerate(plan[split]):
    d = manifest_lib.shard_dir(out_dir, split, k)
    os.makedirs(d)
    manifest_lib.save_npy(os.path.join(d, "rows.npy"), shard_rows)
    for p in perspectives:
      manifest_lib.save_npy(os.path.join(d, f"{p}.npy"), rng.normal(size=(len(shard_rows), dim)).astype(np.float32))
    with open(os.path.join(d, "answers.jsonl"), "w", encoding="utf-8") as f:
      for p in perspectives:
        for r in shard_rows:
          f.write(f'{{"row": {int(r)}, "perspective": "{p}", "prompt": "", "raw": "x", "answer": "x"}}\n')
    files = ["rows.npy", "answers.jsonl"] + [f"{p}.npy" for p in perspectives]
    manifest_lib.write_json(os.path.join(d, "meta.json"), {
        "llm": {}, "sha256": {f: manifest_lib.sha256_file(os.path.join(d, f)) for f in files},
        "stats": {k: 0 for k in ("prompts", "unique_prompts", "prompt_tokens", "prompt_tokens_computed",
                                 "generate_seconds", "texts", "unique_texts", "encode_seconds")}})
  return manifest_lib.finalize(out_dir, plan)


def tiny_models(directory: str) -> tuple[str, str]:
  """A random-init Llama causal LM and BERT encoder sharing a byte-level BPE tokenizer trained on the fly.

  Returns:
    (llm folder, encoder folder).
  """
  import tokenizers
  import torch
  import transformers
  corpus = [f"{c} {k} no. {i} B{i:08d}X" for i in range(40) for c in COLORS for k in KINDS[:2]]
  corpus += ["The order in which users click on items is as follows:",
             "Please guess an item that the user is interested in in the long-term short-term. "
             "(Only output the item name without any explanation.)"]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                           "<eos>"],
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                              eos_token="<eos>", cls_token="[CLS]", sep_token="[SEP]")
  fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<assistant>{% endif %}")
  llm_dir, enc_dir = os.path.join(directory, "llm"), os.path.join(directory, "encoder")
  torch.manual_seed(0)
  llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
      num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=fast.eos_token_id,
      pad_token_id=fast.pad_token_id, bos_token_id=None))
  llm.save_pretrained(llm_dir)
  fast.save_pretrained(llm_dir)
  enc = transformers.BertModel(transformers.BertConfig(
      vocab_size=len(fast), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
      max_position_embeddings=256, pad_token_id=fast.pad_token_id))
  enc.save_pretrained(enc_dir)
  fast.save_pretrained(enc_dir)
  return llm_dir, enc_dir


def add_named_items(out, named_by_shard):
  """Adds stage 1's `<perspective>.items.npy` files (the id-answer matches) to a fake output and re-finalizes it."""
  m = manifest_lib.read_json(os.path.join(out, "manifest.json"))
  plan = {}
  for shard in m["shards"]:
    d = os.path.join(out, os.path.dirname(shard["file"]))
    meta_path = os.path.join(d, "meta.json")
    meta = manifest_lib.read_json(meta_path)
    name = manifest_lib.named_items_file(shard["perspective"])
    manifest_lib.save_npy(os.path.join(d, name), named_by_shard[shard["file"]])
    meta["sha256"][name] = manifest_lib.sha256_file(os.path.join(d, name))
    meta["stats"].setdefault("named_item_answers", {})[shard["perspective"]] = int(
        np.count_nonzero(named_by_shard[shard["file"]]))
    manifest_lib.write_json(meta_path, meta)
    rows = np.load(os.path.join(out, shard["rows_file"]))
    plan.setdefault(shard["split"], {})[shard["row_start"]] = rows
  return manifest_lib.finalize(out, {s: [r for _, r in sorted(v.items())] for s, v in plan.items()})
