"""The code stays Python 3.10-compatible (ROS 2 Humble runs Python 3.10; this venv is 3.11).

Two independent checks over every Python file of the package, its examples, tests and
benchmarks: the parser's own grammar for 3.10 (``ast.parse(feature_version=(3, 10))``: no
``except*``, no PEP 695 generics...), and vermin (from PyPI), which also knows the standard
library's additions per version (``tomllib``, ``typing.Self``, ``datetime.UTC``...).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ('emotion_perception', 'examples', 'test', 'bench')


def _sources() -> list[Path]:
    files = []
    for tree in TREES:
        files += [p for p in (ROOT / tree).rglob('*.py')
                  if 'msg' not in p.relative_to(ROOT).parts]  # rosidl-generated messages
    return sorted(files)


def test_grammar_is_python_310():
    files = _sources()
    assert len(files) > 50
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    with pytest.raises(SyntaxError):  # the check can fail: 3.11 syntax is refused
        ast.parse('try:\n    pass\nexcept* ValueError:\n    pass\n', feature_version=(3, 10))


def _vermin(*paths: str) -> subprocess.CompletedProcess:
    exe = shutil.which('vermin', path=str(Path(sys.executable).parent)) or 'vermin'
    return subprocess.run([exe, '--no-tips', '--violations', '--target=3.10-', '--eval-annotations',
                           '--no-parse-comments', *paths], capture_output=True, text=True,
                          timeout=300)


def test_vermin_finds_nothing_newer_than_310(tmp_path):
    proc = _vermin(*(str(ROOT / t) for t in TREES if (ROOT / t).is_dir()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it does report 3.11 library features
    newer = tmp_path / 'newer.py'
    newer.write_text('import tomllib\nfrom typing import Self\n')
    proc = _vermin(str(newer))
    assert proc.returncode != 0 and 'tomllib' in proc.stdout
