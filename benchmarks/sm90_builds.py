"""The Triton GEMM kernels built for sm_90 (H100/H200) without a GPU: per autotuning configuration, the registers
and spill stores ptxas reports, the shared memory of the build, and triton_kernels.tiling.shared_bytes's estimate
of it (what the autotuner prunes configurations by). Data for choosing tile shapes on a machine with no GPU.

    python benchmarks/sm90_builds.py --output benchmarks/results/sm90-builds.md

tests/test_triton.py builds the kernels through `build` below too.
"""

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compiler

from majority_kernels.triton_kernels import conv, linear, tiling, weight_grad

SM90_SHARED_LIMIT = 227 * 1024  # bytes one program may use on sm_90


def build(kernel, signature: dict, constants: dict, num_warps: int = 4, num_stages: int = 3, divisible: tuple = ()):
    """kernel (a JIT function or an autotuner around one) compiled for sm_90: `signature` maps the runtime
    arguments to Triton types (pointers are taken as 16-byte aligned), `constants` the constexpr ones to values,
    `divisible` names integer arguments taken as multiples of 16 (Triton's launcher specializes on that)."""
    fn = kernel
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    pointers = [name for name, kind in signature.items() if kind.startswith("*")]
    aligned = [fn.arg_names.index(name) for name in [*pointers, *divisible]]
    if "constexprs" in inspect.signature(ASTSource).parameters:
        source = ASTSource(
            fn,
            {**signature, **dict.fromkeys(constants, "constexpr")},
            constants,
            {(index,): [["tt.divisibility", 16]] for index in aligned},
        )
    else:  # Triton 3.0's form: arguments by position, alignment in an AttrsDescriptor
        source = ASTSource(
            fn,
            {fn.arg_names.index(name): kind for name, kind in signature.items()},
            constants,
            compiler.AttrsDescriptor(divisible_by_16=set(aligned)),
        )
    return triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def _signature(pointers: dict[str, str], ints: str) -> dict:
    """A kernel's argument types: its data pointers, the seed pointer and the 64-bit offset, then its 32-bit ints."""
    return {**pointers, "seed_ptr": "*i64", "offset": "i64", **dict.fromkeys(ints.split(), "i32")}


def _constants(math64: bool, precision: str, tile: dict, expansion: int, **own) -> dict:
    """The constexprs of every fused GEMM (no 16-bit upcast), the kernel's own, then the tile."""
    return {
        "EXPANSION": expansion,
        "MATH64": math64,
        "UPCAST_16BIT": False,
        "INPUT_PRECISION": precision,
        **own,
        **tile,
    }


def linear_signature(act: str, weight: str) -> dict:
    return _signature(
        {"a_ptr": f"*{act}", "weight_ptr": f"*{weight}", "bias_ptr": f"*{act}", "c_ptr": f"*{act}"},
        "M P Q stride_am stride_aq stride_cm stride_cp stride_wq stride_wp copy_stride M_BUCKET",
    )


def linear_constants(math64: bool, precision: str, tile: dict, expansion: int = 4) -> dict:
    return _constants(math64, precision, tile, expansion, HAS_BIAS=True)


def weight_grad_signature(act: str, weight: str) -> dict:
    return _signature(
        {"grad_ptr": f"*{act}", "x_ptr": f"*{act}", "out_ptr": f"*{weight}"},
        "M N K stride_gm stride_gn stride_xm stride_xk M_BUCKET",
    )


def weight_grad_constants(math64: bool, precision: str, tile: dict, expansion: int = 4) -> dict:
    return _constants(math64, precision, tile, expansion, MODE=0)


def sm90_ptxas() -> str:
    """The ptxas Triton assembles sm_90 code with: per architecture from Triton 3.9 on (ptxas-blackwell for sm_90,
    whose PTX the older bundled ptxas cannot read), the one bundled ptxas before."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(90).path
    except (ImportError, TypeError, AttributeError):
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_report(ptx: str) -> tuple:
    """(registers, spill-store bytes) that Triton's ptxas reports for the PTX, or (None, None)."""
    ptxas = sm90_ptxas()
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as file:
        file.write(ptx)
        file.flush()
        report = subprocess.run(
            [ptxas, "-arch=sm_90a", "-v", file.name, "-o", os.devnull], capture_output=True, text=True
        ).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    return (int(registers.group(1)) if registers else None, int(spills.group(1)) if spills else None)


