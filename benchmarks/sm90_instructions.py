"""Instructions per weight element of the mixing kernels' sm_90 (H100/H200) builds, counted without a GPU: the
figure that says whether the draw of P or memory traffic bounds them (docs/design.md section 6: on an H200,
combine at e = 4 is memory-bound below about 140 instructions per element).

* Triton: combine and scatter (the training dtypes: float32 copies mixed into bfloat16, a bfloat16 gradient
  scattered into float32 copies) built for sm_90, SASS instructions of the kernel (nvdisasm) over the elements one
  thread handles; the fused linear forward as the SASS of the whole GEMM (its first autotuning tile) over the
  weight elements a thread loads per tile: the GEMM's own part is the same at every e, so the growth with e and
  the change between spec versions is the weight-tile load's mixing.
* CUDA: with an extension built with its CUDA kernels (majority_kernels._C), the SASS of each combine / scatter
  instantiation (cuobjdump -sass) over the elements a thread handles per loop iteration. These kernels choose
  vector or element-by-element accesses at run time, so both paths are in the count: an upper bound.

Static counts: every kernel here is straight-line per element for e <= 9 (the generic form for larger e loops, so
its static count understates it, and is marked). Prologue and epilogue are included, a few percent.

    python benchmarks/sm90_instructions.py --output benchmarks/results/sm90-instructions.md
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import triton

from majority_kernels import reference, tuning
from majority_kernels.triton_kernels import combine, linear, scatter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm90_builds import build, linear_constants, linear_signature, write_report  # noqa: E402

EXPANSIONS = (2, 4, 8, 16)
# The default elements per program (the tuned value of a GPU may differ; per element, the draw costs the same).
_BLOCK = tuning.DEFAULTS.combine_block
_TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# One SASS instruction per line of nvdisasm / cuobjdump: "/*0a40*/  FFMA R3, R2, R5, R3 ;"
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+[A-Z@!]")


def sass_count(cubin: bytes) -> int:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run(
            [os.path.join(_TOOLS, "nvdisasm"), file.name], capture_output=True, text=True, check=True
        ).stdout
    # NOPs pad the end of the function; they never run.
    return sum(1 for line in listing.splitlines() if _INSTRUCTION.search(line) and "NOP" not in line)


def _elementwise(kernel, signature: dict, expansion: int, extra: dict) -> int:
    built = build(
        kernel,
        signature,
        {"EXPANSION": expansion, "MATH64": False, "BLOCK": _BLOCK, **extra},
        num_warps=combine.NUM_WARPS,
        divisible=("numel",),
    )
    return sass_count(built.asm["cubin"])


def elementwise_instructions(expansion: int) -> tuple:
    """(combine, scatter): SASS instructions per element of the Triton builds, training dtypes, vector path."""
    per_thread = _BLOCK // (32 * combine.NUM_WARPS)
    pointers = {"seed_ptr": "*i64", "offset": "i64", "numel": "i32"}
    combined = _elementwise(
        combine.combine_kernel, {"weight_ptr": "*fp32", "out_ptr": "*bf16", **pointers}, expansion, {}
    )
    scattered = _elementwise(
        scatter.scatter_kernel,
        {"grad_ptr": "*bf16", "out_ptr": "*fp32", **pointers},
        expansion,
        {"MODE": 0, "HAS_GRAD": True},
    )
    return combined / per_thread, scattered / per_thread


def triton_rows() -> list:
    rows = []
    for expansion in EXPANSIONS:
        combined, scattered = elementwise_instructions(expansion)
        rows.append(("triton", "combine fp32 -> bf16", expansion, combined))
        rows.append(("triton", "scatter bf16 -> fp32", expansion, scattered))
    # The fused linear forward: its first autotuning configuration, bf16 activations over float32 copies.
    config = linear.mixed_matmul_kernel.configs[0]
    tile = config.kwargs
    weights_per_thread = tile["BLOCK_P"] * tile["BLOCK_Q"] // (32 * config.num_warps)

    def linear_count(expansion: int) -> int:
        built = build(
            linear.mixed_matmul_kernel,
            linear_signature("bf16", "fp32"),
            linear_constants(False, "ieee", tile, expansion),
            config.num_warps,
            config.num_stages,
            divisible=("P", "Q", "stride_aq", "stride_wq", "copy_stride"),
        )
        return sass_count(built.asm["cubin"])

    for expansion in (1, *EXPANSIONS):
        rows.append(
            (
                "triton",
                f"linear GEMM, weight tile {tile['BLOCK_P']}x{tile['BLOCK_Q']} (whole kernel)",
                expansion,
                linear_count(expansion) / weights_per_thread,
            )
        )
    return rows


# combine_kernel<E, in_t, out_t> and scatter_kernel<E, grad_t, out_t> as c++filt prints them.
_CUDA_KERNEL = re.compile(r"(combine|scatter)_kernel<(\d+), ([\w:]+), ([\w:]+)>")
_ELEMENT_BYTES = {"float": 4, "double": 8, "c10::BFloat16": 2, "c10::Half": 2}


def installed_cuda_library():
    """The installed extension's path if it has the CUDA kernels, else None."""
    from majority_kernels import ops

    return importlib.util.find_spec("majority_kernels._C").origin if ops.HAS_CUDA_KERNELS else None


