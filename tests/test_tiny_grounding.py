"""The tiny UNet's grounding term: the kept probabilities are the ones the layer used, the UNet's own
processors come back, and the token loss is zero exactly when a word's attention sits in its mask;
the grounded UNet is a variant of the bundled model that swaps only the UNet, built by its own stage."""

from __future__ import annotations

import shutil

import torch
from diffusers import UNet2DConditionModel
from typer.testing import CliRunner

import interp
from interp.cli import app
from models.tiny import GROUNDED_UNET_DIR, ROOT, load_pipeline
from models.tiny.train import run_stages
from models.tiny.grounding import Grounds, grounding_loss, kept_cross_attention
from models.tiny.pairs import Pair, pair_caption
from models.tiny.scenes import Scene, caption
from models.tiny.unet import LATENT_SIZE, build_unet, latent_masks, object_words
from tests.conftest import tiny_built


def test_kept_probabilities_change_nothing_and_the_processors_come_back() -> None:
    torch.manual_seed(0)
    unet = build_unet().eval()
    before = dict(unet.attn_processors)
    sample, t, text = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE), torch.tensor([10, 500]), torch.randn(2, 16, 64)
    with torch.no_grad():
        plain = unet(sample, t, text).sample
        with kept_cross_attention(unet) as probs:
            kept = unet(sample, t, text).sample
    assert (kept - plain).abs().max() < 1e-5
    assert dict(unet.attn_processors) == before
    assert len(probs) == 7  # one call of each cross-attention layer
    assert probs[0].shape == (2, 2, LATENT_SIZE**2, 16)  # (batch, heads, h*w, tokens)
    assert torch.allclose(probs[0].sum(-1), torch.ones(()))


def test_grounding_loss_is_zero_on_the_mask_and_grows_outside() -> None:
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :4] = 1.0
    inside = torch.zeros(1, 1, 64, 3)
    inside[0, 0, :, 0] = 1.0  # every query on token 0 ...
    inside[0, 0, :, 1] = mask.flatten()  # ... and token 1 only from inside the mask, with all its attention
    grounds, spread = Grounds(torch.tensor([0]), torch.tensor([1]), mask), Grounds(torch.tensor([0]), torch.tensor([0]), mask)
    assert grounding_loss([inside], grounds) < 1e-5
    assert grounding_loss([inside], spread, pixel=0.0) == (1 - 16 / 64) ** 2  # the token loss alone
    pixel = grounding_loss([inside], spread, pixel=1.0) - grounding_loss([inside], spread, pixel=0.0)
    assert torch.isclose(pixel, -torch.log(torch.tensor(1e-6)) * 48 / 64, rtol=1e-3)  # BCE off the mask
    coarse = inside.view(1, 1, 8, 8, 3)[:, :, ::2, ::2].reshape(1, 1, 16, 3)  # a 4x4 layer: the mask is pooled
    assert grounding_loss([coarse], grounds) < 1e-5
    assert grounding_loss([inside], Grounds(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                                            mask[:0])) == 0


def test_object_words_and_masks_line_up_with_captions() -> None:
    scene, pair = Scene("star", "blue", "plain", 2, 3), Pair("circle", "red", "house", "green", 4)
    assert object_words(scene) == ("stars",) and "stars" in caption(scene).split()
    assert object_words(pair) == ("circle", "house") and all(w in pair_caption(pair).split() for w in object_words(pair))
    masks = latent_masks([scene, pair])
    assert masks.shape == (2, 2, LATENT_SIZE, LATENT_SIZE)
    assert masks[0, 0].sum() > 0 and masks[0, 1].sum() == 0 and (masks[1].sum((1, 2)) > 0).all()


@tiny_built
def test_the_grounded_variant_swaps_only_the_unet() -> None:
    plain, grounded = interp.load("tiny"), interp.load("tiny-grounded", torch_dtype=torch.float64)
    assert grounded.denoiser.dtype == torch.float64
    assert torch.equal(plain.pipe.text_encoder.get_input_embeddings().weight.double(),
                       grounded.pipe.text_encoder.get_input_embeddings().weight)
    weights = [(p.double(), q) for p, q in zip(plain.denoiser.parameters(), grounded.denoiser.parameters())]
    assert all(p.shape == q.shape for p, q in weights) and not all(torch.equal(p, q) for p, q in weights)


def test_a_missing_grounded_unet_names_the_stage_that_builds_it(tmp_path, monkeypatch) -> None:
    import models.tiny

    monkeypatch.setattr(models.tiny, "GROUNDED_UNET_DIR", tmp_path / "grounded_unet")
    result = CliRunner().invoke(app, ["sites", "--model", "tiny-grounded"])
    assert result.exit_code == 2
    assert "grounded_unet is missing" in result.output and "--stages grounded_unet" in result.output


@tiny_built
def test_the_grounded_stage_writes_its_unet_beside_the_pipeline(tmp_path) -> None:
    shutil.copytree(ROOT, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(GROUNDED_UNET_DIR.name))
    before = (tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    run_stages(("grounded_unet",), scale=0.0005, out=tmp_path, threads=1, pairs=2, grounding=0.3)
    assert (tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    unet = load_pipeline(root=tmp_path, grounded=True).unet
    assert torch.equal(unet.conv_in.weight, UNet2DConditionModel.from_pretrained(str(tmp_path / GROUNDED_UNET_DIR.name)).conv_in.weight)
