"""BlazeFace's output decoding as MediaPipe does it: SSD anchors, box and keypoint decoding, weighted NMS.

Pure numpy; the option values and the steps follow MediaPipe's calculators (see :mod:`edge.runtime.detect.blazeface`
for the sources read): ``ssd_anchors_calculator.cc``, ``tensors_to_detections_calculator.cc`` and
``non_max_suppression_calculator.cc`` (WEIGHTED, intersection over union).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Keypoint order of the model's 6 keypoints (``mediapipe/python/solutions/face_detection.py``
#: ``FaceKeyPoint``). "Right" is the subject's right: on an unmirrored frontal face it has the smaller x.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")

#: SsdAnchorsCalculatorOptions of the short-range model (face_detector_graph.cc ConfigureSsdAnchorsCalculator).
SHORT_RANGE_ANCHORS: dict[str, Any] = dict(
    input_size=(128, 128),
    strides=(8, 16, 16, 16),
    min_scale=0.1484375,
    max_scale=0.75,
    anchor_offset=(0.5, 0.5),
    aspect_ratios=(1.0,),
    interpolated_scale_aspect_ratio=1.0,
    reduce_boxes_in_lowest_layer=False,
    fixed_anchor_size=True,
)
#: TensorsToDetectionsCalculatorOptions x/y/w/h_scale: raw offsets are in 128-px tensor pixels.
BOX_SCALE = 128.0
NUM_KEYPOINTS = 6
SCORE_CLIP = 100.0
#: NonMaxSuppression min_suppression_threshold (Python FaceDetectorOptions default; the C++ proto says 0.5).
NMS_THRESHOLD = 0.3


def _calculate_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    """SSD scale of layer ``index`` of ``count`` (linear between min and max; the midpoint for one layer)."""
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(
    input_size: tuple[int, int] = (128, 128),
    strides: tuple[int, ...] = (8, 16, 16, 16),
    min_scale: float = 0.1484375,
    max_scale: float = 0.75,
    anchor_offset: tuple[float, float] = (0.5, 0.5),
    aspect_ratios: tuple[float, ...] = (1.0,),
    interpolated_scale_aspect_ratio: float = 1.0,
    reduce_boxes_in_lowest_layer: bool = False,
    fixed_anchor_size: bool = True,
) -> np.ndarray:
    """SSD anchors as MediaPipe's ``SsdAnchorsCalculator::GenerateAnchors`` makes them.

    Args:
        input_size: Model input (width, height).
        strides: One stride per output layer; consecutive equal strides share one grid (their anchors are
            interleaved per cell), which is how 4 layers become a 16x16x2 and an 8x8x6 grid.
        min_scale, max_scale: Anchor scales, linear over the layers.
        anchor_offset: Anchor centre within its cell (x, y), in cells.
        aspect_ratios: Per-layer aspect ratios.
        interpolated_scale_aspect_ratio: If > 0, one more anchor per layer with scale sqrt(s_i * s_i+1).
        reduce_boxes_in_lowest_layer: MediaPipe's predefined 3 anchors on layer 0 (unused by BlazeFace).
        fixed_anchor_size: Anchor w = h = 1 (BlazeFace regresses absolute sizes).

    Returns:
        float32 array (N, 4) of (x_center, y_center, w, h), normalised to [0, 1]; order y, x, anchor as in
        MediaPipe (the model's outputs follow it). N = 896 for the short-range options.
    """
    in_w, in_h = input_size
    n = len(strides)
    out = []
    layer = 0
    while layer < n:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < n and strides[last] == strides[layer]:
            scale = _calculate_scale(min_scale, max_scale, last, n)
            if last == 0 and reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for r in aspect_ratios:
                    ratios.append(r)
                    scales.append(scale)
                if interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == n - 1 else _calculate_scale(min_scale, max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(interpolated_scale_aspect_ratio)
            last += 1
        sqrt_r = np.sqrt(np.asarray(ratios, np.float32))
        aw = np.asarray(scales, np.float32) * sqrt_r
        ah = np.asarray(scales, np.float32) / sqrt_r
        if fixed_anchor_size:
            aw, ah = np.ones_like(aw), np.ones_like(ah)
        fh = math.ceil(in_h / strides[layer])
        fw = math.ceil(in_w / strides[layer])
        # float32 like the C++ (x + offset) * 1.0f / feature_map_width.
        ys = (np.arange(fh, dtype=np.float32) + np.float32(anchor_offset[1])) / np.float32(fh)
        xs = (np.arange(fw, dtype=np.float32) + np.float32(anchor_offset[0])) / np.float32(fw)
        k = len(ratios)
        grid = np.empty((fh, fw, k, 4), np.float32)
        grid[..., 0] = xs[None, :, None]
        grid[..., 1] = ys[:, None, None]
        grid[..., 2] = aw
        grid[..., 3] = ah
        out.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(out)


def score_logit_floor(min_score: float) -> float:
    """A raw-score (logit) bound below which no anchor can reach ``min_score`` after the sigmoid.

    Sigmoid is monotonic, so comparing logits against logit(min_score) finds the candidates without an
    exp() over all anchors; the 1e-3 margin covers float32 rounding of the sigmoid near the threshold (the
    exact test runs on the candidates afterwards).
    """
    if min_score <= 0.0:
        return -math.inf
    p = min(min_score, 1.0 - 1e-7)
    return math.log(p / (1.0 - p)) - 1e-3


def decode(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    min_score: float = 0.5,
    scale: float = BOX_SCALE,
    num_keypoints: int = NUM_KEYPOINTS,
    score_clip: float = SCORE_CLIP,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode the anchors that pass ``min_score`` (TensorsToDetectionsCalculator, CPU path).

    Threshold first: sigmoid is monotonic, so the raw scores are compared against logit(min_score) (minus a
    margin) and only those few anchors get the exact float32 sigmoid, the exact ``score < min_score`` test and
    box decoding. The result equals decoding all 896 and filtering.

    Args:
        raw_boxes: (N, 4 + 2 * num_keypoints) or (1, N, ...) regressors: x, y, w, h offsets in tensor pixels
            (``reverse_output_order``), then keypoint x, y offsets.
        raw_scores: (N,), (N, 1) or (1, N, 1) logits.
        anchors: (N, 4) from :func:`ssd_anchors`.
        min_score: Keep ``sigmoid(clip(raw)) >= min_score``.
        scale: x/y/w/h scale (128: offsets in pixels of the 128-px input).
        num_keypoints: Keypoints after the box.
        score_clip: Raw scores are clipped to +-this before the sigmoid.

    Returns:
        ``boxes`` (K, 4) xmin, ymin, xmax, ymax; ``scores`` (K,); ``keypoints`` (K, num_keypoints, 2) x, y;
        float32, normalised to the (letterboxed) tensor, in anchor order.
    """
    logits = np.asarray(raw_scores, np.float32).reshape(-1)
    idx = np.flatnonzero(logits >= score_logit_floor(min_score))
    ncoord = 4 + 2 * num_keypoints
    if idx.size == 0:
        return np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, num_keypoints, 2), np.float32)
    clipped = np.clip(logits[idx], -score_clip, score_clip)
    scores = (np.float32(1.0) / (np.float32(1.0) + np.exp(-clipped))).astype(np.float32)
    keep = scores >= np.float32(min_score)
    idx, scores = idx[keep], scores[keep]
    raw = np.asarray(raw_boxes, np.float32).reshape(-1, ncoord)[idx]
    a = anchors[idx]
    # Every (x, y) pair - box centre, box size, keypoints - is offset / scale * anchor size, in that order
    # as in DecodeBoxes; centre and keypoints then add the anchor centre.
    v = raw.reshape(-1, 2 + num_keypoints, 2) / np.float32(scale) * a[:, None, 2:4]
    centre = v[:, 0] + a[:, 0:2]
    half = v[:, 1] / np.float32(2)
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    kp = v[:, 2:] + a[:, None, 0:2]
    # MediaPipe drops boxes whose decoded width/height is negative or NaN (b/171391719); zero stays.
    ok = (half >= 0).all(axis=1)  # False for NaN too
    return boxes[ok], scores[ok], kp[ok]


