"""PixArt-alpha adapter: full-size site layout on the meta device, exactness of a reduced model."""

import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel
from transformers import T5Config, T5EncoderModel

import interp
from interp.graph import Graph, Noise, Restore, Run, Swap
from interp.runner import run
from models.testing import dummy_pixart_pipeline, dummy_t5_tokenizer
from tests.configs import PIXART_XL_2_1024, T5_V11_XXL
from tests.conftest import PROMPT

RUN = dict(seed=1, steps=2, guidance_scale=4.5)


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
    pipe = dummy_pixart_pipeline()
    model = interp.load(pipe)
    span = model.locate(PROMPT, "van gogh")
    noise = [Noise("text-embed", tokens=span.positions, std=3.0)]
    alone = run(model, Graph([Run("clean", PROMPT, **RUN)]), progress=False).images
    graph = Graph([Run("clean", PROMPT, **RUN)])
    graph.add(Run("corrupted", PROMPT, ops=noise, **RUN))
    graph.add(Run("restored", PROMPT, ops=[*noise, *(Restore(s.name, source="clean") for s in model.sites())], **RUN))
    graph.add(Run("swapped", PROMPT, ops=[Swap(["cross-attn-0", "cross-attn-1"], "a painting")], **RUN))
    images = run(model, graph, progress=False).images
    with torch.no_grad():
        plain = pipe(PROMPT, num_inference_steps=2, guidance_scale=4.5, generator=torch.Generator().manual_seed(1),
                     output_type="pt", use_resolution_binning=False).images[0]
    assert torch.equal(alone["clean"], plain)
    clean = images["clean"]
    assert (images["corrupted"] - clean).abs().max() > 1e-3
    assert (images["restored"] - clean).abs().max() <= 1e-5
    assert (images["swapped"] - clean).abs().max() > 1e-4
