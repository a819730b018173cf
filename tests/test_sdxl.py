"""SDXL adapter: full-size site layout on the meta device, exactness of a reduced model."""

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import interp
from models.testing import dummy_sdxl_pipeline, dummy_tokenizer
from tests.configs import SD15_TEXT, SDXL_TEXT_G, SDXL_UNET
from tests.family_checks import check_family


def sdxl_meta_pipeline() -> StableDiffusionXLPipeline:
    """A full-size SDXL pipeline with no weights (meta device): enough to name and lay out sites."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_G))
    return StableDiffusionXLPipeline(vae=None, text_encoder=text, text_encoder_2=text_2, tokenizer=dummy_tokenizer(),
                                     tokenizer_2=dummy_tokenizer(pad_token="!"), unet=unet, scheduler=None,
                                     add_watermarker=False)


def test_sdxl_full_size_sites_on_meta():
    model = interp.load(sdxl_meta_pipeline())
    cross = model.sites("cross-attn")
    assert len(cross) == 70
    assert [s.block for s in cross] == ["down"] * 24 + ["mid"] * 10 + ["up"] * 36
    assert cross[24].name == "mid-cross-attn.0" and model.site("cross-attn-24") is cross[24]
    assert cross[45].path == "up_blocks.0.attentions.1.transformer_blocks.1.attn2"  # LoCoGen's SDXL style layer
    assert len(model.sites("text-hidden", component="text_encoder")) == 12
    assert len(model.sites("text-hidden", component="text_encoder_2")) == 32
    assert model.site("text2-self-attn-31").path == "text_model.encoder.layers.31.self_attn"


def test_sdxl_no_operations_reproduce_the_pipeline_and_restore_everything():
    check_family(dummy_sdxl_pipeline(), ["text-embed", "text2-embed"], ["cross-attn-4"], guidance_scale=5.0)
