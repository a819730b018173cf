"""FLUX adapter: full-size site layout on the meta device, exactness of a reduced model (Swap included),
the double-stream blocks' two streams, the single-stream blocks' sequence split back into text and
image positions, and guidance as an embedded input (no CFG rows). Every recipe on the reduced model:
tests/test_family_recipes.py."""

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

import interp
from interp.errors import GraphValidationError
from interp.graph import Capture, Graph, Noise, Restore, Run
from interp.runner import run
from models.testing import dummy_flux_pipeline, dummy_t5_tokenizer, dummy_tokenizer
from tests.configs import FLUX_1_DEV_TRANSFORMER, SD15_TEXT, T5_V11_XXL
from tests.conftest import PROMPT
from tests.family_checks import check_family
from viz import dit_layout

RUN = dict(seed=1, steps=2, guidance_scale=3.5)


@pytest.fixture(scope="module")
def model() -> interp.Model:
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    return interp.load(dummy_flux_pipeline())


def test_flux_full_size_sites_on_meta():
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(FLUX_1_DEV_TRANSFORMER)
        clip = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))  # CLIP ViT-L/14's text tower
        t5 = T5EncoderModel(T5Config(**T5_V11_XXL))
    pipe = FluxPipeline(transformer=transformer, scheduler=None, vae=None, text_encoder=clip,
                        tokenizer=dummy_tokenizer(), text_encoder_2=t5, tokenizer_2=dummy_t5_tokenizer())
    model = interp.load(pipe)
    assert model.adapter.family == "flux" and model.adapter.token_length(pipe, 1) == 512
    assert [len(model.sites("text-hidden", component=c)) for c in model.adapter.text_encoders] == [12, 24]
    assert model.site("text-mlp-11").path == "encoder.layers.11.mlp"
    assert model.site("text2-mlp-23").path == "encoder.block.23.layer.1.DenseReluDense"
    cross = model.sites("cross-attn")  # the double-stream blocks' joint attentions
    assert len(cross) == 19 and model.site("cross-attn-18") is model.site("block-18-attn")
    assert cross[0].kv_paths == ("transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.add_v_proj")
    names = [s.name for s in model.sites(component="transformer")]
    per_double = ["block-0-attn", "block-0-text-attn", "block-0-ff", "block-0-text-ff", "block-0", "block-0-text"]
    assert names[:6] == per_double
    assert names[6 * 18 : 6 * 19 + 4] == [n.replace("-0", "-18") for n in per_double] + [
        "single-0-mlp", "single-0-attn", "single-0", "single-0-text"]
    assert names[-4:] == ["single-37-mlp", "single-37-attn", "single-37", "single-37-text"]
    assert len(names) == 6 * 19 + 4 * 38
    double = [n for n in names if n.startswith("block-") and n.count("-") == 1]
    single = [n for n in names if n.startswith("single-") and n.count("-") == 1]
    assert len(double) == 19 and len(single) == 38
    image, text = model.site("single-7"), model.site("single-7-text")
    assert image.path == text.path == "single_transformer_blocks.7" and (image.element, text.element) == (1, 0)
    assert (image.block, text.block, model.site("single-7-attn").block) == ("image", "text", "joint")
    assert (model.site("block-3-attn").element, model.site("block-3-text-attn").element) == (0, 1)
    assert model.default_size() == (1024, 1024)
    assert model.adapter.context_offsets(pipe) == {1: 0} and not model.adapter.cfg(3.5)


def test_flux_no_operations_reproduce_the_pipeline_and_restore_everything():
    torch.set_num_threads(1)
    # CLIP's subject positions: the noise reaches FLUX through CLIP's pooled output
    check_family(dummy_flux_pipeline(), ["text-embed"], swap=["cross-attn-0"], guidance_scale=3.5)


