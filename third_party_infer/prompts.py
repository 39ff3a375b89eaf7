"""Prompts in the form of the LLM4SBR paper's Figure 2.

A prompt has three parts: the background line, the session's items numbered `k. ItemName_ItemID` (the raw item id,
e.g. the Amazon ASIN), and the task line with a perspective-limiting qualifier (the task is one line; it is
wrapped here)::

    The order in which users click on items is as follows:
    1. ItemName_ItemID
    ...
    Please guess an item that the user is interested in in the long-term. (Only output the item name without
    any explanation.)

In Figure 2 the qualifier is shown in parentheses as a placeholder; the authors' prompt builder
(`Data/Beauty/Handle_Data_Prompt.py` of the official code) writes it without them ("in the long-term."), which is what
`TASK` does. Perspectives are a mapping name -> qualifier text, so a third perspective is a configuration change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Mapping, Sequence

BACKGROUND = "The order in which users click on items is as follows:"
ITEM_LINE = "{index}. {name}_{item_id}"
TASK = ("Please guess an item that the user is interested in in the {qualifier}. "
        "(Only output the item name without any explanation.)")
DEFAULT_PERSPECTIVES = {"long-term": "long-term", "short-term": "short-term"}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Everything that determines the prompt text.

  Attributes:
    perspectives: perspective name -> qualifier text, in output order.
    max_items: keep only a session's last `max_items` items (0 = the whole session, the paper's setting).
    background: the first line.
    item_line: format of one item line (`index`, `name`, `item_id`).
    task: the last line (`qualifier`).
  """

  perspectives: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PERSPECTIVES))
  max_items: int = 0
  background: str = BACKGROUND
  item_line: str = ITEM_LINE
  task: str = TASK

  @property
  def template(self) -> str:
    """The template as one text (recorded in the manifest)."""
    return "\n".join([self.background, self.item_line, "...", self.task])

  def to_json(self) -> dict:
    return {"perspectives": dict(self.perspectives), "max_items": self.max_items, "background": self.background,
            "item_line": self.item_line, "task": self.task}

  @property
  def hash(self) -> str:
    """sha256 over the template parts, the qualifiers and `max_items`."""
    return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

  def build(self, names: Sequence[str], item_ids: Sequence[str], perspective: str) -> str:
    """The prompt for one session and one perspective.

    Args:
      names: item names in click order.
      item_ids: the matching raw item ids.
      perspective: a key of `perspectives`.
    """
    if self.max_items > 0:
      names, item_ids = names[-self.max_items:], item_ids[-self.max_items:]
    lines = [self.background]
    lines += [self.item_line.format(index=k, name=n, item_id=i) for k, (n, i) in enumerate(zip(names, item_ids), 1)]
    lines.append(self.task.format(qualifier=self.perspectives[perspective]))
    return "\n".join(lines)

  def item_lookup(self, names: Sequence[str], raw_ids: Sequence[str]) -> dict[str, int]:
    """Answer texts that name one catalog item exactly -> its item id (see `match_item`).

    The keys are each item's `name_rawid` as `item_line` writes it (without the list number) and its raw id alone,
    except all-digit raw ids (MovieLens), which an answer cannot tell from a list number. Index 0 (padding) is
    skipped.

    Args:
      names: item names by item id (index 0 = padding).
      raw_ids: the matching raw ids.
    """
    form = re.sub(r"[^\w}]*\{index\}[^\w{]*", "", self.item_line)  # the line without its list number
    lookup = {form.format(name=n, item_id=i): k for k, (n, i) in enumerate(zip(names, raw_ids)) if k}
    lookup.update({i: k for k, i in enumerate(raw_ids) if k and i and not i.isdigit()})
    return lookup


def match_item(answer: str, lookup: Mapping[str, int]) -> int:
  """The item an answer names exactly (its raw id, or `name_rawid` as the prompt writes items), else 0.

  Args:
    answer: the normalized answer with its `_ItemID` kept (`llm.clean_answer(raw, strip_id=False)`); a final
      period (the end of a sentence) is ignored.
    lookup: `PromptConfig.item_lookup`.
  """
  for text in (answer, answer.rstrip(".").rstrip()):
    if text in lookup:
      return lookup[text]
  return 0


def parse_perspectives(spec: str) -> dict[str, str]:
  """Parses `name[=qualifier],...`; a bare name uses itself (or its default) as qualifier.

  Example: `long-term,short-term,mid-term=medium term`.
  """
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, qualifier = part.partition("=")
    name = name.strip()
    if not name or name in out:
      raise ValueError(f"perspectives {spec!r}: empty or repeated name {name!r}")
    out[name] = qualifier.strip() or DEFAULT_PERSPECTIVES.get(name, name)
  if not out:
    raise ValueError("at least one perspective is needed")
  return out
