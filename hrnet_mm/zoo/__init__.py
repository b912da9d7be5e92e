"""hrnet_mm's model zoo: the weights table, ``hrnet_mm://`` pretrained names (registered with mmengine's
``CheckpointLoader`` on import) and the checkpoint converters.

See ``docs/model_zoo.md``.
"""
from . import hub  # noqa: F401  (registers the hrnet_mm:// scheme)
from .convert import FORMATS, convert_checkpoint, convert_state_dict
from .hub import fetch, load_entry
from .weights import ZooEntry, get_entry, load_table

__all__ = ['ZooEntry', 'load_table', 'get_entry', 'fetch', 'load_entry', 'convert_state_dict',
           'convert_checkpoint', 'FORMATS']
