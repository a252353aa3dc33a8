"""The `majority-kernels` command (also `python -m majority_kernels`). Subcommands: bench, train, tune."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from . import bench, train
from .backends import backend_for, use_backend

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {value}")
        return value

    return parse


def _expansions(text: str) -> tuple[int, ...]:
    """ "2,4,8" -> (2, 4, 8); every expansion an integer >= 1."""
    parse = _int_at_least(1, "expansion")
    return tuple(dict.fromkeys(parse(item.strip()) for item in text.split(",")))


def _shapes(shape_type: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return bench.parse_shapes(text, shape_type)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _sections(text: str) -> frozenset[str]:
    sections = {item.strip().lower() for item in text.split(",")}
    unknown = sections - set(bench.SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(unknown)}: choose from {list(bench.SECTIONS)}")
    return frozenset(sections)


def _add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time MK layers and kernels against dense, naive and torch.compile(naive)",
        description="Forward + backward of MKLinear / MKConv2d against dense nn.Linear / nn.Conv2d, the naive "
        "SOP layer eager and under torch.compile, and combine / scatter alone: median time, ratios, "
        "bytes saved for backward, CUDA peak memory, distance from the memory-traffic floor. Writes "
        "<output>.json and <output>.md. Defaults depend on the device (bigger sets on CUDA).",
    )
    parser.add_argument(
        "--shapes",
        type=_shapes(bench.LinearShape),
        metavar="MxNxK[,...]",
        help="linear shapes (x: [M, K], weight: [N, K]); default: per device",
    )
    parser.add_argument(
        "--conv-shapes",
        type=_shapes(bench.ConvShape),
        metavar="BxCINxCOUTxHxWxKERNEL[,...]",
        help="conv2d shapes (stride 1, same padding); default: per device",
    )
    parser.add_argument(
        "--expansion",
        type=_expansions,
        metavar="E[,...]",
        help="expansions, for every shape; default: 2,4,8 for linear, 4 for conv",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="compute dtype; bf16 / fp16 run under torch.autocast with float32 master weights; "
        "auto (default): float32 on CPU, bfloat16 on CUDA",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (default): cuda when available, else cpu",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="NAME[,...]",
        help="majority-kernels backends for the MK variants, each one benchmarked (auto, cpu, "
        "reference, ...); default: auto",
    )
    parser.add_argument(
        "--repeats", type=_int_at_least(1, "repeats"), default=20, help="timed rounds per case; default: 20"
    )
    parser.add_argument(
        "--warmup",
        type=_int_at_least(0, "warmup"),
        default=3,
        help="untimed rounds per case, after the first call of every variant (untimed too); default: 3",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="folder, or file stem (.json / .md added); default: "
        "benchmarks/results/<device>-<model>-<dtype> under the working directory",
    )
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile(naive) baseline"
    )
    parser.add_argument(
        "--only",
        type=_sections,
        metavar="SECTION[,...]",
        help=f"sections to run, from {','.join(bench.SECTIONS)}; default: all (crossover and "
        "conv-fused need CUDA and the Triton backend; elsewhere they are skipped)",
    )
    parser.set_defaults(handler=_bench, parser=parser)


def _device(name: str, parser: argparse.ArgumentParser) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        parser.error(
            "argument --device: cuda requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        )
    return torch.device(name)


def _backends(text: str, device: torch.device, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The backends named (auto resolved to the one it picks here); an error for one that cannot run."""
    resolved = []
    for name in (item.strip().lower() for item in text.split(",")):
        try:
            with use_backend(name):
                resolved.append(backend_for(device).name)
        except (ValueError, RuntimeError) as error:
            parser.error(f"argument --backend: {error}")
    return tuple(dict.fromkeys(resolved))


def _bench_config(args: argparse.Namespace) -> bench.BenchConfig:
    """The run the options ask for, the device's defaults filling in what they leave out."""
    parser = args.parser
    device = _device(args.device, parser)
    defaults = bench.DEFAULTS[device.type]
    dtype = defaults.dtype if args.dtype == "auto" else DTYPES[args.dtype]
    config = bench.BenchConfig(
        device=device,
        dtype=dtype,
        backends=_backends(args.backend, device, parser),
        linear_shapes=args.shapes or defaults.linear_shapes,
        linear_expansions=args.expansion or defaults.linear_expansions,
        conv_shapes=args.conv_shapes or defaults.conv_shapes,
        conv_expansions=args.expansion or defaults.conv_expansions,
        sections=args.only or frozenset(bench.SECTIONS),
        repeats=args.repeats,
        warmup=args.warmup,
        compile=args.compile,
        output=bench.resolve_output(args.output, bench.default_name(device, dtype)),
    )
    # Sections named in --only that cannot run here are refused; left to the default, they are skipped with a
    # note in the report.
    skipped = bench.skipped_sections(config) if args.only else {}
    if skipped:
        parser.error(
            "argument --only: "
            + "; ".join(f"section {section} cannot run here: {why}" for section, why in skipped.items())
        )
    return config


