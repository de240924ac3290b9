"""The CKA encoder pairs' names (000 Table 6), declared once: the plan names its pairs with them, the CKA stage
computes Delta from them, and the report labels its rows by them."""

PRETRAINED_CONTINUAL = "pretrained-continual"
PRETRAINED_FT, CONTINUAL_FT = "pretrained-finetuned", "continual-finetuned"  # the same FT: the paper's Delta
FROM_CONTINUAL = "continual-finetuned_from_continual"  # an encoder fine-tuned from the continual one
