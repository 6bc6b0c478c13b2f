"""The docs cannot rot: cli.md equals --help, and the README's commands are the ones CI and users run."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))


def test_cli_reference_matches_help() -> None:
    import gen_cli

    assert (ROOT / "docs" / "cli.md").read_text() == gen_cli.render(), "docs/cli.md is stale: python docs/gen_cli.py > docs/cli.md"


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_the_two_commands() -> None:
    first, second = readme_commands()[:2]
    assert first == "pip install torch==2.13.0 && pip install -e . && bash recipes/quickstart.sh"
    assert second == "pip install torch==2.13.0 && pip install -e '.[dev]' && python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci and "pip install -q -e '.[dev]'" in ci and "pytest -q" in ci


def test_help_lists_only_working_commands() -> None:
    import gen_cli

    listed = re.findall(r"^  (\w+)\s{2,}", gen_cli.help_text("").split("Commands:")[1], re.M)
    assert listed == ["prepare", "train", "average", "translate", "score", "export", "attend", "serve"]
