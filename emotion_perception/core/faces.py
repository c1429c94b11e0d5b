"""Finding faces in person boxes, and which face belongs to which person (ROS-free).

Two face detectors:

* ``MTCNN``: the three-stage cascade of Zhang et al. (2016, "Joint Face Detection and Alignment
  using Multi-task Cascaded Convolutional Networks"), written here in torch and filled from the
  weights that ship in facenet-pytorch's wheel (``pkg://facenet_pytorch/data/{pnet,rnet,onet}.pt``,
  plain state dicts read with ``torch.load(weights_only=True)``; facenet-pytorch's own code is
  never imported). P-Net proposes face windows over an image pyramid, R-Net and O-Net re-score
  and refine them; O-Net also gives five landmarks (eyes, nose, mouth corners).
* ``HaarFaces``: OpenCV's frontal-face Haar cascade (fast, frontal faces only).

``FaceFinder`` is the one face-detection stage of the package: the face of each person box of a
frame (MTCNN, Haar where MTCNN finds none, then ``assign_faces``). The face baseline runs it for
the persons it evaluates; the emotion pipeline runs it for every person of a frame when the
REP-155 output needs faces (``EmotionPipeline.process(..., with_faces=True)``, any backend),
and hands the faces of the evaluated persons to a backend that takes them (one search a frame).

``assign_faces`` decides, for all person boxes of a frame together, which face is whose: a face
goes to the box whose person it fits best (horizontally centred in the box, high in it, of a
plausible size), and each face to one person only. That matters when boxes overlap (two people
side by side, an arm stretched over a neighbour): the box of one person then also holds the
other's face, and "the largest face in the box" picks the wrong one.

Box convention as everywhere in ``core``: xyxy pixels of the full image, floats.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model_files import ModelFileError, resolve_model_path
from .types import BBox, BoxError

#: Folder (``pkg://``) holding MTCNN's pnet.pt, rnet.pt and onet.pt (facenet-pytorch 2.6.0, MIT).
OFFLINE_MTCNN_WEIGHTS = 'pkg://facenet_pytorch/data'
#: File names of the three stages inside that folder.
MTCNN_FILES = ('pnet.pt', 'rnet.pt', 'onet.pt')

#: P-Net sees 12x12 windows with a stride of 2 pixels (its output grid), at every pyramid scale.
PNET_CELL = 12
PNET_STRIDE = 2
#: Input sides of R-Net and O-Net.
RNET_SIZE = 24
ONET_SIZE = 48
#: MTCNN's input scaling: (pixel - 127.5) / 128.
_PIXEL_MEAN = 127.5
_PIXEL_SCALE = 1.0 / 128.0
#: Non-maximum suppression IoU thresholds of the reference implementation: within one pyramid
#: scale, across scales, after R-Net, and after O-Net (that one on intersection over the smaller
#: box, so a small box inside a bigger one is dropped).
NMS_PER_SCALE = 0.5
NMS_ACROSS_SCALES = 0.7
NMS_RNET = 0.7
NMS_ONET_MIN = 0.7


@dataclass(frozen=True)
class Face:
    """A face found in an image.

    Attributes:
        box: the face, xyxy pixels of the full image (not clipped; MTCNN boxes may reach a
            little past the image border).
        score: detector confidence in [0, 1] (MTCNN's O-Net face probability; the Haar cascade
            gives none, ``HAAR_SCORE`` stands in).
        source: 'mtcnn' or 'haar'.
        landmarks: (5, 2) float32 pixel (x, y) of left eye, right eye, nose, left and right mouth
            corner (MTCNN only), else None.
    """

    box: BBox
    score: float
    source: str
    landmarks: np.ndarray | None = None


#: Score given to Haar faces (the cascade has no confidence; below every MTCNN face it is
#: compared with, since O-Net keeps faces from 0.7 up).
HAAR_SCORE = 0.5


# -- the three networks --------------------------------------------------------------------------
def _flatten_wh(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C) in (W, H, C) order.

    The MTCNN weights come from the original Caffe models, trained on transposed
    (column-major) images; the converted convolutions work on ordinary images, but the first
    fully connected layer still reads its input in that transposed order.
    """
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network, fully convolutional.

    Input (N, 3, H, W) RGB scaled as (pixel - 127.5) / 128, H, W >= 12. Returns the face
    probability (N, H', W') and box offsets (N, 4, H', W') (dx1, dy1, dx2, dy2 as fractions of
    the window side) of the 12x12 window at (2 * x', 2 * y'), H' = ceil((H - 2) / 2) - 4.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network. Input (N, 3, 24, 24) scaled like ``PNet``'s; returns the face
    probability (N,) and box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)  # 64 channels x 3 x 3
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network. Input (N, 3, 48, 48); returns the face probability (N,), box offsets
    (N, 4) and landmarks (N, 10): x of the five points, then y, as fractions of the box."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)  # 128 channels x 3 x 3
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


