"""Bodies and stream events of OpenAI's Responses API (`POST /v1/responses`)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from tests.standins.base import AnswerPlan, new_id
from tests.standins.recorder import deep_merge

# NOTE: only text output is modelled; function tools in a Responses request are ignored
# and the answer is always an assistant message.


def usage_object(plan: AnswerPlan) -> dict[str, Any]:
    """Build a Responses `usage` object for `plan`, overrides merged in."""
    usage = {
        "input_tokens": plan.prompt_words,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": plan.completion_words,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": plan.prompt_words + plan.completion_words,
    }
    merged = deep_merge(usage, plan.usage_patch)
    if not plan.usage_patch or "total_tokens" not in plan.usage_patch:
        merged["total_tokens"] = merged["input_tokens"] + merged["output_tokens"]
    return merged


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """Build an assistant `message` output item holding `text`."""
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def response_object(
    plan: AnswerPlan,
    body: dict[str, Any],
    status: str,
    response_id: str | None = None,
    item_id: str | None = None,
) -> dict[str, Any]:
    """Build a `response` object; `status` "in_progress" gives the empty one a stream starts with."""
    done = status == "completed"
    item = message_item(item_id or new_id("msg_", 32), plan.text, "completed")
    return {
        "id": response_id or new_id("resp_", 32),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": plan.response_model,
        "output": [item] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage_object(plan) if done else None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def stream_events(plan: AnswerPlan, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the stream events of one text answer, each with its `sequence_number`.

    Order: response.created, response.in_progress, response.output_item.added,
    response.content_part.added, one response.output_text.delta per piece,
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed. The stream has no `[DONE]` line.
    """
    response_id = new_id("resp_", 32)
    item_id = new_id("msg_", 32)
    started = response_object(plan, body, "in_progress", response_id, item_id)
    finished = response_object(plan, body, "completed", response_id, item_id)
    part_ids = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    full_part = {**empty_part, "text": plan.text}

    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": message_item(item_id, "", "in_progress")},
        {"type": "response.content_part.added", **part_ids, "part": empty_part},
    ]
    events += [{"type": "response.output_text.delta", **part_ids, "delta": piece, "logprobs": []} for piece in plan.pieces]
    events += [
        {"type": "response.output_text.done", **part_ids, "text": plan.text, "logprobs": []},
        {"type": "response.content_part.done", **part_ids, "part": full_part},
        {"type": "response.output_item.done", "output_index": 0, "item": finished["output"][0]},
        {"type": "response.completed", "response": finished},
    ]
    for sequence, event in enumerate(events):
        event["sequence_number"] = sequence
        yield event
