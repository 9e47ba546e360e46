"""Reliability (issue 12): nothing crashes, nothing is lost.

Faults (a checkpoint write killed half-way, an exception in a callback,
divergence), bit-identical resume, two models trained in two threads at once,
thread-count changes mid-run, and no growth of memory or Python objects over
5,000 training steps."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import fastnn as fnn

BACKENDS = ["cpp", "numba"] if "cpp" in fnn.backend.available() else ["numba"]


def _mlp(seed, dropout=0.3):
    fnn.manual_seed(seed)
    return fnn.nn.Sequential(fnn.nn.Linear(64, 48), fnn.nn.BatchNorm1d(48), fnn.nn.ReLU(), fnn.nn.Dropout(dropout),
                             fnn.nn.Linear(48, 10))


def _trainer(seed=0, schedule=True, callbacks=()):
    model = _mlp(seed)
    opt = fnn.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = fnn.schedules.CosineAnnealing(t_max=40, per="step") if schedule else None
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, schedule=sched, callbacks=callbacks, seed=1)


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.data.load_digits()
    return X[:640], y[:640]


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# --- faults -------------------------------------------------------------------

_KILL_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastnn as fnn
    path = sys.argv[1]
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(2000, 4000), fnn.nn.ReLU(), fnn.nn.Linear(4000, 10))
    opt = fnn.optim.Adam(model.parameters())
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    version = 1
    while True:
        opt.flat_param[...] = version          # every parameter holds the version number
        trainer.save_checkpoint(path)
        print(f"saved {version}", flush=True)
        version += 1
""")


def test_checkpoint_write_killed_half_way_leaves_previous_checkpoint(tmp_path):
    """SIGKILL while save_checkpoint is writing (about 100 MB): the file at the
    path is the previous complete checkpoint, loadable, never a torn one."""
    path = tmp_path / "ckpt.npz"
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                             cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "saved 1"
        # Wait until the next write is under way (its temporary exists and has data), then kill.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".fastnn-")]
            if temps and any(p.stat().st_size > 0 for p in temps if p.exists()):
                break
            time.sleep(0.001)
        else:
            pytest.fail("the child never started a second checkpoint write")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".fastnn-")]
    assert leftovers, "the kill should have landed during a write"
    fnn.manual_seed(1)
    model = fnn.nn.Sequential(fnn.nn.Linear(2000, 4000), fnn.nn.ReLU(), fnn.nn.Linear(4000, 10))
    opt = fnn.optim.Adam(model.parameters())
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    trainer.load_checkpoint(path)
    version = opt.flat_param[0]
    assert version >= 1
    np.testing.assert_array_equal(opt.flat_param, version)  # one complete version, not a mix
    # The torn temporary is garbage, and reading it says so instead of crashing.
    with pytest.raises(ValueError, match="not a fastnn trainer checkpoint"):
        trainer.load_checkpoint(leftovers[0])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_resume_from_checkpoint_is_bit_identical(backend_name, digits, tmp_path):
    X, y = digits
    with fnn.backend.using(backend_name):
        straight = _trainer()
        h1 = straight.fit(X, y, epochs=4, batch_size=64, progress=False)
        first = _trainer()
        first.fit(X, y, epochs=2, batch_size=64, progress=False)
        first.save_checkpoint(tmp_path / "ckpt.npz")
        resumed = _trainer(seed=99)  # different initial weights: everything must come from the file
        resumed.load_checkpoint(tmp_path / "ckpt.npz")
        h2 = resumed.fit(X, y, epochs=4, batch_size=64, progress=False)
    _assert_same_state(straight.model, resumed.model)
    np.testing.assert_array_equal(straight.optimizer.flat_param, resumed.optimizer.flat_param)
    for a, b in zip(straight.optimizer.state, resumed.optimizer.state):
        np.testing.assert_array_equal(a, b)
    assert h1.loss == h2.loss and h1.lr == h2.lr


class _Boom(Exception):
    pass


class _RaiseAt(fnn.Callback):
    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def on_step_end(self, trainer, step, loss):
        if step == self.step:
            raise _Boom(f"step {step}")

    def on_epoch_end(self, trainer, epoch, history):
        if epoch == self.epoch:
            raise _Boom(f"epoch {epoch}")


