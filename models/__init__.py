"""Architecture adapters (one module per family, see `models.base`) and the bundled tiny model."""

# The names that load the bundled tiny model (`interp.load`, the CLI's --model): its shipped UNet, and the
# same pipeline with the UNet trained to ground object words in their objects (`models.tiny.GROUNDED_UNET_DIR`).
BUNDLED = ("tiny", "tiny-grounded")
