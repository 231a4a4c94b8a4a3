// End-to-end: the search page in headless Chromium (Debian's, driven by
// playwright-core). Serves a small collection of shared Pascal images never
// trained and expects text search to answer zero-shot; then trains the
// joint model, starts `imgsearch serve` on a loopback port again, types
// `dog` and expects dog thumbnails, uploads a cat photo and expects cats,
// clicks a result and expects images like it, and saves screenshots under
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
  if (!status.includes("50 images") || !status.includes("joint model")) fail("status line: " + status);

  // Words -> images.
  await page.fill("#text", "dog");
  await page.click("#textform button");
  await page.waitForSelector(".hit");
  const labels = await page.$$eval(".hit .label", (els) => els.slice(0, 8).map((e) => e.textContent));
  const dogs = labels.filter((l) => l === "dog").length;
  if (dogs < 6) fail("typing dog showed " + labels.join(", "));
  await page.waitForFunction(() => [...document.querySelectorAll(".hit img")].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: path.join(shots, "dog.png") });

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

  // Click a result -> images like it (the clicked one first).
  const second = page.locator(".hit").nth(1);
  const key = await second.getAttribute("data-key");
  await second.click();
  await page.waitForFunction((k) => document.getElementById("query").textContent.includes("#" + k), key);
  const firstKey = await page.locator(".hit").first().getAttribute("data-key");
  if (firstKey !== key) fail(`clicking result ${key} showed ${firstKey} first`);
  await page.screenshot({ path: path.join(shots, "click.png"), fullPage: true });

  // A bad request shows the server's message: an unknown class name.
  await page.fill("#class", "siamse kat");
  await page.locator(".hit").first().click();
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("Siamese cat"));
  if (consoleErrors.length) fail("page errors: " + consoleErrors.join("; "));
  console.log(`e2e ok: dog -> ${labels.join(",")}; upload -> ${catLabels.join(",")}; screenshots in ${shots}`);
} finally {
  await browser.close();
  if (server) server.kill("SIGINT");
  fs.rmSync(work, { recursive: true, force: true });
}
