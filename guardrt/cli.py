"""The `guardrt` command line: a thin layer over library functions.

Every flag has an environment-variable twin (`--grpc-port` <-> `GUARDRT_GRPC_PORT`), shown in `--help`.
Errors guardrt raises on purpose (GuardrtError) print as one line and exit 2; nothing prints a traceback for them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from guardrt.runtime.errors import GuardrtError

ENV_PREFIX = "GUARDRT_"
_TRUE = {"1", "true", "yes", "on"}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class _EnvAppendAction(argparse._AppendAction):
    """`action="append"` whose command-line values replace (not extend) a default taken from the environment."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


class EnvArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose long options default to their GUARDRT_* environment variable when it is set."""

    def add_argument(self, *flags, **kwargs):  # type: ignore[override]
        long_flags = [f for f in flags if f.startswith("--")]
        if long_flags and kwargs.get("action") not in ("help", "version"):
            var = env_name(long_flags[0])
            kwargs["help"] = (kwargs.get("help") or "") + f" [env: {var}]"
            if var in os.environ:
                raw = os.environ[var]
                if kwargs.get("action") == "store_true":
                    kwargs["default"] = raw.strip().lower() in _TRUE
                elif kwargs.get("action") == "append":  # a comma-separated list: GUARDRT_URL=host1:8001,host2:8001
                    conv = kwargs.get("type") or str
                    kwargs["default"] = [conv(v.strip()) for v in raw.split(",") if v.strip()]
                    kwargs["action"] = _EnvAppendAction
                else:
                    conv = kwargs.get("type") or str
                    kwargs["default"] = conv(raw)
                kwargs.pop("required", None)
        return super().add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from guardrt import __version__
    from guardrt.commands import COMMAND_MODULES

    parser = EnvArgumentParser(prog="guardrt", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"guardrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(f"guardrt.commands.{mod_name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except GuardrtError as exc:
        print(f"guardrt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"guardrt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output consumer went away (e.g. `| head`); not an error worth a traceback.
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
