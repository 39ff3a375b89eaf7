"""Stage 1 for live sessions: the training run's prompt, LLM and encoder, checked against its stage-1 manifest.

A model trained on stage-1 intents must see a live session's intents made the same way. `LiveStage1` rebuilds the
prompt from the manifest (its hash must match), loads the LLM and the encoder the manifest names with the same
decoding settings, and refuses another model, GGUF file or encoder. `verify` goes one step further: it re-answers
one prompt stage 1 answered and re-encodes a few item names, and refuses when the answer or the embeddings differ
from what stage 1 wrote (e.g. a hub model that changed since).

Stage 2 calls it through `llm4sbr_jax.serving.LLMIntents` (which localizes the answers with the run's top-f).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

import numpy as np

from third_party_infer import manifest as manifest_lib
from third_party_infer import prompts as prompts_lib

_PROMPT_KEYS = ("perspectives", "max_items", "background", "item_line", "task")


def prompt_from_manifest(manifest: dict, where: str = "manifest.json") -> prompts_lib.PromptConfig:
  """The stage-1 job's prompt, rebuilt from its manifest; Stage1Error when it no longer hashes the same."""
  recorded = manifest["prompt"]
  missing = [k for k in _PROMPT_KEYS if k not in recorded]
  if missing:
    raise manifest_lib.Stage1Error(f"{where}: prompt lacks {missing}")
  prompt = prompts_lib.PromptConfig(**{k: recorded[k] for k in _PROMPT_KEYS})
  if prompt.hash != recorded["hash"]:
    raise manifest_lib.Stage1Error(f"{where}: the prompt rebuilt from the manifest hashes to {prompt.hash[:12]}, not "
                                   f"the recorded {recorded['hash'][:12]}; the prompt code changed since stage 1")
  return prompt


def _same(requested: Optional[str], recorded: Optional[str], what: str, where: str) -> Optional[str]:
  if requested is not None and requested != recorded:
    raise manifest_lib.Stage1Error(f"{where}: stage 1 used {what} {recorded!r}, not {requested!r}; the model was "
                                   f"trained on intents from {recorded!r}, so live intents must come from it too")
  return recorded


