"""The `review` gate kind: a model reviews target files against a rubric, `samples` times.

Owns: the review prompt (the rubric as the system message; each target, redacted, with line
numbers), the structured answer `{"score": 0..1, "findings": [{"file", "line", "message"}]}`
asked for with a JSON Schema through the run's provider gateway (`ctx.resources["llm"]`), strict
parsing of each answer, and the metrics:

- `samples`: answers that met the schema;
- `score`, `min_score`: mean and lowest score of those answers;
- `pass_rate`: samples scoring at least `pass_score`, over the samples *asked for*, so an
  unusable answer (not JSON, off-schema, truncated) can lower the rate but never raise it.

A provider error on any sample (an outage, a refusal, a spent budget) makes the review
inconclusive: no metrics, and the evidence says which sample failed and why. Never a pass.
Must not: import litellm or the providers package (the gateway is a resource), retry calls
(the gateway's loop is the only one), or send a known secret to the provider.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from engine.errors import GateError, ProviderError
from engine.gates._common import capped, file_digest, measurement, project_path
from engine.plugins import GateContext, Measurement
from engine.spec.flow import ReviewGate

__all__ = ["REVIEW_SCHEMA", "ReviewKind"]

MAX_TARGET_CHARS = 120_000
"""Each target is cut here (and the prompt says so): a review of a huge file is no review."""
MAX_FINDINGS = 50
"""Findings recorded per sample."""

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["score", "findings"],
    "properties": {
        "score": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "1 when the targets fully meet the rubric, 0 when they do not at all.",
        },
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["file", "line", "message"],
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer", "minimum": 0},
                    "message": {"type": "string", "minLength": 1},
                },
            },
        },
    },
    # the offline `local/...` provider answers with the first example
    "examples": [{"score": 0.8, "findings": []}],
}
"""The answer each sample must give."""

_SYSTEM = """\
You are a meticulous reviewer. Judge the files you are given against the rubric below, and
only against it. Give a score between 0 and 1: 1 means the files fully meet the rubric, 0 that
they do not meet it at all. Report every problem as a finding naming the file, the line (0 for
the file as a whole) and what is wrong. Answer with one JSON object and nothing else:
{"score": <number 0..1>, "findings": [{"file": "...", "line": <int>, "message": "..."}]}

Rubric:
"""


class ReviewKind:
    """An LLM's scored review of files, sampled."""

    name: str = "review"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, ReviewGate):
            raise GateError(f"the review kind was given a {type(gate).__name__}")
        gateway = ctx.resources.get("llm")
        if gateway is None:
            raise GateError("no LLM gateway in this run, so nothing can review")
        routes = getattr(gateway, "routes", None)
        if routes is not None and gate.model not in routes:
            raise GateError(f"no model route '{gate.model}' in this flow")
        rubric_path = project_path(ctx, gate.rubric, "rubric")
        try:
            rubric = rubric_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GateError(
                f"cannot read the rubric {gate.rubric}: {exc.strerror or exc}"
            ) from None
        targets = [gate.target] if isinstance(gate.target, str) else list(gate.target)
        evidence: dict[str, Any] = {
            "route": gate.model,
            "rubric": gate.rubric,
            "rubric_sha256": file_digest(rubric_path),
            "targets": {rel: file_digest(project_path(ctx, rel, "target")) for rel in targets},
            "samples_asked": gate.samples,
            "pass_score": gate.pass_score,
        }
        missing = [rel for rel, digest in evidence["targets"].items() if digest is None]
        if missing:
            evidence["reason"] = f"nothing to review: {', '.join(missing)} cannot be read"
            return measurement(ctx, {}, evidence, str(evidence["reason"]))
        messages, truncated = _messages(ctx, rubric, targets)
        if truncated:
            evidence["truncated_targets"] = truncated
        prompt = ctx.redactor.text(json.dumps(messages, ensure_ascii=False))
        evidence["prompt_sha256"] = "sha256:" + hashlib.sha256(prompt.encode()).hexdigest()
        records: list[dict[str, Any]] = [{} for _ in range(gate.samples)]
        instance = f"gate:{ctx.gate_id}"
        first = gateway.ledger.instance_count(instance)
        async with anyio.create_task_group() as tg:
            for index in range(gate.samples):
                tg.start_soon(_sample, gateway, ctx, gate, messages, index, records)
        evidence["samples"] = records
        # every provider attempt of this review, as a step's record has them (alerts count them)
        evidence["attempts"] = gateway.ledger.instance_dicts(instance, first)
        failed = [r for r in records if "provider_error" in r]
        if failed:
            first = failed[0]
            evidence["reason"] = (
                f"the provider failed on {len(failed)} of {gate.samples} samples, so the review "
                f"is inconclusive: {first['provider_error']}"
            )
            return measurement(
                ctx,
                {},
                evidence,
                f"no review: route '{gate.model}' failed on sample {first['sample']}: "
                f"{first['provider_error']}",
            )
        scores = [float(r["score"]) for r in records if "score" in r]
        if not scores:
            evidence["reason"] = "no sample gave an answer that meets the review schema"
            return measurement(
                ctx, {}, evidence, f"no review: none of {gate.samples} answers was usable"
            )
        passed = sum(1 for s in scores if s >= gate.pass_score)
        metrics = {
            "pass_rate": passed / gate.samples,
            "score": sum(scores) / len(scores),
            "min_score": min(scores),
            "samples": len(scores),
        }
        findings = sum(len(r.get("findings", [])) for r in records)
        unusable = gate.samples - len(scores)
        summary = (
            f"{passed} of {gate.samples} samples scored at least {gate.pass_score:g} "
            f"(mean {metrics['score']:.2f}, min {metrics['min_score']:.2f}); "
            f"{findings} finding{'s' if findings != 1 else ''}"
        )
        if unusable:
            summary += f"; {unusable} unusable answer{'s' if unusable != 1 else ''}"
        return measurement(ctx, metrics, evidence, summary)


