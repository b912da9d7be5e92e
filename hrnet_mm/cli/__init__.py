"""hrnet_mm's command line: the ``hrnet-mm`` command (:mod:`.main`), the environment report (:mod:`.env`), the
demo (:mod:`.demo`) and what ``tools/`` share: dataset checks (:mod:`.dataset_checks`), checkpoint checks
(:mod:`.checkpoint_checks`), one-line errors (:mod:`.errors`) and quiet consoles (:mod:`.console`)."""
from .main import main

__all__ = ['main']
