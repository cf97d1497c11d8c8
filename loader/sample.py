"""Deterministic sample exports shaped like the real ones: header-less CSV with CRLF endings.

`hired_employees.csv` carries a small share of broken rows, one of every kind the rules catch,
so that a run shows rejections. They sit together in one stretch of the file (as bad exports
usually go wrong for a while, not everywhere), which leaves the other batches promotable under
the default `reject_batch` policy. Departments and jobs are clean but padded with spaces and
a blank line, to show trimming and blank-line counting.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEPARTMENTS = [
    "Supply Chain",
    "Maintenance",
    "Staff",
    "Human Resources",
    "Business Development",
    "Legal",
    "Marketing",
    "Engineering",
    "Sales",
    "Product Management",
    "Accounting",
    "Research and Development",
]
JOB_WORDS = (
    [
        "Marketing",
        "Sales",
        "Software",
        "Data",
        "Research",
        "Account",
        "Office",
        "Financial",
        "Quality",
        "Support",
        "Product",
        "Project",
        "Legal",
        "Payroll",
    ],
    [
        "Assistant",
        "Engineer",
        "Analyst",
        "Manager",
        "Coordinator",
        "Associate",
        "Specialist",
        "Technician",
        "Director",
        "Officer",
        "Representative",
    ],
)
FIRST = [
    "Harold",
    "Ty",
    "Lyman",
    "Cathi",
    "Marcelo",
    "Ana",
    "Wei",
    "Fatima",
    "Olga",
    "Kwame",
    "Lucía",
    "Björn",
    "Chloé",
    "Priya",
    "Sven",
    "Aiko",
    "Omar",
    "Zoë",
    "Ravi",
    "Noor",
]
LAST = [
    "Vogt",
    "Hellmann",
    "Hennessey",
    "Fonseca",
    "Gonzalez",
    "Silva",
    "Zhang",
    "Haddad",
    "Ivanova",
    "Mensah",
    "Núñez",
    "Larsen",
    "Dubois",
    "Patel",
    "Berg",
    "Sato",
    "Khalil",
]

# One of each kind of broken row: (what is wrong, function making the row's fields).
BROKEN_KINDS = [
    ("missing name", lambda r: [r[0], "", *r[2:]]),
    ("missing department", lambda r: [*r[:3], "", r[4]]),
    ("missing job", lambda r: [*r[:4], ""]),
    ("missing datetime", lambda r: [r[0], r[1], "", *r[3:]]),
    ("non-ASCII digit id", lambda r: ["١" + r[0], *r[1:]]),
    ("id with underscore", lambda r: ["1_" + r[0], *r[1:]]),
    ("negative id", lambda r: ["-" + r[0], *r[1:]]),
    ("id over integer range", lambda r: ["2147483648", *r[1:]]),
    ("month 13", lambda r: [*r[:2], "2021-13-02T10:00:00Z", *r[3:]]),
    ("31 April", lambda r: [*r[:2], "2021-04-31T10:00:00Z", *r[3:]]),
    ("time without zone", lambda r: [*r[:2], r[2].rstrip("Z"), *r[3:]]),
    ("unknown department", lambda r: [*r[:3], "999", r[4]]),
    ("unknown job", lambda r: [*r[:4], "9999"]),
]


def _hire_time(rng: random.Random) -> str:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    moment = start + timedelta(seconds=rng.randrange(3 * 365 * 24 * 3600))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\r\n" for line in lines))


def write_sample(out: Path, rows: int, seed: int = 7, broken_share: float = 0.02) -> dict:
    """Write departments.csv, jobs.csv and hired_employees.csv into `out`.

    Returns:
        What was written: row counts and the line numbers of the broken hired rows.
    """
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    departments = [f"{i},{name}".encode() for i, name in enumerate(DEPARTMENTS, 1)]
    departments[2] = b"3 ,  Staff  "
    _write(out / "departments.csv", [*departments[:6], b"", *departments[6:]])
    titles = sorted({f"{a} {b}" for a in JOB_WORDS[0] for b in JOB_WORDS[1]})
    rng.shuffle(titles)
    titles = titles[:120]
    _write(out / "jobs.csv", [f"{i},{title}".encode() for i, title in enumerate(titles, 1)])

    broken_count = (
        max(len(BROKEN_KINDS) + 3, int(rows * broken_share))
        if rows >= 100 and broken_share > 0
        else 0
    )
    first_broken = int(rows * 0.6)
    hired, broken_lines = [], []
    for index in range(rows):
        fields = [
            str(index + 1),
            f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            _hire_time(rng),
            str(rng.randint(1, len(DEPARTMENTS))),
            str(rng.randint(1, len(titles))),
        ]
        line = ",".join(fields).encode()
        offset = index - first_broken
        if 0 <= offset < broken_count:
            broken_lines.append(index + 1)
            kind = offset % (len(BROKEN_KINDS) + 3)
            if kind < len(BROKEN_KINDS):
                line = ",".join(BROKEN_KINDS[kind][1](fields)).encode()
            elif kind == len(BROKEN_KINDS):
                line = line.replace(b",", b"\x00,", 1)  # a NUL byte
            elif kind == len(BROKEN_KINDS) + 1:
                line = line.replace(fields[1].encode(), b"Jos\xe9 Latin1", 1)  # not UTF-8
            else:
                line = ",".join([str(index), *fields[1:]]).encode()  # repeats the previous id
        hired.append(line)
    _write(out / "hired_employees.csv", hired)
    return {
        "departments": len(DEPARTMENTS),
        "jobs": len(titles),
        "hired_employees": rows,
        "broken_lines": broken_lines,
    }
