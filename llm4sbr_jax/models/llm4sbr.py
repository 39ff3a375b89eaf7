"""LLM4SBR stage 2: align and fuse LLM-inferred intents with a session backbone (paper section 3.3).

Per perspective p (e.g. long-term, short-term) the localized intent embedding e_p [d_text] (stage 1 + intent
localization, eq. 3-4) is projected to the hidden size (eq. 6)::

    h_p = W1 e_p + b1                                      [G, d]

Each perspective may be *paired* with one of the backbone's session vectors (official pairing: long-term <-> global
attention readout, short-term <-> local last-item state). For every paired perspective the loss adds DirectAU's
alignment between h_p and its session vector and the uniformity of each of the two (eq. 7-8). The final session
vector fuses everything (eq. 9) and scores every item by a dot product (eq. 10)::

    L = CE + tau * sum_p [ L_align(h_p, s_p) + (L_unif(h_p) + L_unif(s_p)) / 2 ]      (eq. 12, tau = 0.1)

Choices, each checked against the paper and the official code (`tsinghua-fib-lab/LLM4SBR`, `model_LLM.py`):

* Projection W1 (eq. 6): the paper writes one W1, b1 and the official code uses one `linear_text2seq` for both
  perspectives, so `shared_projection=True` (default) shares it; `False` gives each perspective its own W1_p, b1_p.
* Fusion `'concat'` (default, eq. 9): `H = W2 [local; global; h_1; ...; h_P]` with W2 [(2 + P) d -> d] and **no
  bias**: eq. 9 has none (contrast eq. 6, which writes b1 explicitly).
* Fusion `'gate'` (the official code): for a perspective paired with global, `a = a * w_p(sigmoid(a + h_p))`; paired
  with local, `ht = ht * w_p(sigmoid(ht + h_p))`; then `H = W [a; ht] + b` (SR-GNN's `linear_transform`). The
  official gates `linear_four` / `linear_five` are `Linear(d, 1, bias=False)`: one *scalar* gate per session, not a
  per-dimension one, so `gate_features=1` is the default; `gate_features=hidden` gives an element-wise gate. Every
  perspective must be paired with global or local. Alignment uses the session vectors *before* gating, as the
  official code does.
* P = 0 perspectives: no intent parameters, no alignment/uniformity terms, and the session vector is the bare
  backbone's own (`head=True`: SR-GNN's `W [global; local] + b`, GCE-GNN's readout), whatever `fusion` says: the
  model is then exactly the bare backbone (the paper's "w/o LLM" ablation), with an identical parameter tree.
* Backbones whose scores have a term beyond `session . E` (TAGNN's target-aware attention) keep it: every head
  adds the backbone's `extra_scores` (`base.score`).
* Alignment: `||norm(x) - norm(y)||^2` per real row, summed; the caller divides by the count. This is DirectAU's
  `(x - y).norm(dim=1).pow(2).mean()` on normalised vectors (alpha = 2, no further scaling), as in the official code;
  eq. 7 writes the squared distance without the normalisation, which both DirectAU and the official code apply.
* Uniformity: `log mean_{i<j} exp(-2 ||norm(x_i) - norm(x_j)||^2)` over the *distinct* pairs of real rows (torch's
  `pdist` semantics, t = 2); the pair (sum of exps, number of pairs) is returned so the log is taken after an
  optional cross-device psum. Across devices the mean then runs over the pairs *within* each device's shard (pairs
  that straddle two shards are not formed), as with per-device batches in any data-parallel DirectAU.
* Per paired perspective the uniformity is `(unif(h_p) + unif(s_p)) / 2` (eq. 8 halves each term; the official
  `calculate_loss` does the same), and the terms of all perspectives are summed (official `au_loss_1 + au_loss_2`).

Padding rows (graph_mask False) are replaced by zeros before any arithmetic, so they change no value and receive no
gradient whatever they hold (NaN and inf included).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm4sbr_jax import scoring
from llm4sbr_jax.models.base import BackboneOutput, score, uniform_init

PAIRINGS = ("global", "local", "none")
FUSIONS = ("concat", "gate")
DEFAULT_TAU = 0.1


class LLM4SBROutput(NamedTuple):
  """Forward results of `LLM4SBR`.

  Attributes:
    scores: [G, n] item scores (column j = item id j + 1).
    session: [G, d] the fused session vector H.
    intents: [G, P, d] projected intents h_p = W1 e_p + b1, in `perspectives` order.
    paired_intents: [G, Q, d] h_p of the Q perspectives whose pairing is not 'none', in `perspectives` order.
    paired_sessions: [G, Q, d] the backbone session vector (global or local, before any gate) each is paired with.
  """

  scores: jax.Array  # [G, n]
  session: jax.Array  # [G, d]
  intents: jax.Array  # [G, P, d]
  paired_intents: jax.Array  # [G, Q, d]
  paired_sessions: jax.Array  # [G, Q, d]


def param_name(perspective: str) -> str:
  """The parameter-name suffix of a perspective ('long-term' -> 'long_term')."""
  return re.sub(r"[^0-9A-Za-z_]", "_", perspective)


def check_config(perspectives: tuple[str, ...], pairing: tuple[str, ...], fusion: str) -> None:
  """Raises ValueError for an inconsistent perspective / pairing / fusion configuration."""
  if len(pairing) != len(perspectives):
    raise ValueError(f"pairing {pairing} must give one of {PAIRINGS} per perspective {perspectives}")
  for p in pairing:
    if p not in PAIRINGS:
      raise ValueError(f"unknown pairing {p!r}; expected one of {PAIRINGS}")
  names = [param_name(p) for p in perspectives]
  if len(set(names)) != len(names):
    raise ValueError(f"perspective names {perspectives} collide as parameter names {names}")
  if fusion not in FUSIONS:
    raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
  if fusion == "gate" and "none" in pairing:
    raise ValueError("fusion='gate' gates a session vector with each intent, so every perspective must be paired "
                     f"with 'global' or 'local'; got pairing {pairing}")


class LLM4SBR(nn.Module):
  """A session backbone enhanced with LLM intents (alignment in the loss, fusion in the forward pass).

  Attributes:
    backbone: a module with `__call__(batch, train=False, head=True) -> BackboneOutput` (`base.py`).
    hidden: d, the backbone's hidden size (also the initialiser's bound, U(-1/sqrt(d), 1/sqrt(d))).
    perspectives: the intent perspectives, in the order of the `intents` axis 1.
    pairing: per perspective, the session vector it is aligned with: 'global', 'local' or 'none'.
    fusion: 'concat' (paper eq. 9) or 'gate' (official code); see the module docstring.
    shared_projection: one W1, b1 for all perspectives (paper eq. 6, official code) or one per perspective.
    gate_features: output width of each gate's `w_p` (1 = official scalar gate; `hidden` = element-wise gate).
    score_chunk: > 0: implicit scores consumed in item chunks (`scoring`).
    score_dtype: operand dtype of the item-scoring product (`scoring.product`).
    padded_eval: with train=False, plain dot-product scores come as `scoring.PaddedScores` (the task's evaluation).
  """

  backbone: nn.Module
  hidden: int
  perspectives: tuple[str, ...] = ("long-term", "short-term")
  pairing: tuple[str, ...] = ("global", "local")
  fusion: str = "concat"
  shared_projection: bool = True
  gate_features: int = 1
  score_chunk: int = 0
  score_dtype: str = "float32"
  padded_eval: bool = False

  @nn.compact
  def __call__(self, batch: Any, intents: jax.Array | None, train: bool = False) -> LLM4SBROutput:
    """Runs the backbone, projects the intents and fuses them.

    Args:
      batch: the backbone's batch (opaque here) with G graph slots.
      intents: [G, P, d_text] localized intent embeddings, P = len(perspectives) (None allowed when P = 0).
      train: passed to the backbone.

    Returns:
      An `LLM4SBROutput`.
    """
    check_config(tuple(self.perspectives), tuple(self.pairing), self.fusion)
    d = self.hidden
    init = uniform_init(d)
    num_p = len(self.perspectives)
    out: BackboneOutput = self.backbone(batch, train=train, head=num_p == 0)
    local, global_ = out.local, out.global_  # [G, d] each
    g = local.shape[0]

    scores = lambda session: score(session, out, self.score_chunk, self.score_dtype,  # [G, n]
                                   self.padded_eval and not train)
    if num_p == 0:
      empty = jnp.zeros((g, 0, d), local.dtype)  # [G, 0, d]
      return LLM4SBROutput(scores(out.session), out.session, empty, empty, empty)

    if intents is None or intents.ndim != 3 or intents.shape[:2] != (g, num_p):
      shape = None if intents is None else intents.shape
      raise ValueError(f"intents must be [G={g}, P={num_p}, d_text] for perspectives {self.perspectives}; "
                       f"got {shape}")
    e = intents.astype(local.dtype)  # [G, P, d_text]
    if self.shared_projection:
      h = nn.Dense(d, kernel_init=init, bias_init=init, name="text_proj")(e)  # [G, P, d]
    else:
      h = jnp.stack([nn.Dense(d, kernel_init=init, bias_init=init, name=f"text_proj_{param_name(p)}")(e[:, i])
                     for i, p in enumerate(self.perspectives)], axis=1)  # [G, P, d]

    if self.fusion == "concat":
      parts = [local, global_] + [h[:, i] for i in range(num_p)]  # (2 + P) x [G, d]
      session = nn.Dense(d, use_bias=False, kernel_init=init, name="fusion")(
          jnp.concatenate(parts, axis=-1))  # [G, (2 + P) d] -> [G, d]
    else:
      a, ht = global_, local  # [G, d] each
      for i, (p, pair) in enumerate(zip(self.perspectives, self.pairing)):
        gate = nn.Dense(self.gate_features, use_bias=False, kernel_init=init, name=f"gate_{param_name(p)}")
        if pair == "global":
          a = a * gate(jax.nn.sigmoid(a + h[:, i]))  # [G, d] * [G, 1 | d]
        else:
          ht = ht * gate(jax.nn.sigmoid(ht + h[:, i]))  # [G, d] * [G, 1 | d]
      session = nn.Dense(d, kernel_init=init, bias_init=init, name="linear_transform")(
          jnp.concatenate([a, ht], axis=-1))  # [G, 2d] -> [G, d]

    paired = [i for i, pair in enumerate(self.pairing) if pair != "none"]
    vectors = {"global": global_, "local": local}
    if paired:
      paired_intents = jnp.stack([h[:, i] for i in paired], axis=1)  # [G, Q, d]
      paired_sessions = jnp.stack([vectors[self.pairing[i]] for i in paired], axis=1)  # [G, Q, d]
    else:
      paired_intents = paired_sessions = jnp.zeros((g, 0, d), local.dtype)
    return LLM4SBROutput(scores(session), session, h, paired_intents, paired_sessions)


# ----------------------------------------------------------------------------------------------------------------
# Losses: sums and counts (the caller divides, after a cross-device psum when data-parallel).


def _rows(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Zeros every padding row, so padding contributes no value and receives no gradient."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along the last axis (torch's F.normalize), with a finite gradient at x = 0."""
  sq = jnp.sum(x * x, axis=-1, keepdims=True)  # [..., 1]
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def cross_entropy(scores: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy over all items (eq. 10-11 as implemented: torch's CrossEntropyLoss).

  Args:
    scores: [G, n] item scores (column j = item id j + 1).
    targets: [G] int, target item ids (1-based; anything on padding rows).
    mask: [G] bool, real rows.

  Returns:
    (sum of the negative log-likelihoods over real rows, number of real rows), both float32 scalars.
  """
  if isinstance(scores, scoring.PaddedScores):
    scores = scores.dense()
  implicit = isinstance(scores, scoring.IMPLICIT)
  n = scores.num_items if implicit else scores.shape[-1]
  labels = jnp.clip(jnp.where(mask, targets - 1, 0), 0, n - 1).astype(jnp.int32)  # [G]
  nll = scoring.nll(scores, labels, mask) if implicit else _nll(scores.astype(jnp.float32), labels, mask)  # [G]
  return jnp.sum(nll), jnp.sum(mask).astype(jnp.float32)


@jax.custom_vjp
def _nll(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """-log softmax(scores)[label] per real row, 0 on padding rows; [G].

  Its VJP is the closed form `g (softmax - onehot)` in one elementwise pass over [G, n] (autodiff of a log-softmax
  and a take_along_axis materialises zeros and scatters into them: ~10% of an SR-GNN step on CPU).
  """
  return _nll_fwd(scores, labels, mask)[0]


def _nll_fwd(scores, labels, mask):
  lse = jax.nn.logsumexp(scores, axis=-1)  # [G]
  picked = jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]  # [G]
  return jnp.where(mask, lse - picked, 0.0), (scores, lse, labels, mask)


def _nll_bwd(res, g):
  scores, lse, labels, mask = res
  onehot = jnp.arange(scores.shape[-1])[None, :] == labels[:, None]  # [G, n]
  grad = jnp.where(mask[:, None], g[:, None] * (jnp.exp(scores - lse[:, None]) - onehot), 0.0)  # padding: 0, never NaN
  return grad, None, None


_nll.defvjp(_nll_fwd, _nll_bwd)


def alignment(x: jax.Array, y: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """DirectAU alignment: sum over real rows of ||norm(x_i) - norm(y_i)||^2 (alpha = 2, no other scaling).

  Args:
    x: [G, d].
    y: [G, d].
    mask: [G] bool, real rows.

  Returns:
    (sum, number of real rows), float32 scalars; sum / count is the reference's `.pow(2).mean()`.
  """
  nx = _normalize(_rows(x.astype(jnp.float32), mask))  # [G, d]
  ny = _normalize(_rows(y.astype(jnp.float32), mask))  # [G, d]
  dist = jnp.sum(jnp.square(nx - ny), axis=-1)  # [G]
  return jnp.sum(jnp.where(mask, dist, 0.0)), jnp.sum(mask).astype(jnp.float32)


def uniformity(x: jax.Array, mask: jax.Array, t: float = 2.0) -> tuple[jax.Array, jax.Array]:
  """DirectAU uniformity, before the log: exp(-t ||norm(x_i) - norm(x_j)||^2) over distinct pairs i < j of real rows.

  Padding rows take part in no pair. The loss is `log(sum / n_pairs)` (see `uniformity_log`), taken after an optional
  psum of both numbers. exp(-t d^2) lies in [exp(-4t), 1] on the unit sphere, so the sum cannot overflow.

  Args:
    x: [G, d].
    mask: [G] bool, real rows.
    t: the temperature (DirectAU and LLM4SBR use 2).

  Returns:
    (sum of the exps, number of distinct pairs of real rows), float32 scalars.
  """
  nx = _normalize(_rows(x.astype(jnp.float32), mask))  # [G, d]
  sq = jnp.sum(nx * nx, axis=-1)  # [G]
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (nx @ nx.T), 0.0)  # [G, G]
  g = x.shape[0]
  pairs = jnp.triu(jnp.ones((g, g), bool), k=1) & mask[:, None] & mask[None, :]  # [G, G]
  return jnp.sum(jnp.where(pairs, jnp.exp(-t * d2), 0.0)), jnp.sum(pairs).astype(jnp.float32)


def uniformity_log(sum_exp: jax.Array, n_pairs: jax.Array) -> jax.Array:
  """log(sum_exp / n_pairs), defined as 0 when there is no pair (fewer than two real rows)."""
  ok = n_pairs > 0
  return jnp.where(ok, jnp.log(jnp.where(ok, sum_exp, 1.0) / jnp.maximum(n_pairs, 1.0)), 0.0)


class LossTerms(NamedTuple):
  """Additive pieces of the LLM4SBR loss (psum-able); Q = number of paired perspectives.

  Attributes:
    ce_sum: [] summed cross-entropy over real rows.
    count: [] number of real rows (divides ce_sum and align_sum).
    align_sum: [Q] summed alignment per paired perspective.
    unif_intent_sum: [Q] uniformity sum of exps of h_p per paired perspective.
    unif_session_sum: [Q] uniformity sum of exps of the paired session vector.
    n_pairs: [] number of distinct pairs of real rows (divides both uniformity sums).
  """

  ce_sum: jax.Array  # []
  count: jax.Array  # []
  align_sum: jax.Array  # [Q]
  unif_intent_sum: jax.Array  # [Q]
  unif_session_sum: jax.Array  # [Q]
  n_pairs: jax.Array  # []


def loss_terms(out: LLM4SBROutput, targets: jax.Array, mask: jax.Array) -> LossTerms:
  """The additive loss pieces of one (shard of a) batch.

  Args:
    out: the model's output.
    targets: [G] target item ids (1-based).
    mask: [G] bool graph mask (real rows).

  Returns:
    `LossTerms`.
  """
  ce_sum, count = cross_entropy(out.scores, targets, mask)
  num_q = out.paired_intents.shape[1]
  align, unif_i, unif_s = [], [], []
  n_pairs = jnp.sum(jnp.triu(mask[:, None] & mask[None, :], k=1)).astype(jnp.float32)
  for q in range(num_q):
    x, y = out.paired_intents[:, q], out.paired_sessions[:, q]  # [G, d] each
    align.append(alignment(x, y, mask)[0])
    unif_i.append(uniformity(x, mask)[0])
    unif_s.append(uniformity(y, mask)[0])
  stack = lambda v: jnp.stack(v) if v else jnp.zeros((0,), jnp.float32)  # [Q]
  return LossTerms(ce_sum, count, stack(align), stack(unif_i), stack(unif_s), n_pairs)


def combine(terms: LossTerms, tau: float = DEFAULT_TAU) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`L = CE + tau * sum_q [align_q + (unif(h_q) + unif(s_q)) / 2]` from (possibly psummed) terms.

  Args:
    terms: `LossTerms` (summed over devices already, if data-parallel).
    tau: weight of the auxiliary (alignment + uniformity) loss; the paper's 0.1.

  Returns:
    (loss scalar, metrics): metrics holds 'loss', 'ce', 'align' and 'uniform' (summed over perspectives) and
    'align_per' / 'uniform_per' ([Q], in paired-perspective order).
  """
  count = jnp.maximum(terms.count, 1.0)
  ce = terms.ce_sum / count
  align_per = terms.align_sum / count  # [Q]
  uniform_per = 0.5 * (uniformity_log(terms.unif_intent_sum, terms.n_pairs)
                       + uniformity_log(terms.unif_session_sum, terms.n_pairs))  # [Q]
  align, uniform = jnp.sum(align_per), jnp.sum(uniform_per)
  loss = ce + tau * (align + uniform)
  return loss, {"loss": loss, "ce": ce, "align": align, "uniform": uniform, "align_per": align_per,
                "uniform_per": uniform_per}


def llm4sbr_loss(out: LLM4SBROutput, targets: jax.Array, mask: jax.Array, tau: float = DEFAULT_TAU,
                 axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The joint loss of eq. 12 for one batch (psummed over `axis_name` first when given).

  Args:
    out: the model's output.
    targets: [G] target item ids (1-based).
    mask: [G] bool graph mask.
    tau: auxiliary loss weight (paper: 0.1).
    axis_name: a mapped axis (pmap / shard_map) to psum the terms over, or None.

  Returns:
    (loss scalar, metrics dict) as in `combine`.
  """
  terms = loss_terms(out, targets, mask)
  if axis_name is not None:
    terms = jax.lax.psum(terms, axis_name)
  return combine(terms, tau)
