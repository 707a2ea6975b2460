"""pytest fixtures: ``sandbox_server`` (one sandbox process per session) and ``exchange`` (reset per test).

Load with ``pytest_plugins = ["sandbox.pytest_plugin"]`` in a conftest.py, or ``-p sandbox.pytest_plugin``.
"""

from __future__ import annotations

import pytest

from .testing import running_sandbox


@pytest.fixture(scope="session")
def sandbox_server():
    """A SandboxHandle (.rest_url, .ws_url, .control) shared by the whole test session."""
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def exchange(sandbox_server):
    """The session's sandbox, wiped (control.reset()) before the test."""
    sandbox_server.control.reset()
    yield sandbox_server
