"""The README's install commands work on a clean clone in a fresh virtual environment."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_install_in_fresh_venv(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'venv' / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp_path / "venv")}
    env.pop("PYTHONPATH", None)
    blocks = re.findall(r"```bash\n(.+?)\n```", (clone / "README.md").read_text())
    for command in blocks[:2]:
        install = command.split(" && bash ")[0].split(" && python -m pytest")[0]  # run the installs, not the jobs
        r = subprocess.run(["bash", "-c", install], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(["nmt", "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nmt ")
    r = subprocess.run(["python", "-c", "import nmt, pytest, sys; print(nmt.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.stdout.strip().startswith(str(clone))
