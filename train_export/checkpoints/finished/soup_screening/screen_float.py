"""Float accuracy of .keras models on the clean val faces and on benchmarks/robustness.py's 13 corruptions.

The quick screen of the 2026-11-27 soup candidates before one was exported (the shipped one was then measured
as an int8 bundle by benchmarks/robustness.py itself). Run from the repository root:

    python3 train_export/checkpoints/finished/soup_screening/screen_float.py MODEL.keras [...]
"""

import sys
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from robustness import CORRUPTIONS, corrupt  # noqa: E402

from edge.preprocess import Preprocessing, normalize  # noqa: E402

v = np.load(Path(__file__).resolve().parents[5] / "shared" / "data" / "fer2013" / "val.npz")
x, y = v["x"], v["y"]
sets = {name: normalize(corrupt(x, name, 0), Preprocessing())[..., None] for name in CORRUPTIONS}
print("| model | clean | mean of the 13 corruptions | noise σ10 | blur σ2 | 16 px face |")
print("|---|---:|---:|---:|---:|---:|")
for path in sys.argv[1:]:
    m = keras.saving.load_model(path, compile=False)
    acc = {k: float((m.predict(f, batch_size=512, verbose=0).argmax(1) == y).mean()) for k, f in sets.items()}
    mean = np.mean([a for k, a in acc.items() if k != "clean"])
    print(f"| `{path}` | {100 * acc['clean']:.2f} | {100 * mean:.2f} | {100 * acc['noise σ10']:.2f} | "
          f"{100 * acc['blur σ2']:.2f} | {100 * acc['16 px face']:.2f} |", flush=True)