class LiveStage1:
  """The LLM and encoder of a stage-1 job, answering live sessions.

  Attributes:
    prompt: the job's prompt.
    last_stats: seconds spent generating and encoding in the last `answer` call, and its prompt count.
  """

  def __init__(self, stage1_dir: str, item_names: Sequence[str], raw_item_ids: Sequence[str],
               llm: Optional[str] = None, gguf_file: Optional[str] = None, encoder: Optional[str] = None,
               trust_remote_code: bool = False, device: str = "cpu", batch_size: int = 16, num_threads: int = 0):
    """Loads the LLM and encoder the manifest of `stage1_dir` names.

    Args:
      stage1_dir: the training run's stage-1 directory.
      item_names, raw_item_ids: the dataset's catalog (index = item id): answers that name an item by its raw id
        are matched against it when stage 1 matched them (`prompts.match_item`).
      llm, gguf_file, encoder: optional: must equal what the manifest records (refused otherwise).
      trust_remote_code: required when stage 1 ran with it (the model repository's own code).
      device: torch device.
      batch_size: prompts per generate call (does not change answers).
      num_threads: torch CPU threads (0 = torch's default).

    Raises:
      Stage1Error: an items-only job, another model or encoder, a changed prompt, or remote code not allowed.
    """
    from third_party_infer import encoder as encoder_lib  # torch: only when a live LLM is wanted
    from third_party_infer import llm as llm_lib
    where = os.path.join(stage1_dir, "manifest.json")
    try:
      manifest = manifest_lib.read_json(where)
    except (OSError, json.JSONDecodeError) as e:
      raise manifest_lib.Stage1Error(f"{where}: cannot read ({e})") from e
    spec = manifest.get("llm")
    if spec is None:
      raise manifest_lib.Stage1Error(f"{where}: an --items_only job: it has no LLM to ask (serve such runs with "
                                     "item-text intents)")
    self.stage1_dir, self.manifest = stage1_dir, manifest
    self.prompt = prompt_from_manifest(manifest, where)
    model = _same(llm, spec["model"], "the LLM", where)
    gguf = _same(gguf_file, spec.get("gguf_file"), "the GGUF file", where)
    enc = _same(encoder, manifest["encoder"]["model"], "the encoder", where)
    if spec.get("trust_remote_code") and not trust_remote_code:
      raise manifest_lib.Stage1Error(f"{where}: stage 1 ran {model!r} with its repository's own code; pass "
                                     "--trust_remote_code to allow it here too")
    if num_threads:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(num_threads)
    settings = llm_lib.GenerationSettings(max_new_tokens=spec["max_new_tokens"], batch_size=batch_size,
                                          max_batch_tokens=spec["max_batch_tokens"],
                                          share_prefix=spec["share_prefix"], system_prompt=spec["system_prompt"])
    self.llm = llm_lib.LLMRunner(model, settings, gguf_file=gguf, dtype=spec["dtype"], device=device,
                                 trust_remote_code=bool(spec.get("trust_remote_code")))
    resolved = spec.get("resolved", {})
    for key in ("class", "dtype"):
      if key in resolved and resolved[key] != self.llm.info[key]:
        raise manifest_lib.Stage1Error(f"{where}: stage 1 ran the LLM as {key} {resolved[key]!r}, here it loads as "
                                       f"{self.llm.info[key]!r}")
    self.encoder = encoder_lib.TextEncoder(enc, max_length=manifest["encoder"]["max_length"], device=device)
    if self.encoder.dim != manifest["dim"]:
      raise manifest_lib.Stage1Error(f"{where}: embeddings of dim {manifest['dim']}, but {enc!r} gives "
                                     f"{self.encoder.dim}")
    self._clean = llm_lib.clean_answer
    # Stage 1 matched answers that name an item by its id (shards with an items file): do the same here.
    shards = manifest["shards"]
    self._lookup = (self.prompt.item_lookup(item_names, raw_item_ids)
                    if shards and all("items_file" in shard for shard in shards) else None)
    self.item_names = item_names
    self.last_stats: dict = {}

  def answer(self, names: Sequence[Sequence[str]], raw_ids: Sequence[Sequence[str]], perspectives: Sequence[str]
             ) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Answers for B sessions (names and raw ids in click order), as stage 1 writes them.

    A session's perspectives share their prompt prefix, as in stage 1.

    Returns:
      cleaned answers [B][P]; their embeddings float32 [B, P, dim]; the item each answer names by its id, int64
      [B, P] (0: none, and always 0 when stage 1 did not match ids).
    """
    unknown = [p for p in perspectives if p not in self.prompt.perspectives]
    if unknown:
      raise manifest_lib.Stage1Error(f"{self.stage1_dir}: perspective(s) {unknown} not in the stage-1 prompt "
                                     f"({list(self.prompt.perspectives)})")
    b, p = len(names), len(perspectives)
    texts = [self.prompt.build(n, r, q) for n, r in zip(names, raw_ids) for q in perspectives]
    t = time.perf_counter()
    raw, _ = self.llm.generate(texts, groups=[s for s in range(b) for _ in perspectives], progress=False)
    generated = time.perf_counter()
    answers = [self._clean(a) for a in raw]
    named = np.zeros(len(raw), np.int64)
    if self._lookup is not None:
      named[:] = [prompts_lib.match_item(self._clean(a, strip_id=False), self._lookup) for a in raw]
    emb, _ = self.encoder.encode(answers)
    self.last_stats = {"prompts": len(texts), "generate_s": generated - t, "encode_s": time.perf_counter() - generated}
    return ([answers[s * p:(s + 1) * p] for s in range(b)], emb.reshape(b, p, -1).astype(np.float32),
            named.reshape(b, p))

  def verify(self, num_items: int = 4) -> dict:
    """Refuses (Stage1Error) unless this LLM and encoder reproduce stage 1's outputs.

    Re-encodes the first `num_items` item names and compares them with `item_embeddings.npy`; re-answers the first
    prompt of the first shard and compares it with its recorded raw answer.

    Args:
      num_items: item names to re-encode.

    Returns:
      {"max_embedding_diff": ..., "answer": the reproduced answer, "seconds": ...}.
    """
    t = time.perf_counter()
    table = np.load(os.path.join(self.stage1_dir, self.manifest["item_embeddings"]["file"]), mmap_mode="r",
                    allow_pickle=False)
    emb, _ = self.encoder.encode(list(self.item_names[1:1 + num_items]))
    stored = np.asarray(table[1:1 + num_items], np.float32)
    diff = float(np.max(np.abs(emb - stored)))
    tol = (1e-4 if table.dtype == np.float32 else 2e-3) * max(1.0, float(np.max(np.abs(stored))))
    if diff > tol:
      raise manifest_lib.Stage1Error(f"{self.stage1_dir}: the encoder does not reproduce item_embeddings.npy (max "
                                     f"difference {diff:.2e} > {tol:.0e}): not the encoder stage 1 used")
    record = None
    for shard in self.manifest["shards"][:1]:
      with open(os.path.join(self.stage1_dir, shard["answers_file"]), encoding="utf-8") as f:
        record = json.loads(f.readline())
    answer = None
    if record is not None:
      answer = self.llm.generate([record["prompt"]], progress=False)[0][0]
      if answer != record["raw"]:
        raise manifest_lib.Stage1Error(f"{self.stage1_dir}: the LLM answers {answer!r} where stage 1 answered "
                                       f"{record['raw']!r} (row {record['row']}, {record['perspective']}): not the "
                                       "LLM stage 1 used")
    return {"max_embedding_diff": diff, "answer": answer, "seconds": time.perf_counter() - t}
