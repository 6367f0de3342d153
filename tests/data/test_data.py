"""Tests for the data readers, the download helpers and the in-memory loader.

All data are tiny files generated in ``tmp_path`` in the canonical formats; nothing touches the
network (the one network function, ``bayescale.data.catalogue._fetch_url``, is monkeypatched).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bayescale.data import catalogue as data
from bayescale.data.catalogue import download, list_datasets, load_dataset
from bayescale.data.datasets import Dataset, UnsafePickleError, read_idx
from bayescale.data.loader import CropFlip, TensorLoader, random_crop, random_hflip

# ---------------------------------------------------------------- file writers (canonical formats)


def write_idx(path, array: np.ndarray, magic: int | None = None, gz: bool = False) -> None:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 + array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_mnist(directory, n_train=7, n_test=3, gz=True, seed=0):
    """Write the 4 IDX files; return (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))
    for name, arr in zip(IDX_NAMES, arrays, strict=True):
        write_idx(directory / (name + (".gz" if gz else "")), arr, gz=gz)
    return arrays


def cifar_arrays(n, num_labels, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [rng.integers(0, k, n) for k in num_labels]
    return pixels, labels


def write_cifar_bin(path, pixels, labels) -> None:
    table = np.concatenate([np.stack(labels, 1).astype(np.uint8), pixels], axis=1)
    path.write_bytes(table.tobytes())


def make_cifar10(root, fmt="binary", per_batch=4, protocol=4):
    """Write CIFAR-10 (5 train batches + test) under root/cifar10; return raw train/test arrays."""
    sub = "cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py"
    folder = root / "cifar10" / sub
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        pixels, (labels,) = cifar_arrays(per_batch, [10], seed=i)
        if fmt == "binary":
            write_cifar_bin(folder / f"{name}.bin", pixels, [labels])
        else:
            batch = {b"data": pixels, b"labels": [int(v) for v in labels], b"batch_label": b"x"}
            with open(folder / name, "wb") as fh:
                pickle.dump(batch, fh, protocol=protocol)
        split = out["test" if name == "test_batch" else "train"]
        split[0].append(pixels)
        split[1].append(labels)
    return {k: (np.concatenate(p), np.concatenate(y)) for k, (p, y) in out.items()}


def make_cifar100(root, fmt="binary", n=(6, 3), protocol=4):
    folder = root / "cifar100" / ("cifar-100-binary" if fmt == "binary" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, count) in enumerate(zip(("train", "test"), n, strict=True)):
        pixels, (coarse, fine) = cifar_arrays(count, [20, 100], seed=10 + i)
        if fmt == "binary":
            write_cifar_bin(folder / f"{split}.bin", pixels, [coarse, fine])
        else:
            batch = {b"data": pixels, b"fine_labels": fine.tolist(), b"coarse_labels": coarse}
            with open(folder / split, "wb") as fh:
                pickle.dump(batch, fh, protocol=protocol)
        out[split] = (pixels, coarse, fine)
    return out


def as_images(pixels):
    return torch.from_numpy(pixels.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)


# ---------------------------------------------------------------------------- MNIST / IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_reader_returns_written_values(tmp_path, gz, name):
    xtr, ytr, xte, yte = make_mnist(tmp_path / name, gz=gz)
    split = load_dataset(name, root=tmp_path)
    assert split.train.x.shape == (7, 1, 28, 28) and split.train.x.dtype == torch.float32
    expected = torch.from_numpy(xtr.astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(split.train.x, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(split.test.x[:, 0], torch.from_numpy(xte / 255.0).float())
    assert split.train.y.dtype == torch.int64
    assert split.train.y.tolist() == ytr.tolist() and split.test.y.tolist() == yte.tolist()
    assert split.num_classes == 10 and len(split.classes) == 10


def test_mnist_found_directly_in_root(tmp_path):
    make_mnist(tmp_path, n_train=2, n_test=2)
    assert len(load_dataset("MNIST", root=tmp_path).train) == 2


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_names_file(tmp_path, gz):
    make_mnist(tmp_path / "mnist", gz=gz)
    path = tmp_path / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*(truncated|corrupt)"):
        load_dataset("mnist", root=tmp_path)


def test_idx_wrong_magic_and_length(tmp_path):
    bad = tmp_path / "labels"
    write_idx(bad, np.zeros((3, 28, 28)))  # an image file where labels are expected
    with pytest.raises(ValueError, match="labels: wrong IDX magic number 2051 .expected 2049"):
        read_idx(bad, expected_magic=2049)
    long = tmp_path / "long"
    long.write_bytes((2049).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x01\x02\x03")
    with pytest.raises(ValueError, match="long: file is longer than its header"):
        read_idx(long)
    ok = tmp_path / "ok"
    write_idx(ok, np.array([4, 2]))
    assert read_idx(ok, 2049).tolist() == [4, 2]


def test_mnist_swapped_files_wrong_magic(tmp_path):
    make_mnist(tmp_path / "mnist")
    d = tmp_path / "mnist"
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros((3, 28, 28)), gz=True)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: wrong IDX magic"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_count_mismatch_and_label_range(tmp_path):
    d = tmp_path / "mnist"
    make_mnist(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(6), gz=True)
    with pytest.raises(ValueError, match="7 images but .*train-labels-idx1-ubyte.gz has 6"):
        load_dataset("mnist", root=tmp_path)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5, 10]), gz=True)
    with pytest.raises(ValueError, match=r"train-labels.*\[0, 9\].*\[0, 10\]"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("fmt,protocol", [("binary", 0), ("python", 2), ("python", 4),
                                          ("python", 5)])
def test_cifar10_reader_exact_and_pixel_mean(tmp_path, fmt, protocol):
    raw = make_cifar10(tmp_path, fmt, protocol=protocol)
    plain = load_dataset("cifar10", root=tmp_path, subtract_pixel_mean=False)
    xtr, xte = as_images(raw["train"][0]), as_images(raw["test"][0])
    assert plain.train.x.shape == (20, 3, 32, 32) and plain.test.x.shape == (4, 3, 32, 32)
    torch.testing.assert_close(plain.train.x, xtr, rtol=0, atol=1e-7)
    torch.testing.assert_close(plain.test.x, xte, rtol=0, atol=1e-7)
    assert plain.train.y.tolist() == raw["train"][1].tolist()
    assert plain.test.y.tolist() == raw["test"][1].tolist()
    # channel planes: byte 0 is red (0, 0), byte 1024 green (0, 0), byte 1023 red (31, 31)
    assert plain.train.x[0, 1, 0, 0] * 255 == pytest.approx(raw["train"][0][0, 1024])
    assert plain.train.x[0, 0, 31, 31] * 255 == pytest.approx(raw["train"][0][0, 1023])
    centred = load_dataset("cifar10", root=tmp_path)
    mean = raw["train"][0].astype(np.float64).mean(0).reshape(3, 32, 32) / 255.0
    torch.testing.assert_close(centred.stats["pixel_mean"], torch.from_numpy(mean).float())
    torch.testing.assert_close(centred.train.x, xtr - torch.from_numpy(mean).float())
    torch.testing.assert_close(centred.test.x, xte - torch.from_numpy(mean).float())
    assert centred.train.x.mean(0).abs().max() < 1e-6


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_cifar100_fine_and_coarse(tmp_path, fmt):
    raw = make_cifar100(tmp_path, fmt)
    fine = load_dataset("cifar100", root=tmp_path, subtract_pixel_mean=False)
    coarse = load_dataset("cifar-100", root=tmp_path, label_mode="coarse")
    torch.testing.assert_close(fine.train.x, as_images(raw["train"][0]), rtol=0, atol=1e-7)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.train.y.tolist() == raw["train"][2].tolist()
    assert coarse.test.y.tolist() == raw["test"][1].tolist()


def test_cifar_auto_prefers_binary_and_fmt_selects(tmp_path):
    binary = make_cifar10(tmp_path, "binary", per_batch=2)
    (tmp_path / "py").mkdir()
    python = make_cifar10(tmp_path / "py", "python", per_batch=3)
    os.rename(tmp_path / "py" / "cifar10" / "cifar-10-batches-py",
              tmp_path / "cifar10" / "cifar-10-batches-py")
    assert len(load_dataset("cifar10", root=tmp_path).train) == len(binary["train"][1]) == 10
    assert len(load_dataset("cifar10", root=tmp_path, fmt="python").train) == 15
    assert len(python["train"][1]) == 15


def test_cifar_binary_truncated_and_bad_label(tmp_path):
    make_cifar10(tmp_path, "binary")
    path = tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="data_batch_3.bin: size .* 3073-byte record"):
        load_dataset("cifar10", root=tmp_path)
    path.write_bytes(bytes([10]) + good[1:])
    with pytest.raises(ValueError, match=r"data_batch_3.bin: labels must lie in \[0, 9\]"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_pickle_truncated_and_mismatched(tmp_path):
    make_cifar10(tmp_path, "python")
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="test_batch: corrupt or truncated pickle"):
        load_dataset("cifar10", root=tmp_path)
    with open(path, "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}, fh)
    with pytest.raises(ValueError, match="test_batch: 3 images but 2 labels"):
        load_dataset("cifar10", root=tmp_path)


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_cifar_pickle_refused_not_executed(tmp_path, payload):
    make_cifar10(tmp_path, "python")
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    evil = _Evil(f"touch {marker}") if payload == "system" else _EvalEvil()
    with open(path, "wb") as fh:
        pickle.dump({b"data": evil, b"labels": [0]}, fh, protocol=2)
    with pytest.raises(UnsafePickleError, match=f"data_batch_2: refused .*{payload}") as info:
        load_dataset("cifar10", root=tmp_path)
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


# ------------------------------------------------------------------------- download / offline


def _patch_fetch(monkeypatch, fn):
    calls = []

    def fake(url, dst):
        calls.append(url)
        fn(url, dst)

    monkeypatch.setattr(data, "_fetch_url", fake)
    return calls


def test_missing_files_message_no_network(tmp_path, monkeypatch):
    calls = _patch_fetch(monkeypatch, lambda url, dst: pytest.fail("network used"))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist") in msg and "download=True" in msg
    assert all(name in msg for name in IDX_NAMES)
    make_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"mnist: t10k-images-idx3-ubyte\n"):
        load_dataset("mnist", root=tmp_path)
    assert calls == []


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESCALE_DATA", str(tmp_path))
    assert data.default_root() == tmp_path
    arrays = make_mnist(tmp_path / "fashion-mnist", n_train=3, n_test=2, gz=False)
    assert load_dataset("fashion_mnist").train.y.tolist() == arrays[1].tolist()


