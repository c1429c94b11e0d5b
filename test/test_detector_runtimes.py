"""The person detector through OpenVINO and ONNX Runtime (``core.detector_runtime``): the real
weights exported by ultralytics, offline, loaded and run on the real photos; boxes against the
PyTorch model's (torchvision's box_iou as the reference); the export cache; the fallback to
torch when an export fails; what ``auto`` picks; nothing downloaded or pip-installed."""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from emotion_perception.core import detector_runtime as dr
from emotion_perception.core.backends.base import ModelLoadError
from emotion_perception.core.detector import DetectorOptions, PersonDetector
from emotion_perception.core.model_files import (OFFLINE_PERSON_DETECTOR, resolve_model_path,
                                                 sample_image_paths)

#: the project's detector settings (config/person_detector.yaml)
CONFIG = dict(confidence=0.4, image_size=512, tracker='')
PHOTOS = ('bus', 'zidane', 'astronaut', 'grace_hopper')


@pytest.fixture(scope='module')
def photos():
    paths = sample_image_paths()
    return {n: cv2.cvtColor(cv2.imread(str(paths[n])), cv2.COLOR_BGR2RGB) for n in PHOTOS}


@pytest.fixture(scope='module')
def torch_boxes(photos):
    det = PersonDetector(DetectorOptions(runtime='torch', **CONFIG))
    det.load()
    return {n: boxes(det, im) for n, im in photos.items()}


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('detector_exports')


@pytest.fixture
def no_downloads(monkeypatch):
    """Record (and refuse) every connection off loopback and every pip run ultralytics tries,
    with its auto-install switched on as on a robot with internet."""
    from ultralytics.utils import checks
    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
                '127.0.0.1', '::1', 'localhost'):
            attempts.append(f'connect {address}')
            raise OSError('test: network refused')
        return real_connect(sock, address)

    def check_output(cmd, *args, **kwargs):
        attempts.append(f'subprocess {cmd}')
        raise subprocess.CalledProcessError(1, cmd)
    monkeypatch.setattr(socket.socket, 'connect', connect)
    monkeypatch.setattr(checks, 'ONLINE', True)
    monkeypatch.setattr(checks, 'AUTOINSTALL', True)
    monkeypatch.setattr(checks.subprocess, 'check_output', check_output)
    return attempts


def boxes(det, rgb):
    return np.array([d.bbox.xyxy() for d in det.detect(rgb).detections], np.float32)


def min_iou(ref, got):
    """Smallest IoU of a box with its best match, both ways (1.0 when both are empty)."""
    if len(ref) == 0 and len(got) == 0:
        return 1.0
    if len(ref) == 0 or len(got) == 0:
        return 0.0
    iou = box_iou(torch.from_numpy(ref), torch.from_numpy(got))
    return float(min(iou.max(1).values.min(), iou.max(0).values.min()))


@pytest.mark.parametrize('runtime', ['openvino', 'onnxruntime'])
def test_exported_runtime_matches_torch_on_real_photos(runtime, photos, torch_boxes, cache,
                                                       no_downloads):
    det = PersonDetector(DetectorOptions(runtime=runtime, runtime_cache_dir=str(cache),
                                         **CONFIG))
    det.load()
    assert det.runtime.runtime == runtime, det.runtime.reason
    assert det.device == 'cpu' and str(cache) in det.runtime.model_path
    key = json.loads((next(cache.glob(f'best-{runtime}-*')) / dr.KEY_FILE).read_text())
    assert key['image_size'] == 512 and key['runtime'] == runtime and key['runtime_version']
    assert key['weights_sha256'] == dr.file_sha256(Path(resolve_model_path(
        OFFLINE_PERSON_DETECTOR)))
    for name, rgb in photos.items():
        got = boxes(det, rgb)
        assert len(got) == len(torch_boxes[name]) > 0, name
        assert min_iou(torch_boxes[name], got) >= 0.95, (name, got, torch_boxes[name])
    assert no_downloads == []


