// End-to-end: the search page in headless Chromium (Debian's, driven by
// playwright-core). Serves a small collection of shared Pascal images never
// trained and expects text search to answer zero-shot; then trains the
// joint model, starts `imgsearch serve` on a loopback port again: browses
// the collection, types `dog` and expects dog thumbnails (URL state, reload,
// Back, more results), uploads a cat photo and expects cats, opens a result
// full size and asks for more like it, walks every control by keyboard,
// runs axe-core (WCAG 2.1 AA) and checks a phone layout; screenshots under
// target/e2e/. Run from the project root: `node e2e/search.mjs`
// (IMGSEARCH_BIN: the binary, default target/release/imgsearch under
// $CARGO_TARGET_DIR or ./target; IMGSEARCH_E2E_DB: a store to use instead
// of a fresh folder, e.g. an empty PostgreSQL database).
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const root = process.cwd();
const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, "target");
const bin = process.env.IMGSEARCH_BIN || path.join(targetDir, "release", "imgsearch");
const pascal = path.join(root, "..", "shared", "datasets", "pascal-sentences", "images");
const shots = path.join(root, "target", "e2e");
fs.mkdirSync(shots, { recursive: true });

function fail(msg) {
  console.error("e2e FAILED: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

// A small collection: 10 images of each of five labels.
const work = fs.mkdtempSync(path.join(os.tmpdir(), "imgsearch-e2e-"));
const photos = path.join(work, "photos");
for (const label of ["cat", "dog", "boat", "car", "bottle"]) {
  fs.mkdirSync(path.join(photos, label), { recursive: true });
  for (const f of fs.readdirSync(path.join(pascal, label)).sort().slice(0, 10)) {
    fs.copyFileSync(path.join(pascal, label, f), path.join(photos, label, f));
  }
}
// One photo twice (another name): the duplicates view finds the pair.
const firstCat = fs.readdirSync(path.join(photos, "cat")).sort()[0];
fs.copyFileSync(path.join(photos, "cat", firstCat), path.join(photos, "cat", "copy of " + firstCat));
const db = process.env.IMGSEARCH_E2E_DB || path.join(work, "db");

let server = null;
let serverLog = "";
let base = "";
function startServer() {
  const port = 18000 + Math.floor(Math.random() * 2000);
  server = spawn(bin, ["--db", db, "serve", "--addr", `127.0.0.1:${port}`, photos], { stdio: ["ignore", "inherit", "pipe"] });
  serverLog = "";
  server.stderr.on("data", (d) => { serverLog += d; process.stderr.write(d); });
  base = `http://127.0.0.1:${port}`;
}
async function stopServer() {
  const exited = new Promise((r) => server.once("exit", r));
  server.kill("SIGINT");
  await exited;
}

async function waitForServer() {
  for (let i = 0; i < 600; i++) {
    try { if ((await fetch(base + "/healthz")).ok) return; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  fail("the server did not come up: " + serverLog);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"],
});
try {
  // A collection nobody labelled: text search answers zero-shot.
  {
    startServer();
    await waitForServer();
    const fresh = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    await fresh.goto(base + "/");
    await fresh.waitForFunction(() => document.getElementById("status").textContent.includes("images"));
    const freshStatus = await fresh.textContent("#status");
    if (!freshStatus.includes("zero-shot")) fail("never-trained status line: " + freshStatus);
    await fresh.fill("#text", "a dog");
    await fresh.click("#textform button");
    await fresh.waitForSelector(".hit");
    const zsLabels = await fresh.$$eval(".hit .label", (els) => els.slice(0, 8).map((e) => e.textContent));
    if (zsLabels.filter((l) => l === "dog").length < 5) fail("never trained, typing a dog showed " + zsLabels.join(", "));
    await fresh.screenshot({ path: path.join(shots, "zero-shot.png") });
    await fresh.close();
    await stopServer();
    console.log(`e2e: never trained, "a dog" -> ${zsLabels.join(",")}`);
  }
  execFileSync(bin, ["--db", db, "train", "--data", photos, "--epochs", "30", "--batch-size", "8"], { stdio: "inherit" });
  startServer();
  await waitForServer();
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const consoleErrors = [];
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(base + "/");
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("images"));
  const status = await page.textContent("#status");
  if (!status.includes("51 images") || !status.includes("joint model")) fail("status line: " + status);

  // An empty query browses the collection, newest first.
  await page.waitForSelector(".hit");
  const browsed = await page.locator(".hit").count();
  if (browsed !== 51) fail("the browse grid shows " + browsed + " of 51 images");
  if (!(await page.textContent("#query")).includes("most recently taken")) fail("browse heading: " + (await page.textContent("#query")));
  await page.screenshot({ path: path.join(shots, "browse.png") });

  // A filter narrows the browse grid (and every search) inside the store's search.
  await page.fill("#f-label", "dog");
  await page.press("#f-label", "Tab");
  await page.waitForFunction(() => {
    const labels = [...document.querySelectorAll(".hit .label")].map((e) => e.textContent);
    return labels.length > 0 && labels.length < 51 && labels.every((l) => l === "dog");
  });
  await page.fill("#f-after", "1971");
  await page.fill("#f-before", "1970");
  await page.press("#f-before", "Tab");
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("nothing can match"));
  for (const f of ["#f-label", "#f-after", "#f-before"]) await page.fill(f, "");
  await page.press("#f-before", "Tab");
  await page.waitForFunction(() => document.querySelectorAll(".hit").length === 51);

  // Words -> images; the URL keeps the search.
  await page.fill("#text", "dog");
  await page.click("#textform button");
  await page.waitForFunction(() => document.getElementById("query").textContent.includes("dog"));
  const labels = await page.$$eval(".hit .label", (els) => els.slice(0, 8).map((e) => e.textContent));
  const dogs = labels.filter((l) => l === "dog").length;
  if (dogs < 6) fail("typing dog showed " + labels.join(", "));
  if (!page.url().includes("q=dog")) fail("the URL does not keep the search: " + page.url());
  const files = await page.$$eval(".hit .file", (els) => els.slice(0, 3).map((e) => e.textContent));
  if (!files.every((f) => f.endsWith(".jpg"))) fail("cards are not labelled with file names: " + files.join(", "));
  const sims = await page.$$eval(".hit .similarity", (els) => els.map((e) => e.textContent));
  if (!sims.length || !sims.every((s) => /^-?\d+%$/.test(s))) fail("similarities: " + sims.slice(0, 3).join(", "));
  await page.waitForFunction(() => [...document.querySelectorAll(".hit img")].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: path.join(shots, "dog.png") });

  // More results, then reload and Back/Forward restore what was shown.
  if (await page.locator("#more").isHidden()) fail("no 'More results' after 30 of 50 results");
  await page.click("#more");
  await page.waitForFunction(() => document.querySelectorAll(".hit").length > 30);
  await page.reload();
  await page.waitForFunction(() => document.getElementById("query").textContent.includes("dog"));
  if ((await page.inputValue("#text")) !== "dog") fail("a reload lost the query");
  await page.goBack();
  await page.waitForFunction(() => document.getElementById("query").textContent.includes("most recently taken"));
  await page.goForward();
  await page.waitForFunction(() => document.getElementById("query").textContent.includes("dog"));

  // Upload an image -> similar images, and its tags.
  const catPhoto = path.join(pascal, "cat", fs.readdirSync(path.join(pascal, "cat")).sort()[20]);
  await page.setInputFiles("#file", catPhoto);
  await page.waitForFunction(() => document.getElementById("query").textContent.includes("images like"));
  await page.waitForSelector(".hit");
  const catLabels = await page.$$eval(".hit .label", (els) => els.slice(0, 5).map((e) => e.textContent));
  if (catLabels.filter((l) => l === "cat").length < 3) fail("uploading a cat showed " + catLabels.join(", "));
  const tags = await page.textContent("#tags");
  if (!tags.includes("tags:")) fail("no tags for the uploaded image");
  await page.screenshot({ path: path.join(shots, "upload.png") });

  // Click a result -> full size with its tags and path; "More like this" -> images like it (it first).
  // (not the photo that is indexed twice: its copy ties with it at distance 0)
  const second = page.locator(".hit").filter({ hasNotText: firstCat }).nth(1);
  const key = await second.getAttribute("data-key");
  await second.click();
  await page.waitForSelector("#viewer[open]");
  await page.waitForFunction(() => { const i = document.getElementById("v-img"); return i.complete && i.naturalWidth > 0; });
  await page.waitForFunction(() => document.getElementById("v-tags").textContent.includes("seen as"));
  await page.waitForFunction(() => document.getElementById("v-path").textContent.includes("/"));
  await page.screenshot({ path: path.join(shots, "viewer.png") });
  await page.click("#v-like");
  await page.waitForFunction((k) => document.getElementById("query").textContent.includes("#" + k), key);
  const firstKey = await page.locator(".hit").first().getAttribute("data-key");
  if (firstKey !== key) fail(`more like ${key} showed ${firstKey} first`);
  if (!page.url().includes("key=" + key)) fail("the URL does not keep the image search: " + page.url());
  await page.screenshot({ path: path.join(shots, "click.png"), fullPage: true });

  // Every control by keyboard: Tab reaches the inputs and the results; Enter opens one, Escape closes it.
  await page.goto(base + "/?q=dog");
  await page.waitForSelector(".hit");
  const reached = new Set();
  for (let i = 0; i < 14; i++) {
    await page.keyboard.press("Tab");
    reached.add(await page.evaluate(() => document.activeElement.id || document.activeElement.className));
  }
  for (const want of ["text", "go", "file", "class", "hit"]) {
    if (!reached.has(want)) fail("Tab never reaches " + want + ": " + [...reached].join(", "));
  }
  while ((await page.evaluate(() => document.activeElement.className)) !== "hit") await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForSelector("#viewer[open]");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.getElementById("viewer").open);

  // No accessibility violations (axe-core, WCAG 2.1 A and AA), results and viewer.
  const axeSource = path.join(root, "e2e", "node_modules", "axe-core", "axe.min.js");
  async function axe(p, what) {
    await p.addScriptTag({ path: axeSource });
    const found = await p.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
      return r.violations.map((v) => v.id + " (" + v.nodes.length + "): " + v.nodes[0].target.join(" "));
    });
    if (found.length) fail("axe, " + what + ": " + found.join("; "));
  }
  await axe(page, "results");
  await page.locator(".hit").first().click();
  await page.waitForSelector("#viewer[open]");
  await axe(page, "viewer");
  await page.keyboard.press("Escape");

  // A bad request shows the server's message: an unknown class name.
  await page.fill("#class", "siamse kat");
  await page.locator(".hit").first().click();
  await page.waitForSelector("#viewer[open]");
  await page.click("#v-like");
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("Siamese cat"));

  // Duplicates: the copied photo and its original in one group; keeping one removes the other from the index.
  await page.click("#dups-link");
  await page.waitForSelector(".group");
  if (!page.url().includes("view=duplicates")) fail("the URL does not keep the duplicates view: " + page.url());
  const pair = await page.$$eval(".group", (gs) => gs.map((g) => [...g.querySelectorAll(".hit .file")].map((f) => f.textContent)));
  const copyGroup = pair.find((g) => g.includes("copy of " + firstCat));
  if (!copyGroup || !copyGroup.includes(firstCat)) fail("duplicate groups: " + JSON.stringify(pair));
  await axe(page, "duplicates");
  await page.screenshot({ path: path.join(shots, "duplicates.png") });
  await page.locator(".group", { hasText: "copy of " + firstCat }).locator("button.keep").click();
  await page.waitForFunction((f) => ![...document.querySelectorAll(".group")].some((g) => g.textContent.includes(f)), "copy of " + firstCat);
  const left = await (await fetch(base + "/api/status")).json();
  if (left.images !== 50) fail("after keeping one, the index holds " + left.images + " images");
  if (!fs.existsSync(path.join(photos, "cat", "copy of " + firstCat))) fail("a file on disk was deleted");

  // A phone: two columns filling the width, sharp thumbnails, no footer over the results.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true });
  await phone.goto(base + "/?q=dog");
  await phone.waitForSelector(".hit");
  const boxes = await phone.$$eval(".hit", (els) => els.slice(0, 2).map((e) => { const b = e.getBoundingClientRect(); return [b.x, b.y, b.width]; }));
  if (Math.abs(boxes[0][1] - boxes[1][1]) > 1 || boxes[0][2] < 150) fail("phone grid: " + JSON.stringify(boxes));
  await phone.waitForFunction(() => { const i = document.querySelector(".hit img"); return i.complete && i.currentSrc.includes("size=512"); });
  const footerPos = await phone.$eval("footer", (f) => getComputedStyle(f).position);
  if (footerPos === "fixed" || footerPos === "sticky") fail("the footer stays over the results on a phone");
  await axe(phone, "phone");
  await phone.screenshot({ path: path.join(shots, "phone.png") });
  await phone.close();

  if (consoleErrors.length) fail("page errors: " + consoleErrors.join("; "));
  console.log(`e2e ok: dog -> ${labels.join(",")}; upload -> ${catLabels.join(",")}; keyboard, axe, phone; screenshots in ${shots}`);
} finally {
  await browser.close();
  if (server) server.kill("SIGINT");
  fs.rmSync(work, { recursive: true, force: true });
}