def _messages(
    ctx: GateContext, rubric: str, targets: Sequence[str]
) -> tuple[list[dict[str, str]], list[str]]:
    parts = ["Review these files.\n"]
    truncated = []
    for rel in targets:
        text = Path(project_path(ctx, rel, "target")).read_text(encoding="utf-8", errors="replace")
        text = ctx.redactor.text(text)
        if len(text) > MAX_TARGET_CHARS:
            text = text[:MAX_TARGET_CHARS]
            truncated.append(rel)
        lines = text.splitlines()
        width = len(str(len(lines)))
        numbered = "\n".join(f"{i:>{width}} | {line}" for i, line in enumerate(lines, 1))
        note = " (cut: only its beginning is shown)" if rel in truncated else ""
        parts.append(f"=== {rel}: {len(lines)} lines{note} ===\n{numbered}\n")
    return (
        [
            {"role": "system", "content": _SYSTEM + ctx.redactor.text(rubric)},
            {"role": "user", "content": "\n".join(parts)},
        ],
        truncated,
    )


async def _sample(
    gateway: Any,
    ctx: GateContext,
    gate: ReviewGate,
    messages: list[dict[str, str]],
    index: int,
    records: list[dict[str, Any]],
) -> None:
    record: dict[str, Any] = {"sample": index}
    records[index] = record
    try:
        reply = await gateway.chat(
            gate.model,
            messages,
            step=f"gate:{ctx.gate_id}",
            instance=f"gate:{ctx.gate_id}",  # `evaluate` reads this instance's attempts
            sample=index,
            schema=REVIEW_SCHEMA,
        )
    except ProviderError as exc:
        record["provider_error"] = f"{type(exc).__name__}: {exc}"
        return
    record.update(
        model_answered=reply.model_answered,
        finish_reason=reply.finish_reason,
        tokens=int(reply.prompt_tokens) + int(reply.completion_tokens),
        cost_usd=float(reply.cost_usd),
    )
    answer, problems = _parse(reply.content, reply.finish_reason)
    if problems:
        record["unusable"] = problems
        return
    assert answer is not None
    findings, omitted = capped(list(answer["findings"]), MAX_FINDINGS)
    record.update(
        score=float(answer["score"]),
        passed=float(answer["score"]) >= gate.pass_score,
        findings=findings,
        findings_omitted=omitted,
    )


def _parse(content: str, finish_reason: str) -> tuple[dict[str, Any] | None, list[str]]:
    if finish_reason == "length":
        return None, ["truncated: the answer hit the token limit (finish_reason=length)"]
    try:
        answer = json.loads(content)
    except json.JSONDecodeError as exc:
        return None, [f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    import jsonschema  # noqa: PLC0415  (~0.1 s, only when a review ran)

    validator = jsonschema.Draft202012Validator(REVIEW_SCHEMA)
    problems = [
        f"{e.json_path}: {e.message}"[:300]
        for e in sorted(validator.iter_errors(answer), key=lambda e: list(map(str, e.path)))
    ]
    return (answer if not problems else None), problems
