"""The intra-op thread count: one per process, chosen at start, and part of the system_fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import app
from engine.threads import MAX_DEFAULT, default_threads, usable_cores, wait_policy
from tests.serving import ROOT

# A process as app.main starts it: the flag sets the count, then the fingerprint is read on the main
# thread and on a thread started afterwards (as the scheduler's decode thread and request threads are).
PROCESS = """
import json, os, sys, threading, types
import app
app.configure_threads(app.parse_args(sys.argv[1:]))
from playground.api_format import fingerprint
from engine.threads import current_threads
lm = types.SimpleNamespace(name="m", dtype="torch.float32", device="cpu")
later = {}
worker = threading.Thread(target=lambda: later.update(threads=current_threads(), fingerprint=fingerprint(lm)))
worker.start(); worker.join()
print(json.dumps({"fingerprint": fingerprint(lm), "later": later, "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def in_processes(*arg_lists: list[str], env: dict | None = None) -> list[dict]:
    """One process per argument list, started together (the fingerprint hashes the engine's source as
    each process finds it, so they should read the same one)."""
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for args in arg_lists]
    outs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_one_core_is_left_for_the_ui_http_and_browser_work():
    assert [default_threads(cores)[0] for cores in (1, 2, 3, 4)] == [1, 1, 2, 3]


def test_many_cores_get_at_most_the_cap():
    assert default_threads(64)[0] == MAX_DEFAULT
    assert str(MAX_DEFAULT) in default_threads(64)[1]


def test_the_default_says_why():
    assert "2 cores" in default_threads(2)[1]


def test_threads_on_every_core_wait_passively_and_with_a_core_free_spin():
    assert wait_policy(threads=2, cores=2) == "PASSIVE"
    assert wait_policy(threads=1, cores=2) is None  # libgomp's own: spin a while, then sleep


def test_a_process_whose_threads_take_every_core_waits_passively():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    every_core, one_free = str(usable_cores()), str(max(usable_cores() - 1, 1))
    taking_all, leaving_one = in_processes(["--threads", every_core], ["--threads", one_free], env=env)
    assert taking_all["wait_policy"] == ("PASSIVE" if usable_cores() > 1 else None)
    assert leaving_one["wait_policy"] is None


def test_a_wait_policy_the_user_set_is_kept():
    [process] = in_processes(["--threads", str(usable_cores())], env={**os.environ, "OMP_WAIT_POLICY": "ACTIVE"})
    assert process["wait_policy"] == "ACTIVE"


def test_threads_come_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("PLAYGROUND_THREADS", raising=False)
    assert app.parse_args([]).threads is None  # the policy's default, chosen at start
    assert app.parse_args(["--threads", "3"]).threads == 3
    monkeypatch.setenv("PLAYGROUND_THREADS", "2")
    assert app.parse_args([]).threads == 2


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_threads_must_be_a_positive_integer(bad, capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--threads", bad])
    assert "--threads: must be an integer >= 1" in capsys.readouterr().err


def test_a_thread_started_later_uses_the_count_set_at_start():
    [process] = in_processes(["--threads", "1"])
    assert process["later"]["threads"] == 1


def test_the_fingerprint_is_the_same_for_the_same_thread_count():
    first, second = in_processes(["--threads", "1"], ["--threads", "1"])
    assert first["fingerprint"] == second["fingerprint"] == first["later"]["fingerprint"]


def test_the_fingerprint_differs_between_thread_counts():
    one, two = in_processes(["--threads", "1"], ["--threads", "2"])
    assert one["fingerprint"] != two["fingerprint"]
