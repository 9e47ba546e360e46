"""The ``fastnn`` command: train, search, doctor, bench.

Every argument is checked by the parser (its ``type=`` function or a check
right after parsing): a bad value exits with status 2 and one line naming the
option, before any data is loaded or any training starts. Ctrl-C exits with
status 130 and one line."""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import runpy
import sys
import time

import numba
import numpy as np

import fastnn as fnn
from . import bench_quick
from .backend import cpp, cuda, registry
from ._validate import PLOT_HINT
from .search import loguniform, random_search

DATASET_FORMS = "digits, spiral, cifar10:PATH or mnist:PATH"


# --- argument types: each returns the parsed value or raises ArgumentTypeError ------------
# argparse prefixes the message with "argument --option:", so it names the option.

def _int(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, else ArgumentTypeError saying what was expected and got."""
    return _int(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0, else ArgumentTypeError."""
    return _int(text, 0, "an integer >= 0")


def _float(text: str, positive: bool) -> float:
    expected = "a finite number > 0" if positive else "a finite number >= 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0, else ArgumentTypeError."""
    return _float(text, positive=True)


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0, else ArgumentTypeError."""
    return _float(text, positive=False)


def hidden_sizes(text: str) -> list[int]:
    """'256,128' -> [256, 128]; '' -> [] (no hidden layer: a linear softmax classifier)."""
    if not text.strip():
        return []
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive integers such as 256,128, got {text!r}")
        sizes.append(int(part))
    return sizes


def log_range(text: str) -> tuple[float, float]:
    """'1e-4,1e-1' -> (1e-4, 1e-1): the bounds of a log-uniform range, 0 < low <= high."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'low,high' (two numbers > 0), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low > 0 and high > 0):
        raise argparse.ArgumentTypeError(f"expected 'low,high' with finite bounds > 0 (a log-uniform range), "
                                         f"got {text!r}")
    if low > high:
        raise argparse.ArgumentTypeError(f"expected 'low,high' with low <= high, got low {low:g} > high {high:g}")
    return low, high


def dataset_spec(text: str) -> str:
    """argparse type for ``--data``: ``digits``, ``spiral``, ``mnist:DIR`` or ``cifar10:DIR``."""
    name, colon, path = text.partition(":")
    if name in ("digits", "spiral") and not colon:
        return text
    if name in ("cifar10", "mnist"):
        if not path:
            raise argparse.ArgumentTypeError(f"{name}:PATH needs the folder holding the {name} files, got {text!r}")
        if not os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"folder {path!r} not found (from {text!r})")
        return text
    raise argparse.ArgumentTypeError(f"expected {DATASET_FORMS}, got {text!r}")


def output_file(text: str) -> str:
    """A file to write after training: its folder must exist now, not after an hour of training."""
    if not text or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder!r} does not exist (for {text!r})")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _require_matplotlib(parser, option: str) -> None:
    """Checked before any training, so a missing optional dependency costs nothing."""
    try:
        import matplotlib  # noqa: F401  (optional dependency)
    except ImportError:
        parser.error(f"argument {option}: needs matplotlib, which is not installed: {PLOT_HINT}")


def _build_mlp(fnn, d_in, hidden, classes, activation, dtype):
    layers = []
    for h in hidden:
        layers += [fnn.nn.Linear(d_in, h, init="auto", activation=None, dtype=dtype),
                   _act_layer(fnn, activation, dtype)]
        d_in = h
    layers.append(fnn.nn.Linear(d_in, classes, dtype=dtype))
    return fnn.nn.Sequential(*layers)


# --activation choices: the activation layers of fastnn.nn by their DESIGN names.
ACTIVATION_LAYERS = {layer.name: layer for layer in (fnn.nn.ReLU, fnn.nn.LeakyReLU, fnn.nn.PReLU, fnn.nn.ELU,
                                                     fnn.nn.SELU, fnn.nn.Sigmoid, fnn.nn.Tanh, fnn.nn.Swish)}
ACTIVATION_LAYERS["gelu"] = fnn.nn.GELU


def _act_layer(fnn, name, dtype):
    layer = ACTIVATION_LAYERS[name]
    return layer(dtype=dtype) if layer is fnn.nn.PReLU else layer()   # PReLU's alpha is a parameter


