"""Dataset files (CIFAR-10 binary, MNIST IDX) built tiny in tmp_path in the exact
formats, their failure modes, the DataLoader, and `fastnn train --dataset`."""
import gzip
import os
import threading
import time

import numpy as np
import pytest

import fastnn as fnn

CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_cifar(folder, rng, per_file=4):
    """Six batch files of `per_file` records: label byte, then R, G, B planes of 32x32, row-major."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name in CIFAR_FILES:
        labels = rng.integers(0, 10, per_file).astype(np.uint8)
        pixels = rng.integers(0, 256, (per_file, 3, 32, 32)).astype(np.uint8)
        records = b"".join(bytes([labels[k]]) + pixels[k].tobytes() for k in range(per_file))
        with open(os.path.join(folder, name), "wb") as f:
            f.write(records)
        out[name] = (pixels, labels)
    return out


def idx_bytes(array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, rng, n_train=20, n_test=6, gz=False):
    os.makedirs(folder, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            path = os.path.join(folder, stem + (".gz" if gz else ""))
            with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
                f.write(raw)
        data[prefix] = (images, labels)
    return data


def test_cifar10_reads_the_binary_format(tmp_path, rng):
    written = write_cifar(tmp_path / "cifar-10-batches-bin", rng)
    for where in (tmp_path, tmp_path / "cifar-10-batches-bin", str(tmp_path)):
        X, y, Xt, yt = fnn.data.load_cifar10(where)
        assert X.shape == (20, 3, 32, 32) and X.dtype == np.uint8 and X.flags.c_contiguous
        assert Xt.shape == (4, 3, 32, 32) and y.dtype == np.int64 and yt.dtype == np.int64
        np.testing.assert_array_equal(X, np.concatenate([written[n][0] for n in CIFAR_FILES[:5]]))
        np.testing.assert_array_equal(y, np.concatenate([written[n][1] for n in CIFAR_FILES[:5]]))
        np.testing.assert_array_equal(Xt, written["test_batch.bin"][0])
    # Plane order: byte 1 of a record is the red value of pixel (0, 0), byte 1025 the green one.
    raw = (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert Xt[0, 0, 0, 0] == raw[1] and Xt[0, 1, 0, 0] == raw[1025] and Xt[0, 2, 31, 31] == raw[3072]


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:-1], "not a whole number"),             # truncated
    (lambda b: b + b"\0" * 10, "not a whole number"),     # trailing garbage
    (lambda b: b"", "0 bytes"),                           # empty
    (lambda b: bytes([12]) + b[1:], "label 12"),          # not a CIFAR-10 class
])
def test_cifar10_rejects_malformed_files(tmp_path, rng, damage, match):
    write_cifar(tmp_path, rng, per_file=2)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        fnn.data.load_cifar10(tmp_path)
    assert "data_batch_3.bin" in str(info.value)


def test_cifar10_missing_file(tmp_path, rng):
    write_cifar(tmp_path, rng, per_file=1)
    os.remove(tmp_path / "test_batch.bin")
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        fnn.data.load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        fnn.data.load_cifar10(tmp_path / "nowhere")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, rng, gz):
    data = write_mnist(tmp_path, rng, gz=gz)
    X, y, Xt, yt = fnn.data.load_mnist(tmp_path)
    assert X.shape == (20, 1, 28, 28) and X.dtype == np.uint8 and Xt.shape == (6, 1, 28, 28)
    assert y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(X[:, 0], data["train"][0])
    np.testing.assert_array_equal(y, data["train"][1])
    np.testing.assert_array_equal(Xt[:, 0], data["t10k"][0])
    np.testing.assert_array_equal(yt, data["t10k"][1])


def _rewrite(path, transform):
    path.write_bytes(transform(path.read_bytes()))


@pytest.mark.parametrize("name,damage,match", [
    ("train-images-idx3-ubyte", lambda b: b[:-5], "truncated"),
    ("train-images-idx3-ubyte", lambda b: b[:10], "truncated IDX header"),
    ("train-images-idx3-ubyte", lambda b: b[:2], "too short"),
    ("train-images-idx3-ubyte", lambda b: b + b"\0", "trailing bytes"),
    ("train-images-idx3-ubyte", lambda b: b"\0\0\x08\x01" + b[4:], "magic number 0x00000801"),
    ("t10k-labels-idx1-ubyte", lambda b: b"\0\0\x0d\x01" + b[4:], "magic number 0x00000d01"),
    ("t10k-labels-idx1-ubyte", lambda b: b[:4] + (5).to_bytes(4, "big") + b[8:13], "5 labels for the 6 images"),
    ("t10k-labels-idx1-ubyte", lambda b: b[:-1] + b"\x0b", "label 11"),
])
def test_mnist_rejects_malformed_files(tmp_path, rng, name, damage, match):
    write_mnist(tmp_path, rng)
    _rewrite(tmp_path / name, damage)
    with pytest.raises(ValueError, match=match) as info:
        fnn.data.load_mnist(tmp_path)
    assert name in str(info.value)


def test_mnist_corrupt_gzip_and_missing(tmp_path, rng):
    write_mnist(tmp_path, rng, gz=True)
    _rewrite(tmp_path / "t10k-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        fnn.data.load_mnist(tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        fnn.data.load_mnist(tmp_path)


# --- DataLoader -----------------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("batch_size,drop_last", [(7, False), (7, True), (50, False), (64, False)])
def test_dataloader_yields_every_sample_once_per_epoch(prefetch, batch_size, drop_last):
    n = 50
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n)
    loader = fnn.data.DataLoader(X, y, batch_size, seed=1, prefetch=prefetch, drop_last=drop_last)
    epochs = []
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert xb.flags.c_contiguous and xb.dtype == np.float32 and len(xb) <= batch_size
            if drop_last:
                assert len(xb) == batch_size
            np.testing.assert_array_equal(xb[:, 0], yb * 3)      # rows stay paired with their labels
            seen.append(yb)
        seen = np.concatenate(seen)
        expected = (n // batch_size) * batch_size if drop_last else n
        assert len(seen) == expected == len(loader) * batch_size - (0 if drop_last else -n % batch_size)
        assert len(np.unique(seen)) == len(seen)
        epochs.append(seen)
    if batch_size < n:
        assert not np.array_equal(epochs[0], epochs[1])          # a new order each epoch
    ordered = np.concatenate([yb for _, yb in fnn.data.DataLoader(X, y, 8, shuffle=False, prefetch=prefetch)])
    np.testing.assert_array_equal(ordered, y)


def test_dataloader_is_deterministic_and_augments(rng):
    X = rng.integers(0, 256, (40, 3, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 4, 40)
    augment = fnn.augment.Compose([fnn.augment.RandomFlip(), fnn.augment.Mixup(0.5, num_classes=4)])

    def run(seed, prefetch):
        loader = fnn.data.DataLoader(X, y, 16, seed=seed, augment=augment, prefetch=prefetch)
        return [b for _ in range(2) for b in loader]

    a, b, c = run(3, 2), run(3, 0), run(4, 2)
    assert len(a) == 6
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert a[0][0].dtype == np.float32 and 0 <= a[0][0].min() and a[0][0].max() <= 1   # uint8 scaled by 1/255
    assert a[0][1].shape == (16, 4) and np.allclose(a[0][1].sum(axis=1), 1)            # Mixup's soft labels
    assert not np.array_equal(a[0][0], c[0][0])


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "fastnn-DataLoader" and t.is_alive()]


def _wait_for(condition, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_dataloader_prefetches_in_the_background_and_stops_cleanly():
    X = np.zeros((100, 2), np.float32)
    calls = []

    def counting(x, rng):
        calls.append(len(x))
        return x + 1

    loader = fnn.data.DataLoader(X, None, 10, seed=0, augment=counting, prefetch=3)
    it = iter(loader)
    xb, yb = next(it)
    assert yb is None and np.all(xb == 1)
    # The producer runs ahead: batch 0 consumed, 3 waiting in the queue, 1 more ready to go in.
    assert _wait_for(lambda: len(calls) == 5)
    time.sleep(0.05)
    assert len(calls) == 5                                        # bounded by prefetch
    del it                                                        # stop early: the thread ends
    assert _wait_for(lambda: not _loader_threads())
    for _ in loader:                                              # break out of a for loop
        break
    assert _wait_for(lambda: not _loader_threads())
    assert sum(1 for _ in loader) == 10                           # and the loader is reusable


def test_dataloader_reraises_augmentation_errors():
    def broken(x, rng):
        raise RuntimeError("augmentation failed")

    loader = fnn.data.DataLoader(np.zeros((20, 2)), np.zeros(20, np.int64), 5, augment=broken)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        list(loader)
    assert _wait_for(lambda: not _loader_threads())


def test_dataloader_bad_arguments():
    with pytest.raises(ValueError, match="one entry per sample"):
        fnn.data.DataLoader(np.zeros((5, 2)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        fnn.data.DataLoader(np.zeros((5, 2)), None, 0)
    with pytest.raises(TypeError, match="numpy"):
        fnn.data.DataLoader([[1.0]], None, 1)
    with pytest.raises(TypeError, match="callable"):
        fnn.data.DataLoader(np.zeros((5, 2)), None, 2, augment="flip")


# --- CLI ------------------------------------------------------------------------------

def _train(capsys, *args):
    """Run `fastnn train` in this process (a subprocess would pay the import again): (exit code, stdout)."""
    from fastnn import cli
    try:
        code = cli.main(["train", "--quiet", "--epochs", "2", "--hidden", "16", *args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().out


def test_cli_trains_on_dataset_files(tmp_path, rng, capsys):
    write_mnist(tmp_path / "mnist", rng, n_train=100, n_test=20, gz=True)
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin", np.random.default_rng(0), per_file=20)
    for spec, expect in ((f"mnist:{tmp_path / 'mnist'}", "90/10/20 train/val/test, MLP 784-16-10"),
                         (f"cifar10:{tmp_path / 'cifar'}", "/20 train/val/test, MLP 3072-16-")):
        code, out = _train(capsys, "--dataset", spec)
        assert code == 0 and expect in out and "test accuracy" in out, out
    code, _ = _train(capsys, "--dataset", f"mnist:{tmp_path / 'cifar'}")
    assert "train-images-idx3-ubyte" in str(code)
    code, _ = _train(capsys, "--dataset", "imagenet")
    assert code == 2     # refused by the parser (exit 2); tests/test_cli.py checks the message


def test_dataloader_augments_on_its_own_thread_count():
    import numba
    seen = []

    def record(x, rng):
        seen.append((threading.current_thread().name, numba.get_num_threads()))
        return x

    before = numba.get_num_threads()
    list(fnn.data.DataLoader(np.zeros((6, 2)), None, 3, augment=record))
    assert seen == [("fastnn-DataLoader", 1)] * 2 and numba.get_num_threads() == before


# --- issue 18 item 10: k-fold cross-validation ------------------------------------------------

@pytest.mark.parametrize("n, k, seed", [(10, 2, None), (10, 3, 0), (17, 5, 1), (5, 5, None), (101, 7, 42),
                                        (6, 4, np.random.default_rng(3))])
def test_kfold_partitions_the_indices(n, k, seed):
    folds = fnn.data.kfold(n, k, seed=seed)
    assert len(folds) == k
    vals = [val for _, val in folds]
    for train, val in folds:
        assert train.dtype == np.int64 and val.dtype == np.int64
        assert len(val) > 0 and len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))   # train = the rest
    allval = np.concatenate(vals)
    assert len(allval) == n and len(np.unique(allval)) == n     # disjoint, union = range(n)
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_order_seed_and_errors():
    folds = fnn.data.kfold(7, 3)
    assert [v.tolist() for _, v in folds] == [[0, 1, 2], [3, 4], [5, 6]]          # in order without a seed
    a, b, c = (fnn.data.kfold(50, 5, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))                   # same seed, same folds
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    assert not np.array_equal(np.concatenate([v for _, v in a]), np.arange(50))    # shuffled
    with pytest.raises(ValueError, match="k must be at least 2.*got k=1"):
        fnn.data.kfold(10, 1)
    with pytest.raises(ValueError, match="k must be at most n .*got k=11 and n=10"):
        fnn.data.kfold(10, 11)
    with pytest.raises(TypeError, match="n must be an int, the number of examples \\(e.g. len\\(X\\)\\), got ndarray"):
        fnn.data.kfold(np.zeros((10, 2)), 2)
    with pytest.raises(TypeError, match="k must be an int"):
        fnn.data.kfold(10, 2.0)


def test_kfold_with_random_search_averages_over_folds():
    X, y = fnn.data.load_digits()
    X, y = X[:300], y[:300]
    folds = fnn.data.kfold(len(X), 3, seed=0)
    seen = []

    def objective(params):
        scores = []
        for train_idx, val_idx in folds:      # the folds are a list: every trial sees all of them
            model = fnn.nn.Sequential(fnn.nn.Linear(64, 32, activation="relu", rng=0), fnn.nn.Linear(32, 10, rng=1))
            trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                                  fnn.optim.Adam(model.parameters(), lr=params["lr"]), seed=0)
            trainer.fit(X[train_idx], y[train_idx], epochs=3, batch_size=64, progress=False)
            scores.append(trainer.evaluate(X[val_idx], y[val_idx])["accuracy"])
        seen.append(len(scores))
        return float(np.mean(scores))

    result = fnn.search.random_search(objective, {"lr": fnn.search.loguniform(1e-3, 3e-2)}, trials=3, seed=0)
    assert seen == [3, 3, 3]
    assert result.best.score > 0.5 and result.best.score == max(t.score for t in result)
