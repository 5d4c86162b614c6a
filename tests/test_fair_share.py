"""Fair shares of one decode loop, on the fake model: the queue serves clients in turn, a client's request
larger than its share lets the others go first and still runs when nobody else waits, `ahead` is the
number of jobs admitted before a waiting one, and the API names its clients by key or address."""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from engine.scheduler import END, Limits, Scheduler
from playground.api import ApiSettings, client_of, create_api
from playground.models import ModelHost
from tests.fakes import EOS
from tests.test_containment import alone, job, lm_, outcome, paused, result, wait_for

pytestmark = pytest.mark.usefixtures("closes_schedulers")
ENDLESS = dict(logit_bias={str(EOS): -100})  # no end token: a job runs its whole max_tokens


class Log:
    """What the loop delivered, in order: (name, "steps" | "end" | "error")."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def listener(self, name: str):
        def put(item):
            kind = "end" if item is END else "error" if isinstance(item, BaseException) else "steps"
            self.events.append((name, kind))
            self.on_event(name, kind)

        return put

    def on_event(self, name: str, kind: str) -> None:
        pass

    def first(self, name: str, kind: str) -> int:
        return self.events.index((name, kind))


def test_one_client_sending_n_128_does_not_starve_another_sending_n_1():
    lm = lm_()
    wide, narrow = dict(n=128, seed=1, max_tokens=4, **ENDLESS), dict(seed=2, max_tokens=4, **ENDLESS)
    expected_wide, expected_narrow = alone(lm, [1, 2], wide), alone(lm, [1, 3], narrow)
    scheduler = Scheduler(lm, Limits(max_rows=128))
    log = Log()
    first = scheduler.submit(job(lm, [1, 2], wide), client="A")
    first.get()  # it holds every row: it came when nobody else waited
    with paused(scheduler):
        second = scheduler.submit(job(lm, [1, 2], wide), listener=log.listener("A's second"), client="A")
        other = scheduler.submit(job(lm, [1, 3], narrow), listener=log.listener("B"), client="B")
        assert (other.ahead, second.ahead) == (0, 1)
    wait_for(lambda: ("A's second", "end") in log.events)
    # B ran as soon as A's first request left it a row, and A's second, above its share of 64 rows while B
    # waited, still ran once nobody else waited.
    assert log.first("B", "end") < log.first("A's second", "steps")
    assert outcome(other.job) == expected_narrow and outcome(second.job) == expected_wide
    assert result(first) == (expected_wide, None)


def test_the_queue_serves_clients_in_turn_and_ahead_counts_the_jobs_admitted_before_each():
    lm = lm_()
    scheduler = Scheduler(lm, Limits(max_rows=1))  # one job at a time: the order of admission is plain
    holder = scheduler.submit(job(lm, [1], dict(seed=1, max_tokens=200, **ENDLESS)), client="H")
    holder.get()
    sent = [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("B", 2), ("C", 1)]  # (client, its k-th request)
    log = Log()
    tickets = {}
    promised: list[dict[str, int]] = []  # at each admission, what the waiting tickets said

    def on_event(name: str, kind: str) -> None:
        if kind == "steps" and log.events.count((name, "steps")) == 1:
            promised.append({other: t.ahead for other, t in tickets.items() if not t.admitted.is_set()})

    log.on_event = on_event
    with paused(scheduler):
        for client, k in sent:
            name = f"{client}{k}"
            tickets[name] = scheduler.submit(job(lm, [1, k], dict(seed=k, max_tokens=2, **ENDLESS)),
                                             listener=log.listener(name), client=client)
        assert {name: t.ahead for name, t in tickets.items()} == {"A1": 0, "B1": 1, "C1": 2, "A2": 3, "B2": 4, "A3": 5}
    holder.cancel()
    wait_for(lambda: all((name, "end") in log.events for name in tickets))
    order = list(dict.fromkeys(name for name, kind in log.events if kind == "steps"))
    assert order == ["A1", "B1", "C1", "A2", "B2", "A3"]
    for admitted, said in zip(order, promised):
        assert said == {name: order.index(name) - order.index(admitted) - 1 for name in said}, admitted


def test_jobs_without_a_client_keep_first_in_first_out():
    lm = lm_()
    scheduler = Scheduler(lm, Limits(max_rows=1))
    holder = scheduler.submit(job(lm, [1], dict(seed=1, max_tokens=200, **ENDLESS)))
    holder.get()
    with paused(scheduler):
        tickets = [scheduler.submit(job(lm, [1, k], dict(seed=k, max_tokens=2))) for k in range(4)]
    assert [t.ahead for t in tickets] == [0, 1, 2, 3]
    holder.cancel()
    assert [result(t)[1] for t in tickets] == [None] * 4


def test_the_most_jobs_in_one_step_is_counted_for_the_ui():
    lm = lm_()
    scheduler = Scheduler(lm)
    assert scheduler.stats["most_jobs_in_a_step"] == 0
    result(scheduler.submit(job(lm, [1], dict(max_tokens=1))))  # now the loop knows jobs can share a batch
    with paused(scheduler):
        tickets = [scheduler.submit(job(lm, [1, k], dict(seed=k, n=k, max_tokens=3))) for k in (1, 2, 3)]
    for t in tickets:
        result(t)
    assert scheduler.stats["most_jobs_in_a_step"] == 3  # three jobs, six rows


def test_an_api_client_is_its_key_on_a_server_with_one_and_its_address_on_one_without():
    keyed = ApiSettings(api_key="sesame")
    mine = client_of(keyed, Headers({"authorization": "Bearer sesame"}), "10.0.0.7")
    assert mine == client_of(keyed, Headers({"authorization": "Bearer sesame"}), "10.0.0.8")
    assert mine.startswith("key:") and "sesame" not in mine
    assert client_of(ApiSettings(), Headers({"authorization": "Bearer anything"}), "10.0.0.7") == "ip:10.0.0.7"


def test_the_api_submits_each_request_as_its_client(monkeypatch):
    lm = lm_()
    host = ModelHost(lm)
    scheduler = host.scheduler(lm.name)
    clients = []
    submit = scheduler.submit

    def spy(gen, listener=None, client=None):
        clients.append(client)
        return submit(gen, listener, client)

    monkeypatch.setattr(scheduler, "submit", spy)
    body = {"model": "fake", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 2}
    for address in ("10.0.0.7", "10.0.0.8"):
        api = TestClient(create_api(host, ApiSettings(open_to_remote=True)), client=(address, 5000))
        assert api.post("/v1/chat/completions", json=body).status_code == 200
    assert clients == ["ip:10.0.0.7", "ip:10.0.0.8"]