def test_cache_is_reused_and_a_changed_weights_file_is_exported_again(tmp_path, photos):
    weights = tmp_path / 'models' / 'people.pt'
    weights.parent.mkdir()
    shutil.copyfile(resolve_model_path(OFFLINE_PERSON_DETECTOR), weights)
    opts = DetectorOptions(model=str(weights), runtime='openvino', **CONFIG)
    first = PersonDetector(opts)
    first.load()
    assert first.runtime.runtime == 'openvino' and first.runtime.exported
    folder = weights.parent / 'people.exports'  # beside a user's weights file
    assert first.runtime.model_path.startswith(str(folder))
    xml = next(folder.glob('people-openvino-*/model_openvino_model/model.xml'))
    stamp = xml.stat().st_mtime_ns

    second = PersonDetector(opts)  # a second configure: from the cache, nothing exported
    second.load()
    assert not second.runtime.exported and second.runtime.model_path == first.runtime.model_path
    assert xml.stat().st_mtime_ns == stamp
    assert min_iou(boxes(first, photos['bus']), boxes(second, photos['bus'])) == 1.0

    ckpt = torch.load(weights, weights_only=False)  # the same network, other bytes
    ckpt['date'] = 'retrained'
    torch.save(ckpt, weights)
    third = PersonDetector(opts)
    third.load()
    assert third.runtime.exported and third.runtime.model_path != first.runtime.model_path
    assert len(list(folder.glob('people-openvino-*'))) == 2

    # the cache never shows up in git, wherever the weights are
    subprocess.run(['git', 'init', '-q', str(tmp_path)], check=True)
    status = subprocess.run(['git', '-C', str(tmp_path), 'status', '--porcelain',
                             '--untracked-files=all'], capture_output=True, text=True).stdout
    assert 'people.pt' in status and 'exports' not in status, status


def test_failing_export_falls_back_to_torch_with_the_reason(tmp_path, photos, torch_boxes,
                                                            caplog):
    not_a_dir = tmp_path / 'cache_is_a_file'
    not_a_dir.write_text('')
    opts = DetectorOptions(runtime='openvino', runtime_cache_dir=str(not_a_dir), **CONFIG)
    with caplog.at_level(logging.WARNING, logger='emotion_perception.core.detector_runtime'):
        for _ in range(2):  # configured twice: logged once
            det = PersonDetector(opts)
            det.load()
    assert det.runtime.runtime == 'torch' and det.runtime.requested == 'openvino'
    assert 'openvino unavailable' in det.runtime.reason
    assert 'cache_is_a_file' in det.runtime.reason, det.runtime.reason
    warnings = [r for r in caplog.records if 'openvino unavailable' in r.getMessage()]
    assert len(warnings) == 1
    assert min_iou(torch_boxes['bus'], boxes(det, photos['bus'])) == 1.0  # it still detects


def test_missing_runtime_package_falls_back_without_installing(monkeypatch, cache, no_downloads):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # as if not installed
    det = PersonDetector(DetectorOptions(runtime='openvino', runtime_cache_dir=str(cache),
                                         **CONFIG))
    det.load()
    assert det.runtime.runtime == 'torch'
    assert 'openvino is not installed (pip install openvino==' in det.runtime.reason
    assert no_downloads == []
    from ultralytics.utils.checks import check_requirements  # the guard is live: ultralytics
    assert not check_requirements('ep-not-installed-xyz')   # itself would have pip-installed
    assert any('pip' in a for a in no_downloads), no_downloads


def test_auto_picks_the_fastest_installed_runtime(monkeypatch, cache):
    assert dr.auto_runtime('cpu', machine='x86_64')[0] == 'openvino'
    assert dr.auto_runtime('cuda', machine='x86_64')[0] == 'torch'
    assert dr.auto_runtime('cuda:1', machine='aarch64')[0] == 'torch'
    assert dr.auto_runtime('cpu', machine='aarch64')[0] == 'torch'
    assert dr.auto_runtime('cpu', 'a ReID reason', 'x86_64') == (
        'torch', 'auto: torch, because a ReID reason')
    monkeypatch.setitem(sys.modules, 'openvino', None)
    assert dr.auto_runtime('cpu', machine='x86_64')[0] == 'onnxruntime'
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    runtime, reason = dr.auto_runtime('cpu', machine='x86_64')
    assert runtime == 'torch' and 'pip install openvino==' in reason
    monkeypatch.delitem(sys.modules, 'openvino')
    monkeypatch.delitem(sys.modules, 'onnxruntime')
    if os.uname().machine == 'x86_64':  # this machine, through the detector
        det = PersonDetector(DetectorOptions(runtime='auto', device='cpu',
                                             runtime_cache_dir=str(cache), **CONFIG))
        det.load()
        assert det.runtime.runtime == 'openvino' and det.runtime.reason.startswith('auto')


