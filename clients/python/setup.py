"""Builds the package and generates the zoetrope.v1 stubs from the repository's proto/ into it.

The proto folder is $ZOETROPE_PROTO_DIR, else ../../proto beside this file (the repository layout).
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        # Loaded by path: importing the package would import the stubs it is about to generate.
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        spec = importlib.util.spec_from_file_location("zoetrope_stubs", os.path.join(here, "zoetrope_client", "stubs.py"))
        stubs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stubs)
        stubs.generate(self.build_lib)


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildWithStubs})