def _bench(args: argparse.Namespace) -> int:
    config = _bench_config(args)
    report = bench.run(config)
    print(bench.to_markdown(report))
    for path in bench.write(report, config.output):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _float_above(minimum: float, what: str, *, inclusive: bool = False) -> Callable[[str], float]:
    """Parses a finite float > minimum (>= minimum when inclusive)."""
    bound = f"{'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number {bound}, got {text}")
        return value

    return parse


def _float_list(minimum: float, what: str, *, inclusive: bool = False) -> Callable[[str], tuple[float, ...]]:
    """Parses a comma-separated list of finite floats > minimum (>= minimum when inclusive)."""
    parse = _float_above(minimum, what, inclusive=inclusive)
    return lambda text: tuple(dict.fromkeys(parse(item.strip()) for item in text.split(",")))


def _fraction(what: str, *, zero: bool) -> Callable[[str], float]:
    """Parses a number in [0, 1) (zero allowed) or (0, 1)."""
    parse = _float_above(0, what, inclusive=zero)

    def parse_fraction(text: str) -> float:
        value = parse(text)
        if value >= 1:
            raise argparse.ArgumentTypeError(f"{what} must be below 1, got {text}")
        return value

    return parse_fraction


def _inits(text: str) -> tuple[str, ...]:
    inits = tuple(dict.fromkeys(item.strip().lower() for item in text.split(",")))
    unknown = set(inits) - set(train.presets.INITS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown init(s) {sorted(unknown)}: choose from {list(train.presets.INITS)}")
    return inits


def _add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train dense, MK and wide dense models on real data over seeds: accuracy, share of the "
        "wide model's gain, time, deployed-model check",
        description="Trains a dense baseline, MK variants (every expansion x init) and wide dense references "
        "(about e x the dense model's parameters); each variant picks its learning rate and weight "
        "decay on a validation split, then trains from each seed. Reports per variant: test accuracy "
        "(language model: loss and perplexity), mean ± std over seeds, the paired difference to dense, "
        "the share of the wide model's gain that MK recovers with its 95% interval, the chosen "
        "hyperparameters, training time and its ratio to dense, the deployed (collapsed) model's "
        "parameter count and inference time, and a check that the deployed model scores what the MK "
        "model scores in eval mode. Prints the tables; writes results.json, results.md and PNG plots. A "
        "preset sets everything; the other options override it.",
        epilog="Presets: "
        + "; ".join(f"{name}: {config.describe()}" for name, config in train.PRESETS.items())
        + ". Your own data: --dataset package.module:function, a function returning "
        "majority_kernels.train.custom_task(train_dataset, test_dataset, num_classes).",
    )
    parser.add_argument(
        "--preset",
        choices=list(train.PRESETS),
        default="default",
        help="the experiment to start from (default: default); options left out keep its values",
    )
    parser.add_argument(
        "--dataset",
        metavar="NAME|MODULE:FUNCTION",
        help=f"built-in ({', '.join(train.data.BUILT_IN)}) or a function returning a majority_kernels.train.Task",
    )
    parser.add_argument("--model", choices=list(train.models.MODELS), help="the model to train")
    parser.add_argument("--expansion", type=_expansions, metavar="E[,...]", help="MK expansions, e.g. 2,4,8")
    parser.add_argument(
        "--init", type=_inits, metavar="INIT[,...]", help=f"MK initialisations, from {','.join(train.presets.INITS)}"
    )
    parser.add_argument("--seeds", type=_int_at_least(1, "seeds"), metavar="N", help="seeds 0..N-1")
    parser.add_argument("--epochs", type=_int_at_least(1, "epochs"), metavar="N", help="training epochs")
    parser.add_argument("--batch-size", type=_int_at_least(1, "batch size"), metavar="N", help="training batch size")
    parser.add_argument("--optimizer", choices=list(train.presets.OPTIMIZERS), help="adamw, or sgd with momentum 0.9")
    parser.add_argument(
        "--lr",
        type=_float_list(0, "learning rate"),
        metavar="LR[,...]",
        help="the peak learning rates (cosine-annealed to 0 over the run) each variant picks from on "
        "the validation split",
    )
    parser.add_argument(
        "--weight-decay",
        type=_float_list(0, "weight decay", inclusive=True),
        metavar="WD[,...]",
        help="the weight decays each variant picks from",
    )
    parser.add_argument(
        "--tune-seeds",
        type=_int_at_least(1, "tune seeds"),
        metavar="N",
        help="seeds whose mean validation score picks the learning rate and weight decay",
    )
    parser.add_argument(
        "--validation-fraction",
        type=_fraction("validation fraction", zero=False),
        metavar="F",
        help="the share of the training data held out for validation",
    )
    parser.add_argument(
        "--label-noise",
        type=_fraction("label noise", zero=True),
        metavar="F",
        help="the share of training labels replaced by a wrong class (the test labels stay clean)",
    )
    parser.add_argument(
        "--patience",
        type=_int_at_least(1, "patience"),
        metavar="N",
        help="early stopping: stop after N epochs without a better validation score and keep the best epoch's weights",
    )
    parser.add_argument(
        "--no-wide",
        dest="wide",
        action="store_false",
        default=None,
        help="skip the wide dense references (≈ e × the dense model's parameters)",
    )
    parser.add_argument(
        "--train-samples",
        type=_int_at_least(1, "train samples"),
        metavar="N",
        help="use the first N training samples only (quick runs)",
    )
    parser.add_argument(
        "--test-samples", type=_int_at_least(1, "test samples"), metavar="N", help="use the first N test samples only"
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (default): cuda when available, else cpu",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="the majority-kernels backend (auto, cpu, reference, ...); default: auto, the fastest",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="results folder; default: benchmarks/results/train/<preset>-<device> under the working directory",
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1, "threads"),
        metavar="N",
        help="CPU threads for torch (torch.set_num_threads); default: torch's choice. 1 avoids "
        "OpenMP spin-waiting on a CPU that other jobs share",
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(handler=_train, parser=parser)


