"""Monitoring: metrics files, TensorBoard, progress."""

from smfp.monitor.logger import MetricsLogger, read_metrics

__all__ = ["MetricsLogger", "read_metrics"]
