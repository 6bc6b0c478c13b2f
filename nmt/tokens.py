"""Special token ids, the same for every vocabulary: data, model, decoder and exports all read them here.

PAD is 0 so that zero-initialised buffers are padding.
"""

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_PIECES = {PAD: "<pad>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}