def _train_config(args: argparse.Namespace) -> train.TrainConfig:
    """The preset with the options given on the command line in place of its settings."""
    options = {
        "dataset": args.dataset,
        "model": args.model,
        "expansions": args.expansion,
        "inits": args.init,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lrs": args.lr,
        "weight_decays": args.weight_decay,
        "optimizer": args.optimizer,
        "tune_seeds": args.tune_seeds,
        "validation_fraction": args.validation_fraction,
        "label_noise": args.label_noise,
        "patience": args.patience,
        "wide": args.wide,
        "train_samples": args.train_samples,
        "test_samples": args.test_samples,
        "output": args.output and Path(args.output),
    }
    changes = {key: value for key, value in options.items() if value is not None}
    return dataclasses.replace(
        train.PRESETS[args.preset],
        device=args.device,
        backend=args.backend,
        plots=args.plots,
        progress=args.progress,
        **changes,
    )


def _train(args: argparse.Namespace) -> int:
    parser = args.parser
    config = _train_config(args)
    try:
        device = train.resolve_device(config.device)
    except ValueError as error:
        parser.error(f"argument --device: {error}")
    if "," in config.backend:
        parser.error(f"argument --backend: name one backend, got {config.backend!r}")
    (backend,) = _backends(config.backend, device, parser)
    if config.plots and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plots need matplotlib: pip install 'majority-kernels[train]', or pass --no-plots")
    try:
        task = train.experiment.load_task(config)
    except (ValueError, TypeError) as error:
        parser.error(f"argument --dataset: {error}")
    except ImportError as error:  # the data's package is missing
        parser.error(str(error))
    try:
        train.models.model_builder(config.model, task)
    except ValueError as error:
        parser.error(f"argument --model: {error}")
    if config.label_noise and task.kind != train.data.CLASSIFICATION:
        parser.error(f"argument --label-noise: needs a classification task; {task.name} is a {task.kind} task")
    # Results on other data go to a folder named after it.
    config = dataclasses.replace(config, backend=backend, name=task.name if args.dataset else config.name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = train.run(config, task)
    print(train.summary_table(report))
    if report["gain"]:
        print(train.report.gain_table(report))
    for path in train.write(report, train.default_output(config, device), plots=config.plots):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="measure this GPU's dispatch thresholds and block sizes; write its tuning table",
        description="Measures on the CUDA GPU present where each fused path stops paying (the Triton backend's "
        "fused forward and fused dW against combine + cuBLAS over M, the cuda backend's small-M "
        "kernel over rows) and the fastest block size of the Triton combine and scatter kernels, then "
        "writes the GPU's tuning table, which the dispatch reads from then on (docs/gpu.md).",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cuda"],
        default="auto",
        help="the GPU to tune (the current CUDA device); auto (default): cuda. Needs a CUDA GPU",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes and rounds (about a minute on an H200): a first table, not one to ship",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder to write <gpu>-mk<version>.json to; default: the user's tuning folder "
        "(MK_TUNING_DIR, else $XDG_CACHE_HOME/majority-kernels/tuning, else "
        "~/.cache/majority-kernels/tuning)",
    )
    parser.set_defaults(handler=_tune, parser=parser)


def _tune(args: argparse.Namespace) -> int:
    from . import tune  # imports the benchmark's measuring code only when tuning

    why = tune.unavailable()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    table = tune.run(tune.PLANS["quick" if args.quick else "full"], torch.device("cuda", torch.cuda.current_device()))
    path = tune.write(table, Path(args.output) if args.output else None)
    print(
        "thresholds: " + ", ".join(f"{name} = {value}" for name, value in dataclasses.asdict(table.thresholds).items())
    )
    print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="majority-kernels", description="majority-kernels: Simulated Overparameterization kernels"
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    _add_bench_parser(subparsers)
    _add_train_parser(subparsers)
    _add_tune_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `majority-kernels` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)
