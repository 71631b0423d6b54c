"""Long fuzzing of every parser and of RelayCore.handle (issue 8): a million cases by default.

    .venv/bin/python -m bench.fuzz [--cases 1000000] [--seed 1] [--max-seconds 3600]
                                   [--engine mutate|atheris] [--targets core,durations,...]
                                   [--ignore-known]
    .venv/bin/python -m bench.fuzz --seed S --replay TARGET HEX

The targets, their structure-aware generators and their properties live in
tests.relay.fuzzing, which the short CI run (tests/relay/test_fuzz.py)
uses too. Cases are split across targets by weight: the packet entry point
RelayCore.handle weighs 8 (attacker sources, target ``core``) and 5 (spoofed
client sources, ``core_spoofed``), every parser 1; ``--targets`` restricts
the run. Each target stops at its share of the cases or of ``--max-seconds``,
whichever comes first.

Engines:
  mutate   (default) the seeded generators in this process; a seed gives the same run.
  atheris  coverage-guided libFuzzer, one process per target, its bytes driving the
           same generators (instrumenting the relay package). Install it with
           `.venv/bin/pip install -e '.[fuzz]'` (or `.venv/bin/pip install atheris`).

Prints cases/s per target and in total, then each distinct failure (by
property or exception type and product line) with its smallest input in hex
and a replay command, and exits 1 if anything failed. ``--ignore-known``
reports failures listed in fuzzing.KNOWN_BUGS without failing on them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import Progress
from tests.support.paths import ROOT

if TYPE_CHECKING:
    from tests.relay.fuzzing import Outcome

DEFAULT_CASES = 1_000_000
DEFAULT_MAX_SECONDS = 3600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="across all targets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--targets", help="comma-separated target names (default: all)")
    parser.add_argument("--ignore-known", action="store_true", help="do not fail on KNOWN_BUGS")
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "HEX"))
    parser.add_argument("--atheris-child", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.cases < 1 or args.max_seconds <= 0:
        parser.error("--cases and --max-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.atheris_child:
        return atheris_child(args)
    from tests.relay import fuzzing

    if args.replay:
        return replay(args.replay[0], args.replay[1], args.seed)
    names = args.targets.split(",") if args.targets else list(fuzzing.BY_NAME)
    unknown = [name for name in names if name not in fuzzing.BY_NAME]
    if unknown:
        print(f"unknown targets {unknown}; known: {', '.join(fuzzing.BY_NAME)}", file=sys.stderr)
        return 2
    targets = [fuzzing.BY_NAME[name] for name in names]
    shares = fuzzing.split(args.cases, targets)
    weight = sum(t.weight for t in targets)
    weights = ", ".join(f"{t.name} {t.weight:g}" for t in targets if t.weight != 1)
    print(
        f"relay-fleet fuzzing: engine {args.engine}, seed {args.seed}, {args.cases:,} cases "
        f"over {len(targets)} targets, at most {args.max_seconds:g} s"
    )
    print(f"split by weight ({weights}, each other target 1; total {weight:g})")
    print(f"\n{'target':16} {'cases':>10} {'seconds':>8} {'cases/s':>9}  failures  entry point")
    outcomes = []
    started = time.perf_counter()
    progress = Progress("bench.fuzz", len(targets))
    for target in targets:
        budget = args.max_seconds * target.weight / weight
        progress.cell(f"{target.name}: {shares[target.name]:,} cases, at most {budget:.0f} s")
        if args.engine == "atheris":
            outcome = run_atheris(target.name, shares[target.name], args.seed, budget)
        else:
            outcome = fuzzing.run(target, shares[target.name], args.seed, budget)
        outcomes.append(outcome)
        print_row(outcome)
    return summarise(outcomes, time.perf_counter() - started, args)


def print_row(outcome: Outcome) -> None:
    bounded = " (time bound)" if outcome.cases < outcome.planned else ""
    print(
        f"{outcome.target:16} {outcome.cases:>10,} {outcome.seconds:>8.1f} "
        f"{outcome.rate:>9,.0f}  {len(outcome.failures):>8}  {outcome.entry}{bounded}",
        flush=True,
    )


def summarise(outcomes: list[Outcome], elapsed: float, args: argparse.Namespace) -> int:
    from tests.relay import fuzzing

    cases = sum(o.cases for o in outcomes)
    busy = sum(o.seconds for o in outcomes)
    failures = [f for o in outcomes for f in o.failures.values()]
    print(
        f"{'total':16} {cases:>10,} {busy:>8.1f} {cases / busy if busy else 0:>9,.0f}  "
        f"{len(failures):>8}  ({elapsed:.1f} s wall, setup included)"
    )
    for outcome in outcomes:
        if outcome.target.startswith("core"):
            print_core_stats(outcome)
    known = {id(f) for f in failures if any(b.matches(f) for b in fuzzing.KNOWN_BUGS)}
    for failure in failures:
        tag = "KNOWN" if id(failure) in known else "FAIL"
        print(f"\n{tag} {failure.target}: {failure.signature} ({failure.count:,} inputs)")
        print(f"  input ({len(failure.data)} bytes, hex): {failure.data.hex()}")
        print(f"  input: {failure.description}")
        print(f"  replay: .venv/bin/python -m bench.fuzz --seed {args.seed} --replay", end=" ")
        print(f"{failure.target} {failure.data.hex()}")
        print("  " + failure.error.replace("\n", "\n  "))
    if not failures:
        print("\nno failures")
        return 0
    blocking = [f for f in failures if not (args.ignore_known and id(f) in known)]
    print(f"\n{len(failures)} distinct failures ({len(known)} known bugs)")
    return 1 if blocking else 0


def print_core_stats(outcome: Outcome) -> None:
    from relay.protocol.core import Drop

    stats = outcome.stats
    total = max(1, outcome.cases)
    missing = [reason.value for reason in Drop if not stats.get(f"drop:{reason.value}")]
    reached = f"{len(Drop) - len(missing)} of {len(Drop)} drop reasons"
    if missing:
        reached += f", not {', '.join(missing)}"
    parts = [f"drop {stats['drop'] / total:.2%} ({reached})"]
    for kind, meaning in (
        ("rate_limited_work", "authentic handshakes refused by the limits"),
        ("challenge", "authentic binds, replayed"),
        ("challenge_v1", "authentic version 1 binds, from any source"),
        ("bound", "authentic answers from the client's address"),
        ("forward", "data from a bound client's address"),
    ):
        if stats.get(kind):
            parts.append(f"{kind} {stats[kind]:,} ({meaning})")
    print(f"  {outcome.target}: " + "; ".join(parts) + f"; state restored {stats['restores']:,}x")


def replay(name: str, data_hex: str, seed: int) -> int:
    from tests.relay import fuzzing

    target = fuzzing.BY_NAME[name](seed)
    value = target.from_bytes(bytes.fromhex(data_hex))
    print(f"{name}: {target.describe(value)}")
    target.check(value)
    print("passes")
    return 0


# -- atheris ------------------------------------------------------------------


def run_atheris(name: str, cases: int, seed: int, max_seconds: float) -> Outcome:
    """One libFuzzer process for one target; its report file carries counts and failures."""
    from tests.relay import fuzzing

    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
        corpus = Path(work) / "corpus"
        corpus.mkdir()
        rng = random.Random(f"atheris:{name}:{seed}")
        for index in range(32):
            (corpus / f"seed{index}").write_bytes(rng.randbytes(64 + rng.randrange(448)))
        report = Path(work) / "report.json"
        command = [
            sys.executable,
            "-m",
            "bench.fuzz",
            "--atheris-child",
            name,
            "--seed",
            str(seed),
            "--cases",
            str(cases),
            "--max-seconds",
            str(max_seconds),
            "--report",
            str(report),
            "--",
            f"-runs={cases}",
            f"-seed={seed}",
            f"-max_total_time={max(1, int(max_seconds))}",
            "-max_len=1024",
            "-timeout=60",
            f"-artifact_prefix={work}/",
            str(corpus),
        ]
        log = Path(work) / "libfuzzer.log"
        with log.open("w") as stream:
            process = subprocess.run(
                command, stdout=stream, stderr=subprocess.STDOUT, cwd=ROOT, check=False
            )
        ended = time.time()
        text = log.read_text(errors="replace")
        data: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
        done = [line for line in text.splitlines() if line.startswith("Done ")]
        runs = int(done[-1].split()[1]) if done else data.get("count", 0)
        outcome = fuzzing.Outcome(name, fuzzing.BY_NAME[name].entry, runs, 0.0, cases)
        outcome.seconds = ended - data.get("ready", ended)
        outcome.stats.update(data.get("stats", {}))
        for item in data.get("failures", []):
            failure = fuzzing.Failure(
                **{**item, "value": None, "data": bytes.fromhex(item["data"])}
            )
            outcome.failures[failure.signature] = failure
        if process.returncode != 0:
            crash = sorted(Path(work).glob("crash-*")) + sorted(Path(work).glob("timeout-*"))
            raw = crash[0].read_bytes() if crash else b""
            target = fuzzing.BY_NAME[name](seed)
            value = target.generate(fuzzing.ByteRandom(raw))
            outcome.failures[f"libFuzzer exit {process.returncode}"] = fuzzing.Failure(
                name,
                f"libFuzzer exit {process.returncode}",
                "libFuzzer",
                value,
                target.to_bytes(value),
                target.describe(value),
                "\n".join(text.splitlines()[-30:]),
            )
        return outcome


def atheris_child(args: argparse.Namespace) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["relay"]):
        from tests.relay import fuzzing

    target = fuzzing.BY_NAME[args.atheris_child](args.seed)
    outcome = fuzzing.Outcome(target.name, target.entry, 0, 0.0, args.cases)
    report = Path(args.report)
    ready = time.time()
    known_signatures: set[str] = set()

    def write() -> None:
        failures = [
            {
                "target": f.target,
                "kind": f.kind,
                "where": f.where,
                "data": f.data.hex(),
                "description": f.description,
                "error": f.error,
                "count": f.count,
            }
            for f in outcome.failures.values()
        ]
        state = {
            "ready": ready,
            "count": outcome.cases,
            "stats": target.final_stats(),
            "failures": failures,
        }
        temporary = report.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, report)

    def one_input(data: bytes) -> None:
        outcome.cases += 1
        value = target.generate(fuzzing.ByteRandom(data))
        try:
            target.check(value)
        except Exception as exc:
            failure: Exception | None = exc
        else:
            failure = None
        if failure is not None:
            fuzzing.record(target, value, failure, outcome, shrink=True)
            if outcome.failures.keys() != known_signatures:
                known_signatures.update(outcome.failures)
                write()
        if outcome.cases % 2000 == 0 or outcome.cases >= args.cases:
            write()

    write()
    libfuzzer_args = sys.argv[sys.argv.index("--") + 1 :]
    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
