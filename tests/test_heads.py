"""Head and neuron sites: names, layout, every op at that granularity against torch hooks, validation."""

import pytest
import torch
import interp
from interp.errors import GraphValidationError, UnknownSiteError
from interp.graph import Add, Capture, Graph, Noise, Restore, Run, Scale, Set, Swap, Zero
from interp.runner import run
from interp.sites import head_names
from models.testing import dummy_flux_pipeline, dummy_sd_pipeline, dummy_sdxl_pipeline
from tests.configs import SD15_TEXT, SD15_UNET
from tests.conftest import PROMPT, STEPS
from tests.reference_hooks import first_call, generate, head_columns, module_hooks


FAMILIES = {"sd": (dummy_sd_pipeline, 7.5), "sdxl": (dummy_sdxl_pipeline, 5.0), "flux": (dummy_flux_pipeline, 3.5)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> tuple[interp.Model, float]:
    """A reduced random model of each family, with the guidance its pipeline test uses."""
    build, guidance = FAMILIES[request.param]
    return interp.load(build()), guidance


def corrupted(model, name: str, guidance: float, *ops) -> Run:
    span = model.locate(PROMPT, "van gogh")
    noise = [Noise(s.name, tokens=span.positions, std=3.0, seed=7) for s in model.sites("text-embed")]
    return Run(name, PROMPT, steps=STEPS, guidance_scale=guidance, ops=[*noise, *ops])


def test_meta_layout_knows_heads_and_widths():
    """Full-size SD1.5 and SDXL on the meta device: head counts, head widths and hidden units."""
    from tests.test_sdxl import sdxl_meta_pipeline
    from tests.test_sites import meta_pipeline

    sd = interp.load(meta_pipeline(SD15_UNET, SD15_TEXT))
    mid, down = sd.site("mid-cross-attn"), sd.site("down-0-cross-attn-0")
    assert (mid.heads, mid.head_dim, down.heads, down.head_dim) == (8, 160, 8, 40)
    assert sd.site("mid-ff").units == 4 * 1280 and sd.site("down-0-ff-0").units == 4 * 320
    assert (sd.site("text-self-attn-3").heads, sd.site("text-self-attn-3").head_dim) == (12, 64)
    assert sd.site("text-mlp-3").units == 3072
    assert sd.site("mid-cross-attn.head-7").columns == (7 * 160, 8 * 160)
    assert sd.site("up-1-ff-2.neuron").path == "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2"
    xl = interp.load(sdxl_meta_pipeline())
    cross = xl.sites("cross-attn")
    # SDXL's "attention_head_dim" [5, 10, 20] is really the head count; each head is 64 wide
    assert [(s.heads, s.head_dim) for s in (cross[0], cross[4], cross[24])] == [(10, 64), (20, 64), (20, 64)]
    assert xl.site("mid-ff.0").units == 4 * 1280 and xl.site("text2-mlp-31").units == 5120
    assert (xl.site("text2-self-attn-0").heads, xl.site("text2-self-attn-0").head_dim) == (20, 64)


def test_flux_full_size_layout_knows_heads_and_widths():
    """FLUX.1-dev's transformer on meta: 24 heads of 128 in both streams, 4 x 3072 units, and the
    single-stream blocks' heads and MLP units in their own outputs (no out projection of their own)."""
    from diffusers import FluxTransformer2DModel

    from interp.sites import forward_events, name_sites
    from models.flux import flux_meta_call, flux_patterns
    from tests.configs import FLUX_1_DEV_TRANSFORMER

    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(FLUX_1_DEV_TRANSFORMER)
    sites = {s.name: s for s in name_sites("transformer", transformer, flux_patterns(),
                                            forward_events(transformer, flux_meta_call))}
    image, text, single = sites["block-18-attn"], sites["block-18-text-attn"], sites["single-37-attn"]
    assert [(s.heads, s.head_dim, s.projection) for s in (image, text, single)] == [
        (24, 128, "to_out.0"), (24, 128, "to_add_out"), (24, 128, "")]
    assert sites["block-0-ff"].units == sites["block-0-text-ff"].units == sites["single-0-mlp"].units == 4 * 3072


def test_flux_single_stream_heads_and_neurons_match_torch_hooks():
    model = interp.load(dummy_flux_pipeline())
    block = model.denoiser.single_transformer_blocks[0]
    ops = [Zero("single-0-attn.head-1"), Scale("single-0-mlp.neuron", units=(3, 70), factor=-2.0)]
    ours = run(model, Graph([Run("x", PROMPT, steps=STEPS, guidance_scale=3.5, ops=ops)]), progress=False).images["x"]
    width = block.attn.to_q.out_features // block.attn.heads

    def zero(out):
        out[..., width : 2 * width] = 0

    def scale(out):
        out[..., [3, 70]] *= -2.0

    with module_hooks({block.attn: zero, block.act_mlp: scale}, io="output"):
        reference = generate(model, [PROMPT], [0], STEPS, 3.5)[0]
    assert (reference - generate(model, [PROMPT], [0], STEPS, 3.5)[0]).abs().max() > 1e-5
    assert (ours - reference).abs().max() <= 1e-6


def test_head_and_neuron_names_resolve_and_fail_clearly(model):
    head = model.site("cross-attn-1.head-3")  # an alias base gives the canonical name
    assert head.name == "mid-cross-attn.head-3" and head.kind == "head" and head.io == "input"
    assert head.path.endswith("attn2.to_out.0") and head.columns == (24, 32)
    assert model.site("mid-cross-attn.head-3.k").path.endswith("attn2.to_k")
    assert model.site("mid-cross-attn.head-3.v").path.endswith("attn2.to_v")
    assert model.site("text-self-attn-1.head-0").path == "encoder.layers.1.self_attn.out_proj"
    assert model.site("text-mlp-0.neuron").path == "encoder.layers.0.mlp.fc2"
    assert model.site("mid-ff.neuron").units == 256
    assert head_names(model.site("mid-cross-attn")) == [f"mid-cross-attn.head-{h}" for h in range(8)]
    with pytest.raises(UnknownSiteError, match=r"heads 0 \.\. 7; there is no head 8"):
        model.site("mid-cross-attn.head-8")
    with pytest.raises(UnknownSiteError, match="has no heads; attention sites do"):
        model.site("mid-resnet-0.head-0")
    with pytest.raises(UnknownSiteError, match="not a cross-attention site"):
        model.site("mid-self-attn.head-0.k")
    with pytest.raises(UnknownSiteError, match="has no neurons; feed-forward sites do"):
        model.site("mid-cross-attn.neuron")


def test_restoring_every_head_equals_restoring_the_layer(family):
    model, guidance = family
    layers = [s for s in model.sites() if s.heads and not s.is_text][:4]  # self- and cross-attention
    graph = Graph([Run("clean", PROMPT, steps=STEPS, guidance_scale=guidance), corrupted(model, "corrupted", guidance)])
    for layer in layers:
        graph.add(corrupted(model, layer.name, guidance, Restore(layer.name, source="clean")))
        graph.add(corrupted(model, f"{layer.name}/heads", guidance,
                            *[Restore(h, source="clean") for h in head_names(layer)]))
        graph.add(corrupted(model, f"{layer.name}/heads=", guidance,
                            Restore(layer.name, heads=tuple(range(layer.heads)), source="clean")))
    images = run(model, graph, progress=False).images
    for layer in layers:
        assert (images[layer.name] - images["corrupted"]).abs().max() > 1e-5, layer.name  # the restore matters
        assert (images[f"{layer.name}/heads"] - images[layer.name]).abs().max() <= 1e-6, layer.name
        assert (images[f"{layer.name}/heads="] - images[layer.name]).abs().max() <= 1e-6, layer.name


def test_zeroing_one_head_matches_a_torch_hook(family):
    model, guidance = family
    layer = model.sites("cross-attn")[1]
    graph = Graph([Run("a", PROMPT, steps=STEPS, guidance_scale=guidance, ops=[Zero(f"{layer.name}.head-1")]),
                   Run("b", PROMPT, steps=STEPS, guidance_scale=guidance, ops=[Zero(layer.name, heads=(1,))])])
    ours = run(model, graph, chunk_size=1, progress=False).images  # batched as the reference: one image
    attention = model.denoiser.get_submodule(layer.path)
    columns = head_columns(attention, 1)

    def zero(x):
        x[..., columns] = 0

    with module_hooks({attention.to_out[0]: zero}):
        reference = generate(model, [PROMPT], [0], STEPS, guidance)[0]
    plain = generate(model, [PROMPT], [0], STEPS, guidance)[0]
    assert (reference - plain).abs().max() > 1e-4  # the head matters
    assert (ours["a"] - reference).abs().max() <= 1e-6
    assert (ours["b"] - reference).abs().max() <= 1e-6


def test_neuron_and_head_ops_match_torch_hooks(model):
    """Scale, Add, Set, Noise on units, and a head's slice of the text encoder and of the keys."""
    ff = model.denoiser.get_submodule(model.site("mid-ff").path)
    attention = model.denoiser.get_submodule(model.site("mid-cross-attn").path)
    text_attention = model.text_encoders[0].get_submodule(model.site("text-self-attn-1").path)
    units, cols, text_cols = [3, 17, 200], head_columns(attention, 2), slice(8, 16)  # CLIP head 1 of 4 (width 8)
    steer = torch.linspace(-1, 1, 8)
    ops = [Scale("mid-ff.neuron", units=tuple(units), factor=3.0), Set("mid-ff.neuron", units=(5,), value=0.5),
           Add("mid-cross-attn.head-2.k", value=steer), Scale("text-self-attn-1.head-1", factor=0.0)]
    ours = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=ops)]), progress=False).images["x"]

    def neurons(x):
        x[..., units] *= 3.0
        x[..., 5] = 0.5

    def keys(k):
        k[..., cols] += steer

    @first_call  # the prompt's encoding, not the negative prompt's
    def text_head(x):
        x[..., text_cols] = 0

    with module_hooks({ff.net[2]: neurons, text_attention.out_proj: text_head}), \
            module_hooks({attention.to_k: keys}, io="output"):
        reference = generate(model, [PROMPT], [0], STEPS)[0]
    assert (ours - reference).abs().max() <= 1e-6


