"""Fixes of the pinned OpenMMLab stack applied when hrnet_mm is imported (:mod:`.compat`)."""
