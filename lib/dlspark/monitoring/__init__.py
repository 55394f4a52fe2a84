"""Drift monitoring: PSI/KS statistics, baseline-vs-current comparison, and the HTML report (pure code)."""
from dlspark.monitoring.compare import Sample, compare_samples, drifted, per_class_probabilities
from dlspark.monitoring.drift import Metric, Thresholds, compare_classes, compare_distribution, ks_pvalue, psi

__all__ = ["Metric", "Sample", "Thresholds", "compare_classes", "compare_distribution", "compare_samples", "drifted",
           "ks_pvalue", "per_class_probabilities", "psi"]
