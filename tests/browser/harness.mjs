// Shared harness of the real-browser tests (whip_whep.mjs, ils_session.mjs): Chromium launch flags,
// environment knobs, the PASS/FAIL check list and its summary, the ils-control child process, and
// the deadline + exit code. Each test keeps its own scenario; run.sh provides the namespaces.

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Chromium flags from shared TESTING.md (playwright adds --headless and a fresh user-data-dir). */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--use-fake-ui-for-media-stream",
  // The fake camera defaults to 20 fps; 30 gives the restart check (>= 60 frames in 3 s) headroom.
  "--use-fake-device-for-media-stream=fps=30",
  "--allow-loopback-in-peer-connection",
  "--autoplay-policy=no-user-gesture-required",
  // Keep background pages (all but one are "hidden" tabs) rendering and decoding at full rate.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

/** Headless Chromium ($CHROMIUM, default /usr/bin/chromium) with [`CHROMIUM_ARGS`]. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/** A non-negative integer from the environment, or `dflt` when unset, empty or not one. */
export function intEnv(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === "") return dflt;
  const n = Number.parseInt(v, 10);
  return Number.isFinite(n) && n >= 0 ? n : dflt;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** When the test started (ms since the epoch). */
export const t0 = Date.now();
/** console.log with the seconds since the test started. */
export const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

/** "host:port" → [host, port]. */
export function hostPort(addr) {
  const at = addr.lastIndexOf(":");
  return [addr.slice(0, at), Number(addr.slice(at + 1))];
}

/** @type {{name:string, ok:boolean, detail:string}[]} */
export const results = [];
/** Records one check and prints PASS/FAIL; returns whether it passed. */
export function check(name, ok, detail = "") {
  results.push({ name, ok: !!ok, detail });
  console.log(`${ok ? "PASS" : "FAIL"} ${name}${detail ? ": " + detail : ""}`);
  return !!ok;
}
/** The counts and the summary line `<title>: N passed, M failed` (run.sh greps for it). */
export function summary(title) {
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  return { passed, failed, line: `${title}: ${passed} passed, ${failed} failed` };
}

/**
 * Runs `main` under a whole-test deadline of `deadlineS` (a missed deadline is a failed check and
 * exit 1), then writes every check and the summary line to `summaryPath`, prints the line and
 * exits 0 when at least one check ran and none failed.
 */
export async function runTest({ title, deadlineS, summaryPath, main }) {
  const watchdog = setTimeout(() => {
    check(`test finished within ${deadlineS} s`, false, "deadline hit");
    console.log(summary(title).line);
    process.exit(1);
  }, deadlineS * 1000);
  await main();
  clearTimeout(watchdog);
  const s = summary(title);
  writeFileSync(summaryPath, results.map((r) => `${r.ok ? "PASS" : "FAIL"} ${r.name}: ${r.detail}`).join("\n") + "\n" + s.line + "\n");
  console.log(s.line);
  process.exit(s.failed === 0 && s.passed > 0 ? 0 : 1);
}

/**
 * The real ils-control as a child process: `$ILS_CONTROL_BIN --dev --data-dir <dir> --http <http>
 * $ILS_CONTROL_ARGS`, its output to a log file, ready when `GET /` answers 2xx.
 */
export class ControlProcess {
  /** `tmpPrefix`: name prefix of the fresh data dir used when $ILS_DATA_DIR is not set. */
  constructor(http, tmpPrefix) {
    this.bin = process.env.ILS_CONTROL_BIN;
    if (!this.bin) throw new Error("ILS_CONTROL_BIN is not set (run through tests/browser/run.sh)");
    this.http = http;
    this.dataDir = process.env.ILS_DATA_DIR || mkdtempSync(join(tmpdir(), tmpPrefix));
    this.extra = (process.env.ILS_CONTROL_ARGS || "").split(/\s+/).filter(Boolean);
    this.child = null;
  }
  /** Spawn it (output to `logPath`) and wait up to `readyMs` for `GET /`. */
  async spawnAndWait(logPath, readyMs) {
    const fd = openSync(logPath, "w");
    const args = ["--dev", "--data-dir", this.dataDir, "--http", this.http, ...this.extra];
    log(`starting ${this.bin} ${args.join(" ")} (log ${logPath})`);
    const child = spawn(this.bin, args, { stdio: ["ignore", fd, fd], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" } });
    closeSync(fd);
    this.child = child;
    let exited = null;
    child.on("exit", (code, sig) => { exited = { code, sig }; });
    const until = Date.now() + readyMs;
    while (Date.now() < until) {
      if (exited) {
        const tail = readFileSync(logPath, "utf8").trim().split("\n").slice(-5).join(" / ");
        throw new Error(`ils-control exited during start-up (code ${exited.code}, signal ${exited.sig}): ${tail}; see ${logPath}`);
      }
      try {
        const res = await fetch(`http://${this.http}/`, { signal: AbortSignal.timeout(1000) });
        if (res.ok) {
          log(`ils-control up (pid ${child.pid})`);
          return;
        }
      } catch (_) { /* not listening yet */ }
      await sleep(100);
    }
    throw new Error(`ils-control did not answer GET / within ${readyMs} ms; see ${logPath}`);
  }
  /** SIGKILL, as a crash would: no shutdown code runs. The engine it spawned keeps running. */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once("exit", r));
    log(`SIGKILL ils-control pid ${child.pid}`);
    process.kill(child.pid, "SIGKILL");
    await gone;
    this.child = null;
  }
  /** Orderly stop at the end (SIGTERM, then SIGKILL after 5 s). */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 5000);
    await gone;
    clearTimeout(t);
  }
}
