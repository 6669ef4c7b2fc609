"""The tiny mask-model sizes the mask family's fit tests train with (``model.mask``)."""

TINY_MASK = {
    "unet": {"widths": [8, 16, 16, 32], "out_dim": 16},
    "hidden_dim": 16,
    "mask_dim": 16,
    "num_queries": 4,
    "layers": 1,
    "heads": 2,
    "ffn_dim": 16,
}

# Wider, with three decoder layers and six queries: the tests that fit a whole mask-family method
# under the strict protocol (PADing, AlignZeg) or kill and resume one.
FIT_MASK = {**TINY_MASK, "hidden_dim": 32, "num_queries": 6, "layers": 3, "ffn_dim": 32}
