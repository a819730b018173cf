"""DeepFloyd IF stage I adapter: full-size site layout on the meta device, exactness of a reduced model."""

import pytest
import torch
from diffusers import IFPipeline, UNet2DConditionModel
from transformers import T5Config, T5EncoderModel

import interp
from interp.errors import UnsupportedModelError
from models.testing import dummy_if_pipeline, dummy_t5_tokenizer
from tests.configs import IF_I_XL_UNET, T5_V11_XXL
from tests.conftest import PROMPT
from tests.family_checks import check_family


def test_if_full_size_sites_on_meta():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(IF_I_XL_UNET)
        text = T5EncoderModel(T5Config(**T5_V11_XXL))
    pipe = IFPipeline(tokenizer=dummy_t5_tokenizer(), text_encoder=text, unet=unet, scheduler=None,
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    model = interp.load(pipe)
    assert model.adapter.family == "deepfloyd" and model.max_length == 77
    for kind in ("text-self-attn", "text-mlp", "text-hidden"):
        assert len(model.sites(kind)) == 24
    assert model.site("text-self-attn-23").path == "encoder.block.23.layer.0.SelfAttention"
    assert model.site("text-mlp-0").path == "encoder.block.0.layer.1.DenseReluDense"
    cross = model.sites("cross-attn")
    assert len(cross) == 22
    assert [s.block for s in cross] == ["down"] * 9 + ["mid"] + ["up"] * 12
    assert cross[9].name == "mid-cross-attn" and model.site("cross-attn-9") is cross[9]
    assert cross[0].name == "down-1-cross-attn-0" and cross[21].name == "up-2-cross-attn-3"
    assert cross[0].kv_paths == ("down_blocks.1.attentions.0.add_k_proj", "down_blocks.1.attentions.0.add_v_proj")
    assert len(model.sites("resnet")) == 4 * 3 + 2 + 4 * 4
    orders = [s.order for s in model.sites(component="unet")]
    assert orders == sorted(orders)
    assert model.default_size() == (64, 64)


def test_if_no_operations_reproduce_the_pipeline_and_restore_everything():
    torch.set_num_threads(1)
    pipe = dummy_if_pipeline()
    model = interp.load(pipe)
    assert model.tokens(PROMPT)[model.locate(PROMPT, "van gogh").last] == "\u2581gogh"
    check_family(pipe, ["text-embed"], ["cross-attn-2"], guidance_scale=5.0, alone_prompt=PROMPT.upper(),  # IF lowercases
                 to_unit=lambda image: (image / 2 + 0.5).clamp(0, 1))


def test_unsupported_pipeline_points_to_the_guide():
    class KandinskyPipeline:
        pass

    with pytest.raises(UnsupportedModelError, match="docs/adding_an_architecture.md") as info:
        interp.load(KandinskyPipeline())
    assert "IFPipeline" in str(info.value) and "PixArtAlphaPipeline" in str(info.value)