@pytest.mark.parametrize("where", ["step", "epoch"])
def test_exception_in_callback_leaves_a_consistent_model(where, digits):
    """The exception propagates; the model holds exactly the weights of the
    steps that completed, is back in training mode, and training goes on."""
    X, y = digits
    steps_per_epoch = len(X) // 64
    cb = _RaiseAt(step=13) if where == "step" else _RaiseAt(epoch=1)
    broken = _trainer(schedule=False, callbacks=[cb])
    with pytest.raises(_Boom):
        broken.fit(X, y, epochs=5, batch_size=64, progress=False)
    done = 13 if where == "step" else 2 * steps_per_epoch
    assert broken.step_count == done
    assert broken.model.training

    # The same number of steps, uninterrupted (13 steps = one epoch of 10 + 3 steps of the next).
    reference = _trainer(schedule=False)
    reference.fit(X, y, epochs=done // steps_per_epoch, batch_size=64, progress=False)
    rest = done % steps_per_epoch
    if rest:
        idx = reference.rng.permutation(len(X))  # the order fit would draw for the next epoch
        for i in range(rest):
            sel = idx[i * 64:(i + 1) * 64]
            reference.train_step(X[sel], y[sel])
    _assert_same_state(broken.model, reference.model)

    # The parameters are still the optimizer's views: training resumes normally.
    broken.callbacks.clear()
    before = broken.optimizer.flat_param.copy()
    broken.fit(X, y, epochs=1, batch_size=64, progress=False)
    assert not np.array_equal(before, broken.optimizer.flat_param)
    assert np.shares_memory(broken.model.parameters()[0].data, broken.optimizer.flat_param)


def test_nan_gradient_stops_before_the_step_and_restores_the_last_good_epoch(digits):
    X, y = digits
    trainer = _trainer(schedule=False)

    class PoisonAfter(fnn.Callback):
        def on_epoch_end(self, trainer, epoch, history):
            self.good = (trainer.model.state_dict(), trainer.optimizer.state_dict())
            w = trainer.model.parameters()[0]
            original = trainer.model.backward

            def backward(dy):  # a gradient goes NaN while the loss is still finite
                out = original(dy)
                w.grad[0, 0] = np.nan
                return out
            object.__setattr__(trainer.model, "backward", backward)

    poison = PoisonAfter()
    trainer.callbacks.append(poison)
    with pytest.raises(fnn.TrainingDiverged, match="gradients became NaN/Inf"):
        trainer.fit(X, y, epochs=3, batch_size=64, progress=False)
    assert trainer.history.stopped_early and "epoch 2, step 11" in trainer.history.message
    model_state, optim_state = poison.good
    for k, v in trainer.model.state_dict().items():
        np.testing.assert_array_equal(v, model_state[k], err_msg=k)
    for k, v in trainer.optimizer.state_dict().items():
        np.testing.assert_array_equal(v, optim_state[k], err_msg=k)
    assert np.isfinite(trainer.optimizer.flat_param).all()


def test_train_step_skips_the_update_on_nonfinite_gradients(digits):
    X, y = digits
    trainer = _trainer(schedule=False)
    before = trainer.optimizer.flat_param.copy()
    Xb = X[:32].copy()
    Xb[0, 0] = np.float32(3e38)   # finite input whose activations overflow
    trainer.model.parameters()[0].data[:] *= 1e3
    before = trainer.optimizer.flat_param.copy()
    loss = trainer.train_step(Xb, y[:32])
    assert trainer.nonfinite in ("loss", "gradients")
    np.testing.assert_array_equal(trainer.optimizer.flat_param, before)
    assert not np.isfinite(loss) or trainer.nonfinite == "gradients"


# --- concurrency ----------------------------------------------------------------

def _fit(trainer, X, y, out, key, epochs=3, backend_name=None):
    with fnn.backend.using(backend_name or fnn.backend.current()):  # `using` is per thread
        trainer.fit(X, y, epochs=epochs, batch_size=64, progress=False)
    out[key] = trainer.model.state_dict()


def _fit_copy(seed, X, y, out, key, epochs=3):
    _fit(_trainer(seed=seed), X, y, out, key, epochs)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_two_models_in_two_threads_match_sequential_training(backend_name, digits):
    X, y = digits
    with fnn.backend.using(backend_name):
        sequential = {}
        _fit_copy(0, X, y, sequential, "a")
        _fit_copy(1, X, y, sequential, "b")
        # Built here, one after the other: initialization draws from fastnn's global generator.
        trainers = {"a": _trainer(seed=0), "b": _trainer(seed=1)}
        parallel = {}
        threads = [threading.Thread(target=_fit, args=(t, X, y, parallel, k, 3, backend_name))
                   for k, t in trainers.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
    for key in ("a", "b"):
        assert parallel[key].keys() == sequential[key].keys()
        for k, v in sequential[key].items():
            np.testing.assert_array_equal(parallel[key][k], v, err_msg=f"{key}:{k}")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_set_num_threads_mid_run(backend_name, digits):
    """Another thread flips the kernel thread count while a model trains: the
    run completes with the same result as at a fixed thread count (the kernels
    are deterministic across thread counts)."""
    X, y = digits
    saved = fnn.get_num_threads()
    try:
        with fnn.backend.using(backend_name):
            fixed = {}
            _fit_copy(0, X, y, fixed, "w")
            flipped, stop = {}, threading.Event()

            def flip():
                n = 0
                while not stop.is_set():
                    fnn.set_num_threads(1 + n % 2)
                    n += 1
                    time.sleep(0.0005)

            flipper = threading.Thread(target=flip)
            flipper.start()
            try:
                _fit_copy(0, X, y, flipped, "w")
            finally:
                stop.set()
                flipper.join()
    finally:
        fnn.set_num_threads(saved)
    for k, v in fixed["w"].items():
        np.testing.assert_allclose(flipped["w"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)


# --- resource use -----------------------------------------------------------------

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_no_growth_of_memory_or_objects_over_5000_steps(backend_name, digits):
    X, y = digits
    with fnn.backend.using(backend_name):
        trainer = _trainer(schedule=False)
        rng = np.random.default_rng(0)
        order = [rng.choice(len(X), 32, replace=False) for _ in range(50)]
        batches = [(X[i], y[i]) for i in order]

        def run(steps):
            for s in range(steps):
                xb, yb = batches[s % len(batches)]
                trainer.train_step(xb, yb)

        run(5000)  # warm-up: JIT, buffers, allocator pools
        gc.collect()
        tracemalloc.start()
        rss0, objects0 = _rss_bytes(), len(gc.get_objects())
        traced0 = tracemalloc.get_traced_memory()[0]
        run(5000)
        gc.collect()
        rss1, objects1 = _rss_bytes(), len(gc.get_objects())
        traced1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    print(f"\n{backend_name}: over 5000 steps RSS {rss0 / 2**20:.2f} -> {rss1 / 2**20:.2f} MiB, "
          f"traced (Python + NumPy) {traced0} -> {traced1} bytes, gc objects {objects0} -> {objects1}")
    # NumPy reports its buffers to tracemalloc: a leaked batch-sized array per step would be megabytes.
    assert traced1 - traced0 < 64 * 2**10, f"traced memory grew by {traced1 - traced0} bytes"
    assert objects1 - objects0 < 50, f"{objects1 - objects0} more Python objects"
    # glibc can take one step of up to about 1 MiB (its mmap threshold adapts) at any point.
    assert rss1 - rss0 < 4 * 2**20, f"resident memory grew by {(rss1 - rss0) / 2**10:.0f} KiB"
    assert np.isfinite(trainer.optimizer.flat_param).all()


@pytest.mark.skipif("cpp" not in fnn.backend.available(), reason="the compiled extension is not built")
def test_adaptive_threads_stay_within_the_configured_count():
    from fastnn.backend import cpp
    saved, adaptive = fnn.get_num_threads(), cpp._C.adaptive_threads()
    try:
        fnn.set_num_threads(2)
        for _ in range(3):
            assert 1 <= cpp._C.effective_num_threads() <= 2
            time.sleep(0.11)   # past the 100 ms measuring window
        cpp._C.set_adaptive_threads(False)
        assert cpp._C.effective_num_threads() == 2 == fnn.get_num_threads()
        fnn.set_num_threads(1)
        cpp._C.set_adaptive_threads(True)
        assert cpp._C.effective_num_threads() == 1
    finally:
        fnn.set_num_threads(saved)
        cpp._C.set_adaptive_threads(adaptive)
