"""torchmetrics Metrics comparing synthetic with real audio embeddings, per class and pooled."""

from a2vgen.metrics.base import ClassFeatureMetric, PerClassMetric
from a2vgen.metrics.evaluate import evaluate_generators
from a2vgen.metrics.forgetting import forgetting
from a2vgen.metrics.frechet import PooledFrechetDistance
from a2vgen.metrics.per_class import CentroidCosine, DiversityRatio, PerClassKID, PerClassPRDC
from a2vgen.metrics.probe import LinearProbe, SyntheticClassAccuracy, fit_linear_probe

__all__ = [
    "CentroidCosine",
    "ClassFeatureMetric",
    "DiversityRatio",
    "LinearProbe",
    "PerClassKID",
    "PerClassMetric",
    "PerClassPRDC",
    "PooledFrechetDistance",
    "SyntheticClassAccuracy",
    "evaluate_generators",
    "fit_linear_probe",
    "forgetting",
]
