// One small interface over the three ways this suite drives a browser, so
// every scenario is written once:
//   - chromium: Playwright (`playwright-core`, no browser download) on
//     Debian's /usr/bin/chromium, `launchPersistentContext(profile)`;
//   - firefox: selenium-webdriver over geckodriver (the one
//     scripts/browser-env.sh builds from crates.io) on Debian's
//     firefox-esr, `-profile DIR` so the profile persists, WebDriver BiDi
//     (`emulation.setNetworkConditions`) to go offline;
//   - webkit: selenium-webdriver over Debian's WebKitWebDriver
//     (MiniBrowser under Xvfb): an attempt, reported, not required.
//
// A browser: `launch(profileDir)` -> session. A session: `open(url)` (the
// first tab), `newTab(url)`, `setOffline(bool)`, `close()` (a clean
// shutdown), `kill()` (SIGKILL the browser and its child processes),
// `cdp(tab)` (Chromium only). A tab: `eval(fn, arg)` (fn runs in the page;
// a returned promise is awaited), `type(selector, text)`, `click(selector)`,
// `reload()`, `screenshot(path)`.
'use strict';

const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const FIREFOX = process.env.E2E_FIREFOX || '/usr/bin/firefox-esr';
const GECKODRIVER = process.env.GECKODRIVER_BIN || 'geckodriver';
const WEBKIT_DRIVER = process.env.E2E_WEBKIT_DRIVER || '/usr/bin/WebKitWebDriver';
const MINIBROWSER = process.env.E2E_MINIBROWSER || '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** pid -> { ppid, args } of every process. */
function processTable() {
  const out = execFileSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' });
  const table = new Map();
  for (const line of out.split('\n')) {
    const m = line.match(/^\s*(\d+)\s+(\d+)\s+(.*)$/);
    if (m) table.set(Number(m[1]), { ppid: Number(m[2]), args: m[3] });
  }
  return table;
}

/** `root` and all its descendants, parents first. */
function processTree(root) {
  const table = processTable();
  const tree = [root];
  for (let i = 0; i < tree.length; i++) {
    for (const [pid, p] of table) if (p.ppid === tree[i]) tree.push(pid);
  }
  return tree;
}

