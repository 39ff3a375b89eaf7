"""The launchers' multi-process flags (`experiments/train.py`, `experiments/paper.py`); see llm4sbr_jax/distributed."""

from absl import flags

from llm4sbr_jax import distributed

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0 "
                                   "(the same on every process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, 0..n-1.")
_AUTO = flags.DEFINE_bool("distributed", False, "Multi-process run configured by the cluster environment (SLURM, "
                          "TPU pod slices, Kubernetes): jax.distributed.initialize() with no arguments.")


def initialize() -> bool:
  """Calls jax.distributed.initialize per the flags (before any device is touched); False for a single process."""
  return distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO.value)
