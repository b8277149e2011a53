"""Zeroth-order SPSA steps whose perturbations never touch the parameters.

``g = (f(θ+εz) − f(θ−εz)) / 2ε`` with ``z`` from stream v1. MeZO perturbs θ in
place, evaluates, and perturbs back, which drifts by rounding and costs two
extra passes. Here each trainable tensor is perturbed *on the fly*: a forward
pre-hook on the module that owns it swaps in a temporary ``θ_t + εz_t`` for
the duration of that module's forward only, and the forward hook swaps the
parameter back. θ is never written during an evaluation, so it is
bit-identical afterwards by construction, and memory stays at inference plus
one module's perturbed weights.

Typical use (one local step)::

    engine = ZOEngine(model, TrainableSet.from_model(model), eps=1e-3)
    result = engine.step(seed, loss_fn, lr=1e-6)   # None if the loss was not finite
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from fedseed import perturb
from fedseed.errors import ConfigError, DuplicateTensorIdError, UnsupportedDtypeError
from fedseed.perturb.stream import Seed, as_seed

if TYPE_CHECKING:
    from fedseed.settings import RunSettings

log = logging.getLogger(__name__)

Distribution = Literal["rademacher", "gaussian"]

# What a run manifest records as its stream, per distribution. Gaussian values go
# through log/cos/sin, whose last bits differ between CPU and CUDA libraries.
STREAM_NAMES: dict[str, str] = {
    "rademacher": perturb.STREAM_NAME,
    "gaussian": "philox4x32-10/gaussian-boxmuller/v1 (not bit-exact across devices)",
}


@dataclass(frozen=True)
class TrainableTensor:
    """One trainable parameter with its stream address."""

    name: str  # fully qualified, as model.named_parameters() gives it
    param: nn.Parameter
    tensor_id: int  # crc32(name), spec v1


class TrainableSet:
    """The ordered set of tensors a run perturbs and updates.

    Built from ``model.named_parameters()`` (tied weights appear once, under
    their first name). ``include``/``exclude`` are regular expressions matched
    with ``re.search`` against parameter names.
    """

    def __init__(self, tensors: Sequence[TrainableTensor]) -> None:
        if not tensors:
            raise ConfigError(
                "no trainable tensors selected: check the trainable patterns (or name a preset: "
                "all, norms-biases, default)"
            )
        by_id: dict[int, str] = {}
        for t in tensors:
            if t.param.dtype not in perturb.EXACT_DTYPES:
                raise UnsupportedDtypeError(
                    f"trainable tensor {t.name!r} has dtype {t.param.dtype}; spec v1 perturbs "
                    f"exactly only {', '.join(str(d) for d in perturb.EXACT_DTYPES)}. "
                    "Cast the model (e.g. model.float()) or exclude the tensor."
                )
            if not t.param.is_contiguous():
                raise ConfigError(f"trainable tensor {t.name!r} is not contiguous")
            if t.tensor_id in by_id:
                raise DuplicateTensorIdError(
                    f"trainable tensors {by_id[t.tensor_id]!r} and {t.name!r} share stream id "
                    f"0x{t.tensor_id:08x} (crc32 of the name); they would get the same "
                    "perturbation. Exclude one of them or rename it."
                )
            by_id[t.tensor_id] = t.name
        self.tensors = tuple(tensors)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
    ) -> TrainableSet:
        include_res = [re.compile(p) for p in include] if include else None
        exclude_res = [re.compile(p) for p in exclude]
        chosen = []
        for name, param in model.named_parameters():
            if include_res is not None and not any(r.search(name) for r in include_res):
                continue
            if any(r.search(name) for r in exclude_res):
                continue
            chosen.append(TrainableTensor(name, param, perturb.tensor_id(name)))
        return cls(chosen)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @property
    def numel(self) -> int:
        return sum(t.param.numel() for t in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class MagnitudeMask:
    """Sparse MeZO's mask: perturb only the smallest-magnitude ``fraction`` of each tensor.

    The threshold is an element of the tensor itself (``kthvalue``), so every
    replica holding the same bits derives the same mask. It is recomputed from
    the current values each time it is asked for (each step, each replay step).
    """

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"mask fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, param: torch.Tensor) -> torch.Tensor | None:
        if self.fraction >= 1.0:
            return None
        magnitude = param.detach().abs().reshape(-1)
        k = max(1, math.floor(self.fraction * magnitude.numel()))
        threshold = magnitude.float().kthvalue(k).values
        return (magnitude.float() <= threshold).reshape(param.shape)

    def describe(self) -> str:
        return f"magnitude<={self.fraction:g}"


MaskFn = Callable[[torch.Tensor], "torch.Tensor | None"]
Snapshot = dict[str, torch.Tensor]  # trainable tensor name -> copy of its values


@dataclass(frozen=True)
class StepResult:
    seed: Seed
    projected_grad: float  # g, the scalar a client reports
    coef: float  # float32 value applied: -lr * g
    loss: float  # (f(θ+εz) + f(θ−εz)) / 2


def _gaussian_delta(seed: int, tensor_id: int, numel: int, device: torch.device) -> torch.Tensor:
    """Box-Muller normals from the Philox words (stream 1): NOT bit-exact across devices.

    log/cos/sin differ in the last bits between CPU and CUDA libraries, so a
    run using Gaussian perturbations must keep every participant on one kind
    of device; the manifest records ``gaussian`` and mixed fleets are refused.
    """
    from fedseed.perturb.philox import philox_words

    num_blocks = -(-numel // 4)
    words = philox_words(torch.arange(num_blocks, device=device), tensor_id, 1, perturb.seed_key(seed)).to(
        torch.float64
    )
    u = (words + 0.5) / 2.0**32  # in (0, 1)
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0::2]))
    angle = 2.0 * math.pi * u[:, 1::2]
    normals = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
    return normals.reshape(-1)[:numel].to(torch.float32)


class ZOEngine:
    """Evaluate perturbed losses and apply (seed, coef) updates to a model."""

    def __init__(
        self,
        model: nn.Module,
        trainable: TrainableSet,
        eps: float = 1e-3,
        distribution: Distribution = "rademacher",
        mask: MaskFn | None = None,
        backend: perturb.Backend = "auto",
    ) -> None:
        if distribution not in ("rademacher", "gaussian"):
            raise ConfigError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
        self.model = model
        self.trainable = trainable
        self.set_eps(eps)
        self.distribution = distribution
        self.mask = mask
        self.backend = backend
        self._owners = self._find_owners(model, trainable)
        # One reusable buffer holds the perturbed copies of the module being run:
        # fresh allocations cost page faults that doubled a CPU pass (measured).
        self._scratch_numel = max(sum(t.param.numel() for _, t in slots) for _, slots in self._owners)
        self._scratch: torch.Tensor | None = None
        self._scratch_busy = False

    # -- perturbation on the fly --------------------------------------------------------

    @staticmethod
    def _find_owners(
        model: nn.Module, trainable: TrainableSet
    ) -> list[tuple[nn.Module, list[tuple[str, TrainableTensor]]]]:
        """Each module holding a trainable parameter directly, with those slots.

        A tied parameter has several owners (e.g. embeddings and LM head); each
        owner perturbs it with the address of its canonical name.
        """
        by_param = {id(t.param): t for t in trainable.tensors}
        owners = []
        seen: set[int] = set()
        for module in model.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            slots = [
                (attr, by_param[id(p)])
                for attr, p in module._parameters.items()
                if p is not None and id(p) in by_param
            ]
            if slots:
                owners.append((module, slots))
        return owners

    def _apply_to(
        self, t: TrainableTensor, dst: torch.Tensor, seeds: Sequence[int], coefs: Sequence[float]
    ) -> None:
        """``dst <- storage(θ_t + Σ_k coef_k z_k)`` under this engine's distribution and mask."""
        src = t.param.detach()
        mask = self.mask(src) if self.mask is not None else None
        if self.distribution == "rademacher":
            perturb.apply_entries(src, dst, t.tensor_id, seeds, coefs, mask, self.backend)
            return
        delta = torch.zeros(src.numel(), dtype=torch.float32, device=src.device)
        for seed, coef in zip(seeds, coefs, strict=True):
            delta += _gaussian_delta(seed, t.tensor_id, src.numel(), src.device) * float(np.float32(coef))
        delta = delta.reshape(src.shape)
        if mask is not None:
            delta = torch.where(mask, delta, torch.zeros_like(delta))
        dst.copy_((src.float() + delta).to(src.dtype))

    def _claim_scratch(self, slots: list[tuple[str, TrainableTensor]]) -> list[torch.Tensor] | None:
        """Views of the scratch buffer for ``slots``, or None (in use, or mixed dtype/device)."""
        first = slots[0][1].param
        if self._scratch_busy or any(
            t.param.dtype != first.dtype or t.param.device != first.device for _, t in slots
        ):
            return None
        if (
            self._scratch is None
            or self._scratch.dtype != first.dtype
            or self._scratch.device != first.device
        ):
            self._scratch = torch.empty(self._scratch_numel, dtype=first.dtype, device=first.device)
        # set_ rather than slicing: a *view* of a larger buffer sends torch's CPU
        # linear down another kernel (measured: different bits), while a tensor
        # sharing the storage without being a view matches a standalone copy.
        views, offset = [], 0
        storage = self._scratch.untyped_storage()
        for _, t in slots:
            out = torch.empty(0, dtype=first.dtype, device=first.device)
            views.append(out.set_(storage, offset, t.param.shape, t.param.stride()))
            offset += t.param.numel()
        self._scratch_busy = True
        return views

    def _release_scratch(self, output: Any) -> None:
        """Free the scratch for the next module, unless the output aliases it (then give it away)."""
        self._scratch_busy = False
        if self._scratch is None:
            return
        ptr = self._scratch.untyped_storage().data_ptr()
        values = output.values() if isinstance(output, dict) else output
        values = values if isinstance(values, (tuple, list)) else [values]
        if any(isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() == ptr for v in values):
            self._scratch = None

    def _perturb_lookup_rows(
        self, module: nn.Module, t: TrainableTensor, ids: torch.Tensor, seed: int, scale: float
    ) -> torch.Tensor:
        """An embedding lookup needs only its batch's rows: perturb those, remap the ids.

        Returns the remapped ids; sets ``module.weight`` to the ``[unique ids, dim]`` rows.
        The lookup's values are exactly those of a whole perturbed table.
        """
        unique, inverse = torch.unique(ids, return_inverse=True)
        rows = torch.empty((unique.numel(), t.param.shape[1]), dtype=t.param.dtype, device=t.param.device)
        mask = self.mask(t.param) if self.mask is not None else None
        perturb.apply_entries_rows(
            t.param.detach(), unique, rows, t.tensor_id, [seed], [scale], mask, self.backend
        )
        module._parameters["weight"] = rows.requires_grad_(t.param.requires_grad)  # type: ignore[assignment]
        return inverse

    @staticmethod
    def _rows_lookup_applies(module: nn.Module, attr: str, args: Any) -> bool:
        # Only plain nn.Embedding (subclasses may use the table otherwise), called
        # with the ids positionally, without max_norm (which renormalises in place).
        # Only on CPU, where a pass over a large table is memory-bound (half of
        # MiniLM's pass); on a GPU a whole-table pass is ~0.1 ms, while the row
        # lookup's torch.unique syncs the stream (measured: OPT-1.3B step 4.4x 2 fwd).
        weight = getattr(module, attr, None)
        return (
            isinstance(weight, torch.Tensor)
            and weight.device.type == "cpu"
            and type(module) is nn.Embedding
            and attr == "weight"
            and module.max_norm is None
            and len(args) >= 1
            and isinstance(args[0], torch.Tensor)
        )

    @contextmanager
    def perturbed(self, seed: int, scale: float) -> Iterator[None]:
        """Within the block, forwards see ``θ + scale·z(seed)``; θ is untouched."""
        seed = as_seed(seed)
        visited: set[int] = set()
        handles = []

        def make_hooks(
            slots: list[tuple[str, TrainableTensor]],
        ) -> tuple[Callable[..., Any], Callable[..., None]]:
            claimed: list[bool] = [False]

            def pre_hook(module: nn.Module, args: Any) -> Any:
                new_args = None
                if (
                    len(slots) == 1
                    and self.distribution == "rademacher"
                    and self._rows_lookup_applies(module, slots[0][0], args)
                ):
                    inverse = self._perturb_lookup_rows(module, slots[0][1], args[0], seed, scale)
                    new_args = (inverse, *args[1:])
                else:
                    views = self._claim_scratch(slots)
                    claimed[0] = views is not None
                    for i, (attr, t) in enumerate(slots):
                        out = views[i] if views is not None else torch.empty_like(t.param.detach())
                        self._apply_to(t, out, [seed], [scale])
                        # Match the parameter's flag: torch picks some CPU matmul paths by
                        # it even under no_grad, and the forward must be the unperturbed one's.
                        module._parameters[attr] = out.requires_grad_(t.param.requires_grad)  # type: ignore[assignment]
                for _, t in slots:
                    visited.add(t.tensor_id)
                return new_args

            def post_hook(module: nn.Module, args: Any, output: Any) -> None:
                for attr, t in slots:
                    module._parameters[attr] = t.param
                if claimed[0]:
                    claimed[0] = False
                    self._release_scratch(output)

            return pre_hook, post_hook

        try:
            for module, slots in self._owners:
                pre, post = make_hooks(slots)
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post, always_call=True))
            with torch.no_grad():
                yield
        finally:
            for h in handles:
                h.remove()
            for module, slots in self._owners:  # restore even if a forward raised
                for attr, t in slots:
                    module._parameters[attr] = t.param
            self._scratch_busy = False
        missed = [t.name for t in self.trainable.tensors if t.tensor_id not in visited]
        if missed:
            log.warning(
                "%d trainable tensors were not used through their module's forward and saw "
                "no perturbation (first: %s)",
                len(missed),
                missed[0],
            )

    # -- estimate and update ---------------------------------------------------------------

    def estimate(self, seed: int, loss_fn: Callable[[], torch.Tensor | float]) -> StepResult | None:
        """Two-point SPSA estimate along ``z(seed)``; None (logged) if a loss is not finite."""
        seed = as_seed(seed)
        with self.perturbed(seed, self.eps):
            loss_plus = float(loss_fn())
        with self.perturbed(seed, -self.eps):
            loss_minus = float(loss_fn())
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            log.warning(
                "non-finite loss at seed %d (f+ = %s, f- = %s): step skipped", seed, loss_plus, loss_minus
            )
            return None
        g = (loss_plus - loss_minus) / (2.0 * self.eps)
        return StepResult(seed, g, 0.0, (loss_plus + loss_minus) / 2.0)

    def set_eps(self, eps: float) -> None:
        """The perturbation scale, as every participant uses it (float32-rounded)."""
        if not (math.isfinite(eps) and eps > 0):
            raise ConfigError(f"eps must be a positive finite number, got {eps}")
        self.eps = float(np.float32(eps))

    def follow(self, settings: RunSettings) -> None:
        """Perturb and update under a run's rules: its eps and its Sparse MeZO mask."""
        self.set_eps(settings.eps)
        self.mask = MagnitudeMask(settings.mask_fraction) if settings.mask_fraction < 1.0 else None

    def apply(self, seeds: Sequence[int], coefs: Sequence[float]) -> None:
        """One ledger step: ``θ_t <- storage(θ_t + Σ_k coef_k z_k)`` for every trainable tensor."""
        coefs32 = [float(np.float32(c)) for c in coefs]
        if not all(math.isfinite(c) for c in coefs32):
            raise ValueError(f"refusing non-finite update coefficients {coefs}")
        with torch.no_grad():
            for t in self.trainable.tensors:
                self._apply_to(t, t.param.data, seeds, coefs32)

    def snapshot(self) -> Snapshot:
        """Copies of the trainable tensors, in host memory (device memory stays at inference)."""
        return {t.name: t.param.detach().to("cpu", copy=True) for t in self.trainable.tensors}

    def restore(self, snapshot: Snapshot) -> None:
        """Put the trainable tensors back to ``snapshot``'s values, bit for bit."""
        with torch.no_grad():
            for t in self.trainable.tensors:
                t.param.copy_(snapshot[t.name])

    def step(self, seed: int, loss_fn: Callable[[], torch.Tensor | float], lr: float) -> StepResult | None:
        """Estimate along ``z(seed)`` and apply ``coef = float32(-lr·g)``; None if skipped."""
        result = self.estimate(seed, loss_fn)
        if result is None:
            return None
        coef = float(np.float32(-lr * result.projected_grad))
        if not math.isfinite(coef):
            log.warning("non-finite update at seed %d (g = %s): step skipped", seed, result.projected_grad)
            return None
        self.apply([result.seed], [coef])
        return StepResult(result.seed, result.projected_grad, coef, result.loss)
