#!/usr/bin/env bash
# Builds the Debian package of egress-milter with cargo-deb, inspects it, and,
# as root, installs it for real, checks what a postmaster would find, then
# removes and purges it and checks what is left behind.
#
# Steps: install cargo-deb if missing; generate the man page (cargo run
# --example gen-man) and gzip it; cargo deb; inspect the .deb (files, modes,
# owners, control fields, conffiles, maintainer scripts, man page);
# systemd-analyze verify on the unit; as root: install with a temporary
# /usr/sbin/policy-rc.d that exits 101 (no daemon is started), check the
# user, the state directory, the binary, check-config, the man page,
# reinstall over an edited conffile, remove, purge. Whatever was on the
# machine before (a policy-rc.d, the egress-milter user) is put back.
#
# Then, as root, the boot test: a copy of a minimal Debian 12 root
# (debootstrap --variant=minbase plus systemd, cached by
# milter-tests/install-deps.sh, which this script runs if the root or
# systemd-nspawn is missing) is booted with systemd-nspawn; a oneshot unit
# inside runs milter-tests/boot/checks.sh (install with apt, start, the
# socket's owner and mode, a message as user postfix, EACCES as other
# users, reload with a changed limit, a broken config refused, the /run
# socket for Sendmail, stop, purge) and powers the container off. Its
# "ok:"/"FAIL:" lines count here, prefixed "boot: ".
#
# The test package is built with the "deb-test" profile of Cargo.toml
# (unoptimised: about 50 s of CPU from scratch, against 120 s for release
# with LTO) to stay within CI's time; everything but the binary's speed is
# the same. --release (or EGRESS_MILTER_DEB_PROFILE=release) builds the
# release artefact exactly as docs/install.md does.
#
# Usage: bash milter-tests/package.sh [--release]
# Prints one "ok:" or "FAIL:" line per check and ends with
# "package: N passed, M failed"; exits 1 if any check failed, 2 if the
# package could not be built at all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

CARGO_DEB_VERSION=3.8.0
profile=${EGRESS_MILTER_DEB_PROFILE:-deb-test}
[ "${1:-}" = "--release" ] && profile=release

passed=0
failed=0
declare -a timings=()
say() { printf 'package: %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok: %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL: %s\n' "$*"; }
# check DESCRIPTION COMMAND...: one check, passed when COMMAND succeeds.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
die() {
    printf 'package: error: %s\n' "$*" >&2
    printf 'package: %d passed, %d failed\n' "$passed" "$((failed + 1))"
    exit 2
}
timed() {
    local label=$1 start=$SECONDS
    shift
    "$@"
    timings+=("$label: $((SECONDS - start)) s")
}

