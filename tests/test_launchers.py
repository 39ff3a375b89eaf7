"""Launchers in experiments/: none shadows a standard-library module (the script directory is first on sys.path, so
an `experiments/profile.py` would be imported by anything that imports the standard `profile`)."""

import sys

from conftest import REPO


def test_no_launcher_shadows_a_standard_library_module():
  names = {p.stem for p in (REPO / "experiments").glob("*.py")} | {p.name for p in (REPO / "experiments").iterdir()
                                                                      if p.is_dir()}
  assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)