class FaceModelError(RuntimeError):
    """Face detector weights missing or not the expected networks (says which file, why)."""


def load_mtcnn_nets(folder: str) -> tuple[PNet, RNet, ONet]:
    """The three networks filled from ``folder``/{pnet,rnet,onet}.pt (state dicts).

    Raises:
        FaceModelError: a file is missing, not a tensor state dict, or its keys/shapes differ
            from the network (the message names the file and the first difference).
    """
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, MTCNN_FILES):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FaceModelError(f'MTCNN weights {path!r} do not exist (they ship in '
                                 f'facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0)')
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(f'a {type(state).__name__}, not a state dict')
            expected = net.state_dict()
            if sorted(state) != sorted(expected):
                raise KeyError(f'keys {sorted(state)} != {sorted(expected)}')
            for key, value in expected.items():
                if tuple(state[key].shape) != tuple(value.shape):
                    raise ValueError(f'{key}: shape {tuple(state[key].shape)}, the network '
                                     f'needs {tuple(value.shape)}')
            net.load_state_dict(state)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError,
                EOFError, pickle.UnpicklingError) as exc:
            raise FaceModelError(f'{path}: not the MTCNN {name[:4]} weights expected: '
                                 f'{exc}') from exc
        net.eval()
    return nets  # type: ignore[return-value]


# -- box helpers (numpy, (K, 4) xyxy float) ------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = 'union'
        ) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: (K, 4) xyxy. scores: (K,). mode: 'union' (IoU) or 'min' (intersection over the
            smaller box).

    Returns:
        Indices of the kept boxes, highest score first.
    """
    order = np.argsort(-scores, kind='stable')
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(np.minimum(boxes[i, 2], boxes[rest, 2])
                        - np.maximum(boxes[i, 0], boxes[rest, 0]), 0)
        ih = np.maximum(np.minimum(boxes[i, 3], boxes[rest, 3])
                        - np.maximum(boxes[i, 1], boxes[rest, 1]), 0)
        inter = iw * ih
        denom = (np.minimum(area[i], area[rest]) if mode == 'min'
                 else area[i] + area[rest] - inter)
        overlap = np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each side of (K, 4) boxes by its offset times the box width/height."""
    wh = np.concatenate([boxes[:, 2:4] - boxes[:, 0:2]] * 2, axis=1)
    return boxes + offsets * wh


def _square(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) boxes made square around their centres (side = the longer side)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(axis=1, keepdims=True)
    x1y1 = boxes[:, 0:2] + (wh - side) / 2.0
    return np.concatenate([x1y1, x1y1 + side], axis=1)


def _crop_resized(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The integer-rounded ``box`` of ``image`` ((H, W, 3) uint8), zero outside the image,
    resized to (size, size, 3) uint8."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    out = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[sy1:sy2, sx1:sx2]
    shrink = out.shape[0] > size or out.shape[1] > size
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA if shrink
                      else cv2.INTER_LINEAR)