def cuda_rows(library) -> list:
    """Rows for the CUDA kernels in the extension library at `library` (None: no rows)."""
    if library is None:
        return []
    listing = subprocess.run(
        [os.path.join(_TOOLS, "cuobjdump"), "-sass", "-arch", "sm_90", library],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    demangled = subprocess.run(["c++filt"], input=listing, capture_output=True, text=True, check=True).stdout
    counts, current = {}, None
    for line in demangled.splitlines():
        if "Function :" in line:
            match = _CUDA_KERNEL.search(line)
            current = match.groups() if match else None
            if current:
                counts[current] = 0
        elif current and _INSTRUCTION.search(line) and "NOP" not in line:
            counts[current] += 1
    rows = []
    wanted = {("combine", "float", "c10::BFloat16"), ("scatter", "c10::BFloat16", "float")}
    for (op, fixed, first, second), count in sorted(counts.items(), key=lambda item: (item[0][0], int(item[0][1]))):
        if (op, first, second) not in wanted:
            continue
        # A thread handles one pack of 16 bytes of the copies' dtype per loop iteration.
        per_thread = 16 // _ELEMENT_BYTES["float"]
        expansion = int(fixed)
        label = f"{op} {'fp32 -> bf16' if op == 'combine' else 'bf16 -> fp32'}"
        rows.append(
            (
                "cuda",
                label if expansion else label + " (generic build: loops, e >= 10)",
                expansion or "≥10",
                count / per_thread,
            )
        )
    return rows


def markdown(rows: list) -> str:
    lines = [
        f"# Instructions per weight element, sm_90 builds (spec {reference.SPEC_VERSION}, Triton "
        f"{triton.__version__}, no GPU)",
        "",
        "`python benchmarks/sm90_instructions.py`: static SASS instruction counts over the elements one thread "
        "handles (see the script's docstring). Memory-bound on an H200 below about 140 at e = 4 (combine, "
        "docs/design.md section 6). The CUDA kernels decide between 16-byte vector and element-by-element "
        "accesses at run time, so their static count holds both paths and overstates what one element "
        "executes.",
        "",
        "| backend | kernel | e | SASS instructions / element |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {backend} | {kernel} | {expansion} | {value:.1f} |" for backend, kernel, expansion, value in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="Markdown file to write (default: standard output)")
    parser.add_argument(
        "--cuda-library",
        help="an extension library built with the CUDA kernels to count (default: the installed one, if it has them)",
    )
    args = parser.parse_args()
    write_report(markdown(triton_rows() + cuda_rows(args.cuda_library or installed_cuda_library())), args.output)


if __name__ == "__main__":
    main()
