"""The identity check (core.identity.IdentityGuard) on real photos: a different person under the
same track id is flagged once, noisy frames and passing occlusions of the same person are not;
the signature and its distance against straightforward reference implementations; memory
bounded."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from emotion_perception.core.identity import (GRID, SIGNATURE_BINS, IdentityGuard,
                                              IdentityOptions, body_signature,
                                              signature_distance)
from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.core.types import BBox
from emotion_perception.testing import sequences as S


def _photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(sample_image_paths()[name])), cv2.COLOR_BGR2RGB)


def _feed(guard: IdentityGuard, seq: S.Sequence, track_ids: dict, box_of=None
          ) -> list[tuple[float, str]]:
    """Feed every frame's true boxes (or ``box_of(person)``) to ``guard``; the flags."""
    flags = []
    for frame in seq.frames():
        for person in frame.truth.people:
            box = box_of(person) if box_of else person.box
            if box is not None and guard.observe(track_ids[person.slot], frame.rgb, box,
                                                 frame.stamp_s):
                flags.append((frame.stamp_s, track_ids[person.slot]))
    return flags


def test_the_demo_swap_is_flagged_once():
    """make demo's case: the astronaut's photo, then Grace Hopper's under the same id 6."""
    guard = IdentityGuard()
    astronaut, grace = _photo('astronaut'), _photo('grace_hopper')
    flags = [guard.observe('6', astronaut, BBox(15, 15, 400, 512), t) for t in (0.0, 1.0, 2.0)]
    flags += [guard.observe('6', grace, BBox(10, 20, 512, 600), t) for t in (3.0, 4.0, 5.0, 6.0)]
    assert flags == [False] * 4 + [True, False, False]  # confirmed on the 2nd observation
    assert guard.flagged == 1


@pytest.mark.parametrize('pair', S.SWAPS[:5])
def test_a_different_person_at_the_same_place_is_flagged(pair):
    """A cut swap on noisy 10 fps frames (true boxes): flagged once, within confirm_s + a frame
    of the swap; the newcomer is then learnt (no more flags)."""
    seq = S.swap_sequence(fps=10, pairs=[pair], mode='cut', lead_s=1.5, trail_s=1.5, seed=4)
    guard = IdentityGuard()
    flags = _feed(guard, seq, {0: '6'})
    t_swap = seq.events[0].t0
    assert len(flags) == 1, flags
    assert t_swap <= flags[0][0] <= t_swap + guard.options.confirm_s + 0.1 + 1e-9


def test_noisy_frames_of_the_same_people_are_not_flagged():
    seq = S.still_sequence(fps=10, duration_s=4, seed=5,
                           people=('carlo_ancelotti', 'zinedine_zidane', 'man_in_beige_coat'))
    rng = np.random.default_rng(0)

    def jittered(person):  # a detector's boxes wobble by a few pixels
        d = rng.normal(0, 4, 4)
        b = person.box
        return BBox(b.x1 + d[0], b.y1 + d[1], b.x2 + d[2], b.y2 + d[3])

    guard = IdentityGuard()
    assert _feed(guard, seq, {0: '1', 1: '2', 2: '3'}, jittered) == []
    assert len(guard) == 3


def test_a_person_sliding_behind_the_occluder_is_not_flagged():
    """The box of a partly hidden person shrinks frame by frame as the occluder passes (at
    30 fps too), and the person steps aside meanwhile: never a new identity."""
    seq = S.occlusion_sequence(fps=30, hide_s=0.5, shift=0.6, seed=6, passes=2)
    guard = IdentityGuard()
    flags, partial = [], 0
    for frame in seq.frames():
        for person in frame.truth.people:
            box = seq.visible_box(person, frame.stamp_s)
            if box is None:
                continue
            partial += box.width < 0.9 * person.box.width
            if guard.observe(str(person.slot), frame.rgb, box, frame.stamp_s):
                flags.append((frame.stamp_s, person.slot))
    assert flags == []
    assert partial >= 10  # the check did see partly hidden boxes


def test_signature_against_a_naive_histogram():
    """With a one-colour box the soft bins reduce to known cells: a saturated pure red fills
    hue bin 0 (and its circular neighbour), a black one the darkest grey bin only."""
    rgb = np.zeros((200, 100, 3), np.uint8)
    rgb[:, :50] = (255, 0, 0)  # red left half, black right half
    sig = body_signature(rgb, BBox(0, 0, 100, 200))
    assert sig.shape == (GRID[0] * GRID[1], SIGNATURE_BINS)
    np.testing.assert_allclose(sig.sum(axis=1), 1.0, rtol=1e-5)
    left, right = sig[0], sig[1]  # top row: left cell red, right cell black
    assert left[-4:].sum() == pytest.approx(0.0, abs=1e-6)  # no grey in the red cell
    assert right[-4] == pytest.approx(1.0)  # black: the darkest grey bin, nothing else
    hue_mass = left[:-4].reshape(8, 3).sum(axis=1)  # hue 0 sits between bins 7 and 0
    assert hue_mass[0] + hue_mass[7] == pytest.approx(1.0)
    assert body_signature(rgb, BBox(0, 0, 8, 200)) is None  # too narrow to say anything


def test_distance_against_the_textbook_formula():
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 28)), rng.random((8, 28))
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    naive = np.mean([math.sqrt(max(0.0, 1 - sum(math.sqrt(x * y) for x, y in zip(p, q))))
                     for p, q in zip(a, b)])
    assert signature_distance(a, b) == pytest.approx(naive, rel=1e-6)
    assert signature_distance(a, a) == pytest.approx(0.0, abs=1e-3)
    disjoint = np.zeros_like(a)
    disjoint[:, 0], a2 = 1.0, np.zeros_like(a)
    a2[:, 1] = 1.0
    assert signature_distance(disjoint, a2) == pytest.approx(1.0)


def test_memory_is_bounded_and_stamps_restart_an_id():
    guard = IdentityGuard(IdentityOptions(max_tracks=100, forget_after_s=10.0))
    rgb = _photo('astronaut')
    box = BBox(15, 15, 400, 512)
    for i in range(10_000):
        guard.observe(str(i), rgb, box, i * 0.01)
    assert len(guard) == 100 and guard.evicted == 9_900
    # learnt from its first stable appearance (confirm_s), then compared
    assert [guard.check('9999', rgb, box, t).reason for t in (100.0, 100.4, 100.5)] == [
        'pending', 'learnt', 'same']
    assert guard.check('9999', rgb, box, 99.0).reason == 'restarted'  # stamps went back
    assert guard.check('9999', rgb, box, 200.0).reason == 'restarted'  # unseen > 10 s
    assert guard.check('', rgb, box, 201.0).reason == 'untracked'
    guard.forget('9999')
    assert guard.check('9999', rgb, box, 202.0).reason == 'first'


def test_invalid_options_are_refused():
    for bad in (dict(threshold=0.0), dict(threshold=1.0), dict(min_observations=0),
                dict(learning_rate=0.0), dict(max_tracks=0), dict(forget_after_s=0.0)):
        with pytest.raises(ValueError):
            IdentityGuard(IdentityOptions(**bad))
