"""hrnet_mm's command line: the ``hrnet-mm`` command (:mod:`.main`), the environment report (:mod:`.env`), the
demo (:mod:`.demo`) and the helpers that ``tools/`` share (:mod:`.tool_utils`)."""
from .main import main

__all__ = ['main']
