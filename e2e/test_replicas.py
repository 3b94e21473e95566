"""Scale-out: three real tollgate replicas on one PostgreSQL database and one Redis prefix.

Every replica runs the same config in its own working directory (its own spill files) with
`refresh_interval: 30s`, so anything that reaches another replica faster than that came over
the Redis change notices, and `reservation_lease: 2s`. Requests are spread round-robin over
the replicas from a thread pool. What is proved:

1. Rate limits are fleet-wide: a key limited to 600 requests a minute, hammered with 900
   requests over the three replicas at once, gets 600 (at most 630) answers; the rest are 429
   `rate_limit_exceeded`.
2. Budgets are fleet-wide: requests racing on three replicas against one budget stop at the
   limit, overshooting it by at most one request's cost (in the Redis counter and in the
   PostgreSQL ledger). A replica killed (SIGKILL) mid-request leaks nothing: its reservation,
   held past its lease while the replica lived, is reclaimed within the lease once it died.
3. Revocation is fleet-wide: a key revoked through one replica is refused (401) by every
   replica within a second, although no replica polls the store in that time.
4. A2A task routes are fleet-wide: a task started through a replica that is then killed is
   read and continued through the others, on the upstream agent replica that owns it.
5. Execution quotas are fleet-wide: a key allowed 30 A2A sends a minute, sending 60 at once
   spread over the three replicas, gets exactly 30 through; the rest are refused (429,
   JSON-RPC -32050 naming the quota), and then every replica refuses it, although none was
   sent more than 20 (a quota counted per replica would have admitted all 60).

Tests that kill a replica kill an extra one started for the purpose, so the three stay up.

Needs PostgreSQL (127.0.0.1:5432, user postgres, trust auth, database `test`) and Redis
(127.0.0.1:6379). The module creates a scratch database and a Redis prefix, and removes both
at the end (the `stores` fixture of e2e/shared_stores.py). Without the services the module is
skipped, or fails with TOLLGATE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import httpx
import pytest

from conftest import MASTER_KEY, Gateway, launch_gateway, new_key
from mcp_client_util import free_port
from shared_stores import REDIS_HOST, REDIS_PORT, Stores, stores  # noqa: F401

AGENT_SCRIPT = Path(__file__).resolve().parent / "a2a_agent.py"

TIMEOUT = 30.0
WORKERS = 24  # client threads for the concurrent phases
LEASE_S = 2.0  # storage.reservation_lease

RPM = 600
HAMMER = 900

# Prices of the upstream model `e2e-priced`, in USD per million tokens.
INPUT_PER_MTOK = 100.0
OUTPUT_PER_MTOK = 200.0
BUDGET_USD = 0.05
SLOW_LATENCY_S = 6.0

QUOTA = "fleet-sends"  # a2a.quotas: SendMessage to `metered`, per key
QUOTA_PER_MINUTE = 30
QUOTA_CALLS = 60

CONFIG = """\
listen: 127.0.0.1:0
master_key: {master}
storage:
  database_url: {database_url}
  redis_url: redis://{redis_host}:{redis_port}
  redis_prefix: "{prefix}"
  refresh_interval: 30s
  reservation_lease: {lease}s
  spill_dir: {spill_dir}
logging:
  level: warn
providers:
  - name: instant
    kind: mock
  - name: slow
    kind: mock
    mock:
      latency: {slow_latency}s
models:
  - name: plain-model
    targets: [{{provider: instant, model: echo}}]
  - name: rated-model
    targets: [{{provider: instant, model: echo}}]
  - name: priced-model
    targets: [{{provider: instant, model: e2e-priced}}]
  - name: slow-priced-model
    targets: [{{provider: slow, model: e2e-priced}}]
    retry: {{attempts: 1}}
prices:
  - model: e2e-priced
    input_per_mtok: {input_price}
    output_per_mtok: {output_price}
rate_limits:
  - name: fleet-rpm
    scope: key
    models: [rated-model]
    rpm: {rpm}
