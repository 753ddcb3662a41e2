"""docs/deploy.md, followed as far as a container allows.

The config, the folder and user commands, the certbot hook, the check and the list of
sockets to enable are read from the page itself (so page and test cannot drift apart) and
run with temporary paths; the server is started as systemd would start it from the units in
systemd/: `systemd-socket-activate` hands over one socket per enabled unit, named by its
`FileDescriptorName=`, and the process runs as an unprivileged user with no capabilities
(`setpriv`, for `User=`, `CapabilityBoundingSet=` and `NoNewPrivileges=`).
"""

from __future__ import annotations

import grp
import imaplib
import os
import poplib
import pwd
import re
import shlex
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, free_port, process_uids, tls_serial
from test_workers import children, wait_for

DOC = ROOT / "docs" / "deploy.md"
UNITS = ROOT / "systemd"
PASSWORD = "correct horse battery"


# -- reading the page ---------------------------------------------------------------------

def doc_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block under the `## ...` heading that starts with `heading`."""
    text = DOC.read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    matches = [s for s in sections if s.startswith(heading)]
    assert len(matches) == 1, f"docs/deploy.md has no single section '## {heading}...'"
    return re.findall(r"^```(\w+)\n(.*?)^```", matches[0], flags=re.M | re.S)


def shell_lines(block: str) -> list[str]:
    """The commands of a sh block, continuation lines joined, comments dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def unit_option(unit: Path, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key + "=")]
    assert len(values) == 1, f"{unit.name}: {key}= {values}"
    return values[0]


class Layout:
    """The page's paths, users and commands, moved into a temp folder."""

    def __init__(self, base: Path, user: str, group: str, as_root: bool) -> None:
        self.base = base
        self.user = user
        self.group = group
        self.as_root = as_root
        self.bin = base / "bin"
        self.bin.mkdir()
        self.paths = {  # the page's path -> here
            "/etc/letsencrypt": base / "letsencrypt",
            "/etc/retrieval": base / "etc",
            "/var/lib/retrieval": base / "state",
            "/var/vmail": base / "mail",  # (not a name with "vmail" in it: that word becomes the user)
            "/usr/local/bin/retrieval": self.bin / "retrieval",
        }
        # /usr/local/bin/retrieval: the symlink to the virtualenv's script; here this checkout
        (self.bin / "retrieval").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m retrieval "$@"\n')
        (self.bin / "retrieval").chmod(0o755)
        self.mainpid = base / "mainpid"
        # systemctl try-reload-or-restart: the unit's ExecReload for a running service, else nothing
        reload = unit_option(UNITS / "retrieval.service", "ExecReload")
        (self.bin / "systemctl").write_text(
            "#!/bin/sh\n"
            f'[ "$1" = try-reload-or-restart ] && [ "$2" = retrieval.service ] || exit 1\n'
            f"[ -s {self.mainpid} ] || exit 0\n"
            f"MAINPID=$(cat {self.mainpid})\n"
            f"{reload}\n"
        )
        (self.bin / "systemctl").chmod(0o755)
        self.env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def text(self, text: str) -> str:
        for path, here in self.paths.items():
            text = text.replace(path, str(here))
        if not self.as_root:  # nobody to give files to: they stay ours
            text = re.sub(r"-o \S+ -g \S+ ", "", text)
        text = text.replace("-g vmail", f"-g {self.group}")
        return re.sub(r"\bvmail\b", self.user, text)

    def run(self, line: str, input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(["sh", "-ec", self.text(line)], input=input, capture_output=True, text=True,
                                env=self.env, timeout=120)
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
        return result


# -- what runs the server -------------------------------------------------------------------

def listening_ports(pids: set[int]) -> set[int]:
    """TCP ports these processes hold listening sockets for (from /proc: what they really serve)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{min(pids)}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def unprivileged(user: str, group: str) -> list[str]:
    """What the unit's User=/Group=, CapabilityBoundingSet= (empty) and NoNewPrivileges=yes do."""
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--bounding-set=-all",
            "--inh-caps=-all", "--no-new-privs", "--"]


def can_run_here(layout: Layout, user: str, group: str) -> bool:
    """Can that user run this Python and import this checkout? (Not when they live under /root.)"""
    probe = subprocess.run([*unprivileged(user, group), str(layout.bin / "retrieval"), "--help"],
                           capture_output=True, timeout=60, env=layout.env)
    return probe.returncode == 0


# -- the test -------------------------------------------------------------------------------

