#!/bin/sh
# Benchmarks secure_socket against running the same script directly and, with
# --with-peers, against doas and s6-sudo. Run as root; takes a few minutes on 2 cores.
#
#   bench/run.sh [--with-peers] [--keep-peers] [--seconds S] [--warmup S] [--clients LIST]
#                [--max-calls N] [--systems LIST] [--max-connections-per-child N]
#
# --max-connections-per-child sets the broker parameter of that name (default 32, as in
# parameters.conf); 1 turns the reuse of parser children off, to compare with it on.
#
# It builds the broker and the load generator in release mode, installs a script that
# only exits 0 and a policy that lets www-data run it as root, starts the broker, and
# runs the load generator as www-data. With --with-peers it also installs Debian's doas
# and s6 packages and configures both for the same script and caller. Everything it
# creates is removed at the end: the directory under /run, the configuration it wrote
# (a previous /etc/doas.conf is put back), and the packages it installed, unless
# --keep-peers is given. The results are printed and written to bench/results/.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
invocation="bench/run.sh $*"
# The commit the broker is built from; "-dirty" marks uncommitted changes in the tree.
revision=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)

with_peers=no
keep_peers=no
loadgen_options=
max_connections_per_child=32
while [ $# -gt 0 ]; do
    case $1 in
        --with-peers) with_peers=yes ;;
        --keep-peers) keep_peers=yes ;;
        --seconds|--warmup|--clients|--max-calls|--systems)
            [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 64; }
            loadgen_options="$loadgen_options $1 $2"
            shift ;;
        --max-connections-per-child)
            [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 64; }
            max_connections_per_child=$2
            shift ;;
        *)
            echo "usage: bench/run.sh [--with-peers] [--keep-peers] [--seconds S]" \
                "[--warmup S] [--clients LIST] [--max-calls N] [--systems LIST]" \
                "[--max-connections-per-child N]" >&2
            exit 64 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: run as root: the broker must start as root, and the caller is www-data" >&2
    exit 1
fi
if ! id www-data >/dev/null 2>&1; then
    echo "run.sh: the user www-data does not exist; it is the benchmark's caller" >&2
    exit 1
fi

# Everything the run creates, and the state to restore, recorded as it is created so
# that cleanup undoes exactly that, also after a failure or Ctrl-C.
bench_dir=
broker_pid=
s6_pid=
created_user=no
doas_conf_state=untouched
installed_packages=

stop_process() {
    # Sends SIGTERM to a process this script started, then SIGKILL after 10 s.
    pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ $waited -lt 100 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    status=$?
    trap - EXIT INT TERM
    [ -n "$broker_pid" ] && stop_process "$broker_pid"
    [ -n "$s6_pid" ] && stop_process "$s6_pid"
    case $doas_conf_state in
        saved) mv -f "$bench_dir/doas.conf.saved" /etc/doas.conf ;;
        absent) rm -f /etc/doas.conf ;;
    esac
    if [ -n "$installed_packages" ] && [ "$keep_peers" = no ]; then
        echo "run.sh: removing the packages this run installed:$installed_packages"
        # shellcheck disable=SC2086 # one word per package name
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $installed_packages >/dev/null
    fi
    [ -n "$bench_dir" ] && rm -rf "$bench_dir"
    [ "$created_user" = yes ] && userdel secure-socket
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "run.sh: building the broker and the load generator (release)"
(cd "$repo" && cargo build --release --locked --quiet)
cargo build --release --locked --quiet --manifest-path "$repo/bench/loadgen/Cargo.toml"

# A directory under /run of root's, like the broker's own socket directory. The broker
# accepts a script and a policy only when they and every directory above them are
# root-owned and not writable by group or others, so nothing lives under /tmp.
bench_dir=$(mktemp -d /run/secure_socket-bench.XXXXXX)
chmod 0755 "$bench_dir"
install -d -m 0755 -o root -g root "$bench_dir/bin" "$bench_dir/policy"
install -d -m 0755 -o www-data -g www-data "$bench_dir/results"
printf '#!/bin/sh\nexit 0\n' > "$bench_dir/exit-zero.tmp"
install -m 0755 -o root -g root "$bench_dir/exit-zero.tmp" "$bench_dir/bin/exit-zero"
rm -f "$bench_dir/exit-zero.tmp"
install -m 0755 -o root -g root "$repo/target/release/secure_socket" "$bench_dir/bin/secure_socket"
install -m 0755 -o root -g root "$repo/bench/loadgen/target/release/loadgen" "$bench_dir/bin/loadgen"
script=$bench_dir/bin/exit-zero

# max_concurrent is raised from its default of 4 because the baseline has no such
# limit: at 8 or more clients the broker would otherwise queue runs the baseline does
# not. capture_output is off, as the baseline sends the script's output to /dev/null.
cat > "$bench_dir/policy/bench.toml" <<EOF
[command.bench-exit-zero]
description = "Benchmark: run a script that only exits 0, as root"
script = "$script"
run_as = "root"
allow_users = ["www-data"]
argv = []
timeout_ms = 10000
capture_output = false
max_concurrent = 1024
EOF
chmod 0644 "$bench_dir/policy/bench.toml"
"$bench_dir/bin/secure_socket" check-policy "$bench_dir/policy"

if ! id secure-socket >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin secure-socket
    created_user=yes
fi

