"""Starts and stops a real `verdict serve` for the live tests (binary from $VERDICT_BIN)."""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
READY_TIMEOUT = 60.0


def verdict_bin():
    path = os.environ.get("VERDICT_BIN")
    return os.path.abspath(path) if path else None


SKIP_REASON = ("VERDICT_BIN is not set: live tests need a verdict binary "
               "(cargo build --release; VERDICT_BIN=target/release/verdict), skipped")


def run(args, **kw):
    out = subprocess.run(args, capture_output=True, timeout=60, **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr.decode(errors='replace')}")
    return out


def make_pki(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (as net/src/tls.rs make_test_pki)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    # Key usage and key identifiers too: Python 3.13's default context verifies strictly
    # (VERIFY_X509_STRICT) and refuses a CA without keyUsage.
    run(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=verdict python test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], cwd=directory)
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj",
         "/CN=verdict test"], cwd=directory)
    run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"],
        cwd=directory)
    return directory


def patient_models(directory: Path) -> Path:
    """The shipped fraud_lr with a 1 s deadline (as engine/tests/common patient_models), so
    a debug build's slow call never turns a score into the fallback."""
    shipped = REPO / "models" / "examples" / "fraud_lr"
    model = directory / "models" / "fraud_lr"
    model.mkdir(parents=True)
    shutil.copy(shipped / "fraud_lr.wasm", model / "fraud_lr.wasm")
    manifest = (shipped / "manifest.toml").read_text()
    (model / "manifest.toml").write_text(
        manifest.replace("deadline_us = 2000", "deadline_us = 1000000"))
    return directory / "models"


class Server:
    """`verdict serve --port 0 --shard-port-base 0 --admin-port 0 --no-probes` in a temp dir
    (a shards.toml there: loopback, up to two shards; `tls`: a [tls] section)."""

    def __init__(self, tls_dir: Path = None):
        self.dir = Path(tempfile.mkdtemp(prefix="verdict-py-"))
        self.proc = None
        try:
            self._start(tls_dir)
        except BaseException:
            self.stop()
            raise

    def _start(self, tls_dir):
        cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else [0]
        toml = "[listen]\naddress = \"127.0.0.1\"\nport = 0\nshard_port_base = 0\n"
        toml += "".join(f"[[shard]]\ncpu = {c}\n" for c in cpus)
        toml += "[runtime]\nio_memory_bytes = 1048576\n"
        if tls_dir is not None:
            toml += (f"[tls]\ncert_file = \"{tls_dir / 'server.pem'}\"\n"
                     f"key_file = \"{tls_dir / 'server.key'}\"\n")
        (self.dir / "shards.toml").write_text(toml)
        models = patient_models(self.dir)
        self.stderr_path = self.dir / "stderr.txt"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [verdict_bin(), "serve", "--port", "0", "--shard-port-base", "0", "--admin-port",
             "0", "--no-probes", "--models", str(models)],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        line = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT)
        text = line[0].decode(errors="replace") if line else ""
        if not text.startswith("verdict ready:"):
            raise RuntimeError(f"no ready line within {READY_TIMEOUT}s: {text!r}; stderr: "
                               f"{self.stderr_path.read_text(errors='replace')[-2000:]}")
        fields = dict(kv.split("=", 1) for kv in text.split()[2:] if "=" in kv)
        self.address = fields["address"]
        self.port = int(fields["port"])
        self.shard_ports = [int(p) for p in fields["shard_ports"].split(",")]
        self.shards = int(fields["shards"])
        self.admin_port = int(fields["admin_port"])
        # Keep draining stdout so the server never blocks on it.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
