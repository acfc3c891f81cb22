// End to end in a real browser: Debian's Chromium, driven by playwright-core, opens the
// Converse.js page Starling serves at /, logs in two users in two pages, one sends a
// message and the other sees it. A screenshot of the receiving page is kept in
// $ARTIFACTS (conformance/.work/web/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.STARLING_HTTP;
const ARTIFACTS = process.env.ARTIFACTS || ".";

async function login(context, user, password, fragment = "") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${user}] page error:`, e.message));
  await page.goto(BASE + "/" + fragment);
  await page.waitForSelector("converse-root", { timeout: 30000 });
  // locked_domain: the username alone is enough.
  await page.fill("#converse-login-jid", user, { timeout: 30000 });
  await page.fill("#converse-login-password", password);
  await page.click("converse-login-form button[type=submit], converse-login-form input[type=submit]");
  await page.waitForSelector("converse-roster, #controlbox .controlbox-section", { timeout: 30000 });
  return page;
}

test("two Converse.js pages chat through Starling", async () => {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
      "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
    // launch() gives Chromium a fresh temporary profile of its own (it refuses
    // --user-data-dir), so no state carries over between runs.
  });
  try {
    // Separate contexts: separate storage, so two independent Converse sessions.
    const dave = await login(await browser.newContext(), "dave", "davepass");
    // Converse opens a chat box for the JID in this URL fragment once logged in.
    const carol = await login(await browser.newContext(), "carol", "carolpass",
      "#converse/chat?jid=dave@localhost");
    const textarea = "converse-chat-message-form textarea, .chat-textarea";
    await carol.waitForSelector(textarea, { timeout: 30000 });
    await carol.fill(textarea, "hello from the browser");
    await carol.press(textarea, "Enter");
    // Dave's roster shows carol under "New messages" with an unread count; opening that
    // chat shows the message.
    try {
      await dave.getByText(/carol@localhost/).first().click({ timeout: 30000 });
      await dave.waitForSelector("text=hello from the browser", { timeout: 30000 });
    } finally {
      await dave.screenshot({ path: join(ARTIFACTS, "converse-dave.png"), fullPage: true });
      await carol.screenshot({ path: join(ARTIFACTS, "converse-carol.png"), fullPage: true });
    }
    await dave.screenshot({ path: join(ARTIFACTS, "converse-dave.png"), fullPage: true });
    await carol.screenshot({ path: join(ARTIFACTS, "converse-carol.png"), fullPage: true });
    assert.ok(true);
  } finally {
    await browser.close();
  }
});
