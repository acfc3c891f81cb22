"""Servers under test: Starling (the product) and Prosody (reference / federation peer).

Every server runs on ephemeral loopback ports with a private temporary directory, and
``stop()`` kills it and removes the directory, whatever happened before.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"

_RUNNING: set["Server"] = set()


@atexit.register
def _stop_leftovers():
    for s in list(_RUNNING):
        s.stop()


class ServerError(Exception):
    pass


def free_port() -> int:
    """A port that was free a moment ago (bind to :0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"(no log: {e})"
    if len(data) > max_bytes:
        data = b"...\n" + data[-max_bytes:]
    return data.decode("utf-8", "replace")


class Server:
    """Common interface: start/stop/adduser/deluser, plus the addresses clients need."""

    kind = "abstract"
    host = LOOPBACK
    scram = "SCRAM-SHA-256"  # the strongest SCRAM the server offers; scenarios that do not
    #                          test mechanisms use it

    def __init__(self, *, domain: str = "localhost", allow_registration: bool = False,
                 name: str = "server", start_timeout: float = 20.0):
        self.domain = domain
        self.allow_registration = allow_registration
        self.name = name
        self.start_timeout = start_timeout
        self.c2s_port = 0
        self.direct_tls_port = 0
        self.s2s_port = 0
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None
        self.log_path: Path | None = None

    # -- to implement -------------------------------------------------------------------------
    def _write_config(self) -> list[str]:
        """Write config files under self.dir, return the argv that runs the server."""
        raise NotImplementedError

    def adduser(self, user: str, password: str) -> None:
        raise NotImplementedError

    def deluser(self, user: str) -> None:
        raise NotImplementedError

    # -- common ---------------------------------------------------------------------------------
    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def start(self) -> "Server":
        last_error = None
        for _attempt in range(3):  # a port picked by free_port() can be taken in between
            self.dir = Path(tempfile.mkdtemp(prefix=f"conf-{self.kind}-{self.name}-"))
            self.c2s_port, self.direct_tls_port, self.s2s_port = free_ports(3)
            argv = self._write_config()
            self.log_path = self.dir / "server.log"
            log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, env=self._env(), start_new_session=True)
            log.close()
            _RUNNING.add(self)
            try:
                self._wait_ready()
                return self
            except ServerError as e:
                last_error = e
                died = self.proc.poll() is not None
                self.stop(keep_log=True)
                if not died:
                    break
        raise last_error  # type: ignore[misc]

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready_ports(self) -> list[int]:
        """The ports that must accept connections before the server counts as started."""
        return [self.c2s_port, self.direct_tls_port]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        ports = self._ready_ports()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.kind} exited with status {self.proc.returncode} before listening; "
                    f"log:\n{tail(self.log_path)}")
            if all(port_open(p) for p in ports):
                return
            time.sleep(0.05)
        raise ServerError(f"{self.kind} did not listen on {ports} within {self.start_timeout}s; "
                          f"log:\n{tail(self.log_path)}")

    def log_tail(self, max_bytes: int = 6000) -> str:
        return tail(self.log_path, max_bytes) if self.log_path else "(not started)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, keep_log: bool = False) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self.dir is not None:
            if os.environ.get("CONFORMANCE_KEEP"):
                print(f"[conformance] kept {self.kind} dir {self.dir}", flush=True)
            else:
                if keep_log and self.log_path and self.log_path.exists():
                    self._saved_log = self.log_tail(20000)
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _run_cli(self, argv: list[str], what: str, stdin: str | None = None) -> None:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                           cwd=self.dir, env=self._env())
        if r.returncode != 0:
            raise ServerError(f"{what} failed (exit {r.returncode}): {argv}\n"
                              f"stdout: {r.stdout}\nstderr: {r.stderr}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class StarlingServer(Server):
    """`s2s=True` adds s2s listeners (STARTTLS on `s2s_port`, XEP-0368 direct TLS on
    `s2s_direct_tls_port`) with `s2s_routes` ({domain: "host:port"}) and optional `s2s_ca_file`;
    `http=True` adds an HTTP listener on `http_port` (WebSocket, BOSH, the web page from
    `web_root`)."""

    kind = "starling"

    def __init__(self, binary: str | os.PathLike, *, admins: tuple[str, ...] = (),
                 extra_config: str = "", s2s: bool = False,
                 s2s_routes: dict[str, str] | None = None, s2s_ca_file: str | None = None,
                 http: bool = False, web_root: str | os.PathLike | None = None, **kw):
        super().__init__(**kw)
        self.s2s = s2s
        self.s2s_routes = dict(s2s_routes or {})
        self.s2s_ca_file = s2s_ca_file
        self.s2s_direct_tls_port = 0
        self.http = http
        self.web_root = web_root
        self.http_port = 0
        self.binary = str(Path(binary).resolve())
        self.config_path: Path | None = None
        self.admins = tuple(admins)  # bare JIDs written to `admins`
        self.extra_config = extra_config  # TOML appended to the generated config (after the
        #                                   [http] table: start it with a table header)

    def restart(self) -> "StarlingServer":
        """Stop the process (SIGTERM) and start it again on the same directory, data and
        ports: what persists across a restart is what the server stored."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        argv = [self.binary, "--config", str(self.config_path), "serve"]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.dir, env=self._env(), start_new_session=True)
        log.close()
        _RUNNING.add(self)
        self._wait_ready()
        return self

    def _ready_ports(self) -> list[int]:
        ports = super()._ready_ports()
        if self.s2s:
            ports += [self.s2s_port, self.s2s_direct_tls_port]
        if self.http:
            ports.append(self.http_port)
        return ports

    def _s2s_toml(self) -> str:
        if not self.s2s:
            return "[s2s]\nlisten = []\n"
        lines = ["[s2s]", f'listen = ["{LOOPBACK}:{self.s2s_port}"]',
                 f'direct_tls_listen = ["{LOOPBACK}:{self.s2s_direct_tls_port}"]',
                 "system_roots = false"]
        if self.s2s_ca_file:
            lines.append(f'ca_file = "{self.s2s_ca_file}"')
        lines.append("[s2s.routes]")
        lines += [f'"{d}" = "{t}"' for d, t in self.s2s_routes.items()]
        return "\n".join(lines) + "\n"

    def _http_toml(self) -> str:
        if not self.http:
            return "[http]\nlisten = []\n"
        lines = ["[http]", f'listen = ["{LOOPBACK}:{self.http_port}"]']
        if self.web_root is not None:
            lines.append(f'web_root = "{Path(self.web_root).resolve()}"')
        return "\n".join(lines) + "\n"

    def _write_config(self) -> list[str]:
        if self.s2s:
            self.s2s_direct_tls_port = free_port()
        if self.http:
            self.http_port = free_port()
        self.config_path = self.dir / "starling.toml"
        self.config_path.write_text(textwrap.dedent(f"""\
            domain = "{self.domain}"
            data_dir = "{self.dir / 'data'}"
            admins = [{", ".join(f'"{a}"' for a in self.admins)}]

            [c2s]
            listen = ["{LOOPBACK}:{self.c2s_port}"]
            direct_tls_listen = ["{LOOPBACK}:{self.direct_tls_port}"]
            allow_registration = {str(self.allow_registration).lower()}
            require_encryption = true

            """) + self._s2s_toml() + "\n" + self._http_toml() + "\n" + (self.extra_config + "\n" if self.extra_config else ""))
        return [self.binary, "--config", str(self.config_path), "serve"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"
        return env

    def adduser(self, user: str, password: str) -> None:
        self._run_cli([self.binary, "--config", str(self.config_path), "adduser",
                       self.jid(user), "--password", password], "starling adduser")

    def deluser(self, user: str) -> None:
        self._run_cli([self.binary, "--config", str(self.config_path), "deluser",
                       self.jid(user)], "starling deluser")


def make_self_signed(dir: Path, domain: str) -> tuple[Path, Path]:
    """A self-signed certificate for `domain` (Prosody needs one on disk)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(domain), x509.DNSName("*." + domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt = dir / f"{domain}.crt"
    keyf = dir / f"{domain}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    os.chmod(keyf, 0o600)
    return crt, keyf


class TestCA:
    """A certificate authority made for one run: it issues certificates (EC P-256, the
    serverAuth extended key usage only, as public CAs issue them today) for the names a
    test needs, so that servers can authenticate each other with SASL EXTERNAL."""

    def __init__(self, dir: Path, name: str = "Conformance test CA"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import datetime

        self.dir = Path(dir)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, names: list[str], *, client_auth: bool = False) -> tuple[Path, Path]:
        """A certificate for `names` (the first is the subject), as (cert file, key file).
        `client_auth` adds the clientAuth usage, for peers that insist on it in the
        certificate a server presents as a client (ejabberd 23.01 does)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        import datetime

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH]
                + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        crt = self.dir / f"{names[0]}.crt"
        keyf = self.dir / f"{names[0]}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(keyf, 0o600)
        return crt, keyf


class ProsodyServer(Server):
    """Debian's Prosody 0.12, run as the current user from a private config and data dir."""

    kind = "prosody"
    scram = "SCRAM-SHA-1"  # Prosody 0.12 has no SCRAM-SHA-256

    def __init__(self, *, s2s: bool = False, extra_config: str = "", log_level: str = "info",
                 certificate: tuple[Path, Path] | None = None, cafile: Path | None = None,
                 s2s_secure_auth: bool = False, components: str = "", **kw):
        """`s2s=True` enables s2s (with XEP-0220 dialback) on `s2s_port`; `extra_config` is
        Lua for the global section; `log_level="debug"` logs every stanza.
        `certificate` (cert, key) replaces the self-signed certificate, `cafile` is the
        trust store for peers' certificates, `s2s_secure_auth` makes Prosody require a
        valid certificate from every peer server (so SASL EXTERNAL, never dialback);
        `components` is Lua appended after the VirtualHost (Component sections)."""
        super().__init__(**kw)
        self.s2s = s2s
        self.extra_config = extra_config
        self.log_level = log_level
        self.certificate = certificate
        self.cafile = cafile
        self.s2s_secure_auth = s2s_secure_auth
        self.components = components
        self.config_path: Path | None = None

    def _ready_ports(self) -> list[int]:
        return super()._ready_ports() + ([self.s2s_port] if self.s2s else [])

    def _write_config(self) -> list[str]:
        data = self.dir / "data"
        data.mkdir()
        crt, key = self.certificate or make_self_signed(self.dir, self.domain)
        ssl = f'certificate = "{crt}", key = "{key}"'
        if self.cafile is not None:
            ssl += f', cafile = "{self.cafile}"'

        modules = ["roster", "saslauth", "tls", "disco", "ping", "version", "time", "uptime",
                   "register", "presence", "message", "iq"]
        if self.s2s:
            modules.append("dialback")
        self.config_path = self.dir / "prosody.cfg.lua"
        self.config_path.write_text(textwrap.dedent(f"""\
            run_as_root = true
            pidfile = "{self.dir / 'prosody.pid'}"
            data_path = "{data}"
            plugin_paths = {{}}
            admins = {{}}
            modules_enabled = {{ {", ".join(f'"{m}"' for m in modules)} }}
            modules_disabled = {{ {'' if self.s2s else '"s2s"'} }}
            interfaces = {{ "{LOOPBACK}" }}
            local_interfaces = {{ "{LOOPBACK}" }}
            c2s_ports = {{ {self.c2s_port} }}
            c2s_direct_tls_ports = {{ {self.direct_tls_port} }}
            s2s_ports = {{ {self.s2s_port} }}
            http_ports = {{}}
            https_ports = {{}}
            component_ports = {{}}
            network_settings = {{ nagle = false }}
            authentication = "internal_hashed"
            storage = "internal"
            c2s_require_encryption = true
            s2s_require_encryption = true
            s2s_secure_auth = {str(self.s2s_secure_auth).lower()}
            allow_registration = {str(self.allow_registration).lower()}
            min_seconds_between_registrations = 0
            log = {{ {{ levels = {{ min = "{self.log_level}" }}, to = "console" }} }}
            certificates = "{self.dir}"
            ssl = {{ {ssl} }}
            {self.extra_config}

            VirtualHost "{self.domain}"
                ssl = {{ {ssl} }}
            """) + (textwrap.dedent(self.components) if self.components else ""))
        return ["prosody", "-F", "--config", str(self.config_path)]

    def _prosodyctl(self, *args: str, what: str) -> None:
        self._run_cli(["prosodyctl", "--config", str(self.config_path), *args], what)

    def adduser(self, user: str, password: str) -> None:
        self._prosodyctl("register", user, self.domain, password, what="prosodyctl register")

    def deluser(self, user: str) -> None:
        self._prosodyctl("deluser", self.jid(user), what="prosodyctl deluser")
