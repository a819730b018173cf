"""Tiny pipelines (SD, SDXL, DeepFloyd IF, PixArt, SD3, FLUX) built from configs with random weights, offline.

The pattern of diffusers' own ``get_dummy_components``: every component is built from a small
config, the tokenizer from a local vocabulary, so tests and adapter authors never touch a hub.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL, DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
    IFPipeline, PixArtAlphaPipeline,
    PixArtTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
    StableDiffusionXLPipeline, UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer,
)

from models.vocab import EOS, build_clip_tokenizer

DUMMY_WORDS = (
    "a an the of in by photo painting picture image style van gogh monet red blue green cat dog "
    "circle square star two one drawing sketch"
).split()


def dummy_tokenizer(max_length: int = 16, pad_token: str = EOS) -> CLIPTokenizer:
    return build_clip_tokenizer(list(DUMMY_WORDS), max_length=max_length, pad_token=pad_token)


def dummy_text_encoder(
    tokenizer: CLIPTokenizer, width: int, layers: int, projection: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A random CLIP text tower sized for `tokenizer` (SDXL's second encoder has a projection)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=width * 2, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def dummy_vae(**config: float) -> AutoencoderKL:
    """A 2x-downsampling VAE: 16 px images, 8x8 latents (`config`: e.g. SD3's shift and scaling factors)."""
    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
        **config,
    ).eval()


def dummy_scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def dummy_sd_pipeline(
    seed: int = 0, text_layers: int = 2, pad_token: str = EOS, max_length: int = 16, width: int = 32
) -> StableDiffusionPipeline:
    """A random-weight SD1.x-shaped pipeline with every site kind.

    UNet: a cross-attention down block, a plain down block, the mid block, a plain and a
    cross-attention up block: 20 sites, 4 cross-attention layers (1 down, 1 mid, 2 up).
    `pad_token="!"` gives SD2.x's pad id 0.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(width, width * 2), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=8, norm_num_groups=8,
    )
    tokenizer = dummy_tokenizer(max_length, pad_token)
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=dummy_vae(), text_encoder=dummy_text_encoder(tokenizer, width, text_layers),
        tokenizer=tokenizer, scheduler=dummy_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_sdxl_pipeline(seed: int = 0, max_length: int = 16, width: int = 32) -> StableDiffusionXLPipeline:
    """A random-weight SDXL-shaped pipeline (diffusers' own SDXL test components, our tokenizers).

    Two text encoders (the second with a projection), a UNet with text-time added conditions and
    two transformer blocks per attention in its cross-attention blocks.
    """
    torch.manual_seed(seed)
    time_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + width, cross_attention_dim=2 * width, norm_num_groups=8,
    )
    tokenizer, tokenizer_2 = dummy_tokenizer(max_length), dummy_tokenizer(max_length, pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=dummy_vae(), unet=unet.eval(), scheduler=dummy_scheduler(),
        text_encoder=dummy_text_encoder(tokenizer, width, 2), tokenizer=tokenizer,
        text_encoder_2=dummy_text_encoder(tokenizer_2, width, 3, projection=True), tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_t5_tokenizer(max_length: int = 77) -> T5Tokenizer:
    """A T5 (Unigram) tokenizer over `DUMMY_WORDS`, built in code: each word is one piece, and any
    other text falls back to single characters. No sentencepiece model is needed."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -1.0) for word in DUMMY_WORDS]
    pieces += [(prefix + char, -5.0) for char in chars for prefix in ("\u2581", "")]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def dummy_t5_encoder(tokenizer: T5Tokenizer, width: int = 32, layers: int = 2) -> T5EncoderModel:
    """A random T5 v1.1-style encoder (gated-GELU feed-forward) sized for `tokenizer`."""
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=width * 2, num_layers=layers,
                      num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return T5EncoderModel(config).eval()


def dummy_if_pipeline(seed: int = 0, width: int = 32, text_layers: int = 2) -> IFPipeline:
    """A random-weight DeepFloyd IF stage I pipeline (diffusers' own IF test components, our
    tokenizer): 16 px images; a resnet down block, a SimpleCrossAttn down block, the SimpleCrossAttn
    mid block, a SimpleCrossAttn and a resnet up block: 4 cross-attention layers (1 down, 1 mid, 2 up),
    whose text group norms get random affine parameters (so each layer's key/value input differs)."""
    torch.manual_seed(seed)
    tokenizer = dummy_t5_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=(width, width * 2), in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=width, encoder_hid_dim=width, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", norm_num_groups=8,
    )
    with torch.no_grad():  # as after training, each attention normalizes the text its own way
        for norm in (m.norm_cross for m in unet.modules() if getattr(m, "norm_cross", None) is not None):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95,
                              sample_max_value=1.5, prediction_type="epsilon", variance_type="learned_range")
    pipe = IFPipeline(tokenizer=tokenizer, text_encoder=dummy_t5_encoder(tokenizer, width, text_layers),
                      unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                      watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_pixart_pipeline(seed: int = 0, width: int = 32, text_layers: int = 2) -> PixArtAlphaPipeline:
    """A random-weight PixArt-alpha pipeline (diffusers' own PixArt test transformer, our T5 and
    tokenizer): 16 px images, 8x8 latents in 2x2 patches, 2 transformer blocks."""
    torch.manual_seed(seed)
    tokenizer = dummy_t5_tokenizer(max_length=120)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=width,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=dummy_t5_encoder(tokenizer, width, text_layers),
                               vae=dummy_vae(), transformer=transformer.eval(), scheduler=dummy_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_sd3_pipeline(seed: int = 0, width: int = 32) -> StableDiffusion3Pipeline:
    """A random-weight SD3 pipeline (diffusers' own SD3 test transformer, our encoders and tokenizers):
    two CLIP encoders with projections, a T5 twice as wide (their concatenation's width), 16 px
    images, 2 joint blocks (the last without a text feed-forward)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = dummy_tokenizer(), dummy_tokenizer(pad_token="!"), dummy_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=width, joint_attention_dim=2 * width,
        pooled_projection_dim=2 * width, pos_embed_max_size=8,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=dummy_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=dummy_text_encoder(tokenizer, width, 2, projection=True), tokenizer=tokenizer,
        text_encoder_2=dummy_text_encoder(tokenizer_2, width, 2, projection=True), tokenizer_2=tokenizer_2,
        text_encoder_3=dummy_t5_encoder(tokenizer_3, 2 * width), tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dummy_flux_pipeline(seed: int = 0, width: int = 32) -> FluxPipeline:
    """A random-weight FLUX.1-dev-shaped pipeline (diffusers' own FLUX test transformer at our sizes,
    our encoders and tokenizers): a CLIP encoder (pooled output only) and a T5 as wide as the
    transformer's text input, guidance embedding on, 2 double-stream and 2 single-stream blocks, 16 px
    images by default (8x8 latents packed into 4x4 tokens of 2x2 patches)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = dummy_tokenizer(), dummy_t5_tokenizer(max_length=512)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=width, pooled_projection_dim=width, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    pipe = FluxPipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=dummy_vae(shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=dummy_text_encoder(tokenizer, width, 2), tokenizer=tokenizer,
        text_encoder_2=dummy_t5_encoder(tokenizer_2, width), tokenizer_2=tokenizer_2,
    )
    pipe.default_sample_size = 8  # 16 px by default (the real pipeline's 128 latents: 1024 px)
    pipe.set_progress_bar_config(disable=True)
    return pipe
