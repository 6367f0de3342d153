"""Build the MNIST subset shipped inside the package (``load_dataset("mnist-small")``).

Reads the four canonical gzipped (or raw) MNIST IDX files from SRC and writes the first
``--n-train`` training and the first ``--n-test`` test examples, unchanged, as four gzipped IDX
files with the canonical names, plus a README.md with provenance and MD5 checksums. Gzip is
written with mtime 0 and no file name, so the output is byte-reproducible for a given zlib.

    python scripts/make_mnist_small.py /path/to/mnist

After regenerating, copy the printed MD5s into ``MNIST_SMALL_MD5`` in
``bayescale/builtin_data.py`` (the loader refuses files that do not match).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

STEMS = {  # file stem -> (magic, expected number of items in the full data set)
    "train-images-idx3-ubyte": (2051, 60000),
    "train-labels-idx1-ubyte": (2049, 60000),
    "t10k-images-idx3-ubyte": (2051, 10000),
    "t10k-labels-idx1-ubyte": (2049, 10000),
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bayescale" / "data" / "files" / "mnist-small"


def read_source(directory: Path, stem: str) -> tuple[list[int], bytes]:
    """Return (dims, payload) of one IDX file, checking magic, dims and length."""
    for path in (directory / f"{stem}.gz", directory / stem):
        if path.is_file():
            break
    else:
        raise SystemExit(f"{directory}: missing {stem}.gz (or {stem})")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic, full_n = STEMS[stem]
    if int.from_bytes(raw[:4], "big") != magic:
        raise SystemExit(f"{path}: magic {int.from_bytes(raw[:4], 'big')}, expected {magic}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    want = [full_n, 28, 28] if ndim == 3 else [full_n]
    if dims != want or len(raw) != 4 + 4 * ndim + int(np.prod(dims)):
        raise SystemExit(f"{path}: dims {dims} / {len(raw)} bytes; expected full MNIST {want}")
    return dims, raw[4 + 4 * ndim:]


def subset(dims: list[int], payload: bytes, n: int, magic: int) -> bytes:
    """The IDX bytes of the first ``n`` items."""
    row = int(np.prod(dims[1:], dtype=np.int64))
    new_dims = [n, *dims[1:]]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in new_dims)
    return header + payload[: n * row]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder with the canonical MNIST IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    md5s, counts, mean = {}, {}, 0.0
    for stem, (magic, _) in STEMS.items():
        n = args.n_train if stem.startswith("train") else args.n_test
        dims, payload = read_source(args.src, stem)
        raw = subset(dims, payload, n, magic)
        blob = gzip.compress(raw, compresslevel=9, mtime=0)
        name = f"{stem}.gz"
        (args.out / name).write_bytes(blob)
        md5s[name] = (hashlib.md5(blob).hexdigest(), len(blob))
        body = np.frombuffer(raw, np.uint8, offset=len(raw) - n * (784 if magic == 2051 else 1))
        if magic == 2049:
            counts[stem[:5]] = np.bincount(body, minlength=10).tolist()
        elif stem.startswith("train"):
            mean = float(body.mean(dtype=np.float64) / 255.0)

    rows = "\n".join(f"| `{k}` | {size:,} | `{m}` |" for k, (m, size) in md5s.items())
    readme = f"""# mnist-small: a subset of MNIST shipped with bayescale

Loaded by `bayescale.data.load_dataset("mnist-small")` (no download, no data folder).

- **Source**: the MNIST database of handwritten digits by Yann LeCun, Corinna Cortes and
  Christopher J. C. Burges (http://yann.lecun.com/exdb/mnist/), licensed CC BY-SA 3.0
  (https://creativecommons.org/licenses/by-sa/3.0/). This subset is redistributed under the
  same licence.
- **Contents**: training examples with indices 0-{args.n_train - 1} (the first {args.n_train:,} of
  the 60,000) and test examples with indices 0-{args.n_test - 1} (the first {args.n_test:,} of the
  10,000), in the original order and bytes: the canonical IDX format, gzip-compressed
  (level 9, mtime 0). The first 5,000 MNIST test digits are, per the MNIST page, cleaner
  and easier than the last 5,000, so accuracy on this test subset tends to be a little
  higher than on the full test set.
- **Class counts** (digits 0-9): train {counts["train"]},
  test {counts["t10k-"]}.
- **Training pixel mean**: {mean:.4f} (full MNIST: 0.1307).
- **Made by**: `python scripts/make_mnist_small.py <folder with the canonical MNIST files>`.

| file | bytes | md5 |
|---|---|---|
{rows}

The loader checks these MD5s; if one fails, reinstall bayescale.
"""
    (args.out / "README.md").write_text(readme)
    for name, (m, size) in md5s.items():
        print(f"    {name!r}: {m!r},  # {size} bytes")
    print(f"train class counts {counts['train']}, test {counts['t10k-']}, pixel mean {mean:.4f}")


if __name__ == "__main__":
    main()
