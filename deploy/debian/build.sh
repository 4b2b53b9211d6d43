#!/usr/bin/env bash
# Builds the Debian package from a compiled binary, with Debian's own dpkg-deb:
#
#   cargo build --release --bin bulwark
#   deploy/debian/build.sh target/release/bulwark [OUT_DIR]   # OUT_DIR/bulwark_VERSION-1_ARCH.deb
#   apt install ./bulwark_0.1.0-1_amd64.deb
#
# It holds /usr/bin/bulwark, the systemd unit of deploy/systemd (enabled and started
# at install), /etc/bulwark/bulwark.toml (a single node on loopback; a conffile, so
# an upgrade keeps your changes), the configuration reference and the system user
# `bulwark` made by postinst (useradd). Purging removes the configuration and the user, never
# /var/lib/bulwark.
set -euo pipefail

BIN="${1:?usage: deploy/debian/build.sh BINARY [OUT_DIR]}"
OUT="${2:-.}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
# The newest glibc symbol version the binary needs is the least libc6 it runs on.
glibc="$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/bulwark_${version}-1_${arch}"

install -D -m 0755 "$BIN" "$root/usr/bin/bulwark"
install -D -m 0640 "$here/bulwark.toml" "$root/etc/bulwark/bulwark.toml"
install -d -m 0750 "$root/etc/bulwark"
install -d "$root/lib/systemd/system"
sed 's#/usr/local/bin/bulwark#/usr/bin/bulwark#g' "$repo/deploy/systemd/bulwark.service" \
  >"$root/lib/systemd/system/bulwark.service"
docs="$root/usr/share/doc/bulwark"
install -d "$docs"
gzip -9n <"$repo/deploy/CONFIGURATION.md" >"$docs/CONFIGURATION.md.gz"
gzip -9n <"$repo/deploy/README.md" >"$docs/DEPLOY.md.gz"
cat >"$docs/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: bulwark
License: Apache-2.0
Files: *
Copyright: the Bulwark engineers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

install -d "$root/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
echo /etc/bulwark/bulwark.toml >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<EOF
Package: bulwark
Version: ${version}-1
Architecture: ${arch}
Maintainer: The Bulwark engineers <bulwark@localhost>
Section: mail
Priority: optional
Depends: libc6 (>= ${glibc}), libstdc++6 (>= 12), libgcc-s1, passwd
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: mail security gateway with a replicated queue and audit trail
 Bulwark receives mail over SMTP, scans it in-process (SPF, DKIM, DMARC, ARC,
 malware, attachments, spam, phishing) and relays it to your mail servers.
 Nodes form a Raft cluster, so that no node failure loses acknowledged mail;
 every decision is an event in a tamper-evident log served over an HTTP API.
EOF

mkdir -p "$OUT"
dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT/" >/dev/null
deb="$OUT/bulwark_${version}-1_${arch}.deb"
echo "debian: $deb ($(du -h "$deb" | cut -f1))"
