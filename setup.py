"""The compiled part of the package: mvmic.model._table_coder (mvmic/model/table_coder.c), the lossy layer's kernels.

Everything else is declared in pyproject.toml. -ffp-contract=off keeps the compiler from fusing a
multiply and an add, so the wavelet's float64 results equal mvmic.model.lifting's bit for bit.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mvmic.model._table_coder", ["mvmic/model/table_coder.c"],
                             extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-Wall"])])
