"""Streaming covariance accumulator: sufficient statistics of activations, reduced on their device.

State (float64, on the device of the first batch fed; numpy, torch or jax): n and shifted sums

    K (shift, d),   S₁ = Σ (x − K)   (d),   S₂ = Σ (x − K)(x − K)ᵀ   (d × d),
    cov = (S₂ − S₁S₁ᵀ/n) / (n − 1)                                        (ddof = 1)

kept in centred form (K = mean, S₁ = 0, S₂ = M₂): each block of rows is centred on its own mean
in float64 and merged pairwise (Chan, Golub & LeVeque 1979/1983, "Algorithms for computing the
sample variance"):  M₂ ← M₂ + M₂ᵇ + (n·n_b/n')·δδᵀ.  Nothing ever forms Σxxᵀ − nμμᵀ, which loses
~2·log10(‖μ‖/σ) digits when the mean dwarfs the spread (LLM residual streams have "massive
activations", Sun et al. 2024); the error stays at round-off of the covariance itself.

Shifted sums about a common K are plain sums, so shards merge exactly and `all_reduce` over
`torch.distributed` gives the one-pass result: ranks agree on K (the global mean), re-express
their state about it (S₁' = S₁ + nδ, S₂' = S₂ + δS₁ᵀ + S₁δᵀ + nδδᵀ, δ = K_old − K), then SUM.

While fewer samples than dimensions have been seen, the shifted rows themselves are kept (n·d < d²
numbers) and `compute` uses the dual N × N Gram route: the nonzero eigenvalues of XcᵀXc equal those
of XcXcᵀ, at O(N²d + N³) instead of O(Nd² + d³).
"""

from __future__ import annotations

import math
from typing import Any

from phasescope.errors import PhasescopeError

from . import _backend as B
from .summary import Spectrum


