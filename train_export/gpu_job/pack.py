"""Carry the FER2013 faces, their FER+ votes and a model's weights to a machine that takes at most 64 MiB of files.

    python3 pack.py pack ../shared/data/fer2013 .gpu      # train/val .webp + .y.npy, ferplus.npz as it is
    python3 pack.py verify ../shared/data/fer2013 .gpu    # unpack in memory, compare with the originals
    python3 pack.py unpack .gpu /tmp/work                 # train.npz, val.npz, ferplus.npz again
    python3 pack.py pack-weights MODEL.keras .gpu/init_default.npz   # architecture + float16 weights
    python3 pack.py unpack-weights .gpu/init_default.npz /tmp/work/init.keras   # for train --init-weights

The faces travel as one lossless WebP mosaic per split (47.2 MB for the 28,709 training faces against 63.3 MB for
``train.npz``; PNG at its strongest compression is 2.1 MB larger, and Pillow's slowest WebP effort gains under
0.1 %). Encoding takes about a minute. ``pack`` decodes what it encoded before writing anything, and ``verify``
checks the whole folder against the originals, array by array, ``ferplus.npz`` included.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

COLS = 128
SIDE = 48
SPLITS = ("train", "val")
VOTES = "ferplus.npz"
#: the vote array of each split in ``ferplus.npz`` (train_export.data.ferplus.SPLIT_ARRAYS; not imported, so this
#: script needs neither Keras nor the project's packages to pack or unpack data)
VOTE_ARRAYS = {"train": "train_votes", "val": "val_votes"}


def mosaic(x: np.ndarray) -> np.ndarray:
    """The faces (N x SIDE x SIDE uint8) tiled COLS to a row, the last row padded with black."""
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or x.dtype != np.uint8:
        raise ValueError(f"faces must be N x {SIDE} x {SIDE} uint8, got {x.dtype} {x.shape}")
    rows = (len(x) + COLS - 1) // COLS
    m = np.zeros((rows * SIDE, COLS * SIDE), np.uint8)
    for i, face in enumerate(x):
        r, c = divmod(i, COLS)
        m[r * SIDE:(r + 1) * SIDE, c * SIDE:(c + 1) * SIDE] = face
    return m


def tiles(m: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` faces of a mosaic."""
    return np.stack([m[(i // COLS) * SIDE:(i // COLS + 1) * SIDE, (i % COLS) * SIDE:(i % COLS + 1) * SIDE]
                     for i in range(n)])


def encode(x: np.ndarray) -> bytes:
    """Lossless WebP of :func:`mosaic` (x), checked to decode to ``x`` again."""
    ok, buf = cv2.imencode(".webp", mosaic(x), [cv2.IMWRITE_WEBP_QUALITY, 101])  # quality > 100: lossless
    if not ok:
        raise SystemExit("pack: this OpenCV cannot encode WebP")
    if not np.array_equal(decode(buf.tobytes(), len(x)), x):
        raise SystemExit("pack: the WebP round trip is not lossless with this OpenCV; nothing written")
    return buf.tobytes()


def decode(data: bytes, n: int) -> np.ndarray:
    """The ``n`` faces of an encoded mosaic."""
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:  # an OpenCV built without WebP: Pillow's wheels bring their own libwebp
        import io

        from PIL import Image

        m = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    return tiles(m, n)


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["x"], z["y"]


def _check_votes(votes_path: Path, counts: dict[str, int]) -> None:
    """``ferplus.npz`` has one row of ten votes per face of each split (or the job would train on misaligned rows)."""
    with np.load(votes_path) as z:
        for split, n in counts.items():
            v = z[VOTE_ARRAYS[split]]
            if v.shape != (n, 10):
                raise SystemExit(f"{votes_path}: {VOTE_ARRAYS[split]} is {v.shape}, the {split} split has {n} faces")


def pack(src: Path, dst: Path) -> None:
    """``src``'s train.npz and val.npz as ``dst/<split>.webp`` + ``<split>.y.npy``, and its ferplus.npz copied."""
    dst.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        x, y = _read_split(src / f"{split}.npz")
        data = encode(x)
        (dst / f"{split}.webp").write_bytes(data)
        np.save(dst / f"{split}.y.npy", y)
        counts[split] = len(y)
        print(f"{split}: {len(y)} faces, {len(data)} bytes of WebP")
    if (src / VOTES).is_file():
        _check_votes(src / VOTES, counts)
        shutil.copyfile(src / VOTES, dst / VOTES)
        print(f"{VOTES}: copied ({(dst / VOTES).stat().st_size} bytes)")
    else:
        print(f"no {VOTES} in {src}: the job's FER+ training needs it", file=sys.stderr)


def unpacked(src: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of ``split``'s .npz as :func:`pack` stored them in ``src``."""
    y = np.load(src / f"{split}.y.npy")
    return {"x": decode((src / f"{split}.webp").read_bytes(), len(y)), "y": y}


def unpack(src: Path, dst: Path) -> None:
    """``dst/train.npz``, ``dst/val.npz`` and ``dst/ferplus.npz`` from a folder :func:`pack` wrote."""
    dst.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        np.savez(dst / f"{split}.npz", **unpacked(src, split))
    if (src / VOTES).is_file():
        shutil.copyfile(src / VOTES, dst / VOTES)


def verify(original: Path, packed: Path) -> None:
    """Exit 1 unless every array of the original archives comes back from ``packed`` identical (dtype included)."""
    bad = []
    for split in SPLITS:
        with np.load(original / f"{split}.npz") as z:
            want = {k: z[k] for k in z.files}
        got = unpacked(packed, split)
        bad += [f"{split}.{k}" for k in want if k not in got or got[k].dtype != want[k].dtype
                or not np.array_equal(got[k], want[k])]
    if (original / VOTES).is_file():
        with np.load(original / VOTES) as a, np.load(packed / VOTES) as b:
            bad += [f"{VOTES}:{k}" for k in a.files if k not in b.files or b[k].dtype != a[k].dtype
                    or not np.array_equal(a[k], b[k])]
    if bad:
        raise SystemExit(f"verify: {', '.join(bad)} differ between {original} and {packed}")
    print(f"verify: {packed} unpacks to the arrays of {original}, identical")


def pack_weights(src: Path, dst: Path) -> None:
    """The model at ``src`` as its architecture (Keras JSON) and its weights rounded to float16.

    Rounding costs nothing that matters for a starting point: the shipped default's float16 copy scored 66.73 %
    on val against 66.68 % for its float32 file, with 99.9 % of the predictions the same (2026-11-27).
    """
    import keras

    model = keras.models.load_model(src, compile=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, config=np.array(model.to_json()),
                        **{f"w{i:03d}": w.astype(np.float16) for i, w in enumerate(model.get_weights())})


def unpack_weights(src: Path, dst: Path) -> None:
    """The .keras model that :func:`pack_weights` packed (float32 again)."""
    import keras

    with np.load(src) as z:
        model = keras.models.model_from_json(str(z["config"]))
        model.set_weights([z[k].astype(np.float32) for k in sorted(k for k in z.files if k != "config")])
    model.save(dst)


COMMANDS = {"pack": pack, "unpack": unpack, "verify": verify, "pack-weights": pack_weights,
            "unpack-weights": unpack_weights}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 pack.py {{{','.join(COMMANDS)}}} SRC DST\n{__doc__}")
    COMMANDS[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
