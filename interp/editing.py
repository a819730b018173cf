"""Closed-form weight edits (DiffQuickFix, LoCoEdit, UCE-style preservation) as reversible objects.

One solver serves every editor: for a linear layer with weight W' (out x in), keys K (n x in) and
values V (n x out), it returns the minimiser of

    sum_i ||W k_i - v_i||^2 + lam ||W - W'||_F^2 + preserve_lam sum_j ||W p_j - W' p_j||^2,

that is W* = (lam W' + V^T K + preserve_lam W' P^T P)(lam I + K^T K + preserve_lam P^T P)^-1.
The system is ill-conditioned, so it is solved in float64 with `torch.linalg.solve`, never through
an explicit inverse, in the equivalent update form W* = W' + (V - K W'^T)^T K A^-1 (A the second
factor), which solves for min(n, out) columns instead of out. An `Edit` holds the new weights by parameter name; it applies, reverts
bit-exactly, and saves to a small safetensors file of the changed weights only.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from interp.errors import EditInputError, EditMismatchError, EditStateError

FORMAT_KEY = "__interp_edit__"
FORMAT_VERSION = "1"


def _check_matrix(name: str, x: Tensor, columns: int | None, columns_of: str) -> None:
    """Raise `EditInputError` unless `x` is a 2-D matrix with `columns` columns."""
    if x.ndim != 2:
        raise EditInputError(
            f"{name} must be a 2-D matrix (one vector per row), got shape {tuple(x.shape)}; "
            f"stack single vectors with torch.stack or x[None]"
        )
    if columns is not None and x.shape[1] != columns:
        raise EditInputError(
            f"{name} has shape {tuple(x.shape)} but needs {columns} columns to match {columns_of}"
        )


def _float64(name: str, x: Tensor, device: torch.device) -> Tensor:
    """`x` as float64 on `device`, or `EditInputError` if it holds NaN or inf.

    One sum finds them: a float64 sum of float32/16 values cannot overflow.
    """
    x64 = x.detach().to(device=device, dtype=torch.float64)
    if not torch.isfinite(x64.sum()):
        raise EditInputError(f"{name} contains NaN or inf; check the activations it was built from")
    return x64


LAM_ROLE = "it keeps the edit close to the current weight and makes the system solvable (the papers use 0.01)"
PRESERVE_ROLE = (
    "it weighs keeping the preserved inputs' outputs against the edit (1.0 weighs them like the edited keys; "
    "pass no preservation inputs to turn it off)"
)


def _check_positive(name: str, value: float, role: str = LAM_ROLE) -> None:
    """Raise `EditInputError` unless `value` is a finite number above zero; `role` says what it does."""
    if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
        raise EditInputError(f"{name} must be a finite number > 0, got {value!r}; {role}")


def solve_closed_form(
    weight: Tensor,
    keys: Tensor,
    values: Tensor,
    lam: float,
    preserve_keys: Tensor | None = None,
    preserve_lam: float = 1.0,
) -> Tensor:
    """The edited weight W* that maps each key row to its value row while staying near `weight`.

    `weight` is (out, in); `keys` (n, in) and `values` (n, out) hold one pair per row.
    `preserve_keys` (m, in), optional, are inputs on which the layer should keep its current output
    `weight @ p`, weighted by `preserve_lam`. Computed in float64; returned in `weight`'s dtype and
    device.
    """
    _check_positive("lam", lam)
    _check_positive("preserve_lam", preserve_lam, PRESERVE_ROLE)
    _check_matrix("weight", weight, None, "")
    out_dim, in_dim = weight.shape
    _check_matrix("keys", keys, in_dim, f"the weight's input size (weight {tuple(weight.shape)})")
    _check_matrix("values", values, out_dim, f"the weight's output size (weight {tuple(weight.shape)})")
    if keys.shape[0] != values.shape[0]:
        raise EditInputError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} need the same number of rows "
            f"(one value per key)"
        )
    if preserve_keys is not None:
        _check_matrix("preserve_keys", preserve_keys, in_dim, "the weight's input size")

    device = weight.device
    w, k, v = (_float64(n, x, device) for n, x in (("weight", weight), ("keys", keys), ("values", values)))
    lhs = lam * torch.eye(in_dim, dtype=torch.float64, device=device) + k.T @ k  # A, (in, in)
    if preserve_keys is not None:
        p = _float64("preserve_keys", preserve_keys, device)
        lhs = lhs + preserve_lam * (p.T @ p)
    # rhs = W' A + R^T K with residuals R = V - K W'^T, so W* = W' + R^T K A^-1 (A is symmetric).
    # Solving for K A^-1 (n columns) or R^T K A^-1 (out columns), whichever is fewer, is the same
    # float64 solve of the transposed system at a fraction of the cost when n << out or out << n.
    residual = v - k @ w.T  # (n, out)
    if len(k) <= out_dim:
        solution = torch.addmm(w, residual.T, torch.linalg.solve(lhs, k.T).T)
    else:
        solution = w + torch.linalg.solve(lhs, k.T @ residual).T
    return solution.to(dtype=weight.dtype, device=weight.device)


def solve_shared_keys(
    weights: Mapping[str, Tensor],
    keys: Tensor,
    values: Mapping[str, Tensor],
    lam: float,
    preserve_keys: Tensor | None = None,
    preserve_lam: float = 1.0,
) -> dict[str, Tensor]:
    """`solve_closed_form` for several matrices that share keys and lambdas, in one solve.

    Each row of W* solves its own problem with the same system matrix, so stacking the weights
    row-wise and their values column-wise gives every matrix its own exact solution with one
    factorisation (LoCoEdit's W_K and W_V, UCE's every cross-attention layer). Results keep each
    weight's dtype and device.
    """
    if weights.keys() != values.keys():
        raise EditInputError(
            f"weights and values must name the same matrices; weights only: "
            f"{sorted(weights.keys() - values.keys())}, values only: {sorted(values.keys() - weights.keys())}"
        )
    _check_matrix("keys", keys, None, "")
    for name, weight in weights.items():
        _check_matrix(f"weight {name!r}", weight, keys.shape[1], f"the keys {tuple(keys.shape)}")
        _check_matrix(f"values for {name!r}", values[name], weight.shape[0], f"{name!r} {tuple(weight.shape)}")
    names = list(weights)
    stacked = solve_closed_form(
        torch.cat([weights[n].detach().to(keys.device) for n in names]),
        keys,
        torch.cat([values[n].detach().to(keys.device) for n in names], dim=1),
        lam,
        preserve_keys,
        preserve_lam,
    )
    parts = stacked.split([weights[n].shape[0] for n in names])
    return {n: part.to(weights[n].dtype).to(weights[n].device) for n, part in zip(names, parts)}


def _parameter(module: nn.Module, name: str) -> nn.Parameter:
    """`module`'s parameter `name`, or `EditMismatchError` listing the closest real names."""
    try:
        return module.get_parameter(name)
    except AttributeError:
        names = [n for n, _ in module.named_parameters()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise EditMismatchError(
            f"{type(module).__name__} has no parameter {name!r}{hint}; this edit was made for "
            f"another model or another root module (names are relative to the module passed in)"
        ) from None


@dataclass(eq=False)
class Edit:
    """New values for some weight matrices of a module, by dotted parameter name, plus metadata.

    Names are relative to the root module given to `apply` (e.g. a text encoder's
    ``"encoder.layers.0.self_attn.out_proj.weight"`` in transformers 5). `metadata` is
    JSON-serialisable free-form information: by convention ``method``, ``concepts``, ``lam``.
    Several edits touching the same weights must be reverted in the reverse order of applying.
    """

    weights: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    _originals: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.weights = dict(self.weights)
        if not self.weights:
            raise EditInputError("an Edit needs at least one weight; got an empty mapping")
        for name, tensor in self.weights.items():
            if not isinstance(tensor, Tensor) or tensor.ndim != 2:
                shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
                raise EditInputError(
                    f"edits change weight matrices only; {name!r} is {shape}, not a 2-D tensor"
                )

    @property
    def changed_parameters(self) -> tuple[str, ...]:
        """The dotted names of the parameters this edit writes, in order."""
        return tuple(self.weights)

    def is_applied(self, module: nn.Module) -> bool:
        """Whether this edit is currently applied to `module` (and so can be reverted there)."""
        return module in self._originals

    def check(self, module: nn.Module) -> None:
        """Raise `EditMismatchError` unless every name exists in `module` with the same shape and dtype."""
        for name, new in self.weights.items():
            param = _parameter(module, name)
            if param.shape != new.shape:
                raise EditMismatchError(
                    f"{name!r} has shape {tuple(param.shape)} in {type(module).__name__} but the edit "
                    f"holds {tuple(new.shape)}; this edit was made for a model of another size"
                )
            if param.dtype != new.dtype:
                raise EditMismatchError(
                    f"{name!r} is {param.dtype} in the module but {new.dtype} in the edit; load the "
                    f"model in {new.dtype} or convert the edit's weights with .to({param.dtype})"
                )

    def apply(self, module: nn.Module) -> nn.Module:
        """Write the new weights into `module` in place, remembering the originals for `revert`.

        Everything is checked before anything is written, so a failed apply leaves `module` as it was.
        """
        if self.is_applied(module):
            raise EditStateError("this edit is already applied to this module; revert it first")
        self.check(module)
        originals = {}
        with torch.no_grad():
            for name, new in self.weights.items():
                param = module.get_parameter(name)
                originals[name] = param.detach().clone()
                param.copy_(new)
        self._originals[module] = originals
        return module

    def revert(self, module: nn.Module) -> nn.Module:
        """Restore the weights `apply` replaced in `module`, bit for bit."""
        originals = self._originals.pop(module, None)
        if originals is None:
            raise EditStateError("this edit is not applied to this module; nothing to revert")
        with torch.no_grad():
            for name, old in originals.items():
                module.get_parameter(name).copy_(old)
        return module

    def save(self, path: str | Path) -> Path:
        """Save the changed weights and metadata to a safetensors file; returns the path."""
        strings = {FORMAT_KEY: FORMAT_VERSION}
        for key, value in self.metadata.items():
            try:
                strings[key] = json.dumps(value)
            except TypeError as exc:
                raise EditInputError(
                    f"metadata {key!r} is not JSON-serialisable ({exc}); store plain numbers, "
                    f"strings, lists or dicts"
                ) from None
        tensors = {name: t.detach().cpu().contiguous().clone() for name, t in self.weights.items()}
        path = Path(path)
        save_file(tensors, str(path), metadata=strings)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        """Read an edit written by `save` (weights on CPU)."""
        with safe_open(str(path), framework="pt") as f:
            strings = dict(f.metadata() or {})
            if strings.pop(FORMAT_KEY, None) != FORMAT_VERSION:
                raise EditInputError(
                    f"{path} is not an interp edit file (no {FORMAT_KEY!r} = {FORMAT_VERSION!r} "
                    f"metadata); write edits with Edit.save"
                )
            weights = {name: f.get_tensor(name) for name in f.keys()}
        return cls(weights, {key: json.loads(value) for key, value in strings.items()})
