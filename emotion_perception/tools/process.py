"""``emotion-perception process``: detector + emotion core in-process (no DDS) over files.

INPUT is an image file, a folder of images, a video file or a rosbag2 (folder or .mcap/.db3).
Writes ``DIR/emotions.jsonl`` (one JSON object per person per frame) and annotated images in
``DIR/annotated/``. Still images are independent scenes: they are processed without tracking
(``track_id`` is ''); videos and bags are tracked, and per-track reuse applies.

How each person feels over time (``state.*``, ``--no-state`` to leave out): ``DIR/states.jsonl``
(one object per person per frame), ``DIR/events.jsonl`` (onset / offset / left) and
``DIR/timelines/<track_id>.png`` (``tools.state_outputs``). On a video or bag the states follow
the tracks; in a folder of images each file is its own moment: no smoothing across unrelated
photos (each person's state is that photo's observation alone), no events, no timelines.

JSON object per person: frame (file name for images, index for video/bag), stamp (seconds),
track_id, bbox_xyxy (pixels), confidence, scores (26 categories by name), labels, vad
(valence, arousal, dominance on 1-10, null when not given), status, reason, backend, model,
latency_ms, cache_age_s, text (a generated answer, when any).

Damaged input does not end the run: an image file, a video frame or a bag message that cannot
be read or decoded (or whose header declares more than 40 Mpx, the nodes' ``max_image_pixels``
default: ``image_conversion.DEFAULT_MAX_PIXELS``) is skipped and counted
(``bad_frames`` in summary.json, the first ones named with the reason in
``bad_frame_examples``), corrupt frames at the end of a video included. A video whose reading
stops after ``bags.MAX_CONSECUTIVE_BAD_READS`` bad frames in a row says so: ``stopped_early``
(the reason; null when the input was read to its end) and ``unread_frames`` (the frames its
container announces after them). The models are unloaded on every exit path.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .config import add_tracker_arguments, tracker_overrides

LOG = logging.getLogger('emotion_perception.process')

IMAGE_EXTS = {'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'}
VIDEO_EXTS = {'.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg'}
BAG_EXTS = {'.mcap', '.db3'}
#: at most this many skipped frames are named (with the reason) in summary.json
MAX_BAD_FRAME_EXAMPLES = 20


def input_kind(path: Path) -> str:
    """'image', 'folder', 'video' or 'bag'. Raises ValueError for anything else."""
    if path.is_dir():
        if (path / 'metadata.yaml').is_file() or any(p.suffix in BAG_EXTS for p in path.iterdir()):
            return 'bag'
        return 'folder'
    if not path.exists():
        raise ValueError(f'input {path} does not exist')
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTS:
        return 'image'
    if suffix in VIDEO_EXTS:
        return 'video'
    if suffix in BAG_EXTS:
        return 'bag'
    raise ValueError(f'cannot tell what {path} is: expected an image ({sorted(IMAGE_EXTS)}), a '
                     f'video ({sorted(VIDEO_EXTS)}), a folder of images, or a rosbag2')


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, its size checked from its header before decoding
    (as the nodes check compressed images: ``image_conversion.compressed_to_rgb``).

    Raises:
        ValueError: a file that cannot be read, decoded, or is too large (the reason).
    """
    from types import SimpleNamespace

    from ..ros.image_conversion import ImageConversionError, compressed_to_rgb
    try:
        return compressed_to_rgb(SimpleNamespace(data=path.read_bytes(), format=path.suffix))
    except (ImageConversionError, OSError) as exc:
        raise ValueError(f'cannot decode image {path.name}: {exc}') from None


