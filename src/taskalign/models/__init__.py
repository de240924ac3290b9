"""Networks: the ViT encoder, pretraining heads, the UperNet adapter/decoder, LoRA."""
