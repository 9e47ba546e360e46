"""The ``fastnn`` command: bad values refused by the parser, --version, --help,
optional dependencies checked before training, messages, ``bench --quick`` and Ctrl-C.

Most tests call ``fastnn.cli.main`` in this process (a subprocess pays the imports again)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import bench_quick, cli
from fastnn.backend import cuda


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``fastnn *argv`` run in this process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def keep_threads():
    threads = fnn.get_num_threads()
    yield
    fnn.set_num_threads(threads)


# --- bad values: exit 2, one line naming the option, before any work -------------------

BAD = [
    (["train", "--epochs", "0"], "--epochs", "'0'"),
    (["train", "--epochs", "1.5"], "--epochs", "'1.5'"),
    (["train", "--batch-size", "0"], "--batch-size", "'0'"),
    (["train", "--lr", "-1"], "--lr", "'-1'"),
    (["train", "--lr", "nan"], "--lr", "'nan'"),
    (["train", "--lr", "inf"], "--lr", "'inf'"),
    (["train", "--lr", "0"], "--lr", "'0'"),
    (["train", "--weight-decay", "-1"], "--weight-decay", "'-1'"),
    (["train", "--hidden", "abc"], "--hidden", "'abc'"),
    (["train", "--hidden", "0"], "--hidden", "'0'"),
    (["train", "--hidden", "64,-3"], "--hidden", "'64,-3'"),
    (["train", "--threads", "-1"], "--threads", "'-1'"),
    (["train", "--threads", "0"], "--threads", "'0'"),
    (["train", "--seed", "-5"], "--seed", "'-5'"),
    (["train", "--bucket-mb", "0", "--distributed"], "--bucket-mb", "'0'"),
    (["train", "--bucket-mb", "4"], "--bucket-mb", "--distributed"),
    (["train", "--activation", "relux"], "--activation", "'relux'"),
    (["train", "--dataset", "imagenet"], "--dataset", "'imagenet'"),
    (["train", "--dataset", "mnist"], "--dataset", "mnist:PATH"),
    (["train", "--dataset", "mnist:/no/such/folder"], "--dataset", "/no/such/folder"),
    (["train", "--model", "cnn", "--dataset", "spiral"], "--model", "spiral"),
    (["train", "--model", "convnet", "--dataset", "spiral"], "--model", "convnet needs image data"),
    (["train", "--model", "vgg"], "--model", "'vgg'"),
    (["train", "--save", "/no/such/folder/m.npz"], "--save", "/no/such/folder"),
    (["train", "--plot", "/no/such/folder/c.png"], "--plot", "/no/such/folder"),
    (["search", "--lr", "1e-1,1e-4"], "--lr", "low 0.1 > high 0.0001"),
    (["search", "--lr", "1e-3"], "--lr", "'1e-3'"),
    (["search", "--lr", "1e-3,2e-3,3e-3"], "--lr", "'1e-3,2e-3,3e-3'"),
    (["search", "--lr", "0,1"], "--lr", "'0,1'"),
    (["search", "--lr", "1e-4,nan"], "--lr", "'1e-4,nan'"),
    (["search", "--weight-decay", "a,b"], "--weight-decay", "'a,b'"),
    (["search", "--trials", "0"], "--trials", "'0'"),
    (["search", "--epochs", "0"], "--epochs", "'0'"),
    (["search", "--jobs", "0"], "--jobs", "'0'"),
    (["search", "--batch-size", "-2"], "--batch-size", "'-2'"),
    (["search", "--hidden", "x"], "--hidden", "'x'"),
    (["bench", "--quick", "nosuch"], "NAME", "nosuch"),
    (["bench", "--quick", "--rounds", "0"], "--rounds", "'0'"),
]


@pytest.mark.parametrize("argv, option, got", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_values_exit_2_with_one_line_naming_the_option(capsys, argv, option, got):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""                                    # nothing loaded, nothing trained
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastnn {argv[0]}: error: argument {option}"), err
    assert got in lines[0], err
    assert "Traceback" not in err and "t_max" not in err and "n_jobs" not in err


def test_good_values_still_parse():
    args = cli.build_parser().parse_args(["search", "--lr", "1e-3,1e-3", "--hidden", " 32, 16 "])
    assert args.lr == (1e-3, 1e-3) and args.hidden == [32, 16]
    args = cli.build_parser().parse_args(["train", "--hidden", "", "--weight-decay", "0"])
    assert args.hidden == [] and args.weight_decay == 0.0 and args.threads is None
    defaults = cli.build_parser().parse_args(["train"])
    assert (defaults.epochs, defaults.batch_size, defaults.hidden, defaults.lr, defaults.weight_decay,
            defaults.activation, defaults.dataset, defaults.model) == (40, 64, [256, 128], 2e-3, 1e-4, "relu",
                                                                       "digits", "mlp")


# --- --version, --help ----------------------------------------------------------------------

def test_version_in_process(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out == f"fastnn {fnn.__version__}\n"


def test_version_as_a_command(tmp_path):
    for module in ("fastnn.cli", "fastnn"):
        # outside the clone, as a user runs it: the installed package, not the source folder
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"fastnn {fnn.__version__}\n"


def test_help_shows_defaults_and_choices(capsys):
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.split())           # argparse wraps lines
    for text in ("(default: 40)", "(default: 64)", "(default: 256,128)", "(default: 0.002)", "(default: 0.0001)",
                 "(default: relu)", "(default: digits)", "(default: mlp)", "(default: all cores)",
                 "digits, spiral, cifar10:PATH or mnist:PATH", "{mlp,cnn,convnet}", "{cpp,numba}"):
        assert text in flat, text
    assert "{" + ",".join(cli.ACTIVATION_LAYERS) + "}" in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat
    code, out, _ = run_cli(capsys, "search", "--help")
    flat = " ".join(out.split())
    assert code == 0 and "(default: 1e-4,1e-1)" in flat and "(default: 8)" in flat
    code, out, _ = run_cli(capsys, "bench", "--help")
    assert code == 0 and "--quick" in out
    for name, (what, _) in bench_quick.BENCHMARKS.items():
        assert f"  {name}" in out and what in " ".join(out.split()), name


def test_every_activation_choice_builds(capsys, keep_threads):
    for name in cli.ACTIVATION_LAYERS:
        layer = cli._act_layer(fnn, name, np.float64)
        assert isinstance(layer, fnn.nn.Module)
    # prelu's alpha is a parameter: it must follow --float64 (it used to be float32, and Adam refused the mix)
    code, out, err = run_cli(capsys, "train", "--activation", "prelu", "--float64", "--epochs", "1", "--hidden", "8",
                             "--quiet", "--threads", "1")
    assert code == 0, err
    assert "MLP 64-8-10 (prelu)" in out


# --- messages --------------------------------------------------------------------------------

def test_singular_and_plural(capsys, keep_threads):
    code, out, _ = run_cli(capsys, "train", "--epochs", "1", "--threads", "1", "--hidden", "8", "--quiet")
    assert code == 0
    assert ", 1 thread" in out and "1 threads" not in out
    assert "trained 1 epoch in" in out and "1 epochs" not in out
    code, out, _ = run_cli(capsys, "train", "--epochs", "2", "--threads", "2", "--hidden", "", "--quiet")
    assert code == 0
    assert ", 2 threads" in out and "trained 2 epochs in" in out
    assert "MLP 64-10," in out                        # no hidden layer: a linear classifier
    assert cli._count(1, "rank") == "1 rank" and cli._count(3, "rank") == "3 ranks"


def test_divergence_is_one_message_not_a_traceback(capsys, monkeypatch, keep_threads):
    def diverging_fit(self, *args, **kwargs):
        raise fnn.TrainingDiverged("loss became NaN/Inf at epoch 1, step 2")

    monkeypatch.setattr(fnn.Trainer, "fit", diverging_fit)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--lr", "1e10", "--epochs", "3", "--hidden", "32", "--quiet", "--threads", "1"])
    message = str(exc.value.code)
    assert message.startswith("fastnn train: training diverged with --lr 1e+10: ") and "\n" not in message


def test_doctor_says_the_cuda_reason_once(capsys):
    code, out, _ = run_cli(capsys, "doctor")
    assert code == 0
    cuda_lines = [line for line in out.splitlines() if "cuda" in line.lower().split(":")[0]]
    assert len(cuda_lines) == 1, out
    if cuda.reason is not None:
        assert out.count(cuda.reason) == 1, out
        assert cuda_lines[0] == f"cuda: unavailable: {cuda.reason}"
    else:
        assert cuda_lines[0] == "cuda: available"


# --- optional dependencies before training; the model before the plot ---------------------------

def test_plot_without_matplotlib_stops_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # "import matplotlib" raises ImportError
    model_file = tmp_path / "y.npz"
    code, out, err = run_cli(capsys, "train", "--plot", str(tmp_path / "x.png"), "--save", str(model_file))
    assert code == 2
    assert out == ""                                          # no data loaded, no epoch run
    assert len(err.strip().splitlines()) == 1, err
    assert "argument --plot" in err and "matplotlib" in err and 'pip install "fastnn-train[plot]"' in err
    assert not model_file.exists()
    code, out, err = run_cli(capsys, "search", "--plot", str(tmp_path / "s.png"))
    assert code == 2 and out == "" and "argument --plot" in err and "fastnn-train[plot]" in err


def test_the_model_is_saved_before_plotting(tmp_path, capsys, monkeypatch, keep_threads):
    def broken_plot(self, path=None, smooth=20):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(cli, "_require_matplotlib", lambda parser, option: None)
    monkeypatch.setattr(fnn.History, "plot", broken_plot)
    model_file = tmp_path / "y.npz"
    with pytest.raises(RuntimeError, match="plotting failed"):
        cli.main(["train", "--epochs", "1", "--hidden", "8", "--quiet", "--threads", "1",
                  "--plot", str(tmp_path / "x.png"), "--save", str(model_file)])
    assert "model written to" in capsys.readouterr().out
    model = fnn.nn.load(model_file)
    assert model(np.zeros((3, 64), np.float32)).shape == (3, 10)


# --- bench ---------------------------------------------------------------------------------

def _table_rows(out):
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["benchmark", "size", "unit"])
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith("total "):
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows, lines


def test_bench_quick_one_benchmark(capsys):
    code, out, err = run_cli(capsys, "bench", "--quick", "dropout", "--rounds", "2")
    assert code == 0, err
    rows, lines = _table_rows(out)
    assert list(rows) == ["dropout"]
    assert "[1/1] dropout: " in out
    cells = rows["dropout"]
    assert cells[2] == "GB/s"
    fastnn_rate, numpy_rate, ratio = float(cells[3]), float(cells[4]), float(cells[5].rstrip("x"))
    for v in (fastnn_rate, numpy_rate, ratio):
        assert math.isfinite(v) and v > 0, cells
    assert lines[-1].startswith("total ") and float(lines[-1].split()[1]) > 0


@pytest.mark.parametrize("backend_name", fnn.backend.available())
def test_every_quick_benchmark_validates_against_numpy(backend_name):
    """The setups (validation included) of every benchmark; each callable runs once; nothing is timed."""
    with fnn.backend.using(backend_name):
        for name, (_, setup) in bench_quick.BENCHMARKS.items():
            case = setup(np.random.default_rng(0), None)
            assert case.unit in ("GFLOP/s", "GB/s") and case.work > 0 and case.torch is None, name
            case.fastnn()
            case.numpy()


def test_bench_quick_refuses_to_time_a_wrong_kernel(capsys, monkeypatch):
    def wrong_dropout(x, p, seed, offset=0, *, out=None):
        return np.multiply(x, 2.5, out=out)      # keeps everything, wrong scale

    monkeypatch.setattr(fnn.ops, "dropout", wrong_dropout)
    code, out, err = run_cli(capsys, "bench", "--quick", "dropout", "--rounds", "1")
    assert code == 1
    assert "validation failed" in err and "dropout" in err and "benchmark  " not in out


def test_table_rows_and_ratios():
    rows = [bench_quick.Row("gemm", "8x8x8", "GFLOP/s", 30.0, 15.0, None, 1.0),
            bench_quick.Row("adam", "100", "GB/s", 2.0, 4.0, 8.0, 1.0)]
    lines = bench_quick.table(rows).splitlines()
    assert lines[0].split() == ["benchmark", "size", "unit", "fastnn", "numpy", "vs", "numpy", "torch", "vs", "torch"]
    assert lines[1].split() == ["gemm", "8x8x8", "GFLOP/s", "30.0", "15.0", "2.00x", "-", "-"]
    assert lines[2].split() == ["adam", "100", "GB/s", "2.0", "4.0", "0.50x", "8.0", "0.25x"]


def test_ctrl_c_is_one_line_and_status_130(capsys, monkeypatch):
    def interrupted(rng, torch):
        raise KeyboardInterrupt

    monkeypatch.setitem(bench_quick.BENCHMARKS, "dropout", ("interrupted on purpose", interrupted))
    code, out, err = run_cli(capsys, "bench", "--quick", "dropout")
    assert code == 130
    assert err == "fastnn bench: interrupted\n"
    assert "Traceback" not in out + err


def test_full_bench_without_a_checkout_suggests_quick(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_full_bench_runner", lambda: None)
    code, out, err = run_cli(capsys, "bench")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "bench/run.py" in err and "fastnn bench --quick" in err


def test_full_bench_passes_names_to_the_runner(tmp_path, capsys, monkeypatch):
    runner = tmp_path / "run.py"
    record = tmp_path / "called.txt"
    runner.write_text("BENCHES = {'gemm': 'bench_gemm', 'optim': 'bench_optim'}\n"
                      "import sys\n"
                      "def main(argv=None):\n"
                      "    assert sys.argv[1:] == []   # bench scripts that parse sys.argv must not see ours\n"
                      f"    with open({str(record)!r}, 'w') as f:\n"
                      "        f.write(','.join(argv))\n"
                      "if __name__ == '__main__':\n"
                      "    raise SystemExit('must not run as a script')\n")
    monkeypatch.setattr(cli, "_full_bench_runner", lambda: str(runner))
    code, _, err = run_cli(capsys, "bench", "optim", "gemm")
    assert code == 0, err
    assert record.read_text() == "optim,gemm"
    os.remove(record)
    code, _, err = run_cli(capsys, "bench", "dropout")        # a --quick name without --quick
    assert code == 2 and "argument NAME" in err and "dropout" in err and not record.exists()