def iter_frames(path: Path, kind: str, topic: str | None = None
                ) -> Iterator[tuple[str | int, float, np.ndarray | Exception]]:
    """Yields (frame, stamp_s, rgb or the decoding error) in input order: an image file, a
    video frame or a bag message that cannot be read or decoded comes as its error (the caller
    counts and skips it) and reading goes on."""
    if kind == 'image':
        files = [path]
    elif kind == 'folder':
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f'folder {path} holds no images ({sorted(IMAGE_EXTS)})')
    if kind in ('image', 'folder'):
        for i, f in enumerate(files):
            try:
                yield f.name, float(i), read_rgb(f)
            except ValueError as exc:
                yield f.name, float(i), exc
    elif kind == 'video':
        from .bags import BagError, iter_video_frames
        cap = cv2.VideoCapture(str(path))
        fps = (cap.get(cv2.CAP_PROP_FPS) or 30.0) if cap.isOpened() else 30.0
        cap.release()
        try:
            frames = iter_video_frames(path)
            for i, bgr in enumerate(frames):
                if isinstance(bgr, Exception):  # a corrupt frame: skipped, counted
                    yield i, i / fps, bgr
                else:
                    yield i, i / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        except BagError as exc:
            raise ValueError(f'cannot open video {path}: {exc}') from None
    else:
        from .bags import iter_bag_images
        for index, stamp_ns, _frame_id, rgb in iter_bag_images(path, topic=topic,
                                                               corrupt='yield'):
            yield index, stamp_ns * 1e-9, rgb


def frame_count(path: Path, kind: str) -> int | None:
    if kind == 'image':
        return 1
    if kind == 'folder':
        return sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if kind == 'video':
        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        return n or None
    return None


def person_record(frame, stamp_s, det, res) -> dict:
    d = res.to_dict()
    return {'frame': frame, 'stamp': round(stamp_s, 9), 'track_id': det.track_id,
            'bbox_xyxy': [round(v, 2) for v in det.bbox.xyxy()],
            'confidence': round(det.confidence, 4), 'scores': d['scores'], 'labels': d['labels'],
            'vad': d['vad'], 'status': d['status'], 'reason': d['reason'],
            'backend': d['backend'], 'model': d['model'], 'latency_ms': d['latency_ms'],
            'cache_age_s': d['cache_age_s'], 'text': d['text']}


def run_process(input_path: Path, output: Path, config: str | None = None,
                overrides: dict | None = None, save_images: bool = True,
                max_frames: int | None = None, topic: str | None = None,
                progress: bool = True, detector_overrides: dict | None = None,
                timelines: bool = True) -> dict:
    """Process ``input_path`` into ``output``; returns a summary dict (frames, persons, timings).

    ``overrides``: emotion node parameters (``backend.*``, ``reuse.*``, ``state.*``),
    ``detector_overrides``: person_detector parameters (``tools.config.load_pipeline_config``).
    ``timelines``: draw ``timelines/<track>.png`` (with ``state.enabled``)."""
    from ..core.backends import create_backend
    from ..core.detector import PersonDetector
    from ..core.pipeline import EmotionPipeline
    from .config import load_pipeline_config

    kind = input_kind(input_path)
    cfg = load_pipeline_config(config, overrides, detector_overrides)
    det_opts = cfg.detector if kind in ('video', 'bag') else replace(cfg.detector, tracker='')
    detector = PersonDetector(det_opts)
    backend = create_backend(cfg.backend_name, cfg.backend_options)
    bar = recorder = None
    try:  # the models are unloaded on every exit path (a remote backend's threads, GPU memory)
        t_load = time.perf_counter()
        detector.load()
        backend.load()
        load_s = time.perf_counter() - t_load
        pipeline = EmotionPipeline(backend, cfg.reuse)
        output.mkdir(parents=True, exist_ok=True)
        if save_images:
            (output / 'annotated').mkdir(exist_ok=True)
        recorder = _state_recorder(cfg.state, backend, output, timelines)
        summary = {'input': str(input_path), 'kind': kind, 'frames': 0, 'persons': 0,
                   'bad_frames': 0, 'bad_frame_examples': [], 'unread_frames': 0,
                   'stopped_early': None, 'model_calls': 0,
                   'cache_hits': 0, 'backend': backend.name, 'model': backend.model_id,
                   'load_s': round(load_s, 3), 'detector_ms': 0.0, 'emotion_ms': 0.0,
                   'detector_runtime': detector.runtime.runtime,
                   'detector_runtime_reason': detector.runtime.reason}
        total = frame_count(input_path, kind)
        if max_frames is not None and total is not None:
            total = min(total, max_frames)
        from tqdm import tqdm
        bar = tqdm(total=total, unit='frame', disable=not progress or (total or 2) < 2)
        with open(output / 'emotions.jsonl', 'w') as out:
            for n, (frame, stamp_s, rgb) in enumerate(iter_frames(input_path, kind, topic)):
                if max_frames is not None and n >= max_frames:
                    break
                if isinstance(rgb, Exception):
                    _count_unusable(summary, frame, rgb, bar)
                    continue
                bar.update(1)
                summary['frames'] += 1
                _process_frame(frame, stamp_s, rgb, detector, pipeline, summary, out,
                               output / 'annotated' if save_images else None, recorder)
        if recorder is not None:
            summary['states'] = recorder.states.counters()
            summary['timelines'] = len(recorder.writer.close())
    finally:
        if bar is not None:
            bar.close()
        if recorder is not None:
            recorder.writer.close_files()
        for model in (backend, detector):
            try:
                model.unload()
            except Exception as exc:  # noqa: BLE001 - the first error is the one raised
                LOG.warning('unloading %s failed: %s', type(model).__name__, exc)
    frames = max(1, summary['frames'] - summary['bad_frames'])
    summary['detector_ms_per_frame'] = round(summary.pop('detector_ms') / frames, 2)
    summary['emotion_ms_per_frame'] = round(summary.pop('emotion_ms') / frames, 2)
    (output / 'summary.json').write_text(json.dumps(summary, indent=2))
    return summary


