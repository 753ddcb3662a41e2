"""`retrieval serve`: start every enabled service on one reactor, log to stderr."""

from __future__ import annotations

import importlib
import sys

from retrieval.config import Config

# config section -> module with `start(config, passwd, reactor) -> list of listening ports`
SERVICES = {
    "pop3": "retrieval.pop3.service",
    "imap": "retrieval.imap.service",
    "smtp": "retrieval.smtp.service",
}


def serve(config: Config) -> int:
    from twisted.internet import reactor
    from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

    from retrieval.auth.passwd import PasswdFile

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    log = Logger(namespace="retrieval")
    passwd = PasswdFile(config.auth.passwd_file, default_scheme=config.auth.default_scheme)
    for problem in passwd.problems():
        log.warn("{problem}", problem=str(problem))
    config.server.state_dir.mkdir(parents=True, exist_ok=True)
    started = 0
    for section, module_name in SERVICES.items():
        if not getattr(config, section).enabled:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            log.warn("[{section}] is configured but this version has no {section} service yet", section=section)
            continue
        ports = module.start(config, passwd, reactor)
        for port in ports:
            log.info("{section} listening on {addr}", section=section, addr=port.getHost())
        started += len(ports)
    if config.server.user:
        from retrieval.net.privileges import drop_privileges

        drop_privileges(config.server.user, config.server.group)
        log.info("running as user {user}", user=config.server.user)
    log.info("retrieval started: {n} listener(s); state in {state}", n=started, state=str(config.server.state_dir))
    reactor.run()  # type: ignore[attr-defined]
    return 0
