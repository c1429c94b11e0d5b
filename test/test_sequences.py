"""The sequence generator (emotion_perception.testing.sequences): deterministic with a seed,
real-sized frames, ground truth that agrees with what is drawn, and people the real detector
finds."""
from __future__ import annotations

import os

os.environ.setdefault('YOLO_OFFLINE', '1')

import dataclasses  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from emotion_perception.testing import sequences as S  # noqa: E402
from emotion_perception.testing.identity_eval import slot_track_ids  # noqa: E402


def _box_pixels(seq: S.Sequence, t: float, box) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return seq.render_scene(t)[y1:y2, x1:x2]


def test_same_seed_same_frames_any_order_other_seed_other_frames():
    a = S.occlusion_sequence(fps=10, hide_s=0.5, seed=7, passes=1)
    b = S.occlusion_sequence(fps=10, hide_s=0.5, seed=7, passes=1)
    later = a.frame(25)
    assert np.array_equal(b.frame(3), a.frame(3)) and np.array_equal(b.frame(25), later)
    assert a.truth(25) == b.truth(25)
    other = S.occlusion_sequence(fps=10, hide_s=0.5, seed=8, passes=1)
    assert not np.array_equal(other.frame(25), later)
    frame = a.frame(0)
    assert frame.shape == (720, 1280, 3) and frame.dtype == np.uint8  # an HD camera's frame


def test_camera_noise_changes_every_frame_but_stays_small():
    seq = S.still_sequence(fps=10, duration_s=2, seed=1)
    clean = dataclasses.replace(seq, noise=S.CameraNoise.none())
    f0, f1 = seq.frame(0).astype(float), seq.frame(1).astype(float)
    assert np.abs(f0 - f1).mean() > 2  # shake, brightness, sensor noise, JPEG
    assert np.array_equal(clean.frame(0), clean.frame(1))  # nothing moves in the scene
    # the camera moves the true boxes by a few pixels only
    moved = [abs(a - b) for a, b in zip(seq.truth(5).people[0].box.xyxy(),
                                        clean.truth(5).people[0].box.xyxy())]
    assert 0 < max(moved) < 25


@pytest.mark.parametrize('fps,hide_s,shift', [(10, 1.0, 0.0), (30, 0.5, 0.6), (10, 2.0, 0.6)])
def test_each_person_is_hidden_for_hide_s_by_the_occluder(fps, hide_s, shift):
    seq = S.occlusion_sequence(fps=fps, hide_s=hide_s, shift=shift, seed=2)
    assert [e.kind for e in seq.events] == ['hidden'] * 4  # 2 people x 2 passes
    for e in seq.events:
        assert e.t1 - e.t0 == pytest.approx(hide_s)
        x1, _, x2, _ = S.person_box(e.before, 0.0)
        assert abs(e.shift_px) == pytest.approx(shift * (x2 - x1))
        hidden = [i for i in range(len(seq)) if not seq.truth(i).slot(e.slot).visible
                  and e.t0 - 1.5 < seq.stamp(i) < e.t1 + 1.5]
        assert len(hidden) == pytest.approx(hide_s * fps, abs=1)
        assert all(e.t0 - 1e-9 <= seq.stamp(i) <= e.t1 + 1e-9 for i in hidden)
        before = seq.truth(seq.index_at(e.t0) - 1).slot(e.slot)
        after = seq.truth(seq.index_at(e.t1) + 1).slot(e.slot)
        assert before.visible and after.visible and before.who == after.who
        # (the camera's shake and zoom move boxes by up to ~10 px meanwhile)
        assert after.box.center[0] - before.box.center[0] == pytest.approx(e.shift_px, abs=15)


def test_the_truth_is_what_is_drawn():
    """Where the truth says a person is entirely visible, their picture is there; where they
    are entirely covered, the occluder is (rendered scene, no camera)."""
    seq = S.occlusion_sequence(fps=10, hide_s=1.0, seed=0, passes=1)
    e = seq.events[0]
    a = next(a for a in seq.appearances if a.slot == e.slot)
    x1, y1, x2, y2 = (int(round(v)) for v in a.box)
    picture = cv2.resize(S.person_picture(a.who), (x2 - x1, y2 - y1),
                         interpolation=cv2.INTER_AREA)
    assert np.array_equal(_box_pixels(seq, 0.0, a.box), picture)
    t_mid = (e.t0 + e.t1) / 2
    covered = [o for o in seq.occluders if o.left(t_mid) <= a.box[0]
               and o.left(t_mid) + o.width >= a.box[2]]
    assert covered, 'the occluder covers the person in the middle of the hidden time'
    assert np.abs(_box_pixels(seq, t_mid, a.box).astype(int) - picture).mean() > 30


