"""Test setup: four fake CPU devices (multi-device paths run everywhere) and the repo on sys.path."""

import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"


def beauty_prefixes(limit: int = 64):
  """The first `limit` prefix samples of real Beauty users (raw ids remapped on the fly), as a `Split`, and the
  number of items; skips the test when ../shared/data/beauty is absent."""
  import gzip  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top

  from llm4sbr_jax.dataset import Split  # pylint: disable=g-import-not-at-top
  path = SHARED_DATA / "beauty" / "reviews_Beauty_5.json.gz"
  if not path.exists():
    pytest.skip("../shared/data/beauty is absent")
  users, ids = {}, {}
  with gzip.open(path, "rt") as f:
    for line in f:
      r = json.loads(line)
      users.setdefault(r["reviewerID"], []).append(ids.setdefault(r["asin"], len(ids) + 1))
      if len(users) > 40:
        break
  prefixes, targets = [], []
  for seq in users.values():
    for i in range(1, len(seq)):
      prefixes.append(seq[:i])
      targets.append(seq[i])
  prefixes, targets = prefixes[:limit], targets[:limit]
  return Split.from_prefixes(prefixes, targets, np.zeros(len(targets)), np.zeros(len(targets))), len(ids)


def torch_grad_parity(torch_model, torch_batch, jax_grads, targets, load_flax_params, fresh_model) -> float:
  """Max relative difference between torch's CE gradients and JAX's (`jax_grads` loaded into `fresh_model`)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch_model.zero_grad()
  loss = torch.nn.functional.cross_entropy(torch_model(torch_batch), torch.as_tensor(targets - 1).long())
  loss.backward()
  load_flax_params(fresh_model, jax_grads)
  grads = dict(fresh_model.named_parameters())
  worst = 0.0
  for name, p in torch_model.named_parameters():
    scale = float(p.grad.abs().max()) + 1e-12
    worst = max(worst, float((p.grad - grads[name].detach()).abs().max()) / scale)
  return worst


def assert_torch_scores(ref, reference_batch, split, scores):
  """Asserts a torch reference (weights already loaded) scores `split` like `scores` [S, n]; returns its batch."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  prefixes = [split.prefix(i).tolist() for i in range(len(split))]
  ref_batch = reference_batch(prefixes, max(map(len, prefixes)))
  with torch.no_grad():
    expected = ref(ref_batch).numpy()
  assert scores.shape == expected.shape
  assert np.max(np.abs(scores - expected)) < 1e-4
  assert np.std(expected) > 1e-3  # a meaningful comparison, not all zeros
  return ref_batch
