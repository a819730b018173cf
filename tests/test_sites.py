"""Sites: names, forward order, kinds, aliases, raw paths, and lookup errors."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

import interp
from interp.errors import SubjectNotFoundError, TokenRangeError, UnknownSiteError
from models.testing import dummy_sd_pipeline
from models.vocab import build_clip_tokenizer
from tests.configs import SD15_TEXT, SD15_UNET, SD21_TEXT, SD21_UNET
from tests.conftest import PROMPT


def meta_pipeline(unet_config: dict, text_config: dict, pad_token: str = "<|endoftext|>") -> StableDiffusionPipeline:
    """A full-size SD pipeline with no weights (meta device): enough to name and order sites."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        text = CLIPTextModel(CLIPTextConfig(**text_config))
    tokenizer = build_clip_tokenizer(["a", "photo"], pad_token=pad_token)
    return StableDiffusionPipeline(vae=None, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_sd15_full_size_sites_in_forward_order():
    model = interp.load(meta_pipeline(SD15_UNET, SD15_TEXT))
    cross = model.sites("cross-attn")
    assert len(cross) == 16
    assert [s.block for s in cross] == ["down"] * 6 + ["mid"] + ["up"] * 9
    assert cross[6].name == "mid-cross-attn" and model.site("cross-attn-6") is cross[6]
    assert cross[8].path == "up_blocks.1.attentions.1.transformer_blocks.0.attn2"  # LoCoGen's style layer
    assert len(model.sites("text-self-attn")) == len(model.sites("text-mlp")) == 12
    orders = [s.order for s in model.sites(component="unet")]
    assert orders == sorted(orders)
    names = [s.name for s in model.sites()]
    assert names.index("down-1-resnet-1") < names.index("mid-resnet-0") < names.index("up-1-ff-2")
    assert {"down-0-self-attn-1", "mid-cross-attn", "up-1-ff-2", "text-self-attn-0", "text-mlp-11",
            "text-embed"} <= set(names)


def test_sd21_full_size_text_encoder_has_23_layers():
    model = interp.load(meta_pipeline(SD21_UNET, SD21_TEXT, pad_token="!"))
    assert len(model.sites("text-hidden")) == 23
    assert len(model.sites("cross-attn")) == 16
    assert model.tokenizer.pad_token_id == 0  # SD2 pads with id 0, read from the tokenizer


def test_unknown_site_names_closest(model):
    with pytest.raises(UnknownSiteError) as info:
        model.site("mid-crossattn")
    assert "mid-cross-attn" in str(info.value)
    with pytest.raises(UnknownSiteError, match="kinds"):
        model.sites(kind="convolution")


def test_raw_module_paths_and_aliases(model):
    assert model.site("unet.mid_block.attentions.0.transformer_blocks.0.attn2").name == "mid-cross-attn"
    assert model.site("mid_block.attentions.0.transformer_blocks.0.attn2").name == "mid-cross-attn"
    raw = model.site("unet.mid_block.attentions.0")
    assert raw.kind == "module" and raw.path == "mid_block.attentions.0"
    assert model.site("encoder.layers.1.mlp").name == "text-mlp-1"


def test_subject_location_uses_the_tokenizer(model):
    span = model.locate(PROMPT, "van gogh")
    tokens = model.tokens(PROMPT)
    assert [tokens[p] for p in span.positions] == ["van</w>", "gogh</w>"]
    assert span.last == span.positions[-1] == tokens.index("gogh</w>")


def test_subject_not_in_prompt_shows_tokens(model):
    with pytest.raises(SubjectNotFoundError) as info:
        model.locate("a red circle", "monet")
    assert "'red</w>'" in str(info.value) and "monet" in str(info.value)


def test_positions_out_of_range(model):
    with pytest.raises(TokenRangeError, match="out of range"):
        model.check_positions([3, 99])


def test_sd2_padding_is_read_from_the_tokenizer():
    model = interp.load(dummy_sd_pipeline(pad_token="!"))
    ids = model.token_ids(["a photo"])[0].tolist()
    assert model.tokenizer.pad_token_id == 0 and ids[-1] == 0
    assert ids[3] == model.tokenizer.eos_token_id != 0
