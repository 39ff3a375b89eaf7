"""Launchers in experiments/: none shadows a standard-library module (the script directory is first on sys.path, so
an `experiments/profile.py` would be imported by anything that imports the standard `profile`)."""

import sys

from conftest import REPO


def test_no_launcher_shadows_a_standard_library_module():
  names = {p.stem for p in (REPO / "experiments").glob("*.py")} | {p.name for p in (REPO / "experiments").iterdir()
                                                                      if p.is_dir()}
  assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)


def _launch(script, *args):
  import subprocess  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, str(REPO / "experiments" / script), *map(str, args)], capture_output=True,
                        text=True, check=False)


def _one_line_error(result, *parts):
  """The launcher failed with exactly one `error: ...` line on stderr (no traceback) that holds every part."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for part in parts:
    assert part in lines[0], (part, lines[0])


def test_prepare_data_errors_are_one_line(tmp_path):
  header_only = tmp_path / "header.tsv"
  header_only.write_text("session_id\titem_id\ttimestamp\n")
  out = tmp_path / "out"
  _one_line_error(_launch("prepare_data.py", "--dataset", "generic", "--interactions", header_only, "--out_dir", out),
                  str(header_only), "a header but no interactions")
  rare = tmp_path / "rare.tsv"  # every item is seen fewer than 5 times: no session survives the filters
  rare.write_text("".join(f"s{k}\ti{k}\t{k}\ns{k}\tj{k}\t{k + 1}\n" for k in range(4)))
  _one_line_error(_launch("prepare_data.py", "--dataset", "generic", "--interactions", rare, "--out_dir", out),
                  "generic (rare.tsv): no session of length >= 2 is left", "(8 interactions, 4 sessions)")
  _one_line_error(_launch("prepare_data.py", "--dataset", "generic", "--interactions", rare, "--min_item_count", "1",
                          "--test_size", "9", "--out_dir", out),
                  "test_size: 9 samples requested out of 4; expected 0 <= count < 4")
  inter = tmp_path / "x.inter"
  inter.write_text("session_id:token\titem:token\ttimestamp:float\ns\ti\t1\n")
  _one_line_error(_launch("prepare_data.py", "--dataset", "recbole", "--inter", inter, "--out_dir", out),
                  str(inter), "line 1", "missing required field 'item_id'")
  inter.write_text("session_id:token\titem_id:token\ttimestamp:float\ns\ti\t1\ns\tj\t2\n")
  _one_line_error(_launch("prepare_data.py", "--dataset", "recbole", "--inter", inter, "--session_gap_minutes", "10",
                          "--out_dir", out), "recbole (x.inter): the keys are session ids")
  for flag, value, expected in (("--test_size", "ten", "an integer count or a fraction"),
                                 ("--valid_size", "0.1x", "an integer count or a fraction"),
                                 ("--session_gap_minutes", "10m", "minutes or 'none'")):
    _one_line_error(_launch("prepare_data.py", "--dataset", "generic", "--interactions", rare, flag, value,
                            "--out_dir", out), f"{flag} '{value}'", expected)
  _one_line_error(_launch("prepare_data.py", "--dataset", "diginetica", "--protocol", "reference", "--samples",
                          "last", "--raw_dir", tmp_path, "--out_dir", out), "--samples last", "drop --samples")
  assert not out.exists()


def test_train_config_errors_are_one_line(tmp_path):
  from llm4sbr_jax import dataset, synthetic  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  dataset.save_dataset(synthetic.make_dataset(20, 60, 3.0, 6, seed=0), str(data))
  configs = REPO / "experiments" / "configs"
  for script, config, flag in (("train.py", "default.py", "backbone"), ("paper.py", "table2.py", "backbones")):
    _one_line_error(_launch(script, "--config", configs / config, f"--config.dataset_dir={data}",
                            f"--config.{flag}=gru4rec", f"--workdir={tmp_path / 'run'}"),
                    "config.backbone: unknown backbone 'gru4rec'; registered: gcegnn, s2dhcn, srgnn, tagnn")


def test_export_data_errors_are_one_line(tmp_path):
  _one_line_error(_launch("export_data.py", "--dataset_dir", tmp_path / "missing", "--out_dir", tmp_path / "out"),
                  str(tmp_path / "missing"))
