#!/usr/bin/env bash
# The Debian package on this machine: build it (systemd/package.sh), install
# it with dpkg -i, check what it put where (the binary, the unit, the user,
# the conffiles, the man pages, the completions), that `ringlb check` takes
# the installed config and `systemd-analyze verify` the installed unit, that
# a reinstall keeps an edited conffile, then remove and purge it and check
# that nothing is left but the ringlb user (Debian policy keeps system
# users). systemd need not be running: the maintainer scripts work offline.
#
# It changes the machine (dpkg -i, a system user), so it runs as root only,
# and only when asked: .ci/run calls it on the CI machine.
#   sudo bash tests/package.sh [dev|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
if [ "$(id -u)" != 0 ]; then
    echo "tests/package.sh: needs root (dpkg -i); skipped" >&2
    exit 0
fi
if dpkg-query -W -f '${Status}' ringlb 2>/dev/null | grep -q installed; then
    echo "tests/package.sh: a ringlb package is installed already; not touching it" >&2
    exit 1
fi
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== package: $*"; }

deb=$(bash systemd/package.sh "$profile" | tail -1)
[ -f "$deb" ] || fail "no package built"
step "built $deb"

user_before=$(getent passwd ringlb || true)
export RINGLB_ENABLE=yes
dpkg -i "$deb"
step "installed"
for f in /usr/bin/ringlb /usr/lib/systemd/system/ringlb.service /usr/lib/sysusers.d/ringlb.conf \
    /etc/logrotate.d/ringlb /etc/ringlb/ringlb.toml /usr/share/ringlb/grafana-dashboard.json \
    /usr/share/man/man1/ringlb.1.gz /usr/share/man/man5/ringlb.toml.5.gz \
    /usr/share/bash-completion/completions/ringlb /usr/share/zsh/vendor-completions/_ringlb \
    /usr/share/fish/vendor_completions.d/ringlb.fish /usr/share/doc/ringlb/copyright; do
    [ -f "$f" ] || fail "$f is missing"
done
[ -x /usr/bin/ringlb ] || fail "/usr/bin/ringlb is not executable"
grep -qx /etc/ringlb/ringlb.toml /var/lib/dpkg/info/ringlb.conffiles || fail "the config is not a conffile"
getent passwd ringlb >/dev/null || fail "no ringlb user"
[ "$(stat -c %U:%a /var/log/ringlb)" = ringlb:750 ] || fail "/var/log/ringlb: $(stat -c %U:%a /var/log/ringlb)"
[ -L /etc/systemd/system/multi-user.target.wants/ringlb.service ] || fail "ringlb.service is not enabled"
if [ -d /run/systemd/system ]; then
    systemctl is-active --quiet ringlb.service && fail "ringlb.service was started on install"
fi
/usr/bin/ringlb --version | grep -Eq '^ringlb [0-9.]+ \(commit [0-9a-f]{12}\)$' ||
    fail "--version: $(/usr/bin/ringlb --version)"
/usr/bin/ringlb check -c /etc/ringlb/ringlb.toml || fail "ringlb check of the installed config"
for page in /usr/share/man/man1/ringlb.1.gz /usr/share/man/man5/ringlb.toml.5.gz; do
    text=$(MANWIDTH=100 man -l "$page" 2>/tmp/ringlb-man.err) || fail "man -l $page: $(cat /tmp/ringlb-man.err)"
    [ "$(echo "$text" | wc -l)" -gt 20 ] || fail "man -l $page rendered almost nothing"
done
MANWIDTH=100 man -l /usr/share/man/man5/ringlb.toml.5.gz 2>/dev/null | grep -q "shutdown_timeout" ||
    fail "ringlb.toml(5) lacks the [runtime] table"
MANWIDTH=100 man -l /usr/share/man/man1/ringlb.1.gz 2>/dev/null | grep -q "ringlb upgrade" ||
    fail "ringlb(1) lacks the upgrade command"
# The completion script loads in bash and completes the subcommands.
words=$(bash -c 'source /usr/share/bash-completion/completions/ringlb
    COMP_WORDS=(ringlb up); COMP_CWORD=1; COMP_LINE="ringlb up"; COMP_POINT=9
    _ringlb ringlb up ringlb; printf "%s\n" "${COMPREPLY[@]}"') || fail "the bash completion does not load"
echo "$words" | grep -qx upgrade || fail "bash completion of 'ringlb up': $words"
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify /usr/lib/systemd/system/ringlb.service || fail "systemd-analyze verify"
fi
step "files, user, config, man pages, completion and unit checked"

# An edited conffile survives a reinstall (and so an upgrade).
echo "# edited by the operator" >> /etc/ringlb/ringlb.toml
dpkg -i "$deb"
grep -q "edited by the operator" /etc/ringlb/ringlb.toml || fail "the reinstall overwrote the edited config"
step "reinstall kept the edited conffile"

echo "a line" > /var/log/ringlb/access.log
dpkg -r ringlb
[ -e /usr/bin/ringlb ] && fail "remove left /usr/bin/ringlb"
[ -f /etc/ringlb/ringlb.toml ] || fail "remove took the config (only purge may)"
[ -f /var/log/ringlb/access.log ] || fail "remove took the logs (only purge may)"
step "removed: config and logs kept"

dpkg -P ringlb
for p in /etc/ringlb /var/log/ringlb /usr/share/ringlb /usr/share/doc/ringlb /etc/logrotate.d/ringlb \
    /usr/lib/systemd/system/ringlb.service /etc/systemd/system/multi-user.target.wants/ringlb.service \
    /etc/systemd/system/ringlb.service /var/lib/systemd/deb-systemd-helper-enabled/ringlb.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-masked/ringlb.service; do
    [ -e "$p" ] && fail "purge left $p"
done
left=$(find /etc /usr /var/lib/dpkg/info /var/lib/systemd /var/log -name '*ringlb*' 2>/dev/null |
    grep -v '^/var/lib/dpkg/info/.*\.list-old$' || true)
[ -z "$left" ] || fail "purge left: $left"
dpkg-query -W ringlb >/dev/null 2>&1 && fail "dpkg still knows ringlb"
step "purged: nothing left$([ -z "$user_before" ] && echo " but the ringlb user, as policy allows")"
echo "package test: ok"
