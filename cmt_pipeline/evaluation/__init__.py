"""Evaluation: feature networks (digits CNN, FID Inception-v3), Frechet distance, paired and exact-ground-truth
errors, and `evaluate(cfg)` which runs whichever apply to a generator (see sampling.py for the generator seam)."""

from .features import DigitsFD, load_classifier, real_digits
from .frechet import feature_stats, frechet_distance
from .inception import FIDInceptionV3, inception_features, load_inception
from .metrics import exact_flow_map, gmm_metrics, mse_psnr, paired_error, sliced_wasserstein
from .run import evaluate

__all__ = ["DigitsFD", "load_classifier", "real_digits", "feature_stats", "frechet_distance", "FIDInceptionV3",
           "inception_features", "load_inception", "exact_flow_map", "gmm_metrics", "mse_psnr", "paired_error", "sliced_wasserstein", "evaluate"]
