"""Scorers: anything `(images, texts) -> (N,) tensor` scores a recipe's images (the `Scorer`
protocol). CLIP-score, the papers' score, ships here: cosine similarity of CLIP image and text
embeddings, for any transformers CLIP. The bundled tiny model brings a ground-truth scorer of its
own (`models.tiny.scoring.JudgeScore`).

Images are preprocessed here (resize the short side, center-crop, normalise) rather than through
transformers' image processors, whose fast variants need torchvision; text goes through the CLIP's
own tokenizer. PIL images, HWC numpy arrays and CHW tensors (floats in [0, 1], or uint8) all take
the same path, so they score identically.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from transformers import AutoTokenizer, CLIPModel, PreTrainedTokenizerBase
from transformers.utils import cached_file

from interp.errors import BundledModelMissingError, ScoringInputError
from interp.progress import loading

# OpenAI CLIP's normalisation, used when a checkpoint ships no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Images = Union[Tensor, np.ndarray, Image.Image, Sequence[Union[Image.Image, np.ndarray, Tensor]]]


def _bundled_clip_dir() -> str:
    """The bundled tiny model's CLIP folder, imported lazily so scoring works without it."""
    try:
        from models import tiny
    except ModuleNotFoundError as exc:
        if exc.name not in ("models", "models.tiny"):
            raise
        raise BundledModelMissingError(
            "the bundled tiny model (models.tiny) is not available, so there is no default CLIP; "
            "pass a CLIP hub id or folder, e.g. CLIPScore.from_pretrained('openai/clip-vit-large-patch14')"
        ) from None
    if not hasattr(tiny, "clip_dir"):
        raise BundledModelMissingError(
            "models.tiny has no clip_dir(); pass a CLIP hub id or folder to CLIPScore.from_pretrained"
        )
    folder = Path(tiny.clip_dir())
    if not folder.is_dir():
        raise BundledModelMissingError(
            f"the bundled tiny CLIP is not built yet ({folder} is missing); build it with "
            f"`python -m models.tiny.train`, or pass a CLIP hub id or folder"
        )
    return str(folder)


def _normalisation(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's image mean and std from its preprocessor_config.json, else CLIP's own."""
    config_file = cached_file(path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if config_file is None:
        return CLIP_MEAN, CLIP_STD
    config = json.loads(Path(config_file).read_text())
    return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))


def _chunks(images: Images) -> list[Tensor]:
    """Any accepted image input as a list of (N, 3, H, W) tensors, one per same-sized group."""
    if isinstance(images, Tensor):
        return [images[None] if images.ndim == 3 else images]
    if isinstance(images, Image.Image):
        images = np.asarray(images.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise ScoringInputError(f"numpy images must be (H, W, 3) or (N, H, W, 3), got {images.shape}")
        batch = images[None] if images.ndim == 3 else images
        return [torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)]
    return [chunk for item in images for chunk in _chunks(item)]


def _as_batch(images: Images) -> list[Tensor]:
    """`_chunks` with uint8 scaled to [0, 1], checked: RGB, floating point, in [0, 1], not empty."""
    chunks = [chunk.float() / 255 if chunk.dtype == torch.uint8 else chunk for chunk in _chunks(images)]
    if not chunks or sum(len(chunk) for chunk in chunks) == 0:
        raise ScoringInputError("got no images; pass at least one")
    for chunk in chunks:
        if chunk.ndim != 4 or chunk.shape[1] != 3:
            raise ScoringInputError(
                f"images must be (N, 3, H, W) RGB tensors, got shape {tuple(chunk.shape)}"
            )
        if not chunk.is_floating_point():
            raise ScoringInputError(
                f"image tensors must be floats in [0, 1] or uint8, got {chunk.dtype}; convert with x.float() / x.max()"
            )
        low, high = chunk.min().item(), chunk.max().item()
        if low < 0 or high > 1:
            raise ScoringInputError(
                f"image values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
                f"map [-1, 1] images with (x + 1) / 2"
            )
    return chunks


@runtime_checkable
class Scorer(Protocol):
    """Scores image i against text i (its prompt or an attribute's text); higher is more faithful.

    `name` says in results and reports which score was used (e.g. "clip-score", "judge P(style)").
    """

    name: str

    def __call__(self, images: Images, texts: Sequence[str]) -> Tensor: ...


class CLIPScore:
    """Cosine similarity between CLIP embeddings of images and texts, batched, without gradients."""

    name = "clip-score"

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise ScoringInputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = model.config.vision_config.image_size
        self.max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> CLIPScore:
        """Load a CLIP model and tokenizer from a hub id or folder; `None` is the bundled tiny CLIP."""
        path = _bundled_clip_dir() if path is None else str(path)
        with loading(path):  # no loading bars for a local folder
            model = CLIPModel.from_pretrained(path).to(device=device, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        mean, std = _normalisation(path)
        return cls(model, tokenizer, mean, std, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _preprocess(self, images: Tensor) -> Tensor:
        """Resize the short side to the CLIP's image size (bicubic), center-crop, normalise."""
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        images = images[..., top : top + self.image_size, left : left + self.image_size].clamp(0, 1)
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def embed_images(self, images: Images) -> Tensor:
        """Unit-norm image embeddings, (N, D) float32 on CPU."""
        return self._embed_chunks(_as_batch(images))

    def _pixel_batches(self, chunks: list[Tensor]) -> Iterator[Tensor]:
        """Preprocessed pixels in batches of `batch_size`, holding one batch's worth at a time."""
        buffer: list[Tensor] = []
        size = 0
        for chunk in chunks:
            for piece in chunk.split(self.batch_size):
                buffer.append(self._preprocess(piece.to(self.device, torch.float32)))
                size += len(piece)
                if size >= self.batch_size:
                    joined = torch.cat(buffer)
                    yield joined[: self.batch_size]
                    buffer, size = [joined[self.batch_size :]], size - self.batch_size
        if size:
            yield torch.cat(buffer)

    @torch.no_grad()
    def _embed_chunks(self, chunks: list[Tensor]) -> Tensor:
        parts = [
            _features(self.model.get_image_features(pixel_values=batch.to(self.model.dtype)))
            for batch in self._pixel_batches(chunks)
        ]
        return F.normalize(torch.cat(parts).float().cpu(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings, (N, D) float32 on CPU."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ScoringInputError("got no texts; pass at least one")
        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            parts.append(
                _features(
                    self.model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                )
            )
        return F.normalize(torch.cat(parts).float().cpu(), dim=-1)

    def __call__(self, images: Images, texts: Sequence[str]) -> Tensor:
        """Cosine similarity of image i with text i, shape (N,)."""
        chunks = _as_batch(images)
        texts = [texts] if isinstance(texts, str) else texts
        count = sum(len(chunk) for chunk in chunks)
        if count != len(texts):
            raise ScoringInputError(
                f"got {count} images but {len(texts)} texts; pair them one to one, "
                f"or use CLIPScore.matrix for all pairs"
            )
        return (self._embed_chunks(chunks) * self.embed_texts(texts)).sum(-1)

    def matrix(self, images: Images, texts: Sequence[str]) -> Tensor:
        """Cosine similarity of every image with every text, shape (N_images, N_texts)."""
        return self.embed_images(images) @ self.embed_texts(texts).T


def _features(output: Tensor | object) -> Tensor:
    """The projected embedding from `get_*_features`, which returns a tensor before transformers 5."""
    return output if isinstance(output, Tensor) else output.pooler_output
