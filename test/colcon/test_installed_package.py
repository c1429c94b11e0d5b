"""Light checks of the package as colcon INSTALLED it (run by `colcon test`, see CMakeLists.txt).

`colcon test` runs this file with EP_COLCON_TEST=1 and the workspace's install tree first on
PYTHONPATH / AMENT_PREFIX_PATH. Elsewhere (a plain `pytest test`) it is skipped: there the
package comes from the source tree or the pip install, which the other tests cover.
A few seconds: no models, no DDS traffic.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get('EP_COLCON_TEST') != '1',
                                reason='checks a colcon install tree; run by `colcon test`')

PKG = 'emotion_perception'


def _install_prefix() -> Path:
    """The first AMENT_PREFIX_PATH entry that holds this package: the colcon install prefix."""
    from ament_index_python.packages import get_package_prefix
    return Path(get_package_prefix(PKG)).resolve()


def test_prefix_is_a_colcon_install_not_the_venv():
    prefix = _install_prefix()
    assert prefix != Path(sys.prefix).resolve(), (
        f'{PKG} resolves to the venv ({prefix}), not to the colcon install tree')
    assert prefix.name == PKG and prefix.parent.name == 'install', prefix


def test_python_package_and_messages_import_from_the_install_tree():
    import emotion_perception
    import emotion_perception.msg as msg_pkg

    prefix = _install_prefix()
    for module in (emotion_perception, msg_pkg):
        where = Path(module.__file__).resolve()
        assert prefix in where.parents, f'{module.__name__} imported from {where}'
    # our code replaced the generated empty __init__.py
    assert emotion_perception.__version__ == '0.1.0'


def test_message_constants_and_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    from emotion_perception.msg import (PersonDetection, PersonDetectionArray, PersonEmotion,
                                        PersonEmotionArray)

    names = PersonEmotion.CATEGORY_NAMES.split(',')
    assert PersonEmotion.NUM_CATEGORIES == len(names) == 26
    assert names[0] == 'Affection' and names[-1] == 'Yearning'
    statuses = (PersonEmotion.STATUS_OK, PersonEmotion.STATUS_CACHED,
                PersonEmotion.STATUS_SKIPPED, PersonEmotion.STATUS_ERROR)
    assert statuses == (0, 1, 2, 3)

    detections = PersonDetectionArray()
    detections.header.frame_id = 'camera'
    detections.detections.append(PersonDetection())
    emotions = PersonEmotionArray()
    emotions.header.frame_id = 'camera'
    emotions.persons.append(PersonEmotion(status=PersonEmotion.STATUS_CACHED))
    for message in (detections, emotions):
        data = serialize_message(message)
        assert deserialize_message(data, type(message)) == message


def test_node_and_core_modules_import():
    import emotion_perception.core.detector  # noqa: F401
    import emotion_perception.core.pipeline  # noqa: F401
    from emotion_perception.nodes import emotion_node, person_detector

    assert callable(person_detector.main) and callable(emotion_node.main)


@pytest.mark.parametrize('exe, module', [
    ('person_detector', 'nodes.entry import person_detector as main'),
    ('emotion_node', 'nodes.entry import emotion_node as main'),
    ('behaviour_node', 'examples.behaviour_node import main as main')])
def test_executables_installed_for_ros2_run(exe, module):
    path = _install_prefix() / 'lib' / PKG / exe
    assert path.is_file() and os.access(path, os.X_OK), path
    shebang = path.read_text().splitlines()[0]
    assert shebang.startswith('#!') and os.access(shebang[2:].strip(), os.X_OK), shebang
    assert f'from {PKG}.{module}' in path.read_text()


def test_example_installed_in_the_package():
    from emotion_perception.examples import behaviour_node

    assert _install_prefix() in Path(behaviour_node.__file__).resolve().parents
    assert callable(behaviour_node.main)


def test_share_files_installed():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory(PKG))
    assert _install_prefix() in share.resolve().parents
    for rel in ('package.xml', 'config/person_detector.yaml', 'config/emotion_node.yaml',
                f'launch/{PKG}.launch.py', 'msg/PersonEmotionArray.msg',
                'msg/PersonDetectionArray.msg'):
        assert (share / rel).is_file(), share / rel
