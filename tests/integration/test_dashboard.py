"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium 4 through
Debian's chromedriver (nothing is downloaded). One controller with a local endpoint (applied
at once) and a gated one (its plans wait for an admin). Screenshots of each page go to
test-artifacts/dashboard/ (or $CLOUDPILOT_TEST_ARTIFACTS)."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LOCAL, REPO, Controller, end_controller, new_controller, sh, wait_until

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian packages chromium and chromium-driver missing (make test installs them)")]

GATED = {**LOCAL, "name": "gated", "auto_apply": False, "max_machines": 1}
ARTIFACTS = Path(os.environ.get("CLOUDPILOT_TEST_ARTIFACTS", REPO / "test-artifacts")) \
    / "dashboard"


@pytest.fixture(scope="module")
def ctrl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    root = tmp_path_factory.mktemp("dashboard")
    key = root / "id_test"  # never used to reach anything: the joined host does not answer
    key.write_text("not a key\n")
    key.chmod(0o600)
    hosts = {"name": "hosts", "driver": "ssh", "max_machines": 2, "idle_timeout": 2,
             "ssh": {"user": "root", "key": str(key), "connect_timeout": 2,
                     "retry_after": 60}}
    c = new_controller(root, [LOCAL, GATED, hosts], sample_interval=1)
    c.start()
    yield c
    end_controller(c)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    assert CHROMIUM is not None
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-gpu"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    d.set_page_load_timeout(20)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


