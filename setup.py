"""Build of majority-kernels: the C++ extension `majority_kernels._C` (CPU kernels always; CUDA kernels when a
CUDA build of torch and a CUDA toolkit are there), or a pure-Python install with MK_BUILD_EXT=0.

Environment switches:
  MK_BUILD_EXT=0   no extension at all (only the `reference` backend works)
  MK_SKIP_CUDA=1   CPU extension only, even where CUDA could be built
  FORCE_CUDA=1     build the CUDA kernels even where torch reports no CUDA toolkit (fails loudly if it can't)
"""

import glob
import os
import sys

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _extensions():
    if os.environ.get("MK_BUILD_EXT", "1").strip() == "0":
        print("majority-kernels: MK_BUILD_EXT=0, installing without the C++ extension", file=sys.stderr)
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    include_dirs = [os.path.abspath("csrc/include")]
    # -fno-math-errno and -fno-trapping-math (nothing here reads errno or the floating-point exception flags) let
    # the compiler vectorise the kernels' loops: selects around divisions, calls it may turn into instructions.
    # The C++ standard is left to torch.utils.cpp_extension: it picks the one its headers need (C++20 from 2.14).
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    link_flags = []
    # at::parallel_for is inlined from torch's headers: with torch's OpenMP backend it is a `#pragma omp` region,
    # which runs on one thread unless the extension is compiled with OpenMP too (GCC on Linux, like torch's wheels).
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    want_cuda = cuda_sources and not _flag("MK_SKIP_CUDA") and (
        _flag("FORCE_CUDA") or (cpp_extension.CUDA_HOME is not None and torch.version.cuda)
    )
    if want_cuda:
        extension = cpp_extension.CUDAExtension(
            "majority_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=link_flags,
        )
    else:
        extension = cpp_extension.CppExtension(
            "majority_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    return [extension], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
