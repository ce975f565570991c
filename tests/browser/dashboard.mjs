// Drives the coordinator's dashboard in Debian's headless Chromium, as an operator would: refused
// without a token, signs in, watches a job's progress bar reach 100 % live, filters its failures,
// downloads them as CSV, opens a URL's page, the hosts and workers pages, cancels a running job, and
// takes a screenshot of each page at desktop and phone width. Run by cli/tests/dashboard.rs, which
// starts the coordinator, a worker and the sites, and checks the CSV against `urlfleet results`.
//
// Environment: BASE, TOKEN, JOB_WATCH, JOB_CANCEL, EXPECT_BROKEN, SHOTS (a directory), CSV (a path).
// Prints WATCHING once the job's page is open (the test then starts the worker), and a JSON report
// last.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const BASE = env("BASE"), TOKEN = env("TOKEN"), SHOTS = env("SHOTS"), CSV = env("CSV");
const JOB_WATCH = env("JOB_WATCH"), JOB_CANCEL = env("JOB_CANCEL"), EXPECT_BROKEN = Number(env("EXPECT_BROKEN"));
mkdirSync(SHOTS, { recursive: true });
const report = {};
const check = (ok, what) => { if (!ok) throw new Error(`failed: ${what}`); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await desktop.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));

  // Refused without a token: the API says 401, the page asks for one.
  const anonymous = await page.request.get(`${BASE}/api/jobs`);
  check(anonymous.status() === 401, `the API without a token answers 401 (got ${anonymous.status()})`);
  const cancelAnon = await page.request.post(`${BASE}/api/jobs/${JOB_CANCEL}/cancel`, { headers: { "X-Urlfleet": "1" } });
  check(cancelAnon.status() === 401, "a cancel without a token is refused");
  await page.goto(BASE);
  await page.getByLabel("Token").waitFor();
  await page.screenshot({ path: `${SHOTS}/login-desktop.png` });
  // A wrong token is refused too.
  await page.getByLabel("Token").fill("not-a-token-at-all-0000");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Unknown token.").waitFor();
  report.refused = true;

  await page.getByLabel("Token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator(`tr[data-job="${JOB_WATCH}"]`).waitFor();
  await page.screenshot({ path: `${SHOTS}/jobs-desktop.png`, fullPage: true });

  // The job page: its progress bar moves to 100 % without a reload.
  await page.goto(`${BASE}/#/jobs/${JOB_WATCH}`);
  const bar = page.locator("#job-progress");
  await bar.waitFor();
  // The test starts the worker only now: the job cannot have ended before the page shows it.
  console.log("WATCHING");
  const seen = [];
  const deadline = Date.now() + 90_000;
  for (;;) {
    const pct = Number(await bar.getAttribute("data-percent"));
    if (seen[seen.length - 1] !== pct) seen.push(pct);
    if (pct === 100) break;
    check(Date.now() < deadline, `the job reaches 100 % (seen ${seen})`);
    await page.waitForTimeout(100);
  }
  check(seen[0] < 100 && seen.length >= 2, `the bar moved live: ${seen}`);
  await page.locator("#job-state", { hasText: "completed" }).waitFor();
  report.progress = seen;

  // Filter the failures by class.
  await page.locator("#f-class").selectOption("broken");
  await page.waitForFunction((n) => {
    const rows = [...document.querySelectorAll("#failures tbody tr[data-class]")];
    return rows.length === n && rows.every((r) => r.dataset.class === "broken");
  }, EXPECT_BROKEN);
  report.brokenRows = await page.locator("#failures tbody tr[data-class]").count();
  // Sort by status, descending.
  await page.locator("button[data-sort=status]").click();
  await page.locator("button[data-sort=status]").click();
  await page.locator("#f-class").selectOption("");
  await page.waitForFunction(() => document.querySelectorAll("#failures tbody tr[data-class]").length > 0);
  await page.screenshot({ path: `${SHOTS}/job-desktop.png`, fullPage: true });

  // Download every failure as CSV.
  const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#csv").click()]);
  await download.saveAs(CSV);
  report.csv = CSV;

  // A URL's page, from a failure's link.
  await page.locator("#failures tbody td.url a").first().click();
  await page.locator("#history tbody tr").first().waitFor();
  await page.screenshot({ path: `${SHOTS}/url-desktop.png`, fullPage: true });

  // Hosts and workers.
  await page.goto(`${BASE}/#/hosts`);
  await page.locator("#hosts tbody tr").first().waitFor();
  await page.screenshot({ path: `${SHOTS}/hosts-desktop.png`, fullPage: true });
  await page.goto(`${BASE}/#/workers`);
  await page.locator("#workers tbody tr td", { hasText: "dashboard-worker" }).first().waitFor();
  await page.screenshot({ path: `${SHOTS}/workers-desktop.png`, fullPage: true });

  // Keyboard: the skip link is the first stop, and moves focus to the content.
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.classList.contains("skip")), "the skip link comes first");

  // The same pages at phone width.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, storageState: await desktop.storageState() });
  const small = await phone.newPage();
  for (const [name, hash, ready] of [["jobs", "#/", `tr[data-job="${JOB_WATCH}"]`], ["job", `#/jobs/${JOB_WATCH}`, "#failures tbody tr"],
    ["hosts", "#/hosts", "#hosts tbody tr"], ["workers", "#/workers", "#workers tbody tr"]]) {
    await small.goto(`${BASE}/${hash}`);
    await small.locator(ready).first().waitFor();
    const overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `${name} fits a phone's width (overflow ${overflow}px)`);
    await small.screenshot({ path: `${SHOTS}/${name}-phone.png`, fullPage: true });
  }
  await phone.close();

  // Cancel a running job from its page.
  await page.goto(`${BASE}/#/jobs/${JOB_CANCEL}`);
  const cancel = page.locator("#cancel");
  await cancel.waitFor({ state: "visible" });
  page.once("dialog", (d) => d.accept());
  await cancel.click();
  await page.locator("#job-state", { hasText: "cancelled" }).waitFor();
  report.cancelled = Number(JOB_CANCEL);
  check(pageErrors.length === 0, `no script error on any page: ${pageErrors}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
