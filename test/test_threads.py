"""The person detector must not change the CPU threads of other models in the process
(ultralytics sets OMP_NUM_THREADS=1 on import and torch.set_num_threads(cpu_count - 1) at its
first inference). Run in a fresh interpreter with OMP_NUM_THREADS unset, as a user's shell."""
import json
import os
import subprocess
import sys

SCRIPT = r'''
import json, os, torch
wanted = os.cpu_count() + 3          # never what ultralytics would pick (min(8, cpus - 1))
torch.set_num_threads(wanted)
from emotion_perception.core.detector import DetectorOptions, PersonDetector
from emotion_perception.testing.tiny_models import make_test_image
det = PersonDetector(DetectorOptions(tracker='bytetrack.yaml', device='cpu'))
det.load()
after_load = torch.get_num_threads()
det.detect(make_test_image(240, 320)); det.detect(make_test_image(240, 320, seed=1))
print(json.dumps({'wanted': wanted, 'after_load': after_load,
                  'after_detect': torch.get_num_threads(),
                  'omp': os.environ.get('OMP_NUM_THREADS')}))
'''


def test_detector_keeps_torch_threads_and_omp_env():
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    env.update(HF_HUB_OFFLINE='1', YOLO_OFFLINE='1')
    proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got['after_load'] == got['wanted']
    assert got['after_detect'] == got['wanted']
    assert got['omp'] is None
