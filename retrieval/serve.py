"""`retrieval serve` (every enabled service on one reactor) and `retrieval inetd`
(one connection on fd 0); logs go to stderr (journald under systemd)."""

from __future__ import annotations

import importlib
import os
import sys

from retrieval.config import Config

# config section -> module with `listeners(config, passwd, reactor) -> list[Listener]`
SERVICES = {
    "pop3": "retrieval.pop3.service",
    "imap": "retrieval.imap.service",
    "smtp": "retrieval.smtp.service",
    "autoconfig": "retrieval.net.autoconfig",
}
# inetd/systemd names -> the config section that serves them
LISTENER_SECTION = {
    "imap": "imap", "imaps": "imap",
    "pop3": "pop3", "pop3s": "pop3",
    "smtp": "smtp", "submission": "smtp", "submissions": "smtp",
    "autoconfig": "autoconfig", "autoconfig-https": "autoconfig",
}


def _start_logging() -> None:
    from retrieval.logline import start_logging

    start_logging(sys.stderr)


def _passwd(config: Config):  # type: ignore[no-untyped-def]
    from retrieval.auth.passwd import PasswdFile

    return PasswdFile(config.auth.passwd_file, default_scheme=config.auth.default_scheme)


def _listeners(config: Config, passwd, reactor, inherited: dict[str, list[int]]):  # type: ignore[no-untyped-def]
    """Every listener of every service the config enables (or systemd has sockets for)."""
    for section, module_name in SERVICES.items():
        wanted = getattr(config, section, None)
        has_inherited = any(LISTENER_SECTION.get(name, name) == section for name in inherited)
        if wanted is None or not (wanted.enabled or has_inherited):
            continue
        module = importlib.import_module(module_name)
        yield from module.listeners(config, passwd, reactor)


def serve(config: Config) -> int:
    """`[server] workers` = 1: this process serves; more: a supervisor runs that many workers."""
    from retrieval.net.activation import inherited_sockets
    from retrieval.net.workers import worker_count

    _start_logging()
    count = worker_count(config)
    if count == 1:
        return _serve(config, inherited_sockets())
    return _supervise(config, count, inherited_sockets())


def worker(config: Config) -> int:
    """`retrieval worker`: one of the processes `serve` starts, on the sockets it passed."""
    from retrieval.net.workers import is_worker, worker_sockets

    if not is_worker():
        print("retrieval worker: started by `retrieval serve` only (it passes the sockets)", file=sys.stderr)
        return 64
    _start_logging()
    return _serve(config, worker_sockets(), worker=True)