class MTCNN:
    """MTCNN face detector on RGB images (see the module docstring).

    Args:
        nets: (PNet, RNet, ONet), e.g. from ``load_mtcnn_nets``.
        device: torch device for the three networks.
        min_face_size: smallest face side searched for, in pixels of the given image (>= 12;
            smaller means more pyramid scales, slower).
        thresholds: face probability each stage needs (P-Net, R-Net, O-Net); the reference
            values 0.6, 0.7, 0.7.
        scale_factor: image pyramid step (0.709 = 1/sqrt(2), the reference value).
    """

    def __init__(self, nets: tuple[PNet, RNet, ONet], device: str = 'cpu',
                 min_face_size: float = 20.0, thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 scale_factor: float = 0.709) -> None:
        if min_face_size < PNET_CELL:
            raise ValueError(f'min_face_size must be >= {PNET_CELL} pixels (the P-Net window), '
                             f'got {min_face_size}')
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f'thresholds must be 3 probabilities, got {thresholds}')
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f'scale_factor must be in (0, 1), got {scale_factor}')
        self.pnet, self.rnet, self.onet = (net.to(device) for net in nets)
        self.device = device
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)

    def scales(self, height: int, width: int, min_face_size: float | None = None
               ) -> list[float]:
        """Pyramid scales for an image of this size: the first maps the minimum face size
        (default ``self.min_face_size``) onto the 12-pixel P-Net window, each next one is
        ``scale_factor`` smaller, down to a 12-pixel short side."""
        scale = PNET_CELL / max(float(PNET_CELL), min_face_size or self.min_face_size)
        side = min(height, width) * scale
        out = []
        while side >= PNET_CELL:
            out.append(scale)
            scale *= self.scale_factor
            side *= self.scale_factor
        return out

    def _normalise(self, images_hwc: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 on the device, MTCNN-scaled."""
        x = torch.from_numpy(np.ascontiguousarray(images_hwc)).to(self.device)
        return (x.permute(0, 3, 1, 2).float() - _PIXEL_MEAN) * _PIXEL_SCALE

    def _proposals(self, image: np.ndarray, min_face_size: float) -> np.ndarray:
        """Stage 1 on one image: (K, 4) square candidate boxes."""
        h, w = image.shape[:2]
        x = self._normalise(image[None])
        found = []
        for scale in self.scales(h, w, min_face_size):
            size = (max(PNET_CELL, int(math.ceil(h * scale))),
                    max(PNET_CELL, int(math.ceil(w * scale))))
            prob, offsets = self.pnet(F.interpolate(x, size=size, mode='area'))
            ys, xs = torch.nonzero(prob[0] >= self.thresholds[0], as_tuple=True)
            if ys.numel() == 0:
                continue
            # the real scale of this level (the size was rounded up)
            sy, sx = size[0] / h, size[1] / w
            gx, gy = xs.cpu().numpy().astype(np.float64), ys.cpu().numpy().astype(np.float64)
            boxes = np.stack([gx * PNET_STRIDE / sx, gy * PNET_STRIDE / sy,
                              (gx * PNET_STRIDE + PNET_CELL) / sx,
                              (gy * PNET_STRIDE + PNET_CELL) / sy], axis=1)
            score = prob[0, ys, xs].cpu().numpy().astype(np.float64)
            off = offsets[0, :, ys, xs].T.cpu().numpy().astype(np.float64)
            keep = nms(boxes, score, NMS_PER_SCALE)
            found.append(np.concatenate([boxes[keep], score[keep, None], off[keep]], axis=1))
        if not found:
            return np.zeros((0, 4))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], NMS_ACROSS_SCALES)]
        return _square(_regress(cand[:, :4], cand[:, 5:9]))

    def _crops(self, images: Sequence[np.ndarray], owner: np.ndarray, boxes: np.ndarray,
               size: int) -> torch.Tensor:
        return self._normalise(np.stack([_crop_resized(images[int(i)], b, size)
                                         for i, b in zip(owner, boxes)]))

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray],
               min_face_sizes: Sequence[float] | None = None) -> list[list[Face]]:
        """Faces in each of ``images`` ((H, W, 3) uint8 RGB, any sizes; R-Net and O-Net run once
        for the candidates of all images together).

        Args:
            min_face_sizes: per image, the smallest face side searched for in its pixels
                (default ``min_face_size`` for all; values below 12 count as 12).

        Returns:
            Per image, its faces (highest score first), boxes in that image's pixels.
        """
        if min_face_sizes is not None and len(min_face_sizes) != len(images):
            raise ValueError(f'{len(min_face_sizes)} min_face_sizes for {len(images)} images')
        owner_list, box_list = [], []
        for i, image in enumerate(images):
            if min(image.shape[:2]) < PNET_CELL:
                continue
            props = self._proposals(image, self.min_face_size if min_face_sizes is None
                                    else float(min_face_sizes[i]))
            owner_list.append(np.full(len(props), i))
            box_list.append(props)
        out: list[list[Face]] = [[] for _ in images]
        if not box_list or not sum(len(b) for b in box_list):
            return out
        owner, boxes = np.concatenate(owner_list), np.concatenate(box_list)

        # stage 2: R-Net re-scores and refines every proposal
        prob, offsets = self.rnet(self._crops(images, owner, boxes, RNET_SIZE))
        prob, offsets = prob.cpu().numpy(), offsets.cpu().numpy().astype(np.float64)
        ok = prob >= self.thresholds[1]
        owner, boxes, prob, offsets = owner[ok], boxes[ok], prob[ok], offsets[ok]
        keep = np.concatenate([np.flatnonzero(owner == i)[nms(boxes[owner == i], prob[owner == i],
                                                               NMS_RNET)]
                               for i in np.unique(owner)]) if len(owner) else np.zeros(0, int)
        owner, boxes = owner[keep], _square(_regress(boxes[keep], offsets[keep]))
        if not len(boxes):
            return out

        # stage 3: O-Net gives the final score, box and landmarks
        prob, offsets, marks = self.onet(self._crops(images, owner, boxes, ONET_SIZE))
        prob = prob.cpu().numpy()
        offsets, marks = offsets.cpu().numpy().astype(np.float64), marks.cpu().numpy()
        ok = prob >= self.thresholds[2]
        owner, boxes, prob, offsets, marks = owner[ok], boxes[ok], prob[ok], offsets[ok], marks[ok]
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        points = np.stack([boxes[:, None, 0] + marks[:, 0:5] * wh[:, None, 0],
                           boxes[:, None, 1] + marks[:, 5:10] * wh[:, None, 1]], axis=2)
        boxes = _regress(boxes, offsets)
        for i in np.unique(owner):
            idx = np.flatnonzero(owner == i)
            for k in idx[nms(boxes[idx], prob[idx], NMS_ONET_MIN, mode='min')]:
                out[int(i)].append(Face(BBox(*(float(v) for v in boxes[k])), float(prob[k]),
                                        'mtcnn', points[k].astype(np.float32)))
        return out


class HaarFaces:
    """OpenCV's Haar frontal-face cascade as a face detector on grey images.

    Args:
        cascade_path: cascade XML; '' = OpenCV's haarcascade_frontalface_default.xml.
        scale_factor: cascade pyramid step (> 1). min_neighbors: overlapping detections a face
            needs.

    Raises:
        FaceModelError: the cascade file is missing or not a cascade (OpenCV 5 dropped them).
    """

    def __init__(self, cascade_path: str = '', scale_factor: float = 1.1,
                 min_neighbors: int = 5) -> None:
        path = cascade_path or os.path.join(cv2.data.haarcascades,
                                            'haarcascade_frontalface_default.xml')
        cascade = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
        if cascade is None or cascade.empty():
            raise FaceModelError(f'face cascade {path!r} is missing or not a Haar cascade XML '
                                 f'(opencv-python 4.x ships it; OpenCV 5 dropped it)')
        self._cascade = cascade
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)

    def detect(self, grey: np.ndarray, min_size: int) -> list[Face]:
        """Faces in ``grey`` ((H, W) uint8), at least ``min_size`` pixels wide."""
        found = self._cascade.detectMultiScale(grey, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors,
                                               minSize=(min_size, min_size))
        return [Face(BBox(float(x), float(y), float(x + w), float(y + h)), HAAR_SCORE, 'haar')
                for x, y, w, h in (tuple(int(v) for v in r) for r in found)]


# -- which face is whose --------------------------------------------------------------------------
#: A face smaller than this fraction of the person box's height is taken for someone farther
#: away, not the box's person: a standing person's face (MTCNN box, brows to chin) is about
#: 0.085 of the body height, so this allows half of that (arms raised, legs apart) and more for
#: upper-body boxes, where the face is a larger share.
MIN_FACE_TO_BOX_HEIGHT = 0.04
#: A face must lie at least this much (fraction of its area) inside the person box.
MIN_FACE_INSIDE = 0.5
#: Weights of the fit cost (see ``face_fit``): horizontal offset from the box centre counts
#: double, as a person's head is over the body's centre line in nearly every pose, while its
#: height in the box depends on the pose (standing, seated, an upper-body box).
FIT_WEIGHT_X = 2.0
FIT_WEIGHT_Y = 1.0


def face_fit(person: BBox, face: Face, search_fraction: float) -> float | None:
    """How badly ``face`` fits as the face of the person in box ``person`` (lower is better),
    or None when it cannot be that person's face.

    It cannot when its centre is outside the top ``search_fraction`` of the box, when less than
    ``MIN_FACE_INSIDE`` of it lies inside the box, or when it is smaller than
    ``MIN_FACE_TO_BOX_HEIGHT`` of the box height. Otherwise the cost is
    ``FIT_WEIGHT_X * |cx - box cx| / box width + FIT_WEIGHT_Y * (cy - box y1) / box height
    + (1 - score)``: a face over the body's centre line, high in the box, confidently detected.
    """
    fx, fy = face.box.center
    if not (person.x1 <= fx <= person.x2
            and person.y1 <= fy <= person.y1 + search_fraction * person.height):
        return None
    ix = max(0.0, min(person.x2, face.box.x2) - max(person.x1, face.box.x1))
    iy = max(0.0, min(person.y2, face.box.y2) - max(person.y1, face.box.y1))
    if face.box.area <= 0 or ix * iy < MIN_FACE_INSIDE * face.box.area:
        return None
    if face.box.height < MIN_FACE_TO_BOX_HEIGHT * person.height:
        return None
    dx = abs(fx - person.center[0]) / person.width
    dy = (fy - person.y1) / person.height
    return FIT_WEIGHT_X * dx + FIT_WEIGHT_Y * dy + (1.0 - face.score)


def merge_faces(faces: Sequence[Face], iou: float = 0.4) -> list[Face]:
    """One entry per face: where several detections (from overlapping search regions, or MTCNN
    and Haar) overlap by more than ``iou``, keep MTCNN's over Haar's, then the higher score."""
    order = sorted(faces, key=lambda f: (f.source != 'mtcnn', -f.score))
    kept: list[Face] = []
    for face in order:
        if all(face.box.iou(k.box) <= iou for k in kept):
            kept.append(face)
    return kept


def assign_faces(persons: Sequence[BBox], faces: Sequence[Face], search_fraction: float,
                 evaluated: int | None = None) -> list[Face | None]:
    """The face of each person box, each face given to at most one person.

    Greedy on the fit cost (``face_fit``): the best-fitting (person, face) pair is fixed first,
    then the best among the remaining persons and faces, and so on. So when two boxes both hold
    a face, it goes to the person it fits better, and the other person keeps its own face or
    none.

    Args:
        persons: all person boxes of the frame (xyxy pixels).
        faces: the faces found (``merge_faces`` output: one entry per face).
        search_fraction: the top fraction of a box its person's face must be in.
        evaluated: only the first ``evaluated`` persons are answered; the others (default none)
            take part only to claim their faces (persons answered from a cache).

    Returns:
        Per person (the first ``evaluated``), its face or None.
    """
    n = len(persons) if evaluated is None else evaluated
    pairs = []
    for p, person in enumerate(persons):
        for f, face in enumerate(faces):
            cost = face_fit(person, face, search_fraction)
            if cost is not None:
                pairs.append((cost, p, f))
    chosen: dict[int, int] = {}
    used: set[int] = set()
    for _, p, f in sorted(pairs):
        if p not in chosen and f not in used:
            chosen[p] = f
            used.add(f)
    return [faces[chosen[p]] if p in chosen else None for p in range(n)]


# -- the face-detection stage ---------------------------------------------------------------------
#: Side of the Haar frontal-face cascade's detection window in pixels (its smallest face).
HAAR_WINDOW = 24
#: Face detectors of the ``face_detector`` option.
FACE_DETECTORS = ('mtcnn', 'haar')


@dataclass
class FaceFinderOptions:
    """How faces are searched in person boxes (also the face baseline's options).

    Attributes:
        face_detector: 'mtcnn' (default: MTCNN, and the Haar cascade for a person box in which
            MTCNN finds no face) or 'haar' (the Haar cascade alone; frontal faces only).
        mtcnn_weights: folder with MTCNN's pnet.pt, rnet.pt, onet.pt (a path or ``pkg://``);
            default: the weights in facenet-pytorch.
        face_cascade: OpenCV Haar cascade XML; '' = OpenCV's haarcascade_frontalface_default.
        face_search_fraction: the face is searched in the top fraction of the person box height
            (full width). A standing person's head lies in the top ~1/6 of the box, a seated or
            upper-body box has it in the top half; 0.6 covers both and keeps the search off the
            lower body (fewer false faces, less time). 1.0 searches the whole box.
        min_face_size: smallest face side in image pixels that is searched for (MTCNN: at
            least its 12-pixel window in the possibly shrunk search region).
        max_search_side: the search region is shrunk (never enlarged) so that its longer side
            is at most this many pixels before a face detector runs, which bounds its cost per
            person whatever the camera resolution. The smallest face found is then about
            12 / max_search_side (MTCNN) or 24 / max_search_side (Haar) of the region's longer
            side; a standing person's face is ~15 % of the searched height. 0 = full resolution.
        scale_factor: Haar cascade image-pyramid step (``scaleFactor``, > 1; smaller finds more,
            slower).
        min_neighbors: overlapping Haar detections a face needs (``minNeighbors``; higher =
            fewer false faces, more missed ones).
    """

    face_detector: str = 'mtcnn'
    mtcnn_weights: str = OFFLINE_MTCNN_WEIGHTS
    face_cascade: str = ''
    face_search_fraction: float = 0.6
    min_face_size: int = 20
    max_search_side: int = 320
    scale_factor: float = 1.1
    min_neighbors: int = 5

    def __post_init__(self) -> None:
        if self.face_detector not in FACE_DETECTORS:
            raise ValueError(f'face_detector must be one of {FACE_DETECTORS}, got '
                             f'{self.face_detector!r}')
        if not 0.0 < self.face_search_fraction <= 1.0:
            raise ValueError(f'face_search_fraction must be in (0, 1], got '
                             f'{self.face_search_fraction}')
        if int(self.min_face_size) < 1:
            raise ValueError(f'min_face_size must be >= 1 pixel, got {self.min_face_size}')
        if int(self.max_search_side) != 0 and int(self.max_search_side) < HAAR_WINDOW:
            raise ValueError(f'max_search_side must be 0 (off) or >= {HAAR_WINDOW} (the '
                             f'cascade window), got {self.max_search_side}')
        if not self.scale_factor > 1.0:
            raise ValueError(f'scale_factor must be > 1 (e.g. 1.1), got {self.scale_factor}')
        if int(self.min_neighbors) < 0:
            raise ValueError(f'min_neighbors must be >= 0, got {self.min_neighbors}')


class FaceFinder:
    """The face of each person box of a frame (see the module docstring).

    Args:
        options: a ``FaceFinderOptions`` (or any object with its fields, e.g. the face
            baseline's options); default: the defaults (MTCNN from facenet-pytorch's weights).
    """

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else FaceFinderOptions()
        self._mtcnn: MTCNN | None = None
        self._haar: HaarFaces | None = None
        self.device = 'cpu'

    @property
    def loaded(self) -> bool:
        return self._haar is not None

    def load(self, device: str = 'cpu') -> None:
        """Read the Haar cascade and (``face_detector: mtcnn``) the MTCNN weights onto
        ``device``. Idempotent.

        Raises:
            FaceModelError: weights or cascade missing or of another kind (the message says
                which; with MTCNN it suggests ``face_detector: 'haar'``).
            RuntimeError: the networks cannot be moved to ``device``.
        """
        if self.loaded:
            return
        opt = self.options
        try:
            haar = HaarFaces(opt.face_cascade, opt.scale_factor, opt.min_neighbors)
            mtcnn = None
            if opt.face_detector == 'mtcnn':
                folder = resolve_model_path(opt.mtcnn_weights or OFFLINE_MTCNN_WEIGHTS,
                                            directory=True)
                mtcnn = MTCNN(load_mtcnn_nets(folder), device=device)
        except (FaceModelError, ModelFileError) as exc:
            raise FaceModelError(f"{exc} (or set the option face_detector: 'haar')"
                                 if opt.face_detector == 'mtcnn' else str(exc)) from exc
        self._haar, self._mtcnn, self.device = haar, mtcnn, device

    def unload(self) -> None:
        """Free the networks and the cascade. Safe when not loaded."""
        self._haar = self._mtcnn = None

    def _search_region(self, box: BBox) -> tuple[int, int, int, int, float]:
        """Integer (x1, y1, x2, y2) of the top ``face_search_fraction`` of ``box`` and the factor
        it is shrunk by (<= 1) so that its longer side is at most ``max_search_side``."""
        opt = self.options
        x1, y1, x2 = int(box.x1), int(box.y1), int(box.x2)
        y2 = y1 + max(1, int(round(box.height * opt.face_search_fraction)))
        longer = max(x2 - x1, y2 - y1)
        scale = 1.0
        if opt.max_search_side and longer > opt.max_search_side:
            scale = opt.max_search_side / longer
        return x1, y1, x2, y2, scale

    @staticmethod
    def _shrunk(image: np.ndarray, scale: float) -> np.ndarray:
        if scale >= 1.0:
            return image
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    @staticmethod
    def _to_image(face: Face, x1: int, y1: int, scale: float) -> Face:
        """A face found in a (shrunk) search region, in full-image pixels."""
        b = face.box
        marks = None if face.landmarks is None else face.landmarks / scale + (x1, y1)
        return Face(BBox(x1 + b.x1 / scale, y1 + b.y1 / scale, x1 + b.x2 / scale,
                         y1 + b.y2 / scale), face.score, face.source, marks)

    def _search(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[list[Face]]:
        """The faces found in the search region of each box (full-image pixels): MTCNN on all
        regions in one batched R-Net/O-Net pass, the Haar cascade where it found none."""
        opt = self.options
        regions = [self._search_region(b) for b in boxes]
        found: list[list[Face]] = [[] for _ in boxes]
        usable = [i for i, (x1, y1, x2, y2, _) in enumerate(regions)
                  if min(x2 - x1, y2 - y1) >= int(opt.min_face_size)]
        if self._mtcnn is not None and usable:
            crops, mins = [], []
            for i in usable:
                x1, y1, x2, y2, scale = regions[i]
                crops.append(self._shrunk(image[y1:y2, x1:x2], scale))
                mins.append(max(float(PNET_CELL), int(opt.min_face_size) * scale))
            for k, faces in enumerate(self._mtcnn.detect(crops, mins)):
                x1, y1, _, _, scale = regions[usable[k]]
                found[usable[k]] = [self._to_image(f, x1, y1, scale) for f in faces]
        grey = None
        for i in usable:
            if found[i]:
                continue
            if grey is None:
                grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            x1, y1, x2, y2, scale = regions[i]
            min_size = max(1, round(int(opt.min_face_size) * scale))
            faces = self._haar.detect(self._shrunk(grey[y1:y2, x1:x2], scale), min_size)
            found[i] = [self._to_image(f, x1, y1, scale) for f in faces]
        return found

    def find(self, image: np.ndarray, boxes: Sequence[BBox], context: Sequence[BBox] = ()
             ) -> list[Face | None]:
        """The face of each person box.

        The top part of every usable box is searched (``_search``); the faces found are
        merged (one entry per face), then given to the persons they fit, each face to one
        person, the ``context`` boxes competing for them too (``assign_faces``).

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: the persons, xyxy pixels; boxes partly outside the image are clipped,
                unusable ones (empty, outside, NaN) get None.
            context: the frame's other person boxes (not answered, e.g. cached); they only claim
                the faces that are theirs.

        Returns:
            Per box in ``boxes``, its face detection (full-image pixels) or None.

        Raises:
            RuntimeError: not loaded.
        """
        if self._haar is None:
            raise RuntimeError('the face finder is not loaded; call load() first')
        h, w = image.shape[:2]
        usable: list[int] = []
        clipped: list[BBox] = []
        for i, box in enumerate(boxes):
            try:
                clipped.append(box.clipped(w, h))
                usable.append(i)
            except BoxError:
                pass
        others = []
        for box in context:
            try:
                others.append(box.clipped(w, h))
            except BoxError:
                pass
        found = self._search(image, clipped)
        pool = merge_faces([f for faces in found for f in faces])
        chosen = assign_faces(clipped + others, pool, self.options.face_search_fraction,
                              evaluated=len(clipped))
        out: list[Face | None] = [None] * len(boxes)
        for i, face in zip(usable, chosen):
            out[i] = face
        return out


__all__ = ['FACE_DETECTORS', 'Face', 'FaceFinder', 'FaceFinderOptions', 'FaceModelError',
           'HAAR_WINDOW', 'HAAR_SCORE', 'HaarFaces', 'MTCNN', 'MTCNN_FILES',
           'OFFLINE_MTCNN_WEIGHTS', 'ONet', 'PNet', 'RNet', 'assign_faces', 'face_fit',
           'load_mtcnn_nets', 'merge_faces', 'nms']
