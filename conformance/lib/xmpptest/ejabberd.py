"""Debian's ejabberd 23.01 as a federation peer, run from a private config, Mnesia spool and
Erlang node name on ephemeral loopback ports (never as the system service).

ejabberdctl starts the Erlang VM as the `ejabberd` user, so the server's directory is handed
to that user. The VM looks SRV records up with Erlang's own resolver, configured by the
inetrc that ejabberdctl hands it ($CONFIG_DIR/inetrc): only the suite's DNS server, and no
resolv.conf (whose nameservers would otherwise replace it). The SRV target's address is then
resolved by the system's getaddrinfo, which knows no test names: give SRV targets as IP
addresses.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from .servers import LOOPBACK, Server, ServerError, make_self_signed, tail


def available() -> bool:
    try:
        pwd.getpwnam("ejabberd")
    except KeyError:
        return False
    return os.path.exists("/usr/sbin/ejabberdctl") and os.geteuid() == 0


class EjabberdServer(Server):
    kind = "ejabberd"

    def __init__(self, *, dns: tuple[str, int] | None = None, muc: bool = False,
                 certificate: tuple[Path, Path] | None = None, cafile: Path | None = None,
                 dialback: bool = True, **kw):
        """`dns`: (address, port) of the only DNS server the VM may ask for SRV records;
        `muc=True` adds a MUC service on `conference.<domain>`; `certificate` (cert, key)
        replaces the self-signed one and `cafile` is the trust store for peer servers'
        certificates (SASL EXTERNAL); `dialback=False` leaves mod_s2s_dialback out, so a
        peer that cannot be authenticated by its certificate is refused."""
        kw.setdefault("start_timeout", 60.0)
        super().__init__(**kw)
        self.dns = dns
        self.muc = muc
        self.certificate = certificate
        self.cafile = cafile
        self.dialback = dialback
        self.node = ""

    @property
    def muc_domain(self) -> str:
        return f"conference.{self.domain}"

    def _ready_ports(self) -> list[int]:
        return [self.c2s_port, self.s2s_port]

    def _ctl(self) -> list[str]:
        d = self.dir
        return ["ejabberdctl", "--config-dir", str(d), "--config", str(d / "ejabberd.yml"),
                "--ctl-config", str(d / "ejabberdctl.cfg"), "--logs", str(d / "logs"),
                "--spool", str(d / "spool"), "--node", self.node]

    def _write_config(self) -> list[str]:
        d = self.dir
        (d / "logs").mkdir()
        (d / "spool").mkdir()
        crt, key = self.certificate or make_self_signed(d, self.domain)
        pem = d / "cert.pem"
        pem.write_bytes(crt.read_bytes() + key.read_bytes())
        trust = ""
        if self.cafile is not None:
            ca = d / "peer-ca.pem"
            ca.write_bytes(Path(self.cafile).read_bytes())
            trust = f"s2s_cafile: {ca}\n"
        dialback = "  mod_s2s_dialback: {}\n" if self.dialback else ""
        self.node = f"conf{self.c2s_port}@localhost"
        muc = textwrap.indent(textwrap.dedent(f"""\
            mod_muc:
              host: {self.muc_domain}
              access_create: all
              default_room_options:
                persistent: false
            """), "  ") if self.muc else ""
        (d / "ejabberd.yml").write_text(textwrap.dedent(f"""\
            hosts: ["{self.domain}"]
            loglevel: info
            certfiles: ["{pem}"]
            define_macro: {{}}
            listen:
              - port: {self.c2s_port}
                ip: "{LOOPBACK}"
                module: ejabberd_c2s
                starttls_required: true
              - port: {self.s2s_port}
                ip: "{LOOPBACK}"
                module: ejabberd_s2s_in
            s2s_use_starttls: required
            s2s_access: all
            outgoing_s2s_families: [ipv4]
            auth_method: internal
            auth_password_format: scram
            default_db: mnesia
            acl:
              local:
                user_regexp: ""
            access_rules:
              local: {{allow: local}}
            modules:
              mod_disco: {{}}
              mod_ping: {{}}
              mod_roster: {{}}
              mod_version: {{}}
            """) + dialback + muc + trust)
        # ejabberdctl hands the VM $CONFIG_DIR/inetrc (ERL_INETRC).
        inetrc = d / "inetrc"
        # No resolv.conf: the system's nameservers would replace the one named here.
        lines = ['{resolv_conf, ""}.', '{file, hosts, "/etc/hosts"}.', "{lookup, [file, dns]}."]
        if self.dns is not None:
            ip, port = self.dns
            lines.append(f"{{nameserver, {{{ip.replace('.', ',')}}}, {port}}}.")
        lines += ["{timeout, 2000}.", "{retry, 2}."]  # milliseconds
        inetrc.write_text("\n".join(lines) + "\n")
        erl = d / "erl"
        erl.write_text('#!/bin/sh\nulimit -n "$(ulimit -Hn)"\nexec /usr/bin/erl "$@"\n')
        erl.chmod(0o755)
        (d / "ejabberdctl.cfg").write_text(textwrap.dedent(f"""\
            POLL=true
            ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
            EJABBERD_PID_PATH={d}/ejabberd.pid
            ERL={erl}
            """))
        subprocess.run(["chown", "-R", "ejabberd:", str(d)], check=True)
        # The VM runs as ejabberd: it must be able to reach its directory.
        os.chmod(d, 0o755)
        return self._ctl() + ["foreground"]

    def start(self) -> "EjabberdServer":
        super().start()
        # The ports listen a moment before the VM has loaded every module.
        time.sleep(1.0)
        return self

    def adduser(self, user: str, password: str) -> None:
        self._run_cli(self._ctl() + ["register", user, self.domain, password],
                      "ejabberdctl register")

    def deluser(self, user: str) -> None:
        self._run_cli(self._ctl() + ["unregister", user, self.domain], "ejabberdctl unregister")

    def stop(self, keep_log: bool = False) -> None:
        # The VM runs under su as another user, outside the process group killpg reaches:
        # stop it by its node name first.
        if self.node:
            pids = subprocess.run(["pgrep", "-f", f"beam.*{self.node}"], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
                time.sleep(0.1)
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        super().stop(keep_log=keep_log)

    def log_tail(self, max_bytes: int = 6000) -> str:
        out = super().log_tail(max_bytes)
        if self.dir is not None and (self.dir / "logs" / "ejabberd.log").exists():
            out += "\n--- ejabberd.log ---\n" + tail(self.dir / "logs" / "ejabberd.log", max_bytes)
        return out


__all__ = ["EjabberdServer", "ServerError", "available"]
