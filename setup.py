"""Build of majority-kernels: the C++ extension `majority_kernels._C` (CPU kernels always; CUDA kernels when a
CUDA build of torch and a CUDA toolkit are there), or a pure-Python install with MK_BUILD_EXT=0.

Environment switches:
  MK_BUILD_EXT=0   no extension at all (only the `reference` backend works)
  MK_SKIP_CUDA=1   CPU extension only, even where CUDA could be built
  FORCE_CUDA=1     build the CUDA kernels even where torch reports no CUDA toolkit (fails loudly if it can't)
  CUDA_HOME        the CUDA toolkit; unset, the one of the `nvcc` on PATH (asked from nvcc itself)
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for; unset, DEFAULT_CUDA_ARCHS
  MAX_JOBS         parallel compile jobs (torch's BuildExtension reads it; needs ninja)
No GPU is needed to build the CUDA kernels: only a CUDA build of torch and nvcc.
"""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from typing import Iterable, Optional

from setuptools import setup

# Ampere and Hopper binaries, plus Hopper PTX that the driver compiles for newer GPUs at load time.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set, else DEFAULT_CUDA_ARCHS. (Unset, torch would compile for the visible GPUs
    only, and fails on a builder without one.)"""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_CUDA_ARCHS


def nvcc_toolkit_root(nvcc: Optional[str] = None) -> Optional[str]:
    """The toolkit root of `nvcc` (default: the one on PATH) as nvcc reports it (TOP in its dry run), or None.
    Right also where nvcc is a wrapper script outside the toolkit (/usr/local/bin/nvcc), where torch's own guess,
    the folder above nvcc's, is not the toolkit."""
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        run = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line.split("=", 1)[1].strip())
    return None


def pip_cuda_include_dirs(roots: Optional[Iterable[str]] = None) -> list:
    """The include folders of CUDA libraries installed from pip (`roots`: the `nvidia` namespace package's folders;
    cu13 wheels put every header in nvidia/cu13/include, older ones in nvidia/<library>/include). torch's CUDA
    headers include cuBLAS, cuSPARSE and cuSOLVER headers that a toolkit with only nvcc and the runtime lacks."""
    if roots is None:
        spec = importlib.util.find_spec("nvidia")
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(
        path for root in roots for path in glob.glob(os.path.join(root, "*", "include")) if os.path.isdir(path)
    )


def _extensions():
    if os.environ.get("MK_BUILD_EXT", "1").strip() == "0":
        print("majority-kernels: MK_BUILD_EXT=0, installing without the C++ extension", file=sys.stderr)
        return [], {}
    import torch

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    might_build_cuda = cuda_sources and not _flag("MK_SKIP_CUDA") and (_flag("FORCE_CUDA") or torch.version.cuda)
    # Before torch.utils.cpp_extension is imported: it reads CUDA_HOME when it loads.
    if might_build_cuda and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        root = nvcc_toolkit_root()
        if root is not None:
            os.environ["CUDA_HOME"] = root
    from torch.utils import cpp_extension

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
    want_cuda = might_build_cuda and (_flag("FORCE_CUDA") or cpp_extension.CUDA_HOME is not None)
    if want_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        print(
            f"majority-kernels: building the CUDA kernels with CUDA_HOME={cpp_extension.CUDA_HOME} for "
            f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}",
            file=sys.stderr,
        )
        # The toolkit's headers first, then the pip-installed ones as a fallback for what the toolkit lacks.
        include_dirs += cpp_extension.include_paths("cuda") + pip_cuda_include_dirs()
        extension = cpp_extension.CUDAExtension(
            "majority_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            # No --use_fast_math: it flushes denormals to zero, and the products P_k * w must round as on the other
            # backends.
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
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


if __name__ == "__main__":  # also under pip's build backends; importing this file (tests) builds nothing
    ext_modules, cmdclass = _extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
