"""The model bundle contract: a folder with ``model.tflite`` and ``manifest.json``.

``edge`` owns this format and ``train_export`` writes it. A bundle is validated when it is loaded: the
manifest against :class:`Manifest`, the model file against its sha256, and the preprocessing against the
code in :mod:`edge.preprocess`. Every failure is a :class:`BundleError` whose message says what is wrong and
what to do, in one line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from edge.preprocess import PREPROCESSING_ID, Preprocessing
from edge.schema import Invalid, Validated, option, parse

#: The format train_export writes. 2 added the ``calibration`` block: a runtime that reads only 1 refuses such a
#: bundle by its version ("upgrade the edge package") instead of by an unknown key.
FORMAT_VERSION = 2
#: The formats this runtime reads (a format-1 bundle has no calibration: its probabilities are used as they are).
READ_VERSIONS = (1, 2)
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: Largest model file a device accepts, so a corrupt push cannot fill the SD card.
MAX_MODEL_BYTES = 16 * 1024 * 1024


class BundleError(Exception):
    """A model bundle is missing, malformed, or does not match this runtime."""


def _image_shape(v: list[int]) -> list[int]:
    if len(v) != 4 or v[3] != 1 or v[1] != v[2] or v[1] < 8:
        raise ValueError(f"expected [batch, S, S, 1] grayscale square input, got {v}")
    return v


def _class_shape(v: list[int]) -> list[int]:
    if len(v) != 2 or v[1] < 2:
        raise ValueError(f"expected [batch, classes] with at least 2 classes, got {v}")
    return v


def _known_version(v: int) -> int:
    if v not in READ_VERSIONS:
        raise ValueError(f"bundle format {v} is not supported by this runtime (reads {', '.join(map(str, READ_VERSIONS))}); "
                         "upgrade the edge package")
    return v


@dataclass(frozen=True, kw_only=True)
class _Strict(Validated):
    """A block of the manifest: unknown keys refused, frozen."""


@dataclass(frozen=True, kw_only=True)
class Quantization(_Strict):
    """Affine quantization of a tensor."""

    scale: float = option(doc="Real value = scale * (q - zero_point).", gt=0)
    zero_point: int = option(doc="Integer that represents real zero.")


@dataclass(frozen=True, kw_only=True)
class Normalization(_Strict):
    """How a uint8 pixel becomes the model's float input."""

    scale: float = option(doc="Float input = pixel * scale + offset for a uint8 pixel.")
    offset: float = option(doc="See scale.")


@dataclass(frozen=True, kw_only=True)
class InputSpec(_Strict):
    """The ``input`` block of a manifest."""

    shape: Annotated[list[int], _image_shape] = option(doc="Model input shape, batch first, e.g. [1, 48, 48, 1].")
    dtype: Literal["int8", "uint8", "float32"] = option(doc="Input tensor element type.")
    quantization: Quantization | None = option(None, doc="Input quantization; null for float input.")
    normalization: Normalization = option(doc="How a uint8 pixel becomes the float input.")


@dataclass(frozen=True, kw_only=True)
class OutputSpec(_Strict):
    """The ``output`` block of a manifest."""

    shape: Annotated[list[int], _class_shape] = option(doc="Model output shape, batch first, e.g. [1, 7].")
    dtype: Literal["int8", "uint8", "float32"] = option(doc="Output tensor element type.")
    quantization: Quantization | None = option(None, doc="Output quantization; null for float output.")
    activation: Literal["softmax"] = option("softmax", doc="What the outputs are.")


@dataclass(frozen=True, kw_only=True)
class Calibration(_Strict):
    """The ``calibration`` block of a manifest: how the device turns the model's probabilities into calibrated ones."""

    method: Literal["temperature"] = option("temperature", doc="Temperature scaling of the probabilities.")
    temperature: float = option(doc="p ** (1 / T), renormalised (softmax of logits / T); 1 changes nothing.",
                               gt=0, le=100)
    fitted_on: str = option("", doc="The faces and labels the temperature was fitted on (provenance).")


