"""A quiet start: no library warnings about optional packages the project does not use.

- diffusers' pipeline modules import transformers' `CLIPImageProcessor` and `SiglipImageProcessor`
  (for safety checkers and IP-adapters). Since transformers 5 those names need torchvision;
  without it transformers falls back to the PIL classes, warning on every start. The project never
  runs these processors (its scorer preprocesses images itself, its pipelines have no safety
  checker), and torchvision would replace a CPU torch with a CUDA build, so the PIL classes are
  bound under those names here, as transformers' fallback does, before diffusers imports them.
- In a notebook without ipywidgets, importing `tqdm.auto` (transformers and diffusers do) advises
  installing it. Bars are off there by default (`interp.progress`) and fall back to text bars when
  asked for, so the advice is dropped.

Imported first by `interp` (and the tiny pipeline), before any of these libraries.
"""

from __future__ import annotations

import sys
import warnings

IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")  # the ones diffusers imports


def use_pil_image_processors() -> None:
    """Bind transformers' PIL image processors under their default names, where torchvision is absent."""
    import transformers.processing_utils  # noqa: F401  (importing it re-creates the `transformers` module)
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    transformers = sys.modules["transformers"]  # the module diffusers will import from
    for name in IMAGE_PROCESSORS:
        setattr(transformers, name, getattr(transformers, f"{name}Pil"))


def ignore_missing_ipywidgets() -> None:
    """Drop tqdm's advice to install ipywidgets, given once in a notebook on importing `tqdm.auto`."""
    from tqdm.std import TqdmWarning

    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)


ignore_missing_ipywidgets()
use_pil_image_processors()
