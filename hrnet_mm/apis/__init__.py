"""From a name to a ready model: :func:`list_models`, :func:`get_model` and :func:`get_inferencer`."""
from .inferencers import get_inferencer
from .models import ModelNotFoundError, get_model, list_models

__all__ = ['list_models', 'get_model', 'get_inferencer', 'ModelNotFoundError']
