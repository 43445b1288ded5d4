"""Pack FER2013 npz as lossless image mosaics (fits the device's 64 MiB transfer), or unpack them again;
pack a trained model's weights as float16 (half a .keras file) and rebuild the .keras file from them.

    python3 pack.py pack ../shared/data/fer2013/train.npz .gpu/train   # .gpu/train.webp + .gpu/train.y.npy
    python3 pack.py unpack .gpu/train /tmp/work/train.npz              # reads .webp, or .png from older packs
    python3 pack.py pack-weights teachers/X/best.keras .gpu/init.npz   # architecture + float16 weights
    python3 pack.py unpack-weights .gpu/init.npz /tmp/work/init.keras  # for train --init-weights

Lossless WebP (47.2 MB for the training faces) is 2.1 MB smaller than PNG at its strongest compression
(49.3 MB), room the lease's upload needs; encoding takes about a minute, and ``pack`` checks the round trip.
"""
import sys
from pathlib import Path

import cv2
import numpy as np

COLS = 128
SIDE = 48


def mosaic(x: np.ndarray) -> np.ndarray:
    """The faces tiled COLS to a row (the last row padded with black)."""
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


def pack(src: Path, dst: Path) -> None:
    with np.load(src) as z:
        x, y = z["x"], z["y"]
    ok, buf = cv2.imencode(".webp", mosaic(x), [cv2.IMWRITE_WEBP_QUALITY, 101])  # quality > 100: lossless
    assert ok
    back = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if back is None or not np.array_equal(tiles(back, len(x)), x):
        raise SystemExit(f"pack: the WebP round trip of {src} is not lossless here; nothing written")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.with_suffix(".webp").write_bytes(buf.tobytes())
    np.save(dst.with_suffix(".y.npy"), y)


def unpack(src: Path, dst: Path) -> None:
    y = np.load(src.with_suffix(".y.npy"))
    image = next((p for p in (src.with_suffix(".webp"), src.with_suffix(".png")) if p.is_file()), None)
    if image is None:
        raise SystemExit(f"unpack: neither {src}.webp nor {src}.png exists")
    m = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    if m is None:  # an OpenCV built without WebP: Pillow's wheels bring their own libwebp
        from PIL import Image

        m = np.asarray(Image.open(image).convert("L"))
    np.savez(dst, x=tiles(m, len(y)), y=y)


def pack_weights(src: Path, dst: Path) -> None:
    """The model at ``src`` as its architecture (Keras JSON) and its weights rounded to float16.

    Rounding costs nothing that matters for a starting point: the shipped default's float16 copy scored 66.73 %
    on val against 66.68 % for its float32 file, with 99.9 % of the predictions the same.
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


if __name__ == "__main__":
    commands = {"pack": pack, "unpack": unpack, "pack-weights": pack_weights, "unpack-weights": unpack_weights}
    if len(sys.argv) != 4 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 pack.py {{{','.join(commands)}}} SRC DST\n{__doc__}")
    commands[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
