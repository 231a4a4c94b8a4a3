// The README's screenshot, from photos anyone may use: the sample images
// scikit-image ships in its PyPI wheel (CC0 or public domain, see
// skimage/data/_fetchers.py). Fetches the wheel with pip, indexes the
// colour photos into a fresh store, serves them, searches "a cat" and
// saves docs/screenshot.png. Run from the project root after a release
// build: `node e2e/screenshot.mjs`.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const root = process.cwd();
const bin = process.env.IMGSEARCH_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(root, "target"), "release", "imgsearch");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "imgsearch-shot-"));
const photos = path.join(work, "samples");
execFileSync("python3", ["-m", "pip", "download", "-q", "--no-deps", "scikit-image==0.26.0", "-d", work], { stdio: "inherit" });
const wheel = fs.readdirSync(work).find((f) => f.endsWith(".whl"));
const names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png", "retina.jpg", "ihc.png", "color.png", "logo.png"];
execFileSync("python3", ["-c", `
import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
os.makedirs(sys.argv[2], exist_ok=True)
for n in sys.argv[3:]:
    open(os.path.join(sys.argv[2], n), "wb").write(z.read("skimage/data/" + n))
`, path.join(work, wheel), photos, ...names]);
const port = 19000 + Math.floor(Math.random() * 900);
const server = spawn(bin, ["--db", path.join(work, "db"), "serve", "--addr", `127.0.0.1:${port}`, photos], { stdio: "inherit" });
try {
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 1200; i++) {
    try { if ((await fetch(base + "/healthz")).ok) break; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--headless", "--no-sandbox", "--disable-gpu"] });
  const page = await browser.newPage({ viewport: { width: 1100, height: 640 } });
  await page.goto(base + "/?q=" + encodeURIComponent("a cat"));
  await page.waitForSelector(".hit");
  await page.waitForFunction(() => [...document.querySelectorAll(".hit img")].every((i) => i.complete && i.naturalWidth > 0));
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("images"));
  fs.mkdirSync(path.join(root, "docs"), { recursive: true });
  await page.screenshot({ path: path.join(root, "docs", "screenshot.png") });
  await browser.close();
  console.log("saved docs/screenshot.png");
} finally {
  server.kill("SIGINT");
  fs.rmSync(work, { recursive: true, force: true });
}
