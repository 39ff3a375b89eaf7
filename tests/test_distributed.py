"""Multi-process training: 2 processes x 2 CPU devices (gloo) equal 1 process x 4 devices, and resume after a stop
or after kill -9 of one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from llm4sbr_jax import dataset, distributed, synthetic


def test_single_process_needs_no_setup_and_partial_flags_are_refused():
  assert distributed.initialize() is False
  with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
    distributed.initialize(coordinator_address="127.0.0.1:1234")
  with pytest.raises(ValueError, match=r"--process_id 2 is not in \[0, --num_processes 2\)"):
    distributed.initialize("127.0.0.1:1234", 2, 2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(data_dir, workdir, epochs, devices, extra=(), processes=1):
  """Starts experiments/train.py in `processes` local processes with `devices` CPU devices each."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = [sys.executable, str(REPO / "experiments" / "train.py"), "--config",
         str(REPO / "experiments" / "configs" / "default.py"), f"--config.dataset_dir={data_dir}",
         f"--workdir={workdir}", "--config.hidden=16", "--config.batch_size=20", f"--config.num_epochs={epochs}",
         "--config.progress=False", *extra]
  port = _free_port()
  multi = lambda i: ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                      f"--process_id={i}"] if processes > 1 else [])
  return [subprocess.Popen(cmd + multi(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(processes)]


def _train(data_dir, workdir, epochs, devices, extra=(), processes=1):
  """Runs `_start`'s processes to the end; process 0's metrics.jsonl rows."""
  procs = _start(data_dir, workdir, epochs, devices, extra, processes)
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _numbers(record):
  return np.array([record["train"]["loss"]] + [record[s][k] for s in ("valid", "test") for k in sorted(record[s])])


def test_two_processes_train_like_one_and_resume(tmp_path):
  data = tmp_path / "data"
  dataset.save_dataset(synthetic.make_dataset(60, 300, 4.0, 15, seed=0), str(data))
  one = _train(data, tmp_path / "one", 2, devices=4)
  # Two processes: one epoch, stop, then the same command with two epochs resumes from the shared checkpoint.
  first = _train(data, tmp_path / "two", 1, devices=2, processes=2)
  assert [r["epoch"] for r in first] == [0]
  two = _train(data, tmp_path / "two", 2, devices=2, processes=2)
  assert [r["epoch"] for r in two] == [0, 1]
  for a, b in zip(one, two):
    np.testing.assert_allclose(_numbers(a), _numbers(b), rtol=1e-5, atol=1e-5)
  results = json.loads((tmp_path / "two" / "results.json").read_text())
  assert results["epochs_run"] == 2 and (tmp_path / "two" / "curves.png").exists()
  # The item table split over the 4 devices of both processes, each scoring its own rows: still the same run.
  split = _train(data, tmp_path / "split", 2, devices=2, processes=2,
                 extra=("--config.shard_items=True", "--config.shard_scores=True"))
  for a, b in zip(one, split):
    np.testing.assert_allclose(_numbers(a), _numbers(b), rtol=1e-5, atol=1e-5)


def test_kill_minus_nine_of_one_process_then_rerun_both_finishes_with_every_epoch_once(tmp_path):
  data = tmp_path / "data"
  dataset.save_dataset(synthetic.make_dataset(60, 600, 4.0, 15, seed=0), str(data))
  workdir = tmp_path / "run"
  procs = _start(data, workdir, 5, devices=2, processes=2)
  deadline = time.time() + 240
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 2:
      break
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), "the run finished before it could be killed"
  os.kill(procs[1].pid, signal.SIGKILL)  # one process of the pair dies mid-run
  try:  # its partner fails in the next collective, or blocks there until the job is restarted (as a scheduler does)
    procs[0].wait(timeout=20)
  except subprocess.TimeoutExpired:
    procs[0].kill()
  for p in procs:
    p.communicate()
  done_before = len((workdir / "metrics.jsonl").read_text().splitlines())
  assert 2 <= done_before < 5
  rows = _train(data, workdir, 5, devices=2, processes=2)  # the same command on both: resumes
  assert [r["epoch"] for r in rows] == list(range(5))
  assert json.loads((workdir / "results.json").read_text())["epochs_run"] == 5


def test_pmap_refuses_devices_of_other_processes():
  from llm4sbr_jax import parallel  # pylint: disable=g-import-not-at-top

  class Remote:  # a device of process 1, as jax.devices() lists them in a multi-process run
    process_index = 1

  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.local_devices()[:1] + [Remote()]
  with pytest.raises(ValueError, match="'pmap' runs in one process"):
    parallel.Runner("pmap", None, {}, None, None, devices=devices)
