"""Synthetic datasets in the real on-disk formats (demo data and end-to-end tests)."""
from .synthetic import DET_CLASSES, make_coco_detection

__all__ = ['DET_CLASSES', 'make_coco_detection']
