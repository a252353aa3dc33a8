"""`majority-kernels bench`: MK layers and kernels against dense, naive and torch.compile(naive) baselines.

from majority_kernels import bench
report = bench.run(config)            # config: bench.BenchConfig (the CLI builds it from its options)
bench.write(report, stem)             # <stem>.json and <stem>.md
"""

from .config import DEFAULTS, SECTIONS, BenchConfig, ConvShape, LinearShape, parse_shapes
from .report import default_name, resolve_output, to_markdown, write
from .runner import floor_extra_bytes, run, skipped_sections

__all__ = [
    "BenchConfig",
    "ConvShape",
    "LinearShape",
    "DEFAULTS",
    "SECTIONS",
    "parse_shapes",
    "run",
    "write",
    "to_markdown",
    "default_name",
    "resolve_output",
    "floor_extra_bytes",
    "skipped_sections",
]
