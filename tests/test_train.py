"""Training loop: outputs, schedule, resume after a kill (no duplicated or dropped epochs), dataset mismatch."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from llm4sbr_jax import dataset, metrics, synthetic, train
from experiments.configs import default


def _config(dataset_dir, **overrides):
  c = default.get_config()
  c.dataset_dir = str(dataset_dir)
  c.hidden, c.batch_size, c.num_epochs, c.progress = 16, 20, 3, False
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("data") / "synthetic"
  dataset.save_dataset(synthetic.make_dataset(60, 400, 4.0, 15, seed=0), str(d))
  return d


def _epochs(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_learning_rate_schedule_decays_every_three_epochs():
  c = default.get_config()
  assert [train.learning_rate(c, e) for e in (0, 2, 3, 5, 6)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


def test_run_writes_metrics_results_and_plot(data_dir, tmp_path):
  results = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  rows = _epochs(tmp_path)
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  assert rows[0]["train"]["loss"] > rows[-1]["train"]["loss"]  # it learns
  assert results["selection_split"] == "valid" and 0 <= results["selected"]["epoch"] <= 2
  paper = results["paper_protocol_best_test"]
  assert paper["metrics"]["hr@20"] == max(r["test"]["hr@20"] for r in rows)
  assert set(results["selected"]["test"]) >= {"hr@5", "mrr@10", "ndcg@20"}
  assert (tmp_path / "curves.png").stat().st_size > 1000
  assert json.loads((tmp_path / "results.json").read_text())["epochs_run"] == 3
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({results["selected"]["epoch"], 1, 2})  # the last two and the selected epoch
  # The selected epoch's per-sample test ranks reproduce its test metrics (the paired bootstrap's input).
  ranks = np.load(tmp_path / results["test_ranks"], allow_pickle=False)
  per_sample = metrics.ranks_metrics(ranks)
  for k, v in results["selected"]["test"].items():
    assert abs(100 * per_sample[k].mean() - v) < 1e-3, k


def test_rerun_resumes_and_extends(data_dir, tmp_path):
  first = train.train_and_evaluate(_config(data_dir, num_epochs=2), str(tmp_path))
  assert first["epochs_run"] == 2
  second = train.train_and_evaluate(_config(data_dir, num_epochs=3), str(tmp_path))
  rows = _epochs(tmp_path)
  assert [r["epoch"] for r in rows] == [0, 1, 2] and second["epochs_run"] == 3
  straight = train.train_and_evaluate(_config(data_dir, num_epochs=3), str(tmp_path / "straight"))
  # Resuming reproduces the uninterrupted run exactly (same order per epoch, restored optimiser state).
  assert second["paper_protocol_best_test"]["metrics"] == pytest.approx(
      straight["paper_protocol_best_test"]["metrics"], abs=1e-4)


def test_a_diverged_epoch_stops_the_run_and_saves_nothing_of_it(data_dir, tmp_path):
  train.train_and_evaluate(_config(data_dir, num_epochs=1), str(tmp_path))
  ranks = (tmp_path / "test_ranks.npy").read_bytes()
  with pytest.raises(train.DivergedError, match="epoch 1's training loss is not finite"):
    train.train_and_evaluate(_config(data_dir, num_epochs=2, lr=1e38), str(tmp_path))  # overflows to inf / NaN
  assert [r["epoch"] for r in _epochs(tmp_path)] == [0]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["0"]
  assert (tmp_path / "test_ranks.npy").read_bytes() == ranks
  assert train.DivergedError in train.EXPECTED_ERRORS  # the launchers print it in one line


def test_kill_minus_nine_then_rerun_finishes_with_every_epoch_once(data_dir, tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, str(REPO / "experiments" / "train.py"), "--config",
         str(REPO / "experiments" / "configs" / "default.py"), f"--config.dataset_dir={data_dir}",
         f"--workdir={workdir}", "--config.hidden=16", "--config.batch_size=20", "--config.num_epochs=6",
         "--config.progress=False"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "metrics.jsonl").exists() and len(_epochs(workdir)) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done_before = len(_epochs(workdir))
  assert 2 <= done_before < 6
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
  assert [r["epoch"] for r in _epochs(workdir)] == list(range(6))
  assert json.loads((workdir / "results.json").read_text())["epochs_run"] == 6


def test_resume_refuses_another_dataset(data_dir, tmp_path):
  train.train_and_evaluate(_config(data_dir, num_epochs=1), str(tmp_path))
  other = tmp_path / "other"
  dataset.save_dataset(synthetic.make_dataset(60, 400, 4.0, 15, seed=1), str(other))
  with pytest.raises(ValueError, match="use a new --workdir"):
    train.train_and_evaluate(_config(other, num_epochs=2), str(tmp_path))


@pytest.mark.parametrize("backbone", ["srgnn", "tagnn", "gcegnn", "s2dhcn"])
def test_evaluation_order_and_budget_leave_every_rank_unchanged(data_dir, backbone):
  # Evaluation packs the balanced order into its exact budget; the split order (batches cut short by the same
  # budget where they overflow) gives every sample the same rank: a session's scores ignore its batch mates.
  exp = train.Experiment(_config(data_dir, backbone=backbone))
  params = exp.runner.replicate(exp.init_state()).params
  assert exp.eval_budget.nodes < exp.budget.nodes
  balanced, ranks = exp.evaluate(params, "test")
  exp.eval_orders["test"] = np.arange(len(exp.splits["test"]))
  in_order, ranks_in_order = exp.evaluate(params, "test")
  np.testing.assert_array_equal(ranks, ranks_in_order)
  assert balanced == pytest.approx(in_order, abs=1e-4) and ranks.min() >= 1


def test_evaluation_batches_placed_once_and_reused_under_the_size_cap(data_dir, monkeypatch):
  exp = train.Experiment(_config(data_dir))
  params = exp.runner.replicate(exp.init_state()).params
  first, ranks = exp.evaluate(params, "test")
  assert exp._placed_eval["test"][0] is exp.eval_orders["test"]  # kept on the devices
  cached = exp._placed_eval["test"][1]
  again, ranks_again = exp.evaluate(params, "test")
  assert exp._placed_eval["test"][1] is cached and again == first
  np.testing.assert_array_equal(ranks, ranks_again)
  monkeypatch.setattr(train, "EVAL_CACHE_BYTES", 0)  # over the cap: streamed, nothing kept, same numbers
  fresh = train.Experiment(_config(data_dir))
  streamed, ranks_streamed = fresh.evaluate(params, "test")
  assert not fresh._placed_eval and streamed == first
  np.testing.assert_array_equal(ranks, ranks_streamed)


def test_evaluation_budget_smaller_than_a_training_sample(tmp_path):
  # One long training session and short evaluation samples: the evaluation step compiles on an evaluation sample.
  long_prefix = list(range(1, 41))
  prefixes = [long_prefix] + [[1, 2], [2, 3], [3, 4]] * 10
  split = dataset.Split.from_prefixes(prefixes, [41] + [5] * 30, np.arange(31), np.zeros(31))
  short = dataset.Split.from_prefixes([[1, 2], [3, 4]], [3, 5], np.arange(2), np.zeros(2))
  ds = dataset.ProcessedDataset("tiny", [dataset.PAD_NAME] + [f"item {i}" for i in range(1, 42)],
                                [""] + [str(i) for i in range(1, 42)], {"train": split, "valid": short, "test": short})
  dataset.save_dataset(ds, str(tmp_path / "tiny"))
  exp = train.Experiment(_config(tmp_path / "tiny"))
  assert exp.eval_budget.nodes < 41 <= exp.budget.nodes
  _, ranks = exp.evaluate(exp.runner.replicate(exp.init_state()).params, "test")
  assert len(ranks) == 2 and ranks.min() >= 1
