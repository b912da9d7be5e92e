"""Lets mmengine configs inherit hrnet_mm's configs as ``_base_ = 'hrnet_mm::detection/...py'``.

mmengine 0.10 resolves ``pkg::path`` only for the packages in ``mmengine.config.utils.MODULE2PACKAGE``.
This module is imported at interpreter start-up by the ``hrnet_mm-config-hook.pth`` file that hrnet_mm's
installation puts into site-packages. It imports nothing heavy: it waits until ``mmengine.config.utils`` is
imported and then adds ``'hrnet_mm'`` to that table, so a config file in any repository can inherit the
configs that hrnet_mm ships under ``hrnet_mm/.mim/configs``, with no change to mmengine and without having
imported hrnet_mm first. ``import hrnet_mm`` does the same registration directly.
"""
import importlib.abc
import sys

TARGET = 'mmengine.config.utils'


def register(module) -> None:
    """Adds hrnet_mm to mmengine's table of packages whose configs ``pkg::path`` may name."""
    module.MODULE2PACKAGE.setdefault('hrnet_mm', 'hrnet_mm')


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``mmengine.config.utils`` so :func:`register` runs right after it executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Registers now if mmengine's config utils are already imported, else on their import."""
    if TARGET in sys.modules:
        register(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
