"""Test-wide settings: a local Hub, private HF_HOME, deterministic torch, fp32 on the CPU.

``huggingface_hub``, ``transformers`` and ``datasets`` read ``HF_ENDPOINT`` once, at import. So the local
Hub-protocol server (:class:`hf_ext.testing.local_hub.LocalHub`) is started here, before any of them is imported,
and every test process talks to it instead of the real Hub: nothing can reach the network, an accidental
``from_pretrained("gpt2")`` fails fast with ``RepositoryNotFoundError``, and the Hub tests exercise the real,
unpatched client. The ``local_hub`` fixture hands the server to tests and stops it at the end of the session.
"""

import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set before transformers / huggingface_hub are imported anywhere (importing hf_ext imports transformers).
_HF_HOME = tempfile.mkdtemp(prefix="hf_ext_test_home_")
os.environ["HF_HOME"] = _HF_HOME
_PORT = _free_port()
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{_PORT}",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "hf_local_test_token",
    }
)

from hf_ext.testing import LocalHub  # noqa: E402

_LOCAL_HUB = LocalHub(port=_PORT).start()
assert _LOCAL_HUB.env()["HF_ENDPOINT"] == os.environ["HF_ENDPOINT"]
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def local_hub():
    """The session's :class:`LocalHub` (``HF_ENDPOINT`` already points at it); stopped when the session ends."""
    yield _LOCAL_HUB
    _LOCAL_HUB.stop()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