budgets:
  - name: fleet-budget
    scope: key
    models: [priced-model]
    period: total
    limit_usd: {budget}
  - name: slow-budget
    scope: key
    models: [slow-priced-model]
    period: total
    limit_usd: 1
a2a:
  quotas:
    - name: {quota}
      match: ["metered/SendMessage"]
      per: method
      scope: key
      per_minute: {quota_per_minute}
  agents:
    - name: pair
      urls: [{agent_a}, {agent_b}]
    - name: metered
      urls: [{agent_a}, {agent_b}]
"""


# --- the upstream agents -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agents() -> Iterator[list[str]]:
    """Two replicas (`r1`, `r2`) of e2e/a2a_agent.py, the upstream of the agents `pair` and
    `metered`; yields
    their URLs. Each keeps its tasks in its own memory, so a follow-up only succeeds on the
    replica that owns the task."""
    procs: list[tuple[subprocess.Popen, int]] = []
    try:
        for replica in ("r1", "r2"):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, str(AGENT_SCRIPT), "--port", str(port), "--name", "pair-agent",
                 "--replica", replica],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, bufsize=1,
            )
            procs.append((proc, port))
        for proc, port in procs:
            assert proc.stdout is not None
            # The agent prints nothing before READY; a failed start closes stdout.
            line = proc.stdout.readline().strip()
            if line != f"READY {port}":
                pytest.fail(f"agent on port {port} did not start: {line!r}", pytrace=False)
        yield [f"http://127.0.0.1:{port}" for _, port in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --- the replicas --------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    gw: Gateway
    workdir: Path

    @property
    def origin(self) -> str:
        return self.gw.origin

    def admin(self, method: str, path: str, json: Optional[dict] = None) -> httpx.Response:
        return self.gw.admin(method, path, json=json)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, no settlement. Returns once the port refuses."""
        self.gw.kill()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.gw.port), timeout=0.2).close()
            except OSError:
                return
            time.sleep(0.02)
        raise AssertionError(f"{self.name} still accepts connections after SIGKILL")


@contextlib.contextmanager
def launch_replica(
    tmp_path_factory: pytest.TempPathFactory, stores: Stores, agents: list[str], name: str
) -> Iterator[Replica]:
    """One more replica of the fleet: same config, shared stores, its own working directory."""
    workdir = tmp_path_factory.mktemp(name)
    config = CONFIG.format(
        master=MASTER_KEY,
        database_url=stores.database_url,
        redis_host=REDIS_HOST,
        redis_port=REDIS_PORT,
        prefix=stores.redis_prefix,
        lease=LEASE_S,
        spill_dir=workdir / "spill",
        slow_latency=SLOW_LATENCY_S,
        input_price=INPUT_PER_MTOK,
        output_price=OUTPUT_PER_MTOK,
        rpm=RPM,
        budget=BUDGET_USD,
        quota=QUOTA,
        quota_per_minute=QUOTA_PER_MINUTE,
        agent_a=agents[0],
        agent_b=agents[1],
    )
    with launch_gateway(workdir, config) as gw:
        yield Replica(name=name, gw=gw, workdir=workdir)


def await_change_notices(replicas: list[Replica], via: Replica) -> None:
    """Returns once a key created through `via` is accepted by every replica.

    A replica prints its listening line before its Redis subscription is up; a change made in
    between reaches it only with the resync that follows the subscription (about 0.1 s later).
    A key that arrives well within the 30 s poll proves the replica hears change notices."""
    secret = new_key(via.gw)["secret"]
    with httpx.Client(timeout=TIMEOUT) as http:

        def accepted() -> None:
            statuses = {r.name: chat(http, r, secret).status_code for r in replicas}
            assert set(statuses.values()) == {200}, f"a key created through {via.name}: {statuses}"

        eventually(accepted, timeout=5)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, stores: Stores, agents: list[str]) -> Iterator[list[Replica]]:
    """The three replicas, up for the whole module, each hearing the others' change notices."""
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(launch_replica(tmp_path_factory, stores, agents, f"replica-{i}"))
            for i in (1, 2, 3)
        ]
        for via in replicas:
            await_change_notices(replicas, via)
        yield replicas


