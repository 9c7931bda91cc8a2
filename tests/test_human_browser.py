"""The human study in a real browser: `python -m pipeline.human serve` driven by headless Chromium.

Two annotators, invited with `python -m pipeline.human invite`, open their links and vote on every
pair of a small study (alice with the keyboard, bob with the mouse), alice reloads mid-way, the
server is killed with SIGKILL and restarted, voting goes on; then the export must hold every
acknowledged vote exactly once and the win rate the votes imply. A second test is the attacker:
a browser typing alice's name, and a page of another origin posting to the study from alice's.
Screenshots go to results/default/ with NEFTUNE_SCREENSHOTS=1, else to the test's tmp dir.
Needs Debian's chromium and chromium-driver, and selenium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.human import make_experiment
from tests.support.skips import needs_chromium, needs_selenium

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.e2e, needs_chromium]
webdriver = needs_selenium()
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

RECORDS = [  # (instruction, base answer, +NEFT answer): +NEFT answers longer, as in the paper
    (
        "Give three tips for staying healthy.",
        "Eat well, sleep, exercise.",
        "1. Eat a balanced diet with plenty of vegetables and fruit.\n2. Sleep seven to nine hours "
        "a night.\n3. Move every day: even a brisk 30-minute walk helps.",
    ),
    (
        "What is the capital of Australia?",
        "Sydney.",
        "The capital of Australia is Canberra. Sydney is the largest city, but Canberra was chosen "
        "as a compromise between Sydney and Melbourne.",
    ),
    (
        "Translate 'good morning' into French.",
        "Bonjour.",
        "'Good morning' in French is 'Bonjour'. In the evening you would say 'Bonsoir'.",
    ),
    (
        "Write a haiku about autumn.",
        "Leaves fall down.\nIt is cold.\nAutumn is here.",
        "Crimson maples fall,\nwhispering to the cold earth—\nthe year exhales slow.",
    ),
    (
        "Explain what a prime number is.",
        "A number divisible by 1 and itself.",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, "
        "e.g. 2, 3, 5, 7 and 11. 4 is not prime, since 2 divides it.",
    ),
    (
        "Suggest a name for a bakery.",
        "Bread Shop.",
        "How about 'The Rolling Scone'? It is playful, easy to remember, and says what you sell.",
    ),
    (
        "Convert 100 degrees Fahrenheit to Celsius.",
        "About 37.8 °C.",
        "(100 − 32) × 5/9 ≈ 37.8 °C, a little above normal body temperature.",
    ),
    (
        "Name two renewable sources of energy.",
        "Solar and wind.",
        "Two renewable sources are solar power, from sunlight, and wind power, from turbines.",
    ),
]
PLAN = {"alice": "ABtBAtAB", "bob": "BBAtABBA"}  # the n-th vote of each annotator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m pipeline.human serve` in a subprocess, killable with SIGKILL."""

    def __init__(self, results: Path, port: int, log: Path):
        self.cmd = [
            sys.executable,
            "-m",
            "pipeline.human",
            "serve",
            "experiment=exp",
            "--results",
            str(results),
            "--port",
            str(port),
        ]
        self.url, self.log, self.proc = f"http://127.0.0.1:{port}", log, None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=fh, stderr=fh)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def chrome(profile: Path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)


def shown(driver) -> dict:
    el = driver.find_element(By.ID, "progress")
    return {
        "el": el,
        "pair": int(el.get_attribute("data-pair")),
        "progress": el.text,
        "A": driver.find_element(By.ID, "answer-A").text,
    }


def vote(driver, name: str, n: int, cast: list) -> None:
    """The n-th vote of `name` on the shown pair; returns once the next page has loaded (the
    server committed and acknowledged it). Records (annotator, pair, preference) in `cast`."""
    page, choice = shown(driver), PLAN[name][n]
    shown_a, (_, base, neft) = " ".join(page["A"].split()), RECORDS[page["pair"]]
    assert shown_a in (" ".join(base.split()), " ".join(neft.split()))
    neft_is_a = shown_a == " ".join(neft.split())
    pref = 1.5 if choice == "t" else (2.0 if (choice == "A") == neft_is_a else 1.0)
    if name == "alice":  # keyboard shortcuts
        driver.find_element(By.TAG_NAME, "body").send_keys(choice.lower())
    else:  # the mouse, with the optional blind length check now and then
        if n % 3 == 0:
            driver.find_element(By.CSS_SELECTOR, "input[name=longer][value=B]").click()
        driver.find_element(By.ID, {"A": "vote-A", "B": "vote-B", "t": "vote-tie"}[choice]).click()
    WebDriverWait(driver, 10).until(ec.staleness_of(page["el"]))
    WebDriverWait(driver, 10).until(
        lambda d: d.find_elements(By.ID, "progress") or d.find_elements(By.ID, "done")
    )
    cast.append((name, page["pair"], pref))


def invite_link(results: Path, label: str, base_url: str) -> str:
    """`python -m pipeline.human invite`: the link it prints for the annotator `label`."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.human",
            "invite",
            "experiment=exp",
            "--results",
            str(results),
            "--label",
            label,
            "--base-url",
            base_url,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return re.search(rf"^{re.escape(base_url)}/invite/\S+$", out, flags=re.M).group(0)


def login(driver, link: str, name: str) -> None:
    """Open the invite link, check whom it invites, press Start."""
    driver.get(link)
    assert driver.find_element(By.ID, "invited").text.endswith(f"as {name}.")
    driver.find_element(By.ID, "start").click()
    WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "progress")))


def export_annotations(results: Path, out: Path) -> list[dict]:
    """`python -m pipeline.human export` of experiment exp into out; the annotations it wrote."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.human",
            "export",
            "experiment=exp",
            "--results",
            str(results),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.read_text())


