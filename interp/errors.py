"""The project's error types: each names the problem and the fix, so callers can catch precisely."""


class InterpError(Exception):
    """Base class of every error this project raises on purpose."""


class UnknownSiteError(InterpError, KeyError):
    """A site name that the model does not have; the message lists the closest real names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SubjectNotFoundError(InterpError, ValueError):
    """A subject string whose tokens do not occur in the prompt; the message shows the prompt's tokens."""


class TokenRangeError(InterpError, IndexError):
    """A token position outside the tokenizer's sequence length."""


class MissingRunError(InterpError, KeyError):
    """An operation that refers to a run the graph does not contain."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GraphValidationError(InterpError, ValueError):
    """An intervention graph that is inconsistent (bad step, branch, shape, or operation)."""


class UnsupportedModelError(InterpError, TypeError):
    """A pipeline for which no adapter is registered; the message says what an adapter needs."""


class EditInputError(InterpError, ValueError):
    """Bad input to the closed-form editor: lambda <= 0, disagreeing shapes, or non-finite values."""


class EditMismatchError(InterpError, ValueError):
    """An edit that does not fit the module it is applied to: a missing parameter, shape or dtype."""


class ScoringInputError(InterpError, ValueError):
    """Bad input to a scorer: image and text counts differ, or images have the wrong shape or range."""


class BundledModelMissingError(InterpError, ImportError):
    """The bundled tiny model (`models.tiny`) is not installed or not built yet."""


class EditStateError(InterpError, RuntimeError):
    """An edit applied twice to the same module, or reverted where it was never applied."""


class ResultFormatError(InterpError, ValueError):
    """A result grid whose scores disagree with its axes, or a folder that holds no saved result."""


class WindowSizeError(InterpError, ValueError):
    """A LoCoGen window of fewer than one layer or more layers than the model's cross-attention has."""


class UnsupportedSchedulerError(InterpError, RuntimeError):
    """A scheduler whose denoiser calls per step interp does not know, so per-step operations could miss calls."""


class AttentionCaptureError(InterpError, ValueError):
    """Attention maps asked of a layer that is not a text cross-attention, of a processor whose math
    the capture would change, or at a step or token the run does not have."""


class SweepEngineError(InterpError, RuntimeError):
    """A sweep engine that cannot run: Ray not installed, a cluster address that does not answer, or
    workers that cannot load the model."""