def _pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box with every other, (K, K) float32 (MediaPipe's OverlapSimilarity, IoU type).

    0 where the boxes do not overlap or the union is not positive, so a zero-area box overlaps nothing,
    not even itself (MediaPipe: intersection area 0, normalisation 0 -> 0).
    """
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    iw = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    ih = np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area = (x1 - x0) * (y1 - y0)
    union = area[:, None] + area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.float32(0)).astype(np.float32, copy=False)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, threshold: float = NMS_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-max suppression (``WeightedNonMaxSuppression``).

    Repeatedly: take the best remaining detection; every remaining one whose IoU with it is strictly above
    ``threshold`` (itself included) is a candidate; the output is the score-weighted mean of the candidates'
    xmin, ymin, xmax, ymax and keypoints, with the *best* detection's score (not a mean); the candidates are
    removed. MediaPipe stops as soon as an iteration removes nothing (only possible when the best box has
    zero area, so its IoU with itself is 0); that detection is still emitted and the rest are dropped, as
    there.

    The K x K IoU matrix is computed once (K is the handful of anchors above the score threshold, about
    10-30 per face), so the loop only does boolean work on short rows; the weighted means are one matrix
    product per output at the end.

    Args:
        boxes: (K, 4) xyxy; scores: (K,); keypoints: (K, P, 2).
        threshold: min_suppression_threshold.

    Returns:
        Merged ``boxes``, ``scores``, ``keypoints``, best first.
    """
    if scores.size == 0:
        return boxes[:0], scores[:0], keypoints[:0]
    # Stable sort: MediaPipe's std::sort leaves ties in an unspecified order; stable is one valid choice.
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    similar = _pairwise_iou(boxes) > threshold
    alive = np.ones(scores.size, bool)
    groups, tops = [], []
    while True:
        top = int(np.argmax(alive))  # first alive = best remaining (sorted)
        group = similar[top] & alive
        tops.append(top)
        groups.append(group)
        if not group.any():  # zero-area best box: MediaPipe emits it unmerged and stops
            break
        alive &= ~group
        if not alive.any():
            break
    weights = np.where(np.stack(groups), scores[None, :], np.float32(0))
    total = weights.sum(axis=1, dtype=np.float32)
    tops_a = np.asarray(tops)
    lone = total == 0  # the zero-area case: keep the detection itself
    weights[lone, tops_a[lone]] = 1.0
    total[lone] = 1.0
    out_b = (weights @ boxes) / total[:, None]
    out_k = (weights @ keypoints.reshape(scores.size, -1)).reshape(len(tops), *keypoints.shape[1:]) / total[:, None, None]
    return out_b.astype(np.float32), scores[tops_a], out_k.astype(np.float32)
