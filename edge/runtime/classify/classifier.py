"""The emotion classifier: one TFLite interpreter over a validated model bundle, all faces of a frame at once.

The interpreter is created once per bundle (hot reload creates a new :class:`Classifier`). Faces are cropped
with the shared :func:`edge.preprocess.crop_face`, quantized with :func:`edge.preprocess.quantize_input` from
the interpreter's own input quantization, and run as one batch (the input tensor is resized to N; runtimes
that refuse the resize fall back to one face at a time). Two options change what a face gives: eye-level
alignment (the crop is turned so the detector's two eye keypoints are level, :func:`edge.preprocess.crop_face`)
and the class-prior correction (logit adjustment: ``log p(y|x) - tau * log prior(y)``, with the training set's
class frequencies from the manifest), which trades overall accuracy for the recall of rare classes. A bundle's
calibration (its manifest's temperature, :mod:`edge.runtime.classify.calibration`) is always applied, so the
probabilities every consumer sees mean what they say.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.bundle import BundleError, Manifest, default_bundle_dir, load_bundle
from edge.config import ClassifierConfig
from edge.preprocess import Point, Preprocessing, crop_face, quantize_input
from edge.runtime.classify.calibration import temperature_scale
from edge.runtime.classify.interpreter import make_interpreter

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
#: The two eye centres (x, y) of a face, in the frame's pixels; None where the detector gives none.
Eyes = tuple[Point, Point] | None
#: The ``[classifier]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = ClassifierConfig()


class Classifier:
    """Classify face crops with a model bundle.

    Args:
        bundle_dir: Bundle folder; None loads the bundle shipped with the package.
        threads: Interpreter threads.
        runtime: ``"auto"`` or one runtime name of :data:`edge.runtime.classify.interpreter.RUNTIMES`.
        flip_tta: Average each face with its horizontal mirror (doubles the classifier cost).
        align_eyes: Turn each face whose eyes are given (:meth:`crops`) so they are level before the crop.
        prior_correction: Strength ``tau`` of the class-prior correction; 0 leaves the model's probabilities as
            they are, 1 divides them by the training set's class frequencies.

    Raises:
        BundleError: The bundle is missing, invalid, or its model does not match its manifest, or a prior
            correction is asked of a bundle that records no training class counts.
        RuntimeMissing: No TFLite runtime is installed.
    """

    def __init__(
        self,
        bundle_dir: Path | str | None = None,
        threads: int = _DEFAULT.threads,
        runtime: str = _DEFAULT.runtime,
        flip_tta: bool = _DEFAULT.flip_tta,
        align_eyes: bool = _DEFAULT.align_eyes,
        prior_correction: float = _DEFAULT.prior_correction,
    ) -> None:
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
        self.manifest: Manifest
        self.manifest, model_path = load_bundle(self.bundle_dir)
        self.prep: Preprocessing = self.manifest.prep()
        self.flip_tta = flip_tta
        calibration = self.manifest.calibration
        self.temperature = calibration.temperature if calibration is not None else 1.0
        self.align_eyes = align_eyes
        self.prior_correction = float(prior_correction)
        self._prior_weights = self._prior_weights_for(self.prior_correction)
        try:
            self._interp, self.runtime = make_interpreter(
                str(model_path), num_threads=threads, prefer=None if runtime == "auto" else runtime
            )
        except ValueError as exc:
            raise BundleError(f"{model_path}: {exc}") from None
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._check_tensors()
        self._lut = self._quantize_table()
        self._levels = self._dequantize_table()
        self._batch = int(self._in["shape"][0])
        self._can_resize = True
        self._smoke_test()
        log.info(
            "classifier: model %s (%d labels) on %s, %d thread(s)%s%s%s%s",
            self.model_id, len(self.labels), self.runtime, threads,
            f", temperature {self.temperature:g}" if self.temperature != 1.0 else "", ", flip TTA" if flip_tta else "",
            ", eye alignment" if align_eyes else "",
            f", prior correction {self.prior_correction:g}" if self._prior_weights is not None else "",
        )

    @classmethod
    def from_config(cls, bundle_dir: Path | str | None, section: ClassifierConfig) -> Classifier:
        """A classifier of ``bundle_dir`` (None: the shipped bundle) with the options of a ``[classifier]`` section
        (its ``model`` is not read: the caller chooses the bundle, see :mod:`edge.runtime.models.manager`)."""
        return cls(bundle_dir, section.threads, section.runtime, section.flip_tta, section.align_eyes,
                   section.prior_correction)

    @property
    def model_id(self) -> str:
        """The bundle's model id."""
        return self.manifest.model_id

    @property
    def labels(self) -> list[str]:
        """Class labels in output order."""
        return list(self.manifest.labels)

    def _prior_weights_for(self, tau: float) -> np.ndarray | None:
        """``prior ** -tau`` per class (softmax of ``log p - tau log prior`` is ``p * prior ** -tau``, renormalised)."""
        if tau < 0:
            raise ValueError(f"prior_correction must be >= 0, got {tau}")
        if tau == 0:
            return None
        prior = self.manifest.class_prior()
        if prior is None:
            raise BundleError(
                f"model {self.model_id} records no training class counts (manifest training.train_data.class_counts), "
                "so its prior cannot be corrected; set classifier.prior_correction = 0 or use a bundle made by train_export"
            )
        return np.asarray(prior, dtype=np.float64) ** -tau

    def _check_tensors(self) -> None:
        """Refuse a model whose real tensors disagree with its manifest (a mislabeled or swapped file)."""
        in_shape = [int(v) for v in self._in["shape"]]
        out_shape = [int(v) for v in self._out["shape"]]
        m = self.manifest
        if in_shape[1:] != m.input.shape[1:]:
            raise BundleError(f"model input shape {in_shape} does not match the manifest {m.input.shape}")
        if out_shape[-1] != len(m.labels):
            raise BundleError(f"model outputs {out_shape[-1]} classes but the manifest lists {len(m.labels)} labels")
        if np.dtype(self._in["dtype"]).name != m.input.dtype:
            raise BundleError(f"model input dtype {np.dtype(self._in['dtype']).name} does not match the manifest {m.input.dtype}")

    def _smoke_test(self) -> None:
        """Run one inference so a model that loads but cannot run fails now, not on the first face."""
        probe = np.full((1, self.prep.input_size, self.prep.input_size), 128, np.uint8)
        try:
            probs = self.classify_faces(probe)
        except Exception as exc:  # the runtime's own error types vary
            raise BundleError(f"model {self.model_id} failed its smoke inference ({exc}); the bundle is unusable") from None
        if probs.shape != (1, len(self.labels)) or not np.all(np.isfinite(probs)):
            raise BundleError(f"model {self.model_id} smoke inference returned {probs.shape}, not (1, {len(self.labels)})")

    def _quantize_table(self) -> np.ndarray | None:
        """The integer input of every uint8 pixel value, from :func:`edge.preprocess.quantize_input` itself.

        A face's integer input depends on each pixel alone, so looking the 256 answers up is the shared
        normalise-and-quantize, exactly, at about a third of its per-face cost (it matters at 0.5 ms a face).
        """
        dtype = np.dtype(self._in["dtype"])
        if dtype == np.float32:
            return None
        scale, zero = self._in["quantization"]
        return quantize_input(np.arange(256, dtype=np.uint8), scale, int(zero), dtype, self.prep)

    def _quantize(self, faces: np.ndarray) -> np.ndarray:
        x = faces[..., None]
        if self._lut is not None and x.dtype == np.uint8:
            return self._lut.take(x)
        dtype = np.dtype(self._in["dtype"])
        if dtype == np.float32:
            from edge.preprocess import normalize

            return normalize(x, self.prep)
        scale, zero = self._in["quantization"]
        return quantize_input(x, scale, int(zero), dtype, self.prep)

    def _dequantize_table(self) -> np.ndarray | None:
        """The clipped probability of every level of an 8-bit output, indexed by the level's byte (uint8 view).

        Each output value is dequantized on its own, so looking its level up is :meth:`_dequantize`'s formula to
        the bit, for one small gather instead of four numpy passes per frame.
        """
        dtype = np.dtype(self._out["dtype"])
        if dtype not in (np.int8, np.uint8):
            return None
        return self._dequantize_values(np.arange(256, dtype=np.uint8).view(dtype)).reshape(-1)

    def _dequantize_values(self, y: np.ndarray) -> np.ndarray:
        """The model's outputs as float64 probabilities clipped at 0 (not yet renormalized)."""
        if np.dtype(self._out["dtype"]) == np.float32:
            p = y.astype(np.float64)
        else:
            scale, zero = self._out["quantization"]
            p = (y.astype(np.float64) - zero) * scale
        return np.clip(p, 0.0, None)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self._levels is not None and y.dtype == self._out["dtype"]:
            p = self._levels.take(y.view(np.uint8))
        else:
            p = self._dequantize_values(y)
        # An int8 softmax is quantized in steps of 1/256, so the row sums drift from 1; renormalize.
        s = p.sum(axis=1, keepdims=True)
        if np.count_nonzero(s > 0) == s.size:  # the common case, without the fallback rows' allocation
            p /= s
            return p
        return np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[1]), where=s > 0)

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if self._can_resize and n != self._batch:
            try:
                self._interp.resize_tensor_input(self._in["index"], [n, *x.shape[1:]], strict=False)
                self._interp.allocate_tensors()
                self._batch = n
            except Exception as exc:  # some runtimes/models refuse dynamic batch
                log.info("cannot resize the input to batch %d (%s); classifying one face at a time", n, exc)
                self._can_resize = False
                self._interp.resize_tensor_input(self._in["index"], [1, *x.shape[1:]], strict=False)
                self._interp.allocate_tensors()
                self._batch = 1
        if self._batch == n:
            self._interp.set_tensor(self._in["index"], x)
            self._interp.invoke()
            return self._interp.get_tensor(self._out["index"]).reshape(n, -1).copy()
        rows = []
        for i in range(n):
            self._interp.set_tensor(self._in["index"], x[i : i + 1])
            self._interp.invoke()
            rows.append(self._interp.get_tensor(self._out["index"]).reshape(1, -1).copy())
        return np.concatenate(rows)

    def classify_faces(self, faces: np.ndarray) -> np.ndarray:
        """Probabilities (N x C, rows sum to 1) for N already cropped uint8 faces (N x S x S)."""
        if faces.ndim != 3 or faces.shape[1:] != (self.prep.input_size, self.prep.input_size):
            raise ValueError(f"expected N x {self.prep.input_size} x {self.prep.input_size} faces, got {faces.shape}")
        n = faces.shape[0]
        if n == 0:
            return np.zeros((0, len(self.labels)))
        if self.flip_tta:
            faces = np.concatenate([faces, faces[:, :, ::-1]])
        # Calibrated per pass, as the temperature was fitted, then the mirror averaged in.
        probs = temperature_scale(self._dequantize(self._invoke(self._quantize(faces))), self.temperature)
        if self.flip_tta:
            probs = (probs[:n] + probs[n:]) / 2.0
        if self._prior_weights is not None:
            probs = probs * self._prior_weights
            probs /= probs.sum(axis=1, keepdims=True)
        return probs

    def crops(self, frame: np.ndarray, boxes: list[Box], eyes: list[Eyes] | None = None) -> np.ndarray:
        """The model-sized grayscale crops (N x S x S uint8) of ``boxes`` in ``frame`` (gray or BGR).

        ``eyes`` (one entry per box, None for a face without keypoints) level the faces when ``align_eyes`` is on.
        """
        if not boxes:
            return np.zeros((0, self.prep.input_size, self.prep.input_size), np.uint8)
        if eyes is not None and len(eyes) != len(boxes):
            raise ValueError(f"{len(eyes)} eye pairs for {len(boxes)} boxes; give one entry (or None) per box")
        if not self.align_eyes or eyes is None:
            eyes = [None] * len(boxes)
        faces = [crop_face(frame, b, self.prep, e) for b, e in zip(boxes, eyes, strict=True)]
        if len(faces) == 1 and faces[0].flags.owndata:
            # One face, the usual case: its fresh crop itself, not np.stack's copy of it (a crop that is a view,
            # of a frame already model-sized, is copied as before, so the result never shares the caller's frame).
            return faces[0][None]
        return np.stack(faces)

    def classify(self, frame: np.ndarray, boxes: list[Box], eyes: list[Eyes] | None = None) -> np.ndarray:
        """Probabilities (N x C) for the faces at ``boxes`` (x, y, w, h pixels) in ``frame``; ``eyes`` see :meth:`crops`."""
        return self.classify_faces(self.crops(frame, boxes, eyes))
