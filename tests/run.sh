#!/usr/bin/env bash
# Set up everything the test suite needs on Debian 12 (peers from apt, a virtualenv) and run it.
# Extra arguments go to pytest, e.g. `tests/run.sh -k maildir -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="python3-venv dovecot-imapd dovecot-pop3d procmail maildrop fetchmail getmail6 isync offlineimap3 mutt tmux swaks curl socat openssl postfix fail2ban bsd-mailx testssl.sh systemd"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    $SUDO apt-get update -q
    case " $missing " in *" postfix "*)
        # tests run private instances (tests/postfix_helper.py): no /etc/postfix/main.cf, so the
        # system Postfix has nothing to start on port 25
        echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections ;;
    esac
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
    case " $missing " in *" postfix "*)
        if $SUDO postfix status >/dev/null 2>&1; then $SUDO postfix stop || true; fi ;;
    esac
    case " $missing " in *" fail2ban "*)
        # only fail2ban-regex is used (tests/test_logging.py): no daemon banning on a test machine
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now fail2ban >/dev/null 2>&1 || true
        fi ;;
    esac
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
