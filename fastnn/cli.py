"""The ``fastnn`` command: train, search, doctor, bench."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time


def _build_mlp(fnn, d_in, hidden, classes, activation, dtype):
    layers = []
    for h in hidden:
        layers += [fnn.nn.Linear(d_in, h, init="auto", activation=None, dtype=dtype),
                   _act_layer(fnn, activation)]
        d_in = h
    layers.append(fnn.nn.Linear(d_in, classes, dtype=dtype))
    return fnn.nn.Sequential(*layers)


def _act_layer(fnn, name):
    table = {"relu": fnn.nn.ReLU, "tanh": fnn.nn.Tanh, "elu": fnn.nn.ELU, "selu": fnn.nn.SELU,
             "leaky_relu": fnn.nn.LeakyReLU, "gelu": fnn.nn.GELU, "swish": fnn.nn.Swish,
             "sigmoid": fnn.nn.Sigmoid, "prelu": fnn.nn.PReLU}
    if name not in table:
        raise SystemExit(f"fastnn train: --activation must be one of {sorted(table)}, got {name!r}")
    return table[name]()


def _load_dataset(fnn, spec, seed, dtype):
    """((Xtr, ytr), (Xva, yva), (Xte, yte)) for --dataset: digits, spiral, cifar10:PATH, mnist:PATH.

    Images are scaled to [0, 1] and flattened for the MLP. Files that ship a test
    set keep it; 10% of their training set becomes the validation split."""
    name, _, path = spec.partition(":")
    if name in ("cifar10", "mnist"):
        if not path:
            raise SystemExit(f"fastnn train: --dataset {name}:PATH needs the folder holding the {name} files")
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
        return (flat(xtr), ytr), (flat(xva), yva), (flat(x_test), y_test)
    if name == "digits" and not path:
        X, y = fnn.data.load_digits()
    elif name == "spiral" and not path:
        X, y = fnn.data.make_spiral(300, 3, seed=seed)
    else:
        raise SystemExit(f"fastnn train: unknown --dataset {spec!r} (digits, spiral, cifar10:PATH, mnist:PATH)")
    return fnn.data.split(X.astype(dtype), y, (0.6, 0.2, 0.2), seed=seed)


def _build_cnn(fnn, shape, classes, dtype):
    """The digits CNN of examples/cnn_digits.py: conv+relu, conv+bn+relu, maxpool 2, linear.
    shape: one input image (C, H, W)."""
    c, h, w = shape
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(c, 16, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.ReLU(),
        fnn.nn.Conv2d(16, 32, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(32, dtype=dtype),
        fnn.nn.ReLU(), fnn.nn.MaxPool2d(2), fnn.nn.Flatten(),
        fnn.nn.Linear(32 * (h // 2) * (w // 2), classes, dtype=dtype))


def cmd_train(args) -> int:
    import numpy as np

    import fastnn as fnn

    if args.backend:
        fnn.backend.use(args.backend)
    if args.threads:
        fnn.set_num_threads(args.threads)
    if args.bucket_mb is not None and not args.distributed:
        raise SystemExit("fastnn train: --bucket-mb needs --distributed")
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
    if args.model == "cnn" and args.dataset != "digits":
        raise SystemExit("fastnn train: --model cnn needs image data (--dataset digits)")
    dtype = np.float64 if args.float64 else np.float32
    (Xtr, ytr), (Xva, yva), (Xte, yte) = _load_dataset(fnn, args.dataset, args.seed, dtype)
    # Preprocessing statistics come from the training split only, then apply to all three.
    standardize = fnn.preprocessing.Standardize().fit(Xtr)
    Xtr, Xva, Xte = (standardize.transform(a) for a in (Xtr, Xva, Xte))
    n_features = Xtr.shape[1]
    classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    hidden = [int(h) for h in args.hidden.split(",") if h]
    if args.model == "cnn":
        shape = (1, 8, 8)
        Xtr, Xva, Xte = (a.reshape((len(a),) + shape) for a in (Xtr, Xva, Xte))
        model = _build_cnn(fnn, shape, classes, dtype)
        arch = f"CNN {'x'.join(map(str, shape))}-conv16-conv32+bn-maxpool-{classes}"
    else:
        model = _build_mlp(fnn, n_features, hidden, classes, args.activation, dtype)
        arch = f"MLP {n_features}-{'-'.join(map(str, hidden))}-{classes} ({args.activation})"
    opt = fnn.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = fnn.schedules.CosineAnnealing(t_max=args.epochs)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, schedule=schedule, seed=args.seed,
                          distributed=args.distributed, bucket_mb=args.bucket_mb)
    ranks = f", {fnn.distributed.world_size()} ranks" if args.distributed else ""
    say(f"fastnn {fnn.__version__}: {args.dataset} {len(Xtr)}/{len(Xva)}/{len(Xte)} train/val/test, "
        f"{arch}, "
        f"backend {fnn.backend.current()}, {fnn.get_num_threads()} threads{ranks}")
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, val=(Xva, yva),
                       progress=not args.quiet)
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(Xte, yte)
    if args.plot and main_rank:
        hist.plot(args.plot)
        say(f"curves written to {args.plot}")
    if args.save and main_rank:
        model.save(args.save)
        say(f"model written to {args.save}")
    say(f"trained {hist.epochs} epochs in {seconds:.1f} s; val accuracy {hist.val_acc[-1]:.4f}; "
          f"test loss {test['loss']:.4f}; test accuracy {test['accuracy']:.4f}")
    return 0


def _search_objective(params, epochs, hidden, batch_size, seed):
    """Validation accuracy of an MLP on the digits (module level: picklable for --jobs)."""
    import numpy as np

    import fastnn as fnn

    X, y = fnn.data.load_digits()
    (Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=seed)
    model = _build_mlp(fnn, X.shape[1], hidden, int(y.max()) + 1, "relu", np.float32)
    opt = fnn.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=seed)
    return trainer.fit(Xtr, ytr, epochs=epochs, batch_size=batch_size, val=(Xva, yva), progress=False).val_acc[-1]


def cmd_search(args) -> int:
    import functools

    import fastnn as fnn
    from fastnn.search import loguniform, random_search

    if args.backend:
        fnn.backend.use(args.backend)
    fnn.manual_seed(args.seed)

    def bounds(text, name):
        try:
            low, high = (float(v) for v in text.split(","))
        except ValueError:
            raise SystemExit(f"fastnn search: --{name} must be 'low,high', got {text!r}") from None
        return loguniform(low, high)

    space = {"lr": bounds(args.lr, "lr"), "weight_decay": bounds(args.weight_decay, "weight-decay")}
    hidden = [int(h) for h in args.hidden.split(",") if h]
    objective = functools.partial(_search_objective, epochs=args.epochs, hidden=hidden,
                                  batch_size=args.batch_size, seed=args.seed)
    print(f"fastnn {fnn.__version__}: random search on the digits, {args.trials} trials of {args.epochs} epochs, "
          f"lr ~ {space['lr']}, weight_decay ~ {space['weight_decay']}; score = validation accuracy")
    result = random_search(objective, space, trials=args.trials, seed=args.seed, n_jobs=args.jobs)
    print(result.table())
    if args.plot:
        result.plot(args.plot)
        print(f"plot written to {args.plot}")
    best = result.best
    print(f"best: score {best.score:.4f} lr {best.params['lr']:.3g} weight_decay {best.params['weight_decay']:.3g}")
    return 0


def cmd_doctor(args) -> int:
    import numpy as np

    import fastnn as fnn
    from fastnn.backend import cpp, cuda, registry

    print(f"fastnn {fnn.__version__} (python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()})")
    print(f"backends available: {', '.join(fnn.backend.available())}; default: {fnn.backend.current()}")
    for name, why in registry.failures().items():
        print(f"  {name}: unavailable: {why}")
    if cpp._C is not None:
        print(f"cpu code path: {cpp._C.cpu_isa()} (this processor supports: {cpp._C.cpu_isas_supported()}); "
              f"OpenMP {cpp._C.OPENMP}")
    import numba
    print(f"numba {numba.__version__}, threading layer {numba.config.THREADING_LAYER}")
    print(f"threads: {fnn.get_num_threads()} (os.cpu_count() = {os.cpu_count()})")
    from fastnn.backend import cpp
    if cpp._C is not None:
        state = "on" if cpp._C.adaptive_threads() else "off (FASTNN_ADAPTIVE_THREADS=0)"
        print(f"adaptive threads: {state}; the C++ kernels use at most the cores other processes leave idle "
              f"(now {cpp._C.effective_num_threads()})")
    print(f"cuda: {'available' if cuda.reason is None else cuda.reason}")
    return 0


def cmd_bench(args) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(os.getcwd(), "bench", "run.py"), os.path.join(here, "..", "bench", "run.py")]
    for path in candidates:
        if os.path.exists(path):
            import runpy
            sys.argv = [path] + [a for a in args.rest if a != "--"]
            runpy.run_path(path, run_name="__main__")
            return 0
    raise SystemExit("fastnn bench: bench/run.py not found; run it from a checkout of the fastnn repository")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description="Train neural networks fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP (default: the shipped 8x8 digits)")
    t.add_argument("--dataset", default="digits",
                   help="digits (default), spiral, cifar10:PATH (binary batches) or mnist:PATH (IDX files)")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                   help="mlp (default) or cnn (a small convolutional network; digits only)")
    t.add_argument("--hidden", default="256,128", help="hidden layer sizes, comma separated")
    t.add_argument("--activation", default="relu")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--backend", choices=["cpp", "numba"], default=None)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--float64", action="store_true")
    t.add_argument("--plot", default=None, help="write the loss/accuracy curves to this PNG")
    t.add_argument("--save", default=None, help="write the trained model to this .npz")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpirun -n 4 fastnn train --distributed "
                        "(--batch-size is the global batch)")
    t.add_argument("--bucket-mb", type=float, default=None,
                   help="with --distributed: allreduce gradients in buckets of this many MiB during backward")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("search", help="random search of lr and weight decay (log space) on the digits")
    s.add_argument("--trials", type=int, default=8)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--lr", default="1e-4,1e-1", help="log-uniform range 'low,high'")
    s.add_argument("--weight-decay", default="1e-6,1e-2", help="log-uniform range 'low,high'")
    s.add_argument("--hidden", default="128", help="hidden layer sizes, comma separated")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--jobs", type=int, default=1, help="trials run in parallel processes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", choices=["cpp", "numba"], default=None)
    s.add_argument("--plot", default=None, help="write the score plot to this PNG")
    s.set_defaults(func=cmd_search)

    d = sub.add_parser("doctor", help="versions, backends, CPU code path, threads, CUDA")
    d.set_defaults(func=cmd_doctor)

    b = sub.add_parser("bench", help="run the benchmarks in bench/ (from a checkout)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
