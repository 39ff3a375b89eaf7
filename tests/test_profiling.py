"""Op-group profiling: HLO op names, grouping by phase and Flax module, and a real trace of a Flax step."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm4sbr_jax import profiling


class _Model(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4, name="head")(jnp.tanh(nn.Dense(64, name="enc")(x)))


def test_group_name_reads_phase_module_and_primitive():
  g = profiling.group_name
  assert g("jit(step)/jvp(Recommender)/backbone/glu1/dot_general") == "forward backbone/glu1: dot_general"
  assert g("jit(step)/transpose(jvp(Recommender))/backbone/glu1/dot_general") == "backward backbone/glu1: dot_general"
  assert g("jit(step)/shard_map/jvp(M)/backbone/closed_call/scatter-add", depth=1) == "forward backbone: scatter-add"
  assert g("jit(step)/add") == "forward (top): add"
  assert g("jit(step)/shard_map/Recommender/backbone/gnn/dot_general") == "forward backbone/gnn: dot_general"
  assert g("") == "forward ?"


def test_traced_step_is_attributed_to_its_modules(tmp_path):
  model = _Model()
  x = jnp.ones((256, 128))
  params = model.init(jax.random.PRNGKey(0), x)
  step = jax.jit(jax.grad(lambda p, x: model.apply(p, x).sum())).lower(params, x).compile()
  names = profiling.op_names(step.as_text())
  assert any(v.endswith("/enc/dot_general") for v in names.values())
  jax.block_until_ready(step(params, x))
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(3):
    jax.block_until_ready(step(params, x))
  jax.profiler.stop_trace()
  times = profiling.op_times(profiling.trace_events(str(tmp_path)), names)
  assert times and all(v >= 0 for v in times.values())
  assert any(k.startswith("forward enc") for k in times) and any(k.startswith("backward") for k in times)


def test_loops_are_not_counted_twice():
  names = {"while.3": "jit(f)/while", "fusion.1": "jit(f)/while/body/enc/mul"}
  events = [("t", "while.3", 5.0), ("t", "fusion.1", 4.0), ("t", "unrelated", 9.0)]
  assert profiling.op_times(events, names) == {"forward enc: mul": 4.0}


def test_custom_calls_are_counted_from_the_hlo():
  hlo = ('%a = f32[4,2]{1,0} custom-call(%x), custom_call_target="cpu_csr_sparse_dense_ffi"\n'
         '%b = f32[4,2]{1,0} custom-call(%a), custom_call_target="cpu_csr_sparse_dense_ffi"\n'
         '%c = f32[2]{0} custom-call(%b), custom_call_target="other"\n%d = f32[2]{0} add(%c, %c)')
  assert profiling.custom_calls(hlo) == {"cpu_csr_sparse_dense_ffi": 2, "other": 1}
  assert profiling.custom_calls("%d = f32[2]{0} add(%c, %c)") == {}
