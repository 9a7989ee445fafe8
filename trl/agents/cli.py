"""The `trl` console script of trl-agents: upstream TRL's commands plus `vllm-serve-async`.

Upstream's `trl` script is replaced by this one when trl-agents is installed (both declare the `trl` console
script; the last distribution installed wins). Every upstream command is registered and run through upstream's own
`Command` objects, so it behaves exactly as before; this module only adds commands. Reinstalling upstream `trl`
restores its script; uninstalling trl-agents removes the script until `pip install --force-reinstall --no-deps trl`.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser, Namespace

from trl.cli.commands import get_commands
from trl.cli.commands.base import Command, CommandContext


class VllmServeAsyncCommand(Command):
    """`trl vllm-serve-async`: vLLM replicas behind the recording gateway (see `trl.agents.server`)."""

    def __init__(self):
        super().__init__(
            name="vllm-serve-async",
            help_text="Serve a model with vLLM replicas behind a gateway that records token-exact agent sessions",
        )

    def register(self, subparsers) -> None:
        # Our own parser handles `--help` and forwards unknown flags to `vllm serve`.
        subparsers.add_parser(self.name, help=self.help_text, add_help=False)

    def run(self, args: Namespace, context: CommandContext) -> int:
        from .server.launch import main as serve_main

        return serve_main(context.argv_after(self.name))


def all_commands() -> list[Command]:
    """Upstream's commands followed by this package's."""
    return [*get_commands(), VllmServeAsyncCommand()]


def main(argv: list[str] | None = None) -> int:
    """Run the `trl` CLI with the commands of upstream TRL and trl-agents."""
    commands = all_commands()
    parser = ArgumentParser(prog="trl", allow_abbrev=False)
    subparsers = parser.add_subparsers(help="available commands", dest="command")
    for command in commands:
        command.register(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = next(c for c in commands if c.name == args.command)
    return command.run(args, CommandContext(argv=argv))


if __name__ == "__main__":
    raise SystemExit(main())
