# Sourced by the scripts: the project's virtualenv, created from requirements.lock when missing
# or stale. The lock pins what CI tested; pip's own cache makes a re-create fast.
VENV="${STATSFEEDER_VENV:-$PWD/.venv}"
ensure_venv() {
  local stamp="$VENV/.lock-sha"
  local want
  want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "scripts: installing Python dependencies into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c requirements.lock -e '.[test]' >&2
    echo "$want" > "$stamp"
  fi
}
