"""Networks and task models: the ViT encoder, pretraining heads, the UperNet adapter/decoder, LoRA, task heads,
building/saving/loading a task model, and the device models run on."""
