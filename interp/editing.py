"""Closed-form weight edits (DiffQuickFix, LoCoEdit, UCE-style preservation) as reversible objects.

One solver serves every editor: for a linear layer with weight W' (out x in), keys K (n x in) and
values V (n x out), it returns the minimiser of

    sum_i ||W k_i - v_i||^2 + lam ||W - W'||_F^2 + preserve_lam sum_j ||W p_j - W' p_j||^2,

that is W* = (lam W' + V^T K + preserve_lam W' P^T P)(lam I + K^T K + preserve_lam P^T P)^-1.
The system is ill-conditioned, so it is solved in float64 with `torch.linalg.solve`, never through
an explicit inverse, in the equivalent update form W* = W' + (V - K W'^T)^T K A^-1 (A the second
factor), which solves for min(n, out) columns instead of out.

An `Edit` is a delta: for each matrix, ΔW (low-rank where the update is: rank at most the number of
keys) and a fingerprint of the base weights it was computed from. It applies by addition (refusing
another base unless forced), reverts bit-exactly in any order that does not strand a later edit of the
same weights, saves to a small safetensors file and exports as a diffusers LoRA adapter.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import numbers
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from interp.errors import EditInputError, EditMismatchError, EditStateError

FORMAT_KEY = "__interp_edit__"
FORMAT_VERSION = "2"  # 1: whole edited matrices, no base fingerprints
BASE_KEY = "__interp_base__"


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


def _check_value_index(index: Tensor, keys: int, values: int) -> None:
    """Raise `EditInputError` unless `index` gives each of `keys` keys a row of `values` values."""
    if index.ndim != 1 or len(index) != keys or index.dtype not in (torch.int32, torch.int64):
        raise EditInputError(
            f"value_index must be a 1-D integer tensor with one entry per key ({keys}), got "
            f"{index.dtype} of shape {tuple(index.shape)}"
        )
    if keys and not 0 <= int(index.min()) <= int(index.max()) < values:
        raise EditInputError(
            f"value_index holds rows {int(index.min())}..{int(index.max())}, but values has {values} rows"
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
    value_index: Tensor | None = None,
) -> Tensor:
    """The edited weight W* that maps each key row to its value row while staying near `weight`.

    `weight` is (out, in); `keys` (n, in) and `values` (n, out) hold one pair per row. Where many keys
    share a value (DiffQuickFix's one new concept for a hundred old ones), `values` may hold the
    distinct rows (v, out) and `value_index` (n,) each key's row in it: K^T V is then a scatter-add
    of the keys into v rows, not a product over all n, the same sum in float64.
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
    if value_index is not None:
        _check_value_index(value_index, len(keys), len(values))
    elif keys.shape[0] != values.shape[0]:
        raise EditInputError(
            f"keys {tuple(keys.shape)} and values {tuple(values.shape)} need the same number of rows "
            f"(one value per key), or pass value_index to map each key to a row of values"
        )
    if preserve_keys is not None:
        _check_matrix("preserve_keys", preserve_keys, in_dim, "the weight's input size")

    device = weight.device
    w, k, v = (_float64(n, x, device) for n, x in (("weight", weight), ("keys", keys), ("values", values)))
    gram = k.T @ k  # K^T K, (in, in)
    lhs = gram.add(torch.eye(in_dim, dtype=torch.float64, device=device), alpha=lam)  # A = lam I + K^T K
    if preserve_keys is not None:
        p = _float64("preserve_keys", preserve_keys, device)
        lhs = lhs + preserve_lam * (p.T @ p)
    # rhs = W' A + R^T K with residuals R = V - K W'^T, so W* = W' + R^T K A^-1 (A is symmetric).
    # Solving for K A^-1 (n columns) or R^T K A^-1 (out columns), whichever is fewer, is the same
    # float64 solve of the transposed system at a fraction of the cost when n << out or out << n.
    if value_index is None and len(k) <= out_dim:
        residual = v - k @ w.T  # (n, out)
        solution = torch.addmm(w, residual.T, torch.linalg.solve(lhs, k.T).T)
    else:  # K^T R = K^T V - (K^T K) W'^T: two products over the n rows (K^T K, K^T V), not three
        if value_index is None:
            kv = k.T @ v
        else:  # K^T V = (P^T K)^T V_distinct, P the (n, v) one-hot of value_index: a scatter-add, no product
            summed = torch.zeros(len(v), in_dim, dtype=torch.float64, device=device)
            kv = summed.index_add_(0, value_index.to(device), k).T @ v
        solution = w + torch.linalg.solve(lhs, torch.addmm(kv, gram, w.T, alpha=-1)).T
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


def fingerprint(tensor: Tensor) -> str:
    """A short hash of a tensor's shape, dtype and bytes: which base weights an edit belongs to."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}{data.dtype}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _singular_above(dense: Tensor, noise: float, start: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """An SVD of `dense` exact in every singular value above `noise`.

    An editor's ΔW has rank at most its number of keys (a few dozen) plus rounding, so a projection
    onto 2q columns (Halko et al.) already holds it; q doubles until the q-th value falls to the
    noise. Only a matrix that stays full rank pays for the full SVD (2.5 s at SDXL's 1280 x 2048)."""
    q = start
    while 4 * q < min(dense.shape):
        generator = torch.Generator().manual_seed(0)  # the same delta always gives the same factors
        sketch = dense @ torch.randn(dense.shape[1], 2 * q, dtype=dense.dtype, generator=generator)
        basis = torch.linalg.qr(dense @ (dense.T @ sketch)).Q  # one power iteration: a sharper range
        u, s, vh = torch.linalg.svd(basis.T @ dense, full_matrices=False)
        if s[q - 1] <= noise:
            return basis @ u, s, vh
        q *= 2
    return torch.linalg.svd(dense, full_matrices=False)


@dataclass(frozen=True)
class Delta:
    """ΔW of one matrix in float64: `up @ down` (rank r), or dense `up` when low rank saves nothing
    (`down` None)."""

    up: Tensor
    down: Tensor | None = None

    @classmethod
    def between(cls, base: Tensor, edited: Tensor) -> Delta:
        """The change from `base` to `edited`, truncated to the rank that rises above `edited`'s
        rounding (a float32 matrix carries eps * ||W||_F of it, which is full rank)."""
        dense = edited.detach().cpu().double() - base.detach().cpu().double()
        noise = torch.finfo(edited.dtype).eps * float(edited.detach().double().norm())
        u, s, vh = _singular_above(dense, noise)
        rank = int((s > noise).sum())
        if rank * sum(dense.shape) >= dense.numel():
            return cls(dense)
        return cls(u[:, :rank] * s[:rank], vh[:rank])

    @property
    def rank(self) -> int:
        return min(self.up.shape) if self.down is None else self.up.shape[1]

    def dense(self) -> Tensor:
        return self.up if self.down is None else self.up @ self.down

    def onto(self, base: Tensor) -> Tensor:
        """`base + ΔW`, computed in float64 and rounded once to `base`'s dtype, on its device."""
        return (base.detach().double() + self.dense().to(base.device)).to(base.dtype)

    def factors(self) -> tuple[Tensor, Tensor]:
        """(B, A) with B @ A = ΔW, B (out, r), A (r, in): a LoRA's up and down matrices."""
        if self.down is not None:
            return self.up, self.down
        u, s, vh = torch.linalg.svd(self.up, full_matrices=False)
        return u * s, vh


@dataclass(frozen=True)
class _Applied:
    """One edit applied to one module: its identity, the weights it wrote and what was there before."""

    identity: str
    originals: dict[str, Tensor]


_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> [_Applied], in apply order


class Edit:
    """A change to some weight matrices of a module, by dotted parameter name, plus metadata.

    Built from the edited matrices and the `base` matrices they were computed from (the editors
    pass both); the edit keeps ΔW (`deltas`) and the base's fingerprints. An edit built without a
    base takes the weights of the module it is first applied to as its base. Names are relative to
    the root module given to `apply` (e.g. a text encoder's ``"encoder.layers.0.self_attn.out_proj.weight"``).
    `metadata` is JSON-serialisable free-form information: by convention ``method``, ``concepts``, ``lam``.
    Two edits are the same edit when their deltas and bases are equal, however they were loaded.
    """

    def __init__(self, weights: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None,
                 base: Mapping[str, Tensor] | None = None):
        _check_matrices(weights)
        self.metadata = dict(metadata or {})
        self._weights = dict(weights)
        self.deltas: dict[str, Delta] = {}
        self.fingerprints: dict[str, str | None] = {}
        if base is not None:
            self._bind(base)

    @classmethod
    def of_deltas(cls, deltas: Mapping[str, Delta], fingerprints: Mapping[str, str | None],
                  metadata: Mapping[str, Any] | None = None) -> Edit:
        """An edit from its deltas and base fingerprints (None: any base, as for an imported LoRA)."""
        _check_matrices({n: d.dense() for n, d in deltas.items()})
        edit = cls.__new__(cls)
        edit.metadata, edit._weights = dict(metadata or {}), {}
        edit.deltas, edit.fingerprints = dict(deltas), {n: fingerprints.get(n) for n in deltas}
        return edit

    def _bind(self, base: Mapping[str, Tensor]) -> None:
        """Record ΔW against `base`; the edited weights become base + ΔW (equal to float32 precision)."""
        for name, new in self._weights.items():
            if name not in base or base[name].shape != new.shape:
                raise EditInputError(f"the base has no {tuple(new.shape)} matrix {name!r} to compute the edit from")
        self.deltas = {n: Delta.between(base[n], new) for n, new in self._weights.items()}
        self.fingerprints = {n: fingerprint(base[n]) for n in self._weights}
        self._weights = {n: self.deltas[n].onto(base[n]) for n in self._weights}

    @property
    def weights(self) -> dict[str, Tensor]:
        """The edited matrices on the base this edit was built or last applied on."""
        if not self._weights:
            raise EditStateError("this edit holds deltas only; apply it to a module first to see its weights")
        return self._weights

    def weights_on(self, module: nn.Module) -> dict[str, Tensor]:
        """The matrices this edit would write into `module` (its weights + ΔW), without writing them."""
        self.check(module)
        if not self.deltas:
            return dict(self._weights)
        return {n: d.onto(module.get_parameter(n)) for n, d in self.deltas.items()}

    @property
    def changed_parameters(self) -> tuple[str, ...]:
        """The dotted names of the parameters this edit writes, in order."""
        return tuple(self.deltas or self._weights)

    @property
    def ranks(self) -> dict[str, int]:
        """The rank of each matrix's ΔW."""
        return {n: d.rank for n, d in self.deltas.items()}

    @functools.cached_property
    def identity(self) -> str:
        """A hash of the deltas and base fingerprints: equal for two loads of one file."""
        digest = hashlib.sha256()
        for name in sorted(self.deltas):
            digest.update(f"{name}:{self.fingerprints[name]}:".encode())
            digest.update(fingerprint(self.deltas[name].dense()).encode())
        return digest.hexdigest()[:16]

    def is_applied(self, module: nn.Module) -> bool:
        """Whether this edit (or an identical one) is currently applied to `module`."""
        return bool(self.deltas) and any(a.identity == self.identity for a in _APPLIED.get(module, ()))

    def check(self, module: nn.Module) -> None:
        """Raise `EditMismatchError` unless every name exists in `module` with the same shape and dtype."""
        for name, delta in (self.deltas or self._weights).items():
            param = _parameter(module, name)
            shape = tuple((delta.dense() if isinstance(delta, Delta) else delta).shape)
            if tuple(param.shape) != shape:
                raise EditMismatchError(
                    f"{name!r} has shape {tuple(param.shape)} in {type(module).__name__} but the edit "
                    f"holds {shape}; this edit was made for a model of another size"
                )
            if name in self._weights and param.dtype != self._weights[name].dtype:
                new = self._weights[name].dtype
                raise EditMismatchError(
                    f"{name!r} is {param.dtype} in the module but {new} in the edit; load the "
                    f"model in {new} or convert the edit's weights with .to({param.dtype})"
                )

    def _check_base(self, module: nn.Module, force: bool) -> None:
        """Raise `EditMismatchError` where `module`'s weights are not the ones the edit was computed from."""
        differ = [n for n, f in self.fingerprints.items() if f is not None and fingerprint(module.get_parameter(n)) != f]
        if differ and not force:
            raise EditMismatchError(
                f"{', '.join(differ)} differ from the weights this edit was computed from (another model, or one "
                f"already edited); pass force=True (interp apply --force) to add the edit's change to them anyway"
            )

    def apply(self, module: nn.Module, force: bool = False) -> nn.Module:
        """Add ΔW to `module`'s weights in place, remembering the originals for `revert`.

        All-or-nothing: everything is checked and every new weight computed before any is written.
        """
        if self.deltas and self.is_applied(module):
            raise EditStateError("this edit is already applied to this module; revert it first")
        self.check(module)
        if not self.deltas:
            self._bind({n: module.get_parameter(n) for n in self._weights})
        self._check_base(module, force)
        with torch.no_grad():
            params = {n: module.get_parameter(n) for n in self.deltas}
            originals = {n: p.detach().clone() for n, p in params.items()}
            new = {n: self.deltas[n].onto(p) for n, p in params.items()}
            for name, param in params.items():
                param.copy_(new[name])
        _APPLIED.setdefault(module, []).append(_Applied(self.identity, originals))
        self._weights = new
        return module

    def revert(self, module: nn.Module) -> nn.Module:
        """Restore the weights `apply` replaced in `module`, bit for bit.

        Refused while an edit applied later changes the same weights (revert that one first)."""
        stack = _APPLIED.get(module, [])
        index = next((i for i, a in enumerate(stack) if self.deltas and a.identity == self.identity), None)
        if index is None:
            raise EditStateError("this edit is not applied to this module; nothing to revert")
        later = [a for a in stack[index + 1:] if a.originals.keys() & stack[index].originals.keys()]
        if later:
            raise EditStateError(
                f"edit {later[-1].identity} was applied after this one and changes the same weights; revert it first"
            )
        with torch.no_grad():
            for name, old in stack.pop(index).originals.items():
                module.get_parameter(name).copy_(old)
        return module

    def save(self, path: str | Path) -> Path:
        """Save ΔW (low-rank factors or dense, float64), base fingerprints and metadata to a
        safetensors file; returns the path."""
        if not self.deltas:
            raise EditStateError("this edit does not know the weights it was computed from; build it with "
                                 "Edit(weights, base=...) or apply it once before saving")
        strings = {FORMAT_KEY: FORMAT_VERSION, BASE_KEY: json.dumps(self.fingerprints)}
        for key, value in self.metadata.items():
            try:
                strings[key] = json.dumps(value)
            except TypeError as exc:
                raise EditInputError(
                    f"metadata {key!r} is not JSON-serialisable ({exc}); store plain numbers, "
                    f"strings, lists or dicts"
                ) from None
        tensors = {}
        for name, delta in self.deltas.items():
            parts = {"delta": delta.up} if delta.down is None else {"up": delta.up, "down": delta.down}
            tensors.update({f"{name}::{k}": t.contiguous() for k, t in parts.items()})
        path = Path(path)
        save_file(tensors, str(path), metadata=strings)
        return path

    @classmethod
    def load(cls, path: str | Path, base: nn.Module | None = None) -> Edit:
        """Read an edit written by `save`. A format-1 file (whole edited matrices, from before edits
        were deltas) is migrated against `base`, the unedited module it was computed on."""
        try:
            with safe_open(str(path), framework="pt") as f:
                strings = dict(f.metadata() or {})
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as error:
            raise EditInputError(f"{path} is not a readable edit file ({error}); write edits with Edit.save") from None
        version = strings.pop(FORMAT_KEY, None)
        if version == "1":
            return _migrate(path, tensors, strings, base)
        if version != FORMAT_VERSION:
            raise EditInputError(
                f"{path} is not an interp edit file (no {FORMAT_KEY!r} = {FORMAT_VERSION!r} "
                f"metadata); write edits with Edit.save"
            )
        fingerprints = json.loads(strings.pop(BASE_KEY))
        deltas = {n: Delta(tensors.get(f"{n}::delta", tensors.get(f"{n}::up")), tensors.get(f"{n}::down"))
                  for n in fingerprints}
        return cls.of_deltas(deltas, fingerprints, {key: json.loads(value) for key, value in strings.items()})


def _migrate(path: str | Path, weights: dict[str, Tensor], strings: dict[str, str], base: nn.Module | None) -> Edit:
    """A format-1 edit (whole edited matrices) as a delta against `base`."""
    if base is None:
        raise EditInputError(
            f"{path} is an edit file from before edits were deltas (format 1: whole matrices, no record of their "
            f"base); load it with Edit.load(path, base=<the unedited module>) and save it again, or recompute it"
        )
    metadata = {key: json.loads(value) for key, value in strings.items()}
    return Edit(weights, metadata, base={n: _parameter(base, n) for n in weights})


def _check_matrices(weights: Mapping[str, Tensor]) -> None:
    """Raise `EditInputError` unless `weights` is a non-empty mapping of 2-D tensors."""
    if not weights:
        raise EditInputError("an Edit needs at least one weight; got an empty mapping")
    for name, tensor in weights.items():
        if not isinstance(tensor, Tensor) or tensor.ndim != 2:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise EditInputError(f"edits change weight matrices only; {name!r} is {shape}, not a 2-D tensor")