@pytest.fixture
def spare(tmp_path_factory, stores: Stores, agents: list[str], fleet: list[Replica]) -> Iterator[Replica]:
    """A fourth replica for a test to kill; stopped (if still alive) when the test ends."""
    with launch_replica(tmp_path_factory, stores, agents, "doomed") as replica:
        await_change_notices([replica], fleet[0])
        yield replica


# --- helpers -------------------------------------------------------------------------------------


class Clients:
    """Keep-alive httpx clients, one per thread, closed together."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.all: list[httpx.Client] = []
        self.lock = threading.Lock()

    def get(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpx.Client(timeout=TIMEOUT)
            with self.lock:
                self.all.append(client)
        return client

    def close(self) -> None:
        for c in self.all:
            c.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    try:
        yield c
    finally:
        c.close()


def chat(
    http: httpx.Client, replica: Replica, secret: str, model: str = "plain-model",
    content: str = "hi", **extra: Any,
) -> httpx.Response:
    return http.post(
        f"{replica.origin}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": model, "messages": [{"role": "user", "content": content}], **extra},
    )


def error_code(res: httpx.Response) -> Optional[str]:
    try:
        return res.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def round_robin(fleet: list[Replica], count: int, call: Callable[[Replica], Any]) -> list[Any]:
    """`call` run `count` times from WORKERS threads, the i-th time on replica i mod 3."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda i: call(fleet[i % len(fleet)]), range(count)))


