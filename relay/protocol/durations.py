"""Go-style durations (``30s``, ``5m0s``, ``1h30m``, ``250ms``) for flags and the API's JSON.

The reference implementation writes lifetimes with Go's ``time.Duration``
String form; our API and our flags use the same text so that the two are
interchangeable. Durations are carried as float seconds everywhere else.
"""

from __future__ import annotations

import re

_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts both micro signs
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_TERM = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration into seconds; raises ValueError with the offending text."""
    s = text.strip()
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total_ns = 0
    pos = 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if not m or not (m.group(1) or m.group(2)):
            raise ValueError(f"invalid duration {text!r} (expected e.g. 30s, 5m, 1h30m, 250ms)")
        whole, frac, unit = m.group(1) or "0", m.group(2) or "", m.group(3)
        scale = _UNITS_NS[unit]
        total_ns += int(whole) * scale
        if frac:
            total_ns += int(frac) * scale // 10 ** len(frac)
        pos = m.end()
    try:
        return sign * total_ns / 1e9
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None


def _fraction(value: int, digits: int) -> str:
    """``value`` / 10**digits as Go prints it: trailing zeros dropped."""
    whole, frac = divmod(value, 10**digits)
    text = str(whole)
    frac_text = str(frac).rjust(digits, "0").rstrip("0")
    return f"{text}.{frac_text}" if frac_text else text


def format_duration(seconds: float) -> str:
    """Seconds as Go's ``time.Duration.String`` prints them: ``30s``, ``5m0s``, ``1.5ms``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _fraction(rest, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return f"{sign}{secs}"
