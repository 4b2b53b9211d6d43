#!/bin/sh
# The Postfix yardstick for bench_delivery: plain Postfix as a relay on this machine,
# taking mail on 127.0.0.1:LISTEN and relaying everything for example.test to the
# benchmark's sink on 127.0.0.1:SINK. A test tool, not part of Bulwark.
#
#   apt-get install -y postfix               # Debian 12: Postfix 3.7 (once, as root)
#   cluster-tests/postfix-yardstick.sh start 2600 2526
#   $CARGO_TARGET_DIR/release/bench_delivery --target 127.0.0.1:2526 --sink-port 2600
#   cluster-tests/postfix-yardstick.sh stop  # also restores main.cf and master.cf
#
# Postfix keeps its defaults otherwise (queue in /var/spool/postfix on this disk, 100
# processes, 20 concurrent deliveries per destination, connection cache on demand);
# only local delivery, TLS and DNS are out of the way. Must run as root.
set -eu

cmd=${1:-}
etc=/etc/postfix

case "$cmd" in
start)
    sink=${2:?usage: $0 start SINK_PORT [LISTEN_PORT]}
    listen=${3:-2526}
    command -v postconf >/dev/null || { echo "install postfix first" >&2; exit 1; }
    postfix stop >/dev/null 2>&1 || true
    for f in main.cf master.cf; do
        [ -f "$etc/$f.yardstick-orig" ] || cp "$etc/$f" "$etc/$f.yardstick-orig"
        cp "$etc/$f.yardstick-orig" "$etc/$f"
    done
    postconf -e \
        "myhostname = yardstick.test" \
        "inet_interfaces = loopback-only" \
        "inet_protocols = ipv4" \
        "mydestination =" \
        "local_transport = error:local delivery is disabled" \
        "alias_maps =" "alias_database =" \
        "mynetworks = 127.0.0.0/8" \
        "relay_domains = example.test" \
        "relayhost = [127.0.0.1]:$sink" \
        "smtpd_tls_security_level = none" \
        "smtp_tls_security_level = none" \
        "maillog_file = /var/log/postfix-yardstick.log"
    # No listener on port 25; smtpd on LISTEN; nothing chrooted (no copies of /etc).
    postconf -M# smtp/inet
    postconf -M "127.0.0.1:$listen/inet = 127.0.0.1:$listen inet n - n - - smtpd"
    postconf -F '*/*/chroot = n'
    postconf -M postlog/unix-dgram >/dev/null 2>&1 ||
        postconf -M "postlog/unix-dgram = postlog unix-dgram n - n - 1 postlogd"
    postsuper -d ALL >/dev/null 2>&1 || true
    postfix check
    postfix start
    echo "postfix: 127.0.0.1:$listen → [127.0.0.1]:$sink, log /var/log/postfix-yardstick.log"
    ;;
stop)
    postfix stop || true
    postsuper -d ALL >/dev/null 2>&1 || true
    for f in main.cf master.cf; do
        if [ -f "$etc/$f.yardstick-orig" ]; then
            mv "$etc/$f.yardstick-orig" "$etc/$f"
        fi
    done
    ;;
*)
    echo "usage: $0 start SINK_PORT [LISTEN_PORT] | stop" >&2
    exit 2
    ;;
esac
