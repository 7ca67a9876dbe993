#!/bin/bash
# Build edgegw_<version>-<revision>_<arch>.deb from this checkout with dpkg-deb alone (no debhelper).
# usage: packaging/build-deb.sh [OUTDIR]   (default build/deb; prints the path of the .deb)
# PYTHON: a CPython 3.11 with pip (the wheels installed must match the system python3's ABI).
# DEB_REVISION: the Debian revision (default 1); DEB_COMPRESS: dpkg-deb's -Z (default xz; the tests use gzip).
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "$0")/.." && pwd)
PKG="$REPO/packaging"
OUT=$(mkdir -p "${1:-$REPO/build/deb}" && cd "${1:-$REPO/build/deb}" && pwd)
PYTHON=${PYTHON:-python3}
REVISION=${DEB_REVISION:-1}

abi=$("$PYTHON" -c 'import sys; print(f"{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$abi" != "cpython-3.11" ]; then
    echo "build-deb: $PYTHON is $abi; the package's compiled wheels must be CPython 3.11's" >&2
    exit 2
fi
UPSTREAM=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
VERSION="$UPSTREAM-$REVISION"
ARCH=$(dpkg --print-architecture)
# Reproducible: every date in the package is the last commit's (or now, outside git).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

WORK="$OUT/work"
ROOT="$WORK/root"
rm -rf "$WORK"
mkdir -p "$ROOT/DEBIAN" "$WORK/src"

# A copy of the sources, so that setuptools' build/ and egg-info never land in the checkout.
tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md LICENSE gateway drivers | tar -C "$WORK/src" -xf -

# The runtime dependencies only (pyproject's [project] dependencies, not the dev extra), at the
# versions requirements.lock pins, plus edgegw itself; bytecode is postinst's job.
LIB="$ROOT/opt/edgegw/lib"
"$PYTHON" -m pip install --quiet --no-compile --disable-pip-version-check --no-warn-script-location --no-warn-conflicts \
    --target "$LIB" --constraint "$REPO/requirements.lock" "$WORK/src" 2> >(grep -v "is ignored: it is neither" >&2)
# Console scripts with the build interpreter's path in their shebang: /usr/bin/edgegw replaces them.
rm -rf "$LIB/bin"
find "$LIB" \( -type d -name __pycache__ -prune -o -name .DS_Store \) -exec rm -rf {} +
# Library files are imported, never run: no execute bits (a few wheels ship some), debug symbols stripped.
chmod -R u=rwX,go=rX "$LIB"
find "$LIB" -type f -perm /111 -exec chmod a-x {} +
find "$LIB" -type f -name "*.so*" -exec chmod 0644 {} + -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +

# The oldest glibc the compiled wheels accept (their manylinux tags) is the libc6 dependency.
LIBC=$(cat "$LIB"/*.dist-info/WHEEL | sed -n 's/^Tag: .*manylinux_\([0-9]*\)_\([0-9]*\)_.*/\1.\2/p;
    s/^Tag: .*manylinux2014_.*/2.17/p' | sort -V | tail -1)
LIBC=${LIBC:-2.17}

install -D -m 0755 "$PKG/edgegw" "$ROOT/usr/bin/edgegw"
install -D -m 0644 "$REPO/systemd/edgegw.service" "$ROOT/lib/systemd/system/edgegw.service"
install -D -m 0644 "$REPO/systemd/edgegw.sysusers" "$ROOT/usr/lib/sysusers.d/edgegw.conf"
install -D -m 0644 "$REPO/systemd/edgegw.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/edgegw.conf"
install -D -m 0640 "$PKG/gateway.yaml" "$ROOT/etc/edgegw/gateway.yaml"
chmod 0750 "$ROOT/etc/edgegw"
install -d -m 0750 "$ROOT/var/lib/edgegw"

DOC="$ROOT/usr/share/doc/edgegw"
install -D -m 0644 "$REPO/README.md" "$DOC/README.md"
install -m 0644 "$REPO"/docs/*.md "$DOC/"
install -D -m 0644 "$REPO/config/gateway.example.yaml" "$DOC/examples/gateway.example.yaml"
install -m 0644 "$PKG/copyright" "$DOC/copyright"
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$(date -u -R -d "@$SOURCE_DATE_EPOCH")/" "$PKG/changelog.in" \
    > "$DOC/changelog.Debian"
# Debian policy: documentation over 4 kB is compressed; copyright never is.
find "$DOC" -type f ! -name copyright -size +4k -exec gzip -9n {} +
gzip -9nf "$DOC/changelog.Debian"

# The man page comes from the packaged code itself, run by the interpreter that will run it.
install -d "$ROOT/usr/share/man/man1"
PYTHONPATH="$LIB" "$PYTHON" -m gateway.manpage --version-string "$UPSTREAM" | gzip -9n > "$ROOT/usr/share/man/man1/edgegw.1.gz"
# The config's JSON Schema for editors, next to the config (its modeline names it) and as documentation.
install -d "$ROOT/usr/share/edgegw"
PYTHONPATH="$LIB" "$PYTHON" -m gateway.cli schema > "$ROOT/usr/share/edgegw/edgegw.schema.json"
PYTHONPATH="$LIB" "$PYTHON" -m gateway.cli schema --profile > "$ROOT/usr/share/edgegw/edgegw-profile.schema.json"

install -D -m 0644 "$PKG/edgegw.lintian-overrides" "$ROOT/usr/share/lintian/overrides/edgegw"

install -m 0755 "$PKG/postinst" "$PKG/prerm" "$PKG/postrm" "$ROOT/DEBIAN/"
echo /etc/edgegw/gateway.yaml > "$ROOT/DEBIAN/conffiles"
chmod 0644 "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" -e "s/@LIBC@/$LIBC/" \
    "$PKG/control.in" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/md5sums"

find "$ROOT" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0 touch -h -d "@$SOURCE_DATE_EPOCH"
DEB="$OUT/edgegw_${VERSION}_$ARCH.deb"
# --root-owner-group: every file root:root in the archive, no fakeroot needed.
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$ROOT" "$DEB" >/dev/null
rm -rf "$WORK"
echo "$DEB"
