"""BlazeFace short range in plain LiteRT: MediaPipe's face_detection_short_range graph without MediaPipe.

Reproduces, step by step, what MediaPipe Tasks' ``FaceDetector`` does with the vendored model (sources read in
google-ai-edge/mediapipe at 85c0cdc, 2026-08-21):

1. Image to tensor (``tasks/cc/vision/face_detector/face_detector_graph.cc``: ``keep_aspect_ratio=true``,
   ``BORDER_ZERO``; ``calculators/tensor/image_to_tensor_utils.cc`` ``PadRoi``;
   ``image_to_tensor_converter_opencv.cc``): the whole image is padded to a centred square of side
   ``max(w, h)`` (letterbox), sampled with ``cv::warpPerspective`` INTER_LINEAR, black outside the image
   (here: :class:`edge.imaging.AxisAlignedSampler`, numpy, within a grey level of OpenCV's),
   then ``convertTo`` uint8 [0, 255] -> float [-1, 1] (the range MediaPipe derives from the model's metadata;
   our scores equal MediaPipe's to 5e-7, so it is that).
   Tensor pixel ``d`` samples source pixel ``d * side / 128 + offset`` (pixel indices, no half-pixel shift;
   at 640x480 that is exactly every 5th pixel).
2. LiteRT inference (outputs ``regressors`` 1x896x16 and ``classificators`` 1x896x1).
3. SSD anchors (``calculators/tflite/ssd_anchors_calculator.cc`` with the options of
   ``ConfigureSsdAnchorsCalculator`` in ``face_detector_graph.cc``, same as
   ``modules/face_detection/face_detection_short_range.pbtxt`` + ``face_detection.pbtxt``).
4. Decoding (``calculators/tensor/tensors_to_detections_calculator.cc``): ``reverse_output_order`` means XYWH,
   all four scales 128, ``fixed_anchor_size`` so anchor w = h = 1, 6 keypoints as (x, y), sigmoid score of
   the raw score clipped to +-100, keep ``score >= min_score_thresh``, drop negative or NaN sizes.
5. Weighted NMS (``calculators/util/non_max_suppression_calculator.cc``, ``WEIGHTED``,
   ``INTERSECTION_OVER_UNION``, threshold 0.3 from the Python ``FaceDetectorOptions`` default), on the
   letterboxed tensor coordinates.
6. Letterbox removal / projection (``calculators/util/detection_projection_calculator.cc`` with the
   ``MATRIX`` of ``GetRotatedSubRectToRectTransformMatrix``; for an unrotated full-image ROI identical to
   ``detection_letterbox_removal_calculator.cc``), then pixels.

One deliberate difference: MediaPipe's pixel box (``detection_transformation_calculator.cc``) truncates each
of xmin, ymin, width, height to int and clamps them to [0, image side]; here they stay floats, unclamped.
``int()`` of our box gives MediaPipe's box to within float rounding for faces inside the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge.config import DetectorConfig
from edge.imaging import AxisAlignedSampler
from edge.runtime.classify.interpreter import make_interpreter
from edge.runtime.detect.base import BOX_ADJUST, Detection, DetectorError, finish_detections, verify_model
from edge.runtime.detect.blazeface_decode import (
    NMS_THRESHOLD,
    NUM_KEYPOINTS,
    SHORT_RANGE_ANCHORS,
    decode,
    score_logit_floor,
    ssd_anchors,
    weighted_nms,
)

log = logging.getLogger(__name__)
#: The ``[detector]`` defaults: the constructor's keyword defaults are these, so no setting has two defaults.
_DEFAULT = DetectorConfig()


class BlazeFaceDetector:
    """MediaPipe's BlazeFace short-range face detector, run directly in LiteRT (no MediaPipe needed).

    Same results as :class:`edge.runtime.detect.MediaPipeDetector` (same faces and scores; ``int()`` of our box is its box;
    see test_blazeface.py) plus the six keypoints, faster and without the MediaPipe dependency. One instance
    per thread: ``detect`` reuses preallocated buffers.

    Args:
        min_confidence: Minimum detection score.
        min_face_size: Minimum box side in main-image pixels.
        max_faces: Keep at most this many faces, largest first.
        model_path: Model file (the vendored one by default; verified by sha256 when it is the default).
        threads: LiteRT interpreter threads.
    """

    name = "blazeface"

    def __init__(
        self,
        min_confidence: float = _DEFAULT.min_confidence,
        min_face_size: int = _DEFAULT.min_face_size,
        max_faces: int = _DEFAULT.max_faces,
        model_path: Path | None = None,
        threads: int = _DEFAULT.threads,
    ) -> None:
        path = verify_model() if model_path is None else Path(model_path)
        try:
            self._it, self.runtime = make_interpreter(model_path=str(path), num_threads=threads)
        except Exception as exc:  # ValueError (bad model), RuntimeMissing (no LiteRT)
            raise DetectorError(f"cannot load face detector {path} ({exc})") from None
        inp = self._it.get_input_details()[0]
        _, th, tw, ch = (int(v) for v in inp["shape"])
        if ch != 3 or inp["dtype"] != np.float32:
            raise DetectorError(f"{path} is not a BlazeFace model (input {inp['shape']} {inp['dtype']})")
        self._in_index = inp["index"]
        self._tensor_wh = (tw, th)
        ncoord = 4 + 2 * NUM_KEYPOINTS
        outs = {int(d["shape"][-1]): d["index"] for d in self._it.get_output_details()}
        if set(outs) != {ncoord, 1}:
            raise DetectorError(f"{path} is not a BlazeFace model (outputs {sorted(outs)})")
        self._boxes_index, self._scores_index = outs[ncoord], outs[1]
        self.anchors = ssd_anchors(**{**SHORT_RANGE_ANCHORS, "input_size": (tw, th)})
        # uint8 [0, 255] -> float32 [-1, 1] (v * 2/255 - 1) as a table of the 256 values, each rounded once from
        # float32 operands as OpenCV's convertTo / addWeighted rounds them (MediaPipe's tensors, bit for bit).
        self._to_float = (np.arange(256) * float(np.float32(2.0 / 255.0)) - 1.0).astype(np.float32)
        # Preallocated once: the warped uint8 image and the float input tensor.
        self._warped3 = np.empty((th, tw, 3), np.uint8)
        self._warped1 = np.empty((th, tw), np.uint8)
        self._input = np.empty((1, th, tw, 3), np.float32)
        self._maps: dict[tuple[int, int], tuple] = {}
        self.min_confidence = min_confidence
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.nms_threshold = NMS_THRESHOLD
        self.adjust = BOX_ADJUST["blazeface"]

    def _map(self, w: int, h: int) -> tuple[AxisAlignedSampler, float, float, float, float, tuple[int, int] | None]:
        """Tensor->image affine map for a ``w`` x ``h`` image (cached): MediaPipe's letterbox ROI.

        The ROI is the whole image padded to the tensor's aspect ratio about its centre (PadRoi); tensor
        pixel (u, v) samples image pixel (kx * u + ox, ky * v + oy), like MediaPipe's warpPerspective from the
        ROI corners to the tensor corners. Returns (its sampler, kx, ky, ox, oy, rows) where ``rows`` is
        (first, count) of the tensor rows the image fills when the sampling is an exact integer subsampling
        (see :meth:`_to_tensor`), else None.
        """
        key = (w, h)
        if key not in self._maps:
            tw, th = self._tensor_wh
            if th / tw > h / w:
                rw, rh = float(w), w * th / tw
            else:
                rw, rh = h * tw / th, float(h)
            kx, ky = rw / tw, rh / th
            ox, oy = w / 2 - rw / 2, h / 2 - rh / 2
            sampler = AxisAlignedSampler((w, h), (tw, th), kx, ox, ky, oy)
            self._maps[key] = (sampler, kx, ky, ox, oy, self._subsampling(w, h, kx, ky, ox, oy))
        return self._maps[key]

    def _subsampling(self, w: int, h: int, kx: float, ky: float, ox: float, oy: float) -> tuple[int, int] | None:
        """(first row, rows) if MediaPipe's bilinear sampling is plain every-k-th-pixel picking, else None.

        With an integer step k, no horizontal padding and a vertical padding that is a multiple of k (640x480,
        1280x720, 1280x960 ...), every sample lands exactly on a pixel, so bilinear = nearest and a strided
        slice of the image gives the same tensor at a fraction of the cost of sampling.
        """
        tw, th = self._tensor_wh
        k = round(kx)
        if not (kx == ky == k >= 1 and ox == 0 and w == k * tw and h % k == 0 and oy <= 0 and (-oy) % k == 0):
            return None
        return int(-oy) // k, h // k

    def _to_tensor(self, image: np.ndarray) -> tuple[float, float, float, float]:
        """Letterbox ``image`` into the preallocated input tensor; return the map (kx, ky, ox, oy)."""
        h, w = image.shape[:2]
        sampler, kx, ky, ox, oy, rows = self._map(w, h)
        warped = self._warped1 if image.ndim == 2 else self._warped3
        # BGR to the model's RGB on the small 128x128 result rather than on the whole frame: in the strided copy
        # itself where the tensor is a subsampling, else on the sampler's output.
        rgb = warped  # what the lookup reads: the warped image, or its channels reversed (sampler path, BGR)
        if rows is not None:
            first, count = rows
            k = round(kx)
            warped[:first] = 0  # BORDER_ZERO letterbox bands
            warped[first + count :] = 0
            warped[first : first + count] = image[::k, ::k] if image.ndim == 2 else image[::k, ::k, ::-1]
        else:
            sampler(image, warped)
            if image.ndim == 3:
                rgb = warped[:, :, ::-1]
        # Gray: replicate the one warped channel (what MediaPipeDetector's GRAY2RGB before the warp gives). Then
        # to float, written straight into the input buffer.
        if image.ndim == 2:
            self._input[0] = self._to_float[warped][:, :, None]
        else:
            np.take(self._to_float, rgb, out=self._input[0])
        return kx, ky, ox, oy

    def detect(self, image: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> list[Detection]:
        """Faces in ``image`` (gray HxW or BGR HxWx3 uint8); ``scale`` maps its pixels to main-image pixels."""
        if self._it is None:
            raise RuntimeError("detector is closed")
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"expected a gray HxW or BGR HxWx3 uint8 image, got {image.shape} {image.dtype}")
        kx, ky, ox, oy = self._to_tensor(image)
        self._it.set_tensor(self._in_index, self._input)
        self._it.invoke()
        raw_scores = self._it.get_tensor(self._scores_index)
        if raw_scores.max() < score_logit_floor(self.min_confidence):
            return []  # the usual empty frame: skip reading the regressors at all
        boxes, scores, kps = decode(self._it.get_tensor(self._boxes_index), raw_scores, self.anchors, self.min_confidence)
        boxes, scores, kps = weighted_nms(boxes, scores, kps, self.nms_threshold)
        tw, th = self._tensor_wh
        # Tensor-normalised -> image pixels (projection matrix = letterbox removal); finish_detections maps to the main image.
        ax, ay = kx * tw, ky * th
        raw = [((x0 * ax + ox, y0 * ay + oy, (x1 - x0) * ax, (y1 - y0) * ay), score,
                [(px * ax + ox, py * ay + oy) for px, py in kp])
               for (x0, y0, x1, y1), score, kp in zip(boxes.tolist(), scores.tolist(), kps.tolist(), strict=True)]
        return finish_detections(raw, self.adjust, self.min_face_size, self.max_faces, scale)

    def close(self) -> None:
        """Release the interpreter."""
        self._it = None
