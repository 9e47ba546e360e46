"""Untrusted files cannot exhaust memory (issue 25).

Every reader of a user-supplied file (MNIST IDX plain and .gz, CIFAR-10 batches,
every .npz: fastnn._io.load_npz, fastnn.nn.load, Trainer.load_checkpoint,
preprocessing load_state_dict from a path) gets crafted files of about 1 MB or
less on disk: gzip and zip bombs that inflate to hundreds of MiB past what the
header declares, zip entries whose recorded size lies, headers declaring absurd
(or int64-overflowing) sizes, truncated files and files with trailing data.
Each must be a ValueError naming the file, with the peak resident memory of a
child process growing by less than 200 MiB during the call.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _io
from fastnn.data import files

BOMB = 320 << 20            # bytes a bomb inflates to: far past every limit the readers need
MAX_GROWTH_MIB = 200


# --- crafting -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zeros_deflate():
    """A raw deflate stream of BOMB zero bytes (~330 kB), made once; (stream, its bytes' crc32)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = bytes(16 << 20)
    out = [c.compress(block) for _ in range(BOMB // len(block))]
    out.append(c.flush())
    return b"".join(out), None


def _bomb_stream(prefix: bytes, zeros_deflate):
    """A raw deflate stream of ``prefix`` followed by BOMB zeros; (stream, crc32, size).
    The prefix is sync-flushed (byte-aligned, not final), so a fresh stream of zeros can follow it."""
    stream, _ = zeros_deflate
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_SYNC_FLUSH)
    crc, block = zlib.crc32(prefix), bytes(16 << 20)
    for _ in range(BOMB // len(block)):
        crc = zlib.crc32(block, crc)
    return head + stream, crc, len(prefix) + BOMB


def _gzip_bomb(path, prefix: bytes, zeros_deflate):
    stream, crc, size = _bomb_stream(prefix, zeros_deflate)
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff"
    path.write_bytes(header + stream + struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def _idx_header(magic: int, dims) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims)


def _npy(array) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return f.getvalue()


def _npy_header(shape, dtype="<f4") -> bytes:
    """A .npy version 1.0 header declaring ``shape`` of ``dtype``, and no data."""
    text = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def _zip(path, members):
    """A zip written by hand: members are (name, method, data, crc, size), where ``data``
    is what is stored (compressed for method 8) and crc/size are what the directory records."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        name = name.encode()
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        out += name + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, offset) + name
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def _stored(name, payload: bytes):
    return (name, 0, payload, zlib.crc32(payload), len(payload))


def _model():
    fnn.manual_seed(0)
    return fnn.nn.Sequential(fnn.nn.Linear(6, 5), fnn.nn.ReLU(), fnn.nn.Linear(5, 3))


def _model_members(prefix="state/", skip=("0.weight",)):
    """The honest entries of a model file (or a checkpoint's model part), less ``skip``."""
    return [_stored(f"{prefix}{k}.npy", _npy(v)) for k, v in _model().state_dict().items() if k not in skip]


def _text_member(name, text):
    return _stored(f"{name}.npy", _npy(np.array(text)))


def _context_members(reader):
    """What a file for ``reader`` holds besides the crafted entry, so the craft is what is refused."""
    if reader == "nn.load":
        return [_text_member("config", json.dumps(_model().get_config()))] + _model_members()
    if reader == "checkpoint":
        return [_text_member("trainer", "{}")] + _model_members("model/")
    if reader == "preprocessing":
        return [_stored("std_.npy", _npy(np.ones(3)))]
    return [_stored("b.npy", _npy(np.arange(3.0)))]


def _bad_entry_name(reader):
    return {"nn.load": "state/0.weight", "checkpoint": "model/0.weight", "preprocessing": "mean_"}.get(reader, "a")


def _craft_npz(kind, reader, path, zeros_deflate):
    name = _bad_entry_name(reader) + ".npy"
    shape = (6, 5)                        # the true shape of 0.weight; 30 float32 = 120 bytes
    head = _npy_header(shape)
    if kind == "inflates past its header, size honest":
        stream, crc, size = _bomb_stream(head, zeros_deflate)
        bad = (name, 8, stream, crc, size)
    elif kind == "inflates past its header, size lies":
        stream, _, _ = _bomb_stream(head, zeros_deflate)
        honest = head + bytes(120)
        bad = (name, 8, stream, zlib.crc32(honest), len(honest))
    elif kind == "gigantic shape":
        bad = _stored(name, _npy_header((1 << 40, 1 << 20)) + bytes(4096))
    elif kind == "shape overflows int64":
        bad = _stored(name, _npy_header((1 << 40, 1 << 40, 1 << 40)) + bytes(4096))
    elif kind == "object dtype":
        bad = _stored(name, _npy_header((1 << 30,), "|O") + bytes(4096))
    elif kind == "truncated data":
        bad = _stored(name, _npy_header((1 << 28,)) + bytes(1 << 20))
    else:
        raise AssertionError(kind)
    return _zip(path, _context_members(reader) + [bad])


# --- measuring --------------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys
    import fastnn as fnn
    from fastnn import _io
    from fastnn.data import files

    def model():
        fnn.manual_seed(0)
        return fnn.nn.Sequential(fnn.nn.Linear(6, 5), fnn.nn.ReLU(), fnn.nn.Linear(5, 3))

    m = model()
    trainer = fnn.Trainer(m, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(m.parameters(), lr=0.1), seed=0)
    READERS = {
        "load_npz": _io.load_npz,
        "nn.load": fnn.nn.load,
        "checkpoint": trainer.load_checkpoint,
        "preprocessing": lambda p: fnn.preprocessing.Standardize().load_state_dict(p),
        "load_mnist": files.load_mnist,
        "read_idx_images": lambda p: files.read_idx(p, files.IDX_IMAGES_MAGIC),
        "read_idx_labels": lambda p: files.read_idx(p, files.IDX_LABELS_MAGIC),
        "load_cifar10": files.load_cifar10,
        "read_cifar10_batch": files.read_cifar10_batch,
    }

    def kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:   # Linux >= 4.0: VmHWM := VmRSS
            f.write("5")

    results = {}
    for case, reader, path in json.loads(sys.argv[1]):
        reset_peak()
        before = kib("VmRSS")
        try:
            READERS[reader](path)
            outcome = ("no error", "")
        except Exception as exc:
            outcome = (type(exc).__name__, str(exc))
        results[case] = {"error": outcome[0], "message": outcome[1], "growth_mib": (kib("VmHWM") - before) / 1024}
    print("RESULTS", json.dumps(results))
""")


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _run_child(cases):
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], capture_output=True, text=True,
                         timeout=120, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


# --- the crafted files ------------------------------------------------------------------------------

NPZ_READERS = ["load_npz", "nn.load", "checkpoint", "preprocessing"]
NPZ_KINDS = ["inflates past its header, size honest", "inflates past its header, size lies", "gigantic shape",
             "shape overflows int64", "object dtype", "truncated data"]


def _mnist_folder(tmp, name, images=None, labels=None, n=10):
    """An MNIST folder whose train files are ``images``/``labels`` (callables writing a crafted
    file at the path given, returning it) or honest files of ``n`` examples."""
    folder = tmp / name
    folder.mkdir()
    if images is None:
        (folder / "train-images-idx3-ubyte").write_bytes(_idx_header(0x803, (n, 28, 28)) + bytes(n * 784))
        images_path = None
    else:
        images_path = images(folder)
    if labels is None:
        (folder / "train-labels-idx1-ubyte").write_bytes(_idx_header(0x801, (n,)) + bytes(n))
        labels_path = None
    else:
        labels_path = labels(folder)
    for prefix in ("t10k",):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_header(0x803, (2, 28, 28)) + bytes(2 * 784))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_header(0x801, (2,)) + bytes(2))
    return folder, str(images_path or labels_path)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, zeros_deflate):
    """{case: (reader, path given to it, the file the message must name)}."""
    tmp = tmp_path_factory.mktemp("untrusted")
    cases = {}

    # .npz readers
    for reader in NPZ_READERS:
        for kind in NPZ_KINDS:
            path = _craft_npz(kind, reader, tmp / f"{reader}-{NPZ_KINDS.index(kind)}.npz", zeros_deflate)
            cases[f"{reader}: {kind}"] = (reader, str(path), str(path))
    # A valid zip whose weight declares the wrong, large shape and really holds that many zeros:
    # refused from the architecture before it is read.
    for reader, prefix, extra in (("nn.load", "state/", "config"), ("checkpoint", "model/", "trainer")):
        head = _npy_header((BOMB // 4 // 1024, 1024))
        stream, crc, size = _bomb_stream(head, zeros_deflate)
        path = _zip(tmp / f"{reader}-wide.npz", _context_members(reader) + [(f"{prefix}0.weight.npy", 8, stream,
                                                                             crc, size)])
        cases[f"{reader}: a real {BOMB >> 20} MiB weight of the wrong shape"] = (reader, str(path), str(path))

    # MNIST IDX
    images_bomb = lambda f: _gzip_bomb(f / "train-images-idx3-ubyte.gz",  # noqa: E731
                                       _idx_header(0x803, (60000, 28, 28)), zeros_deflate)
    labels_bomb = lambda f: _gzip_bomb(f / "train-labels-idx1-ubyte.gz",  # noqa: E731
                                       _idx_header(0x801, (10,)), zeros_deflate)
    folder, bad = _mnist_folder(tmp, "images-bomb", images=images_bomb,
                                labels=lambda f: (f / "train-labels-idx1-ubyte").write_bytes(
                                    _idx_header(0x801, (60000,)) + bytes(60000)) and f / "train-labels-idx1-ubyte")
    cases["load_mnist: gzip bomb images"] = ("load_mnist", str(folder), bad)
    cases["read_idx: gzip bomb images"] = ("read_idx_images", bad, bad)
    folder, bad = _mnist_folder(tmp, "labels-bomb", labels=labels_bomb)
    cases["load_mnist: gzip bomb labels"] = ("load_mnist", str(folder), bad)
    cases["read_idx: gzip bomb labels"] = ("read_idx_labels", bad, bad)
    for label, dims, data in (("absurd dims", (2 ** 32 - 1,) * 3, bytes(1 << 20)),
                              ("dims overflowing int64", (2 ** 31, 2 ** 31, 4), b""),
                              ("truncated", (60000, 28, 28), bytes(1 << 20)),
                              ("trailing data", (10, 28, 28), bytes(7840 + (1 << 20)))):
        def write(f, dims=dims, data=data):
            path = f / "train-images-idx3-ubyte"
            path.write_bytes(_idx_header(0x803, dims) + data)
            return path
        folder, bad = _mnist_folder(tmp, label.replace(" ", "-"), images=write)
        cases[f"load_mnist: {label}"] = ("load_mnist", str(folder), bad)
        cases[f"read_idx: {label}"] = ("read_idx_images", bad, bad)
    # A gzip too small to inflate to what its header declares (3.9 GB, under the 4 GiB limit).
    path = tmp / "short.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_header(0x803, (5_000_000, 28, 28)) + bytes(1 << 20))
    cases["read_idx: gzip declaring 3.9 GB"] = ("read_idx_images", str(path), str(path))

    # CIFAR-10
    record = files.CIFAR10_RECORD
    for label, write in (
            ("huge sparse file", lambda p: os.truncate(p, 10 ** 10)),
            ("not a multiple of the record", lambda p: p.write_bytes(bytes(300 * record + 17))),
            ("gzip bomb", lambda p: _gzip_bomb(p, b"", zeros_deflate))):
        folder = tmp / f"cifar-{label.replace(' ', '-')}"
        folder.mkdir()
        for name in files.CIFAR10_TRAIN + (files.CIFAR10_TEST,):
            (folder / name).write_bytes(bytes(2 * record))
        bad = folder / ("data_batch_1.bin.gz" if label == "gzip bomb" else "data_batch_1.bin")
        if label != "gzip bomb":
            bad.write_bytes(b"")
        write(bad)
        cases[f"read_cifar10_batch: {label}"] = ("read_cifar10_batch", str(bad), str(bad))
        if label != "gzip bomb":            # load_cifar10 reads the .bin names only
            cases[f"load_cifar10: {label}"] = ("load_cifar10", str(folder), str(bad))

    for reader, given, _ in cases.values():
        if os.path.isfile(given):
            assert os.stat(given).st_blocks * 512 <= 1.3 * (1 << 20), (given, os.stat(given).st_blocks)
    return cases


@pytest.fixture(scope="module")
def outcomes(crafted):
    order = [[case, reader, given] for case, (reader, given, _) in crafted.items()]
    if _can_reset_peak():
        return _run_child(order)
    results = {}                    # no way to reset the peak: one child per file
    for item in order:
        results.update(_run_child([item]))
    return results


def test_every_crafted_file_is_refused_naming_it_with_bounded_memory(crafted, outcomes):
    failures = []
    for case, (reader, _, named) in crafted.items():
        got = outcomes[case]
        if got["error"] != "ValueError" or named not in got["message"] or got["growth_mib"] >= MAX_GROWTH_MIB:
            failures.append(f"{case}: {got}")
    assert failures == [], "\n".join(failures)
    assert len(crafted) >= 40


@pytest.mark.parametrize("case, reason", [
    ("load_npz: inflates past its header, size honest", "needs 248"),
    ("nn.load: inflates past its header, size lies", "inflates to more than the 120 bytes"),
    ("checkpoint: gigantic shape", "more than the limit of 4294967296 bytes"),
    ("preprocessing: shape overflows int64", "more than the limit"),
    ("load_npz: object dtype", "holds pickled Python objects"),
    ("nn.load: truncated data", "which needs 1073741952"),
    ("nn.load: a real 320 MiB weight of the wrong shape", "state_dict['0.weight'] has shape (81920, 1024), "
                                                          "the model expects (6, 5)"),
    ("checkpoint: a real 320 MiB weight of the wrong shape", "state_dict['0.weight'] has shape (81920, 1024)"),
    ("load_mnist: gzip bomb images", "has trailing bytes"),
    ("load_mnist: gzip bomb labels", "has trailing bytes"),
    ("read_idx: absurd dims", "more than the limit of 4294967296 bytes"),
    ("read_idx: dims overflowing int64", "(2147483648, 2147483648, 4), 18446744073709551616 bytes"),
    ("load_mnist: truncated", "truncated"),
    ("read_idx: trailing data", "has trailing bytes"),
    ("read_idx: gzip declaring 3.9 GB", "more than a"),
    ("load_cifar10: huge sparse file", "more than the limit"),
    ("read_cifar10_batch: not a multiple of the record", "not a whole number"),
    ("read_cifar10_batch: gzip bomb", "inflates to more than the limit"),
])
def test_the_messages_say_what_is_wrong(crafted, outcomes, case, reason):
    assert reason in outcomes[case]["message"], outcomes[case]


def test_the_bombs_would_have_cost_more_than_the_bound(zeros_deflate):
    """The crafts are real: each bomb inflates past the bound the test asserts."""
    stream, _ = zeros_deflate
    assert len(stream) < (1 << 20) and BOMB > (MAX_GROWTH_MIB << 20)
    assert len(zlib.decompressobj(-15).decompress(stream, 1 << 22)) == 1 << 22


# --- limits are documented and can be raised ----------------------------------------------------

def test_limits_are_documented_and_max_bytes_raises_them(tmp_path):
    for reader in (fnn.data.load_mnist, fnn.data.load_cifar10, fnn.nn.load, fnn.Trainer.load_checkpoint,
                   _io.load_npz):
        assert "max_bytes" in reader.__doc__, reader
    assert files.IDX_MAX_BYTES == 2 ** 32 and _io.MAX_NPZ_BYTES == 2 ** 32
    assert "IDX_MAX_BYTES" in fnn.data.load_mnist.__doc__
    assert "CIFAR10_MAX_BATCH_BYTES" in fnn.data.load_cifar10.__doc__

    images = tmp_path / "images-idx3-ubyte"
    images.write_bytes(_idx_header(0x803, (3, 28, 28)) + bytes(3 * 784))
    with pytest.raises(ValueError, match=r"images-idx3-ubyte: .*2352 bytes of data, more than the limit of 1000"):
        files.read_idx(images, 0x803, max_bytes=1000)
    assert files.read_idx(images, 0x803, max_bytes=2352).shape == (3, 28, 28)

    batch = tmp_path / "b.bin"
    batch.write_bytes(bytes(3 * files.CIFAR10_RECORD))
    with pytest.raises(ValueError, match=r"b.bin: 9219 bytes \(3 records\) is more than the limit"):
        files.read_cifar10_batch(batch, max_bytes=2 * files.CIFAR10_RECORD)
    assert files.read_cifar10_batch(batch, max_bytes=3 * files.CIFAR10_RECORD)[0].shape == (3, 3, 32, 32)

    model_file = tmp_path / "m.npz"
    _model().save(model_file)
    with pytest.raises(ValueError, match=r"m.npz is not a fastnn model file.*more than the limit of 100 bytes"):
        fnn.nn.load(model_file, max_bytes=100)
    np.testing.assert_array_equal(fnn.nn.load(model_file, max_bytes=1 << 20)[0].weight.data,
                                  _model()[0].weight.data)
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        _io.load_npz(model_file, max_bytes=-1)


def test_honest_files_still_read_exactly(tmp_path):
    """Compressed, Fortran-order, big-endian, 0-d, empty and string entries come back as np.load gives them."""
    arrays = {"a": np.random.default_rng(0).standard_normal((40, 7)), "z": np.zeros(100_000, np.float32),
              "f": np.asfortranarray(np.arange(12).reshape(3, 4)), "b": np.arange(5).astype(">i4"),
              "s": np.array("text"), "e": np.zeros((0, 3)), "n": np.array(7)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        out = _io.load_npz(path)
        assert sorted(out) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(out[k], v)
            assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert out["f"].flags.f_contiguous

    gz = tmp_path / "g-idx1-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        f.write(_idx_header(0x801, (6,)) + bytes([1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(files.read_idx(gz, 0x801), [1, 2, 3, 4, 5, 6])

    pre = fnn.preprocessing.Standardize().fit(np.random.default_rng(1).standard_normal((20, 3)))
    np.savez(tmp_path / "pre.npz", **pre.state_dict())
    back = fnn.preprocessing.Standardize().load_state_dict(tmp_path / "pre.npz")
    np.testing.assert_array_equal(back.mean_, pre.mean_)
    np.savez(tmp_path / "pre_bad.npz", mean_=np.zeros(3))
    with pytest.raises(ValueError, match=r"preprocessing state file .*pre_bad.npz: .*missing \['scale_'\]"):
        fnn.preprocessing.Standardize().load_state_dict(tmp_path / "pre_bad.npz")


def test_a_zip_entry_with_a_bad_crc_or_junk_after_its_stream_is_refused(tmp_path):
    payload = _npy(np.arange(4.0))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = c.compress(payload) + c.flush()
    bad_crc = _zip(tmp_path / "crc.npz", [("a.npy", 8, stream, zlib.crc32(payload) ^ 1, len(payload))])
    with pytest.raises(ValueError, match=r"crc.npz is not an .npz archive: .*CRC-32 mismatch"):
        _io.load_npz(bad_crc)
    junk = _zip(tmp_path / "junk.npz", [("a.npy", 8, stream + b"junk" * 10, zlib.crc32(payload), len(payload))])
    with pytest.raises(ValueError, match=r"junk.npz is not an .npz archive: .*compressed bytes follow"):
        _io.load_npz(junk)
    ok = _zip(tmp_path / "ok.npz", [("a.npy", 8, stream, zlib.crc32(payload), len(payload))])
    np.testing.assert_array_equal(_io.load_npz(ok)["a"], np.arange(4.0))