def test_head_swap_matches_a_torch_hook(model):
    """Swap of one head: its key and value slices read the target prompt's text (cond branch)."""
    layer = model.site("mid-cross-attn")
    attention = model.denoiser.get_submodule(layer.path)
    cols = head_columns(attention, 4)
    ours = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=[Swap("mid-cross-attn.head-4", "a painting")])]),
               progress=False).images["x"]
    with torch.no_grad():
        context = model.adapter.encode(model.pipe, [model.token_ids(["a painting"])])["prompt_embeds"]
        target = {name: getattr(attention, name)(context)[..., cols] for name in ("to_k", "to_v")}

    def swap(name):
        def edit(out):
            out[1:, :, cols] = target[name]  # rows [uncond, cond]
        return edit

    with module_hooks({attention.to_k: swap("to_k"), attention.to_v: swap("to_v")}, io="output"):
        reference = generate(model, [PROMPT], [0], STEPS)[0]
    assert (ours - reference).abs().max() <= 1e-6
    whole = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=[Swap("mid-cross-attn", "a painting")])]),
                progress=False).images["x"]
    heads = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=[Swap(tuple(head_names(layer)), "a painting")])]),
                progress=False).images["x"]
    assert (heads - whole).abs().max() <= 1e-6  # every head swapped = the layer swapped


