# Sourced by the tool scripts here: install_pinned_tool VENV PACKAGE VERSION CONSTRAINTS
# puts PACKAGE==VERSION, with every dependency pinned by the CONSTRAINTS file, into a virtual
# environment of its own at VENV (a tool's dependencies never meet Kernex's), unless that
# version is there already. The index's notes about absent local mirror folders are noise.
install_pinned_tool() {
  local venv=$1 package=$2 version=$3 constraints=$4
  local command="$venv/bin/$package"
  if [ -x "$command" ] && "$command" --version 2>/dev/null | grep -qE "(^| )$version$"; then
    return 0
  fi
  echo "tools: installing $package $version (a minute the first time)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$constraints" "$package==$version" 2>&1 \
    | grep -vE "is ignored: it is neither a file nor a directory" >&2 || true
  "$command" --version >/dev/null
}
