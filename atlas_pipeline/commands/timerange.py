"""Date ranges on the command line: ``--timerange`` (freqtrade's form), ``--days N``, ``--start/--end``.

``--timerange START-END`` takes ``YYYY``, ``YYYYMM`` or ``YYYYMMDD`` on either side, and either
side may be left out (``20240101-``: from then on; ``-20240301``: up to then). Each side names the
first day of its period, and the end is exclusive, as in freqtrade and as ``--end``:
``20240101-20240301`` is January and February 2024, ``2022-2023`` is the year 2022, ``2022-`` is
from 2022 on. ``--days N`` is the last N UTC days, today included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from dataclasses import dataclass

_PART = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in UTC days; None where the range is open."""

    start: dt.date | None
    end: dt.date | None

    def __str__(self) -> str:
        last = f"{self.end - dt.timedelta(days=1)}" if self.end else "newest"
        return f"{self.start or 'oldest'}..{last}"


def _part(text: str, whole: str) -> dt.date | None:
    if not text:
        return None
    match = _PART.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"--timerange {whole!r}: {text!r} is not YYYY, YYYYMM or YYYYMMDD (e.g. 20240101-20240301, 2022-2023, 20240101-)"
        )
    year, month, day = (int(g) if g else 1 for g in match.groups())
    try:
        return dt.date(year, month, day)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--timerange {whole!r}: {text!r} is not a date ({error})") from None


def parse_timerange(value: str) -> TimeRange:
    """``START-END`` as a ``TimeRange`` (argparse type: errors exit 2 naming the value)."""
    if value.count("-") != 1 or value == "-":
        raise argparse.ArgumentTypeError(
            f"--timerange {value!r}: expected START-END, START- or -END with dates like 20240101 (e.g. 20240101-20240301)"
        )
    first, _, last = value.partition("-")
    start, end = _part(first, value), _part(last, value)
    if start and end and end <= start:
        raise argparse.ArgumentTypeError(f"--timerange {value!r}: the end {end} must be after the start {start} (the end is exclusive)")
    return TimeRange(start, end)


def positive_days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--days {value!r}: expected a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError(f"--days {value!r}: expected at least 1")
    return days


def iso_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date like 2018-01-31") from None


def add_range_arguments(parser: argparse.ArgumentParser, *, start_help: str, end_help: str) -> None:
    """``--timerange``, ``--days``, ``--start``, ``--end`` (resolved by ``chosen_range``)."""
    parser.add_argument("--timerange", type=parse_timerange, metavar="START-END",
                        help="freqtrade form, end exclusive: 20240101-20240301, 2022-2023 (the year 2022), 20240101- (open end)")
    parser.add_argument("--days", type=positive_days, metavar="N", help="the last N UTC days, today included")
    parser.add_argument("--start", type=iso_date, help=start_help)
    parser.add_argument("--end", type=iso_date, help=end_help)


def chosen_range(args: argparse.Namespace, today: dt.date | None = None) -> TimeRange:
    """The range the arguments ask for (open sides None); one form at a time.

    Raises ``ValueError`` (a usage error) when forms are mixed.
    """
    given = [name for name, value in (("--timerange", args.timerange), ("--days", args.days)) if value is not None]
    if args.start is not None or args.end is not None:
        given.append("--start/--end")
    if len(given) > 1:
        raise ValueError(f"give one of --timerange, --days or --start/--end, not {' and '.join(given)}")
    if args.timerange is not None:
        return args.timerange
    if args.days is not None:
        tomorrow = (today or dt.datetime.now(dt.UTC).date()) + dt.timedelta(days=1)
        return TimeRange(tomorrow - dt.timedelta(days=args.days), tomorrow)
    return TimeRange(args.start, args.end)
