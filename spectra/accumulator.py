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

Products (issue 18). Each block of rows is shifted by K, a value exactly representable in the block's
working dtype, before its co-moment cᵀc is formed: c = x − K is then the correctly rounded difference,
as accurate as centring in float64 and casting, even when the mean is 1e4× the spread. With
`precision="auto"` (the default) the products follow the input: float64 data get float64 products;
float32 (and float16/bfloat16) data get float32 products (BLAS syrk on the CPU, half a GEMM's work),
summed into the float64 state. `precision="float64"` forces float64 products, `"float32"` float32
ones, `"tf32"` allows TensorFloat-32 products on CUDA (see docs/cost.md for its measured error).
The spectrum carries the products' ε (`Spectrum.products_eps`): eigenvalues at or below
max(d·ε_float64, ε_products)·λ₁ count as zero in the numerical rank and α's fit, so an exact zero
(LayerNorm's mean direction, measured at 1e-10 to 2e-8·λ₁ with float32 products) stays one.
The shift is kept while blocks stay near it (every coordinate's block mean within half its block
standard deviation of K), so a stationary stream costs one d × d addition per block; a block that has
drifted is centred on its own mean and merged by the pairwise update below instead.

While fewer samples than dimensions have been seen, the shifted rows themselves are kept (n·d < d²
numbers) and `compute` uses the dual N × N Gram route: the nonzero eigenvalues of XcᵀXc equal those
of XcXcᵀ, at O(N²d + N³) instead of O(Nd² + d³).
"""

from __future__ import annotations

import math
from typing import Any

from phasescope.errors import PhasescopeError

from . import _backend as B
from .metrics import _EPS64
from .summary import Spectrum

PRECISIONS = ("auto", "float64", "float32", "tf32")
#: machine ε of the products' arithmetic: float64, float32, and TF32 (10 explicit mantissa bits)
EPS = {64: _EPS64, 32: 2.0**-23, "tf32": 2.0**-10}
#: a block is added about the kept shift K while (x̄_b − K)² ≤ DRIFT · var_b in every coordinate
DRIFT = 0.25


class CovarianceAccumulator:
    """Streaming, mergeable covariance of samples × dim activations (see the module docstring).

    acc = CovarianceAccumulator(1024); acc.update(x1); acc.update(x2); spec = acc.compute()

    Rows holding NaN or Inf are dropped and counted (`Spectrum.n_nonfinite`). Inputs with more
    than two dimensions, e.g. (batch, seq, dim), are flattened to (batch·seq, dim).
    `chunk_elements` bounds the float64 working copy of a batch (rows are processed in chunks).

    `precision` (see the module docstring): "auto" (default) forms each block's co-moment in the
    input's precision — float32 data get float32 products summed in float64, whose eigenvalues carry
    at most ~ε_32·λ₁ absolute error (ample for RankMe/α and the leading eigenvalues; eigenvalues below
    2^-23·λ₁ count as zero) at ~1.6× the speed on CPUs; "float64" forms every product in float64,
    exact to round-off; "float32" forces float32 products, "tf32" TensorFloat-32 ones on CUDA. With
    `raw_singular_values`, "auto" means float64 products (σ = √eig(XᵀX) resolves only √ε·σ₁).
    """

    def __init__(
        self,
        dim: int,
        raw_singular_values: bool = False,
        *,
        chunk_elements: int = 1 << 22,
        precision: str = "auto",
    ):
        if int(dim) != dim or dim < 1:
            raise PhasescopeError(f"dim must be a positive integer, got {dim!r}")
        if precision not in PRECISIONS:
            raise PhasescopeError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
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
        self._rows_in: Any = None  # the widest working dtype of the rows kept in Gram mode
        self._exact_in: Any = None  # the dtype the shift is exactly representable in (None: unknown)
        self.n_recentred = 0  # blocks that had drifted from the shift and were centred on their own mean
        # Covariance mode gathers small batches into blocks of ~chunk_rows rows before their product
        # (syrk runs ~1.4× faster on 4,096 rows than on 4 × 1,024); `n` counts the pending rows too.
        self._pending: list[Any] = []
        self._pending_n = 0
        #: machine ε of the widest-error products formed so far (float64's unless a block's co-moment was
        #: formed in float32 or TF32): sets the round-off floor of the eigenvalues (`Spectrum.products_eps`)
        self.products_eps = EPS[64]

    @property
    def _products(self) -> str:
        """The products' precision rule: raw singular values come from eig(XᵀX), which resolves σ only
        down to √ε·σ₁ of the products' ε (3e-4·σ₁ in float32), so asking for them makes "auto" float64."""
        return "float64" if self.precision == "auto" and self.raw_singular_values else self.precision

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
        self._flush()
        if self._s2 is None or self.n == 0:
            return
        self._shift, self._s2 = self._centred(self._shift, self.n, self._s1, self._s2, [])
        self._s1 = self._zeros(self.dim)
        self._exact_in = None

    def _fold(self) -> None:
        """Leave Gram mode: the centred M₂ from the kept rows (exactly centred, then multiplied); rows
        that all came in float32 go through the block path instead (float32 products, as they would
        have had in covariance mode: they are recovered exactly from the float64 shifted copies)."""
        if self._s2 is not None:
            return
        xp = self._xp
        if self._rows and self.n and self._rows_in is not None and self._rows_in != xp.float64:
            r = xp.concat(self._rows, axis=0) if len(self._rows) > 1 else self._rows[0]
            rows = xp.astype(r + self._shift, self._rows_in)  # c + K rounds back to the float32 rows given
            self.n, self._rows, self._shift = 0, [], None
            self._s2 = self._zeros(self.dim, self.dim)
            self._add_block(rows)
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
        self._exact_in = None
        if self.n == 0:
            self._shift, self._s1, self.n = mean_b, self._zeros(self.dim), n_b
            self._add_to_s2(m2_b)
            return
        self._normalise()
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
            wd = B.work_dtype(xp, x, self._products)
            for start in range(0, x.shape[0], self.chunk_rows):
                block = x[start : start + self.chunk_rows]
                self._update_chunk(block if block.dtype == wd else xp.astype(block, wd))
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
        if self._s2 is None and self.n + k < self.dim:  # Gram mode: keep the shifted rows (float64)
            # (`is None`, not `in (None, …)`: numpy's dtype == None compares with float64)
            self._rows_in = x.dtype if self._rows_in is None or self._rows_in == x.dtype else xp.float64
            x = B.to_float64(xp, x)
            if self._shift is None:
                self._shift, self._s1 = xp.mean(x, axis=0), self._zeros(self.dim)
            c = x - self._shift
            self._s1 = self._s1 + xp.sum(c, axis=0)
            self.n += k
            self._rows.append(c)
            return
        self._fold()
        if self._pending_n and (self._pending_n + k > self.chunk_rows or self._pending[0].dtype != x.dtype):
            self._flush()
        if k >= self.chunk_rows:
            self._add_block(x)
            return
        # Pending rows: copied (the caller may reuse its array before the flush) into one block buffer
        # (numpy, torch), or kept in a list (jax arrays are immutable).
        if B.is_jax(xp):
            self._pending.append(x)
        else:
            buf = self._pending[0] if self._pending else None
            if buf is None or buf.dtype != x.dtype:
                buf = xp.empty((self.chunk_rows, self.dim), dtype=x.dtype, device=self._device)
                self._pending = [buf]
            buf[self._pending_n : self._pending_n + k] = x
        self._pending_n += k
        self.n += k
        if self._pending_n == self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        """Add the pending rows to the state (before anything reads or moves it)."""
        if not self._pending_n:
            return
        xp, k = self._xp, self._pending_n
        if B.is_jax(xp):
            rows = xp.concat(self._pending, axis=0) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
        else:
            rows = self._pending[0][:k]  # the buffer is kept for the next rows
        self.n -= k
        self._pending_n = 0
        with B.precise(xp):
            self._add_block(rows)

    def _add_block(self, x: Any) -> None:
        """Add finite rows (covariance mode) about the kept shift, or centred on their own mean if they
        have drifted from it (see the module docstring)."""
        xp = self._xp
        k = x.shape[0]
        if self.n == 0:  # the first block's mean, rounded to the working dtype, is the shift
            self._shift = xp.astype(xp.astype(xp.sum(x, axis=0, dtype=xp.float64) / k, x.dtype), xp.float64)
            self._s1 = self._zeros(self.dim)
            self._exact_in = x.dtype
        elif self._exact_in != x.dtype:  # re-express the state about a shift exact in this dtype
            new = xp.astype(xp.astype(self._shift, x.dtype), xp.float64)
            self._s1, self._s2, _ = self._reshift(self._shift, self.n, self._s1, self._s2, [], new)
            self._shift, self._exact_in = new, x.dtype
        s1, g = self._comoment(x, xp.astype(self._shift, x.dtype))
        r = s1 / k
        var = B.to_float64(xp, xp.linalg.diagonal(g)) / k - r * r
        if bool(xp.all(r * r <= DRIFT * var)):  # near the shift: a plain sum about it
            self._s1 = self._s1 + s1
            self._add_to_s2(g)
            self.n += k
            return
        # The block has drifted from the shift: centre it on its own mean and merge it pairwise.
        self.n_recentred += 1
        own = xp.astype(r, x.dtype) + xp.astype(self._shift, x.dtype)
        s1, g = self._comoment(x, own)
        self._chan_add(k, xp.astype(own, xp.float64) + s1 / k, B.to_float64(xp, g) - s1[:, None] * (s1[None, :] / k))

    def _comoment(self, x: Any, shift: Any) -> tuple[Any, Any]:
        """(Σc in float64, cᵀc in the product dtype) of c = x − shift (`shift` exact in x's dtype)."""
        xp = self._xp
        c = x - shift
        s1 = xp.sum(c, axis=0, dtype=xp.float64)
        if self.precision in ("float32", "tf32") and c.dtype != xp.float32:
            c = xp.astype(c, xp.float32)
        if c.dtype == xp.float32:
            tf32 = self.precision == "tf32" and B.is_cuda(c)
            self.products_eps = max(self.products_eps, EPS["tf32"] if tf32 else EPS[32])
        return s1, B.gram(xp, c, tf32=self.precision == "tf32")

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
        self._flush()
        other._flush()
        self.n_nonfinite += other.n_nonfinite
        self.products_eps = max(self.products_eps, other.products_eps)
        if other.n == 0:
            return self
        self._exact_in = None
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
                self._rows_in = other._rows_in
                self.n = other.n
                return self
            if self._s2 is None and o_s2 is None and self.n + other.n < self.dim:
                o_s1, _, o_rows = self._reshift(o_shift, other.n, o_s1, None, o_rows, self._shift)
                self._s1 = self._s1 + o_s1
                self.n += other.n
                self._rows.extend(o_rows)
                if other._rows_in != self._rows_in:  # rows of mixed origins fold in float64
                    self._rows_in = xp.float64
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
        self._flush()
        self._fold()
        counts = torch.tensor([self.n, self.n_nonfinite], dtype=torch.float64, device=dev)
        dist.all_reduce(counts, group=group)
        eps = torch.tensor([self.products_eps], dtype=torch.float64, device=dev)
        dist.all_reduce(eps, op=dist.ReduceOp.MAX, group=group)
        self.products_eps = float(eps.item())
        total = torch.zeros(self.dim, dtype=torch.float64, device=dev)
        if self.n:
            total = self.n * self._shift + self._s1  # Σx = n·K + S₁
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
        self._flush()
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
            "products_eps": self.products_eps,
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
        # a state saved before products_eps was kept: float32 products unless float64 ones were forced
        self.products_eps = float(state.get("products_eps", EPS[64] if self.precision == "float64" else EPS[32]))
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
        self._flush()
        d = self.dim
        if self.n == 0:  # nothing (finite) seen: NaN spectrum, on the data's backend if known
            import numpy as np

            def nan() -> Any:
                if self._xp is None:
                    return np.full(d, np.nan)
                with B.precise(self._xp):
                    return self._xp.full((d,), float("nan"), dtype=self._xp.float64, device=self._device)

            return Spectrum(
                nan(),
                nan() if self.raw_singular_values else None,
                0,
                nan(),
                self.n_nonfinite,
                d,
                self.route,
                self.products_eps,
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
                    # eigvalsh reads one triangle (numpy, torch: the lower; jax symmetrises): no (M + Mᵀ)/2
                    ev = _descending_psd(xp, xp.linalg.eigvalsh(m2)) / (n - 1)
                if self.raw_singular_values:
                    k, s1 = self._shift, self._s1
                    xtx = self._s2 + k[:, None] * s1[None, :] + s1[:, None] * k[None, :] + n * (k[:, None] * k[None, :])
                    sv = xp.sqrt(_descending_psd(xp, xp.linalg.eigvalsh((xtx + xtx.T) / 2.0)))
        return Spectrum(ev, sv, n, mean, self.n_nonfinite, d, route, self.products_eps)

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
