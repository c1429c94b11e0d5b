"""The launch file's interface, read without launch installed (its structure as Python source).

The launch file is RUN by the real launch/launch_ros in test/colcon/test_launch.py (through
test/colcon/run_colcon.sh: `make colcon-test`, and `make test` via test_colcon_build.py)."""
import ast
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'emotion_perception.launch.py'


@pytest.fixture(scope='module')
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _arguments(tree: ast.Module) -> dict:
    node = next(n for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], 'id', '') == 'ARGUMENTS')
    return ast.literal_eval(node.value)


def test_declares_the_arguments_with_defaults(tree):
    args = _arguments(tree)
    assert set(args) == {'camera_topic', 'image_transport', 'namespace', 'backend',
                         'params_file', 'use_sim_time', 'detections_format',
                         'detections_topic', 'publish_vision_msgs', 'start_detector', 'rep155'}
    assert args['start_detector'][0] == 'true'
    assert args['detections_format'][0] == args['detections_topic'][0] == ''
    assert args['camera_topic'][0] == '/camera/image_raw'
    assert args['use_sim_time'][0] == 'false'
    # '' = keep what the parameter files say
    assert args['backend'][0] == args['image_transport'][0] == args['params_file'][0] == ''
    assert all(desc for _, desc in args.values())


def test_starts_both_executables_as_lifecycle_nodes_driven_by_the_launch(tree):
    source = ast.unparse(tree)
    assert _calls(tree, 'LifecycleNode') and _calls(tree, 'OpaqueFunction')
    assert "'person_detector'" in source and "'emotion_node'" in source
    assert "remappings=[('image', camera_topic), *(remaps or [])]" in source
    assert "[('detections', arg['detections_topic'])]" in source
    assert "'autostart': False" in source  # the launch file drives the lifecycle, not autostart
    handlers = _calls(tree, 'OnStateTransition')
    goal = {kw.arg: kw.value.value for kw in handlers[0].keywords
            if isinstance(kw.value, ast.Constant)}
    assert goal == {'start_state': 'configuring', 'goal_state': 'inactive'}
    assert 'Transition.TRANSITION_CONFIGURE' in source
    assert 'Transition.TRANSITION_ACTIVATE' in source


def test_yaml_node_names_match_the_launch_names():
    config = LAUNCH.parents[1] / 'config'
    for node in ('person_detector', 'emotion_node'):
        assert f'/**/{node}:' in (config / f'{node}.yaml').read_text()


def _load_with_stub_launch(monkeypatch, share: Path):
    """The launch file as a module, launch / launch_ros / ament_index replaced by stubs that
    record what is built (the real ones run it in test/colcon/test_launch.py); the package's
    own imports are real."""
    import sys
    import types

    class Recorded:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Recorded):
        def perform(self, context):
            return context[self.args[0]]

    names = {'launch': ['LaunchDescription'],
             'launch.actions': ['DeclareLaunchArgument', 'EmitEvent', 'OpaqueFunction',
                                'RegisterEventHandler'],
             'launch.events': ['matches_action'], 'launch.substitutions': [],
             'launch_ros': [], 'launch_ros.actions': ['LifecycleNode'],
             'launch_ros.event_handlers': ['OnStateTransition'], 'launch_ros.events': [],
             'launch_ros.events.lifecycle': ['ChangeState'], 'ament_index_python': [],
             'ament_index_python.packages': []}
    for module, classes in names.items():
        stub = types.ModuleType(module)
        for name in classes:
            setattr(stub, name, type(name, (Recorded,), {}))
        monkeypatch.setitem(sys.modules, module, stub)
    sys.modules['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    sys.modules['ament_index_python.packages'].get_package_share_directory = \
        lambda package: str(share)
    module = types.ModuleType('emotion_perception_launch')
    exec(compile(LAUNCH.read_text(), str(LAUNCH), 'exec'), module.__dict__)
    return module


def test_accepts_exactly_the_packages_backends_formats_and_transports(monkeypatch, tmp_path):
    """The launch file validates its arguments with the installed package's own lists: every
    registered backend (remote too), every detections format, every image transport; others
    refused naming them."""
    from emotion_perception.core.backends import BACKENDS
    from emotion_perception.ros.detection_formats import FORMATS
    from emotion_perception.ros.node_utils import IMAGE_TRANSPORTS
    launch = _load_with_stub_launch(monkeypatch, tmp_path)
    args = {name: default for name, (default, _) in launch.ARGUMENTS.items()}

    def emotion_params(**given):
        actions = launch.launch_nodes({**args, **given})
        nodes = [a for a in actions if type(a).__name__ == 'LifecycleNode']
        node = next(n for n in nodes if n.kwargs['executable'] == 'emotion_node')
        return node.kwargs['parameters'][-1]
    for backend in BACKENDS:
        assert emotion_params(backend=backend)['backend.name'] == backend
    for fmt in FORMATS:
        assert emotion_params(detections_format=fmt)['detections_format'] == fmt
    for transport in IMAGE_TRANSPORTS:
        assert emotion_params(image_transport=transport)['image_transport'] == transport
    assert emotion_params(backend='my_pkg.mod:MyBackend')['backend.name'] == \
        'my_pkg.mod:MyBackend'
    for given, listed in [({'backend': 'bogus'}, sorted(BACKENDS)),
                          ({'detections_format': 'bogus'}, list(FORMATS)),
                          ({'image_transport': 'theora'}, list(IMAGE_TRANSPORTS))]:
        with pytest.raises(RuntimeError, match='must be one of') as err:
            launch.launch_nodes({**args, **given})
        assert str(listed) in str(err.value)
