"""Representational similarity between two captures of the same probe samples: linear CKA.

Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network
Representations Revisited", eq. 5 with the linear kernel): for representations X ∈ R^{n×d₁} and
Y ∈ R^{n×d₂} of the *same* n samples, with column-centred X̃, Ỹ,

    CKA(X, Y) = ‖Ỹᵀ X̃‖_F² / (‖X̃ᵀ X̃‖_F · ‖Ỹᵀ Ỹ‖_F)
              = ⟨K̃, L̃⟩_F / (‖K̃‖_F · ‖L̃‖_F),   K̃ = X̃ X̃ᵀ, L̃ = Ỹ Ỹᵀ  (centred n × n Gram matrices).

It lies in [0, 1], is 1 for X and Y that differ by an orthogonal map, an isotropic scaling or a shift,
and does not depend on the width. phasescope keeps the centred Gram of the first ``max_samples``
samples of a fixed probe set per capture (n × n, independent of d), so a capture can be compared
with the first capture and with the previous one without storing activations.

Functions take numpy, torch (CPU/CUDA) or jax arrays and compute on the input's device in float64.
"""

from __future__ import annotations

from typing import Any

from . import _backend as B

#: Default number of probe samples kept for CKA (the Gram is max_samples² float64 per probe).
CKA_SAMPLES = 1024


def centered_gram(x: Any, *, exact: bool = False) -> Any:
    """K̃ = X̃ X̃ᵀ for the column-centred rows of ``x`` (n × d → n × n, same backend and device).

    The mean is removed in float64 (a large common offset cancels exactly); the n × n product is
    then taken in float32 (its relative error, ~1e-7·√d, is far below what CKA resolves, at a quarter
    of the float64 cost), or in float64 with ``exact=True``."""
    x = B.as_array(x)
    xp = B.namespace(x)
    with B.precise(xp):
        x = B.to_float64(xp, x)
        x = x - xp.mean(x, axis=0, keepdims=True)
        if not exact:
            x = xp.astype(x, xp.float32)
        return x @ x.T


def linear_cka(k: Any, l: Any) -> float:  # noqa: E741 - K and L: the Gram matrices of Kornblith et al.
    """Linear CKA of two centred Gram matrices of the same samples (see module docstring).

    NaN when the shapes differ (not the same samples) or either representation is constant.
    """
    k, l = B.as_array(k), B.as_array(l)  # noqa: E741
    if tuple(k.shape) != tuple(l.shape) or k.shape[0] < 2:
        return float("nan")
    xp = B.namespace(k, l)
    with B.precise(xp):
        k, l = B.to_float64(xp, k), B.to_float64(xp, l)  # noqa: E741
        hsic = xp.sum(k * l)
        norm = xp.sqrt(xp.sum(k * k)) * xp.sqrt(xp.sum(l * l))
        return B.to_python_float(hsic) / B.to_python_float(norm) if B.to_python_float(norm) > 0 else float("nan")


class GramSampler:
    """Keeps the first ``max_samples`` rows fed to :meth:`update` (in order) and gives their centred
    Gram — the CKA sample of one capture; the same rows at every capture when the probe set and its
    batch order are fixed. ``max_samples = 0`` keeps nothing (``gram()`` is None)."""

    def __init__(self, max_samples: int = CKA_SAMPLES):
        self.max_samples = int(max_samples)
        self.rows: list = []
        self.n = 0

    def update(self, x: Any) -> None:
        if self.n < self.max_samples:
            take = x[: self.max_samples - self.n]
            self.rows.append(take)
            self.n += int(take.shape[0])

    def gram(self) -> Any:
        """The centred Gram of the kept rows (backend of the rows), or None for fewer than 2."""
        if self.n < 2:
            return None
        rows = self.rows[0] if len(self.rows) == 1 else B.namespace(*self.rows).concat(self.rows, axis=0)
        return centered_gram(rows)