def _count_unusable(summary: dict, frame, exc: Exception, bar) -> None:
    """Count a frame that could not be read (``bad_frames``, the first ones named), or a
    video's reading cut short (``stopped_early``, ``unread_frames``: not a frame)."""
    from .bags import VideoCutShort
    if isinstance(exc, VideoCutShort):
        summary['unread_frames'] += exc.unread
        summary['stopped_early'] = str(exc)
        LOG.warning('%s', exc)
        return
    bar.update(1)
    summary['frames'] += 1
    summary['bad_frames'] += 1
    if len(summary['bad_frame_examples']) < MAX_BAD_FRAME_EXAMPLES:
        summary['bad_frame_examples'].append({'frame': frame, 'reason': str(exc)[:300]})
    LOG.warning('frame %s skipped: %s', frame, exc)


def _state_recorder(options, backend, output: Path, timelines: bool):
    """The per-person states of the run and their writer (None with ``state.enabled`` false)."""
    if not options.enabled:
        return None
    from ..core.state import EmotionStates
    from .state_outputs import StateRecorder, StateWriter
    states = EmotionStates.for_backend(options, backend)
    return StateRecorder(states, StateWriter(output, backend.thresholds, timelines))


def _process_frame(frame, stamp_s, rgb, detector, pipeline, summary, out,
                   annotated_dir: Path | None, recorder=None) -> None:
    """Detect, evaluate and write one frame (see :func:`run_process`)."""
    from ..core.drawing import draw_persons
    from ..core.types import EmotionResult, Status
    backend = pipeline.backend
    t0 = time.perf_counter()
    detected = detector.detect(rgb)
    t1 = time.perf_counter()
    try:
        fr = pipeline.process(rgb, detected.detections, stamp_s)
        results = fr.results
        summary['model_calls'] += fr.model_calls
        summary['cache_hits'] += fr.cache_hits
    except Exception as exc:  # noqa: BLE001 - reported per person, processing goes on
        LOG.warning('frame %s: backend failed: %s', frame, exc)
        results = [EmotionResult.failed(Status.ERROR, f'backend error: {exc}',
                                        backend.name, backend.model_id)
                   for _ in detected.detections]
    t2 = time.perf_counter()
    summary['detector_ms'] += (t1 - t0) * 1e3
    summary['emotion_ms'] += (t2 - t1) * 1e3
    for det, res in zip(detected.detections, results):
        out.write(json.dumps(person_record(frame, stamp_s, det, res)) + '\n')
        summary['persons'] += 1
    out.flush()
    if recorder is not None:
        recorder.add(frame, stamp_s, detected.detections, results, rgb)
    if annotated_dir is not None:
        name = Path(frame).stem if isinstance(frame, str) else f'frame_{frame:06d}'
        drawn = draw_persons(rgb, detected.detections, results)
        cv2.imwrite(str(annotated_dir / f'{name}.jpg'),
                    cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """Backend options shared by process and evaluate: the emotion node's ``backend.*``
    parameters as flags (``--num-labels`` is ``backend.num_labels``). Not given = the config's
    value (process) or the backend's default (evaluate)."""
    p.add_argument('--backend', help='face_baseline | vlm | caption_llm | remote | module:Class')
    p.add_argument('--model', help='model id or path (pkg://package/file for shipped weights)')
    p.add_argument('--llm', help='caption_llm: the text LLM id or path')
    p.add_argument('--mode', choices=['score', 'generate'],
                   help='score: a probability per category; generate: free text, labels parsed')
    p.add_argument('--adapter', help='LoRA adapter folder (peft) for the VLM')
    p.add_argument('--parser', choices=['robust', 'paper'],
                   help="generate mode: how labels are found in the answers: 'robust' (word "
                        "forms, negation; default) or 'paper' (the authors' protocol: the "
                        'lower-case category name occurs in the answer), for numbers computed '
                        "as in the paper's Table I")
    p.add_argument('--score-prompt', choices=['question', 'prefill'],
                   help="score mode: 'question' (each category a user question, default) or "
                        "'prefill' (each question starts the assistant's answer line, 'Anger:': "
                        'fewer tokens per question)')
    p.add_argument('--batch-size', type=int, help='max persons per model call')
    p.add_argument('--device', help="'auto', 'cpu', 'cuda', 'cuda:1'")
    p.add_argument('--device-map', help="from_pretrained device map spreading a large model "
                   "over devices, e.g. 'auto' (a 13B model over two GPUs)")
    p.add_argument('--dtype', choices=['auto', 'float32', 'bfloat16', 'float16'],
                   help='VLM weights dtype')
    p.add_argument('--quantization', choices=['none', 'int8', 'nf4', 'int4'],
                   help='vlm: quantize the weights while loading (int8: torchao weight-only; '
                        'nf4: bitsandbytes; int4: torchao); needs the quant extra')
    p.add_argument('--quantization-library', choices=['auto', 'bitsandbytes', 'torchao'],
                   help="vlm: which library quantizes ('auto': per option and device)")
    p.add_argument('--marking', choices=['red_box', 'crop', 'crop_context'],
                   help='how the target person is shown to a VLM')
    p.add_argument('--definitions', action='store_true', default=None,
                   help='add category definitions to the prompt')
    p.add_argument('--num-labels', type=int, metavar='N',
                   help="generate mode: ask for exactly N labels (the paper's '*' variant: "
                        '--definitions --num-labels 6); 0 = as many as apply')
    p.add_argument('--max-new-tokens', type=int, help='generate mode: answer length bound')
    p.add_argument('--caption-max-new-tokens', type=int,
                   help="caption_llm: length bound of the captioner's narrative")
    p.add_argument('--thresholds', help='per-category thresholds JSON file')
    p.add_argument('--trust-remote-code', action='store_true', default=None,
                   help='allow the model repo to run its own code (off by default)')
    p.add_argument('--url', action='append', metavar='URL',
                   help="remote: base URL of an OpenAI-compatible server (vLLM) ending in /v1; "
                        'repeat for several servers')
    p.add_argument('--api-key-env', metavar='NAME',
                   help='remote: environment variable holding the API key')
    p.add_argument('--timeout-s', type=float,
                   help='remote: the longest one request waits for its answer (s)')
    p.add_argument('--connect-timeout-s', type=float,
                   help='remote: the longest a connection may take to open (s)')
    p.add_argument('--deadline-s', type=float,
                   help="remote: the longest all of a frame's requests may take together (s); "
                        "persons not answered by then are ERROR 'deadline exceeded'")
    p.add_argument('--max-concurrency', type=int, help='remote: most requests in flight')
    p.add_argument('--processor', metavar='DIR_OR_ID',
                   help="remote: the served model's image processor config (a folder or hub id) "
                        "so the pixels sent are the local backend's; default: letterbox")
    p.add_argument('--image-format', choices=('png', 'jpeg'),
                   help='remote: image encoding (png: lossless, default; jpeg: smaller)')


#: CLI option (argparse dest) -> emotion node parameter; the node's names minus 'backend.'
BACKEND_FLAGS = ('backend', 'model', 'llm', 'mode', 'adapter', 'parser', 'score_prompt',
                 'batch_size',
                 'device', 'device_map', 'dtype', 'quantization', 'quantization_library',
                 'marking', 'definitions', 'num_labels',
                 'max_new_tokens', 'caption_max_new_tokens', 'thresholds', 'trust_remote_code',
                 'url', 'api_key_env', 'timeout_s', 'connect_timeout_s', 'deadline_s',
                 'max_concurrency', 'processor', 'image_format')


def add_state_arguments(p: argparse.ArgumentParser) -> None:
    """The emotion node's ``state.*`` parameters as flags (not given = the config's value)."""
    p.add_argument('--no-state', dest='state_enabled', action='store_false', default=None,
                   help='no per-person state over time (states.jsonl, events.jsonl, timelines)')
    p.add_argument('--state-half-life-s', type=float, metavar='S',
                   help="half-life of the smoothing in seconds of stamp time (< 0: by the "
                        "backend's cost: face_baseline 0.5, VLM backends 2)")
    p.add_argument('--state-margin', type=float, metavar='M',
                   help='label hysteresis: on at threshold + M, off below threshold - M')
    p.add_argument('--state-min-hold-s', type=float, metavar='S',
                   help='a label stays on (or off) at least this long after a switch')
    p.add_argument('--state-forget-after-s', type=float, metavar='S',
                   help="a person in no frame for this long is forgotten ('left' event)")
    p.add_argument('--state-max-tracks', type=int, metavar='N', help='most states kept')
    p.add_argument('--identity-check', dest='state_identity_check',
                   action=argparse.BooleanOptionalAction, default=None,
                   help="check that a track id still shows the same person (colours of the "
                        "body); another person in the same place starts a new state")
    p.add_argument('--state-identity-threshold', type=float, metavar='D',
                   help='identity check: colour distance (0, 1) above which the id shows '
                        'someone else')


#: CLI option (argparse dest) -> emotion node parameter
STATE_FLAGS = {'state_enabled': 'state.enabled', 'state_half_life_s': 'state.half_life_s',
               'state_margin': 'state.margin', 'state_min_hold_s': 'state.min_hold_s',
               'state_forget_after_s': 'state.forget_after_s',
               'state_max_tracks': 'state.max_tracks',
               'state_identity_check': 'state.identity_check',
               'state_identity_threshold': 'state.identity_threshold'}


def state_overrides(args: argparse.Namespace) -> dict:
    """CLI state options -> emotion node parameter names (None = not given)."""
    return {param: getattr(args, dest, None) for dest, param in STATE_FLAGS.items()}


def backend_overrides(args: argparse.Namespace) -> dict:
    """CLI options -> emotion node parameter names (None = not given)."""
    return {('backend.name' if dest == 'backend' else f'backend.{dest}'): getattr(args, dest)
            for dest in BACKEND_FLAGS}


def register(subparsers) -> None:
    p = subparsers.add_parser('process', help=__doc__.split('\n')[0],
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('input', type=Path, help='image, folder of images, video file, or rosbag2')
    p.add_argument('--output', '-o', type=Path, required=True, help='output folder')
    p.add_argument('--config', help='ROS 2 parameter YAML with person_detector and/or '
                   'emotion_node sections (defaults: the package config/)')
    add_backend_arguments(p)
    add_tracker_arguments(p)
    add_state_arguments(p)
    p.add_argument('--no-timelines', action='store_true',
                   help='do not draw timelines/<track_id>.png')
    p.add_argument('--detector-runtime', choices=['auto', 'torch', 'openvino', 'onnxruntime'],
                   help="person detector runtime (default: the config, 'auto': OpenVINO on "
                        'x86-64 CPUs, torch on CUDA)')
    p.add_argument('--topic', help='bag input: the image topic (default: the first Image topic)')
    p.add_argument('--max-frames', type=int, help='stop after this many frames')
    p.add_argument('--no-images', action='store_true', help='do not write annotated images')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    summary = run_process(args.input, args.output, args.config,
                          {**backend_overrides(args), **state_overrides(args)},
                          save_images=not args.no_images, max_frames=args.max_frames,
                          topic=args.topic, progress=not args.no_progress,
                          detector_overrides={'runtime': args.detector_runtime,
                                              **tracker_overrides(args)},
                          timelines=not args.no_timelines)
    print(json.dumps(summary, indent=2))
    return 0
