"""``ros2 launch PACKAGE FILE [name:=value ...]`` without ros2cli (not on PyPI).

Does what ros2launch's ``launch_a_launch_file`` does: a ``launch.LaunchService`` including the
package's launch file through ``IncludeLaunchDescription(AnyLaunchDescriptionSource(...))``
with the parsed ``name:=value`` arguments, then ``run()``; SIGINT/SIGTERM are handled by the
LaunchService (it shuts the processes down). Exits with ``run()``'s return code.
"""
import os
import sys

import launch
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource


def parse_arguments(items: list[str]) -> list[tuple[str, str]]:
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise SystemExit(f"malformed launch argument {item!r}, expected '<name>:=<value>'")
        parsed[name] = value  # last one wins, as in ros2launch
    return list(parsed.items())


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    package, file_name, *arguments = argv
    path = os.path.join(get_package_share_directory(package), 'launch', file_name)
    service = launch.LaunchService(argv=arguments)
    service.include_launch_description(launch.LaunchDescription([
        IncludeLaunchDescription(AnyLaunchDescriptionSource(path),
                                 launch_arguments=parse_arguments(arguments)),
    ]))
    return service.run()


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
