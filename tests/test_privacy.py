"""Phone, ID-card and plate numbers are starred out of what staff read; policy numbers and amounts are not."""

import pytest

from assistant.state.privacy import mask


@pytest.mark.parametrize("given, masked", [
    ("我电话13812345678，请回电", "我电话138****5678，请回电"),
    ("138 1234 5678", "138****5678"),
    ("座机0512-57312345", "座机0512-****2345"),
    ("身份证320583199001011234", "身份证3205**********1234"),
    ("身份证32058319900101123X", "身份证3205**********123X"),
    ("车牌苏E·12345被堵了", "车牌苏E***45被堵了"),
    ("苏EF12345 新能源", "苏E***45 新能源"),
])
def test_personal_numbers_are_partly_starred(given, masked):
    assert mask(given) == masked


@pytest.mark.parametrize("text", ["物业费2024年交了3000元", "第六十九条规定15日内答复", "维修资金占比三分之二",
                                  "12345 政务服务便民热线", ""])
def test_policy_numbers_dates_and_hotlines_are_left_alone(text):
    assert mask(text) == text
