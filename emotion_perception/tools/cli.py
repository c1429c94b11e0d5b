"""``emotion-perception``: offline processing, bags, demo, evaluation and fine-tuning.

Each sub-command lives in its own module of ``emotion_perception.tools`` that defines
``register(subparsers)``; the module is imported only when its sub-command runs, so
``emotion-perception make-bag`` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: sub-command -> (module in emotion_perception.tools, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    'process': ('process', 'run detector + emotion core over images, a video or a bag (no DDS)'),
    'make-bag': ('bags', 'write images or a video into a rosbag2 (MCAP) of sensor_msgs/Image'),
    'replay': ('bags', "publish a bag's messages with their original timing"),
    'record': ('bags', 'record topics into a rosbag2 (MCAP)'),
    'demo': ('demo', 'the full pipeline on real photographs: bag -> both nodes -> table'),
    'evaluate': ('evaluate', 'evaluate a backend on EMOTIC (paper metrics + mAP), tune thresholds'),
    'finetune': ('finetune', 'LoRA fine-tuning of a vision-language model on EMOTIC'),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='emotion-perception', description=__doc__.split('\n')[0])
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    if command in COMMANDS:  # its module may register several sub-commands (bags: 3)
        importlib.import_module(f'emotion_perception.tools.{COMMANDS[command][0]}').register(sub)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith('-')), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
