"""Regenerate docs/cli.md from the commands' own --help texts: python docs/gen_cli.py > docs/cli.md"""

from __future__ import annotations

import os
import subprocess
import sys

COMMANDS = ["", "prepare", "train", "average", "translate", "score", "export", "attend", "serve"]


def help_text(command: str) -> str:
    env = {**os.environ, "COLUMNS": "110", "TERM": "dumb", "NO_COLOR": "1", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    args = [sys.executable, "-m", "nmt", *([command] if command else []), "--help"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, check=True).stdout
    return "\n".join(line.rstrip() for line in out.splitlines()).strip()


def render() -> str:
    parts = ["# Command-line reference", "",
             "Generated from `--help` by `python docs/gen_cli.py > docs/cli.md`; `tests/integration/test_docs.py` fails when it drifts.", ""]
    for command in COMMANDS:
        parts += [f"## `nmt {command}`".replace(" `", "`", 0) if command else "## `nmt`", "", "```", help_text(command), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