def test_offline_download_raises_file_not_found(tmp_path, monkeypatch):
    def offline(url, dst):
        raise urllib.error.URLError("Network is unreachable")

    calls = _patch_fetch(monkeypatch, offline)
    expected = "(?s)unreachable.*cifar-10-batches-bin: data_batch_1"
    with pytest.raises(FileNotFoundError, match=expected):
        load_dataset("cifar10", root=tmp_path, download=True)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert [p.name for p in (tmp_path / "cifar10").iterdir()] == []


def test_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    calls = _patch_fetch(monkeypatch, lambda url, dst: dst.write_bytes(b"not the real file"))
    with pytest.raises(ValueError, match="checksum mismatch for train-images-idx3-ubyte.gz"):
        download("mnist", tmp_path)
    assert len(calls) == 2  # both mirrors tried
    assert list((tmp_path / "mnist").iterdir()) == []


def _serve(files: dict):
    def fetch(url, dst):
        name = url.rsplit("/", 1)[1]
        if url.startswith("http://down/"):
            raise urllib.error.URLError("mirror down")
        dst.write_bytes(files[name])

    return fetch


def test_download_falls_back_to_mirror_and_loads(tmp_path, monkeypatch):
    src = tmp_path / "src"
    arrays = make_mnist(src)
    files = {f"{n}.gz": (src / f"{n}.gz").read_bytes() for n in IDX_NAMES}
    source = data._Source("", data._IDX, tuple(
        (k, hashlib.md5(v).hexdigest()) for k, v in files.items()), ("http://down/", "http://ok/"),
        gzip_ok=True)
    monkeypatch.setitem(data._SOURCES, "mnist", {"idx": source})
    calls = _patch_fetch(monkeypatch, _serve(files))
    split = load_dataset("mnist", root=tmp_path / "cache", download=True)
    assert split.test.y.tolist() == arrays[3].tolist()
    assert len(calls) == 8
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(files)


