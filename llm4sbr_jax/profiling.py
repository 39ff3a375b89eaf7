"""Where a jitted step's time goes: XLA op events from `jax.profiler`, grouped by model part and phase.

A trace (`jax.profiler.start_trace` / `stop_trace`) holds one event per executed XLA op (thunk) on CPU and GPU,
named after its HLO instruction. The compiled step's HLO text maps each instruction to its `op_name` metadata, the
JAX name stack, which Flax extends with module names: `jit(step)/transpose(jvp(Recommender))/backbone/glu1/
dot_general` is the backward pass of the `glu1` Dense of the backbone. `group_name` turns that into
`backward backbone/glu1: dot_general`; `op_times` sums the event durations per group.
"""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Iterable, Mapping

_INSTRUCTION = re.compile(r"%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"")
_PRIMITIVE = re.compile(r"^[a-z_][a-z0-9_\-]*$")
_WRAPPERS = frozenset({"shard_map", "checkpoint", "remat", "while", "body", "cond", "scan", "cond_fun", "body_fun",
                       "closed_call", "custom_vjp_call", "custom_jvp_call", "pjit"})
_CONTAINERS = ("while", "conditional", "call")  # ops whose body's ops have events of their own
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


def op_names(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: its op_name metadata} over every computation of a compiled module's text."""
  return {m.group(1): m.group(2) for m in map(_INSTRUCTION.search, hlo_text.splitlines()) if m}


def custom_calls(hlo_text: str) -> dict[str, int]:
  """{custom-call target: how many the compiled module runs} (e.g. CSR kernels, whose time the CPU trace misses)."""
  return dict(collections.Counter(_CUSTOM_CALL.findall(hlo_text)))


def group_name(op_name: str, depth: int = 2) -> str:
  """'forward|backward <module path up to depth>: <primitive>' of a JAX name stack (see the module docstring).

  Transformation wrappers (`jit(..)`, `jvp(..)`, `transpose(..)`, `shard_map`, `checkpoint`, `while`, `body`, ...)
  are dropped; the last component is the primitive; the components in between are Flax module names.
  """
  parts = [p for p in op_name.split("/") if p]
  phase = "backward" if any(p.startswith("transpose(") for p in parts) else "forward"
  if not parts:
    return f"{phase} ?"
  primitive = parts[-1]
  modules = [p for p in parts[:-1] if "(" not in p and p not in _WRAPPERS]
  if modules and modules[0][:1].isupper():  # the top-level model's class name (outside jvp(...) at evaluation)
    modules = modules[1:]
  path = "/".join(modules[:depth]) or "(top)"
  return f"{phase} {path}: {primitive if _PRIMITIVE.match(primitive) else '?'}"


def trace_events(trace_dir: str) -> Iterable[tuple[str, str, float]]:
  """(thread/line name, event name, duration in ms) of every event in the newest trace under `trace_dir`."""
  from jax import profiler  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb trace under {trace_dir}")
  data = profiler.ProfileData.from_file(files[-1])
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        yield line.name, event.name, event.duration_ns / 1e6


def op_times(events: Iterable[tuple[str, str, float]], names: Mapping[str, str], depth: int = 2
             ) -> dict[str, float]:
  """Milliseconds per op group: the events whose name is an instruction of `names` (the compiled step's ops)."""
  totals: dict[str, float] = collections.Counter()
  for _, name, ms in events:
    if name in names and not name.startswith(_CONTAINERS):  # a loop's time is its body's ops' time
      totals[group_name(names[name], depth)] += ms
  return dict(totals)
