"""An app's own tests (`tests:` in its file): each runs the app on its inputs and checks the
reply against every expectation given — contains, regex, json_schema, parses, citations,
metric (bleu | chrf | rouge from llmos.evaluate) — into a TestReport whose text reads as a
short list of PASS / FAIL lines with the reason under each failure.

Tests run with seed 0 unless the test's params say otherwise, so a sampling app gives the same
reply on every run of the same model and llmos build."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from llmos.apps import output as outputs
from llmos.errors import LlmosError

__all__ = ["TestOutcome", "TestReport", "check_expect", "run_tests"]

_SEED = 0


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest class

    name: str
    ok: bool
    failures: list[str] = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "failures": list(self.failures), "text": self.text,
                "seconds": self.seconds}


@dataclass
class TestReport:
    __test__ = False

    app: str
    file: str
    results: list[TestOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every test passed (an app without tests passes)."""
        return all(r.ok for r in self.results)

    @property
    def passed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    def to_dict(self) -> dict:
        return {"app": self.app, "file": self.file, "ok": self.ok, "passed": self.passed, "failed": self.failed,
                "results": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        n = len(self.results)
        head = (f"{self.app} ({self.file}): no tests" if n == 0 else
                f"{self.app} ({self.file}): {n} test{'s' if n != 1 else ''}, {self.passed} passed, {self.failed} failed")
        lines = [head]
        for r in self.results:
            lines.append(f"  {'PASS' if r.ok else 'FAIL'} {r.name} ({r.seconds:.1f} s)")
            for f in r.failures:
                lines.append(f"       {f}")
            if not r.ok:
                lines.append(f"       reply: {_clip(r.text)}")
        return "\n".join(lines)


def run_tests(app) -> TestReport:
    report = TestReport(app.name, str(app.path))
    for t in app.spec.tests:
        start = time.perf_counter()
        params = {"seed": _SEED, **t.params}
        try:
            result = app.run(message=t.message, params=params, **t.inputs)
        except LlmosError as e:
            report.results.append(TestOutcome(t.name, False, [f"the app failed: {e}"],
                                              seconds=time.perf_counter() - start))
            continue
        failures = check_expect(t.expect, result, app)
        report.results.append(TestOutcome(t.name, not failures, failures, result.text, time.perf_counter() - start))
    return report


def check_expect(expect, result, app) -> list[str]:
    """Why `result` (an AppResult) fails `expect` (spec.Expect): one line per failed key."""
    text = result.text
    failures: list[str] = []
    if expect.contains is not None:
        for s in [expect.contains] if isinstance(expect.contains, str) else expect.contains:
            if s not in text:
                failures.append(f"contains {s!r}: not in the reply")
    if expect.regex is not None and not re.search(expect.regex, text):
        failures.append(f"regex {expect.regex!r}: no match in the reply")
    if expect.json_schema not in (None, False):
        problem = _json_problem(expect.json_schema, result, app)
        if problem:
            failures.append(f"json_schema: {problem}")
    if expect.parses is not None:
        code = result.output if app.output.kind == "code" else outputs._code(text, "")[0]
        problem = outputs.python_problem(code)
        if problem:
            failures.append(f"parses {expect.parses}: {problem}")
    if expect.citations is not None and len(result.citations) < expect.citations:
        failures.append(f"citations: {len(result.citations)}, expected at least {expect.citations}")
    if expect.metric is not None:
        problem = _metric_problem(expect.metric, text)
        if problem:
            failures.append(problem)
    return failures


def _json_problem(want, result, app) -> str | None:
    if want is True:
        # The app's schema: constrained decoding wrote it, so a reply that parsed and was not cut
        # holds it; output.extract validated it with jsonschema where that is installed.
        return result.output_error
    try:
        value = result.output if app.output.kind == "json" and result.output_error is None else json.loads(result.text)
    except ValueError as e:
        return f"the reply is not JSON: {e}"
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return ("validating against a schema given in the test needs the jsonschema package "
                "(pip install 'llmos[test]'), or use json_schema: true for the app's own schema")
    return outputs.schema_problem(value, want)


def _metric_problem(metric, text: str) -> str | None:
    from llmos import extras

    try:
        extras.require("eval", f"the {metric.name} metric of an app test")
    except LlmosError as e:
        return f"metric {metric.name}: {e}"
    from llmos.evaluate.metrics import SCORERS

    score = SCORERS[metric.name]([text], [metric.reference])["score"]
    if score < metric.min:
        return f"metric {metric.name}: {score:.2f}, under the minimum of {metric.min:g}"
    return None


def _clip(text: str, n: int = 160) -> str:
    r = repr(text)
    return r if len(r) <= n else r[:n - 4] + "...'"