def _tar_bytes(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _patch_cifar_archive(monkeypatch, archive: bytes):
    source = data._Source("cifar-10-batches-bin", data._SOURCES["cifar10"]["binary"].files,
                          (("cifar-10-binary.tar.gz", hashlib.md5(archive).hexdigest()),),
                          ("http://ok/",), archive=True)
    monkeypatch.setitem(data._SOURCES, "cifar10", {"binary": source})
    _patch_fetch(monkeypatch, _serve({"cifar-10-binary.tar.gz": archive}))


def test_download_extracts_verified_archive(tmp_path, monkeypatch):
    raw = make_cifar10(tmp_path / "src", "binary", per_batch=2)
    folder = tmp_path / "src" / "cifar10" / "cifar-10-batches-bin"
    members = {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in folder.iterdir()}
    _patch_cifar_archive(monkeypatch, _tar_bytes(members))
    split = load_dataset("cifar10", root=tmp_path / "cache", download=True,
                         subtract_pixel_mean=False)
    torch.testing.assert_close(split.train.x, as_images(raw["train"][0]), rtol=0, atol=1e-7)
    assert not (tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz").exists()


@pytest.mark.parametrize("member", ["../escape.bin", "/tmp/abs_escape.bin",
                                    "cifar-10-batches-bin/../../escape.bin"])
def test_unsafe_archive_member_refused(tmp_path, monkeypatch, member):
    archive = _tar_bytes({"cifar-10-batches-bin/test_batch.bin": b"x" * 3073, member: b"bad"})
    _patch_cifar_archive(monkeypatch, archive)
    with pytest.raises(ValueError, match="refusing archive member"):
        download("cifar10", tmp_path / "cache")
    assert not (tmp_path / "escape.bin").exists()
    assert not (tmp_path / "cache" / "escape.bin").exists()
    assert not (tmp_path / "cache" / "cifar10" / "cifar-10-batches-bin").exists()


# ------------------------------------------------------------------ registry and small sets


def test_registry_and_unknown_name():
    names = list_datasets()
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "mnist-small", "digits", "diabetes",
            "synthetic", "heteroscedastic-1d", "fashion-mnist-small"} == set(names)
    with pytest.raises(ValueError, match="Did you mean 'cifar10'.*Valid names: mnist"):
        load_dataset("cifar1O")
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_digits_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    split = load_dataset("digits")
    assert (len(split.train), len(split.test)) == (1437, 360)
    assert split.train.x.shape[1:] == (1, 8, 8) and float(split.train.x.max()) == 1.0
    counts = torch.bincount(split.test.y, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified
    full = sklearn_datasets.load_digits()
    total = split.train.x.sum() + split.test.x.sum()
    assert float(total) == pytest.approx(full.data.sum() / 16.0, rel=1e-6)
    assert torch.equal(load_dataset("digits").test.y, split.test.y)


def test_diabetes_standardised_with_train_stats():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    split = load_dataset("diabetes")
    assert (len(split.train), len(split.test)) == (353, 89)
    torch.testing.assert_close(split.train.x.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    torch.testing.assert_close(split.train.x.std(0, unbiased=False), torch.ones(10))
    assert abs(float(split.train.y.mean())) < 1e-5
    s = split.stats
    x_raw, y_raw = sklearn_datasets.load_diabetes(return_X_y=True, scaled=False)
    back = (split.test.x * s["x_std"] + s["x_mean"]).double().numpy()
    nearest = np.abs(back[:, None, :] - x_raw[None]).max(-1).min(-1)
    assert nearest.max() < 1e-3  # every test row is a raw row, un-standardised
    y_back = (split.test.y * s["y_std"] + s["y_mean"]).double().numpy()
    assert np.abs(y_back[:, None] - y_raw[None]).min(-1).max() < 1e-3


def test_sklearn_missing_gives_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r'pip install "bayescale\[data\]"'):
        load_dataset("digits")


def test_synthetic_classification_is_learnable_and_seeded():
    split = data.make_synthetic_classification(n=600, num_classes=4, shape=(2, 3, 3), seed=3)
    assert split.train.x.shape == (480, 2, 3, 3) and len(split.test) == 120
    assert torch.bincount(torch.cat([split.train.y, split.test.y])).tolist() == [150] * 4
    xtr, xte = split.train.x.flatten(1), split.test.x.flatten(1)
    centroids = torch.stack([xtr[split.train.y == k].mean(0) for k in range(4)])
    accuracy = (torch.cdist(xte, centroids).argmin(1) == split.test.y).float().mean()
    assert accuracy > 0.9
    again = data.make_synthetic_classification(n=600, num_classes=4, shape=(2, 3, 3), seed=3)
    other = data.make_synthetic_classification(n=600, num_classes=4, shape=(2, 3, 3), seed=4)
    assert torch.equal(again.train.x, split.train.x)
    assert not torch.equal(other.train.x, split.train.x)


def test_heteroscedastic_noise_matches_reported_sd():
    split = data.make_heteroscedastic_1d(n=20000, seed=0)
    x, y, sd = split.train.x[:, 0], split.train.y, split.train.noise_sd
    torch.testing.assert_close(sd, 0.05 + 0.1 * x.abs())
    resid = y - x * torch.sin(x)
    for lo, hi in [(0.0, 1.0), (3.0, 4.0)]:
        band = (x.abs() >= lo) & (x.abs() < hi)
        ratio = resid[band].std() / sd[band].pow(2).mean().sqrt()
        assert 0.93 < float(ratio) < 1.07
    assert float(sd.max()) > 5 * float(sd.min())


def test_dataset_validation():
    with pytest.raises(ValueError, match="x has 3 rows but y has 2"):
        Dataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), "t", 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        Dataset(torch.zeros(2, 2), torch.tensor([0, 2]), "t", 2)
    with pytest.raises(ValueError, match="NaN/Inf"):
        Dataset(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2), "t")


