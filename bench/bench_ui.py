"""The playground as pages see it: tokens/s in real Chromium pages, 1, 4 and 8 at once, against /v1.

The bench starts the app, opens 8 pages in Debian's chromium (playwright) and runs each once, so every
page is warm. Then for 1, 4 and 8 pages at once it clears each page's conversation, types the same
message, clicks Generate in all of them at the same moment, and records in each page, with a MutationObserver, the time of
every change to the visible text of #completions. A page's run ends when that text shows a finish reason
(or, should the UI's wording change, when it has not changed for STALL_S). The UI keeps its default
capture.

Every measurement starts on a quiet machine: the bench first waits until the server and the browser have
finished what came before (a finished run's pages draw its token view, charts and what-if, in the server
and in Chromium, for some seconds after its text is complete; on 2 cores that work would otherwise run
inside the next measurement). A page's tokens/s ends when its text is complete; the server's CPU seconds
per token count the whole run, the finished view drawn after it included, up to when the server is quiet
again. The baseline is the same work through /v1 (stream, logprobs, top_logprobs 5, the same seed,
message and max_tokens) from as many clients at once.

It prints, for each side: tokens/s as seen by the pages or clients (all tokens / time until the last one
finished), the slowest run's time, the server's CPU seconds per generated token (utime + stime of the
server process from /proc, before and after), and for pages the longest gap between two visible updates
of any page while its run was going. Each count runs --rounds times (pages, then clients, alternating) and
the table shows each figure's median; then the ratios the issue's targets need, each the median of the
rounds' own ratios (pages and clients side by side in a round). Asserts nothing about time.

    .venv/bin/python bench/bench_ui.py [--pages 1,4,8] [--tokens 40] [--seed 7] [--threads N] [--rounds 3]

Selectors: #generate, #clear, #message, #knob-max_tokens, #knob-seed (elem_ids) and #completions' text.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from tests.browser import ARGS, CHROMIUM, fill  # noqa: E402
from tests.serving import start_server  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MESSAGE = "Write a short story about a robot who learns to paint."
STALL_S = 8.0  # no visible change for this long after the run began: treat it as finished
TIMEOUT_S = 900.0
QUIET_SERVER = 0.15  # cores: an idle server (uvicorn, Gradio's queue) uses a few hundredths
QUIET_MACHINE = 0.5  # cores, all processes: idle pages and the bench itself use a few tenths
# Background tabs get their timers and rendering throttled; every page here must run as if in front.
BROWSER_ARGS = [*ARGS, "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows"]
FINISHED = re.compile(r"\b(length|stop|eos|tool_calls)\b")  # the finish reasons the UI shows
RUNNING = re.compile(r"generating|waiting", re.I)
TOKENS = re.compile(r"(\d+)\s+tokens")

# Installed in a page before each measured run: the time of every change to #completions' text.
WATCH_JS = """() => {
  if (window.__watch) window.__watch.disconnect();
  const read = () => (document.querySelector('#completions') || {innerText: ''}).innerText;
  window.__changes = [];
  let last = read();
  window.__watch = new MutationObserver(() => {
    const now = read();
    if (now !== last) { last = now; window.__changes.push([Date.now(), now]); }
  });
  window.__watch.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
# Every page clicks Generate at the same moment `at` (ms since the epoch; the pages share the machine's
# clock), as /v1 clients started together do: one click after another, the last page would start a few
# hundred ms after the first on a loaded machine, and that stagger would count as the pages' time.
CLICK_JS = """(at) => { window.__changes = []; window.__clicked = null; setTimeout(() => { window.__clicked = Date.now();
  document.querySelector('#generate').click(); }, Math.max(0, at - Date.now())); }"""
CLICK_LEAD_S = 0.5  # time to schedule every page's click before the first one fires


def server_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, fields 14 and 15


def busy_cores(pid: int | None, window_s: float) -> tuple[float, float]:
    """(cores the process `pid` used, cores the whole machine used) over the next `window_s` seconds."""
    def machine() -> tuple[int, int]:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # busy (all but idle and iowait), all
    cpu0, (busy0, all0) = server_cpu_s(pid) if pid else 0.0, machine()
    time.sleep(window_s)
    cpu1, (busy1, all1) = server_cpu_s(pid) if pid else 0.0, machine()
    return (cpu1 - cpu0) / window_s, os.cpu_count() * (busy1 - busy0) / max(all1 - all0, 1)


def settle(pid: int, limit_s: float = 90.0) -> None:
    """Wait until the server and the whole machine are quiet (what an earlier run left to draw is done)."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        server, machine = busy_cores(pid, 0.5)
        if server < QUIET_SERVER and machine < QUIET_MACHINE:
            return
    print(f"        note: the machine was still busy after {limit_s:.0f} s (server {server:.2f}, all {machine:.2f} cores)")


def cpu_until_quiet(pid: int, limit_s: float = 90.0) -> float:
    """The server's CPU seconds (as server_cpu_s) when it has fallen quiet: read at the start of the first
    half-second in which it used less than QUIET_SERVER of a core."""
    deadline = time.time() + limit_s
    while True:
        cpu = server_cpu_s(pid)
        if busy_cores(pid, 0.5)[0] < QUIET_SERVER or time.time() > deadline:
            return cpu


def page_state(page) -> dict:
    return page.evaluate("() => ({clicked: window.__clicked, changes: window.__changes || []})")


def finished(text: str) -> bool:
    return bool(FINISHED.search(text)) and not RUNNING.search(text)


def page_done(state: dict, now_ms: float) -> bool:
    """Finished once the text showed the run going and then a finish reason (the same seed ends in the
    same text as the warm-up run, so a finished text alone may be the last run's), or stalled."""
    changes = state["changes"]
    if not changes:
        return False
    went = any(not finished(text) for _, text in changes)
    return (went and finished(changes[-1][1])) or now_ms - changes[-1][0] > STALL_S * 1000


def page_result(state: dict) -> dict:
    changes = state["changes"]
    times = [t for t, _ in changes]
    counts = [int(m.group(1)) for _, text in changes if (m := TOKENS.search(text))]
    return {"start": state["clicked"] / 1000, "end": times[-1] / 1000, "first": (times[0] - state["clicked"]) / 1000,
            "tokens": counts[-1] if counts else 0,
            "gap": max((b - a for a, b in zip(times, times[1:])), default=0) / 1000, "updates": len(times)}


def prepare(page, tokens: int, seed: int) -> None:
    page.click("#clear")
    fill(page, "message", MESSAGE)
    fill(page, "knob-max_tokens", str(tokens))
    fill(page, "knob-seed", str(seed))
    page.wait_for_timeout(300)  # let the change events reach the server before the click


def run_pages(pages: list, tokens: int, seed: int, pid: int) -> dict:
    for page in pages:
        prepare(page, tokens, seed)
        page.evaluate(WATCH_JS)
    settle(pid)  # the change events of prepare() included
    cpu = server_cpu_s(pid)
    at = (time.time() + CLICK_LEAD_S) * 1000
    for page in pages:
        page.evaluate(CLICK_JS, at)
    deadline = time.time() + TIMEOUT_S
    states = [None] * len(pages)
    while time.time() < deadline:
        states = [page_state(p) for p in pages]
        if all(page_done(s, time.time() * 1000) for s in states):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("pages did not finish within the timeout")
    cpu = cpu_until_quiet(pid) - cpu  # the finished view that the pages draw next is the UI's cost too
    runs = [page_result(s) for s in states]
    start, end = min(r["start"] for r in runs), max(r["end"] for r in runs)
    total = sum(r["tokens"] for r in runs)
    return {"tok_s": total / (end - start), "wall": end - start, "tokens": total, "cpu_per_tok": cpu / max(total, 1),
            "gap": max(r["gap"] for r in runs), "first": max(r["first"] for r in runs),
            "updates": statistics.mean(r["updates"] for r in runs)}


PAIRED = {"tok_s": lambda u, a: u["tok_s"] / a["tok_s"], "time": lambda u, a: u["wall"] / a["wall"],
          "cpu": lambda u, a: u["cpu_per_tok"] / a["cpu_per_tok"]}


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over rounds (a shared machine's noise moves one round by 20% or more)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def one_client(client: openai.OpenAI, tokens: int, seed: int) -> int:
    count = 0
    chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": MESSAGE}],
                                            max_tokens=tokens, seed=seed, stream=True, logprobs=True, top_logprobs=5)
    for chunk in chunks:
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                count += len(c.logprobs.content)
    return count


def run_clients(url: str, clients: int, tokens: int, seed: int, pid: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    settle(pid)
    cpu, start = server_cpu_s(pid), time.time()
    with ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(lambda _: one_client(client, tokens, seed), range(clients)))
    wall, cpu = time.time() - start, cpu_until_quiet(pid) - cpu
    return {"tok_s": sum(counts) / wall, "wall": wall, "tokens": sum(counts), "cpu_per_tok": cpu / max(sum(counts), 1)}


def main() -> None:
    from playwright import sync_api

    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", default="1,4,8", help="pages (and /v1 clients) at once")
    ap.add_argument("--tokens", type=int, default=40, help="max_tokens of every run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", default=None, help="the server's --threads (default: the app's own)")
    ap.add_argument("--rounds", type=int, default=3, help="pages, then clients, this many times per count; medians")
    args = ap.parse_args()
    counts = [int(c) for c in args.pages.split(",")]
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                    if f in ("avx2", "avx512f", "avx512_bf16")})
    with start_server(*(["--threads", args.threads] if args.threads else [])) as server:
        threads = next((line for line in server.log.read_text().splitlines() if line.startswith("threads:")), "threads: ?")
        print(f"{os.cpu_count()} cores, CPU flags {' '.join(flags)}; server {threads.split(' (')[0]}; "
              f"{args.tokens} tokens per run, seed {args.seed}", flush=True)
        pid = server.proc.pid
        one_client(openai.OpenAI(base_url=server.api, api_key="unused"), 4, args.seed)  # the server's warm-up
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            pages = []
            for _ in range(max(counts)):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(server.url)
                page.wait_for_selector("#generate")
                pages.append(page)
            run_pages(pages, args.tokens, args.seed, pid)  # every page warm: it has run once
            print(f"{'at once':>7} | {'UI tok/s':>8} {'wall s':>7} {'cpu s/tok':>9} {'max gap s':>9} {'1st s':>6} "
                  f"{'updates':>7} | {'API tok/s':>9} {'wall s':>7} {'cpu s/tok':>9}", flush=True)
            results = {}
            for n in counts:
                rounds = [(run_pages(pages[:n], args.tokens, args.seed, pid),
                           run_clients(server.api, n, args.tokens, args.seed, pid)) for _ in range(args.rounds)]
                ui, api = median_run([u for u, _ in rounds]), median_run([a for _, a in rounds])
                ui["worst_gap"] = max(u["gap"] for u, _ in rounds)
                ratios = sorted(u["wall"] / a["wall"] for u, a in rounds)
                # each ratio is taken within a round (pages and clients side by side), then the median
                paired = {k: statistics.median(f(u, a) for u, a in rounds) for k, f in PAIRED.items()}
                results[n] = ui, api, paired
                print(f"{n:>7} | {ui['tok_s']:>8.1f} {ui['wall']:>7.2f} {ui['cpu_per_tok']:>9.4f} {ui['gap']:>9.2f} "
                      f"{ui['first']:>6.2f} {ui['updates']:>7.0f} | {api['tok_s']:>9.1f} {api['wall']:>7.2f} "
                      f"{api['cpu_per_tok']:>9.4f}", flush=True)
                if args.rounds > 1:
                    print(f"        each round's time, pages / clients: {', '.join(f'{r:.2f}' for r in ratios)}; "
                          f"longest gap {ui['worst_gap']:.2f} s")
                if ui["tokens"] != api["tokens"]:
                    print(f"        note: pages made {ui['tokens']} tokens, clients {api['tokens']}")
            browser.close()
    print("\nratios, each the median of the rounds' own ratios (the issue's targets in brackets):")
    if 1 in results:
        print(f"  one page / one /v1 client, tokens/s:      {results[1][2]['tok_s']:.2f}  [>= 0.8]")
    for n in (4, 8):
        if n in results:
            print(f"  {n} pages / {n} /v1 clients, time:          {results[n][2]['time']:.2f}  [<= 1.3]")
    for n, (_, _, paired) in results.items():
        print(f"  CPU s/token, UI / API, {n} at once:         {paired['cpu']:.2f}  [<= 1.3]")
    if 1 in results and 4 in results:
        print(f"  4 pages / 1 page, time (medians):         {results[4][0]['wall'] / results[1][0]['wall']:.2f}  [<= 2.5]")
    if max(counts) in results:
        ui = results[max(counts)][0]
        print(f"  longest gap between visible updates, {max(counts)} pages: {ui['gap']:.2f} s (median of rounds; "
              f"worst {ui['worst_gap']:.2f} s)  [< 0.5]")


if __name__ == "__main__":
    main()
