"""LLM4SBR fusion module and losses, on a tiny dummy backbone (CPU, fast)."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from llm4sbr_jax.models import llm4sbr as L
from llm4sbr_jax.models.base import BackboneOutput, HybridHead, Recommender, score, uniform_init

D, D_TEXT, N_ITEMS, G, SEQ = 8, 12, 20, 6, 4


class DummyBackbone(nn.Module):
  """Embeds a [G, SEQ] item matrix; local = last item, global = mean over the session."""

  hidden: int = D

  @nn.compact
  def __call__(self, batch, train: bool = False, head: bool = True) -> BackboneOutput:
    table = self.param("embedding", uniform_init(self.hidden), (N_ITEMS + 1, self.hidden))  # [n + 1, d]
    h = table[batch["items"]]  # [G, SEQ, d]
    out = BackboneOutput(local=h[:, -1], global_=jnp.mean(h, axis=1), items=table)
    return out._replace(session=HybridHead(self.hidden, name="head")(out)) if head else out


def _batch(seed=0, g=G):
  rng = np.random.default_rng(seed)
  items = jnp.asarray(rng.integers(1, N_ITEMS + 1, size=(g, SEQ)), jnp.int32)
  intents = jnp.asarray(rng.normal(size=(g, 2, D_TEXT)), jnp.float32)
  targets = jnp.asarray(rng.integers(1, N_ITEMS + 1, size=(g,)), jnp.int32)
  mask = jnp.asarray([True] * (g - 2) + [False, False])
  return {"items": items}, intents, targets, mask


def _model(**kw):
  return L.LLM4SBR(backbone=DummyBackbone(), hidden=D, **kw)


def _flat(params):
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


def _init(model, batch, intents):
  return model.init(jax.random.PRNGKey(0), batch, intents)["params"]


def test_fused_loss_equals_separate_terms():
  batch, intents, targets, mask = _batch()
  model = _model()
  params = _init(model, batch, intents)
  out = model.apply({"params": params}, batch, intents)
  assert out.scores.shape == (G, N_ITEMS)
  assert out.intents.shape == (G, 2, D) and out.paired_intents.shape == (G, 2, D)
  loss, metrics = jax.jit(L.llm4sbr_loss)(out, targets, mask)

  m = np.asarray(mask)
  r = lambda x: np.asarray(x, np.float64)[m]
  ce = np.mean([-(s[t - 1] - np.log(np.sum(np.exp(s)))) for s, t in zip(r(out.scores), np.asarray(targets)[m])])
  # Official pairing: long-term <-> global, short-term <-> local.
  pairs = [(r(out.intents[:, 0]), r(out.paired_sessions[:, 0])), (r(out.intents[:, 1]), r(out.paired_sessions[:, 1]))]
  np.testing.assert_allclose(r(out.paired_sessions[:, 0]), r(model.apply(
      {"params": params}, batch, intents, method=lambda mdl, b, e: mdl.backbone(b, head=False).global_)), rtol=1e-6)
  aux = 0.0
  for x, y in pairs:
    aux += _ref_align(x, y) + 0.5 * (_ref_unif(x) + _ref_unif(y))
  np.testing.assert_allclose(float(metrics["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), ce + 0.1 * aux, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["align"] + metrics["uniform"]), aux, rtol=1e-5)

  # Same thing assembled from the public per-term functions.
  ce_s, n = L.cross_entropy(out.scores, targets, mask)
  total = ce_s / n
  for q in range(2):
    a_s, a_n = L.alignment(out.paired_intents[:, q], out.paired_sessions[:, q], mask)
    ui = L.uniformity_log(*L.uniformity(out.paired_intents[:, q], mask))
    us = L.uniformity_log(*L.uniformity(out.paired_sessions[:, q], mask))
    total += 0.1 * (a_s / a_n + 0.5 * (ui + us))
  np.testing.assert_allclose(float(total), float(loss), rtol=1e-6)


def _ref_align(x, y):
  nx = x / np.linalg.norm(x, axis=1, keepdims=True)
  ny = y / np.linalg.norm(y, axis=1, keepdims=True)
  return float(np.mean(np.sum((nx - ny) ** 2, axis=1)))


def _ref_unif(x, t=2.0):
  nx = x / np.linalg.norm(x, axis=1, keepdims=True)
  vals = [np.exp(-t * np.sum((nx[i] - nx[j]) ** 2)) for i, j in itertools.combinations(range(len(nx)), 2)]
  return float(np.log(np.mean(vals)))


def test_uniformity_matches_bruteforce_reference():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(9, 5)).astype(np.float32)
  mask = np.ones(9, bool)
  s, n = L.uniformity(jnp.asarray(x), jnp.asarray(mask))
  assert float(n) == 9 * 8 / 2
  np.testing.assert_allclose(float(L.uniformity_log(s, n)), _ref_unif(x.astype(np.float64)), rtol=1e-5)
  a_s, a_n = L.alignment(jnp.asarray(x), jnp.asarray(x[::-1].copy()), jnp.asarray(mask))
  np.testing.assert_allclose(float(a_s / a_n), _ref_align(x.astype(np.float64), x[::-1].astype(np.float64)),
                             rtol=1e-5)


def test_losses_ignore_padding_rows():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  scores = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  targets = jnp.asarray([1, 2, 3, 4, 5])
  mask = jnp.ones(5, bool)
  garbage = jnp.asarray([[1e30, -np.inf, np.nan, 3.0], [0.0, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]], jnp.float32)
  xp, yp = jnp.concatenate([x, garbage]), jnp.concatenate([y, garbage[::-1]])
  sp = jnp.concatenate([scores, jnp.full((3, 7), np.nan, jnp.float32)])
  tp = jnp.concatenate([targets, jnp.asarray([0, -5, 99])])
  mp = jnp.concatenate([mask, jnp.zeros(3, bool)])
  # Padding interleaved, not only at the end.
  perm = jnp.asarray([5, 0, 1, 6, 2, 3, 7, 4])
  xp, yp, sp, tp, mp = xp[perm], yp[perm], sp[perm], tp[perm], mp[perm]

  for f, a, b in [(L.uniformity, (x, mask), (xp, mp)), (L.alignment, (x, y, mask), (xp, yp, mp)),
                  (L.cross_entropy, (scores, targets, mask), (sp, tp, mp))]:
    ref, padded = jax.jit(f)(*a), jax.jit(f)(*b)
    np.testing.assert_allclose(np.asarray(padded), np.asarray(ref), rtol=1e-6)

  # No gradient reaches padding rows, and none is NaN.
  grad = jax.jit(jax.grad(lambda v: L.uniformity_log(*L.uniformity(v, mp)) + L.alignment(v, yp, mp)[0]))(xp)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[~np.asarray(mp)] == 0)


def test_uniformity_with_fewer_than_two_rows_is_zero():
  x = jnp.ones((3, 4))
  for m in ([False] * 3, [True, False, False]):
    s, n = L.uniformity(x, jnp.asarray(m))
    assert float(n) == 0 and float(L.uniformity_log(s, n)) == 0.0


@pytest.mark.parametrize("shared", [True, False])
def test_removing_a_perspective_removes_params_and_terms(shared):
  batch, intents, targets, mask = _batch()
  full = _model(shared_projection=shared)
  short = _model(perspectives=("long-term",), pairing=("global",), shared_projection=shared)
  pf, ps = _flat(_init(full, batch, intents)), _flat(_init(short, batch, intents[:, :1]))
  removed = set(pf) - set(ps)
  assert not set(ps) - set(pf)
  if shared:
    assert removed == set()  # W1 is shared; only the fusion width shrinks
  else:
    assert removed == {"text_proj_short_term/kernel", "text_proj_short_term/bias"}
  assert pf["fusion/kernel"].shape == (4 * D, D) and ps["fusion/kernel"].shape == (3 * D, D)
  out = short.apply({"params": _init(short, batch, intents[:, :1])}, batch, intents[:, :1])
  terms = L.loss_terms(out, targets, mask)
  assert terms.align_sum.shape == (1,) and terms.unif_intent_sum.shape == (1,)
  _, metrics = L.combine(terms)
  assert metrics["align_per"].shape == (1,)


def test_pairing_none_keeps_fusion_drops_loss_terms():
  batch, intents, targets, mask = _batch()
  model = _model(pairing=("global", "none"))
  out = model.apply({"params": _init(model, batch, intents)}, batch, intents)
  assert out.intents.shape == (G, 2, D) and out.paired_intents.shape == (G, 1, D)
  assert L.loss_terms(out, targets, mask).align_sum.shape == (1,)


@pytest.mark.parametrize("num_p", [0, 1, 2, 3])
def test_concat_fusion_width_follows_perspectives(num_p):
  names = ("long-term", "short-term", "category")[:num_p]
  pairing = ("global", "local", "none")[:num_p]
  batch, _, targets, mask = _batch()
  intents = jnp.ones((G, num_p, D_TEXT))
  model = _model(perspectives=names, pairing=pairing)
  raw = _init(model, batch, intents)
  params = _flat(raw)
  out = model.apply({"params": raw}, batch, intents)
  assert out.scores.shape == (G, N_ITEMS)
  if num_p == 0:
    # Degenerates to the bare backbone + SR-GNN's hybrid head (with bias).
    assert set(params) == {"backbone/embedding", "backbone/head/linear_transform/kernel",
                           "backbone/head/linear_transform/bias"}
    loss, metrics = L.llm4sbr_loss(out, targets, mask)
    np.testing.assert_allclose(float(loss), float(metrics["ce"]))
  else:
    assert params["fusion/kernel"].shape == ((2 + num_p) * D, D)
    assert "fusion/bias" not in params  # eq. 9 has no bias


def test_bare_backbone_head_equals_p0_model():
  batch, _, _, _ = _batch()
  model = _model(perspectives=(), pairing=())
  variables = model.init(jax.random.PRNGKey(1), batch, None)
  out = model.apply(variables, batch, None)
  bare = Recommender(DummyBackbone(name="backbone"))
  np.testing.assert_allclose(np.asarray(out.scores), np.asarray(bare.apply(variables, batch)), rtol=1e-6)
  bb = DummyBackbone().apply({"params": variables["params"]["backbone"]}, batch)
  np.testing.assert_allclose(np.asarray(out.scores), np.asarray(score(bb.session, bb)), rtol=1e-6)


def test_gate_variant_runs_and_differs():
  batch, intents, targets, mask = _batch()
  concat, gate = _model(), _model(fusion="gate")
  pc, pg = _init(concat, batch, intents), _init(gate, batch, intents)
  fg = _flat(pg)
  assert fg["gate_long_term/kernel"].shape == (D, 1) and "gate_long_term/bias" not in fg
  assert fg["linear_transform/kernel"].shape == (2 * D, D) and "linear_transform/bias" in fg
  oc, og = concat.apply({"params": pc}, batch, intents), gate.apply({"params": pg}, batch, intents)
  assert og.scores.shape == oc.scores.shape
  assert not np.allclose(np.asarray(og.scores), np.asarray(oc.scores))
  # The intents change the gated scores.
  og2 = gate.apply({"params": pg}, batch, intents * 3.0)
  assert not np.allclose(np.asarray(og.scores), np.asarray(og2.scores))
  # Same backbone params -> same paired (pre-gate) session vectors.
  np.testing.assert_allclose(np.asarray(og.paired_sessions), np.asarray(oc.paired_sessions), rtol=1e-6)
  assert np.isfinite(float(L.llm4sbr_loss(og, targets, mask)[0]))
  # Element-wise gate variant.
  wide = _model(fusion="gate", gate_features=D)
  assert _flat(_init(wide, batch, intents))["gate_short_term/kernel"].shape == (D, D)


def test_config_errors():
  batch, intents, _, _ = _batch()
  with pytest.raises(ValueError, match="pairing"):
    _init(_model(pairing=("global",)), batch, intents)
  with pytest.raises(ValueError, match="gate"):
    _init(_model(fusion="gate", pairing=("global", "none")), batch, intents)
  with pytest.raises(ValueError, match="intents"):
    _init(_model(), batch, intents[:, :1])


def test_init_is_uniform_in_reference_bound():
  batch, intents, _, _ = _batch()
  bound = 1 / np.sqrt(D)
  for name, v in _flat(_init(_model(shared_projection=False), batch, intents)).items():
    assert np.all(np.abs(np.asarray(v)) <= bound), name


@pytest.mark.parametrize("fusion", ["concat", "gate"])
def test_grad_of_loss_is_finite_under_jit(fusion):
  batch, intents, targets, mask = _batch()
  model = _model(fusion=fusion)
  params = _init(model, batch, intents)

  @jax.jit
  def loss_fn(p):
    out = model.apply({"params": p}, batch, intents)
    return L.llm4sbr_loss(out, targets, mask)[0]

  grads = jax.grad(loss_fn)(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads["text_proj"]))


def test_psum_of_terms_over_shards_matches_manual_combination():
  batch, intents, targets, mask = _batch()
  model = _model()
  out = model.apply({"params": _init(model, batch, intents)}, batch, intents)
  halves = [jax.tree_util.tree_map(lambda a: a[s], out) for s in (slice(0, 3), slice(3, None))]
  t = [L.loss_terms(h, targets[s], mask[s]) for h, s in zip(halves, (slice(0, 3), slice(3, None)))]
  summed = jax.tree_util.tree_map(lambda a, b: a + b, *t)
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *halves)
  terms = jax.vmap(lambda o, y, m: L.loss_terms(o, y, m), axis_name="d")(
      stacked, jnp.stack([targets[:3], targets[3:]]), jnp.stack([mask[:3], mask[3:]]))
  loss_v = jax.vmap(lambda o, y, m: L.llm4sbr_loss(o, y, m, axis_name="d")[0], axis_name="d")(
      stacked, jnp.stack([targets[:3], targets[3:]]), jnp.stack([mask[:3], mask[3:]]))
  np.testing.assert_allclose(np.asarray(loss_v), float(L.combine(summed)[0]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(terms.ce_sum).sum(), float(summed.ce_sum), rtol=1e-6)
