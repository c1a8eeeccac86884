#!/bin/sh
# Installs a built secure_socket as a system service. `./build.sh install` builds first
# and then runs this script. Run as root.
#
# Lays out the following paths, each owned by root. Directories that exist already keep
# their owner and mode.
#   /usr/local/bin/secure_socket                        0755  the broker and client
#   /usr/local/libexec/secure_socket/                   0755  directory for the scripts
#   /usr/local/libexec/secure_socket/examples/          0755  the example scripts, 0755
#   /etc/secure_socket/policy.d/                        0755  the example policy, 0644,
#                                                             only when the directory is empty
#   /etc/systemd/system/secure_socket.{service,socket}  0644
# It also creates the system user secure-socket that the parser children run as. It
# enables and starts nothing.
#
# Environment:
#   DESTDIR  staging directory that every path above is placed under, as packaging tools
#            expect (default: empty, the real system). With DESTDIR set the user is not
#            created, and the installed files still name the final paths.
#   BINARY   the binary to install (default: build/secure_socket, which build.sh writes).
set -eu

repo=$(cd "$(dirname "$0")" && pwd)
destdir=${DESTDIR:-}
binary=${BINARY:-$repo/build/secure_socket}

bin_dir=/usr/local/bin
scripts_dir=/usr/local/libexec/secure_socket
examples_dir=$scripts_dir/examples
config_dir=/etc/secure_socket
policy_dir=$config_dir/policy.d
unit_dir=/etc/systemd/system

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    fail "run as root: the installed files must be owned by root"
fi
case $destdir in
    ''|/*) ;;
    *) fail "DESTDIR must be an absolute path, not '$destdir'" ;;
esac
if [ ! -x "$binary" ]; then
    fail "$binary is missing or not executable: run ./build.sh first"
fi

# Each missing directory is created owned by root with mode 0755, level by level, because
# the broker rejects a script or policy file below a directory that is not root-owned or
# that group or others can write. An existing directory, such as /usr/local/bin, keeps
# its owner and mode.
for dir in "$bin_dir" /usr/local/libexec "$scripts_dir" "$examples_dir" \
    "$config_dir" "$policy_dir" "$unit_dir"; do
    if [ ! -d "$destdir$dir" ]; then
        install -d -m 0755 -o root -g root "$destdir$dir"
    fi
done

install -m 0755 -o root -g root "$binary" "$destdir$bin_dir/secure_socket"

for script in "$repo"/scripts/*; do
    install -m 0755 -o root -g root "$script" "$destdir$examples_dir/"
done

# An existing policy is the administrator's, so the example goes only into an empty
# directory. Its script paths are rewritten to where the examples were just installed.
if [ -z "$(ls -A "$destdir$policy_dir")" ]; then
    for policy in "$repo"/policy/*.toml; do
        target=$destdir$policy_dir/$(basename "$policy")
        sed "s|^script = \"[^\"]*/\\([^/\"]*\"\\)|script = \"$examples_dir/\\1|" "$policy" \
            > "$target"
        chown root:root "$target"
        chmod 0644 "$target"
    done
    echo "installed the example policy into $destdir$policy_dir"
else
    echo "left the existing policy in $destdir$policy_dir unchanged"
fi

# The units are replaced on every install. Local changes belong in drop-ins
# (`systemctl edit secure_socket.service`), which live in a directory of their own.
for unit in secure_socket.service secure_socket.socket; do
    install -m 0644 -o root -g root "$repo/systemd/$unit" "$destdir$unit_dir/$unit"
done

# The parser children run as a dedicated system user, so that no script or client
# shares their uid and could signal them. A staged install leaves this to the package.
if [ -n "$destdir" ]; then
    echo "DESTDIR is set, so the system user secure-socket was not created"
elif ! id secure-socket >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin secure-socket
fi

# A staged tree is not a running system yet, so the next steps of a real install do not
# apply to it. The summary lists what was staged instead.
if [ -n "$destdir" ]; then
    echo "staged secure_socket under $destdir (nothing was installed on this system):"
    echo "  $destdir$bin_dir/secure_socket"
    echo "  $destdir$examples_dir/ (the example scripts)"
    echo "  $destdir$policy_dir/"
    echo "  $destdir$unit_dir/secure_socket.service"
    echo "  $destdir$unit_dir/secure_socket.socket"
    exit 0
fi

echo "installed secure_socket into /"
echo "check the policy:  $bin_dir/secure_socket check-policy $policy_dir"
echo "then start it:     systemctl daemon-reload && systemctl enable --now secure_socket.service"
echo "   (or, to start it on the first connection, enable secure_socket.socket instead)"
