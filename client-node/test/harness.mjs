// A real stepstream service for the tests: its own redis-server and data directory, a free
// port, started and killed by PID (kill -9 included) and restarted on the same port and data.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { RunClient } from "../dist/index.js";

const ROOT = resolve(import.meta.dirname, "..", "..");
const BIN = process.env.STEPSTREAM_VENV_BIN ?? join(ROOT, ".venv", "bin");

export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((r) => child.once("exit", r));
}

// A CA and a certificate for 127.0.0.1 made by trustme (the Python dev dependency).
const MAKE_CERTS = `
import sys, trustme
ca = trustme.CA(); cert = ca.issue_cert("127.0.0.1", "localhost")
ca.cert_pem.write_to_path(sys.argv[1] + "/ca.pem")
cert.cert_chain_pems[0].write_to_path(sys.argv[1] + "/crt.pem")
cert.private_key_pem.write_to_path(sys.argv[1] + "/key.pem")
`;

export class Service {
  /** options.tls: serve TLS (s.ca is the CA to trust); options.auth: --auth required, with
   * s.token a write token for every project. */
  static async start(options = {}) {
    const s = new Service();
    s.dir = mkdtempSync(join(tmpdir(), "stepstream-node-"));
    s.serveArgs = [];
    s.clientOptions = {};
    if (options.tls) {
      execFileSync(join(BIN, "python"), ["-c", MAKE_CERTS, s.dir]);
      s.ca = join(s.dir, "ca.pem");
      s.serveArgs.push("--tls-cert", join(s.dir, "crt.pem"), "--tls-key", join(s.dir, "key.pem"));
      s.clientOptions.rootCertificates = s.ca;
    }
    if (options.auth) {
      s.token = execFileSync(
        join(BIN, "stepstream"),
        ["tokens", "create", "--project", "*", "--role", "write", "--data-dir", join(s.dir, "data")],
        { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] },
      ).trim();
      s.serveArgs.push("--auth", "required");
      s.clientOptions.token = s.token;
    }
    s.redisPort = await freePort();
    s.redis = spawn(
      join(BIN, "redis-server"),
      ["--port", String(s.redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir],
      { stdio: "ignore" },
    );
    s.port = await freePort();
    s.address = `127.0.0.1:${s.port}`;
    await s.up();
    return s;
  }

  async up() {
    this.proc = spawn(
      join(BIN, "stepstream"),
      ["serve", "--address", this.address, "--data-dir", join(this.dir, "data"), "--grace", "1",
       "--redis-url", `redis://127.0.0.1:${this.redisPort}/0`, ...this.serveArgs],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    this.log = "";
    this.proc.stderr.on("data", (d) => (this.log += d));
    const client = new RunClient(this.address, { timeoutMs: 1_000, ...this.clientOptions });
    try {
      for (let i = 0; i < 300; i++) {
        if (this.proc.exitCode !== null) throw new Error(`service exited: ${this.log}`);
        try {
          await client.call("listRuns", {});
          return;
        } catch {
          await sleep(100);
        }
      }
      throw new Error(`service did not start: ${this.log}`);
    } finally {
      client.close();
    }
  }

  async kill9() {
    this.proc.kill("SIGKILL");
    await exited(this.proc);
  }

  pause() {
    this.proc.kill("SIGSTOP");
  }

  resume() {
    this.proc.kill("SIGCONT");
  }

  async stop() {
    this.proc?.kill("SIGCONT"); // a stopped process cannot act on SIGTERM
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      await exited(this.proc);
    }
    this.redis.kill("SIGTERM");
    await exited(this.redis);
    if (existsSync(this.dir)) rmSync(this.dir, { recursive: true, force: true });
  }
}
