"""Setuptools entry point; the metadata lives in setup.cfg.

Besides the package, the wheel carries ``hrnet-mm-config-hook.pth`` at the root of site-packages: it imports
the tiny ``_hrnet_mm_config_hook`` module at start-up, which lets mmengine configs anywhere inherit
``hrnet_mm::<task>/<config>.py`` (see that module).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = 'hrnet_mm-config-hook.pth'


class BuildPyWithPth(build_py):
    """Copies the start-up .pth file next to the packages, i.e. to the root of site-packages."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copy(os.path.join(here, PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={'build_py': BuildPyWithPth})