class CovarianceAccumulator:
    """Streaming, mergeable covariance of samples × dim activations (see the module docstring).

    acc = CovarianceAccumulator(1024); acc.update(x1); acc.update(x2); spec = acc.compute()

    Rows holding NaN or Inf are dropped and counted (`Spectrum.n_nonfinite`). Inputs with more
    than two dimensions, e.g. (batch, seq, dim), are flattened to (batch·seq, dim).
    `chunk_elements` bounds the float64 working copy of a batch (rows are processed in chunks).

    `precision="float32"` (opt-in) centres each chunk in float64 but forms its co-moment with a
    float32 matrix product (~2× faster on CPUs, far more on consumer GPUs), still summed in float64:
    eigenvalues then carry ~1e-7·λ₁ absolute error (ample for RankMe/α, not for tiny eigenvalues).
    The default "float64" is exact to round-off.
    """

    def __init__(
        self,
        dim: int,
        raw_singular_values: bool = False,
        *,
        chunk_elements: int = 1 << 22,
        precision: str = "float64",
    ):
        if int(dim) != dim or dim < 1:
            raise PhasescopeError(f"dim must be a positive integer, got {dim!r}")
        if precision not in ("float64", "float32"):
            raise PhasescopeError(f"precision must be 'float64' or 'float32', got {precision!r}")
        self.precision = precision
        self.dim = int(dim)
        self.raw_singular_values = bool(raw_singular_values)
        self.chunk_rows = max(1, int(chunk_elements) // self.dim)
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        self._xp: Any = None
        self._device: Any = None
        self.n = 0
        self.n_nonfinite = 0
        self._shift: Any = None
        self._s1: Any = None
        self._s2: Any = None  # None while in Gram (row-keeping) mode
        self._rows: list[Any] = []

    @property
    def route(self) -> str:
        return "covariance" if self._s2 is not None else "gram"

    def _adopt(self, x: Any) -> None:
        xp = B.namespace(x)
        if self._xp is None:
            self._xp, self._device = xp, B.device(x)
        elif xp is not self._xp:
            raise PhasescopeError(
                f"this accumulator holds {self._xp.__name__} state; feed it arrays of the same "
                f"backend (got {xp.__name__}) or use a separate accumulator"
            )
        elif str(B.device(x)) != str(self._device):
            raise PhasescopeError(
                f"this accumulator's state lives on {self._device}, got data on {B.device(x)}; "
                f"move the data there or use one accumulator per device and merge them"
            )

    def _zeros(self, *shape: int) -> Any:
        return self._xp.zeros(shape, dtype=self._xp.float64, device=self._device)

    def _add_to_s2(self, g: Any) -> None:
        if B.is_jax(self._xp):  # immutable arrays
            self._s2 = self._s2 + g
        else:  # in place: no second d × d temporary
            self._s2 += g

    def _centred(self, shift: Any, n: int, s1: Any, s2: Any, rows: list[Any]) -> tuple[Any, Any]:
        """(mean, M₂ = Σ(x − mean)(x − mean)ᵀ) of a state given as shifted sums or as kept rows."""
        xp = self._xp
        rbar = s1 / n
        if s2 is None:
            r = xp.concat(rows, axis=0) if len(rows) > 1 else rows[0]
            c = r - rbar
            m2 = xp.matmul(c.T, c)
        else:
            m2 = s2 - rbar[:, None] * s1[None, :]
        return shift + rbar, m2

    def _normalise(self) -> None:
        """Covariance mode keeps the centred form: shift = mean, S₁ = 0, S₂ = M₂."""
        if self._s2 is None or self.n == 0:
            return
        self._shift, self._s2 = self._centred(self._shift, self.n, self._s1, self._s2, [])
        self._s1 = self._zeros(self.dim)

    def _fold(self) -> None:
        """Leave Gram mode: the centred M₂ from the kept rows (exactly centred, then multiplied)."""
        if self._s2 is not None:
            return
        if self._rows and self.n:
            self._shift, self._s2 = self._centred(self._shift, self.n, self._s1, None, self._rows)
            self._s1 = self._zeros(self.dim)
        else:
            self._s2 = self._zeros(self.dim, self.dim)
        self._rows = []

    def _chan_add(self, n_b: int, mean_b: Any, m2_b: Any) -> None:
        """Pairwise update (Chan, Golub & LeVeque 1979) of the centred state by a block (n_b, x̄_b, M₂ᵇ):

        δ = x̄_b − x̄,  n' = n + n_b,  x̄' = x̄ + δ·n_b/n',  M₂' = M₂ + M₂ᵇ + (n·n_b/n')·δδᵀ
        """
        if self.n == 0:
            self._shift, self._s1, self.n = mean_b, self._zeros(self.dim), n_b
            self._add_to_s2(m2_b)
            return
        n = self.n + n_b
        delta = mean_b - self._shift
        self._shift = self._shift + delta * (n_b / n)
        u = delta * math.sqrt(self.n * n_b / n)
        self._add_to_s2(m2_b)
        self._add_to_s2(u[:, None] * u[None, :])
        self.n = n

    # ---------------------------------------------------------------- update
    def update(self, x: Any) -> CovarianceAccumulator:
        """Add the rows of `x` (samples × dim, any real dtype, any supported backend/device)."""
        x = B.as_array(x)
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise PhasescopeError(
                f"expected samples × {self.dim} (or batch × … × {self.dim}), got shape "
                f"{tuple(x.shape)}; pass a 2-D array whose last axis has length {self.dim}"
            )
        self._adopt(x)
        xp = self._xp
        if x.ndim > 2:
            x = xp.reshape(x, (-1, self.dim))
        with B.precise(xp):
            for start in range(0, x.shape[0], self.chunk_rows):
                self._update_chunk(B.to_float64(xp, x[start : start + self.chunk_rows]))
        return self

    def _update_chunk(self, x: Any) -> None:
        xp = self._xp
        m = k = x.shape[0]
        # A row sum is non-finite iff the row holds NaN/Inf (or overflows): one cheap pass first.
        if not bool(xp.all(xp.isfinite(xp.sum(x, axis=1)))):
            finite = xp.all(xp.isfinite(x), axis=1)
            k = int(xp.sum(xp.astype(finite, xp.int64)))
            self.n_nonfinite += m - k
            x = x[finite]
        if k == 0:
            return
        if self._s2 is None and self.n + k < self.dim:  # Gram mode: keep the shifted rows
            if self._shift is None:
                self._shift, self._s1 = xp.mean(x, axis=0), self._zeros(self.dim)
            c = x - self._shift
            self._s1 = self._s1 + xp.sum(c, axis=0)
            self.n += k
            self._rows.append(c)
            return
        self._fold()
        mean_b = xp.mean(x, axis=0)
        c = x - mean_b  # each block centred on its own mean, then merged pairwise
        if self.precision == "float32":
            c32 = xp.astype(c, xp.float32)
            g = xp.astype(xp.matmul(c32.T, c32), xp.float64)
        else:
            g = xp.matmul(c.T, c)
        self._chan_add(k, mean_b, g)

    # ---------------------------------------------------------------- merge / sync
    def _reshift(self, shift: Any, n: int, s1: Any, s2: Any, rows: list[Any], new: Any) -> tuple:
        """Re-express (S₁, S₂ or rows) about `new` instead of `shift` (exact algebra)."""
        delta = shift - new
        s1n = s1 + n * delta
        if s2 is not None:
            s2 = (
                s2 + delta[:, None] * s1[None, :] + s1[:, None] * delta[None, :] + n * (delta[:, None] * delta[None, :])
            )
        rows = [r + delta for r in rows]
        return s1n, s2, rows

    def _converted(self, a: Any) -> Any:
        if a is None or self._xp is None or B.namespace(a) is self._xp:
            return a
        import numpy as np

        return self._xp.asarray(np.asarray(B.to_numpy(a)), device=self._device)

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Add another accumulator's samples to this one (as if all were fed to one); returns self."""
        if not isinstance(other, CovarianceAccumulator) or other.dim != self.dim:
            raise PhasescopeError(f"can only merge a CovarianceAccumulator of dim {self.dim}, got {other!r}")
        self.n_nonfinite += other.n_nonfinite
        if other.n == 0:
            return self
        if self._xp is None:
            self._xp, self._device = other._xp, other._device
        xp = self._xp
        conv = self._converted
        o_shift, o_s1, o_s2 = conv(other._shift), conv(other._s1), conv(other._s2)
        o_rows = [conv(r) for r in other._rows]
        with B.precise(xp):
            if self.n == 0 and self._s2 is None:
                self._shift, self._s1, self._s2 = _copy(xp, o_shift), _copy(xp, o_s1), _copy(xp, o_s2)
                self._rows = list(o_rows)
                self.n = other.n
                return self
            if self._s2 is None and o_s2 is None and self.n + other.n < self.dim:
                o_s1, _, o_rows = self._reshift(o_shift, other.n, o_s1, None, o_rows, self._shift)
                self._s1 = self._s1 + o_s1
                self.n += other.n
                self._rows.extend(o_rows)
                return self
            self._fold()
            mean_b, m2_b = self._centred(o_shift, other.n, o_s1, o_s2, o_rows)
            self._chan_add(other.n, mean_b, m2_b)
        return self

    def all_reduce(self, group: Any = None) -> CovarianceAccumulator:
        """Sum this state over all ranks of `torch.distributed` (torch state; every rank calls it).

        The ranks first agree on a common shift, the global mean K = Σ_r(S₁ + nK_r)/Σ_r n, move
        their state to it, then all-reduce (SUM) n, S₁, S₂: every rank ends with the one-pass state.
        """
        import torch
        import torch.distributed as dist

        if self._xp is not None and B.namespace(torch.zeros(1)) is not self._xp:
            raise PhasescopeError("all_reduce needs torch state; feed the accumulator torch tensors")
        dev = self._device if self._device is not None else torch.device("cpu")
        if self._xp is None:
            self._xp, self._device = B.namespace(torch.zeros(1)), dev
        self._fold()
        counts = torch.tensor([self.n, self.n_nonfinite], dtype=torch.float64, device=dev)
        dist.all_reduce(counts, group=group)
        total = torch.zeros(self.dim, dtype=torch.float64, device=dev)
        if self.n:
            total = self.n * self._shift  # centred form: S₁ = 0, shift = mean
        dist.all_reduce(total, group=group)
        n_all = int(counts[0].item())
        if n_all == 0:
            self.n_nonfinite = int(counts[1].item())
            return self
        new = total / n_all
        if self.n:
            self._s1, self._s2, _ = self._reshift(self._shift, self.n, self._s1, self._s2, [], new)
        else:
            self._s1 = torch.zeros(self.dim, dtype=torch.float64, device=dev)
        self._shift = new
        s1, s2 = self._s1.clone(), self._s2.clone()
        dist.all_reduce(s1, group=group)
        dist.all_reduce(s2, group=group)
        self._s1, self._s2 = s1, s2
        self.n, self.n_nonfinite = n_all, int(counts[1].item())
        self._normalise()
        return self

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain dict of the state (arrays in the data's backend; `rows` only in Gram mode).

        (n, shift, s1, s2) are shifted sums: states with equal `shift` add field by field;
        `load_state_dict` accepts any shift (it re-centres), `merge`/`all_reduce` align shifts.
        """
        rows = None
        xp = self._xp
        if self._rows:
            rows = xp.concat(self._rows, axis=0) if len(self._rows) > 1 else self._rows[0]

        return {
            "dim": self.dim,
            "n": self.n,
            "n_nonfinite": self.n_nonfinite,
            "raw_singular_values": self.raw_singular_values,
            "precision": self.precision,
            "shift": _copy(xp, self._shift),  # the live state is updated in place: hand out copies
            "s1": _copy(xp, self._s1),
            "s2": _copy(xp, self._s2),
            "rows": _copy(xp, rows) if len(self._rows) == 1 else rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> CovarianceAccumulator:
        if int(state["dim"]) != self.dim:
            raise PhasescopeError(
                f"state is for dim {state['dim']}, this accumulator has dim {self.dim}; build "
                f"CovarianceAccumulator({state['dim']}) instead"
            )
        self.reset()
        self.n, self.n_nonfinite = int(state["n"]), int(state["n_nonfinite"])
        self.raw_singular_values = bool(state.get("raw_singular_values", self.raw_singular_values))
        self.precision = str(state.get("precision", self.precision))
        if state.get("shift") is not None:
            ref = B.as_array(state["shift"])
            self._adopt(ref)
            xp = self._xp
            with B.precise(xp):
                f = lambda a: None if a is None else _copy(xp, B.to_float64(xp, B.as_array(a)))  # noqa: E731
                self._shift, self._s1, self._s2 = f(state["shift"]), f(state["s1"]), f(state.get("s2"))
                rows = f(state.get("rows"))
            self._rows = [rows] if rows is not None and rows.shape[0] else []
            if self._s2 is None and not self._rows and self.n:
                raise PhasescopeError("state has samples but neither s2 nor rows; it is incomplete")
            with B.precise(xp):
                self._normalise()
        return self

    # ---------------------------------------------------------------- compute
    def compute(self) -> Spectrum:
        """Eigen-decompose the current state (state is left unchanged)."""
        d = self.dim
        if self.n == 0:  # nothing (finite) seen: NaN spectrum, on the data's backend if known
            import numpy as np

            def nan() -> Any:
                if self._xp is None:
                    return np.full(d, np.nan)
                with B.precise(self._xp):
                    return self._xp.full((d,), float("nan"), dtype=self._xp.float64, device=self._device)

            return Spectrum(
                nan(), nan() if self.raw_singular_values else None, 0, nan(), self.n_nonfinite, d, self.route
            )
        xp, n = self._xp, self.n
        with B.precise(xp):
            mean = self._shift + self._s1 / n
            sv = None
            if self._s2 is None:
                ev, sv = self._gram_spectrum()
                route = "gram"
            else:
                route = "covariance"
                if n < 2:
                    ev = xp.full((d,), float("nan"), dtype=xp.float64, device=self._device)
                else:
                    m2 = self._s2 - self._s1[:, None] * (self._s1[None, :] / n)
                    cov = (m2 + m2.T) / (2.0 * (n - 1))
                    ev = _descending_psd(xp, xp.linalg.eigvalsh(cov))
                if self.raw_singular_values:
                    k, s1 = self._shift, self._s1
                    xtx = self._s2 + k[:, None] * s1[None, :] + s1[:, None] * k[None, :] + n * (k[:, None] * k[None, :])
                    sv = xp.sqrt(_descending_psd(xp, xp.linalg.eigvalsh((xtx + xtx.T) / 2.0)))
        return Spectrum(ev, sv, n, mean, self.n_nonfinite, d, route)

    def _gram_spectrum(self) -> tuple[Any, Any]:
        xp, n, d = self._xp, self.n, self.dim
        r = xp.concat(self._rows, axis=0) if len(self._rows) > 1 else self._rows[0]
        pad = xp.zeros((d - n,), dtype=xp.float64, device=self._device)
        if n < 2:
            ev = xp.full((d,), float("nan"), dtype=xp.float64, device=self._device)
        else:
            c = r - self._s1 / n
            g = xp.matmul(c, c.T)
            ev = xp.concat([_descending_psd(xp, xp.linalg.eigvalsh((g + g.T) / 2.0)) / (n - 1), pad])
        sv = None
        if self.raw_singular_values:
            raw = r + self._shift
            g = xp.matmul(raw, raw.T)
            sv = xp.concat([xp.sqrt(_descending_psd(xp, xp.linalg.eigvalsh((g + g.T) / 2.0))), pad])
        return ev, sv


def _descending_psd(xp: Any, ascending: Any) -> Any:
    """Ascending eigenvalues of a PSD matrix → descending, round-off negatives set to 0."""
    v = xp.flip(ascending, axis=0)
    return xp.where(v > 0, v, xp.zeros_like(v))


def _copy(xp: Any, a: Any) -> Any:
    """An independent copy (jax arrays are immutable and need none)."""
    if a is None or B.is_jax(xp):
        return a
    return xp.asarray(a, copy=True)
