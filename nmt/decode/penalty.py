"""Length penalties. Two conventions share the name 'lenpen' and are not the same thing."""

from __future__ import annotations

PENALTIES = ("gnmt", "fairseq")


def length_penalty(length: int, alpha: float, kind: str = "gnmt") -> float:
    """The divisor of a hypothesis' log-probability; ``length`` counts its tokens including EOS.

    gnmt (the paper, §6.1, after Wu et al. 2016, as in tensor2tensor): ((5 + |Y|) / 6)^α.
    fairseq (``--lenpen``): |Y|^α. fairseq's ``--lenpen 0.6`` is therefore not the paper's α = 0.6.
    """
    if kind == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if kind == "fairseq":
        return float(length) ** alpha
    raise ValueError(f"unknown length penalty '{kind}' (known: {', '.join(PENALTIES)})")
