"""Print the optional-dependency groups ("extras") pyproject.toml defines, comma-separated.

Used by scripts/setup.sh so that ``make test`` and CI install every extra the project
has, without a list kept by hand beside pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "pyproject.toml")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    extras = data.get("project", {}).get("optional-dependencies", {})
    print(",".join(sorted(extras)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
