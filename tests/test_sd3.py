"""SD3 adapter: full-size site layout on the meta device, exactness of a reduced model (Swap included)."""

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

import interp
from interp.graph import Capture, Graph, Noise, Restore, Run
from interp.runner import run
from interventions.causal_trace import ROLES, corruption, make_units, trace_text_encoder
from models.testing import dummy_sd3_pipeline, dummy_t5_tokenizer, dummy_tokenizer
from tests.configs import SD3_MEDIUM_TRANSFORMER, SD15_TEXT, SDXL_TEXT_G, T5_V11_XXL
from tests.conftest import PROMPT
from tests.family_checks import check_family
from tests.random_clip import random_clip_scorer

RUN = dict(seed=1, steps=2, guidance_scale=5.0)


def test_sd3_full_size_sites_on_meta():
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(SD3_MEDIUM_TRANSFORMER)
        text = CLIPTextModelWithProjection(CLIPTextConfig(**SD15_TEXT))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_G))
        text_3 = T5EncoderModel(T5Config(**T5_V11_XXL))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=None, vae=None, text_encoder=text,
                                    tokenizer=dummy_tokenizer(), text_encoder_2=text_2,
                                    tokenizer_2=dummy_tokenizer(pad_token="!"), text_encoder_3=text_3,
                                    tokenizer_3=dummy_t5_tokenizer())
    model = interp.load(pipe)
    assert model.adapter.family == "sd3" and model.adapter.token_length(pipe, 2) == 256
    assert [len(model.sites("text-hidden", component=c)) for c in model.adapter.text_encoders] == [12, 32, 24]
    assert model.site("text3-mlp-23").path == "encoder.block.23.layer.1.DenseReluDense"
    cross = model.sites("cross-attn")
    assert len(cross) == 24 and model.site("cross-attn-23") is model.site("block-23-attn")
    assert cross[0].kv_paths == ("transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.add_v_proj")
    names = [s.name for s in model.sites(component="transformer")]
    assert names[:6] == ["block-0-attn", "block-0-ff", "block-0-text-ff", "block-0", "block-0-text", "block-1-attn"]
    assert names[-3:] == ["block-23-attn", "block-23-ff", "block-23"]  # the last block updates no text stream
    assert len(names) == 5 * 23 + 3
    image, text = model.site("block-5"), model.site("block-5-text")
    assert image.path == text.path == "transformer_blocks.5" and (image.element, text.element) == (1, 0)
    assert (image.block, text.block) == ("image", "text")
    assert model.default_size() == (1024, 1024)


def test_sd3_no_operations_reproduce_the_pipeline_and_restore_everything():
    torch.set_num_threads(1)
    pipe = dummy_sd3_pipeline()
    check_family(pipe, ["text-embed", "text2-embed"], swap=["cross-attn-0"], guidance_scale=5.0)


def test_sd3_block_sites_address_the_image_and_text_streams():
    torch.set_num_threads(1)
    pipe = dummy_sd3_pipeline()
    model = interp.load(pipe)
    noise = Noise("text3-embed", std=3.0)
    graph = Graph([Run("clean", PROMPT, ops=[Capture("block-0"), Capture("block-0-text")], **RUN),
                   Run("corrupted", PROMPT, ops=[noise], **RUN),
                   Run("restored", PROMPT, ops=[noise, Restore("block-1", source="clean")], **RUN)])
    result = run(model, graph, progress=False)
    image, text = result.captures["clean"]["block-0"], result.captures["clean"]["block-0-text"]
    assert image.shape[:3] == (2, 2, (8 // 2) ** 2)  # steps, CFG rows, 8x8 latent patches of 2
    assert text.shape[:3] == (2, 2, model.adapter.token_length(pipe, 0) + model.adapter.token_length(pipe, 2))
    images = result.images
    assert (images["corrupted"] - images["clean"]).abs().max() > 1e-3
    # the last block's image stream is all the output depends on besides the pooled (CLIP) embedding
    assert (images["restored"] - images["clean"]).abs().max() <= 1e-5


def test_sd3_text_positions_follow_each_encoders_tokenizer():
    torch.set_num_threads(1)
    model = interp.load(dummy_sd3_pipeline())
    unit = make_units(model, PROMPT, "van gogh", (0,))[0]
    clip, t5 = unit.spans[0], unit.spans[2]
    assert [model.tokenizer_index(s) for s in ("text-mlp-0", "text2-embed", "text3-hidden-1", "block-0")] == [0, 1, 2, 0]
    assert clip.positions == (8, 9) and t5.positions == (7, 8)  # CLIP has a BOS, T5 none
    assert [unit.token_lists[2][p] for p in t5.positions] == ["\u2581van", "\u2581gogh"]
    embeds = [s.name for s in model.sites("text-embed")]
    noise = corruption(model, unit, {name: 1.0 for name in embeds}, seed=0)
    restore = [Restore(op.site, tokens=op.tokens) for op in noise]
    graph = Graph([Run("clean", PROMPT, ops=[Capture(name) for name in embeds], **RUN),
                   Run("corrupted", PROMPT, ops=[*noise, *(Capture(name) for name in embeds)], **RUN),
                   Run("restored", PROMPT, ops=[*noise, *restore], **RUN),
                   Run("clip positions", PROMPT, ops=[*noise, *restore[:2], Restore("text3-embed", tokens=clip.positions)],
                       **RUN)])
    result = run(model, graph, progress=False)
    for name, span in zip(embeds, unit.spans):
        changed = (result.captures["corrupted"][name] != result.captures["clean"][name]).any(-1)[0, 0]
        assert tuple(changed.nonzero().flatten().tolist()) == span.positions
    images = result.images
    assert (images["restored"] - images["clean"]).abs().max() <= 1e-5
    assert (images["clip positions"] - images["clean"]).abs().max() > 1e-4


def test_sd3_text_trace_restores_each_encoder_at_its_own_positions(tmp_path):
    torch.set_num_threads(1)
    model = interp.load(dummy_sd3_pipeline())
    result = trace_text_encoder(model, PROMPT, "van gogh", kinds=("text-embed",), scorer=random_clip_scorer(tmp_path),
                                steps=1, guidance_scale=5.0, progress=False)
    assert result.coords["token"] == list(ROLES)  # CLIP and T5 split the prompt differently: token roles

    def runs(site: str, role: str) -> int:
        return sum(name.startswith(f"u0/n0/{site}/{role}/") for name in result.images)

    # before the subject: BOS and 7 words in CLIP's sequence, the 7 words alone in T5's
    assert [runs(site, "before subject") for site in ("text-embed", "text2-embed", "text3-embed")] == [8, 8, 7]
    assert [runs("text3-embed", role) for role in ("first subject", "last subject", "last")] == [1, 1, 1]
