"""Frechet distance between Gaussians fitted to two feature sets (FD; FID when the features are Inception's).

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

The cross term is computed from symmetric eigendecompositions in float64 (S1^1/2 S2 S1^1/2 is symmetric PSD),
which needs no scipy and never returns the complex parts a general sqrtm of S1 S2 produces.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)