def test_a_reid_tracker_on_detector_features_keeps_torch(tmp_path, cache):
    from ultralytics.utils.checks import check_yaml
    reid = tmp_path / 'botsort_reid.yaml'
    reid.write_text(Path(check_yaml('botsort.yaml')).read_text().replace(
        'with_reid: False', 'with_reid: True'))
    assert 'with_reid: True' in reid.read_text()
    assert dr.reid_needs_torch(str(reid)) and not dr.reid_needs_torch('botsort.yaml')
    assert not dr.reid_needs_torch({'tracker_type': 'botsort', 'with_reid': True,
                                    'model': '/models/reid.pt'})
    weights = Path(resolve_model_path(OFFLINE_PERSON_DETECTOR))
    choice = dr.choose_runtime('auto', 'cpu', weights, 512, str(reid), str(cache))
    assert choice.runtime == 'torch' and 'ReID' in choice.reason
    assert choice.model_path == str(weights)
    with pytest.raises(ValueError, match='ReID'):
        dr.choose_runtime('openvino', 'cpu', weights, 512, str(reid), str(cache))


def test_an_exported_runtime_on_cuda_is_refused(cache):
    weights = Path(resolve_model_path(OFFLINE_PERSON_DETECTOR))
    with pytest.raises(ValueError, match='runs on the CPU'):
        dr.choose_runtime('onnxruntime', 'cuda:0', weights, 512, '', str(cache))
    assert dr.choose_runtime('auto', 'cuda', weights, 512, '', str(cache)).runtime == 'torch'
    with pytest.raises(ValueError, match='runtime must be one of'):
        PersonDetector(DetectorOptions(runtime='tensorrt'))


@pytest.mark.ros
def test_node_runs_the_configured_runtime_and_reports_it(cache, photos, torch_boxes):
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from emotion_perception.msg import PersonDetectionArray
    from emotion_perception.nodes.person_detector import PersonDetectorNode
    from emotion_perception.ros.image_conversion import numpy_to_image_msg
    from emotion_perception.ros.qos import RESULTS_QOS, image_qos
    from emotion_perception.testing.ros_harness import RosHarness
    params = dict(runtime='onnxruntime', runtime_cache_dir=str(cache), tracker='',
                  confidence=0.4, image_size=512, image_reliability='reliable')
    with RosHarness() as h:
        node = h.add(PersonDetectorNode(context=h.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()]))
        assert node.trigger_configure().name == 'SUCCESS'
        assert node.trigger_activate().name == 'SUCCESS'
        values = node.diagnostics()[2]
        assert values['runtime'] == 'onnxruntime', values
        assert values['runtime_reason'] == 'runtime onnxruntime (configured)'
        pub = h.publisher(Image, 'image', image_qos('reliable'))
        out = h.collect(PersonDetectionArray, 'detections', RESULTS_QOS)
        assert h.wait_matched(pub)
        pub.publish(numpy_to_image_msg(photos['bus'], 'rgb8'))
        assert h.wait_for(lambda: len(out) >= 1, 60)
        got = np.array([[d.bbox.x_offset, d.bbox.y_offset, d.bbox.x_offset + d.bbox.width,
                         d.bbox.y_offset + d.bbox.height] for d in out[0].detections],
                       np.float32)
        assert min_iou(torch_boxes['bus'], got) >= 0.95


def test_process_cli_flag_chooses_the_runtime(tmp_path):
    from emotion_perception.tools.cli import main as cli_main
    out = tmp_path / 'out'
    bus = sample_image_paths()['bus']
    assert cli_main(['process', str(bus), '--output', str(out), '--no-images', '--no-progress',
                     '--detector-runtime', 'torch']) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['detector_runtime'] == 'torch', summary
    assert summary['detector_runtime_reason'] == 'runtime torch (configured)'
    assert summary['persons'] >= 3
