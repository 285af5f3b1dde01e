"""Nothing from an inventory becomes an ssh option or a shell word (issue 8 item 9), over real sshd hosts."""
from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from cmflow import api
from cmflow.errors import ConfigError
from cmflow.executor import RunOptions
from cmflow.hosts import parse_inventory

from sshhosts import have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


def inventory(sshd_hosts, settings: str):
    return parse_inventory(f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n  h1: {settings}\n", "inv.yaml")


def run_expr(tmp_path: Path, inv, expr: str, tasks: str):
    (tmp_path / "tk.py").write_text(tasks)
    (tmp_path / "f.flow").write_text(f"from tk import *\n{expr}\n")
    plan, inv = api.load(str(tmp_path / "f.flow"), inv=inv)
    return api.run_sync(plan, inv, RunOptions(), tmp_path / "run")


def test_workdir_is_quoted_and_its_failure_is_a_job_failure(sshd_hosts, tmp_path):
    marker = Path(f"/tmp/cmflow-pwned-{secrets.token_hex(4)}")
    wd = f"/x'$(touch {marker})'"
    inv = inventory(sshd_hosts, f'{{workdir: "{wd}", slots: 1}}')
    run = run_expr(tmp_path, inv, "j(1) | j(2) | j(3) | j(4)", "def j(i):\n    return f'echo {i}'\n")
    assert not marker.exists()
    assert not run.result.ok and len(run.result.failures) == 4
    f = run.result.failures[0]
    assert f"cannot enter workdir {wd!r}" in f.reason + f.stderr_tail, (f.reason, f.stderr_tail)
    assert "authentication" not in f.reason and not f.reason.startswith("connection failed"), f.reason
    assert run.result.down_hosts == []


def test_workdir_under_home_with_a_blank(sshd_hosts, tmp_path):
    home = sshd_hosts.base / "home"
    (home / "my dir").mkdir(exist_ok=True)
    shutil.chown(home / "my dir", sshd_hosts.user)
    inv = inventory(sshd_hosts, '{workdir: "~/my dir"}')
    run = run_expr(tmp_path, inv, "here", "def here():\n    return 'pwd'\n")
    assert run.result.ok, run.result.failures
    assert run.result.value == str(home / "my dir")


@pytest.mark.parametrize("settings,where", [
    ('{hostname: "-oProxyCommand=touch /tmp/x"}', "hosts.h1.hostname"),
    ('{hostname: "a b"}', "hosts.h1.hostname"),
    ('{hostname: "{name}.{domain}"}', "hosts.h1.hostname"),
    ('{user: "-oProxyCommand=x"}', "hosts.h1.user"),
    ('{port: 0}', "hosts.h1.port"),
    ('{port: "22"}', "hosts.h1.port"),
    ('{ssh_options: ["ProxyCommand=x\\nHost *"]}', "hosts.h1.ssh_options[0]"),
    ('{workdir: "a\\nb"}', "hosts.h1.workdir"),
])
def test_host_settings_that_could_become_options_are_refused(sshd_hosts, settings, where):
    with pytest.raises(ConfigError) as e:
        inventory(sshd_hosts, settings)
    assert f"inv.yaml: {where}: " in str(e.value)


def test_ssh_options_end_before_the_host(sshd_hosts, tmp_path):
    """A host name that slipped past validation is still never read as an option by ssh."""
    import asyncio

    from cmflow.hosts import Host
    from cmflow.transport import JobSpec
    from cmflow.transport.ssh import SshTransport

    marker = Path(f"/tmp/cmflow-pwned-{secrets.token_hex(4)}")
    t = SshTransport(Host("evil", f"-oProxyCommand=touch {marker}"), str(sshd_hosts.ssh_config),
                     connect_timeout=5)

    async def go():
        try:
            return await t.run(JobSpec(1, "echo hi", tmp_path / "o", tmp_path / "e"))
        finally:
            await t.aclose()

    outcome = asyncio.run(go())
    assert outcome.connection_failed and not marker.exists()
