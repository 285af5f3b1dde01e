"""Real sshd daemons on loopback ports, for the tests and the benchmarks.

Each host has its own port and host key; one throwaway client key; logins as a
non-root user whose shell (/bin/sh) prints nothing at login. Client side: an
ssh_config with strict host key checking and a private known_hosts file, and
an inventory (hosts.yaml) that points at that config.

    hosts = SshdHosts(Path("/tmp/x"), n=3).start()
    ... hosts.inventory_file ...
    hosts.stop()
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USER_PREFIX = "cmft"   # every run creates its own user cmft<hex>: runs side by side never share one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None) -> None:
    """TERM a server we started, KILL it if it lingers, and reap it."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sshd_config(h: "SshdHost", keys: Path, user: str, listen: str = "127.0.0.1", max_sessions: int = 10,
                max_startups: str = "10:30:100") -> str:
    """A throwaway sshd: its own host key and pid file, key logins of one user only, quiet."""
    return f"""Port {h.port}
ListenAddress {listen}
HostKey {h.dir / "host_key"}
PidFile {h.dir}/sshd.pid
AuthorizedKeysFile {keys}/client.pub
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel ERROR
MaxSessions {max_sessions}
MaxStartups {max_startups}
"""


def have_sshd() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh") is not None


@dataclass
class SshdHost:
    name: str
    port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        try:
            return int((self.dir / "sshd.pid").read_text())
        except (OSError, ValueError):
            return None


@dataclass
class SshdHosts:
    base: Path
    n: int = 3
    max_sessions: int = 10            # OpenSSH's defaults: a stock host
    max_startups: str = "10:30:100"
    slots: int = 2
    hosts: list[SshdHost] = field(default_factory=list)
    user: str = ""
    cgroup: str | None = None          # a cgroup.procs file every sshd joins (benchmarks' CPU accounting)
    prefix: str = "h"                  # hosts are named prefix + number: h1, h2... or node01... with width 2
    width: int = 0
    _own_user: bool = False

    @property
    def ssh_config(self) -> Path:
        return self.base / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.base / "known_hosts"

    @property
    def inventory_file(self) -> Path:
        return self.base / "hosts.yaml"

    def _user(self) -> str:
        if os.geteuid() != 0:
            return pwd.getpwuid(os.getuid()).pw_name  # a non-root sshd can only log in its own user
        remove_stale_users()
        home = self.base / "home"
        user = USER_PREFIX + secrets.token_hex(4)
        # -p '*': no password but not locked; with UsePAM no a locked account cannot log in at all
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", user], check=True)
        self._own_user = True
        home.mkdir(parents=True, exist_ok=True)
        shutil.chown(home, user)
        return user

    def start(self) -> "SshdHosts":
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.user = self._user()
        keys = self.base / "keys"
        keys.mkdir(exist_ok=True)
        os.chmod(keys, 0o755)
        client = keys / "client"
        if not client.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cmflow-test", "-f", str(client)],
                           check=True)
        os.chmod(keys / "client.pub", 0o644)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        known = []
        config = []
        for i in range(1, self.n + 1):
            name = f"{self.prefix}{i:0{self.width}d}"
            h = SshdHost(name, free_port(), self.base / name)
            h.dir.mkdir(exist_ok=True)
            hostkey = h.dir / "host_key"
            if not hostkey.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
            (h.dir / "sshd_config").write_text(sshd_config(h, keys, self.user, max_sessions=self.max_sessions,
                                                          max_startups=self.max_startups))
            self.hosts.append(h)
            self._launch(h)
            pub = (h.dir / "host_key.pub").read_text().split()[:2]
            known.append(f"[127.0.0.1]:{h.port} {' '.join(pub)}")
            config.append(f"Host {h.name}\n    HostName 127.0.0.1\n    Port {h.port}\n")
        self.known_hosts.write_text("\n".join(known) + "\n")
        config.append(f"""Host {self.prefix}*
    User {self.user}
    IdentityFile {client}
    IdentitiesOnly yes
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    LogLevel ERROR
""")
        self.ssh_config.write_text("\n".join(config))
        self.write_inventory()
        for h in self.hosts:
            self.wait_ready(h)
        return self

    def write_inventory(self, slots: int | None = None) -> None:
        lines = [f"ssh_config: {self.ssh_config}", f"defaults: {{slots: {slots or self.slots}}}", "hosts:"]
        lines += [f"  {h.name}: {{}}" for h in self.hosts]
        self.inventory_file.write_text("\n".join(lines) + "\n")

    def _launch(self, h: SshdHost) -> None:
        # -D: stay in the foreground as our child, so stop() can wait for it
        join = None
        if self.cgroup:
            procs = self.cgroup

            def join() -> None:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
        h.proc = subprocess.Popen([SSHD, "-D", "-f", str(h.dir / "sshd_config"), "-E", str(h.dir / "sshd.log")],
                                  stdin=subprocess.DEVNULL, preexec_fn=join)

    def wait_ready(self, h: SshdHost, timeout: float = 20.0) -> None:
        """Poll until the host accepts a real login (sshd has no readiness signal)."""
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", h.name, "true"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return
            if h.proc and h.proc.poll() is not None:
                raise RuntimeError(f"sshd for {h.name} exited: {(h.dir / 'sshd.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd {h.name} not ready: {r.stderr}")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """Kill a host's sshd and every session it runs: the host is gone."""
        h = next(x for x in self.hosts if x.name == name)
        if h.proc and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()
        # each session is a separate sshd process holding a socket on this port
        out = subprocess.run(["ss", "-Htnp", f"sport = :{h.port}"], capture_output=True, text=True).stdout
        for pid in {int(m) for m in re.findall(r"pid=(\d+)", out)}:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def restart(self, name: str) -> None:
        h = next(x for x in self.hosts if x.name == name)
        self._launch(h)
        self.wait_ready(h)

    def ssh(self, name: str, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", name, command],
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        for h in self.hosts:
            stop_process(h.proc)
        if self._own_user:
            # sessions outlive the listener; end this run's user's processes (no one else uses it), then the user
            subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)
            delete_user(self.user)
            self._own_user = False


def delete_user(user: str) -> None:
    for _ in range(20):   # userdel refuses while a killed process of the user is still being reaped
        if subprocess.run(["userdel", user], capture_output=True).returncode in (0, 6):
            return
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
        time.sleep(0.1)


def remove_stale_users() -> None:
    """Users of earlier runs that died before their teardown: their home (the run's folder) is gone."""
    for entry in pwd.getpwall():
        if re.fullmatch(USER_PREFIX + "[0-9a-f]{8}", entry.pw_name) and not os.path.exists(entry.pw_dir):
            subprocess.run(["pkill", "-KILL", "-u", entry.pw_name], capture_output=True)
            delete_user(entry.pw_name)