# Each connection uses a descriptor, a channel and a parser child, so 200 clients and the
# command-line client's processes need more than the usual 1024 descriptors.
# shellcheck disable=SC3045 # dash, Debian's /bin/sh, and bash both take ulimit -n
ulimit -n 8192

# The parameters of parameters.conf, except:
#   max_connections=512          200 persistent clients hold 200 connections at once; at
#                                the default 64 the rest would wait in the backlog.
#   max_connections_per_uid=512  every client is www-data; at the default (half of
#                                max_connections) the connections past it get Busy.
#   max_requests_per_connection=1000000
#                                a persistent client keeps its connection for the whole
#                                run. At the default 100 the broker closes it every 100
#                                calls, and the client's next call fails.
#   log_file                     the per-request info lines go to a file, as in service.
"$bench_dir/bin/secure_socket" \
    socket_path="$bench_dir/broker.sock" \
    socket_permissions=0660 \
    policy_dir="$bench_dir/policy" \
    unprivileged_user=secure-socket \
    authorised_peer_username=www-data \
    log_file="$bench_dir/broker.log" \
    verbosity=info \
    pool_size=4 \
    max_connections=512 \
    max_connections_per_uid=512 \
    request_timeout_ms=10000 \
    max_frame_bytes=65536 \
    max_requests_per_connection=1000000 \
    max_connections_per_child="$max_connections_per_child" \
    max_cached_children=16 \
    cached_child_idle_ms=10000 \
    shutdown_grace_ms=5000 \
    sandbox=strict &
broker_pid=$!

wait_for_socket() {
    # Waits up to 10 s for socket $1 while process $2 runs.
    waited=0
    while [ ! -S "$1" ]; do
        if ! kill -0 "$2" 2>/dev/null || [ $waited -ge 100 ]; then
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}
if ! wait_for_socket "$bench_dir/broker.sock" "$broker_pid"; then
    echo "run.sh: the broker did not create its socket; its log:" >&2
    cat "$bench_dir/broker.log" >&2 || true
    exit 1
fi

peer_options=
if [ "$with_peers" = yes ]; then
    missing=
    for package in doas s6; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        echo "run.sh: installing$missing from Debian's packages"
        dpkg-query -W -f '${Package}\n' | sort > "$bench_dir/packages.before"
        # shellcheck disable=SC2086 # one word per package name
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
            apt-get update -qq
            # shellcheck disable=SC2086
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
        fi
        dpkg-query -W -f '${Package}\n' | sort > "$bench_dir/packages.after"
        installed_packages=$(comm -13 "$bench_dir/packages.before" "$bench_dir/packages.after" |
            tr '\n' ' ' | sed 's/^/ /')
    fi

    # doas: www-data may run exactly this script as root, without a password.
    if [ -e /etc/doas.conf ]; then
        cp -p /etc/doas.conf "$bench_dir/doas.conf.saved"
        doas_conf_state=saved
    else
        doas_conf_state=absent
    fi
    printf 'permit nopass www-data as root cmd %s\n' "$script" > /etc/doas.conf
    chown root:root /etc/doas.conf
    chmod 0400 /etc/doas.conf

    # s6-sudo: s6-ipcserver listens as root and starts, for each connection,
    # s6-ipcserver-access (which admits uid 33 only) and then s6-sudod, which runs the
    # script and returns its exit code to s6-sudo. The socket is 0660 with www-data's
    # group. -c and -C raise the connection limits from 40 for the 200-client level.
    install -d -m 0755 -o root -g root "$bench_dir/s6-rules/uid/33"
    : > "$bench_dir/s6-rules/uid/33/allow"
    # s6-ipcserver-access logs every connection on stderr, which goes to a file, as the
    # broker's log does.
    s6-ipcserver -c 1000 -C 1000 -b 1000 -a 0660 "$bench_dir/s6.sock" \
        s6-ipcserver-access -i "$bench_dir/s6-rules" \
        s6-sudod "$script" 2>"$bench_dir/s6.log" &
    s6_pid=$!
    if ! wait_for_socket "$bench_dir/s6.sock" "$s6_pid"; then
        echo "run.sh: s6-ipcserver did not create its socket" >&2
        exit 1
    fi
    chgrp www-data "$bench_dir/s6.sock"
    peer_options="--doas /usr/bin/doas --s6-sudo /usr/bin/s6-sudo"
    peer_options="$peer_options --s6-socket $bench_dir/s6.sock --s6-pid $s6_pid"
fi

echo "run.sh: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
# shellcheck disable=SC2086 # the options are single words without spaces
runuser -u www-data -- "$bench_dir/bin/loadgen" \
    --script "$script" \
    --socket "$bench_dir/broker.sock" \
    --broker-pid "$broker_pid" \
    --cli "$bench_dir/bin/secure_socket" \
    --invocation "$invocation" \
    --revision "$revision" \
    --out "$bench_dir/results" \
    $peer_options $loadgen_options

broker_log_lines=$(wc -l < "$bench_dir/broker.log")
echo "run.sh: the broker wrote $broker_log_lines log lines"
install -d -m 0755 "$repo/bench/results"
cp "$bench_dir/results/results.md" "$bench_dir/results/results.json" \
    "$bench_dir/results/latency.svg" "$repo/bench/results/"
echo "run.sh: results copied to $repo/bench/results/"
