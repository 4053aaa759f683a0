"""Masking of personal numbers in what staff read (the question log, reports, exports): residents type their phone,
ID-card and plate numbers into questions, and none of that belongs in a list on a shared screen.

138****5678 keeps enough for a caseworker to match a call-back; the whole number is shown only where it is needed,
in a hand-off request's own detail view."""

from __future__ import annotations

import re

# Mainland mobile numbers (11 digits from 1[3-9]) and landlines with an area code (0512-5731 2345).
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)[\s-]?(\d{4})[\s-]?(\d{4})(?!\d)")
_LANDLINE = re.compile(r"(?<!\d)(0\d{2,3})[\s-]?(\d{3,4})[\s-]?(\d{4})(?!\d)")
# 18-character resident ID numbers (the last may be X). Masked first, before their digits look like phones.
_ID_CARD_18 = re.compile(r"(?<![\dXx])(\d{4})\d{10}(\d{3}[\dXx])(?![\dXx])")
# Plates: 苏E·12345, 苏E12345, 苏EF12345 (new-energy), with or without the dot.
_PLATE = re.compile(r"([京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领])([A-Z])[·•.\s]?([A-Z0-9]{5,6})(?![A-Z0-9])")


def mask(text: str) -> str:
    """The text with phone, ID-card and plate numbers partly starred out; everything else unchanged."""
    if not text:
        return text
    text = _ID_CARD_18.sub(lambda m: f"{m.group(1)}**********{m.group(2)}", text)
    text = _MOBILE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
    text = _LANDLINE.sub(lambda m: f"{m.group(1)}-****{m.group(3)}", text)
    text = _PLATE.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(3)[-2:]}", text)
    return text