def test_capture_and_restore_at_head_and_neuron_granularity(model):
    graph = Graph([Run("clean", PROMPT, steps=STEPS), corrupted(model, "x", 7.5,
                   Restore("text-self-attn-0.head-2", tokens=(1, 2), source="clean"),
                   Capture("mid-cross-attn.head-2.v", key="v"), Capture("mid-ff.neuron", units=(0, 9), key="n"),
                   Capture("text-self-attn-0.head-2", tokens=(1, 2), key="t"))])
    result = run(model, graph, progress=False)
    captures = result.captures["x"]
    assert captures["v"].shape == (STEPS, 2, model.max_length, 8)  # (steps, rows, text tokens, head width)
    assert captures["n"].shape == (STEPS, 2, 16, 2)  # (steps, rows, image tokens, units)
    assert captures["t"].shape == (1, 1, 2, 8)  # (calls, rows, tokens, head width)


@pytest.mark.parametrize("op, message", [
    (Set("mid-ff.neuron", units=(1, 2), value=torch.ones(3)),
     r"value of shape \(3,\) does not broadcast .*\(2, 16, 2\)"),
    (Add("down-0-resnet-0", value=torch.ones(32)), r"\(2, 32, 8, 8\) .* at 16x16 px"),
    (Add("mid-cross-attn", value=torch.ones(2, 5, 64)), r"\(2, 16, 64\)"),
    (Add("text-embed", tokens=(1, 2), value=torch.ones(3, 32)), r"\(1, 2, 32\)"),
    (Set("mid-ff", value=torch.tensor([1.0, float("inf")])), "value must be finite"),
    (Restore("mid-cross-attn", heads=(8,)), r"heads \[8\] out of range; this site has heads 0 \.\. 7"),
    (Zero("mid-ff.neuron", units=(256,)), r"units \[256\] out of range; this site has units 0 \.\. 255"),
    (Zero("mid-resnet-0", heads=(0,)), "heads= applies to attention sites"),
    (Zero("mid-ff", units=(0,)), "units= applies to neuron sites"),
    (Swap("mid-self-attn.head-0", "a painting"), "not a cross-attention site"),
])
def test_bad_op_values_fail_before_the_first_step(model, op, message):
    """The message names the run, the op and the site; the denoiser is never called."""
    calls = []
    handle = model.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))
    graph = Graph([Run("clean", PROMPT, steps=STEPS), Run("bad", PROMPT, steps=STEPS, ops=[op])])
    try:
        with pytest.raises(GraphValidationError, match=message) as info:
            run(model, graph, progress=False)
    finally:
        handle.remove()
    assert f"run 'bad', {type(op).__name__}" in str(info.value) and not calls


def test_broadcastable_values_pass_and_act(model):
    """Values that broadcast (a channel vector as (C, 1, 1), a feature vector, per-token rows) run."""
    ops = [Add("down-0-resnet-0", value=torch.ones(32, 1, 1)), Add("mid-cross-attn", value=torch.ones(64)),
           Add("mid-cross-attn.head-0.k", value=torch.ones(2, 5, 8)[:, :1]), Set("text-embed", tokens=(1, 2),
           value=torch.zeros(2, 32)), Add("mid-ff.neuron", units=(4,), value=torch.ones(1, 1))]
    images = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=ops), Run("y", PROMPT, steps=STEPS)]),
                 progress=False).images
    assert (images["x"] - images["y"]).abs().max() > 1e-4
