"""pip/setuptools entry point (the colcon/ament path ignores this file and uses CMakeLists.txt).

`pip install .` / `pip install -e .` runs CMake on the package's own CMakeLists.txt (rosidl
message generation) into a staging prefix and ships the result:
  site-packages/emotion_perception/{msg/, *_s__rosidl_typesupport_*.so} + our Python code
  <prefix>/lib/libemotion_perception__*.so   (ros_wheels_bootstrapper puts <prefix>/lib on
                                              LD_LIBRARY_PATH)
  <prefix>/share/{ament_index, emotion_perception/{msg,launch,config}}
  <prefix>/lib/emotion_perception/{person_detector,emotion_node,behaviour_node} (`ros2 run`)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

PKG = 'emotion_perception'
HERE = Path(__file__).resolve().parent


def ros_prefixes():
    """ROS prefixes to build against: AMENT_PREFIX_PATH, else this venv if it holds ros-* wheels."""
    env = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    if env:
        return env
    if (Path(sys.prefix) / 'share' / 'ament_index').is_dir():
        return [sys.prefix]
    sys.exit(f'{PKG}: no ROS 2 found: source a ROS 2 setup.bash or install requirements/base.txt')


def cmake_build(build_temp: Path) -> Path:
    prefixes = ros_prefixes()
    bld, stage = build_temp / 'cmake', build_temp / 'stage'
    shutil.rmtree(stage, ignore_errors=True)
    env = dict(os.environ, AMENT_PREFIX_PATH=os.pathsep.join(prefixes))
    # pip's build isolation prepends an overlay to PYTHONPATH that hides this venv's packages;
    # the rosidl generators that CMake runs with this interpreter need them.
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p and 'pip-build-env' not in p)
    subprocess.check_call([
        'cmake', '-S', str(HERE), '-B', str(bld), '-DCMAKE_BUILD_TYPE=Release',
        '-DBUILD_TESTING=OFF', f'-DCMAKE_INSTALL_PREFIX={stage}',
        '-DCMAKE_PREFIX_PATH=' + ';'.join(prefixes), f'-DPython3_EXECUTABLE={sys.executable}',
    ], env=env)
    subprocess.check_call(['cmake', '--build', str(bld), '-j', str(os.cpu_count() or 2)], env=env)
    subprocess.check_call(['cmake', '--install', str(bld)], env=env)
    return stage


class BuildPyWithMsgs(build_py):
    """build_py that also generates the ROS messages and collects the ROS prefix files."""

    def run(self):
        super().run()
        stage = cmake_build(Path(self.get_finalized_command('build').build_temp).resolve())
        pyver = 'python%d.%d' % sys.version_info[:2]
        generated = stage / 'lib' / pyver / 'site-packages' / PKG
        # editable install: the generated modules must sit next to the sources
        dest = HERE / PKG if getattr(self, 'editable_mode', False) else Path(self.build_lib) / PKG
        for item in generated.iterdir():
            if item.name == 'msg':
                shutil.copytree(item, dest / 'msg', dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns('__pycache__'))
            elif item.suffix == '.so':
                shutil.copy2(item, dest / item.name)
        data = {}
        for f in sorted(stage.rglob('*')):
            rel = f.relative_to(stage)
            if f.is_dir() or rel.parts[:2] == ('lib', pyver) or rel.parts[0] == 'include':
                continue
            data.setdefault(str(rel.parent), []).append(str(f))
        self.distribution.data_files = sorted(data.items())
        install_data = self.distribution.get_command_obj('install_data', create=False)
        if install_data is not None:  # editable_wheel creates install_data before build_py runs
            install_data.data_files = self.distribution.data_files


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # platform wheel (it carries the typesupport .so files)
        return True

    def has_data(self):  # setuptools' editable_wheel asks has_data, not has_data_files
        return self.has_data_files()


setup(
    name=PKG,
    version='0.1.0',
    description='Contextual emotion perception (EMOTIC, VLMs) for ROS 2 robots',
    license='Apache-2.0',
    # examples/ is installed as emotion_perception.examples (behaviour_node below)
    packages=find_packages(include=[PKG, f'{PKG}.*']) + [f'{PKG}.examples'],
    package_dir={f'{PKG}.examples': 'examples'},
    python_requires='>=3.10',
    install_requires=['numpy', 'opencv-python', 'torch', 'transformers', 'ultralytics',
                      'rosbags', 'h5py', 'pyyaml', 'tqdm'],
    # quantized VLM loading (backend.quantization); pins in requirements/quant.txt
    extras_require={'quant': ['bitsandbytes==0.50.2', 'torchao==0.18.0']},
    distclass=BinaryDistribution,
    cmdclass={'build_py': BuildPyWithMsgs},
    entry_points={'console_scripts': [
        'person_detector = emotion_perception.nodes.entry:person_detector',
        'emotion_node = emotion_perception.nodes.entry:emotion_node',
        'emotion-perception = emotion_perception.tools.cli:main',
        'behaviour_node = emotion_perception.examples.behaviour_node:main',
    ]},
    zip_safe=False,
)