def shot(d: Any, name: str) -> None:
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def login(d: Any, ctrl: Controller, who: str) -> None:
    from selenium.webdriver.common.by import By

    d.delete_all_cookies()
    d.get(ctrl.url + "/")
    assert "/login" in d.current_url  # not logged in: sent to the login page
    d.find_element(By.ID, "token").send_keys(ctrl.tokens[who])
    d.find_element(By.ID, "login").click()
    wait_until(lambda: d.current_url.rstrip("/") == ctrl.url, 10, what="the overview")
    # the session cookie: HttpOnly (scripts cannot read it), SameSite=Strict
    cookie = d.get_cookie("cloudpilot_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "cloudpilot_session" not in d.execute_script("return document.cookie")


def open_live(d: Any, url: str) -> None:
    """Open a page, wait for its event stream, and mark the window: a reload would lose it."""
    from selenium.webdriver.common.by import By

    d.get(url)
    if not d.find_elements(By.ID, "live-status"):
        raise AssertionError(f"{d.current_url}: {re.findall('ERR_[A-Z_]+', d.page_source)}")
    wait_until(lambda: d.find_element(By.ID, "live-status").text == "live", 10,
               what="the event stream")
    d.execute_script("window.notReloaded = true")


def still_same_page(d: Any) -> bool:
    return bool(d.execute_script("return window.notReloaded === true"))


def cell_state(d: Any, css: str) -> str | None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(d.find_element(By.CSS_SELECTOR, css).get_attribute("data-state"))
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def machines_shown(d: Any, site: str) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [e.get_attribute("id") for e in d.find_elements(
            By.CSS_SELECTOR, f"#site-{site} tr[id^=machine-]")]
    except StaleElementReferenceException:
        return ["(changing)"]


def test_user_watches_jobs_and_machines_live(ctrl: Controller, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    login(d, ctrl, "alice")

    # the endpoints page: a local machine appears for the job, then goes when idle
    open_live(d, ctrl.url + "/endpoints")
    assert machines_shown(d, "local") == []
    [first] = ctrl.submit("alice", sh("echo first; sleep 1", endpoints=["local"]))
    wait_until(lambda: machines_shown(d, "local"), 20, 0.2, "a machine on the endpoints page")
    shot(d, "endpoints")
    ctrl.wait_state(first, "done")
    wait_until(lambda: machines_shown(d, "local") == [], 30, 0.3,
               "the idle machine to leave the endpoints page")
    assert still_same_page(d)

    # the jobs page: a job submitted through the API appears and reaches done
    open_live(d, ctrl.url + "/jobs")
    [job] = ctrl.submit("alice", sh("echo hello from the dashboard test; sleep 1",
                                    endpoints=["local"]))
    wait_until(lambda: cell_state(d, f"#job-{job}"), 10, 0.2, "the job on the jobs page")
    wait_until(lambda: cell_state(d, f"#job-{job}") == "done", 40, 0.2,
               "the job to show done")
    assert still_same_page(d)
    shot(d, "jobs")
    d.set_window_size(390, 844)  # a phone
    shot(d, "jobs-phone")
    d.set_window_size(1280, 900)

    # the job's page: events, output, attempts
    d.get(f"{ctrl.url}/jobs/{job}")
    assert d.find_element(By.ID, "job-state").text == "done"
    assert "hello from the dashboard test" in d.find_element(By.ID, "stdout").text
    assert d.find_element(By.ID, "attempts").text.startswith("1 ")
    shot(d, "job")
    d.get(ctrl.url + "/")
    counts = d.find_element(By.CSS_SELECTOR, "#job-counts [data-state=done] .n").text
    assert int(counts) == 2
    shot(d, "overview")
    d.get(ctrl.url + "/machines?all=1")
    assert "local-0001" in d.find_element(By.ID, "machines").text
    shot(d, "machines")

    # other owners' jobs are not shown; admin pages are refused
    [bobs] = ctrl.submit("bob", sh("echo bob", endpoints=["local"]))
    d.get(ctrl.url + "/jobs")
    assert not d.find_elements(By.ID, f"job-{bobs}")
    assert d.find_elements(By.ID, f"job-{job}")
    for path in ("/plans", "/scheduler"):
        d.get(ctrl.url + path)
        assert "is for admins" in d.find_element(By.ID, "refused").text
        assert not d.find_elements(By.CSS_SELECTOR, "button[id^=approve-]")
    shot(d, "refused")
    ctrl.wait_state(bobs, "done")

    # issue 25: the usage page, alice's own rows only, with a bar per day; other views refused
    d.get(ctrl.url + "/usage")
    names = {e.get_attribute("data-name")
             for e in d.find_elements(By.CSS_SELECTOR, "#usage tr[data-name]")}
    assert names == {"alice"}
    assert d.find_elements(By.CSS_SELECTOR, "#usage-chart-2 rect.bar")
    assert not d.find_elements(By.ID, "usage-by")
    d.get(ctrl.url + "/usage?by=group")
    assert "is for admins" in d.find_element(By.ID, "refused").text
    d.get(ctrl.url + "/usage?since=soon")
    assert "bad window" in d.find_element(By.ID, "usage-error").text


def pending_plan(ctrl: Controller) -> int:
    def pending() -> int | None:
        with sqlite3.connect(ctrl.database) as c:
            row = c.execute("SELECT id FROM plans WHERE endpoint = 'gated' AND"
                            " state = 'pending'").fetchone()
        return row[0] if row else None

    return int(wait_until(pending, 20, 0.2, "a pending plan on the gated endpoint"))


def not_approved(ctrl: Controller, plan_id: int) -> bool:
    """Nobody approved it (the scheduler may have replaced it by a newer plan meanwhile)."""
    with sqlite3.connect(ctrl.database) as c:
        state, by = c.execute("SELECT state, approved_by FROM plans WHERE id = ?",
                              (plan_id,)).fetchone()
    return state in ("pending", "superseded") and by is None


def plan_state(ctrl: Controller, plan_id: int) -> str:
    with sqlite3.connect(ctrl.database) as c:
        return str(c.execute("SELECT state FROM plans WHERE id = ?", (plan_id,)).fetchone()[0])


def test_admin_approves_a_pending_plan(ctrl: Controller, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    login(d, ctrl, "admin")
    open_live(d, ctrl.url + "/plans")
    [job] = ctrl.submit("bob", sh("echo gated", endpoints=["gated"]))
    plan = pending_plan(ctrl)
    # the pending plan shows up without a reload, with its diff
    wait_until(lambda: d.find_elements(By.ID, f"approve-{plan}"), 15, 0.2,
               "the approve button")
    assert still_same_page(d)
    assert "+ gated-0001" in d.find_element(By.ID, f"plan-{plan}").text
    shot(d, "plans")
    d.find_element(By.ID, f"approve-{plan}").click()
    wait_until(lambda: d.find_elements(By.ID, "message"), 10, what="the outcome banner")
    assert f"plan {plan} approved" in d.find_element(By.ID, "message").text
    wait_until(lambda: plan_state(ctrl, plan) == "applied", 20, 0.2, "the plan to be applied")
    with sqlite3.connect(ctrl.database) as c:
        approved_by = c.execute("SELECT approved_by FROM plans WHERE id = ?",
                                (plan,)).fetchone()[0]
    assert approved_by.startswith("admin token")
    ctrl.wait_state(job, "done", timeout=40)

    d.get(ctrl.url + "/scheduler")
    assert d.find_elements(By.ID, "decision-gated")
    shot(d, "scheduler")

    # issue 25: the usage page, every owner's rows for an admin, and the idle money
    d.get(ctrl.url + "/usage?by=owner&since=1d")
    names = {e.get_attribute("data-name")
             for e in d.find_elements(By.CSS_SELECTOR, "#usage tr[data-name]")}
    assert {"alice", "bob"} <= names
    assert "(idle)" in d.find_element(By.ID, "usage").text
    shot(d, "usage")


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin (another port of 127.0.0.1) whose page posts a form to the controller."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<html><body><form id="f" method="post" action="{self.target}">'
                '<input name="csrf" value="guessed"></form>'
                '<script>document.getElementById("f").submit()</script></body></html>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_forged_cross_site_posts_are_refused(ctrl: Controller, browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    d = browser
    login(d, ctrl, "admin")
    ctrl.submit("carol", sh("echo gated again", endpoints=["gated"]))
    plan = pending_plan(ctrl)

    # a page on another origin makes the logged-in admin's browser post an approval
    _Attacker.target = f"{ctrl.url}/ui/plans/{plan}/approve"
    # threading: Chromium opens a spare connection that a one-at-a-time server would wait on
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        d.get(f"http://127.0.0.1:{server.server_port}/")
        wait_until(lambda: d.current_url.startswith(ctrl.url), 10, what="the forged post")
        assert "refused" in d.page_source
    finally:
        server.shutdown()
        server.server_close()
    assert not_approved(ctrl, plan)

    # the same with a client that holds the session cookie: no CSRF token, a wrong one,
    # or another origin: all refused, nothing changes
    sid = d.get_cookie("cloudpilot_session")["value"]
    page = httpx.get(ctrl.url + "/plans", cookies={"cloudpilot_session": sid})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    plan = pending_plan(ctrl)
    url = f"{ctrl.url}/ui/plans/{plan}/approve"
    cookies = {"cloudpilot_session": sid}
    for data, headers in (({}, {}), ({"csrf": "wrong"}, {}),
                          ({"csrf": csrf.group(1)}, {"Origin": "http://evil.example"})):
        r = httpx.post(url, data=data, headers=headers, cookies=cookies)
        assert r.status_code == 403, r.text
    assert not_approved(ctrl, plan)
    # a login form posted from elsewhere (no login cookie) is refused too
    r = httpx.post(ctrl.url + "/login", data={"token": ctrl.tokens["admin"], "csrf": "x"})
    assert r.status_code == 403
    # with the page's token, from this origin, it works
    plan = pending_plan(ctrl)
    r = httpx.post(f"{ctrl.url}/ui/plans/{plan}/approve", data={"csrf": csrf.group(1)},
                   cookies=cookies, headers={"Origin": ctrl.url})
    assert r.status_code == 303 and "approved" in r.headers["location"], r.headers
    assert plan_state(ctrl, plan) in ("approved", "applying", "applied")  # the loop may be at it

    # take the gated endpoint down and up again from its site on the endpoints page
    def site_state() -> str:
        try:
            return str(d.find_element(By.CSS_SELECTOR, "#site-gated h2 .state").text)
        except StaleElementReferenceException:  # the live part was just reloaded
            return ""

    def click(css: str) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
            return True
        except StaleElementReferenceException:
            return False

    d.get(ctrl.url + "/endpoints")
    wait_until(lambda: click("form[action='/ui/endpoints/gated/down'] button"), 5)
    wait_until(lambda: d.find_elements(By.ID, "message"), 10, what="the outcome banner")
    wait_until(lambda: site_state() == "down", 15, 0.3, "the endpoint to show down")
    with sqlite3.connect(ctrl.database) as c:
        assert c.execute("SELECT down_by FROM endpoints WHERE name = 'gated'").fetchone()[0]
    wait_until(lambda: click("form[action='/ui/endpoints/gated/up'] button"), 5)
    wait_until(lambda: site_state() == "ok", 15, 0.3, "the endpoint to show up again")

    # a host joins the SSH endpoint from its site, then leaves; bad input changes nothing
    def join(name: str, address: str) -> None:
        form = "form[action='/ui/endpoints/hosts/hosts']"
        d.find_element(By.CSS_SELECTOR, f"{form} input[name=name]").send_keys(name)
        d.find_element(By.CSS_SELECTOR, f"{form} input[name=address]").send_keys(address)
        port = d.find_element(By.CSS_SELECTOR, f"{form} input[name=port]")
        port.clear()
        port.send_keys("1")  # nothing listens there
        d.find_element(By.CSS_SELECTOR, f"{form} button").click()
        wait_until(lambda: d.find_elements(By.CSS_SELECTOR, "#message, #error"), 10,
                   what="the outcome banner")

    d.get(ctrl.url + "/endpoints")
    join("Bad Name", "127.0.0.1")
    assert "host not joined: name" in d.find_element(By.ID, "error").text
    join("h1", "127.0.0.1")
    assert "host h1 joins hosts" in d.find_element(By.ID, "message").text
    assert d.find_elements(By.ID, "host-hosts-h1")
    with ctrl.client() as api:
        assert [h["name"] for h in api.get("/api/v1/endpoints/hosts/hosts").json()] == ["h1"]
    wait_until(lambda: click("form[action='/ui/endpoints/hosts/hosts/h1/leave'] button"), 5)
    wait_until(lambda: d.find_elements(By.ID, "message"), 10, what="the outcome banner")
    with ctrl.client() as api:
        [h1] = api.get("/api/v1/endpoints/hosts/hosts").json()
    assert h1["membership"] == "left"
    shot(d, "endpoints-admin")
