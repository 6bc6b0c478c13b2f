"""Data: named corpora, download, cleaning, SentencePiece, binarisation and the memory-mapped reader."""

from nmt.data.dataset import IndexedTokens, ParallelDataset

__all__ = ["IndexedTokens", "ParallelDataset"]
