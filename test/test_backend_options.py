"""Every backend option reachable (issue 8, item 8): as emotion_node parameters (declared with
descriptions, YAML defaults, validated) and as `process` / `evaluate` flags, down to the
backend's Options dataclass."""
import argparse
import dataclasses

import pytest
import yaml
from rclpy.parameter import Parameter

from emotion_perception.core.backends import backend_class
from emotion_perception.nodes.emotion_node import BACKEND_PARAMS, EmotionNode
from emotion_perception.ros.params import read_params
from emotion_perception.testing.ros_harness import RosHarness
from emotion_perception.tools import evaluate, process
from emotion_perception.tools.config import config_dir, load_pipeline_config

OPTIONS = ('num_labels', 'device_map', 'caption_max_new_tokens', 'marking', 'definitions',
           'dtype', 'max_new_tokens', 'trust_remote_code')


def test_every_prompt_option_is_a_described_node_parameter_with_a_yaml_default():
    specs = {s.name: s for s in BACKEND_PARAMS}
    yaml_backend = yaml.safe_load((config_dir() / 'emotion_node.yaml').read_text())[
        '/**/emotion_node']['ros__parameters']['backend']
    prompt_fields = ({f.name for f in dataclasses.fields(backend_class('vlm').Options)}
                     | {f.name for f in dataclasses.fields(backend_class('caption_llm').Options)})
    for name in OPTIONS:
        spec = specs[f'backend.{name}']
        assert spec.description and name in prompt_fields, name
        assert yaml_backend[name] == spec.default, name


@pytest.fixture
def harness():
    with RosHarness() as h:
        yield h


def node_options(harness, backend, **params):
    node = harness.add(EmotionNode(f'opts_{backend}', context=harness.context,
                                   parameter_overrides=[Parameter(k, value=v)
                                                        for k, v in params.items()]))
    node.params = read_params(node, node._all_params)
    return node, node._backend_options(backend)


@pytest.mark.ros
def test_node_parameters_reach_the_vlm_and_caption_llm_options(harness):
    _, opts = node_options(harness, 'vlm', **{
        'backend.num_labels': 6, 'backend.definitions': True, 'backend.device_map': 'auto',
        'backend.marking': 'crop_context', 'backend.dtype': 'bfloat16',
        'backend.max_new_tokens': 32})
    assert {k: opts[k] for k in ('num_labels', 'definitions', 'device_map', 'marking', 'dtype',
                                 'max_new_tokens', 'trust_remote_code')} == {
        'num_labels': 6, 'definitions': True, 'device_map': 'auto', 'marking': 'crop_context',
        'dtype': 'bfloat16', 'max_new_tokens': 32, 'trust_remote_code': False}
    backend_class('vlm').Options(**opts)  # the backend accepts them
    _, opts = node_options(harness, 'caption_llm', **{'backend.caption_max_new_tokens': 40})
    assert opts['caption_max_new_tokens'] == 40
    assert 'device_map' not in opts  # '' = none: the backend's default
    backend_class('caption_llm').Options(**opts)


@pytest.mark.ros
def test_invalid_option_values_are_refused_with_the_reason(harness):
    node, _ = node_options(harness, 'vlm')
    for name, value in (('backend.num_labels', -1), ('backend.caption_max_new_tokens', 0),
                        ('backend.dtype', 'int4'), ('backend.marking', 'arrow')):
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and name in result.reason, (name, result.reason)


def parse(command, argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    command.register(sub)
    return parser.parse_args(argv)


def test_process_flags_reach_the_backend_options():
    args = parse(process, ['process', 'in.jpg', '-o', 'out', '--backend', 'vlm',
                           '--num-labels', '6', '--definitions', '--device-map', 'auto',
                           '--marking', 'crop', '--dtype', 'float16', '--max-new-tokens', '20',
                           '--trust-remote-code'])
    overrides = process.backend_overrides(args)
    assert overrides['backend.num_labels'] == 6 and overrides['backend.device_map'] == 'auto'
    cfg = load_pipeline_config(None, overrides)
    assert cfg.backend_name == 'vlm'
    for key, value in (('num_labels', 6), ('definitions', True), ('device_map', 'auto'),
                       ('marking', 'crop'), ('dtype', 'float16'), ('max_new_tokens', 20),
                       ('trust_remote_code', True)):
        assert cfg.backend_options[key] == value, key
    assert 'caption_max_new_tokens' not in cfg.backend_options  # not a vlm option: refused
    with pytest.raises(ValueError, match="'vlm' has no 'caption_max_new_tokens'"):
        load_pipeline_config(None, process.backend_overrides(parse(process, [
            'process', 'in.jpg', '-o', 'out', '--backend', 'vlm',
            '--caption-max-new-tokens', '50'])))
    args = parse(process, ['process', 'in.jpg', '-o', 'out', '--backend', 'caption_llm',
                           '--caption-max-new-tokens', '50'])
    cfg = load_pipeline_config(None, process.backend_overrides(args))
    assert cfg.backend_options['caption_max_new_tokens'] == 50
    # not given: the config's values
    cfg = load_pipeline_config(None, process.backend_overrides(
        parse(process, ['process', 'in.jpg', '-o', 'out', '--backend', 'vlm'])))
    assert cfg.backend_options['num_labels'] == 0


def test_evaluate_uses_the_same_flags_and_refuses_options_a_backend_lacks():
    args = parse(evaluate, ['evaluate', '--data', 'd', '--output', 'o', '--backend', 'vlm',
                            '--num-labels', '6', '--definitions', '--device-map', 'auto',
                            '--marking', 'crop_context', '--max-new-tokens', '24'])
    opts = evaluate.backend_options(args, backend_class('vlm'))
    assert {k: opts[k] for k in ('num_labels', 'definitions', 'device_map', 'marking',
                                 'max_new_tokens', 'device', 'batch_size')} == {
        'num_labels': 6, 'definitions': True, 'device_map': 'auto', 'marking': 'crop_context',
        'max_new_tokens': 24, 'device': 'auto', 'batch_size': 8}
    args = parse(evaluate, ['evaluate', '--data', 'd', '--output', 'o', '--num-labels', '6'])
    assert args.backend == 'face_baseline'
    with pytest.raises(ValueError, match='--num-labels'):
        evaluate.backend_options(args, backend_class('face_baseline'))
    # a resumed run with other prompt options is refused, not silently mixed
    assert {'num_labels', 'marking', 'definitions'} <= set(evaluate.IDENTITY_KEYS)
