"""Differential privacy of the scalars a client sends (DPZero / DP-ZO style).

With ``dp_clip = C > 0`` a client computes, for each local step, every example's own
directional derivative ``g_i = (ℓ_i(θ+εz) − ℓ_i(θ−εz)) / 2ε`` (the two forward passes it
runs anyway give per-example losses), clips each to ``[−C, C]``, averages over its batch of
``B`` and adds Gaussian noise of standard deviation ``dp_noise · C / B``. The noise comes from
the operating system's CSPRNG (:class:`random.SystemRandom`): it is private to the client
and can never be regenerated from the run's public seeds. Everyone applies the decoded
noisy byte, so replicas still agree; but a DP run's bytes are not reproducible, by design.

Accounting: each step is the sampled Gaussian mechanism with noise multiplier
``dp_noise`` and sampling rate ``q = B / N`` (N: the client's examples), composed over the
steps the client takes. The RDP accountant of Google's ``dp-accounting`` gives epsilon at a
given delta. As in Opacus and TF Privacy, fixed-size batches drawn without replacement are
accounted as Poisson sampling with the same rate (the usual approximation); the guarantee
is per example of one client's data, with the adjacency of adding or removing one example.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import torch

from fedseed.zo import ZOEngine

log = logging.getLogger(__name__)

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257)) + [512, 1024]
_NOISE = random.SystemRandom()  # os.urandom underneath: a private CSPRNG


def private_scalar(
    engine: ZOEngine, seed: int, per_example_losses: Callable[[], torch.Tensor], clip: float, noise: float
) -> float | None:
    """One noisy, clipped projected gradient; None when a loss is not finite."""
    eps = engine.eps
    with engine.perturbed(seed, eps):
        plus = per_example_losses().double()
    with engine.perturbed(seed, -eps):
        minus = per_example_losses().double()
    if not (torch.isfinite(plus).all() and torch.isfinite(minus).all()):
        return None
    per_example = ((plus - minus) / (2.0 * eps)).clamp(-clip, clip)
    batch = per_example.numel()
    return float(per_example.mean()) + _NOISE.gauss(0.0, noise * clip / batch)


def epsilon(noise: float, sampling_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` sampled Gaussian steps (RDP accountant, dp-accounting)."""
    if steps == 0:
        return 0.0
    if noise <= 0:
        return math.inf
    import dp_accounting
    from dp_accounting import rdp

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # fractional orders that do not converge are skipped, noisily
    try:
        event = dp_accounting.PoissonSampledDpEvent(
            min(1.0, sampling_rate), dp_accounting.GaussianDpEvent(noise)
        )
        accountant = rdp.RdpAccountant(ORDERS)
        accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)
