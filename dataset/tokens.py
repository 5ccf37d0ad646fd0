"""The token layout: the one definition shared by the data (builder, loader, evaluator) and the
models. Plain constants, no imports, so `models/` can use them without importing any data code
(`dataset/` never imports `models/`).

PAD 0 (empty canvas cell), EOS 1 (the row below / column right of a grid), colour c (0-9) ->
token c + 2; labels are -100 where the loss ignores them (PAD cells of an answer)."""

PAD_ID = 0
EOS_ID = 1
COLOUR_OFFSET = 2
NUM_COLOURS = 10
VOCAB_SIZE = COLOUR_OFFSET + NUM_COLOURS  # 12
IGNORE_LABEL_ID = -100