work=$(mktemp -d /tmp/egress-milter-package.XXXXXX)
cleanup_steps=()
cleanup() {
    local i
    for ((i = ${#cleanup_steps[@]} - 1; i >= 0; i--)); do
        eval "${cleanup_steps[i]}" || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

script_start=$SECONDS

# ---------------------------------------------------------------- build

install_cargo_deb() {
    if cargo deb --version >/dev/null 2>&1; then
        say "using $(cargo deb --version)"
        return
    fi
    say "cargo-deb is missing: cargo install cargo-deb --locked --version $CARGO_DEB_VERSION"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" ||
        die "cannot install cargo-deb $CARGO_DEB_VERSION (crates.io reachable? see the cargo output above)"
}
timed "cargo-deb install" install_cargo_deb

version=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="egress-milter"))') ||
    die "cannot read the crate version (cargo metadata)"

gen_man() {
    mkdir -p target/man
    cargo run --locked --quiet --example gen-man >target/man/egress-milter.8 ||
        die "cargo run --example gen-man failed"
    gzip -9 -n -f -k target/man/egress-milter.8
}
timed "man page" gen_man

build_deb() {
    cargo deb --locked --profile "$profile" --output "$work/" >"$work/cargo-deb.out" ||
        die "cargo deb --profile $profile failed"
}
say "cargo deb --profile $profile"
timed "cargo deb ($profile)" build_deb
deb=$(find "$work" -maxdepth 1 -name 'egress-milter_*.deb' | head -n 1)
[ -n "$deb" ] || die "cargo deb wrote no egress-milter_*.deb into $work"
say "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

# ---------------------------------------------------------------- inspect

inspect_start=$SECONDS
dpkg-deb -c "$deb" >"$work/contents" || die "dpkg-deb -c cannot read $deb"
# has_entry MODE OWNER PATH: one line of the listing ("./usr/sbin/x"). The
# owner is "root/root" or, as cargo-deb writes no names, "0/0".
has_entry() {
    awk -v m="$1" -v o="$2" -v p="$3" '
        $1 == m && ($2 == o || (o == "root/root" && $2 == "0/0")) && $6 == p { f = 1 }
        END { exit !f }' "$work/contents"
}
check "binary /usr/sbin/egress-milter, root:root 0755" has_entry -rwxr-xr-x root/root ./usr/sbin/egress-milter
check "conffile /etc/egress-milter/egress-milter.toml, root:root 0644" \
    has_entry -rw-r--r-- root/root ./etc/egress-milter/egress-milter.toml
check "unit /usr/lib/systemd/system/egress-milter.service, 0644" \
    has_entry -rw-r--r-- root/root ./usr/lib/systemd/system/egress-milter.service
check "man page /usr/share/man/man8/egress-milter.8.gz, 0644" \
    has_entry -rw-r--r-- root/root ./usr/share/man/man8/egress-milter.8.gz
check "README.md and copyright in /usr/share/doc/egress-milter" \
    eval 'has_entry -rw-r--r-- root/root ./usr/share/doc/egress-milter/README.md &&
        has_entry -rw-r--r-- root/root ./usr/share/doc/egress-milter/copyright'
docs_missing=()
for f in docs/*.md; do
    has_entry -rw-r--r-- root/root "./usr/share/doc/egress-milter/$f" || docs_missing+=("$f")
done
check "every docs/*.md of the tree ($(ls docs/*.md | wc -l)) in /usr/share/doc/egress-milter/docs${docs_missing[*]:+ (missing: ${docs_missing[*]})}" \
    test ${#docs_missing[@]} = 0
check "Postfix examples in /usr/share/doc/egress-milter/examples/postfix" \
    has_entry -rw-r--r-- root/root ./usr/share/doc/egress-milter/examples/postfix/main.cf.milter
check "Sendmail example in /usr/share/doc/egress-milter/examples/sendmail (docs/sendmail.md includes it)" \
    has_entry -rw-r--r-- root/root ./usr/share/doc/egress-milter/examples/sendmail/egress-milter.mc
check "Redis settings for a fleet in /usr/share/doc/egress-milter/examples/redis (docs/fleet.md includes them)" \
    has_entry -rw-r--r-- root/root ./usr/share/doc/egress-milter/examples/redis/egress-milter.conf
check "no file outside /etc, /usr (the state directory is made by postinst)" \
    eval '! awk '\''$6 !~ /^\.\/(etc|usr)(\/|$)/ && $6 != "./"'\'' "$work/contents" | grep -q .'

dpkg-deb -f "$deb" >"$work/control"
field() { dpkg-deb -f "$deb" "$1"; }
check "Package egress-milter, version $version" test "$(field Package) $(field Version)" = "egress-milter $version-1"
check "Section mail, Priority optional" test "$(field Section)/$(field Priority)" = mail/optional
check "Maintainer set ($(field Maintainer))" test -n "$(field Maintainer)"
depends=$(field Depends)
check "Depends resolved from the binary (libc6 with a version) and adduser: $depends" \
    eval '[[ "$depends" =~ libc6\ \(\>=\ [0-9] ]] && [[ "$depends" == *adduser* ]] && [[ "$depends" != *auto* ]]'
check "extended description (more than 3 lines)" test "$(field Description | wc -l)" -gt 3

mkdir "$work/control.d"
dpkg-deb -e "$deb" "$work/control.d"
check "conffiles lists /etc/egress-milter/egress-milter.toml" \
    grep -qx /etc/egress-milter/egress-milter.toml "$work/control.d/conffiles"
check "postinst and postrm present, mode 0755, valid sh (sh -n)" \
    eval 'for s in postinst postrm; do [ "$(stat -c %a "$work/control.d/$s")" = 755 ] && sh -n "$work/control.d/$s" || exit 1; done'
check "#DEBHELPER# replaced by the systemd fragments (enable, start, purge)" \
    eval '! grep -q "#DEBHELPER#" "$work/control.d/postinst" "$work/control.d/postrm" &&
        grep -q "deb-systemd-helper enable .*egress-milter.service" "$work/control.d/postinst" &&
        grep -q "deb-systemd-invoke .*egress-milter.service" "$work/control.d/postinst" &&
        grep -q "deb-systemd-helper purge .*egress-milter.service" "$work/control.d/postrm"'

mkdir "$work/root"
dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/sbin/egress-milter
man_src=$work/egress-milter.8
unit_file=$work/root/usr/lib/systemd/system/egress-milter.service
check "unit: reload sends SIGHUP with sh's built-in kill, no /bin/kill (procps is no dependency)" \
    eval '! grep -q "^[^#]*/bin/kill" "$unit_file" && grep -qxF "ExecReload=/bin/sh -c '\''kill -HUP \"\$MAINPID\"'\''" "$unit_file"'
check "packaged socket: unix:/var/spool/postfix/egress-milter/milter.sock, socket_mode 0660" \
    eval 'grep -qx "socket = \"unix:/var/spool/postfix/egress-milter/milter.sock\"" "$work/root/etc/egress-milter/egress-milter.toml" &&
        grep -q "^socket_mode = \"0660\"" "$work/root/etc/egress-milter/egress-milter.toml"'
check "unit: ExecStartPre makes /var/spool/postfix/egress-milter egress-milter:postfix 2750" \
    grep -q "^ExecStartPre=+/bin/sh -c .*install -d -o egress-milter -g postfix -m 2750 /var/spool/postfix/egress-milter" "$unit_file"
check "unit: no restart after exit status 78 (unusable configuration, lock list or socket directory)" \
    grep -qx "RestartPreventExitStatus=78" "$unit_file"
zcat "$work/root/usr/share/man/man8/egress-milter.8.gz" >"$man_src"
sections_missing=()
for s in NAME SYNOPSIS DESCRIPTION OPTIONS COMMANDS SIGNALS '"EXIT STATUS"' FILES '"SEE ALSO"'; do
    grep -qx "\.SH $s" "$man_src" || sections_missing+=("$s")
done
check "man page sections NAME ... SEE ALSO${sections_missing[*]:+ (missing: ${sections_missing[*]})}" \
    test ${#sections_missing[@]} = 0
# Every command --help lists, at any depth, has its subsection: the page is
# generated from the same definitions, and new commands appear by themselves.
subcommands() { # --help of "egress-milter $*" -> the names under "Commands:"
    "$bin" "$@" --help | awk '/^Commands:/ { c = 1; next } c && /^$/ { exit } c && $1 != "help" { print $1 }'
}
commands_missing=()
commands_seen=0
walk() {
    local sub
    for sub in $(subcommands "$@"); do
        commands_seen=$((commands_seen + 1))
        local title="$* $sub"
        title=${title# }
        [[ "$title" == *" "* ]] && title="\"$title\""
        grep -qxF ".SS ${title//-/\\-}" "$man_src" || grep -qxF ".SS $title" "$man_src" || commands_missing+=("$title")
        walk "$@" "$sub"
    done
}
walk
check "man page has a subsection for each of the $commands_seen commands in --help${commands_missing[*]:+ (missing: ${commands_missing[*]})}" \
    test ${#commands_missing[@]} = 0 -a "$commands_seen" -gt 0
if command -v groff >/dev/null; then
    check "man page renders without groff warnings" \
        eval 'out=$(groff -man -ww -z "$man_src" 2>&1) && [ -z "$out" ] || { echo "$out"; false; }'
else
    say "skip: groff is not installed, the man page is not rendered here"
fi
timings+=("inspect: $((SECONDS - inspect_start)) s")

# ---------------------------------------------------------------- install (root)

# dpkg_run LOG ARGS...: dpkg ARGS, output to LOG. While another apt or dpkg
# holds dpkg's lock, tries again every 2 seconds, for 5 minutes at most.
dpkg_run() {
    local log=$1 deadline=$((SECONDS + 300))
    shift
    until dpkg "$@" >"$log" 2>&1; do
        if grep -qE "dpkg (frontend lock|status database).* locked" "$log" && [ "$SECONDS" -lt "$deadline" ]; then
            sleep 2
        else
            return 1
        fi
    done
}

if [ "$(id -u)" != 0 ]; then
    say "skip: installing needs root (dpkg -i); run as root for the install, remove and purge checks"
else
    install_start=$SECONDS
    if dpkg-query -W -f='${db:Status-Status}' egress-milter 2>/dev/null | grep -qv not-installed; then
        die "egress-milter is already installed on this machine; this test installs and purges the package, so it stops here (a leftover of an earlier run? dpkg --purge egress-milter)"
    fi

    # No daemon may start, whatever init is running: invoke-rc.d and
    # deb-systemd-invoke ask policy-rc.d first. An existing one is put back.
    if [ -e /usr/sbin/policy-rc.d ]; then
        cp -p /usr/sbin/policy-rc.d "$work/policy-rc.d.orig"
        cleanup_steps+=("cp -p '$work/policy-rc.d.orig' /usr/sbin/policy-rc.d")
    else
        cleanup_steps+=("rm -f /usr/sbin/policy-rc.d")
    fi
    printf '#!/bin/sh\n# milter-tests/package.sh: start no service while testing\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d

    # The package keeps its user on purge (as Debian does); a user this test
    # made is deleted again at the end, so that every run sees postinst
    # create it.
    if ! getent passwd egress-milter >/dev/null; then
        cleanup_steps+=("deluser --quiet --system egress-milter >/dev/null 2>&1; delgroup --quiet --system egress-milter >/dev/null 2>&1")
        user_existed=no
    else
        user_existed=yes
    fi
    # Whatever happens, do not leave the package installed.
    cleanup_steps+=("dpkg_run '$work/dpkg-cleanup.out' --purge egress-milter")

    if ! dpkg_run "$work/dpkg-install.out" -i "$deb"; then
        cat "$work/dpkg-install.out"
        die "dpkg -i $(basename "$deb") failed (output above)"
    fi
    ok "dpkg -i installs the package"

    etc=/etc/egress-milter/egress-milter.toml
    state=/var/lib/egress-milter
    pw=$(getent passwd egress-milter || true)
    IFS=: read -r _ _ uid _ _ home shell <<<"$pw"
    check "system user egress-milter (uid ${uid:-none} < 1000, home $home, shell $shell) $([ $user_existed = yes ] && echo "(existed before)" || echo "created by postinst")" \
        eval '[ -n "$pw" ] && [ "$uid" -lt 1000 ] && [ "$home" = $state ] && [[ "$shell" == */nologin ]] && [ "$(id -gn egress-milter)" = egress-milter ]'
    check "user egress-milter is in no other group (adduser postfix egress-milter is the admin's choice)" \
        test "$(id -Gn egress-milter)" = egress-milter
    check "$state: egress-milter:egress-milter, mode 750" \
        test "$(stat -c '%U:%G %a' $state 2>/dev/null)" = "egress-milter:egress-milter 750"
    check "$etc is the packaged default (packaging/etc/egress-milter.toml)" cmp -s "$etc" packaging/etc/egress-milter.toml
    check "egress-milter --version prints egress-milter $version" \
        test "$(/usr/sbin/egress-milter --version)" = "egress-milter $version"
    check "egress-milter check-config (as root) passes on the packaged config, no warning" \
        eval 'out=$(/usr/sbin/egress-milter --config $etc check-config 2>&1) && echo "$out" | grep -q "configuration is valid" && echo "$out" | grep -q "lock list is valid" && ! echo "$out" | grep -qi warning || { echo "$out"; false; }'
    check "check-config as user egress-milter: passes, lock list directory writable, no warning" \
        eval 'out=$(runuser -u egress-milter -- /usr/sbin/egress-milter check-config 2>&1) && echo "$out" | grep -q "lock list is valid" && ! echo "$out" | grep -qi warning || { echo "$out"; false; }'
    # An admin locks by hand as root, then the daemon's user writes the list
    # (as the daemon does on an automatic lock): root must leave nothing
    # behind that the daemon's user cannot use.
    check "locks add as root, then as user egress-milter: both in $state/locks.toml" \
        eval '/usr/sbin/egress-milter locks add root-test@example.com --reason "package test" >/dev/null &&
            runuser -u egress-milter -- /usr/sbin/egress-milter locks add user-test@example.com --reason "package test" >/dev/null &&
            out=$(/usr/sbin/egress-milter locks list) && echo "$out" | grep -q root-test@example.com && echo "$out" | grep -q user-test@example.com'
    check "unit enabled (multi-user.target.wants/egress-milter.service)" \
        test -L /etc/systemd/system/multi-user.target.wants/egress-milter.service
    check "no daemon started by the install (no process of user egress-milter)" \
        eval '! pgrep -u egress-milter >/dev/null'

    if grep -qs '^path-exclude.*/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
        say "skip: dpkg on this machine excludes /usr/share/man (/etc/dpkg/dpkg.cfg.d), the installed page is not checked"
    elif command -v man >/dev/null; then
        check "man 8 egress-milter finds and renders the installed page" \
            eval 'man -w 8 egress-milter | grep -q /usr/share/man/man8/egress-milter.8.gz &&
                MANWIDTH=80 man 8 egress-milter 2>/dev/null | grep -q "^SIGNALS"'
    else
        check "installed man page has its SIGNALS section (man is not installed)" \
            eval 'zcat /usr/share/man/man8/egress-milter.8.gz | grep -qx "\.SH SIGNALS"'
    fi

    if command -v systemd-analyze >/dev/null; then
        check "systemd-analyze verify egress-milter.service" \
            eval 'out=$(systemd-analyze verify /usr/lib/systemd/system/egress-milter.service 2>&1) && [ -z "$out" ] || { echo "$out"; false; }'
    else
        say "skip: systemd-analyze is not installed (Debian package systemd); the unit is not verified"
    fi

    # Reinstall over an edited conffile: postinst runs again on an existing
    # user and directory, and dpkg keeps the admin's edit.
    echo "# edited by milter-tests/package.sh" >>"$etc"
    uid_before=$(id -u egress-milter)
    if dpkg_run "$work/dpkg-reinstall.out" -i "$deb"; then
        ok "dpkg -i again (reinstall, as an upgrade runs postinst) succeeds"
    else
        cat "$work/dpkg-reinstall.out"
        bad "dpkg -i again (reinstall) succeeds"
    fi
    check "reinstall keeps the edited conffile and the user (same uid)" \
        eval 'tail -n 1 $etc | grep -q "edited by milter-tests" && [ "$(id -u egress-milter)" = "$uid_before" ]'

    if dpkg_run "$work/dpkg-remove.out" --remove egress-milter; then
        ok "dpkg --remove succeeds"
    else
        cat "$work/dpkg-remove.out"
        bad "dpkg --remove succeeds"
    fi
    check "remove: binary, unit and man page gone" \
        eval '! [ -e /usr/sbin/egress-milter ] && ! [ -e /usr/lib/systemd/system/egress-milter.service ] && ! [ -e /usr/share/man/man8/egress-milter.8.gz ]'
    check "remove: configuration and lock list kept" test -f "$etc" -a -s "$state/locks.toml"

    if dpkg_run "$work/dpkg-purge.out" --purge egress-milter; then
        ok "dpkg --purge succeeds"
    else
        cat "$work/dpkg-purge.out"
        bad "dpkg --purge succeeds"
    fi
    check "purge: /etc/egress-milter and $state gone" eval '! [ -e /etc/egress-milter ] && ! [ -e $state ]'
    check "purge: unit no longer enabled, dpkg forgets the package" \
        eval '! [ -L /etc/systemd/system/multi-user.target.wants/egress-milter.service ] &&
            ! dpkg-query -W -f="\${db:Status-Status}" egress-milter 2>/dev/null | grep -qv not-installed'
    check "purge: the system user is kept (Debian practice; reinstall reuses it)" eval 'getent passwd egress-milter >/dev/null'
    timings+=("install, remove, purge: $((SECONDS - install_start)) s")
fi

# ---------------------------------------------------------------- boot (root)

boot_root=${EGRESS_MILTER_BOOT_ROOT:-/var/cache/egress-milter-tests/boot-root-bookworm}
boot_unit=egress-milter-boot-test.service

boot_test() {
    local b=$work/boot rc=0
    if ! command -v systemd-nspawn >/dev/null || ! [ -f "$boot_root/.egress-milter-tests" ]; then
        say "the boot test needs systemd-nspawn and the root $boot_root: bash milter-tests/install-deps.sh boot"
        if ! EGRESS_MILTER_BOOT_ROOT=$boot_root bash milter-tests/install-deps.sh boot; then
            bad "boot: milter-tests/install-deps.sh boot (systemd-container, debootstrap, the root) succeeds"
            return
        fi
    fi
    say "boot test: $(head -n 1 "$boot_root/.egress-milter-tests")"
    mkdir -p "$b/in" "$b/out"
    cp "$deb" "$b/in/egress-milter.deb"
    cp milter-tests/boot/checks.sh milter-tests/boot/milter-client.pl "$b/in/"
    # The cached root stays as debootstrap made it: the container runs on an
    # overlay of it (instant), or on a copy where overlayfs is not available
    # (a few seconds).
    local start=$SECONDS how=overlay
    mkdir -p "$b/root" "$b/upper" "$b/overlay-work"
    if mount -t overlay egress-milter-boot-test \
        -o "lowerdir=$boot_root,upperdir=$b/upper,workdir=$b/overlay-work" "$b/root" 2>"$b/mount.err"; then
        cleanup_steps+=("! mountpoint -q '$b/root' || umount '$b/root'")
    else
        how="copy ($(head -n 1 "$b/mount.err"))"
        rmdir "$b/root"
        cp -a --reflink=auto "$boot_root" "$b/root"
    fi
    local copy_s=$((SECONDS - start))
    # Without package lists apt resolves the local .deb against what is
    # installed (all it needs here) in a fraction of a second, instead of
    # parsing the whole archive's lists for each of the three installs.
    find "$b/root/var/lib/apt/lists" -maxdepth 1 -type f -delete
    rm -f "$b/root"/var/cache/apt/*.bin
    install -m 644 "milter-tests/boot/$boot_unit" "$b/root/etc/systemd/system/"
    ln -s "../$boot_unit" "$b/root/etc/systemd/system/multi-user.target.wants/$boot_unit"

    # systemd-nspawn keeps per-container state in /run/systemd/nspawn and
    # removes it only from a tmpfs; where /run is not one, give it one.
    if [ "$(stat -f -c %T /run)" != tmpfs ] && ! mountpoint -q /run/systemd/nspawn; then
        mkdir -p /run/systemd/nspawn
        mount -t tmpfs -o mode=0755 egress-milter-test /run/systemd/nspawn
        cleanup_steps+=("umount /run/systemd/nspawn")
    fi
    # --register=no --keep-unit: no machined, no new scope (the host's init
    # need not be systemd); --private-network: the container's loopback is
    # its own. The checks power the container off; timeout is the backstop.
    start=$SECONDS
    timeout 300 systemd-nspawn --quiet --register=no --keep-unit --private-network \
        --directory="$b/root" --machine=egress-milter-boot-test \
        --bind-ro="$b/in:/mnt/boot-test" --bind="$b/out:/mnt/boot-results" \
        --boot >"$b/console.log" 2>&1 || rc=$?
    local nspawn_s=$((SECONDS - start)) seconds
    # "seconds: UPTIME CHECKS": the container's uptime when the checks
    # ended, and how long they ran.
    seconds=$(awk '$1 == "seconds:" { printf "boot to end of checks %.0f s, checks %d s", $2, $3 }' "$b/out/results" 2>/dev/null)
    timings+=("boot: root by $how $copy_s s, container $nspawn_s s (${seconds:-no figures})")

    local line n=0
    while IFS= read -r line; do
        case $line in
        "ok: "*) ok "boot: ${line#ok: }"; n=$((n + 1)) ;;
        "FAIL: "*) bad "boot: ${line#FAIL: }"; n=$((n + 1)) ;;
        "  "*) printf '%s\n' "$line" ;;
        esac
    done < <(cat "$b/out/results" 2>/dev/null)
    if [ "$rc" = 0 ] && grep -qx done "$b/out/results" 2>/dev/null; then
        ok "boot: the container ran the $n checks and powered off"
    else
        bad "boot: the container ran the checks to the end and powered off (systemd-nspawn exit $rc, $n checks)"
        say "the end of the container's console ($b/console.log):"
        tail -n 30 "$b/console.log" | sed 's/\x1b\[[0-9;]*m//g'
    fi
    if [ "$failed" != 0 ] && [ -s "$b/out/journal.txt" ]; then
        say "the unit's journal in the container:"
        tail -n 40 "$b/out/journal.txt"
    fi
    # The container's files are large; do not wait for the exit trap.
    if mountpoint -q "$b/root"; then umount "$b/root"; fi
    rm -rf "$b/root" "$b/upper" "$b/overlay-work"
}

if [ "$(id -u)" = 0 ]; then
    timed "boot under systemd-nspawn" boot_test
else
    say "skip: the boot test needs root (systemd-nspawn); run as root to boot the package under systemd"
fi

timings+=("total: $((SECONDS - script_start)) s")
say "timings: $(IFS=';'; echo "${timings[*]}" | sed 's/;/; /g')"
printf 'package: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" = 0 ]
