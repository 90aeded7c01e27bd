"""Fashion-MNIST from IDX files on disk: no download at run time.

Images are padded 28x28 -> 32x32 (the UNet needs a size divisible by 8) and scaled to [-1, 1].
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import PQCADError

log = logging.getLogger(__name__)

DATA_ENV = "PQCAD_FMNIST_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
INSTALL_HINT = (
    "Install the data with `apt-get install -y dataset-fashion-mnist` (files land in "
    f"{SYSTEM_DIR}), or point --data-dir / ${DATA_ENV} at a folder holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])."
)


class DataError(PQCADError, RuntimeError):
    """The dataset files are missing or malformed; the message says where we looked and how to fix it."""


@dataclass(frozen=True)
class FashionMNIST:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def as_model_input(self) -> torch.Tensor:
        """float32 [N, 1, 32, 32] in [-1, 1]."""
        return to_model_range(self.images)


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    x = images_u8.float().div(127.5).sub(1.0).unsqueeze(1)
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where to look: only ``data_dir`` when one is given (a wrong folder must not silently fall back to another
    copy), else ``$PQCAD_FMNIST_DIR`` and the system folder."""
    if data_dir:
        d = Path(data_dir)
        if not d.exists():
            raise DataError(f"Fashion-MNIST folder {d} (--data-dir) does not exist. {INSTALL_HINT}")
        if not d.is_dir():
            raise DataError(f"Fashion-MNIST folder {d} (--data-dir) is a file, not a folder. {INSTALL_HINT}")
        return [d]
    dirs: list[Path] = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    dirs.append(SYSTEM_DIR)
    return dirs


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"Cannot read {path}: {e}. The file is corrupt or truncated; reinstall it. {INSTALL_HINT}"
        ) from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is truncated ({len(raw)} bytes, the IDX header alone needs {header}). {INSTALL_HINT}"
        )
    (found,) = struct.unpack(">i", raw[:4])
    if found != magic:
        raise DataError(
            f"{path} has IDX magic number {found}, expected {magic}: this is not the file its name says. {INSTALL_HINT}"
        )
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header < count:
        raise DataError(
            f"{path} is truncated: header promises {count} bytes of data for shape {dims}, found {len(raw) - header}. {INSTALL_HINT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    """Read one split from the first folder that has both of its files."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    dirs = candidate_dirs(data_dir)
    img_stem, lbl_stem = _FILES[split]
    img_path, lbl_path = _find(dirs, img_stem), _find(dirs, lbl_stem)
    if img_path is None or lbl_path is None:
        missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
        looked = ", ".join(str(d) for d in dirs)
        raise DataError(
            f"Fashion-MNIST {split} split not found: missing {missing} (looked in: {looked}). {INSTALL_HINT}"
        )
    images = _read_idx(img_path, _IMAGE_MAGIC, 3)
    labels = _read_idx(lbl_path, _LABEL_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels; "
            f"the two files come from different releases or one is damaged. {INSTALL_HINT}"
        )
    if images.shape[1:] != (28, 28):
        raise DataError(
            f"{img_path} has images of shape {images.shape[1:]}, Fashion-MNIST is 28x28. {INSTALL_HINT}"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(
            f"{lbl_path} holds label {int(labels.max())}; Fashion-MNIST labels are 0..{len(CLASSES) - 1}: the file is "
            f"damaged or not Fashion-MNIST. {INSTALL_HINT}"
        )
    log.info("loaded Fashion-MNIST %s: %d images from %s", split, len(labels), img_path.parent)
    return FashionMNIST(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
