"""Parse a Label Studio label config into what an image classifier needs.

Supported: one ``<Image value="$key">`` object tag and one ``<Choices toName="...">`` control bound
to it, with ``choice`` = ``single`` (the default), ``single-radio`` or ``multiple``. Other controls
(a ``<TextArea>`` for comments, a ``<Rating>``, even region tags) are ignored and listed in
:attr:`LabelConfig.ignored`: labelloop only fills in its own ``<Choices>``.

When several ``<Choices>`` are bound to images the config is ambiguous and refused unless the
caller names the control to use (``control=``): guessing would train on the wrong question.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

CHOICE_MODES: Mapping[str, bool] = MappingProxyType(
    {"single": False, "single-radio": False, "multiple": True}
)


class UnsupportedConfig(ValueError):
    """The label config is malformed or not an image classification we support; says why."""


@dataclass(frozen=True)
class LabelConfig:
    """The parts of a label config a classifier needs.

    Attributes:
        from_name: the ``<Choices>`` name (``from_name`` of results and predictions).
        to_name: the ``<Image>`` name (``to_name``).
        value_key: the task data key holding the image reference (``image`` for ``$image``).
        labels: the choice values (aliases where set), in config order.
        multiple: True for ``choice="multiple"`` (multi-label), False for single choice.
        ignored: other control tags present, as ``Tag(name)``, that labelloop leaves alone.
    """

    from_name: str
    to_name: str
    value_key: str
    labels: tuple[str, ...]
    multiple: bool
    ignored: tuple[str, ...] = ()


def _parse_xml(xml: str) -> ET.Element:
    if not xml or not xml.strip():
        raise UnsupportedConfig("label config is empty")
    try:
        root: ET.Element = SafeET.fromstring(xml, forbid_dtd=True)
    except DefusedXmlException:
        raise UnsupportedConfig("label config must not declare a DTD or entities") from None
    except ET.ParseError as exc:
        raise UnsupportedConfig(f"label config is not well-formed XML ({exc})") from None
    return root


def _tag(element: ET.Element) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _describe(element: ET.Element) -> str:
    return f"{element.tag}({element.get('name', '?')})"


def _images(root: ET.Element) -> dict[str, str]:
    """Image name -> task data key; refuses images whose source is not a task field."""
    images: dict[str, str] = {}
    for element in root.iter():
        if _tag(element) != "image":
            continue
        name, value = element.get("name"), element.get("value") or ""
        if not name:
            raise UnsupportedConfig("an <Image> tag has no name")
        if element.get("valueList") is not None:
            raise UnsupportedConfig(f"<Image name={name!r}> with valueList (several images)")
        if not value.startswith("$") or len(value) < 2:
            raise UnsupportedConfig(
                f'<Image name={name!r}> must read a task field (value="$key"), got {value!r}'
            )
        images[name] = value[1:]
    if not images:
        raise UnsupportedConfig("no <Image> tag: labelloop supports image classification only")
    return images


def _is_control(element: ET.Element) -> bool:
    return element.get("toName") is not None and element.get("name") is not None


def _image_choices(root: ET.Element, images: dict[str, str]) -> list[ET.Element]:
    return [
        element
        for element in root.iter()
        if _tag(element) == "choices"
        and element.get("toName") in images
        and element.get("perRegion", "false").lower() != "true"
    ]


def _pick(candidates: list[ET.Element], control: str | None, others: list[str]) -> ET.Element:
    if control is not None:
        chosen = [c for c in candidates if c.get("name") == control]
        if not chosen:
            known = [c.get("name") for c in candidates]
            raise UnsupportedConfig(f"no <Choices name={control!r}> bound to an image; has {known}")
        return chosen[0]
    if not candidates:
        found = f"; found {', '.join(others)}" if others else ""
        raise UnsupportedConfig(f"no <Choices> control bound to an <Image>{found}")
    if len(candidates) > 1:
        names = ", ".join(repr(c.get("name")) for c in candidates)
        raise UnsupportedConfig(
            f"ambiguous: several <Choices> are bound to images ({names}); name the one to learn"
        )
    return candidates[0]


def _labels(choices: ET.Element) -> tuple[str, ...]:
    name = choices.get("name")
    if (choices.get("value") or "").startswith("$"):
        raise UnsupportedConfig(f"<Choices name={name!r}> takes its options from task data")
    labels = tuple(
        c.get("alias") or c.get("value") or "" for c in choices.iter() if _tag(c) == "choice"
    )
    if not labels or "" in labels:
        raise UnsupportedConfig(f"<Choices name={name!r}> needs <Choice value=...> options")
    if len(set(labels)) != len(labels):
        raise UnsupportedConfig(f"<Choices name={name!r}> repeats a choice value")
    return labels


def parse_label_config(xml: str, *, control: str | None = None) -> LabelConfig:
    """Parse an image classification label config.

    Args:
        xml: the project's ``label_config``.
        control: the ``<Choices>`` name to use when several are bound to images.

    Raises:
        UnsupportedConfig: malformed XML, no image, no (or ambiguous) choices, a choice mode or
            construct we do not support; the message names it.
    """
    root = _parse_xml(xml)
    images = _images(root)
    controls = [e for e in root.iter() if _is_control(e)]
    candidates = _image_choices(root, images)
    others = [_describe(e) for e in controls if e not in candidates]
    chosen = _pick(candidates, control, others)
    mode = chosen.get("choice", "single")
    if mode not in CHOICE_MODES:
        raise UnsupportedConfig(
            f"<Choices name={chosen.get('name')!r}> choice={mode!r}; "
            f"supported: {', '.join(CHOICE_MODES)}"
        )
    to_name = chosen.get("toName", "")
    return LabelConfig(
        from_name=chosen.get("name", ""),
        to_name=to_name,
        value_key=images[to_name],
        labels=_labels(chosen),
        multiple=CHOICE_MODES[mode],
        ignored=tuple(_describe(e) for e in controls if e is not chosen),
    )