def test_flux_streams_and_the_single_blocks_split(model):
    """Captures have one denoiser row per run (no CFG rows) and the documented shapes; the single
    block's text and image sites are its output's two parts, as a torch hook sees them; restoring the
    last single block's image positions undoes a T5 corruption, its text positions feed nothing."""
    recorded = []
    block = model.denoiser.single_transformer_blocks[0]
    handle = block.register_forward_hook(lambda _m, _a, out: recorded.append(torch.cat(out, 1).clone()))
    span = model.locate(PROMPT, "van gogh", 1)
    noise = Noise("text2-embed", tokens=span.positions, std=3.0)
    keys = ("block-0", "block-0-text", "block-0-text-attn", "single-0-mlp", "single-0-attn", "single-0",
            "single-0-text")
    last = f"single-{len(model.denoiser.single_transformer_blocks) - 1}"
    graph = Graph([Run("clean", PROMPT, ops=[Capture(k) for k in keys], **RUN),
                   Run("corrupted", PROMPT, ops=[noise], **RUN),
                   Run("image restored", PROMPT, ops=[noise, Restore(last, source="clean")], **RUN),
                   Run("text restored", PROMPT, ops=[noise, Restore(f"{last}-text", source="clean")], **RUN)])
    try:
        result = run(model, graph, progress=False)
    finally:
        handle.remove()
    captured = result.captures["clean"]
    text, image, width = 512, (8 // 2) ** 2, model.denoiser.inner_dim
    assert captured["block-0"].shape == (2, 1, image, width)  # steps, one row, image tokens, width
    assert captured["block-0-text"].shape == captured["block-0-text-attn"].shape == (2, 1, text, width)
    assert captured["single-0-attn"].shape == (2, 1, text + image, width)
    assert captured["single-0-mlp"].shape == (2, 1, text + image, block.mlp_hidden_dim)
    assert captured["single-0-text"].shape == (2, 1, text, width) and captured["single-0"].shape == (2, 1, image, width)
    joint = torch.cat([captured["single-0-text"], captured["single-0"]], dim=2)
    assert torch.equal(joint[:, 0], torch.stack([step[0] for step in recorded]))  # the batch's first row: clean
    images = result.images
    assert (images["corrupted"] - images["clean"]).abs().max() > 1e-4  # 2 of 528 tokens, random weights
    assert (images["image restored"] - images["clean"]).abs().max() <= 1e-5
    assert torch.equal(images["text restored"], images["corrupted"])


def test_flux_guidance_is_an_embedded_input_not_cfg_rows(model):
    """Guidance changes the image through the embedding (one row per run); a CFG branch is refused."""
    graph = Graph([Run("3.5", PROMPT, **RUN), Run("1", PROMPT, **{**RUN, "guidance_scale": 1.0})])
    images = run(model, graph, progress=False).images
    assert (images["3.5"] - images["1"]).abs().max() > 1e-4
    bad = Graph([Run("r", PROMPT, ops=[Capture("block-0", branch="cond")], **RUN)])
    with pytest.raises(GraphValidationError, match="classifier-free guidance"):
        run(model, bad, progress=False)


def test_flux_text_positions_follow_each_encoders_tokenizer(model):
    assert [model.tokenizer_index(s) for s in ("text-mlp-0", "text2-embed", "text2-hidden-1")] == [0, 1, 1]
    assert model.locate(PROMPT, "van gogh", 0).positions == (8, 9)  # CLIP has a BOS, T5 none
    assert model.locate(PROMPT, "van gogh", 1).positions == (7, 8)


def test_flux_site_map_puts_single_blocks_after_double_blocks(model):
    names = [s.name for s in model.sites(component="transformer")]
    rows, cells = dit_layout(names)
    assert rows == ("attn", "ff", "block", "mlp", "text-attn", "text-ff", "text")
    assert len(cells) == len(names)
    where = {cell.name: (rows[cell.row], cell.column, cell.block) for cell in cells}
    assert where["block-1-text-ff"] == ("text-ff", 1, "1")
    assert where["single-0-mlp"] == ("mlp", 2, "s0") and where["single-1-text"] == ("text", 3, "s1")
    assert where["single-1"] == ("block", 3, "s1")
