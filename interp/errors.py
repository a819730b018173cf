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
