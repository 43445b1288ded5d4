"""Re-estimate a model's batch-norm statistics on the clean training faces (one pass at momentum 0.9), and save it.

Tried on the shipped soup on 2026-11-27 (session 16) and not kept: scored by screen_float.py it fell from
68.01 / 63.63 % (clean / mean of the 13 corruptions) to 67.71 / 63.19 %. Run from the repository root:

    python3 train_export/checkpoints/finished/soup_screening/bn_recalibrate.py \
        train_export/checkpoints/teachers/gkd_soup_s2_w15/best.keras /tmp/soup_bn.keras
    python3 train_export/checkpoints/finished/soup_screening/screen_float.py /tmp/soup_bn.keras
"""

import sys
from pathlib import Path

import keras
import numpy as np

from edge.preprocess import Preprocessing, normalize

src, out = sys.argv[1], sys.argv[2]
m = keras.saving.load_model(src, compile=False)
tr = np.load(Path(__file__).resolve().parents[5] / "shared" / "data" / "fer2013" / "train.npz")
x = normalize(tr["x"], Preprocessing())[..., None]
bns = [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)]
for layer in bns:
    layer.momentum = 0.9  # the moving statistics end as roughly the mean of the last 20 batches
order = np.random.default_rng(0).permutation(len(x))
for i in range(0, len(x) - 255, 256):
    m(x[order[i : i + 256]], training=True)
for layer in bns:
    layer.momentum = 0.99
m.save(out)
print(f"{len(bns)} batch-norm layers re-estimated; saved {out}")
