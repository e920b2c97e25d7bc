"""Kernel distance (KID; Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared
maximum mean discrepancy with the polynomial kernel k(x, y) = (x . y / d + 1)^3.

Why beside FD: FD's estimate is biased upward by an amount that shrinks with the sample counts, so it can only
be judged against a floor measured at the same counts; KID's estimate is unbiased at any count, so two samples
of one distribution score about 0 whether they hold 900 or 5000 points, and the 1797-digit reference set is no
handicap. The estimate runs over all pairs, in row blocks (memory O(block * N)): at these sizes that costs less
than the usual mean over 100 random subsets of 1000 (about 1 s for 5000 x 1797 64-d features) and has no
subset noise.
"""

from __future__ import annotations

import numpy as np


def kernel_sum(a: np.ndarray, b: np.ndarray, block: int = 2048) -> float:
    """Sum of k(a_i, b_j) over all pairs."""
    d = a.shape[1]
    return sum(float(((a[i:i + block] @ b.T / d + 1) ** 3).sum()) for i in range(0, len(a), block))


def kernel_distance(x, y) -> float:
    """Unbiased MMD^2 between (m, d) and (n, d) feature sets, float64: the within-set kernel means leave out
    the diagonal (each point paired with itself)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]
    if min(m, n) < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {m} and {n}")
    diagonal = lambda a: float((((a * a).sum(1) / d + 1) ** 3).sum())  # noqa: E731
    return ((kernel_sum(x, x) - diagonal(x)) / (m * (m - 1)) + (kernel_sum(y, y) - diagonal(y)) / (n * (n - 1))
            - 2 * kernel_sum(x, y) / (m * n))