def test_deploy_doc(tmp_path):
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is absent (apt-get install systemd)")
    as_root = os.getuid() == 0
    if as_root:
        user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        # pytest's tmp_path is root's (0700): the mail user must reach its folders, as /var/vmail
        base = Path(tempfile.mkdtemp(prefix="retrieval-deploy-"))
        os.chmod(base, 0o755)
    else:
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        base = tmp_path
    proc = None
    try:
        layout = Layout(base, user, group, as_root)

        # 1-2. folders (the mail user itself is `nobody` here: adduser would change the machine)
        folders = [line for lang, block in doc_blocks("2.") if lang == "sh" for line in shell_lines(block)]
        assert folders[0].startswith("adduser --system --group") and " vmail" in folders[0]
        assert all(line.startswith("install ") for line in folders[1:]), folders
        for line in folders[1:]:
            layout.run(line)

        # 3. the config, as the page has it
        (toml_block,) = [block for lang, block in doc_blocks("3.") if lang == "toml"]
        config_path = layout.paths["/etc/retrieval"] / "retrieval.toml"
        config_path.write_text(layout.text(toml_block))
        config = tomllib.loads(toml_block)
        layout.env["RETRIEVAL_CONFIG"] = str(config_path)  # the default path, moved
        assert config["auth"]["allow_plaintext"] is False
        assert "listen" not in config["imap"] and "listen" not in config["pop3"], "a plaintext IMAP/POP3 port"

        # 4. a user and the aliases
        (users,) = [shell_lines(block) for lang, block in doc_blocks("4.") if lang == "sh"]
        assert users[0].startswith("retrieval passwd add alice ")
        layout.run(users[0] + " --password-stdin", input=PASSWORD + "\n")
        for line in users[1:]:
            layout.run(line)

        # 5. certbot's files (a certificate from our own CA in its place), the hook, run by hand
        blocks = [block for lang, block in doc_blocks("5.") if lang == "sh"]
        hook = next(block for block in blocks if block.startswith("#!/bin/sh"))
        hook_path = Path(layout.text(hook.splitlines()[1].split(":")[0].lstrip("# ")))
        by_hand = next(block for block in blocks if "RENEWED_LINEAGE=" in block)
        lineage = Path(layout.text(re.search(r"RENEWED_LINEAGE=(\S+)", by_hand).group(1)))
        assert lineage.name == "mail.example.org"

        def certbot_issues(name: str) -> Path:
            """A new certificate and key in certbot's live/ folder, as after a renewal."""
            out = base / name
            result = subprocess.run([str(layout.bin / "retrieval"), "cert", "selfsigned", "--host", "mail.example.org",
                                     "--out", str(out)], capture_output=True, text=True, env=layout.env, timeout=60)
            assert result.returncode == 0, result.stderr
            lineage.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / "server.pem", lineage / "fullchain.pem")
            shutil.copy(out / "server.key", lineage / "privkey.pem")
            return out

        first = certbot_issues("ca1")
        hook_path.parent.mkdir(parents=True, exist_ok=True)
        hook_path.write_text(layout.text(hook))
        for line in shell_lines(by_hand):
            layout.run(line)
        tls = layout.paths["/etc/retrieval"] / "tls"
        assert (tls / "fullchain.pem").read_bytes() == (first / "server.pem").read_bytes()
        key_mode = (tls / "privkey.pem").stat()
        assert key_mode.st_mode & 0o777 == 0o640 and (not as_root or key_mode.st_uid == 0)

        # 6. the check: no problem, and no warning either (the key's group is the server's)
        (check,) = [shell_lines(block)[0] for lang, block in doc_blocks("6.") if lang == "sh"]
        result = layout.run(check)
        assert result.stdout.strip() == f"{config_path}: OK", result.stdout + result.stderr

        # 7. the sockets the page enables, as systemd would pass them; the service's command
        (units,) = [block for lang, block in doc_blocks("7.") if lang == "sh"]
        enable = next(line for line in shell_lines(units) if line.startswith("systemctl enable --now retrieval-"))
        sockets = enable.split()[3:]
        names, args, ports = [], [], {}
        for socket_unit in sockets:
            unit = UNITS / socket_unit
            assert f"systemd/{socket_unit}" in units, f"{socket_unit} is enabled but not copied"
            assert unit_option(unit, "Service") == "retrieval.service"
            name = unit_option(unit, "FileDescriptorName")
            ports[name] = free_port()
            names.append(name)
            args += ["-l", f"127.0.0.1:{ports[name]}"]
            # the config's own address for that name has this socket's port
            section = {"imaps": ("imap", "listen_tls"), "pop3s": ("pop3", "listen_tls"),
                       "smtp": ("smtp", "listen"), "submissions": ("smtp", "submissions")}[name]
            assert config[section[0]][section[1]] == [f"0.0.0.0:{unit_option(unit, 'ListenStream')}"]
        assert sorted(names) == ["imaps", "pop3s", "smtp", "submissions"]  # TLS-only: no imap, no pop3
        service = UNITS / "retrieval.service"
        assert unit_option(service, "User") == "vmail" and unit_option(service, "CapabilityBoundingSet") == ""
        command = shlex.split(layout.text(unit_option(service, "ExecStart")))
        systemd_way = not as_root or can_run_here(layout, user, group)
        if as_root and systemd_way:
            command = unprivileged(user, group) + command
        # else: this Python is out of the mail user's reach; start as root and let `[server]
        # user` drop privileges after taking the sockets, as `retrieval serve` does without systemd
        log = base / "server.log"
        proc = subprocess.Popen([activate, *args, f"--fdname={':'.join(names)}", *command],
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=layout.env)
        wait_for(lambda: log.read_text().count("Listening on") == len(names), "systemd-socket-activate's sockets")
        layout.mainpid.write_text(str(proc.pid))

        # 8. IMAPS and POP3S logins with the CA; the server started on the first connection
        ctx = ssl.create_default_context(cafile=str(first / "ca.pem"))
        imap = imaplib.IMAP4_SSL("localhost", ports["imaps"], ssl_context=ctx, timeout=30)
        imap.login("alice", PASSWORD)
        assert imap.select("INBOX")[0] == "OK"
        pop = poplib.POP3_SSL("localhost", ports["pop3s"], context=ctx, timeout=30)
        pop.user("alice")
        assert pop.pass_(PASSWORD).startswith(b"+OK")
        pop.quit()
        wait_for(lambda: "retrieval started" in log.read_text(), "the server to be ready")
        assert f"socket-activated: {', '.join(sorted(names))}" in log.read_text()

        # the serving processes are not root; they listen on systemd's sockets and nothing else
        serving = {int(pid) for pid in re.findall(r"worker \d+ serving: pid (\d+)", log.read_text())} or {proc.pid}
        assert serving <= children(proc.pid) | {proc.pid}
        mail_uid = str(pwd.getpwnam(user).pw_uid)
        for pid in serving | ({proc.pid} if systemd_way else set()):
            assert process_uids(pid) == [mail_uid] * 4, f"pid {pid} runs as {process_uids(pid)}"
        assert all(listening_ports({pid}) == set(ports.values()) for pid in serving)

        # SMTP on 25: STARTTLS offered, AUTH only after it
        with smtplib.SMTP("localhost", ports["smtp"], timeout=30) as smtp:
            smtp.ehlo("client.example.net")
            assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
            smtp.starttls(context=ctx)
            smtp.ehlo("client.example.net")
            assert smtp.has_extn("auth")
            smtp.quit()

        # certbot renews: the hook copies the new files in and reloads; new connections see
        # the new certificate, the open IMAP session carries on
        before = tls_serial(ports["imaps"], first / "ca.pem")
        second = certbot_issues("ca2")
        for line in shell_lines(by_hand)[1:]:  # the hook, as certbot runs it
            layout.run(line)
        expected = sum(1 for _ in serving)
        wait_for(lambda: log.read_text().count("reloaded: certificates re-read") >= expected, "the reload")
        from cryptography import x509

        renewed = x509.load_pem_x509_certificate((second / "server.pem").read_bytes()).serial_number
        assert renewed != before
        for _ in range(2 * expected):  # whichever worker answers
            assert tls_serial(ports["imaps"], second / "ca.pem") == renewed

        # submissions: implicit TLS, AUTH, then the mail reaches the open session's INBOX
        new_ctx = ssl.create_default_context(cafile=str(second / "ca.pem"))
        with smtplib.SMTP_SSL("localhost", ports["submissions"], context=new_ctx, timeout=30) as smtp:
            smtp.login("alice", PASSWORD)
            refused = smtp.sendmail("alice@example.org", ["alice@example.org"],
                                    b"Subject: after the renewal\r\n\r\nhello\r\n")
            assert refused == {}

        def arrived() -> bool:
            assert imap.noop()[0] == "OK"
            return imap.select("INBOX")[1] == [b"1"]

        wait_for(arrived, "the message in the open session")
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"after the renewal" in data[0][1]
        imap.logout()
        maildir = layout.paths["/var/vmail"] / "alice"  # mail_location = "maildir:/var/vmail/%u"
        new_files = [*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()]
        assert len(new_files) == 1 and new_files[0].stat().st_uid == int(mail_uid)

        # 9. the queue commands, as the mail user
        if systemd_way:
            (queue,) = [shell_lines(block) for lang, block in doc_blocks("9.") if lang == "sh" and "queue" in block]
            for line in queue:
                if " ID" not in line:
                    assert line.startswith("runuser -u vmail -- retrieval queue ")
                    layout.run(line if as_root else line.replace("runuser -u vmail -- ", ""))

        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if as_root:
            shutil.rmtree(base, ignore_errors=True)
