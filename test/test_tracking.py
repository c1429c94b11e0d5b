"""The tracker's settings (core.detector.TrackerOptions) reach ultralytics and change what it
does: a real tracked sequence (real photos, camera noise) where a too short ``track_buffer`` loses
a person's id during a 1 s hide and a long one keeps it; BoT-SORT's re-identification on the
detector's own features is switched on with its thresholds; the process / demo flags and the
config file set them."""
from __future__ import annotations

import os

os.environ.setdefault('YOLO_OFFLINE', '1')

import dataclasses  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from emotion_perception.core.backends.base import ModelLoadError  # noqa: E402
from emotion_perception.core.detector import (DetectorOptions, PersonDetector,  # noqa: E402
                                              TrackerOptions, reid_auto_supported)
from emotion_perception.core.model_files import (OFFLINE_PERSON_DETECTOR,  # noqa: E402
                                                 resolve_model_path)
from emotion_perception.nodes.person_detector import TRACKING_PARAMS  # noqa: E402
from emotion_perception.testing import sequences as S  # noqa: E402
from emotion_perception.testing.identity_eval import event_outcomes, run_detectors  # noqa: E402
from emotion_perception.tools import config as tool_config  # noqa: E402
from emotion_perception.tools.config import config_dir, load_pipeline_config  # noqa: E402


def _configured(**changes) -> DetectorOptions:
    return dataclasses.replace(load_pipeline_config().detector, device='cpu', **changes)


def _blink_sequence(hidden=(2.0, 3.0), fps=10.0) -> S.Sequence:
    """Grace Hopper standing still, covered from ``hidden[0]`` to ``hidden[1]`` by a panel that
    appears and vanishes at once (a door swinging shut and open): no motion to predict, so
    only the track buffer decides whether her id survives."""
    box = S.person_box('grace_hopper', 640.0)
    width = 1.3 * (box[2] - box[0])
    left, away = box[0] - 0.15 * (box[2] - box[0]), -2 * width
    keys = ((hidden[0] - 1e-6, away), (hidden[0], left), (hidden[1], left),
            (hidden[1] + 1e-6, away))
    return S.Sequence('blink', fps, hidden[1] + 1.6,
                      (S.Appearance(0, 'grace_hopper', 0.0, math.inf, box),),
                      (S.Occluder(width, keys),),
                      (S.Event('hidden', 0, hidden[0], hidden[1], 'grace_hopper', 'grace_hopper'),),
                      seed=11)


def test_track_buffer_decides_whether_the_id_survives_a_one_second_hide():
    seq = _blink_sequence()
    hidden = [i for i in range(len(seq)) if not seq.truth(i).slot(0).visible]
    assert len(hidden) == 11  # 1 s at 10 fps
    detectors = {}
    for buffer in (5, 30):
        det = PersonDetector(_configured(tracker='bytetrack.yaml',
                                         tracking=TrackerOptions(track_buffer=buffer)))
        det.load()
        detectors[buffer] = det
    ids = run_detectors(seq, {b: d.detect for b, d in detectors.items()})
    short, long_ = (event_outcomes(seq, ids[b])[0] for b in (5, 30))
    assert short.id_before and long_.id_before
    assert long_.same_id, long_   # kept for 30 frames: re-found after 11
    assert not short.same_id and short.id_after, short  # dropped after 5: a new id
    tracker = detectors[5].model.predictor.trackers[0]
    assert type(tracker).__name__ == 'BYTETracker' and tracker.max_frames_lost == 5


def test_reid_settings_reach_botsort():
    det = PersonDetector(_configured(tracker='botsort.yaml', tracking=TrackerOptions(
        track_buffer=45, with_reid=True, proximity_thresh=0.0, appearance_thresh=0.9,
        match_thresh=0.7, new_track_thresh=0.5, gmc_method='none')))
    det.load()
    seq = S.still_sequence(fps=10, duration_s=0.3, seed=2)
    for frame in seq.frames():
        result = det.detect(frame.rgb)
    assert len(result.detections) == 2 and all(d.track_id for d in result.detections)
    tracker = det.model.predictor.trackers[0]
    assert type(tracker).__name__ == 'BOTSORT' and tracker.max_frames_lost == 45
    assert (tracker.proximity_thresh, tracker.appearance_thresh) == (0.0, 0.9)
    assert (tracker.args.match_thresh, tracker.args.new_track_thresh) == (0.7, 0.5)
    assert tracker.gmc.method is None
    assert tracker.encoder is not None  # the appearance of each track: the detector's features
    assert all(t.smooth_feat is not None and t.smooth_feat.size > 16
               for t in tracker.tracked_stracks)
    path = det.tracker_file
    det.unload()
    assert not os.path.exists(path)  # the tracker file lives as long as the model