def _load_dataset(fnn, spec, seed, dtype):
    """((Xtr, ytr), (Xva, yva), (Xte, yte), image_shape) for --dataset: digits, spiral, cifar10:PATH,
    mnist:PATH.

    Images are scaled to [0, 1] and flattened for the MLP; image_shape is one image's (C, H, W)
    (None for spiral, which has no images) for the models that reshape them back. Files that
    ship a test set keep it; 10% of their training set becomes the validation split."""
    name, _, path = spec.partition(":")   # checked by dataset_spec
    if name in ("cifar10", "mnist"):
        loader = fnn.data.load_cifar10 if name == "cifar10" else fnn.data.load_mnist
        try:
            x_train, y_train, x_test, y_test = loader(path)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"fastnn train: cannot read {name} from {path}: {exc}") from exc

        def flat(images):   # uint8 (N, C, H, W) -> dtype (N, C*H*W) in [0, 1], one float copy
            out = images.reshape(len(images), -1).astype(dtype)
            out *= dtype(1.0 / 255.0)
            return out

        (xtr, ytr), (xva, yva) = fnn.data.split(x_train, y_train, (0.9, 0.1), seed=seed)
        return (flat(xtr), ytr), (flat(xva), yva), (flat(x_test), y_test), tuple(x_train.shape[1:])
    if name == "digits":
        X, y = fnn.data.load_digits()
        shape = (1, 8, 8)
    else:
        X, y = fnn.data.make_spiral(300, 3, seed=seed)
        shape = None
    return (*fnn.data.split(X.astype(dtype), y, (0.6, 0.2, 0.2), seed=seed), shape)


