"""``running_sandbox(**opts)``: run ``python -m sandbox --port 0`` as a subprocess for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .control import SandboxControl

_LISTENING = re.compile(r"sandbox listening on (http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SandboxHandle:
    rest_url: str  # "http://127.0.0.1:PORT": clients append /fapi/v1/...
    ws_url: str  # "ws://127.0.0.1:PORT": the user stream is {ws_url}/private/ws?listenKey=...
    control: SandboxControl
    process: subprocess.Popen

    @property
    def port(self) -> int:
        return int(self.rest_url.rsplit(":", 1)[1])


@contextlib.contextmanager
def running_sandbox(
    host: str = "127.0.0.1",
    weight_limit: int | None = None,
    start_timeout: float = 15.0,
    stop_timeout: float = 5.0,
    extra_args: list[str] | None = None,
    python: str | None = None,
    clock_offset_ms: int | None = None,
):
    """Start the sandbox in its own process (its own GIL), yield a SandboxHandle, then stop it
    (SIGTERM, then kill if it has not exited within stop_timeout). clock_offset_ms: the sandbox clock runs that far
    from this host's (negative: behind), also after control.reset()."""
    cmd = [python or sys.executable, "-u", "-m", "sandbox", "--host", host, "--port", "0"]
    if weight_limit is not None:
        cmd += ["--weight-limit", str(weight_limit)]
    if clock_offset_ms is not None:
        cmd += ["--clock-offset-ms", str(int(clock_offset_ms))]
    cmd += extra_args or []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=str(_REPO_ROOT))
    try:
        url = _wait_for_listening(proc, start_timeout)
        # Keep draining stdout so the child can never block on a full pipe.
        assert proc.stdout is not None  # stdout=PIPE
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield SandboxHandle(url, "ws" + url[4:], SandboxControl(url), proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_listening(proc: subprocess.Popen, timeout: float) -> str:
    found: list[str] = []
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE

    def read() -> None:
        for line in stdout:
            match = _LISTENING.search(line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not found and proc.poll() is None:
        reader.join(0.02)
    if not found:
        proc.kill()
        raise RuntimeError(f"sandbox did not start within {timeout}s (exit code {proc.poll()})")
    return found[0]
