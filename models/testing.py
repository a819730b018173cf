"""Tiny Stable Diffusion pipelines built from configs with random weights, offline.

The pattern of diffusers' own ``get_dummy_components``: every component is built from a small
config, the tokenizer from a local vocabulary, so tests and adapter authors never touch a hub.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from models.vocab import EOS, build_clip_tokenizer

DUMMY_WORDS = (
    "a an the of in by photo painting picture image style van gogh monet red blue green cat dog "
    "circle square star two one drawing sketch"
).split()


def dummy_sd_pipeline(
    seed: int = 0,
    text_layers: int = 2,
    pad_token: str = EOS,
    max_length: int = 16,
    width: int = 32,
) -> StableDiffusionPipeline:
    """A random-weight SD1.x-shaped pipeline: 2 down / mid / 2 up blocks, every site kind present.

    The UNet has 5 cross-attention layers in forward order (2 down, 1 mid, 2 up... per its blocks),
    32 px latents are 8x8 after the 4x VAE. `pad_token="!"` gives SD2.x's pad id 0.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(width, width * 2),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    tokenizer = build_clip_tokenizer(list(DUMMY_WORDS), max_length=max_length, pad_token=pad_token)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=width * 2,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