def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """`check()` once it stops raising AssertionError, or its last failure after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def counter(replica: Replica, budget: str, key_id: str) -> dict:
    """The budget's counter for a key, as GET /admin/v1/budgets reports it (which also reclaims
    lapsed reservations). A counter not used yet reads as zero."""
    res = replica.admin("GET", "/admin/v1/budgets")
    assert res.status_code == 200, res.text
    mine = next(b for b in res.json()["data"] if b["name"] == budget)
    found = [c for c in mine["counters"] if c["id"] == key_id]
    return found[0] if found else {"id": key_id, "spent_usd": 0.0, "reserved_usd": 0.0}


def cost_of(usage: dict) -> float:
    return (usage["prompt_tokens"] * INPUT_PER_MTOK + usage["completion_tokens"] * OUTPUT_PER_MTOK) / 1e6


# --- 1. rate limits ------------------------------------------------------------------------------


def test_rate_limit_holds_across_the_fleet(fleet: list[Replica], clients: Clients) -> None:
    secret = new_key(fleet[0].gw)["secret"]

    def call(replica: Replica) -> tuple[str, int, Optional[str]]:
        res = chat(clients.get(), replica, secret, "rated-model")
        return replica.name, res.status_code, None if res.status_code == 200 else error_code(res)

    started = time.monotonic()
    results = round_robin(fleet, HAMMER, call)
    elapsed = time.monotonic() - started
    # Everything must land in one window for the expected count to be exactly the limit.
    assert elapsed < 50, f"{HAMMER} requests took {elapsed:.1f}s: too slow for a one-minute window"

    admitted = [r for r in results if r[1] == 200]
    refused = [r for r in results if r[1] != 200]
    assert RPM <= len(admitted) <= RPM * 1.05, (
        f"{len(admitted)} of {HAMMER} admitted in {elapsed:.1f}s; the fleet-wide limit is {RPM}"
    )
    assert {(status, code) for _, status, code in refused} == {(429, "rate_limit_exceeded")}, refused[:5]
    # Every replica admitted its share: the limit was not met by one replica alone.
    assert {name for name, _, _ in admitted} == {r.name for r in fleet}


# --- 2. budgets ----------------------------------------------------------------------------------


def test_budget_holds_across_the_fleet(fleet: list[Replica], clients: Clients) -> None:
    created = new_key(fleet[0].gw)
    secret, key_id = created["secret"], created["key"]["id"]
    body = {"content": "spend a little", "max_tokens": 3}
    turn = itertools.count()
    lock = threading.Lock()
    answers: list[httpx.Response] = []

    def spend(replica: Replica) -> httpx.Response:
        res = chat(clients.get(), replica, secret, "priced-model", **body)
        with lock:
            answers.append(res)
        return res

    def worker(_: int) -> None:
        # Race until this thread has been refused three times in a row.
        refusals = 0
        while refusals < 3 and len(answers) < 600:
            res = spend(fleet[next(turn) % len(fleet)])
            refusals = refusals + 1 if res.status_code == 429 else 0

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(worker, range(WORKERS)))
    raced = len(answers)
    assert any(a.status_code == 429 for a in answers), "the race never met the budget"

    # Then one at a time, each after the last settled, until refused: with nothing reserved,
    # a refusal means the spend itself reached the limit.
    def settled() -> dict:
        c = counter(fleet[0], "fleet-budget", key_id)
        assert c["reserved_usd"] == 0, c
        return c

    for i in itertools.count():
        eventually(settled, timeout=5)
        assert i < 100, "the budget never refused a request"
        if spend(fleet[i % len(fleet)]).status_code == 429:
            break

    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert {(a.status_code, error_code(a)) for a in refused} == {(429, "budget_exceeded")}, refused[0].text
    # The most one request cost, as charged, checked against its usage and the prices.
    priciest = max(ok, key=lambda a: float(a.headers["x-tollgate-cost-usd"]))
    one = float(priciest.headers["x-tollgate-cost-usd"])
    assert one == pytest.approx(cost_of(priciest.json()["usage"]), rel=1e-6), priciest.json()

    final = eventually(settled, timeout=5)
    assert BUDGET_USD <= final["spent_usd"] <= BUDGET_USD + one + 1e-9, (
        f"counter spent ${final['spent_usd']:.6f} of ${BUDGET_USD} with one request costing "
        f"${one:.6f}; {len(ok)} admitted, {raced} raced"
    )

    # The ledger (written asynchronously to PostgreSQL) agrees, whichever replica answers.
    def ledger() -> dict:
        res = fleet[1].admin("GET", f"/admin/v1/spend?filter_by=key&filter={key_id}")
        assert res.status_code == 200, res.text
        report = res.json()
        assert report["total_requests"] == len(ok), report
        return report

    report = eventually(ledger, timeout=10)
    assert report["total_cost_usd"] <= BUDGET_USD + one + 1e-9, report
    assert report["total_cost_usd"] == pytest.approx(final["spent_usd"], abs=1e-9), (report, final)


def test_a_killed_replica_leaks_no_reservation(fleet: list[Replica], spare: Replica) -> None:
    created = new_key(fleet[0].gw)
    secret, key_id = created["secret"], created["key"]["id"]
    watcher = fleet[1]
    outcome: dict[str, Any] = {}

    def doomed_request() -> None:
        try:
            with httpx.Client(timeout=TIMEOUT) as http:
                outcome["response"] = chat(http, spare, secret, "slow-priced-model", max_tokens=5)
        except httpx.HTTPError as e:
            outcome["error"] = e

    thread = threading.Thread(target=doomed_request, daemon=True)
    thread.start()

    def reserved() -> dict:
        c = counter(watcher, "slow-budget", key_id)
        assert c["reserved_usd"] > 0, (c, outcome)
        return c

    held = eventually(reserved, timeout=2)
    # While its replica lives, the hold outlasts its lease (it is renewed).
    time.sleep(LEASE_S + 0.5)
    still = counter(watcher, "slow-budget", key_id)
    assert still["reserved_usd"] == pytest.approx(held["reserved_usd"]), (held, still)
    assert thread.is_alive(), f"the slow request ended before the kill: {outcome}"

    spare.kill()
    killed_at = time.monotonic()
    thread.join(timeout=10)
    assert "error" in outcome, f"the request survived its replica: {outcome}"

    def reclaimed() -> dict:
        c = counter(watcher, "slow-budget", key_id)
        assert c["reserved_usd"] == 0, c
        return c

    after = eventually(reclaimed, timeout=LEASE_S + 3, interval=0.1)
    assert time.monotonic() - killed_at <= LEASE_S + 3
    # The request never finished, so nothing was spent either.
    assert after["spent_usd"] == 0, after


# --- 3. revocation -------------------------------------------------------------------------------


def test_revocation_reaches_every_replica_within_a_second(fleet: list[Replica]) -> None:
    created = fleet[0].admin("POST", "/admin/v1/keys", json={"name": f"e2e-{uuid.uuid4().hex[:12]}"})
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["secret"], created.json()["key"]["id"]

    def works_everywhere() -> None:
        with httpx.Client(timeout=TIMEOUT) as http:
            statuses = {r.name: chat(http, r, secret).status_code for r in fleet}
        assert set(statuses.values()) == {200}, statuses

    # Creation travels the same way (the other replicas never read the store per request).
    eventually(works_everywhere, timeout=1.0)

    revoked = fleet[1].admin("POST", f"/admin/v1/keys/{key_id}/revoke")
    revoked_at = time.monotonic()
    assert revoked.status_code == 200, revoked.text

    def refused_by(replica: Replica) -> tuple[float, int, Optional[str]]:
        with httpx.Client(timeout=TIMEOUT) as own:
            while True:
                res = chat(own, replica, secret)
                if res.status_code != 200 or time.monotonic() - revoked_at > 5:
                    return time.monotonic() - revoked_at, res.status_code, error_code(res)
                time.sleep(0.01)

    with ThreadPoolExecutor(len(fleet)) as pool:
        seen = dict(zip((r.name for r in fleet), pool.map(refused_by, fleet)))
    assert all(status == 401 for _, status, _ in seen.values()), seen
    assert all(code == "invalid_api_key" for _, _, code in seen.values()), seen
    slowest = max(after for after, _, _ in seen.values())
    assert slowest <= 1.0, f"revocation took {slowest:.3f}s to reach every replica: {seen}"


# --- 4. A2A --------------------------------------------------------------------------------------


def jsonrpc(
    http: httpx.Client, replica: Replica, secret: str, method: str, params: dict, agent: str = "pair"
) -> httpx.Response:
    """A2A 1.0 JSON-RPC to `agent` through a replica; the response as it came."""
    return http.post(
        f"{replica.origin}/a2a/{agent}/a2a/jsonrpc",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        headers={"Authorization": f"Bearer {secret}", "A2A-Version": "1.0"},
    )


def rpc(replica: Replica, secret: str, method: str, params: dict) -> dict:
    """A2A 1.0 JSON-RPC through a replica; returns the result (the call must succeed)."""
    with httpx.Client(timeout=TIMEOUT) as http:
        res = jsonrpc(http, replica, secret, method, params)
    assert res.status_code == 200, f"{method} via {replica.name}: {res.status_code} {res.text}"
    body = res.json()
    assert "result" in body, f"{method} via {replica.name}: {body}"
    return body["result"]


def user_message(text: str, **ids: str) -> dict:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": text}], **ids}


def send(replica: Replica, secret: str, text: str, **ids: str) -> dict:
    result = rpc(replica, secret, "SendMessage", {"message": user_message(text, **ids)})
    assert "task" in result, result
    return result["task"]


def status_text(task: dict) -> str:
    return "".join(p.get("text", "") for p in task["status"]["message"]["parts"])


def test_a2a_task_outlives_the_replica_that_started_it(fleet: list[Replica], spare: Replica) -> None:
    secret = new_key(fleet[0].gw)["secret"]
    # Two tasks through the doomed replica: its round robin puts them on both agent replicas.
    asks = [send(spare, secret, "ask") for _ in range(2)]
    for task in asks:
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", task
    owners = [status_text(t).rsplit("(", 1)[-1].rstrip(")") for t in asks]
    assert sorted(owners) == ["r1", "r2"], owners

    spare.kill()

    for task, owner, via, then in zip(asks, owners, fleet[1:], fleet[:2]):
        got = rpc(via, secret, "GetTask", {"id": task["id"]})
        assert got["id"] == task["id"], got
        assert got["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", got
        # The follow-up reaches the agent replica that holds the task, or it would not know it.
        done = send(via, secret, "42", taskId=task["id"], contextId=task["contextId"])
        assert done["id"] == task["id"], done
        assert done["status"]["state"] == "TASK_STATE_COMPLETED", done
        assert status_text(done) == f"got '42' for 'ask' from {owner}", done
        final = rpc(then, secret, "GetTask", {"id": task["id"]})
        assert final["status"]["state"] == "TASK_STATE_COMPLETED", final


# --- 5. execution quotas -------------------------------------------------------------------------


def quota_refusal(res: httpx.Response) -> Optional[str]:
    """Why `res` is not the quota's refusal (429, JSON-RPC -32050 naming it, RESOURCE_EXHAUSTED,
    a Retry-After), or None if it is."""
    try:
        error = res.json()["error"]
        (info,) = error["data"]
        shaped = (
            res.status_code == 429
            and error["code"] == -32050
            and QUOTA in error["message"]
            and info["reason"] == "RESOURCE_EXHAUSTED"
            and int(res.headers["retry-after"]) >= 1
        )
    except (ValueError, KeyError, TypeError):
        shaped = False
    return None if shaped else f"{res.status_code} {res.headers.get('retry-after')!r} {res.text}"


def test_a2a_quota_holds_across_the_fleet(fleet: list[Replica], clients: Clients) -> None:
    secret = new_key(fleet[0].gw)["secret"]
    # The key is known everywhere first, so every refusal below is the quota's.
    with httpx.Client(timeout=TIMEOUT) as http:

        def known() -> None:
            statuses = {r.name: chat(http, r, secret).status_code for r in fleet}
            assert set(statuses.values()) == {200}, statuses

        eventually(known, timeout=5)

    def call(replica: Replica) -> tuple[str, httpx.Response]:
        params = {"message": user_message("hello")}
        return replica.name, jsonrpc(clients.get(), replica, secret, "SendMessage", params, "metered")

    started = time.monotonic()
    results = round_robin(fleet, QUOTA_CALLS, call)
    elapsed = time.monotonic() - started
    # Everything must land in one window for the expected count to be exactly the limit.
    assert elapsed < 50, f"{QUOTA_CALLS} sends took {elapsed:.1f}s: too slow for a one-minute window"

    admitted = [name for name, res in results if res.status_code == 200 and "result" in res.json()]
    refused = [(name, res) for name, res in results if res.status_code != 200]
    tally = {r.name: (admitted.count(r.name), sum(n == r.name for n, _ in refused)) for r in fleet}
    assert len(admitted) == QUOTA_PER_MINUTE, (
        f"{len(admitted)} of {QUOTA_CALLS} sends admitted in {elapsed:.1f}s; the fleet-wide quota "
        f"is {QUOTA_PER_MINUTE}. (admitted, refused) per replica: {tally}"
    )
    assert len(refused) == QUOTA_CALLS - QUOTA_PER_MINUTE, f"neither admitted nor refused: {results}"
    wrong = [(name, why) for name, res in refused if (why := quota_refusal(res)) is not None]
    assert not wrong, wrong[:5]
    for _, res in results:
        if res.status_code == 200:
            task = res.json()["result"]["task"]
            assert task["status"]["state"] == "TASK_STATE_COMPLETED", task

    # The quota is spent for the whole fleet: each replica refuses the key now, although none
    # was sent more than 20 of the 60, so none could have spent the 30 alone.
    with httpx.Client(timeout=TIMEOUT) as http:
        after = {
            r.name: quota_refusal(
                jsonrpc(http, r, secret, "SendMessage", {"message": user_message("hello")}, "metered")
            )
            for r in fleet
        }
    assert after == {r.name: None for r in fleet}, after
