"""Decoding: length penalties, beam search over cached incremental decoding, and streaming translation."""
