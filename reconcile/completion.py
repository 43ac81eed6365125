"""Shell completion scripts, made from the CLI's own parser so they never drift from it.

Model keys complete too (`reconcile path <TAB>`): the scripts ask `reconcile completion
keys`, which reads the models.toml that the command would use.
"""

from __future__ import annotations

import argparse
import shlex

KEYED = ("path", "verify", "validate", "remove", "push", "pull", "export")  # take model keys
FILES = ("-f", "--manifest", "-o", "--output", "--private-key")  # options naming a file


def _values(parser: argparse.ArgumentParser) -> tuple[dict[str, list[str]], list[str]]:
    """Options with fixed values (--progress: auto bars …), and every option that takes
    a value, across all commands: the word after one is its value, never the command."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    choices: dict[str, list[str]] = {}
    takes: set[str] = set()
    for p in (parser, *sub.choices.values()):
        for a in p._actions:
            if a.option_strings and a.nargs != 0:
                takes.update(a.option_strings)
                if a.choices:
                    for o in a.option_strings:
                        choices[o] = [str(c) for c in a.choices]
    return choices, sorted(takes)


def _commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        out[name] = sorted(o for a in p._actions for o in a.option_strings)
        for a in p._actions:  # fixed choices of positionals (completion's shells)
            if not a.option_strings and a.choices:
                out[name] += list(a.choices)
    return out


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    cmds = _commands(parser)
    top = sorted(o for a in parser._actions for o in a.option_strings)
    if shell == "fish":
        choices, _ = _values(parser)

        def fish_option(o: str) -> str:
            """`-l NAME`, with its values (`-x -a '…'`) or files (`-r -F`)."""
            if o in choices:
                return f"-l {o[2:]} -x -a {shlex.quote(' '.join(choices[o]))}"
            return f"-l {o[2:]} -r -F" if o in FILES else f"-l {o[2:]}"

        lines = [f"complete -c reconcile -n __fish_use_subcommand -a {shlex.quote(n)}"
                 for n in cmds]
        lines += [f"complete -c reconcile -n __fish_use_subcommand {fish_option(o)}"
                  for o in top if o.startswith("--")]
        for name, opts in cmds.items():
            cond = f"'__fish_seen_subcommand_from {name}'"
            for o in opts:
                if o.startswith("--"):
                    lines.append(f"complete -c reconcile -n {cond} {fish_option(o)}")
                elif not o.startswith("-"):
                    lines.append(f"complete -c reconcile -n {cond} -a {shlex.quote(o)}")
            if name in KEYED:
                lines.append(f"complete -c reconcile -n {cond} -f -a '(reconcile completion keys)'")
        return "\n".join(lines) + "\n"
    cases = "\n".join(f"    {name}) opts={shlex.quote(' '.join(opts))};;"
                      for name, opts in cmds.items())
    keyed = "|".join(KEYED)
    choices, takes = _values(parser)
    value_cases = "\n".join(f"    {o}) COMPREPLY=($(compgen -W {shlex.quote(' '.join(v))}"
                            ' -- "$cur")); return;;' for o, v in sorted(choices.items()))
    files = "|".join(FILES)
    bash = f"""_reconcile() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" cmd="" opts="" keys="" i
  ((COMP_CWORD > 0)) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  case "$prev" in
{value_cases}
    {files}) COMPREPLY=($(compgen -f -- "$cur")); return;;
  esac
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in {'|'.join(takes)}) ((i++));; -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break;; esac
  done
  if [ -z "$cmd" ]; then
    COMPREPLY=($(compgen -W {shlex.quote(' '.join([*cmds, *top]))} -- "$cur"))
    return
  fi
  case "$cmd" in
{cases}
  esac
  case "$cmd" in {keyed}) keys="$(reconcile completion keys 2>/dev/null)";; esac
  COMPREPLY=($(compgen -W "$opts $keys" -- "$cur"))
}}
complete -o default -F _reconcile reconcile
"""
    if shell == "zsh":
        return ("autoload -U +X compinit && compinit -u\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + bash)
    return bash