def _supervise(config: Config, count: int, inherited: dict[str, list[int]]) -> int:
    """Bind (or take systemd's sockets), check the setup, and hand over to the supervisor.

    The services' listeners are built here too, only to find their names and
    addresses, and so that a bad certificate or alias file stops us before any
    worker starts; the workers build their own."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from retrieval.net.listen import bind_socket
    from retrieval.net.workers import supervise

    log = Logger(namespace="retrieval")
    passwd = _passwd(config)
    for problem in passwd.problems():
        log.warn("{problem}", problem=str(problem))
    config.server.state_dir.mkdir(parents=True, exist_ok=True)
    if inherited:
        log.info("socket-activated: {names}", names=", ".join(sorted(inherited)))
    fds: dict[str, list[int]] = {}
    held = []
    for listener in _listeners(config, passwd, reactor, inherited):
        if inherited.get(listener.name):
            fds[listener.name] = list(inherited[listener.name])
            continue
        for address in listener.addresses:
            sock = bind_socket(address)
            held.append(sock)
            fds.setdefault(listener.name, []).append(sock.fileno())
            log.info("{name} listening on {addr}", name=listener.name, addr=address)
    if os.getuid() == 0 and config.server.user is None:
        log.warn("running as root: set [server] user to drop privileges after binding")
    status = supervise(config, count, fds)
    for sock in held:
        sock.detach()  # the supervisor closed them when stopping
    return status


def _serve(config: Config, inherited: dict[str, list[int]], worker: bool = False) -> int:
    from twisted.internet import reactor
    from twisted.logger import Logger

    from retrieval.net.activation import sd_notify
    from retrieval.net.drain import SESSIONS
    from retrieval.net.listen import bind
    from retrieval.net.workers import announce_ready, die_with_parent

    log = Logger(namespace="retrieval")
    passwd = _passwd(config)
    if not worker:  # the supervisor said it
        for problem in passwd.problems():
            log.warn("{problem}", problem=str(problem))
        if inherited:
            log.info("socket-activated: {names}", names=", ".join(sorted(inherited)))
    config.server.state_dir.mkdir(parents=True, exist_ok=True)
    ports = []
    for listener in _listeners(config, passwd, reactor, inherited):
        if worker and not inherited.get(listener.name):
            continue  # a worker binds nothing itself
        for port in bind(reactor, listener, inherited):
            if not worker:
                log.info("{name} listening on {addr}", name=listener.name, addr=port.getHost())
            ports.append(port)
    if config.server.user:
        from retrieval.net.privileges import drop_privileges, give_to, preload

        give_to(config.server.state_dir, config.server.user, config.server.group)
        preload()
        drop_privileges(config.server.user, config.server.group)
        log.info("running as user {user}", user=config.server.user)
    elif os.getuid() == 0 and not worker:
        log.warn("running as root: set [server] user to drop privileges after binding")
    if worker:
        die_with_parent()
        log.info("worker {slot} serving: pid {pid}, {n} listener(s)", slot=os.environ.get("RETRIEVAL_WORKER", "?"),
                 pid=os.getpid(), n=len(ports))
    else:
        log.info("retrieval started: {n} listener(s); state in {state}", n=len(ports), state=str(config.server.state_dir))
    # Room for many sessions' store work (Thunderbird opens 5 connections per account) and
    # for fsyncs side by side: the file system commits concurrent ones together
    reactor.suggestThreadPoolSize(32)
    _install_reload(config, reactor, log)
    reactor.callWhenRunning(sd_notify, "READY=1\nSTATUS=serving")
    reactor.callWhenRunning(announce_ready)
    reactor.addSystemEventTrigger("before", "shutdown", sd_notify, "STOPPING=1")
    reactor.addSystemEventTrigger("before", "shutdown", SESSIONS.drain, reactor, ports, config.server.shutdown_timeout)
    reactor.run()  # type: ignore[attr-defined]
    return 0


def _install_reload(config: Config, reactor, log) -> None:  # type: ignore[no-untyped-def]
    """SIGHUP: check the config again and reload certificates; sessions keep going.

    The passwd-file is re-read by itself when it changes. Listener changes need a
    restart (the sockets are bound, maybe by systemd)."""
    import signal

    from retrieval.config import load_config
    from retrieval.net.activation import sd_notify
    from retrieval.net.tls import reload_all
    from retrieval.problems import ProblemsError

    def reload() -> None:
        sd_notify("RELOADING=1")
        try:
            load_config(config.path)
        except ProblemsError as exc:
            for problem in exc.problems:
                log.error("reload refused, still running on the old config: {problem}", problem=str(problem))
            sd_notify("READY=1")
            return
        problems = reload_all()
        for problem in problems:
            log.error("reload: certificate kept: {problem}", problem=problem)
        if not problems:
            log.info("reloaded: certificates re-read")
        sd_notify("READY=1")

    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


def inetd(config: Config, name: str) -> int:
    """Serve the one connection inetd (or `systemd Accept=yes`, or socat) gave us on fd 0.

    The fd is adopted as a real TCP connection, not wrapped as standard I/O, so that
    STARTTLS/STLS can start TLS on it; imaps/pop3s/submissions start with TLS.
    """
    from twisted.internet import reactor
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    from retrieval.net.activation import family_of, tls_wrapped

    if name not in LISTENER_SECTION:
        print(f"retrieval inetd: unknown service {name!r} (one of {', '.join(LISTENER_SECTION)})", file=sys.stderr)
        return 64
    _start_logging()
    module = importlib.import_module(SERVICES[LISTENER_SECTION[name]])
    listener = next(item for item in module.listeners(config, _passwd(config), reactor) if item.name == name)

    class StopWhenDone(ProtocolWrapper):
        def connectionLost(self, reason):  # type: ignore[no-untyped-def]
            ProtocolWrapper.connectionLost(self, reason)
            if reactor.running:
                reactor.callLater(0.5, reactor.stop)  # let threads hand back what they hold

    os.set_blocking(0, False)
    factory = WrappingFactory(tls_wrapped(listener.factory, listener.tls))
    factory.protocol = StopWhenDone
    factory.doStart()
    reactor.callWhenRunning(reactor.adoptStreamConnection, 0, family_of(0), factory)
    reactor.run()  # type: ignore[attr-defined]
    return 0
