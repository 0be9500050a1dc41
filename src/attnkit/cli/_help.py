"""How ``attnkit ... --help`` reads: defaults shown, examples one per line."""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["HelpFormatter", "examples"]


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in ``--help``; descriptions wrapped by paragraph, and indented lines
    (the examples of an epilog, one per line) kept exactly as written, never wrapped mid-command."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        quiet = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if quiet or "default" in help.lower() or not action.option_strings:
            return help  # already says it, or there is nothing worth showing
        return f"{help} (default: %(default)s)" if help else "(default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if line.startswith(" ") or not line:
                lines.append(indent + line)
            else:
                lines.extend(textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent))
        return "\n".join(lines)


def examples(*commands: str) -> str:
    """An epilog listing one example command per line."""
    return "examples:\n" + "\n".join(f"  {c}" for c in commands)
