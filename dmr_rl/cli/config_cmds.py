"""``dmr config``: print the resolved configuration or every field's documentation."""
from __future__ import annotations

from dmr_rl.cli import add_config_args


def register(sub, groups) -> None:
    p = sub.add_parser("config", help="print the resolved config (YAML) or, with --fields, every field's doc")
    add_config_args(p, omitted="YAML preset (experiments/*.yaml); the built-in defaults when omitted")
    p.add_argument("--fields", action="store_true", help="list every field with its default and documentation")
    p.set_defaults(func=run)


def run(args) -> int:
    import yaml

    from dmr_rl.config import field_help, load_config, to_dict

    if args.fields:
        for name, help_text, default in field_help():
            print(f"{name} = {default!r}\n    {help_text}")
        return 0
    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0
