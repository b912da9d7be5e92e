"""Utilities of hrnet_mm."""
from .flops import count_macs, count_params
from .paper_models import build_paper_model

__all__ = ['count_macs', 'count_params', 'build_paper_model']
