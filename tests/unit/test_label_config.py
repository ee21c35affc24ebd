"""Label-config parsing: what we support, and that everything else is refused by name."""

from __future__ import annotations

import pytest

from backend.labelstudio.config import LabelConfig, UnsupportedConfig, parse_label_config
from tests.conftest import MULTI_CONFIG, SINGLE_CONFIG


def test_single_choice() -> None:
    assert parse_label_config(SINGLE_CONFIG) == LabelConfig(
        from_name="label",
        to_name="image",
        value_key="image",
        labels=("cat", "dog", "bird"),
        multiple=False,
    )


def test_multiple_choice_reads_names_and_data_key() -> None:
    cfg = parse_label_config(MULTI_CONFIG)
    assert (cfg.from_name, cfg.to_name, cfg.value_key) == ("tags", "img", "photo")
    assert cfg.labels == ("indoor", "person")
    assert cfg.multiple is True


@pytest.mark.parametrize(("mode", "multiple"), [("single", False), ("single-radio", False)])
def test_single_modes(mode: str, multiple: bool) -> None:
    xml = SINGLE_CONFIG.replace('choice="single"', f'choice="{mode}"')
    assert parse_label_config(xml).multiple is multiple


def test_choice_defaults_to_single_and_alias_wins() -> None:
    xml = """<View><Image name="i" value="$url"/>
      <Choices name="c" toName="i"><Choice value="Cat" alias="cat"/><Choice value="dog"/></Choices>
    </View>"""
    cfg = parse_label_config(xml)
    assert cfg.labels == ("cat", "dog")
    assert cfg.multiple is False


def test_nested_views_and_other_controls_are_ignored_and_listed() -> None:
    xml = """<View>
      <View><Header value="Pick"/><Image name="image" value="$image"/></View>
      <View><Choices name="label" toName="image"><View><Choice value="a"/></View>
        <Choice value="b"/></Choices></View>
      <TextArea name="comment" toName="image"/>
      <RectangleLabels name="box" toName="image"><Label value="x"/></RectangleLabels>
    </View>"""
    cfg = parse_label_config(xml)
    assert cfg.labels == ("a", "b")
    assert cfg.ignored == ("TextArea(comment)", "RectangleLabels(box)")


def test_several_image_choices_are_ambiguous_unless_named() -> None:
    xml = """<View><Image name="image" value="$image"/>
      <Choices name="species" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices>
      <Choices name="quality" toName="image" choice="multiple">
        <Choice value="blurry"/><Choice value="dark"/></Choices>
    </View>"""
    with pytest.raises(UnsupportedConfig, match=r"ambiguous.*'species', 'quality'"):
        parse_label_config(xml)
    cfg = parse_label_config(xml, control="quality")
    assert (cfg.from_name, cfg.labels, cfg.multiple) == ("quality", ("blurry", "dark"), True)
    assert cfg.ignored == ("Choices(species)",)
    with pytest.raises(UnsupportedConfig, match="no <Choices name='mood'>"):
        parse_label_config(xml, control="mood")


def test_choices_on_a_text_object_are_not_ours() -> None:
    xml = """<View><Image name="image" value="$image"/><Text name="t" value="$text"/>
      <Choices name="sentiment" toName="t"><Choice value="pos"/></Choices></View>"""
    with pytest.raises(
        UnsupportedConfig, match=r"no <Choices> control bound.*Choices\(sentiment\)"
    ):
        parse_label_config(xml)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("<View><Image name='i' value='$i'/>", "not well-formed"),
        ("<View><Text name='t' value='$t'/></View>", "no <Image>"),
        (
            "<View><Image name='i' value='$i'/>"
            "<RectangleLabels name='box' toName='i'><Label value='a'/></RectangleLabels></View>",
            r"no <Choices>.*RectangleLabels\(box\)",
        ),
        (
            "<View><Image name='i' value='$i'/><KeyPointLabels name='kp' toName='i'>"
            "<Label value='a'/></KeyPointLabels><BrushLabels name='m' toName='i'>"
            "<Label value='a'/></BrushLabels></View>",
            r"KeyPointLabels\(kp\), BrushLabels\(m\)",
        ),
        (
            "<View><Image name='i' value='$i'/>"
            "<Choices name='c' toName='i' choice='several'><Choice value='a'/></Choices></View>",
            "choice='several'.*supported: single, single-radio, multiple",
        ),
        (
            "<View><Image name='i' value='https://x/y.png'/>"
            "<Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
            "must read a task field",
        ),
        (
            "<View><Image name='i' valueList='$images'/>"
            "<Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
            "valueList",
        ),
        (
            "<View><Image name='i' value='$i'/><Choices name='c' toName='i'/></View>",
            "needs <Choice",
        ),
        (
            "<View><Image name='i' value='$i'/>"
            "<Choices name='c' toName='i' value='$options'/></View>",
            "options from task data",
        ),
        (
            "<View><Image name='i' value='$i'/><Choices name='c' toName='i'>"
            "<Choice value='a'/><Choice value='a'/></Choices></View>",
            "repeats",
        ),
        (
            "<View><Image name='i' value='$i'/><Choices name='c' toName='i' perRegion='true'>"
            "<Choice value='a'/></Choices></View>",
            r"no <Choices> control bound.*Choices\(c\)",
        ),
    ],
)
def test_unsupported_configs_say_why(xml: str, message: str) -> None:
    with pytest.raises(UnsupportedConfig, match=message):
        parse_label_config(xml)


def test_entity_expansion_is_refused() -> None:
    bomb = """<?xml version="1.0"?>
    <!DOCTYPE View [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>
    <View><Image name="i" value="$i"/><Choices name="c" toName="i">
      <Choice value="&b;"/></Choices></View>"""
    with pytest.raises(UnsupportedConfig, match="DTD or entities"):
        parse_label_config(bomb)
