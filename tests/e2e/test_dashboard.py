"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright) against a
real backend with real agents: sign in, the fleet, a device, a deployment created with its
preview and watched to the end without reloading, pause, resume and cancel; a read key sees no
write buttons and is refused by the server when it posts anyway; sign out. Screenshots go to
.build/screenshots/."""

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.fleet import Fleet, eventually

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        await launched.close()


async def sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(f"{base}/ui/")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def two_devices_online(fleet: Fleet) -> tuple[str, list[str]]:
    """The API served and two agents connected: the UI's base URL and the devices' ids."""
    fleet.start_api()
    agents = [fleet.add_device() for _ in range(2)]
    ids = sorted(a.device_id for a in agents)  # type: ignore[attr-defined]
    for agent in agents:
        agent.start()
    eventually(lambda: all(fleet.device(i)["online"] for i in ids), what="online")
    return f"http://127.0.0.1:{fleet.port}", ids


async def test_dashboard_in_a_browser(fleet: Fleet, browser: Browser) -> None:
    base, ids = two_devices_online(fleet)
    eventually(lambda: all(fleet.device(i)["last_seen_at"] for i in ids), what="heartbeats")
    bundle = fleet.upload("1.0.0")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await sign_in(page, base, fleet.token)
    cookie = next(c for c in await context.cookies() if c["name"] == "kernex_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    await expect(page.get_by_test_id("devices-total")).to_have_text("2")
    await expect(page.get_by_test_id("devices-online")).to_have_text("2")
    await shot(page, "fleet")
    # A tablet in portrait: nothing wider than the screen, the navigation still there.
    await page.set_viewport_size({"width": 768, "height": 1024})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 768
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    await shot(page, "fleet-tablet")
    await page.set_viewport_size({"width": 1280, "height": 900})
    # Keyboard: the first tab stop is the skip link, and it leads to the content.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"

    # A device page: presence, heartbeats, certificate.
    await page.get_by_role("link", name="Devices").click()
    await page.get_by_label("Search").fill(ids[0])
    await page.get_by_role("button", name="Filter").click()
    await page.get_by_role("link", name=ids[0]).click()
    await expect(page.get_by_role("heading", name=re.compile(ids[0]))).to_be_visible()
    heartbeats = page.locator("section", has=page.get_by_role("heading", name="Recent heartbeats"))
    await expect(heartbeats.locator("table")).to_contain_text("agent_version")
    # Presence history: the agent's birth message that brought it online.
    presence = page.locator("section", has=page.get_by_role("heading", name="Presence history"))
    await expect(presence.locator("tbody tr").first).to_contain_text("online")
    await expect(presence.locator("tbody tr").first).to_contain_text("its birth message")
    await expect(page.locator("dl.facts")).to_contain_text("Certificate")
    await shot(page, "device")

    # A deployment: preview, confirm, then watch it finish without reloading.
    await page.get_by_role("link", name="Deployments").click()
    await page.get_by_role("link", name="New deployment").click()
    await page.get_by_label("Bundle").select_option(bundle["id"])
    await page.get_by_label("Name").fill("browser rollout")
    await page.get_by_label("Waves").fill("1,100%")
    await page.get_by_role("button", name="Preview").click()
    await expect(page.get_by_test_id("preview")).to_contain_text("2 device(s) would receive it")
    await page.get_by_role("button", name="Start this deployment").click()
    await expect(page.get_by_role("heading", name="browser rollout")).to_be_visible()
    await page.evaluate("window.__marker = 'not reloaded'")
    await expect(page.get_by_test_id("status")).to_have_text("completed", timeout=60_000)
    await expect(page.get_by_test_id("outcome")).to_have_text("outcome: succeeded")
    await expect(page.get_by_test_id("count-succeeded")).to_have_text("2")
    assert await page.evaluate("window.__marker") == "not reloaded"
    await shot(page, "deployment")

    # Controls on a deployment that soaks after its first wave.
    with fleet.api as api:
        created = api.post(
            "/deployments",
            json={
                "name": "soaking",
                "bundle_id": fleet.upload("2.0.0")["id"],
                "device_ids": ids,
                "strategy": {"waves": [1, "100%"], "soak_s": 3600},
            },
        )
    assert created.status_code == 201, created.text
    soaking = created.json()["id"]
    await page.goto(f"{base}/ui/deployments/{soaking}")
    await page.get_by_role("button", name="Pause").click()
    await expect(page.get_by_test_id("status")).to_have_text("paused")
    await page.get_by_role("button", name="Resume").click()
    await expect(page.get_by_test_id("status")).to_have_text("running")

    # A read key: no write buttons, and the server refuses a forged post.
    with fleet.api as api:
        reader = api.post("/api-keys", json={"name": "viewer", "scopes": ["read"]}).json()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    await sign_in(page, base, reader["token"])
    await expect(page.get_by_text("(read only)")).to_be_visible()
    await page.goto(f"{base}/ui/deployments/{soaking}")
    await expect(page.locator("[data-action]")).to_have_count(0)
    await page.goto(f"{base}/ui/deployments")
    await expect(page.get_by_role("link", name="New deployment")).to_have_count(0)
    csrf = await page.locator("form.signout input[name=csrf]").get_attribute("value")
    refused = await page.request.post(
        f"{base}/ui/deployments/{soaking}/pause", form={"csrf": csrf or ""}
    )
    assert refused.status == 403
    # A post without the session's token is refused too (what another site could send).
    forged = await page.request.post(f"{base}/ui/deployments/{soaking}/pause", form={"csrf": "x"})
    assert forged.status == 403
    with fleet.api as api:
        assert api.get(f"/deployments/{soaking}").json()["status"] == "running"

    # Back as the writer: cancel, then sign out for good.
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, base, fleet.token)
    await page.goto(f"{base}/ui/deployments/{soaking}")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.get_by_test_id("status")).to_have_text("canceled")
    await page.get_by_role("button", name="Sign out").click()
    await page.goto(f"{base}/ui/")
    await expect(page).to_have_url(re.compile(r"/ui/login$"))
    # Without the cookie nothing of the fleet is served.
    async with httpx.AsyncClient() as anonymous:
        served = await anonymous.get(f"{base}/ui/", follow_redirects=True)
    assert "devices-total" not in served.text and "Sign in" in served.text
    await context.close()


async def test_wrong_key_is_refused_with_a_clear_message(fleet: Fleet, browser: Browser) -> None:
    fleet.start_api()
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{fleet.port}/ui/login")
    await page.get_by_label("API key").fill("kx_not_a_key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("refused")
    await shot(page, "login-refused")
    await page.close()


async def test_failing_devices_come_first_and_can_be_retried(
    fleet: Fleet, browser: Browser
) -> None:
    # A build whose health check fails everywhere: the deployment ends, and the page says at a
    # glance that it failed, which devices and why, above the counts; a retry runs them again.
    base, ids = two_devices_online(fleet)
    broken = fleet.upload("1.0.1", healthy=False)
    deployment = fleet.deploy(broken, ids)

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await sign_in(page, base, fleet.token)
    await page.goto(f"{base}/ui/deployments/{deployment}")
    await page.evaluate("window.__marker = 'not reloaded'")
    await expect(page.get_by_test_id("outcome")).to_have_text("outcome: failed", timeout=90_000)
    failing = page.locator("section.failing")
    await expect(failing.locator("tbody tr")).to_have_count(2)
    for device_id in ids:
        await expect(failing).to_contain_text(device_id)
    await expect(failing).to_contain_text("health_check_failed")
    # Failures are the first thing on the page: the section comes before the counts.
    assert await page.evaluate(
        "document.querySelector('section.failing').compareDocumentPosition("
        "document.querySelector('ul.counts')) & Node.DOCUMENT_POSITION_FOLLOWING"
    )
    assert await page.evaluate("window.__marker") == "not reloaded"
    await shot(page, "deployment-failed")
    first = fleet.executions(deployment)

    await page.get_by_role("button", name="Retry failed devices").click()
    # Every device is tried again (a new attempt each) and fails again, still in plain sight.
    eventually(
        lambda: all(
            row["attempt"] == first[row["device_id"]]["attempt"] + 1
            and row["state"] == first[row["device_id"]]["state"]
            for row in fleet.executions(deployment).values()
        ),
        timeout=90,
        what="both devices retried and failed again",
    )
    await expect(page.get_by_test_id("outcome")).to_have_text("outcome: failed", timeout=30_000)
    await expect(page.locator("section.failing tbody tr")).to_have_count(2)
    # The event stream (it ends with the deployment finished) records who retried how many.
    with fleet.api as api:
        stream = api.get(f"/deployments/{deployment}/events").text
    retried = [
        json.loads(frame.split("\ndata: ", 1)[1])
        for frame in stream.split("\n\n")
        if "\nevent: retried\n" in f"\n{frame}"
    ]
    assert [r["devices"] for r in retried] == [2], stream[-2000:]
    # The list says so too: "completed" is not painted as a success, the outcome is "failed".
    await page.goto(f"{base}/ui/deployments")
    await expect(page.get_by_test_id(f"outcome-{deployment}")).to_have_text("failed")
    row = page.locator("tr", has=page.get_by_test_id(f"outcome-{deployment}"))
    await expect(row.locator(".state")).to_have_class(re.compile(r"\bwith-failures\b"))
    await page.close()