@dataclass(frozen=True, kw_only=True)
class Manifest(_Strict):
    """``manifest.json`` of a model bundle."""

    format_version: Annotated[int, _known_version] = option(doc="Bundle format version; this runtime reads 1 and 2.")
    model_id: str = option(doc="Human-readable unique id, e.g. 'sepse-w48-20261123T1200'.", min_length=1)
    labels: list[str] = option(doc="Class labels in model output order.", min_length=2)
    input: InputSpec = option(doc="Input tensor contract.")
    output: OutputSpec = option(doc="Output tensor contract.")
    preprocessing: dict[str, Any] = option(doc="Parameters of edge.preprocess.Preprocessing.")
    sha256: str = option(doc="sha256 hex digest of model.tflite.", pattern=r"^[0-9a-f]{64}$",
                         pattern_hint="64 lowercase hex digits")
    model_bytes: int | None = option(None, doc="Size of model.tflite in bytes.")
    metrics: dict[str, Any] = option(factory=dict, doc="Validation metrics of this model.")
    training: dict[str, Any] = option(factory=dict, doc="Training configuration and data.")
    created: str = option(doc="ISO-8601 UTC creation time.")
    architecture: dict[str, Any] = option(factory=dict, doc="Model family, params, MACs.")
    calibration: Calibration | None = option(None, doc="Calibration the device applies; null: none.")

    def prep(self) -> Preprocessing:
        """The preprocessing parameters as an object (checked by :func:`validate_manifest`)."""
        return Preprocessing.from_dict(self.preprocessing)

    def class_prior(self) -> list[float] | None:
        """The training set's class frequencies in label order, from ``training.train_data.class_counts``.

        None when the manifest does not record them for every label (a bundle not made by train_export).
        """
        data = self.training.get("train_data")
        counts = data.get("class_counts") if isinstance(data, dict) else None
        if not isinstance(counts, dict):
            return None
        values = [v for label in self.labels
                  if isinstance(v := counts.get(label), int) and not isinstance(v, bool) and v > 0]
        if len(values) != len(self.labels):
            return None
        total = sum(values)
        return [v / total for v in values]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_error(exc: Invalid) -> str:
    problem = exc.problems[0]
    return f"{problem.key or 'manifest'}: {problem.message}"


def validate_manifest(data: dict[str, Any]) -> Manifest:
    """Validate a manifest dict against the contract; raise :class:`BundleError` naming the first problem."""
    try:
        manifest = parse(Manifest, data)
    except Invalid as exc:
        raise BundleError(f"invalid manifest: {_first_error(exc)}; re-export the bundle with train_export") from None
    try:
        prep = manifest.prep()
    except (TypeError, ValueError) as exc:
        raise BundleError(f"invalid manifest: preprocessing: {exc}") from None
    if prep.id != PREPROCESSING_ID:
        raise BundleError(
            f"bundle needs preprocessing '{prep.id}' but this runtime implements '{PREPROCESSING_ID}'; "
            "upgrade the edge package or re-export the model"
        )
    if manifest.input.shape[1] != prep.input_size:
        raise BundleError(
            f"manifest input shape {manifest.input.shape} disagrees with preprocessing input_size {prep.input_size}"
        )
    if manifest.output.shape[-1] != len(manifest.labels):
        raise BundleError(
            f"manifest has {len(manifest.labels)} labels but the output shape is {manifest.output.shape}"
        )
    norm = manifest.input.normalization
    if abs(norm.scale - prep.scale) > 1e-9 or abs(norm.offset - prep.offset) > 1e-9:
        raise BundleError("manifest input.normalization disagrees with its preprocessing block")
    if manifest.input.dtype != "float32" and manifest.input.quantization is None:
        raise BundleError(f"manifest input dtype {manifest.input.dtype} needs a quantization block")
    if manifest.output.dtype != "float32" and manifest.output.quantization is None:
        raise BundleError(f"manifest output dtype {manifest.output.dtype} needs a quantization block")
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``manifest.json`` of a bundle folder (without touching the model file)."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in {bundle_dir}; point --model at a bundle folder made by train_export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export or re-copy the bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return validate_manifest(data)


def load_bundle(bundle_dir: Path | str) -> tuple[Manifest, Path]:
    """Validate a bundle folder; return its manifest and the path of its model file.

    Checks the manifest, the model file's presence, size and sha256.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle folder {bundle_dir} does not exist")
    manifest = read_manifest(bundle_dir)
    model_path = bundle_dir / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"no {MODEL_FILE} in {bundle_dir}; the bundle is incomplete, copy it again")
    size = model_path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise BundleError(f"{model_path} is {size} bytes, above the {MAX_MODEL_BYTES}-byte limit")
    if manifest.model_bytes is not None and size != manifest.model_bytes:
        raise BundleError(
            f"{model_path} is {size} bytes but the manifest says {manifest.model_bytes}; the copy is truncated or corrupt"
        )
    digest = sha256_file(model_path)
    if digest != manifest.sha256:
        raise BundleError(f"{model_path} sha256 {digest[:12]}… does not match the manifest; the model is corrupt or was altered")
    return manifest, model_path


def default_bundle_dir() -> Path:
    """The bundle shipped inside the ``edge`` package."""
    from edge.package_data import package_path

    return package_path("models", "default")


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Manifest:
    """Validate and write ``manifest.json`` (used by train_export); returns the validated manifest."""
    validated = validate_manifest(manifest)
    (Path(bundle_dir) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return validated
