"""Validation during training: the dev split's loss and perplexity, and, on request, the sacreBLEU of a
beam search over its first sentences (``--valid-bleu N``)."""

from __future__ import annotations

import math

import numpy as np
import sentencepiece as spm
import torch

from nmt.data.batching import collate_indices
from nmt.data.dataset import ParallelDataset
from nmt.decode.beam import Scorer, beam_search
from nmt.decode.config import DecodeConfig
from nmt.kernels import output_cross_entropy
from nmt.model.transformer import Transformer
from nmt.tokens import EOS, PAD
from nmt.train import distributed as D


@torch.no_grad()
def validation_loss(model: Transformer, data: ParallelDataset, batches: list[np.ndarray], pad_multiple: int,
                    label_smoothing: float, precision: str, dist: D.Dist) -> dict[str, float]:
    """Loss and perplexity on the ``batches`` (sentence indices) of ``data``, each rank a share of them,
    summed across ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)
    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for idx in batches[dist.rank :: dist.world]:
        batch = collate_indices(data, idx, pad_multiple).to(dist.device)
        with autocast:
            hidden = model.features(batch.src, batch.tgt_in)
            loss, nll, n = output_cross_entropy(hidden.flatten(0, 1), model.output_weight, batch.tgt_out.view(-1), label_smoothing, PAD)
        sums += torch.stack([loss.double(), nll.double(), n.double()])
    loss, nll, n = D.all_reduce_(sums, dist.world).tolist()
    return {"valid_loss": loss / max(n, 1), "valid_nll": nll / max(n, 1), "valid_ppl": math.exp(min(nll / max(n, 1), 50))}


@torch.inference_mode()
def validation_bleu(model: Transformer, vocab: torch.Tensor, pairs: list[tuple[np.ndarray, np.ndarray]], decode: DecodeConfig) -> tuple[float, list[str]]:
    """sacreBLEU of the beam-searched translations of (source ids, reference ids) pairs, both decoded to
    text, and the translations: the run's own [decode] settings, no normalisation."""
    import sacrebleu

    proc = spm.SentencePieceProcessor(model_proto=vocab.numpy().tobytes())
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hyps, refs = [], []
    scorer = Scorer([model])  # one for the whole pass: it arranges the weights for steps once
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        width = max(len(src) for src, _ in chunk) + 1
        src = torch.full((len(chunk), width), PAD, dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):
            src[row, : len(ids)] = torch.as_tensor(ids.astype(np.int64))
            src[row, len(ids)] = EOS
        limits = [decode.max_output_len(len(ids), model.cfg.max_positions) for ids, _ in chunk]
        found = beam_search(scorer, src.to(device), limits, beam=decode.beam, alpha=decode.lenpen, penalty=decode.penalty,
                            stop=decode.stop)
        hyps += [proc.decode(h[0].tokens if h else []) for h in found]
        refs += [proc.decode(tgt.tolist()) for _, tgt in chunk]
    model.train(was_training)
    return sacrebleu.corpus_bleu(hyps, [refs]).score, hyps
