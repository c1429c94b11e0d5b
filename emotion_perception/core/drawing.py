"""Annotated images: person boxes, track ids, top emotion labels and scores (ROS-free)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .types import EmotionResult, PersonDetection, Status

_COLORS = {Status.OK: (40, 200, 40), Status.CACHED: (40, 160, 220), Status.SKIPPED: (200, 200, 40),
           Status.ERROR: (220, 40, 40)}  # RGB


def draw_persons(image: np.ndarray, detections: Sequence[PersonDetection],
                 results: Sequence[EmotionResult] | None = None, top_k: int = 3) -> np.ndarray:
    """A copy of ``image`` ((H, W, 3) uint8 RGB) with boxes and, when given, emotions drawn."""
    out = np.ascontiguousarray(image).copy()
    scale = max(0.4, min(out.shape[:2]) / 900.0)
    for i, det in enumerate(detections):
        res = results[i] if results is not None and i < len(results) else None
        color = _COLORS.get(res.status, (255, 255, 255)) if res else (255, 160, 0)
        b = det.bbox
        p1 = (int(round(b.x1)), int(round(b.y1)))
        p2 = (int(round(b.x2)) - 1, int(round(b.y2)) - 1)
        cv2.rectangle(out, p1, p2, color, max(1, int(2 * scale)))
        lines = [f'id {det.track_id or "-"} {det.confidence:.2f}']
        if res is not None:
            if res.status in (Status.OK, Status.CACHED):
                lines += [f'{name} {score:.2f}' for name, score in res.top(top_k)]
                if np.isfinite(res.vad[0]):
                    lines.append('VAD ' + ' '.join(f'{v:.1f}' for v in res.vad))
            else:
                lines.append(f'{res.status.name.lower()}: {res.reason[:40]}')
        y = p1[1] + int(18 * scale)
        for line in lines:
            (tw, th), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
            cv2.rectangle(out, (p1[0], y - th - 3), (p1[0] + tw + 4, y + 3), (0, 0, 0), -1)
            cv2.putText(out, line, (p1[0] + 2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, color, 1,
                        cv2.LINE_AA)
            y += th + 8
    return out
