"""No dead code: every function and class the package defines, and every method and class
attribute of its classes, is used somewhere other than where it is defined (the package, the
tests, the benches, the examples, the launch file).

Read as source (no imports): a module-level name counts as used when its name occurs more often
than it is defined; a class member when it is read as an attribute (``.name``) or named in a
string (``getattr``, ``hasattr``, a descriptor), anywhere. Names called by a framework rather
than by our code are listed in ``CALLED_BY_FRAMEWORKS`` with who calls them.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: member name -> who calls it (never referenced by our code)
CALLED_BY_FRAMEWORKS = {
    'on_configure': 'rclpy LifecycleNode transitions', 'on_cleanup': 'rclpy LifecycleNode',
    'on_shutdown': 'rclpy LifecycleNode', 'on_error': 'rclpy LifecycleNode',
    'do_GET': 'http.server', 'do_POST': 'http.server', 'log_message': 'http.server',
    'protocol_version': 'http.server',
    'total_ms': 'public API of the Timings value object (the sum of its stages)',
    'prune': 'ros/rep155.py, being reworked under issue 25 item 4 (another change)',
}


def _sources() -> tuple[list[Path], dict[Path, str]]:
    package = [p for p in sorted((ROOT / 'emotion_perception').rglob('*.py'))
               if 'msg' not in p.relative_to(ROOT).parts]
    users = [p for tree in ('test', 'bench', 'examples', 'launch')
             for p in sorted((ROOT / tree).rglob('*.py'))]
    return package, {p: p.read_text() for p in [*package, *users, ROOT / 'setup.py']}


def _definitions(tree: ast.Module) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(module-level functions and classes, members of every class): (name, line)."""
    top = [(n.name, n.lineno) for n in tree.body
           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    members = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for st in cls.body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
                members.append((st.name, st.lineno))
            elif isinstance(st, (ast.Assign, ast.AnnAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                members += [(t.id, st.lineno) for t in targets if isinstance(t, ast.Name)]
    return top, members


def _where(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_absolute() else path


def unused_definitions(package: list[Path], texts: dict[Path, str]) -> list[str]:
    """'file:line: name' of the definitions in ``package`` (paths, keys of ``texts``) that no
    text of ``texts`` uses."""
    everything = '\n'.join(texts.values())
    words = Counter(re.findall(r'\b[A-Za-z_]\w*\b', everything))
    attributes = Counter(re.findall(r'\.([A-Za-z_]\w*)\b', everything))
    attributes.update(re.findall(r'''['"]([A-Za-z_]\w*)['"]''', everything))
    found, tops = [], []
    for path in package:
        top, members = _definitions(ast.parse(texts[path], filename=str(path)))
        tops += [(name, line, path) for name, line in top]
        found += [f'{_where(path)}:{line}: {name}' for name, line in members
                  if not name.startswith('__') and name not in CALLED_BY_FRAMEWORKS
                  and attributes[name] == 0]
    defined = Counter(name for name, _, _ in tops)
    found += [f'{_where(path)}:{line}: {name}' for name, line, path in tops
              if not name.startswith('__') and words[name] <= defined[name]]
    return sorted(found)


def test_every_definition_is_used():
    unused = unused_definitions(*_sources())
    assert not unused, ('defined but never used (remove it, or list who calls it in '
                        'CALLED_BY_FRAMEWORKS):\n' + '\n'.join(unused))


def test_the_check_finds_an_unused_method_attribute_and_function():
    """The checker itself, on a made-up module: unused members and functions are reported;
    using them clears them."""
    module, user = Path('probe.py'), Path('user.py')
    probe = ('class Probe:\n    LIMIT = 3\n\n    def lonely_method(self):\n        return 1\n\n\n'
             'def lonely_function():\n    return Probe\n')
    assert unused_definitions([module], {module: probe, user: ''}) == [
        'probe.py:2: LIMIT', 'probe.py:4: lonely_method', 'probe.py:8: lonely_function']
    uses = 'from probe import lonely_function\nlonely_function().LIMIT\nx.lonely_method()\n'
    assert unused_definitions([module], {module: probe, user: uses}) == []
