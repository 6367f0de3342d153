"""The MNIST subset shipped inside the package, its build script, and the Keras mnist.npz reader.

Only the package's own files and generated files in tmp_path are read (never a shared data folder).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bayescale.data import builtin as builtin_data
from bayescale.data.catalogue import list_datasets, load_dataset, load_mnist_small, read_mnist_npz
from bayescale.data.datasets import MNIST_CLASSES, read_idx

REPO = Path(__file__).resolve().parents[2]
SHIPPED = Path(builtin_data.__file__).parent / "files" / "mnist-small"


@pytest.fixture(scope="module")
def small():
    return load_mnist_small()


# ------------------------------------------------------------------------------ mnist-small


def test_mnist_small_is_real_mnist(small):
    assert (len(small.train), len(small.test)) == (10000, 2000)
    assert small.name == "mnist-small" and small.num_classes == 10
    assert small.classes == MNIST_CLASSES
    for part in (small.train, small.test):
        assert part.x.shape[1:] == (1, 28, 28) and part.x.dtype == torch.float32
        assert part.y.dtype == torch.int64 and part.num_classes == 10
        assert float(part.x.min()) == 0.0 and float(part.x.max()) == 1.0
        assert torch.equal(part.x * 255, (part.x * 255).round())  # bytes / 255
    # MNIST's well-known first labels and pixel statistics
    assert small.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert small.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert float(small.train.x.mean()) == pytest.approx(0.1307, abs=0.01)
    assert float(small.train.x.std()) == pytest.approx(0.3081, abs=0.01)
    train_counts = torch.bincount(small.train.y, minlength=10)
    test_counts = torch.bincount(small.test.y, minlength=10)
    assert train_counts.sum() == 10000 and int(train_counts.min()) > 800
    assert int(train_counts.max()) < 1200 and int(train_counts.argmax()) == 1  # ones most common
    assert int(test_counts.min()) > 150 and int(test_counts.max()) < 260


def test_mnist_small_registered_with_aliases(small):
    assert "mnist-small" in list_datasets()
    for name in ("mnist-small", "mnist_small", "MNIST-Small", " small_mnist "):
        split = load_dataset(name)
        assert split.name == "mnist-small" and torch.equal(split.test.y, small.test.y)
    assert torch.equal(load_dataset("mnist_small").train.x[:50], small.train.x[:50])


def test_mnist_small_files_match_checksums_and_readme():
    readme = (SHIPPED / "README.md").read_text()
    table = dict(re.findall(r"\| `([\w.-]+\.gz)` \| [\d,]+ \| `([0-9a-f]{32})` \|", readme))
    assert table == builtin_data.MNIST_SMALL_MD5
    for name, md5 in builtin_data.MNIST_SMALL_MD5.items():
        assert hashlib.md5((SHIPPED / name).read_bytes()).hexdigest() == md5
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme


def _copy_shipped(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "mnist-small"
    shutil.copytree(SHIPPED, folder)
    monkeypatch.setattr(builtin_data, "_mnist_small_files", lambda: folder)
    return folder


@pytest.mark.parametrize("name", sorted(builtin_data.MNIST_SMALL_MD5))
def test_mnist_small_corrupt_file_trips_md5(tmp_path, monkeypatch, name):
    folder = _copy_shipped(tmp_path, monkeypatch)
    assert len(load_dataset("mnist-small").train) == 10000  # the copy itself is fine
    blob = bytearray((folder / name).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=rf"(?s){re.escape(name)} is corrupt \(md5 .*reinstall"):
        load_dataset("mnist-small")


def test_mnist_small_missing_file_says_reinstall(tmp_path, monkeypatch):
    folder = _copy_shipped(tmp_path, monkeypatch)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz is missing.*reinstall"):
        load_mnist_small()


# --------------------------------------------------------------------------------- the script


def _write_idx_gz(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def test_make_mnist_small_script_takes_prefix_reproducibly(tmp_path):
    spec = importlib.util.spec_from_file_location("make_mnist_small",
                                                  REPO / "scripts" / "make_mnist_small.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    arrays = {}
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:40] = rng.integers(0, 256, (40, 28, 28))
        arrays[prefix] = (images, rng.integers(0, 10, n))
        _write_idx_gz(src / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx_gz(src / f"{prefix}-labels-idx1-ubyte.gz", arrays[prefix][1])
    for out in ("a", "b"):
        script.main([str(src), "--out", str(tmp_path / out), "--n-train", "30", "--n-test", "7"])
    for name in builtin_data.MNIST_SMALL_MD5:
        blob = (tmp_path / "a" / name).read_bytes()
        assert blob == (tmp_path / "b" / name).read_bytes()  # byte-reproducible
        assert blob[4:8] == b"\0\0\0\0"  # gzip mtime 0
        prefix = name.split("-")[0]
        got = read_idx(tmp_path / "a" / name)
        want = arrays[prefix][0 if "images" in name else 1][: 30 if prefix == "train" else 7]
        np.testing.assert_array_equal(got, want)
        assert hashlib.md5(blob).hexdigest() in (tmp_path / "a" / "README.md").read_text()
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SystemExit, match="missing t10k-labels"):
        script.main([str(src), "--out", str(tmp_path / "c")])


# ------------------------------------------------------------------------------- mnist.npz


def keras_arrays(n_train=6, n_test=4, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test).astype(np.uint8)}


def write_npz(path: Path, arrays: dict, compressed: bool = False) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_npz_via_load_dataset(tmp_path, compressed):
    arrays = keras_arrays()
    path = write_npz(tmp_path / "mnist.npz", arrays, compressed)
    split = load_dataset("mnist", root=path)
    assert split.train.x.shape == (6, 1, 28, 28) and split.train.x.dtype == torch.float32
    want = torch.from_numpy(arrays["x_test"].astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(split.test.x, want, rtol=0, atol=1e-7)
    assert split.train.y.dtype == torch.int64
    assert split.train.y.tolist() == arrays["y_train"].tolist()
    assert split.test.y.tolist() == arrays["y_test"].tolist()
    assert split.classes == MNIST_CLASSES and split.name == "mnist"
    assert load_dataset("mnist", root=str(path), download=True).test.y.tolist() == \
        arrays["y_test"].tolist()  # a string path works; nothing to download
    assert load_dataset("fashion_mnist", root=path).classes[0] == "T-shirt/top"


def _npz_error(tmp_path, **changes):
    arrays = keras_arrays()
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError) as info:
        read_mnist_npz(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_mnist_npz_content_errors(tmp_path):
    assert "missing arrays ['y_test']" in _npz_error(tmp_path, y_test=None)
    msg = _npz_error(tmp_path, x_train=np.zeros((6, 28, 27), np.uint8))
    assert "[x_train]: images must be uint8 [N, 28, 28], got uint8 [6, 28, 27]" in msg
    assert "got float32" in _npz_error(tmp_path, x_test=np.zeros((4, 28, 28), np.float32))
    assert "labels must be integers" in _npz_error(tmp_path, y_train=np.zeros(6, np.float32))
    assert "labels must be integers" in _npz_error(tmp_path, y_train=np.zeros((6, 1), np.uint8))
    assert "6 images but" in _npz_error(tmp_path, y_train=np.zeros(5, np.uint8))
    msg = _npz_error(tmp_path, y_test=np.array([0, 1, 10, 2], np.uint8))
    assert r"[y_test]: labels must lie in [0, 9], found range [0, 10]" in msg
    assert "found range [-1, 2]" in _npz_error(tmp_path, y_test=np.array([0, -1, 2, 2], np.int8))


def test_mnist_npz_corrupt_files(tmp_path):
    good = write_npz(tmp_path / "good.npz", keras_arrays())
    blob = good.read_bytes()
    cases = {"truncated.npz": blob[: len(blob) // 2],
             "garbage.npz": b"this is not an archive" * 10,
             "flipped.npz": blob[:3000] + bytes([blob[3000] ^ 0xFF]) + blob[3001:]}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=rf"{name}: corrupt or not a NumPy .npz file"):
            read_mnist_npz(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    with pytest.raises(ValueError, match="not an .npz archive"):
        read_mnist_npz(tmp_path / "single.npz")
    with pytest.raises(FileNotFoundError, match="no such file.*x_train"):
        load_dataset("mnist", root=tmp_path / "absent.npz")


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("pwned-by-npz"),))


def test_mnist_npz_refuses_pickled_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays = keras_arrays()
    arrays["y_train"] = np.array([_Boom()] * 6, dtype=object)
    path = write_npz(tmp_path / "evil.npz", arrays)
    with pytest.raises(ValueError, match="evil.npz: corrupt or not a NumPy .npz file"):
        read_mnist_npz(path)
    assert not (tmp_path / "pwned-by-npz").exists()
