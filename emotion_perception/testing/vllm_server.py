"""Start and stop a real vLLM OpenAI-compatible server on 127.0.0.1 (tests, bench, serve-vllm).

vLLM runs in its own venv (``make vllm`` -> ``.venv-vllm``; its torch build differs from the
project's), so it is a subprocess of that venv's Python. The flags are those of a CPU run
(``../shared/VLLM_ON_CPU.md``): float32, eager mode, whole-vocabulary log-probs allowed
(``--max-logprobs -1``), prefix caching on. Everything stays on loopback: the server binds
127.0.0.1, vLLM's internal communication uses 127.0.0.1 and its usage statistics are off.

Usage::

    python -m emotion_perception.testing.vllm_server MODEL_DIR [PORT] [extra vLLM flags]

prints ``ready: http://127.0.0.1:PORT/v1`` once ``/health`` answers and serves in the
foreground until Ctrl-C.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
#: the vLLM venv's Python: $EP_VLLM_PYTHON, else the repository's .venv-vllm
DEFAULT_PYTHON = REPO / '.venv-vllm' / 'bin' / 'python'


def vllm_python() -> Path:
    return Path(os.environ.get('EP_VLLM_PYTHON') or DEFAULT_PYTHON)


def missing_reason() -> str:
    """'' when vLLM can be started, else why not (what to run)."""
    py = vllm_python()
    if not py.exists():
        return f'no vLLM venv at {py} (run `make vllm`)'
    return ''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE=env.get('VLLM_CPU_KVCACHE_SPACE', '1'),
               VLLM_CPU_OMP_THREADS_BIND=env.get('VLLM_CPU_OMP_THREADS_BIND', 'nobind'),
               VLLM_HOST_IP='127.0.0.1', VLLM_NO_USAGE_STATS='1', DO_NOT_TRACK='1',
               HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')
    env.pop('PYTHONPATH', None)
    return env


def server_command(model_dir: str | os.PathLike, port: int, name: str,
                   extra: Sequence[str] = (), python: Path | None = None) -> list[str]:
    return [str(python or vllm_python()), '-m', 'vllm.entrypoints.openai.api_server',
            '--model', str(model_dir), '--served-model-name', name,
            '--host', '127.0.0.1', '--port', str(port), '--dtype', 'float32',
            '--max-model-len', '2048', '--enforce-eager', '--generation-config', 'vllm',
            '--max-logprobs', '-1', '--enable-prefix-caching', *extra]


def health(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


class VLLMServer:
    """One vLLM server process for ``model_dir`` on 127.0.0.1:``port`` (a free port if None).

    ``start()`` returns once ``/health`` answers and the first request (vLLM's warm-up, 15-30 s
    on this CPU) has run; ``stop()`` kills it; ``start()`` again restarts it on the same port.
    """

    def __init__(self, model_dir: str | os.PathLike, name: str = 'tiny', port: int | None = None,
                 log: str | os.PathLike | None = None, extra: Sequence[str] = ()) -> None:
        self.model_dir, self.name = str(model_dir), name
        self.port = port or free_port()
        self.log_path = Path(log) if log else Path(f'/tmp/ep_vllm_{self.port}.log')
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}/v1'

    def start(self, timeout_s: float = 600.0, warm: bool = True) -> 'VLLMServer':
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(
            server_command(self.model_dir, self.port, self.name, self.extra), env=server_env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while not health(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f'vLLM exited with {self.proc.returncode} before it was '
                                   f'ready; last log lines:\n{self.log_tail()}')
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'vLLM not ready after {timeout_s:.0f} s:\n{self.log_tail()}')
            time.sleep(0.5)
        if warm:
            self.warm_up()
        return self

    def warm_up(self) -> None:
        """One tiny text request: vLLM compiles and allocates on its first request."""
        import json
        body = json.dumps({'model': self.name, 'max_tokens': 1,
                           'messages': [{'role': 'user', 'content': 'hi'}]}).encode()
        req = urllib.request.Request(f'{self.url}/chat/completions', data=body,
                                     headers={'Content-Type': 'application/json'})
        try:
            urllib.request.urlopen(req, timeout=300).read()
        except OSError:
            pass  # a template that needs an image: the first real request warms up instead

    def stop(self) -> None:
        """Kill the server (its whole process group: vLLM starts an engine process)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)
        self.proc = None
        # the port is free again once the socket is closed
        deadline = time.monotonic() + 30
        while health(self.port, 0.5) and time.monotonic() < deadline:
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])
        except OSError:
            return ''

    def __enter__(self) -> 'VLLMServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv else 2
    model = argv[0]
    port = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 8000
    extra = argv[2:] if len(argv) > 1 and argv[1].isdigit() else argv[1:]
    if not Path(model).is_dir():
        print(f'serve-vllm: {model} is not a folder (for a hub id on a GPU server, run vLLM '
              'itself: README "GPU server")', file=sys.stderr)
        return 2
    server = VLLMServer(model, name=Path(model).name, port=port, extra=extra,
                        log='/dev/stdout')
    cmd = server_command(model, port, server.name, extra)
    proc = subprocess.Popen(cmd, env=server_env())
    try:
        while not health(port):
            if proc.poll() is not None:
                return proc.returncode or 1
            time.sleep(0.5)
        print(f'ready: {server.url}', flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30) and 0
        except subprocess.TimeoutExpired:
            proc.kill()
            return 0


if __name__ == '__main__':
    sys.exit(main())
