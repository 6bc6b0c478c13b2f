"""Print Table 3 of Vaswani et al. (2017) from the runs of recipes/table3/ (or recipes/table3/tiny/), in the
paper's layout: each row's changes, dev perplexity and BLEU, parameters, beside the paper's figures.

    python recipes/table3/table.py runs/table3-tiny      # after bash recipes/table3/tiny.sh
    python recipes/table3/table.py runs/table3           # after training the full-scale rows

A run's figures are its last validation (``summary.json``: perplexity per subword, and BLEU of the dev split
when the recipe sets ``valid_bleu``); its parameters are counted from its configuration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nmt.model.config import ModelConfig, total_parameters

# Table 3 as published: row → (change, dev PPL, dev BLEU, parameters in millions or None where the paper
# leaves the cell empty: the base row's 65M).
PAPER = {
    "base": ("N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1, ε_ls=0.1, 100K steps", 4.92, 25.8, 65),
    "A-heads-1": ("(A) h=1, d_k=d_v=512", 5.29, 24.9, None),
    "A-heads-4": ("(A) h=4, d_k=d_v=128", 5.00, 25.5, None),
    "A-heads-16": ("(A) h=16, d_k=d_v=32", 4.91, 25.8, None),
    "A-heads-32": ("(A) h=32, d_k=d_v=16", 5.01, 25.4, None),
    "B-dk-16": ("(B) d_k=16", 5.16, 25.1, 58),
    "B-dk-32": ("(B) d_k=32", 5.01, 25.4, 60),
    "C-layers-2": ("(C) N=2", 6.11, 23.7, 36),
    "C-layers-4": ("(C) N=4", 5.19, 25.3, 50),
    "C-layers-8": ("(C) N=8", 4.88, 25.5, 80),
    "C-dmodel-256": ("(C) d_model=256, d_k=d_v=32", 5.75, 24.5, 28),
    "C-dmodel-1024": ("(C) d_model=1024, d_k=d_v=128", 4.66, 26.0, 168),
    "C-dff-1024": ("(C) d_ff=1024", 5.12, 25.4, 53),
    "C-dff-4096": ("(C) d_ff=4096", 4.75, 26.2, 90),
    "D-dropout-0.0": ("(D) P_drop=0.0", 5.77, 24.6, None),
    "D-dropout-0.2": ("(D) P_drop=0.2", 4.95, 25.5, None),
    "D-ls-0.0": ("(D) ε_ls=0.0", 4.67, 25.3, None),
    "D-ls-0.2": ("(D) ε_ls=0.2", 5.47, 25.7, None),
    "E-learned-positions": ("(E) positional embedding instead of sinusoids", 4.92, 25.7, None),
    "big": ("big: N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3, 300K steps", 4.33, 26.4, 213),
}


def row(run: Path) -> tuple[str, str, str, str]:
    """(PPL, BLEU, parameters, updates) of one run folder, '-' where it has not finished."""
    summary_path, config_path = run / "summary.json", run / "config.json"
    if not summary_path.exists() or not config_path.exists():
        return "-", "-", "-", "-"
    summary, config = json.loads(summary_path.read_text()), json.loads(config_path.read_text())
    params = total_parameters(ModelConfig(**config["model"])) / 1e6
    ppl = f"{summary['valid_ppl']:.2f}" if "valid_ppl" in summary else "-"
    bleu = f"{summary['valid_bleu']:.1f}" if "valid_bleu" in summary else "-"
    return ppl, bleu, f"{params:.2f}" if params < 10 else f"{params:.0f}", f"{summary['updates']:,}"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python recipes/table3/table.py RUNS_FOLDER")
    runs = Path(sys.argv[1])
    if not runs.is_dir():
        sys.exit(f"{runs}: not a folder of runs")
    print(f"Table 3 (Vaswani et al. 2017) beside the runs in {runs}; dev perplexity per subword and dev BLEU, last checkpoint")
    print(f"{'row':<52}{'PPL':>7}{'BLEU':>7}{'params':>8}{'updates':>9}   {'paper: PPL':>10}{'BLEU':>6}{'params':>8}")
    for stem, (change, ppl, bleu, params) in PAPER.items():
        ours = row(runs / stem)
        paper_params = f"{params}M" if params else ""
        print(f"{change[:51]:<52}{ours[0]:>7}{ours[1]:>7}{ours[2]:>8}{ours[3]:>9}   {ppl:>10.2f}{bleu:>6.1f}{paper_params:>8}")
    print("params: millions for the full-scale rows; for the tiny rows, millions with two decimals.")


if __name__ == "__main__":
    main()