# ------------------------------------------------------------------------------- loader


def epoch_ids(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([yb for _, yb in loader])


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_covers_every_example_once(world_size):
    n = 60
    x, y = torch.randn(n, 2), torch.arange(n)
    loaders = [TensorLoader(x, y, 5, seed=1, rank=r, world_size=world_size)
               for r in range(world_size)]
    assert len({len(ld) for ld in loaders}) == 1 and len(loaders[0]) == n // world_size // 5
    for epoch in range(2):
        shards = [epoch_ids(ld, epoch) for ld in loaders]
        assert torch.equal(torch.cat(shards).sort().values, y)
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not set(shards[a].tolist()) & set(shards[b].tolist())
        for ld, shard in zip(loaders, shards, strict=True):  # x and y stay paired
            ld.set_epoch(epoch)
            assert torch.equal(torch.cat([xb for xb, _ in ld]), x[shard])


def test_uneven_shards_have_equal_batches():
    x, y = torch.randn(23, 1), torch.arange(23)
    keep = [TensorLoader(x, y, 4, drop_last=False, rank=r, world_size=3) for r in range(3)]
    ids = [epoch_ids(ld, 0) for ld in keep]
    assert [len(ld) for ld in keep] == [2, 2, 2] and [len(i) for i in ids] == [8, 8, 8]
    assert set(torch.cat(ids).tolist()) == set(range(23))  # wrapped: all seen, one repeated
    tiny = [TensorLoader(x[:2], y[:2], 1, drop_last=False, rank=r, world_size=5) for r in range(5)]
    assert [epoch_ids(ld, 0).numel() for ld in tiny] == [1] * 5
    drop = [TensorLoader(x, y, 4, drop_last=True, rank=r, world_size=3) for r in range(3)]
    got = torch.cat([epoch_ids(ld, 0) for ld in drop])
    assert [len(ld) for ld in drop] == [1, 1, 1] and len(set(got.tolist())) == 12


def test_epochs_reshuffle_and_seed_reproduces():
    x, y = torch.randn(50, 1), torch.arange(50)
    a = TensorLoader(x, y, 10, seed=7)
    b = TensorLoader(x, y, 10, seed=7)
    c = TensorLoader(x, y, 10, seed=8)
    e0, e1 = epoch_ids(a, 0), epoch_ids(a, 1)
    assert not torch.equal(e0, e1) and torch.equal(e0.sort().values, y)
    assert torch.equal(epoch_ids(b, 1), e1)
    assert not torch.equal(epoch_ids(c, 0), e0)
    a.set_epoch(0)
    first = torch.cat([yb for _, yb in a])
    second = torch.cat([yb for _, yb in a])  # iterating again advances to epoch 1
    assert torch.equal(first, e0) and torch.equal(second, e1)
    plain = TensorLoader(x, y, 10, shuffle=False, drop_last=False)
    assert torch.equal(epoch_ids(plain, 3), y)


def test_loader_lengths_and_bad_input():
    x, y = torch.randn(10, 3), torch.arange(10)
    assert len(TensorLoader(x, y, 4)) == 2 and len(TensorLoader(x, y, 4, drop_last=False)) == 3
    last = list(TensorLoader(x, y, 4, drop_last=False, shuffle=False))[-1]
    assert last[1].tolist() == [8, 9]
    bad = x.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
        TensorLoader(bad, y, 2)
    with pytest.raises(ValueError, match="x has 10 examples but y has 9"):
        TensorLoader(x, y[:9], 2)
    with pytest.raises(ValueError, match="lower batch_size"):
        TensorLoader(x, y, 4, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        TensorLoader(x, y, 2, rank=2, world_size=2)


def test_crop_pad0_no_flip_is_identity():
    x = torch.randn(6, 3, 5, 7)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(CropFlip(padding=0, flip=False)(x, gen), x)
    assert torch.equal(random_crop(x, 0, gen), x)
    loader = TensorLoader(x, torch.arange(6), 3, augment=CropFlip(0, False))
    for xb, yb in loader:
        assert torch.equal(xb, x[yb])


def test_flip_equals_reversed_width():
    x = torch.randn(64, 2, 4, 6)
    out = CropFlip(padding=0, flip=True)(x, torch.Generator().manual_seed(5))
    ref = torch.Generator().manual_seed(5)
    torch.randint(0, 1, (2, 64), generator=ref)  # CropFlip draws offsets first
    mask = torch.rand(64, generator=ref) < 0.5
    assert 10 < int(mask.sum()) < 54
    assert torch.equal(out[mask], x[mask].flip(-1)) and torch.equal(out[~mask], x[~mask])
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)


def naive_crop_flip(x, padding, offsets, flip):
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        padded = F.pad(x[i], (padding,) * 4)
        oy, ox = int(offsets[0, i]), int(offsets[1, i])
        crop = padded[:, oy:oy + h, ox:ox + w]
        out[i] = crop.flip(-1) if flip is not None and flip[i] else crop
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_crop_matches_naive_reference(flip):
    x = torch.randn(40, 3, 8, 9) + 5.0  # non-zero everywhere, so padding shows up as zeros
    out = CropFlip(padding=3, flip=flip)(x, torch.Generator().manual_seed(11))
    ref = torch.Generator().manual_seed(11)
    offsets = torch.randint(0, 7, (2, 40), generator=ref)
    mask = torch.rand(40, generator=ref) < 0.5 if flip else None
    assert torch.equal(out, naive_crop_flip(x, 3, offsets, mask))
    assert (out == 0).any() and not torch.equal(out, x)
    single = random_crop(x, 3, torch.Generator().manual_seed(11))
    assert torch.equal(single, naive_crop_flip(x, 3, offsets, None))


def test_loader_augmentation_deterministic_per_rank():
    x, y = torch.rand(32, 3, 8, 8), torch.arange(32)

    def run(rank, seed=0):
        ld = TensorLoader(x, y, 8, seed=seed, augment=CropFlip(2), rank=rank, world_size=2)
        return torch.cat([xb for xb, _ in ld])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(0, seed=1))
    ld = TensorLoader(x, y, 8, augment=CropFlip(2))
    batch_x, batch_y = next(iter(ld))
    assert batch_x.shape == (8, 3, 8, 8) and not torch.equal(batch_x, x[batch_y])
