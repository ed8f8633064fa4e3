"""Builds the optional C decoding step (tinytales/_decode.c); everything else is in pyproject.toml.

Without a C compiler (or where the build fails) TinyTales installs all the same and decodes with
its PyTorch step: the extension is optional. OpenMP is used when the compiler has it.
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = (["-fopenmp"], ["-fopenmp"])
OPTIMIZE = ["-O3", "-fno-math-errno"]


class BuildDecodeKernel(build_ext):
    """Try with OpenMP first, then without; a failure of both leaves the PyTorch step."""

    def build_extension(self, ext):
        for compile_args, link_args in (OPENMP, ([], [])):
            ext.extra_compile_args, ext.extra_link_args = OPTIMIZE + compile_args, link_args
            try:
                return super().build_extension(ext)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: try the next flags
                print(f"tinytales: building {ext.name} with {compile_args or 'no OpenMP'} failed: {error}")
        print("tinytales: the C decoding step was not built; decoding uses the PyTorch step")


setup(
    ext_modules=[Extension("tinytales._decode", ["tinytales/_decode.c"], optional=True)],
    cmdclass={"build_ext": BuildDecodeKernel},
)
