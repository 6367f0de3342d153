"""Build the Fashion-MNIST test subset shipped inside the package (``"fashion-mnist-small"``).

The out-of-distribution set of the quickstart pipeline (models trained on MNIST digits are
evaluated on clothing images). Reads the canonical gzipped (or raw) Fashion-MNIST IDX test files
from SRC and writes the first ``--n-test`` test images and labels, unchanged, as two gzipped IDX
files with the canonical names, plus a README.md with provenance and MD5 checksums. Gzip is written
with mtime 0 and no file name, so the output is byte-reproducible for a given zlib. Only the test
split is shipped (an evaluation set; the loader's training split is empty).

    python scripts/make_fashion_mnist_small.py /path/to/fashion-mnist

After regenerating, copy the printed MD5s into ``FASHION_MNIST_SMALL_MD5`` in
``bayescale/builtin_data.py`` (the loader refuses files that do not match).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mnist_small import STEMS, read_source, subset  # noqa: E402  (same IDX layout)

DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "bayescale" / "data" / "files"
               / "fashion-mnist-small")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder with the canonical Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    md5s, counts, mean = {}, [], 0.0
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        magic = STEMS[stem][0]
        dims, payload = read_source(args.src, stem)
        raw = subset(dims, payload, args.n_test, magic)
        blob = gzip.compress(raw, compresslevel=9, mtime=0)
        name = f"{stem}.gz"
        (args.out / name).write_bytes(blob)
        md5s[name] = (hashlib.md5(blob).hexdigest(), len(blob))
        body = np.frombuffer(raw, np.uint8, offset=len(raw) - args.n_test * (784 if magic == 2051
                                                                               else 1))
        if magic == 2049:
            counts = np.bincount(body, minlength=10).tolist()
        else:
            mean = float(body.mean(dtype=np.float64) / 255.0)

    rows = "\n".join(f"| `{k}` | {size:,} | `{m}` |" for k, (m, size) in md5s.items())
    readme = f"""# fashion-mnist-small: a Fashion-MNIST test subset shipped with bayescale

Loaded by `bayescale.data.load_dataset("fashion-mnist-small")` (no download, no data folder).
It is the out-of-distribution set of `bayescale quickstart` and `bayescale evaluate --ood`:
models trained on MNIST digits meet clothing images of the same size and format.

- **Source**: Fashion-MNIST by Han Xiao, Kashif Rasul and Roland Vollgraf, Zalando SE
  (https://github.com/zalandoresearch/fashion-mnist, arXiv:1708.07747), MIT licence
  (Copyright (c) 2017 Zalando SE). This subset is redistributed under the same licence.
- **Contents**: test examples with indices 0-{args.n_test - 1} (the first {args.n_test:,} of the
  10,000), in the original order and bytes: the canonical IDX format, gzip-compressed (level 9,
  mtime 0). Test split only: the loader's training split is empty.
- **Class counts** ({", ".join(CLASSES)}):
  {counts}.
- **Pixel mean**: {mean:.4f} (full Fashion-MNIST test set: 0.2868).
- **Made by**: `python scripts/make_fashion_mnist_small.py <folder with the canonical files>`.

| file | bytes | md5 |
|---|---|---|
{rows}

The loader checks these MD5s; if one fails, reinstall bayescale.

## Licence of the data (Fashion-MNIST's LICENSE)

The MIT License (MIT) Copyright © [2017] Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""
    (args.out / "README.md").write_text(readme)
    for name, (m, size) in md5s.items():
        print(f"    {name!r}: {m!r},  # {size} bytes")
    print(f"test class counts {counts}, pixel mean {mean:.4f}")


if __name__ == "__main__":
    main()
