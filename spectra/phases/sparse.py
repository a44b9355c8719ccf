"""Phases of sparse trajectories (offline sweeps of 4–8 checkpoints): cut where RankMe turns.

The change-point search needs MIN_CAPTURES captures per piece, so it cannot cut a trajectory of fewer
than 3·MIN_CAPTURES captures twice; :func:`sparse_spans` cuts such trajectories at RankMe's turns.
"""

from __future__ import annotations

import numpy as np

from .rules import MIN_CAPTURES


def sparse_spans(spans: list[tuple[int, int]], lr: np.ndarray, tol: float) -> list[tuple[int, int]]:
    """Phases of a sparse trajectory: cut at RankMe's turns (:func:`split_turns`) first; inside each
    turn-free stretch keep the change-point cuts that leave MIN_CAPTURES captures on both sides."""
    n = len(lr)
    cuts = sorted({s_ for s_, _ in spans if s_ > 0})
    out = []
    for s, e in split_turns([(0, n)], lr, tol):
        start = s
        for c in cuts:
            if start < c < e and c - start + 1 >= MIN_CAPTURES and (e - c + (1 if e < n else 0)) >= MIN_CAPTURES:
                out.append((start, c))
                start = c
        out.append((start, e))
    return out


def split_turns(spans: list[tuple[int, int]], lr: np.ndarray, tol: float) -> list[tuple[int, int]]:
    """Cut phases where RankMe turns: at the interior capture k of RankMe's extreme over the phase's
    closed captures [s, e], when it falls (rises) by at least ``tol`` to k and rises (falls) by at least
    ``tol`` after it; else where it bends (moves by ``tol`` on one side of k, less than ``tol``/2 on the
    other, MIN_CAPTURES captures each). For sparse trajectories, which PELT cannot cut well (it needs
    MIN_CAPTURES per piece)."""
    n = len(lr)
    out = list(spans)
    changed = True
    while changed:
        changed = False
        for i, (s, e) in enumerate(out):
            last = min(e, n - 1)
            if last - s < 2:
                continue
            inner = lr[s + 1 : last]
            best = None
            for k, sign in ((s + 1 + int(np.argmin(inner)), -1), (s + 1 + int(np.argmax(inner)), +1)):
                d1, d2 = lr[k] - lr[s], lr[last] - lr[k]  # a minimum: d1 < 0 < d2; a maximum: d1 > 0 > d2
                if sign * d1 >= tol and -sign * d2 >= tol:
                    turn = min(abs(d1), abs(d2))
                    if best is None or turn > best[0]:
                        best = (turn, k)
            if best is None:
                # a bend: RankMe moves by at least tol to k and stays within tol/2 after it (or the
                # reverse), with MIN_CAPTURES captures on both sides (a rise that ends in a plateau)
                for k in range(s + MIN_CAPTURES - 1, last - MIN_CAPTURES + 2):
                    d1, d2 = lr[k] - lr[s], lr[last] - lr[k]
                    if (abs(d1) >= tol and abs(d2) < tol / 2) or (abs(d2) >= tol and abs(d1) < tol / 2):
                        turn = abs(abs(d1) - abs(d2))
                        if best is None or turn > best[0]:
                            best = (turn, k)
            if best is not None:
                k = best[1]
                out[i : i + 1] = [(s, k), (k, e)]
                changed = True
                break
    return out