def test_swap_changes_who_stands_there_at_the_same_place():
    cut = S.swap_sequence(fps=10, pairs=[('eileen_collins', 'grace_hopper')], mode='cut')
    e = cut.events[0]
    assert (e.kind, e.before, e.after, e.t0) == ('swap', 'eileen_collins', 'grace_hopper', 3.0)
    i = cut.index_at(e.t0)
    old, new = cut.truth(i - 1).slot(0), cut.truth(i).slot(0)
    assert (old.who, new.who) == ('eileen_collins', 'grace_hopper')
    assert old.visible and new.visible
    assert new.box.center[0] == pytest.approx(old.box.center[0], abs=6)  # the same spot
    assert new.box.y2 == pytest.approx(old.box.y2, abs=6)
    hidden = S.swap_sequence(fps=10, pairs=[('carlo_ancelotti', 'man_in_black_coat')],
                             mode='occluded', hide_s=1.0)
    e = hidden.events[0]
    changes = [i for i in range(1, len(hidden))
               if hidden.truth(i).slot(0).who != hidden.truth(i - 1).slot(0).who]
    assert len(changes) == 1 and e.t0 < hidden.stamp(changes[0]) < e.t1
    assert hidden.truth(changes[0]).slot(0).visible_fraction == 0.0  # changed unseen


def test_expression_change_replaces_only_the_face():
    who, before, after = S.EXPRESSION_CHANGES[0]
    seq = dataclasses.replace(S.expression_sequence(fps=10, duration_s=4),
                              noise=S.CameraNoise.none())
    e = seq.events[0]
    assert (e.kind, e.t0, e.before, e.after) == ('expression', 2.0, before, after)
    i = seq.index_at(e.t0)
    t_old, t_new = seq.truth(i - 1).slot(0), seq.truth(i).slot(0)
    assert (t_old.who, t_new.who) == (who, who) and (t_old.face, t_new.face) == (before, after)
    assert (t_old.expression, t_new.expression) == ('neutral', 'smiling')
    changed = np.any(seq.frame(i - 1) != seq.frame(i), axis=2)
    ys, xs = np.nonzero(changed)
    # the changed pixels lie in the face box (mapped from the photo's annotation), nowhere else
    src, box = S.PERSONS[who], t_new.box
    scale = box.height / (src.box[3] - src.box[1])
    fx1, fy1, fx2, fy2 = src.face
    assert box.x1 + (fx1 - src.box[0]) * scale - 1 <= xs.min()
    assert xs.max() <= box.x1 + (fx2 - src.box[0]) * scale + 1
    assert box.y1 + (fy1 - src.box[1]) * scale - 1 <= ys.min()
    assert ys.max() <= box.y1 + (fy2 - src.box[1]) * scale + 1
    assert changed.sum() > 0.5 * ((fx2 - fx1) * (fy2 - fy1) * scale ** 2)


def test_the_real_detector_finds_the_people_of_a_noisy_frame():
    """The sequences are usable by the benches: the packaged detector (config/person_detector.yaml
    settings) finds each person of the scene on a noisy frame (IoU >= 0.5 with the truth)."""
    from emotion_perception.core.detector import PersonDetector
    from emotion_perception.tools.config import load_pipeline_config
    det = PersonDetector(dataclasses.replace(load_pipeline_config().detector, tracker='',
                                             device='cpu'))
    det.load()
    for people in (('eileen_collins', 'grace_hopper'),
                   ('carlo_ancelotti', 'zinedine_zidane', 'man_in_beige_coat')):
        seq = S.still_sequence(fps=10, duration_s=1, people=people, seed=3)
        frame = next(seq.frames(start=4))
        found = slot_track_ids(frame.truth, det.detect(frame.rgb).detections)
        assert sorted(found) == list(range(len(people))), (people, found)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match='fps'):
        S.occlusion_sequence(fps=0)
    with pytest.raises(ValueError, match='mode'):
        S.swap_sequence(mode='fade')
