#!/usr/bin/env bash
# Kaldi-style command-line options for recipe shell scripts.
#
# Source this file after setting the defaults (and, optionally, $help_message):
#
#   stage=0
#   stop_stage=100
#   use_gpu=true
#   help_message="Usage: $0 [options] <data-dir>"
#   . shared/parse_options.sh
#
# Then `./prepare.sh --stage 3 --stop-stage 4 data` sets stage=3 and stop_stage=4 and leaves
# "data" in "$@". Rules:
#   --name value    sets the shell variable `name` (dashes become underscores); the variable must
#                   already be defined by the script, otherwise the option is rejected.
#   --name=value    rejected: write --name value.
#   true/false      a variable whose default is true or false only accepts true or false.
#   --config FILE   sources FILE (shell assignments) before the other options are applied.
#   --help, -h      prints $help_message and exits 0.
# Parsing stops at the first argument that does not start with "--" (or "-h"); the remaining
# arguments stay in "$@". Errors go to stderr and exit with status 1.

_po_fail() {
  echo "$0: $*" >&2
  exit 1
}

# Pass 1: source every --config FILE among the options.
_po_args=("$@")
_po_i=0
while [ "$_po_i" -lt "${#_po_args[@]}" ]; do
  case "${_po_args[$_po_i]}" in
    --config)
      [ $((_po_i + 1)) -lt "${#_po_args[@]}" ] || _po_fail "option --config needs a file name"
      _po_config="${_po_args[$((_po_i + 1))]}"
      [ -r "$_po_config" ] || _po_fail "cannot read config file '$_po_config'"
      # shellcheck disable=SC1090
      . "$_po_config"
      _po_i=$((_po_i + 2))
      ;;
    --help | -h) break ;;
    --*) _po_i=$((_po_i + 2)) ;;
    *) break ;;
  esac
done

# Pass 2: apply the options in order.
while [ $# -gt 0 ]; do
  case "$1" in
    --help | -h)
      if [ -n "${help_message:-}" ]; then
        printf '%s\n' "$help_message"
      else
        echo "Usage: $0 [--name value ...] (options are the variables the script defines)"
      fi
      exit 0
      ;;
    --*=*)
      _po_fail "invalid option '$1': options must be of the form --name value (no '=')"
      ;;
    --config)
      shift 2
      ;;
    --*)
      _po_name="${1#--}"
      _po_name="${_po_name//-/_}"
      [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || _po_fail "invalid option '$1'"
      declare -p "$_po_name" > /dev/null 2>&1 \
        || _po_fail "invalid option '$1': this script has no variable '$_po_name'"
      [ $# -ge 2 ] || _po_fail "option '$1' needs a value"
      _po_old="${!_po_name:-}"
      if [ "$_po_old" = true ] || [ "$_po_old" = false ]; then
        [ "$2" = true ] || [ "$2" = false ] \
          || _po_fail "option '$1' expects true or false, got '$2'"
      fi
      printf -v "$_po_name" '%s' "$2"
      shift 2
      ;;
    *)
      break
      ;;
  esac
done

unset _po_args _po_i _po_config _po_name _po_old
unset -f _po_fail
true # a sourced file returns the status of its last command
