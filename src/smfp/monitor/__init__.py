"""Monitoring: metrics files, TensorBoard, progress."""

from smfp.monitor.logger import MetricsLogger, TensorBoardSink, read_metrics

__all__ = ["MetricsLogger", "TensorBoardSink", "read_metrics"]
