"""The offline default provider: `local/...` models answered deterministically, in-process.

Owns: a litellm `CustomLLM` registered as provider `local`, so offline runs go through
litellm's real call path (`litellm.acompletion`, as every provider). Its answers depend only
on the request: with a JSON schema (`response_format`), the schema's first `examples` entry
if it has one, else an instance built from the schema with values derived from a hash of the
prompt; without one, a short text naming the prompt's digest. Must not: touch the network,
or be imported without litellm already imported (`engine.providers` loads it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import litellm

from engine.providers import LOCAL_MODEL_VERSION, local_answered_as

__all__ = ["LOCAL_MODEL_VERSION", "LocalLLM", "instance_of"]


def _seed(messages: list[Any]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()


def instance_of(
    schema: Mapping[str, Any], seed: str, root: Mapping[str, Any] | None = None, depth: int = 0
) -> Any:
    """A JSON value that meets `schema`: its first example, or one built from the schema."""
    root = root or schema
    if depth > 20:
        return None
    if "$ref" in schema:
        ref = str(schema["$ref"])
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return instance_of(target, seed, root, depth + 1)
    for key in ("const",):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        options = schema["enum"]
        return options[int(seed[:8], 16) % len(options)]
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return instance_of(schema[key][0], seed, root, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _BUILDERS.get(kind, lambda s, seed, r, d: None)(schema, seed, root, depth)


def _object(schema: Mapping[str, Any], seed: str, root: Mapping[str, Any], depth: int) -> Any:
    props: Mapping[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", list(props)))
    return {
        name: instance_of(props.get(name, {}), _child(seed, name), root, depth + 1)
        for name in required
    }


def _array(schema: Mapping[str, Any], seed: str, root: Mapping[str, Any], depth: int) -> Any:
    count = max(int(schema.get("minItems", 1)), 1)
    items = schema.get("items", {})
    return [instance_of(items, _child(seed, str(i)), root, depth + 1) for i in range(count)]


def _string(schema: Mapping[str, Any], seed: str, root: Mapping[str, Any], depth: int) -> Any:
    text = f"local-{seed[:8]}"
    low = int(schema.get("minLength", 0))
    return text + "x" * max(0, low - len(text))


def _number(schema: Mapping[str, Any], seed: str, root: Mapping[str, Any], depth: int) -> Any:
    low = float(schema.get("minimum", schema.get("exclusiveMinimum", 0)))
    high = float(schema.get("maximum", schema.get("exclusiveMaximum", low + 1)))
    value = low + (high - low) * (int(seed[:6], 16) / 0xFFFFFF) * 0.5 + (high - low) * 0.25
    return int(value) if schema.get("type") == "integer" else round(value, 4)


_BUILDERS: dict[str, Any] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "number": _number,
    "integer": _number,
    "boolean": lambda s, seed, r, d: int(seed[:2], 16) % 2 == 0,
    "null": lambda s, seed, r, d: None,
}


def _child(seed: str, name: str) -> str:
    return hashlib.sha256((seed + "/" + name).encode()).hexdigest()


def _schema_of(optional_params: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fmt = optional_params.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return schema if isinstance(schema, Mapping) else None
    return None


class LocalLLM(litellm.CustomLLM):  # type: ignore[misc]  # litellm is untyped here (skipped)
    """Deterministic answers for `local/<name>` models."""

    def _answer(
        self,
        model: str,
        messages: list[Any],
        optional_params: Mapping[str, Any],
        model_response: Any,
    ) -> Any:
        seed = _seed(messages)
        schema = _schema_of(optional_params)
        if schema is not None:
            content = json.dumps(instance_of(schema, seed), sort_keys=True)
        else:
            content = f"[{model} {seed[:12]}] deterministic answer"
        prompt_tokens = max(1, len(json.dumps(messages, default=str)) // 4)
        completion_tokens = max(1, len(content) // 4)
        model_response.choices[0].message.content = content
        model_response.choices[0].finish_reason = "stop"
        model_response.model = local_answered_as(model)
        model_response.system_fingerprint = f"local-{LOCAL_MODEL_VERSION}"
        model_response.usage = litellm.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return model_response

    # litellm calls a custom handler with keyword arguments only (litellm/main.py,
    # custom_chat_llm_router): take the three this provider uses, ignore the rest.
    def completion(
        self,
        *,
        model: str,
        messages: list[Any],
        optional_params: dict[str, Any],
        model_response: Any,
        **_: Any,
    ) -> Any:
        return self._answer(model, messages, optional_params, model_response)

    async def acompletion(
        self,
        *,
        model: str,
        messages: list[Any],
        optional_params: dict[str, Any],
        model_response: Any,
        **_: Any,
    ) -> Any:
        return self._answer(model, messages, optional_params, model_response)