def test_reid_refuses_a_model_without_its_own_features(tmp_path):
    """An exported detector (TorchScript here; ONNX and OpenVINO alike) has no Detect layer to
    take features from: ultralytics would download a classifier instead, so the detector
    refuses ReID at load, with the reason; without ReID the export loads."""
    from ultralytics import YOLO
    shutil.copy(resolve_model_path(OFFLINE_PERSON_DETECTOR), tmp_path / 'best.pt')
    exported = YOLO(str(tmp_path / 'best.pt')).export(format='torchscript', imgsz=320,
                                                       verbose=False)
    options = _configured(model=str(exported), tracker='botsort.yaml', image_size=320)
    with pytest.raises(ModelLoadError, match='with_reid'):
        PersonDetector(options).load()
    plain = PersonDetector(dataclasses.replace(options, tracking=dataclasses.replace(
        options.tracking, with_reid=False)))
    plain.load()
    assert not reid_auto_supported(plain.model)
    det = PersonDetector(_configured())
    det.load()
    assert reid_auto_supported(det.model)
    nms_free = YOLO('yolo26n.yaml')  # YOLO26 with its end-to-end head: no features per box
    nms_free.model.model[-1].end2end = True
    assert not reid_auto_supported(nms_free)


def test_ultralytics_config_keeps_its_other_keys():
    options = TrackerOptions(track_buffer=90, with_reid=True, gmc_method='none')
    byte = options.ultralytics_config('bytetrack.yaml')
    assert byte['tracker_type'] == 'bytetrack' and byte['track_buffer'] == 90
    assert 'with_reid' not in byte and byte['track_low_thresh'] == 0.1  # ultralytics' default
    bot = options.ultralytics_config('botsort.yaml')
    assert bot['with_reid'] is True and bot['model'] == 'auto' and bot['gmc_method'] is None


@pytest.mark.parametrize('bad', [dict(track_buffer=0), dict(match_thresh=1.5),
                                 dict(appearance_thresh=-0.1), dict(gmc_method='optical')])
def test_invalid_tracker_options_are_refused(bad):
    with pytest.raises(ValueError, match='tracking.'):
        DetectorOptions(tracking=TrackerOptions(**bad)).validate()


def test_defaults_agree_between_code_node_and_config_file():
    yaml_tracking = yaml.safe_load((config_dir() / 'person_detector.yaml').read_text())[
        '/**/person_detector']['ros__parameters']['tracking']
    specs = {s.name: s.default for s in TRACKING_PARAMS}
    assert specs == {f'tracking.{k}': v for k, v in yaml_tracking.items()}
    assert load_pipeline_config().detector.tracking == TrackerOptions.from_params(specs)


def test_process_and_demo_flags_and_config_file_set_the_tracker(tmp_path):
    from emotion_perception.tools.cli import build_parser
    for command in ('process', 'demo'):
        argv = [command, 'in.mp4', '-o', 'out'] if command == 'process' else [command]
        args = build_parser(command).parse_args(argv + ['--tracker', 'bytetrack',
                                                        '--track-buffer', '12', '--no-reid'])
        overrides = tool_config.tracker_overrides(args)
        assert overrides == {'tracker': 'bytetrack.yaml', 'tracking.track_buffer': 12,
                             'tracking.with_reid': False}
    det = load_pipeline_config(None, None, overrides).detector
    assert det.tracker == 'bytetrack.yaml' and det.tracking.track_buffer == 12
    assert tool_config.tracker_overrides(build_parser('demo').parse_args(['demo'])) == {}
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'person_detector': {'ros__parameters': {
        'tracker': 'botsort.yaml', 'tracking': {'appearance_thresh': 0.9}}}}))
    det = load_pipeline_config(params, None, {'tracking.track_buffer': 7}).detector
    assert (det.tracker, det.tracking.appearance_thresh, det.tracking.track_buffer) == (
        'botsort.yaml', 0.9, 7)
    assert tool_config.ros_param_arg('tracker', '') == 'tracker:=""'
    assert tool_config.ros_param_arg('tracking.with_reid', True) == 'tracking.with_reid:=true'


@pytest.mark.slow
def test_bench_tracking_quick_prints_every_table(tmp_path):
    """bench/bench_tracking.py --quick runs to the end: the three tables, every column."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, str(repo / 'bench' / 'bench_tracking.py'), '--quick',
                           '--json', str(out)], cwd=repo, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, YOLO_OFFLINE='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ('### 1. Id survival', '### 2. False inheritance', '### 3. Identity check'):
        assert title in proc.stdout, proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert set(report['configs']) == {'ByteTrack', 'BoT-SORT+ReID', 'configured'}
    assert len(report['survival']) == 2  # 1 s hidden, with and without a step aside
    assert all(row['configured'][1] == 2 for row in report['survival'])  # 2 people, 1 pass
    assert {row['mode'] for row in report['inheritance']} == {'cut', 'occluded'}
