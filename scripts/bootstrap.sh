# Set-up shared by ./run-demo and ./run-tests (sourced, not run): the Debian tools the project
# drives or tests against, and a virtual environment with qkdtel installed in it.
# Idempotent and quiet when everything is already there.

QKDTEL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QKDTEL_VENV:-$QKDTEL_ROOT/.venv}"

# command -> Debian package providing it
declare -A QKDTEL_APT=(
  [influxd]=influxdb [influx]=influxdb-client
  [snmpwalk]=snmp [snmpd]=snmpd [snmptrapd]=snmptrapd
  [prometheus-snmp-exporter]=prometheus-snmp-exporter
  [yanglint]=libyang2-tools [curl]=curl
  [netconfd]=netconfd [sshd]=openssh-server [ssh-keygen]=openssh-client  # NETCONF interop tests
  [systemd-analyze]=systemd [setpriv]=util-linux  # the unit in packaging/, the service user
)

qkdtel_apt() {
  local missing=()
  for cmd in "${!QKDTEL_APT[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${QKDTEL_APT[$cmd]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "qkdtel needs these Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

qkdtel_venv() {  # $1: pip extras, e.g. "[test]" or ""
  local extras="${1:-}" stamp
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  stamp="$VENV/.qkdtel-installed$extras"
  if [ ! -f "$stamp" ] || [ "$QKDTEL_ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "installing qkdtel$extras into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$QKDTEL_ROOT$extras"
    touch "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
