"""The launch file is valid Python and wires what the nodes expect (launch is not installed here,
so it is parsed, not run)."""
import ast
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'emotion_perception.launch.py'


@pytest.fixture(scope='module')
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _strings(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def test_defines_generate_launch_description(tree):
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in names


def test_starts_both_executables_as_lifecycle_nodes(tree):
    strings = _strings(tree)
    assert {'person_detector', 'emotion_node', 'emotion_perception'} <= strings
    node_calls = _calls(tree, 'LifecycleNode')
    assert node_calls, 'no launch_ros LifecycleNode'
    keywords = {kw.arg for call in node_calls for kw in call.keywords}
    assert {'package', 'executable', 'name', 'namespace', 'parameters', 'remappings'} <= keywords


def test_uses_both_config_files_and_overrides_backend(tree):
    strings = _strings(tree)
    assert {'person_detector.yaml', 'emotion_node.yaml', 'config', 'backend.name'} <= strings
    assert 'get_package_share_directory' in {getattr(n, 'id', None) for n in ast.walk(tree)}


def test_declares_the_arguments(tree):
    declared = {}
    for call in _calls(tree, 'DeclareLaunchArgument'):
        name = call.args[0].value
        declared[name] = {kw.arg: kw.value for kw in call.keywords}
    assert set(declared) == {'camera_topic', 'namespace', 'backend'}
    assert declared['camera_topic']['default_value'].value == '/camera/image_raw'
    configs = {c.args[0].value for c in _calls(tree, 'LaunchConfiguration')}
    assert configs == {'camera_topic', 'namespace', 'backend'}
    # the camera topic remaps the nodes' relative `image` subscription
    remap = next(kw.value for c in _calls(tree, 'LifecycleNode') for kw in c.keywords
                 if kw.arg == 'remappings')
    assert ast.unparse(remap) == "[('image', LaunchConfiguration('camera_topic'))]"


def test_configures_then_activates_on_inactive(tree):
    source = ast.unparse(tree)
    assert 'Transition.TRANSITION_CONFIGURE' in source
    assert 'Transition.TRANSITION_ACTIVATE' in source
    handlers = _calls(tree, 'OnStateTransition')
    assert handlers and _calls(tree, 'RegisterEventHandler') and _calls(tree, 'ChangeState')
    goal = {kw.arg: kw.value.value for kw in handlers[0].keywords
            if isinstance(kw.value, ast.Constant)}
    assert goal == {'start_state': 'configuring', 'goal_state': 'inactive'}
    activate = [n for n in ast.walk(handlers[0]) if isinstance(n, ast.Attribute)
                and n.attr.startswith('TRANSITION_')]
    assert [a.attr for a in activate] == ['TRANSITION_ACTIVATE']


def test_yaml_node_names_match_the_launch_names():
    config = LAUNCH.parents[1] / 'config'
    for node in ('person_detector', 'emotion_node'):
        assert f'/**/{node}:' in (config / f'{node}.yaml').read_text()
