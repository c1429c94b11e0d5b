"""Bring a camera frame to the model's working resolution ONCE per frame, before marking.

With ``red_box`` marking every person of a frame is shown the whole frame with their own box.
Marking full-resolution copies and letting the processor resize each of them costs one full
frame copy and one resize per person; instead the frame is resized once to what the model's
image processor would work with, and each box is drawn in the resized coordinates (its line
width relative to that size, so it stays a visible line rather than being blurred away by a
later downscale). When the frame is already at that size nothing changes: the pixels, and so
the scores, are those of marking the frame itself.

The working size per image processor family:

* fixed square input with a centre crop (CLIP, e.g. LLaVA-1.5): the frame is **letterboxed**
  (padded to a square with the processor's mean colour) and resized to the crop size, so that
  the centre crop keeps the whole frame: a person at the edge of a wide frame would otherwise
  lose their red box to the crop;
* dynamic resolution (Qwen2-VL): exactly the processor's own ``smart_resize`` target, so the
  processor does not resample again;
* tiling processors (LLaVA-NeXT anyres, Idefics3/SmolVLM): the frame is only scaled down to
  the processor's largest working resolution (its own resize then starts from there);
* anything else: unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..types import BBox


@dataclass(frozen=True)
class FramePlan:
    """How one frame is brought to the working resolution.

    Attributes:
        size: (height, width) of the working image.
        scale: (x, y) working pixels per frame pixel.
        offset: (x, y) of the frame's top-left corner in the working image (letterbox padding).
        letterbox: the frame is padded to a square first.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[int, int] = (0, 0)
    letterbox: bool = False

    def box(self, box: BBox) -> BBox:
        """``box`` (frame pixels, xyxy) in working-image pixels."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        return BBox(box.x1 * sx + ox, box.y1 * sy + oy, box.x2 * sx + ox, box.y2 * sy + oy)


def _get(d: Any, key: str) -> Any:
    if d is None:
        return None
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


def plan_frame(image_processor: Any, height: int, width: int) -> FramePlan:
    """The working size of a ``height`` x ``width`` frame for ``image_processor`` (see module)."""
    identity = FramePlan((height, width), (1.0, 1.0))
    if image_processor is None:
        return identity
    size = getattr(image_processor, 'size', None)
    if getattr(image_processor, 'merge_size', None) and _get(size, 'longest_edge'):  # Qwen2-VL
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        h, w = smart_resize(height, width, factor=factor,
                            min_pixels=int(_get(size, 'shortest_edge') or factor * factor),
                            max_pixels=int(_get(size, 'longest_edge')))
        return FramePlan((h, w), (w / width, h / height))
    pinpoints = getattr(image_processor, 'image_grid_pinpoints', None)
    if pinpoints:  # LLaVA-NeXT anyres
        return _cap(height, width, max(max(p) for p in pinpoints))
    if getattr(image_processor, 'do_image_splitting', None) is not None and \
            _get(size, 'longest_edge'):  # Idefics3 / SmolVLM
        return _cap(height, width, int(_get(size, 'longest_edge')))
    crop = getattr(image_processor, 'crop_size', None)
    if getattr(image_processor, 'do_center_crop', False) and _get(crop, 'height'):
        side = int(_get(crop, 'height'))
        if int(_get(crop, 'width')) != side:
            return identity
        longer = max(height, width)
        scale = side / longer
        ox = int(round((longer - width) * scale / 2))
        oy = int(round((longer - height) * scale / 2))
        return FramePlan((side, side), (scale, scale), (ox, oy), letterbox=True)
    if _get(size, 'height') and _get(size, 'width'):  # fixed size, no crop (SigLIP-like)
        return identity  # the processor's own (anisotropic) resize; nothing to gain here
    return identity


def _cap(height: int, width: int, longest: int) -> FramePlan:
    if max(height, width) <= longest:
        return FramePlan((height, width), (1.0, 1.0))
    scale = longest / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return FramePlan((h, w), (w / width, h / height))


def fill_colour(image_processor: Any) -> tuple[int, int, int]:
    """The processor's mean colour (0-255 RGB), for letterbox padding."""
    mean = getattr(image_processor, 'image_mean', None) or (0.5, 0.5, 0.5)
    return tuple(int(round(float(m) * 255)) for m in mean[:3])


def working_frame(image: np.ndarray, plan: FramePlan, fill: Sequence[int] = (127, 127, 127)
                  ) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB resized (and letterboxed) per ``plan`` (a copy)."""
    h, w = image.shape[:2]
    if plan.size == (h, w) and not plan.letterbox:
        return image
    if plan.letterbox:
        rh = max(1, int(round(h * plan.scale[1])))
        rw = max(1, int(round(w * plan.scale[0])))
        out = np.empty((*plan.size, 3), dtype=np.uint8)
        out[:] = np.asarray(fill, dtype=np.uint8)
        small = image if (rh, rw) == (h, w) else cv2.resize(image, (rw, rh),
                                                            interpolation=_interp(h, rh))
        ox, oy = plan.offset
        out[oy:oy + rh, ox:ox + rw] = small[:plan.size[0] - oy, :plan.size[1] - ox]
        return out
    th, tw = plan.size
    return cv2.resize(image, (tw, th), interpolation=_interp(h, th))


def _interp(src: int, dst: int) -> int:
    return cv2.INTER_AREA if dst < src else cv2.INTER_CUBIC





def marked_images(image: np.ndarray, boxes: Sequence[BBox], marking: str,
                  image_processor: Any = None) -> list[np.ndarray]:
    """The image the model sees for each person, at the working resolution (module docstring).

    Args:
        image: (H, W, 3) uint8 RGB frame.
        boxes: persons, xyxy frame pixels (valid, inside the frame).
        marking: 'red_box' (whole frame, red box; the frame is brought to the working size
            ONCE and each box drawn there), 'crop' (the person's pixels) or 'crop_context' (the
            box grown by ``prompts.CONTEXT_MARGIN`` with the red box drawn).
        image_processor: the model's image processor (None: no resizing, as ``mark_image``).

    Returns:
        One (h, w, 3) uint8 RGB image per box.
    """
    from .. import prompts
    h, w = image.shape[:2]
    fill = fill_colour(image_processor)
    if marking == 'red_box':
        plan = plan_frame(image_processor, h, w)
        frame = working_frame(image, plan, fill)
        return [prompts.draw_box(frame, plan.box(b)) for b in boxes]
    if marking not in prompts.MARKINGS:
        raise ValueError(f'unknown marking {marking!r}; choose one of {prompts.MARKINGS}')
    out = []
    for b in boxes:
        region = b.clipped(w, h) if marking == 'crop' else prompts.context_box(b.clipped(w, h),
                                                                                w, h)
        sub = prompts.crop(image, region)
        plan = plan_frame(image_processor, *sub.shape[:2])
        work = working_frame(sub, plan, fill)
        if marking == 'crop_context':
            inner = BBox(b.x1 - region.x1, b.y1 - region.y1, b.x2 - region.x1, b.y2 - region.y1)
            work = prompts.draw_box(work, plan.box(inner))
        elif work is sub:
            work = np.ascontiguousarray(sub)
        out.append(work)
    return out

__all__ = ['FramePlan', 'fill_colour', 'marked_images', 'plan_frame', 'working_frame']
