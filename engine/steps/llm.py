"""The `llm` step kind: a prompt template, a model route, an output contract, N samples.

Owns: rendering the prompt file (`${{ vars.NAME }}`), strict parsing of the answer (no silent
repair), checking it against `output_schema`, a bounded and recorded re-ask that lists the
violations by JSON path, `finish_reason=length` as "truncated" (never a pass), and samples.
Calls go through the run's provider gateway (`ctx.resources["llm"]`, see engine.providers).
Must not: import litellm, retry provider errors itself (the gateway's loop is the only one),
or record a prompt unredacted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import expressions as ex
from engine.errors import PermanentProviderError, StepFailed, TransientProviderError
from engine.plugins import Render, StepContext, StepResult
from engine.spec import LlmStep

__all__ = ["LlmKind"]

_MAX_RECORDED_PROMPT = 20_000


class LlmKind:
    name = "llm"

    def resolve(self, step: Any, render: Render) -> dict[str, Any]:
        assert isinstance(step, LlmStep)
        return {
            "model": step.model,
            "prompt": step.prompt,
            "system": step.system,
            "vars": render(step.vars),
            "output_schema": step.output_schema,
            "samples": step.samples,
            "reask": step.reask,
            "budget_usd": step.budget_usd,
            "budget_tokens": step.budget_tokens,
        }

    def code_digest(self, step: Any, project_root: Path) -> str | None:
        """The prompt, system prompt and schema files: changing any of them is new work."""
        assert isinstance(step, LlmStep)
        h = hashlib.sha256()
        for rel in (step.prompt, step.system, step.output_schema):
            if rel is None:
                continue
            path = project_root / rel
            h.update(rel.encode() + b"\0")
            h.update(path.read_bytes() if path.is_file() else b"<missing>")
        return "sha256:" + h.hexdigest()

    async def run(self, ctx: StepContext, resolved: Mapping[str, Any]) -> StepResult:
        replay = ctx.resources.get("replay")
        if replay is not None:
            return _replayed(ctx, replay)
        gateway = ctx.resources.get("llm")
        if gateway is None:
            raise StepFailed("no LLM gateway in this run", step=ctx.instance)
        schema = _load_json(ctx.project_root, resolved.get("output_schema"), ctx.instance)
        messages = _messages(ctx, resolved)
        outputs: list[Any] = []
        detail_samples: list[dict[str, Any]] = []
        first = gateway.ledger.instance_count(ctx.instance)

        def detail() -> dict[str, Any]:
            rendered = ctx.redactor.text(json.dumps(messages, ensure_ascii=False))
            return {
                "route": resolved["model"],
                "prompt_sha256": hashlib.sha256(rendered.encode()).hexdigest(),
                "prompt": rendered[:_MAX_RECORDED_PROMPT],
                "samples": detail_samples,
                "model_answered": (
                    detail_samples[-1].get("model_answered") if detail_samples else None
                ),
                # every provider attempt of this step attempt, failed ones too: retries,
                # fallbacks and degrades leave a trace (an earlier step attempt's are in
                # its own `step.retrying` record)
                "attempts": gateway.ledger.instance_dicts(ctx.instance, first),
            }

        try:
            for sample in range(int(resolved.get("samples", 1))):
                outputs.append(
                    await _one_sample(
                        gateway, ctx, resolved, messages, schema, sample, detail_samples
                    )
                )
        except StepFailed as exc:
            # what the failed attempt asked and spent goes into the failure's record
            rows = gateway.ledger.instance_dicts(ctx.instance, first)
            raise StepFailed(
                str(exc),
                step=ctx.instance,
                category=exc.category,
                retry_after=exc.retry_after,
                detail=detail(),
                cost_usd=math.fsum(float(r["cost_usd"] or 0.0) for r in rows),
                tokens=sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows),
            ) from None
        result = outputs[0] if len(outputs) == 1 else {"samples": outputs}
        cost = math.fsum(r["cost_usd"] for r in detail_samples)
        tokens = sum(r["tokens"] for r in detail_samples)
        return StepResult(result=result, detail=detail(), cost_usd=cost, tokens=tokens)


def _replayed(ctx: StepContext, replay: Mapping[str, Any]) -> StepResult:
    """`blocks run --replay`: the answer recorded in the bundle, never a provider call."""
    answer = replay["answers"].get(ctx.instance)
    if answer is None:
        raise StepFailed(
            f"bundle {replay['ref']} holds no recorded answer for {ctx.instance}; "
            "a replay never calls a provider",
            step=ctx.instance,
        )
    detail = {"replayed_from": replay["ref"], "model_answered": answer.get("model_answered")}
    return StepResult(result=answer["result"], detail=detail)


def _load_json(root: Path, rel: str | None, step: str) -> Any:
    if rel is None:
        return None
    try:
        return json.loads((root / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StepFailed(f"cannot read output schema {rel}: {exc}", step=step) from None


def _messages(ctx: StepContext, resolved: Mapping[str, Any]) -> list[dict[str, str]]:
    activation = {"vars": dict(resolved.get("vars") or {})}
    messages = []
    for role, rel in (("system", resolved.get("system")), ("user", resolved["prompt"])):
        if rel is None:
            continue
        try:
            template = (ctx.project_root / str(rel)).read_text(encoding="utf-8")
        except OSError as exc:
            raise StepFailed(
                f"cannot read prompt {rel}: {exc.strerror}", step=ctx.instance
            ) from None
        text = ex.render_template(template, activation) if ex.has_template(template) else template
        messages.append({"role": role, "content": str(text)})
    return messages


async def _one_sample(
    gateway: Any,
    ctx: StepContext,
    resolved: Mapping[str, Any],
    messages: list[dict[str, str]],
    schema: Any,
    sample: int,
    records: list[dict[str, Any]],
) -> Any:
    """One sample, re-asked on a broken contract. Its record joins `records` at once, so a
    failure later still shows what was answered."""
    conversation = list(messages)
    record: dict[str, Any] = {"sample": sample, "reasks": 0, "cost_usd": 0.0, "tokens": 0}
    records.append(record)
    for ask in range(int(resolved.get("reask", 1)) + 1):
        try:
            reply = await gateway.chat(
                resolved["model"],
                conversation,
                step=ctx.step_id,
                instance=ctx.instance,
                sample=sample,
                schema=schema,
                budget=gateway.step_budget(
                    resolved["model"],
                    resolved.get("budget_usd"),
                    resolved.get("budget_tokens"),
                    f"step '{ctx.instance}'",
                ),
            )
        except TransientProviderError as exc:
            raise StepFailed(str(exc), step=ctx.instance, category="server_error") from None
        except PermanentProviderError as exc:
            raise StepFailed(str(exc), step=ctx.instance, category="permanent") from None
        record.update(
            model_answered=reply.model_answered,
            fingerprint=reply.fingerprint,
            finish_reason=reply.finish_reason,
        )
        record["cost_usd"] += reply.cost_usd
        record["tokens"] += reply.prompt_tokens + reply.completion_tokens
        problems = _problems(reply, schema)
        record["reasks"] = ask  # re-asks sent so far (0 when the first answer was kept)
        if not problems:
            return json.loads(reply.content) if schema is not None else reply.content
        record.setdefault("violations", []).append(problems)
        if ask == int(resolved.get("reask", 1)):
            raise StepFailed(
                "answer breaks its contract: " + "; ".join(problems[:5]),
                step=ctx.instance,
                category="permanent",
            )
        conversation += [
            {"role": "assistant", "content": reply.content},
            {
                "role": "user",
                "content": "Your answer does not meet the required JSON schema:\n"
                + "\n".join(f"- {p}" for p in problems)
                + "\nAnswer again with JSON only.",
            },
        ]
    raise AssertionError("unreachable")  # pragma: no cover


def _problems(reply: Any, schema: Any) -> list[str]:
    if reply.finish_reason == "length":
        return ["truncated: the answer hit the token limit (finish_reason=length)"]
    if schema is None:
        return []
    try:
        value = json.loads(reply.content)
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
    import jsonschema  # noqa: PLC0415  (~0.1 s, only for steps with a contract)

    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/' + '/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
