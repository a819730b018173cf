"""PixArt-alpha adapter: full-size site layout on the meta device, exactness of a reduced model."""

import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
from transformers import T5Config, T5EncoderModel

import interp
from models.testing import dummy_pixart_pipeline, dummy_t5_tokenizer
from tests.configs import PIXART_XL_2_1024, T5_V11_XXL
from tests.family_checks import check_family


def test_pixart_full_size_sites_on_meta():
    with torch.device("meta"):
        transformer = PixArtTransformer2DModel.from_config(PIXART_XL_2_1024)
        text = T5EncoderModel(T5Config(**T5_V11_XXL))
    pipe = PixArtAlphaPipeline(tokenizer=dummy_t5_tokenizer(), text_encoder=text, vae=None, transformer=transformer,
                               scheduler=None)
    model = interp.load(pipe)
    assert model.adapter.family == "pixart" and model.max_length == 120
    assert len(model.sites("text-hidden")) == 24
    cross = model.sites("cross-attn")
    assert len(cross) == 28 and model.site("cross-attn-27") is model.site("block-27-cross-attn")
    assert cross[5].path == "transformer_blocks.5.attn2"
    assert cross[5].kv_paths == ("transformer_blocks.5.attn2.to_k", "transformer_blocks.5.attn2.to_v")
    names = [s.name for s in model.sites(component="transformer")]
    assert names[:5] == ["block-0-self-attn", "block-0-cross-attn", "block-0-ff", "block-0", "block-1-self-attn"]
    assert len(names) == 4 * 28
    assert model.default_size() == (1024, 1024)


def test_pixart_no_operations_reproduce_the_pipeline_and_restore_everything():
    torch.set_num_threads(1)
    check_family(dummy_pixart_pipeline(), ["text-embed"], ["cross-attn-0", "cross-attn-1"], guidance_scale=4.5,
                 plain_kwargs=dict(use_resolution_binning=False))