def _build_cnn(fnn, shape, classes, dtype):
    """The digits CNN of examples/cnn_digits.py: conv+relu, conv+bn+relu, maxpool 2, linear.
    shape: one input image (C, H, W)."""
    c, h, w = shape
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(c, 16, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.ReLU(),
        fnn.nn.Conv2d(16, 32, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(32, dtype=dtype),
        fnn.nn.ReLU(), fnn.nn.MaxPool2d(2), fnn.nn.Flatten(),
        fnn.nn.Linear(32 * (h // 2) * (w // 2), classes, dtype=dtype))


# The ConvNet's feature extractor: (out_channels of each 3x3 conv + BN + ReLU) per stage, a 2x2 max pool after
# each stage. Each pool halves H and W (floor), so an image needs H, W >= 2**stages.
CONVNET_STAGES = ((32, 32), (64, 64))
CONVNET_HIDDEN = 256


def _build_convnet(fnn, shape, classes, dtype):
    """The VGG-style ConvNet of issue 19 (CIFAR-10 sized), built from one input image's shape (C, H, W):
    [conv3x3 pad 1 - BatchNorm2d - ReLU] x2 (32 ch), maxpool 2, [conv3x3 pad 1 - BatchNorm2d - ReLU] x2 (64 ch),
    maxpool 2, flatten, linear -> 256 + ReLU, dropout 0.5, linear -> classes; He init for every layer followed by
    a ReLU (Xavier for the last). On 3x32x32 the first linear is 4096 -> 256; on 1x28x28 3136 -> 256; on the
    8x8 digits 256 -> 256. Raises ValueError for an image smaller than 4x4 (two 2x2 pools)."""
    c, h, w = shape
    smallest = 2 ** len(CONVNET_STAGES)
    if h < smallest or w < smallest:
        raise ValueError(f"the convnet needs images of at least {smallest}x{smallest} ({len(CONVNET_STAGES)} 2x2 "
                         f"max pools), got {h}x{w}")
    layers = []
    for stage in CONVNET_STAGES:
        for channels in stage:
            layers += [fnn.nn.Conv2d(c, channels, 3, padding=1, init="he_normal", dtype=dtype),
                       fnn.nn.BatchNorm2d(channels, dtype=dtype), fnn.nn.ReLU()]
            c = channels
        layers.append(fnn.nn.MaxPool2d(2))
        h, w = h // 2, w // 2
    return fnn.nn.Sequential(
        *layers, fnn.nn.Flatten(),
        fnn.nn.Linear(c * h * w, CONVNET_HIDDEN, init="he_normal", dtype=dtype), fnn.nn.ReLU(),
        fnn.nn.Dropout(0.5), fnn.nn.Linear(CONVNET_HIDDEN, classes, dtype=dtype))


def _convnet_name(shape, classes):
    stages = "-".join(f"[conv{s[0]}+bn]x{len(s)}-maxpool" for s in CONVNET_STAGES)
    return f"ConvNet {'x'.join(map(str, shape))}-{stages}-{CONVNET_HIDDEN}-dropout-{classes}"


IMAGE_MODELS = ("cnn", "convnet")


def _check_train(parser, args) -> None:
    """Checks that involve more than one option or the environment, before any work."""
    if args.bucket_mb is not None and not args.distributed:
        parser.error("argument --bucket-mb: needs --distributed")
    if args.model in IMAGE_MODELS and args.dataset.partition(":")[0] not in ("digits", "cifar10", "mnist"):
        parser.error(f"argument --model: {args.model} needs image data (--dataset digits, cifar10:PATH or "
                     f"mnist:PATH), got --dataset {args.dataset}")
    if args.plot:
        _require_matplotlib(parser, "--plot")


def cmd_train(args) -> int:
    """``fastnn train``: build an MLP (or a CNN or ConvNet), train it on the chosen data set (the shipped digits by
    default) and print the test accuracy; returns the exit status."""
    _check_train(args.parser, args)
    if args.device == "cuda" and cuda.reason is not None:
        raise SystemExit(f"fastnn train --device cuda: CUDA is unavailable: {cuda.reason} "
                         "(fastnn doctor says more; --device cpu trains on the CPU)")
    if args.backend:
        fnn.backend.use(args.backend)
    if args.threads:
        fnn.set_num_threads(args.threads)
    if args.distributed:
        try:
            fnn.distributed.init()
        except RuntimeError as exc:
            raise SystemExit(f"fastnn train --distributed: {exc}") from None
        if args.batch_size % fnn.distributed.world_size():
            raise SystemExit(f"fastnn train --distributed: --batch-size {args.batch_size} (the global batch) must "
                             f"be divisible by the number of ranks ({fnn.distributed.world_size()})")
    main_rank = fnn.distributed.is_main()
    say = print if main_rank else (lambda *a, **k: None)
    fnn.manual_seed(args.seed)
    dtype = np.float64 if args.float64 else np.float32
    (Xtr, ytr), (Xva, yva), (Xte, yte), shape = _load_dataset(fnn, args.dataset, args.seed, dtype)
    # Preprocessing statistics come from the training split only, then apply to all three.
    standardize = fnn.preprocessing.Standardize().fit(Xtr)
    Xtr, Xva, Xte = (standardize.transform(a) for a in (Xtr, Xva, Xte))
    n_features = Xtr.shape[1]
    classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    hidden = args.hidden
    if args.model in IMAGE_MODELS:
        Xtr, Xva, Xte = (a.reshape((len(a),) + shape) for a in (Xtr, Xva, Xte))
        if args.model == "cnn":
            model = _build_cnn(fnn, shape, classes, dtype)
            arch = f"CNN {'x'.join(map(str, shape))}-conv16-conv32+bn-maxpool-{classes}"
        else:
            try:
                model = _build_convnet(fnn, shape, classes, dtype)
            except ValueError as exc:       # images of one's own (mnist:PATH IDX files) smaller than 4x4
                raise SystemExit(f"fastnn train --model convnet: {exc} (--dataset {args.dataset})") from None
            arch = _convnet_name(shape, classes)
    else:
        model = _build_mlp(fnn, n_features, hidden, classes, args.activation, dtype)
        arch = f"MLP {'-'.join(map(str, [n_features, *hidden, classes]))}" + (f" ({args.activation})" if hidden else "")
    if args.device == "cuda":
        model.to("cuda")        # before the optimizer: its flat buffers live where the parameters do
    opt = fnn.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = fnn.schedules.CosineAnnealing(t_max=args.epochs)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, schedule=schedule, seed=args.seed,
                          distributed=args.distributed, bucket_mb=args.bucket_mb)
    ranks = f", {_count(fnn.distributed.world_size(), 'rank')}" if args.distributed else ""
    say(f"fastnn {fnn.__version__}: {args.dataset} {len(Xtr)}/{len(Xva)}/{len(Xte)} train/val/test, "
        f"{arch}, "
        + (f"device cuda ({_gpu_name()}){ranks}" if args.device == "cuda" else
           f"backend {fnn.backend.current()}, {_count(fnn.get_num_threads(), 'thread')}{ranks}"))
    t0 = time.perf_counter()
    try:
        hist = trainer.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, val=(Xva, yva),
                           progress=not args.quiet)
    except fnn.TrainingDiverged as exc:
        raise SystemExit(f"fastnn train: training diverged with --lr {args.lr:g}: {exc}") from None
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(Xte, yte)
    # The model first: whatever happens while plotting, the trained weights are on disk.
    if args.save and main_rank:
        model.save(args.save)
        say(f"model written to {args.save}")
    if args.plot and main_rank:
        hist.plot(args.plot)
        say(f"curves written to {args.plot}")
    say(f"trained {_count(hist.epochs, 'epoch')} in {seconds:.1f} s; val accuracy {hist.val_acc[-1]:.4f}; "
        f"test loss {test['loss']:.4f}; test accuracy {test['accuracy']:.4f}")
    return 0


def _search_objective(params, epochs, hidden, batch_size, seed):
    """Validation accuracy of an MLP on the digits (module level: picklable for --jobs)."""
    X, y = fnn.data.load_digits()
    (Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=seed)
    model = _build_mlp(fnn, X.shape[1], hidden, int(y.max()) + 1, "relu", np.float32)
    opt = fnn.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=seed)
    return trainer.fit(Xtr, ytr, epochs=epochs, batch_size=batch_size, val=(Xva, yva), progress=False).val_acc[-1]


def cmd_search(args) -> int:
    """``fastnn search``: random search of lr and weight_decay on the digits, printing the trials best first;
    returns the exit status."""
    if args.plot:
        _require_matplotlib(args.parser, "--plot")
    if args.backend:
        fnn.backend.use(args.backend)
    fnn.manual_seed(args.seed)
    space = {"lr": loguniform(*args.lr), "weight_decay": loguniform(*args.weight_decay)}
    objective = functools.partial(_search_objective, epochs=args.epochs, hidden=args.hidden,
                                  batch_size=args.batch_size, seed=args.seed)
    print(f"fastnn {fnn.__version__}: random search on the digits, {_count(args.trials, 'trial')} of "
          f"{_count(args.epochs, 'epoch')}, lr ~ {space['lr']}, weight_decay ~ {space['weight_decay']}; "
          f"score = validation accuracy")
    result = random_search(objective, space, trials=args.trials, seed=args.seed, n_jobs=args.jobs)
    print(result.table())
    if args.plot:
        result.plot(args.plot)
        print(f"plot written to {args.plot}")
    best = result.best
    print(f"best: score {best.score:.4f} lr {best.params['lr']:.3g} weight_decay {best.params['weight_decay']:.3g}")
    return 0


def cmd_doctor(args) -> int:
    """``fastnn doctor``: print the version, the backends that loaded (and why others did not), the CPU code
    path (ISA), threads and CUDA status; returns the exit status."""
    print(f"fastnn {fnn.__version__} (python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()})")
    print(f"backends available: {', '.join(fnn.backend.available())}; default: {fnn.backend.current()}")
    for name, why in registry.failures().items():
        if name != "cuda":          # said once, on the cuda line below
            print(f"  {name}: unavailable: {why}")
    if cpp._C is not None:
        print(f"cpu code path: {cpp._C.cpu_isa()} (this processor supports: {cpp._C.cpu_isas_supported()}); "
              f"OpenMP {cpp._C.OPENMP}")
    print(f"numba {numba.__version__}, threading layer {numba.config.THREADING_LAYER}")
    print(f"threads: {fnn.get_num_threads()} (os.cpu_count() = {os.cpu_count()})")
    if cpp._C is not None:
        state = "on" if cpp._C.adaptive_threads() else "off (FASTNN_ADAPTIVE_THREADS=0)"
        print(f"adaptive threads: {state}; the C++ kernels use at most the cores other processes leave idle "
              f"(now {cpp._C.effective_num_threads()})")
    print(f"cuda: {'available' if cuda.reason is None else 'unavailable: ' + cuda.reason}")
    for line in cuda.device_summary():     # name, compute capability, memory, driver/runtime, cuBLASLt
        print(line)
    return 0


def _gpu_name() -> str:
    """The current GPU's name, for the train banner."""
    try:
        return str(cuda.device_info(cuda.cp.cuda.Device().id)["name"])
    except Exception as exc:    # the banner must not stop training: say what failed instead
        return f"name unavailable: {exc}"


def _full_bench_runner() -> str | None:
    """bench/run.py of a source checkout: under the current folder, or next to the package (editable install)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(os.getcwd(), "bench", "run.py"), os.path.join(here, "..", "bench", "run.py")):
        if os.path.exists(path):
            return os.path.normpath(path)
    return None


def cmd_bench(args) -> int:
    """``fastnn bench``: run the benchmarks (``--quick``: the built-in short set); returns the exit status."""
    names = args.names
    if args.quick:
        unknown = [n for n in names if n not in bench_quick.BENCHMARKS]
        if unknown:
            args.parser.error(f"argument NAME: unknown --quick benchmark(s) {', '.join(unknown)}; "
                              f"choose from {', '.join(bench_quick.BENCHMARKS)}")
        return _bench_quick(args)
    path = _full_bench_runner()
    if path is None:
        print("fastnn bench: the full benchmarks need bench/run.py from a source checkout (not found under "
              f"{os.getcwd()}); run 'fastnn bench --quick' for the built-in ones", file=sys.stderr)
        return 1
    runner = runpy.run_path(path, run_name="fastnn_bench_run")   # definitions only; main() below
    full = runner.get("BENCHES", {})
    unknown = [n for n in names if n not in full]
    if unknown:
        args.parser.error(f"argument NAME: unknown benchmark(s) {', '.join(unknown)}; {path} has "
                          f"{', '.join(full)} (and --quick has {', '.join(bench_quick.BENCHMARKS)})")
    saved_argv = sys.argv
    sys.argv = [path]            # some bench scripts parse sys.argv themselves: give them none of ours
    try:
        runner["main"](list(names))
    finally:
        sys.argv = saved_argv
    return 0


def _bench_quick(args) -> int:
    if args.backend:
        fnn.backend.use(args.backend)
    torch = bench_quick.torch_or_none()
    threads = fnn.get_num_threads()
    names = args.names or list(bench_quick.BENCHMARKS)
    peer = f"torch {torch.__version__}" if torch is not None else "torch not importable (an optional peer)"
    print(f"fastnn {fnn.__version__} bench --quick: {_count(len(names), 'benchmark')}, backend "
          f"{fnn.backend.current()}, {_count(threads, 'thread')}; numpy {np.__version__}; {peer}; "
          f"float32, median of {_count(args.rounds, 'round')}", flush=True)
    t0 = time.perf_counter()
    try:
        rows = bench_quick.run(names, rounds=args.rounds, threads=threads,
                               say=functools.partial(print, flush=True), torch=torch)
    except bench_quick.ValidationError as exc:
        print(f"fastnn bench: validation failed, nothing timed: {exc}", file=sys.stderr)
        return 1
    print(bench_quick.table(rows))
    print(f"total {time.perf_counter() - t0:.1f} s; ratios are fastnn's throughput over the peer's "
          f"(higher is better for fastnn)")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' after each option that has a meaningful default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: 'fastnn train: error: argument --epochs: ...'."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fastnn`` command-line parser with its subcommands (train, search, doctor, bench)."""
    parser = _Parser(prog="fastnn", description="Train neural networks fast.", formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastnn {fnn.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,search,doctor,bench}")
    backends = ["cpp", "numba"]

    t = sub.add_parser("train", help="train an MLP, a small CNN or a ConvNet (default: the shipped 8x8 digits)",
                       description="Train a classifier and report validation and test accuracy.",
                       formatter_class=_HelpFormatter)
    t.add_argument("--dataset", type=dataset_spec, default="digits", metavar="NAME[:PATH]",
                   help=f"{DATASET_FORMS}: cifar10 binary batches or MNIST IDX files in PATH")
    t.add_argument("--epochs", type=positive_int, default=40, help="passes over the training split")
    t.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    t.add_argument("--model", choices=["mlp", "cnn", "convnet"], default="mlp",
                   help="mlp; cnn (a small convolutional network: conv16, conv32+bn, maxpool, linear); or convnet "
                        "(VGG-style: [conv3x3+bn+relu]x2 32 ch, maxpool, [conv3x3+bn+relu]x2 64 ch, maxpool, "
                        "linear 256+relu, dropout 0.5, linear; sized for cifar10). cnn and convnet need image "
                        "data: digits, cifar10:PATH or mnist:PATH")
    t.add_argument("--hidden", type=hidden_sizes, default="256,128",
                   help="MLP hidden layer sizes, comma separated ('' for none)")
    t.add_argument("--activation", choices=list(ACTIVATION_LAYERS), default="relu",
                   help="activation after each hidden layer")
    t.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (cosine-annealed)")
    t.add_argument("--weight-decay", type=nonnegative_float, default=1e-4, help="L2 weight decay")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the split, the weights and the shuffling")
    t.add_argument("--backend", choices=backends, default=None, help="CPU kernels (default: cpp when built)")
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to train: cpu (the --backend kernels) or cuda (the GPU: needs the CUDA build and "
                        "CuPy; fastnn doctor says whether it is available)")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="threads for the CPU kernels (default: all cores)")
    t.add_argument("--float64", action="store_true", help="train in float64 instead of float32")
    t.add_argument("--plot", type=output_file, default=None,
                   help="write the loss/accuracy curves to this PNG (needs matplotlib: the plot extra)")
    t.add_argument("--save", type=output_file, default=None, help="write the trained model to this .npz")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpirun -n 4 fastnn train --distributed "
                        "(--batch-size is the global batch)")
    t.add_argument("--bucket-mb", type=positive_float, default=None,
                   help="with --distributed: allreduce gradients in buckets of this many MiB during backward")
    t.set_defaults(func=cmd_train, parser=t)

    s = sub.add_parser("search", help="random search of lr and weight decay (log space) on the digits",
                       description="Random search of the learning rate and weight decay of an MLP on the\n"
                                   "digits; score = validation accuracy.", formatter_class=_HelpFormatter)
    s.add_argument("--trials", type=positive_int, default=8, help="hyperparameter settings to try")
    s.add_argument("--epochs", type=positive_int, default=10, help="epochs per trial")
    s.add_argument("--lr", type=log_range, default="1e-4,1e-1", metavar="LOW,HIGH", help="log-uniform range")
    s.add_argument("--weight-decay", type=log_range, default="1e-6,1e-2", metavar="LOW,HIGH",
                   help="log-uniform range")
    s.add_argument("--hidden", type=hidden_sizes, default="128", help="hidden layer sizes, comma separated")
    s.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    s.add_argument("--jobs", type=positive_int, default=1, help="trials run in parallel processes")
    s.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the search and of each trial")
    s.add_argument("--backend", choices=backends, default=None, help="CPU kernels (default: cpp when built)")
    s.add_argument("--plot", type=output_file, default=None,
                   help="write the score plot to this PNG (needs matplotlib: the plot extra)")
    s.set_defaults(func=cmd_search, parser=s)

    d = sub.add_parser("doctor", help="versions, backends, CPU code path, threads, CUDA",
                       description="Versions, backends, CPU code path, threads and CUDA of this installation.",
                       formatter_class=_HelpFormatter)
    d.set_defaults(func=cmd_doctor, parser=d)

    quick = "\n".join(f"  {name:<12} {what}" for name, (what, _) in bench_quick.BENCHMARKS.items())
    b = sub.add_parser(
        "bench", help="benchmarks: --quick (built in, under a minute) or the full bench/ suite of a checkout",
        description="Validate, then time fastnn against NumPy (and PyTorch CPU when it is importable).",
        epilog=f"--quick benchmarks (each checked against NumPy before it is timed):\n{quick}\n\n"
               "Without --quick, NAMEs select among the full benchmarks of bench/run.py in a source checkout\n"
               "(gemm, bn_dropout, optim, conv, train_step, ...; see bench/README.md). Examples:\n"
               "  fastnn bench --quick\n  fastnn bench --quick gemm dropout\n  fastnn bench gemm optim",
        formatter_class=_HelpFormatter)
    b.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    b.add_argument("--quick", action="store_true",
                   help="the built-in microbenchmarks below (no checkout needed; under a minute)")
    b.add_argument("--rounds", type=positive_int, default=5, help="with --quick: timed rounds, the median reported")
    b.add_argument("--backend", choices=backends, default=None,
                   help="with --quick: CPU kernels to time (default: cpp when built)")
    b.set_defaults(func=cmd_bench, parser=b)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``fastnn`` command: parse ``argv`` (default ``sys.argv[1:]``), run the subcommand,
    return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"fastnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # fastnn ... | head: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
