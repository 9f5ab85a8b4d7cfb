"""What each frame is: by an event's ``image_key``/``frame_type``, by its stream's name, by configuration."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bluesky_tomogan.frame_roles import FrameRoles, RoleKey, find_role_key, role_of_text, scan_role


def descriptor(name="primary", data_keys=None, configuration=None):
    keys = {"det_image": {"dtype": "array", "shape": [8, 8], "source": "sim"}} | (data_keys or {})
    return {"name": name, "data_keys": keys, "configuration": configuration or {}}


@pytest.mark.parametrize(("key", "values", "roles"), [
    # NXtomo: 0 projection, 1 flat, 2 dark, 3 invalid (numbers as ints, numpy ints, floats, text)
    ("image_key", [2, np.int64(1), 0.0, "3", " 0 "], ["dark", "flat", None, "invalid", None]),
    # areaDetector's FrameType: 0 Normal, 1 Background, 2 FlatField
    ("det_cam_frame_type", [1, 2, 0, 3], ["dark", "flat", None, None]),
    # ophyd-async names keys "device-signal"; NXtomo's own names, in any case
    ("det-Image_Key", [0, 2], [None, "dark"]),
])
def test_numbers_are_read_by_the_convention_the_fields_name_says(key, values, roles):
    found = find_role_key({key: {"dtype": "integer", "shape": []}})
    assert found is not None and [found.role_of(v) for v in values] == roles


def test_an_enum_field_is_read_by_its_strings_such_as_a_beamlines_own():
    """APS beamlines rename FrameType's states after the file layout's datasets: the strings, not
    areaDetector's numbers, say what a frame is (ophyd's ``enum_strs``, ophyd-async's ``choices``)."""
    aps = ["/exchange/data_white_pre", "/exchange/data", "/exchange/data_white_post", "/exchange/data_dark"]
    for listing in ("enum_strs", "choices"):
        key = find_role_key({"det_cam_frame_type": {"dtype": "integer", "shape": [], listing: aps}})
        assert [key.role_of(i) for i in range(4)] == ["flat", None, "flat", "dark"]
        assert [key.role_of(s) for s in aps] == ["flat", None, "flat", "dark"]  # read as strings (as_string)


@pytest.mark.parametrize(("text", "role"), [("Background", "dark"), ("FlatField", "flat"), ("Normal", None),
                                            ("DarkField", "dark"), ("Projection", None), ("white", "flat"),
                                            ("INVALID", "invalid"), ("sample", None)])
def test_frame_type_text(text, role):
    assert role_of_text(text) == role


@pytest.mark.parametrize("value", [7, -1, 1.5, True, None, [0, 1], float("nan")])
def test_a_value_that_says_nothing_known_is_refused_with_what_it_was(value):
    with pytest.raises((ValueError, TypeError), match="image_key"):
        RoleKey("image_key").role_of(value)


def test_beyond_an_enums_choices_is_refused():
    with pytest.raises(ValueError, match="beyond its 2 choices"):
        RoleKey("frame_type", ("Normal", "Background"), nxtomo=False).role_of(2)


def test_only_scalar_fields_of_those_names_say_what_frames_are():
    assert find_role_key({"image_key_map": {"shape": []}, "keys": {"shape": []}}) is None
    assert find_role_key({"det_image_key": {"dtype": "array", "shape": [8, 8]}}) is None
    one = find_role_key({"det_image_key": {"dtype": "integer", "shape": [1]}})  # one value per event, as [v]
    assert one is not None and one.role_of([2]) == "dark" and one.role_of(np.array([1])) == "flat"


def test_an_events_field_outranks_the_streams_name_which_outranks_the_configuration():
    config = {"det": {"data": {"det_cam_frame_type": 1},
                      "data_keys": {"det_cam_frame_type": {"dtype": "integer", "shape": []}}}}
    keyed = FrameRoles(descriptor("dark", {"image_key": {"dtype": "integer", "shape": []}}, config))
    assert keyed.per_event and keyed.default == "dark"
    assert keyed.of_page({"image_key": [0, 1, 2]}, 3) == [None, "flat", "dark"]
    assert keyed.of_page({}, 2) == ["dark", "dark"]  # an event page without the field: the stream's role
    assert keyed.of_page({"image_key": [0]}, 2) == ["dark", "dark"]  # a malformed page: the same
    # a signal read with every event reports its first value in the configuration too: that says nothing
    assert FrameRoles(descriptor("primary", {"image_key": {"dtype": "integer", "shape": []}}, config)).default is None
    # a run of darks only (a plan taking darks, flats and projections as separate runs): its configuration says
    assert FrameRoles(descriptor("primary", configuration=config)).default == "dark"
    config["det"]["data"]["det_cam_frame_type"] = 0  # a camera says Normal unless the plan set it: the name wins
    assert FrameRoles(descriptor("flat", configuration=config)).default == "flat"
    assert FrameRoles(descriptor("primary", configuration=config)).default is None


def test_an_unknown_value_counts_as_the_streams_frames_and_is_logged_a_few_times(caplog):
    roles = FrameRoles(descriptor("primary", {"image_key": {"dtype": "integer", "shape": []}}))
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.frame_roles"):
        assert roles.of_page({"image_key": [9] * 8}, 8) == [None] * 8
    assert caplog.text.count("image_key = 9 is none of NXtomo image_key's values") == 5


def test_stream_names_any_case():
    assert scan_role("Darks") == "dark" and scan_role("flat_field") == "flat" and scan_role("primary") is None


def test_a_field_written_to_a_file_is_read_from_there_not_taken_for_one_that_comes_in_events(caplog):
    """An area detector's NDAttribute written beside a fly scan's frames (``STREAM:``) never comes in an event:
    its values come from the file (the callback reads them), and a page of events says nothing about them. One
    announced through a legacy Resource (``FILESTORE:``) is not read, with a warning."""
    roles = FrameRoles(descriptor("primary", {"det-image_key": {"dtype": "integer", "shape": [],
                                                                "external": "STREAM:"}}))
    assert roles.per_event and roles.in_file and roles.key == RoleKey("det-image_key", external=True)
    assert roles.of_page({"det": ["datum-id"] * 3}, 3) == [None] * 3 and roles.default is None
    assert roles.of_page({"det-image_key": [2, 1, 0]}, 3) == ["dark", "flat", None]  # the values read from the file
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.frame_roles"):
        roles = FrameRoles(descriptor("flat", {"det-image_key": {"dtype": "integer", "shape": [],
                                                                 "external": "FILESTORE:"}}))
    assert not roles.per_event and not roles.in_file and roles.default == "flat"
    assert "det-image_key says what each frame is but is written to a file through a Resource" in caplog.text
