"""Metrics and evaluation commands for lesion segmentation, identification and severity."""