/** Whether `pid` still runs (a zombie, dead but not yet reaped by its parent, does not). */
function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** SIGKILLs `root` and every process under it, all at once. */
async function killTree(root) {
  const pids = processTree(root);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (let i = 0; i < 100 && pids.some(alive); i++) await sleep(50);
  return pids;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------- Playwright

class PlaywrightTab {
  constructor(page) {
    this.page = page;
  }
  eval(fn, arg) {
    return this.page.evaluate(fn, arg);
  }
  type(selector, text) {
    return this.page.fill(selector, text);
  }
  click(selector) {
    return this.page.click(selector);
  }
  async goto(url) {
    await this.page.goto(url);
  }
  async reload() {
    await this.page.reload();
  }
  screenshot(path) {
    return this.page.screenshot({ path, fullPage: true });
  }
}

class ChromiumSession {
  constructor(context, profileDir) {
    this.context = context;
    this.profileDir = profileDir;
  }
  async open(url) {
    const page = this.context.pages()[0] || (await this.context.newPage());
    await page.goto(url);
    return new PlaywrightTab(page);
  }
  async newTab(url) {
    const page = await this.context.newPage();
    await page.goto(url);
    return new PlaywrightTab(page);
  }
  setOffline(offline) {
    return this.context.setOffline(offline);
  }
  async cdp(tab) {
    return this.context.newCDPSession(tab.page);
  }
  async close() {
    await this.context.close();
  }
  /** The browser's main process: the child of this process that runs on our profile. */
  pid() {
    for (const [pid, p] of processTable()) {
      if (p.ppid === process.pid && p.args.includes(`--user-data-dir=${this.profileDir}`)) return pid;
    }
    throw new Error(`no Chromium process on ${this.profileDir}`);
  }
  async kill() {
    const pids = await killTree(this.pid());
    await this.context.close().catch(() => {});
    return pids;
  }
}

const chromium = {
  name: 'chromium',
  canGoOffline: true,
  hasCdp: true,
  persistent: true,
  async launch(profileDir, { viewport, log } = {}) {
    const { chromium: pw } = require('playwright-core');
    const context = await pw.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: viewport || { width: 1000, height: 800 },
      args: ['--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    if (log) {
      const follow = (page) =>
        page.on('console', (m) => fs.appendFileSync(log, `[${new Date().toISOString()}] console.${m.type()}: ${m.text()}\n`));
      context.pages().forEach(follow);
      context.on('page', follow);
    }
    return new ChromiumSession(context, profileDir);
  },
  version() {
    return execFileSync(CHROMIUM, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  },
};

// ----------------------------------------------------------------- Selenium

class SeleniumTab {
  constructor(session, handle) {
    this.session = session;
    this.handle = handle;
  }
  async focus() {
    if (this.session.current !== this.handle) {
      await this.session.driver.switchTo().window(this.handle);
      this.session.current = this.handle;
    }
    return this.session.driver;
  }
  async eval(fn, arg) {
    const driver = await this.focus();
    return driver.executeScript(`return (${fn.toString()})(arguments[0]);`, arg === undefined ? null : arg);
  }
  async type(selector, text) {
    const { By } = require('selenium-webdriver');
    const driver = await this.focus();
    const e = await driver.findElement(By.css(selector));
    await e.clear();
    await e.sendKeys(text);
  }
  async click(selector) {
    const { By } = require('selenium-webdriver');
    const driver = await this.focus();
    await (await driver.findElement(By.css(selector))).click();
  }
  async goto(url) {
    const driver = await this.focus();
    await driver.get(url);
  }
  async reload() {
    // Not WebDriver's Refresh: geckodriver's is a forced reload, which
    // bypasses the service worker (the page comes back uncontrolled). A
    // navigation to the same URL is an ordinary load, as a user's reload is.
    const driver = await this.focus();
    await driver.get(await driver.getCurrentUrl());
  }
  async screenshot(path) {
    const driver = await this.focus();
    fs.writeFileSync(path, Buffer.from(await driver.takeScreenshot(), 'base64'));
  }
}

class SeleniumSession {
  constructor(driver, { pid, service, bidi, onClose }) {
    this.driver = driver;
    this.browserPid = pid;
    this.service = service;
    this.bidi = bidi;
    this.onClose = onClose;
    this.current = null;
  }
  async open(url) {
    const handle = await this.driver.getWindowHandle();
    this.current = handle;
    const tab = new SeleniumTab(this, handle);
    await tab.goto(url);
    return tab;
  }
  async newTab(url) {
    await this.driver.switchTo().newWindow('tab');
    const handle = await this.driver.getWindowHandle();
    this.current = handle;
    const tab = new SeleniumTab(this, handle);
    await tab.goto(url);
    return tab;
  }
  async setOffline(offline) {
    if (!this.bidi) throw new Error('this browser cannot go offline here');
    // WebDriver BiDi: every tab of the default user context; Firefox sets
    // navigator.onLine and fires the `offline` / `online` events.
    await this.bidi.send({
      method: 'emulation.setNetworkConditions',
      params: { networkConditions: offline ? { type: 'offline' } : null, userContexts: ['default'] },
    });
  }
  async close() {
    try {
      await this.driver.quit();
    } finally {
      if (this.onClose) await this.onClose();
    }
  }
  async kill() {
    if (!this.browserPid) throw new Error('the browser did not say its process id');
    const pids = await killTree(this.browserPid);
    // The driver is left without a browser: stop it too.
    if (this.service) await this.service.kill().catch(() => {});
    if (this.onClose) await this.onClose();
    return pids;
  }
}

const firefox = {
  name: 'firefox',
  canGoOffline: true,
  hasCdp: false,
  persistent: true,
  async launch(profileDir, { log } = {}) {
    const ff = require('selenium-webdriver/firefox');
    fs.mkdirSync(profileDir, { recursive: true });
    const options = new ff.Options()
      .setBinary(FIREFOX)
      // `-profile DIR`: geckodriver runs Firefox on this directory instead
      // of a temporary copy, so IndexedDB outlives the browser.
      .addArguments('-headless', '-profile', profileDir)
      .setPreference('devtools.console.stdout.content', true)
      .enableBidi();
    const builder = new ff.ServiceBuilder(GECKODRIVER);
    // geckodriver's and Firefox's output (the page's console included).
    if (log) builder.setStdio(['ignore', fs.openSync(log, 'a'), fs.openSync(log, 'a')]);
    const service = builder.build();
    const driver = await ff.Driver.createSession(options, service);
    const caps = await driver.getCapabilities();
    const bidi = await driver.getBidi();
    return new SeleniumSession(driver, { pid: caps.get('moz:processID'), service, bidi });
  },
  version() {
    return execFileSync(FIREFOX, ['--version'], { encoding: 'utf8' }).trim();
  },
};

// WebKitGTK's MiniBrowser in automation mode keeps its data in an
// ephemeral session (nothing survives a relaunch), and classic WebDriver
// has no offline switch: the scenarios that need either are reported as
// not run in WebKit.
const webkit = {
  name: 'webkit',
  canGoOffline: false,
  hasCdp: false,
  persistent: false,
  async launch() {
    const { Builder, Capabilities } = require('selenium-webdriver');
    const port = await freePort();
    // Its own process group (xvfb-run, Xvfb, WebKitWebDriver, MiniBrowser): stopped as one.
    const child = spawn('xvfb-run', ['-a', WEBKIT_DRIVER, `--port=${port}`], { detached: true, stdio: 'ignore' });
    const stop = async () => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    };
    try {
      let up = false;
      for (let i = 0; i < 100 && !up; i++) {
        up = await new Promise((resolve) => {
          const s = net.connect(port, '127.0.0.1', () => {
            s.destroy();
            resolve(true);
          });
          s.on('error', () => resolve(false));
        });
        if (!up) await sleep(100);
      }
      if (!up) throw new Error('WebKitWebDriver did not start');
      const caps = new Capabilities({
        browserName: 'MiniBrowser',
        'webkitgtk:browserOptions': { binary: MINIBROWSER, args: ['--automation'] },
      });
      const driver = await new Builder().usingServer(`http://127.0.0.1:${port}`).withCapabilities(caps).build();
      return new SeleniumSession(driver, { pid: null, service: null, bidi: null, onClose: stop });
    } catch (e) {
      await stop();
      throw e;
    }
  },
  version() {
    try {
      return execFileSync('dpkg-query', ['-W', '-f', 'WebKitGTK ${Version}', 'libwebkit2gtk-4.1-0'], { encoding: 'utf8' });
    } catch {
      return 'WebKitGTK (version unknown)';
    }
  },
};

module.exports = { browsers: { chromium, firefox, webkit }, sleep, processTree, killTree };