def test_two_annotators_reload_and_sigkill(tmp_path):
    started = time.time()
    results = make_experiment(tmp_path, records=RECORDS)
    shots = (
        ROOT / "results" / "default" if os.environ.get("NEFTUNE_SCREENSHOTS") == "1" else tmp_path
    )
    server = Server(results, free_port(), tmp_path / "server.log")
    links = {name: invite_link(results, name, server.url) for name in PLAN}
    server.start()
    drivers, cast = {}, []
    try:
        for name in PLAN:
            drivers[name] = chrome(tmp_path / f"profile-{name}")
            login(drivers[name], links[name], name)
        alice, bob = drivers["alice"], drivers["bob"]
        for n in range(3):
            vote(alice, "alice", n, cast)
            vote(bob, "bob", n, cast)
        before = shown(alice)
        alice.refresh()  # a reload shows the same pair and progress
        after = shown(alice)
        assert (after["pair"], after["progress"]) == (before["pair"], "4 / 8")
        vote(alice, "alice", 3, cast)
        bob.save_screenshot(str(shots / "human_study_vote.png"))
        server.kill()  # every vote so far was acknowledged; alice's open page has a nonce
        server.start()
        bob.refresh()
        assert shown(bob)["progress"] == "4 / 8"
        for n in range(4, 8):
            vote(alice, "alice", n, cast)
        for n in range(3, 8):
            vote(bob, "bob", n, cast)
        for driver in drivers.values():
            assert driver.find_elements(By.ID, "done")
        alice.set_window_size(1280, 1500)  # the whole section in one screenshot
        alice.get(server.url + "/report")
        WebDriverWait(alice, 10).until(ec.presence_of_element_located((By.TAG_NAME, "table")))
        alice.save_screenshot(str(shots / "human_study_report.png"))
    finally:
        for driver in drivers.values():
            driver.quit()
        server.kill()
    anns = export_annotations(results, tmp_path / "annotations.json")
    got = sorted((a["annotator"], a["pair_id"], a["preference"]) for a in anns)
    assert got == sorted(cast) and len(cast) == 2 * len(RECORDS)
    assert len({(a, p) for a, p, _ in cast}) == len(cast)  # every pair once per annotator
    from pipeline.metrics.winrate import winrate_metrics

    expected = 100 * sum(p - 1 for _, _, p in cast) / len(cast)
    assert winrate_metrics(anns)["win_rate"] == pytest.approx(expected)
    log = server.log.read_text()
    assert "GET /invite/<token>" in log  # the access log shows the links' visits, not their tokens
    assert not any(link.rsplit("/", 1)[1] in log for link in links.values())
    assert time.time() - started < 60


def test_made_up_names_and_other_origins_are_refused(tmp_path):
    """A second browser typing "alice" gets no session; a page of another origin (same site:
    127.0.0.1, another port, so alice's SameSite cookies do go along) that posts a valid invite
    of the attacker's from alice's browser is refused, and alice stays alice."""
    results = make_experiment(tmp_path, records=RECORDS)
    server = Server(results, free_port(), tmp_path / "server.log")
    alice_link = invite_link(results, "alice", server.url)
    mallory_token = invite_link(results, "mallory", server.url).rsplit("/", 1)[1]
    evil_dir, evil_port = tmp_path / "evil", free_port()
    evil_dir.mkdir()
    (evil_dir / "index.html").write_text(
        f'<form id="f" method="post" action="{server.url}/start">'
        f'<input name="name" value="mallory"><input name="token" value="{mallory_token}">'
        '</form><script>document.getElementById("f").submit()</script>'
    )
    evil = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(evil_port), "--bind", "127.0.0.1"],
        cwd=evil_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server.start()
    drivers = {}
    try:
        drivers["other"] = other = chrome(tmp_path / "profile-other")
        other.get(server.url + "/")
        other.find_element(By.ID, "token").send_keys("alice")
        other.find_element(By.ID, "start").click()
        WebDriverWait(other, 10).until(ec.presence_of_element_located((By.ID, "message")))
        assert "unknown or was revoked" in other.find_element(By.ID, "message").text
        other.get(server.url + "/vote")
        assert not other.find_elements(By.ID, "progress")  # back on the start page
        drivers["alice"] = alice = chrome(tmp_path / "profile-alice")
        login(alice, alice_link, "alice")
        vote(alice, "alice", 0, [])
        alice.get(f"http://127.0.0.1:{evil_port}/")  # the page posts at once
        WebDriverWait(alice, 10).until(ec.url_to_be(server.url + "/start"))
        WebDriverWait(alice, 10).until(ec.presence_of_element_located((By.ID, "message")))
        assert "cross-site request" in alice.find_element(By.ID, "message").text
        alice.get(server.url + "/vote")
        assert alice.find_element(By.CSS_SELECTOR, ".who").text == "alice"
        assert shown(alice)["progress"] == "2 / 8"
    finally:
        for driver in drivers.values():
            driver.quit()
        server.kill()
        evil.kill()
        evil.wait(timeout=10)
