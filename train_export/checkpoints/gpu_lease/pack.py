"""Pack FER2013 npz as lossless PNG mosaics (fits the device's 64 MiB transfer), or unpack them again."""
import sys
from pathlib import Path

import cv2
import numpy as np

COLS = 128


def pack(src: Path, dst: Path) -> None:
    with np.load(src) as z:
        x, y = z["x"], z["y"]
    n = len(x)
    rows = (n + COLS - 1) // COLS
    m = np.zeros((rows * 48, COLS * 48), np.uint8)
    for i in range(n):
        r, c = divmod(i, COLS)
        m[r * 48:(r + 1) * 48, c * 48:(c + 1) * 48] = x[i]
    ok, buf = cv2.imencode(".png", m, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.with_suffix(".png").write_bytes(buf.tobytes())
    np.save(dst.with_suffix(".y.npy"), y)


def unpack(src: Path, dst: Path) -> None:
    y = np.load(src.with_suffix(".y.npy"))
    m = cv2.imread(str(src.with_suffix(".png")), cv2.IMREAD_UNCHANGED)
    x = np.stack([m[(i // COLS) * 48:(i // COLS + 1) * 48, (i % COLS) * 48:(i % COLS + 1) * 48] for i in range(len(y))])
    np.savez(dst, x=x, y=y)


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