def conv_signature(act: str, weight: str) -> dict:
    return _signature(
        {"x_ptr": f"*{act}", "weight_ptr": f"*{weight}", "bias_ptr": f"*{act}", "out_ptr": f"*{act}"},
        "C_in H W C_out H_out W_out stride_h stride_w pad_h pad_w dilation_h dilation_w M M_BUCKET",
    )


def conv_constants(math64: bool, precision: str, tile: dict, expansion: int = 4) -> dict:
    return _constants(math64, precision, tile, expansion, KH=3, KW=3, HAS_BIAS=True)


# (name, autotuned kernel, signature, constants, whether the autotuner prunes it by tiling.shared_bytes).
GEMMS = [
    ("linear", linear.mixed_matmul_kernel, linear_signature, linear_constants, True),
    ("weight_grad", weight_grad._tuned(False), weight_grad_signature, weight_grad_constants, False),
    ("conv", conv.mixed_conv2d_kernel, conv_signature, conv_constants, True),
]
# (activation, weight, bytes per activation element, math64, input precision): autocast bf16 over float32 weights
# and float32 with TF32, the two the fused paths serve in training.
DTYPES = [("bf16", "fp32", 2, False, "ieee"), ("fp32", "fp32", 4, False, "tf32")]


def rows(expansion: int, kept_only: bool = False) -> list:
    """One row per (GEMM, dtype pair, autotuning configuration); `kept_only`: only the configurations the
    autotuner's pruning can keep on sm_90 (for a pruned GEMM, the deepest pipeline per tile whose estimate fits)."""
    table = []
    for name, kernel, signature, constants, pruned in GEMMS:
        for act, weight, act_bytes, math64, precision in DTYPES:
            kept = (
                tiling.deepest_within(kernel.configs, expansion, 4, act_bytes, SM90_SHARED_LIMIT)
                if pruned
                else kernel.configs
            )
            for config in kept if kept_only else kernel.configs:
                built = build(
                    kernel,
                    signature(act, weight),
                    constants(math64, precision, config.kwargs, expansion),
                    config.num_warps,
                    config.num_stages,
                )
                registers, spills = ptxas_report(built.asm["ptx"])
                # Only the GEMMs that mix their weight tiles are pruned by the estimate.
                estimate = tiling.shared_bytes(config, expansion, 4, act_bytes) if pruned else None
                table.append(
                    {
                        "kernel": name,
                        "dtype": f"{act} x {weight}",
                        "tile": config.kwargs,
                        "warps": config.num_warps,
                        "stages": config.num_stages,
                        "registers": registers,
                        "spill_bytes": spills,
                        "shared": built.metadata.shared,
                        "estimate": estimate,
                        "kept": config in kept,
                    }
                )
                print(table[-1], file=sys.stderr, flush=True)
    return table


def markdown(table: list, expansion: int) -> str:
    lines = [
        f"# sm_90 builds of the Triton GEMMs (Triton {triton.__version__}, e = {expansion}, no GPU)",
        "",
        f"`python benchmarks/sm90_builds.py`. Shared memory limit per program on sm_90: {SM90_SHARED_LIMIT} "
        "bytes. `estimate`: tiling.shared_bytes, which the autotuner prunes by (the linear and conv GEMMs); "
        "`kept`: whether the pruning can keep the configuration on sm_90.",
        "",
        "| kernel | dtype | tile | warps | stages | registers | spill bytes | shared | estimate | kept |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in table:
        tile = "x".join(str(value) for key, value in row["tile"].items() if key.startswith("BLOCK"))
        cells = [
            row["kernel"],
            row["dtype"],
            tile,
            row["warps"],
            row["stages"],
            row["registers"],
            row["spill_bytes"],
            row["shared"],
            row["estimate"],
            "yes" if row["kept"] else "no",
        ]
        lines.append("| " + " | ".join("–" if cell is None else str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(text: str, output: Optional[str]) -> None:
    """The Markdown report into `output`, or onto standard output without one."""
    if output:
        with open(output, "w") as file:
            file.write(text)
    else:
        print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--output", help="Markdown file to write (default: standard output)")
    args = parser.parse_args()
    write_report(markdown(rows(args.expansion), args.expansion), args.output)


if __name__ == "__main__":
    main()
