# Shared by scripts/test, scripts/sample, scripts/lint, scripts/docs and .ci/run (sourced, not run).
#
# Environment:
#   PYTHON   interpreter for a new virtualenv: python3 (default), python3.12, 3.12 or a path;
#            a version pyenv has but that is not on PATH is found under $(pyenv root)/versions.
#   VENV     the virtualenv directory (default .venv, created if missing).
#   DJANGO   a Django version range: '>=6.0,<6.1', '==5.2.*' or just 6.0 (meaning 6.0.x).

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Prints the path of an interpreter for $1 (python3, python3.12, 3.12, /path/to/python).
find_python() {
    local spec=$1 version="" candidate root
    case $spec in
        [0-9]*) version=$spec; spec=python$spec ;;
        python[0-9]*) version=${spec#python} ;;
    esac
    if candidate=$(command -v "$spec" 2>/dev/null) && "$candidate" -c '' 2>/dev/null; then
        printf '%s\n' "$candidate"; return 0
    fi
    if [[ $version == *.* ]]; then
        root=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
        for candidate in "$root"/versions/"$version".*/bin/python"$version"; do
            if [[ -x $candidate ]]; then printf '%s\n' "$candidate"; return 0; fi
        done
    fi
    die "no Python interpreter for PYTHON=$1 (try PYTHON=3.12 or a full path)"
}

# Turns DJANGO into a pip requirement: '' -> '', 6.0 -> Django>=6.0,<6.1, '>=6.0' -> Django>=6.0.
django_requirement() {
    local spec=${DJANGO:-}
    [[ -n $spec ]] || return 0
    if [[ $spec =~ ^([0-9]+)\.([0-9]+)$ ]]; then
        printf 'Django>=%s.%s,<%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" \
            "${BASH_REMATCH[1]}" "$((BASH_REMATCH[2] + 1))"
    else
        printf 'Django%s\n' "$spec"
    fi
}

# Creates $VENV with $PYTHON if missing; refuses a venv of another Python version.
ensure_venv() {
    local python wanted have
    python=$(find_python "${PYTHON:-python3}")
    wanted=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ -x $VENV/bin/python ]]; then
        have=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        if [[ -n ${PYTHON:-} && $have != "$wanted" ]]; then
            die "$VENV has Python $have, PYTHON=$PYTHON is $wanted: set VENV to another directory"
        fi
        return 0
    fi
    say "Creating $VENV with $python (Python $wanted)"
    "$python" -m venv "$VENV"
    printf '*\n' >"$VENV/.gitignore"  # .venv-py312-dj60 and friends stay out of git status
}

# The requirements/ file naming the driver for DATABASE_URL (nothing for SQLite).
driver_requirements() {
    case ${DATABASE_URL:-} in
        "" | sqlite*) ;;
        postgres* | pgsql*) printf '%s\n' requirements/postgres.txt ;;
        mysql* | mariadb*) printf '%s\n' requirements/mysql.txt ;;
        *) die "DATABASE_URL scheme not supported: ${DATABASE_URL%%:*} (sqlite, postgres, mysql)" ;;
    esac
}

# Installs the driver for DATABASE_URL into $VENV (and mysqlclient's build dependencies).
ensure_driver() {
    local requirements
    requirements=$(driver_requirements)
    [[ -n $requirements ]] || return 0
    ensure_mysql_build_deps
    venv_install "$(basename "$requirements" .txt)" -r "$requirements"
}

# mysqlclient compiles against libmariadb; install the Debian packages when missing.
ensure_mysql_build_deps() {
    local missing=() package
    [[ ${DATABASE_URL:-} == mysql* || ${DATABASE_URL:-} == mariadb* ]] || return 0
    "$VENV/bin/python" -c 'import MySQLdb' 2>/dev/null && return 0
    command -v dpkg-query >/dev/null || return 0
    for package in libmariadb-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    if [[ $(id -u) != 0 ]]; then
        die "mysqlclient needs: sudo apt-get install ${missing[*]}"
    fi
    say "Installing ${missing[*]} (to build mysqlclient)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# venv_install NAME PIP-ARGS...: pip install into $VENV unless the same arguments and
# requirement files were installed under NAME before (a stamp file per NAME).
venv_install() {
    local stamp=$VENV/.installed-$1 digest
    shift
    digest=$(
        {
            printf '%s\n' "$@"
            cat pyproject.toml requirements/*.txt
            [[ ! -f docs/requirements.txt ]] || cat docs/requirements.txt
        } | sha256sum | cut -d' ' -f1
    )
    if [[ -f $stamp && $(cat "$stamp") == "$digest" ]]; then
        return 0
    fi
    say "Installing into $VENV: $*"
    "$VENV/bin/python" -m pip install -qq "$@"
    printf '%s\n' "$digest" >"$stamp"
}

# junit_counts PYTHON REPORT: prints "passed failed skipped" from a JUnit report (nothing
# when there is none); the one reader of pytest's counts, for scripts/test and .ci/run.
junit_counts() {
    [[ -s $2 ]] || return 0
    "$1" - "$2" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
failed = total["failures"] + total["errors"]
print(total["tests"] - failed - total["skipped"], failed, total["skipped"])
EOF
}
