"""Multi-process runs: `jax.distributed` set up from explicit launcher flags or from the cluster's environment.

One process per host (or per GPU), all running the same command. With explicit flags every process gets the same
`coordinator_address` (host:port of process 0) and `num_processes`, and its own `process_id`. With `auto`,
`jax.distributed.initialize()` reads them from the environment that SLURM, Cloud TPU pod slices and Kubernetes (the
JAX env vars) provide. Cross-process collectives on CPU go through gloo (how the tests run two local processes).
"""

from __future__ import annotations

from typing import Optional

import jax


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
  """Joins the multi-process run the arguments describe; False (nothing done) for a single-process run.

  Must run before anything touches the devices.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  if all(v is None for v in given.values()) and not auto:
    return False
  if not auto and any(v is None for v in given.values()):
    missing = ", ".join(f"--{k}" for k, v in given.items() if v is None)
    raise ValueError(f"a multi-process run needs --coordinator_address, --num_processes and --process_id "
                     f"(or --distributed to read them from the cluster environment); missing {missing}")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise ValueError(f"--process_id {process_id} is not in [0, --num_processes {num_processes})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**({} if auto else given))
  return True
